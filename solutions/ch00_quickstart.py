"""Chapter 00 answers: output shape of a window, Kahn's topological sort, a tiny interpreter.

Same names and signatures as :mod:`exercises.ch00_quickstart`, whose docstrings explain
each task; the comments here only say why a line is the way it is.
"""

from __future__ import annotations

import collections
from typing import Mapping, Sequence

import numpy as np

from tinyinfer.errors import InvalidGraphError
from tinyinfer.ir import Graph, Node
from tinyinfer.ops import get_op


# ---------------------------------------------------------------------------- exercise 1
def conv_output_shape(
    input_shape: Sequence[int],
    kernel_shape: Sequence[int],
    strides: Sequence[int] | None = None,
    pads: Sequence[int] | None = None,
    dilations: Sequence[int] | None = None,
) -> tuple[int, ...]:
    """The spatial output dimensions of an ONNX Conv or pooling window (floor rounding)."""
    n = len(input_shape)
    strides = [1] * n if strides is None else list(strides)
    pads = [0] * (2 * n) if pads is None else list(pads)
    dilations = [1] * n if dilations is None else list(dilations)
    if not (len(kernel_shape) == len(strides) == len(dilations) == n and len(pads) == 2 * n):
        raise ValueError(
            f"{n} spatial axes need {n} kernel dims, strides and dilations and {2 * n} pads; got "
            f"kernel_shape={list(kernel_shape)}, strides={strides}, pads={pads}, dilations={dilations}"
        )
    output = []
    for axis, (size, k, s, d) in enumerate(zip(input_shape, kernel_shape, strides, dilations)):
        padded = size + pads[axis] + pads[axis + n]
        covered = d * (k - 1) + 1
        if covered > padded:
            raise ValueError(
                f"axis {axis}: the kernel covers {covered} positions but the padded input has only {padded}"
            )
        output.append(int((padded - covered) // s + 1))
    return tuple(output)


# ---------------------------------------------------------------------------- exercise 2
def topological_sort(graph: Graph) -> list[Node]:
    """Kahn's algorithm over node positions; raises InvalidGraphError on a cycle."""
    nodes = graph.nodes
    producer = {name: i for i, node in enumerate(nodes) for name in node.outputs if name}
    waiting_for = [0] * len(nodes)  # how many distinct producers each node still needs
    users: list[list[int]] = [[] for _ in nodes]  # who waits for each node
    for i, node in enumerate(nodes):
        deps = {producer[name] for name in node.inputs if name in producer}
        waiting_for[i] = len(deps)
        for dep in deps:
            users[dep].append(i)
    ready = collections.deque(i for i in range(len(nodes)) if waiting_for[i] == 0)
    order: list[Node] = []
    while ready:
        i = ready.popleft()
        order.append(nodes[i])
        for user in users[i]:
            waiting_for[user] -= 1
            if waiting_for[user] == 0:
                ready.append(user)
    if len(order) != len(nodes):
        stuck = [str(nodes[i]) for i in range(len(nodes)) if waiting_for[i] > 0]
        raise InvalidGraphError(f"graph '{graph.name}' has a cycle through: {', '.join(stuck[:8])}")
    return order


# ---------------------------------------------------------------------------- exercise 3
def run_graph(graph: Graph, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Walk the graph in topological order, calling each node's NumPy reference op."""
    env: dict[str, np.ndarray] = dict(graph.initializers)
    env.update(feeds)
    for node in topological_sort(graph):
        arrays = [env[name] if name else None for name in node.inputs]
        results = get_op(node).reference(node, *arrays)
        if not isinstance(results, (tuple, list)):
            results = (results,)
        for name, result in zip(node.outputs, results):
            if name:
                env[name] = np.asarray(result)
    return {value.name: env[value.name] for value in graph.outputs}
