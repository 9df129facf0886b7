"""How many nodes tinyinfer's optimizer leaves, next to what ONNX Runtime's optimizer leaves.

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

ONNX Runtime is imported only when a comparison runs; without it the functions raise a
:class:`~tinyinfer.errors.TinyInferError` saying how to install it.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
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
