"""Whole-graph preparation and shape inference, built from each op's ``infer``.

:func:`prepare_graph` checks every node against the registry (unknown op, too old an opset,
bad attribute) and fills attribute defaults. :func:`infer_shapes` walks the graph in
topological order and gives every tensor a :class:`Value`; where all inputs of a node are
known constants (weights, or shapes that are static), it runs the node's reference to get
the value itself, so ``Shape -> Gather -> Concat -> Reshape`` chains resolve to real shapes.

A node with subgraphs (If, Loop, Scan) also reads its *implicit inputs*, the outer names its
subgraphs use: ``infer`` and ``reference`` get their Values and arrays after the explicit
inputs, in the order of ``node.implicit_inputs``. Control-flow ops infer their subgraphs
with :func:`infer_shapes` too, passing the enclosing scope as ``outer``.
"""

from __future__ import annotations

import numpy as np

from ..errors import InvalidGraphError, ShapeInferenceError, TinyInferError, node_label
from ..ir import Graph, Value
from .base import get_op, prepare_node

#: Constants bigger than this are not computed during inference (only their shape is).
MAX_FOLDED_ELEMENTS = 1 << 22


def prepare_graph(graph: Graph) -> Graph:
    """Check every node against its op and fill in typed attribute defaults (in place).

    Subgraphs are prepared too (a subgraph built without opsets uses its parent's); an error
    inside one names the node that owns it.
    """
    for node in graph.nodes:
        version = node.version or graph.opset_of(node.domain)
        prepare_node(node, version)
        for attr, subgraph in node.subgraphs():
            subgraph.opset = subgraph.opset or dict(graph.opset)
            try:
                prepare_graph(subgraph)
            except TinyInferError as exc:
                raise type(exc)(f"{node_label(node)}, subgraph '{attr}': {exc}") from None
    return graph


def infer_shapes(
    graph: Graph,
    inputs: dict[str, Value] | None = None,
    *,
    fold_constants: bool = True,
    outer: dict[str, Value] | None = None,
) -> dict[str, Value]:
    """A Value (dtype, shape, and ``const`` where known) for every tensor of the graph.

    ``inputs`` overrides the declared type of graph inputs, e.g. with the concrete shapes of
    a feed; symbolic dims stay symbolic otherwise. ``outer`` holds the Values of the
    enclosing scope when ``graph`` is a subgraph (its own names hide outer ones).
    """
    inputs = inputs or {}
    known: dict[str, Value] = dict(outer or {})
    for name, array in graph.initializers.items():
        known[name] = Value(name, array.dtype, array.shape, const=array)
    for value in graph.inputs:
        given = inputs.get(value.name, value)
        known[value.name] = Value(value.name, given.dtype, given.shape, const=given.const, kind=given.kind)
    for node in graph.topological_order():
        try:
            args = [known[name] if name else None for name in node.inputs]
            args += [known[name] for name in node.implicit_inputs]
        except KeyError as exc:
            raise InvalidGraphError(f"{node_label(node)} reads '{exc.args[0]}', which is not defined") from None
        op = get_op(node)
        present = [a for a in args if a is not None]
        if fold_constants and getattr(op, "deterministic", True) and all(a.const is not None for a in present):
            results = _evaluate(op, node, args)
        else:
            results = _infer(op, node, args)
        missing = [name for name in node.outputs[len(results):] if name]
        if missing:
            raise ShapeInferenceError(
                f"{node_label(node)}: declares {len(node.outputs)} outputs but {node.op_type} produces "
                f"{len(results)}; nothing computes {missing}"
            )
        for name, value in zip(node.outputs, results):
            if name:
                value.name = name
                known[name] = value
    return known


def _infer(op, node, args) -> list[Value]:
    try:
        results = op.infer(node, args)
    except TinyInferError:
        raise
    except Exception as exc:
        raise ShapeInferenceError(f"{node_label(node)}: shape inference failed: {type(exc).__name__}: {exc}") from exc
    return list(results)


def _evaluate(op, node, args) -> list[Value]:
    """Compute a node whose inputs are all constant; fall back to ``infer`` for big results."""
    inferred = _infer(op, node, args)
    sizes = [_size(v.shape) for v in inferred]
    if any(s is None or s > MAX_FOLDED_ELEMENTS for s in sizes):
        return inferred
    if any(v.kind != "tensor" for v in inferred):
        return inferred  # only tensors are ever constants, never sequences or optionals
    arrays = [None if a is None else a.const for a in args]
    try:
        results = op.reference(node, *arrays)
    except TinyInferError:
        raise
    except Exception as exc:
        raise ShapeInferenceError(f"{node_label(node)}: cannot evaluate on constant inputs: {exc}") from exc
    if isinstance(results, np.ndarray) or not isinstance(results, (list, tuple)):
        results = (results,)
    values = []
    for name, array in zip(node.outputs, results):
        array = np.asarray(array)
        values.append(Value(name, array.dtype, array.shape, const=array))
    return values


def _size(shape) -> int | None:
    if shape is None or not all(isinstance(d, int) for d in shape):
        return None
    return int(np.prod(shape, dtype=np.int64))
