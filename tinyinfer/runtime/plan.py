"""Compile a graph into a Plan: the list of bound steps a run walks, nothing else.

Compiling happens once per set of input shapes. It infers every tensor's shape, computes
the nodes whose inputs are all constant right away, gives every remaining tensor a slot in
a flat list, and records after which step each slot can be released. A run then only
fills the input slots, calls the steps in order and reads the output slots: no dictionary
look-ups, no shape inference, no graph walking.

A node with subgraphs (If, Loop, Scan) also reads its *implicit inputs*, the outer values
its subgraphs use by name: they become extra step inputs after the explicit ones (the op
pairs them with ``node.implicit_inputs``), so their slots stay alive until the node ran.
Slots hold arrays, and for sequence and optional values a list of arrays or None.

**Memory.** The plan also lays out every intermediate tensor whose size is known in one
*arena* (:func:`tinyinfer.passes.memory.plan_steps`): tensors that are never alive at the
same time share bytes. Each step's outputs are views of the arena at fixed offsets, made
once per arena. A kernel that can write into given memory (``fn.writes_out``, see
:func:`tinyinfer.kernels.registry.writes_into`) gets them as ``out=``; any other function's
result is copied in, so whatever ran, the tensor sits where the plan put it and the run
allocates nothing but its outputs. Views (Reshape, Flatten, ...) share their input's bytes.
Graph outputs never live in the arena: they belong to the caller after the run. Arenas are
kept in a small pool, so two threads running the same plan at once each get their own.

**The loop.** Each arena keeps the steps unpacked into tuples (function, node, input slots,
...), so the loop looks up no attributes per node, and a kernel that wrote its one result
where the plan put it costs the loop a single identity test. A plan's steps are therefore
fixed once it has run.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import numpy as np

from .. import ops
from ..errors import ExecutionError, ShapeInferenceError, TinyInferError, node_label
from ..ir import Graph, Node, Value
from ..ops.control_flow import describe
from ..passes.memory import ALIGNMENT, VIEW_OPS, MemoryPlan, plan_steps
from .profiler import NodeRecord


@dataclasses.dataclass
class Step:
    """One node, bound: the function to call and where its inputs and outputs live."""

    node: Node
    fn: Callable
    inputs: tuple[int, ...]  # slot indices (explicit, then implicit inputs); -1 for an omitted optional input
    outputs: tuple[int, ...]
    release: tuple[int, ...]  # slots no later step (or output) reads
    record: NodeRecord
    expected: tuple[Value | None, ...]  # inferred output types, for check_shapes (None: omitted)
    # Where each output lives: (byte offset, dtype, shape) in the arena, "view" for a view of
    # an input's arena bytes, or None for memory of its own (unknown size, graph output).
    places: tuple = ()
    writes_out: bool = False  # fn accepts out= (arrays to write its results into)
    # Prepared for the run loop: the input slots with an omitted input reading a slot that
    # always holds None, and whether the step's one output goes to a planned arena array
    # (then a result that *is* that array needs no further handling).
    reads: tuple[int, ...] = ()
    one_planned_output: bool = False


class Arena:
    """One block of memory for a plan's intermediate tensors, with every step's views of it."""

    def __init__(self, plan: "Plan"):
        nbytes = plan.arena_bytes
        raw = np.empty(nbytes + ALIGNMENT, np.uint8)
        start = -raw.ctypes.data % ALIGNMENT  # the arena starts on a 64-byte boundary
        self.buffer = raw[start:start + nbytes]
        self.outs = [tuple(self._view(p) for p in step.places) for step in plan.steps]
        # What the run loop reads of each step, unpacked once (attribute look-ups cost per node)
        self.calls = [(step, step.fn, step.node, step.reads, step.writes_out,
                       step.outputs[0] if step.one_planned_output else -1, step.record, step.release, outs)
                      for step, outs in zip(plan.steps, self.outs)]

    def _view(self, place):
        if not isinstance(place, tuple):
            return None
        offset, dtype, shape = place
        count = int(np.prod(shape, dtype=np.int64))
        return self.buffer[offset:offset + count * dtype.itemsize].view(dtype).reshape(shape)


@dataclasses.dataclass
class Plan:
    steps: list[Step]
    slots: list  # template: constants filled in, everything else None
    input_slots: list[int]
    output_slots: dict[str, int]
    values: dict[str, Value]
    memory: MemoryPlan | None = None
    arenas: list = dataclasses.field(default_factory=list)  # free arenas, reused run after run

    @property
    def arena_bytes(self) -> int:
        """Bytes of one arena (0 when the plan runs without one)."""
        if self.memory is None or not any(isinstance(p, tuple) for step in self.steps for p in step.places):
            return 0
        return self.memory.arena_bytes

    def execute(self, feeds: list[np.ndarray], wanted: list[str], *, check_shapes: bool = False,
                observe: Callable[[str, Any], None] | None = None) -> list[np.ndarray]:
        """Run the steps on ``feeds`` and return the ``wanted`` outputs.

        ``observe(name, value)``, if given, is called with every value a step computes, right
        after the step (calibration collects activation statistics this way, in one pass).
        The value may be a view of the arena that the next steps overwrite: an observer that
        keeps it must copy it.
        """
        try:
            arena = self.arenas.pop()  # list.pop is atomic: concurrent runs never share an arena
        except IndexError:
            arena = Arena(self)  # the first run, or another thread is running this plan now
        try:
            return self._execute(arena, feeds, wanted, check_shapes, observe)
        finally:
            self.arenas.append(arena)

    def _execute(self, arena: Arena, feeds, wanted, check_shapes, observe):
        slots = list(self.slots)
        for index, array in zip(self.input_slots, feeds):
            slots[index] = array
        clock = time.perf_counter_ns
        for step, fn, node, reads, writes_out, planned_slot, record, release, outs in arena.calls:
            args = [slots[i] for i in reads]
            start = clock()
            try:
                results = fn(node, *args, out=outs) if writes_out else fn(node, *args)
            except TinyInferError:
                raise
            except Exception as exc:
                raise ExecutionError(
                    f"{node_label(node)} failed on inputs {[describe(a) for a in args]}: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            if planned_slot >= 0 and results is outs[0]:  # the common case: written where planned
                slots[planned_slot] = results
            else:
                _store(step, results, outs, slots, arena.buffer, check_shapes)
            record.total_ns += clock() - start
            record.calls += 1
            if observe is not None:
                for name, index in zip(node.outputs, step.outputs):
                    if index >= 0:
                        observe(name, slots[index])
            for index in release:
                slots[index] = None
        return [slots[self.output_slots[name]] for name in wanted]


def _store(step: Step, results, outs: tuple, slots: list, buffer: np.ndarray, check_shapes: bool) -> None:
    """Put a step's results in their slots: copied to their arena places, or kept as returned."""
    if isinstance(results, np.ndarray) or not isinstance(results, (list, tuple)):
        results = (results,)
    if len(results) < len(step.outputs):
        # Trailing outputs the model leaves out ("") need no result.
        needed = max((i + 1 for i, index in enumerate(step.outputs) if index >= 0), default=0)
        if len(results) < needed:
            raise ExecutionError(f"{node_label(step.node)} returned {len(results)} outputs, expected {needed}")
    if check_shapes:
        _check(step, results)
    for index, result, value, place, out in zip(step.outputs, results, step.expected, step.places, outs):
        if index < 0:
            continue
        if out is not None:
            if result is not out:
                _copy_into(step, out, result)
            result = out
        elif place is None:
            result = _own(result, buffer)
        elif value.kind == "tensor":  # a view of its input, which the plan keeps alive
            result = np.asarray(result)
        slots[index] = result


def _copy_into(step: Step, out: np.ndarray, result) -> None:
    """Put a result in its arena place; its type must be the one the plan was made for."""
    result = np.asarray(result)
    if result.shape != out.shape or result.dtype != out.dtype:
        raise ExecutionError(
            f"{node_label(step.node)} returned {result.dtype}{list(result.shape)}, but shape inference "
            f"planned {out.dtype}{list(out.shape)} for it"
        )
    np.copyto(out, result)


def _own(result, arena: np.ndarray):
    """A result kept as it is must not be a view of arena bytes that a later step reuses."""
    if isinstance(result, np.ndarray):
        return result.copy() if result.size and np.may_share_memory(result, arena) else result
    if isinstance(result, list):
        return [_own(item, arena) for item in result]
    if result is None:
        return None
    return np.asarray(result)


def compile_plan(graph: Graph, input_values: dict[str, Value], kernel_for: Callable | None = None,
                 *, arena: bool = True) -> Plan:
    """Build the plan for concrete input types ``input_values`` (name -> Value).

    ``arena=False`` leaves every result in the memory its function allocated (NumPy's heap),
    the way a simple interpreter runs; the memory plan is still made, for reports.
    """
    values = ops.infer_shapes(graph, input_values)
    slot_of: dict[str, int] = {}
    template: list = []

    def slot(name: str) -> int:
        if name not in slot_of:
            slot_of[name] = len(template)
            template.append(None)
        return slot_of[name]

    input_slots = [slot(v.name) for v in graph.inputs]
    fed = set(graph.input_names)
    steps: list[Step] = []
    for node in graph.topological_order():
        missing = [name for name in node.outputs if name and name not in values]
        if missing:
            raise ShapeInferenceError(
                f"{node_label(node)} declares {len(node.outputs)} outputs {node.outputs}, but the op "
                f"produces no value for {missing}"
            )
        outs = [values[name] for name in node.outputs if name]
        if all(v.const is not None for v in outs) and node.outputs:
            for v in outs:
                template[slot(v.name)] = v.const  # folded while planning
            continue
        fn = ops.get_op(node).reference if kernel_for is None else kernel_for(node, values)
        record = NodeRecord(
            name=node.name,
            op_type=node.op_type,
            kernel=getattr(fn, "kernel_name", "reference"),
            input_shapes=[values[n].shape if n else None for n in node.inputs],
            output_shapes=[values[n].shape for n in node.outputs if n],
        )
        steps.append(
            Step(
                node=node,
                fn=fn,
                inputs=tuple(slot(n) if n else -1 for n in (*node.inputs, *node.implicit_inputs)),
                outputs=tuple(slot(n) if n else -1 for n in node.outputs),
                release=(),
                record=record,
                expected=tuple(values[n] if n else None for n in node.outputs),
            )
        )
        for name in (*node.present_inputs, *node.implicit_inputs):
            if name in graph.initializers and template[slot(name)] is None:
                template[slot(name)] = graph.initializers[name]
            elif name in values and values[name].const is not None and name not in fed and template[slot(name)] is None:
                template[slot(name)] = values[name].const
    output_slots = {}
    for value in graph.outputs:
        index = slot(value.name)
        output_slots[value.name] = index
        if template[index] is None and value.name in values and values[value.name].const is not None and value.name not in fed:
            template[index] = values[value.name].const
    _plan_releases(steps, set(output_slots.values()) | set(input_slots), template)
    memory = _place_tensors(graph, steps, values, arena)
    none_slot = len(template)  # never written: what an omitted optional input reads
    template.append(None)
    for step in steps:
        step.reads = tuple(i if i >= 0 else none_slot for i in step.inputs)
    return Plan(steps, template, input_slots, output_slots, values, memory)


def _place_tensors(graph: Graph, steps: list[Step], values: dict[str, Value], arena: bool) -> MemoryPlan:
    """Plan the arena over the steps and tell each step where its outputs go."""
    reads = [(step.node, (*step.node.present_inputs, *step.node.implicit_inputs)) for step in steps]
    memory = plan_steps(reads, values, exclude=set(graph.output_names) | set(graph.input_names))
    for step in steps:
        places = []
        for name in step.node.outputs:
            buffer = memory.buffers.get(name) if name else None
            if buffer is None or not arena:
                places.append(None)
            elif buffer.alias_of is not None and step.node.op_type in VIEW_OPS and not step.node.domain:
                places.append("view")
            else:
                value = values[name]
                places.append((memory.offset_of(name), value.dtype, tuple(value.shape)))
        step.places = tuple(places)
        step.writes_out = bool(getattr(step.fn, "writes_out", False))
        step.one_planned_output = len(step.outputs) == 1 and isinstance(step.places[0], tuple)
    return memory


def _plan_releases(steps: list[Step], keep: set[int], template: list) -> None:
    """After the last step that reads a slot, drop the reference so memory is freed early."""
    last_use: dict[int, int] = {}
    for position, step in enumerate(steps):
        for index in (*step.inputs, *step.outputs):
            if index >= 0:
                last_use[index] = position
    releases: dict[int, list[int]] = {}
    for index, position in last_use.items():
        if index in keep or template[index] is not None:  # constants live as long as the plan
            continue
        releases.setdefault(position, []).append(index)
    for position, step in enumerate(steps):
        step.release = tuple(releases.get(position, ()))


def _check(step: Step, results) -> None:
    for value, result in zip(step.expected, results):
        if value is not None:
            _check_value(step, value, result)


def _check_value(step: Step, value: Value, result) -> None:
    """Compare a result with its inferred type: kind first, then each tensor's dtype and shape."""
    where = f"{node_label(step.node)}: output '{value.name}'"
    if value.kind in ("optional", "optional_sequence"):
        if result is None:
            return
        value = Value(value.name, value.dtype, value.shape, kind="tensor" if value.kind == "optional" else "sequence")
    if value.kind == "sequence":
        if not isinstance(result, list):
            raise ExecutionError(f"{where} is a {type(result).__name__}, inference said a sequence")
        for item in result:
            _check_value(step, Value(value.name, value.dtype, value.shape), item)
        return
    if result is None or isinstance(result, list):
        raise ExecutionError(f"{where} is {describe(result)}, inference said a tensor")
    array = np.asarray(result)
    if value.dtype is not None and array.dtype != value.dtype:
        raise ExecutionError(f"{where} has dtype {array.dtype}, inference said {value.dtype}")
    if value.shape is not None:
        ok = len(value.shape) == array.ndim and all(
            not isinstance(d, int) or d == n for d, n in zip(value.shape, array.shape)
        )
        if not ok:
            raise ExecutionError(f"{where} has shape {list(array.shape)}, inference said {list(value.shape)}")
