"""Chapter 03a exercises: quantization, from the affine map to an int8 matrix product.

1. :func:`asymmetric_params`, :func:`symmetric_params`, :func:`quantize`, :func:`dequantize` —
   the affine map between reals and 8-bit integers, exactly as ONNX QuantizeLinear defines it.
2. :func:`reference_distribution`, :func:`quantized_distribution`, :func:`kl_divergence`,
   :func:`entropy_threshold` — the calibration threshold with the least KL divergence, as
   TensorRT's entropy calibrator searches it.
3. :func:`int32_matmul`, :func:`quantize_multiplier`, :func:`multiply_by_quantized_multiplier`,
   :func:`qgemm_u8s8` — a u8 × s8 matrix product accumulated in int32 and requantized to uint8
   with integer arithmetic only.
4. :func:`per_channel_scales`, :func:`quantize_per_channel`, :func:`per_channel_error_gain_db` —
   one scale per output channel of a Conv weight, and what it buys over one per tensor.

Replace each ``raise NotImplementedError`` with your code (NumPy is all you need), then grade it:

    pytest tests/exercises/test_ch03a_quantization.py --impl=exercises -m ex1   # or ex2, ex3, ex4
    pytest tests/exercises --impl=exercises -m ch03a_ex1                        # the same, by chapter mark

The graded tests compare your answers with ONNX's QuantizeLinear and DequantizeLinear (run by
``onnx.reference``), with the engine's own quantizer (:mod:`tinyinfer.compress.affine`),
calibrator (:mod:`tinyinfer.compress.calibrate`) and int8 GEMM reference
(:func:`tinyinfer.kernels.int8_gemm.qgemm_naive`), with SciPy, with exact integer and float64
arithmetic, and with distributions whose right answer is known. They never look at the
solution file.
"""

from __future__ import annotations

import numpy as np


# ---------------------------------------------------------------------------- exercise 1
def asymmetric_params(rmin: float, rmax: float) -> tuple[np.float32, int]:
    """Scale and zero point that spread the real range ``[rmin, rmax]`` over uint8's 0…255.

    First widen the range to include 0 (``rmin = min(rmin, 0)``, ``rmax = max(rmax, 0)``):
    zero padding and ReLU's zeros must be exact. Then

        scale = (rmax - rmin) / 255
        zero_point = round(0 - rmin / scale), clamped to 0…255

    so that ``rmin`` maps to 0, ``rmax`` to 255 and the real 0 to the integer ``zero_point``
    (Jacob et al., 2018). Compute in float64 and return ``(np.float32(scale), int(zero_point))``.
    A range of zero width (both ends 0) has no step to spread: return ``(np.float32(1.0), 0)``.

    Example: ``[-1, 3]`` gives scale 4/255 ≈ 0.01569 and zero point round(63.75) = 64.
    """
    raise NotImplementedError("exercise: asymmetric_params (chapter 03a, exercise 1)")


def symmetric_params(rmin: float, rmax: float) -> tuple[np.float32, int]:
    """Scale and zero point of *symmetric* int8: ``±max(|rmin|, |rmax|)`` maps to ±127.

    ``scale = max(|rmin|, |rmax|) / 127`` and the zero point is 0. The range −127…127 leaves
    out −128 so the grid is symmetric around 0 (weights are quantized this way: with zero point
    0 the int8 GEMM needs no correction for the weights' zero point). Return
    ``(np.float32(scale), 0)``; for an all-zero range, ``(np.float32(1.0), 0)``.

    Example: ``[-0.5, 2.54]`` gives scale 0.02 and zero point 0.
    """
    raise NotImplementedError("exercise: symmetric_params (chapter 03a, exercise 1)")


def quantize(x: np.ndarray, scale: float, zero_point: int, dtype=np.uint8) -> np.ndarray:
    """ONNX QuantizeLinear: ``q = saturate(round(x / scale) + zero_point)`` as ``dtype``.

    ``dtype`` is ``np.uint8`` (saturate to 0…255) or ``np.int8`` (−128…127: saturation uses
    the type's full range, even for a symmetric scale). Three details decide whether your
    integers equal ONNX Runtime's:

    * divide in **float32** (``np.float32(x) / np.float32(scale)``), as the spec does;
    * round **half to even** (``np.rint``: 0.5 → 0, 1.5 → 2, 2.5 → 2, −0.5 → 0), not half up
      (``np.floor(v + 0.5)``) nor half away from zero (C's ``roundf``);
    * **saturate** before narrowing: ``np.array(300).astype(np.uint8)`` is 44, not 255. Add
      the zero point in a wide type, ``np.clip`` to the range, then ``astype(dtype)``.

    Example: scale 0.5, zero point 10, uint8: x = (0.25, 0.75, -3, 1000) gives (10, 12, 4, 255).
    """
    raise NotImplementedError("exercise: quantize (chapter 03a, exercise 1)")


def dequantize(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """ONNX DequantizeLinear: ``x = (q - zero_point) * scale`` in float32.

    Subtract in int32 (``q.astype(np.int32) - zero_point``: in uint8 the difference would
    wrap around), convert to float32 and multiply by ``np.float32(scale)``. Return float32.

    Example: q = (10, 12, 4), scale 0.5, zero point 10 gives (0.0, 1.0, -3.0).
    """
    raise NotImplementedError("exercise: dequantize (chapter 03a, exercise 1)")


# ---------------------------------------------------------------------------- exercise 2
def reference_distribution(hist: np.ndarray, i: int) -> np.ndarray:
    """P for the threshold at the upper edge of bin ``i - 1``: what clipping there leaves.

    ``hist`` counts |x| in bins from 0 upward. Clipping at the threshold moves every value
    above it onto the threshold, so P is the first ``i`` bins with the counts of all bins
    ``i, i+1, ...`` (the outliers) added to the last one, ``P[i - 1]``. Return float64 of
    length ``i``; its sum is ``hist.sum()``.

    Example: hist = (5, 4, 3, 2, 1), i = 3 gives (5, 4, 6).
    """
    raise NotImplementedError("exercise: reference_distribution (chapter 03a, exercise 2)")


def quantized_distribution(hist: np.ndarray, i: int, num_quant_bins: int) -> np.ndarray:
    """Q: the first ``i`` bins as ``num_quant_bins`` quantization levels see them, expanded back.

    Quantizing ``[0, threshold]`` to ``num_quant_bins`` levels merges the ``i`` bins into that
    many groups; group ``j`` holds bins ``j·i // num_quant_bins`` up to (not including)
    ``(j+1)·i // num_quant_bins``. Then:

    1. each group's total count is taken from ``hist[:i]`` — the bins *without* the outliers
       folded in (a level cannot know what was clipped onto it);
    2. it is spread evenly over the bins of the group where P (your
       :func:`reference_distribution`) is non-zero; bins where P is 0 get 0.

    Return float64 of length ``i``. So Q has P's support, and where P is smooth Q equals it;
    Q differs where detail finer than a level was lost, and at the last bin, where P holds
    the outliers and Q does not.

    Example: hist = (2, 0, 4, 6, 1), i = 4, 2 levels: groups {0, 1} and {2, 3}; P = (2, 0, 4, 7);
    the first group's 2 counts go to bin 0 only (P[1] = 0), the second's 10 to bins 2 and 3:
    Q = (2, 0, 5, 5).
    """
    raise NotImplementedError("exercise: quantized_distribution (chapter 03a, exercise 2)")


def kl_divergence(p: np.ndarray, q: np.ndarray, eps: float = 1e-4) -> float:
    """The Kullback-Leibler divergence KL(P ‖ Q) = Σ P log(P / Q) of two histograms.

    Normalise both to probabilities (divide each by its sum). Sum only over the bins where
    P > 0 (``0 · log 0 = 0``). Where P > 0 but Q = 0 the divergence would be infinite — the
    clipped outliers in P's last bin can do that — so *smooth* Q first: give each such bin the
    probability ``eps / n``, with ``n`` the number of bins where P > 0, then renormalise Q to
    sum 1. Use the natural log. Return a Python float.

    Check: ``kl_divergence(p, p) == 0``; without empty bins of Q it equals
    ``scipy.stats.entropy(p, q)``.
    """
    raise NotImplementedError("exercise: kl_divergence (chapter 03a, exercise 2)")


def entropy_threshold(hist: np.ndarray, edges: np.ndarray, num_quant_bins: int = 128) -> float:
    """The clipping threshold whose quantized histogram loses the least information.

    ``hist`` counts |x| over the bins ``[edges[k], edges[k+1])``, ``edges[0] = 0``. Let ``last``
    be one past the last non-empty bin. If ``last <= num_quant_bins``, every value fits on the
    grid without merging bins: return ``edges[last]``. Otherwise try every candidate
    ``i = num_quant_bins, num_quant_bins + 1, ..., last`` (the threshold at ``edges[i]``),
    score it by ``kl_divergence(reference_distribution(hist, i), quantized_distribution(hist, i,
    num_quant_bins))`` and return ``edges[i]`` of the smallest score (the first, on ties), as a
    float.

    A small threshold clips much (P's last bin swells, Q cannot follow); a large one merges
    many bins per level (Q is coarse). The minimum balances the two (Migacz, 2017, "8-bit
    Inference with TensorRT"). ``num_quant_bins = 128`` is int8's positive half for data of
    both signs. Example: a Gaussian with a few far outliers gets a threshold near 4σ, not at
    the outliers.
    """
    raise NotImplementedError("exercise: entropy_threshold (chapter 03a, exercise 2)")


# ---------------------------------------------------------------------------- exercise 3
def int32_matmul(a: np.ndarray, a_zero: int, b: np.ndarray, b_zero: int) -> np.ndarray:
    """``acc = (a - a_zero) @ (b - b_zero)`` for uint8 ``a`` (M×K), int8 ``b`` (K×N), in int32.

    An int8 layer multiplies bytes and adds in 32 bits: |u8 · s8| ≤ 255 · 128 and a sum of K
    of them fits int32 for any K a layer has. Widen *before* subtracting (``a - a_zero`` in
    uint8 wraps around) and multiply in int32. Return an int32 (M, N) array.
    """
    raise NotImplementedError("exercise: int32_matmul (chapter 03a, exercise 3)")


def quantize_multiplier(multiplier: float) -> tuple[int, int]:
    """Write a real multiplier ``M`` (0 < M < 1, a float32) as ``q · 2**-shift`` exactly.

    ``q`` is a Q31 fixed-point number, an integer in ``[2**30, 2**31)``; ``shift`` a positive
    integer. ``math.frexp(M)`` gives ``M = f · 2**e`` with ``f`` in [0.5, 1): then
    ``q = f · 2**31`` (an integer: a float32 has 24 significant bits) and ``shift = 31 - e``.
    Return ``(q, shift)`` as Python ints. This is how gemmlowp and TFLite carry
    ``M = s_a s_b / s_y`` into integer-only kernels (Jacob et al., 2018, section 2.2).

    Example: M = 0.75 = 0.75 · 2**0 gives q = 1610612736 (0.75 · 2**31) and shift = 31.
    """
    raise NotImplementedError("exercise: quantize_multiplier (chapter 03a, exercise 3)")


def multiply_by_quantized_multiplier(acc: np.ndarray, q: int, shift: int) -> np.ndarray:
    """``acc · M`` rounded to the nearest integer, with integer arithmetic only.

    ``acc`` is int32; ``(q, shift)`` come from :func:`quantize_multiplier`. The product
    ``acc · q`` fits int64 (|acc · q| < 2**62); dividing it by ``2**shift`` with rounding is
    ``(acc · q + 2**(shift - 1)) >> shift`` (add half, then an arithmetic shift, which floors).
    Ties may round either way — the grader accepts any result within 1/2 of ``acc · M``.
    Return an int64 array of ``acc``'s shape.
    """
    raise NotImplementedError("exercise: multiply_by_quantized_multiplier (chapter 03a, exercise 3)")


def qgemm_u8s8(a: np.ndarray, a_scale: float, a_zero: int, b: np.ndarray, b_scale: float, b_zero: int,
               y_scale: float, y_zero: int, bias: np.ndarray | None = None) -> np.ndarray:
    """A quantized layer ``y = a @ b (+ bias)``: uint8 in, int8 weights, uint8 out.

    With ``a = a_scale (q_a - a_zero)``, ``b = b_scale (q_b - b_zero)`` and
    ``y = y_scale (q_y - y_zero)`` the real product gives

        q_y = saturate(y_zero + M · (acc + bias)),   M = a_scale · b_scale / y_scale

    where ``acc`` is your :func:`int32_matmul` and ``bias`` (None or int32, one per column of
    the output) is already in units of ``a_scale · b_scale``, as ONNX's QLinearConv takes it.
    Compute ``M`` in float32, rescale with :func:`quantize_multiplier` and
    :func:`multiply_by_quantized_multiplier`, add ``y_zero`` and clamp to 0…255. Return uint8.

    What the grader accepts: every output within 1 (one least significant bit) of the float64
    result ``rint(M · (acc + bias)) + y_zero`` clamped, at least 99 % of them equal to it, and
    outputs beyond 0…255 saturated exactly. A float rescale (``np.rint(acc * M)``) passes too;
    truncating instead of rounding does not.
    """
    raise NotImplementedError("exercise: qgemm_u8s8 (chapter 03a, exercise 3)")


# ---------------------------------------------------------------------------- exercise 4
def per_channel_scales(w: np.ndarray, axis: int = 0) -> np.ndarray:
    """One symmetric int8 scale per slice of ``w`` along ``axis``: ``max |w| over the slice / 127``.

    For a Conv weight (M, C, kh, kw), ``axis = 0`` gives one scale per output channel; for a
    MatMul weight (K, N), ``axis = 1`` one per output column. Take the maximum of ``|w|`` over
    every axis except ``axis``. A channel of zeros gets scale 1.0 (any positive scale
    represents it exactly). Return float32 of shape ``(w.shape[axis],)``.
    """
    raise NotImplementedError("exercise: per_channel_scales (chapter 03a, exercise 4)")


def quantize_per_channel(w: np.ndarray, scales: np.ndarray, axis: int = 0) -> np.ndarray:
    """ONNX QuantizeLinear with a per-axis scale and zero point 0: int8, one scale per slice.

    Reshape ``scales`` so it broadcasts along ``axis`` (shape ``[1, ..., len(scales), ..., 1]``),
    divide in float32, round half to even, clamp to −128…127, return int8. With the scales of
    :func:`per_channel_scales` each channel's largest |w| lands on ±127.
    """
    raise NotImplementedError("exercise: quantize_per_channel (chapter 03a, exercise 4)")


def per_channel_error_gain_db(w: np.ndarray, axis: int = 0) -> float:
    """How much smaller the quantization error is per channel than per tensor, in decibels.

    Quantize ``w`` to symmetric int8 twice and dequantize (round half to even, clamp to
    −128…127, multiply back by the scale):

    * per tensor, with the one scale of :func:`symmetric_params` over all of ``w``;
    * per channel, with :func:`per_channel_scales` along ``axis``.

    Return ``10 · log10(MSE_per_tensor / MSE_per_channel)``, with
    ``MSE = mean((round_trip - w)²)`` over all elements, as a float. Rounding noise is uniform
    over a step (power s²/12), so if the channels' largest |w| are ``a_c`` the gain is about
    ``10 log10(max(a_c)² / mean(a_c²))``: 0 dB when all channels have the same range, and the
    more the ranges differ, the more one scale per channel pays.
    """
    raise NotImplementedError("exercise: per_channel_error_gain_db (chapter 03a, exercise 4)")
