"""Linear quantization: QuantizeLinear, DequantizeLinear, and the integer ops built on them.

Linear (affine) quantization stores a real tensor ``r`` as integers ``q`` with a *scale* and
a *zero point*: ``r ≈ (q - zero_point) * scale`` (Jacob et al., "Quantization and Training
of Neural Networks for Efficient Integer-Arithmetic-Only Inference", CVPR 2018).

* **QuantizeLinear** computes ``q = saturate(round(x / scale) + zero_point)``, rounding half
  to even and clamping to the output type's range (uint8 [0, 255], int8 [-128, 127], int4
  [-8, 7], ...); float8 outputs round to the nearest float8 and saturate to its largest
  finite value.
* **DequantizeLinear** computes ``(q - zero_point) * scale``.
* The scale and zero point are a scalar (*per tensor*), a 1-D tensor along ``axis`` (*per
  axis*, e.g. one scale per output channel of a weight), or a tensor shaped like the input
  with one axis divided into blocks of ``block_size`` (*blocked*, opset 21).
* **DynamicQuantizeLinear** picks a uint8 scale and zero point from the tensor's own range.
* **ConvInteger**, **QLinearMatMul** and **QLinearConv** (and MatMulInteger, which lives with
  MatMul in :mod:`tinyinfer.ops.linalg`) multiply
  quantized tensors exactly: ``(a - a_zero) @ (b - b_zero)`` with 32-bit integer
  accumulation; the QLinear ops then rescale the accumulator by ``a_scale * b_scale /
  y_scale`` and quantize it again.

The integer products are computed with float64 BLAS: every product of two 8-bit values is
an integer below 2**16 and every partial sum stays far below 2**53, so float64 holds them
exactly and the result is the exact integer sum (NumPy's integer matmul does not use BLAS
and is much slower). Semantics follow the ONNX spec: QuantizeLinear-25, DequantizeLinear-25,
DynamicQuantizeLinear-11, ConvInteger-10, QLinearMatMul-21,
QLinearConv-10.
"""

from __future__ import annotations

import itertools
import math

import ml_dtypes
import numpy as np

from ..ir import Node, dtypes
from .base import Op, bad_attribute, fail, normalize_axis, out, register, require_inputs
from .generator import cast_array
from .linalg import matmul_shape

#: Integer output types and the range QuantizeLinear saturates to.
INTEGER_RANGES: dict[np.dtype, tuple[int, int]] = {
    np.dtype(np.uint8): (0, 255),
    np.dtype(np.int8): (-128, 127),
    np.dtype(np.uint16): (0, 65535),
    np.dtype(np.int16): (-32768, 32767),
    np.dtype(ml_dtypes.uint4): (0, 15),
    np.dtype(ml_dtypes.int4): (-8, 7),
    np.dtype(ml_dtypes.uint2): (0, 3),
    np.dtype(ml_dtypes.int2): (-2, 1),
}
#: Float outputs QuantizeLinear can produce (float8 saturate; float4/float6 have no inf).
FLOAT_OUTPUTS = frozenset(
    np.dtype(t)
    for t in (
        ml_dtypes.float8_e4m3fn,
        ml_dtypes.float8_e4m3fnuz,
        ml_dtypes.float8_e5m2,
        ml_dtypes.float8_e5m2fnuz,
        ml_dtypes.float4_e2m1fn,
        ml_dtypes.float6_e2m3fn,
        ml_dtypes.float6_e3m2fn,
    )
)
QUANTIZED_TYPES = frozenset(INTEGER_RANGES) | FLOAT_OUTPUTS
UINT8 = np.dtype(np.uint8)
INT32 = np.dtype(np.int32)
FLOAT32 = np.dtype(np.float32)


# ---------------------------------------------------------------------------- QuantizeLinear
@register
class QuantizeLinear(Op):
    """``y = saturate(round_half_even(x / y_scale) + y_zero_point)``.

    The output type is the zero point's type, else ``output_dtype``, else uint8. The
    division runs in the ``precision`` type if given, else in ``y_scale``'s type (see
    :func:`_division_dtype` for mixed types).
    """

    op_type = "QuantizeLinear"
    since = 10
    attributes = {"axis": 1, "saturate": 1, "block_size": 0, "output_dtype": 0, "precision": 0}

    def check(self, node):
        _check_block_size(node)
        for name in ("output_dtype", "precision"):
            if node.attrs[name]:
                _dtype_attribute(node, name)
        if node.attrs["output_dtype"] and _dtype_attribute(node, "output_dtype") not in QUANTIZED_TYPES:
            raise bad_attribute(node, f"output_dtype {node.attrs['output_dtype']} is not a quantized type")

    def infer(self, node, inputs):
        require_inputs(node, inputs, 2, 3)
        x, scale = inputs[0], inputs[1]
        zero_point = inputs[2] if len(inputs) > 2 else None
        dtype = _quantized_dtype(node, None if zero_point is None else zero_point.dtype)
        _check_param_shape(node, x.shape, scale.shape, "y_scale")
        return [out(node, 0, dtype, x.shape)]

    def reference(self, node, x, y_scale, y_zero_point=None):
        attrs = node.attrs
        dtype = _quantized_dtype(node, None if y_zero_point is None else y_zero_point.dtype)
        precision = _dtype_attribute(node, "precision") if attrs["precision"] else None
        axis, block_size = attrs["axis"], attrs["block_size"]
        scale = expand_param(node, y_scale, x.shape, axis, block_size, "y_scale")
        zero_point = None
        if y_zero_point is not None:
            zero_point = expand_param(node, y_zero_point, x.shape, axis, block_size, "y_zero_point")
        return quantize(x, scale, zero_point, dtype, saturate=bool(attrs["saturate"]), precision=precision)


def quantize(x, scale, zero_point, dtype, *, saturate: bool = True, precision=None) -> np.ndarray:
    """``saturate(round_half_even(x / scale) + zero_point)`` as ``dtype``; scale/zero point broadcast to ``x``."""
    dtype = np.dtype(dtype)
    scale = np.asarray(scale)
    compute = np.dtype(precision) if precision is not None else _division_dtype(x.dtype, scale.dtype)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        ratio = x.astype(compute) / scale.astype(compute)
        if dtype in INTEGER_RANGES:
            low, high = INTEGER_RANGES[dtype]
            shifted = np.rint(ratio.astype(np.float64))
            if zero_point is not None:
                shifted = shifted + np.asarray(zero_point).astype(np.float64)
            # NaN has no integer value (undefined in the spec): it becomes the zero point.
            shifted = np.where(np.isnan(shifted), 0 if zero_point is None else zero_point, shifted)
            return np.clip(shifted, low, high).astype(dtype)
        if dtype in FLOAT_OUTPUTS:
            if zero_point is not None and np.any(np.asarray(zero_point).astype(np.float32) != 0):
                ratio = ratio.astype(np.float32) + np.asarray(zero_point).astype(np.float32)
            return cast_array(ratio, dtype, saturate=saturate)
    raise ValueError(f"{dtype} is not a quantized type")


def _division_dtype(x_dtype: np.dtype, scale_dtype: np.dtype) -> np.dtype:
    """The type ``x / y_scale`` is computed in when no ``precision`` is given.

    The spec says the scale's type sets the precision. For the usual case, ``x`` and
    ``y_scale`` of one type, that is that type; for mixed types (allowed from opset 23)
    tinyinfer divides in the wider of the two, as onnx.reference and ONNX Runtime do, rather
    than first rounding ``x`` to a narrower scale type. float8e8m0 scales divide in float32.
    """
    if scale_dtype not in _FLOAT_SCALES:
        scale_dtype = FLOAT32
    if x_dtype == scale_dtype:
        return scale_dtype
    try:
        return np.result_type(x_dtype, scale_dtype)
    except TypeError:  # bfloat16 against float16 or an integer: no common NumPy type
        return FLOAT32


_FLOAT_SCALES = frozenset(np.dtype(t) for t in (np.float16, np.float32, np.float64, ml_dtypes.bfloat16))


# ---------------------------------------------------------------------------- DequantizeLinear
@register
class DequantizeLinear(Op):
    """``y = (x - x_zero_point) * x_scale``, in ``output_dtype`` if given, else in ``x_scale``'s type."""

    op_type = "DequantizeLinear"
    since = 10
    attributes = {"axis": 1, "block_size": 0, "output_dtype": 0}

    def check(self, node):
        _check_block_size(node)
        if node.attrs["output_dtype"]:
            dtype = _dtype_attribute(node, "output_dtype")
            if dtype.kind != "f" and dtype != np.dtype(ml_dtypes.bfloat16):
                raise bad_attribute(node, f"output_dtype must be a float type, got {dtype}")

    def infer(self, node, inputs):
        require_inputs(node, inputs, 2, 3)
        x, scale = inputs[0], inputs[1]
        zero_point = inputs[2] if len(inputs) > 2 else None
        zero_dtype = None if zero_point is None else zero_point.dtype
        if zero_dtype is not None and x.dtype is not None and zero_dtype != x.dtype:
            raise fail(node, f"x_zero_point has type {zero_point.dtype}, but x has type {x.dtype}; they must match")
        _check_param_shape(node, x.shape, scale.shape, "x_scale")
        return [out(node, 0, self._output_dtype(node, scale.dtype), x.shape)]

    def _output_dtype(self, node, scale_dtype):
        if node.attrs["output_dtype"]:
            return _dtype_attribute(node, "output_dtype")
        return scale_dtype

    def reference(self, node, x, x_scale, x_zero_point=None):
        attrs = node.attrs
        scale = expand_param(node, x_scale, x.shape, attrs["axis"], attrs["block_size"], "x_scale")
        zero_point = None
        if x_zero_point is not None:
            zero_point = expand_param(node, x_zero_point, x.shape, attrs["axis"], attrs["block_size"], "x_zero_point")
        return dequantize(x, scale, zero_point, self._output_dtype(node, x_scale.dtype))


def dequantize(x, scale, zero_point, dtype) -> np.ndarray:
    """``(x - zero_point) * scale`` computed in float32 (exact difference first), cast to ``dtype``."""
    if x.dtype.kind in "iu" or x.dtype in INTEGER_RANGES:
        difference = x.astype(np.int64)
        if zero_point is not None:
            difference = difference - np.asarray(zero_point).astype(np.int64)
        difference = difference.astype(np.float32)
    else:  # float8 / float4: the zero point is 0 in practice, but the formula is the same
        difference = x.astype(np.float32)
        if zero_point is not None:
            difference = difference - np.asarray(zero_point).astype(np.float32)
    return (difference * np.asarray(scale).astype(np.float32)).astype(dtype)


# ---------------------------------------------------------------------------- DynamicQuantizeLinear
@register
class DynamicQuantizeLinear(Op):
    """uint8 quantization with a scale and zero point computed from ``x``'s range (widened to hold 0).

    ``scale = (max(0, max x) - min(0, min x)) / 255``, ``zero_point = saturate(round(0 - min / scale))``,
    ``y = saturate(round(x / scale) + zero_point)``. All-zero input gets scale 1/255.
    """

    op_type = "DynamicQuantizeLinear"
    since = 11

    def infer(self, node, inputs):
        require_inputs(node, inputs, 1)
        return [out(node, 0, UINT8, inputs[0].shape), out(node, 1, FLOAT32, ()), out(node, 2, UINT8, ())]

    def reference(self, node, x):
        low, high = 0.0, 255.0
        x = x.astype(np.float32, copy=False)
        top = np.float32(max(0.0, float(x.max()))) if x.size else np.float32(0)
        bottom = np.float32(min(0.0, float(x.min()))) if x.size else np.float32(0)
        span = top - bottom if top != bottom else np.float32(1)
        scale = np.float32(span / np.float32(high - low))
        zero_point = np.rint(np.clip(np.float32(low) - bottom / scale, low, high))
        y = np.clip(np.rint(x / scale) + zero_point, low, high).astype(np.uint8)
        return y, np.array(scale, dtype=np.float32), np.array(zero_point, dtype=np.uint8)


# ---------------------------------------------------------------------------- QLinearMatMul
@register
class QLinearMatMul(Op):
    """Quantized matmul: ``quantize((a - a_zero) @ (b - b_zero) * a_scale * b_scale / y_scale + y_zero)``."""

    op_type = "QLinearMatMul"
    since = 10

    def infer(self, node, inputs):
        require_inputs(node, inputs, 8)
        a, b, y_zero_point = inputs[0], inputs[3], inputs[7]
        return [out(node, 0, y_zero_point.dtype, matmul_shape(node, a.shape, b.shape))]

    def reference(self, node, a, a_scale, a_zero_point, b, b_scale, b_zero_point, y_scale, y_zero_point):
        shifted_a, shifted_b = _shift(a, a_zero_point, "a", a.ndim), _shift(b, b_zero_point, "b", b.ndim)
        if shifted_a.dtype.kind == "f" or shifted_b.dtype.kind == "f":  # float8 inputs: a float product
            accumulator = np.matmul(shifted_a.astype(np.float64), shifted_b.astype(np.float64))
        else:
            accumulator = integer_matmul(shifted_a, shifted_b)
        multiplier = requantize_multiplier(
            _matmul_param(a_scale, "a", a.ndim), _matmul_param(b_scale, "b", b.ndim), y_scale
        )
        return requantize(accumulator, multiplier, y_zero_point)


def integer_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact integer matmul with NumPy broadcasting, as int32 (wrapping past 2**31 like int32 hardware)."""
    product = np.matmul(a.astype(np.float64), b.astype(np.float64))
    return _wrap_int32(product)


def _wrap_int32(values: np.ndarray) -> np.ndarray:
    return values.astype(np.int64).astype(np.int32)


def _shift(x, zero_point, which: str, rank: int) -> np.ndarray:
    """``x - zero_point`` exactly (int32, or float32 for float8 inputs)."""
    wide = x.astype(np.int32) if x.dtype.kind in "iu" else x.astype(np.float32)
    if zero_point is None:
        return wide
    return wide - _matmul_param(zero_point, which, rank).astype(wide.dtype)


def _matmul_param(param, which: str, rank: int) -> np.ndarray:
    """A per-tensor, per-row (``a``) or per-column (``b``) scale/zero point, shaped to broadcast.

    A 1-D ``a`` parameter of length M holds one value per row and becomes ``(M, 1)``; a 1-D
    ``b`` parameter holds one value per column and broadcasts as is. N-d parameters already
    have the ``[..., M, 1]`` / ``[..., 1, N]`` shape.
    """
    param = np.asarray(param)
    if param.size == 1:
        return param.reshape(())
    if param.ndim == 1 and which == "a" and rank >= 2:
        return param.reshape(-1, 1)
    return param


def requantize_multiplier(*scales_and_output_scale) -> np.ndarray:
    """``a_scale * b_scale / y_scale`` in float32 (the scales' precision, as ONNX Runtime computes it)."""
    a_scale, b_scale, y_scale = (np.asarray(s).astype(np.float32) for s in scales_and_output_scale)
    return (a_scale * b_scale / _matmul_param(y_scale, "y", 0)).astype(np.float32)


def requantize(accumulator: np.ndarray, multiplier: np.ndarray, zero_point: np.ndarray) -> np.ndarray:
    """``saturate(round_half_even(accumulator * multiplier) + zero_point)`` in ``zero_point``'s type.

    The product is taken in float64, so the only rounding before the final one is that of
    the float32 multiplier itself.
    """
    dtype = zero_point.dtype
    scaled = accumulator.astype(np.float64) * multiplier.astype(np.float64)
    if dtype in INTEGER_RANGES:
        low, high = INTEGER_RANGES[dtype]
        values = np.rint(scaled) + np.asarray(zero_point).astype(np.float64).reshape(_flat_or_scalar(zero_point))
        return np.clip(values, low, high).astype(dtype)
    return quantize(scaled, np.float64(1.0), zero_point, dtype)


def _flat_or_scalar(param) -> tuple:
    return () if np.asarray(param).size == 1 else np.asarray(param).shape


# ---------------------------------------------------------------------------- ConvInteger, QLinearConv
_CONV_ATTRIBUTES = {
    "auto_pad": "NOTSET",
    "dilations": None,
    "group": 1,
    "kernel_shape": None,
    "pads": None,
    "strides": None,
}


class _IntegerConvBase(Op):
    since = 10
    attributes = _CONV_ATTRIBUTES
    x_index, w_index = 0, 1

    def check(self, node):
        if node.attrs["auto_pad"] not in ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"):
            raise bad_attribute(
                node, f"auto_pad must be NOTSET, SAME_UPPER, SAME_LOWER or VALID, got {node.attrs['auto_pad']!r}"
            )
        if node.attrs["group"] < 1:
            raise bad_attribute(node, f"group must be positive, got {node.attrs['group']}")

    def _output_shape(self, node, x_shape, w_shape):
        if x_shape is None or w_shape is None:
            return None
        if len(x_shape) < 3 or len(w_shape) != len(x_shape):
            raise fail(
                node,
                f"x must be (N, C, D1, ...) and w (M, C/group, k1, ...) of the same rank; "
                f"got {list(x_shape)} and {list(w_shape)}",
            )
        group = node.attrs["group"]
        channels, per_group = x_shape[1], w_shape[1]
        if isinstance(channels, int) and isinstance(per_group, int) and channels != per_group * group:
            raise fail(node, f"x has {channels} channels but w expects {per_group} x group {group}")
        spatial = []
        geometry = conv_geometry(node, x_shape, w_shape)
        for i, dim in enumerate(x_shape[2:]):
            if not isinstance(dim, int) or geometry is None:
                spatial.append(None)
                continue
            kernel, stride, dilation = geometry["kernel"][i], geometry["strides"][i], geometry["dilations"][i]
            begin, end = geometry["begin"][i], geometry["end"][i]
            spatial.append((dim + begin + end - dilation * (kernel - 1) - 1) // stride + 1)
        return (x_shape[0], w_shape[0], *spatial)


@register
class ConvInteger(_IntegerConvBase):
    """Convolution of 8-bit tensors with int32 accumulation: ``conv(x - x_zero_point, w - w_zero_point)``.

    The input is padded with its zero point (so padding contributes 0); ``w_zero_point`` may
    be one value per output channel.
    """

    op_type = "ConvInteger"

    def infer(self, node, inputs):
        require_inputs(node, inputs, 2, 4)
        return [out(node, 0, INT32, self._output_shape(node, inputs[0].shape, inputs[1].shape))]

    def reference(self, node, x, w, x_zero_point=None, w_zero_point=None):
        return _wrap_int32(_integer_conv(node, x, w, x_zero_point, w_zero_point))


@register
class QLinearConv(_IntegerConvBase):
    """Quantized convolution: ``quantize((conv(x - x_zero, w - w_zero) + B) * x_scale * w_scale / y_scale + y_zero)``.

    ``w_scale``/``w_zero_point`` may be per output channel; ``B`` is int32 with scale
    ``x_scale * w_scale`` and zero point 0.
    """

    op_type = "QLinearConv"

    def infer(self, node, inputs):
        require_inputs(node, inputs, 8, 9)
        return [out(node, 0, inputs[7].dtype, self._output_shape(node, inputs[0].shape, inputs[3].shape))]

    def reference(self, node, x, x_scale, x_zero_point, w, w_scale, w_zero_point, y_scale, y_zero_point, bias=None):
        accumulator = _integer_conv(node, x, w, x_zero_point, w_zero_point)
        spatial = (1,) * (x.ndim - 2)
        if bias is not None:
            accumulator = accumulator + bias.astype(np.int64).reshape(1, -1, *spatial)
        accumulator = _wrap_int32(accumulator)
        w_scale = np.asarray(w_scale)
        per_channel = w_scale.reshape(1, -1, *spatial) if w_scale.size > 1 else w_scale.reshape(())
        multiplier = requantize_multiplier(x_scale, per_channel, y_scale)
        return requantize(accumulator, multiplier, y_zero_point)


def conv_geometry(node: Node, x_shape, w_shape) -> dict | None:
    """Kernel, strides, dilations and begin/end padding per spatial axis (auto_pad resolved).

    Returns None when SAME padding needs a spatial size that is not known yet.
    """
    attrs = node.attrs
    rank = len(x_shape) - 2
    kernel = list(attrs["kernel_shape"] or w_shape[2:])
    strides = list(attrs["strides"] or [1] * rank)
    dilations = list(attrs["dilations"] or [1] * rank)
    for name, values in (("kernel_shape", kernel), ("strides", strides), ("dilations", dilations)):
        if len(values) != rank:
            raise bad_attribute(node, f"{name} has {len(values)} values for {rank} spatial axes")
    if not all(isinstance(k, int) for k in kernel):
        return None
    auto_pad = attrs["auto_pad"]
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        if not all(isinstance(d, int) for d in x_shape[2:]):
            return None
        begin, end = [], []
        for size, k, s, d in zip(x_shape[2:], kernel, strides, dilations):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            small, large = total // 2, total - total // 2
            begin.append(small if auto_pad == "SAME_UPPER" else large)
            end.append(large if auto_pad == "SAME_UPPER" else small)
    elif auto_pad == "VALID":
        begin, end = [0] * rank, [0] * rank
    else:
        pads = list(attrs["pads"] or [0] * (2 * rank))
        if len(pads) != 2 * rank:
            raise bad_attribute(node, f"pads has {len(pads)} values, expected {2 * rank}")
        begin, end = pads[:rank], pads[rank:]
    return {"kernel": kernel, "strides": strides, "dilations": dilations, "begin": begin, "end": end}


def _integer_conv(node, x, w, x_zero_point, w_zero_point) -> np.ndarray:
    """``conv(x - x_zero_point, w - w_zero_point)`` as exact integers (int64).

    One batched matmul per kernel tap: for tap ``t`` the strided window of the padded input
    is multiplied by ``w[:, :, t]`` group by group (float64 BLAS, exact, see module docstring).
    """
    group = node.attrs["group"]
    geometry = conv_geometry(node, x.shape, w.shape)
    shifted_x = x.astype(np.float64)
    if x_zero_point is not None:
        shifted_x -= np.asarray(x_zero_point).astype(np.float64).reshape(())
    shifted_w = w.astype(np.float64)
    if w_zero_point is not None:
        w_zero_point = np.asarray(w_zero_point).astype(np.float64)
        per_channel = w_zero_point.size > 1
        shifted_w -= w_zero_point.reshape(-1, *(1,) * (w.ndim - 1)) if per_channel else w_zero_point.reshape(())
    rank = x.ndim - 2
    padded = np.pad(shifted_x, [(0, 0), (0, 0)] + list(zip(geometry["begin"], geometry["end"])))
    batch, channels = x.shape[:2]
    out_channels = w.shape[0]
    out_spatial = [
        (padded.shape[2 + i] - geometry["dilations"][i] * (geometry["kernel"][i] - 1) - 1) // geometry["strides"][i] + 1
        for i in range(rank)
    ]
    if any(n <= 0 for n in out_spatial):
        raise fail(node, f"the kernel does not fit in the padded input (output spatial size {out_spatial})")
    positions = int(np.prod(out_spatial))
    # (group, M/group, C/group, taps) weights and (N, group, C/group, positions) windows.
    weights = shifted_w.reshape(group, out_channels // group, channels // group, -1)
    result = np.zeros((batch, group, out_channels // group, positions))
    for tap, offsets in enumerate(itertools.product(*(range(k) for k in geometry["kernel"]))):
        window = tuple(
            slice(o * d, o * d + s * (n - 1) + 1, s)
            for o, d, s, n in zip(offsets, geometry["dilations"], geometry["strides"], out_spatial)
        )
        patch = padded[(slice(None), slice(None)) + window].reshape(batch, group, channels // group, positions)
        result += np.matmul(weights[None, :, :, :, tap], patch)
    return result.reshape(batch, out_channels, *out_spatial).astype(np.int64)


# ---------------------------------------------------------------------------- helpers
def expand_param(node: Node, param: np.ndarray, shape, axis: int, block_size: int, what: str) -> np.ndarray:
    """A scale or zero point shaped to broadcast against ``x`` (per tensor, per axis or blocked)."""
    param = np.asarray(param)
    if param.size == 1 and param.ndim <= 1:
        return param.reshape(())
    rank = len(shape)
    axis = normalize_axis(node, axis, rank)
    if block_size:
        if param.ndim != rank:
            raise fail(node, f"blocked {what} must have the input's rank {rank}, got shape {list(param.shape)}")
        expected = list(shape)
        expected[axis] = -(-shape[axis] // block_size)
        if list(param.shape) != expected:
            raise fail(
                node,
                f"{what} has shape {list(param.shape)}; for input {list(shape)}, axis {axis} and block_size "
                f"{block_size} it must be {expected}",
            )
        return np.repeat(param, block_size, axis=axis).take(np.arange(shape[axis]), axis=axis)
    if param.ndim != 1 or param.shape[0] != shape[axis]:
        raise fail(
            node,
            f"{what} of shape {list(param.shape)} is neither a scalar nor a 1-D tensor of length "
            f"{shape[axis]} (the input's axis {axis}); for blocked quantization set block_size",
        )
    along = [1] * rank
    along[axis] = -1
    return param.reshape(along)


def _check_param_shape(node, x_shape, param_shape, what) -> None:
    """Shape-time check of a scale against the input (only when both are known)."""
    if x_shape is None or param_shape is None or node.attrs["block_size"]:
        return
    if len(param_shape) > 1:
        raise fail(node, f"{what} must be a scalar or 1-D (per axis) without block_size; got shape {list(param_shape)}")
    if len(param_shape) == 1 and isinstance(param_shape[0], int) and param_shape[0] != 1:
        axis = normalize_axis(node, node.attrs["axis"], len(x_shape))
        dim = x_shape[axis]
        if isinstance(dim, int) and dim != param_shape[0]:
            raise fail(node, f"{what} has {param_shape[0]} values but the input's axis {axis} has length {dim}")


def _check_block_size(node) -> None:
    if node.attrs["block_size"] < 0:
        raise bad_attribute(node, f"block_size must be positive (or 0 for no blocking), got {node.attrs['block_size']}")


def _dtype_attribute(node, name) -> np.dtype:
    try:
        return dtypes.from_onnx(int(node.attrs[name]))
    except KeyError:
        raise bad_attribute(node, f"{name}={node.attrs[name]} is not an ONNX element type tinyinfer knows") from None


def _quantized_dtype(node, zero_point_dtype) -> np.dtype:
    """Output type of QuantizeLinear: the zero point's, else output_dtype, else uint8."""
    declared = _dtype_attribute(node, "output_dtype") if node.attrs["output_dtype"] else None
    if zero_point_dtype is not None:
        if declared is not None and declared != zero_point_dtype:
            raise fail(node, f"output_dtype {declared} differs from the zero point's type {zero_point_dtype}")
        return np.dtype(zero_point_dtype)
    return declared if declared is not None else UINT8
