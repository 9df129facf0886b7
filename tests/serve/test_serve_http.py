"""The HTTP front end, through ``tritonclient.http`` unchanged (and raw HTTP for what it cannot send).

Outputs are compared with ONNX Runtime on the same model file: rtol 1e-5, atol 1e-6, since
the only difference is the summation order of a 4-term dot product in float32.
"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request

import numpy as np
import pytest
import tritonclient.http as httpclient
from serve_support import MAX_BODY_BYTES, onnxruntime_outputs
from tritonclient.utils import InferenceServerException

RTOL, ATOL = 1e-5, 1e-6


@pytest.fixture(scope="module")
def client(served):
    return httpclient.InferenceServerClient(served.http_url)


def infer(client, x, model="dense", version="", binary=True, outputs=None, **options):
    tensor = httpclient.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    requested = [httpclient.InferRequestedOutput(name, binary_data=binary) for name in outputs] if outputs else None
    return client.infer(model, [tensor], model_version=version, outputs=requested, **options)


def post(served, path: str, body: bytes, headers=None) -> tuple[int, dict]:
    """A raw POST: (status, JSON body)."""
    request = urllib.request.Request(f"http://{served.http_url}{path}", data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def assert_still_serving(client):
    x = np.ones((1, 4), np.float32)
    assert infer(client, x).as_numpy("y").shape == (1, 3)


def test_health_and_server_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    metadata = client.get_server_metadata()
    assert metadata["name"] == "tinyinfer" and "binary_tensor_data" in metadata["extensions"]


def test_model_metadata_and_readiness(client):
    metadata = client.get_model_metadata("dense")
    assert metadata["versions"] == ["1", "2"]
    assert metadata["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    assert [o["name"] for o in metadata["outputs"]] == ["y", "total"]
    assert client.get_model_metadata("dense", "1")["versions"] == ["1"]
    assert client.is_model_ready("dense") and client.is_model_ready("dense", "2")
    assert not client.is_model_ready("broken") and not client.is_model_ready("dense", "7")


def test_config_is_tritons_schema_completed_from_the_model(client):
    config = client.get_model_config("dense")
    assert config["max_batch_size"] == 8
    assert config["input"] == [{"name": "x", "data_type": "TYPE_FP32", "dims": [4]}]
    assert config["instance_group"] == [{"count": 2, "kind": "KIND_CPU"}]
    assert config["dynamic_batching"] == {"max_queue_delay_microseconds": 1000}
    auto = client.get_model_config("auto")  # no config.pbtxt: all of it from the model
    assert auto["max_batch_size"] == 4 and "dynamic_batching" in auto
    assert [o["dims"] for o in auto["output"]] == [[3], [1]]


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
@pytest.mark.parametrize("version", ["1", "2"])
def test_infer_matches_onnxruntime(served, client, binary, version):
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    result = infer(client, x, version=version, binary=binary, outputs=["y", "total"])
    expected = onnxruntime_outputs(served.repo / "dense" / version / "model.onnx", {"x": x})
    np.testing.assert_allclose(result.as_numpy("y"), expected["y"], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(result.as_numpy("total"), expected["total"], rtol=RTOL, atol=ATOL)
    assert result.get_response()["model_version"] == version


def test_infer_without_version_uses_the_latest_and_only_the_outputs_asked_for(served, client):
    x = np.ones((2, 4), np.float32)
    result = infer(client, x, binary=False, outputs=["total"], request_id="r1")
    response = result.get_response()
    assert response["model_version"] == "2" and response["id"] == "r1"
    assert [o["name"] for o in response["outputs"]] == ["total"]
    expected = onnxruntime_outputs(served.repo / "dense" / "2" / "model.onnx", {"x": x})
    np.testing.assert_allclose(result.as_numpy("total"), expected["total"], rtol=RTOL, atol=ATOL)


def test_malformed_json_is_400(served, client):
    status, body = post(served, "/v2/models/dense/infer", b'{"inputs": [')
    assert status == 400 and "not valid JSON" in body["error"]
    status, body = post(served, "/v2/models/dense/infer", b'{"inputs": [{"name": "x"}]}')
    assert status == 400 and "datatype" in body["error"]
    assert_still_serving(client)


def test_wrong_shape_and_wrong_dtype_are_400(client):
    with pytest.raises(InferenceServerException) as shape:
        infer(client, np.ones((2, 5), np.float32))
    assert shape.value.status() == "400" and "expects shape [-1, 4]" in shape.value.message()
    tensor = httpclient.InferInput("x", [2, 4], "INT64")
    tensor.set_data_from_numpy(np.ones((2, 4), np.int64))
    with pytest.raises(InferenceServerException) as dtype:
        client.infer("dense", [tensor])
    assert dtype.value.status() == "400" and "expects datatype FP32, got INT64" in dtype.value.message()
    with pytest.raises(InferenceServerException) as batch:
        infer(client, np.ones((9, 4), np.float32))
    assert batch.value.status() == "400" and "max_batch_size" in batch.value.message()
    assert_still_serving(client)


def test_data_that_does_not_fill_the_shape_is_400(served, client):
    request = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 4], "data": [1.0, 2.0]}]}
    status, body = post(served, "/v2/models/dense/infer", json.dumps(request).encode())
    assert status == 400 and "holds 8 elements, data has 2" in body["error"]
    assert_still_serving(client)


def test_unknown_model_or_version_is_404(client):
    for model, version in [("nope", ""), ("dense", "7"), ("dense", "latest")]:
        with pytest.raises(InferenceServerException) as error:
            infer(client, np.ones((1, 4), np.float32), model=model, version=version)
        assert error.value.status() == "404", (model, version)
    with pytest.raises(InferenceServerException) as metadata:
        client.get_model_metadata("nope")
    assert metadata.value.status() == "404"
    assert_still_serving(client)


def test_a_version_that_failed_to_load_is_503_with_its_reason(client):
    with pytest.raises(InferenceServerException) as error:
        infer(client, np.ones((1, 4), np.float32), model="broken")
    assert error.value.status() == "503"
    index = {row["name"]: row for row in client.get_model_repository_index()}
    assert index["broken"]["state"] == "UNAVAILABLE" and "not a valid ONNX model" in index["broken"]["reason"]
    assert index["dense"]["state"] == "READY"


def test_body_over_the_limit_is_413(client):
    rows = MAX_BODY_BYTES // 16 + 1  # 16 bytes per row of 4 float32: one row past the limit
    with pytest.raises(InferenceServerException) as error:
        infer(client, np.zeros((rows, 4), np.float32))
    assert error.value.status() == "413" and "over the server's limit" in error.value.message()
    assert_still_serving(client)


def test_statistics_count_the_inferences(client):
    before = client.get_inference_statistics("dense", "1")["model_stats"][0]
    infer(client, np.ones((3, 4), np.float32), version="1")
    after = client.get_inference_statistics("dense", "1")["model_stats"][0]
    assert after["inference_count"] == before["inference_count"] + 3
    assert after["inference_stats"]["success"]["count"] == before["inference_stats"]["success"]["count"] + 1
    everything = client.get_inference_statistics()["model_stats"]
    assert {(s["name"], s["version"]) for s in everything} >= {("dense", "1"), ("dense", "2"), ("auto", "1")}


def test_load_is_refused_outside_explicit_mode(client):
    with pytest.raises(InferenceServerException) as error:
        client.load_model("dense")
    assert error.value.status() == "400" and "explicit" in error.value.message()


def test_repository_index_can_list_only_ready_models(served):
    status, rows = post(served, "/v2/repository/index", b'{"ready": true}')
    assert status == 200 and {row["name"] for row in rows} == {"dense", "auto"}
    assert all(row["state"] == "READY" for row in rows)
    status, body = post(served, "/v2/repository/index", b"[1]")
    assert status == 400 and "JSON object" in body["error"]


def test_a_client_that_disconnects_mid_request_leaves_the_server_serving(served, client):
    host, port = served.http_url.split(":")
    for sent in (b"", b'{"inputs": ['):  # gone before the body, and halfway through it
        with socket.create_connection((host, int(port))) as connection:
            connection.sendall(b"POST /v2/models/dense/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + sent)
    assert_still_serving(client)
    assert client.is_server_ready()
