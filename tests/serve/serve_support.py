"""Shared helpers of the server tests: small models, repositories in tmp folders, the ONNX
Runtime oracle, and a model server running in a background thread.

A plain module (not conftest.py) so that test files import these names unambiguously.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tinyinfer.serve.server import ModelServer


def dense_model(seed: int, features: int = 4, classes: int = 3) -> onnx.ModelProto:
    """``y = Relu(x @ W + b)`` and ``total = ReduceSum(y, axis 1)`` over a symbolic batch ``N``."""
    rng = np.random.default_rng(seed)
    weight = numpy_helper.from_array(rng.standard_normal((features, classes)).astype(np.float32), "W")
    bias = numpy_helper.from_array(rng.standard_normal(classes).astype(np.float32), "b")
    axes = numpy_helper.from_array(np.array([1], np.int64), "axes")
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["xw"]),
        helper.make_node("Add", ["xw", "b"], ["z"]),
        helper.make_node("Relu", ["z"], ["y"]),
        helper.make_node("ReduceSum", ["y", "axes"], ["total"], keepdims=1),
    ]
    graph = helper.make_graph(
        nodes, "dense", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", classes]),
         helper.make_tensor_value_info("total", TensorProto.FLOAT, ["N", 1])],
        [weight, bias, axes])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def write_model(repo: Path, name: str, version: int, model: onnx.ModelProto | bytes, config: str | None = None) -> Path:
    """Write ``repo/name/version/model.onnx`` (and ``config.pbtxt`` when given)."""
    folder = repo / name / str(version)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    path.write_bytes(model if isinstance(model, bytes) else model.SerializeToString())
    if config is not None:
        (repo / name / "config.pbtxt").write_text(config)
    return path


def onnxruntime_outputs(path: Path, feeds: dict) -> dict:
    """The oracle: ONNX Runtime's outputs for the same model file."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))


class ServerThread:
    """A ModelServer on its own event loop in a daemon thread, on free loopback ports."""

    def __init__(self, repo: Path, **options):
        options = {"http_port": 0, "grpc_port": 0, "metrics_port": 0, **options}
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(repo, options), daemon=True)
        self._thread.start()
        self._ready.wait(120)
        if self._error is not None:
            raise self._error

    def _run(self, repo: Path, options: dict) -> None:
        self.loop = asyncio.new_event_loop()
        try:
            self.server = self.loop.run_until_complete(self._start(repo, options))
        except BaseException as exc:  # reported to the test thread
            self._error = exc
            self._ready.set()
            self.loop.close()
            return
        self._ready.set()
        try:
            self.loop.run_until_complete(self.server.serve_until_stopped())
        finally:
            self.loop.close()

    async def _start(self, repo: Path, options: dict) -> ModelServer:
        server = ModelServer(repo, **options)
        await server.start()
        return server

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.server.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.server.grpc_port}"

    def call(self, coroutine):
        """Run a coroutine on the server's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(60)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.server.request_stop)
        self._thread.join(60)


DENSE_CONFIG = """
name: "dense"
max_batch_size: 8
version_policy { all { } }
dynamic_batching { max_queue_delay_microseconds: 1000 }
instance_group { count: 2 kind: KIND_CPU }
"""

#: The request body limit of the shared server (its 413 test sends more).
MAX_BODY_BYTES = 1 << 20
