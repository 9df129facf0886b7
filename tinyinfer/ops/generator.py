"""Ops that create tensors, and ops that change a tensor's element type.

* **Constant** turns one attribute into a tensor; **ConstantOfShape** fills a tensor of a
  given shape with one value; **Range** counts from ``start`` towards ``limit`` in steps of
  ``delta``. Graphs exported from PyTorch are full of them: they build shapes, masks and
  position indices.
* **Cast** converts to the element type named by an ONNX type code; **CastLike** converts to
  the type of a second tensor.

The semantics follow the ONNX operator specification (Constant-25, ConstantOfShape-25,
Range-27, Cast-25, CastLike-25, which read the same as their older versions where the older
ones are defined). The low-precision types (bfloat16, float8, 4-bit types) are NumPy dtypes
from ``ml_dtypes``, so a cast between them is a NumPy ``astype`` plus the two rules NumPy does
not know: float8 *saturation* (out-of-range values become the largest finite value rather
than inf/NaN) and the rounding modes of the exponent-only float8e8m0 type.
"""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np

from ..errors import UnsupportedOpError, node_label
from ..ir import dtypes
from .base import REQUIRED, Op, bad_attribute, const_ints, fail, out, register, require_inputs

STRING = np.dtype(object)

#: The float8 types that have a ``saturate`` mode (Cast-19 table in the spec).
FLOAT8_TYPES = frozenset(
    np.dtype(t)
    for t in (ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e4m3fnuz, ml_dtypes.float8_e5m2, ml_dtypes.float8_e5m2fnuz)
)
#: The 2- and 4-bit integer types of ml_dtypes.
SMALL_INTEGERS = frozenset(np.dtype(t) for t in (ml_dtypes.int4, ml_dtypes.uint4, ml_dtypes.int2, ml_dtypes.uint2))
#: float8e8m0 (MX scale type): an exponent, no mantissa, no sign.
FLOAT8_E8M0 = np.dtype(ml_dtypes.float8_e8m0fnu)

#: ONNX element-type codes by name (TensorProto.DataType, onnx.proto). Codes the ONNX
#: standard defines but tinyinfer has no dtype for are refused as unsupported, codes outside
#: this table as invalid.
ONNX_TYPE_NAMES = {
    1: "FLOAT", 2: "UINT8", 3: "INT8", 4: "UINT16", 5: "INT16", 6: "INT32", 7: "INT64",
    8: "STRING", 9: "BOOL", 10: "FLOAT16", 11: "DOUBLE", 12: "UINT32", 13: "UINT64",
    14: "COMPLEX64", 15: "COMPLEX128", 16: "BFLOAT16", 17: "FLOAT8E4M3FN", 18: "FLOAT8E4M3FNUZ",
    19: "FLOAT8E5M2", 20: "FLOAT8E5M2FNUZ", 21: "UINT4", 22: "INT4", 23: "FLOAT4E2M1",
    24: "FLOAT8E8M0", 25: "UINT2", 26: "INT2", 27: "FLOAT6E2M3", 28: "FLOAT6E3M2",
}

ROUND_MODES = ("up", "down", "nearest")


# ---------------------------------------------------------------------------- Constant
_CONSTANT_FORMS = ("value", "value_float", "value_floats", "value_int", "value_ints", "value_string", "value_strings")


@register
class Constant(Op):
    """A tensor given by exactly one attribute.

    ``value`` is a tensor; ``value_float``/``value_int``/``value_string`` give a scalar of type
    float32/int64/string and the plural forms a 1-D tensor. ``sparse_value`` (a sparse tensor)
    is not supported.
    """

    op_type = "Constant"
    since = 1
    attributes = {name: None for name in (*_CONSTANT_FORMS, "sparse_value")}

    def check(self, node):
        if node.attrs["sparse_value"] is not None:
            raise UnsupportedOpError(f"{node_label(node)}: sparse_value (a sparse tensor) is not supported")
        given = [name for name in _CONSTANT_FORMS if node.attrs[name] is not None]
        if len(given) != 1:
            raise bad_attribute(
                node, f"exactly one of {list(_CONSTANT_FORMS)} must be set, got {given or 'none'}"
            )

    def infer(self, node, inputs):
        value = self.reference(node)
        return [out(node, 0, value.dtype, value.shape)]

    def reference(self, node):
        attrs = node.attrs
        if attrs["value"] is not None:
            return np.asarray(attrs["value"])
        if attrs["value_float"] is not None:
            return np.array(attrs["value_float"], dtype=np.float32)
        if attrs["value_floats"] is not None:
            return np.array(attrs["value_floats"], dtype=np.float32).reshape(-1)
        if attrs["value_int"] is not None:
            return np.array(attrs["value_int"], dtype=np.int64)
        if attrs["value_ints"] is not None:
            return np.array(attrs["value_ints"], dtype=np.int64).reshape(-1)
        if attrs["value_string"] is not None:
            return _string_array([attrs["value_string"]]).reshape(())
        return _string_array(attrs["value_strings"])


def _string_array(items) -> np.ndarray:
    """ONNX strings as NumPy sees them: an object array of ``str``."""
    array = np.empty(len(items), dtype=object)
    array[:] = [s.decode("utf-8", errors="replace") if isinstance(s, bytes) else str(s) for s in items]
    return array


# ---------------------------------------------------------------------------- ConstantOfShape
@register
class ConstantOfShape(Op):
    """A tensor of shape ``input`` (a 1-D int64 tensor) filled with the one element of ``value``."""

    op_type = "ConstantOfShape"
    since = 9
    attributes = {"value": np.zeros(1, dtype=np.float32)}

    def check(self, node):
        value = np.asarray(node.attrs["value"])
        if value.size != 1:
            raise bad_attribute(node, f"'value' must hold exactly one element, got shape {list(value.shape)}")

    def infer(self, node, inputs):
        require_inputs(node, inputs, 1)
        dtype = np.asarray(node.attrs["value"]).dtype
        shape_input = inputs[0]
        if shape_input.shape is not None and len(shape_input.shape) != 1:
            raise fail(node, f"the shape input must be 1-D, got shape {list(shape_input.shape)}")
        dims = const_ints(shape_input)
        if dims is not None:
            if any(d < 0 for d in dims):
                raise fail(node, f"the shape {dims} has a negative dimension")
            return [out(node, 0, dtype, tuple(dims))]
        if shape_input.shape is not None and isinstance(shape_input.shape[0], int):
            return [out(node, 0, dtype, (None,) * shape_input.shape[0])]
        return [out(node, 0, dtype, None)]

    def reference(self, node, shape):
        value = np.asarray(node.attrs["value"]).reshape(-1)
        return np.full(tuple(int(d) for d in shape.reshape(-1)), value[0], dtype=value.dtype)


# ---------------------------------------------------------------------------- Range
@register
class Range(Op):
    """``[start, start + delta, ...]`` up to ``limit`` (excluded): ``max(ceil((limit - start) / delta), 0)`` values.

    Element ``i`` is ``start + i * delta`` (not a running sum, so errors do not accumulate).
    Integers are computed exactly; float16/bfloat16 are computed in the ``stash_type``
    precision (float32 by default, Range-27) and rounded once at the end, other floats in
    float64.
    """

    op_type = "Range"
    since = 11
    attributes = {"stash_type": 1}

    def check(self, node):
        if node.attrs["stash_type"] not in (1, 11):
            raise bad_attribute(node, f"stash_type must be 1 (float) or 11 (double), got {node.attrs['stash_type']}")

    def infer(self, node, inputs):
        require_inputs(node, inputs, 3)
        # The spec asks for scalars; a one-element tensor is accepted too, as ONNX Runtime does
        # (ONNX's own expanded AffineGrid tests feed Range a [1]-shaped limit).
        for name, value in zip(("start", "limit", "delta"), inputs):
            if value.shape is not None and len(value.shape) != 0 and value.shape not in ((1,), (None,)):
                raise fail(node, f"'{name}' must be a scalar, got shape {list(value.shape)}")
        return [out(node, 0, inputs[0].dtype, (None,))]

    def reference(self, node, start, limit, delta):
        for name, value in zip(("start", "limit", "delta"), (start, limit, delta)):
            if np.size(value) != 1:
                raise fail(node, f"'{name}' must hold one value, got shape {list(np.shape(value))}")
        start, limit, delta = (np.asarray(v).reshape(()) for v in (start, limit, delta))
        dtype = start.dtype
        if np.issubdtype(dtype, np.integer):
            first, stop, step = int(start), int(limit), int(delta)
            if step == 0:
                raise fail(node, "delta must not be zero")
            count = max(-((first - stop) // step), 0)  # ceil((stop - first) / step) in integers
            return (first + np.arange(count, dtype=np.int64) * step).astype(dtype)
        compute = np.dtype(np.float64)
        if dtype in (np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16)) and node.attrs["stash_type"] == 1:
            compute = np.dtype(np.float32)
        first, stop, step = (np.asarray(v, dtype=compute).reshape(()) for v in (start, limit, delta))
        if step == 0:
            raise fail(node, "delta must not be zero")
        count = max(math.ceil(float((stop - first) / step)), 0)
        return (first + np.arange(count, dtype=compute) * step).astype(dtype)


# ---------------------------------------------------------------------------- Cast
@register
class Cast(Op):
    """Convert every element to the type whose ONNX code is ``to``.

    Numeric casts are NumPy's (wrapping for out-of-range integers, as the spec asks). Casts
    to float8 saturate to the largest finite value when ``saturate=1`` (the default);
    strings are parsed as numbers (``"1e-5"``, ``"INF"``, ``"NaN"``) and numbers printed as
    strings.
    """

    op_type = "Cast"
    since = 6
    attributes = {"to": REQUIRED, "saturate": 1, "round_mode": "up"}

    def check(self, node):
        target_dtype(node, node.attrs["to"])
        check_round_mode(node)

    def infer(self, node, inputs):
        require_inputs(node, inputs, 1)
        return [out(node, 0, target_dtype(node, node.attrs["to"]), inputs[0].shape)]

    def reference(self, node, x):
        to = target_dtype(node, node.attrs["to"])
        return cast_array(x, to, saturate=bool(node.attrs["saturate"]), round_mode=node.attrs["round_mode"])


@register
class CastLike(Op):
    """Cast ``input`` to the element type of ``target_type`` (whose values are ignored)."""

    op_type = "CastLike"
    since = 15
    attributes = {"saturate": 1, "round_mode": "up"}

    def check(self, node):
        check_round_mode(node)

    def infer(self, node, inputs):
        require_inputs(node, inputs, 2)
        return [out(node, 0, inputs[1].dtype, inputs[0].shape)]

    def reference(self, node, x, target):
        return cast_array(x, target.dtype, saturate=bool(node.attrs["saturate"]), round_mode=node.attrs["round_mode"])


def target_dtype(node, code: int) -> np.dtype:
    """The NumPy dtype of ONNX type code ``code``, or an error naming the node and the code."""
    try:
        return dtypes.from_onnx(int(code))
    except KeyError:
        pass
    if code in ONNX_TYPE_NAMES:
        raise UnsupportedOpError(
            f"{node_label(node)}: element type {ONNX_TYPE_NAMES[code]} (code {code}) is not supported by tinyinfer"
        )
    raise bad_attribute(
        node, f"'to'={code} is not an ONNX element type; expected one of the TensorProto.DataType codes 1..28"
    )


def check_round_mode(node) -> None:
    if node.attrs["round_mode"] not in ROUND_MODES:
        raise bad_attribute(node, f"round_mode must be one of {list(ROUND_MODES)}, got {node.attrs['round_mode']!r}")


def cast_array(x: np.ndarray, to: np.dtype, *, saturate: bool = True, round_mode: str = "up") -> np.ndarray:
    """Cast ``x`` to dtype ``to`` with ONNX's rules (float8 saturation, strings, float8e8m0).

    Shared by Cast, CastLike and the quantization ops.
    """
    to = np.dtype(to)
    if x.dtype == to:
        return x.copy()
    if to == STRING:
        return _to_strings(x)
    if x.dtype == STRING or x.dtype.kind in "US":
        return _from_strings(x, to)
    if to == FLOAT8_E8M0:
        return to_float8e8m0(x, saturate=saturate, round_mode=round_mode)
    with np.errstate(invalid="ignore", over="ignore"):
        if to in FLOAT8_TYPES and saturate:
            return saturate_to_float8(x, to)
        return x.astype(to)


def saturate_to_float8(x: np.ndarray, to: np.dtype) -> np.ndarray:
    """Round to ``to`` (nearest, ties to even), clamping to its finite range; NaN stays NaN.

    Clamping before rounding gives the same result as rounding then clamping, because the
    clamp bounds are themselves representable.
    """
    largest = float(ml_dtypes.finfo(to).max)
    if x.dtype.kind in "iub":
        x = x.astype(np.float64)
    return np.clip(x, -largest, largest).astype(to)


def to_float8e8m0(x: np.ndarray, *, saturate: bool = True, round_mode: str = "up") -> np.ndarray:
    """float8e8m0 (OCP MX scale): keep the float32 exponent, rounding away the mantissa.

    ``up`` rounds any non-zero mantissa up to the next power of two, ``down`` drops it,
    ``nearest`` rounds up from 1.5 * 2^e (the rule of onnx.numpy_helper.to_float8e8m0).
    NaN and inf map to the NaN code 0xFF; with ``saturate`` an exponent that would round
    past the largest (0xFE) stays at 0xFE, without it it becomes NaN. Negative inputs are
    undefined in the spec (the sign is dropped).
    """
    bits = np.asarray(x, dtype=np.float32).view(np.uint32)
    exponent = ((bits >> 23) & 0xFF).astype(np.uint16)
    mantissa = bits & 0x7FFFFF
    special = exponent == 0xFF
    if round_mode == "up":
        exponent = exponent + (mantissa != 0)
    elif round_mode == "nearest":
        # Up from the midpoint 1.5 * 2^e (top mantissa bit set); for subnormals (exponent 0)
        # an exact midpoint rounds down, to the even code.
        halfway = (mantissa & 0x400000) != 0
        exponent = exponent + (halfway & (((mantissa & 0x3FFFFF) != 0) | (exponent > 0)))
    overflow = (exponent > 0xFE) & ~special
    exponent = np.where(overflow, 0xFE if saturate else 0xFF, exponent)
    exponent = np.where(special, 0xFF, exponent)
    return exponent.astype(np.uint8).view(FLOAT8_E8M0)


def _to_strings(x: np.ndarray) -> np.ndarray:
    """Numbers printed the way NumPy prints them (shortest round-trip form)."""
    if x.dtype.kind not in "biufc":  # ml_dtypes types (bfloat16, float8, int4, ...): print their value
        x = x.astype(np.int64 if x.dtype in SMALL_INTEGERS else np.float32)
    return x.astype(str).astype(object)


def _from_strings(x: np.ndarray, to: np.dtype) -> np.ndarray:
    """Parse numbers written as text; ``"INF"``, ``"-inf"``, ``"NaN"`` in any case."""
    text = x.astype(str)
    if np.issubdtype(to, np.integer) or to.kind == "b":
        try:  # exact for integers beyond 2**53; "100.5" (undefined in the spec) goes via float
            return text.astype(np.int64).astype(to)
        except ValueError:
            pass
    values = text.astype(np.float64)
    return cast_array(values, to)
