"""Indexing ops: pick, place, select and rank elements by index.

Gather, GatherElements, GatherND, Scatter, ScatterElements, ScatterND, OneHot, TopK,
NonZero, Compress and Unique, following the ONNX operator spec (Operators.md) up to
opset 28.

Every index input accepts negative values counted from the end of its axis, as the spec
allows; an index outside ``[-size, size - 1]`` raises an ``IndexError`` that names the
axis and the bad value (the runtime reports it as an ExecutionError naming the node).
NonZero, Compress and Unique have output shapes that depend on the data, so their
``infer`` leaves those dims unknown.
"""

from __future__ import annotations

import numpy as np

from ..ir import Node
from ..ir.graph import Dim
from .base import (
    REQUIRED,
    Op,
    bad_attribute,
    dim_product,
    fail,
    normalize_axis,
    out,
    register,
    require_inputs,
)
from .tensor import array_or_attribute, input_or_attribute, shape_str

_INT64 = np.dtype(np.int64)

#: ScatterElements / ScatterND ``reduction`` -> the NumPy ufunc whose ``.at`` applies it.
_REDUCTIONS = {"none": None, "add": np.add, "mul": np.multiply, "max": np.maximum, "min": np.minimum}


def checked_indices(indices: np.ndarray, size: int, where: str) -> np.ndarray:
    """Indices made non-negative; any outside ``[-size, size - 1]`` raise an IndexError."""
    indices = np.asarray(indices).astype(np.int64, copy=False)
    outside = (indices < -size) | (indices >= size)
    if outside.any():
        raise IndexError(f"index {int(indices[outside][0])} is out of range [-{size}, {size - 1}] for {where}")
    return np.where(indices < 0, indices + size, indices)


# ---------------------------------------------------------------------------- gathering
@register
class Gather(Op):
    """Take entries along ``axis`` at ``indices``: ``np.take(data, indices, axis)`` (Gather-13).

    The output shape is ``data.shape[:axis] + indices.shape + data.shape[axis + 1:]``.
    """

    op_type = "Gather"
    since = 1
    attributes = {"axis": 0}

    def infer(self, node, inputs):
        require_inputs(node, inputs, 2)
        data, indices = inputs
        if data.shape is None or indices.shape is None:
            return [out(node, 0, data.dtype, None)]
        if not data.shape:
            raise fail(node, "cannot gather from a scalar (rank 0)")
        axis = normalize_axis(node, node.attrs["axis"], len(data.shape))
        return [out(node, 0, data.dtype, data.shape[:axis] + indices.shape + data.shape[axis + 1:])]

    def reference(self, node, data, indices):
        axis = normalize_axis(node, node.attrs["axis"], data.ndim)
        indices = checked_indices(indices, data.shape[axis], f"axis {axis} of data {list(data.shape)}")
        return np.take(data, indices, axis=axis)


@register
class GatherElements(Op):
    """``output[i][j][k] = data[indices[i][j][k]][j][k]`` for axis 0, and so on for others.

    ``indices`` has the rank of ``data``; the output has the shape of ``indices``.
    """

    op_type = "GatherElements"
    since = 11
    attributes = {"axis": 0}

    def infer(self, node, inputs):
        require_inputs(node, inputs, 2)
        data, indices = inputs
        if data.shape is not None and indices.shape is not None and len(data.shape) != len(indices.shape):
            raise fail(
                node, f"data {shape_str(data.shape)} and indices {shape_str(indices.shape)} must have the same rank"
            )
        if data.shape is not None:
            normalize_axis(node, node.attrs["axis"], len(data.shape))
        return [out(node, 0, data.dtype, indices.shape)]

    def reference(self, node, data, indices):
        axis = normalize_axis(node, node.attrs["axis"], data.ndim)
        return data[_element_index(node, data, indices, axis)]


def _element_index(node: Node, data: np.ndarray, indices: np.ndarray, axis: int) -> tuple:
    """The NumPy index tuple that pairs every entry of ``indices`` with its position.

    Along ``axis`` it reads ``indices``; along every other axis, the entry's own coordinate
    (an open grid, so nothing of the indices' size is materialised per axis).
    """
    if indices.ndim != data.ndim:
        raise fail(node, f"data {list(data.shape)} and indices {list(indices.shape)} must have the same rank")
    grid = list(np.indices(indices.shape, sparse=True))
    grid[axis] = checked_indices(indices, data.shape[axis], f"axis {axis} of data {list(data.shape)}")
    return tuple(grid)


@register
class GatherND(Op):
    """Gather slices of ``data`` addressed by index tuples (the last axis of ``indices``).

    With ``batch_dims = b``, the first b axes of data and indices are batch axes walked in
    step; each index tuple of length k picks ``data[batch, i1, ..., ik, ...]``. The output
    shape is ``indices.shape[:-1] + data.shape[b + k:]`` (GatherND-13).
    """

    op_type = "GatherND"
    since = 11
    attributes = {"batch_dims": 0}

    def defaults(self, version):
        return {} if version < 12 else self.attributes

    def infer(self, node, inputs):
        require_inputs(node, inputs, 2)
        data, indices = inputs
        if data.shape is None or indices.shape is None:
            return [out(node, 0, data.dtype, None)]
        k = self._check(node, data.shape, indices.shape)
        if not isinstance(k, int):
            return [out(node, 0, data.dtype, None)]
        b = node.attrs.get("batch_dims", 0)
        return [out(node, 0, data.dtype, tuple(indices.shape[:-1]) + tuple(data.shape[b + k:]))]

    def reference(self, node, data, indices):
        k = self._check(node, data.shape, indices.shape)
        b = node.attrs.get("batch_dims", 0)
        batches = int(np.prod(data.shape[:b], dtype=np.int64))
        tuples = int(np.prod(indices.shape[b:-1], dtype=np.int64))
        flat_data = data.reshape((batches,) + data.shape[b:])
        flat_indices = indices.reshape(batches, tuples, k)
        coordinates = [
            checked_indices(flat_indices[..., j], data.shape[b + j], f"axis {b + j} of data {list(data.shape)}")
            for j in range(k)
        ]
        batch = np.arange(batches)[:, None]
        gathered = flat_data[(batch, *coordinates)]  # [batches, tuples, *data.shape[b + k:]]
        return gathered.reshape(indices.shape[:-1] + data.shape[b + k:])

    def _check(self, node, data_shape, indices_shape) -> Dim:
        b = node.attrs.get("batch_dims", 0)
        r, q = len(data_shape), len(indices_shape)
        if r < 1 or q < 1 or not 0 <= b < min(r, q):
            raise fail(
                node,
                f"batch_dims {b} must be < the ranks of data {shape_str(data_shape)} "
                f"and indices {shape_str(indices_shape)}",
            )
        for i in range(b):
            d, n = data_shape[i], indices_shape[i]
            if isinstance(d, int) and isinstance(n, int) and d != n:
                raise fail(
                    node, f"batch dim {i} differs: data {shape_str(data_shape)}, indices {shape_str(indices_shape)}"
                )
        k = indices_shape[-1]
        if isinstance(k, int) and not 1 <= k <= r - b:
            raise fail(
                node,
                f"index tuples have {k} entries; data {shape_str(data_shape)} with batch_dims {b} "
                f"allows 1 to {r - b}",
            )
        return k


# ---------------------------------------------------------------------------- scattering
@register
class ScatterElements(Op):
    """A copy of ``data`` with ``updates`` written at ``indices`` along ``axis``.

    The inverse of GatherElements: for axis 0, ``output[indices[i][j]][j] = updates[i][j]``.
    ``reduction`` (opset 16: add, mul; 18: max, min) combines instead of overwriting, which
    also defines the result for repeated indices (with ``none`` the last write wins here).
    """

    op_type = "ScatterElements"
    since = 11
    attributes = {"axis": 0, "reduction": "none"}

    def defaults(self, version):
        return {"axis": 0} if version < 16 else self.attributes

    def check(self, node):
        _check_reduction(node)

    def infer(self, node, inputs):
        require_inputs(node, inputs, 3)
        data, indices, updates = inputs
        if indices.shape is not None and updates.shape is not None and len(indices.shape) != len(updates.shape):
            raise fail(
                node,
                f"indices {shape_str(indices.shape)} and updates {shape_str(updates.shape)} must have the same shape",
            )
        return [out(node, 0, data.dtype, data.shape)]

    def reference(self, node, data, indices, updates):
        if indices.shape != updates.shape:
            raise fail(
                node, f"indices {list(indices.shape)} and updates {list(updates.shape)} must have the same shape"
            )
        axis = normalize_axis(node, node.attrs["axis"], data.ndim)
        result = data.copy()
        _scatter(node, result, _element_index(node, data, indices, axis), updates)
        return result


@register
class Scatter(ScatterElements):
    """The opset 9-10 name of ScatterElements (without ``reduction``); deprecated in 11."""

    op_type = "Scatter"
    since = 9

    def defaults(self, version):
        return {"axis": 0}


@register
class ScatterND(Op):
    """A copy of ``data`` with slices ``updates`` written at the index tuples ``indices``.

    The inverse of GatherND (without batch dims): ``output[indices[i]] = updates[i]``, where
    ``updates.shape == indices.shape[:-1] + data.shape[k:]`` for tuples of length k.
    """

    op_type = "ScatterND"
    since = 11
    attributes = {"reduction": "none"}

    def defaults(self, version):
        return {} if version < 16 else self.attributes

    def check(self, node):
        _check_reduction(node)

    def infer(self, node, inputs):
        require_inputs(node, inputs, 3)
        data, indices, updates = inputs
        known = data.shape is not None and indices.shape and updates.shape is not None
        if known and isinstance(indices.shape[-1], int):
            k = indices.shape[-1]
            expected = tuple(indices.shape[:-1]) + tuple(data.shape[k:])
            agree = len(expected) == len(updates.shape) and all(
                not (isinstance(e, int) and isinstance(u, int)) or e == u for e, u in zip(expected, updates.shape)
            )
            if k > len(data.shape) or not agree:
                raise fail(
                    node,
                    f"updates {shape_str(updates.shape)} must have shape indices.shape[:-1] + data.shape[{k}:] "
                    f"= {shape_str(expected)} (data {shape_str(data.shape)}, indices {shape_str(indices.shape)})",
                )
        return [out(node, 0, data.dtype, data.shape)]

    def reference(self, node, data, indices, updates):
        k = indices.shape[-1]
        expected = indices.shape[:-1] + data.shape[k:]
        if k > data.ndim or updates.shape != expected:
            raise fail(
                node,
                f"updates {list(updates.shape)} must have shape {list(expected)} "
                f"(data {list(data.shape)}, indices {list(indices.shape)})",
            )
        where = tuple(
            checked_indices(indices[..., j], data.shape[j], f"axis {j} of data {list(data.shape)}") for j in range(k)
        )
        result = data.copy()
        _scatter(node, result, where, updates)
        return result


def _check_reduction(node: Node) -> None:
    reduction = node.attrs.get("reduction", "none")
    if reduction not in _REDUCTIONS:
        raise bad_attribute(node, f"reduction must be one of {list(_REDUCTIONS)}, got {reduction!r}")


def _scatter(node: Node, result: np.ndarray, where: tuple, updates: np.ndarray) -> None:
    """Write or combine ``updates`` into ``result[where]``, in place.

    ``ufunc.at`` is NumPy's unbuffered form: a repeated index is combined once per
    occurrence, where ``result[where] += updates`` would apply only the last one.
    """
    combine = _REDUCTIONS[node.attrs.get("reduction", "none")]
    if combine is None:
        result[where] = updates
    else:
        combine.at(result, where, updates)


# ---------------------------------------------------------------------------- encoding and ranking
@register
class OneHot(Op):
    """One-hot encode ``indices`` into a new axis of size ``depth`` at ``axis``.

    ``values = [off, on]``: the entry at the index is ``on``, all others ``off``; indices
    in ``[-depth, -1]`` count from the end, others out of range give an all-``off`` row.
    """

    op_type = "OneHot"
    since = 9
    attributes = {"axis": -1}

    def infer(self, node, inputs):
        require_inputs(node, inputs, 3)
        indices, depth, values = inputs
        if indices.shape is None:
            return [out(node, 0, values.dtype, None)]
        rank = len(indices.shape)
        axis = self._axis(node, rank)
        known = depth.const
        size = int(np.asarray(known).reshape(-1)[0]) if known is not None else None
        return [out(node, 0, values.dtype, indices.shape[:axis] + (size,) + indices.shape[axis:])]

    def reference(self, node, indices, depth, values):
        depth = int(np.asarray(depth).reshape(-1)[0])
        off, on = np.asarray(values).reshape(-1)[:2]
        positions = np.asarray(indices).astype(np.int64)
        positions = np.where(positions < 0, positions + depth, positions)
        axis = self._axis(node, positions.ndim)
        classes = np.arange(depth).reshape((depth,) + (1,) * (positions.ndim - axis))
        hot = np.expand_dims(positions, axis) == classes
        return np.where(hot, on, off).astype(values.dtype)

    def _axis(self, node, rank):
        axis = node.attrs["axis"]
        if not -rank - 1 <= axis <= rank:
            raise fail(node, f"axis {axis} is out of range [{-rank - 1}, {rank}] for indices of rank {rank}")
        return axis + rank + 1 if axis < 0 else axis


@register
class TopK(Op):
    """The k largest (or smallest) entries along ``axis`` and their indices (TopK-24).

    Sorted from best to worst; equal values keep their input order (lower index first),
    as the spec requires. ``k`` is an attribute before opset 10 and the input ``K`` from 10.
    """

    op_type = "TopK"
    since = 1
    attributes = {"axis": -1, "largest": 1, "sorted": 1}

    def defaults(self, version):
        if version < 10:
            return {"axis": -1, "k": REQUIRED}
        if version < 11:
            return {"axis": -1}
        return self.attributes

    def infer(self, node, inputs):
        require_inputs(node, inputs, 1 if node.version < 10 else 2)
        data = inputs[0]
        if data.shape is None:
            return [out(node, 0, data.dtype, None), out(node, 1, _INT64, None)]
        axis = normalize_axis(node, node.attrs["axis"], len(data.shape))
        known, k = input_or_attribute(node, inputs, 1, "k")
        size = self._k(node, k, data.shape[axis]) if known else None
        shape = data.shape[:axis] + (size,) + data.shape[axis + 1:]
        return [out(node, 0, data.dtype, shape), out(node, 1, _INT64, shape)]

    def reference(self, node, data, k=None):
        axis = normalize_axis(node, node.attrs["axis"], data.ndim)
        count = self._k(node, array_or_attribute(node, (data, k), 1, "k"), data.shape[axis])
        n = data.shape[axis]
        if node.attrs.get("largest", 1):
            # A stable ascending sort of the reversed axis, read backwards, is a descending
            # sort in which equal values keep the lower index first (no negation, so it
            # works for unsigned types too).
            order = n - 1 - np.flip(np.argsort(np.flip(data, axis), axis=axis, kind="stable"), axis)
        else:
            order = np.argsort(data, axis=axis, kind="stable")
        indices = np.take(order, np.arange(count), axis=axis)
        return np.take_along_axis(data, indices, axis=axis), indices.astype(np.int64)

    def _k(self, node, k, size):
        if k is None or len(k) != 1:
            raise fail(node, f"K must hold exactly one value, got {k}")
        k = k[0]
        if k < 0 or (isinstance(size, int) and k > size):
            raise fail(node, f"k = {k} must lie in [0, {size}], the size of the axis")
        return k


# ---------------------------------------------------------------------------- data-dependent shapes
@register
class NonZero(Op):
    """Coordinates of the non-zero entries: int64 of shape [rank, count], like ``np.nonzero``."""

    op_type = "NonZero"
    since = 9

    def infer(self, node, inputs):
        require_inputs(node, inputs, 1)
        rank = inputs[0].rank
        return [out(node, 0, _INT64, None if rank is None else (rank, None))]

    def reference(self, node, data):
        if data.ndim == 0:  # NumPy refuses 0-d input; a scalar has no coordinates
            return np.zeros((0, int(bool(data))), dtype=np.int64)
        return np.array(np.nonzero(data), dtype=np.int64).reshape(data.ndim, -1)


@register
class Compress(Op):
    """Keep the slices along ``axis`` (of the flattened input without one) where
    ``condition`` is true; like ``np.compress``. A shorter condition drops the rest."""

    op_type = "Compress"
    since = 9
    attributes = {"axis": None}

    def infer(self, node, inputs):
        require_inputs(node, inputs, 2)
        data, condition = inputs
        if data.shape is None:
            return [out(node, 0, data.dtype, None)]
        axis = node.attrs["axis"]
        dims = (dim_product(data.shape),) if axis is None else data.shape
        axis = 0 if axis is None else normalize_axis(node, axis, len(data.shape))
        count = None
        if condition.const is not None and isinstance(dims[axis], int):
            count = int(np.count_nonzero(np.asarray(condition.const).reshape(-1)[: dims[axis]]))
        return [out(node, 0, data.dtype, dims[:axis] + (count,) + dims[axis + 1:])]

    def reference(self, node, data, condition):
        axis = node.attrs["axis"]
        if axis is None:
            data, axis = data.reshape(-1), 0
        axis = normalize_axis(node, axis, data.ndim)
        keep = np.asarray(condition).astype(bool).reshape(-1)[: data.shape[axis]]
        return np.compress(keep, data, axis=axis)


@register
class Unique(Op):
    """Unique values (or sub-tensors along ``axis``), like ``np.unique``.

    Outputs: the unique values Y; the index of each one's first occurrence; for each input
    entry the position of its value in Y; and each value's count. ``sorted=0`` orders Y
    by first occurrence instead of ascending.
    """

    op_type = "Unique"
    since = 11
    attributes = {"axis": None, "sorted": 1}

    def infer(self, node, inputs):
        require_inputs(node, inputs, 1)
        data = inputs[0]
        axis = node.attrs["axis"]
        if data.shape is None:
            values, length = (None if axis is not None else (None,)), None
        elif axis is None:
            values, length = (None,), dim_product(data.shape)
        else:
            axis = normalize_axis(node, axis, len(data.shape))
            values = data.shape[:axis] + (None,) + data.shape[axis + 1:]
            length = data.shape[axis]
        shapes = [values, (None,), (length,), (None,)]
        dtypes_ = [data.dtype, _INT64, _INT64, _INT64]
        return [out(node, i, dtypes_[i], shapes[i]) for i in range(len(node.outputs))]

    def reference(self, node, data):
        axis = node.attrs["axis"]
        if axis is None:
            data, axis = data.reshape(-1), 0
        else:
            axis = normalize_axis(node, axis, data.ndim)
        values, first, inverse, counts = np.unique(
            data, return_index=True, return_inverse=True, return_counts=True, axis=axis
        )
        inverse = inverse.reshape(-1)
        if not node.attrs["sorted"]:
            order = np.argsort(first, kind="stable")
            position = np.empty_like(order)
            position[order] = np.arange(order.size)
            values, first, counts = np.take(values, order, axis=axis), first[order], counts[order]
            inverse = position[inverse]
        return values, first.astype(np.int64), inverse.astype(np.int64), counts.astype(np.int64)
