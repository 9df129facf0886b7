"""Graded tests of chapter 03b's exercises (exercises/ch03b_training_compression.py).

    pytest tests/exercises/test_ch03b_training_compression.py --impl=exercises -m ex1   # max-pool and conv backward
    pytest tests/exercises/test_ch03b_training_compression.py --impl=exercises -m ex2   # fake quantization, STE, LSQ
    pytest tests/exercises/test_ch03b_training_compression.py --impl=exercises -m ex3   # global magnitude pruning
    pytest tests/exercises/test_ch03b_training_compression.py --impl=exercises -m ex4   # distillation loss
    pytest tests/exercises/test_ch03b_training_compression.py --impl=exercises -m ex5   # XNOR-popcount dot product

(``-m ch03b_ex1`` ... picks the same tests from the whole of tests/exercises.)

Oracles, none of which reads the solutions:

* ex1 — central differences ``(f(x + h) - f(x - h)) / 2h`` in float64 of ``f = Σ dy · op(x)``,
  with the engine's MaxPool and Conv reference ops as the forward pass; the engine's backward
  rules (:func:`tinyinfer.compress.backward.vjp`); ONNX Runtime's MaxPool ``Indices`` for ties;
* ex2 — ONNX ``QuantizeLinear`` → ``DequantizeLinear`` run by ``onnx.reference`` (compared bit for
  bit in float32), Python's own ``round`` (half to even) in plain loops for the low-bit ranges,
  and the engine's QuantizeLinear and DequantizeLinear training rules chained as the trainer
  chains them (the STE gradient and LSQ's step-size gradient);
* ex3 — the engine's :func:`tinyinfer.compress.prune.magnitude_masks` (``scope="global"``) and
  the per-layer sparsities :func:`tinyinfer.compress.prune.prune` reports, a sort of
  ``(|w|, layer, position)`` tuples, and the ordering property of a threshold;
* ex4 — the engine's :func:`tinyinfer.compress.distill.distillation_loss`, SciPy's softmax,
  the loss written with ``math.exp`` and ``math.log`` in loops, central differences, and
  Hinton et al.'s high-temperature limit of the gradient;
* ex5 — the engine's :mod:`tinyinfer.kernels.binary` (its packing, its NumPy popcount GEMM and
  its Numba kernel), the float dot product of the ±1 vectors, and Python's ``int.bit_count``
  on words built bit by bit.

Tolerances: a central difference of a function that is linear in the perturbed value (conv;
max-pool with distinct values, which no step of h = 1e-6 reorders) is exact up to rounding,
about 1e-16 / h = 1e-10 relative to the function: rtol 1e-6, atol 1e-8, as
tests/compress/test_backward.py uses. Gradients compared with the engine's float64 rules differ
only in summation order: rtol 1e-9, atol 1e-12. Quantized values, masks, bits and popcounts are
compared exactly.
"""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import onnxruntime
import pytest
import scipy.special
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from tinyinfer.compress.backward import Mode, rule_for, vjp
from tinyinfer.compress.distill import distillation_loss as engine_distillation_loss
from tinyinfer.compress.prune import magnitude_masks, prune
from tinyinfer.ir import Node
from tinyinfer.kernels import binary
from tinyinfer.ops import OPS, prepare_node

STEP, RTOL, ATOL = 1e-6, 1e-6, 1e-8
OPSET = 21  # QuantizeLinear with int4 zero points


def ex(number: int):
    """Both marks of an exercise: ``ex<n>`` (per file) and ``ch03b_ex<n>`` (across chapters)."""

    def mark(test):
        return getattr(pytest.mark, f"ch03b_ex{number}")(getattr(pytest.mark, f"ex{number}")(test))

    return mark


def engine_node(op_type: str, inputs: list[str], **attrs) -> Node:
    node = Node(op_type, inputs, ["y"], attrs, name=op_type.lower())
    prepare_node(node, OPSET)
    return node


def central_difference(f, x: np.ndarray) -> np.ndarray:
    """``df/dx`` element by element; ``x`` is perturbed in place and restored."""
    grad = np.zeros_like(x)
    for position in np.ndindex(*x.shape):
        original = x[position]
        x[position] = original + STEP
        plus = f()
        x[position] = original - STEP
        minus = f()
        x[position] = original
        grad[position] = (plus - minus) / (2 * STEP)
    return grad


# ============================================================================ exercise 1
# (input shape, kernel, stride, padding): disjoint windows, overlapping ones, padding, and
# windows that leave the last rows and columns unread.
POOLS = [((2, 3, 6, 6), 2, 2, 0), ((2, 2, 7, 6), 3, 2, 1), ((1, 2, 5, 5), 3, 1, 1), ((1, 1, 4, 5), 2, 1, 0),
         ((1, 2, 7, 8), 3, 3, 0)]
POOL_IDS = [f"k{k}s{s}p{p}" for _, k, s, p in POOLS]


def pool_node(kernel: int, stride: int, padding: int) -> Node:
    return engine_node("MaxPool", ["x"], kernel_shape=[kernel, kernel], strides=[stride, stride], pads=[padding] * 4)


def pooled_shape(shape, kernel, stride, padding):
    return shape[:2] + tuple((size + 2 * padding - kernel) // stride + 1 for size in shape[2:])


@ex(1)
@pytest.mark.parametrize(("shape", "kernel", "stride", "padding"), POOLS, ids=POOL_IDS)
def test_max_pool_backward_matches_central_differences(impl, shape, kernel, stride, padding):
    rng = np.random.default_rng(sum(shape) + kernel)
    size = int(np.prod(shape))
    x = (rng.permutation(size).reshape(shape) - size / 2) / 7.0  # distinct, 1/7 apart: no ties; half negative
    dy = rng.standard_normal(pooled_shape(shape, kernel, stride, padding))
    node = pool_node(kernel, stride, padding)
    got = np.asarray(impl.max_pool2d_backward(x, dy, kernel, stride, padding))
    assert got.shape == x.shape, "dx has the input's shape"
    numerical = central_difference(lambda: np.sum(dy * OPS[("", "MaxPool")].reference(node, x)), x)
    np.testing.assert_allclose(got, numerical, rtol=RTOL, atol=ATOL)


def tied_input(rng, shape) -> np.ndarray:
    # Three values: most windows hold ties; all negative, so a padded 0 would win some windows.
    return rng.integers(-3, 0, shape).astype(np.float32)


@ex(1)
@pytest.mark.parametrize(("shape", "kernel", "stride", "padding"), POOLS, ids=POOL_IDS)
def test_max_pool_ties_go_where_onnxruntime_indices_point(impl, shape, kernel, stride, padding):
    rng = np.random.default_rng(kernel * 10 + stride)
    x = tied_input(rng, shape)
    attrs = dict(kernel_shape=[kernel, kernel], strides=[stride, stride], pads=[padding] * 4)
    graph = helper.make_graph(
        [helper.make_node("MaxPool", ["x"], ["y", "i"], **attrs)], "pool",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("i", TensorProto.INT64, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    _, indices = session.run(None, {"x": x})  # flat NCHW index of each window's first maximum
    dy = rng.standard_normal(indices.shape).astype(np.float32)
    want = np.zeros(x.size, np.float64)
    np.add.at(want, indices.ravel(), dy.ravel())
    got = np.asarray(impl.max_pool2d_backward(x, dy, kernel, stride, padding))
    # float32 sums of at most kernel² gradients per input, in any order: a few ulps.
    np.testing.assert_allclose(got.ravel(), want, rtol=1e-6, atol=1e-6,
                               err_msg="of equal maxima, the first in row-major window order takes the gradient")


@ex(1)
@pytest.mark.parametrize(("shape", "kernel", "stride", "padding"), POOLS, ids=POOL_IDS)
def test_max_pool_backward_matches_the_engine_rule(impl, shape, kernel, stride, padding):
    rng = np.random.default_rng(kernel + 100 * stride)
    x = tied_input(rng, shape).astype(np.float64)
    dy = rng.standard_normal(pooled_shape(shape, kernel, stride, padding))
    (want,) = vjp(pool_node(kernel, stride, padding), [x], dy)
    np.testing.assert_allclose(impl.max_pool2d_backward(x, dy, kernel, stride, padding), want, rtol=1e-9, atol=1e-12)


@ex(1)
def test_max_pool_tie_examples(impl):
    x = np.array([[[[1.0, 3.0], [3.0, 2.0]]]])
    np.testing.assert_array_equal(impl.max_pool2d_backward(x, np.array([[[[5.0]]]]), 2, 1, 0), [[[[0, 5], [0, 0]]]])
    # All equal: every window's gradient goes to its top-left input; with stride 1 those overlap.
    flat = np.ones((1, 1, 3, 3))
    dy = np.array([[[[1.0, 2.0], [3.0, 4.0]]]])
    np.testing.assert_array_equal(impl.max_pool2d_backward(flat, dy, 2, 1, 0),
                                  [[[[1, 2, 0], [3, 4, 0], [0, 0, 0]]]])


# (x shape, w shape, stride, padding): 3×3 "same", strided non-square kernels, 1×1, padding
# wider than the kernel's reach, a kernel as large as the image.
CONVS = [((2, 3, 5, 5), (4, 3, 3, 3), 1, 1), ((1, 2, 7, 6), (3, 2, 3, 2), 2, 0), ((2, 2, 4, 4), (3, 2, 1, 1), 1, 0),
         ((1, 3, 5, 7), (2, 3, 2, 3), 2, 2), ((2, 1, 4, 4), (3, 1, 4, 4), 1, 0)]
CONV_IDS = [f"conv{i}" for i in range(len(CONVS))]


def conv_case(x_shape, w_shape, stride, padding, seed):
    rng = np.random.default_rng(seed)
    x, w, b = rng.standard_normal(x_shape), rng.standard_normal(w_shape), rng.standard_normal(w_shape[0])
    node = engine_node("Conv", ["x", "w", "b"], strides=[stride, stride], pads=[padding] * 4)
    y = OPS[("", "Conv")].reference(node, x, w, b)
    return node, x, w, b, rng.standard_normal(y.shape)


@ex(1)
@pytest.mark.parametrize(("x_shape", "w_shape", "stride", "padding"), CONVS, ids=CONV_IDS)
def test_conv_backward_matches_central_differences(impl, x_shape, w_shape, stride, padding):
    node, x, w, b, dy = conv_case(x_shape, w_shape, stride, padding, seed=len(x_shape) + stride + padding)
    dx, dw, db = (np.asarray(g) for g in impl.conv2d_backward(x, w, dy, stride, padding))
    assert (dx.shape, dw.shape, db.shape) == (x.shape, w.shape, b.shape), "one gradient per input, of its shape"

    def loss():
        return np.sum(dy * OPS[("", "Conv")].reference(node, x, w, b))

    np.testing.assert_allclose(dx, central_difference(loss, x), rtol=RTOL, atol=ATOL, err_msg="dx")
    np.testing.assert_allclose(dw, central_difference(loss, w), rtol=RTOL, atol=ATOL, err_msg="dW")
    np.testing.assert_allclose(db, central_difference(loss, b), rtol=RTOL, atol=ATOL, err_msg="db")


@ex(1)
@pytest.mark.parametrize(("x_shape", "w_shape", "stride", "padding"), CONVS, ids=CONV_IDS)
def test_conv_backward_matches_the_engine_rule(impl, x_shape, w_shape, stride, padding):
    node, x, w, b, dy = conv_case(x_shape, w_shape, stride, padding, seed=7 * stride + padding)
    want = vjp(node, [x, w, b], dy)
    for name, got, expected in zip(("dx", "dW", "db"), impl.conv2d_backward(x, w, dy, stride, padding), want):
        np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12, err_msg=name)
    # float32 in, float32 out: sums of at most a few hundred float32 products, rtol 1e-4.
    single = impl.conv2d_backward(x.astype(np.float32), w.astype(np.float32), dy.astype(np.float32), stride, padding)
    for name, got, expected in zip(("dx", "dW", "db"), single, want):
        assert np.asarray(got).dtype == np.float32, f"{name} keeps the input's dtype"
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4, err_msg=name)


# ============================================================================ exercise 2
# (scale, zero point, integer type): the ranges ONNX stores, including the narrow ones of QAT.
QUANTIZERS = [(0.05, 0, np.uint8), (0.0173, 128, np.uint8), (0.02, 0, np.int8), (0.0317, -20, np.int8),
              (0.25, 3, ml_dtypes.int4), (0.1, 0, ml_dtypes.int4), (0.5, 9, ml_dtypes.uint4)]
QUANTIZER_IDS = [f"{np.dtype(t).name}-z{z}" for _, z, t in QUANTIZERS]
ONNX_TYPES = {np.dtype(np.uint8): TensorProto.UINT8, np.dtype(np.int8): TensorProto.INT8}


def integer_range(dtype) -> tuple[int, int]:
    info = ml_dtypes.iinfo(dtype) if np.dtype(dtype).name in ("int4", "uint4") else np.iinfo(dtype)
    return int(info.min), int(info.max)


def values_around_the_range(rng, scale, zero_point, low, high, count=300):
    """Values inside the range, beyond both ends, on the grid, and on half steps (ties)."""
    levels = np.arange(low - 4, high + 5) - zero_point
    beyond = (high - low) / 2 + 2  # about half the random values saturate
    return np.concatenate([rng.uniform(low - zero_point - beyond, high - zero_point + beyond, count) * scale,
                           levels * scale, (levels + 0.5) * scale])


def onnx_fake_quantize(x: np.ndarray, scale: np.float32, zero_point: int, dtype) -> np.ndarray:
    z = np.array(zero_point, dtype)
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])]
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(np.array(scale, np.float32), "s"),
                               numpy_helper.from_array(z, "z")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    return ReferenceEvaluator(model).run(None, {"x": x})[0]


def engine_fake_quantize(x, scale, zero_point, dtype, dy):
    """``(y, dx, ds)`` of QuantizeLinear → DequantizeLinear through the engine's training rules."""
    s, z = np.array(scale, x.dtype), np.array(zero_point, dtype)
    quantize, dequantize = (engine_node(op, [a, "s", "z"]) for op, a in (("QuantizeLinear", "x"),
                                                                          ("DequantizeLinear", "q")))
    (q,), _ = rule_for(quantize).forward(quantize, [x, s, z], Mode())
    (y,), _ = rule_for(dequantize).forward(dequantize, [q, s, z], Mode())
    dq, ds_dequantize, _ = vjp(dequantize, [q, s, z], dy)
    dx, ds_quantize, _ = vjp(quantize, [x, s, z], dq)
    return y, dx, float(ds_quantize + ds_dequantize)


@ex(2)
@pytest.mark.parametrize(("scale", "zero_point", "dtype"), QUANTIZERS[:4], ids=QUANTIZER_IDS[:4])
def test_fake_quantize_is_onnx_quantize_then_dequantize(impl, scale, zero_point, dtype):
    low, high = integer_range(dtype)
    s = np.float32(scale)
    x = values_around_the_range(np.random.default_rng(zero_point + 50), s, zero_point, low, high).astype(np.float32)
    got = np.asarray(impl.fake_quantize(x, s, zero_point, low, high))
    assert got.dtype == np.float32, "fake quantization keeps x's dtype"
    np.testing.assert_array_equal(got, onnx_fake_quantize(x, s, zero_point, dtype))


def python_fake_quantize(value: float, scale: float, zero_point: int, low: int, high: int) -> float:
    level = min(max(round(value / scale) + zero_point, low), high)  # round(): half to even
    return (level - zero_point) * scale


@ex(2)
@pytest.mark.parametrize(("scale", "zero_point", "dtype"), QUANTIZERS, ids=QUANTIZER_IDS)
def test_fake_quantize_on_any_grid_matches_loops_and_the_engine(impl, scale, zero_point, dtype):
    low, high = integer_range(dtype)
    rng = np.random.default_rng(high + zero_point)
    x = values_around_the_range(rng, scale, zero_point, low, high)
    got = np.asarray(impl.fake_quantize(x, scale, zero_point, low, high))
    np.testing.assert_array_equal(got, [python_fake_quantize(v, scale, zero_point, low, high) for v in x])
    y, _, _ = engine_fake_quantize(x, scale, zero_point, dtype, np.ones_like(x))
    np.testing.assert_allclose(got, y, rtol=1e-15, atol=0)


@ex(2)
def test_fake_quantize_example_rounds_half_to_even_and_saturates(impl):
    x = np.array([0.26, 0.75, 1.25, 1.75, -1.25, -9.0, 9.0])
    np.testing.assert_array_equal(impl.fake_quantize(x, 0.5, 0, -8, 7), [0.5, 1.0, 1.0, 2.0, -1.0, -4.0, 3.5])


def gradient_case(scale, zero_point, dtype, seed):
    """``(qmin, qmax, x, dy)``: values around the range of ``dtype`` and a random upstream gradient."""
    low, high = integer_range(dtype)
    rng = np.random.default_rng(seed * high + zero_point)
    x = values_around_the_range(rng, scale, zero_point, low, high)
    return low, high, x, rng.standard_normal(x.shape)


@ex(2)
@pytest.mark.parametrize(("scale", "zero_point", "dtype"), QUANTIZERS, ids=QUANTIZER_IDS)
def test_straight_through_estimator_matches_the_engine_rules(impl, scale, zero_point, dtype):
    low, high, x, dy = gradient_case(scale, zero_point, dtype, seed=3)
    got = np.asarray(impl.fake_quantize_backward(x, dy, scale, zero_point, low, high))
    _, want, _ = engine_fake_quantize(x, scale, zero_point, dtype, dy)
    # The engine's rules multiply by s (DequantizeLinear) and divide by it (QuantizeLinear).
    np.testing.assert_allclose(got, want, rtol=1e-15, atol=0)
    passes = np.array([low <= round(v / scale) + zero_point <= high for v in x])
    assert passes.sum() > 50 and (~passes).sum() > 50, "the values cover both cases"
    np.testing.assert_array_equal(got[passes], dy[passes], err_msg="dx = dy where the value did not saturate")
    np.testing.assert_array_equal(got[~passes], 0, err_msg="dx = 0 where it saturated")


@ex(2)
def test_straight_through_estimator_boundary_is_half_a_step_beyond_the_range(impl):
    x = np.array([7.4, 7.6, -8.4, -8.6, 0.0])
    got = impl.fake_quantize_backward(x, np.ones(5), 1.0, 0, -8, 7)
    np.testing.assert_array_equal(got, [1, 0, 1, 0, 1])


def python_scale_gradient(x, dy, scale, zero_point, low, high) -> float:
    """Esser et al. (2020), eq. 3 with a zero point, element by element."""
    total = 0.0
    for value, grad in zip(x.tolist(), dy.tolist()):
        steps = value / scale
        level = round(steps) + zero_point
        total += grad * (round(steps) - steps if low <= level <= high else min(max(level, low), high) - zero_point)
    return total


@ex(2)
@pytest.mark.parametrize(("scale", "zero_point", "dtype"), QUANTIZERS, ids=QUANTIZER_IDS)
def test_lsq_scale_gradient_matches_the_paper_and_the_engine_rules(impl, scale, zero_point, dtype):
    low, high, x, dy = gradient_case(scale, zero_point, dtype, seed=5)
    got = impl.fake_quantize_scale_gradient(x, dy, scale, zero_point, low, high)
    assert np.ndim(got) == 0, "one scale, one gradient: a number"
    # Sums of a thousand terms in different orders: rtol 1e-9.
    np.testing.assert_allclose(got, python_scale_gradient(x, dy, scale, zero_point, low, high), rtol=1e-9, atol=1e-9)
    _, _, want = engine_fake_quantize(x, scale, zero_point, dtype, dy)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)


# ============================================================================ exercise 3
def random_layers(rng, scales=(1.0, 0.1, 0.5)) -> dict[str, np.ndarray]:
    shapes = [(4, 3, 3, 3), (10, 6), (5, 2, 1, 1)]
    return {f"w{i}": scale * rng.standard_normal(shape) for i, (shape, scale) in enumerate(zip(shapes, scales))}


@ex(3)
@pytest.mark.parametrize("ratio", [0.1, 0.37, 0.5, 0.9, 0.99])
def test_global_masks_match_the_engine(impl, ratio):
    weights = random_layers(np.random.default_rng(int(100 * ratio)))
    masks, sparsities = impl.global_magnitude_masks(weights, ratio)
    want = magnitude_masks(weights, ratio, scope="global")
    assert list(masks) == list(weights) and list(sparsities) == list(weights), "one mask and sparsity per layer"
    for name in weights:
        assert np.asarray(masks[name]).dtype == bool and masks[name].shape == weights[name].shape
        np.testing.assert_array_equal(masks[name], want[name], err_msg=name)
        assert sparsities[name] == pytest.approx(1 - want[name].mean(), abs=1e-12), f"sparsity of {name}"


@ex(3)
@pytest.mark.parametrize("ratio", [0.2, 0.5, 0.75])
def test_exactly_the_k_smallest_go_with_ties_by_position(impl, ratio):
    rng = np.random.default_rng(int(10 * ratio))
    # Integer magnitudes 0..3: most of them are tied with the threshold.
    weights = {name: rng.integers(-3, 4, w.shape).astype(np.float64) for name, w in random_layers(rng).items()}
    masks, _ = impl.global_magnitude_masks(weights, ratio)
    entries = [(abs(v), layer, position) for layer, w in enumerate(weights.values())
               for position, v in enumerate(w.ravel().tolist())]
    removed = set(sorted(entries)[:round(ratio * len(entries))])
    for layer, (name, w) in enumerate(weights.items()):
        want = np.array([(abs(v), layer, p) not in removed for p, v in enumerate(w.ravel().tolist())])
        np.testing.assert_array_equal(np.asarray(masks[name]).ravel(), want,
                                      err_msg=f"{name}: ties go in position order")
    kept = np.concatenate([np.abs(w)[masks[n]] for n, w in weights.items()])
    dropped = np.concatenate([np.abs(w)[~masks[n]] for n, w in weights.items()])
    assert dropped.size == round(ratio * len(entries)) and dropped.max() <= kept.min()


@ex(3)
def test_one_threshold_prunes_the_layer_of_small_weights_first(impl):
    rng = np.random.default_rng(0)
    weights = {"small": 0.01 * rng.standard_normal(50), "large": 1.0 + rng.random(50)}
    masks, sparsities = impl.global_magnitude_masks(weights, 0.5)
    assert not masks["small"].any() and masks["large"].all()
    assert sparsities == {"small": 1.0, "large": 0.0}
    masks, sparsities = impl.global_magnitude_masks({"a": np.array([0.1, -0.5, 0.2]), "b": np.array([0.3, -0.05])}, 0.4)
    np.testing.assert_array_equal(masks["a"], [False, True, True])
    np.testing.assert_array_equal(masks["b"], [True, False])
    assert sparsities["a"] == pytest.approx(1 / 3) and sparsities["b"] == pytest.approx(1 / 2)


@ex(3)
def test_sparsities_match_the_engine_prune_report(impl):
    rng = np.random.default_rng(4)
    weights = {"w1": rng.standard_normal((16, 12)), "w2": 0.3 * rng.standard_normal((12, 10)),
               "w3": 2.0 * rng.standard_normal((10, 4))}
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h1"]), helper.make_node("Relu", ["h1"], ["a1"]),
             helper.make_node("MatMul", ["a1", "w2"], ["h2"]), helper.make_node("Relu", ["h2"], ["a2"]),
             helper.make_node("MatMul", ["a2", "w3"], ["y"])]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
                              [numpy_helper.from_array(w.astype(np.float32), name) for name, w in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    report = prune(model, method="magnitude", ratio=0.6, scope="global")
    _, sparsities = impl.global_magnitude_masks({n: w.astype(np.float32) for n, w in weights.items()}, 0.6)
    assert sparsities == pytest.approx(report.sparsity, abs=1e-12)


# ============================================================================ exercise 4
def logits_batch(rng, rows=6, classes=10, spread=3.0):
    return spread * rng.standard_normal((rows, classes)), spread * rng.standard_normal((rows, classes)), \
        rng.integers(0, classes, rows)


@ex(4)
@pytest.mark.parametrize("temperature", [1.0, 4.0, 0.5])
def test_softmax_matches_scipy_and_survives_large_logits(impl, temperature):
    z = 5 * np.random.default_rng(1).standard_normal((4, 7))
    np.testing.assert_allclose(impl.softmax(z, temperature), scipy.special.softmax(z / temperature, axis=1),
                               rtol=1e-12, atol=1e-15)
    huge = impl.softmax(z + 1000.0, temperature)
    assert np.all(np.isfinite(huge)), "exp(1000) overflows: subtract each row's maximum first"
    np.testing.assert_allclose(huge, scipy.special.softmax(z / temperature, axis=1), rtol=1e-9, atol=1e-12)


def loop_distillation_loss(student, teacher, labels, temperature, alpha) -> float:
    """The loss from its definition, one probability at a time."""
    def probabilities(row, t):
        exps = [math.exp(v / t - max(row) / t) for v in row]
        return [e / sum(exps) for e in exps]

    soft = hard = 0.0
    for z, zt, label in zip(student.tolist(), teacher.tolist(), labels.tolist()):
        p, q = probabilities(z, temperature), probabilities(zt, temperature)
        soft += sum(qc * math.log(qc / pc) for qc, pc in zip(q, p) if qc > 0)
        hard -= math.log(probabilities(z, 1.0)[label])
    n = len(labels)
    return alpha * temperature**2 * soft / n + (1 - alpha) * hard / n


DISTILLATIONS = [(4.0, 0.9), (1.0, 0.5), (2.0, 0.0), (10.0, 1.0), (3.0, 0.3)]


@ex(4)
@pytest.mark.parametrize(("temperature", "alpha"), DISTILLATIONS)
def test_distillation_loss_matches_the_engine_and_its_definition(impl, temperature, alpha):
    student, teacher, labels = logits_batch(np.random.default_rng(int(temperature * 10 + alpha * 100)))
    loss, grad = impl.distillation_loss(student, teacher, labels, temperature, alpha)
    want_loss, want_grad = engine_distillation_loss(student, (labels, teacher), temperature=temperature, alpha=alpha)
    assert np.ndim(loss) == 0 and np.shape(grad) == student.shape
    np.testing.assert_allclose(loss, loop_distillation_loss(student, teacher, labels, temperature, alpha), rtol=1e-10)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-10)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-9, atol=1e-13)


@ex(4)
@pytest.mark.parametrize(("temperature", "alpha"), DISTILLATIONS)
def test_distillation_gradient_matches_central_differences(impl, temperature, alpha):
    student, teacher, labels = logits_batch(np.random.default_rng(int(temperature + 7 * alpha)), rows=4, classes=5)
    _, grad = impl.distillation_loss(student, teacher, labels, temperature, alpha)
    numerical = central_difference(lambda: impl.distillation_loss(student, teacher, labels, temperature, alpha)[0],
                                   student)
    # A smooth loss of size ~1: the central difference is good to ~1e-10.
    np.testing.assert_allclose(grad, numerical, rtol=RTOL, atol=ATOL)
    # The loss itself must be the right one too, or a consistent pair of wrong answers would pass.
    want_loss, _ = engine_distillation_loss(student, (labels, teacher), temperature=temperature, alpha=alpha)
    np.testing.assert_allclose(impl.distillation_loss(student, teacher, labels, temperature, alpha)[0], want_loss,
                               rtol=1e-10)


@ex(4)
def test_the_t_squared_factor_keeps_the_soft_gradient_finite_at_high_temperature(impl):
    # Hinton et al., section 2.1: for T much larger than the logits, T² KL's gradient tends to
    # ((z_s - mean z_s) - (z_t - mean z_t)) / (N · classes), whatever T is; the next term is
    # smaller by about |z| / T, here 3 / 1000.
    student, teacher, labels = logits_batch(np.random.default_rng(2), spread=1.0)
    n, classes = student.shape
    centred_student = student - student.mean(axis=1, keepdims=True)
    centred_teacher = teacher - teacher.mean(axis=1, keepdims=True)
    limit = (centred_student - centred_teacher) / (n * classes)
    _, grad = impl.distillation_loss(student, teacher, labels, temperature=1000.0, alpha=1.0)
    assert np.max(np.abs(grad - limit)) <= 1e-2 * np.max(np.abs(limit)), "the soft term is α · T² · KL"


@ex(4)
def test_a_student_that_matches_its_teacher_has_no_soft_loss(impl):
    student, _, labels = logits_batch(np.random.default_rng(3))
    loss, grad = impl.distillation_loss(student, student.copy(), labels, 4.0, 1.0)
    assert abs(loss) < 1e-12 and np.max(np.abs(grad)) < 1e-15
    loss, grad = impl.distillation_loss(1000 * student, student, labels, 2.0, 0.5)  # logits in the thousands
    assert np.isfinite(loss) and np.all(np.isfinite(grad)), "use log-softmax: no overflow, no log(0)"
    want_loss, want_grad = engine_distillation_loss(1000 * student, (labels, student), temperature=2.0, alpha=0.5)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-10)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-9, atol=1e-12)


# ============================================================================ exercise 5
LENGTHS = [1, 5, 63, 64, 65, 130, 200]


def signs_with_zeros(rng, shape) -> np.ndarray:
    x = rng.standard_normal(shape)
    x[rng.random(shape) < 0.1] = 0.0  # sign(0) = +1
    return x


@ex(5)
@pytest.mark.parametrize("k", LENGTHS)
def test_pack_signs_matches_the_engine_and_bit_by_bit_words(impl, k):
    rng = np.random.default_rng(k)
    x = signs_with_zeros(rng, (3, k))
    got = np.asarray(impl.pack_signs(x))
    assert got.dtype == np.uint64 and got.shape == (3, -(-k // 64)), "ceil(K / 64) uint64 words per row"
    np.testing.assert_array_equal(got, binary.pack_signs(x))
    for row, words in zip(x, got):
        number = sum(1 << j for j, v in enumerate(row.tolist()) if v >= 0)  # bit j of the whole row
        assert [int(w) for w in words] == [(number >> (64 * i)) & (2**64 - 1) for i in range(len(words))]
    np.testing.assert_array_equal(impl.pack_signs(x[0]), got[0], err_msg="a 1-D vector packs like a row")


@ex(5)
def test_padding_bits_are_zero(impl):
    got = np.asarray(impl.pack_signs(np.ones(65)))  # 65 × +1: one full word and one bit
    assert [int(w) for w in got] == [2**64 - 1, 1]
    assert [int(w) for w in np.asarray(impl.pack_signs(-np.ones(70)))] == [0, 0]


@ex(5)
def test_popcount64_counts_bits(impl):
    rng = np.random.default_rng(0)
    words = np.concatenate([rng.integers(0, 2**64 - 1, 200, dtype=np.uint64, endpoint=True),
                            np.array([0, 1, 21, 2**63, 2**64 - 1, 2**32 - 1], np.uint64)]).reshape(2, -1)
    got = np.asarray(impl.popcount64(words))
    assert got.shape == words.shape
    np.testing.assert_array_equal(got, [[int(w).bit_count() for w in row] for row in words])


@ex(5)
@pytest.mark.parametrize("k", LENGTHS)
def test_xnor_dot_is_the_float_dot_of_the_signs(impl, k):
    rng = np.random.default_rng(k + 1)
    a, b = signs_with_zeros(rng, k), signs_with_zeros(rng, k)
    want = int(np.where(a >= 0, 1, -1) @ np.where(b >= 0, 1, -1))
    assert impl.xnor_dot(binary.pack_signs(a), binary.pack_signs(b), k) == want
    all_minus = binary.pack_signs(-np.ones(k))
    assert impl.xnor_dot(all_minus, all_minus, k) == k, "padding bits agree but must not count"
    assert impl.xnor_dot(all_minus, binary.pack_signs(np.ones(k)), k) == -k


@ex(5)
@pytest.mark.parametrize(("m", "n", "k"), [(3, 5, 7), (4, 4, 64), (6, 9, 65), (2, 5, 300)])
def test_binary_matmul_matches_float_and_the_engine_kernels(impl, m, n, k):
    rng = np.random.default_rng(m * n + k)
    a, b = signs_with_zeros(rng, (m, k)), signs_with_zeros(rng, (n, k))
    got = np.asarray(impl.binary_matmul(a, b))
    assert got.shape == (m, n) and got.dtype.kind == "i", "an integer (M, N) product"
    np.testing.assert_array_equal(got, binary.binary_matmul_reference(a, b))
    a_bits, b_bits = binary.pack_signs(a), binary.pack_signs(b)
    np.testing.assert_array_equal(got, binary.xnor_gemm_numpy(a_bits, b_bits, k))
    np.testing.assert_array_equal(got, binary.xnor_gemm(a_bits, b_bits, k))  # exact: integers below 2^24 in float32
