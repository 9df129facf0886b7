"""The dynamic batcher: on its own with recording sessions, then in a server through tritonclient.

Batch formation is checked by what happened (the batch sizes sessions saw, Triton's statistics,
the batch-size metric), never by timing. Waits use long queue delays, so a batch that forms
early can only have formed because a preferred size was reached.
"""

from __future__ import annotations

import asyncio
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from serve_support import ServerThread, dense_model, onnxruntime_outputs, write_model
from tritonclient.utils import InferenceServerException

from tinyinfer.errors import FeedShapeError, InvalidRequestError, QueueFullError, ServeError
from tinyinfer.serve.batcher import BatchPolicy, Batcher


class RecordingSession:
    """A session stand-in: ``y = 2 x``; records the batch shapes it ran; may wait at a barrier."""

    def __init__(self, barrier: threading.Barrier | None = None):
        self.shapes = []
        self.barrier = barrier

    def get_outputs(self):
        return [type("Arg", (), {"name": "y"})()]

    def run(self, names, feeds):
        self.shapes.append(feeds["x"].shape)
        if self.barrier is not None:
            self.barrier.wait(timeout=10)  # BrokenBarrierError unless another instance runs at the same time
        return [2 * feeds["x"]]


def run_batcher(sessions, policy, requests, *, start_gap_s=0.0):
    """Submit ``requests`` (arrays) concurrently to a Batcher; return their outputs and the batcher."""

    async def main():
        batcher = Batcher(sessions, policy, name="m:1")
        tasks = []
        for x in requests:
            tasks.append(asyncio.create_task(batcher.submit({"x": x})))
            await asyncio.sleep(start_gap_s)
        results = await asyncio.gather(*tasks)
        await batcher.close()
        return [outputs["y"] for outputs, _ in results], batcher

    return asyncio.run(main())


def test_a_batch_forms_at_the_preferred_size_and_splits_back():
    session = RecordingSession()
    policy = BatchPolicy(max_batch_size=8, dynamic=True, preferred_sizes=(4,), max_queue_delay_s=30.0)
    requests = [np.full((size, 2), i, np.float32) for i, size in enumerate([1, 3, 2, 2])]
    outputs, batcher = run_batcher([session], policy, requests, start_gap_s=0.01)  # arriving one by one
    assert session.shapes == [(4, 2), (4, 2)]  # 1+3 and 2+2: never the 30 s delay
    for x, y in zip(requests, outputs):
        np.testing.assert_array_equal(y, 2 * x)
    assert batcher.stats.execution_count == 2 and batcher.stats.inference_count == 8


def test_the_oldest_requests_delay_sends_a_partial_batch():
    session = RecordingSession()
    policy = BatchPolicy(max_batch_size=8, dynamic=True, preferred_sizes=(8,), max_queue_delay_s=0.05)
    outputs, _ = run_batcher([session], policy, [np.ones((1, 2), np.float32)] * 3)
    assert session.shapes == [(3, 2)]


def test_requests_that_differ_past_the_batch_dimension_never_share_a_batch():
    session = RecordingSession()
    policy = BatchPolicy(max_batch_size=8, dynamic=True, preferred_sizes=(2,), max_queue_delay_s=30.0)
    requests = [np.ones((1, 2), np.float32), np.ones((1, 3), np.float32), np.ones((1, 2), np.float32),
                np.ones((1, 3), np.float32)]
    outputs, _ = run_batcher([session], policy, requests)
    assert sorted(session.shapes) == [(2, 2), (2, 3)]
    assert [y.shape for y in outputs] == [(1, 2), (1, 3), (1, 2), (1, 3)]


def test_without_dynamic_batching_every_request_runs_alone():
    session = RecordingSession()
    outputs, _ = run_batcher([session], BatchPolicy(max_batch_size=8), [np.ones((2, 2), np.float32)] * 3)
    assert session.shapes == [(2, 2)] * 3


def test_two_instances_run_batches_at_the_same_time():
    barrier = threading.Barrier(2)  # each run waits for the other: passes only if both run concurrently
    sessions = [RecordingSession(barrier), RecordingSession(barrier)]
    outputs, _ = run_batcher(sessions, BatchPolicy(max_batch_size=1), [np.ones((1, 2), np.float32)] * 2)
    assert [len(s.shapes) for s in sessions] == [1, 1]


class FailingSession(RecordingSession):
    def __init__(self, error: Exception):
        super().__init__()
        self.error = error

    def run(self, names, feeds):
        raise self.error


@pytest.mark.parametrize("error, expected, status", [
    (RuntimeError("out of memory"), ServeError, 500),
    (FeedShapeError("input 'x' expects [-1, 2]"), InvalidRequestError, 400),
])
def test_a_failing_batch_fails_its_requests_with_the_reason(error, expected, status):
    async def main():
        batcher = Batcher([FailingSession(error)], BatchPolicy(max_batch_size=8), name="m:1")
        with pytest.raises(expected) as raised:
            await batcher.submit({"x": np.ones((1, 2), np.float32)})
        await batcher.close()
        return raised.value

    raised = asyncio.run(main())
    assert raised.http_status == status and str(error) in str(raised)


def test_a_full_queue_rejects_at_once():
    async def main():
        policy = BatchPolicy(max_batch_size=8, dynamic=True, preferred_sizes=(8,), max_queue_delay_s=0.2,
                             max_queue_size=2)
        batcher = Batcher([RecordingSession()], policy, name="m:1")
        queued = [asyncio.create_task(batcher.submit({"x": np.ones((1, 2), np.float32)})) for _ in range(2)]
        await asyncio.sleep(0)  # both are in the queue now
        with pytest.raises(QueueFullError, match="queue is full"):
            await batcher.submit({"x": np.ones((1, 2), np.float32)})
        results = await asyncio.gather(*queued)
        await batcher.close()
        return results

    assert len(asyncio.run(main())) == 2


def test_close_runs_what_is_queued_before_returning():
    async def main():
        session = RecordingSession()
        policy = BatchPolicy(max_batch_size=8, dynamic=True, preferred_sizes=(8,), max_queue_delay_s=60.0)
        batcher = Batcher([session], policy, name="m:1")
        task = asyncio.create_task(batcher.submit({"x": np.ones((1, 2), np.float32)}))
        await asyncio.sleep(0)
        await batcher.close()  # does not wait out the 60 s delay
        return (await task)[0]["y"], session.shapes

    y, shapes = asyncio.run(main())
    assert shapes == [(1, 2)] and y.shape == (1, 2)


# ------------------------------------------------------------------------------ in a server
BATCHED = """
max_batch_size: 8
dynamic_batching { preferred_batch_size: [ 4 ] max_queue_delay_microseconds: 30000000 }
"""
BOUNDED = """
max_batch_size: 8
dynamic_batching {
  max_queue_delay_microseconds: 1000000
  default_queue_policy { max_queue_size: 2 }
}
"""
TIMED = """
max_batch_size: 8
dynamic_batching {
  max_queue_delay_microseconds: 30000000
  default_queue_policy { default_timeout_microseconds: 200000 }
}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("batching")
    for name, config in [("batched", BATCHED), ("bounded", BOUNDED), ("timed", TIMED)]:
        write_model(repo, name, 1, dense_model(seed=4), config)
    server = ServerThread(repo)
    server.repo = repo
    yield server
    server.stop()


def http_infer(url, model, x):
    client = httpclient.InferenceServerClient(url)
    tensor = httpclient.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return client.infer(model, [tensor])


def test_concurrent_requests_form_one_batch(server):
    client = httpclient.InferenceServerClient(server.http_url)
    sizes = [1, 1, 2]  # 1 + 1 + 2 = 4, the preferred size: sent long before the 30 s delay
    xs = [np.random.default_rng(i).standard_normal((n, 4)).astype(np.float32) for i, n in enumerate(sizes)]
    with ThreadPoolExecutor(len(xs)) as pool:
        results = list(pool.map(lambda x: http_infer(server.http_url, "batched", x), xs))
    expected_path = server.repo / "batched" / "1" / "model.onnx"
    for x, result in zip(xs, results):  # split back right: each request gets its own rows
        np.testing.assert_allclose(result.as_numpy("y"), onnxruntime_outputs(expected_path, {"x": x})["y"],
                                   rtol=1e-5, atol=1e-6)
    stats = client.get_inference_statistics("batched")["model_stats"][0]
    assert stats["execution_count"] == 1 and stats["inference_count"] == 4
    assert [b["batch_size"] for b in stats["batch_stats"]] == [4]
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{server.server.metrics_port}/metrics").read().decode()
    assert 'tinyinfer_batch_size_bucket{le="4.0",model="batched",version="1"} 1.0' in metrics
    assert 'tinyinfer_request_success_total{model="batched",version="1"} 3.0' in metrics
    assert 'tinyinfer_routed_requests_total{model="batched",version="1"} 3.0' in metrics
    assert 'tinyinfer_request_duration_seconds_count{model="batched",version="1"} 3.0' in metrics


def test_a_full_queue_answers_503_and_unavailable(server):
    batcher = server.server.core.repository.version("bounded", 1).batcher
    with ThreadPoolExecutor(2) as pool:
        waiting = [pool.submit(http_infer, server.http_url, "bounded", np.ones((1, 4), np.float32)) for _ in range(2)]
        deadline = time.monotonic() + 10
        while batcher.queue_depth < 2 and time.monotonic() < deadline:
            time.sleep(0.005)
        with pytest.raises(InferenceServerException) as http_error:
            http_infer(server.http_url, "bounded", np.ones((1, 4), np.float32))
        tensor = grpcclient.InferInput("x", [1, 4], "FP32")
        tensor.set_data_from_numpy(np.ones((1, 4), np.float32))
        with pytest.raises(InferenceServerException) as grpc_error:
            grpcclient.InferenceServerClient(server.grpc_url).infer("bounded", [tensor])
        assert [f.result().as_numpy("y").shape for f in waiting] == [(1, 3), (1, 3)]  # the queued ones finish
    assert http_error.value.status() == "503" and "queue is full" in http_error.value.message()
    assert grpc_error.value.status() == "StatusCode.UNAVAILABLE"
    assert http_infer(server.http_url, "bounded", np.ones((1, 4), np.float32)).as_numpy("y").shape == (1, 3)


def test_a_request_that_waits_past_its_timeout_is_504(server):
    with pytest.raises(InferenceServerException) as error:
        http_infer(server.http_url, "timed", np.ones((1, 4), np.float32))
    assert error.value.status() == "504" and "timeout" in error.value.message()
    stats = httpclient.InferenceServerClient(server.http_url).get_inference_statistics("timed")["model_stats"][0]
    assert stats["inference_stats"]["fail"]["count"] == 1 and stats["execution_count"] == 0
