"""Micro-benchmarks: one kernel or the run loop alone, not a whole model.

* :func:`gemm_table`: GFLOP/s of the packed GEMM (:mod:`tinyinfer.kernels.gemm`), its naive
  twin and NumPy's BLAS on square sizes and on the GEMMs a real network's convolutions
  become (:func:`conv_gemm_shapes`; ``tinyinfer bench --gemm``).
* :func:`benchmark_dispatch`: what running one node costs beyond the node's own work, on a
  long chain of tiny nodes (``tinyinfer bench --dispatch``).

Whole models on several engines are :mod:`tinyinfer.runtime.bench`'s job.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np

from ..ir import Value
from .bench import blas_info
from .session import InferenceSession, load


# ============================================================================ GEMM
def gemm_table(sizes: Sequence[int] = (128, 256, 512, 1024, 2048), shapes: Sequence[tuple] = (), *,
               threads: Sequence[int] = (1, 2), repeats: int = 5, naive_up_to: int = 512) -> list[dict]:
    """GFLOP/s of the packed GEMM, its naive twin and NumPy's BLAS, per product and thread count.

    Runs :func:`tinyinfer.kernels.gemm.benchmark_gemm` once per thread count (Numba's and
    BLAS's threads both set to it) on the square ``sizes`` and on ``shapes``, ``(M, N, K)``
    or ``(M, N, K, label)`` tuples (e.g. :func:`conv_gemm_shapes`), and merges the rows:
    ``gemm_{t}t`` (both operands packed in the call), ``gemm_prepacked_a_{t}t`` (A packed
    beforehand, as a convolution's weights are), ``blas_{t}t`` and, single-threaded and for
    square sizes up to ``naive_up_to`` only (it runs at about 2 GFLOP/s, and far slower
    once a column of B no longer fits in the cache), ``naive``.
    """
    import numba

    from ..kernels.gemm import benchmark_gemm

    labels = {tuple(s[:3]): (s[3] if len(s) > 3 else "") for s in shapes}
    merged: dict[tuple, dict] = {}
    for (m, n, k) in [(s, s, s) for s in sizes] + list(labels):
        merged[(m, n, k)] = {"m": m, "n": n, "k": k, "label": labels.get((m, n, k), "square" if m == n == k else "")}
    previous = numba.get_num_threads()
    try:
        for count in threads:
            numba.set_num_threads(min(count, numba.config.NUMBA_NUM_THREADS))
            rows = benchmark_gemm(sizes=tuple(sizes), shapes=tuple(labels), repeats=repeats,
                                  naive_up_to=naive_up_to if count == min(threads) else 0, threads=count)
            for row in rows:
                entry = merged[(row["m"], row["n"], row["k"])]
                entry[f"gemm_{count}t"] = row.get("gemm_gflops")
                entry[f"gemm_prepacked_a_{count}t"] = row.get("gemm_prepacked_a_gflops")
                entry[f"blas_{count}t"] = row.get("blas_gflops")
                if row.get("naive_gflops") is not None:
                    entry["naive"] = row["naive_gflops"]
                entry["blas"] = blas_info()
    finally:
        numba.set_num_threads(previous)
    return list(merged.values())


def format_gemm_table(rows: list[dict], threads: Sequence[int] = (1, 2)) -> str:
    columns = ["naive"] + [f"{name}_{t}t" for t in threads for name in ("gemm", "gemm_prepacked_a", "blas")]
    titles = {"naive": "naive 1t"}
    for t in threads:
        titles.update({f"gemm_{t}t": f"packed {t}t", f"gemm_prepacked_a_{t}t": f"prepackA {t}t", f"blas_{t}t": f"BLAS {t}t"})
    lines = [f"GEMM GFLOP/s (2 M N K / best time); NumPy BLAS: {blas_info() or 'unknown'}",
             f"{'M':>5} {'N':>6} {'K':>5} " + "".join(f"{titles[c]:>13}" for c in columns)
             + "".join(f"{'packed/BLAS ' + str(t) + 't':>17}" for t in threads) + "  shape"]
    for row in rows:
        cells = "".join(f"{row[c]:13.1f}" if row.get(c) else f"{'-':>13}" for c in columns)
        ratios = "".join(f"{row[f'gemm_prepacked_a_{t}t'] / row[f'blas_{t}t']:16.2f}x"
                         if row.get(f"gemm_prepacked_a_{t}t") and row.get(f"blas_{t}t") else f"{'-':>17}"
                         for t in threads)
        lines.append(f"{row['m']:>5} {row['n']:>6} {row['k']:>5} {cells}{ratios}  {row.get('label', '')}")
    lines.append("packed: both operands packed in the call; prepackA: A (the weights) packed once beforehand, as "
                 "Conv does; packed/BLAS uses prepackA. naive: three loops, single thread ('-': not run).")
    return "\n".join(lines)


def conv_gemm_shapes(model) -> list[tuple[int, int, int, str]]:
    """The distinct GEMMs a model's convolutions (and Gemm/MatMul layers) become, in order.

    A convolution lowered to im2col multiplies its weights, ``M = out channels / group``
    rows by ``K = in channels / group x kh x kw``, by the image's columns, ``K x N`` with
    ``N = out height x out width``: one GEMM per image and group. Each shape comes with a
    label counting the layers that produce it. Shapes are those of the model's declared
    inputs (symbolic dims set to 1).
    """
    from .. import ops

    graph = load(model)
    given = {v.name: Value(v.name, v.dtype, tuple(d if isinstance(d, int) else 1 for d in v.shape))
             for v in graph.inputs if v.shape is not None}
    values = ops.infer_shapes(graph, given)
    found: dict[tuple, list[str]] = {}
    for node in graph.topological_order():
        shapes = [values[n].shape if n in values else None for n in node.inputs]
        if node.op_type in ("Conv", "FusedConv") and len(shapes) > 1 and shapes[0] and shapes[1]:
            out = values[node.outputs[0]].shape
            if len(shapes[1]) != 4 or out is None:
                continue
            group = int(node.attrs.get("group", 1))
            m, k = shapes[1][0] // group, int(np.prod(shapes[1][1:]))
            found.setdefault((m, out[2] * out[3], k), []).append(f"{shapes[1][2]}x{shapes[1][3]} conv")
        elif node.op_type in ("Gemm", "MatMul") and all(s and len(s) == 2 for s in shapes[:2]):
            a, b = shapes[0], shapes[1]
            m, k = (a[1], a[0]) if node.attrs.get("transA") else a
            n = b[0] if node.attrs.get("transB") else b[1]
            found.setdefault((m, n, k), []).append(node.op_type)
    return [(m, n, k, _label(kinds)) for (m, n, k), kinds in found.items()]


def _label(kinds: list[str]) -> str:
    counts: dict[str, int] = {}
    for kind in kinds:
        counts[kind] = counts.get(kind, 0) + 1
    return ", ".join(f"{count} x {kind}" for kind, count in counts.items())


# ============================================================================ dispatch
def dispatch_chain(nodes: int = 200, width: int = 8):
    """A model of ``nodes`` tiny nodes in a chain, Relu and Add (of a constant) in turn, on a
    ``[1, width]`` float32 tensor: almost no arithmetic, so its time is the engine's."""
    import onnx
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    constant = helper.make_tensor("c", TensorProto.FLOAT, [1, width], rng.standard_normal(width).astype(np.float32))
    chain, previous = [], "x"
    for i in range(nodes):
        output = "y" if i == nodes - 1 else f"t{i}"
        chain.append(helper.make_node("Relu", [previous], [output], name=f"relu{i}") if i % 2 == 0
                     else helper.make_node("Add", [previous, "c"], [output], name=f"add{i}"))
        previous = output
    graph = helper.make_graph(chain, "dispatch_chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, width])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, width])], [constant])
    return helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])


def benchmark_dispatch(nodes: int = 200, width: int = 8, runs: int = 300,
                       backends: Sequence[str] = ("reference", "numba")) -> dict[str, Any]:
    """Microseconds per node of running :func:`dispatch_chain` (graph passes off, ``O0``).

    Per backend: ``run_us`` (a whole ``session.run`` over the nodes: feed checks, the plan's
    loop, the outputs), ``plan_us`` (the plan's loop, as the profile measures a run),
    ``in_nodes_us`` (the sum of the nodes' own timed calls) and ``dispatch_us`` = plan − in
    nodes: the loop's own work per node. ``direct_us`` is a plain Python loop calling the
    same NumPy functions (``np.maximum(x, 0)``, ``np.add(x, c)``): what a node costs with no
    engine at all. Best of three blocks of ``runs`` runs each (the minimum is the least
    disturbed by other work on the machine).
    """
    model = dispatch_chain(nodes, width)
    x = np.random.default_rng(1).standard_normal((1, width)).astype(np.float32)
    result: dict[str, Any] = {"nodes": nodes, "width": width, "runs": runs, "backends": {}}
    for backend in backends:
        session = InferenceSession(model, backend=backend, opt_level="O0")
        for _ in range(10):
            session.run(None, {"x": x})
        blocks = []
        for _ in range(3):
            before = session.profile()
            before_nodes = sum(r.total_ns for r in before.records)
            started = time.perf_counter_ns()
            for _ in range(runs):
                session.run(None, {"x": x})
            wall = time.perf_counter_ns() - started
            after = session.profile()
            count = len(after.records)
            in_nodes = sum(r.total_ns for r in after.records) - before_nodes
            plan = after.run_ns - before.run_ns
            blocks.append({"run_us": wall / runs / count / 1e3, "plan_us": plan / runs / count / 1e3,
                           "in_nodes_us": in_nodes / runs / count / 1e3,
                           "dispatch_us": (plan - in_nodes) / runs / count / 1e3, "planned_nodes": count})
        result["backends"][backend] = min(blocks, key=lambda b: b["run_us"])
    constant = _dispatch_constant(model)
    calls = [(np.maximum, 0.0) if i % 2 == 0 else (np.add, constant) for i in range(nodes)]
    blocks = []
    for _ in range(3):
        started = time.perf_counter_ns()
        for _ in range(runs):
            y = x
            for fn, operand in calls:
                y = fn(y, operand)
        blocks.append((time.perf_counter_ns() - started) / runs / nodes / 1e3)
    result["direct_us"] = min(blocks)
    return result


def _dispatch_constant(model) -> np.ndarray:
    from onnx import numpy_helper

    return numpy_helper.to_array(model.graph.initializer[0])


def format_dispatch(result: dict[str, Any]) -> str:
    lines = [f"dispatch: a chain of {result['nodes']} Relu/Add nodes on a [1, {result['width']}] float32 tensor, "
             f"opt level O0, best of 3 x {result['runs']} runs (us per node)",
             f"{'backend':<12}{'session.run':>12}{'plan loop':>11}{'in nodes':>10}{'dispatch':>10}{'x direct':>10}"]
    direct = result["direct_us"]
    for backend, r in result["backends"].items():
        lines.append(f"{backend:<12}{r['run_us']:12.2f}{r['plan_us']:11.2f}{r['in_nodes_us']:10.2f}"
                     f"{r['dispatch_us']:10.2f}{r['run_us'] / direct:9.1f}x")
    lines.append(f"{'direct loop':<12}{direct:12.2f}  (a Python loop calling np.maximum / np.add, no engine)")
    lines.append("dispatch = plan loop - in nodes: the plan's own work per node (argument gathering, timing, "
                 "storing results); session.run adds feed checks and output handling.")
    return "\n".join(lines)
