"""The float twin of a QDQ model (tinyinfer.compress.qdq), and `tinyinfer bench` on an int8 model.

Oracle: ONNX Runtime. The twin must compute exactly with the dequantized weights: a QDQ model
whose activations are left float (weights-only DQ) must equal its twin to float rounding, and
a fully quantized model's twin must sit between it and the fp32 model.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from tinyinfer.cli import main
from tinyinfer.compress import quantize_static
from tinyinfer.compress.qdq import float_twin, is_qdq_model
from tinyinfer.errors import TinyInferError

RNG = np.random.default_rng(0)


def small_cnn() -> onnx.ModelProto:
    rng = np.random.default_rng(1)  # the same weights at every call
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.normal(0, 0.1, 8).astype(np.float32), "b1"),
             numpy_helper.from_array(rng.normal(0, 0.2, (4, 8, 1, 1)).astype(np.float32), "w2")]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Conv", ["r", "w2"], ["y"])]
    graph = helper.make_graph(nodes, "small", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def run(model, x):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def snr(y, q):
    return 10 * np.log10(np.sum(y ** 2) / np.sum((y - q) ** 2))


@pytest.fixture(scope="module")
def quantized():
    calibration = [{"x": RNG.standard_normal((1, 3, 8, 8)).astype(np.float32)} for _ in range(8)]
    return quantize_static(small_cnn(), None, calibration, progress=False).model


def test_twin_has_no_quantization_and_sits_between_fp32_and_int8(quantized):
    twin = float_twin(quantized)
    onnx.checker.check_model(twin)
    assert is_qdq_model(quantized) and not is_qdq_model(twin)
    assert {n.op_type for n in twin.graph.node} <= {"Conv", "Relu"}
    x = RNG.standard_normal((1, 3, 8, 8)).astype(np.float32)
    fp32, with_twin, int8 = run(small_cnn(), x), run(twin, x), run(quantized, x)
    assert snr(fp32, with_twin) > snr(fp32, int8)  # weights only vs weights and activations
    assert snr(fp32, with_twin) > 30


def test_weights_only_qdq_equals_its_twin():
    w = RNG.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32)
    scale = (np.abs(w).reshape(8, -1).max(axis=1) / 127).astype(np.float32)
    q = np.clip(np.rint(w / scale[:, None, None, None]), -127, 127).astype(np.int8)
    inits = [numpy_helper.from_array(q, "wq"), numpy_helper.from_array(scale, "s"),
             numpy_helper.from_array(np.zeros(8, np.int8), "z")]
    nodes = [helper.make_node("DequantizeLinear", ["wq", "s", "z"], ["w"], axis=0),
             helper.make_node("Conv", ["x", "w"], ["y"])]
    graph = helper.make_graph(nodes, "wonly", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 6, 6])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    twin = float_twin(model)
    assert [n.op_type for n in twin.graph.node] == ["Conv"]
    x = RNG.standard_normal((1, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(run(twin, x), run(model, x), rtol=1e-5, atol=1e-6)


def test_qoperator_models_have_no_twin():
    node = helper.make_node("MatMulInteger", ["a", "b"], ["y"])
    graph = helper.make_graph([node], "qop", [helper.make_tensor_value_info("a", TensorProto.UINT8, [2, 2]),
                                              helper.make_tensor_value_info("b", TensorProto.INT8, [2, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.INT32, [2, 2])])
    with pytest.raises(TinyInferError, match="QOperator format"):
        float_twin(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def test_bench_on_an_int8_model_times_its_float_twin(quantized, tmp_path, capsys):
    path = tmp_path / "small.int8.onnx"
    onnx.save(quantized, str(path))
    assert main(["bench", str(path), "--repeat", "2", "--warmup", "1", "--threads", "1"]) == 0
    text = capsys.readouterr().out
    for row in ("tinyinfer (numba)", "tinyinfer fp32 twin (numba)", "onnxruntime fp32 twin"):
        assert row in text
    assert "int8 / fp32 latency on tinyinfer:" in text and "int8 / fp32 latency on onnxruntime:" in text
