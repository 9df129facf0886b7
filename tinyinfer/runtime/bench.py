"""Timing one model on several engines in one run, reported as ratios.

Speed is measured, never asserted: this module times tinyinfer next to ONNX Runtime (and,
on request, ONNX's own Python reference evaluator) on the same model and the same inputs,
checks that they agree, and reports median times and ratios. The machine is whatever it is;
the ratios are what carries over.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
from typing import Any, Callable

import numpy as np

from .feeds import random_feeds
from .session import InferenceSession, load


@dataclasses.dataclass
class EngineResult:
    engine: str
    times_ms: list[float]
    max_abs_diff: float | None = None  # against tinyinfer's reference path
    note: str = ""

    @property
    def median_ms(self) -> float:
        return statistics.median(self.times_ms) if self.times_ms else float("nan")

    @property
    def best_ms(self) -> float:
        return min(self.times_ms) if self.times_ms else float("nan")


@dataclasses.dataclass
class BenchReport:
    model: str
    input_shapes: dict[str, list[int]]
    results: list[EngineResult]
    blas: str = ""

    def table(self) -> str:
        base = self.results[0].median_ms
        shapes = ", ".join(f"{k} {v}" for k, v in self.input_shapes.items())
        lines = [f"model {self.model}  inputs {shapes}"]
        if self.blas:
            lines.append(f"numpy BLAS: {self.blas}")
        lines.append(f"{'engine':<28} {'median ms':>10} {'best ms':>10} {'runs':>5} {'vs tinyinfer':>13}  {'max |diff|':>10}")
        for r in self.results:
            ratio = base / r.median_ms if r.times_ms else float("nan")
            diff = "" if r.max_abs_diff is None else f"{r.max_abs_diff:.2e}"
            lines.append(
                f"{r.engine:<28} {r.median_ms:10.2f} {r.best_ms:10.2f} {len(r.times_ms):5d} {ratio:12.2f}x  {diff:>10}"
                + (f"  {r.note}" if r.note else "")
            )
        lines.append("(vs tinyinfer > 1 means that engine is faster than tinyinfer's reference path)")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "input_shapes": self.input_shapes,
            "blas": self.blas,
            "results": [
                {"engine": r.engine, "median_ms": r.median_ms, "best_ms": r.best_ms, "runs": len(r.times_ms),
                 "max_abs_diff": r.max_abs_diff, "note": r.note}
                for r in self.results
            ],
        }


def time_calls(fn: Callable[[], Any], *, repeat: int, warmup: int, budget_s: float, progress=None, desc="") -> list[float]:
    """Milliseconds of ``repeat`` calls after ``warmup`` calls, stopping early past the budget."""
    for _ in range(warmup):
        fn()
    times = []
    started = time.perf_counter()
    iterator = range(repeat) if progress is None else progress(range(repeat), desc)
    for _ in iterator:
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
        if time.perf_counter() - started > budget_s:
            break
    return times


def blas_info() -> str:
    """Which BLAS NumPy's matmul runs on (threadpoolctl), e.g. 'openblas 0.3.27 (Zen, 2 threads)'."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return ""
    parts = []
    for pool in threadpool_info():
        if pool.get("user_api") == "blas":
            core = pool.get("architecture") or ""
            parts.append(f"{pool.get('internal_api')} {pool.get('version')} ({core}, {pool.get('num_threads')} threads)")
    return "; ".join(parts)


def benchmark_model(
    model: Any,
    *,
    repeat: int = 10,
    warmup: int = 2,
    dims: dict[str, int] | None = None,
    threads: int = 0,
    onnx_reference: bool = False,
    budget_s: float = 60.0,
    seed: int = 0,
    progress=None,
) -> BenchReport:
    """Time tinyinfer (reference), ONNX Runtime and optionally onnx.reference on one model."""
    import onnx

    from ..frontend import to_onnx

    graph = load(model)
    proto = model if isinstance(model, onnx.ModelProto) else to_onnx(graph)
    if isinstance(model, (str, os.PathLike)):
        proto = onnx.load(os.fspath(model))
    session = InferenceSession(graph)
    feeds = random_feeds(session.get_inputs(), seed=seed, dims=dims)
    expected = session.run(None, feeds)
    results = [
        EngineResult(
            "tinyinfer (reference)",
            time_calls(lambda: session.run(None, feeds), repeat=repeat, warmup=warmup, budget_s=budget_s,
                       progress=progress, desc="tinyinfer"),
        )
    ]
    try:
        import onnxruntime as ort
    except ImportError:
        results.append(EngineResult("onnxruntime", [], note="not installed (pip install tinyinfer[dev])"))
    else:
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        ort_session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
        got = ort_session.run(None, feeds)
        results.append(
            EngineResult(
                f"onnxruntime {ort.__version__}",
                time_calls(lambda: ort_session.run(None, feeds), repeat=repeat, warmup=warmup, budget_s=budget_s,
                           progress=progress, desc="onnxruntime"),
                max_abs_diff=_max_diff(expected, got),
            )
        )
    if onnx_reference:
        from onnx.reference import ReferenceEvaluator

        evaluator = ReferenceEvaluator(proto)
        got = evaluator.run(None, feeds)
        results.append(
            EngineResult(
                "onnx.reference",
                time_calls(lambda: evaluator.run(None, feeds), repeat=repeat, warmup=0, budget_s=budget_s,
                           progress=progress, desc="onnx.reference"),
                max_abs_diff=_max_diff(expected, got),
            )
        )
    name = os.fspath(model) if isinstance(model, (str, os.PathLike)) else graph.name
    shapes = {k: list(v.shape) for k, v in feeds.items()}
    return BenchReport(name, shapes, results, blas=blas_info())


def _max_diff(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return max(
        (float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)))) if np.size(x) else 0.0)
        for x, y in zip(a, b)
    )
