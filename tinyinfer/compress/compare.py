"""tinyinfer's static quantizer side by side with ONNX Runtime's, on the same model and data.

:func:`compare_with_onnxruntime` sends one fp32 model and one calibration set through both
quantizers and measures what a user cares about, in one run:

* **output SNR against fp32** (dB): ``10·log10(Σ y² / Σ (y − ŷ)²)`` over held-out inputs,
  ``y`` the fp32 model's output and ``ŷ`` the quantized model's, both run by ONNX Runtime
  (and the tinyinfer model also by tinyinfer);
* **file size** of each quantized model;
* **latency** of each quantized model in ONNX Runtime and in tinyinfer (batch 1, median).

ONNX Runtime's side is its documented recipe: ``quant_pre_process`` (BatchNorm folding and
graph cleanup) then ``quantize_static`` with ``QuantFormat.QDQ``, ``per_channel=True``,
uint8 activations and int8 weights (U8S8), MinMax calibration — the same types tinyinfer
writes. Both see the same opset-17 fp32 model and the same calibration feeds.

ONNX Runtime's quantizer gets two rows. The first is its default, which also quantizes
Softmax and Sigmoid; tinyinfer keeps both in float (:data:`~.ptq.FLOAT_REASONS`). That matters
more than it seems: ONNX Runtime gives a Softmax output the fixed range [0, 1], a step of
1/255, and a network whose probabilities are all close to 1/1000 (any random-weight classifier)
then outputs mostly zeros, an SNR near 0 dB that says nothing about its convolutions. The
second row, ``onnxruntime (minmax, Softmax/Sigmoid in float)``, leaves exactly those op types
out (``op_types_to_quantize``), so both quantizers cover the same ops.

    rows = compare_with_onnxruntime(["light:squeezenet", "light:resnet50"], 16)
    print(format_table(rows))

:func:`compare_models` is the chapter's whole table (``tinyinfer quantize --compare``): for
each model the fp32 file, ONNX Runtime's quantized file and tinyinfer's (its default
options), with the fp32 latency that the int8/fp32 ratio divides by. Random-weight models
are calibrated on 16 random-normal images and compared on 8 others; the digits CNN
(``digits``) is calibrated on training images and compared by top-1 accuracy on its held-out
split, the measure that matters for a trained network.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import onnx

from ..runtime.bench import _ort_session
from .ptq import ListDataReader, quantize_static, random_normal_reader

#: Op types ONNX Runtime's quantizer quantizes by default and tinyinfer keeps in float: their
#: exponentials need float precision, and Softmax's output gets a fixed 1/255 step.
ORT_FLOAT_OPS = ("Softmax", "Sigmoid")
ORT_DEFAULT = "onnxruntime (minmax)"
ORT_SAME_OPS = "onnxruntime (minmax, Softmax/Sigmoid in float)"


@dataclasses.dataclass
class ComparisonRow:
    """One model file (fp32, or quantized by one quantizer) and what it measured.

    SNRs are in dB against the fp32 model's outputs (None for the fp32 row itself);
    accuracies are top-1 on a labelled held-out set, where the model has one (digits).
    """

    model: str
    quantizer: str
    snr_ort: float | None  # dB, run by ONNX Runtime
    snr_tinyinfer: float | None  # dB, run by tinyinfer
    size_mib: float
    latency_ort_ms: float
    latency_tinyinfer_ms: float | None
    accuracy_ort: float | None = None
    accuracy_tinyinfer: float | None = None


def compare_with_onnxruntime(
    models: Iterable[Any],
    calib: Any = 16,
    *,
    configurations: Iterable[dict] | None = None,
    eval_samples: int = 8,
    repeats: int = 3,
    tinyinfer_backend: str = "numba",
    threads: int = 2,
    workdir: str | os.PathLike | None = None,
    progress: bool = False,
) -> list[ComparisonRow]:
    """Quantize each model with ONNX Runtime's and tinyinfer's quantizer and measure both.

    ``models``: ``light:NAME`` / ``zoo:NAME`` specs, ``.onnx`` paths or ModelProtos. ``calib``:
    the number of random-normal calibration samples (seed 0), or a list of feed dicts used for
    every model. ``configurations``: keyword sets for :func:`quantize_static` (default:
    per-channel with each of minmax, percentile, mse, entropy and the other options at their
    defaults), each giving one tinyinfer row after ONNX Runtime's two rows.
    Held-out inputs are ``eval_samples`` random-normal feeds (seed 1).
    """
    configurations = list(configurations or [{"method": m} for m in ("minmax", "percentile", "mse", "entropy")])
    rows: list[ComparisonRow] = []
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(workdir or scratch)
        folder.mkdir(parents=True, exist_ok=True)
        for spec in models:
            name, model = load_model(spec)
            data = _random_data(model, calib, eval_samples)
            bench = _Bench(folder, name, data, repeats, tinyinfer_backend, threads)
            rows.extend(bench.onnxruntime_rows(model))
            for options in configurations:
                rows.append(bench.tinyinfer_row(model, options, progress)[0])
    return rows


@dataclasses.dataclass
class ModelComparison:
    """One model of :func:`compare_models`: its rows (fp32, onnxruntime, tinyinfer) or why it has none."""

    model: str
    rows: list[ComparisonRow] = dataclasses.field(default_factory=list)
    kept_float: dict[str, str] = dataclasses.field(default_factory=dict)  # op type -> why
    skipped: str = ""
    seconds: float = 0.0

    def row(self, quantizer: str) -> ComparisonRow | None:
        return next((r for r in self.rows if r.quantizer.startswith(quantizer)), None)

    def to_dict(self) -> dict:
        record = dataclasses.asdict(self)
        fp32, ours = self.row("fp32"), self.row("tinyinfer")
        if fp32 and ours:
            record["size_ratio"] = ours.size_mib / fp32.size_mib
            if ours.latency_tinyinfer_ms and fp32.latency_tinyinfer_ms:
                record["int8_over_fp32_tinyinfer"] = ours.latency_tinyinfer_ms / fp32.latency_tinyinfer_ms
        return record


def expand_specs(text: str) -> list[str]:
    """``"light:all,zoo:all,digits"`` -> every model spec those name, in order."""
    from ..models import list_models
    from ..models.light import LIGHT_MODELS

    sets = {"light:all": [f"light:{n}" for n in LIGHT_MODELS], "zoo:all": [f"zoo:{n}" for n in list_models()]}
    specs: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        if part:
            specs.extend(sets.get(part, [part]))
    return list(dict.fromkeys(specs))


def compare_models(
    specs: Iterable[str],
    *,
    options: dict | None = None,
    calib_samples: int = 16,
    eval_samples: int = 8,
    repeats: int = 5,
    tinyinfer_backend: str = "numba",
    threads: int = 2,
    on_result: Callable[[ModelComparison], None] | None = None,
) -> list[ModelComparison]:
    """The side-by-side table over many models: fp32, ONNX Runtime's quantizer (as it comes and
    with :data:`ORT_FLOAT_OPS` in float), tinyinfer's.

    ``options`` are :func:`quantize_static` keywords for tinyinfer's row (default: its own
    defaults). A model either quantizer or runtime cannot handle is kept with ``skipped``
    saying why, so one failure does not lose the others' rows. ``on_result`` is called with
    each model's result as soon as it is measured (to log it, or save the table so far).
    """
    results = []
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        for spec in specs:
            start = time.perf_counter()
            result = ModelComparison(spec)
            try:
                name, model = load_model(spec)
                data = _digits_data() if spec == "digits" else _random_data(model, calib_samples, eval_samples)
                bench = _Bench(folder, name, data, repeats, tinyinfer_backend, threads)
                result.rows.append(bench.fp32_row(model))
                result.rows.extend(bench.onnxruntime_rows(model))
                row, report = bench.tinyinfer_row(model, options or {}, False)
                result.rows.append(row)
                result.kept_float = {op: report.reasons.get(op, "") for op in sorted(report.kept_float)}
            except Exception as exc:  # noqa: BLE001 — any failure becomes the model's note in the table
                result.skipped = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            result.seconds = time.perf_counter() - start
            for path in folder.iterdir():
                path.unlink()
            results.append(result)
            if on_result:
                on_result(result)
    return results


def markdown_table(results: list[ModelComparison]) -> str:
    """The table of :func:`compare_models` in Markdown, one line per model and quantizer."""
    lines = [
        "| model | quantizer | SNR in ORT (dB) | SNR in tinyinfer (dB) | top-1 ORT / tinyinfer | MiB | size / fp32 "
        "| ORT ms | tinyinfer ms | tinyinfer / fp32 |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for result in results:
        if result.skipped:
            lines.append(f"| {result.model} | skipped: {result.skipped} | | | | | | | | |")
            continue
        fp32 = result.row("fp32")
        for row in result.rows:
            accuracy = ("" if row.accuracy_ort is None else
                        f"{100 * row.accuracy_ort:.2f} % / {100 * row.accuracy_tinyinfer:.2f} %")
            lines.append(
                f"| {result.model} | {row.quantizer} | {_number(row.snr_ort)} | {_number(row.snr_tinyinfer)} | {accuracy} "
                f"| {row.size_mib:.2f} | {row.size_mib / fp32.size_mib:.3f} | {row.latency_ort_ms:.1f} "
                f"| {_number(row.latency_tinyinfer_ms, 1)} | {_number(_ratio(row.latency_tinyinfer_ms, fp32.latency_tinyinfer_ms), 2)} |"
            )
    return "\n".join(lines)


def format_table(rows: list[ComparisonRow]) -> str:
    """The rows as a fixed-width text table."""
    lines = [f"{'model':<12} {'quantizer':<44} {'SNR ORT':>8} {'SNR ti':>8} {'MiB':>7} {'ORT ms':>8} {'ti ms':>9}"]
    for row in rows:
        lines.append(
            f"{row.model:<12} {row.quantizer:<44} {_number(row.snr_ort):>8} {_number(row.snr_tinyinfer):>8} "
            f"{row.size_mib:>7.2f} {row.latency_ort_ms:>8.1f} {_number(row.latency_tinyinfer_ms, 1):>9}"
        )
    return "\n".join(lines)


def snr_db(reference: list[np.ndarray], approximation: list[np.ndarray]) -> float:
    """``10·log10(Σ y² / Σ (y − ŷ)²)`` over all outputs of all samples."""
    signal = sum(float(np.sum(np.asarray(y, np.float64) ** 2)) for y in reference)
    noise = sum(float(np.sum((np.asarray(y, np.float64) - np.asarray(q, np.float64)) ** 2))
                for y, q in zip(reference, approximation))
    return float("inf") if noise == 0 else 10.0 * np.log10(signal / noise)


def load_model(spec: Any) -> tuple[str, onnx.ModelProto]:
    """(short name, fp32 model at opset ≥ 17) for a spec: ``light:NAME``, ``zoo:NAME``,
    ``digits`` (the trained digits CNN), an ``.onnx`` path or a ModelProto."""
    from onnx import version_converter

    if isinstance(spec, onnx.ModelProto):
        name, model = spec.graph.name or "model", spec
    elif isinstance(spec, str) and spec.startswith("light:"):
        from ..models.light import load_light_model

        name = spec.split(":", 1)[1]
        model = load_light_model(name)
    elif isinstance(spec, str) and spec.startswith("zoo:"):
        from ..models import build

        name = spec.split(":", 1)[1]
        model = build(name)
    elif spec == "digits":
        from ..models.digits import trained_digits_cnn

        name, model = "digits", trained_digits_cnn()
    else:
        name, model = Path(spec).stem, onnx.load(str(spec))
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 17:
        model = version_converter.convert_version(model, 17)
    return name, model


# ---------------------------------------------------------------------------- measuring
@dataclasses.dataclass
class _Data:
    """Calibration feeds, held-out feeds (their outputs are compared), the feed timed, labels."""

    calibration: list[dict[str, np.ndarray]]
    held_out: list[dict[str, np.ndarray]]
    timed: dict[str, np.ndarray]
    labels: np.ndarray | None = None


def _random_data(model: onnx.ModelProto, calib: Any, eval_samples: int) -> _Data:
    calibration = random_normal_reader(model, calib, seed=0).feeds if isinstance(calib, int) else [dict(f) for f in calib]
    held_out = random_normal_reader(model, eval_samples, seed=1).feeds
    return _Data(calibration, held_out, held_out[0])


def _digits_data(calibration_images: int = 128) -> _Data:
    """Training images to calibrate on (one per feed), the held-out split as one batch, its labels."""
    from .data import digits_split

    split = digits_split()
    calibration = [{"input": split.x_train[i:i + 1]} for i in range(min(calibration_images, len(split.x_train)))]
    return _Data(calibration, [{"input": split.x_test}], {"input": split.x_test[:1]}, split.y_test)


class _Bench:
    """Writes each model file of one comparison and measures it on the same data."""

    def __init__(self, folder: Path, name: str, data: _Data, repeats: int, backend: str, threads: int):
        self.folder, self.name, self.data = folder, name, data
        self.repeats, self.backend, self.threads = repeats, backend, threads
        self.fp32_path = folder / f"{name}_fp32.onnx"
        self.reference: list[np.ndarray] | None = None

    def fp32_row(self, model: onnx.ModelProto) -> ComparisonRow:
        self._save_fp32(model)
        return self._measure("fp32", self.fp32_path, compare=False)

    def onnxruntime_rows(self, model: onnx.ModelProto) -> list[ComparisonRow]:
        """ONNX Runtime's quantizer with its default op types, then without :data:`ORT_FLOAT_OPS`
        (the same file, measured once, when the model has none of them)."""
        self._save_fp32(model)
        prepared = _prepare_for_onnxruntime(self.fp32_path, self.folder)
        rows = []
        for label, keep_float in ((ORT_DEFAULT, ()), (ORT_SAME_OPS, ORT_FLOAT_OPS)):
            if keep_float and not any(node.op_type in keep_float for node in model.graph.node):
                rows.append(dataclasses.replace(rows[0], quantizer=label))
                continue
            path = self.folder / f"{self.name}_ort{'_'.join(('', *keep_float))}.onnx"
            _quantize_with_onnxruntime(prepared, path, self.data.calibration, keep_float)
            rows.append(self._measure(label, path))
        return rows

    def tinyinfer_row(self, model: onnx.ModelProto, options: dict, progress: bool):
        self._save_fp32(model)
        path = self.folder / f"{self.name}_tinyinfer_{'_'.join(str(v) for v in options.values())}.onnx"
        report = quantize_static(self.fp32_path, path, ListDataReader(self.data.calibration), per_channel=True,
                                 progress=progress, **options)
        label = f"tinyinfer ({', '.join([report.method, *report.techniques])})"
        return self._measure(label, path), report

    def _save_fp32(self, model: onnx.ModelProto) -> None:
        if self.reference is None:
            onnx.save(model, str(self.fp32_path))
            self.reference = _run_ort(str(self.fp32_path), self.data.held_out)

    def _measure(self, quantizer: str, path: Path, *, compare: bool = True) -> ComparisonRow:
        from ..runtime import InferenceSession

        data, labels = self.data, self.data.labels
        session = _ort_session(path, self.threads)
        theirs = [session.run(None, f)[0] for f in data.held_out]
        latency_ort = _median_ms(lambda: session.run(None, data.timed), self.repeats)
        engine = InferenceSession(str(path), backend=self.backend, threads=self.threads)
        ours = [engine.run(None, f)[0] for f in data.held_out]
        latency_ours = _median_ms(lambda: engine.run(None, data.timed), self.repeats)
        row = ComparisonRow(self.name, quantizer, snr_db(self.reference, theirs) if compare else None,
                            snr_db(self.reference, ours) if compare else None, os.path.getsize(path) / 2**20,
                            latency_ort, latency_ours)
        if labels is not None:
            row.accuracy_ort, row.accuracy_tinyinfer = _top1(theirs, labels), _top1(ours, labels)
        return row


def _top1(outputs: list[np.ndarray], labels: np.ndarray) -> float:
    predicted = np.concatenate([np.asarray(o).reshape(len(o), -1) for o in outputs]).argmax(axis=1)
    return float(np.mean(predicted == labels))


def _prepare_for_onnxruntime(fp32_path: Path, folder: Path) -> Path:
    """ONNX Runtime's documented preprocessing (shape inference, BatchNorm folding) of the fp32 file."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = folder / f"{fp32_path.stem}_ort_pre.onnx"
    quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
    return prepared


def _quantize_with_onnxruntime(prepared: Path, out_path: Path, feeds: list[dict], keep_float: Iterable[str] = ()) -> None:
    """ONNX Runtime's QDQ U8S8 per-channel MinMax quantizer; ``keep_float`` op types are left out
    of its default op types (those of its QLinear and QDQ registries, as its quantize_static takes)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static as ort_static
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.iterator = iter(feeds)

        def get_next(self):
            return next(self.iterator, None)

    op_types = sorted((set(QLinearOpsRegistry) | set(QDQRegistry)) - set(keep_float)) if keep_float else None
    ort_static(str(prepared), str(out_path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
               activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, op_types_to_quantize=op_types)


def _run_ort(path: str, feeds: list[dict], threads: int = 0) -> list[np.ndarray]:
    session = _ort_session(path, threads)
    return [session.run(None, f)[0] for f in feeds]


def _median_ms(run, repeats: int) -> float:
    """Median of ``repeats`` timed runs after one warm-up (plans, kernel selection, Numba compilation)."""
    from ..runtime.bench import time_calls

    return statistics.median(time_calls(run, repeat=repeats, warmup=1, budget_s=float("inf")))


def _number(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    return None if not numerator or not denominator else numerator / denominator
