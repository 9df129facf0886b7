"""Direct, im2col + GEMM and 1x1 conv kernels against the reference Conv and FusedConv.

Oracle: the reference ops (``tinyinfer.ops.conv.Conv`` and ``ai.tinyinfer:FusedConv``, plain
NumPy), and ONNX Runtime for a whole small CNN run with ``backend="numba"``.

Tolerance: an output sums K = C/group * kh * kw products. Weights are scaled by 1/sqrt(K)
so outputs are O(1); the kernels add the products in another order than the reference's
BLAS, so results differ by float32 rounding of that sum: about sqrt(K) ulps of the partial
sums (K <= 150 here: ~1e-6), bounded by K ulps (~1e-5). ``rtol = atol = 1e-4`` leaves a
10x margin over the worst case and still catches any wrong tap (an error of O(0.1)).
"""

from __future__ import annotations

import numpy as np
import pytest

from tinyinfer.ir import Node, Value
from tinyinfer.kernels import candidates, conv
from tinyinfer.ops import OPS
from tinyinfer.ops.base import prepare_node

TOLERANCE = dict(rtol=1e-4, atol=1e-4)


def make_conv(x_shape, w_shape, *, bias=True, residual=False, activation=None, params=None, seed=0,
              const_weights=True, **attrs):
    """A prepared Conv (or FusedConv when residual/activation is asked) node, its input Values and arrays."""
    rng = np.random.default_rng(seed)
    fan_in = int(np.prod(w_shape[1:]))
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = (rng.standard_normal(w_shape) / np.sqrt(fan_in)).astype(np.float32)
    b = rng.standard_normal(w_shape[0]).astype(np.float32) if bias else None
    fused = residual or activation is not None
    names = ["x", "w", "b" if bias else ""] + (["z"] if residual else [])
    if fused:
        attrs = {**attrs, "activation": activation or "Identity", "activation_params": params}
        node = Node("FusedConv", names, ["y"], attrs, "ai.tinyinfer", "fused")
        prepare_node(node, 1)
    else:
        node = Node("Conv", names, ["y"], attrs, "", "conv")
        prepare_node(node, 17)
    values = [Value("x", np.float32, x_shape), Value("w", np.float32, w_shape, w if const_weights else None),
              None if b is None else Value("b", np.float32, b.shape, b)]
    arrays = [x, w, b]
    op = OPS[(node.domain, node.op_type)]
    if residual:
        (y,) = op.infer(node, values[:3])
        z = rng.standard_normal(y.shape).astype(np.float32)
        values.append(Value("z", np.float32, z.shape))
        arrays.append(z)
    return node, values, arrays


def reference(node, arrays):
    return OPS[(node.domain, node.op_type)].reference(node, *arrays)


def run_kernel(build, node, values, arrays):
    fn = build(node, values, [])
    return fn(node, *arrays)


# (x shape, w shape, attributes): odd sizes, groups, strides, pads (asymmetric too),
# dilations, batch 1 and 2, non-square kernels, auto_pad.
GRID = [
    ((1, 3, 9, 11), (4, 3, 3, 3), dict(pads=[1, 1, 1, 1])),
    ((2, 5, 8, 7), (6, 5, 3, 3), dict(pads=[0, 1, 2, 1])),
    ((1, 4, 10, 9), (5, 4, 3, 3), dict(strides=[2, 2], pads=[1, 1, 1, 1])),
    ((2, 6, 11, 13), (9, 2, 3, 3), dict(group=3, pads=[1, 1, 1, 1])),
    ((1, 4, 12, 12), (4, 1, 3, 3), dict(group=4, strides=[2, 1], pads=[1, 0, 1, 0])),
    ((1, 3, 13, 12), (7, 3, 3, 3), dict(dilations=[2, 2], pads=[2, 2, 2, 2])),
    ((1, 2, 9, 10), (3, 2, 5, 3), dict(strides=[1, 2], dilations=[1, 2], pads=[2, 1, 2, 3])),
    ((2, 3, 15, 15), (8, 3, 7, 7), dict(strides=[2, 2], pads=[3, 3, 3, 3])),
    ((1, 3, 7, 9), (2, 3, 2, 2), dict(auto_pad="SAME_UPPER", strides=[2, 2])),
    ((1, 8, 6, 5), (9, 8, 1, 1), dict()),
    ((2, 8, 7, 7), (4, 8, 1, 1), dict(strides=[2, 2])),
    ((1, 6, 5, 5), (4, 3, 1, 1), dict(group=2)),
]


@pytest.mark.parametrize("build", [conv.build_direct, conv.build_im2col], ids=["direct", "im2col"])
@pytest.mark.parametrize("x_shape, w_shape, attrs", GRID)
def test_direct_and_im2col_match_the_reference(build, x_shape, w_shape, attrs):
    node, values, arrays = make_conv(x_shape, w_shape, **attrs)
    if build is conv.build_im2col and conv._supports_1x1(node, values):
        assert not conv._supports_im2col(node, values)  # no columns to build: conv2d_1x1 takes it
        return
    np.testing.assert_allclose(run_kernel(build, node, values, arrays), reference(node, arrays), **TOLERANCE)


@pytest.mark.parametrize("x_shape, w_shape, attrs", [case for case in GRID if case[1][2:] == (1, 1)])
def test_1x1_matches_the_reference_where_it_applies(x_shape, w_shape, attrs):
    node, values, arrays = make_conv(x_shape, w_shape, **attrs)
    if not conv._supports_1x1(node, values):
        assert attrs.get("strides", [1, 1]) != [1, 1]  # only a stride keeps a 1x1 conv off the GEMM path
        return
    np.testing.assert_allclose(run_kernel(conv.build_1x1, node, values, arrays), reference(node, arrays), **TOLERANCE)


ACTIVATIONS = [("Relu", None), ("Clip", [0.0, 6.0]), ("LeakyRelu", [0.1]), ("HardSwish", None),
               ("Sigmoid", None), ("Tanh", None), ("HardSigmoid", [0.2, 0.5]), ("Identity", None)]


@pytest.mark.parametrize("activation, params", ACTIVATIONS)
@pytest.mark.parametrize("build, w_shape", [(conv.build_direct, (5, 4, 3, 3)), (conv.build_im2col, (5, 4, 3, 3)),
                                            (conv.build_1x1, (5, 4, 1, 1))], ids=["direct", "im2col", "1x1"])
def test_fused_epilogues_match_fused_conv(build, w_shape, activation, params):
    pads = [w_shape[2] // 2] * 4
    node, values, arrays = make_conv((2, 4, 7, 6), w_shape, residual=True, activation=activation, params=params,
                                     pads=pads, seed=1)
    np.testing.assert_allclose(run_kernel(build, node, values, arrays), reference(node, arrays), **TOLERANCE)


@pytest.mark.parametrize("bias, residual", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("backend", conv.GEMM_BACKENDS)
def test_gemm_backends_with_and_without_bias_and_residual(backend, bias, residual):
    node, values, arrays = make_conv((2, 6, 5, 7), (8, 3, 3, 3), bias=bias, residual=residual, activation="Relu",
                                     group=2, pads=[1, 1, 1, 1], seed=2)
    fn = conv.build_im2col(node, values, [], backend=backend)
    np.testing.assert_allclose(fn(node, *arrays), reference(node, arrays), **TOLERANCE)


def test_weights_that_are_not_constant_are_read_at_each_call():
    node, values, arrays = make_conv((1, 4, 6, 6), (3, 4, 3, 3), pads=[1, 1, 1, 1], const_weights=False)
    for build in (conv.build_direct, conv.build_im2col):
        fn = build(node, values, [])
        np.testing.assert_allclose(fn(node, *arrays), reference(node, arrays), **TOLERANCE)
        arrays[1] = arrays[1] * 2
        np.testing.assert_allclose(fn(node, *arrays), reference(node, arrays), **TOLERANCE)


def test_im2col_bytes_counts_one_image_of_columns():
    node, values, arrays = make_conv((4, 64, 56, 56), (64, 64, 3, 3), pads=[1, 1, 1, 1])
    assert conv.im2col_bytes(node, (4, 64, 56, 56), (64, 64, 3, 3)) == 4 * 64 * 9 * 56 * 56
    node, values, arrays = make_conv((1, 3, 224, 224), (64, 3, 7, 7), strides=[2, 2], pads=[3, 3, 3, 3])
    assert conv.im2col_bytes(node, (1, 3, 224, 224), (64, 3, 7, 7)) == 4 * 3 * 49 * 112 * 112


def test_predicates_refuse_what_the_kernels_cannot_do():
    node, values, arrays = make_conv((1, 3, 8, 8), (4, 3, 3, 3))
    names = {k.name for k in candidates(node, values)}
    assert {"conv2d_direct", "conv2d_im2col"} <= names and "conv2d_1x1" not in names
    float64 = [Value(v.name, np.float64, v.shape, v.const) for v in values]
    assert not candidates(node, float64)
    one_d = Node("Conv", ["x", "w"], ["y"], {}, "", "c1")
    prepare_node(one_d, 17)
    assert not candidates(one_d, [Value("x", np.float32, (1, 3, 10)), Value("w", np.float32, (4, 3, 3))])
    symbolic = [Value("x", np.float32, ("N", 3, 8, 8)), *values[1:]]
    assert not candidates(node, symbolic)


def test_cost_hints_prefer_gemm_for_big_layers_and_1x1_for_pointwise():
    node, values, _ = make_conv((1, 64, 56, 56), (64, 64, 3, 3), pads=[1, 1, 1, 1])
    assert conv._cost_im2col(node, values) < conv._cost_direct(node, values)
    node, values, _ = make_conv((1, 64, 56, 56), (256, 64, 1, 1))
    assert conv._cost_1x1(node, values) < conv._cost_direct(node, values)


def test_benchmark_reports_the_algorithms_that_apply():
    rows = conv.benchmark_conv(layers=((16, 16, 12, 3, 1, 1), (8, 16, 12, 1, 1, 1)), repeats=1,
                               algorithms=("direct", "im2col"), with_onnxruntime=False)
    three, one = rows
    assert set(three["ms"]) == {"direct", "im2col", "reference"} and set(one["ms"]) == {"direct", "reference"}
    assert three["im2col_bytes"] == 4 * 16 * 9 * 12 * 12
    assert all(v > 0 for v in three["gflops"].values())


# ---------------------------------------------------------------------------- a session
def test_a_session_runs_conv_relu_add_on_one_fused_kernel(only_this_chapters_kernels):
    """Conv + Add + Relu becomes one FusedConv (O2) that the direct kernel runs, epilogue
    included. (tests/kernels/test_pool_kernels.py runs a whole small CNN on these kernels.)"""
    import onnxruntime
    from onnx import TensorProto, helper, numpy_helper

    import tinyinfer as ti

    rng = np.random.default_rng(0)
    w = (rng.standard_normal((6, 3, 3, 3)) / 5).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Add", ["c", "z"], ["s"]), helper.make_node("Relu", ["s"], ["y"])]
    graph = helper.make_graph(nodes, "block", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 9, 9]),
                                               helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 6, 5, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    feeds = {"x": rng.standard_normal((2, 3, 9, 9)).astype(np.float32),
             "z": rng.standard_normal((2, 6, 5, 5)).astype(np.float32)}
    runtime = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    sess = ti.InferenceSession(model, backend="numba", select="cost")
    np.testing.assert_allclose(sess.run(None, feeds)[0], runtime.run(None, feeds)[0], **TOLERANCE)
    (record,) = sess.profile().records
    assert (record.op_type, record.kernel) == ("FusedConv", "conv2d_direct")
