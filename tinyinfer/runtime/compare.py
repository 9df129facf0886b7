"""tinyinfer next to ONNX Runtime on one model: the nodes each optimizer leaves, and where each
engine's time goes.

Counting nodes is a coarse but honest way to compare two graph optimizers: every node the
runtime executes is one kernel launch and, unless fused, one full write and read of a
tensor. ONNX Runtime can save the graph it runs (``SessionOptions.optimized_model_filepath``);
at ``ORT_ENABLE_EXTENDED`` that graph has gone through constant folding, redundant-node
removal, common-subexpression elimination and its CPU fusions (Conv + BatchNormalization,
Conv + activation into ``com.microsoft:FusedConv``, MatMul + Add into Gemm, LayerNorm, GELU,
...), the same family of rewrites as tinyinfer's O2 level (``tinyinfer/passes``). Layout
changes (``ORT_ENABLE_ALL``'s NCHWc) are left out on both sides: they add reorder nodes and
belong to O3.

    rows = node_counts_vs_onnxruntime({"resnet50": model})
    print(node_count_table(rows))

Where the time goes (:func:`time_by_op_vs_onnxruntime`): both engines profile the same model on
the same input, tinyinfer with :meth:`InferenceSession.profile` and ONNX Runtime with its own
profiler (``SessionOptions.enable_profiling``, a JSON trace with one event per node run). The
nodes of the two graphs differ after fusion, so time is summed per *family* of ops (conv,
GEMM, pooling, normalization, concat, layout, elementwise); what a run costs beyond its nodes
is the engine's own overhead (dispatch, feeds, outputs).

    print(time_by_op_table(time_by_op_vs_onnxruntime(model, threads=2)))

ONNX Runtime is imported only when a comparison runs; without it the functions raise a
:class:`~tinyinfer.errors.TinyInferError` saying how to install it.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import tempfile
import time
from typing import Any, Callable, Iterable, Mapping

from ..errors import TinyInferError
from ..ir import Graph, serialize
from .session import load


@dataclasses.dataclass(frozen=True)
class NodeCountRow:
    """Node counts of one model: as imported, after tinyinfer's passes, after ONNX Runtime's."""

    model: str
    imported: int
    tinyinfer: int
    onnxruntime: int
    level: str = "O2"
    #: tinyinfer's optimized graph, kept for further study (memory plans, histograms).
    graph: Graph | None = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def ratio(self) -> float:
        """tinyinfer's count over ONNX Runtime's: below 1 means tinyinfer's graph is smaller."""
        return self.tinyinfer / self.onnxruntime if self.onnxruntime else float("nan")


def node_counts_vs_onnxruntime(
    models: Mapping[str, Any],
    level: str = "O2",
    *,
    progress: Callable[[Iterable, str], Iterable] | None = None,
) -> list[NodeCountRow]:
    """One :class:`NodeCountRow` per model, in the mapping's order.

    ``models`` maps a name to an ``onnx.ModelProto``, a tinyinfer Graph, or anything
    :func:`tinyinfer.load` reads (a path, bytes). tinyinfer runs ``PassManager(level)``;
    ONNX Runtime runs its CPU provider at ``ORT_ENABLE_EXTENDED`` and saves the optimized
    graph to a temporary directory, whose nodes are counted.
    """
    from ..passes import PassManager  # passes sit below the runtime; imported late like the session does

    ort = _onnxruntime()
    manager = PassManager(level)
    items = list(models.items())
    rows = []
    for name, model in progress(items, "compare") if progress else items:
        graph = load(model)
        optimized, _ = manager.run(graph)
        theirs = _onnxruntime_nodes(ort, model, graph)
        rows.append(NodeCountRow(name, len(graph.nodes), len(optimized.nodes), theirs, level, optimized))
    return rows


def onnxruntime_node_count(model: Any) -> int:
    """Nodes ONNX Runtime runs for ``model`` after ``ORT_ENABLE_EXTENDED`` (CPU provider)."""
    ort = _onnxruntime()
    return _onnxruntime_nodes(ort, model, model if isinstance(model, Graph) else None)


def node_count_table(rows: list[NodeCountRow]) -> str:
    """The rows as a fixed-width text table, with a total line when there are several."""
    if not rows:
        return "no models"
    level = rows[0].level
    width = max(14, *(len(r.model) for r in rows))
    header = f"{'model':<{width}} {'imported':>9} {'tinyinfer ' + level:>13} {'ORT extended':>13} {'ratio':>6}"
    lines = [header]
    for r in rows:
        lines.append(f"{r.model:<{width}} {r.imported:>9} {r.tinyinfer:>13} {r.onnxruntime:>13} {r.ratio:>6.2f}")
    if len(rows) > 1:
        total = NodeCountRow("total", *(sum(getattr(r, f) for r in rows) for f in ("imported", "tinyinfer", "onnxruntime")))
        lines.append(f"{total.model:<{width}} {total.imported:>9} {total.tinyinfer:>13} {total.onnxruntime:>13} "
                     f"{total.ratio:>6.2f}")
    lines.append(f"(ratio = tinyinfer {level} nodes / ONNX Runtime nodes; below 1: tinyinfer's graph has fewer)")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- time by op
#: Op-type families, for comparing two engines whose fused graphs name their nodes differently.
FAMILIES = {
    "conv": ("Conv", "FusedConv", "ConvNCHWc", "ConvTranspose", "QLinearConv", "ConvInteger"),
    "gemm": ("Gemm", "MatMul", "FusedGemm", "FusedMatMul", "QLinearGemm", "QLinearMatMul", "MatMulInteger"),
    "pool": ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "MaxPoolNCHWc", "AveragePoolNCHWc",
             "GlobalAveragePoolNCHWc", "GlobalMaxPoolNCHWc", "QLinearAveragePool", "QLinearGlobalAveragePool"),
    "normalization": ("BatchNormalization", "ScaleShift", "LRN", "LayerNormalization", "InstanceNormalization"),
    "concat/split": ("Concat", "Split", "Slice", "QLinearConcat"),
    "layout": ("Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "ToBlocked", "FromBlocked",
               "ReorderInput", "ReorderOutput", "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"),
}
_FAMILY_OF = {op: family for family, ops in FAMILIES.items() for op in ops}


def op_family(op_type: str) -> str:
    """The family of an op type (``elementwise`` for the rest: activations, arithmetic, ...)."""
    return _FAMILY_OF.get(op_type, "elementwise")


@dataclasses.dataclass
class TimeByOp:
    """Mean milliseconds per run of one model on tinyinfer and ONNX Runtime, per op family."""

    model: str
    backend: str
    threads: int
    runs: int
    tinyinfer_ms: dict[str, float]  # family -> ms per run, in nodes
    onnxruntime_ms: dict[str, float]
    tinyinfer_run_ms: float  # a whole run, nodes and overhead
    onnxruntime_run_ms: float
    tinyinfer_nodes: int
    onnxruntime_nodes: int

    def overhead_ms(self, engine: str) -> float:
        """Run time not spent inside a node: dispatch, feed checks, outputs."""
        run = self.tinyinfer_run_ms if engine == "tinyinfer" else self.onnxruntime_run_ms
        nodes = self.tinyinfer_ms if engine == "tinyinfer" else self.onnxruntime_ms
        return max(run - sum(nodes.values()), 0.0)


def time_by_op_vs_onnxruntime(model: Any, *, name: str | None = None, backend: str = "numba", threads: int = 2,
                              runs: int = 20, warmup: int = 5, seed: int = 0) -> TimeByOp:
    """Profile ``model`` on tinyinfer (``backend``, ``threads``) and on ONNX Runtime (CPU,
    ``threads`` intra-op threads, sequential), ``runs`` timed runs after ``warmup`` each, on the
    same random input, and sum each engine's node times per :func:`op_family`."""
    import onnx

    from .feeds import random_feeds
    from .session import InferenceSession

    _onnxruntime()  # a clear error now if it is missing
    proto = model if isinstance(model, onnx.ModelProto) else None
    session = InferenceSession(model, backend=backend, threads=threads)
    feeds = random_feeds(session.get_inputs(), seed=seed)
    for _ in range(warmup):
        session.run(None, feeds)
    # The profile sums every run since the session began: subtract what warm-up put there.
    before = {r.name: r.total_ns for r in session.profile().records}
    started = time.perf_counter()
    for _ in range(runs):
        session.run(None, feeds)
    tinyinfer_run_ms = (time.perf_counter() - started) / runs * 1e3
    records = session.profile().records
    ours: dict[str, float] = collections.defaultdict(float)
    for record in records:
        ours[op_family(record.op_type)] += (record.total_ns - before.get(record.name, 0)) / runs / 1e6
    data = _model_bytes(model, proto)
    theirs, ort_run_ms, ort_nodes = _profile_onnxruntime(data, feeds, threads, runs, warmup)
    return TimeByOp(name or getattr(getattr(proto, "graph", None), "name", None) or "model", backend, threads, runs,
                    dict(ours), theirs, tinyinfer_run_ms, ort_run_ms, len(records), ort_nodes)


def time_by_op_table(rows: TimeByOp | list[TimeByOp]) -> str:
    """Per model: ms per run in each op family on both engines, their ratio, and overhead."""
    rows = [rows] if isinstance(rows, TimeByOp) else rows
    lines = []
    for row in rows:
        lines.append(f"{row.model}: tinyinfer ({row.backend}, {row.threads} threads, {row.tinyinfer_nodes} nodes) "
                     f"{row.tinyinfer_run_ms:.2f} ms vs ONNX Runtime ({row.onnxruntime_nodes} nodes) "
                     f"{row.onnxruntime_run_ms:.2f} ms per run, mean of {row.runs}")
        lines.append(f"  {'family':<14}{'tinyinfer ms':>13}{'ORT ms':>9}{'ratio':>8}{'share of gap':>14}")
        families = sorted(set(row.tinyinfer_ms) | set(row.onnxruntime_ms),
                          key=lambda f: -(row.tinyinfer_ms.get(f, 0.0) - row.onnxruntime_ms.get(f, 0.0)))
        gap = row.tinyinfer_run_ms - row.onnxruntime_run_ms
        cells = [(f, row.tinyinfer_ms.get(f, 0.0), row.onnxruntime_ms.get(f, 0.0)) for f in families]
        cells.append(("(overhead)", row.overhead_ms("tinyinfer"), row.overhead_ms("onnxruntime")))
        for family, ours, theirs in cells:
            ratio = f"{ours / theirs:7.2f}x" if theirs > 0 else f"{'-':>8}"
            share = f"{100 * (ours - theirs) / gap:13.0f}%" if gap > 0 else f"{'-':>14}"
            lines.append(f"  {family:<14}{ours:13.2f}{theirs:9.2f}{ratio}{share}")
    return "\n".join(lines)


def _model_bytes(model: Any, proto) -> bytes:
    if proto is not None:
        return proto.SerializeToString()
    if isinstance(model, (str, os.PathLike)) and not serialize.is_tinf(model):
        with open(model, "rb") as f:
            return f.read()
    from ..frontend import to_onnx

    return to_onnx(load(model)).SerializeToString()


def _profile_onnxruntime(data: bytes, feeds: dict, threads: int, runs: int, warmup: int):
    """ONNX Runtime's own trace: ms per run per op family (the runs after ``warmup``), the
    mean wall time of those runs, and the number of nodes it ran."""
    from .bench import _ort_session

    with tempfile.TemporaryDirectory(prefix="tinyinfer-ort-profile-") as directory:
        session = _ort_session(data, threads, profile_prefix=os.path.join(directory, "ort"))
        for _ in range(warmup + runs):
            session.run(None, feeds)
        with open(session.end_profiling()) as f:
            events = json.load(f)
    run_events = sorted((e for e in events if e.get("name") == "model_run"), key=lambda e: e["ts"])[warmup:]
    windows = [(e["ts"], e["ts"] + e["dur"]) for e in run_events]
    per_family: dict[str, float] = collections.defaultdict(float)
    nodes = set()
    for event in events:
        if event.get("cat") != "Node" or not event.get("name", "").endswith("_kernel_time"):
            continue
        if any(start <= event["ts"] <= end for start, end in windows):
            per_family[op_family(event["args"].get("op_name", ""))] += event["dur"] / 1e3 / len(windows)
            nodes.add(event["name"])
    run_ms = sum(end - start for start, end in windows) / 1e3 / max(len(windows), 1)
    return dict(per_family), run_ms, len(nodes)


# ---------------------------------------------------------------------------- helpers
def _onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise TinyInferError(
            "comparing with ONNX Runtime needs the onnxruntime package: pip install onnxruntime "
            "(or pip install tinyinfer[dev])"
        ) from None
    return onnxruntime


def _onnxruntime_nodes(ort, model: Any, graph: Graph | None) -> int:
    """Nodes in the graph ONNX Runtime runs after its extended optimizations."""
    import onnx

    if isinstance(model, onnx.ModelProto):
        data = model.SerializeToString()
    elif isinstance(model, (bytes, bytearray)) and not serialize.is_tinf(model):
        data = bytes(model)
    elif isinstance(model, (str, os.PathLike)) and not serialize.is_tinf(model):
        data = os.fspath(model)  # ONNX Runtime reads the file itself
    else:  # a Graph or a .tinf: export what tinyinfer imported (fused nodes decomposed)
        from ..frontend import to_onnx

        data = to_onnx(graph if graph is not None else load(model)).SerializeToString()
    with tempfile.TemporaryDirectory(prefix="tinyinfer-ort-") as directory:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = os.path.join(directory, "optimized.onnx")
        options.log_severity_level = 3  # errors only: ORT warns about every unused initializer
        # Only the graph is wanted: no weight prepacking for kernels that never run, and the
        # weights go to a side file, so that reading the saved graph back parses no weights.
        options.add_session_config_entry("session.disable_prepacking", "1")
        options.add_session_config_entry("session.optimized_model_external_initializers_file_name", "weights.bin")
        options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
        try:
            ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own exception types (Fail, InvalidGraph, ...)
            raise TinyInferError(f"ONNX Runtime cannot load the model: {exc}") from None
        optimized = onnx.load(options.optimized_model_filepath, load_external_data=False)
    return len(optimized.graph.node)
