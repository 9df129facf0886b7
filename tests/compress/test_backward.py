"""Every backward rule against a central-difference gradient, in float64.

The oracle: ``(f(x + h) - f(x - h)) / 2h`` of ``f = sum(dy * node(x))`` for every element of
every differentiable input, with h = 1e-6. Its truncation error is O(h^2) (about 1e-12 here)
and its rounding error about 1e-16 / h = 1e-10 times the function's size, so analytic and
numerical gradients must agree to rtol 1e-6, atol 1e-8. The Numba kernels (float32) are
checked against their NumPy twins at float32 precision instead (rtol 1e-4: sums of a few
hundred float32 products).
"""

from __future__ import annotations

import numpy as np
import onnxruntime
import pytest
from onnx import TensorProto, helper

from tinyinfer.compress import backward
from tinyinfer.compress.backward import Mode, vjp
from tinyinfer.errors import TinyInferError, UnsupportedOpError
from tinyinfer.ir import Node
from tinyinfer.ops import OPS, prepare_node
from tinyinfer.ops.conv import window_geometry

RTOL, ATOL = 1e-6, 1e-8
STEP = 1e-6


def make_node(op_type: str, inputs: int, outputs: int = 1, opset: int = 17, **attrs) -> Node:
    names_in, names_out = [f"in{i}" for i in range(inputs)], [f"out{i}" for i in range(outputs)]
    node = Node(op_type, names_in, names_out, attrs, name=op_type.lower())
    prepare_node(node, opset)
    return node


def forward(node, arrays, mode_factory):
    outputs, _ = backward.rule_for(node).forward(node, list(arrays), mode_factory())
    return outputs[0]


def numerical_gradient(node, arrays, dy, index, mode_factory):
    arrays = [None if a is None else a.copy() for a in arrays]
    x = arrays[index]
    grad = np.zeros_like(x)
    for position in np.ndindex(*x.shape):
        original = x[position]
        x[position] = original + STEP
        plus = np.sum(dy * forward(node, arrays, mode_factory))
        x[position] = original - STEP
        minus = np.sum(dy * forward(node, arrays, mode_factory))
        x[position] = original
        grad[position] = (plus - minus) / (2 * STEP)
    return grad


def check_gradients(node, arrays, *, differentiable=None, mode_factory=Mode, seed=1):
    """Analytic vs numerical gradient of every differentiable input (default: every float input)."""
    rng = np.random.default_rng(seed)
    y = forward(node, arrays, mode_factory)
    dy = rng.standard_normal(y.shape)
    rule = backward.rule_for(node)
    _, saved = rule.forward(node, list(arrays), mode_factory())
    grads = rule.backward(node, saved, dy, [a is not None for a in arrays])
    indices = differentiable if differentiable is not None else [
        i for i, a in enumerate(arrays) if a is not None and a.dtype == np.float64]
    for i in indices:
        expected = numerical_gradient(node, arrays, dy, i, mode_factory)
        assert grads[i].shape == arrays[i].shape
        np.testing.assert_allclose(grads[i], expected, rtol=RTOL, atol=ATOL, err_msg=f"input {i} of {node.op_type}")


def normal(rng, *shape):
    return rng.standard_normal(shape)


# ============================================================================ convolution
CONVS = [  # (x shape, weight shape, attributes, bias)
    ((2, 3, 5, 5), (4, 3, 3, 3), dict(pads=[1, 1, 1, 1]), True),
    ((1, 4, 7, 6), (6, 2, 3, 2), dict(group=2, strides=[2, 2], pads=[1, 0, 0, 1], dilations=[2, 1]), True),
    ((2, 3, 5, 5), (3, 1, 3, 3), dict(group=3, strides=[2, 1], pads=[1, 1, 1, 1]), False),  # depthwise
    ((2, 4, 4, 4), (8, 4, 1, 1), dict(), True),  # pointwise
    ((2, 2, 7), (3, 2, 3), dict(strides=[2], pads=[1, 1]), True),  # 1-D: the NumPy path only
]


@pytest.mark.parametrize("x_shape, w_shape, attrs, bias", CONVS)
def test_conv_gradients(x_shape, w_shape, attrs, bias):
    rng = np.random.default_rng(0)
    node = make_node("Conv", 3 if bias else 2, **attrs)
    arrays = [normal(rng, *x_shape), normal(rng, *w_shape)] + ([normal(rng, w_shape[0])] if bias else [])
    expected = OPS[("", "Conv")].reference(node, *arrays)
    np.testing.assert_allclose(forward(node, arrays, Mode), expected, rtol=1e-12, atol=1e-12)
    check_gradients(node, arrays)


@pytest.mark.parametrize("x_shape, w_shape, attrs, bias", [c for c in CONVS if len(c[0]) == 4])
def test_conv_float32_numba_path_matches_float64(x_shape, w_shape, attrs, bias):
    """The float32 rule (Numba im2col, packed GEMM, Numba col2im) against the float64 NumPy one."""
    rng = np.random.default_rng(2)
    node = make_node("Conv", 3 if bias else 2, **attrs)
    arrays = [normal(rng, *x_shape), normal(rng, *w_shape)] + ([normal(rng, w_shape[0])] if bias else [])
    y64 = forward(node, arrays, Mode)
    dy = normal(rng, *y64.shape)
    grads64 = vjp(node, arrays, dy)
    grads32 = vjp(node, [a.astype(np.float32) for a in arrays], dy.astype(np.float32))
    np.testing.assert_allclose(forward(node, [a.astype(np.float32) for a in arrays], Mode), y64, rtol=1e-4, atol=1e-4)
    for g32, g64 in zip(grads32, grads64):
        assert g32.dtype == np.float32
        np.testing.assert_allclose(g32, g64, rtol=1e-4, atol=1e-4)


def test_conv_skips_unwanted_gradients():
    rng = np.random.default_rng(0)
    node = make_node("Conv", 2, pads=[1, 1, 1, 1])
    x, w = normal(rng, 1, 2, 4, 4), normal(rng, 3, 2, 3, 3)
    _, saved = backward.conv_forward(node, [x, w], Mode())
    grads = backward.conv_backward(node, saved, np.ones((1, 3, 4, 4)), [False, True])
    assert grads[0] is None and grads[1].shape == w.shape


@pytest.mark.parametrize("x_shape, w_shape, attrs, bias", [c for c in CONVS if len(c[0]) == 4])
def test_im2col_and_col2im_kernels_match_their_twins(x_shape, w_shape, attrs, bias):
    rng = np.random.default_rng(3)
    node = make_node("Conv", 2, **attrs)
    window = window_geometry(node, x_shape[2:], w_shape[2:])
    x = normal(rng, *x_shape).astype(np.float32)
    columns = backward.im2col(x, window)
    np.testing.assert_array_equal(columns, backward.im2col_taps(x, window))
    c = normal(rng, *columns.shape).astype(np.float32)
    np.testing.assert_allclose(backward.col2im(c, window, x_shape), backward.col2im_taps(c, window, x_shape),
                               rtol=1e-6, atol=1e-6)
    # col2im is im2col's adjoint: <im2col(x), c> = <x, col2im(c)>.
    x64, c64 = x.astype(np.float64), c.astype(np.float64)
    lhs = np.sum(backward.im2col_taps(x64, window) * c64)
    np.testing.assert_allclose(lhs, np.sum(x64 * backward.col2im_taps(c64, window, x_shape)), rtol=1e-12)


# ============================================================================ dense layers
@pytest.mark.parametrize("trans_a, trans_b, alpha, beta, c_shape", [
    (0, 0, 1.0, 1.0, (5,)), (1, 0, 0.5, 2.0, (3, 1)), (0, 1, 2.0, 0.5, ()), (1, 1, 1.5, 1.0, (3, 5)),
    (0, 1, 1.0, 1.0, None),
])
def test_gemm_gradients(trans_a, trans_b, alpha, beta, c_shape):
    rng = np.random.default_rng(0)
    node = make_node("Gemm", 2 if c_shape is None else 3, transA=trans_a, transB=trans_b, alpha=alpha, beta=beta)
    a = normal(rng, *((4, 3) if trans_a else (3, 4)))
    b = normal(rng, *((5, 4) if trans_b else (4, 5)))
    arrays = [a, b] + ([] if c_shape is None else [np.asarray(normal(rng, *c_shape))])
    check_gradients(node, arrays)


@pytest.mark.parametrize("a_shape, b_shape", [
    ((3, 4), (4, 2)), ((2, 1, 3, 4), (3, 4, 2)), ((4,), (2, 4, 3)), ((2, 3, 4), (4,))])
def test_matmul_gradients(a_shape, b_shape):
    rng = np.random.default_rng(0)
    check_gradients(make_node("MatMul", 2), [normal(rng, *a_shape), normal(rng, *b_shape)])


# ============================================================================ elementwise
@pytest.mark.parametrize("op_type", ["Add", "Sub", "Mul"])
@pytest.mark.parametrize("a_shape, b_shape", [
    ((2, 3, 4), (2, 3, 4)), ((2, 3, 4), (3, 1)), ((1, 3, 1), (2, 1, 4)), ((2, 3), ())])
def test_broadcasting_binary_gradients(op_type, a_shape, b_shape):
    rng = np.random.default_rng(0)
    check_gradients(make_node(op_type, 2), [np.asarray(normal(rng, *a_shape)), np.asarray(normal(rng, *b_shape))])


def away_from_kinks(rng, shape, kinks, margin=0.05):
    """Random values none of which lies within ``margin`` of a point where the function bends."""
    x = rng.uniform(-5, 5, shape)
    for kink in kinks:
        close = np.abs(x - kink) < margin
        x[close] = kink + np.where(x[close] >= kink, margin, -margin) * 2
    return x


@pytest.mark.parametrize("op_type, kinks", [("Relu", [0]), ("Sigmoid", []), ("HardSwish", [-3, 3])])
def test_activation_gradients(op_type, kinks):
    rng = np.random.default_rng(0)
    node = make_node(op_type, 1, opset=17)
    check_gradients(node, [away_from_kinks(rng, (3, 4, 5), kinks)])


@pytest.mark.parametrize("bounds", [(-1.0, 2.0), (None, 1.5), (0.5, None)])
def test_clip_gradients(bounds):
    rng = np.random.default_rng(0)
    lo, hi = bounds
    node = Node("Clip", ["x", "lo" if lo is not None else "", "hi" if hi is not None else ""], ["y"])
    prepare_node(node, 13)
    kinks = [b for b in bounds if b is not None]
    arrays = [away_from_kinks(rng, (4, 6), kinks)] + [None if b is None else np.asarray(b) for b in bounds]
    check_gradients(node, arrays, differentiable=[0])


def test_clip6_attribute_bounds():
    rng = np.random.default_rng(0)
    node = make_node("Clip", 1, opset=6, min=0.0, max=6.0)
    check_gradients(node, [away_from_kinks(rng, (4, 6), [0, 6]) * 2])


# ============================================================================ shapes
def test_shape_op_gradients():
    rng = np.random.default_rng(0)
    check_gradients(make_node("Flatten", 1, axis=2), [normal(rng, 2, 3, 2, 2)])
    check_gradients(make_node("Reshape", 2), [normal(rng, 2, 3, 4), np.array([4, -1], np.int64)], differentiable=[0])
    check_gradients(make_node("Concat", 3, axis=-1), [normal(rng, 2, 3), normal(rng, 2, 1), normal(rng, 2, 4)])


# ============================================================================ pooling
POOLS = [
    dict(kernel_shape=[2, 2], strides=[2, 2]),
    dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
    dict(kernel_shape=[3, 2], strides=[2, 1], pads=[1, 0, 0, 1], ceil_mode=1),
]


@pytest.mark.parametrize("attrs", POOLS)
def test_max_pool_gradients(attrs):
    rng = np.random.default_rng(0)
    node = make_node("MaxPool", 1, **attrs)
    x = rng.permutation(2 * 3 * 6 * 5).reshape(2, 3, 6, 5) / 7.0  # distinct values: no ties
    np.testing.assert_array_equal(forward(node, [x], Mode), OPS[("", "MaxPool")].reference(node, x))
    check_gradients(node, [x])


def test_max_pool_ties_go_to_the_first_maximum_as_onnxruntime_indices():
    """With ties there is no derivative; the gradient goes to the index ONNX Runtime's MaxPool reports."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 3, (2, 2, 5, 5)).astype(np.float32)  # many equal values
    attrs = dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    graph = helper.make_graph(
        [helper.make_node("MaxPool", ["x"], ["y", "i"], **attrs)], "pool",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("i", TensorProto.INT64, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    _, indices = session.run(None, {"x": x})
    dy = rng.standard_normal(indices.shape).astype(np.float32)
    expected = np.zeros(x.size, np.float32)
    np.add.at(expected, indices.ravel(), dy.ravel())
    (dx,) = vjp(make_node("MaxPool", 1, **attrs), [x], dy)
    np.testing.assert_allclose(dx.ravel(), expected, rtol=1e-6)


@pytest.mark.parametrize("attrs", POOLS + [dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1)])
def test_average_pool_gradients(attrs):
    rng = np.random.default_rng(0)
    check_gradients(make_node("AveragePool", 1, **attrs), [normal(rng, 2, 2, 6, 5)])


def test_global_average_pool_gradients():
    rng = np.random.default_rng(0)
    check_gradients(make_node("GlobalAveragePool", 1), [normal(rng, 2, 3, 4, 3)])


# ============================================================================ batch norm, dropout
def batch_norm_arrays(rng, shape):
    c = shape[1]
    x = normal(rng, *shape) * 2 + 1
    return [x, rng.uniform(0.5, 1.5, c), normal(rng, c), normal(rng, c), rng.uniform(0.5, 2, c)]


@pytest.mark.parametrize("shape", [(4, 3, 2, 2), (5, 2)])
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_gradients(shape, training):
    rng = np.random.default_rng(0)
    node = make_node("BatchNormalization", 5, epsilon=1e-3)
    check_gradients(node, batch_norm_arrays(rng, shape), differentiable=[0, 1, 2],
                    mode_factory=lambda: Mode(training=training))


def test_batch_norm_training_matches_onnx_training_mode():
    """Output and running statistics equal BatchNormalization-15 with training_mode=1 (the reference op)."""
    rng = np.random.default_rng(0)
    arrays = batch_norm_arrays(rng, (4, 3, 3, 3))
    trained = make_node("BatchNormalization", 5, 3, epsilon=1e-3, momentum=0.8, training_mode=1)
    expected = OPS[("", "BatchNormalization")].reference(trained, *arrays)
    mode = Mode(training=True)
    node = make_node("BatchNormalization", 5, epsilon=1e-3, momentum=0.8)
    (y,), _ = backward.batch_norm_forward(node, arrays, mode)
    np.testing.assert_allclose(y, expected[0], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(mode.updates["in3"], expected[1], rtol=1e-12)
    np.testing.assert_allclose(mode.updates["in4"], expected[2], rtol=1e-12)


def test_dropout_training_gradient_and_eval_identity():
    rng = np.random.default_rng(0)
    node = make_node("Dropout", 2, opset=13)
    x, ratio = normal(rng, 20, 30), np.array(0.25)
    training = lambda: Mode(training=True, rng=np.random.default_rng(7))  # noqa: E731  (same mask every call)
    check_gradients(node, [x, ratio], differentiable=[0], mode_factory=training)
    y = forward(node, [x, ratio], training)
    kept = y != 0
    assert 0.65 < kept.mean() < 0.85  # keeps about 1 - ratio of the values
    np.testing.assert_allclose(y[kept], x[kept] / 0.75, rtol=1e-12)
    np.testing.assert_array_equal(forward(node, [x, ratio], training), y)  # seeded: the same mask
    np.testing.assert_array_equal(forward(node, [x, ratio], Mode), x)


# ============================================================================ losses
def loss_gradient_check(loss, logits):
    _, grad = loss(logits)
    numerical = np.zeros_like(logits)
    for position in np.ndindex(*logits.shape):
        plus, minus = logits.copy(), logits.copy()
        plus[position] += STEP
        minus[position] -= STEP
        numerical[position] = (loss(plus)[0] - loss(minus)[0]) / (2 * STEP)
    np.testing.assert_allclose(grad, numerical, rtol=RTOL, atol=ATOL)


def test_softmax_cross_entropy():
    rng = np.random.default_rng(0)
    logits, labels = normal(rng, 6, 4) * 3, rng.integers(0, 4, 6)
    loss_gradient_check(lambda z: backward.softmax_cross_entropy(z, labels), logits)
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    value, _ = backward.softmax_cross_entropy(logits, labels)
    np.testing.assert_allclose(value, -np.log(probabilities[np.arange(6), labels]).mean(), rtol=1e-12)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_kl_divergence_with_temperature(temperature):
    rng = np.random.default_rng(0)
    logits, teacher = normal(rng, 5, 4) * 2, normal(rng, 5, 4) * 2
    loss_gradient_check(lambda z: backward.kl_divergence(z, teacher, temperature), logits)
    assert backward.kl_divergence(teacher, teacher, temperature)[0] == pytest.approx(0, abs=1e-12)
    p = np.exp(logits / temperature) / np.exp(logits / temperature).sum(axis=1, keepdims=True)
    q = np.exp(teacher / temperature) / np.exp(teacher / temperature).sum(axis=1, keepdims=True)
    expected = temperature**2 * np.sum(q * np.log(q / p)) / 5
    assert backward.kl_divergence(logits, teacher, temperature)[0] == pytest.approx(expected, rel=1e-12)


def test_kl_divergence_needs_a_positive_temperature():
    with pytest.raises(TinyInferError, match="temperature must be positive, got 0"):
        backward.kl_divergence(np.zeros((2, 3)), np.zeros((2, 3)), 0)


# ============================================================================ errors
def test_dropout_ratio_outside_the_unit_interval_is_refused():
    node = make_node("Dropout", 2, opset=13)
    with pytest.raises(TinyInferError, match="Dropout 'dropout'.*ratio must lie in \\[0, 1\\), got 1.0"):
        forward(node, [np.ones((2, 2)), np.array(1.0)], lambda: Mode(training=True))


def test_op_without_a_rule_is_named():
    node = make_node("Softmax", 1, axis=-1)
    with pytest.raises(UnsupportedOpError, match="Softmax 'softmax'.*no backward rule"):
        backward.rule_for(node)
