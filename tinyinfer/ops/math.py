"""More elementwise math: Mod, trigonometry, rounding, NaN/Inf tests, bit operations, plus
the two "almost elementwise" ops CumSum (a running sum along an axis) and Trilu (keep one
triangle of a matrix).

The arithmetic core (Add, Div, Exp, ...) and comparisons live in ``elementwise.py``; this
module adds the rest of ONNX's elementwise family with the same factory. Binary ops broadcast
both ways, like NumPy (Broadcasting.md in the ONNX spec).
"""

from __future__ import annotations

import numpy as np

from .base import (
    REQUIRED,
    Op,
    bad_attribute,
    broadcast_shapes,
    const_ints,
    dim_product,
    elementwise,
    fail,
    normalize_axis,
    out,
    register,
    require_inputs,
)


def _bool(_dtype):
    return np.dtype(np.bool_)


# ============================================================================ Mod
def _mod(a, b, fmod):
    """Mod-10/13/28: the remainder of a / b.

    ``fmod=0``: a - floor(a / b) * b, the sign of b (Python's %, NumPy's ``mod``).
    ``fmod=1``: a - trunc(a / b) * b, the sign of a (C's ``fmod``, NumPy's ``fmod``).
    Both follow IEEE 754 for the float special cases the spec lists (x % 0 and inf % y are
    NaN). An integer division by zero gives 0, as NumPy defines it.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.fmod(a, b) if fmod else np.mod(a, b)


elementwise("Mod", _mod, since=10, arity=2, attributes={"fmod": 0})

# ============================================================================ comparison and logic
elementwise("GreaterOrEqual", np.greater_equal, since=12, arity=2, dtype=_bool)
elementwise("LessOrEqual", np.less_equal, since=12, arity=2, dtype=_bool)
elementwise("Xor", np.logical_xor, since=7, arity=2, dtype=_bool)

# ============================================================================ trigonometry
elementwise("Sin", np.sin, since=7)
elementwise("Cos", np.cos, since=7)
elementwise("Tan", np.tan, since=7)
elementwise("Asin", np.arcsin, since=7)
elementwise("Acos", np.arccos, since=7)
elementwise("Atan", np.arctan, since=7)
elementwise("Sinh", np.sinh, since=9)
elementwise("Cosh", np.cosh, since=9)
elementwise("Asinh", np.arcsinh, since=9)
elementwise("Acosh", np.arccosh, since=9)
elementwise("Atanh", np.arctanh, since=9)


# ============================================================================ rounding and tests
def _round(x):
    """Round-11: to the nearest integer, halves to the nearest even one (2.5 -> 2)."""
    return np.round(x)


def _is_nan(x):
    """IsNaN-9/13/20: true where x is NaN."""
    return np.isnan(x)


def _is_inf(x, detect_negative, detect_positive):
    """IsInf-10/20: true where x is +inf (if detect_positive) or -inf (if detect_negative)."""
    negative = np.signbit(x)  # unlike x < 0, quiet on NaN for every float type
    return np.isinf(x) & ((~negative & bool(detect_positive)) | (negative & bool(detect_negative)))


elementwise("Round", _round, since=11)
elementwise("IsNaN", _is_nan, since=9, dtype=_bool)
elementwise("IsInf", _is_inf, since=10, dtype=_bool, attributes={"detect_negative": 1, "detect_positive": 1})


# ============================================================================ bits
def _bit_shift(x, y, direction):
    """BitShift-11/28: x << y (LEFT) or x >> y (RIGHT).

    For signed types the right shift is arithmetic. A shift by a negative amount or by at
    least the type's width leaves only the sign fill: -1 for a right shift of a negative x,
    0 otherwise. NumPy's shifts define exactly these results.
    """
    y = y.astype(x.dtype, copy=False)
    return np.left_shift(x, y) if direction == "LEFT" else np.right_shift(x, y)


@register
class BitShift(Op):
    """BitShift-11/28: shift the bits of x by y places, ``direction`` LEFT or RIGHT."""

    op_type = "BitShift"
    since = 11
    attributes = {"direction": REQUIRED}

    def check(self, node):
        if node.attrs["direction"] not in ("LEFT", "RIGHT"):
            raise bad_attribute(node, f"direction must be 'LEFT' or 'RIGHT', got {node.attrs['direction']!r}")

    def infer(self, node, inputs):
        require_inputs(node, inputs, 2)
        return [out(node, 0, inputs[0].dtype, broadcast_shapes(node, inputs[0].shape, inputs[1].shape))]

    def reference(self, node, x, y):
        return np.asarray(_bit_shift(x, y, node.attrs["direction"])).astype(x.dtype, copy=False)


elementwise("BitwiseAnd", np.bitwise_and, since=18, arity=2)
elementwise("BitwiseOr", np.bitwise_or, since=18, arity=2)
elementwise("BitwiseXor", np.bitwise_xor, since=18, arity=2)
elementwise("BitwiseNot", np.invert, since=18)


# ============================================================================ CumSum
@register
class CumSum(Op):
    """CumSum-11/14: running sum of x along the axis given as a scalar input.

    ``exclusive=1`` leaves each element out of its own sum (the first one is 0);
    ``reverse=1`` sums from the end of the axis backwards.
    """

    op_type = "CumSum"
    since = 11
    attributes = {"exclusive": 0, "reverse": 0}

    def infer(self, node, inputs):
        require_inputs(node, inputs, 2)
        x, axis = inputs
        if axis.shape is not None and dim_product(axis.shape) not in (1, None):
            raise fail(node, f"axis must be a scalar, got shape {list(axis.shape)}")
        given = const_ints(axis)
        if given is not None and x.shape is not None:
            normalize_axis(node, given[0], len(x.shape))
        return [out(node, 0, x.dtype, x.shape)]

    def reference(self, node, x, axis):
        axis = normalize_axis(node, int(np.asarray(axis).reshape(-1)[0]), x.ndim)
        if node.attrs["reverse"]:
            x = np.flip(x, axis)
        total = np.cumsum(x, axis=axis, dtype=x.dtype)
        if node.attrs["exclusive"]:
            total = _shift_forward(total, axis)
        if node.attrs["reverse"]:
            total = np.flip(total, axis)
        return np.ascontiguousarray(total)


def _shift_forward(array: np.ndarray, axis: int) -> np.ndarray:
    """Move every element one place along ``axis`` (the last drops out) and put 0 first."""
    shifted = np.zeros_like(array)
    target = [slice(None)] * array.ndim
    source = [slice(None)] * array.ndim
    target[axis], source[axis] = slice(1, None), slice(None, -1)
    shifted[tuple(target)] = array[tuple(source)]
    return shifted


# ============================================================================ Trilu
@register
class Trilu(Op):
    """Trilu-14: keep the upper (``upper=1``) or lower triangle of the last two axes.

    The optional scalar input ``k`` moves the diagonal: the upper triangle keeps
    ``column - row >= k``, the lower one ``column - row <= k``; everything else becomes 0.
    """

    op_type = "Trilu"
    since = 14
    attributes = {"upper": 1}

    def infer(self, node, inputs):
        require_inputs(node, inputs, 1, 2)
        x = inputs[0]
        if x.shape is not None and len(x.shape) < 2:
            raise fail(node, f"input must have rank >= 2, got shape {list(x.shape)}")
        return [out(node, 0, x.dtype, x.shape)]

    def reference(self, node, x, k=None):
        k = 0 if k is None else int(np.asarray(k).reshape(-1)[0])
        rows, cols = x.shape[-2:]
        offset = np.arange(cols)[None, :] - np.arange(rows)[:, None]
        keep = offset >= k if node.attrs["upper"] else offset <= k
        zero = "" if x.dtype == object else np.zeros((), x.dtype)  # strings are blanked
        return np.where(keep, x, zero).astype(x.dtype, copy=False)
