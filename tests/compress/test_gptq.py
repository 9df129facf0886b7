"""GPTQ weight rounding (tinyinfer/compress/gptq.py).

Oracles: round-to-nearest (what GPTQ must reduce to when the inputs are uncorrelated), the
layer's output error ‖(W − s·q) X‖² that GPTQ minimises greedily (it must beat nearest
rounding on correlated inputs), explicit loops for the im2col statistics H = X Xᵀ, and ONNX
Runtime running the quantized model.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tinyinfer.compress import quantize_static
from tinyinfer.compress.gptq import as_rows, from_rows, gptq_round, input_hessians
from tinyinfer.compress.ptq import ListDataReader
from tinyinfer.errors import TinyInferError
from tinyinfer.runtime import load


def _per_row_scale(w, qmax=127):
    return np.abs(w).max(axis=1) / qmax


def test_uncorrelated_inputs_give_nearest_rounding():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((6, 40))
    scale = _per_row_scale(w)
    q = gptq_round(w, np.eye(40) * 3.0, scale, -127, 127)
    # H diagonal: no column's error can be absorbed by another, so every weight rounds to nearest.
    np.testing.assert_array_equal(q, np.clip(np.rint(w / scale[:, None]), -127, 127))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("qmax", [127, 7])
def test_correlated_inputs_output_error_below_nearest_rounding(seed, qmax):
    rng = np.random.default_rng(seed)
    inputs, outputs, samples = 48, 8, 2000
    # Correlated, non-zero-mean inputs, like ReLU feature maps whose neighbours move together.
    x = np.maximum(rng.standard_normal((inputs, inputs)) @ rng.standard_normal((inputs, samples)) * 0.3 + 0.5, 0)
    w = rng.standard_normal((outputs, inputs)) / np.sqrt(inputs)
    scale = _per_row_scale(w, qmax)
    nearest = np.clip(np.rint(w / scale[:, None]), -qmax, qmax)
    rounded = gptq_round(w, x @ x.T, scale, -qmax, qmax)
    assert np.all(rounded == np.rint(rounded)) and np.abs(rounded).max() <= qmax

    def output_error(q):
        return float(np.sum(((w - scale[:, None] * q) @ x) ** 2))

    # Greedy OBQ is not optimal, but on such inputs it removes most of the mean-driven error.
    assert output_error(rounded) < 0.7 * output_error(nearest)


@pytest.mark.parametrize("shape, axis", [((4, 3, 2, 2), 0), ((5, 7), 1), ((5, 7), 0)])
def test_rows_round_trip(shape, axis):
    w = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    rows = as_rows(w, axis)
    assert rows.shape[0] == shape[axis]
    np.testing.assert_array_equal(rows[1], np.take(w, 1, axis=axis).ravel())
    np.testing.assert_array_equal(from_rows(rows, shape, axis), w)


def _conv_gemm_model():
    rng = np.random.default_rng(1)
    weights = {"w": rng.standard_normal((4, 2, 3, 3)).astype(np.float32),
               "fc": rng.standard_normal((4 * 3 * 3, 5)).astype(np.float32),
               "shape": np.array([1, -1], np.int64)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 0, 1, 0], strides=[2, 2]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Reshape", ["r", "shape"], ["flat"]),
             helper.make_node("Gemm", ["flat", "fc"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 5, 7])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])],
                              [numpy_helper.from_array(v, k) for k, v in weights.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_input_hessians_match_explicit_patches():
    model = _conv_gemm_model()
    rng = np.random.default_rng(2)
    feeds = [{"x": rng.standard_normal((1, 2, 5, 7)).astype(np.float32)} for _ in range(3)]
    hessians = input_hessians(load(model), ListDataReader(feeds), ["w", "fc"])
    expected = np.zeros((18, 18))
    for feed in feeds:
        padded = np.pad(feed["x"][0].astype(np.float64), ((0, 0), (1, 1), (0, 0)))  # pads: 1 top/bottom
        for i in range(0, padded.shape[1] - 2, 2):
            for j in range(0, padded.shape[2] - 2, 2):
                patch = padded[:, i:i + 3, j:j + 3].ravel()  # (channel, row, column), as W.reshape(M, -1)
                expected += np.outer(patch, patch)
    np.testing.assert_allclose(hessians["w"], expected, rtol=1e-5, atol=1e-4)
    assert hessians["fc"].shape == (36, 36) and np.allclose(hessians["fc"], hessians["fc"].T)


def test_gptq_rounding_in_the_quantizer_lowers_the_output_error():
    import onnxruntime as ort

    model = _conv_gemm_model()
    rng = np.random.default_rng(3)
    feeds = [{"x": rng.standard_normal((1, 2, 5, 7)).astype(np.float32)} for _ in range(32)]
    nearest = quantize_static(model, None, ListDataReader(feeds), weight_type="int4", progress=False)
    gptq = quantize_static(model, None, ListDataReader(feeds), weight_type="int4", weight_rounding="gptq",
                           progress=False)
    assert any("GPTQ" in note for note in gptq.notes)
    assert gptq.weight_bytes_after == nearest.weight_bytes_after  # same grid, same bytes

    def noise(report):
        float_run = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        quant_run = ort.InferenceSession(report.model.SerializeToString(), providers=["CPUExecutionProvider"])
        return sum(float(np.sum((float_run.run(None, f)[0] - quant_run.run(None, f)[0]) ** 2)) for f in feeds)

    # 4-bit weights leave room: the rounding that sees the data loses clearly less (measured ~0.4x).
    assert noise(gptq) < 0.8 * noise(nearest)
    onnx.checker.check_model(gptq.model, full_check=True)


def test_unknown_weight_rounding_is_refused():
    with pytest.raises(TinyInferError, match="unknown weight_rounding 'adaround'; choose nearest or gptq"):
        quantize_static(_conv_gemm_model(), None, [{"x": np.zeros((1, 2, 5, 7), np.float32)}],
                        weight_rounding="adaround", progress=False)


def test_layers_with_too_many_inputs_keep_nearest_rounding(monkeypatch):
    from tinyinfer.compress import gptq

    monkeypatch.setattr(gptq, "MAX_INPUTS", 20)  # the conv has 2·3·3 = 18 inputs, the Gemm 36
    feeds = [{"x": np.ones((1, 2, 5, 7), np.float32)}]
    assert set(input_hessians(load(_conv_gemm_model()), ListDataReader(feeds), ["w", "fc"])) == {"w"}


def test_cli_gptq_flag(tmp_path, capsys):
    from tinyinfer.cli import main

    onnx.save(_conv_gemm_model(), str(tmp_path / "f.onnx"))
    assert main(["quantize", str(tmp_path / "f.onnx"), str(tmp_path / "q.onnx"), "--samples", "4", "--gptq"]) == 0
    assert "GPTQ rounding" in capsys.readouterr().out
