"""Elementwise arithmetic, math, comparison and logic ops.

Binary ops broadcast both ways, as NumPy does (ONNX calls it "multidirectional
broadcasting", Broadcasting.md in the spec). Comparisons and logic return ``bool``.
Variadic ops (Sum, Max, Min, Mean) take one or more inputs and broadcast them all.
"""

from __future__ import annotations

import numpy as np

from .base import Op, broadcast_shapes, elementwise, out, register, require_inputs


def _bool(_dtype):
    return np.dtype(np.bool_)


def _integer_divide(a, b):
    """ONNX Div on integers truncates toward zero (C semantics), unlike NumPy's floor."""
    quotient = np.abs(a) // np.abs(b)
    return np.where((a < 0) ^ (b < 0), -quotient, quotient)


def _divide(a, b):
    if np.issubdtype(a.dtype, np.integer):
        return _integer_divide(a, b)
    return a / b


def _power(a, b):
    if np.issubdtype(a.dtype, np.integer) and np.issubdtype(b.dtype, np.integer):
        return np.power(a, b.astype(a.dtype))
    return np.power(a, b.astype(a.dtype) if np.issubdtype(a.dtype, np.floating) else b)


# Binary arithmetic -------------------------------------------------------------------------
elementwise("Add", np.add, since=7, arity=2)
elementwise("Sub", np.subtract, since=7, arity=2)
elementwise("Mul", np.multiply, since=7, arity=2)
elementwise("Div", _divide, since=7, arity=2)
elementwise("Pow", _power, since=7, arity=2)

# Unary math -------------------------------------------------------------------------------
elementwise("Sqrt", np.sqrt, since=6)
elementwise("Exp", np.exp, since=6)
elementwise("Log", np.log, since=6)
elementwise("Neg", np.negative, since=6)
elementwise("Abs", np.abs, since=6)
elementwise("Reciprocal", np.reciprocal, since=6)
elementwise("Floor", np.floor, since=6)
elementwise("Ceil", np.ceil, since=6)

# Comparison and logic ---------------------------------------------------------------------
elementwise("Equal", np.equal, since=7, arity=2, dtype=_bool)
elementwise("Less", np.less, since=7, arity=2, dtype=_bool)
elementwise("Greater", np.greater, since=7, arity=2, dtype=_bool)
elementwise("Not", np.logical_not, since=1, dtype=_bool)
elementwise("And", np.logical_and, since=7, arity=2, dtype=_bool)
elementwise("Or", np.logical_or, since=7, arity=2, dtype=_bool)


class _Variadic(Op):
    """Sum, Max, Min, Mean: fold a NumPy binary function over one or more inputs."""

    since = 8
    combine = staticmethod(np.add)

    def infer(self, node, inputs):
        require_inputs(node, inputs, 1, 2**31)
        return [out(node, 0, inputs[0].dtype, broadcast_shapes(node, *(v.shape for v in inputs)))]

    def reference(self, node, *arrays):
        result = arrays[0]
        for array in arrays[1:]:
            result = self.combine(result, array)
        return self.finish(np.asarray(result), len(arrays)).astype(arrays[0].dtype, copy=False)

    def finish(self, result, count):
        return result


@register
class Sum(_Variadic):
    op_type = "Sum"


@register
class Max(_Variadic):
    op_type = "Max"
    combine = staticmethod(np.maximum)


@register
class Min(_Variadic):
    op_type = "Min"
    combine = staticmethod(np.minimum)


@register
class Mean(_Variadic):
    op_type = "Mean"

    def finish(self, result, count):
        return result / count


@register
class Where(Op):
    """``condition ? X : Y`` elementwise, all three broadcast together."""

    op_type = "Where"
    since = 9

    def infer(self, node, inputs):
        require_inputs(node, inputs, 3)
        shape = broadcast_shapes(node, *(v.shape for v in inputs))
        return [out(node, 0, inputs[1].dtype, shape)]

    def reference(self, node, condition, x, y):
        return np.where(condition, x, y).astype(x.dtype, copy=False)
