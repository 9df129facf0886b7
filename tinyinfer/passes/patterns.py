"""Pattern matching for the fusion passes: what a rewrite needs to know about a tensor.

A fusion looks at a node, walks to its producer or its single reader, asks whether an
operand is a constant, and what shape a tensor has. :class:`Rewriter` answers those
questions for one graph and keeps the answers current while the graph changes: shapes and
constants come from one shape inference at the start (a rewrite never changes the type of a
tensor it keeps), producers and readers are recomputed after each edit.

Two rules keep every rewrite safe, and every pass follows them:

* an intermediate tensor of a matched chain must have exactly one reader and must not be a
  graph output, otherwise someone else still needs the value the fusion removes
  (:meth:`Rewriter.sole_reader`);
* a node that replaces a chain takes the place of the chain's *last* node, so every tensor it
  reads is already computed there.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

from .. import ops
from ..ir import Graph, Node, Value
from .rewrite import bypass

FLOAT_KINDS = "f"


class Rewriter:
    """One graph being rewritten: its inferred values, producers, readers and notes."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self._values: dict[str, Value] | None = None
        self.notes: list[str] = []
        self._producers: dict[str, Node] | None = None
        self._readers: dict[str, list[Node]] | None = None
        self._outputs = set(graph.output_names)
        self._replaced: set[str] = set()  # initializers a rewrite stopped reading; maybe dead now
        self._removed: set[int] = set()  # ids of nodes taken out of the graph
        self._taken: set[str] | None = None  # every name in use, once a new one is needed

    # ------------------------------------------------------------------ looking
    @property
    def values(self) -> dict[str, Value]:
        """Every tensor's inferred Value (computed on first use: a pass that finds nothing to
        match never pays for shape inference)."""
        if self._values is None:
            self._values = ops.infer_shapes(self.graph)
        return self._values

    def producer(self, name: str, *op_types: str) -> Node | None:
        """The node writing ``name`` (if it is one of ``op_types``, when given)."""
        if self._producers is None:
            self._producers = self.graph.producers()
        node = self._producers.get(name)
        if node is None or (op_types and node.op_type not in op_types):
            return None
        return node

    def readers(self, name: str) -> list[Node]:
        if self._readers is None:
            self._readers = self.graph.consumers()
        return self._readers.get(name, [])

    def sole_reader(self, name: str, *op_types: str) -> Node | None:
        """The one node reading ``name``, if exactly one does and it is not a graph output."""
        if name in self._outputs:
            return None
        readers = self.readers(name)
        if len(readers) != 1 or (op_types and readers[0].op_type not in op_types):
            return None
        return readers[0]

    def is_private(self, name: str) -> bool:
        """Whether ``name`` is read by one node only and is no graph output (a fusion may drop it)."""
        return name not in self._outputs and len(self.readers(name)) == 1

    def const(self, name: str) -> np.ndarray | None:
        """The value of ``name`` if it is known before running (a weight or a folded value)."""
        if not name:
            return None
        if name in self.graph.initializers:
            return self.graph.initializers[name]
        value = self.values.get(name)
        return None if value is None or value.const is None else np.asarray(value.const)

    def alive(self, node: Node) -> bool:
        """Whether ``node`` is still in the graph (not removed by an earlier rewrite)."""
        return id(node) not in self._removed

    def shape(self, name: str) -> tuple | None:
        value = self.values.get(name)
        return None if value is None else value.shape

    def dtype(self, name: str) -> np.dtype | None:
        value = self.values.get(name)
        return None if value is None else value.dtype

    def is_float(self, name: str) -> bool:
        dtype = self.dtype(name)
        return dtype is not None and dtype.kind in FLOAT_KINDS

    def static_shape(self, name: str) -> tuple[int, ...] | None:
        shape = self.shape(name)
        if shape is None or not all(isinstance(d, int) for d in shape):
            return None
        return shape

    def same_shape(self, a: str, b: str) -> bool:
        """True when both shapes are known and equal dimension by dimension (symbols included)."""
        sa, sb = self.shape(a), self.shape(b)
        return sa is not None and sb is not None and len(sa) == len(sb) and all(
            x is not None and x == y for x, y in zip(sa, sb)
        )

    # ------------------------------------------------------------------ editing
    def constant(self, stem: str, array: np.ndarray) -> str:
        """Store ``array`` as a new initializer; returns its (unique) name."""
        if self._taken is None:
            graph = self.graph
            self._taken = {*graph.initializers, *graph.input_names, *graph.output_names}
            self._taken |= {n for node in graph.nodes for n in (*node.inputs, *node.outputs, node.name)}
        name, i = stem, 1
        while name in self._taken:
            name, i = f"{stem}_{i}", i + 1
        self._taken.add(name)
        array = np.asarray(array)
        self.graph.initializers[name] = array
        self.values[name] = Value(name, array.dtype, array.shape, const=array)
        return name

    def remove(self, *nodes: Node) -> None:
        """Take nodes out of the graph (their outputs must be unused or renamed by the caller)."""
        gone = {id(n) for n in nodes}
        self._removed |= gone
        for node in nodes:
            self._replaced.update(n for n in node.inputs if n in self.graph.initializers)
        self.graph.nodes = [n for n in self.graph.nodes if id(n) not in gone]
        self.touched()

    def replace(self, chain: Iterable[Node], node: Node) -> Node:
        """Put ``node`` where the last node of ``chain`` was, and remove the whole chain."""
        chain = list(chain)
        positions = {id(n): i for i, n in enumerate(self.graph.nodes)}
        last = max(positions[id(n)] for n in chain)
        self.graph.nodes.insert(last + 1, node)
        self.remove(*chain)
        return node

    def bypass(self, node: Node) -> bool:
        """Remove a node whose first output equals its first input (see :func:`rewrite.bypass`)."""
        inputs = [n for n in node.inputs if n in self.graph.initializers]
        if not bypass(self.graph, node, node.inputs[0], node.outputs[0]):
            return False
        self._replaced.update(inputs)
        self._removed.add(id(node))
        self.touched()
        return True

    def set_inputs(self, node: Node, inputs: list[str]) -> None:
        """Change what a node reads (remembering the weights it no longer reads)."""
        self._replaced.update(n for n in node.inputs if n in self.graph.initializers and n not in inputs)
        node.inputs = list(inputs)
        self.touched()

    def touched(self) -> None:
        """Forget the producer/reader index after an edit."""
        self._producers = None
        self._readers = None

    def note(self, text: str) -> None:
        self.notes.append(text)

    def finish(self) -> list[str]:
        """Drop weights a rewrite replaced and nobody reads any more; return the notes."""
        read = {name for node in self.graph.nodes for name in (*node.inputs, *node.implicit_inputs)} | self._outputs
        for name in self._replaced:
            if name not in read and name in self.graph.initializers:
                del self.graph.initializers[name]
        return self.notes


def label(node: Node) -> str:
    """How notes name a node: ``Conv 'conv1'``, or by its output when it has no name."""
    return f"{node.op_type} '{node.name or node.outputs[0]}'"


def other_input(node: Node, name: str) -> str | None:
    """For a two-input node reading ``name``, the other input (None if it reads ``name`` twice)."""
    first, second = node.inputs[:2]
    if first == name and second != name:
        return second
    if second == name and first != name:
        return first
    return None


def scalar(array: np.ndarray | None) -> float | None:
    """The one value of a constant holding a single element, else None."""
    if array is None or np.size(array) != 1 or np.asarray(array).dtype.kind not in "fiu":
        return None
    return float(np.asarray(array).reshape(-1)[0])


def close_to(array: np.ndarray | None, target: float, rtol: float = 1e-4) -> bool:
    """Whether a scalar constant equals ``target`` up to float32 rounding (and exporters' digits)."""
    value = scalar(array)
    return value is not None and abs(value - target) <= rtol * abs(target)


def channel_vector(constant: np.ndarray, rank: int, channels: int | None, axis: int = 1) -> np.ndarray | None:
    """A constant that varies along ``axis`` only, as a vector of length ``channels`` (or None).

    ``constant`` broadcasts against a tensor of rank ``rank``: shapes ``[C, 1, 1]``,
    ``[1, C, 1, 1]``, ``[1]`` and ``[]`` all are per-channel for an NCHW tensor. A constant
    with more dimensions than the tensor, or varying along another axis, is not.
    """
    if constant.ndim > rank or channels is None:
        return None
    shape = (1,) * (rank - constant.ndim) + constant.shape
    if any(d != 1 for i, d in enumerate(shape) if i != axis):
        return None
    if shape[axis] not in (1, channels):
        return None
    return np.broadcast_to(constant.reshape(-1), (channels,))
