"""Chapter 03a answers: the affine map, the KL threshold search, an int8 GEMM, per-channel scales.

Same names and signatures as :mod:`exercises.ch03a_quantization`, whose docstrings explain
each task; the comments here only say why a line is the way it is.
"""

from __future__ import annotations

import math

import numpy as np

#: The integers each quantized type holds, and the restricted symmetric range of int8.
UINT8_RANGE = (0, 255)
INT8_RANGE = (-128, 127)
INT8_SYMMETRIC_MAX = 127


# ---------------------------------------------------------------------------- exercise 1
def asymmetric_params(rmin: float, rmax: float) -> tuple[np.float32, int]:
    """uint8: ``rmin`` (or 0) maps to 0, ``rmax`` (or 0) to 255, and 0 to an integer."""
    rmin, rmax = min(float(rmin), 0.0), max(float(rmax), 0.0)  # the range must hold 0
    if rmax == rmin:
        return np.float32(1.0), 0  # an all-zero tensor: any scale is exact
    scale = (rmax - rmin) / (UINT8_RANGE[1] - UINT8_RANGE[0])
    zero_point = int(np.clip(np.rint(UINT8_RANGE[0] - rmin / scale), *UINT8_RANGE))
    return np.float32(scale), zero_point


def symmetric_params(rmin: float, rmax: float) -> tuple[np.float32, int]:
    """int8: ``±max(|rmin|, |rmax|)`` maps to ±127; the zero point is 0."""
    absmax = max(abs(float(rmin)), abs(float(rmax)))
    if absmax == 0.0:
        return np.float32(1.0), 0
    return np.float32(absmax / INT8_SYMMETRIC_MAX), 0


def quantize(x: np.ndarray, scale: float, zero_point: int, dtype=np.uint8) -> np.ndarray:
    """``saturate(round_half_even(x / scale) + zero_point)``, the division in float32."""
    low, high = UINT8_RANGE if np.dtype(dtype) == np.uint8 else INT8_RANGE
    steps = np.rint(np.asarray(x, np.float32) / np.float32(scale))  # np.rint: ties to even
    # Add the zero point in float64, where it cannot overflow, then clamp, then narrow.
    return np.clip(steps.astype(np.float64) + zero_point, low, high).astype(dtype)


def dequantize(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """``(q - zero_point) * scale``: the difference in int32 is exact, the product float32."""
    return ((np.asarray(q).astype(np.int32) - zero_point).astype(np.float32) * np.float32(scale)).astype(np.float32)


# ---------------------------------------------------------------------------- exercise 2
def reference_distribution(hist: np.ndarray, i: int) -> np.ndarray:
    """The first ``i`` bins, with every count beyond them folded into bin ``i - 1``."""
    hist = np.asarray(hist, np.float64)
    p = hist[:i].copy()
    p[-1] += hist[i:].sum()  # clipping moves the outliers onto the threshold
    return p


def _groups(i: int, num_quant_bins: int) -> np.ndarray:
    """The first bin of each of ``num_quant_bins`` groups splitting ``i`` bins evenly."""
    return (np.arange(num_quant_bins) * i) // num_quant_bins


def quantized_distribution(hist: np.ndarray, i: int, num_quant_bins: int) -> np.ndarray:
    """Merge the first ``i`` bins into groups, then spread each group over its non-empty bins of P."""
    hist = np.asarray(hist, np.float64)
    present = reference_distribution(hist, i) > 0
    starts = _groups(i, num_quant_bins)
    sizes = np.diff(np.append(starts, i))
    totals = np.add.reduceat(hist[:i], starts)  # what each quantization level holds
    slots = np.add.reduceat(present.astype(np.float64), starts)  # bins of P it spreads over
    per_bin = np.divide(totals, slots, out=np.zeros_like(totals), where=slots > 0)
    return np.repeat(per_bin, sizes) * present  # Q is 0 wherever P is 0


def kl_divergence(p: np.ndarray, q: np.ndarray, eps: float = 1e-4) -> float:
    """KL(P || Q) of the normalised counts; an empty bin of Q where P has mass gets ``eps / n``."""
    p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
    p, q = p / p.sum(), q / q.sum()
    mass = p > 0  # 0 · log(0 / q) = 0: bins without mass in P do not count
    q = np.where(mass & (q == 0), eps / mass.sum(), q)  # smoothing: a small floor keeps KL finite
    q = q / q.sum()
    return float(np.sum(p[mass] * np.log(p[mass] / q[mass])))


def entropy_threshold(hist: np.ndarray, edges: np.ndarray, num_quant_bins: int = 128) -> float:
    """The upper edge of bin ``i - 1`` for the ``i`` with the least KL(P || Q)."""
    hist = np.asarray(hist, np.float64)
    last = int(np.flatnonzero(hist)[-1]) + 1
    if last <= num_quant_bins:
        return float(edges[last])  # every value fits on the grid without merging bins
    candidates = range(num_quant_bins, last + 1)
    divergences = [kl_divergence(reference_distribution(hist, i), quantized_distribution(hist, i, num_quant_bins))
                   for i in candidates]
    return float(edges[candidates[int(np.argmin(divergences))]])  # argmin: the first of equal minima


# ---------------------------------------------------------------------------- exercise 3
def int32_matmul(a: np.ndarray, a_zero: int, b: np.ndarray, b_zero: int) -> np.ndarray:
    """``sum_k (a - a_zero)(b - b_zero)`` in int32: every partial sum fits, so it is exact."""
    return (a.astype(np.int32) - np.int32(a_zero)) @ (b.astype(np.int32) - np.int32(b_zero))


def quantize_multiplier(multiplier: float) -> tuple[int, int]:
    """``multiplier = q · 2**-shift`` with ``q`` in [2**30, 2**31): a float32 fits in 31 bits."""
    fraction, exponent = math.frexp(float(np.float32(multiplier)))  # fraction in [0.5, 1)
    q = int(fraction * 2**31)  # exact: 24 significant bits moved up by 31
    return q, 31 - exponent


def multiply_by_quantized_multiplier(acc: np.ndarray, q: int, shift: int) -> np.ndarray:
    """``round(acc · q / 2**shift)`` in int64 (|acc · q| < 2**62): add half, shift right."""
    product = np.asarray(acc, np.int64) * np.int64(q)
    return (product + (np.int64(1) << np.int64(shift - 1))) >> np.int64(shift)  # ties round up


def qgemm_u8s8(a: np.ndarray, a_scale: float, a_zero: int, b: np.ndarray, b_scale: float, b_zero: int,
               y_scale: float, y_zero: int, bias: np.ndarray | None = None) -> np.ndarray:
    """Integer GEMM, plus the int32 bias, requantized by ``a_scale · b_scale / y_scale`` to uint8."""
    acc = int32_matmul(a, a_zero, b, b_zero)
    if bias is not None:
        acc = acc + np.asarray(bias, np.int32)  # bias in units of a_scale · b_scale, one per column
    q, shift = quantize_multiplier(np.float32(a_scale) * np.float32(b_scale) / np.float32(y_scale))
    y = multiply_by_quantized_multiplier(acc, q, shift) + y_zero
    return np.clip(y, *UINT8_RANGE).astype(np.uint8)


# ---------------------------------------------------------------------------- exercise 4
def per_channel_scales(w: np.ndarray, axis: int = 0) -> np.ndarray:
    """``max |w|`` over every axis but ``axis``, divided by 127; 1 for an all-zero channel."""
    others = tuple(d for d in range(w.ndim) if d != axis % w.ndim)
    absmax = np.abs(np.asarray(w, np.float64)).max(axis=others)
    return np.where(absmax > 0, absmax / INT8_SYMMETRIC_MAX, 1.0).astype(np.float32)


def quantize_per_channel(w: np.ndarray, scales: np.ndarray, axis: int = 0) -> np.ndarray:
    """Each slice along ``axis`` divided by its own scale, rounded half to even, saturated."""
    shape = [1] * w.ndim
    shape[axis] = -1  # broadcast one scale over each slice
    steps = np.rint(np.asarray(w, np.float32) / np.asarray(scales, np.float32).reshape(shape))
    return np.clip(steps, *INT8_RANGE).astype(np.int8)


def per_channel_error_gain_db(w: np.ndarray, axis: int = 0) -> float:
    """``10 log10(MSE per tensor / MSE per channel)`` of int8 symmetric round trips."""
    w = np.asarray(w, np.float32)
    shape = [1] * w.ndim
    shape[axis] = -1
    channel_scales = per_channel_scales(w, axis).reshape(shape)
    tensor_scale = np.float32(symmetric_params(w.min(), w.max())[0])
    errors = []
    for scale in (tensor_scale, channel_scales):
        steps = np.clip(np.rint(w / scale), *INT8_RANGE)
        errors.append(np.mean((steps * scale - w).astype(np.float64) ** 2))
    return float(10 * np.log10(errors[0] / errors[1]))
