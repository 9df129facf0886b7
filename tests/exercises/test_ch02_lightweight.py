"""Graded tests of chapter 02's exercises (exercises/ch02_lightweight.py).

    pytest tests/exercises/test_ch02_lightweight.py --impl=exercises -m ex1   # separable_conv_cost
    pytest tests/exercises/test_ch02_lightweight.py --impl=exercises -m ex2   # channel_shuffle
    pytest tests/exercises/test_ch02_lightweight.py --impl=exercises -m ex3   # inverted_residual
    pytest tests/exercises/test_ch02_lightweight.py --impl=exercises -m ex4   # memory_access_cost_1x1

(``-m ch02_ex1`` ... picks the same tests from the whole of tests/exercises.)

Oracles: the MACs, parameters and memory access that :func:`tinyinfer.models.analyze` counts
on real Conv graphs written with onnx.helper; ONNX Runtime running ShuffleNet's
Reshape-Transpose-Reshape and the index formula of the shuffle; for the inverted residual,
ONNX Runtime running the built block against a float64 NumPy version of the block written
here from the same weights, plus the structure of the graph. None of them reads the solutions.
"""

from __future__ import annotations

import math
import random

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from tinyinfer.models import NetworkBuilder, analyze

# Models here use ai.onnx opset 17 and IR version 8, both long supported by ONNX Runtime.
OPSET = 17


def ex(number: int):
    """Both marks of an exercise: ``ex<n>`` (per file) and ``ch02_ex<n>`` (across chapters)."""

    def mark(test):
        return getattr(pytest.mark, f"ch02_ex{number}")(getattr(pytest.mark, f"ex{number}")(test))

    return mark


def make_model(nodes, inputs, outputs, initializers=()) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "exercise", inputs, outputs, initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def run_onnxruntime(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


# ============================================================================ exercise 1
def conv_graph(c_in: int, h: int, w: int, convs) -> onnx.ModelProto:
    """A chain of bias-free Conv nodes on a [1, c_in, h, w] input; ``convs`` lists
    (out_channels, kernel, group) and every conv keeps the size (stride 1, same padding)."""
    nodes, weights, x, channels = [], [], "x", c_in
    for i, (out_channels, kernel, group) in enumerate(convs):
        name = f"w{i}"
        weights.append(numpy_helper.from_array(np.zeros((out_channels, channels // group, kernel, kernel), np.float32), name))
        pad = (kernel - 1) // 2
        nodes.append(helper.make_node("Conv", [x, name], [f"y{i}"], kernel_shape=[kernel, kernel], pads=[pad] * 4, group=group))
        x, channels = f"y{i}", out_channels
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c_in, h, w])]
    outputs = [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, channels, h, w])]
    return make_model(nodes, inputs, outputs, weights)


def analyzed_cost(model: onnx.ModelProto) -> tuple[int, int]:
    totals = analyze(model).totals
    return int(totals["macs"]), int(totals["params"])


def _random_layers(count: int, seed: int):
    rng = random.Random(seed)
    return [
        (rng.randint(1, 64), rng.randint(1, 96), rng.choice([1, 3, 5, 7]), rng.randint(1, 40), rng.randint(1, 40))
        for _ in range(count)
    ]


# (c_in, c_out, k, h, w): MobileNetV1's separable layers (Howard et al., 2017, Table 1), a
# 5×5 MobileNetV3 layer, a 7×7 one, then seeded random layers.
LAYERS = [
    (32, 64, 3, 112, 112),
    (128, 256, 3, 28, 28),
    (512, 512, 3, 14, 14),
    (1024, 1024, 3, 7, 7),
    (240, 240, 5, 14, 14),
    (16, 8, 7, 9, 5),
    (3, 1, 1, 1, 1),
] + _random_layers(40, seed=2)


@ex(1)
@pytest.mark.parametrize("c_in, c_out, k, h, w", LAYERS, ids=[f"layer{i}" for i in range(len(LAYERS))])
def test_separable_conv_cost_matches_analyze(impl, c_in, c_out, k, h, w):
    standard_macs, standard_params = analyzed_cost(conv_graph(c_in, h, w, [(c_out, k, 1)]))
    separable_macs, separable_params = analyzed_cost(conv_graph(c_in, h, w, [(c_in, k, c_in), (c_out, 1, 1)]))
    got = impl.separable_conv_cost(c_in, c_out, k, h, w)
    case = f"c_in={c_in}, c_out={c_out}, k={k}, {h}x{w}"
    assert got["standard_macs"] == standard_macs, f"{case}: standard conv MACs, analyze counts {standard_macs}"
    assert got["standard_params"] == standard_params, f"{case}: standard conv weights, analyze counts {standard_params}"
    assert got["separable_macs"] == separable_macs, f"{case}: depthwise + pointwise MACs, analyze counts {separable_macs}"
    assert got["separable_params"] == separable_params, f"{case}: depthwise + pointwise weights, analyze counts {separable_params}"
    # The ratio of two exact integers, so only float rounding separates correct answers.
    assert got["ratio"] == pytest.approx(separable_macs / standard_macs, rel=1e-12), f"{case}: ratio"
    assert got["ratio"] == pytest.approx(1 / c_out + 1 / k**2, rel=1e-12), f"{case}: the ratio is 1/c_out + 1/k^2"


@ex(1)
def test_separable_conv_cost_counts_are_ints(impl):
    got = impl.separable_conv_cost(32, 64, 3, 112, 112)
    for key in ("standard_macs", "standard_params", "separable_macs", "separable_params"):
        assert isinstance(got[key], (int, np.integer)) and not isinstance(got[key], bool), (
            f"{key} should be an integer count, got {got[key]!r}"
        )
    assert got["separable_macs"] == 29_302_784 and got["standard_macs"] == 231_211_008


# ============================================================================ exercise 2
def onnxruntime_shuffle(x: np.ndarray, groups: int) -> np.ndarray:
    """ShuffleNet's definition as ONNX ops run by ONNX Runtime: [N, g, C/g, H, W], swap, flatten."""
    n, c, h, w = x.shape
    nodes = [
        helper.make_node("Reshape", ["x", "grouped_shape"], ["grouped"]),
        helper.make_node("Transpose", ["grouped"], ["swapped"], perm=[0, 2, 1, 3, 4]),
        helper.make_node("Reshape", ["swapped", "shape"], ["y"]),
    ]
    consts = [
        numpy_helper.from_array(np.array([n, groups, c // groups, h, w], np.int64), "grouped_shape"),
        numpy_helper.from_array(np.array([n, c, h, w], np.int64), "shape"),
    ]
    model = make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(x.shape))],
        consts,
    )
    (y,) = run_onnxruntime(model, {"x": x})
    return y


def _shuffle_cases(count: int, seed: int):
    rng = random.Random(seed)
    cases = []
    for _ in range(count):
        groups = rng.choice([1, 2, 3, 4, 8])
        cases.append((rng.randint(1, 3), groups * rng.randint(1, 6), rng.randint(1, 5), rng.randint(1, 5), groups))
    return cases


SHUFFLES = [(1, 12, 2, 2, 3), (2, 240, 3, 3, 3), (1, 116, 1, 1, 2), (1, 8, 4, 4, 8)] + _shuffle_cases(25, seed=3)


@ex(2)
@pytest.mark.parametrize("n, c, h, w, groups", SHUFFLES, ids=[f"shuffle{i}" for i in range(len(SHUFFLES))])
def test_channel_shuffle_matches_onnxruntime(impl, n, c, h, w, groups):
    x = np.random.default_rng(c * 100 + groups).standard_normal((n, c, h, w)).astype(np.float32)
    before = x.copy()
    got = impl.channel_shuffle(x, groups)
    expected = onnxruntime_shuffle(x, groups)
    assert np.asarray(got).shape == x.shape, f"shape {np.asarray(got).shape}, expected {x.shape}"
    # a permutation moves values without arithmetic: exact equality
    np.testing.assert_array_equal(got, expected, err_msg=f"C={c}, groups={groups}")
    np.testing.assert_array_equal(x, before, err_msg="channel_shuffle changed its input")


@ex(2)
@pytest.mark.parametrize("c, groups", [(6, 3), (12, 3), (12, 4), (10, 5), (16, 2)])
@pytest.mark.parametrize("trailing", [(), (5,), (2, 3)])
def test_channel_shuffle_follows_the_index_formula(impl, c, groups, trailing):
    # Input channel i·(C/g) + j (group i, position j) lands on output channel j·g + i. Integer
    # data of any rank >= 2 must keep its dtype.
    x = np.arange(2 * c * int(np.prod(trailing, dtype=int))).reshape(2, c, *trailing).astype(np.int32)
    got = np.asarray(impl.channel_shuffle(x, groups))
    assert got.dtype == x.dtype, f"dtype {got.dtype}, expected {x.dtype}"
    assert got.shape == x.shape
    per_group = c // groups
    for i in range(groups):
        for j in range(per_group):
            source, target = i * per_group + j, j * groups + i
            np.testing.assert_array_equal(got[:, target], x[:, source],
                                          err_msg=f"input channel {source} should be output channel {target}")


@ex(2)
def test_channel_shuffle_small_example(impl):
    x = np.arange(6, dtype=np.float32).reshape(1, 6, 1, 1)
    assert np.asarray(impl.channel_shuffle(x, 3)).ravel().tolist() == [0, 2, 4, 1, 3, 5]


@ex(2)
@pytest.mark.parametrize("c, groups", [(12, 3), (24, 4), (8, 2)])
def test_channel_shuffle_by_g_is_undone_by_c_over_g(impl, c, groups):
    x = np.random.default_rng(0).standard_normal((1, c, 2, 2)).astype(np.float32)
    shuffled = impl.channel_shuffle(x, groups)
    assert not np.array_equal(shuffled, x), "a shuffle with 1 < g < C must move channels"
    np.testing.assert_array_equal(impl.channel_shuffle(shuffled, c // groups), x)


@ex(2)
@pytest.mark.parametrize("c, groups", [(12, 5), (7, 2), (6, 0), (6, -3)])
def test_channel_shuffle_rejects_groups_that_do_not_divide(impl, c, groups):
    with pytest.raises(ValueError):
        impl.channel_shuffle(np.zeros((1, c, 2, 2), np.float32), groups)


# ============================================================================ exercise 3
def build_blocks(impl, in_shape, blocks, seed=0):
    """A model of one or more inverted residuals on an input of ``in_shape`` (N, C, H, W);
    ``blocks`` lists (out_channels, stride, expansion)."""
    builder = NetworkBuilder("inverted_residual_test", seed=seed)
    x = builder.input("x", in_shape)
    y = x
    for out_channels, stride, expansion in blocks:
        y = impl.inverted_residual(builder, y, out_channels, stride, expansion)
        assert isinstance(y, str) and y in builder.shapes, "inverted_residual must return the name of its output tensor"
    # BatchNorm statistics measured on random input, so each BN has non-trivial mean and variance.
    return builder.build(y, seed=seed), builder, y


def expected_op_types(in_channels, out_channels, stride, expansion):
    ops = (["Conv", "BatchNormalization", "Clip"] if expansion != 1 else []) + ["Conv", "BatchNormalization", "Clip"]
    ops += ["Conv", "BatchNormalization"]
    if stride == 1 and in_channels == out_channels:
        ops.append("Add")
    return ops


# ---- the block in float64 NumPy, from the definition (Sandler et al., 2018, Table 1)
def conv2d_float64(x, weight, bias, stride, pad, groups):
    """Direct convolution: loops over the k×k taps only, einsum over the channels of each group."""
    n, c, h, w = x.shape
    m, c_per_group, kh, kw = weight.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    oh = (h + 2 * pad - kh) // stride + 1
    ow = (w + 2 * pad - kw) // stride + 1
    out = np.zeros((n, m, oh, ow))
    m_per_group = m // groups
    for g in range(groups):
        xs = xp[:, g * c_per_group:(g + 1) * c_per_group]
        ws = weight[g * m_per_group:(g + 1) * m_per_group]
        for a in range(kh):
            for b in range(kw):
                window = xs[:, :, a:a + stride * oh:stride, b:b + stride * ow:stride]
                out[:, g * m_per_group:(g + 1) * m_per_group] += np.einsum("nchw,mc->nmhw", window, ws[:, :, a, b])
    if bias is not None:
        out += bias[None, :, None, None]
    return out


def batchnorm_float64(x, scale, bias, mean, var, epsilon):
    per_channel = [a.reshape(1, -1, 1, 1) for a in (scale, bias, mean, var)]
    scale, bias, mean, var = per_channel
    return (x - mean) / np.sqrt(var + epsilon) * scale + bias


def numpy_inverted_residuals(model: onnx.ModelProto, x: np.ndarray, blocks, in_channels: int) -> np.ndarray:
    """Run the blocks' definition in float64 with the weights found in ``model``: the k-th
    Conv and the k-th BatchNormalization of the graph, in graph order."""
    weights = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    norms = [n for n in model.graph.node if n.op_type == "BatchNormalization"]

    def epsilon(node):
        return next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)

    def conv_bn(y, stride, pad, groups):
        conv, norm = convs.pop(0), norms.pop(0)
        bias = weights[conv.input[2]] if len(conv.input) > 2 and conv.input[2] else None
        y = conv2d_float64(y, weights[conv.input[1]], bias, stride, pad, groups)
        return batchnorm_float64(y, *(weights[name] for name in norm.input[1:5]), epsilon(norm))

    y = x.astype(np.float64)
    channels = in_channels
    for out_channels, stride, expansion in blocks:
        block_input = y
        hidden = channels * expansion
        if expansion != 1:
            y = np.clip(conv_bn(y, 1, 0, 1), 0.0, 6.0)
        y = np.clip(conv_bn(y, stride, 1, hidden), 0.0, 6.0)
        y = conv_bn(y, 1, 0, 1)  # linear bottleneck: no activation
        if stride == 1 and channels == out_channels:
            y = y + block_input
        channels = out_channels
    return y


# (in_channels, H, W, out_channels, stride, expansion)
BLOCKS = [
    (24, 8, 8, 24, 1, 6),  # MobileNetV2 stage 2, second block: residual
    (16, 9, 9, 24, 2, 6),  # stage 2, first block: stride 2, no residual
    (16, 7, 7, 24, 1, 6),  # width changes: no residual
    (8, 6, 6, 8, 2, 4),  # stride 2 with equal widths: still no residual
    (32, 5, 5, 16, 1, 1),  # the first block: expansion 1, no expand conv
    (16, 6, 6, 16, 1, 1),  # expansion 1 with a residual
    (12, 10, 7, 12, 1, 3),  # non-square map
    (10, 11, 11, 20, 2, 2),  # odd map, stride 2
]


@ex(3)
@pytest.mark.parametrize("c, h, w, out_channels, stride, expansion", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_inverted_residual_structure(impl, c, h, w, out_channels, stride, expansion):
    model, builder, y = build_blocks(impl, ("N", c, h, w), [(out_channels, stride, expansion)])
    nodes = list(model.graph.node)
    got = [n.op_type for n in nodes]
    want = expected_op_types(c, out_channels, stride, expansion)
    assert got == want, f"expected the nodes {want}, got {got}"
    hidden = c * expansion
    convs = [n for n in nodes if n.op_type == "Conv"]
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    kernel_shapes = [tuple(weights[n.input[1]].shape) for n in convs]
    want_kernels = ([(hidden, c, 1, 1)] if expansion != 1 else []) + [(hidden, 1, 3, 3), (out_channels, hidden, 1, 1)]
    assert kernel_shapes == want_kernels, f"conv weight shapes: expected {want_kernels}, got {kernel_shapes}"
    attrs = {a.name: helper.get_attribute_value(a) for a in convs[-2].attribute}
    assert attrs.get("group") == hidden, f"the depthwise conv needs group={hidden}, got {attrs.get('group')}"
    assert list(attrs.get("strides", [1, 1])) == [stride, stride], f"the depthwise conv carries the stride {stride}"
    for clip in (n for n in nodes if n.op_type == "Clip"):
        low, high = (float(weights[name]) for name in clip.input[1:3])
        assert (low, high) == (0.0, 6.0), f"ReLU6 clips to [0, 6], got [{low}, {high}]"
    if "Add" in want:
        assert "x" in nodes[-1].input, "the residual Add must add the block's input"
    oh, ow = (h + 2 - 3) // stride + 1, (w + 2 - 3) // stride + 1
    assert tuple(builder.shapes[y]) == ("N", out_channels, oh, ow), f"output shape {builder.shapes[y]}"
    assert [i.name for i in model.graph.input] == ["x"], "the block must not add graph inputs"


@ex(3)
@pytest.mark.parametrize("c, h, w, out_channels, stride, expansion", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_inverted_residual_computes_the_block(impl, c, h, w, out_channels, stride, expansion):
    blocks = [(out_channels, stride, expansion)]
    model, _, _ = build_blocks(impl, ("N", c, h, w), blocks, seed=c + h)
    # Inputs 4x the scale the BatchNorm statistics were measured at, so that ReLU6's cap at 6
    # matters (a plain ReLU would fail).
    x = (4 * np.random.default_rng(1).standard_normal((2, c, h, w))).astype(np.float32)
    (got,) = run_onnxruntime(model, {"x": x})
    expected = numpy_inverted_residuals(model, x, blocks, c)
    assert got.shape == expected.shape, f"output shape {got.shape}, expected {expected.shape}"
    # float32 against float64 through three convs and batch norms: relative errors of about
    # 1e-6; a wrong wiring errs by the size of the values (about 1).
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


@ex(3)
def test_inverted_residual_blocks_stack(impl):
    # MobileNetV2's stage 2 (two blocks, 16 -> 24 channels, the first with stride 2), then a
    # third block: one builder, unique node and weight names, the NumPy definition agrees.
    blocks = [(24, 2, 6), (24, 1, 6), (24, 1, 6)]
    model, _, _ = build_blocks(impl, ("N", 16, 12, 12), blocks, seed=5)
    names = [n.name for n in model.graph.node if n.name]
    assert len(names) == len(set(names)), "node names must be unique"
    assert sum(n.op_type == "Add" for n in model.graph.node) == 2
    x = (4 * np.random.default_rng(2).standard_normal((1, 16, 12, 12))).astype(np.float32)
    (got,) = run_onnxruntime(model, {"x": x})
    np.testing.assert_allclose(got, numpy_inverted_residuals(model, x, blocks, 16), rtol=1e-4, atol=1e-4)


# ============================================================================ exercise 4
def analyzed_memory_access(h: int, w: int, c1: int, c2: int) -> int:
    """Elements a real 1×1 Conv (float32, no bias) reads and writes, as analyze counts them."""
    layer = analyze(conv_graph(c1, h, w, [(c2, 1, 1)])).layers[0]
    assert layer.memory_access % 4 == 0
    return layer.memory_access // 4


def _memory_cases(count: int, seed: int):
    rng = random.Random(seed)
    return [(rng.randint(1, 30), rng.randint(1, 30), rng.randint(1, 200), rng.randint(1, 200)) for _ in range(count)]


# ShuffleNet V2's Table 1 pairs at 56x56, a classifier-sized layer, a tiny one, then random ones.
MEMORY_CASES = [(56, 56, 128, 128), (56, 56, 90, 180), (56, 56, 52, 312), (56, 56, 36, 432), (7, 7, 1024, 1000),
                (1, 1, 3, 5)] + _memory_cases(20, seed=4)


@ex(4)
@pytest.mark.parametrize("h, w, c1, c2", MEMORY_CASES, ids=[f"conv{i}" for i in range(len(MEMORY_CASES))])
def test_memory_access_cost_matches_analyze(impl, h, w, c1, c2):
    expected = analyzed_memory_access(h, w, c1, c2)
    got = impl.memory_access_cost_1x1(h, w, c1, c2)
    assert got == expected, f"{h}x{w}, {c1} -> {c2} channels: analyze counts {expected} elements, you gave {got}"


@ex(4)
@pytest.mark.parametrize("hw, product", [(56 * 56, 128 * 128), (28 * 28, 256 * 256), (14 * 14, 96 * 96)])
def test_memory_access_cost_is_least_at_equal_widths(impl, hw, product):
    # ShuffleNet V2's G1: with B = hw·c1·c2 fixed, MAC >= 2·sqrt(hw·B) + B/hw, with equality
    # at c1 = c2. Check it over every divisor pair (c1, c2) of the fixed product c1·c2.
    side = math.isqrt(product)
    pairs = [(c1, product // c1) for c1 in range(1, product + 1) if product % c1 == 0]
    costs = {pair: impl.memory_access_cost_1x1(hw, 1, *pair) for pair in pairs}
    assert min(costs, key=costs.get) == (side, side)
    macs = hw * product
    bound = 2 * math.sqrt(hw * macs) + macs / hw
    assert costs[(side, side)] == pytest.approx(bound)
    assert all(cost >= bound - 1e-6 for cost in costs.values())
