"""The load generator against a tiny fake v2 endpoint that counts what it receives.

The fake model answers ``y = 2·x`` after sleeping ``DELAY_S`` and records how many requests
were in flight at once, whether each came as JSON or binary, and each input's shape. Oracles:
the endpoint's own counts (concurrency N must mean N requests in flight, the encoding asked
for must be the one sent), bounds that follow from the delay (no latency below it, no more
than N / DELAY_S requests per second), and the CSV read back. One run over gRPC goes to
tinyinfer's own server.
"""

from __future__ import annotations

import asyncio
import csv
import json
import math
import socket
import threading

import numpy as np
import pytest
import starlette.applications as starlette
import uvicorn
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tinyinfer.errors import PerfError
from tinyinfer.serve import perf

DELAY_S = 0.005  # the fake model's compute time
WINDOW = {"window_s": 0.6, "warmup_s": 0.2}


class FakeModel:
    """What the fake endpoint saw: peak requests in flight, encodings and input shapes."""

    def __init__(self):
        self.in_flight = self.peak_in_flight = 0
        self.encodings: set[str] = set()
        self.shapes: set[tuple[int, ...]] = set()

    async def metadata(self, request):
        if request.path_params["model"] == "missing":
            return JSONResponse({"error": "unknown model 'missing'"}, status_code=404)
        tensor = {"datatype": "FP32", "shape": [-1, 4]}
        return JSONResponse({"name": request.path_params["model"], "versions": ["1"], "platform": "fake",
                             "inputs": [{"name": "x", **tensor}], "outputs": [{"name": "y", **tensor}]})

    async def infer(self, request):
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            await asyncio.sleep(DELAY_S)
            if request.path_params["model"] == "failing":
                return JSONResponse({"error": "this model always fails"}, status_code=400)
            return self._answer(await request.body(), request.headers.get("Inference-Header-Content-Length"))
        finally:
            self.in_flight -= 1

    def _answer(self, body: bytes, header_length: str | None) -> Response:
        header = json.loads(body[:int(header_length)] if header_length else body)
        (tensor,) = header["inputs"]
        if header_length:
            self.encodings.add("binary")
            x = np.frombuffer(body[int(header_length):], np.float32).reshape(tensor["shape"])
        else:
            self.encodings.add("json")
            x = np.asarray(tensor["data"], np.float32).reshape(tensor["shape"])
        self.shapes.add(tuple(x.shape))
        y = 2 * x
        if not header["outputs"][0].get("parameters", {}).get("binary_data"):
            return JSONResponse({"model_name": "fake", "outputs": [
                {"name": "y", "datatype": "FP32", "shape": list(y.shape), "data": y.ravel().tolist()}]})
        blob = y.tobytes()
        head = json.dumps({"model_name": "fake", "outputs": [{"name": "y", "datatype": "FP32", "shape": list(y.shape),
                                                              "parameters": {"binary_data_size": len(blob)}}]}).encode()
        return Response(head + blob, headers={"Inference-Header-Content-Length": str(len(head))},
                        media_type="application/octet-stream")


@pytest.fixture
def fake_endpoint():
    """``(url, FakeModel)`` of a fake v2 server under uvicorn on a free loopback port."""
    model = FakeModel()
    app = starlette.Starlette(routes=[Route("/v2/models/{model}", model.metadata),
                                      Route("/v2/models/{model}/infer", model.infer, methods=["POST"])])
    # IPPROTO_TCP, not the default 0: asyncio sets TCP_NODELAY on accepted connections only then,
    # and without it each response waits ~40 ms for the client's delayed ACK (Nagle's algorithm).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="error", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        threading.Event().wait(0.01)
    yield f"127.0.0.1:{sock.getsockname()[1]}", model
    server.should_exit = True
    thread.join(10)


@pytest.mark.parametrize("level", [1, 4])
def test_concurrency_means_requests_in_flight(fake_endpoint, level):
    url, model = fake_endpoint
    (result,) = perf.sweep(url, "fake", concurrency=[level], **WINDOW)
    assert model.peak_in_flight == level
    assert result.concurrency == level and result.requests > 0 and result.errors == 0
    # Bounds that follow from the fake's delay, whatever the machine's speed:
    assert result.p50_ms >= DELAY_S * 1e3
    assert result.throughput <= level / DELAY_S
    assert result.p50_ms <= result.p90_ms <= result.p99_ms
    assert result.throughput == pytest.approx(result.requests / result.window_s)


@pytest.mark.parametrize("binary", [True, False])
def test_the_requested_encoding_and_batch_size_are_sent(fake_endpoint, binary):
    url, model = fake_endpoint
    (result,) = perf.sweep(url, "fake", concurrency=[2], binary=binary, batch_size=3, **WINDOW)
    assert model.encodings == {"binary" if binary else "json"}
    assert model.shapes == {(3, 4)}  # the variable axis 0 is the batch, the rest from the metadata
    assert result.throughput == pytest.approx(3 * result.requests / result.window_s)


def test_failed_requests_are_counted_as_errors(fake_endpoint):
    url, _ = fake_endpoint
    (result,) = perf.sweep(url, "failing", concurrency=[2], **WINDOW)
    assert result.errors > 0 and result.requests == 0
    assert math.isnan(result.p99_ms) and result.throughput == 0


def test_csv_and_figure(fake_endpoint, tmp_path):
    url, _ = fake_endpoint
    results = perf.sweep(url, "fake", concurrency=[1, 2], window_s=0.3, warmup_s=0.1)
    path = perf.write_csv(results, tmp_path / "perf.csv")
    with path.open() as handle:
        rows = list(csv.DictReader(handle))
    assert [int(row["concurrency"]) for row in rows] == [1, 2]
    assert [float(row["p99_ms"]) for row in rows] == pytest.approx([r.p99_ms for r in results])
    figure = perf.plot(results, tmp_path / "perf.png", title="fake")
    assert figure.stat().st_size > 0
    table = perf.format_table(results).splitlines()
    assert len(table) == 3 and table[0].split()[0] == "concurrency"


def test_unknown_model_or_server_is_a_clear_error(fake_endpoint):
    url, _ = fake_endpoint
    with pytest.raises(PerfError, match="metadata of model 'missing'"):
        perf.sweep(url, "missing", concurrency=[1], **WINDOW)
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    with pytest.raises(PerfError, match="could not read the metadata"):
        perf.sweep(f"127.0.0.1:{port}", "fake", concurrency=[1], **WINDOW)


@pytest.mark.parametrize("options, message", [
    ({"protocol": "ftp"}, "protocol"),
    ({"concurrency": [0]}, "concurrency levels >= 1"),
    ({"concurrency": []}, "concurrency levels >= 1"),
    ({"batch_size": 0}, "batch size >= 1"),
])
def test_bad_options_are_refused(options, message):
    with pytest.raises(PerfError, match=message):
        perf.sweep("127.0.0.1:1", "fake", **options)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_against_tinyinfer_server(served, protocol):
    url = served.grpc_url if protocol == "grpc" else served.http_url
    (result,) = perf.sweep(url, "dense", concurrency=[2], protocol=protocol, batch_size=2, **WINDOW)
    assert result.requests > 0 and result.errors == 0


@pytest.mark.parametrize("text, levels", [("1,2,4,8", [1, 2, 4, 8]), ("1:4", [1, 2, 3, 4]), ("2:16:7", [2, 9, 16]),
                                          ("3", [3])])
def test_parse_concurrency(text, levels):
    assert perf.parse_concurrency(text) == levels


@pytest.mark.parametrize("text", ["", "0,1", "a:b", "4:1", "1:4:0", "1:2:3:4"])
def test_parse_concurrency_refuses_nonsense(text):
    with pytest.raises(PerfError, match="concurrency levels"):
        perf.parse_concurrency(text)


def test_random_feeds_follow_the_metadata_or_the_given_shapes():
    inputs = [{"name": "image", "datatype": "FP32", "shape": [-1, 3, -1]},
              {"name": "ids", "datatype": "INT64", "shape": [2, 5]}]
    feeds = perf.random_feeds(inputs, batch_size=4, shapes={"ids": [3, 7]}, seed=0)
    assert (feeds["image"].shape, feeds["image"].dtype) == ((4, 3, 1), np.float32)
    assert (feeds["ids"].shape, feeds["ids"].dtype) == ((3, 7), np.int64)
    with pytest.raises(PerfError, match="input 'text' of datatype BYTES"):
        perf.random_feeds([{"name": "text", "datatype": "BYTES", "shape": [1]}], 1, {}, 0)


def test_a_client_that_cannot_start_is_reported(fake_endpoint, monkeypatch):
    url, _ = fake_endpoint

    def broken(*args):
        raise OSError("no more file descriptors")

    monkeypatch.setattr(perf, "_request_tensors", broken)
    with pytest.raises(PerfError, match="could not start a client.*no more file descriptors"):
        perf.sweep(url, "fake", concurrency=[3], **WINDOW)
