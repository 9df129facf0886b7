"""Normalisation kernels: BatchNormalization (inference), ScaleShift and LRN, float32 NCHW, one pass each.

The references (``tinyinfer/ops/normalization.py``) are written as whole-array NumPy
expressions: clear, but each operator is one pass over the tensor (LRN's takes ten: square,
pad, five shifted sums, scale, power, divide). Between convolutions that run on Numba's
threads, these kernels make one parallel pass each:

* ``batchnorm_inference`` accelerates BatchNormalization in inference mode (opset 7 on,
  ``training_mode=0``, one output) for float32 inputs of rank >= 2 with constant scale, bias,
  mean and variance: the builder folds them into one factor and one shift per channel,
  exactly as the reference does, and the kernel computes ``x * factor + shift`` rounding
  after the multiply and after the add, as NumPy does (no fused multiply-add, so the
  result is bit-identical to the reference).
* ``scale_shift`` accelerates ``ai.tinyinfer:ScaleShift``, the per-channel affine map with an
  activation that a BatchNormalization -> Relu pair becomes when no convolution can absorb
  the BN (DenseNet's pre-activation blocks): one pass instead of two, the activation applied
  by the conv kernels' store, :func:`~tinyinfer.kernels.epilogue.finish_row`.
* ``lrn`` accelerates LRN (opset 1 on) for float32 4-D inputs: for each row of pixels, the
  window sum of squares over channels is added in the reference's order, and the power
  ``d ** beta`` uses square roots for beta = 0.5 and 0.75 (AlexNet's and Inception's value;
  ``d ** 0.75 = sqrt(d) * sqrt(sqrt(d))``, vectorised, within 2 ulp of ``pow``) and ``pow``
  otherwise.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from ..ir import Node
from .epilogue import ACTIVATION_CODES, FUSED_DOMAIN, epilogue_of, finish_row
from .registry import named, output_buffer, register_kernel, writes_into


def _float32_tensor(value, min_rank: int = 1) -> bool:
    return (value is not None and value.dtype == np.float32 and value.shape is not None
            and len(value.shape) >= min_rank and all(isinstance(d, int) for d in value.shape))


# ---------------------------------------------------------------------------- BatchNormalization
def _supports_batchnorm(node: Node, inputs: list) -> bool:
    if len([name for name in node.outputs if name]) != 1 or node.attrs.get("training_mode", 0):
        return False
    if node.attrs.get("spatial", 1) != 1:  # opset 7-8's per-activation statistics: the reference
        return False
    x = inputs[0]
    if not _float32_tensor(x, 2) or len(inputs) < 5:
        return False
    channels = x.shape[1]
    return all(v is not None and v.const is not None and v.const.shape == (channels,) and v.dtype == np.float32
               for v in inputs[1:5])


@register_kernel("BatchNormalization", "batchnorm_inference", supports=_supports_batchnorm)
def build_batchnorm(node: Node, inputs: list, outputs: list):
    """Inference BatchNormalization (accelerates BatchNormalization): float32, rank >= 2, constant statistics."""
    scale, bias, mean, var = (v.const.astype(np.float32) for v in inputs[1:5])
    factor = scale / np.sqrt(var + node.attrs["epsilon"])  # the reference's own fold, in float32
    shift = bias - mean * factor
    factor = np.ascontiguousarray(factor, dtype=np.float32)
    shift = np.ascontiguousarray(shift, dtype=np.float32)

    def batchnorm_inference(node, x, *statistics, out=None):
        n, c = x.shape[0], x.shape[1]
        planes = np.ascontiguousarray(x).reshape(n, c, -1)
        y = output_buffer(out, x.shape)  # may be x's own memory: elementwise, in place is safe
        _batchnorm_kernel(planes, factor, shift, y.reshape(planes.shape))
        return y

    return writes_into(named(batchnorm_inference, "batchnorm_inference"))


@numba.njit(cache=True, parallel=True)  # no fastmath: multiply, round, add, round, as NumPy
def _batchnorm_kernel(x, factor, shift, y):
    n, channels, size = x.shape
    for task in numba.prange(n * channels):
        image, c = task // channels, task % channels
        f, s = factor[c], shift[c]
        source, target = x[image, c], y[image, c]
        for i in range(size):
            target[i] = source[i] * f + s


# ---------------------------------------------------------------------------- ScaleShift
def per_channel_vector(constant: np.ndarray, shape) -> np.ndarray | None:
    """A constant that broadcasts to ``shape`` varying along axis 1 only, as its C values (else None)."""
    channels = shape[1]
    if constant.ndim > len(shape):
        return None
    aligned = (1,) * (len(shape) - constant.ndim) + constant.shape
    if aligned[0] != 1 or aligned[1] not in (1, channels) or any(d != 1 for d in aligned[2:]):
        return None
    return np.ascontiguousarray(np.broadcast_to(constant.reshape(-1), (channels,)), dtype=np.float32)


def _supports_scale_shift(node: Node, inputs: list) -> bool:
    x, scale, shift = inputs
    if not _float32_tensor(x, 2) or node.attrs["activation"] not in ACTIVATION_CODES:
        return False
    return all(v.const is not None and per_channel_vector(v.const, x.shape) is not None for v in (scale, shift))


@register_kernel("ScaleShift", "scale_shift", domain=FUSED_DOMAIN, supports=_supports_scale_shift)
def build_scale_shift(node: Node, inputs: list, outputs: list):
    """Per-channel ``act(x * scale + shift)`` (accelerates ai.tinyinfer:ScaleShift): float32, rank >= 2,
    constant per-channel scale and shift, one pass per (image, channel) plane in parallel."""
    x = inputs[0]
    scale, shift = (per_channel_vector(v.const, x.shape) for v in inputs[1:3])
    epilogue = epilogue_of(node)

    def scale_shift(node, x, *constants, out=None):
        n, c = x.shape[0], x.shape[1]
        planes = np.ascontiguousarray(x).reshape(n, c, -1)
        y = output_buffer(out, x.shape)
        _scale_shift_kernel(planes, scale, shift, epilogue.code, epilogue.alpha, epilogue.beta, y.reshape(planes.shape))
        return y

    return writes_into(named(scale_shift, "scale_shift"))


@numba.njit(cache=True, fastmath=True, parallel=True)
def _scale_shift_kernel(x, scale, shift, code, alpha, beta, y):
    """``y[n, c] = act(x[n, c] * scale[c] + shift[c])``: the product, then the shift and the
    activation by the conv kernels' own store (:func:`finish_row`), while the plane is in cache."""
    n, channels, size = x.shape
    for task in numba.prange(n * channels):
        image, c = task // channels, task % channels
        source, target = x[image, c], y[image, c]
        s = scale[c]
        for i in range(size):
            target[i] = source[i] * s
        finish_row(target, target, size, shift[c], target, False, code, alpha, beta)


# ---------------------------------------------------------------------------- LRN
def _supports_lrn(node: Node, inputs: list) -> bool:
    return _float32_tensor(inputs[0]) and len(inputs[0].shape) == 4


@register_kernel("LRN", "lrn", supports=_supports_lrn)
def build_lrn(node: Node, inputs: list, outputs: list):
    """Local response normalisation (accelerates LRN): float32 NCHW."""
    size = int(node.attrs["size"])
    alpha, beta, bias = float(node.attrs["alpha"]), float(node.attrs["beta"]), float(node.attrs["bias"])
    power = 2 if beta == 0.75 else 1 if beta == 0.5 else 0

    def lrn(node, x, out=None):
        x = np.ascontiguousarray(x, dtype=np.float32)
        y = output_buffer(out, x.shape)
        if np.may_share_memory(x, y):  # the window reads neighbouring channels: never in place
            y = np.empty_like(x)
        _lrn_kernel(x, size, np.float32(alpha / size), np.float32(bias), np.float32(beta), power, y)
        return y

    return writes_into(named(lrn, "lrn"))


@numba.njit(cache=True, fastmath=False, parallel=True)
def _lrn_kernel(x, size, scale, bias, beta, power, y):
    """y = x / (bias + scale * sum of squares over the channel window) ** beta, row by row.

    ``power`` 2: beta = 0.75 by square roots; 1: beta = 0.5; 0: any beta by ``pow``.
    """
    n, channels, height, width = x.shape
    before = (size - 1) // 2
    for task in numba.prange(n * height):
        image, h = task // height, task % height
        squares = np.empty((channels, width), np.float32)
        for c in range(channels):
            row = x[image, c, h]
            for w in range(width):
                squares[c, w] = row[w] * row[w]
        total = np.empty(width, np.float32)
        for c in range(channels):
            total[:] = 0.0
            for offset in range(size):  # the reference's order: 0 + first channel + next ...
                other = c - before + offset
                if 0 <= other < channels:
                    for w in range(width):
                        total[w] += squares[other, w]
            row, out = x[image, c, h], y[image, c, h]
            for w in range(width):
                d = bias + scale * total[w]
                if power == 2:
                    root = math.sqrt(d)
                    out[w] = row[w] / (root * math.sqrt(root))
                elif power == 1:
                    out[w] = row[w] / math.sqrt(d)
                else:
                    out[w] = row[w] / d ** beta
