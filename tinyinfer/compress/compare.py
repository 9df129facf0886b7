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

    rows = compare_with_onnxruntime(["light:squeezenet", "light:resnet50"], 16)
    print(format_table(rows))
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import onnx

from .ptq import ListDataReader, quantize_static, random_normal_reader


@dataclasses.dataclass
class ComparisonRow:
    """One quantized model: who quantized it, how, and what it measured."""

    model: str
    quantizer: str
    snr_ort: float  # dB, run by ONNX Runtime
    snr_tinyinfer: float | None  # dB, run by tinyinfer
    size_mib: float
    latency_ort_ms: float
    latency_tinyinfer_ms: float | None


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

    ``models``: ``light:NAME`` specs, ``.onnx`` paths or ModelProtos. ``calib``: the number
    of random-normal calibration samples (seed 0), or a list of feed dicts used for every
    model. ``configurations``: keyword sets for :func:`quantize_static` (default: per-channel
    with each of minmax, percentile, mse, entropy), each giving one tinyinfer row.
    Held-out inputs are ``eval_samples`` random-normal feeds (seed 1).
    """
    configurations = list(configurations or [{"method": m} for m in ("minmax", "percentile", "mse", "entropy")])
    rows: list[ComparisonRow] = []
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(workdir or scratch)
        folder.mkdir(parents=True, exist_ok=True)
        for spec in models:
            name, model = _load(spec)
            fp32_path = folder / f"{name}_fp32.onnx"
            onnx.save(model, str(fp32_path))
            feeds = _feeds(model, calib)
            held_out = random_normal_reader(model, eval_samples, seed=1).feeds
            reference = _run_ort(str(fp32_path), held_out)
            ort_path = folder / f"{name}_ort.onnx"
            _quantize_with_onnxruntime(fp32_path, ort_path, feeds, folder)
            rows.append(_measure(name, "onnxruntime (minmax)", ort_path, held_out, reference, repeats,
                                 tinyinfer_backend, threads, run_tinyinfer=True))
            for options in configurations:
                label = ", ".join(f"{v}" if k == "method" else f"{k}" for k, v in options.items() if v)
                path = folder / f"{name}_tinyinfer_{'_'.join(str(v) for v in options.values())}.onnx"
                quantize_static(fp32_path, path, ListDataReader(feeds), per_channel=True, progress=progress, **options)
                rows.append(_measure(name, f"tinyinfer ({label})", path, held_out, reference, repeats,
                                     tinyinfer_backend, threads, run_tinyinfer=True))
    return rows


def format_table(rows: list[ComparisonRow]) -> str:
    """The rows as a fixed-width text table."""
    lines = [f"{'model':<12} {'quantizer':<44} {'SNR ORT':>8} {'SNR ti':>8} {'MiB':>7} {'ORT ms':>8} {'ti ms':>9}"]
    for row in rows:
        ti_snr = "-" if row.snr_tinyinfer is None else f"{row.snr_tinyinfer:.2f}"
        ti_ms = "-" if row.latency_tinyinfer_ms is None else f"{row.latency_tinyinfer_ms:.1f}"
        lines.append(
            f"{row.model:<12} {row.quantizer:<44} {row.snr_ort:>8.2f} {ti_snr:>8} {row.size_mib:>7.2f} "
            f"{row.latency_ort_ms:>8.1f} {ti_ms:>9}"
        )
    return "\n".join(lines)


def snr_db(reference: list[np.ndarray], approximation: list[np.ndarray]) -> float:
    """``10·log10(Σ y² / Σ (y − ŷ)²)`` over all outputs of all samples."""
    signal = sum(float(np.sum(np.asarray(y, np.float64) ** 2)) for y in reference)
    noise = sum(float(np.sum((np.asarray(y, np.float64) - np.asarray(q, np.float64)) ** 2))
                for y, q in zip(reference, approximation))
    return float("inf") if noise == 0 else 10.0 * np.log10(signal / noise)


# ---------------------------------------------------------------------------- helpers
def _load(spec: Any) -> tuple[str, onnx.ModelProto]:
    from onnx import version_converter

    if isinstance(spec, onnx.ModelProto):
        name, model = spec.graph.name or "model", spec
    elif isinstance(spec, str) and spec.startswith("light:"):
        from ..models.light import load_light_model

        name = spec.split(":", 1)[1]
        model = load_light_model(name)
    else:
        name, model = Path(spec).stem, onnx.load(str(spec))
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 17:
        model = version_converter.convert_version(model, 17)
    return name, model


def _feeds(model: onnx.ModelProto, calib: Any) -> list[dict[str, np.ndarray]]:
    if isinstance(calib, int):
        return random_normal_reader(model, calib, seed=0).feeds
    return [dict(f) for f in calib]


def _quantize_with_onnxruntime(fp32_path: Path, out_path: Path, feeds: list[dict], folder: Path) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static as ort_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.iterator = iter(feeds)

        def get_next(self):
            return next(self.iterator, None)

    prepared = folder / f"{fp32_path.stem}_ort_pre.onnx"
    quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
    ort_static(str(prepared), str(out_path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
               activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)


def _ort_session(path: str, threads: int = 0):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def _run_ort(path: str, feeds: list[dict], threads: int = 0) -> list[np.ndarray]:
    session = _ort_session(path, threads)
    return [session.run(None, f)[0] for f in feeds]


def _measure(model: str, quantizer: str, path: Path, feeds: list[dict], reference: list[np.ndarray], repeats: int,
             backend: str, threads: int, *, run_tinyinfer: bool) -> ComparisonRow:
    from ..runtime import InferenceSession

    session = _ort_session(str(path), threads)
    outputs = [session.run(None, f)[0] for f in feeds]
    latency_ort = _median_ms(lambda: session.run(None, feeds[0]), repeats)
    snr_tinyinfer = latency_tinyinfer = None
    if run_tinyinfer:
        ours = InferenceSession(str(path), backend=backend, threads=threads)
        snr_tinyinfer = snr_db(reference, [ours.run(None, f)[0] for f in feeds])
        latency_tinyinfer = _median_ms(lambda: ours.run(None, feeds[0]), repeats)
    return ComparisonRow(model, quantizer, snr_db(reference, outputs), snr_tinyinfer,
                         os.path.getsize(path) / 2**20, latency_ort, latency_tinyinfer)


def _median_ms(run, repeats: int) -> float:
    run()  # warm-up (plans, kernel selection, Numba compilation)
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


if __name__ == "__main__":  # python -m tinyinfer.compress.compare [light:NAME ...]
    import sys

    specs = sys.argv[1:] or ["light:squeezenet", "light:shufflenet", "light:resnet50"]
    print(format_table(compare_with_onnxruntime(specs, 16)))
