"""Activation ops: each against ONNX's reference evaluator, plus the math that defines them.

Oracles: ``onnx.reference.ReferenceEvaluator`` on one-node models; ONNX Runtime for the
pre-opset-13 Softmax family (the reference evaluator implements only the opset-13 meaning);
``math.erf`` for the error function; and identities (softmax rows sum to 1,
log_softmax = log(softmax)).

Tolerances: the same formula evaluated two ways (``expm1(x)`` against ``exp(x) - 1``, a
stable sigmoid against ``1 / (1 + exp(-x))``) differs by rounding only, a few ulps of the
result or of 1 where the naive form cancels. Hence ``rtol`` ~ 100 ulps and ``atol`` ~ 10 ulps
of 1 of the dtype: 1e-5 / 1e-6 for float32, 1e-12 / 1e-14 for float64.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx_oracle import (
    Initializer,
    assert_matches_reference,
    infer_outputs,
    run_onnxruntime,
    run_tinyinfer,
)

from tinyinfer.errors import InvalidAttributeError, ShapeInferenceError
from tinyinfer.ops.activation import erf

TOLERANCE = {
    np.float32: dict(rtol=1e-5, atol=1e-6),
    np.float64: dict(rtol=1e-12, atol=1e-14),
}


def sample(shape=(3, 4, 5), dtype=np.float32, seed=0, scale=3.0):
    """Normal values spread over both sides of every activation's kink, plus exact 0."""
    x = np.random.default_rng(seed).standard_normal(shape) * scale
    x.reshape(-1)[0] = 0.0
    return x.astype(dtype)


# (op_type, attributes, opset); every elementwise activation, with non-default attributes too.
ELEMENTWISE = [
    ("Relu", {}, 14),
    ("LeakyRelu", {}, 16),
    ("LeakyRelu", {"alpha": 0.3}, 16),
    ("Elu", {}, 22),
    ("Elu", {"alpha": 0.5}, 22),
    ("Selu", {}, 22),
    ("Selu", {"alpha": 2.0, "gamma": 3.0}, 22),
    ("Celu", {}, 22),
    ("Celu", {"alpha": 2.0}, 22),
    ("Sigmoid", {}, 13),
    ("HardSigmoid", {}, 22),
    ("HardSigmoid", {"alpha": 0.5, "beta": 0.6}, 22),
    ("HardSwish", {}, 22),
    ("Tanh", {}, 13),
    ("Erf", {}, 13),
    ("Softplus", {}, 22),
    ("Softsign", {}, 22),
    ("ThresholdedRelu", {}, 22),
    ("ThresholdedRelu", {"alpha": 2.0}, 22),
    ("Mish", {}, 22),
    ("Swish", {}, 24),
    ("Swish", {"alpha": 0.5}, 24),
    ("Shrink", {}, 9),
    ("Shrink", {"bias": 1.5, "lambd": 1.5}, 9),
    ("Sign", {}, 13),
    ("Gelu", {}, 20),
    ("Gelu", {"approximate": "tanh"}, 20),
]


#: Ops whose reference computes in float32 even for float64 input: Erf (``np.vectorize`` with
#: a float32 output type) and the function ops HardSwish and Gelu (float32 constants in their
#: function bodies). For them, float64 is checked at float32 tolerance here and against
#: ``math.erf`` and the defining formula below.
FLOAT32_ORACLE = {"Erf", "Gelu", "HardSwish"}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("op_type, attrs, opset", ELEMENTWISE, ids=lambda v: str(v))
def test_elementwise_activation_matches_reference(op_type, attrs, opset, dtype):
    tolerance = TOLERANCE[np.float32 if op_type in FLOAT32_ORACLE else dtype]
    assert_matches_reference(op_type, [sample(dtype=dtype)], opset=opset, **attrs, **tolerance)


def test_hard_swish_in_double_precision():
    x = sample(dtype=np.float64)
    (got,) = run_tinyinfer("HardSwish", [x], opset=22)
    np.testing.assert_allclose(got, x * np.clip(x / 6 + 0.5, 0, 1), rtol=1e-15, atol=0)


@pytest.mark.parametrize("op_type, attrs, opset", [e for e in ELEMENTWISE if e[0] in ("Relu", "Sigmoid", "Tanh", "Erf")])
def test_float16_keeps_its_dtype(op_type, attrs, opset):
    # float16 has an 11-bit significand: 1e-3 relative is two of its ulps.
    assert_matches_reference(op_type, [sample(dtype=np.float16)], opset=opset, rtol=2e-3, atol=1e-3, **attrs)


@pytest.mark.parametrize("dtype", [np.int8, np.int32, np.int64])
def test_relu_and_sign_on_integers(dtype):
    x = np.arange(-6, 6, dtype=dtype).reshape(3, 4)
    assert_matches_reference("Relu", [x], opset=14)
    assert_matches_reference("Sign", [x], opset=13)


@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_shrink_on_integers(dtype):
    x = np.arange(-5, 6, dtype=dtype)
    (got,) = run_tinyinfer("Shrink", [x], opset=9, bias=1.0, lambd=2.0)
    np.testing.assert_array_equal(got, np.where(x < -2, x + 1, np.where(x > 2, x - 1, 0)).astype(dtype))


def test_large_inputs_do_not_overflow():
    x = np.array([-1000.0, -100.0, 0.0, 100.0, 1000.0], dtype=np.float32)
    for op_type, want in [
        ("Sigmoid", [0.0, 0.0, 0.5, 1.0, 1.0]),
        ("Softplus", [0.0, 0.0, math.log(2.0), 100.0, 1000.0]),
        ("Mish", [0.0, 0.0, 0.0, 100.0, 1000.0]),
    ]:
        with np.errstate(over="raise", invalid="raise"):  # no overflow even internally
            (got,) = run_tinyinfer(op_type, [x], opset=22)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-30, err_msg=op_type)


# ---------------------------------------------------------------------------- erf
def test_erf_matches_math_erf_in_double_precision():
    # Cody's approximations are accurate to ~1e-17 relative; evaluating them in float64 adds
    # a few roundings. Over a dense grid through all three ranges the error stays <= 8 ulps.
    x = np.concatenate([np.linspace(-7.0, 7.0, 200_001), np.geomspace(1e-300, 1e-2, 1000)])
    want = np.array([math.erf(v) for v in x])
    ulps = np.abs(erf(x) - want) / np.spacing(np.abs(want))
    assert ulps.max() <= 8


def test_erf_float32_is_correctly_rounded_on_a_grid():
    # The float64 error (1e-16) is far below half a float32 ulp (3e-8 at 1), so rounding the
    # float64 result to float32 gives math.erf rounded to float32 (max error 0 on this grid,
    # which is far stricter than the 1e-7 the spec's float tests need).
    x = np.linspace(-5.0, 5.0, 100_001).astype(np.float32)
    want = np.array([math.erf(float(v)) for v in x]).astype(np.float32)
    (got,) = run_tinyinfer("Erf", [x], opset=13)
    assert np.abs(got.astype(np.float64) - want).max() <= 1e-7
    assert (got == want).mean() > 0.999


def test_erf_special_values():
    x = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-310, -30.0, 0.46875, 4.0, 6.0])
    got = erf(x)
    assert got[0] == 0.0 and got[1] == 0.0 and math.copysign(1.0, got[1]) == -1.0
    assert got[2] == 1.0 and got[3] == -1.0 and np.isnan(got[4])
    assert got[5] == pytest.approx(2 / math.sqrt(math.pi) * 1e-310, rel=1e-6)
    np.testing.assert_allclose(got[6:], [math.erf(v) for v in x[6:]], rtol=2e-16)


# ---------------------------------------------------------------------------- softmax family
@pytest.mark.parametrize("op_type", ["Softmax", "LogSoftmax", "Hardmax"])
@pytest.mark.parametrize("axis", [0, 1, 2, -1, -2])
def test_softmax_family_opset13_normalises_one_axis(op_type, axis):
    assert_matches_reference(op_type, [sample()], opset=13, axis=axis, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("op_type", ["Softmax", "LogSoftmax", "Hardmax"])
@pytest.mark.parametrize("axis", [None, 0, 1, 2, -1])
def test_softmax_family_before_opset13_normalises_the_trailing_block(op_type, axis):
    attrs = {} if axis is None else {"axis": axis}
    x = sample()
    (got,) = run_tinyinfer(op_type, [x], opset=11, **attrs)
    (want,) = run_onnxruntime(op_type, [x], opset=11, **attrs)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@given(
    shape=st.lists(st.integers(1, 4), min_size=1, max_size=4),
    axis_seed=st.integers(0, 100),
    seed=st.integers(0, 2**16),
)
@settings(max_examples=30, deadline=None)
def test_softmax_properties(shape, axis_seed, seed):
    x = sample(tuple(shape), np.float64, seed=seed, scale=10.0)
    axis = axis_seed % len(shape) - len(shape)  # negative and positive forms both appear
    (soft,) = run_tinyinfer("Softmax", [x], opset=13, axis=axis)
    (log_soft,) = run_tinyinfer("LogSoftmax", [x], opset=13, axis=axis)
    (hard,) = run_tinyinfer("Hardmax", [x], opset=13, axis=axis)
    assert np.all(soft >= 0)
    np.testing.assert_allclose(soft.sum(axis=axis), 1.0, rtol=1e-12)
    np.testing.assert_allclose(log_soft, np.log(soft), rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(hard.sum(axis=axis), 1.0)
    np.testing.assert_array_equal(np.argmax(hard, axis=axis), np.argmax(x, axis=axis))


def test_softmax_before_opset13_sums_to_one_over_the_flattened_block():
    x = sample((2, 3, 4), np.float64)
    (got,) = run_tinyinfer("Softmax", [x], opset=11, axis=1)
    np.testing.assert_allclose(got.sum(axis=(1, 2)), 1.0, rtol=1e-12)


def test_softmax_of_large_numbers_is_finite():
    x = np.array([[1000.0, 1001.0, 1002.0], [-1000.0, -1001.0, -1002.0]], dtype=np.float32)
    with np.errstate(over="raise", invalid="raise"):
        (soft,) = run_tinyinfer("Softmax", [x], opset=13)
        (log_soft,) = run_tinyinfer("LogSoftmax", [x], opset=13)
    assert np.all(np.isfinite(soft)) and np.all(np.isfinite(log_soft))
    np.testing.assert_allclose(soft[0], soft[1][::-1], rtol=1e-6)


def test_hardmax_picks_the_first_of_tied_maxima():
    x = np.array([[1.0, 3.0, 3.0, 0.0]], dtype=np.float32)
    (got,) = run_tinyinfer("Hardmax", [x], opset=13)
    np.testing.assert_array_equal(got, [[0.0, 1.0, 0.0, 0.0]])


@pytest.mark.parametrize("op_type", ["Softmax", "LogSoftmax", "Hardmax"])
def test_softmax_axis_out_of_range_names_the_node(op_type):
    with pytest.raises(ShapeInferenceError, match=rf"{op_type} '{op_type.lower()}_node'.*axis 2 is out of range"):
        run_tinyinfer(op_type, [sample((2, 3))], opset=13, axis=2)


def test_default_axis_depends_on_opset():
    x = sample((2, 3, 4), np.float64)
    (new,) = run_tinyinfer("Softmax", [x], opset=13)  # axis -1
    (old,) = run_tinyinfer("Softmax", [x], opset=11)  # axis 1, block (3, 4)
    np.testing.assert_allclose(new.sum(axis=-1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(old.sum(axis=(1, 2)), 1.0, rtol=1e-12)


# ---------------------------------------------------------------------------- Clip, PRelu, Gelu
@pytest.mark.parametrize("bounds", [(-1.0, 1.0), (None, 0.5), (-0.5, None), (None, None), (2.0, -2.0)])
@pytest.mark.parametrize("dtype", [np.float32, np.int8, np.int32, np.uint8])
def test_clip_with_bound_inputs(bounds, dtype):
    x = (sample(dtype=np.float64) * 3).astype(dtype)
    inputs = [x] + [None if b is None else np.array(b).astype(dtype) for b in bounds]
    while inputs[-1] is None:
        inputs.pop()
    assert_matches_reference("Clip", inputs, opset=13)


def test_clip_min_greater_than_max_gives_max_everywhere():
    x = sample()
    (got,) = run_tinyinfer("Clip", [x, np.float32(2.0), np.float32(-2.0)], opset=13)
    np.testing.assert_array_equal(got, np.full_like(x, -2.0))


@pytest.mark.parametrize("attrs", [{}, {"min": -1.0}, {"max": 0.5}, {"min": -0.5, "max": 0.5}])
def test_clip_before_opset11_reads_attributes(attrs):
    x = sample()
    (got,) = run_tinyinfer("Clip", [x], opset=6, **attrs)
    want = np.clip(x, attrs.get("min", -np.inf), attrs.get("max", np.inf))
    np.testing.assert_array_equal(got, want)


def test_clip_bound_that_is_not_a_scalar_is_rejected():
    with pytest.raises(ShapeInferenceError, match="scalars"):
        run_tinyinfer("Clip", [sample(), np.zeros(3, np.float32)], opset=13)


@pytest.mark.parametrize("slope_shape", [(1,), (5,), (4, 5), (4, 1), (3, 4, 5), (1, 1, 1)])
def test_prelu_broadcasts_slope_to_x(slope_shape):
    slope = sample(slope_shape, seed=1, scale=0.5)
    assert_matches_reference("PRelu", [sample(), slope], opset=16, rtol=0, atol=0)
    assert_matches_reference("PRelu", [sample(), Initializer(slope)], opset=16, rtol=0, atol=0)


@pytest.mark.parametrize("slope_shape", [(3,), (2, 3, 4, 5), (4, 3)])
def test_prelu_slope_that_does_not_broadcast_to_x_is_rejected(slope_shape):
    with pytest.raises(ShapeInferenceError, match="prelu_node"):
        run_tinyinfer("PRelu", [sample(), sample(slope_shape)], opset=16)


def test_gelu_rejects_unknown_approximation():
    with pytest.raises(InvalidAttributeError, match="approximate must be 'none' or 'tanh'"):
        run_tinyinfer("Gelu", [sample()], opset=20, approximate="fast")


def test_gelu_is_x_times_normal_cdf():
    x = np.linspace(-6, 6, 101)
    want = x * np.array([0.5 * (1 + math.erf(v / math.sqrt(2))) for v in x])
    (got,) = run_tinyinfer("Gelu", [x], opset=20)
    np.testing.assert_allclose(got, want, rtol=1e-14, atol=1e-16)


# ---------------------------------------------------------------------------- shape inference
@pytest.mark.parametrize("op_type, attrs, opset", [e for e in ELEMENTWISE if not e[1]])
def test_symbolic_dims_stay_symbolic(op_type, attrs, opset):
    (value,) = infer_outputs(op_type, [sample((2, 3))], opset=opset, shapes={0: ("N", 3)})
    assert value.shape == ("N", 3) and value.dtype == np.float32


def test_prelu_keeps_the_shape_of_x_with_symbolic_dims():
    (value,) = infer_outputs("PRelu", [sample((2, 3)), Initializer(sample((3,)))], opset=16, shapes={0: ("N", 3)})
    assert value.shape == ("N", 3)
