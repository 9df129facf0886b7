"""The one graph representation every part of tinyinfer works on.

A :class:`Graph` is a list of :class:`Node` s that read and write named tensors. Tensors
with a fixed value (weights) live in ``Graph.initializers`` as NumPy arrays; tensors that
flow in and out are described by :class:`Value` (name, dtype, shape). Shapes may hold
symbolic dimensions: a string such as ``"N"`` for a dimension known only at run time, or
``None`` for one nobody named.

The structure mirrors ONNX's ``GraphProto`` closely on purpose, so that import and export are
short, but it holds plain Python and NumPy objects, so that passes can rewrite it freely.

Control flow (If, Loop, Scan) keeps ONNX's shape too: a node's subgraph is an ``ir.Graph``
stored in ``node.attrs``. A subgraph may read names of the graphs around it without listing
them as inputs; :attr:`Node.implicit_inputs` finds those names, and ordering, validation and
dead-code elimination count them as reads like any other input.
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

#: What a value holds at run time: a tensor (np.ndarray); a sequence (a Python list of
#: tensors); an optional tensor (an array or None); an optional sequence (a list or None).
KINDS = ("tensor", "sequence", "optional", "optional_sequence")


@dataclasses.dataclass
class Value:
    """A named value's type: element dtype and shape (``None`` when unknown).

    ``const`` holds a tensor's value when it is known before running (an initializer, or
    something computed from initializers and static shapes); shape inference fills it in.
    ``kind`` says whether the value is a tensor, a sequence or an optional (see
    :data:`KINDS`); for a sequence or an optional, ``dtype`` and ``shape`` describe its
    element tensors, and ``const`` stays None.
    """

    name: str
    dtype: np.dtype | None = None
    shape: Shape | None = None
    const: np.ndarray | None = dataclasses.field(default=None, repr=False, compare=False)
    kind: str = "tensor"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InvalidGraphError(f"value '{self.name}' has kind {self.kind!r}; expected one of {KINDS}")
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
        tensor = f"{dtype}[{dims}]"
        return {
            "tensor": tensor,
            "sequence": f"seq({tensor})",
            "optional": f"optional({tensor})",
            "optional_sequence": f"optional(seq({tensor}))",
        }[self.kind]


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

    def subgraphs(self) -> list[tuple[str, "Graph"]]:
        """The node's subgraphs as (attribute name, graph) pairs; empty for most ops."""
        found = []
        for name, value in self.attrs.items():
            if isinstance(value, Graph):
                found.append((name, value))
            elif isinstance(value, list):
                found.extend((name, graph) for graph in value if isinstance(graph, Graph))
        return found

    @property
    def implicit_inputs(self) -> list[str]:
        """Names the node's subgraphs read from the enclosing scope, in order of first use.

        They are inputs of the node as much as ``inputs`` are (the node cannot run before
        they exist), only not listed: ONNX lets a Loop body or an If branch read any value
        of the graphs around it by name.
        """
        names: dict[str, None] = {}
        for _, graph in self.subgraphs():
            names.update(dict.fromkeys(graph.outer_names()))
        return list(names)

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
        """Map from tensor name to the nodes that read it (in node order), implicitly too."""
        users: dict[str, list[Node]] = collections.defaultdict(list)
        for node in self.nodes:
            for name in (*node.present_inputs, *node.implicit_inputs):
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

    def outer_names(self) -> list[str]:
        """Names the graph reads but does not define: values of an enclosing graph.

        Empty for a model's main graph; for a subgraph, these are the implicit inputs of the
        node that owns it. Nested subgraphs count: what they read from outside this graph,
        this graph reads too.
        """
        defined = set(self.input_names) | set(self.initializers)
        defined.update(out for node in self.nodes for out in node.outputs if out)
        reads = [name for node in self.nodes for name in (*node.present_inputs, *node.implicit_inputs)]
        return list(dict.fromkeys(name for name in (*reads, *self.output_names) if name not in defined))

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
            reads = (*node.present_inputs, *node.implicit_inputs)
            deps = {id(producer[name]) for name in reads if name in producer}
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

    def validate(self, *, allow_unused: bool = True, outer: Iterable[str] = ()) -> list[str]:
        """Check the structural rules of a well-formed graph.

        Raises :class:`InvalidGraphError` for an input nobody defines, a tensor with two
        producers, a node that reads its own output, a cycle or a graph output that is never
        produced. Returns warnings for what is legal but wasteful (outputs nobody reads,
        initializers nobody uses); with ``allow_unused=False`` those are errors too.

        Subgraphs are checked too, with every name of the enclosing scopes defined (``outer``
        holds those names when this graph is itself a subgraph); an error inside one names
        the node that owns it and the attribute.
        """
        enclosing = set(outer)  # names of the graphs around this one; its own names hide them
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
        visible = enclosing | set(defined)
        for node in self.nodes:
            for name in node.present_inputs:
                if name not in visible:
                    raise InvalidGraphError(
                        f"{node_label(node)} reads '{name}', which no node, input or initializer defines"
                    )
                if name in node.outputs:
                    raise InvalidGraphError(f"{node_label(node)} reads its own output '{name}'")
            for attr, graph in node.subgraphs():
                try:
                    graph.validate(outer=visible)
                except InvalidGraphError as exc:
                    raise InvalidGraphError(f"{node_label(node)}, subgraph '{attr}': {exc}") from None
        self.topological_order()  # raises on cycles
        for value in self.outputs:
            if value.name not in visible:
                raise InvalidGraphError(f"graph output '{value.name}' is never produced")
        warnings = []
        read = {name for node in self.nodes for name in (*node.present_inputs, *node.implicit_inputs)}
        read |= set(self.output_names)
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
            if node.implicit_inputs:  # what its subgraphs read from this graph
                ins += f"; reads {', '.join(node.implicit_inputs)}"
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
        Subgraphs are copied the same way.
        """
        def copy_value(v: Value) -> Value:
            return Value(v.name, v.dtype, v.shape, const=v.const, kind=v.kind)

        def copy_attr(value: Any) -> Any:  # subgraphs are copied too, so passes may rewrite them
            if isinstance(value, Graph):
                return value.copy()
            if isinstance(value, list):
                return [v.copy() if isinstance(v, Graph) else v for v in value]
            return value

        return Graph(
            nodes=[
                Node(
                    n.op_type, list(n.inputs), list(n.outputs), {k: copy_attr(v) for k, v in n.attrs.items()},
                    n.domain, n.name, n.version,
                )
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

    def namer(self):
        """``fresh(stem) -> name``: names unused in the graph, and distinct from each other.

        For a rewrite that makes many names: the graph's names are collected once, not per
        name as :meth:`unique_name` does.
        """
        taken = set(self.initializers) | set(self.input_names) | set(self.output_names)
        taken |= {n for node in self.nodes for n in (*node.inputs, *node.outputs, node.name)}

        def fresh(stem: str) -> str:
            name, i = stem, 1
            while name in taken:
                name, i = f"{stem}_{i}", i + 1
            taken.add(name)
            return name

        return fresh

    def unique_name(self, stem: str) -> str:
        """A tensor or node name not used anywhere in the graph yet."""
        taken = set(self.initializers) | set(self.input_names) | set(self.output_names)
        taken |= {n for node in self.nodes for n in (*node.inputs, *node.outputs, node.name)}
        taken |= {n for node in self.nodes for _, graph in node.subgraphs() for n in _all_names(graph)}
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


def _all_names(graph: Graph) -> set[str]:
    """Every name a graph and its subgraphs use (so a new outer name shadows nothing)."""
    names = set(graph.initializers) | set(graph.input_names) | set(graph.output_names)
    for node in graph.nodes:
        names.update((*node.inputs, *node.outputs, node.name))
        for _, sub in node.subgraphs():
            names |= _all_names(sub)
    return names


def _short(value: Any) -> str:
    if isinstance(value, Graph):
        return f"<graph '{value.name}': {len(value.nodes)} nodes>"
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
