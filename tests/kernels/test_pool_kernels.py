"""MaxPool, AveragePool and GlobalAveragePool kernels against the reference pooling ops.

Oracle: the reference ops (``tinyinfer/ops/pool.py``), and ONNX Runtime for a small CNN
that runs on every kernel of chapter 06's conv family (this file's pooling, and the direct,
1x1, depthwise and GEMM kernels), so the session test lives here, at the end of the chain.

Tolerance: max pooling picks one input value, so it must match exactly. An average sums at
most k*k (<= 49) values of size ~1 and multiplies by 1/count where the reference divides:
a few float32 ulps, so ``rtol = atol = 1e-6``. GlobalAveragePool sums up to 1200 values in
vectorised partial sums (NumPy sums pairwise): ``rtol = atol = 1e-5``.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinyinfer.ir import Node, Value
from tinyinfer.kernels import candidates, pool
from tinyinfer.ops import OPS
from tinyinfer.ops.base import prepare_node


def make_pool(op_type, x_shape, seed=0, outputs=("y",), **attrs):
    node = Node(op_type, ["x"], list(outputs), attrs, "", op_type.lower())
    prepare_node(node, 22)
    x = np.random.default_rng(seed).standard_normal(x_shape).astype(np.float32)
    return node, [Value("x", np.float32, x_shape)], x


def check(op_type, x_shape, seed=0, **attrs):
    node, values, x = make_pool(op_type, x_shape, seed, **attrs)
    kernel, build = {"MaxPool": ("maxpool2d", pool.build_maxpool),
                     "AveragePool": ("averagepool2d", pool.build_averagepool)}[op_type]
    assert kernel in {k.name for k in candidates(node, values)}
    got = build(node, values, [])(node, x)
    want = OPS[("", op_type)].reference(node, x)
    assert got.shape == want.shape and got.dtype == want.dtype
    if op_type == "MaxPool":
        np.testing.assert_array_equal(got, want)
    else:
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


WINDOWS = [
    dict(kernel_shape=[2, 2], strides=[2, 2]),
    dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
    dict(kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1]),
    dict(kernel_shape=[3, 2], strides=[2, 1], pads=[1, 0, 0, 1]),
    dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
    dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1),
    dict(kernel_shape=[2, 3], strides=[3, 2], dilations=[2, 1], pads=[1, 1, 2, 0]),
    dict(kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER"),
    dict(kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_LOWER"),
    dict(kernel_shape=[7, 7], strides=[1, 1]),
]


@pytest.mark.parametrize("x_shape", [(1, 3, 11, 9), (2, 4, 8, 8)])
@pytest.mark.parametrize("attrs", WINDOWS)
def test_maxpool_matches_the_reference_exactly(x_shape, attrs):
    check("MaxPool", x_shape, **attrs)


@pytest.mark.parametrize("count_include_pad", [0, 1])
@pytest.mark.parametrize("x_shape", [(1, 3, 11, 9), (2, 4, 8, 8)])
@pytest.mark.parametrize("attrs", WINDOWS)
def test_averagepool_matches_the_reference(x_shape, attrs, count_include_pad):
    check("AveragePool", x_shape, count_include_pad=count_include_pad, **attrs)


@settings(max_examples=30, deadline=None)
@given(op=st.sampled_from(["MaxPool", "AveragePool"]), size=st.tuples(st.integers(3, 14), st.integers(3, 14)),
       kernel=st.tuples(st.integers(1, 3), st.integers(1, 3)), stride=st.tuples(st.integers(1, 3), st.integers(1, 3)),
       pads=st.tuples(st.integers(0, 1), st.integers(0, 1), st.integers(0, 1), st.integers(0, 1)),
       ceil_mode=st.integers(0, 1), count_include_pad=st.integers(0, 1))
def test_pooling_matches_the_reference_on_random_windows(op, size, kernel, stride, pads, ceil_mode, count_include_pad):
    attrs = dict(kernel_shape=list(kernel), strides=list(stride), pads=list(pads), ceil_mode=ceil_mode)
    if any(p >= k for p, k in zip(pads, kernel * 2)):
        return  # ONNX Runtime and PyTorch refuse a pad as large as the window
    if op == "AveragePool":
        attrs["count_include_pad"] = count_include_pad
    check(op, (1, 2, *size), seed=size[0], **attrs)


@pytest.mark.parametrize("x_shape", [(1, 3, 7, 7), (2, 5, 30, 40), (1, 1, 1, 1)])
def test_global_averagepool_matches_the_reference(x_shape):
    node, values, x = make_pool("GlobalAveragePool", x_shape)
    got = pool.build_global_averagepool(node, values, [])(node, x)
    np.testing.assert_allclose(got, OPS[("", "GlobalAveragePool")].reference(node, x), rtol=1e-5, atol=1e-5)
    assert got.shape == (*x_shape[:2], 1, 1)


def test_maxpool_with_indices_and_other_dtypes_are_left_to_the_reference():
    node, values, _ = make_pool("MaxPool", (1, 2, 6, 6), outputs=("y", "indices"), kernel_shape=[2, 2])
    assert not pool._supports_pool(node, values)
    node, values, _ = make_pool("MaxPool", (1, 2, 6, 6), kernel_shape=[2, 2])
    assert pool._supports_pool(node, values)
    assert not pool._supports_pool(node, [Value("x", np.float64, (1, 2, 6, 6))])
    assert not pool._supports_pool(node, [Value("x", np.float32, (1, 2, 6))])  # 1-D pooling
    assert not pool._supports_pool(node, [Value("x", np.float32, ("N", 2, 6, 6))])  # shape unknown at planning


# ---------------------------------------------------------------------------- a session
def small_cnn():
    """stem 3x3/2 -> maxpool -> 1x1 (ReLU6) -> depthwise 3x3 (HardSwish) -> 3x3 + residual (ReLU)
    -> 3x3/2 -> avgpool -> global average pool -> fc. Few channels: the 3x3 convs stay below
    Winograd's minimum (tests/kernels/test_winograd.py runs a Winograd block)."""
    from tinyinfer.models.builder import NetworkBuilder

    net = NetworkBuilder("small_cnn", seed=0)
    x = net.input("x", ("N", 3, 32, 32))
    y = net.conv_bn_act(x, 8, 3, stride=2, act="relu", name="stem")
    y = net.max_pool(y, 3, 2, 1, name="pool")
    y = net.conv_bn_act(y, 12, 1, act="relu6", name="expand")
    y = net.conv_bn_act(y, 12, 3, groups=12, act="hardswish", name="dw")
    shortcut = y
    y = net.conv_bn_act(y, 12, 3, act=None, name="body")
    y = net.activation(net.add(y, shortcut), "relu", name="out")
    y = net.conv_bn_act(y, 16, 3, stride=2, act="relu", name="down")
    y = net.avg_pool(y, 2, 2, name="avg")
    y = net.global_avg_pool(y)
    y = net.classifier(y, 10)
    return net.build(y)


def test_a_small_cnn_runs_on_this_chapters_kernels_and_matches_onnxruntime(only_this_chapters_kernels):
    import onnxruntime

    import tinyinfer as ti

    model = small_cnn()
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    runtime = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = runtime.run(None, {"x": x})[0]
    sess = ti.InferenceSession(model, backend="numba", select="cost")
    got = sess.run(None, {"x": x})[0]
    # Seven layers, each within float32 rounding of ONNX Runtime's (which sums in its own order).
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    chosen = {r.name: r.kernel for r in sess.profile().records}
    ours = {k for k in chosen.values() if k.startswith(("conv2d", "maxpool", "averagepool", "global_average"))}
    assert {"conv2d_1x1", "conv2d_depthwise", "maxpool2d", "averagepool2d", "global_averagepool"} <= ours
    assert ours & {"conv2d_direct", "conv2d_im2col"}
    fused = [r for r in sess.profile().records if r.op_type == "FusedConv"]
    assert fused and all(r.kernel.startswith("conv2d") for r in fused)  # epilogues ran inside the kernels
