"""The gRPC front end, through ``tritonclient.grpc`` unchanged, and Triton's raw stub for typed contents.

Tolerances as in test_serve_http.py: rtol 1e-5, atol 1e-6 against ONNX Runtime.
"""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from serve_support import onnxruntime_outputs
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

RTOL, ATOL = 1e-5, 1e-6


@pytest.fixture(scope="module")
def client(served):
    return grpcclient.InferenceServerClient(served.grpc_url)


@pytest.fixture(scope="module")
def stub(served):
    channel = grpc.insecure_channel(served.grpc_url)
    yield service_pb2_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


def infer(client, x, model="dense", version="", datatype="FP32", outputs=None):
    tensor = grpcclient.InferInput("x", list(x.shape), datatype)
    tensor.set_data_from_numpy(x)
    requested = [grpcclient.InferRequestedOutput(name) for name in outputs] if outputs else None
    return client.infer(model, [tensor], model_version=version, outputs=requested)


def test_health_metadata_and_config(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.get_server_metadata().name == "tinyinfer"
    metadata = client.get_model_metadata("dense", as_json=True)
    assert metadata["versions"] == ["1", "2"]
    assert metadata["inputs"] == [{"name": "x", "datatype": "FP32", "shape": ["-1", "4"]}]  # int64 as JSON strings
    assert client.is_model_ready("dense", "1") and not client.is_model_ready("broken")
    config = client.get_model_config("dense").config
    assert config.max_batch_size == 8 and config.instance_group[0].count == 2
    assert config.dynamic_batching.max_queue_delay_microseconds == 1000


@pytest.mark.parametrize("version", ["1", "2"])
def test_infer_matches_onnxruntime(served, client, version):
    x = np.random.default_rng(1).standard_normal((5, 4)).astype(np.float32)
    result = infer(client, x, version=version)
    expected = onnxruntime_outputs(served.repo / "dense" / version / "model.onnx", {"x": x})
    for name in ("y", "total"):
        np.testing.assert_allclose(result.as_numpy(name), expected[name], rtol=RTOL, atol=ATOL)
    assert result.get_response().model_version == version


def test_typed_contents_are_accepted(served, stub):
    x = np.arange(8, dtype=np.float32).reshape(2, 4) / 8
    request = service_pb2.ModelInferRequest(model_name="dense", model_version="1")
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[2, 4])
    tensor.contents.fp32_contents.extend(x.reshape(-1).tolist())
    request.outputs.add(name="y")
    response = stub.ModelInfer(request)
    assert [o.name for o in response.outputs] == ["y"] and list(response.outputs[0].shape) == [2, 3]
    y = np.frombuffer(response.raw_output_contents[0], np.float32).reshape(2, 3)
    expected = onnxruntime_outputs(served.repo / "dense" / "1" / "model.onnx", {"x": x})
    np.testing.assert_allclose(y, expected["y"], rtol=RTOL, atol=ATOL)


def test_errors_carry_grpc_codes_and_the_server_keeps_serving(client):
    cases = [
        (dict(x=np.ones((2, 5), np.float32)), "StatusCode.INVALID_ARGUMENT", "expects shape"),
        (dict(x=np.ones((2, 4), np.int64), datatype="INT64"), "StatusCode.INVALID_ARGUMENT", "expects datatype FP32"),
        (dict(x=np.ones((1, 4), np.float32), model="nope"), "StatusCode.NOT_FOUND", "unknown model"),
        (dict(x=np.ones((1, 4), np.float32), version="9"), "StatusCode.NOT_FOUND", "no version 9"),
        (dict(x=np.ones((1, 4), np.float32), model="broken"), "StatusCode.UNAVAILABLE", "not a valid ONNX model"),
    ]
    for kwargs, code, text in cases:
        with pytest.raises(InferenceServerException) as error:
            infer(client, **kwargs)
        assert error.value.status() == code and text in error.value.message(), kwargs
    assert infer(client, np.ones((1, 4), np.float32)).as_numpy("y").shape == (1, 3)


def test_statistics_and_repository_index(client):
    infer(client, np.ones((2, 4), np.float32), version="2")
    stats = client.get_inference_statistics("dense", "2").model_stats[0]
    assert stats.name == "dense" and stats.version == "2"
    assert stats.inference_count >= 2 and stats.inference_stats.success.count >= 1
    assert stats.batch_stats and stats.inference_stats.queue.count == stats.inference_stats.success.count
    index = {(m.name, m.version): m.state for m in client.get_model_repository_index().models}
    assert index[("dense", "1")] == "READY" and index[("broken", "1")] == "UNAVAILABLE"
    with pytest.raises(InferenceServerException) as error:
        client.unload_model("dense")
    assert error.value.status() == "StatusCode.FAILED_PRECONDITION"
