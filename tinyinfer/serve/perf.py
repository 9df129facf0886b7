"""``tinyinfer perf``: load a running v2 inference server and measure it, as perf_analyzer does.

A serving system is judged by two numbers at once: how many inferences per second it
completes (throughput) and how long a request takes at the tail (p99 latency). They trade
against each other: more requests in flight keep the batcher's batches full and the cores
busy, so throughput rises, until every extra request only waits in the queue and latency
rises instead. The knee of that curve is where a service should run.

So the load generator sweeps **concurrency**, the number of requests kept in flight, like
Triton's ``perf_analyzer --concurrency-range``: for each level, N client threads each send a
request, wait for the answer, and send the next (a closed loop). After a warm-up, every
request finished inside a fixed measurement window is counted; throughput is the inferences
finished per second of window, latency the client-side time of each request (what a user
sees: network, queue, batch and compute together). perf_analyzer goes on measuring until
three windows agree within 10 %; here each level has one window, so give it a few seconds
(``window_s``) on a noisy machine. The server is reached through NVIDIA's
``tritonclient``, over HTTP (JSON tensors or Triton's binary tensor extension) or gRPC, so
any server that speaks the Open Inference Protocol v2 can be measured, Triton included.

Client threads share the machine with the server on a loopback test, and a Python client
costs CPU of its own: on a small machine, the highest levels measure the client too.
"""

from __future__ import annotations

import csv
import threading
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Sequence

import numpy as np

from tinyinfer.errors import PerfError
from tinyinfer.serve.routing import quantile

PROTOCOLS = ("http", "grpc")


@dataclass(frozen=True)
class LevelResult:
    """What one concurrency level measured (latencies in milliseconds)."""

    concurrency: int
    requests: int  # finished without error inside the window
    errors: int  # failed inside the window (refused, reset, or an error status)
    window_s: float
    throughput: float  # inferences per second: finished requests x batch size / window
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float


def sweep(url: str, model: str, concurrency: Sequence[int] = (1, 2, 4, 8, 16), protocol: str = "http",
          binary: bool = True, batch_size: int = 1, window_s: float = 2.0, warmup_s: float = 0.5,
          model_version: str = "", shapes: dict[str, list[int]] | None = None, seed: int = 0,
          progress=None) -> list[LevelResult]:
    """Measure ``model`` on the server at ``url`` (``host:port``) at each concurrency level.

    The inputs are random tensors of the model's inputs, read from its metadata: a variable
    dimension is ``batch_size`` on axis 0 and 1 elsewhere, unless ``shapes`` gives an input's
    full shape. ``binary`` picks HTTP's binary tensor extension over JSON (gRPC is always
    binary). ``progress`` wraps the list of levels (e.g. a tqdm bar).
    """
    if protocol not in PROTOCOLS:
        raise PerfError(f"perf protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if not concurrency or min(concurrency) < 1 or batch_size < 1 or window_s <= 0 or warmup_s < 0:
        raise PerfError("perf needs concurrency levels >= 1, batch size >= 1, a window > 0 and a warm-up >= 0 "
                             f"(got {list(concurrency)}, {batch_size}, {window_s}, {warmup_s})")
    metadata = _model_metadata(url, model, protocol, model_version)
    request = _Request(url, model, model_version, protocol, binary,
                       random_feeds(metadata["inputs"], batch_size, shapes or {}, seed),
                       [tensor["name"] for tensor in metadata["outputs"]])
    levels = progress(list(concurrency)) if progress else concurrency
    return [_measure_level(request, level, batch_size, window_s, warmup_s) for level in levels]


def parse_concurrency(text: str) -> list[int]:
    """Concurrency levels from ``"1,2,4,8"`` or perf_analyzer's ``"start:end[:step]"`` (step adds)."""
    try:
        if ":" not in text:
            levels = [int(part) for part in text.split(",")]
        elif text.count(":") <= 2:
            start, end, step = (int(part) for part in (text.split(":") + ["1"])[:3])
            levels = list(range(start, end + 1, step)) if step > 0 else []
        else:
            levels = []
    except ValueError:
        levels = []
    if not levels or min(levels) < 1:
        raise PerfError(f"concurrency levels are '1,2,4' or 'start:end[:step]' with values >= 1, got {text!r}")
    return levels


def random_feeds(inputs: list[dict], batch_size: int, shapes: dict[str, list[int]], seed: int) -> dict[str, np.ndarray]:
    """One random array per input of the model metadata's ``inputs`` (name, datatype, shape)."""
    from tritonclient.utils import triton_to_np_dtype

    rng = np.random.default_rng(seed)
    feeds = {}
    for tensor in inputs:
        name, datatype = tensor["name"], tensor["datatype"]
        dtype = triton_to_np_dtype(datatype)
        if dtype is None or dtype == np.object_:
            raise PerfError(f"perf cannot make random data for input {name!r} of datatype {datatype}")
        shape = shapes.get(name) or [batch_size if (axis == 0 and int(d) < 0) else max(int(d), 1)
                                      for axis, d in enumerate(tensor["shape"])]
        values = rng.standard_normal(shape) if np.issubdtype(dtype, np.floating) else rng.integers(0, 2, shape)
        feeds[name] = values.astype(dtype)
    return feeds


def write_csv(results: Sequence[LevelResult], path: str | Path) -> Path:
    """One row per level; the columns are :class:`LevelResult`'s fields."""
    path = Path(path)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[field.name for field in fields(LevelResult)])
        writer.writeheader()
        writer.writerows(asdict(result) for result in results)
    return path


def plot(results: Sequence[LevelResult], path: str | Path, title: str = "") -> Path:
    """Throughput and p50/p90/p99 latency against concurrency, side by side, saved to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = [result.concurrency for result in results]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(levels, [result.throughput for result in results], marker="o")
    left.set(xlabel="concurrency (requests in flight)", ylabel="throughput (inferences / s)", xscale="log", xticks=levels)
    left.set_xticklabels([str(level) for level in levels])
    for name in ("p50_ms", "p90_ms", "p99_ms"):
        right.plot(levels, [getattr(result, name) for result in results], marker="o", label=name.split("_")[0])
    right.set(xlabel="concurrency (requests in flight)", ylabel="latency (ms)", xscale="log", xticks=levels)
    right.set_xticklabels([str(level) for level in levels])
    right.legend()
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return Path(path)


def format_table(results: Sequence[LevelResult]) -> str:
    """The sweep as a text table, one line per level."""
    lines = [f"{'concurrency':>11} {'infer/s':>9} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'requests':>9} {'errors':>7}"]
    for r in results:
        lines.append(f"{r.concurrency:>11} {r.throughput:>9.1f} {r.p50_ms:>8.2f} {r.p90_ms:>8.2f} {r.p99_ms:>8.2f} "
                     f"{r.requests:>9} {r.errors:>7}")
    return "\n".join(lines)


# ------------------------------------------------------------------------ private helpers
def _client(url: str, protocol: str):
    if protocol == "http":
        import tritonclient.http as client_module
    else:
        import tritonclient.grpc as client_module
    return client_module, client_module.InferenceServerClient(url)


def _model_metadata(url: str, model: str, protocol: str, model_version: str) -> dict:
    from tritonclient.utils import InferenceServerException

    _, client = _client(url, protocol)
    try:
        if protocol == "http":
            metadata = client.get_model_metadata(model, model_version)
        else:
            metadata = client.get_model_metadata(model, model_version, as_json=True)
    except (InferenceServerException, OSError) as exc:
        raise PerfError(f"perf could not read the metadata of model {model!r} at {url}: {exc}") from exc
    finally:
        client.close()
    return metadata


@dataclass(frozen=True)
class _Request:
    """Where to send, and what: the same request over and over."""

    url: str
    model: str
    model_version: str
    protocol: str
    binary: bool
    feeds: dict[str, np.ndarray]
    output_names: list[str]


class _Worker(threading.Thread):
    """One closed-loop client: send, wait for the answer, record, send again, until told to stop."""

    def __init__(self, request: _Request, start: threading.Barrier, stop: threading.Event):
        super().__init__(daemon=True)
        self.request = request
        self.start_barrier, self.stop_event = start, stop
        self.finished: list[tuple[float, float, bool]] = []  # (end time, latency s, ok)
        self.setup_error: Exception | None = None

    def run(self) -> None:
        request = self.request
        try:
            module, client = _client(request.url, request.protocol)
            inputs, outputs = _request_tensors(module, request.protocol, request.binary, request.feeds,
                                               request.output_names)
        except Exception as exc:  # reported by the thread that waits for the workers
            self.setup_error = exc
            self.start_barrier.abort()
            return
        try:
            self.start_barrier.wait()
            while not self.stop_event.is_set():
                begin = time.perf_counter()
                try:
                    client.infer(request.model, inputs, model_version=request.model_version, outputs=outputs)
                    ok = True
                except Exception:  # any failed request is an error of the run: refused, reset, 4xx, 5xx
                    ok = False
                end = time.perf_counter()
                self.finished.append((end, end - begin, ok))
        except threading.BrokenBarrierError:
            pass  # another worker could not start; it reports why
        finally:
            client.close()


def _request_tensors(module, protocol: str, binary: bool, feeds: dict[str, np.ndarray], output_names: list[str]):
    """The request's inputs (built once: every request sends the same data) and requested outputs."""
    from tritonclient.utils import np_to_triton_dtype

    inputs = []
    for name, array in feeds.items():
        tensor = module.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        if protocol == "http":
            tensor.set_data_from_numpy(array, binary_data=binary)
        else:
            tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    if protocol == "grpc":
        return inputs, None  # gRPC tensors are always raw bytes
    # Named, because an HTTP request without outputs asks for all of them in binary.
    return inputs, [module.InferRequestedOutput(name, binary_data=binary) for name in output_names]


def _measure_level(request: _Request, level: int, batch_size: int, window_s: float, warmup_s: float) -> LevelResult:
    """Run ``level`` closed-loop clients through warm-up and window; count what ends in the window."""
    start, stop = threading.Barrier(level + 1), threading.Event()
    workers = [_Worker(request, start, stop) for _ in range(level)]
    for worker in workers:
        worker.start()
    try:
        start.wait()
    except threading.BrokenBarrierError:
        stop.set()
        error = next(worker.setup_error for worker in workers if worker.setup_error is not None)
        raise PerfError(f"perf could not start a client for {request.url}: {error}") from error
    window_begin = time.perf_counter() + warmup_s
    time.sleep(warmup_s + window_s)
    window_end = time.perf_counter()
    stop.set()
    for worker in workers:
        worker.join()
    inside = [(latency, ok) for worker in workers for end, latency, ok in worker.finished
              if window_begin <= end < window_end]
    latencies = [latency * 1e3 for latency, ok in inside if ok]
    errors = sum(1 for _, ok in inside if not ok)
    measured = window_end - window_begin
    return LevelResult(
        concurrency=level, requests=len(latencies), errors=errors, window_s=measured,
        throughput=len(latencies) * batch_size / measured,
        p50_ms=quantile(latencies, 0.5), p90_ms=quantile(latencies, 0.9), p99_ms=quantile(latencies, 0.99),
        mean_ms=float(np.mean(latencies)) if latencies else float("nan"))
