"""Normalization ops against their formulas, ONNX's reference evaluator and ONNX Runtime.

Oracles: each op's defining formula written out in float64 NumPy in this file (per-channel
statistics taken with explicit loops where the axes are the point of the op), and for the
ops with several outputs or versions ``onnx.reference.ReferenceEvaluator`` / ONNX Runtime.

Tolerance: the statistics of up to a few hundred values and one division; float32 rounding
keeps the result within ~10 ulps of the float64 formula, so ``rtol=1e-5, atol=1e-5``. float16
results are rounded once to 11 bits: ``rtol=atol=5e-3``.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx_oracle import Initializer, assert_matches_reference, infer_outputs, run_onnxruntime, run_tinyinfer

from tinyinfer.errors import InvalidAttributeError, ShapeInferenceError

FLOAT32 = dict(rtol=1e-5, atol=1e-5)
FLOAT16 = dict(rtol=5e-3, atol=5e-3)


def random(shape, dtype=np.float32, seed=0, low=None):
    rng = np.random.default_rng(seed)
    values = rng.uniform(low, low + 1, shape) if low is not None else rng.standard_normal(shape)
    return values.astype(dtype)


def standardize(x, axes, epsilon):
    x = x.astype(np.float64)
    mean = x.mean(axis=axes, keepdims=True)
    return (x - mean) / np.sqrt(((x - mean) ** 2).mean(axis=axes, keepdims=True) + epsilon)


# ---------------------------------------------------------------------------- BatchNormalization
@pytest.mark.parametrize("shape", [(2, 3), (2, 3, 5), (2, 3, 4, 5), (1, 2, 3, 4, 2)])
def test_batch_norm_inference_formula(shape):
    channels = shape[1]
    x, scale, bias = random(shape), random((channels,), seed=1), random((channels,), seed=2)
    mean, var = random((channels,), seed=3), random((channels,), seed=4, low=0.5)
    (y,) = run_tinyinfer("BatchNormalization", [x, Initializer(scale), Initializer(bias), Initializer(mean),
                                                Initializer(var)], epsilon=1e-3)
    expand = (-1, *(1,) * (len(shape) - 2))
    want = (scale.reshape(expand).astype(np.float64) * (x - mean.reshape(expand)) / np.sqrt(var.reshape(expand) + 1e-3)
            + bias.reshape(expand))
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, want, **FLOAT32)


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_batch_norm_keeps_dtype(dtype):
    x = random((2, 3, 4, 4), dtype)
    params = [random((3,), dtype, 1), random((3,), dtype, 2), random((3,), dtype, 3), random((3,), dtype, 4, low=0.5)]
    (y,) = run_tinyinfer("BatchNormalization", [x, *params])
    (want,) = run_onnxruntime("BatchNormalization", [x, *params], opset=15)
    assert y.dtype == dtype
    np.testing.assert_allclose(y.astype(np.float64), want.astype(np.float64),
                               **(FLOAT16 if dtype == np.float16 else dict(rtol=1e-12, atol=1e-12)))


def test_batch_norm_training_mode_matches_reference():
    x = random((3, 2, 4, 5))
    params = [random((2,), seed=1), random((2,), seed=2), random((2,), seed=3), random((2,), seed=4, low=0.5)]
    assert_matches_reference("BatchNormalization", [x, *params], 3, training_mode=1, momentum=0.8, **FLOAT32)


def test_batch_norm_opset_9_training_outputs_match_onnxruntime():
    """Before opset 14, asking for the extra outputs means training; the fifth output is the
    saved inverse standard deviation in ONNX Runtime, which tinyinfer follows."""
    x = random((3, 2, 4))
    params = [random((2,), seed=1), random((2,), seed=2), random((2,), seed=3), random((2,), seed=4, low=0.5)]
    got = run_tinyinfer("BatchNormalization", [x, *params], 5, opset=9, momentum=0.7)
    want = run_onnxruntime("BatchNormalization", [x, *params], 5, opset=9, momentum=0.7)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, **FLOAT32)


def test_batch_norm_opset_9_and_7_read_the_same():
    x = random((2, 3, 4))
    params = [Initializer(random((3,), seed=s, low=0.5)) for s in (1, 2, 3, 4)]
    (new,) = run_tinyinfer("BatchNormalization", [x, *params], opset=15)
    (v9,) = run_tinyinfer("BatchNormalization", [x, *params], opset=9)
    (v7,) = run_tinyinfer("BatchNormalization", [x, *params], opset=7, spatial=1)
    np.testing.assert_array_equal(new, v9)
    np.testing.assert_array_equal(new, v7)


def test_batch_norm_parameter_of_the_wrong_size():
    x = random((2, 3, 4))
    params = [Initializer(random((n,), seed=1, low=0.5)) for n in (3, 3, 4, 3)]
    with pytest.raises(ShapeInferenceError, match=r"batchnormalization_node.*input_mean has 4 values.*3 channels"):
        run_tinyinfer("BatchNormalization", [x, *params])


# ---------------------------------------------------------------------------- InstanceNormalization
@pytest.mark.parametrize("shape", [(2, 3, 7), (2, 3, 4, 5), (1, 2, 3, 3, 2)])
def test_instance_norm_formula(shape):
    x, scale, bias = random(shape), random(shape[1:2], seed=1), random(shape[1:2], seed=2)
    (y,) = run_tinyinfer("InstanceNormalization", [x, Initializer(scale), Initializer(bias)], epsilon=1e-4)
    expand = (-1, *(1,) * (len(shape) - 2))
    want = standardize(x, tuple(range(2, len(shape))), 1e-4) * scale.reshape(expand) + bias.reshape(expand)
    np.testing.assert_allclose(y, want, **FLOAT32)


# ---------------------------------------------------------------------------- LayerNormalization
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("axis", [0, 1, 2, -1, -2])
def test_layer_norm_all_outputs_match_reference(axis, with_bias):
    x = random((2, 3, 4))
    normalized = x.shape[axis % 3:]
    inputs = [x, random(normalized, seed=1)] + ([random(normalized, seed=2)] if with_bias else [])
    y, mean, inverse_std = assert_matches_reference("LayerNormalization", inputs, 3, opset=17, axis=axis,
                                                    epsilon=1e-3, **FLOAT32)
    axes = tuple(range(axis % 3, 3))
    np.testing.assert_allclose(mean, x.astype(np.float64).mean(axis=axes, keepdims=True), **FLOAT32)
    np.testing.assert_allclose(inverse_std, 1 / np.sqrt(x.astype(np.float64).var(axis=axes, keepdims=True) + 1e-3),
                               **FLOAT32)


def test_layer_norm_float16_statistics_are_float32():
    x, scale = random((2, 5, 8), np.float16), random((8,), np.float16, 1)
    y, mean, inverse_std = run_tinyinfer("LayerNormalization", [x, scale], 3, opset=17)
    assert (y.dtype, mean.dtype, inverse_std.dtype) == (np.float16, np.float32, np.float32)
    np.testing.assert_allclose(y.astype(np.float64), standardize(x, (2,), 1e-5) * scale, **FLOAT16)
    outputs = infer_outputs("LayerNormalization", [x, scale], 3, opset=17, shapes={0: ["B", "T", 8]})
    assert [v.shape for v in outputs] == [("B", "T", 8), ("B", "T", 1), ("B", "T", 1)]
    assert [v.dtype for v in outputs] == [np.float16, np.float32, np.float32]


def test_layer_norm_bad_axis_and_stash_type():
    x, scale = random((2, 3)), random((3,))
    with pytest.raises(ShapeInferenceError, match="layernormalization_node.*axis 2 is out of range"):
        run_tinyinfer("LayerNormalization", [x, scale], opset=17, axis=2)
    with pytest.raises(InvalidAttributeError, match="stash_type"):
        run_tinyinfer("LayerNormalization", [x, scale], opset=17, stash_type=7)


# ---------------------------------------------------------------------------- GroupNormalization
@pytest.mark.parametrize("groups", [1, 2, 4])
def test_group_norm_formula(groups):
    x = random((2, 4, 3, 5))
    scale, bias = random((4,), seed=1), random((4,), seed=2)
    (y,) = run_tinyinfer("GroupNormalization", [x, scale, bias], opset=21, num_groups=groups, epsilon=1e-3)
    grouped = standardize(x.reshape(2, groups, -1), (2,), 1e-3).reshape(x.shape)
    np.testing.assert_allclose(y, grouped * scale.reshape(-1, 1, 1) + bias.reshape(-1, 1, 1), **FLOAT32)


def test_group_norm_opset_18_has_one_scale_per_group():
    x = random((2, 6, 5))
    scale, bias = random((3,), seed=1), random((3,), seed=2)
    (y,) = run_tinyinfer("GroupNormalization", [x, scale, bias], opset=18, num_groups=3)
    grouped = standardize(x.reshape(2, 3, -1), (2,), 1e-5)
    want = (grouped * scale.reshape(-1, 1) + bias.reshape(-1, 1)).reshape(x.shape)
    np.testing.assert_allclose(y, want, **FLOAT32)


def test_group_norm_channels_must_split_into_groups():
    with pytest.raises(ShapeInferenceError, match="5 channels.*num_groups=2"):
        run_tinyinfer("GroupNormalization", [random((1, 5, 3)), random((5,)), random((5,))], opset=21, num_groups=2)


# ---------------------------------------------------------------------------- RMS, MVN, Lp
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_rms_norm_matches_reference(axis):
    x = random((2, 3, 4))
    scale = random(x.shape[axis % 3:], seed=1)
    (y,) = assert_matches_reference("RMSNormalization", [x, scale], opset=23, axis=axis, **FLOAT32)
    axes = tuple(range(axis % 3, 3))
    want = x / np.sqrt((x.astype(np.float64) ** 2).mean(axis=axes, keepdims=True) + 1e-5) * scale
    np.testing.assert_allclose(y, want, **FLOAT32)


@pytest.mark.parametrize("axes", [None, [0, 1, 2, 3], [2, 3], [1]], ids=str)
def test_mean_variance_normalization_formula(axes):
    x = random((2, 3, 4, 5))
    attrs = {} if axes is None else {"axes": axes}
    (y,) = run_tinyinfer("MeanVarianceNormalization", [x], opset=13, **attrs)
    axes = tuple(axes or (0, 2, 3))
    x64 = x.astype(np.float64)
    want = (x64 - x64.mean(axis=axes, keepdims=True)) / (x64.std(axis=axes, keepdims=True) + 1e-9)
    np.testing.assert_allclose(y, want, **FLOAT32)


@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_lp_normalization_formula(axis, p):
    x = random((3, 4, 5))
    x[0, 0, :] = 0  # a zero vector stays zero along the last axis
    (y,) = run_tinyinfer("LpNormalization", [x], axis=axis, p=p)
    norm = np.linalg.norm(x.astype(np.float64), ord=p, axis=axis, keepdims=True)
    want = np.divide(x, norm, out=np.zeros(x.shape), where=norm != 0)
    np.testing.assert_allclose(y, want, **FLOAT32)


def test_lp_normalization_rejects_p_3():
    with pytest.raises(InvalidAttributeError, match="p must be 1 or 2"):
        run_tinyinfer("LpNormalization", [random((2, 3))], p=3)


# ---------------------------------------------------------------------------- LRN
def direct_lrn(x, size, alpha, beta, bias):
    """AlexNet's LRN with an explicit loop over channels."""
    x = x.astype(np.float64)
    channels = x.shape[1]
    y = np.empty_like(x)
    for c in range(channels):
        low, high = max(0, c - (size - 1) // 2), min(channels - 1, c + size - 1 - (size - 1) // 2)
        square_sum = (x[:, low:high + 1] ** 2).sum(axis=1)
        y[:, c] = x[:, c] / (bias + alpha / size * square_sum) ** beta
    return y


@pytest.mark.parametrize("size", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("shape", [(2, 6, 3, 4), (1, 4, 5)])
def test_lrn_matches_direct_loop(shape, size):
    x = random(shape) * 3
    (y,) = run_tinyinfer("LRN", [x], size=size, alpha=0.01, beta=0.6, bias=2.0)
    np.testing.assert_allclose(y, direct_lrn(x, size, 0.01, 0.6, 2.0), **FLOAT32)
    (default,) = run_tinyinfer("LRN", [x], size=size)
    np.testing.assert_allclose(default, direct_lrn(x, size, 1e-4, 0.75, 1.0), **FLOAT32)


def test_lrn_requires_size():
    with pytest.raises(InvalidAttributeError, match=r"lrn_node.*'size' is missing"):
        run_tinyinfer("LRN", [random((1, 3, 2, 2))])
