"""The normalisation kernels (BatchNormalization in inference mode, ScaleShift, LRN) against their reference ops.

Tolerances: BatchNormalization is bit-identical (the same float32 fold and the same two
roundings per element). ScaleShift is compiled with fastmath, so LLVM may contract the
multiply and add into one FMA (one rounding instead of two) and approximate exp/tanh:
``rtol=1e-5, atol=1e-6``. LRN sums its squares in the reference's order; only the power
differs (square roots instead of ``pow`` for beta = 0.75): a few float32 ulps, so
``rtol=1e-5``.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import tinyinfer as ti
from tinyinfer.ir import Node, Value
from tinyinfer.kernels import candidates, normalization
from tinyinfer.ops import OPS
from tinyinfer.ops.base import prepare_node


def _node(op_type, inputs, outputs=("y",), **attrs):
    node = Node(op_type, list(inputs), list(outputs), attrs, "", "n")
    prepare_node(node, 15)
    return node


def _batchnorm_case(rng, shape):
    c = shape[1]
    x = rng.standard_normal(shape).astype(np.float32)
    stats = [rng.standard_normal(c).astype(np.float32), rng.standard_normal(c).astype(np.float32),
             rng.standard_normal(c).astype(np.float32), rng.random(c).astype(np.float32) + 0.1]
    values = [Value("x", np.dtype(np.float32), shape)] + [
        Value(name, np.dtype(np.float32), (c,), const=a) for name, a in zip(("s", "b", "m", "v"), stats)]
    return x, stats, values


@pytest.mark.parametrize("shape", [(1, 3, 5, 7), (2, 16, 4, 4), (1, 8, 9), (3, 5)])
def test_batchnorm_kernel_is_bit_identical_to_the_reference(shape):
    rng = np.random.default_rng(0)
    x, stats, values = _batchnorm_case(rng, shape)
    node = _node("BatchNormalization", ["x", "s", "b", "m", "v"], epsilon=1e-3)
    assert [k.name for k in candidates(node, values)] == ["batchnorm_inference"]
    fn = normalization.build_batchnorm(node, values, [])
    expected = OPS[("", "BatchNormalization")].reference(node, x, *stats)
    np.testing.assert_array_equal(fn(node, x, *stats), expected)


def test_batchnorm_kernel_refuses_training_mode_and_variable_statistics():
    rng = np.random.default_rng(0)
    _, _, values = _batchnorm_case(rng, (1, 4, 3, 3))
    training = _node("BatchNormalization", ["x", "s", "b", "m", "v"], training_mode=1)
    assert candidates(training, values) == []
    values[4] = Value("v", np.dtype(np.float32), (4,))
    plain = _node("BatchNormalization", ["x", "s", "b", "m", "v"])
    assert candidates(plain, values) == []


@pytest.mark.parametrize("size", [1, 2, 3, 5])
@pytest.mark.parametrize("beta", [0.75, 0.5, 0.6])
def test_lrn_kernel_matches_the_reference(size, beta):
    rng = np.random.default_rng(size)
    x = rng.standard_normal((2, 7, 5, 6)).astype(np.float32) * 3
    node = _node("LRN", ["x"], size=size, alpha=1e-2, beta=beta, bias=2.0)
    values = [Value("x", np.dtype(np.float32), x.shape)]
    assert [k.name for k in candidates(node, values)] == ["lrn"]
    got = normalization.build_lrn(node, values, [])(node, x)
    np.testing.assert_allclose(got, OPS[("", "LRN")].reference(node, x), rtol=1e-5, atol=0)


def test_a_session_picks_both_kernels_and_matches_onnxruntime():
    import onnxruntime

    rng = np.random.default_rng(0)
    c = 8
    stats = [rng.standard_normal(c).astype(np.float32) for _ in range(3)] + [rng.random(c).astype(np.float32) + 0.5]
    inits = [numpy_helper.from_array(a, name) for a, name in zip(stats, ("s", "b", "m", "v"))]
    nodes = [helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["t"]),
             helper.make_node("LRN", ["t"], ["y"], size=5, alpha=1e-3, beta=0.75, bias=1.0)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, 20, 20])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    x = rng.standard_normal((1, c, 20, 20)).astype(np.float32)
    # select="cost": on so small a tensor the timing may well prefer the reference
    sess = ti.InferenceSession(model, backend="numba", threads=2, opt_level="O0", select="cost")
    got = sess.run(None, {"x": x})[0]
    assert [r.kernel for r in sess.profile().records] == ["batchnorm_inference", "lrn"]
    expected = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)



@pytest.mark.parametrize("activation,params", [("Identity", None), ("Relu", None), ("Clip", [0.0, 6.0]),
                                               ("LeakyRelu", [0.1]), ("HardSwish", None), ("Sigmoid", None)])
@pytest.mark.parametrize("shape,constant_shape", [((1, 12, 5, 7), (12, 1, 1)), ((2, 6, 9), (1, 6, 1)),
                                                  ((3, 5), (5,)), ((1, 4, 3, 3), (1,))])
def test_scale_shift_kernel_matches_the_reference(activation, params, shape, constant_shape):
    rng = np.random.default_rng(2)
    x = (rng.standard_normal(shape) * 4).astype(np.float32)
    scale, shift = (rng.standard_normal(constant_shape).astype(np.float32) for _ in range(2))
    node = Node("ScaleShift", ["x", "s", "t"], ["y"], {"activation": activation, "activation_params": params},
                "ai.tinyinfer", "n")
    prepare_node(node, 1)
    values = [Value("x", np.dtype(np.float32), shape), Value("s", np.dtype(np.float32), scale.shape, const=scale),
              Value("t", np.dtype(np.float32), shift.shape, const=shift)]
    assert [k.name for k in candidates(node, values)] == ["scale_shift"]
    got = normalization.build_scale_shift(node, values, [])(node, x, scale, shift)
    want = OPS[("ai.tinyinfer", "ScaleShift")].reference(node, x, scale, shift)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_scale_shift_kernel_refuses_constants_that_vary_along_other_axes():
    node = Node("ScaleShift", ["x", "s", "t"], ["y"], {}, "ai.tinyinfer", "n")
    prepare_node(node, 1)
    varying = np.ones((1, 4, 3, 1), np.float32)  # one value per channel and row: not a channel vector
    values = [Value("x", np.dtype(np.float32), (1, 4, 3, 3)), Value("s", np.dtype(np.float32), varying.shape, const=varying),
              Value("t", np.dtype(np.float32), (4, 1, 1), const=np.zeros((4, 1, 1), np.float32))]
    assert not candidates(node, values)
