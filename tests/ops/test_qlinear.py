"""The int8 ops of the ai.tinyinfer domain (tinyinfer/ops/qlinear.py).

Oracle: the ``DequantizeLinear → float op → QuantizeLinear`` chain each op stands for, built
as a standard ONNX graph and run by ``onnx.reference`` (the spec made executable) and by ONNX
Runtime. Tolerances:

* QLinearAdd, QLinearMul, QLinearConcat and the pools dequantize, compute and quantize in
  float32 exactly as the chain does, so their integers must be **equal** to the chain's;
* QLinearGemm accumulates exactly in int32 while the chain sums float32 products, so a value
  that lands near a rounding boundary may go either way: **at most 1** (one quantization step
  of the output) is allowed. The int32 accumulation itself is checked exactly against
  Python integers.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import tinyinfer
from tinyinfer.errors import ShapeInferenceError
from tinyinfer.frontend import to_onnx
from tinyinfer.ops.qlinear import DOMAIN, decompose_qlinear

RNG = np.random.default_rng(0)


def _model(nodes, inputs, outputs, initializers, *, domain=True):
    graph = helper.make_graph(nodes, "qlinear", inputs, outputs, initializers)
    opsets = [helper.make_opsetid("", 21)] + ([helper.make_opsetid(DOMAIN, 1)] if domain else [])
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 9
    return model


def _params(name, scale, zero_point):
    return [numpy_helper.from_array(np.asarray(scale, np.float32), f"{name}_s"),
            numpy_helper.from_array(np.asarray(zero_point), f"{name}_z")]


def _random_q(shape, dtype):
    info = np.iinfo(dtype)
    return RNG.integers(info.min, info.max + 1, size=shape).astype(dtype)


def _run_tinyinfer(model, feeds):
    return tinyinfer.InferenceSession(model, check_shapes=True).run(None, feeds)[0]


def _run_chain(model, feeds):
    """The same computation written as a standard QDQ chain, run by onnx.reference."""
    return ReferenceEvaluator(model).run(None, feeds)[0]


def _qdq_binary(op, a_dtype, y_dtype, a_shape, b_shape):
    zero = lambda d: np.array(0 if d == np.int8 else 128, d)  # noqa: E731
    feeds = {"a": _random_q(a_shape, a_dtype), "b": _random_q(b_shape, a_dtype)}
    inits = _params("a", 0.05, zero(a_dtype)) + _params("b", 0.03, zero(a_dtype)) + _params("y", 0.07, zero(y_dtype))
    ins = [helper.make_tensor_value_info(n, onnx.helper.np_dtype_to_tensor_dtype(np.dtype(a_dtype)), s)
           for n, s in (("a", a_shape), ("b", b_shape))]
    out = [helper.make_tensor_value_info("y", onnx.helper.np_dtype_to_tensor_dtype(np.dtype(y_dtype)), None)]
    fused = _model([helper.make_node(f"QLinear{op}", ["a", "a_s", "a_z", "b", "b_s", "b_z", "y_s", "y_z"], ["y"],
                                     domain=DOMAIN)], ins, out, inits)
    chain = _model([
        helper.make_node("DequantizeLinear", ["a", "a_s", "a_z"], ["ra"]),
        helper.make_node("DequantizeLinear", ["b", "b_s", "b_z"], ["rb"]),
        helper.make_node(op, ["ra", "rb"], ["ry"]),
        helper.make_node("QuantizeLinear", ["ry", "y_s", "y_z"], ["y"]),
    ], ins, out, inits, domain=False)
    return fused, chain, feeds


@pytest.mark.parametrize("op", ["Add", "Mul"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
@pytest.mark.parametrize("shapes", [((2, 3, 4), (2, 3, 4)), ((1, 4, 3, 3), (1, 4, 1, 1)), ((5,), ())])
def test_binary_equals_qdq_chain(op, dtype, shapes):
    fused, chain, feeds = _qdq_binary(op, dtype, dtype, *shapes)
    np.testing.assert_array_equal(_run_tinyinfer(fused, feeds), _run_chain(chain, feeds))


def test_binary_rejects_wide_inputs_and_per_channel_scales():
    fused, _, feeds = _qdq_binary("Add", np.uint8, np.uint8, (2, 3), (2, 3))
    fused.graph.input[0].type.tensor_type.elem_type = TensorProto.INT32
    with pytest.raises(ShapeInferenceError, match="A must be uint8 or int8"):
        tinyinfer.InferenceSession(fused)
    fused, _, _ = _qdq_binary("Add", np.uint8, np.uint8, (2, 3), (2, 3))
    fused.graph.initializer[0].CopyFrom(numpy_helper.from_array(np.full(3, 0.1, np.float32), "a_s"))
    with pytest.raises(ShapeInferenceError, match="a_scale must hold one value"):
        tinyinfer.InferenceSession(fused)


def _gemm_models(m, k, n, trans_b, per_column, with_bias):
    a = _random_q((m, k), np.uint8)
    b = RNG.integers(-127, 128, size=(n, k) if trans_b else (k, n)).astype(np.int8)
    b_scale = (RNG.uniform(0.005, 0.02, n) if per_column else np.array(0.01)).astype(np.float32)
    b_zero = np.zeros(b_scale.shape, np.int8)
    a_scale, y_scale = np.float32(0.02), np.float32(0.3)
    bias = RNG.integers(-2000, 2000, size=n).astype(np.int32)
    inits = [numpy_helper.from_array(v, k_) for k_, v in (
        ("a_s", np.asarray(a_scale)), ("a_z", np.asarray(120, np.uint8)), ("b", b), ("b_s", b_scale), ("b_z", b_zero),
        ("y_s", np.asarray(y_scale)), ("y_z", np.asarray(100, np.uint8)), ("c", bias),
        ("c_s", (a_scale * b_scale).astype(np.float32)))]
    ins = [helper.make_tensor_value_info("a", TensorProto.UINT8, [m, k])]
    out = [helper.make_tensor_value_info("y", TensorProto.UINT8, None)]
    c = ["c"] if with_bias else []
    fused = _model([helper.make_node("QLinearGemm", ["a", "a_s", "a_z", "b", "b_s", "b_z", *c, "y_s", "y_z"], ["y"],
                                     domain=DOMAIN, transB=trans_b)], ins, out, inits)
    axis = (0 if trans_b else 1) if per_column else 1
    chain_nodes = [
        helper.make_node("DequantizeLinear", ["a", "a_s", "a_z"], ["ra"]),
        helper.make_node("DequantizeLinear", ["b", "b_s", "b_z"], ["rb"], axis=axis),
    ]
    if with_bias:
        chain_nodes.append(helper.make_node("DequantizeLinear", ["c", "c_s"], ["rc"], axis=0))
    chain_nodes += [helper.make_node("Gemm", ["ra", "rb", *(["rc"] if with_bias else [])], ["ry"], transB=trans_b),
                    helper.make_node("QuantizeLinear", ["ry", "y_s", "y_z"], ["y"])]
    chain = _model(chain_nodes, ins, out, inits, domain=False)
    return fused, chain, {"a": a}, (a, b, a_scale, b_scale, y_scale, bias)


@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("per_column", [False, True])
@pytest.mark.parametrize("with_bias", [False, True])
def test_gemm_within_one_step_of_qdq_chain(trans_b, per_column, with_bias):
    fused, chain, feeds, _ = _gemm_models(3, 17, 5, trans_b, per_column, with_bias)
    ours = _run_tinyinfer(fused, feeds).astype(np.int32)
    chain_result = _run_chain(chain, feeds).astype(np.int32)
    assert np.abs(ours - chain_result).max() <= 1


def test_gemm_accumulates_exactly():
    """Python integers: (a - 120) @ b + bias, times a_s * b_s / y_s, round half even, + 100."""
    fused, _, feeds, (a, b, a_scale, b_scale, y_scale, bias) = _gemm_models(2, 9, 4, 0, False, True)
    rows = [[sum((int(a[i, t]) - 120) * int(b[t, j]) for t in range(9)) + int(bias[j]) for j in range(4)] for i in range(2)]
    multiplier = float(np.float32(a_scale * b_scale.reshape(()) / y_scale))
    expected = np.clip(np.rint(np.array(rows, np.float64) * multiplier) + 100, 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(_run_tinyinfer(fused, feeds), expected)


def test_gemm_rejects_mismatched_inner_dimension():
    fused, _, _, _ = _gemm_models(3, 8, 4, 0, False, False)
    fused.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 7
    with pytest.raises(ShapeInferenceError, match="inner dimensions must match"):
        tinyinfer.InferenceSession(fused)


def _concat_models(shared):
    shapes = [(1, 2, 3), (1, 4, 3)]
    feeds = {f"x{i}": _random_q(s, np.uint8) for i, s in enumerate(shapes)}
    scales = [0.1, 0.1] if shared else [0.1, 0.05]
    inits = _params("y", 0.1, np.uint8(128))
    for i, s in enumerate(scales):
        inits += _params(f"x{i}", s, np.uint8(128 if shared else 100 + i))
    ins = [helper.make_tensor_value_info(f"x{i}", TensorProto.UINT8, s) for i, s in enumerate(shapes)]
    out = [helper.make_tensor_value_info("y", TensorProto.UINT8, None)]
    fused = _model([helper.make_node("QLinearConcat", ["y_s", "y_z", "x0", "x0_s", "x0_z", "x1", "x1_s", "x1_z"], ["y"],
                                     domain=DOMAIN, axis=1)], ins, out, inits)
    chain = _model([
        helper.make_node("DequantizeLinear", ["x0", "x0_s", "x0_z"], ["r0"]),
        helper.make_node("DequantizeLinear", ["x1", "x1_s", "x1_z"], ["r1"]),
        helper.make_node("Concat", ["r0", "r1"], ["ry"], axis=1),
        helper.make_node("QuantizeLinear", ["ry", "y_s", "y_z"], ["y"]),
    ], ins, out, inits, domain=False)
    return fused, chain, feeds


@pytest.mark.parametrize("shared", [True, False])
def test_concat_equals_qdq_chain(shared):
    fused, chain, feeds = _concat_models(shared)
    result = _run_tinyinfer(fused, feeds)
    np.testing.assert_array_equal(result, _run_chain(chain, feeds))
    if shared:  # shared parameters: the integers are copied unchanged
        np.testing.assert_array_equal(result, np.concatenate([feeds["x0"], feeds["x1"]], axis=1))


def _pool_models(op, **attrs):
    x = _random_q((1, 3, 5, 6), np.uint8)
    inits = _params("x", 0.04, np.uint8(10)) + _params("y", 0.03, np.uint8(5))
    ins = [helper.make_tensor_value_info("x", TensorProto.UINT8, x.shape)]
    out = [helper.make_tensor_value_info("y", TensorProto.UINT8, None)]
    fused = _model([helper.make_node(f"QLinear{op}", ["x", "x_s", "x_z", "y_s", "y_z"], ["y"], domain=DOMAIN, **attrs)],
                   ins, out, inits)
    chain = _model([
        helper.make_node("DequantizeLinear", ["x", "x_s", "x_z"], ["rx"]),
        helper.make_node(op, ["rx"], ["ry"], **attrs),
        helper.make_node("QuantizeLinear", ["ry", "y_s", "y_z"], ["y"]),
    ], ins, out, inits, domain=False)
    return fused, chain, {"x": x}


@pytest.mark.parametrize("op, attrs", [
    ("GlobalAveragePool", {}),
    ("AveragePool", {"kernel_shape": [3, 3]}),
    ("AveragePool", {"kernel_shape": [2, 3], "strides": [2, 2], "pads": [1, 1, 0, 1]}),
    ("AveragePool", {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "count_include_pad": 1}),
])
def test_pools_equal_qdq_chain(op, attrs):
    fused, chain, feeds = _pool_models(op, **attrs)
    np.testing.assert_array_equal(_run_tinyinfer(fused, feeds), _run_chain(chain, feeds))


def test_average_pool_rejects_bad_attribute():
    fused, _, _ = _pool_models("AveragePool", kernel_shape=[3, 3], ceil_mode=2)
    with pytest.raises(tinyinfer.TinyInferError, match="ceil_mode"):
        tinyinfer.InferenceSession(fused)


@pytest.mark.parametrize("build", [
    lambda: _qdq_binary("Add", np.uint8, np.uint8, (2, 3), (2, 3))[::2],
    lambda: _qdq_binary("Mul", np.int8, np.int8, (2, 3), (3,))[::2],
    lambda: _gemm_models(3, 6, 4, 1, True, True)[::2],
    lambda: _concat_models(False)[::2],
    lambda: _pool_models("GlobalAveragePool")[::2],
    lambda: _pool_models("AveragePool", kernel_shape=[2, 2])[::2],
], ids=["add", "mul", "gemm", "concat", "global_average_pool", "average_pool"])
def test_export_decomposes_to_qdq_that_onnxruntime_runs(build):
    """to_onnx writes each int8 op as DQ -> op -> Q; ONNX Runtime runs it within one step."""
    import onnxruntime as ort

    fused, feeds = build()
    graph = tinyinfer.load(fused)
    values = tinyinfer.ops.infer_shapes(graph)
    graph.outputs = [values[v.name] for v in graph.outputs]  # declare the output's type for the checker
    exported = to_onnx(graph)
    assert not any(n.domain == DOMAIN for n in exported.graph.node)
    onnx.checker.check_model(exported)
    session = ort.InferenceSession(exported.SerializeToString(), providers=["CPUExecutionProvider"])
    theirs = session.run(None, feeds)[0].astype(np.int32)
    ours = _run_tinyinfer(fused, feeds).astype(np.int32)
    assert np.abs(ours - theirs).max() <= 1


def test_decompose_leaves_other_graphs_alone():
    fused, _, _ = _pool_models("GlobalAveragePool")
    graph = tinyinfer.load(fused)
    graph.nodes = []
    assert decompose_qlinear(graph).nodes == []


def _conv_add_model(z_shape, inputs=14):
    """One QLinearConvAdd: a 3x3 conv (no bias) of x joined with the residual z."""
    names = ["x", "x_s", "x_z", "w", "w_s", "w_z", "c_s", "c_z", "", "z", "z_s", "z_z", "y_s", "y_z"][:inputs]
    node = helper.make_node("QLinearConvAdd", names, ["y"], domain=DOMAIN, pads=[1, 1, 1, 1])
    inits = [numpy_helper.from_array(_random_q((4, 3, 3, 3), np.int8), "w"),
             *_params("x", 0.05, np.uint8(128)), *_params("w", 0.01, np.int8(0)), *_params("c", 0.1, np.uint8(120)),
             *_params("z", 0.07, np.uint8(110)), *_params("y", 0.12, np.uint8(100))]
    inputs = [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 3, 5, 5]),
              helper.make_tensor_value_info("z", TensorProto.UINT8, z_shape)]
    return _model([node], inputs, [helper.make_tensor_value_info("y", TensorProto.UINT8, None)], inits)


def test_conv_add_is_the_conv_then_the_add():
    model = _conv_add_model([1, 4, 5, 5])
    feeds = {"x": _random_q((1, 3, 5, 5), np.uint8), "z": _random_q((1, 4, 5, 5), np.uint8)}
    got = _run_tinyinfer(model, feeds)
    exported = to_onnx(tinyinfer.load(model))  # QLinearConv, then DQ -> Add -> Q: ONNX's own reference runs it
    assert [n.op_type for n in exported.graph.node][0] == "QLinearConv"
    np.testing.assert_array_equal(got, ReferenceEvaluator(exported).run(None, feeds)[0])


@pytest.mark.parametrize("z_shape,inputs,message", [
    ([1, 4, 4, 5], 14, "Z must have the conv output's shape"),
    ([1, 4, 5, 5], 13, "expects 14 inputs"),
])
def test_conv_add_rejects_a_mismatched_residual_or_missing_inputs(z_shape, inputs, message):
    with pytest.raises(ShapeInferenceError, match=message):
        tinyinfer.InferenceSession(_conv_add_model(z_shape, inputs))
