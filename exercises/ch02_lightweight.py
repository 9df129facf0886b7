"""Chapter 02 exercises: what the building blocks of light networks cost, and one to build.

1. :func:`separable_conv_cost` — the multiply-accumulates (MACs) and weights of a k×k
   convolution against its depthwise-separable factorisation (MobileNetV1), and their ratio.
2. :func:`channel_shuffle` — ShuffleNet's channel permutation, in NumPy.
3. :func:`inverted_residual` — MobileNetV2's block, written as ONNX nodes with
   :class:`tinyinfer.models.NetworkBuilder`.
4. :func:`memory_access_cost_1x1` — ShuffleNet V2's memory access cost of a 1×1
   convolution, the quantity behind its guideline G1 (equal widths move the least memory).

Replace each ``raise NotImplementedError`` with your code, then grade it:

    pytest tests/exercises/test_ch02_lightweight.py --impl=exercises -m ex1   # or ex2, ex3, ex4
    pytest tests/exercises --impl=exercises -m ch02_ex1                       # the same, by chapter mark

The graded tests compare your answers with costs that :func:`tinyinfer.models.analyze` counts
on real Conv graphs, with ONNX Runtime, and with a float64 NumPy version of the block; they
never look at the solution file.
"""

from __future__ import annotations

import numpy as np

from tinyinfer.models import NetworkBuilder


# ---------------------------------------------------------------------------- exercise 1
def separable_conv_cost(c_in: int, c_out: int, k: int, h: int, w: int) -> dict[str, float]:
    """Cost of a k×k convolution and of its depthwise-separable version, for one image.

    The layer maps ``c_in`` channels to ``c_out`` channels on an ``h``×``w`` map, with stride
    1 and "same" padding (``k`` is odd), so the output is ``h``×``w`` too. No bias, no batch
    norm: only the weights and the multiply-accumulates of the convolutions.

    * **standard**: one ``k``×``k`` convolution, weights ``[c_out, c_in, k, k]``. Every output
      element is a dot product over ``c_in·k·k`` inputs.
    * **separable** (Howard et al., 2017): a *depthwise* ``k``×``k`` convolution, one filter
      per input channel (``group = c_in``, weights ``[c_in, 1, k, k]``), then a *pointwise*
      1×1 convolution that mixes the channels (weights ``[c_out, c_in, 1, 1]``).

    Return a dict with the keys

        "standard_macs", "standard_params", "separable_macs", "separable_params"  (int)
        "ratio"  = separable_macs / standard_macs                                  (float)

    Worked example, MobileNetV1's first separable layer (32 -> 64 channels, 3×3, 112×112):
    standard 112·112·9·32·64 = 231,211,008 MACs and 9·32·64 = 18,432 weights; separable
    112·112·(9·32 + 32·64) = 29,302,784 MACs and 288 + 2,048 = 2,336 weights; ratio 0.1267.

    Check your ratio with the paper's formula, 1/c_out + 1/k² (here 1/64 + 1/9).
    """
    raise NotImplementedError("exercise: separable_conv_cost (chapter 02, exercise 1)")


# ---------------------------------------------------------------------------- exercise 2
def channel_shuffle(x: np.ndarray, groups: int) -> np.ndarray:
    """ShuffleNet's channel shuffle (Zhang et al., 2018) of ``x`` with layout [N, C, ...].

    A grouped convolution with ``groups`` groups sees channels ``0 .. C/g - 1`` in group 0,
    the next ``C/g`` in group 1, and so on; stacked grouped convolutions would never mix the
    groups. The shuffle deals the channels out like cards so that the next grouped
    convolution's every group receives channels from every group of the previous one:
    input channel ``i·(C/g) + j`` (group ``i``, position ``j``) moves to output channel
    ``j·g + i``.

    Example, C = 6, g = 3 (groups {0, 1}, {2, 3}, {4, 5}): the output channels are the input
    channels ``[0, 2, 4, 1, 3, 5]``.

    Return a new array with the same shape and dtype; leave ``x`` unchanged. Any number of
    axes after the channels (none, H, or H and W) must work. Raise ``ValueError`` when
    ``groups`` is not positive or does not divide C.

    Hint: reshape the channel axis to ``(g, C/g)``, swap those two axes, reshape back; it is
    three NumPy calls, the same three ops (Reshape, Transpose, Reshape) an ONNX graph uses.
    """
    raise NotImplementedError("exercise: channel_shuffle (chapter 02, exercise 2)")


# ---------------------------------------------------------------------------- exercise 3
def inverted_residual(builder: NetworkBuilder, x: str, out_channels: int, stride: int, expansion: int) -> str:
    """Append MobileNetV2's inverted residual block to ``builder``; return its output's name.

    ``x`` is the name of a tensor the builder already knows (``builder.shapes[x]`` is
    ``(N, C, H, W)``, ``builder.channels(x)`` is C). With ``hidden = C · expansion``
    (Sandler et al., 2018, Table 1):

    1. **expand**: 1×1 convolution to ``hidden`` channels, batch norm, ReLU6 — left out when
       ``expansion == 1`` (there is nothing to expand; the network's first block is such);
    2. **depthwise**: 3×3 convolution with ``groups = hidden`` and the block's ``stride``,
       "same" padding, batch norm, ReLU6;
    3. **project**: 1×1 convolution to ``out_channels``, batch norm and *no activation*
       (the linear bottleneck: a ReLU on a narrow tensor destroys information);
    4. **residual**: add the block's input ``x`` when ``stride == 1`` and ``C == out_channels``
       (only then do the shapes match).

    The builder's methods do the bookkeeping: ``builder.conv(x, channels, kernel, stride=...,
    groups=...)`` draws He-initialised weights and pads a 3×3 kernel by 1,
    ``builder.batchnorm(y)``, ``builder.activation(y, "relu6")`` (a Clip to [0, 6]),
    ``builder.add(a, b)``; ``builder.conv_bn_act(x, channels, kernel, stride=..., groups=...,
    act="relu6" or None)`` does conv, batch norm and activation in one call. Every method
    returns the name of the tensor it made. Pass ``name=...`` to make the graph readable.

    Example: for ``x`` of shape (N, 24, 56, 56), ``out_channels=24, stride=1, expansion=6``
    adds Conv, BatchNormalization, Clip (144 channels), Conv, BatchNormalization, Clip
    (depthwise), Conv, BatchNormalization (24 channels), Add: nine nodes, output (N, 24, 56, 56).
    """
    raise NotImplementedError("exercise: inverted_residual (chapter 02, exercise 3)")


# ---------------------------------------------------------------------------- exercise 4
def memory_access_cost_1x1(h: int, w: int, c1: int, c2: int) -> int:
    """Elements a 1×1 convolution (no bias) from ``c1`` to ``c2`` channels on an h×w map moves.

    Ma et al. (2018, ShuffleNet V2) count the *memory access cost* of a layer as
    everything it reads and writes: its input feature map, its weights and its output
    feature map. Count elements (multiply by 4 for float32 bytes), for one image.

    Example: h = w = 56, c1 = c2 = 128 reads 401,408 input elements and 16,384 weights and
    writes 401,408 output elements: 819,200.

    Why it matters: for a fixed number of multiply-adds ``B = h·w·c1·c2`` this count is
    smallest when ``c1 == c2`` (guideline G1 of the paper), so layers of equal width are the
    cheapest to feed with data.
    """
    raise NotImplementedError("exercise: memory_access_cost_1x1 (chapter 02, exercise 4)")
