"""Calibration methods on distributions whose right answer is known, and the one-pass collector.

Oracles: the ends of a uniform distribution; a Gaussian's bulk (a handful of huge outliers
must not move percentile or entropy thresholds, and must move minmax); Banner et al. (2019)'s
closed-form MSE-optimal clipping of Laplace data (α* = 2.83b, 3.89b, 5.03b, 6.2b, 7.41b,
8.64b, 9.89b for 2…8 bits), recomputed here by bisection; exact min/max from NumPy for the
collector; np.histogram for the running histogram.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tinyinfer.compress.calibrate import (
    METHODS,
    Calibrator,
    TensorStatistics,
    threshold_entropy,
    threshold_mse,
    threshold_percentile,
)
from tinyinfer.errors import TinyInferError


def _range(method: str, x: np.ndarray, **options) -> tuple[float, float]:
    """The range a calibrator gives for one tensor holding ``x``."""
    calibrator = Calibrator(method, **options)
    stats = TensorStatistics(calibrator.num_bins, histogram=method != "minmax")
    stats.update(x)
    return calibrator.range_of(stats)


# ------------------------------------------------------------------ known distributions
def test_uniform_minmax_is_the_ends_and_the_others_are_close_to_them():
    x = np.random.default_rng(0).uniform(-1.0, 3.0, 200_000).astype(np.float32)
    assert _range("minmax", x) == (float(x.min()), float(x.max()))
    low, high = _range("percentile", x, percentile=99.99)
    # 0.005 % of 4 units off each end is 2e-4; allow sampling noise and a bin (4/4096 ≈ 1e-3).
    assert abs(low - -1.0) < 2e-3 and abs(high - 3.0) < 2e-3
    for method in ("entropy", "mse"):  # a uniform distribution has no tail worth clipping
        low, high = _range(method, x)
        assert low == pytest.approx(float(x.min())) and high >= 0.98 * 3.0, method


def test_uniform_symmetric_ranges_are_symmetric():
    x = np.random.default_rng(1).uniform(-1.0, 3.0, 50_000).astype(np.float32)
    for method in METHODS:
        low, high = _range(method, x, symmetric=True)
        assert low == -high and high > 2.9, method


def test_gaussian_outliers_move_minmax_but_not_percentile_or_entropy():
    x = np.random.default_rng(2).normal(0.0, 1.0, 200_000).astype(np.float32)
    x[:5] = [80.0, -60.0, 100.0, 90.0, -120.0]
    assert _range("minmax", x) == (-120.0, 100.0)
    for symmetric in (False, True):
        low, high = _range("percentile", x, percentile=99.99, symmetric=symmetric)
        assert 3.5 < high < 4.5 and -4.5 < low < -3.5  # the 99.99th percentile of N(0, 1) is 3.89
        low, high = _range("entropy", x, symmetric=symmetric)
        # The smallest threshold entropy searches is 128 of 2048 bins over [0, 120]: 7.5.
        assert 3.0 < high <= 7.5 and -7.5 <= low < -3.0
    # MSE counts the outliers' squared clipping error, which is huge: it clips, but far less.
    low, high = _range("mse", x)
    assert 7.5 < high < 100.0


def _banner_laplace_optimum(bits: int, b: float = 1.0) -> float:
    """Banner et al. (2019): for Laplace(0, b) and 2^M levels over [-α, α], the expected error
    is 2b²·exp(-α/b) (clipping) + α² / (3·4^M) (rounding); its zero of the derivative, by bisection."""
    def slope(alpha):
        return -2 * b * np.exp(-alpha / b) + 2 * alpha / (3 * 4.0**bits)

    low, high = 0.1, 50.0
    for _ in range(100):
        middle = (low + high) / 2
        low, high = (middle, high) if slope(middle) < 0 else (low, middle)
    return (low + high) / 2


@pytest.mark.parametrize("bits, published", [(2, 2.83), (3, 3.89), (4, 5.03), (5, 6.2), (6, 7.41), (7, 8.64), (8, 9.89)])
def test_mse_threshold_of_laplace_matches_banner_et_al(bits, published):
    assert _banner_laplace_optimum(bits) == pytest.approx(published, abs=0.01)
    # The exact probability of |x| per bin for Laplace(0, 1): no sampling noise.
    edges = np.linspace(0.0, 24.0, 4097)
    hist = np.diff(1.0 - np.exp(-edges))
    # 2^M + 1 levels over [-t, t] is Banner's step 2t / 2^M; tolerance: one bin (0.006) plus rounding.
    assert threshold_mse(hist, edges, 2**bits + 1) == pytest.approx(published, abs=0.02)


def test_mse_calibration_of_sampled_laplace_data_is_near_the_8_bit_optimum():
    b = 0.5
    x = np.random.default_rng(3).laplace(0.0, b, 400_000).astype(np.float32)
    low, high = _range("mse", x, symmetric=True)
    # 9.89·b; few samples lie beyond, so the sampled tail is noisy: ±5 %.
    assert high == pytest.approx(9.89 * b, rel=0.05) and low == -high


def test_relu_outputs_keep_zero_as_the_lower_end():
    x = np.maximum(np.random.default_rng(4).normal(0.0, 1.0, 100_000), 0.0).astype(np.float32)
    for method in METHODS:
        low, high = _range(method, x)
        assert low == 0.0, method
        assert 2.5 < high <= float(x.max()), method


def test_percentile_interpolates_within_a_bin():
    hist, edges = np.ones(10), np.linspace(0.0, 10.0, 11)
    assert threshold_percentile(hist, edges, 95.0) == pytest.approx(9.5)
    assert threshold_percentile(hist, edges, 100.0) == pytest.approx(10.0)


def test_entropy_keeps_everything_when_the_data_need_no_more_bins_than_levels():
    hist, edges = np.zeros(2048), np.linspace(0.0, 2048.0, 2049)
    hist[:100] = 1.0
    assert threshold_entropy(hist, edges, 128) == 100.0


# ------------------------------------------------------------------ running histogram
def test_running_histogram_rebins_exactly_when_the_range_grows():
    rng = np.random.default_rng(5)
    batches = [rng.normal(0, scale, 5_000).astype(np.float32) for scale in (0.5, 1.0, 3.0, 2.0, 7.0)]
    stats = TensorStatistics(256)
    for batch in batches:
        stats.update(batch)
    data = np.concatenate(batches)
    assert stats.min == data.min() and stats.max == data.max() and stats.count == data.size
    assert stats.limit >= np.abs(data).max()
    hist, edges = stats.signed_histogram()
    expected, _ = np.histogram(data, bins=edges)
    assert hist.sum() == data.size
    # Merged bins are unions of old bins, so counts agree except for values within float
    # rounding of a bin edge (two arithmetic paths): allow a few.
    assert np.abs(hist - expected).sum() <= 4


def test_zeros_before_the_first_nonzero_value_are_kept():
    stats = TensorStatistics(256)
    stats.update(np.zeros(10, np.float32))
    stats.update(np.array([1.0, -1.0], np.float32))
    hist, _ = stats.magnitude_histogram()
    assert hist.sum() == 12 and hist[0] == 10 and stats.zeros == 10
    assert stats.magnitude_histogram(exclude_zeros=True)[0][0] == 0


# ------------------------------------------------------------------ collecting from a model
def _two_input_model() -> onnx.ModelProto:
    """s = x + y; r = Relu(s); out = r * 2  (shapes 2x3)."""
    nodes = [
        helper.make_node("Add", ["x", "y"], ["s"]),
        helper.make_node("Relu", ["s"], ["r"]),
        helper.make_node("Mul", ["r", "two"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes, "two_inputs",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, [2, 3]) for name in ("x", "y")],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2, 3])],
        [numpy_helper.from_array(np.float32(2.0), "two")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


class CountingReader:
    """A CalibrationDataReader-style reader that counts how often it is asked."""

    def __init__(self, batches):
        self.batches = list(batches)
        self.calls = 0

    def get_next(self):
        self.calls += 1
        return self.batches.pop(0) if self.batches else None


def _feeds(n: int, seed: int = 6) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.normal(0, 1, (2, 3)).astype(np.float32), "y": rng.normal(0, 2, (2, 3)).astype(np.float32)}
            for _ in range(n)]


def test_collect_sees_every_tensor_of_a_two_input_model_in_one_pass():
    feeds = _feeds(5)
    reader = CountingReader(feeds)
    calibrator = Calibrator("minmax")
    calibrator.collect(_two_input_model(), reader, progress=False)
    assert reader.calls == 6  # five batches, then None: one pass
    s = [f["x"] + f["y"] for f in feeds]
    expected = {
        "x": np.stack([f["x"] for f in feeds]), "y": np.stack([f["y"] for f in feeds]),
        "s": np.stack(s), "r": np.maximum(np.stack(s), 0), "out": 2 * np.maximum(np.stack(s), 0),
    }
    ranges = calibrator.ranges()
    assert set(ranges) == set(expected)
    for name, values in expected.items():
        assert ranges[name] == (float(values.min()), float(values.max())), name
        assert calibrator.statistics[name].count == values.size, name
    assert ranges["r"][0] == 0.0


@pytest.mark.parametrize("method", METHODS)
def test_collect_requested_tensors_only_with_every_method(method):
    calibrator = Calibrator(method)
    calibrator.collect(_two_input_model(), _feeds(4), tensor_names=["r", "y"], progress=False)
    ranges = calibrator.ranges()
    assert set(ranges) == {"y", "r"}
    assert ranges["r"][0] == 0.0 and ranges["r"][1] > 0
    assert ranges["y"][0] < 0 < ranges["y"][1]


def test_collect_accumulates_over_calls_and_accepts_a_graph_and_a_progress_bar():
    import tinyinfer

    graph = tinyinfer.load(_two_input_model())
    calibrator = Calibrator("percentile", percentile=100.0)
    feeds = _feeds(6, seed=7)
    calibrator.collect(graph, feeds[:3], progress=True)
    calibrator.collect(graph, iter(feeds[3:]), progress=True)
    assert calibrator.batches == 6
    high = max(float(np.maximum(f["x"] + f["y"], 0).max()) for f in feeds)
    assert calibrator.ranges()["r"][1] == pytest.approx(high)


@pytest.mark.parametrize("make, message", [
    (lambda: Calibrator("kl"), "unknown calibration method"),
    (lambda: Calibrator("percentile", percentile=0.0), "percentile"),
    (lambda: Calibrator("entropy", num_bins=16), "num_bins"),
    (lambda: Calibrator().ranges(), "collect"),
    (lambda: Calibrator().collect(_two_input_model(), CountingReader([]), progress=False), "no data"),
    (lambda: Calibrator().collect(_two_input_model(), _feeds(1), tensor_names=["nope"], progress=False), "nope"),
    (lambda: Calibrator().collect(_two_input_model(), 42, progress=False), "get_next"),
    (lambda: Calibrator().collect(_two_input_model(), [[1, 2]], progress=False), "dicts"),
])
def test_bad_use_raises_a_tinyinfer_error(make, message):
    with pytest.raises(TinyInferError, match=message):
        make()
