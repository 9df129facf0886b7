"""Losses and the small ops of tinyinfer/ops/loss.py against naive loops and math facts.

The loss oracles walk the samples one by one in Python floats (double precision), exactly as
the spec's examples do: pick the label's log-probability, weight it, skip ignored labels,
then sum, and divide by the summed weights for ``mean``. tinyinfer computes in float64 and
rounds once, so float32 results agree to half an ulp of the result plus the summation-order
difference: rtol 1e-6 for float32, 1e-12 for float64.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx_oracle import Initializer, assert_matches_reference, infer_outputs, run_tinyinfer

from tinyinfer.errors import ExecutionError, InvalidAttributeError, ShapeInferenceError

TOLERANCE = {np.float32: dict(rtol=1e-6, atol=1e-6), np.float64: dict(rtol=1e-12, atol=1e-12)}


# ---------------------------------------------------------------------------- oracles
def naive_loss(log_prob, target, weight=None, reduction="mean", ignore_index=None):
    """The NegativeLogLikelihoodLoss of the spec, one sample at a time, in Python floats."""
    n_samples, classes = log_prob.shape[:2]
    positions = list(np.ndindex(*log_prob.shape[2:]))
    losses = np.zeros(target.shape)
    total, weight_total = 0.0, 0.0
    for n in range(n_samples):
        for d in positions:
            c = int(target[(n, *d)])
            if ignore_index is not None and c == ignore_index:
                continue  # loss 0, and no weight in the mean's denominator
            w = 1.0 if weight is None else float(weight[c])
            loss = -float(log_prob[(n, c, *d)]) * w
            losses[(n, *d)] = loss
            total += loss
            weight_total += w
    if reduction == "none":
        return losses
    if reduction == "sum":
        return np.float64(total)
    return np.float64(total / weight_total) if weight_total else np.float64(np.nan)


def naive_log_softmax(scores):
    """log(exp(s_c) / sum_k exp(s_k)) over axis 1, element by element in Python floats."""
    result = np.zeros(scores.shape)
    for n in range(scores.shape[0]):
        for d in np.ndindex(*scores.shape[2:]):
            column = [float(scores[(n, k, *d)]) for k in range(scores.shape[1])]
            top = max(column)
            log_total = top + math.log(sum(math.exp(v - top) for v in column))
            for k, v in enumerate(column):
                result[(n, k, *d)] = v - log_total
    return result


def make_case(shape, dtype, seed=0, ignore_index=None, with_weight=False):
    """Scores, labels (some equal to ignore_index if it is given) and optional weights."""
    rng = np.random.default_rng(seed)
    scores = rng.normal(0, 2, shape).astype(dtype)
    target_shape = (shape[0], *shape[2:])
    target = rng.integers(0, shape[1], target_shape).astype(np.int64)
    if ignore_index is not None:
        target[rng.random(target_shape) < 0.3] = ignore_index
        target.flat[0] = 0  # at least one sample counts
    weight = rng.uniform(0.1, 2.0, shape[1]).astype(dtype) if with_weight else None
    return scores, target, weight


SHAPES = [(4, 3), (2, 5, 3), (2, 3, 2, 4), (1, 4, 2, 1, 3)]
LOSS_CASES = list(itertools.product(["none", "sum", "mean"], [False, True], [None, 1, -1, 7]))


# ---------------------------------------------------------------------------- NegativeLogLikelihoodLoss
@pytest.mark.parametrize("reduction, with_weight, ignore_index", LOSS_CASES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_nll_matches_naive_loop(shape, reduction, with_weight, ignore_index):
    log_prob, target, weight = make_case(shape, np.float32, ignore_index=ignore_index, with_weight=with_weight)
    inputs = [log_prob, target] + ([weight] if with_weight else [])
    attrs = {"reduction": reduction} | ({} if ignore_index is None else {"ignore_index": ignore_index})
    (got,) = run_tinyinfer("NegativeLogLikelihoodLoss", inputs, opset=22, **attrs)
    want = naive_loss(log_prob, target, weight, reduction, ignore_index)
    assert got.dtype == np.float32 and got.shape == np.shape(want)
    np.testing.assert_allclose(got, want, **TOLERANCE[np.float32])


@pytest.mark.parametrize("opset", [12, 13, 22])
def test_nll_float64_and_every_opset(opset):
    log_prob, target, weight = make_case((3, 4, 5), np.float64, seed=1, ignore_index=2, with_weight=True)
    (got,) = run_tinyinfer("NegativeLogLikelihoodLoss", [log_prob, target.astype(np.int32), weight],
                           opset=opset, ignore_index=2)
    assert got.dtype == np.float64 and got.shape == ()
    np.testing.assert_allclose(got, naive_loss(log_prob, target, weight, "mean", 2), **TOLERANCE[np.float64])


def test_nll_weighted_mean_is_the_spec_example():
    # Examples 2 and 3 of the spec: the weighted losses -0.3, -0.6, -0.0, -0.2 sum to -1.1,
    # and the mean divides by the weights of the labels, 0.1 + 0.3 + 0.2 + 0.1 = 0.7 (the
    # spec prints -1.1 / 0.7 rounded, as -1.57).
    x = np.array([[[1.0, 2.0], [2.0, 2.0], [3.0, 2.0]], [[0.0, 1.0], [2.0, 2.0], [1.0, 2.0]]], np.float32)
    target = np.array([[2, 1], [0, 2]], np.int64)
    weight = np.array([0.2, 0.3, 0.1], np.float32)
    (mean,) = run_tinyinfer("NegativeLogLikelihoodLoss", [x, target, weight], opset=22)
    (total,) = run_tinyinfer("NegativeLogLikelihoodLoss", [x, target, weight], opset=22, reduction="sum")
    np.testing.assert_allclose(mean, -1.1 / 0.7, rtol=1e-6)
    np.testing.assert_allclose(total, -1.1, rtol=1e-6)


def test_nll_ignored_samples_leave_both_sums():
    log_prob = np.log(np.array([[0.5, 0.5], [0.25, 0.75], [0.9, 0.1]], np.float64))
    target = np.array([1, -100, 0])
    weight = np.array([2.0, 3.0])
    (got,) = run_tinyinfer("NegativeLogLikelihoodLoss", [log_prob, target, weight], opset=22, ignore_index=-100)
    # (3 * -log 0.5 + 2 * -log 0.9) / (3 + 2): the ignored sample's weight is not counted.
    np.testing.assert_allclose(got, (3 * -math.log(0.5) + 2 * -math.log(0.9)) / 5, rtol=1e-14)


def test_nll_ignored_sample_with_infinite_log_prob_stays_zero():
    log_prob = np.array([[-np.inf, 0.0], [-1.0, -0.5]], np.float32)  # class 0 impossible in sample 0
    target = np.array([3, 1])
    (none,) = run_tinyinfer("NegativeLogLikelihoodLoss", [log_prob, target], opset=22, reduction="none", ignore_index=3)
    np.testing.assert_array_equal(none, [0.0, 0.5])
    (mean,) = run_tinyinfer("NegativeLogLikelihoodLoss", [log_prob, target], opset=22, ignore_index=3)
    np.testing.assert_array_equal(mean, 0.5)


def test_nll_mean_of_nothing_is_nan():
    log_prob, target = np.zeros((2, 3), np.float32), np.array([1, 1])
    (got,) = run_tinyinfer("NegativeLogLikelihoodLoss", [log_prob, target], opset=22, ignore_index=1)
    assert np.isnan(got)


def test_nll_float32_sum_does_not_drift():
    # 100 000 equal losses of 0.1: a float32 running sum drifts by ~1e-4 relative; the
    # float64 sum rounded once is the float32 nearest 10 000.
    log_prob = np.full((100_000, 2), -0.1, np.float32)
    target = np.zeros(100_000, np.int64)
    (got,) = run_tinyinfer("NegativeLogLikelihoodLoss", [log_prob, target], opset=22, reduction="sum")
    assert got == np.float32(100_000 * float(np.float32(0.1)))


def test_nll_matches_onnx_reference():
    log_prob, target, weight = make_case((3, 4, 2, 2), np.float32, seed=4, ignore_index=0, with_weight=True)
    for reduction in ("none", "sum", "mean"):
        assert_matches_reference("NegativeLogLikelihoodLoss", [log_prob, target, weight], opset=22,
                                 rtol=1e-5, atol=1e-6, reduction=reduction, ignore_index=0)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 3), classes=st.integers(1, 4), spatial=st.lists(st.integers(1, 3), max_size=2),
    reduction=st.sampled_from(["none", "sum", "mean"]), seed=st.integers(0, 10_000), with_weight=st.booleans(),
)
def test_nll_property_against_naive_loop(n, classes, spatial, reduction, seed, with_weight):
    log_prob, target, weight = make_case((n, classes, *spatial), np.float64, seed, ignore_index=0,
                                         with_weight=with_weight)
    inputs = [log_prob, target] + ([weight] if with_weight else [])
    (got,) = run_tinyinfer("NegativeLogLikelihoodLoss", inputs, opset=22, reduction=reduction, ignore_index=0)
    want = naive_loss(log_prob, target, weight, reduction, 0)
    np.testing.assert_allclose(got, want, equal_nan=True, **TOLERANCE[np.float64])


# ---------------------------------------------------------------------------- SoftmaxCrossEntropyLoss
@pytest.mark.parametrize("reduction, with_weight, ignore_index", LOSS_CASES)
@pytest.mark.parametrize("shape", SHAPES[:3], ids=str)
def test_sce_matches_naive_loop(shape, reduction, with_weight, ignore_index):
    scores, labels, weight = make_case(shape, np.float32, seed=2, ignore_index=ignore_index, with_weight=with_weight)
    inputs = [scores, labels] + ([weight] if with_weight else [])
    attrs = {"reduction": reduction} | ({} if ignore_index is None else {"ignore_index": ignore_index})
    loss, log_prob = run_tinyinfer("SoftmaxCrossEntropyLoss", inputs, 2, opset=13, **attrs)
    want_log_prob = naive_log_softmax(scores)
    np.testing.assert_allclose(log_prob, want_log_prob, **TOLERANCE[np.float32])
    np.testing.assert_allclose(loss, naive_loss(want_log_prob, labels, weight, reduction, ignore_index),
                               **TOLERANCE[np.float32])
    assert loss.dtype == log_prob.dtype == np.float32 and log_prob.shape == scores.shape


def test_sce_without_log_prob_output_and_large_scores():
    scores = np.array([[1000.0, 0.0, -1000.0], [0.0, 0.0, 0.0]], np.float32)  # exp(1000) overflows
    (loss,) = run_tinyinfer("SoftmaxCrossEntropyLoss", [scores, np.array([1, 2])], opset=12, reduction="none")
    np.testing.assert_allclose(loss, [1000.0, math.log(3.0)], rtol=1e-7)


def test_sce_matches_onnx_reference():
    scores, labels, weight = make_case((2, 3, 4), np.float64, seed=5, ignore_index=-1, with_weight=True)
    assert_matches_reference("SoftmaxCrossEntropyLoss", [scores, labels, weight], 2, opset=13,
                             rtol=1e-12, atol=1e-12, ignore_index=-1)


# ---------------------------------------------------------------------------- loss errors and shapes
def test_loss_shapes_stay_symbolic():
    scores, target, _ = make_case((2, 3, 4), np.float32)
    shapes = {0: ("N", 3, "D"), 1: ("N", "D")}
    (loss,) = infer_outputs("NegativeLogLikelihoodLoss", [scores, target], opset=22, shapes=shapes, reduction="none")
    assert loss.shape == ("N", "D") and loss.dtype == np.float32
    loss, log_prob = infer_outputs("SoftmaxCrossEntropyLoss", [scores, target], 2, opset=13, shapes=shapes)
    assert loss.shape == () and log_prob.shape == ("N", 3, "D")


def test_loss_rejects_bad_reduction():
    scores, target, _ = make_case((2, 3), np.float32)
    with pytest.raises(InvalidAttributeError, match="reduction must be one of"):
        run_tinyinfer("NegativeLogLikelihoodLoss", [scores, target], opset=22, reduction="average")


@pytest.mark.parametrize("target_shape", [(2,), (2, 5), (3, 4)])
def test_loss_rejects_target_of_wrong_shape(target_shape):
    scores = np.zeros((2, 3, 4), np.float32)
    expected = r"target must have shape \[N, d1, ..., dk\] = \[2, 4\] for scores \[2, 3, 4\]"
    with pytest.raises(ShapeInferenceError, match=expected):
        run_tinyinfer("SoftmaxCrossEntropyLoss", [scores, np.zeros(target_shape, np.int64)], opset=13)


def test_loss_rejects_weight_of_wrong_shape():
    scores, target, _ = make_case((2, 3), np.float32)
    with pytest.raises(ShapeInferenceError, match=r"weight must have shape \[C\] = \[3\]"):
        run_tinyinfer("NegativeLogLikelihoodLoss", [scores, target, np.ones(4, np.float32)], opset=22)


def test_loss_rejects_label_outside_the_classes():
    scores = np.zeros((2, 3), np.float32)
    with pytest.raises(ExecutionError, match=r"class 3, outside \[0, 2\]"):
        run_tinyinfer("NegativeLogLikelihoodLoss", [scores, np.array([0, 3])], opset=22)
    with pytest.raises(ExecutionError, match=r"class -1"):
        run_tinyinfer("SoftmaxCrossEntropyLoss", [scores, np.array([-1, 0])], opset=13, ignore_index=5)


# ---------------------------------------------------------------------------- CumProd
def naive_cumprod(x, axis, exclusive, reverse):
    """out[i] = product of x[j] over j <= i (j < i if exclusive; >= / > if reverse)."""
    moved = np.moveaxis(x, axis, 0)
    result = np.ones_like(moved)
    n = moved.shape[0]
    for i in range(n):
        for j in range(n):
            if (j > i if reverse else j < i) or (j == i and not exclusive):
                result[i] = result[i] * moved[j]
    return np.moveaxis(result, 0, axis)


@pytest.mark.parametrize("exclusive, reverse", list(itertools.product([0, 1], [0, 1])))
@pytest.mark.parametrize("axis", [0, 1, -1])
@pytest.mark.parametrize("dtype", [np.float64, np.int32, np.uint64])
def test_cumprod_matches_naive_loop(axis, exclusive, reverse, dtype):
    x = np.random.default_rng(7).integers(0, 4, (2, 3, 4)).astype(dtype)
    for axis_input in (np.array(axis, np.int64), Initializer(np.array(axis, np.int32))):
        (got,) = run_tinyinfer("CumProd", [x, axis_input], opset=26, exclusive=exclusive, reverse=reverse)
        np.testing.assert_array_equal(got, naive_cumprod(x, axis, exclusive, reverse))
        assert got.dtype == dtype


def test_cumprod_exclusive_ignores_the_last_infinity():
    x = np.array([2.0, 3.0, np.inf], np.float32)
    (got,) = run_tinyinfer("CumProd", [x, np.array(0)], opset=26, exclusive=1)
    np.testing.assert_array_equal(got, [1.0, 2.0, 6.0])  # never inf * 0 = NaN


def test_cumprod_rejects_bad_axis():
    with pytest.raises(ShapeInferenceError, match="axis 2 is out of range"):
        run_tinyinfer("CumProd", [np.ones((2, 2), np.float32), Initializer(np.array(2))], opset=26)


# ---------------------------------------------------------------------------- ReverseSequence
@pytest.mark.parametrize("batch_axis, time_axis", [(0, 1), (1, 0)])
@pytest.mark.parametrize("dtype", [np.float32, np.int8, np.bool_])
def test_reverse_sequence_matches_naive_loop(batch_axis, time_axis, dtype):
    rng = np.random.default_rng(8)
    shape = [0, 0, 2]
    shape[batch_axis], shape[time_axis] = 4, 5
    x = rng.integers(0, 9, shape).astype(dtype)
    lengths = np.array([5, 0, 1, 3])
    (got,) = run_tinyinfer("ReverseSequence", [x, lengths], opset=10, batch_axis=batch_axis, time_axis=time_axis)
    want = x.copy()
    for b, length in enumerate(lengths):
        for t in range(length):
            target, source = [slice(None)] * 3, [slice(None)] * 3
            target[batch_axis] = source[batch_axis] = b
            target[time_axis], source[time_axis] = t, length - 1 - t
            want[tuple(target)] = x[tuple(source)]
    np.testing.assert_array_equal(got, want)
    assert got.dtype == dtype


def test_reverse_sequence_strings_match_onnx_reference():
    x = np.array([["a", "b", "c"], ["d", "e", "f"]], dtype=object)
    assert_matches_reference("ReverseSequence", [x, np.array([3, 2])], opset=28, batch_axis=0, time_axis=1)


def test_reverse_sequence_errors():
    x = np.zeros((3, 2), np.float32)
    with pytest.raises(InvalidAttributeError, match="batch_axis and time_axis must be 0 and 1"):
        run_tinyinfer("ReverseSequence", [x, np.array([1, 1])], opset=10, batch_axis=1, time_axis=1)
    with pytest.raises(ShapeInferenceError, match=r"sequence_lens must have shape \[batch_size\] = \[2\]"):
        run_tinyinfer("ReverseSequence", [x, np.array([1, 1, 1])], opset=10)
    with pytest.raises(ExecutionError, match=r"must lie in \[0, 3\]"):
        run_tinyinfer("ReverseSequence", [x, np.array([4, 1])], opset=10)


# ---------------------------------------------------------------------------- CenterCropPad
def naive_center_crop_pad(x, sizes, axes):
    """Output index i along an axis reads input index i + (have - size) // 2 when cropping and
    i - (size - have) // 2 when padding (zero where that falls outside)."""
    out_shape = list(x.shape)
    for axis, size in zip(axes, sizes):
        out_shape[axis] = size
    result = np.zeros(out_shape, x.dtype)
    for index in np.ndindex(*out_shape):
        source = list(index)
        for axis, size in zip(axes, sizes):
            have = x.shape[axis]
            source[axis] = index[axis] + (have - size) // 2 if size <= have else index[axis] - (size - have) // 2
        if all(0 <= s < n for s, n in zip(source, x.shape)):
            result[index] = x[tuple(source)]
    return result


@pytest.mark.parametrize("sizes, axes", [
    ([3, 4, 2], None), ([8, 7, 2], None), ([2, 9, 1], None), ([6, 1], [0, 1]), ([4], [-1]), ([7, 3], [2, 0]),
])
def test_center_crop_pad_matches_naive_loop(sizes, axes):
    x = np.arange(5 * 6 * 2, dtype=np.float32).reshape(5, 6, 2) + 1
    attrs = {} if axes is None else {"axes": axes}
    (got,) = run_tinyinfer("CenterCropPad", [x, np.array(sizes)], opset=18, **attrs)
    normalized = list(range(3)) if axes is None else [a % 3 for a in axes]
    np.testing.assert_array_equal(got, naive_center_crop_pad(x, sizes, normalized))
    (value,) = infer_outputs("CenterCropPad", [x, Initializer(np.array(sizes))], opset=18, **attrs)
    assert value.shape == got.shape


def test_center_crop_pad_errors():
    x = np.zeros((4, 4), np.float32)
    with pytest.raises(ShapeInferenceError, match="one size per axis"):
        run_tinyinfer("CenterCropPad", [x, np.array([2, 2, 2])], opset=18)
    with pytest.raises(ShapeInferenceError, match="axes .* name the same axis twice"):
        run_tinyinfer("CenterCropPad", [x, np.array([2, 2])], opset=18, axes=[0, -2])


# ---------------------------------------------------------------------------- Det
def test_det_small_matrices_by_formula():
    rng = np.random.default_rng(9)
    a = rng.normal(size=(3, 2, 2))
    b = rng.normal(size=(3, 3))
    (got2,) = run_tinyinfer("Det", [a], opset=22)
    np.testing.assert_allclose(got2, a[:, 0, 0] * a[:, 1, 1] - a[:, 0, 1] * a[:, 1, 0], rtol=1e-12)
    (got3,) = run_tinyinfer("Det", [b], opset=11)
    sarrus = (b[0, 0] * b[1, 1] * b[2, 2] + b[0, 1] * b[1, 2] * b[2, 0] + b[0, 2] * b[1, 0] * b[2, 1]
              - b[0, 2] * b[1, 1] * b[2, 0] - b[0, 0] * b[1, 2] * b[2, 1] - b[0, 1] * b[1, 0] * b[2, 2])
    assert got3.shape == () and got3.dtype == np.float64
    np.testing.assert_allclose(got3, sarrus, rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_det_is_multiplicative_in_batches(dtype):
    rng = np.random.default_rng(10)
    a, b = rng.normal(size=(2, 3, 4, 4)), rng.normal(size=(2, 3, 4, 4))
    det_a, det_b, det_ab = (run_tinyinfer("Det", [m.astype(dtype)], opset=22)[0] for m in (a, b, a @ b))
    assert det_ab.shape == (2, 3) and det_ab.dtype == dtype
    # det(AB) = det(A) det(B); float16 inputs and outputs carry ~1e-3 relative error each.
    np.testing.assert_allclose(det_ab, det_a * det_b, rtol=2e-2 if dtype == np.float16 else 1e-4, atol=1e-2)


def test_det_rejects_non_square():
    with pytest.raises(ShapeInferenceError, match="square matrices"):
        run_tinyinfer("Det", [np.zeros((2, 3), np.float32)], opset=22)
