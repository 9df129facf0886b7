"""Winograd F(2x2,3x3) and F(4x4,3x3): the derived matrices, and the kernels against the reference Conv.

Oracles: exact rational arithmetic for the matrices (the 1-D identity must hold with no
rounding at all), Lavin & Gray's published matrices, and the reference Conv / FusedConv.

Tolerance: Winograd's transforms add and subtract values of different sizes, so its float32
rounding grows with the tile. Over this file's cases (C <= 32, outputs O(1)) the largest
error against the reference measured 1.9e-6 for F(2x2) (like im2col's) and 9.7e-6 for
F(4x4) (entries up to 8 in A^T and 1/24 in G); on ResNet layers ``winograd_error`` measures
F(4x4) 10-20x less accurate than im2col against float64 (max error ~1e-5 of the output's
range). So F(2x2) is held to 1e-4 like the other conv kernels, F(4x4) to 2e-4: 20x its
measured error, still far below a wrong tap (an O(0.1) error).
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from tinyinfer.ir import Node, Value
from tinyinfer.kernels import candidates, winograd
from tinyinfer.ops import OPS
from tinyinfer.ops.base import prepare_node

TOLERANCE = {2: dict(rtol=1e-4, atol=1e-4), 4: dict(rtol=2e-4, atol=2e-4)}


def make_conv(x_shape, out_channels, *, pads=(1, 1, 1, 1), bias=True, residual=False, activation=None, params=None,
              seed=0, **attrs):
    rng = np.random.default_rng(seed)
    channels = x_shape[1]
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = (rng.standard_normal((out_channels, channels, 3, 3)) / np.sqrt(9 * channels)).astype(np.float32)
    b = rng.standard_normal(out_channels).astype(np.float32) if bias else None
    names = ["x", "w", "b" if bias else ""] + (["z"] if residual else [])
    attrs = {"pads": list(pads), **attrs}
    if residual or activation:
        node = Node("FusedConv", names, ["y"], {**attrs, "activation": activation or "Identity",
                                                 "activation_params": params}, "ai.tinyinfer", "fused")
        prepare_node(node, 1)
    else:
        node = Node("Conv", names, ["y"], attrs, "", "conv")
        prepare_node(node, 17)
    values = [Value("x", np.float32, x_shape), Value("w", np.float32, w.shape, w),
              None if b is None else Value("b", np.float32, b.shape, b)]
    arrays = [x, w, b]
    if residual:
        (y,) = OPS[(node.domain, node.op_type)].infer(node, values)
        arrays.append(rng.standard_normal(y.shape).astype(np.float32))
        values.append(Value("z", np.float32, y.shape))
    return node, values, arrays


def reference(node, arrays):
    return OPS[(node.domain, node.op_type)].reference(node, *arrays)


# ---------------------------------------------------------------------------- the matrices
def correlate(d, g, m):
    return [sum(d[i + k] * g[k] for k in range(3)) for i in range(m)]


@pytest.mark.parametrize("m, points", [(2, None), (4, None), (4, (0, 1, -1, Fraction(1, 2), Fraction(-1, 2))),
                                       (6, (0, 1, -1, 2, -2, Fraction(1, 2), Fraction(-1, 2)))])
def test_derived_matrices_compute_the_correlation_exactly(m, points):
    a_t, g, b_t = winograd.winograd_matrices(m, 3, points)
    assert (len(a_t), len(a_t[0]), len(g), len(g[0]), len(b_t)) == (m, m + 2, m + 2, 3, m + 2)
    rng = np.random.default_rng(m)
    for _ in range(5):
        d = [Fraction(int(v)) for v in rng.integers(-9, 10, m + 2)]
        f = [Fraction(int(v), 7) for v in rng.integers(-9, 10, 3)]
        u = [sum(gi * fi for gi, fi in zip(row, f)) for row in g]
        v = [sum(bi * di for bi, di in zip(row, d)) for row in b_t]
        y = [sum(ai * ui * vi for ai, ui, vi in zip(row, u, v)) for row in a_t]
        assert y == correlate(d, f, m)  # exact: Fractions, no rounding


def test_f4_matrices_are_lavin_and_grays_up_to_row_signs():
    a_t, g, b_t = winograd.winograd_matrices(4)
    published_b_t = [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                     [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]]
    published_g = [[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                   [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]]
    published_a_t = [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]
    for ours, theirs in ((b_t, published_b_t), (g, published_g)):
        for row, published in zip(ours, theirs):
            row, published = np.array(row, float), np.array(published, float)
            assert np.allclose(row, published) or np.allclose(row, -published)
    assert np.allclose(np.array(a_t, float), published_a_t)


def test_f2_matrices_are_the_textbook_ones():
    a_t, g, b_t = winograd.winograd_matrices(2)
    assert [[int(v) for v in row] for row in a_t] == [[1, 1, 1, 0], [0, 1, -1, 1]]
    assert [[float(v) for v in row] for row in g] == [[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]]
    assert np.allclose(np.abs(np.array(b_t, float)), [[1, 0, 1, 0], [0, 1, 1, 0], [0, 1, 1, 0], [0, 1, 0, 1]])


def test_bad_points_are_refused():
    with pytest.raises(ValueError, match="distinct"):
        winograd.winograd_matrices(2, 3, (0, 1, 1))


# ---------------------------------------------------------------------------- the kernels
GRID = [
    ((1, 16, 8, 8), 16, (1, 1, 1, 1)),
    ((2, 16, 9, 7), 24, (1, 1, 1, 1)),  # odd sizes: partial last tiles
    ((1, 20, 11, 13), 16, (0, 0, 0, 0)),  # no padding
    ((1, 16, 10, 6), 17, (2, 0, 1, 2)),  # asymmetric pads, odd channel count
    ((2, 32, 5, 5), 16, (1, 1, 1, 1)),  # fewer pixels than a F(4x4) tile row
    ((1, 16, 3, 3), 16, (0, 0, 0, 0)),  # a single 1x1 output
]


@pytest.mark.parametrize("m", [2, 4])
@pytest.mark.parametrize("x_shape, out_channels, pads", GRID)
def test_winograd_matches_the_reference(m, x_shape, out_channels, pads):
    node, values, arrays = make_conv(x_shape, out_channels, pads=pads)
    fn = winograd.build_winograd(node, values, m)
    np.testing.assert_allclose(fn(node, *arrays), reference(node, arrays), **TOLERANCE[m])


@pytest.mark.parametrize("m", [2, 4])
@pytest.mark.parametrize("activation, params", [("Relu", None), ("Clip", [0.0, 6.0]), ("LeakyRelu", [0.2]),
                                                ("HardSwish", None), ("Sigmoid", None), ("Identity", None)])
def test_winograd_applies_the_fused_epilogue(m, activation, params):
    node, values, arrays = make_conv((2, 16, 7, 9), 16, residual=True, activation=activation, params=params, seed=3)
    fn = winograd.build_winograd(node, values, m)
    np.testing.assert_allclose(fn(node, *arrays), reference(node, arrays), **TOLERANCE[m])


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("m", [2, 4])
@pytest.mark.parametrize("x_shape, out_channels", [
    ((1, 16, 6, 6), 80),  # few tiles, 3 blocks of output channels: the input transformed once, before
    ((3, 16, 18, 17), 40),  # many tiles over 3 images: tasks of tile panels that cross images
    ((1, 300, 9, 9), 16),  # over 256 input channels: 2 K blocks of the micro-kernel, 2-panel tasks
])
def test_winograd_task_plans_match_the_reference(threads, m, x_shape, out_channels):
    import numba

    node, values, arrays = make_conv(x_shape, out_channels, residual=True, activation="Relu", seed=7)
    fn = winograd.build_winograd(node, values, m)
    previous = numba.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        got = fn(node, *arrays)
    finally:
        numba.set_num_threads(previous)
    np.testing.assert_allclose(got, reference(node, arrays), **TOLERANCE[m])


def test_winograd_task_plan_cuts_tiles_before_channels():
    assert winograd.plan_winograd_tasks(196, 64, 64, 1) == (4, 64)  # one thread: the largest blocks
    assert winograd.plan_winograd_tasks(196, 64, 64, 2) == (4, 64)  # 25 panels: 7 tasks already
    assert winograd.plan_winograd_tasks(49, 128, 128, 2) == (2, 64)  # 2 panels (16 tiles, one vector) a task
    assert winograd.plan_winograd_tasks(16, 256, 256, 2) == (2, 32)  # one tile task: channels are cut


@pytest.mark.parametrize("m", [2, 4])
def test_winograd_on_numpys_batched_matmul(m):
    node, values, arrays = make_conv((2, 16, 9, 7), 24, residual=True, activation="Relu")
    fn = winograd.build_winograd(node, values, m, backend="blas")
    np.testing.assert_allclose(fn(node, *arrays), reference(node, arrays), **TOLERANCE[m])


def test_winograd_without_bias():
    node, values, arrays = make_conv((1, 16, 6, 6), 16, bias=False)
    np.testing.assert_allclose(winograd.build_winograd_f4(node, values, [])(node, *arrays), reference(node, arrays),
                               **TOLERANCE[4])


@pytest.mark.parametrize("change", [dict(strides=[2, 2]), dict(dilations=[2, 2]), dict(group=2), "channels",
                                    "weights", "5x5"])
def test_winograd_refuses_what_it_cannot_compute(change):
    if change == "channels":
        node, values, _ = make_conv((1, 8, 8, 8), 16)
    elif change == "5x5":
        node = Node("Conv", ["x", "w"], ["y"], {"pads": [2, 2, 2, 2]}, "", "c")
        prepare_node(node, 17)
        w = np.zeros((16, 16, 5, 5), np.float32)
        values = [Value("x", np.float32, (1, 16, 8, 8)), Value("w", np.float32, w.shape, w)]
    else:
        node, values, _ = make_conv((1, 16, 8, 8), 16, **(change if isinstance(change, dict) else {}))
        if change == "weights":
            values[1] = Value("w", np.float32, values[1].shape)  # not a constant: no filters to transform once
        if change == dict(group=2):
            values[1] = Value("w", np.float32, (16, 8, 3, 3), np.zeros((16, 8, 3, 3), np.float32))
    names = {k.name for k in candidates(node, values)}
    assert not names & {"conv2d_winograd_f2", "conv2d_winograd_f4"}


def test_cost_hints_prefer_f4_on_a_resnet_layer():
    node, values, _ = make_conv((1, 64, 56, 56), 64)
    costs = {k.name: k.cost(node, values) for k in candidates(node, values)}
    assert min(costs, key=costs.get) == "conv2d_winograd_f4"
    assert costs["conv2d_winograd_f4"] < costs["conv2d_winograd_f2"] < costs["conv2d_im2col"]


def test_winograd_error_is_measured_and_f4_is_less_accurate_than_f2():
    (row,) = winograd.winograd_error(layers=((16, 12),), baselines=False)
    assert set(row["max_rel"]) == {"winograd_f2", "winograd_f4", "winograd_f4_half"}
    assert row["max_rel"]["winograd_f4"] > row["max_rel"]["winograd_f2"]
    assert all(0 < e < 1e-4 for e in row["max_rel"].values())


# ---------------------------------------------------------------------------- a session
def resnet_block():
    """A ResNet basic block on 64 channels at 28x28 (ResNet-18's layer 1 for a 112-pixel input):
    conv-bn-relu, conv-bn, + shortcut, relu."""
    from tinyinfer.models.builder import NetworkBuilder

    net = NetworkBuilder("block", seed=1)
    x = net.input("x", ("N", 64, 28, 28))
    y = net.conv_bn_act(x, 64, 3, act="relu", name="conv1")
    y = net.conv_bn_act(y, 64, 3, act=None, name="conv2")
    y = net.activation(net.add(y, x), "relu", name="out")
    return net.build(y)


def test_a_resnet_block_runs_on_winograd_and_matches_onnxruntime(only_this_chapters_kernels):
    import onnxruntime

    import tinyinfer as ti

    model = resnet_block()
    x = np.random.default_rng(0).standard_normal((1, 64, 28, 28)).astype(np.float32)
    runtime = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = runtime.run(None, {"x": x})[0]
    sess = ti.InferenceSession(model, backend="numba", select="cost")
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], expected, **TOLERANCE[4])
    kernels = [r.kernel for r in sess.profile().records if r.op_type == "FusedConv"]
    assert len(kernels) == 2 and all(k.startswith("conv2d_winograd") for k in kernels)
