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
    "Add", "Sub", "Mul", "Div", "Sum", "BatchNormalization", "Dropout", "Identity", "Softmax",
})


@dataclasses.dataclass
class Buffer:
    """One intermediate tensor: its size, lifetime in steps, and (once planned) its offset."""

    name: str
    nbytes: int
    first: int  # step that writes it
    last: int  # last step that reads it (or the end, for graph outputs)
    offset: int = -1
    alias_of: str | None = None  # written in place over this tensor's buffer


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
        buffer = self.buffers[name]
        while buffer.alias_of is not None:
            buffer = self.buffers[buffer.alias_of]
        return buffer.offset

    def summary(self) -> str:
        mib = 2**20
        return (
            f"naive {self.naive_bytes / mib:.2f} MiB, planned arena {self.arena_bytes / mib:.2f} MiB, "
            f"lower bound {self.lower_bound_bytes / mib:.2f} MiB (planned / bound = {self.ratio_to_bound:.3f})"
        )


def plan_memory(graph: Graph, inputs: dict[str, Value] | None = None, *, in_place: bool = True) -> MemoryPlan:
    """Plan offsets for every tensor a node writes, for the given (or declared) input shapes.

    Symbolic dimensions that remain unknown count as 1. Weights and graph inputs are not
    in the arena (they live in the model and in the caller's arrays).
    """
    values = ops.infer_shapes(graph, inputs)
    order = graph.topological_order()
    end = len(order)
    buffers: dict[str, Buffer] = {}
    for step, node in enumerate(order):
        for name in node.outputs:
            value = values.get(name)
            if not name or value is None or value.const is not None:
                continue
            buffers[name] = Buffer(name, _nbytes(value), step, step)
        for name in node.present_inputs:
            if name in buffers:
                buffers[name].last = max(buffers[name].last, step)
    for name in graph.output_names:
        if name in buffers:
            buffers[name].last = end
    if in_place:
        _share_in_place(order, buffers, values)
    naive = sum(b.nbytes for b in buffers.values())
    groups = _groups(buffers)
    bound = _lower_bound(groups, end)
    arena = _place_best_of(groups)
    return MemoryPlan(buffers, arena, naive, bound)


def _nbytes(value: Value) -> int:
    shape = value.shape or ()
    count = int(np.prod([d if isinstance(d, int) else 1 for d in shape], dtype=np.int64))
    itemsize = value.dtype.itemsize if value.dtype is not None else 4
    return count * itemsize


def _share_in_place(order, buffers: dict[str, Buffer], values) -> None:
    """Let an in-place op's output reuse its first input's buffer when that input dies there."""
    for step, node in enumerate(order):
        if node.op_type not in IN_PLACE_OPS or node.domain or not node.inputs or not node.outputs:
            continue
        source, target = node.inputs[0], node.outputs[0]
        if source not in buffers or target not in buffers or buffers[target].alias_of is not None:
            continue
        root = _root(buffers, source)
        if buffers[source].last != step or root.last != step:
            continue  # someone reads the input later
        if buffers[target].nbytes != root.nbytes:
            continue  # broadcasting changed the size
        if values[source].dtype != values[target].dtype:
            continue
        buffers[target].alias_of = root.name
        root.last = buffers[target].last


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


def _place_best_of(groups: list[Buffer]) -> int:
    best_arena, best_offsets = None, None
    for key in _ORDERS.values():
        arena = _place_greedy(groups, key)
        if best_arena is None or arena < best_arena:
            best_arena, best_offsets = arena, [b.offset for b in groups]
    for buffer, offset in zip(groups, best_offsets or []):
        buffer.offset = offset
    return best_arena or 0


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
