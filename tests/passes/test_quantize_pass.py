"""The QDQ folding pass (tinyinfer/passes/quantize.py).

Each model is a hand-written standard QDQ graph: a float input, ``QuantizeLinear →
DequantizeLinear``, one op (weights as int8 initializers behind DequantizeLinear), and a
final ``QuantizeLinear`` whose uint8 result is the graph output. Oracles:

* the same model at ``opt_level="O1"``: the QDQ chain run in float by tinyinfer's reference
  ops (the pass runs at O2 only);
* ONNX Runtime on the QDQ model (it fuses the chains into its own int8 kernels).

Tolerance: **1** in the uint8 output, i.e. one quantization step of the output scale. The
integer op rounds once after an exact int32 accumulation while the float chain rounds each
float32 product and sum, so a value near a rounding boundary may land on either side.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import tinyinfer
from tinyinfer.frontend import to_onnx
from tinyinfer.passes import PassManager

RNG = np.random.default_rng(0)
X_SCALE, X_ZERO = 0.03, 128


def _qdq_model(body, initializers, x_shape, extra_inputs=()):
    """x → Q → DQ ('xd'), then ``body`` (which must write 'r'), then Q → 'y' (uint8)."""
    inits = {"x_s": np.float32(X_SCALE), "x_z": np.uint8(X_ZERO), "y_s": np.float32(0.05), "y_z": np.uint8(0)}
    inits.update(initializers)
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_s", "x_z"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "x_s", "x_z"], ["xd"]),
        *body,
        helper.make_node("QuantizeLinear", ["r", "y_s", "y_z"], ["y"]),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape), *extra_inputs]
    graph = helper.make_graph(nodes, "qdq", inputs, [helper.make_tensor_value_info("y", TensorProto.UINT8, None)],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model


def _weight(name, shape, axis=None):
    """An int8 weight behind DequantizeLinear (per channel along ``axis``, or per tensor)."""
    values = RNG.integers(-127, 128, size=shape).astype(np.int8)
    channels = shape[axis] if axis is not None else None
    scale = RNG.uniform(0.002, 0.01, channels).astype(np.float32) if channels else np.float32(0.005)
    zero = np.zeros(np.shape(scale), np.int8)
    attrs = {"axis": axis} if axis is not None else {}
    node = helper.make_node("DequantizeLinear", [f"{name}_q", f"{name}_s", f"{name}_z"], [name], **attrs)
    return node, {f"{name}_q": values, f"{name}_s": scale, f"{name}_z": zero}, scale


def _conv(activation=None, clip=(0.0, 6.0)):
    w_node, inits, w_scale = _weight("w", (4, 3, 3, 3), axis=0)
    bias = RNG.integers(-500, 500, size=4).astype(np.int32)
    inits.update({"b_q": bias, "b_s": (np.float32(X_SCALE) * w_scale).astype(np.float32)})
    body = [w_node, helper.make_node("DequantizeLinear", ["b_q", "b_s"], ["b"], axis=0)]
    out = "r" if activation is None else "c"
    body.append(helper.make_node("Conv", ["xd", "w", "b"], [out], pads=[1, 1, 1, 1]))
    if activation == "Relu":
        body.append(helper.make_node("Relu", ["c"], ["r"]))
    elif activation == "Clip":  # the output range is the clip's, [0, 6] for ReLU6
        inits.update({"lo": np.float32(clip[0]), "hi": np.float32(clip[1]), "y_s": np.float32(6.0 / 255)})
        body.append(helper.make_node("Clip", ["c", "lo", "hi"], ["r"]))
    return _qdq_model(body, inits, [1, 3, 6, 6])


def _conv_add(relu=True):
    """A residual join: Q(relu(DQ(Q(conv(x))) + x)), the conv quantized on its own (c_s, c_z)."""
    w_node, inits, w_scale = _weight("w", (3, 3, 3, 3), axis=0)
    inits.update({"c_s": np.float32(0.04), "c_z": np.uint8(120)})
    body = [w_node, helper.make_node("Conv", ["xd", "w"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("QuantizeLinear", ["c", "c_s", "c_z"], ["cq"]),
            helper.make_node("DequantizeLinear", ["cq", "c_s", "c_z"], ["cd"]),
            helper.make_node("Add", ["cd", "xd"], ["s" if relu else "r"])]
    if relu:
        body.append(helper.make_node("Relu", ["s"], ["r"]))
    return _qdq_model(body, inits, [1, 3, 6, 6])


def _matmul(per_column):
    w_node, inits, _ = _weight("w", (8, 5), axis=1 if per_column else None)
    return _qdq_model([w_node, helper.make_node("MatMul", ["xd", "w"], ["r"])], inits, [3, 8])


def _gemm(trans_b):
    w_node, inits, w_scale = _weight("w", (5, 8) if trans_b else (8, 5), axis=0 if trans_b else 1)
    inits["c"] = RNG.standard_normal(5).astype(np.float32)  # a float bias: the pass requantizes it
    return _qdq_model([w_node, helper.make_node("Gemm", ["xd", "w", "c"], ["r"], transB=trans_b)], inits, [3, 8])


def _binary(op, relu=False):
    inits = {"b_s": np.float32(0.02), "b_z": np.uint8(100)}
    body = [
        helper.make_node("QuantizeLinear", ["x2", "b_s", "b_z"], ["x2q"]),
        helper.make_node("DequantizeLinear", ["x2q", "b_s", "b_z"], ["x2d"]),
        helper.make_node(op, ["xd", "x2d"], ["s" if relu else "r"]),
    ]
    if relu:
        body.append(helper.make_node("Relu", ["s"], ["r"]))
    extra = [helper.make_tensor_value_info("x2", TensorProto.FLOAT, [2, 4, 3])]
    return _qdq_model(body, inits, [2, 4, 3], extra)


def _concat():
    body = [helper.make_node("DequantizeLinear", ["xq", "x_s", "x_z"], ["xd2"]),
            helper.make_node("Concat", ["xd", "xd2"], ["r"], axis=1)]
    return _qdq_model(body, {}, [1, 2, 3, 3])


def _pool(op, **attrs):
    return _qdq_model([helper.make_node(op, ["xd"], ["r"], **attrs)], {}, [1, 2, 5, 5])


def _maxpool_same_parameters():
    model = _pool("MaxPool", kernel_shape=[2, 2], strides=[2, 2])
    for init in model.graph.initializer:  # y_s, y_z := x_s, x_z
        if init.name == "y_s":
            init.CopyFrom(numpy_helper.from_array(np.float32(X_SCALE), "y_s"))
        if init.name == "y_z":
            init.CopyFrom(numpy_helper.from_array(np.uint8(X_ZERO), "y_z"))
    return model


CASES = {
    "conv": (lambda: _conv(), "QLinearConv"),
    "conv_relu": (lambda: _conv("Relu"), "QLinearConv"),
    "conv_relu6": (lambda: _conv("Clip"), "QLinearConv"),
    "conv_add": (lambda: _conv_add(relu=False), "ai.tinyinfer:QLinearConvAdd"),
    "conv_add_relu": (_conv_add, "ai.tinyinfer:QLinearConvAdd"),
    "matmul_per_tensor": (lambda: _matmul(False), "QLinearMatMul"),
    "matmul_per_column": (lambda: _matmul(True), "QLinearMatMul"),
    "gemm": (lambda: _gemm(0), "ai.tinyinfer:QLinearGemm"),
    "gemm_trans_b": (lambda: _gemm(1), "ai.tinyinfer:QLinearGemm"),
    "add": (lambda: _binary("Add"), "ai.tinyinfer:QLinearAdd"),
    "add_relu": (lambda: _binary("Add", relu=True), "ai.tinyinfer:QLinearAdd"),
    "mul": (lambda: _binary("Mul"), "ai.tinyinfer:QLinearMul"),
    "concat": (_concat, "ai.tinyinfer:QLinearConcat"),
    "average_pool": (lambda: _pool("AveragePool", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
                     "ai.tinyinfer:QLinearAveragePool"),
    "global_average_pool": (lambda: _pool("GlobalAveragePool"), "ai.tinyinfer:QLinearGlobalAveragePool"),
    "maxpool": (_maxpool_same_parameters, "MaxPool"),
}


def _feeds(model):
    feeds = {}
    for value in model.graph.input:
        shape = [d.dim_value for d in value.type.tensor_type.shape.dim]
        feeds[value.name] = (RNG.standard_normal(shape) * 1.5).astype(np.float32)
    return feeds


@pytest.mark.parametrize("case", sorted(CASES))
def test_folded_graph_matches_qdq_graph_and_onnxruntime(case):
    import onnxruntime as ort

    build, expected_op = CASES[case]
    model = build()
    onnx.checker.check_model(onnx.shape_inference.infer_shapes(model), full_check=True)
    feeds = _feeds(model)
    folded = tinyinfer.InferenceSession(model, opt_level="O2", check_shapes=True)
    ops = folded.graph.op_histogram()
    assert ops[expected_op] == 1, ops
    assert "DequantizeLinear" not in ops, f"every DQ should be folded: {ops}"
    ours = folded.run(None, feeds)[0].astype(np.int32)
    float_chain = tinyinfer.InferenceSession(model, opt_level="O1").run(None, feeds)[0].astype(np.int32)
    theirs = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    assert np.abs(ours - float_chain).max() <= 1
    assert np.abs(ours - theirs.astype(np.int32)).max() <= 1
    # The folded graph exports back to standard ONNX (ai.tinyinfer ops as DQ -> op -> Q).
    exported = to_onnx(folded.graph)
    assert all(node.domain in ("", "ai.onnx") for node in exported.graph.node)
    again = ort.InferenceSession(exported.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    assert np.abs(ours - again.astype(np.int32)).max() <= 1


def test_maxpool_on_integers_is_exact():
    model = _maxpool_same_parameters()
    feeds = _feeds(model)
    ours = tinyinfer.InferenceSession(model, opt_level="O2").run(None, feeds)[0]
    np.testing.assert_array_equal(ours, tinyinfer.InferenceSession(model, opt_level="O1").run(None, feeds)[0])


def test_relu_not_implied_by_the_output_zero_point_is_not_folded():
    """With y_zero_point 128, Q(relu(y)) clamps at 128, which QLinearConv would not do."""
    model = _conv("Relu")
    for init in model.graph.initializer:
        if init.name == "y_z":
            init.CopyFrom(numpy_helper.from_array(np.uint8(128), "y_z"))
    feeds = _feeds(model)
    session = tinyinfer.InferenceSession(model, opt_level="O2")
    assert "QLinearConv" not in session.graph.op_histogram()
    np.testing.assert_array_equal(session.run(None, feeds)[0],
                                  tinyinfer.InferenceSession(model, opt_level="O1").run(None, feeds)[0])


def test_clip_narrower_than_the_output_range_is_not_folded():
    model = _conv("Clip", clip=(0.0, 1.0))  # Q(1.0) = 43 < 255: the clip does real work
    assert "QLinearConv" not in tinyinfer.InferenceSession(model, opt_level="O2").graph.op_histogram()


def test_unmatched_chain_stays_and_runs():
    model = _pool("Softmax")
    session = tinyinfer.InferenceSession(model, opt_level="O2")
    ops = session.graph.op_histogram()
    assert ops["Softmax"] == 1 and ops["DequantizeLinear"] == 1
    feeds = _feeds(model)
    np.testing.assert_array_equal(session.run(None, feeds)[0],
                                  tinyinfer.InferenceSession(model, opt_level="O1").run(None, feeds)[0])


def test_pass_runs_at_o2_not_o1_and_reports_what_it_folded():
    model = _conv("Relu")
    graph = tinyinfer.load(model)
    _, report = PassManager("O2").run(graph)
    fold = next(p for p in report.passes if p.name == "fold_qdq")
    assert any("QLinearConv" in note for note in fold.notes)
    _, report = PassManager("O1").run(graph)
    assert all(p.name != "fold_qdq" for p in report.passes)


def test_float_graph_is_untouched():
    graph = tinyinfer.load(_conv())
    graph.nodes = [n for n in graph.nodes if n.op_type not in ("QuantizeLinear",)]
    from tinyinfer.passes.quantize import fold_qdq

    assert fold_qdq(graph) == []
