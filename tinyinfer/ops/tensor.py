"""Tensor and shape-manipulation ops: they move, copy or describe data without arithmetic.

Concat, Split, Slice, Reshape, Flatten, Transpose, Squeeze, Unsqueeze, Expand, Tile, Pad,
Shape, Size, Identity, Dropout, DepthToSpace, SpaceToDepth and EyeLike, following the ONNX
operator spec (Operators.md) up to opset 28.

Most of these ops are cheap to run but matter a great deal to shape inference: a model's
``Shape -> Gather -> Concat -> Reshape`` chain only resolves if every link computes exact
dimensions from the values it knows. So each ``infer`` here reads its shape-like input
(Reshape's ``shape``, Slice's ``starts``...) when it is a known constant, keeps the symbolic
dims of the data it passes through, and falls back to the right rank with unknown (``None``)
dims when the value is only known at run time.

Several operands moved from attributes to inputs over the opset versions (Slice at 10, Pad
at 11, Split/Squeeze/Unsqueeze at 13). Every op accepts both forms: the input when it is
given, else the attribute of the older version.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Sequence

import numpy as np

from ..ir import Node, Value, dtypes
from ..ir.graph import Dim
from ..ir.graph import Shape as Dims  # the type; `Shape` is the op below
from .base import (
    REQUIRED,
    Op,
    bad_attribute,
    broadcast_shapes,
    const_ints,
    dim_product,
    fail,
    like,
    normalize_axis,
    out,
    register,
    require_inputs,
)

#: Slice ends at or beyond this reach the end of any real axis ("INT_MAX" in the spec).
_TO_THE_END = 2**31 - 1

#: Slice's operands after ``data``, as inputs (opset 10+) or attributes (before).
_SLICE_OPERANDS = ("starts", "ends", "axes", "steps")


# ---------------------------------------------------------------------------- helpers shared with indexing.py
def input_or_attribute(
    node: Node, inputs: list[Value | None], index: int, attribute: str
) -> tuple[bool, list[int] | None]:
    """An integer operand that is an input in newer opsets and an attribute in older ones.

    Returns ``(known, values)``: ``known`` is False when the input is given but its value is
    only known at run time; ``values`` is None when neither form is given.
    """
    if index < len(inputs) and inputs[index] is not None:
        values = const_ints(inputs[index])
        return values is not None, values
    return True, _as_list(node.attrs.get(attribute))


def array_or_attribute(node: Node, arrays: Sequence[np.ndarray | None], index: int, attribute: str) -> list[int] | None:
    """The run-time twin of :func:`input_or_attribute`: the input's values, else the attribute."""
    if index < len(arrays) and arrays[index] is not None:
        return [int(v) for v in np.asarray(arrays[index]).reshape(-1)]
    return _as_list(node.attrs.get(attribute))


def normalize_axes(node: Node, axes: Sequence[int], rank: int, what: str = "axes") -> list[int]:
    """Non-negative axes, refusing out-of-range and repeated ones."""
    result = [normalize_axis(node, axis, rank, what) for axis in axes]
    if len(set(result)) != len(result):
        raise fail(node, f"{what} {list(axes)} repeat an axis")
    return result


def shape_str(shape: Dims | Sequence[int] | None) -> str:
    """``[N, 3, ?]``: a shape as error messages print it."""
    if shape is None:
        return "[?]"
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _as_list(value: Any) -> list[int] | None:
    if value is None:
        return None
    if isinstance(value, (list, tuple, np.ndarray)):
        return [int(v) for v in value]
    return [int(value)]


def _merge_dims(node: Node, dims: Sequence[Dim], what: str) -> Dim:
    """One dim that several inputs must agree on: a known int wins over a symbol."""
    known = {d for d in dims if isinstance(d, int)}
    if len(known) > 1:
        raise fail(node, f"{what} must be equal, got {sorted(known)}")
    if known:
        return known.pop()
    symbols = set(dims)
    return symbols.pop() if len(symbols) == 1 else None


def _folded_product(dims: Sequence[Dim]) -> Dim:
    """Product of dims; a lone symbolic dim among 1s stays symbolic (Flatten of [N, 1] is N)."""
    rest = [d for d in dims if d != 1]
    if 0 in rest:
        return 0
    if len(rest) == 1:
        return rest[0]
    return dim_product(rest)


def _length(value: Value) -> int | None:
    """The static length of a 1-D input (e.g. how many axes an unknown ``axes`` holds)."""
    if value.shape is not None and len(value.shape) == 1 and isinstance(value.shape[0], int):
        return value.shape[0]
    return None


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


# ---------------------------------------------------------------------------- joining and splitting
@register
class Concat(Op):
    """Join tensors along ``axis``; every other dimension must match (Concat-13)."""

    op_type = "Concat"
    since = 1
    attributes = {"axis": REQUIRED}

    def defaults(self, version):
        return {"axis": 1} if version < 4 else self.attributes

    def infer(self, node, inputs):
        require_inputs(node, inputs, 1, len(node.inputs))
        shapes = [v.shape for v in inputs if v.shape is not None]
        dtype = next((v.dtype for v in inputs if v.dtype is not None), None)
        if not shapes:
            return [out(node, 0, dtype, None)]
        rank = len(shapes[0])
        if any(len(s) != rank for s in shapes):
            raise fail(node, f"all inputs must have the same rank, got shapes {[shape_str(s) for s in shapes]}")
        if rank == 0:
            raise fail(node, "cannot concatenate scalars (rank 0); Unsqueeze them first")
        axis = normalize_axis(node, node.attrs["axis"], rank)
        dims = []
        for i in range(rank):
            if i == axis:
                sizes = [s[i] for s in shapes]
                complete = len(shapes) == len(inputs) and all(isinstance(d, int) for d in sizes)
                dims.append(sum(sizes) if complete else None)
            else:
                dims.append(_merge_dims(node, [s[i] for s in shapes], f"dimension {i} of all inputs"))
        return [out(node, 0, dtype, tuple(dims))]

    def reference(self, node, *arrays):
        return np.concatenate(arrays, axis=node.attrs["axis"])


@register
class Split(Op):
    """Cut a tensor into pieces along ``axis``.

    The piece sizes come from the ``split`` input (attribute before opset 13); else from
    ``num_outputs`` (opset 18: chunks of ceil(dim / n), the last one smaller); else the
    axis is cut into as many equal parts as the node has outputs.
    """

    op_type = "Split"
    since = 1
    attributes = {"axis": 0, "num_outputs": None}

    def defaults(self, version):
        if version < 13:
            return {"axis": 0, "split": None}
        if version < 18:
            return {"axis": 0}
        return self.attributes

    def check(self, node):
        count = node.attrs.get("num_outputs")
        if count is not None and count != len(node.outputs):
            raise bad_attribute(node, f"num_outputs is {count} but the node has {len(node.outputs)} outputs")

    def infer(self, node, inputs):
        require_inputs(node, inputs, 1, 2)
        data = inputs[0]
        outputs = len(node.outputs)
        if data.shape is None:
            return [out(node, i, data.dtype, None) for i in range(outputs)]
        axis = normalize_axis(node, node.attrs["axis"], len(data.shape))
        known, sizes = input_or_attribute(node, inputs, 1, "split")
        if not known:
            sizes = [None] * outputs
        else:
            sizes = self._sizes(node, data.shape[axis], sizes)
        return [
            out(node, i, data.dtype, data.shape[:axis] + (size,) + data.shape[axis + 1:])
            for i, size in enumerate(sizes)
        ]

    def reference(self, node, data, split=None):
        axis = normalize_axis(node, node.attrs["axis"], data.ndim)
        sizes = self._sizes(node, data.shape[axis], array_or_attribute(node, (data, split), 1, "split"))
        return tuple(np.split(data, np.cumsum(sizes)[:-1], axis=axis))

    def _sizes(self, node: Node, dim: Dim, split: list[int] | None) -> list[Dim]:
        outputs = len(node.outputs)
        if split is not None:
            if len(split) != outputs or any(s < 0 for s in split):
                raise fail(node, f"split {split} must hold {outputs} sizes >= 0, one per output")
            if isinstance(dim, int) and sum(split) != dim:
                raise fail(node, f"split {split} sums to {sum(split)}, but the axis has {dim} elements")
            return list(split)
        if not isinstance(dim, int):
            return [None] * outputs
        if node.attrs.get("num_outputs") is not None:
            chunk = _ceil_div(dim, outputs)
            last = dim - chunk * (outputs - 1)
            if last < 0:
                raise fail(node, f"an axis of {dim} elements cannot be split into {outputs} chunks of {chunk}")
            return [chunk] * (outputs - 1) + [last]
        if dim % outputs:
            raise fail(node, f"an axis of {dim} elements cannot be split into {outputs} equal parts; give 'split'")
        return [dim // outputs] * outputs


# ---------------------------------------------------------------------------- slicing
@register
class Slice(Op):
    """``data[starts:ends:steps]`` along ``axes``, with the spec's clamping rules (Slice-13).

    starts/ends/axes/steps are inputs from opset 10 and attributes (no steps) before.
    """

    op_type = "Slice"
    since = 1
    attributes = {}

    def defaults(self, version):
        if version < 10:
            return {"starts": REQUIRED, "ends": REQUIRED, "axes": None}
        return self.attributes

    def infer(self, node, inputs):
        require_inputs(node, inputs, 1 if node.version < 10 else 3, 5)
        data = inputs[0]
        if data.shape is None:
            return [like(node, 0, data)]
        rank = len(data.shape)
        operands = [input_or_attribute(node, inputs, i, name) for i, name in enumerate(_SLICE_OPERANDS, 1)]
        if not all(known for known, _ in operands):
            # The values are only known at run time; if the axes are known, only those change.
            axes_known, axes = operands[2]
            if axes_known and axes is not None:
                touched = set(normalize_axes(node, axes, rank))
            else:
                touched = set(range(rank))
            return [out(node, 0, data.dtype, tuple(None if i in touched else d for i, d in enumerate(data.shape)))]
        starts, ends, axes, steps = (values for _, values in operands)
        dims = list(data.shape)
        for axis, start, end, step in self._per_axis(node, rank, starts, ends, axes, steps):
            dims[axis] = _sliced_dim(data.shape[axis], start, end, step)
        return [out(node, 0, data.dtype, tuple(dims))]

    def reference(self, node, data, *operands):
        values = [array_or_attribute(node, operands, i, name) for i, name in enumerate(_SLICE_OPERANDS)]
        index = [slice(None)] * data.ndim
        for axis, start, end, step in self._per_axis(node, data.ndim, *values):
            start, end, _ = _slice_bounds(start, end, step, data.shape[axis])
            # A negative step may run past index 0: end -1 means "through 0", which Python
            # spells as None (a -1 would mean the last element).
            index[axis] = slice(start, end if end >= 0 else None, step)
        return data[tuple(index)]

    def _per_axis(self, node, rank, starts, ends, axes, steps):
        if starts is None or ends is None or len(starts) != len(ends):
            raise fail(node, f"starts {starts} and ends {ends} must have the same length")
        axes = list(range(len(starts))) if axes is None else axes
        steps = [1] * len(starts) if steps is None else steps
        if not len(axes) == len(steps) == len(starts):
            raise fail(node, f"starts, ends, axes {axes} and steps {steps} must have the same length")
        if 0 in steps:
            raise fail(node, f"steps {steps} cannot contain 0")
        return zip(normalize_axes(node, axes, rank), starts, ends, steps)


def _slice_bounds(start: int, end: int, step: int, dim: int) -> tuple[int, int, int]:
    """Effective (start, end, count) of one sliced axis, clamped as the Slice spec says."""
    if dim == 0:
        return 0, 0, 0
    if start < 0:
        start += dim
    if end < 0:
        end += dim
    if step > 0:
        start = min(max(start, 0), dim)
        end = min(max(end, 0), dim)
        return start, end, max(0, _ceil_div(end - start, step))
    start = min(max(start, 0), dim - 1)
    end = min(max(end, -1), dim - 1)
    return start, end, max(0, _ceil_div(start - end, -step))


def _sliced_dim(dim: Dim, start: int, end: int, step: int) -> Dim:
    if isinstance(dim, int):
        return _slice_bounds(start, end, step, dim)[2]
    if step == 1 and (start == 0 or start <= -_TO_THE_END) and end >= _TO_THE_END:
        return dim  # the whole axis, whatever its size
    return None


# ---------------------------------------------------------------------------- reshaping
@register
class Reshape(Op):
    """Same data, new shape (Reshape-14).

    In ``shape``, -1 means "whatever is left" (at most once) and 0 copies the input's
    dimension at that position, unless ``allowzero=1``, where 0 is a real zero-sized dim.
    """

    op_type = "Reshape"
    since = 5
    attributes = {"allowzero": 0}

    def defaults(self, version):
        return {} if version < 14 else self.attributes

    def infer(self, node, inputs):
        require_inputs(node, inputs, 2)
        data, shape = inputs
        requested = const_ints(shape)
        if requested is None:
            rank = _length(shape)
            return [out(node, 0, data.dtype, None if rank is None else (None,) * rank)]
        if data.shape is None:
            dims = tuple(d if d > 0 or (d == 0 and node.attrs.get("allowzero")) else None for d in requested)
            return [out(node, 0, data.dtype, dims)]
        return [out(node, 0, data.dtype, reshaped_dims(node, data.shape, requested, node.attrs.get("allowzero", 0)))]

    def reference(self, node, data, shape):
        requested = [int(v) for v in shape.reshape(-1)]
        dims = reshaped_dims(node, data.shape, requested, node.attrs.get("allowzero", 0))
        return data.reshape([-1 if d is None else d for d in dims])  # None: -1 NumPy must resolve


def reshaped_dims(node: Node, in_shape: Dims, requested: list[int], allowzero: int) -> Dims:
    """The output dims of Reshape; symbolic input dims are carried where they can be."""
    dims: list[Dim] = []
    infer_at = None
    for i, value in enumerate(requested):
        if value == -1:
            if infer_at is not None:
                raise fail(node, f"shape {requested} may hold -1 only once")
            infer_at = i
            dims.append(None)
        elif value == 0 and not allowzero:
            if i >= len(in_shape):
                raise fail(
                    node,
                    f"shape {requested} copies input dim {i} (0), but the input {shape_str(in_shape)} "
                    f"has rank {len(in_shape)}",
                )
            dims.append(in_shape[i])
        elif value < 0:
            raise fail(node, f"shape {requested} holds {value}; only -1 and sizes >= 0 are allowed")
        else:
            dims.append(value)
    if allowzero and infer_at is not None and 0 in requested:
        raise fail(node, f"shape {requested} holds both 0 and -1, which allowzero=1 forbids")

    in_known, in_symbols, in_unknown = _split_dims(in_shape)
    out_known, out_symbols, out_unknown = _split_dims([d for i, d in enumerate(dims) if i != infer_at])

    def incompatible():
        return fail(
            node,
            f"cannot reshape a tensor of shape {shape_str(in_shape)} into {requested} "
            f"(the element counts differ)",
        )

    if in_unknown or out_unknown or not (out_symbols <= in_symbols):
        return tuple(dims)
    left = in_symbols - out_symbols
    if infer_at is None:
        if not left and in_known != out_known:
            raise incompatible()
        return tuple(dims)
    if not left:
        if out_known == 0:
            return tuple(dims)  # -1 next to a zero-sized dim is ambiguous; NumPy decides
        if in_known % out_known:
            raise incompatible()
        dims[infer_at] = in_known // out_known
    elif sum(left.values()) == 1 and in_known == out_known:
        dims[infer_at] = next(iter(left))
    return tuple(dims)


def _split_dims(dims: Sequence[Dim]) -> tuple[int, Counter, int]:
    """(product of known dims, symbols with their counts, count of unknown dims)."""
    known = 1
    for d in dims:
        if isinstance(d, int):
            known *= d
    return known, Counter(d for d in dims if isinstance(d, str)), sum(d is None for d in dims)


@register
class Flatten(Op):
    """Reshape to 2-D: dims before ``axis`` become the rows, the rest the columns."""

    op_type = "Flatten"
    since = 1
    attributes = {"axis": 1}

    def infer(self, node, inputs):
        require_inputs(node, inputs, 1)
        data = inputs[0]
        if data.shape is None:
            return [out(node, 0, data.dtype, (None, None))]
        axis = self._axis(node, len(data.shape))
        return [out(node, 0, data.dtype, (_folded_product(data.shape[:axis]), _folded_product(data.shape[axis:])))]

    def reference(self, node, data):
        axis = self._axis(node, data.ndim)
        rows = int(np.prod(data.shape[:axis], dtype=np.int64))
        columns = int(np.prod(data.shape[axis:], dtype=np.int64))
        return data.reshape(rows, columns)

    def _axis(self, node, rank):
        axis = node.attrs["axis"]
        if not -rank <= axis <= rank:
            raise fail(node, f"axis {axis} is out of range [-{rank}, {rank}] for a tensor of rank {rank}")
        return axis + rank if axis < 0 else axis


@register
class Transpose(Op):
    """Permute the axes: output axis i is input axis ``perm[i]`` (default: reversed)."""

    op_type = "Transpose"
    since = 1
    attributes = {"perm": None}

    def check(self, node):
        perm = node.attrs["perm"]
        if perm is not None and sorted(perm) != list(range(len(perm))):
            raise bad_attribute(node, f"perm {perm} is not a permutation of 0..{len(perm) - 1}")

    def infer(self, node, inputs):
        require_inputs(node, inputs, 1)
        data = inputs[0]
        if data.shape is None:
            perm = node.attrs["perm"]
            return [out(node, 0, data.dtype, None if perm is None else (None,) * len(perm))]
        perm = self._perm(node, len(data.shape))
        return [out(node, 0, data.dtype, tuple(data.shape[p] for p in perm))]

    def reference(self, node, data):
        return np.transpose(data, self._perm(node, data.ndim))

    def _perm(self, node, rank):
        perm = node.attrs["perm"]
        if perm is None:
            return list(range(rank))[::-1]
        if len(perm) != rank:
            raise fail(node, f"perm {perm} has {len(perm)} entries but the input has rank {rank}")
        return perm


@register
class Squeeze(Op):
    """Remove axes of size 1: the listed ``axes``, or every size-1 axis if none are given."""

    op_type = "Squeeze"
    since = 1
    attributes = {}

    def defaults(self, version):
        return {"axes": None} if version < 13 else self.attributes

    def infer(self, node, inputs):
        require_inputs(node, inputs, 1, 2)
        data = inputs[0]
        known, axes = input_or_attribute(node, inputs, 1, "axes")
        if data.shape is None:
            return [like(node, 0, data, shape=None)]
        rank = len(data.shape)
        if not known:
            count = _length(inputs[1])
            return [out(node, 0, data.dtype, None if count is None else (None,) * (rank - count))]
        if axes is None:
            if not all(isinstance(d, int) for d in data.shape):
                return [out(node, 0, data.dtype, None)]  # a symbolic dim might be 1
            return [out(node, 0, data.dtype, tuple(d for d in data.shape if d != 1))]
        axes = normalize_axes(node, axes, rank)
        for axis in axes:
            if isinstance(data.shape[axis], int) and data.shape[axis] != 1:
                raise fail(
                    node, f"cannot squeeze axis {axis} of size {data.shape[axis]} (input {shape_str(data.shape)})"
                )
        return [out(node, 0, data.dtype, tuple(d for i, d in enumerate(data.shape) if i not in axes))]

    def reference(self, node, data, axes=None):
        axes = array_or_attribute(node, (data, axes), 1, "axes")
        if axes is None:
            return np.squeeze(data)
        axes = normalize_axes(node, axes, data.ndim)
        for axis in axes:
            if data.shape[axis] != 1:
                raise fail(node, f"cannot squeeze axis {axis} of size {data.shape[axis]} (input {list(data.shape)})")
        return np.squeeze(data, axis=tuple(axes))


@register
class Unsqueeze(Op):
    """Insert size-1 axes at positions ``axes`` of the output."""

    op_type = "Unsqueeze"
    since = 1
    attributes = {}

    def defaults(self, version):
        return {"axes": REQUIRED} if version < 13 else self.attributes

    def infer(self, node, inputs):
        require_inputs(node, inputs, 1 if node.version < 13 else 2)
        data = inputs[0]
        known, axes = input_or_attribute(node, inputs, 1, "axes")
        if data.shape is None:
            return [like(node, 0, data, shape=None)]
        if not known:
            count = _length(inputs[1])
            return [out(node, 0, data.dtype, None if count is None else (None,) * (len(data.shape) + count))]
        return [out(node, 0, data.dtype, self._unsqueezed(node, data.shape, axes))]

    def reference(self, node, data, axes=None):
        shape = self._unsqueezed(node, data.shape, array_or_attribute(node, (data, axes), 1, "axes"))
        return data.reshape(shape)

    def _unsqueezed(self, node, shape, axes):
        if axes is None:
            raise fail(node, "needs axes (an input from opset 13, an attribute before)")
        rank = len(shape) + len(axes)
        axes = set(normalize_axes(node, axes, rank))
        dims = iter(shape)
        return tuple(1 if i in axes else next(dims) for i in range(rank))


# ---------------------------------------------------------------------------- broadcasting, tiling, padding
@register
class Expand(Op):
    """Broadcast the input to ``shape`` (both ways, as NumPy does; Expand-13)."""

    op_type = "Expand"
    since = 8

    def infer(self, node, inputs):
        require_inputs(node, inputs, 2)
        data, shape = inputs
        target = const_ints(shape)
        if target is None:
            count = _length(shape)
            if count is None:
                return [out(node, 0, data.dtype, None)]
            target = [None] * count
        if data.shape is None:
            return [out(node, 0, data.dtype, None)]
        return [out(node, 0, data.dtype, broadcast_shapes(node, data.shape, tuple(target)))]

    def reference(self, node, data, shape):
        target = np.broadcast_shapes(data.shape, tuple(int(v) for v in shape.reshape(-1)))
        return np.array(np.broadcast_to(data, target))  # a real, writable copy


@register
class Tile(Op):
    """Repeat the input ``repeats[i]`` times along each axis i."""

    op_type = "Tile"
    since = 6

    def infer(self, node, inputs):
        require_inputs(node, inputs, 2)
        data, repeats = inputs
        if data.shape is None:
            return [like(node, 0, data)]
        counts = const_ints(repeats)
        if counts is None:
            return [out(node, 0, data.dtype, (None,) * len(data.shape))]
        self._check(node, data.shape, counts)
        dims = [d if r == 1 else (d * r if isinstance(d, int) else None) for d, r in zip(data.shape, counts)]
        return [out(node, 0, data.dtype, tuple(dims))]

    def reference(self, node, data, repeats):
        counts = [int(v) for v in repeats.reshape(-1)]
        self._check(node, data.shape, counts)
        return np.tile(data, counts)

    def _check(self, node, shape, counts):
        if len(counts) != len(shape) or any(c < 0 for c in counts):
            raise fail(node, f"repeats {counts} must hold one count >= 0 per axis of the input {shape_str(shape)}")


@register
class Pad(Op):
    """Pad (or, with negative pads, crop) each axis at its start and end (Pad-19).

    ``pads`` is ``[x1_begin, x2_begin, ..., x1_end, x2_end, ...]`` for ``axes`` (all axes by
    default). Modes: ``constant`` (fill with ``constant_value``, default 0), ``reflect``
    (mirror, excluding the edge), ``edge`` (repeat the edge), ``wrap`` (as on a torus).
    pads/value are attributes before opset 11 and inputs from 11; ``axes`` is new in 18.
    """

    op_type = "Pad"
    since = 2
    attributes = {"mode": "constant"}
    modes = ("constant", "reflect", "edge", "wrap")

    def defaults(self, version):
        if version < 11:
            return {"mode": "constant", "pads": REQUIRED, "value": 0.0}
        return self.attributes

    def check(self, node):
        if node.attrs["mode"] not in self.modes:
            raise bad_attribute(node, f"mode must be one of {list(self.modes)}, got {node.attrs['mode']!r}")

    def infer(self, node, inputs):
        require_inputs(node, inputs, 1 if node.version < 11 else 2, 4)
        data = inputs[0]
        if data.shape is None:
            return [like(node, 0, data)]
        rank = len(data.shape)
        pads_known, pads = input_or_attribute(node, inputs, 1, "pads")
        axes_known, axes = input_or_attribute(node, inputs, 3, "axes")
        if not pads_known or not axes_known:
            touched = set(range(rank)) if not axes_known or axes is None else set(normalize_axes(node, axes, rank))
            return [out(node, 0, data.dtype, tuple(None if i in touched else d for i, d in enumerate(data.shape)))]
        dims = list(data.shape)
        for axis, begin, end in self._per_axis(node, data.shape, pads, axes):
            dim = data.shape[axis]
            if isinstance(dim, int):
                dims[axis] = dim + begin + end
                if dims[axis] < 0:
                    raise fail(node, f"pads {pads} crop axis {axis} of size {dim} below zero")
            elif begin or end:
                dims[axis] = None
        return [out(node, 0, data.dtype, tuple(dims))]

    def reference(self, node, data, pads=None, constant_value=None, axes=None):
        operands = (data, pads, constant_value, axes)
        pad_values = array_or_attribute(node, operands, 1, "pads")
        axes = array_or_attribute(node, operands, 3, "axes")
        widths = [(0, 0)] * data.ndim
        crop = [slice(None)] * data.ndim
        for axis, begin, end in self._per_axis(node, data.shape, pad_values, axes):
            # Negative pads remove elements: crop first, then pad by what stays positive.
            crop[axis] = slice(max(-begin, 0), data.shape[axis] - max(-end, 0))
            widths[axis] = (max(begin, 0), max(end, 0))
        data = data[tuple(crop)]
        mode = node.attrs["mode"]
        if mode != "constant":
            return np.pad(data, widths, mode=mode)
        if constant_value is not None and np.size(constant_value):
            value = np.asarray(constant_value).reshape(-1)[0]
        elif node.version < 11:
            value = node.attrs["value"]
        else:
            value = "" if data.dtype.kind in "OUS" else 0
        return np.pad(data, widths, mode="constant", constant_values=np.asarray(value).astype(data.dtype))

    def _per_axis(self, node, shape, pads, axes):
        rank = len(shape)
        axes = list(range(rank)) if axes is None else normalize_axes(node, axes, rank)
        if pads is None or len(pads) != 2 * len(axes):
            raise fail(node, f"pads {pads} must hold 2 values (begin, end) for each of the {len(axes)} padded axes")
        count = len(axes)
        return [(axis, pads[i], pads[i + count]) for i, axis in enumerate(axes)]


# ---------------------------------------------------------------------------- describing a tensor
@register
class Shape(Op):
    """The input's shape as a 1-D int64 tensor, optionally sliced to ``[start, end)`` (Shape-15)."""

    op_type = "Shape"
    since = 1
    attributes = {"start": 0, "end": None}

    def defaults(self, version):
        return {} if version < 15 else self.attributes

    def infer(self, node, inputs):
        require_inputs(node, inputs, 1)
        data = inputs[0]
        if data.shape is None:
            return [out(node, 0, np.dtype(np.int64), (None,))]
        start, end = self._range(node, len(data.shape))
        dims = data.shape[start:end]
        result = Value(node.outputs[0], np.dtype(np.int64), (len(dims),))
        if all(isinstance(d, int) for d in dims):
            result.const = np.array(dims, dtype=np.int64)  # a static shape is a constant
        return [result]

    def reference(self, node, data):
        start, end = self._range(node, data.ndim)
        return np.array(data.shape[start:end], dtype=np.int64)

    def _range(self, node, rank):
        start = node.attrs.get("start", 0)
        end = node.attrs.get("end")
        end = rank if end is None else end
        start, end = (min(max(v + rank if v < 0 else v, 0), rank) for v in (start, end))
        return start, max(start, end)


@register
class Size(Op):
    """The input's element count, as an int64 scalar."""

    op_type = "Size"
    since = 1

    def infer(self, node, inputs):
        require_inputs(node, inputs, 1)
        data = inputs[0]
        result = Value(node.outputs[0], np.dtype(np.int64), ())
        if data.is_static:
            result.const = np.array(dim_product(data.shape), dtype=np.int64)
        return [result]

    def reference(self, node, data):
        return np.array(data.size, dtype=np.int64)


@register
class Identity(Op):
    """The input, unchanged."""

    op_type = "Identity"
    since = 1

    def infer(self, node, inputs):
        require_inputs(node, inputs, 1)
        return [like(node, 0, inputs[0])]

    def reference(self, node, data):
        return (data,)  # a tuple: a sequence input is a list, not a list of outputs


@register
class Dropout(Op):
    """Identity at inference; random zeroing only in training mode (Dropout-22).

    From opset 12 ``ratio`` and ``training_mode`` are inputs. With ``training_mode`` true
    and ``ratio > 0``, each element is kept with probability ``1 - ratio`` and scaled by
    ``1 / (1 - ratio)``; the keep/drop draw is ``uniform(0, 1) >= ratio`` from NumPy's
    Mersenne Twister seeded with ``seed`` (fresh entropy without a seed), which is also how
    ONNX's conformance tests draw it. The optional ``mask`` output (bool from opset 10,
    the data type before) marks the kept elements.
    """

    op_type = "Dropout"
    since = 7
    attributes = {"seed": None}
    #: Training mode draws random numbers: never fold it into a constant.
    deterministic = False

    def defaults(self, version):
        return {"ratio": 0.5} if version < 12 else self.attributes

    def infer(self, node, inputs):
        require_inputs(node, inputs, 1, 3)
        data = inputs[0]
        results = [like(node, 0, data)]
        if len(node.outputs) > 1:
            results.append(like(node, 1, data, dtype=self._mask_dtype(node, data.dtype)))
        return results

    def reference(self, node, data, ratio=None, training_mode=None):
        mask_dtype = self._mask_dtype(node, data.dtype)
        ratio = 0.5 if ratio is None else float(np.asarray(ratio).reshape(-1)[0])
        training = training_mode is not None and bool(np.asarray(training_mode).reshape(-1)[0])
        if not training or ratio == 0:
            if len(node.outputs) < 2:
                return data
            return data, np.ones(data.shape, dtype=mask_dtype)
        if not 0 <= ratio < 1:
            raise fail(node, f"ratio must lie in [0, 1), got {ratio}")
        seed = node.attrs.get("seed")
        if seed is None:
            draw = np.random.default_rng().random(data.shape)
        else:
            draw = np.random.RandomState(seed).uniform(0, 1, data.shape)
        keep = draw >= ratio
        scale = 1 / (1 - ratio)
        return np.where(keep, data * scale, 0).astype(data.dtype), keep.astype(mask_dtype)

    def _mask_dtype(self, node, data_dtype):
        return np.dtype(np.bool_) if node.version >= 10 or data_dtype is None else data_dtype


# ---------------------------------------------------------------------------- depth <-> space
class _BlockRearrange(Op):
    """Shared checks of DepthToSpace and SpaceToDepth: NCHW input, ``blocksize`` >= 1."""

    since = 1
    attributes = {"blocksize": REQUIRED, "mode": "DCR"}

    def check(self, node):
        if node.attrs["blocksize"] < 1:
            raise bad_attribute(node, f"blocksize must be >= 1, got {node.attrs['blocksize']}")
        if node.attrs.get("mode", "DCR") not in ("DCR", "CRD"):
            raise bad_attribute(node, f"mode must be 'DCR' or 'CRD', got {node.attrs['mode']!r}")

    def _input_shape(self, node, shape):
        if shape is not None and len(shape) != 4:
            raise fail(node, f"expects a 4-D [N, C, H, W] input, got {shape_str(shape)}")
        return shape


@register
class DepthToSpace(_BlockRearrange):
    """Move channel blocks into ``blocksize x blocksize`` spatial blocks: [N, C, H, W] ->
    [N, C/b², H·b, W·b]. ``DCR`` takes the block offset from the channel's high part,
    ``CRD`` from its low part (DepthToSpace-13)."""

    op_type = "DepthToSpace"

    def defaults(self, version):
        return {"blocksize": REQUIRED} if version < 11 else self.attributes

    def infer(self, node, inputs):
        require_inputs(node, inputs, 1)
        data = inputs[0]
        shape = self._input_shape(node, data.shape)
        if shape is None:
            return [out(node, 0, data.dtype, (None,) * 4)]
        b = node.attrs["blocksize"]
        n, c, h, w = shape
        if isinstance(c, int) and c % (b * b):
            raise fail(node, f"channels ({c}) must be divisible by blocksize² ({b * b})")
        scale = lambda d: d * b if isinstance(d, int) else (d if b == 1 else None)  # noqa: E731
        channels = c // (b * b) if isinstance(c, int) else (c if b == 1 else None)
        return [out(node, 0, data.dtype, (n, channels, scale(h), scale(w)))]

    def reference(self, node, data):
        self._input_shape(node, data.shape)
        b = node.attrs["blocksize"]
        n, c, h, w = data.shape
        if node.attrs.get("mode", "DCR") == "DCR":
            blocks = data.reshape(n, b, b, c // (b * b), h, w).transpose(0, 3, 4, 1, 5, 2)
        else:
            blocks = data.reshape(n, c // (b * b), b, b, h, w).transpose(0, 1, 4, 2, 5, 3)
        return blocks.reshape(n, c // (b * b), h * b, w * b)


@register
class SpaceToDepth(_BlockRearrange):
    """The inverse of DepthToSpace: [N, C, H, W] -> [N, C·b², H/b, W/b] (mode from opset 28)."""

    op_type = "SpaceToDepth"

    def defaults(self, version):
        return {"blocksize": REQUIRED} if version < 28 else self.attributes

    def infer(self, node, inputs):
        require_inputs(node, inputs, 1)
        data = inputs[0]
        shape = self._input_shape(node, data.shape)
        if shape is None:
            return [out(node, 0, data.dtype, (None,) * 4)]
        b = node.attrs["blocksize"]
        n, c, h, w = shape
        for name, d in (("height", h), ("width", w)):
            if isinstance(d, int) and d % b:
                raise fail(node, f"{name} ({d}) must be divisible by blocksize ({b})")
        shrink = lambda d: d // b if isinstance(d, int) else (d if b == 1 else None)  # noqa: E731
        channels = c * b * b if isinstance(c, int) else (c if b == 1 else None)
        return [out(node, 0, data.dtype, (n, channels, shrink(h), shrink(w)))]

    def reference(self, node, data):
        self._input_shape(node, data.shape)
        b = node.attrs["blocksize"]
        n, c, h, w = data.shape
        blocks = data.reshape(n, c, h // b, b, w // b, b)
        if node.attrs.get("mode", "DCR") == "DCR":
            blocks = blocks.transpose(0, 3, 5, 1, 2, 4)
        else:
            blocks = blocks.transpose(0, 1, 3, 5, 2, 4)
        return blocks.reshape(n, c * b * b, h // b, w // b)


# ---------------------------------------------------------------------------- constants shaped like the input
@register
class EyeLike(Op):
    """A 2-D tensor shaped like the input with ones on diagonal ``k`` and zeros elsewhere.

    ``dtype`` (an ONNX element-type code) picks the output type; the input's by default.
    """

    op_type = "EyeLike"
    since = 9
    attributes = {"dtype": None, "k": 0}

    def check(self, node):
        code = node.attrs["dtype"]
        if code is not None:
            try:
                dtypes.from_onnx(code)
            except KeyError:
                raise bad_attribute(node, f"dtype {code} is not an ONNX element type tinyinfer supports") from None

    def infer(self, node, inputs):
        require_inputs(node, inputs, 1)
        data = inputs[0]
        if data.shape is not None and len(data.shape) != 2:
            raise fail(node, f"expects a 2-D input, got {shape_str(data.shape)}")
        return [out(node, 0, self._dtype(node, data.dtype), data.shape if data.shape is not None else (None, None))]

    def reference(self, node, data):
        if data.ndim != 2:
            raise fail(node, f"expects a 2-D input, got {list(data.shape)}")
        return np.eye(*data.shape, k=node.attrs["k"], dtype=self._dtype(node, data.dtype))

    def _dtype(self, node, input_dtype):
        code = node.attrs["dtype"]
        return input_dtype if code is None else dtypes.from_onnx(code)
