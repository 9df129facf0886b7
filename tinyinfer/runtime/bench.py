"""Timing models on several engines in one run, reported as ratios.

Speed is measured, never asserted: this module times tinyinfer next to ONNX Runtime on the
same models and the same inputs, checks that they agree, and reports median times and
ratios. The machine is whatever it is; the ratios are what carries over. Two benchmarks
here, two in :mod:`tinyinfer.runtime.microbench`:

* :func:`benchmark_model`: one model, tinyinfer's reference path against ONNX Runtime (and,
  on request, ONNX's own Python evaluator ``onnx.reference``).
* :func:`benchmark_suite`: many models x batch sizes x thread counts, each timed on
  tinyinfer's reference path, its Numba path and ONNX Runtime, every engine's outputs
  checked against the reference; a table, a JSON record and a figure (``tinyinfer bench
  --suite``, ``make bench``).
* :func:`~tinyinfer.runtime.microbench.gemm_table`: GFLOP/s of the packed GEMM (:mod:`tinyinfer.kernels.gemm`), its naive
  twin and NumPy's BLAS on square sizes and on the GEMMs a real network's convolutions
  become (``tinyinfer bench --gemm``).
* :func:`~tinyinfer.runtime.microbench.benchmark_dispatch`: what running one node costs beyond the node's own work, on a
  long chain of tiny nodes (``tinyinfer bench --dispatch``).

Thread counts are set explicitly everywhere, because two libraries that each start one
thread per core on the same two cores take turns instead of working: tinyinfer's Numba
threads via ``InferenceSession(threads=N)``, ONNX Runtime's with ``intra_op_num_threads``
(and one inter-op thread), and NumPy's BLAS, under tinyinfer's reference path, with
``threadpoolctl``. Each table names the BLAS library and kernel that ran.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import platform
import statistics
import time
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from ..errors import TinyInferError
from ..ir import Value
from .feeds import random_feeds
from .session import InferenceSession, load

#: The engines :func:`benchmark_suite` times, in the order its table shows them.
ENGINES = ("reference", "numba", "onnxruntime")
#: Agreement with tinyinfer's reference path: float32 kernels sum in other orders than
#: NumPy, so ``|got - ref| <= RTOL * |ref| + ATOL_SCALE * max|ref|`` (per output).
RTOL, ATOL_SCALE = 1e-3, 1e-4
#: The symbol :func:`with_batch_dim` gives a model's batch dimension.
BATCH_SYMBOL = "N"


# ============================================================================ one model
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
        for engine in ("tinyinfer", "onnxruntime"):  # a quantized model next to its float twin
            int8 = self._timed(lambda name: name.startswith(engine) and "reference" not in name and "twin" not in name)
            fp32 = self._timed(lambda name: name.startswith(f"{engine} fp32 twin"))
            if int8 and fp32:
                ratio = int8.median_ms / fp32.median_ms
                lines.append(f"int8 / fp32 latency on {engine}: {ratio:.2f}")
        return "\n".join(lines)

    def _timed(self, wanted: Callable[[str], bool]) -> EngineResult | None:
        return next((r for r in self.results if r.times_ms and wanted(r.engine)), None)

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
    """Milliseconds of ``repeat`` calls after ``warmup`` calls, stopping early past the budget
    (at least one call is timed)."""
    return time_in_turn([fn], repeat=repeat, warmup=warmup, budget_s=budget_s, progress=progress, desc=desc)[0]


def time_in_turn(fns: Sequence[Callable[[], Any]], *, repeat: int, warmup: int, budget_s: float, progress=None,
                 desc="") -> list[list[float]]:
    """:func:`time_calls` for several functions called in turn (first, second, ..., first, ...):
    each one's milliseconds.

    With two, their ratio is what a comparison wants (int8 vs its float twin), and on a shared
    machine a burst of other work then slows both alike instead of only the one timed during it."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times: list[list[float]] = [[] for _ in fns]
    started = time.perf_counter()
    iterator = range(max(repeat, 1)) if progress is None else progress(range(max(repeat, 1)), desc)
    for _ in iterator:
        for fn, into in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            into.append((time.perf_counter() - t0) * 1e3)
        if time.perf_counter() - started > budget_s:
            break
    return times


def blas_info() -> str:
    """Which BLAS NumPy's matmul runs on (threadpoolctl), e.g. 'openblas 0.3.27 (numpy.libs, Zen, 2 threads)'.

    Other BLAS libraries in the process (SciPy brings its own) are left out when NumPy's
    own is recognised by its folder.
    """
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return ""
    pools = [p for p in threadpool_info() if p.get("user_api") == "blas"]
    numpys = [p for p in pools if "numpy" in (p.get("filepath") or "")]
    parts = []
    for pool in numpys or pools:
        if pool.get("user_api") == "blas":
            core = pool.get("architecture") or ""
            home = os.path.basename(os.path.dirname(pool.get("filepath") or ""))  # numpy.libs, scipy.libs ...
            parts.append(f"{pool.get('internal_api')} {pool.get('version')} ({home + ', ' if home else ''}"
                         f"{core}, {pool.get('num_threads')} threads)")
    return "; ".join(parts)


def benchmark_model(
    model: Any,
    *,
    repeat: int = 10,
    warmup: int = 2,
    dims: dict[str, int] | None = None,
    threads: int = 0,
    onnx_reference: bool = False,
    numba: bool = True,
    budget_s: float = 60.0,
    seed: int = 0,
    progress=None,
) -> BenchReport:
    """Time one model on tinyinfer's reference path, its Numba path, ONNX Runtime and optionally
    onnx.reference, on the same random feeds; every engine's outputs are compared with the
    reference path's.

    A quantized (QDQ) model is also timed as its float twin (:func:`tinyinfer.compress.qdq.float_twin`:
    the same weights, dequantized, and no activation quantization) on tinyinfer's Numba path and
    ONNX Runtime, so the report shows what int8 buys on each engine; the two are called in turn
    (:func:`time_in_turn`), so load on the machine cannot favour one of them.
    """
    import onnx

    from ..compress.qdq import float_twin, is_qdq_model
    from ..frontend import to_onnx

    graph = load(model)
    proto = model if isinstance(model, onnx.ModelProto) else to_onnx(graph)
    if isinstance(model, (str, os.PathLike)):
        proto = onnx.load(os.fspath(model))
    session = InferenceSession(graph)
    feeds = random_feeds(session.get_inputs(), seed=seed, dims=dims)
    expected = session.run(None, feeds)

    def timed(label: str, run: Callable[[], Any], twin: tuple[str, Callable[[], Any]] | None = None
              ) -> list[EngineResult]:
        """The engine's result; with ``twin`` (label, run) also the float twin's, timed in turn with it."""
        engines = [(label, run, "")] + ([] if twin is None else [(*twin, "QDQ removed")])
        times = time_in_turn([call for _, call, _ in engines], repeat=repeat, warmup=warmup, budget_s=budget_s,
                             progress=progress, desc=label)
        return [EngineResult(name, ms, max_abs_diff=_max_diff(expected, call()), note=note)
                for (name, call, note), ms in zip(engines, times)]

    results = [EngineResult("tinyinfer (reference)",
                            time_calls(lambda: session.run(None, feeds), repeat=repeat, warmup=warmup, budget_s=budget_s,
                                       progress=progress, desc="tinyinfer"))]
    twin = float_twin(proto) if is_qdq_model(proto) else None
    if numba:
        fast = InferenceSession(graph, backend="numba", threads=threads or None)
        fast_twin = None if twin is None else InferenceSession(twin, backend="numba", threads=threads or None)
        results += timed("tinyinfer (numba)", lambda: fast.run(None, feeds),
                         None if fast_twin is None
                         else ("tinyinfer fp32 twin (numba)", lambda: fast_twin.run(None, feeds)))
    try:
        import onnxruntime as ort
    except ImportError:
        results.append(EngineResult("onnxruntime", [], note="not installed (pip install tinyinfer[dev])"))
    else:
        ort_session = _ort_session(proto, threads)
        ort_twin = None if twin is None else _ort_session(twin, threads)
        results += timed(f"onnxruntime {ort.__version__}", lambda: ort_session.run(None, feeds),
                         None if ort_twin is None else ("onnxruntime fp32 twin", lambda: ort_twin.run(None, feeds)))
    if onnx_reference:
        from onnx.reference import ReferenceEvaluator

        evaluator = ReferenceEvaluator(proto)
        results.append(EngineResult("onnx.reference",
                                    time_calls(lambda: evaluator.run(None, feeds), repeat=repeat, warmup=0,
                                               budget_s=budget_s, progress=progress, desc="onnx.reference"),
                                    max_abs_diff=_max_diff(expected, evaluator.run(None, feeds))))
    name = os.fspath(model) if isinstance(model, (str, os.PathLike)) else graph.name
    shapes = {k: list(v.shape) for k, v in feeds.items()}
    return BenchReport(name, shapes, results, blas=blas_info())


def _max_diff(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return max(
        (float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)))) if np.size(x) else 0.0)
        for x, y in zip(a, b)
    )


def _ort_session(model, threads: int, *, profile_prefix: str | None = None):
    """An ONNX Runtime CPU session with ``threads`` intra-op threads (0: its default) and,
    when a count is given, one inter-op thread: the graph's nodes run one after another, as
    tinyinfer runs them, each using ``threads`` cores. ``model`` is a ModelProto, its bytes or
    a file path; with ``profile_prefix`` ONNX Runtime traces every node run into a JSON file there."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    options.log_severity_level = 3  # errors only: not a warning per unused initializer of the light models
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if isinstance(model, (str, os.PathLike)):
        data = os.fspath(model)
    else:
        data = model if isinstance(model, bytes) else model.SerializeToString()
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


# ============================================================================ the suite
@dataclasses.dataclass
class EngineRun:
    """One engine on one row of the suite: timings, agreement with the reference, notes."""

    engine: str
    times_ms: list[float] = dataclasses.field(default_factory=list)
    warmup_s: float | None = None  # session creation + first run (Numba compile, kernel selection)
    max_abs_diff: float | None = None  # against tinyinfer's reference path (None for the reference)
    agrees: bool | None = None
    blas_threads: int | None = None  # NumPy's BLAS threads while the engine ran
    kernels: str = ""  # Numba: how many nodes run on a kernel rather than the reference op
    error: str = ""
    outputs: list | None = dataclasses.field(default=None, repr=False)  # the reference's, for the batch check

    @property
    def median_ms(self) -> float:
        return statistics.median(self.times_ms) if self.times_ms else float("nan")

    @property
    def best_ms(self) -> float:
        return min(self.times_ms) if self.times_ms else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {
            "median_ms": _finite(self.median_ms), "best_ms": _finite(self.best_ms), "runs": len(self.times_ms),
            "times_ms": self.times_ms, "warmup_s": self.warmup_s, "max_abs_diff": self.max_abs_diff,
            "agrees": self.agrees, "blas_threads": self.blas_threads, "kernels": self.kernels, "error": self.error,
        }


@dataclasses.dataclass
class SuiteRow:
    """One model at one batch size and thread count."""

    model: str
    batch: int
    threads: int
    status: str = "ok"  # ok | fixed batch | mismatch | error
    engines: dict[str, EngineRun] = dataclasses.field(default_factory=dict)
    note: str = ""

    def ratio(self, numerator: str, denominator: str) -> float:
        """Median time of one engine over another's (nan when either is missing)."""
        a, b = self.engines.get(numerator), self.engines.get(denominator)
        if a is None or b is None or not a.times_ms or not b.times_ms:
            return float("nan")
        return a.median_ms / b.median_ms

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "batch": self.batch, "threads": self.threads, "status": self.status,
            "note": self.note, "engines": {name: run.to_dict() for name, run in self.engines.items()},
            "numba_over_onnxruntime": _finite(self.ratio("numba", "onnxruntime")),
            "reference_over_numba": _finite(self.ratio("reference", "numba")),
        }


@dataclasses.dataclass
class SuiteReport:
    rows: list[SuiteRow]
    machine: dict[str, Any]
    settings: dict[str, Any]

    @property
    def errors(self) -> list[str]:
        """What must not pass silently: an engine that failed, Numba disagreeing with the
        reference, a batch-N model whose images do not match the same images at batch 1."""
        found = []
        for row in self.rows:
            where = f"{row.model} batch {row.batch} threads {row.threads}"
            if row.status in ("error", "mismatch") and row.note:
                found.append(f"{where}: {row.note}")
            for run in row.engines.values():
                if run.error:
                    found.append(f"{where}: {run.engine} failed: {run.error}")
                elif run.engine == "numba" and run.agrees is False:
                    found.append(f"{where}: numba disagrees with the reference (max |diff| {run.max_abs_diff:.3g}, "
                                 f"tolerance rtol {RTOL:g}, atol {ATOL_SCALE:g} x max|ref|)")
        return found

    @property
    def warnings(self) -> list[str]:
        """ONNX Runtime disagreeing with tinyinfer's reference: worth a look, not an error of
        the Numba path (opset-9 models have a few ops ONNX Runtime reads another way)."""
        return [f"{row.model} batch {row.batch} threads {row.threads}: onnxruntime differs from the reference "
                f"(max |diff| {row.engines['onnxruntime'].max_abs_diff:.3g})"
                for row in self.rows if "onnxruntime" in row.engines and row.engines["onnxruntime"].agrees is False]

    def table(self) -> str:
        engines = self.settings.get("engines", ENGINES)
        short = {"reference": "ref", "numba": "numba", "onnxruntime": "ORT"}
        name_w = max([len(r.model) for r in self.rows] + [5])
        header = (f"{'model':<{name_w}} {'batch':>5} {'thr':>3} "
                  + "".join(f"{short.get(e, e) + ' ms':>13}" for e in engines)
                  + f"{'numba/ORT':>10}{'ref/numba':>10}  {'warm-up s':<16}{'max |diff|':<16}note")
        lines = [self._header(), header]
        for row in self.rows:
            cells = [f"{row.model:<{name_w}} {row.batch:>5} {row.threads:>3} "]
            for e in engines:
                run = row.engines.get(e)
                cells.append(f"{_ms(run):>13}")
            cells.append(f"{_ratio(row.ratio('numba', 'onnxruntime')):>10}{_ratio(row.ratio('reference', 'numba')):>10}  ")
            warm = "/".join("-" if row.engines.get(e) is None or row.engines[e].warmup_s is None
                            else f"{row.engines[e].warmup_s:.1f}" for e in engines)
            diffs = "/".join(_diff(row.engines.get(e)) for e in engines if e != "reference")
            note = row.note if row.status == "ok" else f"{row.status.upper()}: {row.note}" if row.note else row.status.upper()
            kernels = row.engines["numba"].kernels if "numba" in row.engines else ""
            cells.append(f"{warm:<16}{diffs:<16}{'; '.join(x for x in (note, kernels) if x)}")
            lines.append("".join(cells))
        lines.extend(self._summary())
        lines.append(
            "ms: median of the timed runs. numba/ORT < 1: tinyinfer's Numba path is faster than ONNX Runtime; "
            "ref/numba: the Numba path's speed-up over the NumPy reference. warm-up: session creation + first "
            "run (Numba compile and kernel selection, as the on-disk caches were), excluded from ms. max |diff|: "
            f"against the reference, tolerance rtol {RTOL:g}, atol {ATOL_SCALE:g} x max|ref| ('!': outside it). "
            "warm-up s and max |diff| list the engines in the column order; 'kernels on': nodes the Numba "
            "path runs on a Numba kernel rather than the NumPy reference op."
        )
        return "\n".join(lines)

    def _header(self) -> str:
        m, s = self.machine, self.settings
        return (f"machine: {m.get('cpu', '?')}, {m.get('cores', '?')} cores; numpy BLAS: {m.get('blas') or 'unknown'}; "
                f"numba {m.get('numba', '?')} ({m.get('numba_threading_layer', '?')} threads); "
                f"onnxruntime {m.get('onnxruntime', '-')}; load average {m.get('load_average_before', ['?'])[0]} "
                f"before, {m.get('load_average', ['?'])[0]} after ({s.get('seconds', '?')} s)\n"
                f"BLAS threads pinned to the row's thread count for: {', '.join(s.get('pin_blas', ())) or 'none'}; "
                f"repeat {s.get('repeat')}, budget {s.get('budget_s')} s per engine and row, kernel selection "
                f"'{s.get('select')}'")

    def _summary(self) -> list[str]:
        """Geometric means of the ratios over the rows whose status is ok, per batch and threads."""
        lines = []
        for batch in self.settings.get("batches", ()):
            for threads in self.settings.get("threads", ()):
                rows = [r for r in self.rows if r.batch == batch and r.threads == threads and r.status == "ok"]
                parts = []
                for label, a, b in (("numba/ORT", "numba", "onnxruntime"), ("ref/numba", "reference", "numba")):
                    ratios = [r.ratio(a, b) for r in rows if math.isfinite(r.ratio(a, b))]
                    if ratios:
                        parts.append(f"{label} {_geomean(ratios):.2f}x over {len(ratios)} models")
                if parts:
                    lines.append(f"geometric mean, batch {batch}, {threads} thread(s): " + ", ".join(parts))
        return lines

    def to_dict(self) -> dict[str, Any]:
        return {"machine": self.machine, "settings": self.settings, "rows": [r.to_dict() for r in self.rows],
                "errors": self.errors, "warnings": self.warnings}


def benchmark_suite(
    models: Iterable[Any],
    *,
    engines: Sequence[str] = ENGINES,
    threads: Sequence[int] = (1, 2),
    batches: Sequence[int] = (1, 8),
    repeat: int = 5,
    budget: float = 2.0,
    warmup: int = 1,
    seed: int = 0,
    select: str = "time",
    pin_blas: Sequence[str] = ("reference",),
    log: Callable[[str], None] | None = None,
) -> SuiteReport:
    """Time every model at every batch size and thread count on every engine, in one run.

    ``models`` holds ``onnx.ModelProto`` s, paths, or ``(name, model)`` pairs where ``model``
    may be a zero-argument function returning the ModelProto (loaded when its turn comes).
    ``engines`` is a subset of :data:`ENGINES`. Per row and engine: the session is created
    and run once (the ``warmup_s`` column), run ``warmup`` more times (unless that first run
    took longer than ``budget``), then timed up to ``repeat`` times or until ``budget``
    seconds have passed (at least once). Each engine's
    outputs are compared with the reference path's (:data:`RTOL`, :data:`ATOL_SCALE`).
    ``pin_blas`` lists the engines that run with NumPy's BLAS limited to the row's thread
    count (threadpoolctl); the others run with BLAS as the process has it.

    Batch sizes above 1 need a batch dimension: a model whose inputs have a fixed leading
    1 goes through :func:`with_batch_dim`; if that cannot be done the row says "fixed batch".
    The inputs of a smaller batch are the first images of the largest, so each batch-N
    result is also checked against the batch-1 result on the same images.
    """
    unknown = [e for e in engines if e not in ENGINES]
    if unknown or "reference" not in engines:
        raise TinyInferError(f"engines must include 'reference' and come from {ENGINES}, got {list(engines)}")
    if not threads or not batches or min(threads) < 1 or min(batches) < 1:
        raise TinyInferError(f"thread counts and batch sizes must be >= 1, got {list(threads)} and {list(batches)}")
    log = log or (lambda message: None)
    settings = {"engines": list(engines), "threads": list(threads), "batches": list(batches), "repeat": repeat,
                "budget_s": budget, "warmup": warmup, "seed": seed, "select": select, "pin_blas": list(pin_blas),
                "rtol": RTOL, "atol_scale": ATOL_SCALE}
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    started = time.perf_counter()
    rows: list[SuiteRow] = []
    for name, loader in _model_items(models):
        rows.extend(_suite_model(name, loader, engines, threads, batches, repeat, budget, warmup, seed, select,
                                 pin_blas, log))
    machine = machine_info()  # after the runs: the threading layer Numba started is known by then
    if load_before is not None:
        machine["load_average_before"] = [round(x, 2) for x in load_before]
    settings["seconds"] = round(time.perf_counter() - started, 1)
    return SuiteReport(rows, machine, settings)


def _suite_model(name, loader, engines, threads, batches, repeat, budget, warmup, seed, select, pin_blas, log):
    started = time.perf_counter()
    try:
        model = loader() if callable(loader) else loader
        model = _as_proto(model)
        batched, batch_note = with_batch_dim(model)
    except Exception as exc:  # noqa: BLE001  (one broken model must not hide the others)
        return [SuiteRow(name, b, t, "error", note=f"cannot load: {_describe(exc)}") for b in batches for t in threads]
    log(f"{name}: loaded in {time.perf_counter() - started:.1f} s" + (f" ({batch_note})" if batch_note else ""))
    largest = max(batches)
    feeds_all = _suite_feeds(batched if batched is not None else model, largest if batched is not None else 1, seed)
    rows, small = [], None  # small: (batch, reference outputs) of the smallest batch, for the batch check
    for batch in sorted(batches):
        for count in threads:
            if batch > 1 and batched is None:
                rows.append(SuiteRow(name, batch, count, "fixed batch", note=batch_note))
                continue
            feeds = {k: (v[:batch] if k in feeds_all.batched else v) for k, v in feeds_all.arrays.items()}
            # Batch 1 runs the model as given; larger batches the batch-N copy, which the
            # batch check below then holds to the original's results.
            runnable = model if batch == 1 or batched is None else batched
            row = _suite_row(name, runnable, feeds, batch, count, engines, repeat, budget, warmup, select, pin_blas)
            if batch_note and batch > 1 and row.status == "ok":
                row.note = batch_note
            reference = row.engines.get("reference")
            if reference is not None and reference.outputs is not None:
                if small is None:
                    small = (batch, reference.outputs)
                elif batch > small[0]:
                    _check_batch(row, small, reference.outputs)
                reference.outputs = None
            rows.append(row)
            log(_row_line(row))
    return rows


def _suite_row(name, model, feeds, batch, threads, engines, repeat, budget, warmup, select, pin_blas) -> SuiteRow:
    row = SuiteRow(name, batch, threads)
    expected = None
    for engine in engines:
        run = EngineRun(engine)
        row.engines[engine] = run
        if engine != "reference" and expected is None:
            run.error = "not run: the reference failed"
            continue
        limit = _blas_limit(threads) if engine in pin_blas else contextlib.nullcontext()
        try:
            with limit:
                started = time.perf_counter()
                call, session = _engine_call(engine, model, feeds, threads, select)
                outputs = call()
                run.warmup_s = time.perf_counter() - started
                run.blas_threads = blas_threads()
                # A first run longer than the budget has warmed the caches well enough.
                extra = warmup if run.warmup_s <= budget else 0
                run.times_ms = time_calls(call, repeat=repeat, warmup=extra, budget_s=budget)
        except Exception as exc:  # noqa: BLE001  (reported in the row and as an error of the suite)
            run.error = _describe(exc)
            row.status = "error"
            continue
        if engine == "reference":
            expected = [np.asarray(o) for o in outputs]
            run.outputs = expected  # for the batch check; removed once used
            continue
        run.max_abs_diff, run.agrees = compare_outputs(outputs, expected)
        if engine == "numba":
            records = session.profile().records
            run.kernels = f"kernels on {sum(r.kernel != 'reference' for r in records)}/{len(records)} nodes"
            if not run.agrees:
                row.status = "mismatch"
    return row


def _engine_call(engine: str, model, feeds, threads: int, select: str):
    """``(call, session)``: a function running the model once on the feeds, on one engine."""
    if engine == "onnxruntime":
        session = _ort_session(model, threads)
        return (lambda: session.run(None, feeds)), session
    if engine == "numba":
        session = InferenceSession(model, backend="numba", threads=threads, select=select)
    else:
        session = InferenceSession(model, backend="reference")
    return (lambda: session.run(None, feeds)), session


def compare_outputs(got: Sequence[Any], expected: Sequence[np.ndarray]) -> tuple[float, bool]:
    """``(max |diff|, agrees)`` of an engine's outputs against the reference's.

    Float outputs agree within ``RTOL * |ref| + ATOL_SCALE * max|ref|`` (the absolute part
    scaled by each output's largest value, so logits in the hundreds and probabilities
    below one are held to the same relative standard); other outputs must be equal.
    """
    worst, agrees = 0.0, len(got) == len(expected)
    for a, b in zip(got, expected):
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape:
            return float("inf"), False
        if not b.size:
            continue
        diff = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))
        worst = max(worst, diff)
        if b.dtype.kind in "fc":
            scale = float(np.max(np.abs(b)))
            agrees = agrees and bool(np.allclose(a, b, rtol=RTOL, atol=ATOL_SCALE * scale, equal_nan=True))
        else:
            agrees = agrees and bool(np.array_equal(a, b))
    return worst, agrees


def _check_batch(row: SuiteRow, small: tuple[int, list], outputs: list[np.ndarray]) -> None:
    """The first images of a batch-N run must give the batch-1 run's outputs."""
    size, expected = small
    firsts = [o[:size] if o.ndim and o.shape[0] == row.batch else o for o in outputs]
    diff, agrees = compare_outputs(firsts, expected)
    if not agrees:
        row.status = "error"
        row.note = (f"the first {size} image(s) at batch {row.batch} differ from batch {size} "
                    f"(max |diff| {diff:.3g}): the batch dimension is not independent")


def _row_line(row: SuiteRow) -> str:
    times = ", ".join(f"{e} {_ms(r).strip()} ms" for e, r in row.engines.items())
    return f"{row.model} batch {row.batch} threads {row.threads}: {row.status}" + (f"; {times}" if times else "")


# ============================================================================ batch dimension
def with_batch_dim(model, symbol: str = BATCH_SYMBOL):
    """``(model, note)``: the model with a symbolic leading (batch) dimension, or ``(None, why)``.

    A model whose inputs already start with a symbolic dimension comes back as it is. One
    exported at batch 1 (every input ``[1, ...]``, as the light models are) gets ``symbol``
    as the first dimension of its inputs and outputs, its intermediate shape annotations
    dropped, and every Reshape whose constant target shape starts with 1 rewritten to
    start with 0 (ONNX: "copy this dimension from the input"). The result is accepted only
    if shape inference at batch 2 gives every output a leading 2; otherwise the model hard
    codes batch 1 somewhere else (a Tile, an Expand, a Reshape that folds the batch into
    another axis) and the note says so.
    """
    import onnx
    from onnx import numpy_helper

    initializer_names = {t.name for t in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in initializer_names]
    firsts = [_first_dim(v) for v in inputs]
    if inputs and all(isinstance(d, str) and d for d in firsts):
        return model, ""
    if not inputs or any(d != 1 for d in firsts):
        return None, "fixed batch: the inputs do not start with a batch dimension of 1"
    result = onnx.ModelProto()
    result.CopyFrom(model)
    graph = result.graph
    for value in [v for v in graph.input if v.name not in initializer_names] + list(graph.output):
        dims = value.type.tensor_type.shape.dim
        if len(dims) and dims[0].HasField("dim_value") and dims[0].dim_value == 1:
            dims[0].Clear()
            dims[0].dim_param = symbol
    del graph.value_info[:]
    constants = {t.name: t for t in graph.initializer}
    constants.update({n.output[0]: n.attribute[0].t for n in graph.node
                      if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"})
    rewritten = 0
    for node in graph.node:
        if node.op_type != "Reshape" or len(node.input) < 2 or node.input[1] not in constants:
            continue
        if node.input[0] in constants or any(a.name == "allowzero" and a.i for a in node.attribute):
            continue
        shape = numpy_helper.to_array(constants[node.input[1]])
        if shape.ndim != 1 or not shape.size or shape[0] != 1:
            continue
        batched = shape.copy()
        batched[0] = 0
        name = f"{node.input[1]}__batch"
        if name not in constants:
            graph.initializer.append(numpy_helper.from_array(batched, name))
            constants[name] = graph.initializer[-1]
        node.input[1] = name
        rewritten += 1
    why = _batch_problem(result, symbol)
    if why:
        return None, f"fixed batch: {why}"
    return result, (f"batch-N copy, {rewritten} Reshape [1,..] -> [0,..]" if rewritten else "batch-N copy")


def _first_dim(value):
    dims = value.type.tensor_type.shape.dim
    if not len(dims):
        return None
    return dims[0].dim_param if dims[0].HasField("dim_param") else dims[0].dim_value


def _batch_problem(model, symbol: str) -> str:
    """Why the model does not run at batch 2 with every output batch-2 ('' if it does)."""
    from .. import ops

    try:
        graph = load(model)
        given = {v.name: Value(v.name, v.dtype, tuple(2 if d == symbol else d for d in v.shape))
                 for v in graph.inputs if v.shape is not None}
        values = ops.infer_shapes(graph, given)
    except TinyInferError as exc:
        return f"shape inference at batch 2 fails ({_describe(exc)})"
    for output in graph.outputs:
        shape = values[output.name].shape if output.name in values else None
        if not shape or shape[0] != 2:
            return f"output '{output.name}' is {list(shape) if shape else '?'} at batch 2"
    return ""


def _suite_feeds(model, batch: int, seed: int) -> _Feeds:
    """Random feeds at ``batch``; inputs whose leading dim is symbolic get that size."""
    from onnx import helper

    initializer_names = {t.name for t in model.graph.initializer}
    args, batched, dims = [], set(), {}
    for value in model.graph.input:
        if value.name in initializer_names:
            continue
        tensor = value.type.tensor_type
        shape = [d.dim_param if d.HasField("dim_param") else (d.dim_value if d.HasField("dim_value") else "?")
                 for d in tensor.shape.dim]
        if shape and isinstance(shape[0], str):
            dims[shape[0]] = batch
            batched.add(value.name)
        args.append(_Arg(value.name, shape, helper.tensor_dtype_to_np_dtype(tensor.elem_type)))
    return _Feeds(random_feeds(args, seed=seed, dims=dims), batched)


@dataclasses.dataclass
class _Feeds:
    arrays: dict[str, np.ndarray]
    batched: set[str]  # inputs whose first dimension is the batch


@dataclasses.dataclass
class _Arg:
    name: str
    shape: list
    dtype: Any


# ============================================================================ the figure
def write_suite_figure(report: SuiteReport, path: str | os.PathLike) -> None:
    """A log-scale dot plot: milliseconds per model (rows) and engine (markers), one panel per
    batch size and thread count. Fixed-batch and failed rows are marked in words."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    engines = report.settings.get("engines", ENGINES)
    panels = [(b, t) for b in report.settings.get("batches", ()) for t in report.settings.get("threads", ())]
    models = list(dict.fromkeys(r.model for r in report.rows))
    style = {"reference": ("o", "#9e9e9e", "tinyinfer reference (NumPy)"),
             "numba": ("s", "#d95f02", "tinyinfer numba"),
             "onnxruntime": ("^", "#1b3a6b", "ONNX Runtime")}
    height = max(3.0, 0.32 * len(models) + 1.6)
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels) + 1.8, height), sharey=True, squeeze=False)
    finite = [r.engines[e].median_ms for r in report.rows for e in r.engines if r.engines[e].times_ms]
    low, high = (min(finite) / 1.5, max(finite) * 1.5) if finite else (0.1, 10.0)
    for ax, (batch, threads) in zip(axes[0], panels):
        for y, model in enumerate(models):
            row = next((r for r in report.rows if r.model == model and r.batch == batch and r.threads == threads), None)
            if row is None:
                continue
            if row.status == "fixed batch" or not any(run.times_ms for run in row.engines.values()):
                ax.text(low * 1.1, y, row.status, va="center", fontsize=7, color="#777777")
                continue
            for engine in engines:
                run = row.engines.get(engine)
                if run is not None and run.times_ms:
                    marker, color, _ = style.get(engine, ("x", "black", engine))
                    ax.plot(run.median_ms, y, marker, color=color, markersize=6, alpha=0.9)
            if row.status in ("error", "mismatch"):
                ax.text(high / 1.1, y, row.status, va="center", ha="right", fontsize=7, color="#b00000")
        ax.set_xscale("log")
        ax.set_xlim(low, high)
        ax.set_title(f"batch {batch}, {threads} thread{'s' if threads > 1 else ''}", fontsize=10)
        ax.set_xlabel("ms per run (median)")
        ax.grid(True, axis="x", which="major", alpha=0.3)
        ax.grid(True, axis="y", alpha=0.15)
    axes[0][0].set_yticks(range(len(models)))
    axes[0][0].set_yticklabels(models, fontsize=8)
    axes[0][0].invert_yaxis()
    handles = [plt.Line2D([], [], marker=style[e][0], color=style[e][1], linestyle="", label=style[e][2])
               for e in engines if e in style]
    fig.legend(handles=handles, loc="upper center", ncol=len(handles), frameon=False, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / height))
    os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ============================================================================ helpers
def machine_info() -> dict[str, Any]:
    """What the numbers were measured on: CPU, cores, BLAS, Numba and ONNX Runtime versions."""
    info: dict[str, Any] = {"python": platform.python_version(), "numpy": np.__version__, "blas": blas_info()}
    if hasattr(os, "getloadavg"):
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]  # other work on the machine
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        info["cpu"] = platform.processor() or platform.machine()
    info["cores"] = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        import numba

        info["numba"] = numba.__version__
        try:
            info["numba_threading_layer"] = numba.threading_layer()
        except ValueError:  # no parallel function has run yet
            info["numba_threading_layer"] = f"not started (config {numba.config.THREADING_LAYER})"
    except ImportError:
        pass
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    info["env"] = {k: v for k, v in os.environ.items()
                   if k.startswith(("OPENBLAS", "OMP_", "MKL_", "NUMBA_", "TINYINFER_"))}
    return info


def blas_threads() -> int | None:
    """The thread count of NumPy's BLAS right now (None without threadpoolctl)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    counts = [p.get("num_threads") for p in threadpool_info() if p.get("user_api") == "blas"]
    return counts[0] if counts else None


def _blas_limit(threads: int):
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=threads, user_api="blas")


def _model_items(models: Iterable[Any]):
    for item in models:
        if isinstance(item, tuple):
            yield item
        elif isinstance(item, (str, os.PathLike)):
            yield os.fspath(item), item
        else:
            yield getattr(getattr(item, "graph", None), "name", None) or "model", item


def _as_proto(model):
    import onnx

    if isinstance(model, onnx.ModelProto):
        return model
    if isinstance(model, (str, os.PathLike)):
        return onnx.load(os.fspath(model))
    from ..frontend import to_onnx

    return to_onnx(load(model))


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300] if text else ''}"


def _ms(run: EngineRun | None) -> str:
    if run is None or not run.times_ms:
        return "-" if run is None or not run.error else "failed"
    return f"{run.median_ms:.1f}" if run.median_ms >= 10 else f"{run.median_ms:.2f}"


def _ratio(value: float) -> str:
    return f"{value:.2f}x" if math.isfinite(value) else "-"


def _diff(run: EngineRun | None) -> str:
    if run is None or run.max_abs_diff is None:
        return "-"
    return f"{run.max_abs_diff:.0e}" + ("!" if run.agrees is False else "")


def _geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None
