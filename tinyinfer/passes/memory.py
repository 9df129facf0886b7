"""Memory planning: one arena for every intermediate tensor, offsets chosen ahead of time.

An engine that calls ``malloc`` for each tensor of each run wastes time and fragments memory;
one that keeps every tensor alive wastes memory. Since the graph and the input shapes are
known before running, the engine can plan: it knows when each tensor is written (its
producer's step) and when it is read for the last time, so tensors whose lifetimes do not
overlap can share bytes.

The plan here follows the "greedy by size" strategy of Pisarchyk & Lee (2020), *Efficient
Memory Management for Deep Neural Net Inference*: take tensors from largest to smallest and
put each at the lowest offset where it overlaps no already-placed tensor that is alive at the
same time. Before that, an op that can write its result over its input (a ReLU whose input
dies at that node) shares the input's buffer ("in place").

Three numbers describe a plan:

* **naive** — every tensor its own buffer: the sum of all sizes;
* **planned** — the arena size this plan needs;
* **lower bound** — the most bytes alive at any one step; no plan can do better.
"""

from __future__ import annotations

import dataclasses
import random

import numpy as np

from .. import ops
from ..ir import Graph, Value

#: Buffers start on 64-byte boundaries: a cache line, and one AVX-512 vector.
ALIGNMENT = 64

#: Ops whose output may overwrite their first input when that input is read by no one later
#: (elementwise, same shape and dtype in and out).
IN_PLACE_OPS = frozenset({
    "Relu", "LeakyRelu", "Elu", "Selu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Clip",
    "Abs", "Neg", "Exp", "Log", "Sqrt", "Reciprocal", "Floor", "Ceil", "Erf", "Gelu", "Softplus",
    "Add", "Sub", "Mul", "Div", "Sum", "BatchNormalization", "Dropout", "Softmax",
})

#: Ops whose output is a view of their first input (same bytes, another shape): the output
#: gets no bytes of its own, and the input's bytes stay alive as long as the view is read.
VIEW_OPS = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity"})


@dataclasses.dataclass
class Buffer:
    """One intermediate tensor: its size, lifetime in steps, and (once planned) its offset."""

    name: str
    nbytes: int
    first: int  # step that writes it
    last: int  # last step that reads it
    offset: int = -1
    alias_of: str | None = None  # shares this tensor's bytes (written in place over it, or a view of it)


@dataclasses.dataclass
class MemoryPlan:
    buffers: dict[str, Buffer]
    arena_bytes: int
    naive_bytes: int
    lower_bound_bytes: int

    @property
    def ratio_to_bound(self) -> float:
        return self.arena_bytes / self.lower_bound_bytes if self.lower_bound_bytes else 1.0

    def offset_of(self, name: str) -> int:
        return _root(self.buffers, name).offset

    def summary(self) -> str:
        mib = 2**20
        return (
            f"naive {self.naive_bytes / mib:.2f} MiB, planned arena {self.arena_bytes / mib:.2f} MiB, "
            f"lower bound {self.lower_bound_bytes / mib:.2f} MiB (planned / bound = {self.ratio_to_bound:.3f})"
        )


def plan_memory(graph: Graph, inputs: dict[str, Value] | None = None, *, in_place: bool = True) -> MemoryPlan:
    """Plan offsets for every tensor a node writes, for the given (or declared) input shapes.

    Symbolic dimensions that remain unknown count as 1. Weights, graph inputs and graph
    outputs are not in the arena: weights live in the model, inputs in the caller's arrays,
    and outputs are handed to the caller, so each run gives them fresh memory. A node's
    subgraph inputs (the outer values an If or Loop body reads) count as reads of that node.
    """
    values = ops.infer_shapes(graph, inputs)
    steps = [(node, (*node.present_inputs, *node.implicit_inputs)) for node in graph.topological_order()]
    return plan_steps(steps, values, exclude=set(graph.output_names), size_of=_nbytes, in_place=in_place)


def plan_steps(steps, values: dict[str, Value], *, exclude=frozenset(), size_of=None,
               in_place: bool = True) -> MemoryPlan:
    """Plan the arena for ``steps``, a list of ``(node, names it reads)`` in execution order.

    This is the planner the runtime uses on its compiled plan (where constant nodes are
    gone) and :func:`plan_memory` on a whole graph. ``size_of(value)`` gives a tensor's bytes,
    or None for one that cannot be planned (a shape known only when running); such tensors,
    the names in ``exclude`` and non-tensor values (sequences) get no bytes in the arena.
    """
    size_of = size_of or static_nbytes
    buffers: dict[str, Buffer] = {}
    for step, (node, reads) in enumerate(steps):
        for name in reads:
            if name in buffers:
                buffers[name].last = max(buffers[name].last, step)
        for name in node.outputs:
            value = values.get(name)
            if not name or name in exclude or value is None or value.const is not None or value.kind != "tensor":
                continue
            nbytes = size_of(value)
            if nbytes is not None:
                buffers[name] = Buffer(name, nbytes, step, step)
    _share_views(steps, buffers)
    if in_place:
        _share_in_place(steps, buffers, values)
    naive = sum(b.nbytes for b in buffers.values() if not _is_view(b, steps))  # a view owns no bytes
    groups = _groups(buffers)
    bound = _lower_bound(groups, len(steps))
    arena = _place_best_of(groups, bound)
    return MemoryPlan(buffers, arena, naive, bound)


def static_nbytes(value: Value) -> int | None:
    """Bytes of a tensor whose shape is fully known, else None."""
    if value.shape is None or value.dtype is None or not all(isinstance(d, int) for d in value.shape):
        return None
    return int(np.prod(value.shape, dtype=np.int64)) * value.dtype.itemsize


def _nbytes(value: Value) -> int:
    shape = value.shape or ()
    count = int(np.prod([d if isinstance(d, int) else 1 for d in shape], dtype=np.int64))
    itemsize = value.dtype.itemsize if value.dtype is not None else 4
    return count * itemsize


def _is_view(buffer: Buffer, steps) -> bool:
    node = steps[buffer.first][0]
    return buffer.alias_of is not None and node.op_type in VIEW_OPS and not node.domain


def _share_views(steps, buffers: dict[str, Buffer]) -> None:
    """A view op's output is its input's bytes seen with another shape: it keeps them alive.

    A view of something outside the arena (a feed, a weight, a tensor of unknown size) needs
    no bytes either: the runtime keeps the view as the op returns it.
    """
    for node, _ in steps:
        if node.op_type not in VIEW_OPS or node.domain or not node.inputs or not node.outputs:
            continue
        source, target = node.inputs[0], node.outputs[0]
        if target not in buffers:
            continue
        if source in buffers and buffers[target].nbytes == buffers[source].nbytes:
            buffers[target].alias_of = source
        else:
            del buffers[target]
    # A root stays alive while any view of it is read (views of views included).
    for buffer in buffers.values():
        if buffer.alias_of is not None:
            root = _root(buffers, buffer.name)
            root.last = max(root.last, buffer.last)


def _share_in_place(steps, buffers: dict[str, Buffer], values) -> None:
    """Let an in-place op's output reuse its first input's buffer when that input dies there."""
    for step, (node, _) in enumerate(steps):
        if node.op_type not in IN_PLACE_OPS or node.domain or not node.inputs or not node.outputs:
            continue
        source, target = node.inputs[0], node.outputs[0]
        if source not in buffers or target not in buffers or buffers[target].alias_of is not None:
            continue
        root = _root(buffers, source)
        if root.last != step:
            continue  # the input (or a view of it) is read later
        if buffers[target].nbytes != root.nbytes:
            continue  # broadcasting changed the size
        if values[source].dtype != values[target].dtype:
            continue
        buffers[target].alias_of = root.name
        root.last = max(root.last, buffers[target].last)  # already covers the target's views


def _root(buffers: dict[str, Buffer], name: str) -> Buffer:
    buffer = buffers[name]
    while buffer.alias_of is not None:
        buffer = buffers[buffer.alias_of]
    return buffer


def _groups(buffers: dict[str, Buffer]) -> list[Buffer]:
    """The buffers that need their own bytes (aliases share their root's)."""
    return [b for b in buffers.values() if b.alias_of is None]


def _lower_bound(groups: list[Buffer], end: int) -> int:
    live = np.zeros(end + 2, dtype=np.int64)
    for b in groups:
        live[b.first] += _aligned(b.nbytes)
        live[b.last + 1] -= _aligned(b.nbytes)
    return int(np.cumsum(live).max()) if groups else 0


#: Orders to place buffers in; the plan keeps whichever gives the smallest arena. Largest
#: first is the paper's main strategy; longest-lived-bytes first helps graphs such as
#: DenseNet, where many small tensors stay alive across a long concatenation.
_ORDERS = {
    "size": lambda b: (-b.nbytes, b.first),
    "area": lambda b: (-b.nbytes * (b.last - b.first + 1), b.first),
    "lifetime": lambda b: (-(b.last - b.first), -b.nbytes),
    "first_use": lambda b: (b.first, -b.nbytes),
}


def _place_best_of(groups: list[Buffer], bound: int) -> int:
    """Place with each fixed order, then with seeded random ones until the bound is reached.

    Greedy placement is a heuristic: the order decides how well tensors pack around the
    long-lived ones. When no fixed order reaches the lower bound (DenseNet's concatenations
    leave one such gap), the search tries orders that weigh each tensor's bytes by a random
    power of its lifetime, with a fixed seed so a model always gets the same plan.
    """
    best_arena, best_offsets = None, None

    def attempt(key) -> bool:
        nonlocal best_arena, best_offsets
        arena = _place_greedy(groups, key)
        if best_arena is None or arena < best_arena:
            best_arena, best_offsets = arena, [b.offset for b in groups]
        return best_arena <= bound

    done = any(attempt(key) for key in _ORDERS.values())
    rng = random.Random(0)
    tries = _RANDOM_TRIES if len(groups) <= 500 else _RANDOM_TRIES // 8
    for _ in range(tries if not done else 0):
        power = {id(b): 2 * rng.random() for b in groups}
        if attempt(lambda b: (-b.nbytes * (b.last - b.first + 1) ** power[id(b)], b.first)):
            break
    for buffer, offset in zip(groups, best_offsets or []):
        buffer.offset = offset
    return best_arena or 0


#: How many random orders to try when the fixed ones miss the bound (each costs about a
#: millisecond for a few hundred tensors).
_RANDOM_TRIES = 256


def _place_greedy(groups: list[Buffer], key) -> int:
    """In ``key`` order, put each buffer at the best-fitting offset free for its lifetime."""
    placed: list[Buffer] = []
    arena = 0
    for buffer in sorted(groups, key=key):
        size = _aligned(buffer.nbytes)
        busy = sorted(
            (p.offset, p.offset + _aligned(p.nbytes))
            for p in placed
            if p.first <= buffer.last and buffer.first <= p.last
        )
        offset = 0
        best = None
        for start, stop in busy:  # best fit: the smallest gap that holds the buffer
            if start - offset >= size and (best is None or start - offset < best[1]):
                best = (offset, start - offset)
            offset = max(offset, stop)
        buffer.offset = best[0] if best is not None else offset
        placed.append(buffer)
        arena = max(arena, buffer.offset + size)
    return arena


def _aligned(nbytes: int) -> int:
    return (nbytes + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT
