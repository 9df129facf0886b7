"""Chapter 05 exercises, solved: three passes of a graph optimizer and a memory planner.

1. :func:`fold_conv_bn` — the weights of a convolution with a batch norm folded in.
2. :func:`eliminate_dead_code` — dead-code elimination on an ONNX model.
3. :func:`plan_arena` — offsets in one arena for tensors with known lifetimes.
4. :func:`fuse_matmul_add` (optional) — ``MatMul + Add`` into ``Gemm``.

Grade with ``pytest tests/exercises/test_ch05_optimizer.py --impl=solutions``.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper


# ---------------------------------------------------------------------------- exercise 1
def fold_conv_bn(conv_w: np.ndarray, conv_b: np.ndarray | None, gamma: np.ndarray, beta: np.ndarray,
                 mean: np.ndarray, var: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """Weights ``(w, b)`` of the one Conv that computes ``BatchNormalization(Conv(x, conv_w, conv_b))``."""
    scale = gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + eps)
    bias = np.zeros(conv_w.shape[0]) if conv_b is None else conv_b.astype(np.float64)
    w = conv_w.astype(np.float64) * scale.reshape(-1, *([1] * (conv_w.ndim - 1)))
    b = (bias - mean.astype(np.float64)) * scale + beta.astype(np.float64)
    return w.astype(conv_w.dtype), b.astype(conv_w.dtype)


# ---------------------------------------------------------------------------- exercise 2
def eliminate_dead_code(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` without the nodes and initializers no graph output depends on."""
    result = onnx.ModelProto()
    result.CopyFrom(model)
    graph = result.graph
    needed = {output.name for output in graph.output}
    kept = []
    for node in reversed(graph.node):  # ONNX stores nodes in topological order
        if any(name and name in needed for name in node.output):
            kept.append(node)
            needed.update(name for name in node.input if name)
            needed.update(_outer_names(node))
    kept.reverse()
    initializers = [tensor for tensor in graph.initializer if tensor.name in needed]
    del graph.node[:]
    graph.node.extend(kept)
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    return result


def _outer_names(node: onnx.NodeProto) -> set[str]:
    """Names the node's subgraphs (If branches, Loop bodies) read from the enclosing graphs."""
    names: set[str] = set()
    for attribute in node.attribute:
        subgraphs = list(attribute.graphs) + ([attribute.g] if attribute.HasField("g") else [])
        for subgraph in subgraphs:
            defined = {t.name for t in subgraph.initializer} | {v.name for v in subgraph.input}
            for inner in subgraph.node:
                names.update(name for name in inner.input if name and name not in defined)
                names.update(name for name in _outer_names(inner) if name not in defined)
                defined.update(inner.output)
            names.update(v.name for v in subgraph.output if v.name not in defined)
    return names


# ---------------------------------------------------------------------------- exercise 3
def plan_arena(lifetimes: list[tuple[int, int, int]], alignment: int = 64) -> tuple[list[int], int]:
    """Offsets (one per ``(nbytes, first, last)``, in the same order) and the arena size.

    Greedy by size with best fit (Pisarchyk & Lee, 2020), and greedy by size x lifetime;
    the smaller of the two arenas wins.
    """
    sizes = [(nbytes + alignment - 1) // alignment * alignment for nbytes, _, _ in lifetimes]
    by_size = lambda i: (-sizes[i], lifetimes[i][1])
    by_area = lambda i: (-sizes[i] * (lifetimes[i][2] - lifetimes[i][1] + 1), lifetimes[i][1])
    plans = [_place_greedy(lifetimes, sizes, sorted(range(len(lifetimes)), key=key)) for key in (by_size, by_area)]
    return min(plans, key=lambda plan: plan[1])


def _place_greedy(lifetimes, sizes, order) -> tuple[list[int], int]:
    """Place buffers in ``order``, each in the smallest gap free during its lifetime (best fit)."""
    offsets = [0] * len(lifetimes)
    placed: list[int] = []
    arena = 0
    for i in order:
        _, first, last = lifetimes[i]
        busy = sorted((offsets[j], offsets[j] + sizes[j]) for j in placed
                      if lifetimes[j][1] <= last and first <= lifetimes[j][2])
        best, best_gap, end = None, None, 0
        for start, stop in busy:
            gap = start - end
            if gap >= sizes[i] and (best_gap is None or gap < best_gap):
                best, best_gap = end, gap
            end = max(end, stop)
        offsets[i] = end if best is None else best
        placed.append(i)
        arena = max(arena, offsets[i] + sizes[i])
    return offsets, arena


# ---------------------------------------------------------------------------- exercise 4
def fuse_matmul_add(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` where ``Add(MatMul(A, B), c)`` with A a matrix and B, c weights is one Gemm."""
    result = onnx.ModelProto()
    result.CopyFrom(model)
    graph = result.graph
    ranks = _ranks(result)
    weights = {t.name: t for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in set(node.input):
            readers.setdefault(name, []).append(node)
    removed: set[int] = set()
    replacement: dict[int, onnx.NodeProto] = {}
    for node in graph.node:
        if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx"):
            continue
        a, b = node.input
        product = node.output[0]
        if b not in weights or len(weights[b].dims) != 2 or ranks.get(a) != 2:
            continue
        if product in outputs or len(readers.get(product, [])) != 1:
            continue
        add = readers[product][0]
        if add.op_type != "Add" or list(add.input).count(product) != 1:
            continue
        bias = add.input[1] if add.input[0] == product else add.input[0]
        n = weights[b].dims[1]
        if bias not in weights or not _broadcasts_to_columns(list(weights[bias].dims), n):
            continue
        gemm = helper.make_node("Gemm", [a, b, bias], [add.output[0]], name=node.name or add.name)
        replacement[id(node)] = gemm
        removed.add(id(add))
    nodes = [replacement.get(id(node), node) for node in graph.node if id(node) not in removed]
    del graph.node[:]
    graph.node.extend(nodes)
    return result


def _ranks(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    ranks = {}
    for info in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        tensor = info.type.tensor_type
        if tensor.HasField("shape"):
            ranks[info.name] = len(tensor.shape.dim)
    for tensor in model.graph.initializer:
        ranks[tensor.name] = len(tensor.dims)
    return ranks


def _broadcasts_to_columns(dims: list[int], n: int) -> bool:
    """Whether a bias of shape ``dims`` broadcasts to every (M, N) the same way Add would: [], [N], [1, N] (or 1s)."""
    return len(dims) <= 2 and all(d == 1 for d in dims[:-1]) and (not dims or dims[-1] in (1, n))
