"""The int8 elementwise/pooling kernels (QLinearAdd, QLinearGlobalAveragePool, 8-bit MaxPool) against the references.

Oracles: the reference ops (``ai.tinyinfer:QLinearAdd`` / ``QLinearGlobalAveragePool`` in
:mod:`tinyinfer.ops.qlinear`, ONNX ``MaxPool``), an independent NumPy formula from the op
definitions, and ONNX Runtime for uint8 MaxPool.

Tolerance: exact. QLinearAdd repeats the reference's float32 arithmetic in its order; the
average pool sums in NumPy's pairwise order; max pooling involves no arithmetic. (The
spec's allowance is 1 LSB; the kernels are held to 0 because the runtime's selection
compares integer outputs exactly.)
"""

from __future__ import annotations

import numpy as np
import pytest

import tinyinfer as ti
from tinyinfer.ir import Node, Value
from tinyinfer.kernels import candidates
from tinyinfer.kernels import int8_elementwise as ew
from tinyinfer.ops import OPS
from tinyinfer.ops.base import prepare_node

DOMAIN = "ai.tinyinfer"


def _random(rng, shape, dtype):
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max + 1, shape).astype(dtype)


def _value(name, array, const=True):
    array = np.asarray(array)
    return Value(name, array.dtype, array.shape, const=array if const else None)


def _oracle_add(a, a_s, a_z, b, b_s, b_z, y_s, y_z):
    """The op's definition written out: dequantize, add, quantize (round half to even, saturate)."""
    real = (a.astype(np.float64) - int(a_z)) * np.float32(a_s) + (b.astype(np.float64) - int(b_z)) * np.float32(b_s)
    info = np.iinfo(np.asarray(y_z).dtype)
    return np.clip(np.rint(real / np.float32(y_s)) + int(y_z), info.min, info.max)


@pytest.mark.parametrize("a_shape, b_shape, a_dtype, b_dtype, y_dtype", [
    ((2, 3, 5, 7), (2, 3, 5, 7), np.uint8, np.uint8, np.uint8),
    ((2, 3, 5, 7), (1, 3, 1, 1), np.int8, np.uint8, np.int8),
    ((3, 1, 1), (2, 3, 4, 5), np.uint8, np.uint8, np.uint8),
    ((2, 3, 4), (1,), np.int8, np.int8, np.uint8),
    ((1, 17, 3, 3), (17, 1, 1), np.uint8, np.int8, np.uint8),
])
def test_qlinear_add_matches_the_reference(a_shape, b_shape, a_dtype, b_dtype, y_dtype):
    rng = np.random.default_rng(len(a_shape) + len(b_shape))
    a, b = _random(rng, a_shape, a_dtype), _random(rng, b_shape, b_dtype)
    params = [np.float32(0.05), a_dtype(3), np.float32(0.07), b_dtype(-2 if b_dtype == np.int8 else 9),
              np.float32(0.09), y_dtype(5)]
    arrays = [a, params[0], params[1], b, params[2], params[3], params[4], params[5]]
    values = [_value("a", a, False), _value("as", params[0]), _value("az", params[1]), _value("b", b, False),
              _value("bs", params[2]), _value("bz", params[3]), _value("ys", params[4]), _value("yz", params[5])]
    node = Node("QLinearAdd", [v.name for v in values], ["y"], {}, DOMAIN, "add")
    assert "qlinear_add" in {k.name for k in candidates(node, values)}
    got = ew.build_qlinear_add(node, values, [])(node, *arrays)
    want = OPS[(DOMAIN, "QLinearAdd")].reference(node, *arrays)
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)
    assert np.abs(got.astype(np.int64) - _oracle_add(*arrays)).max() <= 1  # the definition, within 1 LSB


def test_qlinear_add_refuses_other_broadcasts_and_runtime_scales():
    a, b = np.zeros((2, 3, 4, 5), np.uint8), np.zeros((1, 1, 4, 5), np.uint8)
    params = [np.float32(1), np.uint8(0)]
    values = [_value("a", a, False), _value("as", params[0]), _value("az", params[1]), _value("b", b, False),
              _value("bs", params[0]), _value("bz", params[1]), _value("ys", params[0]), _value("yz", params[1])]
    node = Node("QLinearAdd", [v.name for v in values], ["y"], {}, DOMAIN, "add")
    assert not ew._supports_add(node, values)  # broadcast over rows: the reference runs
    same = values[:3] + [_value("b", a, False)] + values[4:]
    assert ew._supports_add(node, same)
    runtime_scale = same[:1] + [Value("as", np.float32, ())] + same[2:]
    assert not ew._supports_add(node, runtime_scale)


@pytest.mark.parametrize("shape, dtype", [((2, 3, 5, 7), np.uint8), ((1, 4, 3, 3), np.int8), ((2, 5, 9), np.uint8),
                                          ((1, 3, 56, 56), np.uint8), ((1, 2, 13, 17), np.int8)])
def test_qlinear_global_averagepool_matches_the_reference(shape, dtype):
    rng = np.random.default_rng(shape[-1])
    x = _random(rng, shape, dtype)
    params = [np.float32(0.05), dtype(7), np.float32(0.01), np.uint8(128)]
    values = [_value("x", x, False)] + [_value(f"p{i}", p) for i, p in enumerate(params)]
    node = Node("QLinearGlobalAveragePool", [v.name for v in values], ["y"], {}, DOMAIN, "gap")
    assert "qlinear_global_averagepool" in {k.name for k in candidates(node, values)}
    got = ew.build_qlinear_global_averagepool(node, values, [])(node, x, *params)
    want = OPS[(DOMAIN, "QLinearGlobalAveragePool")].reference(node, x, *params)
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)
    real = (x.astype(np.float64) - 7).mean(axis=tuple(range(2, x.ndim)), keepdims=True) * np.float32(0.05)
    assert np.abs(got.astype(np.int64) - np.clip(np.rint(real / np.float32(0.01)) + 128, 0, 255)).max() <= 1


def _maxpool(shape, dtype, seed=0, **attrs):
    x = _random(np.random.default_rng(seed), shape, dtype)
    node = Node("MaxPool", ["x"], ["y"], attrs, "", "pool")
    prepare_node(node, 12)
    return node, [_value("x", x, False)], x


@pytest.mark.parametrize("shape, dtype, attrs", [
    ((2, 3, 9, 8), np.uint8, dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),
    ((1, 4, 7, 7), np.int8, dict(kernel_shape=[2, 3], ceil_mode=1, strides=[2, 2])),
    ((1, 2, 10, 9), np.uint8, dict(kernel_shape=[3, 3], dilations=[2, 2], pads=[0, 1, 2, 1])),
    ((1, 3, 8, 8), np.int8, dict(kernel_shape=[3, 3], auto_pad="SAME_UPPER", strides=[2, 2])),
    ((1, 1, 5, 6), np.uint8, dict(kernel_shape=[1, 1])),
])
def test_int8_maxpool_matches_the_reference(shape, dtype, attrs):
    node, values, x = _maxpool(shape, dtype, **attrs)
    assert "maxpool2d_int8" in {k.name for k in candidates(node, values)}
    got = ew.build_maxpool_int8(node, values, [])(node, x)
    want = OPS[("", "MaxPool")].reference(node, x)
    want = want[0] if isinstance(want, tuple) else want
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)


def test_int8_maxpool_refuses_float_and_the_indices_output():
    node, values, _ = _maxpool((1, 2, 5, 5), np.uint8, kernel_shape=[2, 2])
    assert ew._supports_maxpool(node, values)
    assert not ew._supports_maxpool(node, [Value("x", np.float32, (1, 2, 5, 5))])
    with_indices = Node("MaxPool", ["x"], ["y", "i"], dict(node.attrs), "", "pool")
    assert not ew._supports_maxpool(with_indices, values)


def test_numba_session_runs_uint8_maxpool_on_the_kernel_and_matches_onnxruntime():
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    node = helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    graph = helper.make_graph([node], "pool", [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 8, 15, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.UINT8, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    x = _random(np.random.default_rng(4), (1, 8, 15, 16), np.uint8)
    sess = ti.InferenceSession(model, backend="numba", select="cost")
    (got,) = sess.run(None, {"x": x})
    (want,) = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    np.testing.assert_array_equal(got, want)
    assert [r.kernel for r in sess.profile().records] == ["maxpool2d_int8"]


def test_numba_session_runs_the_quantized_ops_on_their_kernels():
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(6)
    inits = [numpy_helper.from_array(np.asarray(v), name) for name, v in [
        ("s1", np.float32(0.05)), ("z1", np.uint8(120)), ("s2", np.float32(0.04)), ("z2", np.uint8(100)),
        ("s3", np.float32(0.1)), ("z3", np.uint8(128)), ("s4", np.float32(0.02)), ("z4", np.uint8(10))]]
    nodes = [helper.make_node("QLinearAdd", ["a", "s1", "z1", "b", "s2", "z2", "s3", "z3"], ["c"], domain=DOMAIN),
             helper.make_node("QLinearGlobalAveragePool", ["c", "s3", "z3", "s4", "z4"], ["y"], domain=DOMAIN)]
    graph = helper.make_graph(nodes, "qblock", [helper.make_tensor_value_info("a", TensorProto.UINT8, [2, 32, 28, 28]),
                                                helper.make_tensor_value_info("b", TensorProto.UINT8, [2, 32, 28, 28])],
                              [helper.make_tensor_value_info("y", TensorProto.UINT8, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 1)])
    feeds = {"a": _random(rng, (2, 32, 28, 28), np.uint8), "b": _random(rng, (2, 32, 28, 28), np.uint8)}
    sess = ti.InferenceSession(model, backend="numba", select="cost")  # cost hints: no timing noise
    (got,) = sess.run(None, feeds)
    (want,) = ti.InferenceSession(model).run(None, feeds)
    np.testing.assert_array_equal(got, want)
    kernels = {r.op_type: r.kernel for r in sess.profile().records}
    assert kernels == {"QLinearAdd": "qlinear_add", "QLinearGlobalAveragePool": "qlinear_global_averagepool"}


@pytest.mark.parametrize("zero", [np.uint8(128), np.int8(-3), None])
def test_quantize_linear_kernel_matches_the_reference(zero):
    rng = np.random.default_rng(9)
    x = (rng.standard_normal((2, 3, 11, 7)) * 3).astype(np.float32)
    x.flat[:6] = [0.25, 0.75, -0.25, 1e9, -1e9, np.nan]  # ties (half to even), saturation, NaN
    scale = np.float32(0.5)
    arrays = [x, scale] + ([] if zero is None else [zero])
    values = [_value("x", x, False), _value("s", scale)] + ([] if zero is None else [_value("z", zero)])
    node = Node("QuantizeLinear", [v.name for v in values], ["y"], {}, "", "q")
    prepare_node(node, 19)
    assert "quantize_linear_8bit" in {k.name for k in candidates(node, values)}
    got = ew.build_quantize_linear(node, values, [])(node, *arrays)
    with np.errstate(invalid="ignore"):
        want = OPS[("", "QuantizeLinear")].reference(node, *arrays)
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)
