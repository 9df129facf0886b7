"""Reductions: ReduceSum, ReduceMean, ReduceMax, ... and ArgMax / ArgMin.

A reduction folds the input along a set of ``axes`` and, with ``keepdims=1`` (the default),
keeps each reduced axis as a dimension of size 1. Which axes, and where they come from,
changed across opsets:

* up to ReduceSum-11 and the other Reduce ops' version 13, ``axes`` is an attribute;
* from ReduceSum-13 and the others' version 18 on, ``axes`` is an optional 1-D int64 input,
  and ``noop_with_empty_axes=1`` turns "no axes" from "reduce everything" into "reduce
  nothing".

Both forms are read: the input if the node has one, else the attribute. Reducing over no
axes (noop) applies the per-element part of the op alone, as ``onnx.reference`` does: ReduceL2
gives ``|x|``, ReduceSumSquare ``x^2``, ReduceSum ``x``.

Reducing an axis of length 0 gives the identity of the fold: 0 for sums, 1 for products,
-inf for Max and LogSum(Exp), +inf for Min (the integer type's bounds for integers, False and
True for bool). The output dtype is always the input dtype, except ArgMax/ArgMin (int64).
"""

from __future__ import annotations

import abc

import numpy as np

from ..ir.graph import Shape
from .base import Op, const_ints, fail, normalize_axis, out, register, require_inputs


class _Reduce(Op):
    """Shared axes handling; subclasses define :meth:`fold` over a tuple of axes."""

    since = 1
    #: The first opset version of this op whose ``axes`` is an input (18 for most ops).
    axes_input_since = 18

    def defaults(self, version):
        if version >= self.axes_input_since:
            return {"keepdims": 1, "noop_with_empty_axes": 0}
        return {"axes": None, "keepdims": 1}

    # ------------------------------------------------------------------ shape inference
    def infer(self, node, inputs):
        require_inputs(node, inputs, 1, 2)
        data = inputs[0]
        return [out(node, 0, data.dtype, self._output_shape(node, inputs))]

    def _output_shape(self, node, inputs) -> Shape | None:
        data = inputs[0]
        axes_input = inputs[1] if len(inputs) > 1 else None
        keepdims = bool(node.attrs["keepdims"])
        if data.shape is None:
            return None
        rank = len(data.shape)
        if axes_input is not None and axes_input.const is None:
            # Axes only known at run time: the rank may still be.
            if keepdims:
                return tuple(1 if d == 1 else None for d in data.shape)
            if axes_input.shape is None or not isinstance(axes_input.shape[0], int):
                return None
            count = axes_input.shape[0]
            if count == 0:
                return data.shape if node.attrs.get("noop_with_empty_axes") else ()
            return (None,) * (rank - count)
        axes = self._axes(node, const_ints(axes_input) if axes_input is not None else None, rank)
        if keepdims:
            return tuple(1 if i in axes else d for i, d in enumerate(data.shape))
        return tuple(d for i, d in enumerate(data.shape) if i not in axes)

    def _axes(self, node, given: list[int] | None, rank: int) -> tuple[int, ...]:
        """Normalised, checked axes: from the input if given, else the attribute, else all."""
        if given is None:
            given = node.attrs.get("axes")
        if not given:
            return () if node.attrs.get("noop_with_empty_axes") else tuple(range(rank))
        axes = tuple(normalize_axis(node, int(a), rank, "axes entry") for a in given)
        if len(set(axes)) != len(axes):
            raise fail(node, f"axes {list(given)} name the same axis twice")
        return axes

    # ------------------------------------------------------------------ reference
    def reference(self, node, data, axes=None):
        given = None if axes is None else [int(a) for a in axes.reshape(-1)]
        reduced = self._axes(node, given, data.ndim)
        result = np.asarray(self.fold(data, reduced))
        if not node.attrs["keepdims"]:
            result = result.reshape([d for i, d in enumerate(data.shape) if i not in reduced])
        return result.astype(data.dtype, copy=False)

    @abc.abstractmethod
    def fold(self, x: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
        """The reduction over ``axes``, keeping them as size-1 dimensions."""


def _lowest(dtype: np.dtype):
    """The identity of max: -inf, the integer type's minimum, or False."""
    if dtype == np.bool_:
        return False
    if np.issubdtype(dtype, np.integer):
        return np.iinfo(dtype).min
    return -np.inf


def _highest(dtype: np.dtype):
    """The identity of min: +inf, the integer type's maximum, or True."""
    if dtype == np.bool_:
        return True
    if np.issubdtype(dtype, np.integer):
        return np.iinfo(dtype).max
    return np.inf


@register
class ReduceSum(_Reduce):
    """ReduceSum-1/11/13: sum over the axes (axes an input from opset 13)."""

    op_type = "ReduceSum"
    axes_input_since = 13

    def fold(self, x, axes):
        return np.sum(x, axis=axes, keepdims=True, dtype=x.dtype)


@register
class ReduceMean(_Reduce):
    """ReduceMean-1/11/13/18: arithmetic mean over the axes (truncated for integers)."""

    op_type = "ReduceMean"

    def fold(self, x, axes):
        count = int(np.prod([x.shape[a] for a in axes]))
        total = np.sum(x, axis=axes, keepdims=True, dtype=np.float64 if x.dtype.kind in "iu" else x.dtype)
        with np.errstate(invalid="ignore", divide="ignore"):  # 0 / 0 for an empty axis is NaN
            return total / count if count else total * np.nan


@register
class ReduceMax(_Reduce):
    """ReduceMax-1/.../18/20: maximum over the axes (bool inputs from opset 20)."""

    op_type = "ReduceMax"

    def fold(self, x, axes):
        return np.max(x, axis=axes, keepdims=True, initial=_lowest(x.dtype))


@register
class ReduceMin(_Reduce):
    """ReduceMin-1/.../18/20: minimum over the axes (bool inputs from opset 20)."""

    op_type = "ReduceMin"

    def fold(self, x, axes):
        return np.min(x, axis=axes, keepdims=True, initial=_highest(x.dtype))


@register
class ReduceProd(_Reduce):
    """ReduceProd-1/11/13/18: product over the axes."""

    op_type = "ReduceProd"

    def fold(self, x, axes):
        return np.prod(x, axis=axes, keepdims=True, dtype=x.dtype)


@register
class ReduceL1(_Reduce):
    """ReduceL1-1/11/13/18: sum of |x| over the axes."""

    op_type = "ReduceL1"

    def fold(self, x, axes):
        return np.sum(np.abs(x), axis=axes, keepdims=True, dtype=x.dtype)


@register
class ReduceL2(_Reduce):
    """ReduceL2-1/11/13/18: sqrt(sum of x^2) over the axes."""

    op_type = "ReduceL2"

    def fold(self, x, axes):
        wide = x.astype(np.float64) if x.dtype.kind in "iu" else x
        return np.sqrt(np.sum(np.square(wide), axis=axes, keepdims=True))


@register
class ReduceSumSquare(_Reduce):
    """ReduceSumSquare-1/11/13/18: sum of x^2 over the axes."""

    op_type = "ReduceSumSquare"

    def fold(self, x, axes):
        return np.sum(np.square(x), axis=axes, keepdims=True, dtype=x.dtype)


@register
class ReduceLogSum(_Reduce):
    """ReduceLogSum-1/11/13/18: log(sum of x) over the axes."""

    op_type = "ReduceLogSum"

    def fold(self, x, axes):
        with np.errstate(divide="ignore"):  # log(0) = -inf, the empty sum's value
            return np.log(np.sum(x, axis=axes, keepdims=True))


@register
class ReduceLogSumExp(_Reduce):
    """ReduceLogSumExp-1/11/13/18: log(sum of exp(x)) over the axes.

    Computed as m + log(sum(exp(x - m))) with m the maximum, so large x do not overflow;
    where m is infinite (or the axis empty) the shift is 0 and the plain formula is right.
    """

    op_type = "ReduceLogSumExp"

    def fold(self, x, axes):
        peak = np.max(x, axis=axes, keepdims=True, initial=-np.inf)
        shift = np.where(np.isfinite(peak), peak, 0).astype(x.dtype)
        with np.errstate(divide="ignore"):
            return np.log(np.sum(np.exp(x - shift), axis=axes, keepdims=True)) + shift


# ============================================================================ ArgMax / ArgMin
class _ArgReduce(Op):
    """ArgMax, ArgMin: the int64 index of the extreme value along one axis."""

    since = 1
    pick = staticmethod(np.argmax)

    def defaults(self, version):
        spec = {"axis": 0, "keepdims": 1}
        if version >= 12:
            spec["select_last_index"] = 0
        return spec

    def infer(self, node, inputs):
        require_inputs(node, inputs, 1)
        data = inputs[0]
        shape = None
        if data.shape is not None:
            axis = normalize_axis(node, node.attrs["axis"], len(data.shape))
            shape = tuple(
                1 if i == axis else d for i, d in enumerate(data.shape) if i != axis or node.attrs["keepdims"]
            )
        return [out(node, 0, np.dtype(np.int64), shape)]

    def reference(self, node, data):
        axis = normalize_axis(node, node.attrs["axis"], data.ndim)
        keepdims = bool(node.attrs["keepdims"])
        if node.attrs.get("select_last_index"):
            # The last extreme is the first one of the reversed axis.
            flipped = self.pick(np.flip(data, axis), axis=axis, keepdims=keepdims)
            index = data.shape[axis] - 1 - flipped
        else:
            index = self.pick(data, axis=axis, keepdims=keepdims)
        return np.asarray(index, dtype=np.int64)


@register
class ArgMax(_ArgReduce):
    """ArgMax-1/11/12/13: index of the maximum along ``axis`` (first one, or last if asked)."""

    op_type = "ArgMax"


@register
class ArgMin(_ArgReduce):
    """ArgMin-1/11/12/13: index of the minimum along ``axis`` (first one, or last if asked)."""

    op_type = "ArgMin"
    pick = staticmethod(np.argmin)
