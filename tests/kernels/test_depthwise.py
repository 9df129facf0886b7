"""The depthwise 3x3 / 5x5 kernel against the reference Conv and FusedConv.

Oracle: the reference ops (``tinyinfer.ops.conv.Conv``, ``ai.tinyinfer:FusedConv``).

Tolerance: an output sums 9 or 25 products; the kernel adds them in another order than the
reference's matrix product, a few float32 ulps of O(1) outputs (weights are scaled by
1/sqrt(k*k)): ``rtol = atol = 1e-5`` is ~10x that, and any wrong tap is an O(0.1) error.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinyinfer.ir import Node, Value
from tinyinfer.kernels import candidates, depthwise
from tinyinfer.ops import OPS
from tinyinfer.ops.base import prepare_node

TOLERANCE = dict(rtol=1e-5, atol=1e-5)


def make_depthwise(n, channels, height, width, kernel, stride, pads, *, residual=False, activation=None, params=None,
                   bias=True, seed=0, **attrs):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, channels, height, width)).astype(np.float32)
    w = (rng.standard_normal((channels, 1, kernel, kernel)) / kernel).astype(np.float32)
    b = rng.standard_normal(channels).astype(np.float32) if bias else None
    attrs = {"group": channels, "strides": [stride, stride], "pads": list(pads), **attrs}
    names = ["x", "w", "b" if bias else ""] + (["z"] if residual else [])
    if residual or activation:
        node = Node("FusedConv", names, ["y"], {**attrs, "activation": activation or "Identity",
                                                 "activation_params": params}, "ai.tinyinfer", "dw")
        prepare_node(node, 1)
    else:
        node = Node("Conv", names, ["y"], attrs, "", "dw")
        prepare_node(node, 17)
    values = [Value("x", np.float32, x.shape), Value("w", np.float32, w.shape, w),
              None if b is None else Value("b", np.float32, b.shape, b)]
    arrays = [x, w, b]
    if residual:
        (y,) = OPS[(node.domain, node.op_type)].infer(node, values)
        arrays.append(rng.standard_normal(y.shape).astype(np.float32))
        values.append(Value("z", np.float32, y.shape))
    return node, values, arrays


def check(node, values, arrays):
    assert "conv2d_depthwise" in {k.name for k in candidates(node, values)}
    got = depthwise.build_depthwise(node, values, [])(node, *arrays)
    np.testing.assert_allclose(got, OPS[(node.domain, node.op_type)].reference(node, *arrays), **TOLERANCE)


@pytest.mark.parametrize("kernel", [3, 5])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("n, channels, height, width, pads", [
    (1, 4, 8, 8, "same"), (2, 3, 9, 11, "same"), (1, 5, 13, 7, "none"), (2, 2, 10, 12, "asymmetric"),
    (1, 6, 5, 5, "big"),
])
def test_depthwise_matches_the_reference(n, channels, height, width, pads, kernel, stride):
    half = kernel // 2
    pads = {"same": [half] * 4, "none": [0] * 4, "asymmetric": [0, half, half + 1, 1], "big": [kernel] * 4}[pads]
    check(*make_depthwise(n, channels, height, width, kernel, stride, pads))


@settings(max_examples=25, deadline=None)
@given(size=st.tuples(st.integers(5, 17), st.integers(5, 17)), kernel=st.sampled_from([3, 5]),
       stride=st.sampled_from([1, 2]), pads=st.tuples(*[st.integers(0, 3)] * 4), n=st.integers(1, 2),
       channels=st.integers(1, 6))
def test_depthwise_matches_the_reference_on_random_shapes(size, kernel, stride, pads, n, channels):
    check(*make_depthwise(n, channels, *size, kernel, stride, list(pads), seed=size[0]))


def test_auto_pad_same_upper():
    check(*make_depthwise(1, 4, 9, 10, 3, 2, [0, 0, 0, 0], auto_pad="SAME_UPPER"))


@pytest.mark.parametrize("activation, params", [("Relu", None), ("Clip", [0.0, 6.0]), ("HardSwish", None),
                                                ("LeakyRelu", [0.01]), ("Sigmoid", None), ("Tanh", None),
                                                ("HardSigmoid", [0.2, 0.5])])
@pytest.mark.parametrize("residual", [False, True])
def test_fused_epilogues(activation, params, residual):
    check(*make_depthwise(2, 4, 7, 9, 3, 1, [1, 1, 1, 1], residual=residual, activation=activation, params=params))


def test_without_bias():
    check(*make_depthwise(1, 3, 6, 6, 5, 1, [2, 2, 2, 2], bias=False))


@pytest.mark.parametrize("case", ["dense", "multiplier", "7x7", "stride3", "dilation", "3x5", "mixed stride"])
def test_the_predicate_refuses_what_the_kernel_cannot_do(case):
    node, values, _ = make_depthwise(1, 4, 12, 12, 3, 1, [1, 1, 1, 1])
    if case == "dense":
        node.attrs["group"] = 1
        values[1] = Value("w", np.float32, (4, 4, 3, 3), np.zeros((4, 4, 3, 3), np.float32))
    elif case == "multiplier":  # M = 2C: two filters per channel
        values[1] = Value("w", np.float32, (8, 1, 3, 3), np.zeros((8, 1, 3, 3), np.float32))
    elif case == "7x7":
        values[1] = Value("w", np.float32, (4, 1, 7, 7), np.zeros((4, 1, 7, 7), np.float32))
    elif case == "stride3":
        node.attrs["strides"] = [3, 3]
    elif case == "dilation":
        node.attrs["dilations"] = [2, 2]
    elif case == "3x5":
        values[1] = Value("w", np.float32, (4, 1, 3, 5), np.zeros((4, 1, 3, 5), np.float32))
    elif case == "mixed stride":
        node.attrs["strides"] = [1, 2]
    assert not depthwise._supports_depthwise(node, values)


def test_cost_hint_prefers_depthwise_to_the_general_kernels():
    node, values, _ = make_depthwise(1, 144, 56, 56, 3, 1, [1, 1, 1, 1])
    costs = {k.name: k.cost(node, values) for k in candidates(node, values)}
    assert min(costs, key=costs.get) == "conv2d_depthwise"
