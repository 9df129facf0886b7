"""The one graph representation every part of tinyinfer works on.

A :class:`Graph` is a list of :class:`Node` s that read and write named tensors. Tensors
with a fixed value (weights) live in ``Graph.initializers`` as NumPy arrays; tensors that
flow in and out are described by :class:`Value` (name, dtype, shape). Shapes may hold
symbolic dimensions: a string such as ``"N"`` for a dimension known only at run time, or
``None`` for one nobody named.

The structure mirrors ONNX's ``GraphProto`` closely on purpose, so that import and export are
short, but it holds plain Python and NumPy objects, so that passes can rewrite it freely.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any, Iterable, Iterator

import numpy as np

from ..errors import InvalidGraphError, node_label
from . import dtypes

Dim = int | str | None
Shape = tuple[Dim, ...]


@dataclasses.dataclass
class Value:
    """A named tensor's type: element dtype and shape (``None`` when unknown).

    ``const`` holds the tensor's value when it is known before running (an initializer, or
    something computed from initializers and static shapes); shape inference fills it in.
    """

    name: str
    dtype: np.dtype | None = None
    shape: Shape | None = None
    const: np.ndarray | None = dataclasses.field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.dtype is not None:
            self.dtype = np.dtype(self.dtype)
        if self.shape is not None:
            # NumPy integers (from an array's contents) become ints, so that every
            # ``isinstance(dim, int)`` test treats them as the known dims they are.
            self.shape = tuple(int(d) if isinstance(d, np.integer) else d for d in self.shape)

    @property
    def rank(self) -> int | None:
        return None if self.shape is None else len(self.shape)

    @property
    def is_static(self) -> bool:
        """True when every dimension is a known integer."""
        return self.shape is not None and all(isinstance(d, int) for d in self.shape)

    def type_str(self) -> str:
        dims = "?" if self.shape is None else "x".join("?" if d is None else str(d) for d in self.shape)
        dtype = dtypes.type_name(self.dtype)[7:-1] if self.dtype is not None else "?"
        return f"{dtype}[{dims}]"


@dataclasses.dataclass(eq=False)  # nodes compare by identity: two Relu nodes are two nodes
class Node:
    """One operator application: ``outputs = op_type(inputs, **attrs)``.

    ``inputs`` may contain ``""`` for an optional input that is left out, as in ONNX.
    ``attrs`` holds typed Python values (int, float, str, bytes, lists, NumPy arrays for
    tensor attributes), with the op's defaults filled in by the frontend.
    """

    op_type: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any] = dataclasses.field(default_factory=dict)
    domain: str = ""
    name: str = ""
    #: Opset version of the node's domain whose semantics apply (set on import; 0 = newest).
    version: int = dataclasses.field(default=0, compare=False)

    def __post_init__(self) -> None:
        self.inputs = list(self.inputs)
        self.outputs = list(self.outputs)

    @property
    def present_inputs(self) -> list[str]:
        return [name for name in self.inputs if name]

    def __str__(self) -> str:
        return node_label(self)


@dataclasses.dataclass
class Graph:
    """A computation graph: nodes plus the values that enter, leave and stay constant."""

    nodes: list[Node] = dataclasses.field(default_factory=list)
    inputs: list[Value] = dataclasses.field(default_factory=list)
    outputs: list[Value] = dataclasses.field(default_factory=list)
    initializers: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    opset: dict[str, int] = dataclasses.field(default_factory=dict)
    name: str = "graph"
    value_info: dict[str, Value] = dataclasses.field(default_factory=dict)
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)

    # ------------------------------------------------------------------ queries
    @property
    def input_names(self) -> list[str]:
        return [v.name for v in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [v.name for v in self.outputs]

    def opset_of(self, domain: str) -> int:
        """The opset version the graph imports for a domain (``""`` is ai.onnx)."""
        key = "" if domain in ("", "ai.onnx") else domain
        if key not in self.opset:
            raise InvalidGraphError(f"graph '{self.name}' imports no opset for domain '{domain or 'ai.onnx'}'")
        return self.opset[key]

    def producers(self) -> dict[str, Node]:
        """Map from tensor name to the node that writes it."""
        return {out: node for node in self.nodes for out in node.outputs if out}

    def consumers(self) -> dict[str, list[Node]]:
        """Map from tensor name to the nodes that read it (in node order)."""
        users: dict[str, list[Node]] = collections.defaultdict(list)
        for node in self.nodes:
            for name in node.present_inputs:
                if not users[name] or users[name][-1] is not node:
                    users[name].append(node)
        return dict(users)

    def value(self, name: str) -> Value | None:
        """Whatever type information the graph holds for a tensor name."""
        for value in self.inputs + self.outputs:
            if value.name == name:
                return value
        if name in self.value_info:
            return self.value_info[name]
        if name in self.initializers:
            array = self.initializers[name]
            return Value(name, array.dtype, array.shape, const=array)
        return None

    def parameter_count(self) -> int:
        return int(sum(a.size for a in self.initializers.values()))

    def parameter_bytes(self) -> int:
        return int(sum(a.nbytes for a in self.initializers.values()))

    def op_histogram(self) -> collections.Counter:
        return collections.Counter(
            (f"{n.domain}:{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type) for n in self.nodes
        )

    # ---------------------------------------------------------- structure
    def topological_order(self) -> list[Node]:
        """Nodes ordered so each comes after the producers of its inputs (Kahn's algorithm).

        Ties keep the original node order, so an already sorted graph is returned unchanged.
        Raises :class:`InvalidGraphError` naming the nodes on a cycle.
        """
        producer = self.producers()
        index = {id(node): i for i, node in enumerate(self.nodes)}
        waiting = {}
        users = collections.defaultdict(list)
        for node in self.nodes:
            deps = {id(producer[name]) for name in node.present_inputs if name in producer}
            deps.discard(id(node))  # a node reading its own output is caught by validate()
            waiting[id(node)] = len(deps)
            for dep in deps:
                users[dep].append(node)
        import heapq

        ready = [(index[id(n)], n) for n in self.nodes if waiting[id(n)] == 0]
        heapq.heapify(ready)
        order: list[Node] = []
        while ready:
            _, node = heapq.heappop(ready)
            order.append(node)
            for user in users[id(node)]:
                waiting[id(user)] -= 1
                if waiting[id(user)] == 0:
                    heapq.heappush(ready, (index[id(user)], user))
        if len(order) != len(self.nodes):
            stuck = _on_cycles([n for n in self.nodes if waiting[id(n)] > 0], users)
            raise InvalidGraphError(f"graph '{self.name}' has a cycle through: {', '.join(map(str, stuck[:8]))}")
        return order

    def sort(self) -> "Graph":
        """Put ``nodes`` in topological order, in place; returns the graph."""
        self.nodes = self.topological_order()
        return self

    def validate(self, *, allow_unused: bool = True) -> list[str]:
        """Check the structural rules of a well-formed graph.

        Raises :class:`InvalidGraphError` for an input nobody defines, a tensor with two
        producers, a node that reads its own output, a cycle or a graph output that is never
        produced. Returns warnings for what is legal but wasteful (outputs nobody reads,
        initializers nobody uses); with ``allow_unused=False`` those are errors too.
        """
        defined: dict[str, str] = {}
        for value in self.inputs:
            if value.name in defined:
                raise InvalidGraphError(f"graph input '{value.name}' is declared twice")
            defined[value.name] = "graph input"
        for name in self.initializers:
            defined.setdefault(name, "initializer")
        for node in self.nodes:
            for out in node.outputs:
                if not out:
                    continue
                if out in defined:
                    raise InvalidGraphError(
                        f"tensor '{out}' has two producers: {defined[out]} and {node_label(node)}"
                    )
                defined[out] = node_label(node)
        for node in self.nodes:
            for name in node.present_inputs:
                if name not in defined:
                    raise InvalidGraphError(
                        f"{node_label(node)} reads '{name}', which no node, input or initializer defines"
                    )
                if name in node.outputs:
                    raise InvalidGraphError(f"{node_label(node)} reads its own output '{name}'")
        self.topological_order()  # raises on cycles
        for value in self.outputs:
            if value.name not in defined:
                raise InvalidGraphError(f"graph output '{value.name}' is never produced")
        warnings = []
        read = {name for node in self.nodes for name in node.present_inputs} | set(self.output_names)
        for node in self.nodes:
            for out in node.outputs:
                if out and out not in read:
                    warnings.append(f"output '{out}' of {node_label(node)} is never used")
        for name in self.initializers:
            if name not in read:
                warnings.append(f"initializer '{name}' is never used")
        if warnings and not allow_unused:
            raise InvalidGraphError("; ".join(warnings))
        return warnings

    # ---------------------------------------------------------- display
    def summary(self, max_nodes: int | None = 40) -> str:
        """A readable text listing: inputs, outputs, weights and one line per node."""
        lines = [f"graph '{self.name}'  opset {dict(self.opset)}"]
        lines.append(
            f"  {len(self.nodes)} nodes, {len(self.initializers)} initializers, "
            f"{self.parameter_count():,} parameters ({self.parameter_bytes() / 2**20:.2f} MiB)"
        )
        for value in self.inputs:
            lines.append(f"  input  {value.name}: {value.type_str()}")
        for value in self.outputs:
            lines.append(f"  output {value.name}: {value.type_str()}")
        shown = self.nodes if max_nodes is None else self.nodes[:max_nodes]
        width = max([len(n.op_type) for n in shown] + [4])
        for node in shown:
            attrs = ", ".join(f"{k}={_short(v)}" for k, v in node.attrs.items() if v is not None)
            ins = ", ".join(n or "-" for n in node.inputs)
            outs = ", ".join(node.outputs)
            lines.append(f"  {node.op_type:<{width}}  {outs} <- ({ins})" + (f"  [{attrs}]" if attrs else ""))
        if len(shown) < len(self.nodes):
            lines.append(f"  ... {len(self.nodes) - len(shown)} more nodes")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes)

    def copy(self) -> "Graph":
        """A copy that passes may rewrite freely: new node, value and container objects.

        Initializer arrays are shared, not copied: tinyinfer treats weights as immutable
        (a pass that changes a weight stores a new array under a new or the same name).
        """
        def copy_value(v: Value) -> Value:
            return Value(v.name, v.dtype, v.shape, const=v.const)

        return Graph(
            nodes=[
                Node(n.op_type, list(n.inputs), list(n.outputs), dict(n.attrs), n.domain, n.name, n.version)
                for n in self.nodes
            ],
            inputs=[copy_value(v) for v in self.inputs],
            outputs=[copy_value(v) for v in self.outputs],
            initializers=dict(self.initializers),
            opset=dict(self.opset),
            name=self.name,
            value_info={k: copy_value(v) for k, v in self.value_info.items()},
            metadata=dict(self.metadata),
        )

    def unique_name(self, stem: str) -> str:
        """A tensor or node name not used anywhere in the graph yet."""
        taken = set(self.initializers) | set(self.input_names) | set(self.output_names)
        taken |= {n for node in self.nodes for n in (*node.inputs, *node.outputs, node.name)}
        if stem not in taken:
            return stem
        i = 1
        while f"{stem}_{i}" in taken:
            i += 1
        return f"{stem}_{i}"


def _on_cycles(stuck: list[Node], users: dict[int, list[Node]]) -> list[Node]:
    """The nodes Kahn's algorithm could not order, minus those merely downstream of a cycle.

    Repeatedly drop a node none of whose users is left: what remains lies on a cycle (or on a
    path from one cycle to another), which is what an error message should name.
    """
    left = {id(n) for n in stuck}
    changed = True
    while changed:
        changed = False
        for node in stuck:
            if id(node) in left and not any(id(u) in left for u in users[id(node)]):
                left.discard(id(node))
                changed = True
    return [n for n in stuck if id(n) in left]


def _short(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"tensor{list(value.shape)}" if value.size > 4 else np.array2string(value.ravel(), separator=",")
    if isinstance(value, (list, tuple)) and len(value) > 8:
        return f"[{', '.join(map(str, value[:8]))}, ...]"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def iter_values(graph: Graph) -> Iterable[str]:
    """Every tensor name the graph mentions, each once."""
    seen = set()
    for name in [*graph.input_names, *graph.initializers, *(o for n in graph.nodes for o in n.outputs)]:
        if name and name not in seen:
            seen.add(name)
            yield name
