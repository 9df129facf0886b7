"""Control flow: If, Loop and Scan, whose attributes hold subgraphs (ONNX spec up to opset 25).

A control-flow node carries one or more :class:`~tinyinfer.ir.Graph` s in ``node.attrs``
(``then_branch``/``else_branch``, ``body``). Running it means running a subgraph: If once,
Loop and Scan once per iteration. The subgraph reads its own inputs (the iteration number,
the loop-carried state, the current slice of a scan input) and, by name, any value of the
graphs around it. Those outer names are the node's *implicit inputs*
(``node.implicit_inputs``): the runtime hands their arrays to ``reference`` after the
explicit inputs, and shape inference their Values to ``infer``.

:class:`Subgraph` is the small interpreter the references share: it walks the subgraph's
nodes in topological order and calls each node's own reference op, with the outer scope
visible. It does what the runtime's plan does for the main graph, without the planning:
the ops layer cannot use the runtime (which sits above it), and a body that runs a few
times gains little from being compiled.

Values carried from one iteration to the next may change shape (a sequence that grows, a
tensor concatenated onto), so ``infer`` runs the body's inference until the carried types
stop changing, widening a dimension that differs between iterations to unknown (``None``).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..errors import ExecutionError, TinyInferError, node_label
from ..ir import Graph, Node, Value
from ..ir.graph import Dim, Shape
from .base import REQUIRED, Op, bad_attribute, fail, get_op, normalize_axis, out, register, require_inputs
from .inference import infer_shapes

#: After this many rounds of widening, carried values whose type still changes get unknown shapes.
_MAX_WIDENING_ROUNDS = 8


# ---------------------------------------------------------------------------- the subgraph interpreter
class Subgraph:
    """One subgraph attribute of a node, ready to run: its nodes in order, with their ops.

    ``run(scope, inputs)`` binds the subgraph's inputs by position, makes the names of
    ``scope`` (the enclosing graphs' values) visible, runs every node's reference, and
    returns the values of the subgraph's outputs. An error inside names the node that owns
    the subgraph, the attribute and the inner node.
    """

    def __init__(self, owner: Node, attr: str):
        self.owner = owner
        self.attr = attr
        self.graph: Graph = owner.attrs[attr]
        self.where = f"{node_label(owner)}, subgraph '{attr}'"
        self.steps = [(node, get_op(node), node.implicit_inputs) for node in self.graph.topological_order()]

    def run(self, scope: dict[str, Any], inputs: Sequence[Any]) -> list[Any]:
        if len(inputs) != len(self.graph.inputs):
            raise ExecutionError(f"{self.where} takes {len(self.graph.inputs)} inputs, was given {len(inputs)}")
        env = dict(scope)
        env.update(self.graph.initializers)
        env.update(zip(self.graph.input_names, inputs))
        for node, op, implicit in self.steps:
            args = [self._read(env, name, node) if name else None for name in node.inputs]
            args += [self._read(env, name, node) for name in implicit]
            try:
                results = op.reference(node, *args)
            except TinyInferError as exc:
                raise type(exc)(f"{self.where}: {exc}") from None
            except Exception as exc:
                raise ExecutionError(
                    f"{self.where}: {node_label(node)} failed on inputs {[describe(a) for a in args]}: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            if isinstance(results, np.ndarray) or not isinstance(results, (list, tuple)):
                results = (results,)
            for name, result in zip(node.outputs, results):
                if name:
                    env[name] = result if result is None or isinstance(result, list) else np.asarray(result)
        return [self._read(env, name, None) for name in self.graph.output_names]

    def _read(self, env: dict[str, Any], name: str, node: Node | None) -> Any:
        if name not in env:
            reader = node_label(node) if node is not None else "its outputs"
            raise ExecutionError(f"{self.where}: {reader} reads '{name}', which nothing computed")
        return env[name]


def split_inputs(node: Node, items: Sequence[Any]) -> tuple[list[Any], dict[str, Any]]:
    """Split what ``reference``/``infer`` got into the explicit inputs and the outer scope
    (implicit input name -> array or Value), which follows them."""
    count = len(node.inputs)
    explicit = list(items[:count]) + [None] * (count - len(items))
    return explicit, dict(zip(node.implicit_inputs, items[count:]))


def describe(value: Any) -> Any:
    """A runtime value in an error message: (dtype, shape), a list of those, or None."""
    if value is None:
        return None
    if isinstance(value, list):
        return [describe(v) for v in value]
    array = np.asarray(value)
    return (array.dtype.name, array.shape)


def type_of(value: Any, name: str = "") -> Value:
    """The Value of a runtime value: a tensor, a sequence (a list) or an empty optional."""
    if value is None:
        return Value(name, kind="optional")
    if isinstance(value, list):
        dtype = value[0].dtype if value else None
        shape = merge_shapes([v.shape for v in value]) if value else None
        return Value(name, dtype, shape, kind="sequence")
    array = np.asarray(value)
    return Value(name, array.dtype, array.shape)


# ---------------------------------------------------------------------------- type helpers
def merge_shapes(shapes: Sequence[Shape | None]) -> Shape | None:
    """The shape every one of ``shapes`` has: dims that differ become None, ranks that differ
    make the whole shape unknown."""
    if not shapes or any(s is None for s in shapes) or len({len(s) for s in shapes}) != 1:
        return None
    return tuple(dims[0] if len(set(dims)) == 1 else None for dims in zip(*shapes))


def without_const(value: Value, name: str = "") -> Value:
    """The type of a value (dtype, shape, kind) with its known contents dropped."""
    return Value(name or value.name, value.dtype, value.shape, kind=value.kind)


def infer_subgraph(owner: Node, attr: str, inputs: Sequence[Value | None], outer: dict[str, Value]) -> list[Value]:
    """The Values of a subgraph's outputs, its inputs typed as ``inputs`` and the enclosing
    scope as ``outer``.

    Shapes come from inference alone: the types a subgraph declares for its inputs and
    outputs are hints that ONNX does not check (a Loop body may declare a scalar for a value
    that grows), so only their element types fill in what inference leaves unknown.
    """
    graph: Graph = owner.attrs[attr]
    given = {}
    for declared, value in zip(graph.inputs, inputs):
        dtype = value.dtype if value is not None and value.dtype is not None else declared.dtype
        kind = value.kind if value is not None else declared.kind
        shape = value.shape if value is not None else None
        given[declared.name] = Value(declared.name, dtype, shape, const=value.const if value else None, kind=kind)
    try:
        known = infer_shapes(graph, given, outer=outer)
    except TinyInferError as exc:
        raise type(exc)(f"{node_label(owner)}, subgraph '{attr}': {exc}") from None
    results = []
    for declared in graph.outputs:
        value = known.get(declared.name, Value(declared.name, kind=declared.kind))
        dtype = value.dtype if value.dtype is not None else declared.dtype
        results.append(Value(declared.name, dtype, value.shape, const=value.const, kind=value.kind))
    return results


def _widen(initial: Value, produced: Value) -> Value:
    """The type of a carried value that starts as ``initial`` and becomes ``produced``.

    The kind stays the initial one: a body may take an optional and return what it holds,
    and the body's inputs keep their declared kind for every iteration.
    """
    dtype = initial.dtype if initial.dtype is not None else produced.dtype
    return Value(initial.name, dtype, merge_shapes([initial.shape, produced.shape]), kind=initial.kind)


def _same_type(a: Value, b: Value) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.kind == b.kind


def _carried_types(owner: Node, head: list[Value], state: list[Value], tail: list[Value], outer: dict[str, Value], skip: int):
    """Infer a loop body ``(head..., state..., tail...) -> (skip outputs, state..., rest...)``
    until the carried state's types are stable.

    Returns the Values of the carried outputs (valid after any number of iterations, zero
    included; of the kind the body returns) and the body's output Values.
    """
    state = [without_const(v) for v in state]
    for _ in range(_MAX_WIDENING_ROUNDS):
        results = infer_subgraph(owner, "body", [*head, *state, *tail], outer)
        widened = [_widen(s, p) for s, p in zip(state, results[skip:])]
        if all(_same_type(a, b) for a, b in zip(widened, state)):
            break
        state = widened
    else:
        state = [Value(v.name, v.dtype, None, kind=v.kind) for v in state]
        results = infer_subgraph(owner, "body", [*head, *state, *tail], outer)
    final = [Value(s.name, s.dtype, s.shape, kind=p.kind) for s, p in zip(state, results[skip:])]
    return final, results


def _check_bool_condition(node: Node, value: Value | None, what: str) -> None:
    if value is not None and value.dtype is not None and value.dtype != np.bool_:
        raise fail(node, f"{what} must be a bool tensor, got {value.dtype}")


def _truth(node: Node, array: np.ndarray, what: str) -> bool:
    array = np.asarray(array)
    if array.size != 1:
        raise ExecutionError(f"{node_label(node)}: {what} must hold one element, got shape {list(array.shape)}")
    return bool(array.reshape(-1)[0])


def subgraph_attribute(node: Node, attr: str) -> Graph:
    graph = node.attrs[attr]
    if not isinstance(graph, Graph):
        raise bad_attribute(node, f"attribute '{attr}' must be a graph, got {type(graph).__name__}")
    return graph


def _empty_stack(value: Value) -> np.ndarray:
    """The stacked scan output of zero iterations: shape (0, *element shape)."""
    dims = () if value.shape is None else tuple(d if isinstance(d, int) else 0 for d in value.shape)
    return np.empty((0, *dims), dtype=value.dtype if value.dtype is not None else np.float32)


# ---------------------------------------------------------------------------- If
@register
class If(Op):
    """``then_branch()`` if ``cond`` else ``else_branch()`` (If-1 … If-25).

    ``cond`` holds one bool. Both branches take no inputs and return as many values as the
    node has outputs; they may differ in shape (then the output's differing dims are
    unknown to shape inference) but not in element type.
    """

    op_type = "If"
    since = 1
    attributes = {"then_branch": REQUIRED, "else_branch": REQUIRED}

    def check(self, node):
        for attr in ("then_branch", "else_branch"):
            graph = subgraph_attribute(node, attr)
            if len(graph.outputs) != len(node.outputs):
                raise bad_attribute(
                    node, f"{attr} returns {len(graph.outputs)} values but the node has {len(node.outputs)} outputs"
                )

    def infer(self, node, inputs):
        (cond,), outer = split_inputs(node, inputs)
        require_inputs(node, [cond], 1)
        _check_bool_condition(node, cond, "cond")
        if cond.const is not None and np.asarray(cond.const).size == 1:
            branch = "then_branch" if bool(np.asarray(cond.const).reshape(-1)[0]) else "else_branch"
            return [_kind(node, i, v) for i, v in enumerate(infer_subgraph(node, branch, [], outer))]
        then = infer_subgraph(node, "then_branch", [], outer)
        otherwise = infer_subgraph(node, "else_branch", [], outer)
        results = []
        for i, (a, b) in enumerate(zip(then, otherwise)):
            if a.dtype is not None and b.dtype is not None and a.dtype != b.dtype:
                raise fail(node, f"output {i}: then_branch gives {a.dtype}, else_branch gives {b.dtype}")
            if a.kind != b.kind:
                raise fail(node, f"output {i}: then_branch gives a {a.kind}, else_branch a {b.kind}")
            dtype = a.dtype if a.dtype is not None else b.dtype
            results.append(Value(node.outputs[i], dtype, merge_shapes([a.shape, b.shape]), kind=a.kind))
        return results

    def reference(self, node, *arrays):
        (cond,), outer = split_inputs(node, arrays)
        branch = "then_branch" if _truth(node, cond, "cond") else "else_branch"
        return tuple(Subgraph(node, branch).run(outer, []))


def _kind(node: Node, index: int, value: Value) -> Value:
    return Value(node.outputs[index], value.dtype, value.shape, kind=value.kind)


# ---------------------------------------------------------------------------- Loop
@register
class Loop(Op):
    """A for/while loop over a body graph (Loop-1 … Loop-25).

    Inputs ``M`` (trip count, int64, optional), ``cond`` (bool, optional) and the initial
    values of N loop-carried variables. The body maps ``(iteration, cond, v_1..v_N)`` to
    ``(cond, v_1..v_N, s_1..s_K)``; it runs while ``iteration < M`` and ``cond`` holds (the
    body's ``cond`` output is always honoured, as ONNX Runtime does). The outputs are the
    final carried values, then each scan value ``s_k`` of every iteration stacked along a
    new first axis.
    """

    op_type = "Loop"
    since = 1
    attributes = {"body": REQUIRED}

    def check(self, node):
        body = subgraph_attribute(node, "body")
        carried = len(node.inputs) - 2
        if carried < 0:
            raise bad_attribute(node, f"expects inputs (M, cond, v_initial...), got {len(node.inputs)} inputs")
        if len(body.inputs) != carried + 2:
            raise bad_attribute(
                node, f"body takes {len(body.inputs)} inputs; with {carried} loop-carried values it must take "
                f"{carried + 2} (iteration number, condition, carried values)"
            )
        if len(body.outputs) < carried + 1:
            raise bad_attribute(
                node, f"body returns {len(body.outputs)} values; it must return the condition and {carried} carried values"
            )
        if len(node.outputs) > len(body.outputs) - 1:
            raise bad_attribute(node, f"has {len(node.outputs)} outputs but the body returns only {len(body.outputs) - 1}")

    def infer(self, node, inputs):
        (trips, cond, *initial), outer = split_inputs(node, inputs)
        if trips is not None and trips.dtype is not None and trips.dtype != np.int64:
            raise fail(node, f"M (the trip count) must be int64, got {trips.dtype}")
        _check_bool_condition(node, cond, "cond")
        if any(v is None for v in initial):
            raise fail(node, "every loop-carried initial value must be given")
        # The body only runs while the condition holds, so inside it the condition input is
        # always true: a body that passes it through has a known trip count.
        head = [Value("", np.int64, ()), Value("", np.bool_, (), const=np.array(True))]
        state, results = _carried_types(node, head, initial, [], outer, skip=1)
        _check_bool_condition(node, results[0], "the body's condition output")
        iterations = _known_trip_count(trips, cond, results[0])
        values = [_kind(node, i, v) for i, v in enumerate(state[: len(node.outputs)])]
        for k, scan in enumerate(results[1 + len(state):]):
            index = len(state) + k
            if index < len(node.outputs):
                shape = None if scan.shape is None else (iterations, *scan.shape)
                values.append(out(node, index, scan.dtype, shape))
        return values

    def reference(self, node, *arrays):
        (trips, cond, *state), outer = split_inputs(node, arrays)
        body = Subgraph(node, "body")
        limit = None if trips is None else int(np.asarray(trips).reshape(-1)[0])
        going = True if cond is None else _truth(node, cond, "cond")
        scans: list[list[np.ndarray]] = [[] for _ in range(len(body.graph.outputs) - 1 - len(state))]
        iteration = 0
        while going and (limit is None or iteration < limit):
            results = body.run(outer, [np.array(iteration, np.int64), np.array(going), *state])
            going = _truth(node, results[0], "the body's condition output")
            state = results[1:1 + len(state)]
            for collected, value in zip(scans, results[1 + len(state):]):
                collected.append(np.asarray(value))
            iteration += 1
        if iteration == 0 and scans:
            types = [type_of(a) for a in (np.array(0, np.int64), np.array(going), *state)]
            scan_types = infer_subgraph(node, "body", types, {k: type_of(v) for k, v in outer.items()})
            return (*state, *(_empty_stack(v) for v in scan_types[1 + len(state):]))
        return (*state, *(np.stack(collected) for collected in scans))


def _known_trip_count(trips: Value | None, cond: Value | None, body_cond: Value) -> int | None:
    """The number of iterations, when shape inference can tell: M is known and neither the
    condition input nor the body's condition output can stop the loop early."""
    if trips is None or trips.const is None:
        return None
    never_stops = body_cond.const is not None and bool(np.asarray(body_cond.const).all())
    starts = cond is None or (cond.const is not None and bool(np.asarray(cond.const).all()))
    return max(int(np.asarray(trips.const).reshape(-1)[0]), 0) if never_stops and starts else None


# ---------------------------------------------------------------------------- Scan
_SCAN_ATTRIBUTES_8 = {"body": REQUIRED, "num_scan_inputs": REQUIRED, "directions": None}
_SCAN_ATTRIBUTES = {
    "body": REQUIRED,
    "num_scan_inputs": REQUIRED,
    "scan_input_axes": None,
    "scan_input_directions": None,
    "scan_output_axes": None,
    "scan_output_directions": None,
}


@register
class Scan(Op):
    """Run a body over slices of scan inputs, carrying state (Scan-8 … Scan-25).

    Inputs: N initial state values, then M scan inputs (M = ``num_scan_inputs``). Iteration
    t gives the body the current state and slice t of each scan input along its
    ``scan_input_axes`` axis (counted from the end where ``scan_input_directions`` is 1);
    the body returns the next state and K scan-output elements, stacked over the iterations
    along ``scan_output_axes`` (in reverse order where ``scan_output_directions`` is 1).

    Scan-8 differs: its first input is an optional ``sequence_lens``, every state and scan
    input has a batch axis 0 and a time axis 1, and ``directions`` names the input
    directions. Sequences shorter than the longest get scan outputs padded with zeros.
    """

    op_type = "Scan"
    since = 8

    def defaults(self, version):
        return _SCAN_ATTRIBUTES_8 if version < 9 else _SCAN_ATTRIBUTES

    def check(self, node):
        body = subgraph_attribute(node, "body")
        m = node.attrs["num_scan_inputs"]
        n = len(node.inputs) - m - (1 if node.version < 9 else 0)
        if m < 1 or n < 0:
            raise bad_attribute(node, f"num_scan_inputs={m} does not fit a node with {len(node.inputs)} inputs")
        if len(body.inputs) != n + m:
            raise bad_attribute(node, f"body takes {len(body.inputs)} inputs; {n} states and {m} scan inputs need {n + m}")
        k = len(body.outputs) - n
        if k < 0 or len(node.outputs) > n + k:
            raise bad_attribute(node, f"body returns {len(body.outputs)} values for {n} states and {len(node.outputs)} outputs")
        lists = [("directions", m)] if node.version < 9 else [
            ("scan_input_axes", m), ("scan_input_directions", m), ("scan_output_axes", k), ("scan_output_directions", k)
        ]
        for attr, length in lists:
            value = node.attrs[attr]
            if value is not None and len(value) != length:
                raise bad_attribute(node, f"{attr} has {len(value)} entries, expected {length}")
            if value is not None and "directions" in attr and any(d not in (0, 1) for d in value):
                raise bad_attribute(node, f"{attr} must hold 0 (forward) or 1 (reverse), got {value}")

    # -- shape inference
    def infer(self, node, inputs):
        explicit, outer = split_inputs(node, inputs)
        if node.version < 9:
            return self._infer_batched(node, explicit, outer)
        m = node.attrs["num_scan_inputs"]
        states, scans = explicit[: len(explicit) - m], explicit[len(explicit) - m:]
        if any(v is None for v in explicit):
            raise fail(node, "every state and scan input must be given")
        in_axes = _axes(node, node.attrs["scan_input_axes"], [v.rank for v in scans], "scan_input_axes")
        lengths, slices = [], []
        for value, axis in zip(scans, in_axes):
            if value.shape is None:
                lengths.append(None)
                slices.append(Value("", value.dtype, None))
            else:
                lengths.append(value.shape[axis])
                slices.append(Value("", value.dtype, value.shape[:axis] + value.shape[axis + 1:]))
        length = _common_length(node, lengths)
        state_types, results = _carried_types(node, [], states, slices, outer, skip=0)
        values = [_kind(node, i, v) for i, v in enumerate(state_types[: len(node.outputs)])]
        scan_outputs = results[len(states):]
        out_axes = node.attrs["scan_output_axes"] or [0] * len(scan_outputs)
        for k, (element, axis) in enumerate(zip(scan_outputs, out_axes)):
            index = len(states) + k
            if index >= len(node.outputs):
                break
            shape = None
            if element.shape is not None:
                axis = normalize_axis(node, axis, len(element.shape) + 1, "scan_output_axes entry")
                shape = (*element.shape[:axis], length, *element.shape[axis:])
            values.append(out(node, index, element.dtype, shape))
        return values

    def _infer_batched(self, node, explicit, outer):
        m = node.attrs["num_scan_inputs"]
        states, scans = explicit[1: len(explicit) - m], explicit[len(explicit) - m:]
        if any(v is None for v in (*states, *scans)):
            raise fail(node, "every state and scan input must be given")
        for value, axes in [*((v, 1) for v in states), *((v, 2) for v in scans)]:
            if value.shape is not None and len(value.shape) < axes:
                raise fail(node, f"'{value.name}' has shape {list(value.shape)}; Scan-8 needs a batch axis "
                           f"on states and a batch and a time axis on scan inputs")
        batch = _common_length(node, [v.shape[0] if v.shape else None for v in (*states, *scans)])
        length = _common_length(node, [v.shape[1] if v.shape else None for v in scans])
        element = [Value("", v.dtype, None if v.shape is None else v.shape[1:]) for v in states]
        slices = [Value("", v.dtype, None if v.shape is None else v.shape[2:]) for v in scans]
        state_types, results = _carried_types(node, [], element, slices, outer, skip=0)
        values = []
        for i, v in enumerate([*state_types, *results[len(states):]][: len(node.outputs)]):
            lead = (batch,) if i < len(states) else (batch, length)
            values.append(out(node, i, v.dtype, None if v.shape is None else (*lead, *v.shape)))
        return values

    # -- running
    def reference(self, node, *arrays):
        explicit, outer = split_inputs(node, arrays)
        body = Subgraph(node, "body")
        if node.version < 9:
            return self._run_batched(node, body, explicit, outer)
        m = node.attrs["num_scan_inputs"]
        states, scans = explicit[: len(explicit) - m], explicit[len(explicit) - m:]
        in_axes = _axes(node, node.attrs["scan_input_axes"], [s.ndim for s in scans], "scan_input_axes")
        sequences = [np.moveaxis(s, axis, 0) for s, axis in zip(scans, in_axes)]
        lengths = {len(s) for s in sequences}
        if len(lengths) != 1:
            raise ExecutionError(f"{node_label(node)}: scan inputs have different lengths {sorted(lengths)}")
        directions = node.attrs["scan_input_directions"] or [0] * m
        states, elements = _scan(body, outer, states, sequences, directions, lengths.pop())
        k = len(body.graph.outputs) - len(states)
        out_axes = node.attrs["scan_output_axes"] or [0] * k
        out_directions = node.attrs["scan_output_directions"] or [0] * k
        stacked = []
        for index, (collected, axis, direction) in enumerate(zip(elements, out_axes, out_directions)):
            if not collected:
                stack = self._empty_output(node, body, explicit, outer, index)
            else:
                stack = np.stack(collected[::-1] if direction else collected)
            stacked.append(np.moveaxis(stack, 0, normalize_axis(node, axis, stack.ndim, "scan_output_axes entry")))
        return (*states, *stacked)

    def _run_batched(self, node, body, explicit, outer):
        m = node.attrs["num_scan_inputs"]
        lens, states, scans = explicit[0], explicit[1: len(explicit) - m], explicit[len(explicit) - m:]
        batch, max_length = scans[0].shape[0], scans[0].shape[1]
        lengths = [max_length] * batch if lens is None else [int(v) for v in np.asarray(lens).reshape(-1)]
        directions = node.attrs["directions"] or [0] * m
        final_states, elements = [], []
        for b in range(batch):
            sequences = [s[b, : lengths[b]] for s in scans]
            state, collected = _scan(body, outer, [s[b] for s in states], sequences, directions, lengths[b])
            final_states.append(state)
            elements.append(collected)
        states_out = [np.stack([state[i] for state in final_states]) for i in range(len(states))]
        scans_out = []
        for k in range(len(body.graph.outputs) - len(states)):
            sample = next((e for collected in elements for e in collected[k]), None)
            if sample is None:
                scans_out.append(np.zeros((batch, max_length), scans[0].dtype))
                continue
            stack = np.zeros((batch, max_length, *sample.shape), sample.dtype)  # zero padding
            for b, collected in enumerate(elements):
                if collected[k]:
                    stack[b, : len(collected[k])] = np.stack(collected[k])
            scans_out.append(stack)
        return (*states_out, *scans_out)

    def _empty_output(self, node, body, explicit, outer, index):
        m = node.attrs["num_scan_inputs"]
        states, scans = explicit[: len(explicit) - m], explicit[len(explicit) - m:]
        in_axes = _axes(node, node.attrs["scan_input_axes"], [s.ndim for s in scans], "scan_input_axes")
        slices = [Value("", s.dtype, np.delete(np.array(s.shape), axis).tolist()) for s, axis in zip(scans, in_axes)]
        types = infer_subgraph(node, "body", [*map(type_of, states), *slices], {k: type_of(v) for k, v in outer.items()})
        return _empty_stack(types[len(states) + index])


def _scan(body: Subgraph, outer, states, sequences, directions, length):
    """The loop both Scan versions share: returns the final states and, per scan output,
    the list of its per-iteration elements (in iteration order)."""
    states = list(states)
    elements: list[list[np.ndarray]] = [[] for _ in range(len(body.graph.outputs) - len(states))]
    for t in range(length):
        slices = [s[length - 1 - t] if direction else s[t] for s, direction in zip(sequences, directions)]
        results = body.run(outer, [*states, *slices])
        states = results[: len(states)]
        for collected, value in zip(elements, results[len(states):]):
            collected.append(np.asarray(value))
    return states, elements


def _axes(node: Node, axes: list[int] | None, ranks: list[int | None], what: str) -> list[int]:
    axes = axes or [0] * len(ranks)
    return [axis if rank is None else normalize_axis(node, axis, rank, f"{what} entry") for axis, rank in zip(axes, ranks)]


def _common_length(node: Node, dims: list[Dim]) -> Dim:
    known = {d for d in dims if isinstance(d, int)}
    if len(known) > 1:
        raise fail(node, f"scan inputs disagree in length (or batch size): {sorted(known)}")
    if known:
        return known.pop()
    symbols = {d for d in dims if d is not None}
    return symbols.pop() if len(symbols) == 1 and None not in dims else None
