"""Int8 elementwise and pooling kernels: QLinearAdd, QLinearGlobalAveragePool, QuantizeLinear, 8-bit MaxPool.

* ``qlinear_add`` accelerates ``ai.tinyinfer:QLinearAdd`` (:mod:`tinyinfer.ops.qlinear`:
  ``Y = Q(DQ(A) + DQ(B))``) for uint8/int8 tensors with constant per-tensor scales and zero
  points, when B has A's shape, is one value per channel (``(1, C, 1, 1)`` or ``(C, 1, 1)``
  against an NCHW A) or a scalar — or the same with A and B swapped. It computes exactly
  what the reference computes, in float32, in the same order:
  ``rint(((a - a_zp) * a_s + (b - b_zp) * b_s) / y_s) + y_zp``, saturated — so the result
  is bit-identical, with no intermediate array.
* ``qlinear_global_averagepool`` accelerates ``ai.tinyinfer:QLinearGlobalAveragePool``
  (``Q(GlobalAveragePool(DQ(X)))``, rank >= 3) in the reference's own arithmetic: float32
  dequantized values, summed in NumPy's pairwise order (:func:`pairwise_sum`), divided in
  float32, requantized — bit-identical, where an exact integer sum would differ by 1 LSB
  at the odd tie (and the runtime's selection demands equal integers).
* ``quantize_linear_8bit`` accelerates ONNX ``QuantizeLinear`` from float32 to uint8/int8
  with a constant per-tensor scale and zero point (the one float -> int8 step at a
  quantized model's input): ``saturate(rint(x / scale) + zp)`` in float32, as the reference
  divides, so bit-identical (NaN becomes the zero point, as in the reference).
* ``maxpool2d_int8`` accelerates ONNX ``MaxPool`` on uint8 and int8 4-D tensors (opset
  12+ allows them), any kernel, stride, pads, dilations, ``auto_pad`` and ``ceil_mode``,
  without the optional Indices output. The maximum commutes with the monotonic affine map,
  so quantized max pooling *is* MaxPool on the integers (no scales involved). int8 is
  pooled as uint8 after flipping the top bit (an order-preserving map), so one compiled
  kernel serves both. Padding holds the smallest byte, so it never wins.

All of them treat the bytes of uint8 and int8 tensors through one uint8 view plus a
``signed`` flag, so each Numba function compiles once.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from ..ir import Node
from ..ops import OPS
from .registry import named, output_buffer, register_kernel, writes_into

#: The ai.tinyinfer domain of the quantized ops.
DOMAIN = "ai.tinyinfer"
#: Bytes per second for the cost hints (read + write, both threads).
BYTES_PER_SECOND = 8e9
_EIGHT_BIT = (np.dtype(np.uint8), np.dtype(np.int8))


def _const_scalar(value) -> bool:
    return value is not None and value.const is not None and np.asarray(value.const).size == 1


def _scalar(value) -> float | int:
    return np.asarray(value.const).reshape(-1)[0]


def _known(shape) -> bool:
    return shape is not None and all(isinstance(d, int) for d in shape)


def _range(dtype) -> tuple[int, int]:
    info = np.iinfo(dtype)
    return int(info.min), int(info.max)


def _bytes(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array).reshape(-1).view(np.uint8)


# ============================================================================ QLinearAdd
def _add_layout(a_shape, b_shape):
    """``(rows, inner, b_rows, b_inner)`` of B broadcast onto A, or None if not a supported pattern.

    A is read as ``rows x inner``; B's value for ``(row, i)`` is ``b[row % b_rows, i if b_inner > 1 else 0]``.
    """
    size = math.prod(a_shape)
    if tuple(b_shape) == tuple(a_shape):
        return 1, size, 1, size
    if math.prod(b_shape) == 1 and len(b_shape) <= len(a_shape):
        return size, 1, 1, 1
    if len(a_shape) >= 3:
        channels = a_shape[1]
        aligned = (1,) * (len(a_shape) - len(b_shape)) + tuple(b_shape)
        if aligned[0] == 1 and aligned[1] == channels and all(d == 1 for d in aligned[2:]):
            inner = math.prod(a_shape[2:])
            return a_shape[0] * channels, inner, channels, 1
    return None


def _supports_add(node: Node, inputs: list) -> bool:
    """8-bit A, B, Y; constant per-tensor scales and zero points; same shape, per-channel or scalar B (or A)."""
    a, a_s, a_zp, b, b_s, b_zp, y_s, y_zp = inputs
    if a.dtype not in _EIGHT_BIT or b.dtype not in _EIGHT_BIT or y_zp is None or y_zp.dtype not in _EIGHT_BIT:
        return False
    if not all(_const_scalar(v) for v in (a_s, a_zp, b_s, b_zp, y_s, y_zp)):
        return False
    if not (_known(a.shape) and _known(b.shape)):
        return False
    return _add_layout(a.shape, b.shape) is not None or _add_layout(b.shape, a.shape) is not None


def _cost_add(node: Node, inputs: list) -> float:
    return 3 * max(math.prod(inputs[0].shape), math.prod(inputs[3].shape)) / BYTES_PER_SECOND + 5e-6


@register_kernel("QLinearAdd", "qlinear_add", domain=DOMAIN, supports=_supports_add, cost=_cost_add)
def build_qlinear_add(node: Node, inputs: list, outputs: list):
    """Fused dequantize-add-quantize (accelerates ai.tinyinfer:QLinearAdd): 8-bit, same-shape/channel/scalar B."""
    a, a_s, a_zp, b, b_s, b_zp, y_s, y_zp = inputs
    swap = _add_layout(a.shape, b.shape) is None  # A is the broadcast one: add the other way round (exact)
    big, small = (b, a) if swap else (a, b)
    layout = _add_layout(big.shape, small.shape)
    params = [np.float32(_scalar(s)) for s in ((b_s, a_s) if swap else (a_s, b_s))]
    zeros = [int(_scalar(z)) for z in ((b_zp, a_zp) if swap else (a_zp, b_zp))]
    signed = [int(v.dtype == np.int8) for v in (big, small)]
    out_dtype = y_zp.dtype
    low, high = _range(out_dtype)
    y_scale, y_zero = np.float32(_scalar(y_s)), int(_scalar(y_zp))
    shape = tuple(big.shape)

    def qlinear_add(node, a, a_s, a_zp, b, b_s, b_zp, y_s, y_zp, out=None):
        first, second = (b, a) if swap else (a, b)
        y = output_buffer(out, shape, out_dtype)
        _add(_bytes(first), _bytes(second), *layout, signed[0], signed[1], params[0], zeros[0], params[1], zeros[1],
             y_scale, y_zero, low, high, y.reshape(-1).view(np.uint8))
        return y

    return writes_into(named(qlinear_add, "qlinear_add"))


@numba.njit(cache=True, inline="always")
def _value(byte, signed):
    """A stored byte as the integer it means (uint8 as is, int8 sign-extended)."""
    v = np.int32(byte)
    return v - 256 if signed and v >= 128 else v


@numba.njit(cache=True, parallel=True)
def _add(a, b, rows, inner, b_rows, b_inner, a_signed, b_signed, a_scale, a_zero, b_scale, b_zero, y_scale, y_zero,
         low, high, y):
    """``y = clamp(rint((DQ(a) + DQ(b)) / y_scale) + y_zero)`` in float32, in parallel blocks.

    Branch-free, so the loops vectorise: an int8 byte is read as ``(byte ^ 0x80) - 128``,
    and the clamp happens in float32 (exact: the values are integers).
    """
    a_flip, b_flip = np.int32(0x80 if a_signed else 0), np.int32(0x80 if b_signed else 0)
    a_base, b_base = np.int32(a_zero + (128 if a_signed else 0)), np.int32(b_zero + (128 if b_signed else 0))
    lo, hi, zero = np.float32(low), np.float32(high), np.float32(y_zero)
    # unsigned indices (constants too: uint64 + int64 is a float in Numba): no negative-index
    # checks, so LLVM vectorises the loops instead of moving one byte at a time
    if b_inner > 1:  # same shape: the flat arrays, in blocks of 4096
        size = rows * inner
        for block in numba.prange((size + 4095) // 4096):
            first, last = np.uint64(block * 4096), np.uint64(min(size, block * 4096 + 4096))
            for i in range(first, last):
                real = (np.float32((np.int32(a[i]) ^ a_flip) - a_base) * a_scale
                        + np.float32((np.int32(b[i]) ^ b_flip) - b_base) * b_scale)
                v = min(max(np.rint(real / y_scale) + zero, lo), hi)
                y[i] = np.uint8(np.int32(v) & 0xFF)
        return
    for row in numba.prange(rows):
        first, last = np.uint64(row * inner), np.uint64(row * inner + inner)
        other = np.float32((np.int32(b[row % b_rows]) ^ b_flip) - b_base) * b_scale
        for i in range(first, last):
            real = np.float32((np.int32(a[i]) ^ a_flip) - a_base) * a_scale + other
            v = min(max(np.rint(real / y_scale) + zero, lo), hi)
            y[i] = np.uint8(np.int32(v) & 0xFF)


# ============================================================================ QLinearGlobalAveragePool
def _supports_global(node: Node, inputs: list) -> bool:
    """8-bit X of rank >= 3 with known shape, constant per-tensor scales and zero points."""
    x, x_s, x_zp, y_s, y_zp = inputs
    if x.dtype not in _EIGHT_BIT or y_zp is None or y_zp.dtype not in _EIGHT_BIT:
        return False
    if not all(_const_scalar(v) for v in (x_s, x_zp, y_s, y_zp)):
        return False
    return _known(x.shape) and len(x.shape) >= 3 and math.prod(x.shape[2:]) > 0 and math.prod(x.shape[2:]) < 2 ** 23


def _cost_global(node: Node, inputs: list) -> float:
    return math.prod(inputs[0].shape) / BYTES_PER_SECOND + 5e-6


@register_kernel("QLinearGlobalAveragePool", "qlinear_global_averagepool", domain=DOMAIN, supports=_supports_global,
                 cost=_cost_global)
def build_qlinear_global_averagepool(node: Node, inputs: list, outputs: list):
    """Integer plane sums + one requantization (accelerates ai.tinyinfer:QLinearGlobalAveragePool): 8-bit, rank >= 3."""
    x, x_s, x_zp, y_s, y_zp = inputs
    shape = tuple(x.shape)
    planes, area = shape[0] * shape[1], math.prod(shape[2:])
    x_scale, y_scale = np.float32(_scalar(x_s)), np.float32(_scalar(y_s))
    out_dtype = y_zp.dtype
    low, high = _range(out_dtype)
    signed, x_zero, y_zero = int(x.dtype == np.int8), int(_scalar(x_zp)), int(_scalar(y_zp))
    out_shape = shape[:2] + (1,) * (len(shape) - 2)

    def qlinear_global_averagepool(node, x, *rest, out=None):
        y = output_buffer(out, out_shape, out_dtype)
        _global_average(_bytes(x), planes, area, signed, x_zero, x_scale, y_scale, y_zero, low, high,
                        y.reshape(-1).view(np.uint8))
        return y

    return writes_into(named(qlinear_global_averagepool, "qlinear_global_averagepool"))


@numba.njit(cache=True, parallel=True)
def _global_average(x, planes, area, signed, x_zero, x_scale, y_scale, y_zero, low, high, y):
    """``y[p] = clamp(rint(mean(DQ(x[p])) / y_scale) + y_zero)`` in float32, planes in parallel.

    The mean is NumPy's: the dequantized float32 values summed by :func:`pairwise_sum`
    (NumPy's own order), divided by the count in float32 — so the result is the reference's.
    """
    for p in numba.prange(planes):
        base = p * area
        values = np.empty(area, np.float32)
        for i in range(area):
            values[i] = np.float32(_value(x[base + i], signed) - x_zero) * x_scale
        mean = pairwise_sum(values, 0, area) / np.float32(area)
        v = np.int64(np.rint(mean / y_scale)) + y_zero
        y[p] = np.uint8(min(max(v, low), high) & 0xFF)


@numba.njit(cache=True)
def pairwise_sum(a, start, n):
    """NumPy's float32 ``add.reduce`` order: 8 running sums per block of <= 128, halves above.

    NumPy recurses (``sum(first half) + sum(second half)``, the half a multiple of 8); a
    recursive function cannot be loaded back from Numba's cache, so the recursion runs on
    an explicit stack, in the same order.
    """
    if n <= 128:
        return _block_sum(a, start, n)
    frames = np.empty((64, 3), np.int64)  # (start, count, stage); depth ~ log2(n / 128)
    values = np.empty(64, np.float32)
    frames[0, 0], frames[0, 1], frames[0, 2] = start, n, 0
    depth, held = 0, 0
    while depth >= 0:
        first, count, stage = frames[depth, 0], frames[depth, 1], frames[depth, 2]
        if count <= 128:
            values[held] = _block_sum(a, first, count)
            held += 1
            depth -= 1
            continue
        half = count // 2
        half -= half % 8
        if stage == 0:
            frames[depth, 2] = 1
            depth += 1
            frames[depth, 0], frames[depth, 1], frames[depth, 2] = first, half, 0
        elif stage == 1:
            frames[depth, 2] = 2
            depth += 1
            frames[depth, 0], frames[depth, 1], frames[depth, 2] = first + half, count - half, 0
        else:
            values[held - 2] = values[held - 2] + values[held - 1]
            held -= 1
            depth -= 1
    return values[0]


@numba.njit(cache=True, inline="always")
def _block_sum(a, start, n):
    """NumPy's sum of at most 128 float32 values: 8 interleaved running sums, then the rest."""
    if n < 8:
        total = np.float32(-0.0)
        for i in range(n):
            total += a[start + i]
        return total
    r0, r1, r2, r3 = a[start], a[start + 1], a[start + 2], a[start + 3]
    r4, r5, r6, r7 = a[start + 4], a[start + 5], a[start + 6], a[start + 7]
    i = 8
    while i < n - n % 8:
        at = start + i
        r0 += a[at]
        r1 += a[at + 1]
        r2 += a[at + 2]
        r3 += a[at + 3]
        r4 += a[at + 4]
        r5 += a[at + 5]
        r6 += a[at + 6]
        r7 += a[at + 7]
        i += 8
    total = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    while i < n:
        total += a[start + i]
        i += 1
    return total


# ============================================================================ QuantizeLinear
def _supports_quantize(node: Node, inputs: list) -> bool:
    """float32 x of known shape -> uint8/int8, constant per-tensor float32 scale and zero point."""
    x, scale = inputs[0], inputs[1]
    zero = inputs[2] if len(inputs) > 2 else None
    attrs = node.attrs
    if x.dtype != np.float32 or not _known(x.shape) or attrs.get("block_size") or attrs.get("precision"):
        return False
    if not _const_scalar(scale) or scale.dtype != np.float32 or float(_scalar(scale)) == 0.0:
        return False
    if zero is None:
        return attrs.get("output_dtype", 0) in (0, 2)  # no zero point: uint8 (TensorProto.UINT8 = 2)
    return _const_scalar(zero) and zero.dtype in _EIGHT_BIT


def _cost_quantize(node: Node, inputs: list) -> float:
    return 5 * math.prod(inputs[0].shape) / BYTES_PER_SECOND + 5e-6


@register_kernel("QuantizeLinear", "quantize_linear_8bit", supports=_supports_quantize, cost=_cost_quantize)
def build_quantize_linear(node: Node, inputs: list, outputs: list):
    """float32 -> uint8/int8 per-tensor quantization (accelerates QuantizeLinear): rint(x / s) + zp, saturated."""
    x, scale = inputs[0], inputs[1]
    zero = inputs[2] if len(inputs) > 2 else None
    dtype = np.dtype(np.uint8) if zero is None else zero.dtype
    low, high = _range(dtype)
    y_scale, y_zero = np.float32(_scalar(scale)), 0 if zero is None else int(_scalar(zero))
    shape = tuple(x.shape)

    def quantize_linear_8bit(node, x, *rest, out=None):
        y = output_buffer(out, shape, dtype)
        _quantize(np.ascontiguousarray(x, np.float32).reshape(-1), y_scale, y_zero, low, high,
                  y.reshape(-1).view(np.uint8))
        return y

    return writes_into(named(quantize_linear_8bit, "quantize_linear_8bit"))


@numba.njit(cache=True, parallel=True)
def _quantize(x, scale, zero, low, high, y):
    """``y = clamp(rint(x / scale) + zero)`` as bytes; NaN -> zero. Blocks of 4096 in parallel."""
    blocks = (x.size + 4095) // 4096
    lo, hi, z = np.float32(low), np.float32(high), np.float32(zero)
    for block in numba.prange(blocks):
        # unsigned indices: no negative-index checks, the loop vectorises
        for i in range(np.uint64(block * 4096), np.uint64(min(x.size, block * 4096 + 4096))):
            ratio = np.rint(x[i] / scale)
            v = z if np.isnan(ratio) else min(max(ratio + z, lo), hi)
            y[i] = np.uint8(np.int32(v) & 0xFF)


# ============================================================================ MaxPool on 8-bit tensors
def _pool_window(node: Node, inputs: list):
    x = inputs[0]
    if x.dtype not in _EIGHT_BIT or not _known(x.shape) or len(x.shape) != 4 or not all(d > 0 for d in x.shape):
        return None
    if len(node.outputs) > 1 and node.outputs[1]:
        return None  # the Indices output: the reference computes it
    return OPS[("", "MaxPool")].geometry(node, tuple(x.shape[2:]))


def _supports_maxpool(node: Node, inputs: list) -> bool:
    """uint8 / int8 NCHW MaxPool, any window, without the Indices output."""
    window = _pool_window(node, inputs)
    return window is not None and all(isinstance(o, int) and o > 0 for o in window.output)


def _cost_maxpool(node: Node, inputs: list) -> float:
    window = _pool_window(node, inputs)
    n, c = inputs[0].shape[:2]
    return n * c * math.prod(window.output) * math.prod(window.kernel) / 20e9 + 5e-6


@register_kernel("MaxPool", "maxpool2d_int8", supports=_supports_maxpool, cost=_cost_maxpool)
def build_maxpool_int8(node: Node, inputs: list, outputs: list):
    """2-D max pooling on bytes (accelerates MaxPool for uint8/int8): NCHW, any window, no Indices."""
    window = _pool_window(node, inputs)
    n, c, h, w = inputs[0].shape
    (kh, kw), (sh, sw), (dh, dw) = window.kernel, window.strides, window.dilations
    top, left = window.pads_begin
    oh, ow = window.output
    flip = 0x80 if inputs[0].dtype == np.int8 else 0
    dtype = inputs[0].dtype
    height = max(h + top, (oh - 1) * sh + dh * (kh - 1) + 1)
    width = max(w + left, (ow - 1) * sw + dw * (kw - 1) + 1)

    def maxpool2d_int8(node, x, out=None):
        y = output_buffer(out, (n, c, oh, ow), dtype)
        _maxpool(_bytes(x).reshape(n * c, h, w), flip, kh, kw, sh, sw, dh, dw, top, left, height, width,
                 y.reshape(n * c, oh, ow).view(np.uint8))
        return y

    return writes_into(named(maxpool2d_int8, "maxpool2d_int8"))


@numba.njit(cache=True, parallel=True)
def _maxpool(x, flip, kh, kw, sh, sw, dh, dw, top, left, height, width, y):
    """Every plane in parallel: pad with byte 0 (after the flip: the smallest), max over taps row by row."""
    planes, h, w = x.shape
    oh, ow = y.shape[1], y.shape[2]
    for plane in numba.prange(planes):
        padded = np.zeros((height, width), np.uint8)
        for i in range(h):
            for j in range(w):
                padded[top + i, left + j] = x[plane, i, j] ^ flip
        best = np.empty(ow, np.uint8)
        for oy in range(oh):
            best[:] = 0
            for i in range(kh):
                line = padded[oy * sh + i * dh]
                for j in range(kw):
                    start = j * dw
                    if sw == 1:
                        row = line[start:start + ow]
                        for ox in range(ow):
                            best[ox] = max(best[ox], row[ox])
                    else:
                        for ox in range(ow):
                            best[ox] = max(best[ox], line[start + ox * sw])
            for ox in range(ow):
                y[plane, oy, ox] = best[ox] ^ flip
