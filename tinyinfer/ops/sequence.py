"""Sequences and optionals: ONNX's two value types that are not tensors.

A *sequence* is an ordered list of tensors of one element type (their shapes may differ);
at run time tinyinfer holds it as a Python list of arrays. An *optional* either holds a
value (a tensor or a sequence) or is empty; at run time it is that value, or ``None``.
Their :class:`~tinyinfer.ir.Value` s say so with ``kind``; ``dtype`` and ``shape`` then
describe the element tensors (a dim that differs between elements is ``None``).

Ops (ONNX spec up to opset 28): SequenceEmpty, SequenceConstruct, SequenceInsert,
SequenceAt, SequenceErase, SequenceLength, SplitToSequence, ConcatFromSequence, SequenceMap
(a subgraph applied to every element), Optional, OptionalHasElement, OptionalGetElement.

A reference returning a sequence returns it inside a tuple, ``(items,)``: a bare list
would read as one result per node output.
"""

from __future__ import annotations

import numpy as np

from ..errors import ExecutionError, node_label
from ..ir import Node, Value, dtypes
from ..ir.graph import Shape
from .base import REQUIRED, Op, bad_attribute, const_ints, fail, normalize_axis, out, register, require_inputs
from .control_flow import Subgraph, infer_subgraph, merge_shapes, split_inputs, subgraph_attribute

_SEQUENCE_KINDS = ("sequence", "optional_sequence")


def sequence_of(node: Node, index: int, dtype, shape: Shape | None) -> Value:
    """The Value of output ``index``: a sequence of tensors of this dtype and shape."""
    return Value(node.outputs[index], dtype, shape, kind="sequence")


def _require_sequence(node: Node, value: Value, what: str = "input_sequence") -> None:
    if value.kind != "sequence":
        raise fail(node, f"{what} must be a sequence of tensors, got a {value.kind}")


def _same_dtype(node: Node, sequence: Value, tensor: Value) -> None:
    if sequence.dtype is not None and tensor.dtype is not None and sequence.dtype != tensor.dtype:
        raise fail(node, f"the sequence holds {sequence.dtype} tensors; cannot add a {tensor.dtype} tensor")


def _position(node: Node, position: np.ndarray | None, length: int, default: int, *, inserting: bool = False) -> int:
    """A position in a sequence of ``length`` tensors, negatives counted from the back.

    Valid positions are ``[-n, n - 1]``, and also ``n`` (the end) when inserting.
    """
    if position is None:
        return default
    index = int(np.asarray(position).reshape(-1)[0])
    top = length if inserting else length - 1
    if not -length <= index <= top:
        raise ExecutionError(
            f"{node_label(node)}: position {index} is out of range [{-length}, {top}] for a sequence of {length} tensors"
        )
    return index + length if index < 0 else index


# ---------------------------------------------------------------------------- building sequences
@register
class SequenceEmpty(Op):
    """An empty sequence of ``dtype`` tensors (SequenceEmpty-11; ``dtype`` defaults to float)."""

    op_type = "SequenceEmpty"
    since = 11
    attributes = {"dtype": None}

    def infer(self, node, inputs):
        code = node.attrs["dtype"]
        try:
            dtype = dtypes.from_onnx(code) if code is not None else np.dtype(np.float32)
        except KeyError as exc:
            raise bad_attribute(node, exc.args[0]) from None
        return [sequence_of(node, 0, dtype, None)]

    def reference(self, node):
        return ([],)


@register
class SequenceConstruct(Op):
    """The sequence ``[input_0, input_1, ...]`` of one or more tensors of one type (SequenceConstruct-11)."""

    op_type = "SequenceConstruct"
    since = 11

    def infer(self, node, inputs):
        if not inputs or any(v is None for v in inputs):
            raise fail(node, "expects one or more tensors")
        kinds = {v.dtype for v in inputs if v.dtype is not None}
        if len(kinds) > 1:
            raise fail(node, f"all tensors must have one element type, got {sorted(map(str, kinds))}")
        return [sequence_of(node, 0, inputs[0].dtype, merge_shapes([v.shape for v in inputs]))]

    def reference(self, node, *tensors):
        return (list(tensors),)


@register
class SequenceInsert(Op):
    """``input_sequence`` with ``tensor`` inserted before ``position`` (default: at the end)
    (SequenceInsert-11). The input sequence is left unchanged."""

    op_type = "SequenceInsert"
    since = 11

    def infer(self, node, inputs):
        require_inputs(node, inputs, 2, 3)
        sequence, tensor = inputs[0], inputs[1]
        _require_sequence(node, sequence)
        _same_dtype(node, sequence, tensor)
        dtype = sequence.dtype if sequence.dtype is not None else tensor.dtype
        return [sequence_of(node, 0, dtype, merge_shapes([sequence.shape, tensor.shape]))]

    def reference(self, node, sequence, tensor, position=None):
        index = _position(node, position, len(sequence), len(sequence), inserting=True)
        return ([*sequence[:index], tensor, *sequence[index:]],)


@register
class SequenceErase(Op):
    """``input_sequence`` without the tensor at ``position`` (default: the last) (SequenceErase-11)."""

    op_type = "SequenceErase"
    since = 11

    def infer(self, node, inputs):
        require_inputs(node, inputs, 1, 2)
        _require_sequence(node, inputs[0])
        return [sequence_of(node, 0, inputs[0].dtype, inputs[0].shape)]

    def reference(self, node, sequence, position=None):
        if not sequence:
            raise ExecutionError(f"{node_label(node)}: cannot erase from an empty sequence")
        index = _position(node, position, len(sequence), len(sequence) - 1)
        return (sequence[:index] + sequence[index + 1:],)


@register
class SplitToSequence(Op):
    """Cut ``input`` along ``axis`` into a sequence (SplitToSequence-11 … 24).

    ``split`` is a scalar (chunks of that size, the last one smaller if need be) or a 1-D
    list of sizes. Without it the axis is cut into slices of size 1, which lose the axis when
    ``keepdims`` is 0.
    """

    op_type = "SplitToSequence"
    since = 11
    attributes = {"axis": 0, "keepdims": 1}

    def infer(self, node, inputs):
        require_inputs(node, inputs, 1, 2)
        data = inputs[0]
        split = inputs[1] if len(inputs) > 1 else None
        if data.shape is None:
            return [sequence_of(node, 0, data.dtype, None)]
        axis = normalize_axis(node, node.attrs["axis"], len(data.shape))
        if split is None:
            dims = data.shape[:axis] + ((1,) if node.attrs["keepdims"] else ()) + data.shape[axis + 1:]
            return [sequence_of(node, 0, data.dtype, dims)]
        if split.shape is not None and len(split.shape) > 1:
            raise fail(node, f"split must be a scalar or a 1-D tensor, got shape {list(split.shape)}")
        sizes = const_ints(split)
        chunk = None
        if sizes is not None and isinstance(data.shape[axis], int):
            sizes = self._sizes(node, data.shape[axis], np.asarray(split.const))
            chunk = sizes[0] if len(set(sizes)) == 1 else None
        return [sequence_of(node, 0, data.dtype, data.shape[:axis] + (chunk,) + data.shape[axis + 1:])]

    def reference(self, node, data, split=None):
        axis = normalize_axis(node, node.attrs["axis"], data.ndim)
        if split is None:
            pieces = np.split(data, data.shape[axis], axis=axis)
            return ([p if node.attrs["keepdims"] else np.squeeze(p, axis) for p in pieces],)
        sizes = self._sizes(node, data.shape[axis], np.asarray(split))
        return (np.split(data, np.cumsum(sizes)[:-1], axis=axis),)

    def _sizes(self, node: Node, dim: int, split: np.ndarray) -> list[int]:
        values = [int(v) for v in split.reshape(-1)]
        if any(v <= 0 for v in values) and dim:
            raise fail(node, f"split sizes must be positive, got {values}")
        if split.ndim == 0:  # chunks of one size, the last one smaller
            chunk = values[0]
            return [chunk] * (dim // chunk) + ([dim % chunk] if dim % chunk else [])
        if sum(values) != dim:
            raise fail(node, f"split {values} sums to {sum(values)}, but the axis has {dim} elements")
        return values


# ---------------------------------------------------------------------------- reading sequences
@register
class SequenceAt(Op):
    """The tensor at ``position`` of ``input_sequence``, negatives counted from the back (SequenceAt-11)."""

    op_type = "SequenceAt"
    since = 11

    def infer(self, node, inputs):
        require_inputs(node, inputs, 2)
        _require_sequence(node, inputs[0])
        return [out(node, 0, inputs[0].dtype, inputs[0].shape)]

    def reference(self, node, sequence, position):
        if not sequence:
            raise ExecutionError(f"{node_label(node)}: cannot read from an empty sequence")
        return sequence[_position(node, position, len(sequence), 0)]


@register
class SequenceLength(Op):
    """The number of tensors in ``input_sequence``, as an int64 scalar (SequenceLength-11)."""

    op_type = "SequenceLength"
    since = 11

    def infer(self, node, inputs):
        require_inputs(node, inputs, 1)
        _require_sequence(node, inputs[0])
        return [out(node, 0, np.int64, ())]

    def reference(self, node, sequence):
        return np.array(len(sequence), dtype=np.int64)


@register
class ConcatFromSequence(Op):
    """Join the tensors of a sequence along ``axis`` (ConcatFromSequence-11): concatenated
    like ``np.concatenate``, or stacked on a new axis like ``np.stack`` when ``new_axis`` is 1."""

    op_type = "ConcatFromSequence"
    since = 11
    attributes = {"axis": REQUIRED, "new_axis": 0}

    def check(self, node):
        if node.attrs["new_axis"] not in (0, 1):
            raise bad_attribute(node, f"new_axis must be 0 or 1, got {node.attrs['new_axis']}")

    def infer(self, node, inputs):
        require_inputs(node, inputs, 1)
        sequence = inputs[0]
        _require_sequence(node, sequence)
        if sequence.shape is None:
            return [out(node, 0, sequence.dtype, None)]
        dims = list(sequence.shape)
        if node.attrs["new_axis"]:
            axis = normalize_axis(node, node.attrs["axis"], len(dims) + 1)
            dims.insert(axis, None)  # as many as the sequence holds, known only at run time
        else:
            axis = normalize_axis(node, node.attrs["axis"], len(dims))
            dims[axis] = None
        return [out(node, 0, sequence.dtype, tuple(dims))]

    def reference(self, node, sequence):
        if not sequence:
            raise ExecutionError(f"{node_label(node)}: cannot concatenate an empty sequence")
        if node.attrs["new_axis"]:
            return np.stack(sequence, axis=normalize_axis(node, node.attrs["axis"], sequence[0].ndim + 1))
        return np.concatenate(sequence, axis=normalize_axis(node, node.attrs["axis"], sequence[0].ndim))


# ---------------------------------------------------------------------------- SequenceMap
@register
class SequenceMap(Op):
    """Apply ``body`` to every position of the input sequences (SequenceMap-17).

    The first input is a sequence and fixes the length; further inputs are sequences of the
    same length (their i-th tensor goes to call i) or tensors (given whole to every call).
    Each body output becomes a sequence of the per-position results.
    """

    op_type = "SequenceMap"
    since = 17
    attributes = {"body": REQUIRED}

    def check(self, node):
        body = subgraph_attribute(node, "body")
        if len(body.inputs) != len(node.inputs):
            raise bad_attribute(node, f"body takes {len(body.inputs)} inputs but the node has {len(node.inputs)}")
        if len(body.outputs) != len(node.outputs):
            raise bad_attribute(node, f"body returns {len(body.outputs)} values but the node has {len(node.outputs)} outputs")

    def infer(self, node, inputs):
        explicit, outer = split_inputs(node, inputs)
        if not explicit or any(v is None for v in explicit):
            raise fail(node, "every input must be given")
        _require_sequence(node, explicit[0], "the first input")
        elements = [Value("", v.dtype, v.shape) if v.kind == "sequence" else v for v in explicit]
        results = infer_subgraph(node, "body", elements, outer)
        return [sequence_of(node, i, v.dtype, v.shape) for i, v in enumerate(results)]

    def reference(self, node, *arrays):
        explicit, outer = split_inputs(node, arrays)
        body = Subgraph(node, "body")
        length = len(explicit[0])
        for value in explicit[1:]:
            if isinstance(value, list) and len(value) != length:
                raise ExecutionError(f"{node_label(node)}: input sequences have lengths {length} and {len(value)}")
        outputs: list[list[np.ndarray]] = [[] for _ in node.outputs]
        for i in range(length):
            results = body.run(outer, [v[i] if isinstance(v, list) else v for v in explicit])
            for collected, value in zip(outputs, results):
                collected.append(value)
        return tuple(outputs)


# ---------------------------------------------------------------------------- optionals
@register
class Optional(Op):
    """An optional holding ``input``, or an empty optional of the type ``type`` names
    (Optional-15 … 28)."""

    op_type = "Optional"
    since = 15
    attributes = {"type": None}

    def check(self, node):
        given = bool(node.inputs and node.inputs[0])
        if not given and node.attrs["type"] is None:
            raise bad_attribute(node, "an Optional without an input needs the 'type' attribute")

    def infer(self, node, inputs):
        element = inputs[0] if inputs and inputs[0] is not None else node.attrs["type"]
        if element.kind not in ("tensor", "sequence"):
            raise fail(node, f"an optional holds a tensor or a sequence, not a {element.kind}")
        kind = "optional" if element.kind == "tensor" else "optional_sequence"
        return [Value(node.outputs[0], element.dtype, element.shape, kind=kind)]

    def reference(self, node, element=None):
        return (element,)


@register
class OptionalHasElement(Op):
    """True unless the input is an empty optional or left out (OptionalHasElement-15 … 28;
    from opset 18 a plain tensor or sequence input counts as present)."""

    op_type = "OptionalHasElement"
    since = 15

    def infer(self, node, inputs):
        if inputs and inputs[0] is not None and inputs[0].kind not in ("optional", "optional_sequence") and node.version < 18:
            raise fail(node, f"the input must be an optional before opset 18, got a {inputs[0].kind}")
        return [out(node, 0, np.bool_, ())]

    def reference(self, node, element=None):
        return np.array(element is not None)


@register
class OptionalGetElement(Op):
    """The value an optional holds (OptionalGetElement-15 … 28; from opset 18 a plain tensor
    or sequence passes through). An empty optional is an error."""

    op_type = "OptionalGetElement"
    since = 15

    def infer(self, node, inputs):
        require_inputs(node, inputs, 1)
        value = inputs[0]
        if value.kind in ("tensor", "sequence") and node.version < 18:
            raise fail(node, f"the input must be an optional before opset 18, got a {value.kind}")
        kind = "sequence" if value.kind in _SEQUENCE_KINDS else "tensor"
        return [Value(node.outputs[0], value.dtype, value.shape, kind=kind)]

    def reference(self, node, element):
        if element is None:
            raise ExecutionError(f"{node_label(node)}: the optional is empty; it holds no element to get")
        return (element,)
