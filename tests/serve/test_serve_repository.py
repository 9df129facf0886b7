"""The model repository: Triton's config.pbtxt, auto-complete, control modes, versions swapped under load."""

from __future__ import annotations

import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from serve_support import dense_model, onnxruntime_outputs, write_model
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import InferenceServerException

from tinyinfer.errors import RepositoryError
from tinyinfer.serve.batcher import BatchPolicy
from tinyinfer.serve.repository import engine_options, instance_count, read_config, warmup_feeds

FULL_CONFIG = """
name: "net"
max_batch_size: 16
input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 3 ] } ]
version_policy { latest { num_versions: 2 } }
dynamic_batching {
  preferred_batch_size: [ 8, 4 ]
  max_queue_delay_microseconds: 500
  default_queue_policy { max_queue_size: 32 default_timeout_microseconds: 250000 allow_timeout_override: true }
}
instance_group [ { count: 2 kind: KIND_CPU }, { count: 1 kind: KIND_CPU } ]
parameters { key: "backend" value: { string_value: "numba" } }
parameters { key: "threads" value: { string_value: "1" } }
"""


def test_config_pbtxt_is_read_with_tritons_own_schema(tmp_path):
    (tmp_path / "net").mkdir()
    (tmp_path / "net" / "config.pbtxt").write_text(FULL_CONFIG)
    config = read_config(tmp_path / "net")
    assert isinstance(config, model_config_pb2.ModelConfig)
    assert config.max_batch_size == 16 and list(config.input[0].dims) == [4]
    assert config.version_policy.latest.num_versions == 2
    assert instance_count(config) == 3
    assert engine_options(config) == {"backend": "numba", "opt_level": "O2", "threads": 1}
    policy = BatchPolicy.from_config(config)
    assert policy == BatchPolicy(max_batch_size=16, dynamic=True, preferred_sizes=(4, 8), max_queue_delay_s=500e-6,
                                 max_queue_size=32, timeout_s=0.25, allow_timeout_override=True)


@pytest.mark.parametrize("text, message", [
    ('name: "other"', "names the model 'other'"),
    ("max_batch_size: eight", "not a valid Triton model config"),
    ('parameters { key: "bakend" value: { string_value: "numba" } }', "unknown parameter(s) ['bakend']"),
    ("instance_group [ { kind: KIND_GPU } ]", "KIND_GPU"),
    ('model_warmup { name: "w" inputs { key: "x" value: { data_type: TYPE_FP32 dims: 4 input_data_file: "x.bin" } } }',
     "input_data_file is not supported"),
])
def test_config_mistakes_are_load_errors_that_say_what_is_wrong(tmp_path, text, message):
    (tmp_path / "net").mkdir()
    (tmp_path / "net" / "config.pbtxt").write_text(text)
    with pytest.raises(RepositoryError) as error:
        config = read_config(tmp_path / "net")
        engine_options(config)
        instance_count(config)
        warmup_feeds(config)
    assert message in str(error.value)


def test_explicit_mode_loads_and_unloads_through_the_repository_api(tmp_path, start_server):
    write_model(tmp_path, "dense", 1, dense_model(seed=5))
    server = start_server(tmp_path, model_control_mode="explicit")
    http = httpclient.InferenceServerClient(server.http_url)
    grpc = grpcclient.InferenceServerClient(server.grpc_url)
    assert http.get_model_repository_index() == [{"name": "dense", "version": "", "state": "UNAVAILABLE",
                                                  "reason": "unloaded"}]
    assert not http.is_model_ready("dense")
    http.load_model("dense")
    assert grpc.is_model_ready("dense")
    x = np.ones((2, 4), np.float32)
    tensor = grpcclient.InferInput("x", [2, 4], "FP32")
    tensor.set_data_from_numpy(x)
    np.testing.assert_allclose(grpc.infer("dense", [tensor]).as_numpy("y"),
                               onnxruntime_outputs(tmp_path / "dense" / "1" / "model.onnx", {"x": x})["y"],
                               rtol=1e-5, atol=1e-6)
    grpc.unload_model("dense")
    assert not http.is_model_ready("dense")
    with pytest.raises(InferenceServerException) as error:
        grpc.infer("dense", [tensor])
    assert error.value.status() == "StatusCode.NOT_FOUND"
    with pytest.raises(InferenceServerException) as missing:
        http.load_model("nope")
    assert missing.value.status() == "404"
    write_model(tmp_path, "broken", 1, b"not a model")
    with pytest.raises(InferenceServerException) as broken:
        http.load_model("broken")
    assert broken.value.status() == "503" and "not a valid ONNX model" in broken.value.message()
    (tmp_path / "misnamed").mkdir()
    (tmp_path / "misnamed" / "config.pbtxt").write_text('name: "other"')
    with pytest.raises(InferenceServerException) as misnamed:
        grpc.load_model("misnamed")
    assert misnamed.value.status() == "StatusCode.FAILED_PRECONDITION"
    assert "folder is 'misnamed'" in misnamed.value.message()


WARMED = """
max_batch_size: 8
instance_group { count: 2 }
model_warmup [
  { name: "two" batch_size: 2 inputs { key: "x" value: { data_type: TYPE_FP32 dims: [ 4 ] zero_data: true } } },
  { name: "eight" batch_size: 8 count: 2
    inputs { key: "x" value: { data_type: TYPE_FP32 dims: [ 4 ] random_data: true } } }
]
"""


def test_model_warmup_runs_every_instance_before_the_version_is_ready(tmp_path, start_server):
    write_model(tmp_path, "dense", 1, dense_model(seed=18), WARMED)
    server = start_server(tmp_path)
    sessions = server.server.core.repository.version("dense", 1).batcher.sessions
    assert [session.profile().runs for session in sessions] == [3, 3]  # batch 2 once, batch 8 twice


def wait_for(condition, timeout_s=20.0):
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_poll_mode_picks_up_new_and_removed_versions_and_models(tmp_path, start_server):
    write_model(tmp_path, "dense", 1, dense_model(seed=6))
    server = start_server(tmp_path, model_control_mode="poll", poll_interval_s=0.1)
    client = httpclient.InferenceServerClient(server.http_url)
    assert client.get_model_metadata("dense")["versions"] == ["1"]
    write_model(tmp_path, "dense", 2, dense_model(seed=7))
    wait_for(lambda: client.get_model_metadata("dense")["versions"] == ["2"])  # latest 1: version 1 retired
    x = np.ones((1, 4), np.float32)
    tensor = httpclient.InferInput("x", [1, 4], "FP32")
    tensor.set_data_from_numpy(x)
    result = client.infer("dense", [tensor])
    assert result.get_response()["model_version"] == "2"
    np.testing.assert_allclose(result.as_numpy("y"),
                               onnxruntime_outputs(tmp_path / "dense" / "2" / "model.onnx", {"x": x})["y"],
                               rtol=1e-5, atol=1e-6)
    write_model(tmp_path, "dense", 2, dense_model(seed=17))  # new weights in place: reloaded
    changed = onnxruntime_outputs(tmp_path / "dense" / "2" / "model.onnx", {"x": x})["y"]
    assert not np.allclose(result.as_numpy("y"), changed)
    wait_for(lambda: np.allclose(client.infer("dense", [tensor]).as_numpy("y"), changed, rtol=1e-5, atol=1e-6))
    shutil.rmtree(tmp_path / "dense" / "2")
    wait_for(lambda: client.get_model_metadata("dense")["versions"] == ["1"])
    write_model(tmp_path, "extra", 1, dense_model(seed=8))
    wait_for(lambda: client.is_model_ready("extra"))


SLOW_QUEUE = """
max_batch_size: 8
dynamic_batching { max_queue_delay_microseconds: 1000000 }
"""


def test_unloading_waits_for_the_requests_in_its_queue(tmp_path, start_server):
    write_model(tmp_path, "dense", 1, dense_model(seed=9), SLOW_QUEUE)
    server = start_server(tmp_path, model_control_mode="explicit", load_models=("dense",))
    client = httpclient.InferenceServerClient(server.http_url)
    batcher = server.server.core.repository.version("dense", 1).batcher
    tensor = httpclient.InferInput("x", [1, 4], "FP32")
    tensor.set_data_from_numpy(np.ones((1, 4), np.float32))
    with ThreadPoolExecutor(1) as pool:
        queued = pool.submit(httpclient.InferenceServerClient(server.http_url).infer, "dense", [tensor])
        wait_for(lambda: batcher.queue_depth == 1)
        client.unload_model("dense")  # returns once the queued request has run
        assert queued.result().as_numpy("y").shape == (1, 3)
    assert not client.is_model_ready("dense")


def test_versions_swapped_under_load_lose_no_request(tmp_path, start_server):
    write_model(tmp_path, "dense", 1, dense_model(seed=10))
    server = start_server(tmp_path, model_control_mode="explicit", load_models=("dense",))
    stop, seen, failures = threading.Event(), set(), []

    def load_generator():
        client = grpcclient.InferenceServerClient(server.grpc_url)
        tensor = grpcclient.InferInput("x", [1, 4], "FP32")
        tensor.set_data_from_numpy(np.ones((1, 4), np.float32))
        while not stop.is_set():
            try:
                seen.add(client.infer("dense", [tensor]).get_response().model_version)
            except InferenceServerException as exc:
                failures.append(exc)

    workers = [threading.Thread(target=load_generator) for _ in range(3)]
    for worker in workers:
        worker.start()
    admin = httpclient.InferenceServerClient(server.http_url)
    wait_for(lambda: "1" in seen)
    for version in (2, 3, 4):  # each load swaps the latest in; the one before drains and unloads
        write_model(tmp_path, "dense", version, dense_model(seed=10 + version))
        admin.load_model("dense")
        wait_for(lambda: str(version) in seen)
    stop.set()
    for worker in workers:
        worker.join()
    assert failures == [] and seen == {"1", "2", "3", "4"}
