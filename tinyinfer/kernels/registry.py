"""The kernel registry: fast implementations of ops, each with the conditions it supports.

A *kernel* accelerates one op (its *reference*, in ``tinyinfer/ops``) for some of the cases
the op allows: a dtype, a layout, a range of attributes. It is registered with

* a **predicate** ``supports(node, inputs) -> bool`` over the node's attributes and its
  inputs' :class:`~tinyinfer.ir.Value` (dtype, shape, constant weights);
* a **builder** ``build(node, inputs, outputs) -> fn`` called once per node and input shapes,
  when the runtime plans. It may prepare whatever depends only on shapes and weights (pack a
  weight matrix, transform filters for Winograd) and returns ``fn(node, *arrays)``, the same
  calling convention as the reference op, so the runtime calls either the same way;
* an optional **cost hint** ``cost(node, inputs) -> float`` (estimated seconds), which the
  ``cost-model`` selection mode compares instead of timing.

The runtime (:mod:`tinyinfer.runtime.select`) asks :func:`candidates` for a node and picks one;
the reference op is always a candidate too, so a missing kernel never makes a model fail.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from ..ir import Node, Value

Builder = Callable[[Node, list, list], Callable]


@dataclasses.dataclass(frozen=True)
class Kernel:
    """A registered kernel: the op it accelerates and how to use it."""

    name: str  # e.g. "conv2d_im2col"
    op_type: str
    domain: str
    supports: Callable[[Node, list], bool]
    build: Builder
    cost: Callable[[Node, list], float] | None = None
    doc: str = ""


#: The registry (a named, module-level cache): (domain, op_type) -> kernels in registration order.
KERNELS: dict[tuple[str, str], list[Kernel]] = {}


def register_kernel(op_type: str, name: str, *, domain: str = "", supports: Callable[[Node, list], bool],
                    cost: Callable[[Node, list], float] | None = None) -> Callable[[Builder], Builder]:
    """Decorator for a kernel's builder function."""

    def decorate(build: Builder) -> Builder:
        kernels = KERNELS.setdefault((domain, op_type), [])
        if any(k.name == name for k in kernels):
            raise RuntimeError(f"kernel {name!r} registered twice for {op_type}")
        doc = (build.__doc__ or "").strip().split("\n")[0]
        kernels.append(Kernel(name, op_type, domain, supports, build, cost, doc))
        return build

    return decorate


def candidates(node: Node, inputs: list[Value | None]) -> list[Kernel]:
    """The kernels that support this node with these input types (may be empty)."""
    found = []
    for kernel in KERNELS.get((node.domain, node.op_type), []):
        try:
            ok = kernel.supports(node, inputs)
        except (TypeError, ValueError, IndexError, KeyError, AttributeError):
            ok = False  # a predicate that cannot decide does not claim the node
        if ok:
            found.append(kernel)
    return found


def kernel_names() -> dict[str, list[str]]:
    """``op -> [kernel names]`` for every registered kernel."""
    return {
        (op if not domain else f"{domain}:{op}"): [k.name for k in kernels]
        for (domain, op), kernels in sorted(KERNELS.items())
    }


def writes_into(fn: Callable) -> Callable:
    """Mark a bound kernel function as able to write its results into memory it is given.

    The runtime then calls ``fn(node, *arrays, out=outs)``: ``outs`` has one entry per node
    output, either a C-contiguous array of the planned dtype and shape (a view of the
    session's arena) or None (allocate as usual). For ops the planner runs in place
    (elementwise ones, see :data:`tinyinfer.passes.memory.IN_PLACE_OPS`) an ``out`` array may
    be the very memory of the first input. The function returns its results as always; a
    result that is not its ``out`` array is copied there.
    """
    fn.writes_out = True
    return fn


def output_buffer(out, shape, dtype=np.float32) -> np.ndarray:
    """Where a kernel writes its (first) result: the runtime's planned array ``out[0]`` when it
    is given and fits (this dtype, C-ordered, this shape), else a new array."""
    target = out[0] if out else None
    if (target is not None and target.dtype == dtype and target.flags.c_contiguous
            and tuple(target.shape) == tuple(shape)):
        return target
    return np.empty(shape, dtype)


def named(fn: Callable, name: str) -> Callable:
    """Tag a bound kernel function with its name (the profiler shows it)."""
    fn.kernel_name = name
    return fn
