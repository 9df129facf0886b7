"""Post-training quantization (tinyinfer/compress/ptq.py) and the ``tinyinfer quantize`` command.

Oracles: ``onnx.checker`` (the output is a standard ONNX model), ONNX Runtime (it must run
the QDQ model, and its int8 result is the yardstick for tinyinfer's), and the fp32 model
itself (a quantized model approximates it: SNR thresholds below are loose lower bounds,
8-bit quantization of these small random networks gives 25-40 dB). The structure of the
QDQ graph is checked against the rules the quantizer promises (per-channel int8 weights,
int32 biases with scale s_in·s_w, Relu folded into the conv's output range, one scale
shared by a Concat's inputs, MaxPool passing its scale through).
"""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import tinyinfer
from tinyinfer.cli import main
from tinyinfer.compress.affine import pack_int4
from tinyinfer.compress.ptq import (
    AlreadyQuantizedError,
    CalibrationDataError,
    CalibrationDataReader,
    ListDataReader,
    NpzDataReader,
    quantize_dynamic,
    quantize_static,
    random_normal_reader,
)
from tinyinfer.errors import TinyInferError

INPUT = "image"
SHAPE = (1, 3, 12, 12)


def _he(rng, shape):
    fan_in = int(np.prod(shape[1:]))
    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)


def small_cnn(opset: int = 11) -> onnx.ModelProto:
    """conv+BN+relu → maxpool → two conv branches → concat → conv → residual add → GAP → gemm → softmax."""
    rng = np.random.default_rng(0)
    weights = {
        "w1": _he(rng, (8, 3, 3, 3)), "b1": np.zeros(8, np.float32),
        "bn_scale": rng.uniform(0.5, 1.5, 8).astype(np.float32), "bn_bias": rng.uniform(-0.2, 0.2, 8).astype(np.float32),
        "bn_mean": rng.uniform(-0.1, 0.1, 8).astype(np.float32), "bn_var": rng.uniform(0.5, 1.5, 8).astype(np.float32),
        "wa": _he(rng, (4, 8, 1, 1)), "ba": rng.uniform(-0.1, 0.1, 4).astype(np.float32),
        "wb": _he(rng, (4, 8, 3, 3)), "bb": rng.uniform(-0.1, 0.1, 4).astype(np.float32),
        "w3": _he(rng, (8, 8, 3, 3)), "b3": rng.uniform(-0.1, 0.1, 8).astype(np.float32),
        "fc": _he(rng, (10, 8)), "fc_b": rng.uniform(-0.1, 0.1, 10).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", [INPUT, "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("BatchNormalization", ["c1", "bn_scale", "bn_bias", "bn_mean", "bn_var"], ["n1"], name="bn1"),
        helper.make_node("Relu", ["n1"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2], name="pool1"),
        helper.make_node("Conv", ["p1", "wa", "ba"], ["ca"], name="conv_a"),
        helper.make_node("Relu", ["ca"], ["ra"], name="relu_a"),
        helper.make_node("Conv", ["p1", "wb", "bb"], ["cb"], pads=[1, 1, 1, 1], name="conv_b"),
        helper.make_node("Relu", ["cb"], ["rb"], name="relu_b"),
        helper.make_node("Concat", ["ra", "rb"], ["cat"], axis=1, name="concat"),
        helper.make_node("Conv", ["cat", "w3", "b3"], ["c3"], pads=[1, 1, 1, 1], name="conv3"),
        helper.make_node("Add", ["c3", "p1"], ["sum"], name="residual"),
        helper.make_node("Relu", ["sum"], ["r3"], name="relu3"),
        helper.make_node("GlobalAveragePool", ["r3"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc", "fc_b"], ["logits"], transB=1, name="fc"),
        helper.make_node("Softmax", ["logits"], ["prob"], axis=1, name="softmax"),
    ]
    graph = helper.make_graph(
        nodes, "small_cnn", [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, SHAPE)],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, [1, 10])],
        [numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    return model


def calibration(count=8, seed=0):
    rng = np.random.default_rng(seed)
    return [{INPUT: rng.standard_normal(SHAPE).astype(np.float32)} for _ in range(count)]


def snr_db(reference, approximation):
    reference, approximation = np.asarray(reference, np.float64), np.asarray(approximation, np.float64)
    return 10 * np.log10(np.sum(reference**2) / np.sum((reference - approximation) ** 2))


def run_ort(model, feeds):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


@pytest.fixture(scope="module")
def quantized():
    model = small_cnn()
    report = quantize_static(model, None, ListDataReader(calibration()), progress=False)
    return model, report


def _by_output(model):
    return {out: node for node in model.graph.node for out in node.output}


def _initializer(model, name):
    return next(numpy_helper.to_array(t) for t in model.graph.initializer if t.name == name)


# ---------------------------------------------------------------------------- static: the QDQ model
def test_static_model_is_standard_onnx_that_onnxruntime_runs(quantized):
    model, report = quantized
    result = report.model
    onnx.checker.check_model(result, full_check=True)
    assert max(o.version for o in result.opset_import if o.domain in ("", "ai.onnx")) >= 13
    feeds = calibration(1, seed=7)[0]
    assert snr_db(run_ort(model, feeds), run_ort(result, feeds)) > 20


def test_static_model_runs_in_tinyinfer_folded_and_agrees_with_onnxruntime(quantized):
    _, report = quantized
    feeds = calibration(1, seed=7)[0]
    session = tinyinfer.InferenceSession(report.model)
    ops = session.graph.op_histogram()
    # The residual Add runs as its own QLinearAdd or fused into the conv before it (QLinearConvAdd).
    fused = ops["ai.tinyinfer:QLinearConvAdd"]
    assert ops["QLinearConv"] + fused == 4 and ops["ai.tinyinfer:QLinearAdd"] + fused == 1
    assert ops["ai.tinyinfer:QLinearConcat"] == 1
    ours = session.run(None, feeds)[0]
    # Probabilities: ONNX Runtime and tinyinfer round a few int8 values differently (1 LSB).
    np.testing.assert_allclose(ours, run_ort(report.model, feeds), atol=2e-3)


def test_static_structure_follows_the_quantization_rules(quantized):
    _, report = quantized
    model = report.model
    producer = _by_output(model)
    ops = collections.Counter(n.op_type for n in model.graph.node)
    assert "BatchNormalization" not in ops  # folded into conv1 before quantizing
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    for conv in convs:
        x_dq, w_dq, b_dq = (producer[name] for name in conv.input)
        assert w_dq.op_type == "DequantizeLinear"
        w = _initializer(model, w_dq.input[0])
        w_scale = _initializer(model, w_dq.input[1])
        assert w.dtype == np.int8 and np.abs(w).max() <= 127
        assert w_scale.shape == (w.shape[0],) and next(a.i for a in w_dq.attribute if a.name == "axis") == 0
        b = _initializer(model, b_dq.input[0])
        x_scale = _initializer(model, x_dq.input[1])
        assert b.dtype == np.int32
        np.testing.assert_allclose(_initializer(model, b_dq.input[1]), x_scale * w_scale, rtol=1e-6)
    # Relu straight after each conv, and the Q after the Relu (no Q/DQ between them).
    readers = collections.defaultdict(list)
    for node in model.graph.node:
        for name in node.input:
            readers[name].append(node)
    for conv in convs:
        (after,) = readers[conv.output[0]]
        if after.op_type == "Relu":
            assert [n.op_type for n in readers[after.output[0]]] == ["QuantizeLinear"]
            (q,) = readers[after.output[0]]
            assert _initializer(model, q.input[2]) == 0  # a Relu range starts at 0: zero point 0
    # Concat: every input dequantized with the output's scale.
    concat = next(n for n in model.graph.node if n.op_type == "Concat")
    scales = {float(_initializer(model, producer[name].input[1])) for name in concat.input}
    (q_out,) = readers[concat.output[0]]
    assert scales == {float(_initializer(model, q_out.input[1]))}
    # MaxPool passes its input's scale through.
    pool = next(n for n in model.graph.node if n.op_type == "MaxPool")
    (q_pool,) = readers[pool.output[0]]
    assert _initializer(model, producer[pool.input[0]].input[1]) == _initializer(model, q_pool.input[1])


def test_report_counts_and_explains(quantized):
    _, report = quantized
    assert report.quantized["Conv"] == 4 and report.quantized["Relu"] == 4
    assert report.kept_float["Softmax"] == 1 and "float" in report.reasons["Softmax"]
    assert report.samples == 8
    assert report.weight_bytes_after < report.weight_bytes_before / 2
    text = report.table()
    assert "Softmax" in text and "mse calibration on 8 sample(s)" in text and "bias correction" in text


@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy", "mse"])
def test_every_calibration_method_gives_a_usable_model(method):
    model = small_cnn()
    report = quantize_static(model, None, calibration(), method=method, progress=False)
    feeds = calibration(1, seed=9)[0]
    assert snr_db(run_ort(model, feeds), run_ort(report.model, feeds)) > 15


def test_per_tensor_weights_have_one_scale():
    report = quantize_static(small_cnn(), None, calibration(2), per_channel=False, progress=False)
    producer = _by_output(report.model)
    for conv in (n for n in report.model.graph.node if n.op_type == "Conv"):
        assert _initializer(report.model, producer[conv.input[1]].input[1]).shape == ()


def test_int8_activations_run_folded_in_tinyinfer_as_in_onnxruntime():
    report = quantize_static(small_cnn(), None, calibration(4), activation_type=np.int8, progress=False)
    feeds = calibration(1, seed=3)[0]
    session = tinyinfer.InferenceSession(report.model)
    ops = session.graph.op_histogram()
    assert ops["QLinearConv"] + ops["ai.tinyinfer:QLinearConvAdd"] == 4
    np.testing.assert_allclose(session.run(None, feeds)[0], run_ort(report.model, feeds), atol=2e-3)


@pytest.mark.parametrize("options", [{"equalize": True, "bias_correction": False}, {"bias_correction": True},
                                     {"equalize": True, "bias_correction": True, "per_channel": False}])
def test_equalization_and_bias_correction_options(options):
    model = small_cnn()
    report = quantize_static(model, None, calibration(4), progress=False, **options)
    onnx.checker.check_model(report.model, full_check=True)
    feeds = calibration(1, seed=5)[0]
    assert snr_db(run_ort(model, feeds), run_ort(report.model, feeds)) > 15
    notes = " ".join(report.notes)
    assert ("cross-layer equalization" in notes) == bool(options.get("equalize"))
    assert ("bias correction" in notes) == bool(options.get("bias_correction"))


def test_op_types_restricts_what_is_quantized():
    report = quantize_static(small_cnn(), None, calibration(2), op_types=["Conv"], progress=False)
    assert report.quantized["Conv"] == 4 and report.quantized["Concat"] == 0
    assert report.kept_float["Concat"] == 1 and report.reasons["Concat"] == "excluded by op_types"
    run_ort(report.model, calibration(1)[0])


def test_writes_onnx_and_tinf(tmp_path):
    model = small_cnn()
    quantize_static(model, tmp_path / "q.onnx", calibration(2), progress=False)
    onnx.checker.check_model(str(tmp_path / "q.onnx"))
    quantize_static(model, tmp_path / "q.tinf", calibration(2), progress=False)
    feeds = calibration(1)[0]
    a = tinyinfer.InferenceSession(str(tmp_path / "q.onnx")).run(None, feeds)[0]
    b = tinyinfer.InferenceSession(str(tmp_path / "q.tinf")).run(None, feeds)[0]
    np.testing.assert_array_equal(a, b)


def test_accepts_a_path_and_a_graph(tmp_path):
    onnx.save(small_cnn(), str(tmp_path / "f.onnx"))
    from_path = quantize_static(tmp_path / "f.onnx", None, calibration(2), progress=False)
    from_graph = quantize_static(tinyinfer.load(small_cnn()), None, calibration(2), progress=False)
    assert from_path.quantized == from_graph.quantized


def test_a_reader_like_onnxruntimes_works():
    class Reader(CalibrationDataReader):
        def __init__(self):
            self.data = iter(calibration(3))

        def get_next(self):
            return next(self.data, None)

    assert quantize_static(small_cnn(), None, Reader(), progress=False).samples == 3
    from onnxruntime.quantization import CalibrationDataReader as OnnxRuntimeReader

    class TheirReader(OnnxRuntimeReader):
        def __init__(self):
            self.data = iter(calibration(2))

        def get_next(self):
            return next(self.data, None)

    assert quantize_static(small_cnn(), None, TheirReader(), progress=False).samples == 2
    with pytest.raises(CalibrationDataError, match="reader with get_next"):
        quantize_static(small_cnn(), None, 42, progress=False)


# ---------------------------------------------------------------------------- 4-bit weights
@pytest.fixture(scope="module")
def quantized_int4():
    return quantize_static(small_cnn(), None, ListDataReader(calibration()), weight_type="int4", progress=False)


def _weight_dequantizers(model):
    """(DequantizeLinear node, its integer initializer) for every conv and gemm weight."""
    producer, inits = _by_output(model), {t.name: t for t in model.graph.initializer}
    readers = [n for n in model.graph.node if n.op_type in ("Conv", "Gemm")]
    return [(producer[n.input[1]], inits[producer[n.input[1]].input[0]]) for n in readers]


def test_int4_weights_are_packed_onnx_int4_tensors(quantized_int4):
    model = quantized_int4.model
    onnx.checker.check_model(model, full_check=True)
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 21
    assert quantized_int4.weight_type == "int4"
    for dq, tensor in _weight_dequantizers(model):
        assert tensor.data_type == TensorProto.INT4
        values = numpy_helper.to_array(tensor)
        assert values.astype(np.int8).min() >= -7 and values.astype(np.int8).max() <= 7  # symmetric -7..7
        assert tensor.raw_data == pack_int4(values).tobytes()  # two per byte, low nibble first
        axis = next(a.i for a in dq.attribute if a.name == "axis")
        assert _initializer(model, dq.input[1]).shape == (values.shape[axis],)  # per output channel


def test_int4_weights_take_half_the_bytes_of_int8(quantized, quantized_int4):
    sizes = [sum(len(t.raw_data) for _, t in _weight_dequantizers(r.model)) for r in (quantized[1], quantized_int4)]
    # ceil(n / 2) bytes per tensor of n values: half, up to one byte per odd-sized tensor.
    assert sizes[1] == pytest.approx(sizes[0] / 2, abs=len(_weight_dequantizers(quantized_int4.model)))
    assert quantized_int4.weight_bytes_after < quantized[1].weight_bytes_after


def test_int4_model_runs_in_onnxruntime_and_tinyinfer_alike(quantized, quantized_int4):
    model = small_cnn()
    feeds = calibration(4, seed=7)
    reference = [run_ort(model, f) for f in feeds]
    theirs = [run_ort(quantized_int4.model, f) for f in feeds]
    ours = [tinyinfer.InferenceSession(quantized_int4.model).run(None, f)[0] for f in feeds]
    # The int4 convs run in float on dequantized weights in both engines; the uint8 tensors
    # around them may round 1 LSB apart, which moves the probabilities by less than 2e-3.
    np.testing.assert_allclose(np.array(ours), np.array(theirs), atol=2e-3)
    int8 = [run_ort(quantized[1].model, f) for f in feeds]
    snr4, snr8 = snr_db(reference, theirs), snr_db(reference, int8)
    assert np.isfinite(snr4) and 10 < snr4 < snr8  # 16x coarser weight steps cost SNR, but the model still works


def test_cli_int4_weights(tmp_path, capsys):
    onnx.save(small_cnn(), str(tmp_path / "f.onnx"))
    assert main(["quantize", str(tmp_path / "f.onnx"), str(tmp_path / "q4.onnx"), "--samples", "2",
                 "--weight-type", "int4"]) == 0
    assert "per-channel int4 weights" in capsys.readouterr().out
    onnx.checker.check_model(str(tmp_path / "q4.onnx"), full_check=True)
    assert main(["quantize", str(tmp_path / "f.onnx"), str(tmp_path / "d.onnx"), "--mode", "dynamic",
                 "--weight-type", "int4"]) == 1
    assert "--mode static only" in capsys.readouterr().err


@pytest.mark.parametrize("weight_type", ["int3", np.uint8, "float16"])
def test_unsupported_weight_types_are_refused(weight_type):
    with pytest.raises(TinyInferError, match="weight_type must be one of int8, int4"):
        quantize_static(small_cnn(), None, calibration(1), weight_type=weight_type, progress=False)


# ---------------------------------------------------------------------------- dynamic
def mlp_and_conv() -> onnx.ModelProto:
    rng = np.random.default_rng(1)
    weights = {"w": _he(rng, (4, 3, 3, 3)), "b": rng.uniform(-0.1, 0.1, 4).astype(np.float32),
               "m": _he(rng, (16, 36)).T.copy(), "mb": rng.uniform(-0.1, 0.1, 16).astype(np.float32),
               "g": _he(rng, (5, 16)), "gb": rng.uniform(-0.1, 0.1, 5).astype(np.float32),
               "shape": np.array([1, 36], np.int64)}
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Reshape", ["r", "shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "m"], ["mm"]),
        helper.make_node("Add", ["mm", "mb"], ["h"]),
        helper.make_node("Relu", ["h"], ["hr"]),
        helper.make_node("Gemm", ["hr", "g", "gb"], ["y"], transB=1, alpha=0.5),
    ]
    graph = helper.make_graph(nodes, "dyn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 5, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])],
                              [numpy_helper.from_array(v, k) for k, v in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    return model


@pytest.mark.parametrize("per_channel", [True, False])
def test_dynamic_runs_in_onnxruntime_and_tinyinfer(per_channel):
    model = mlp_and_conv()
    report = quantize_dynamic(model, None, per_channel=per_channel)
    onnx.checker.check_model(report.model, full_check=True)
    ops = collections.Counter(n.op_type for n in report.model.graph.node)
    assert ops["DynamicQuantizeLinear"] == 3 and ops["ConvInteger"] == 1 and ops["MatMulInteger"] == 2
    assert report.quantized == {"Conv": 1, "Gemm": 2}  # MatMul + Add became a Gemm (O2) first
    feeds = {"x": np.random.default_rng(3).standard_normal((1, 3, 5, 5)).astype(np.float32)}
    expected = run_ort(model, feeds)
    theirs = run_ort(report.model, feeds)
    ours = tinyinfer.InferenceSession(report.model).run(None, feeds)[0]
    assert snr_db(expected, theirs) > 25
    # Both runtimes compute the same integers; float32 rescaling differs in the last bits.
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------- bad input
def test_already_quantized_model_is_refused(quantized):
    _, report = quantized
    with pytest.raises(AlreadyQuantizedError, match="already quantized.*QuantizeLinear"):
        quantize_static(report.model, None, calibration(1), progress=False)
    with pytest.raises(AlreadyQuantizedError):
        quantize_dynamic(quantize_dynamic(mlp_and_conv(), None).model, None)


def test_empty_calibration_data():
    with pytest.raises(CalibrationDataError, match="empty"):
        quantize_static(small_cnn(), None, ListDataReader([]), progress=False)


def test_mismatched_input_name():
    with pytest.raises(CalibrationDataError, match=r"feeds \['data'\], but the model's inputs are \['image'\]"):
        quantize_static(small_cnn(), None, [{"data": np.zeros(SHAPE, np.float32)}], progress=False)


def test_mis_shaped_sample():
    with pytest.raises(CalibrationDataError, match=r"shape \[1, 3, 10, 10\]; the model expects \[1x3x12x12\]"):
        quantize_static(small_cnn(), None, [{INPUT: np.zeros((1, 3, 10, 10), np.float32)}], progress=False)


def test_wrong_dtype_sample():
    with pytest.raises(CalibrationDataError, match="int64; the model expects float32"):
        quantize_static(small_cnn(), None, [{INPUT: np.zeros(SHAPE, np.int64)}], progress=False)


def test_ops_the_quantizer_does_not_handle_stay_float_and_the_report_names_them():
    model = small_cnn()
    graph = model.graph
    relu_a = next(n for n in graph.node if n.name == "relu_a")
    relu_a.op_type = "Sigmoid"  # not after-op foldable, no int8 form: runs in float
    graph.node.insert(1, helper.make_node("LRN", ["c1"], ["c1_lrn"], size=3, name="lrn"))
    next(n for n in graph.node if n.name == "bn1").input[0] = "c1_lrn"
    report = quantize_static(model, None, calibration(2), progress=False)
    assert report.kept_float["Sigmoid"] == 1 and report.kept_float["LRN"] == 1
    assert "power and a division" in report.reasons["LRN"] and "Sigmoid" in report.table()
    kinds = collections.Counter(n.op_type for n in report.model.graph.node)
    assert kinds["LRN"] == 1 and kinds["Sigmoid"] == 1 and kinds["QuantizeLinear"] > 0
    run_ort(report.model, calibration(1)[0])


def test_unknown_method_and_types():
    with pytest.raises(TinyInferError, match="unknown calibration method"):
        quantize_static(small_cnn(), None, calibration(1), method="kl")
    with pytest.raises(TinyInferError, match="activation_type"):
        quantize_static(small_cnn(), None, calibration(1), activation_type=np.int16)


def test_npz_reader(tmp_path):
    path = tmp_path / "calib.npz"
    np.savez(path, image=np.zeros((3, 3, 12, 12), np.float32))
    reader = NpzDataReader(path, [INPUT])
    assert len(reader) == 3 and reader.get_next()[INPUT].shape == SHAPE
    np.savez(tmp_path / "empty.npz", image=np.zeros((0, 3, 12, 12), np.float32))
    with pytest.raises(CalibrationDataError, match="is empty"):
        NpzDataReader(tmp_path / "empty.npz", [INPUT])
    with pytest.raises(CalibrationDataError, match=r"missing \['data'\]; not inputs of the model: \['image'\]"):
        NpzDataReader(path, ["data"])
    np.savez(tmp_path / "uneven.npz", a=np.zeros((2, 3)), b=np.zeros((3, 3)))
    with pytest.raises(CalibrationDataError, match="different numbers of samples"):
        NpzDataReader(tmp_path / "uneven.npz", ["a", "b"])
    (tmp_path / "broken.npz").write_bytes(b"not a zip file")
    with pytest.raises(CalibrationDataError, match="cannot read calibration data"):
        NpzDataReader(tmp_path / "broken.npz", [INPUT])


# ---------------------------------------------------------------------------- the command
def test_cli_static_with_calibration_file(tmp_path, capsys):
    onnx.save(small_cnn(), str(tmp_path / "f.onnx"))
    np.savez(tmp_path / "calib.npz", image=np.random.default_rng(0).standard_normal((4, 3, 12, 12)).astype(np.float32))
    code = main(["quantize", str(tmp_path / "f.onnx"), str(tmp_path / "q.onnx"), "--method", "percentile",
                 "--per-channel", "--calibration", str(tmp_path / "calib.npz"), "--samples", "2"])
    out = capsys.readouterr().out
    assert code == 0
    assert "calibrating on 2 sample(s)" in out and "percentile calibration" in out and "Softmax" in out
    onnx.checker.check_model(str(tmp_path / "q.onnx"))


def test_cli_static_without_calibration_says_so(tmp_path, capsys):
    onnx.save(small_cnn(), str(tmp_path / "f.onnx"))
    assert main(["quantize", str(tmp_path / "f.onnx"), str(tmp_path / "q.onnx"), "--samples", "2", "--per-tensor"]) == 0
    out = capsys.readouterr().out
    assert "2 random-normal sample(s)" in out and "per-tensor" in out


def test_cli_dynamic(tmp_path, capsys):
    onnx.save(mlp_and_conv(), str(tmp_path / "f.onnx"))
    assert main(["quantize", str(tmp_path / "f.onnx"), str(tmp_path / "d.onnx"), "--mode", "dynamic"]) == 0
    assert "dynamic quantization" in capsys.readouterr().out


@pytest.mark.parametrize("arrays, message", [
    ({"data": np.zeros((2, 3, 12, 12), np.float32)}, "model's inputs are ['image']"),
    ({"image": np.zeros((2, 3, 8, 8), np.float32)}, "the model expects [1x3x12x12]"),
    ({"image": np.zeros((0, 3, 12, 12), np.float32)}, "is empty"),
    ({}, "holds arrays [], but the model's inputs are ['image']"),
    ({"image": np.float32(1.0)}, "is a scalar; expected samples on axis 0"),
])
def test_cli_bad_calibration_file(tmp_path, capsys, arrays, message):
    onnx.save(small_cnn(), str(tmp_path / "f.onnx"))
    np.savez(tmp_path / "calib.npz", **arrays)
    code = main(["quantize", str(tmp_path / "f.onnx"), str(tmp_path / "q.onnx"), "--calibration", str(tmp_path / "calib.npz")])
    assert code == 1
    assert message in capsys.readouterr().err


def test_cli_refuses_a_quantized_model(tmp_path, capsys, quantized):
    onnx.save(quantized[1].model, str(tmp_path / "q.onnx"))
    assert main(["quantize", str(tmp_path / "q.onnx"), str(tmp_path / "qq.onnx"), "--samples", "1"]) == 1
    assert "already quantized" in capsys.readouterr().err


def test_random_normal_reader_fills_symbolic_dims():
    model = small_cnn()
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    reader = random_normal_reader(model, 2)
    assert len(reader) == 2 and reader.get_next()[INPUT].shape == SHAPE


def test_per_channel_scale_and_shift_stay_float():
    """A Mul / Add by per-channel constants that no conv absorbs (DenseNet's batch norms after a
    Concat) keeps float: one uint8 scale cannot hold the constants' spread."""
    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, (6, 3, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.uniform(0.01, 5.0, (1, 6, 1, 1)).astype(np.float32), "s"),
             numpy_helper.from_array(rng.normal(0, 1.0, (1, 6, 1, 1)).astype(np.float32), "t"),
             numpy_helper.from_array(rng.normal(0, 0.3, (4, 6, 1, 1)).astype(np.float32), "w2")]
    nodes = [helper.make_node("Conv", [INPUT, "w1"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Mul", ["p", "s"], ["m"]), helper.make_node("Add", ["m", "t"], ["a"]),
             helper.make_node("Conv", ["a", "w2"], ["y"])]
    graph = helper.make_graph(nodes, "scale_shift", [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, SHAPE)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    report = quantize_static(model, None, calibration(4), progress=False)
    assert report.kept_float["Mul"] == 1 and report.kept_float["Add"] == 1
    assert "per-channel constant" in report.reasons["Mul"]
    kinds = collections.Counter(n.op_type for n in report.model.graph.node)
    assert kinds["Mul"] == 1 and kinds["Add"] == 1 and kinds["QuantizeLinear"] > 0
    run_ort(report.model, calibration(1)[0])
