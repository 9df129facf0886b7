"""Graded tests of chapter 03a's exercises (exercises/ch03a_quantization.py).

    pytest tests/exercises/test_ch03a_quantization.py --impl=exercises -m ex1   # the affine map
    pytest tests/exercises/test_ch03a_quantization.py --impl=exercises -m ex2   # KL threshold search
    pytest tests/exercises/test_ch03a_quantization.py --impl=exercises -m ex3   # int8 GEMM, requantization
    pytest tests/exercises/test_ch03a_quantization.py --impl=exercises -m ex4   # per-channel scales

(``-m ch03a_ex1`` ... picks the same tests from the whole of tests/exercises.)

Oracles, none of which reads the solutions:

* ex1 — ONNX ``QuantizeLinear`` / ``DequantizeLinear`` run by ``onnx.reference`` (integers
  compared exactly), ties and saturation written out by hand, and the engine's
  :func:`tinyinfer.compress.affine.compute_params`;
* ex2 — the definitions of P and Q re-computed here with plain loops, SciPy's
  ``stats.entropy`` for the divergence, distributions whose answer is known (a Gaussian with
  far outliers, a uniform one), and the engine's
  :func:`tinyinfer.compress.calibrate.threshold_entropy`;
* ex3 — exact integer arithmetic (int64 products, Python's unbounded ints), float64 math on
  the dequantized operands, and the engine's :func:`tinyinfer.kernels.int8_gemm.qgemm_naive`;
* ex4 — the engine's per-channel parameters and fake quantization, ONNX ``QuantizeLinear``
  with ``axis=0``, and weights whose per-channel gain is known (equal channels: none).

Tolerances: quantized integers are compared exactly, except after a requantization, where
any rounding of ``acc · M`` to a neighbouring integer is accepted (1 LSB: a fixed-point
multiplier and a float rescale may round a near-tie differently) as long as at least 99 %
of the outputs agree exactly with float64 math (a result that truncates instead of rounding
misses about half of them). Scales are compared to the engine with rtol 1e-6 (one float32
rounding, of the same quotient computed in float32 or float64).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

from tinyinfer.compress import affine
from tinyinfer.compress.calibrate import TensorStatistics, _kl_divergence_at, threshold_entropy
from tinyinfer.kernels.int8_gemm import qgemm_naive

OPSET = 19
ONNX_TYPES = {np.dtype(np.uint8): TensorProto.UINT8, np.dtype(np.int8): TensorProto.INT8}


def ex(number: int):
    """Both marks of an exercise: ``ex<n>`` (per file) and ``ch03a_ex<n>`` (across chapters)."""

    def mark(test):
        return getattr(pytest.mark, f"ch03a_ex{number}")(getattr(pytest.mark, f"ex{number}")(test))

    return mark


def run_onnx_node(op_type: str, feeds: dict[str, np.ndarray], output_type: int, **attributes) -> np.ndarray:
    """One ONNX node run by onnx.reference; the input types are those of the feeds."""
    inputs = [helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(value.dtype), None)
              for name, value in feeds.items()]
    node = helper.make_node(op_type, list(feeds), ["y"], **attributes)
    graph = helper.make_graph([node], op_type, inputs, [helper.make_tensor_value_info("y", output_type, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    return ReferenceEvaluator(model).run(None, feeds)[0]


def onnx_quantize(x: np.ndarray, scale, zero_point: np.ndarray, axis: int = 1) -> np.ndarray:
    """ONNX QuantizeLinear (scale and zero point per tensor, or per slice along ``axis``)."""
    feeds = {"x": x, "s": np.asarray(scale, np.float32), "z": zero_point}
    return run_onnx_node("QuantizeLinear", feeds, ONNX_TYPES[zero_point.dtype], axis=axis)


def onnx_dequantize(q: np.ndarray, scale, zero_point: np.ndarray) -> np.ndarray:
    feeds = {"q": q, "s": np.asarray(scale, np.float32), "z": zero_point}
    return run_onnx_node("DequantizeLinear", feeds, TensorProto.FLOAT)


# ============================================================================ exercise 1
# (scale, zero point, dtype): uint8 with zero points at both ends and inside, int8 symmetric
# and asymmetric, power-of-two and awkward scales.
QUANTIZERS = [
    (0.05, 0, np.uint8), (0.05, 128, np.uint8), (0.0173, 255, np.uint8), (0.5, 37, np.uint8),
    (0.02, 0, np.int8), (0.0317, -20, np.int8), (0.25, 100, np.int8),
]


@ex(1)
@pytest.mark.parametrize(("scale", "zero_point", "dtype"), QUANTIZERS, ids=[f"q{i}" for i in range(len(QUANTIZERS))])
def test_quantize_matches_onnx_quantizelinear(impl, scale, zero_point, dtype):
    rng = np.random.default_rng(int(scale * 1e4) + zero_point)
    # Values inside the range, beyond it on both sides, and exact multiples of the scale.
    x = np.concatenate([rng.uniform(-400, 400, 300) * scale, np.arange(-300, 300) * np.float32(scale)])
    x = x.astype(np.float32)
    got = np.asarray(impl.quantize(x, np.float32(scale), zero_point, dtype))
    want = onnx_quantize(x, np.float32(scale), np.array(zero_point, dtype))
    assert got.dtype == np.dtype(dtype), f"quantize returns {np.dtype(dtype)} for that target type"
    np.testing.assert_array_equal(got, want)


@ex(1)
@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
def test_quantize_rounds_ties_to_even(impl, dtype):
    # scale 0.5: x / scale is exactly k + 1/2, so only the tie rule decides.
    zero_point = 10
    steps = np.array([0.5, 1.5, 2.5, 3.5, -0.5, -1.5, -2.5, -3.5], np.float32)
    want = np.array([0, 2, 2, 4, 0, -2, -2, -4]) + zero_point  # half to even, not half away from 0
    got = np.asarray(impl.quantize(steps * np.float32(0.5), np.float32(0.5), zero_point, dtype))
    np.testing.assert_array_equal(got.astype(int), want, err_msg="round half to even (np.rint), as QuantizeLinear")


@ex(1)
@pytest.mark.parametrize(("dtype", "low", "high"), [(np.uint8, 0, 255), (np.int8, -128, 127)])
def test_quantize_saturates_to_the_full_range(impl, dtype, low, high):
    x = np.array([-1e30, -1e6, -1000.0, 1000.0, 1e6, 1e30], np.float32)
    got = np.asarray(impl.quantize(x, np.float32(0.1), 0 if dtype == np.uint8 else 3, dtype))
    np.testing.assert_array_equal(got.astype(int), [low] * 3 + [high] * 3,
                                  err_msg=f"values beyond the range clamp to {dtype.__name__}'s ends, not wrap")


@ex(1)
@pytest.mark.parametrize(("scale", "zero_point", "dtype"), QUANTIZERS, ids=[f"q{i}" for i in range(len(QUANTIZERS))])
def test_dequantize_matches_onnx_dequantizelinear(impl, scale, zero_point, dtype):
    info = np.iinfo(dtype)
    q = np.arange(info.min, info.max + 1).astype(dtype)
    got = np.asarray(impl.dequantize(q, np.float32(scale), zero_point))
    assert got.dtype == np.float32
    # (q - z) is exact in int32 and float32; one float32 product: results are bit-identical.
    np.testing.assert_array_equal(got, onnx_dequantize(q, np.float32(scale), np.array(zero_point, dtype)))


RANGES = [(-1.0, 1.0), (-0.3, 2.7), (0.0, 6.0), (-5.0, -1.0), (2.0, 5.0), (-1e-3, 4e-3), (-12.5, 0.7)]


@ex(1)
@pytest.mark.parametrize(("rmin", "rmax"), RANGES)
@pytest.mark.parametrize(("symmetric", "dtype"), [(False, np.uint8), (True, np.int8)], ids=["uint8", "int8-symmetric"])
def test_params_match_the_engine(impl, rmin, rmax, symmetric, dtype):
    params = impl.symmetric_params if symmetric else impl.asymmetric_params
    scale, zero_point = params(rmin, rmax)
    want = affine.compute_params(rmin, rmax, dtype, symmetric=symmetric)
    np.testing.assert_allclose(np.float32(scale), want.scale, rtol=1e-6)
    assert int(zero_point) == int(want.zero_point), f"zero point of [{rmin}, {rmax}] in {dtype.__name__}"


@ex(1)
@pytest.mark.parametrize(("rmin", "rmax"), RANGES)
def test_zero_is_exact_and_the_range_round_trips(impl, rmin, rmax):
    scale, zero_point = impl.asymmetric_params(rmin, rmax)
    scale = np.float32(scale)
    zero = np.asarray(impl.quantize(np.zeros(3, np.float32), scale, zero_point, np.uint8))
    np.testing.assert_array_equal(zero.astype(int), [int(zero_point)] * 3, err_msg="0 must quantize to the zero point")
    np.testing.assert_array_equal(impl.dequantize(zero, scale, zero_point), np.zeros(3, np.float32),
                                  err_msg="the zero point must dequantize to exactly 0")
    # Inside the (widened) range, a round trip is off by at most half a step, plus float32
    # rounding of the quotient and the product (a few ulps of the range's end).
    low, high = min(rmin, 0.0), max(rmax, 0.0)
    x = np.linspace(low, high, 257, dtype=np.float32)
    back = impl.dequantize(impl.quantize(x, scale, zero_point, np.uint8), scale, zero_point)
    slack = 4 * np.finfo(np.float32).eps * max(abs(low), abs(high))
    assert np.max(np.abs(back - x)) <= scale / 2 + slack, "a value inside the range is off by at most s/2"


@ex(1)
def test_an_all_zero_range_still_has_a_usable_scale(impl):
    for params, dtype in ((impl.asymmetric_params(0.0, 0.0), np.uint8), (impl.symmetric_params(0.0, 0.0), np.int8)):
        scale, zero_point = params
        assert np.isfinite(scale) and scale > 0, "a zero-width range needs a positive finite scale (1, say)"
        q = impl.quantize(np.zeros(4, np.float32), np.float32(scale), zero_point, dtype)
        np.testing.assert_array_equal(impl.dequantize(q, np.float32(scale), zero_point), np.zeros(4, np.float32))


# ============================================================================ exercise 2
def naive_reference(hist, i):
    p = [float(c) for c in hist[:i]]
    for count in hist[i:]:
        p[-1] += float(count)
    return np.array(p)


def naive_quantized(hist, i, levels):
    p = naive_reference(hist, i)
    q = np.zeros(i)
    for level in range(levels):
        first, stop = level * i // levels, (level + 1) * i // levels
        total = sum(float(hist[b]) for b in range(first, stop))
        nonempty = [b for b in range(first, stop) if p[b] > 0]
        for b in nonempty:
            q[b] = total / len(nonempty)
    return q


def random_histogram(rng, bins, empty_fraction=0.3):
    hist = rng.integers(0, 50, bins).astype(np.int64)
    hist[rng.random(bins) < empty_fraction] = 0
    return hist


@ex(2)
@pytest.mark.parametrize("i", [8, 9, 13, 31, 40])
def test_reference_distribution_folds_the_outliers_into_the_last_bin(impl, i):
    hist = random_histogram(np.random.default_rng(i), 40)
    p = np.asarray(impl.reference_distribution(hist, i), np.float64)
    assert p.shape == (i,), "P has the i bins below the threshold"
    np.testing.assert_array_equal(p, naive_reference(hist, i))
    assert p.sum() == hist.sum(), "clipping moves the outliers, it does not drop them"


@ex(2)
@pytest.mark.parametrize(("bins", "i", "levels"), [(40, 8, 8), (40, 9, 4), (40, 13, 4), (64, 37, 8), (64, 64, 5),
                                                   (300, 256, 128), (300, 300, 128), (300, 255, 128)])
def test_quantized_distribution_against_loops(impl, bins, i, levels):
    rng = np.random.default_rng(bins + i + levels)
    hist = random_histogram(rng, bins)
    hist[i - 1] = 0  # the last bin empty but for the outliers: P has mass there, the level may not
    q = np.asarray(impl.quantized_distribution(hist, i, levels), np.float64)
    assert q.shape == (i,)
    np.testing.assert_allclose(q, naive_quantized(hist, i, levels), rtol=1e-12, atol=1e-12)
    p = naive_reference(hist, i)
    assert np.all(q[p == 0] == 0), "Q is 0 wherever P is 0"


@ex(2)
def test_quantized_distribution_with_one_bin_per_level_is_the_histogram(impl):
    hist = random_histogram(np.random.default_rng(7), 50)
    np.testing.assert_allclose(impl.quantized_distribution(hist, 32, 32), hist[:32], rtol=0, atol=0)


@ex(2)
def test_kl_divergence_matches_scipy(impl):
    rng = np.random.default_rng(3)
    for _ in range(20):
        p, q = rng.random(30) * 10, rng.random(30) + 0.01  # Q > 0 everywhere: no smoothing
        p[rng.random(30) < 0.3] = 0
        np.testing.assert_allclose(impl.kl_divergence(p, q), scipy.stats.entropy(p, q), rtol=1e-10, atol=1e-12)
    assert abs(impl.kl_divergence(p, p)) < 1e-12, "KL(P || P) = 0"
    np.testing.assert_allclose(impl.kl_divergence(3 * p, q / 7), impl.kl_divergence(p, q), rtol=1e-10,
                               err_msg="counts are normalised to probabilities first")


@ex(2)
def test_kl_divergence_smooths_empty_bins_of_q(impl):
    p, q = np.array([4.0, 3.0, 2.0, 1.0, 0.0]), np.array([5.0, 3.0, 2.0, 0.0, 10.0])
    # Q's empty bin among the 4 where P has mass gets probability 1e-4 / 4; then Q is
    # renormalised (its last bin, where P has no mass, does not enter the sum).
    floor = 1e-4 / 4
    smoothed = np.array([0.25, 0.15, 0.1, floor]) / (1 + floor)
    want = float(np.sum(p[:4] / 10 * np.log(p[:4] / 10 / smoothed)))
    got = impl.kl_divergence(p, q)
    assert math.isfinite(got), "an empty bin of Q where P has mass gets a small floor, not an infinite divergence"
    np.testing.assert_allclose(got, want, rtol=1e-10)


def magnitude_histogram(x, bins):
    stats = TensorStatistics(bins)
    stats.update(x)
    return stats.magnitude_histogram()


@ex(2)
def test_threshold_excludes_far_outliers_and_keeps_the_gaussian(impl):
    rng = np.random.default_rng(0)
    gaussian = rng.standard_normal(100_000)
    outliers = rng.uniform(25, 30, 20) * rng.choice([-1, 1], 20)
    hist, edges = magnitude_histogram(np.concatenate([gaussian, outliers]), 512)
    t = impl.entropy_threshold(hist, edges, 128)
    assert t < 25, f"threshold {t:.2f}: the outliers at 25..30 must be clipped, not stretch the grid"
    kept = np.mean(np.abs(gaussian) <= t)
    assert kept >= 0.999, f"threshold {t:.2f} keeps only {kept:.4%} of the Gaussian"


@ex(2)
def test_threshold_keeps_a_uniform_distribution_whole(impl):
    x = np.random.default_rng(1).uniform(-1, 1, 50_000)
    hist, edges = magnitude_histogram(x, 512)
    t = impl.entropy_threshold(hist, edges, 128)
    # Without tails nothing is gained by clipping: the whole range is kept.
    assert t >= 0.99 * np.abs(x).max(), f"threshold {t:.3f} clips a distribution with no tail"


@ex(2)
def test_threshold_of_a_narrow_histogram_is_its_end(impl):
    hist = np.zeros(512, np.int64)
    hist[:100] = 5
    edges = np.linspace(0, 2.0, 513)
    assert impl.entropy_threshold(hist, edges, 128) == pytest.approx(edges[100]), \
        "100 non-empty bins fit 128 levels without merging: the threshold is the last edge"


DISTRIBUTIONS = {
    "gaussian": lambda rng: rng.standard_normal(60_000),
    "laplace": lambda rng: rng.laplace(size=60_000),
    "relu": lambda rng: np.maximum(rng.standard_normal(60_000), 0),
    "student_t": lambda rng: rng.standard_t(3, 60_000),
}


@ex(2)
@pytest.mark.parametrize("name", list(DISTRIBUTIONS))
def test_threshold_matches_the_engine_calibrator(impl, name):
    hist, edges = magnitude_histogram(DISTRIBUTIONS[name](np.random.default_rng(5)), 512)
    got = impl.entropy_threshold(hist, edges, 128)
    want = threshold_entropy(hist, edges, 128)
    if got == pytest.approx(want, rel=1e-9):
        return
    # Float sums in another order may only flip the choice between near-equal minima.
    def divergence(threshold):
        i = int(np.argmin(np.abs(edges - threshold)))  # the threshold is the upper edge of bin i - 1
        return _kl_divergence_at(hist.astype(np.float64), i, hist[i:].sum(), 128)

    assert divergence(got) <= divergence(want) * (1 + 1e-9), \
        f"{name}: threshold {got:.4f}; the engine's calibrator finds {want:.4f}, with a smaller divergence"


# ============================================================================ exercise 3
def random_operands(rng, m, k, n):
    a = rng.integers(0, 256, (m, k)).astype(np.uint8)
    b = rng.integers(-128, 128, (k, n)).astype(np.int8)
    return a, b


@ex(3)
@pytest.mark.parametrize(("m", "k", "n", "a_zero", "b_zero"), [(4, 5, 3, 0, 0), (7, 64, 9, 128, 0), (3, 300, 5, 17, -9),
                                                               (16, 33, 1, 255, 127)])
def test_int32_matmul_is_exact(impl, m, k, n, a_zero, b_zero):
    rng = np.random.default_rng(k)
    a, b = random_operands(rng, m, k, n)
    a[0], b[:, 0] = 255, -128  # the largest products: 255 · 128 · 300 overflows 16 bits, not 32
    got = np.asarray(impl.int32_matmul(a, a_zero, b, b_zero))
    assert got.dtype == np.int32, "accumulate in int32"
    want = (a.astype(np.int64) - a_zero) @ (b.astype(np.int64) - b_zero)
    np.testing.assert_array_equal(got, want)


MULTIPLIERS = [0.5, 0.999, 0.75, 0.1, 1.7e-3, 3.14159e-5, 2.0**-20, 0.0123]


@ex(3)
@pytest.mark.parametrize("multiplier", MULTIPLIERS)
def test_quantize_multiplier_is_exact(impl, multiplier):
    q, shift = impl.quantize_multiplier(np.float32(multiplier))
    q, shift = int(q), int(shift)
    assert 2**30 <= q < 2**31, "q is a Q31 number in [2**30, 2**31)"
    assert math.ldexp(q, -shift) == float(np.float32(multiplier)), "q · 2**-shift is the float32 multiplier exactly"


@ex(3)
@pytest.mark.parametrize("multiplier", MULTIPLIERS)
def test_multiply_by_quantized_multiplier_rounds_to_nearest(impl, multiplier):
    q, shift = (int(v) for v in impl.quantize_multiplier(np.float32(multiplier)))
    rng = np.random.default_rng(int(1e6 * multiplier))
    acc = np.concatenate([rng.integers(-2**24, 2**24, 500), [0, 1, -1, 2**31 - 1, -2**31]]).astype(np.int32)
    got = np.asarray(impl.multiply_by_quantized_multiplier(acc, q, shift))
    assert got.shape == acc.shape and got.dtype.kind == "i"
    for a, r in zip(acc.tolist(), got.tolist()):
        # |r - a·q / 2**shift| <= 1/2, in exact integers: ties may go either way.
        assert abs(2 * (r * 2**shift - a * q)) <= 2**shift, f"acc {a}: {r} is not a nearest integer of acc · M"


def float_qgemm(a, a_scale, a_zero, b, b_scale, b_zero, y_scale, y_zero, bias):
    """The same layer in float64 on the dequantized operands, before and after clamping."""
    real = ((a.astype(np.float64) - a_zero) * a_scale) @ ((b.astype(np.float64) - b_zero) * b_scale)
    if bias is not None:
        real = real + bias.astype(np.float64) * a_scale * b_scale
    unclamped = np.rint(real / y_scale) + y_zero
    return unclamped, np.clip(unclamped, 0, 255)


GEMMS = [
    # (m, k, n, a_scale, a_zero, b_scale, b_zero, y_scale, y_zero, bias)
    (5, 16, 7, 0.02, 128, 0.01, 0, 0.05, 128, False),
    (8, 64, 12, 0.05, 3, 0.004, 0, 0.1, 0, True),
    (16, 27, 9, 0.1, 200, 0.02, -5, 0.02, 64, True),  # saturates often
    (3, 100, 4, 0.011, 0, 0.0093, 2, 0.9, 200, False),
]


@ex(3)
@pytest.mark.parametrize("case", GEMMS, ids=[f"gemm{i}" for i in range(len(GEMMS))])
def test_qgemm_matches_float_math(impl, case):
    m, k, n, a_scale, a_zero, b_scale, b_zero, y_scale, y_zero, with_bias = case
    rng = np.random.default_rng(m * k)
    a, b = random_operands(rng, m, k, n)
    bias = rng.integers(-5000, 5000, n).astype(np.int32) if with_bias else None
    scales = [np.float32(s) for s in (a_scale, b_scale, y_scale)]
    got = np.asarray(impl.qgemm_u8s8(a, scales[0], a_zero, b, scales[1], b_zero, scales[2], y_zero, bias))
    assert got.dtype == np.uint8 and got.shape == (m, n)
    unclamped, want = float_qgemm(a, scales[0], a_zero, b, scales[1], b_zero, scales[2], y_zero, bias)
    diff = np.abs(got.astype(int) - want.astype(int))
    assert diff.max() <= 1, "more than 1 LSB away from float math"
    assert np.mean(diff == 0) >= 0.99, f"only {np.mean(diff == 0):.1%} exact: round to nearest, do not truncate"
    outside = (unclamped < -1) | (unclamped > 256)
    np.testing.assert_array_equal(got[outside], want[outside], err_msg="results beyond 0..255 saturate exactly")


@ex(3)
@pytest.mark.parametrize("case", GEMMS, ids=[f"gemm{i}" for i in range(len(GEMMS))])
def test_qgemm_matches_the_engine_reference(impl, case):
    m, k, n, a_scale, a_zero, b_scale, b_zero, y_scale, y_zero, with_bias = case
    rng = np.random.default_rng(m + k + n)
    a, b = random_operands(rng, m, k, n)
    bias = rng.integers(-5000, 5000, n).astype(np.int32) if with_bias else None
    scales = [np.float32(s) for s in (a_scale, b_scale, y_scale)]
    got = np.asarray(impl.qgemm_u8s8(a, scales[0], a_zero, b, scales[1], b_zero, scales[2], y_zero, bias))
    multiplier = np.float32(scales[0] * scales[1] / scales[2])
    want = qgemm_naive(a, a_zero, b, np.int8(b_zero), multiplier, np.uint8(y_zero), bias=bias)
    diff = np.abs(got.astype(int) - want.astype(int))
    assert diff.max() <= 1 and np.mean(diff == 0) >= 0.99


# ============================================================================ exercise 4
def conv_weight(rng, out_channels=16, spread=100.0, inputs=8):
    """A Conv weight (M, C, 3, 3) whose output channels' ranges differ up to ``spread`` times."""
    ranges = np.geomspace(1.0, spread, out_channels)[rng.permutation(out_channels)]
    return (rng.standard_normal((out_channels, inputs, 3, 3)) * ranges[:, None, None, None] * 0.01).astype(np.float32)


@ex(4)
@pytest.mark.parametrize("axis", [0, 1])
def test_per_channel_scales_match_the_engine(impl, axis):
    w = conv_weight(np.random.default_rng(axis))
    got = np.asarray(impl.per_channel_scales(w, axis))
    want = affine.params_from_tensor(w, np.int8, symmetric=True, axis=axis)
    assert got.shape == (w.shape[axis],), "one scale per slice along the axis"
    np.testing.assert_allclose(got, want.scale, rtol=1e-6)


@ex(4)
def test_an_all_zero_channel_gets_a_usable_scale(impl):
    w = conv_weight(np.random.default_rng(2))
    w[3] = 0.0
    scales = np.asarray(impl.per_channel_scales(w, 0))
    assert np.all(np.isfinite(scales)) and np.all(scales > 0), "an all-zero channel needs a positive scale (1, say)"
    q = np.asarray(impl.quantize_per_channel(w, scales, 0))
    assert np.all(q[3] == 0)


@ex(4)
def test_quantize_per_channel_matches_onnx(impl):
    w = conv_weight(np.random.default_rng(3))
    scales = affine.params_from_tensor(w, np.int8, symmetric=True, axis=0).scale
    got = np.asarray(impl.quantize_per_channel(w, scales, 0))
    assert got.dtype == np.int8
    np.testing.assert_array_equal(got, onnx_quantize(w, scales, np.zeros(len(scales), np.int8), axis=0))
    assert np.abs(got.astype(int)).max() == 127, "each channel's largest |w| lands on ±127"


@ex(4)
@pytest.mark.parametrize("spread", [3.0, 100.0, 1000.0])
def test_error_gain_matches_the_engine(impl, spread):
    w = conv_weight(np.random.default_rng(int(spread)), spread=spread)
    errors = [affine.quantization_error(w, affine.params_from_tensor(w, np.int8, symmetric=True, axis=axis))
              for axis in (None, 0)]
    want = 10 * math.log10(errors[0] / errors[1])
    np.testing.assert_allclose(impl.per_channel_error_gain_db(w, 0), want, rtol=1e-4, atol=1e-4)


@ex(4)
@pytest.mark.parametrize("spread", [3.0, 10.0, 30.0])
def test_error_gain_follows_the_rounding_noise_model(impl, spread):
    # Rounding noise is uniform over a step s: its power is s²/12. Per tensor every channel
    # gets the widest channel's step; per channel each its own, so (absmax_c = channel c's
    # largest |w|) the gain is max(absmax)² / mean(absmax²), the same in every channel.
    w = conv_weight(np.random.default_rng(int(spread)), spread=spread, inputs=32)
    absmax = np.abs(w).reshape(len(w), -1).max(axis=1).astype(np.float64)
    model = 10 * math.log10(absmax.max() ** 2 / np.mean(absmax**2))
    # 288 weights per channel: the measured noise power is within about ±10 % (0.5 dB) of s²/12.
    assert impl.per_channel_error_gain_db(w, 0) == pytest.approx(model, abs=0.5)


@ex(4)
def test_equal_channel_ranges_gain_nothing(impl):
    w = np.random.default_rng(4).standard_normal((8, 4, 3, 3)).astype(np.float32)
    w = np.clip(w, -1.0, 1.0)
    w[:, 0, 0, 0] = 1.0  # every channel's largest |w| is 1: every scale is the per-tensor scale
    assert abs(impl.per_channel_error_gain_db(w, 0)) < 1e-9, "equal channel ranges: per-channel changes nothing"
