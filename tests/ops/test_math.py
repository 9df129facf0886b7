"""Extra elementwise math (tinyinfer/ops/math.py) against the reference evaluator, Python's own
arithmetic (``%``, ``math.fmod``, ``<<``, ``>>``) and naive loops.

Tolerance for the transcendental functions: NumPy and the reference call the same libm-like
ufuncs, so results agree to an ulp or two: rtol 1e-6 in float32, 1e-14 in float64.
Everything integer, boolean or rounding-based is compared exactly.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx_oracle import Initializer, assert_matches_reference, infer_outputs, run_tinyinfer

import tinyinfer.ops.math  # noqa: F401  (registers the ops until ops/__init__ imports the module)
from tinyinfer.errors import InvalidAttributeError, ShapeInferenceError

TOLERANCE = {np.float32: dict(rtol=1e-6, atol=1e-7), np.float64: dict(rtol=1e-14, atol=1e-15)}


def uniform(low, high, shape=(3, 4), dtype=np.float32, seed=0):
    return np.random.default_rng(seed).uniform(low, high, shape).astype(dtype)


# (op_type, opset, input range): ranges inside each function's domain.
TRIGONOMETRY = [
    ("Sin", 22, (-6, 6)), ("Cos", 22, (-6, 6)), ("Tan", 22, (-1.5, 1.5)),
    ("Asin", 22, (-1, 1)), ("Acos", 22, (-1, 1)), ("Atan", 22, (-10, 10)),
    ("Sinh", 22, (-5, 5)), ("Cosh", 22, (-5, 5)), ("Asinh", 22, (-10, 10)),
    ("Acosh", 22, (1, 10)), ("Atanh", 22, (-0.99, 0.99)),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("op_type, opset, bounds", TRIGONOMETRY, ids=[t[0] for t in TRIGONOMETRY])
def test_trigonometry_matches_reference(op_type, opset, bounds, dtype):
    assert_matches_reference(op_type, [uniform(*bounds, dtype=dtype)], opset=opset, **TOLERANCE[dtype])


@pytest.mark.parametrize("op_type, opset, bounds", TRIGONOMETRY[:3], ids=[t[0] for t in TRIGONOMETRY[:3]])
def test_trigonometry_keeps_float16(op_type, opset, bounds):
    (got,) = run_tinyinfer(op_type, [uniform(*bounds, dtype=np.float16)], opset=opset)
    assert got.dtype == np.float16


# ---------------------------------------------------------------------------- Mod
INTEGER_TYPES = [np.int8, np.int32, np.int64, np.uint8, np.uint64]


@pytest.mark.parametrize("fmod", [0, 1])
@pytest.mark.parametrize("dtype", INTEGER_TYPES)
def test_integer_mod_follows_python_or_c(dtype, fmod):
    signed = np.issubdtype(dtype, np.signedinteger)
    values = list(range(-7, 8)) if signed else list(range(0, 15))
    pairs = [(a, b) for a, b in itertools.product(values, values) if b != 0]
    a = np.array([p[0] for p in pairs], dtype)
    b = np.array([p[1] for p in pairs], dtype)
    (got,) = run_tinyinfer("Mod", [a, b], opset=13, fmod=fmod)
    # fmod=0: the sign of the divisor, Python's %; fmod=1: the sign of the dividend, C's fmod.
    want = [int(math.fmod(x, y)) if fmod else x % y for x, y in pairs]
    np.testing.assert_array_equal(got, np.array(want, dtype))
    assert got.dtype == dtype


@pytest.mark.parametrize("fmod", [0, 1])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_float_mod(dtype, fmod):
    a, b = uniform(-10, 10, (50,), dtype, seed=1), uniform(-4, 4, (50,), dtype, seed=2)
    (got,) = run_tinyinfer("Mod", [a, b], opset=28, fmod=fmod)
    # Python's float % is a - floor(a / b) * b computed exactly; math.fmod likewise for trunc.
    want = [math.fmod(x, y) if fmod else x % y for x, y in zip(a.tolist(), b.tolist())]
    np.testing.assert_allclose(got, np.array(want, dtype), rtol=0, atol=0)


def test_float_mod_special_cases_of_the_spec():
    a = np.array([0.0, -0.0, np.inf, 5.0, 5.0, -5.0, np.nan, 3.0], np.float32)
    b = np.array([2.0, 2.0, 2.0, 0.0, np.inf, np.inf, 1.0, np.nan], np.float32)
    (got,) = run_tinyinfer("Mod", [a, b], opset=28)
    np.testing.assert_array_equal(got, [0.0, 0.0, np.nan, np.nan, 5.0, np.inf, np.nan, np.nan])
    (got,) = run_tinyinfer("Mod", [a, b], opset=28, fmod=1)
    np.testing.assert_array_equal(got, [0.0, -0.0, np.nan, np.nan, 5.0, -5.0, np.nan, np.nan])
    (signed_zero,) = run_tinyinfer("Mod", [np.array([0.0], np.float32), np.array([-2.0], np.float32)], opset=28)
    assert math.copysign(1.0, signed_zero[0]) == -1.0  # +-0 % y takes the sign of y


def test_mod_broadcasts():
    assert_matches_reference("Mod", [np.arange(12, dtype=np.int32).reshape(3, 4) - 6, np.array([3, -3, 5, 7], np.int32)], opset=13)


# ---------------------------------------------------------------------------- comparison, logic, rounding
@pytest.mark.parametrize("op_type", ["GreaterOrEqual", "LessOrEqual"])
@pytest.mark.parametrize("dtype", [np.float32, np.int64, np.uint8])
def test_comparisons_broadcast_and_return_bool(op_type, dtype):
    a = np.random.default_rng(3).integers(0, 4, (2, 3, 4)).astype(dtype)
    b = np.random.default_rng(4).integers(0, 4, (3, 1)).astype(dtype)
    (got,) = assert_matches_reference(op_type, [a, b], opset=16)
    assert got.dtype == np.bool_


def test_xor_truth_table_and_broadcast():
    a = np.array([[False, False], [True, True]])
    b = np.array([False, True])
    (got,) = assert_matches_reference("Xor", [a, b], opset=7)
    np.testing.assert_array_equal(got, [[False, True], [True, False]])


def test_round_halves_to_even():
    x = np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 2.4, 2.6, -2.6, 0.0], np.float32)
    (got,) = run_tinyinfer("Round", [x], opset=22)
    np.testing.assert_array_equal(got, [0.0, 2.0, 2.0, -0.0, -2.0, -2.0, 2.0, 3.0, -3.0, 0.0])
    assert_matches_reference("Round", [uniform(-5, 5, dtype=np.float64)], opset=22)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_isnan_and_isinf(dtype):
    x = np.array([1.0, np.nan, np.inf, -np.inf, 0.0, -3.0], dtype)
    assert run_tinyinfer("IsNaN", [x], opset=20)[0].tolist() == [False, True, False, False, False, False]
    flags = {(1, 1): [0, 0, 1, 1, 0, 0], (1, 0): [0, 0, 0, 1, 0, 0], (0, 1): [0, 0, 1, 0, 0, 0], (0, 0): [0] * 6}
    for (negative, positive), want in flags.items():
        (got,) = run_tinyinfer("IsInf", [x], opset=20, detect_negative=negative, detect_positive=positive)
        assert got.dtype == np.bool_
        np.testing.assert_array_equal(got, np.array(want, bool), err_msg=str((negative, positive)))


# ---------------------------------------------------------------------------- bits
def python_shift(x: int, y: int, bits: int, signed: bool, direction: str) -> int:
    """BitShift-28 by the spec's words, on Python's unbounded integers."""
    if not 0 <= y < bits:
        return -1 if direction == "RIGHT" and x < 0 else 0
    if direction == "RIGHT":
        return x >> y  # arithmetic for negative x, as the spec asks for signed types
    wrapped = (x << y) % (1 << bits)  # bits past the top are discarded
    return wrapped - (1 << bits) if signed and wrapped >= 1 << (bits - 1) else wrapped


@pytest.mark.parametrize("direction", ["LEFT", "RIGHT"])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint64, np.int8, np.int32, np.int64])
def test_bit_shift_follows_the_spec(dtype, direction):
    info = np.iinfo(dtype)
    values = [info.min, info.min + 1, -5, -1, 0, 1, 5, 77, info.max] if info.min < 0 else [0, 1, 5, 77, info.max]
    shifts = [-1, 0, 1, 3, info.bits - 1, info.bits, info.bits + 4] if info.min < 0 else [0, 1, 3, info.bits - 1]
    pairs = list(itertools.product(values, shifts))
    x = np.array([p[0] for p in pairs], dtype)
    y = np.array([p[1] for p in pairs], dtype)
    (got,) = run_tinyinfer("BitShift", [x, y], opset=28, direction=direction)
    want = [python_shift(int(a), int(b), info.bits, info.min < 0, direction) for a, b in pairs]
    np.testing.assert_array_equal(got, np.array(want, dtype))
    assert got.dtype == dtype


def test_bit_shift_direction_is_checked():
    x = np.array([1, 2], np.uint8)
    with pytest.raises(InvalidAttributeError, match="direction must be 'LEFT' or 'RIGHT'"):
        run_tinyinfer("BitShift", [x, x], opset=11, direction="UP")
    with pytest.raises(InvalidAttributeError, match="required attribute 'direction'"):
        run_tinyinfer("BitShift", [x, x], opset=11)


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int64, np.uint32])
def test_bitwise_ops(dtype):
    info = np.iinfo(dtype)
    a = np.random.default_rng(5).integers(info.min, info.max, (3, 4), dtype=dtype, endpoint=True)
    b = np.random.default_rng(6).integers(info.min, info.max, (4,), dtype=dtype, endpoint=True)
    for op_type, python_op in [("BitwiseAnd", int.__and__), ("BitwiseOr", int.__or__), ("BitwiseXor", int.__xor__)]:
        (got,) = run_tinyinfer(op_type, [a, b], opset=18)
        want = [[python_op(int(p), int(q)) for p, q in zip(row, b)] for row in a]
        np.testing.assert_array_equal(got, np.array(want).astype(dtype), err_msg=op_type)
    (inverted,) = run_tinyinfer("BitwiseNot", [a], opset=18)
    np.testing.assert_array_equal(inverted, np.array([[~int(v) for v in row] for row in a]).astype(dtype))


# ---------------------------------------------------------------------------- CumSum
def naive_cumsum(x: np.ndarray, axis: int, exclusive: bool, reverse: bool) -> np.ndarray:
    """out[..., i, ...] = sum of x[..., j, ...] over j <= i (j < i if exclusive; >= / > if reverse)."""
    moved = np.moveaxis(x, axis, 0)
    result = np.zeros_like(moved)
    n = moved.shape[0]
    for i in range(n):
        picked = [j for j in range(n) if (j > i if reverse else j < i) or (j == i and not exclusive)]
        for j in picked:
            result[i] += moved[j]
    return np.moveaxis(result, 0, axis)


@pytest.mark.parametrize("exclusive, reverse", list(itertools.product([0, 1], [0, 1])))
@pytest.mark.parametrize("axis", [0, 1, 2, -1])
@pytest.mark.parametrize("dtype", [np.float64, np.int32])
def test_cumsum_matches_naive_loop(axis, exclusive, reverse, dtype):
    x = np.random.default_rng(7).integers(-5, 5, (2, 3, 4)).astype(dtype)
    for axis_input in (np.array(axis, np.int64), Initializer(np.array([axis], np.int32))):
        (got,) = run_tinyinfer("CumSum", [x, axis_input], opset=14, exclusive=exclusive, reverse=reverse)
        np.testing.assert_array_equal(got, naive_cumsum(x, axis, exclusive, reverse))
        assert got.dtype == dtype


def test_cumsum_matches_reference():
    assert_matches_reference("CumSum", [uniform(-1, 1, (3, 5)), np.array(1)], opset=14, exclusive=1, reverse=1, rtol=1e-6)


def test_cumsum_axis_out_of_range_names_the_node():
    with pytest.raises(ShapeInferenceError, match="cumsum_node.*out of range"):
        run_tinyinfer("CumSum", [uniform(-1, 1), Initializer(np.array(2))], opset=14)


# ---------------------------------------------------------------------------- Trilu
@pytest.mark.parametrize("upper", [0, 1])
@pytest.mark.parametrize("k", [None, 0, 1, -1, 3, -5])
@pytest.mark.parametrize("shape", [(4, 5), (5, 4), (2, 3, 3), (1, 4)])
def test_trilu_matches_reference(shape, k, upper):
    x = np.random.default_rng(8).integers(1, 9, shape).astype(np.int64)
    inputs = [x] if k is None else [x, np.array(k, np.int64)]
    (got,) = assert_matches_reference("Trilu", inputs, opset=14, upper=upper)
    rows, cols = np.indices(shape[-2:])
    keep = (cols - rows >= (k or 0)) if upper else (cols - rows <= (k or 0))
    np.testing.assert_array_equal(got, np.where(keep, x, 0))


def test_trilu_needs_a_matrix():
    with pytest.raises(ShapeInferenceError, match="trilu_node.*rank >= 2"):
        run_tinyinfer("Trilu", [np.ones(3, np.float32)], opset=14)


# ---------------------------------------------------------------------------- broadcasting shapes
@given(
    shape_a=st.lists(st.sampled_from([1, 2, 3]), min_size=0, max_size=3),
    shape_b=st.lists(st.sampled_from([1, 2, 3]), min_size=0, max_size=3),
)
@settings(max_examples=40, deadline=None)
def test_binary_ops_broadcast_like_numpy(shape_a, shape_b):
    a, b = np.ones(shape_a, np.int32), np.full(shape_b, 2, np.int32)
    try:
        want = np.broadcast_shapes(tuple(shape_a), tuple(shape_b))
    except ValueError:
        with pytest.raises(ShapeInferenceError, match="cannot be broadcast"):
            run_tinyinfer("Mod", [a, b], opset=13)
        return
    for op_type in ("Mod", "BitwiseAnd", "GreaterOrEqual"):
        (got,) = run_tinyinfer(op_type, [a, b], opset=18)
        assert got.shape == want


def test_symbolic_dims_broadcast():
    a, b = np.ones((2, 3), np.int32), np.ones((2, 1), np.int32)
    (value,) = infer_outputs("Mod", [a, b], opset=13, shapes={0: ("N", 3), 1: ("N", 1)})
    assert value.shape == ("N", 3) and value.dtype == np.int32
    (value,) = infer_outputs("LessOrEqual", [a, b], opset=16, shapes={0: ("N", 1), 1: (1, "M")})
    assert value.shape == ("N", "M") and value.dtype == np.bool_
    (value,) = infer_outputs("Sin", [a.astype(np.float32)], opset=7, shapes={0: ("N", None)})
    assert value.shape == ("N", None)
