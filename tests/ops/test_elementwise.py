"""Elementwise arithmetic, comparison and logic ops (tinyinfer/ops/elementwise.py).

Oracles: ONNX's reference evaluator, Python integer arithmetic for the integer corner cases,
and NumPy's broadcasting rules for shapes. Tolerance: both sides call the same NumPy ufuncs,
so float results agree to an ulp: rtol 1e-6 in float32, exact for integers and booleans.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx_oracle import Initializer, assert_matches_reference, infer_outputs, run_tinyinfer

from tinyinfer.errors import ShapeInferenceError

FLOAT = dict(rtol=1e-6, atol=1e-7)


def values(shape, dtype, seed=0, low=-9, high=9):
    rng = np.random.default_rng(seed)
    if np.issubdtype(dtype, np.integer):
        low = max(low, np.iinfo(dtype).min)
        return rng.integers(low, high, shape, endpoint=True).astype(dtype)
    return rng.uniform(low, high, shape).astype(dtype)


BROADCAST_PAIRS = [((3, 4), (3, 4)), ((2, 3, 4), (4,)), ((3, 1), (1, 4)), ((), (2, 3)), ((2, 1, 4), (3, 1))]


@pytest.mark.parametrize("shapes", BROADCAST_PAIRS, ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32, np.int64, np.uint8])
@pytest.mark.parametrize("op_type", ["Add", "Sub", "Mul"])
def test_arithmetic_matches_reference(op_type, dtype, shapes):
    a, b = values(shapes[0], dtype, 1), values(shapes[1], dtype, 2)
    assert_matches_reference(op_type, [a, b], opset=14, **FLOAT)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_float_division_matches_reference(dtype):
    a, b = values((3, 4), dtype, 1), values((4,), dtype, 2, low=1, high=5)
    assert_matches_reference("Div", [a, b], opset=14, **FLOAT)


@pytest.mark.parametrize("dtype", [np.int8, np.int32, np.int64, np.uint8, np.uint32])
def test_integer_division_truncates_toward_zero(dtype):
    span = range(-7, 8) if np.issubdtype(dtype, np.signedinteger) else range(0, 15)
    pairs = [(p, q) for p, q in itertools.product(span, span) if q != 0]
    a, b = np.array([p for p, _ in pairs], dtype), np.array([q for _, q in pairs], dtype)
    (got,) = run_tinyinfer("Div", [a, b], opset=14)
    np.testing.assert_array_equal(got, np.array([math.trunc(p / q) for p, q in pairs], dtype))
    assert got.dtype == dtype


@pytest.mark.parametrize(
    "base_dtype, exponent_dtype",
    [(np.float32, np.float32), (np.float32, np.int64), (np.float64, np.int32), (np.int32, np.int32), (np.int64, np.int64)],
)
def test_pow_matches_reference(base_dtype, exponent_dtype):
    base = values((3, 4), base_dtype, 1, low=1, high=4)
    exponent = values((4,), exponent_dtype, 2, low=0, high=3)
    (got,) = assert_matches_reference("Pow", [base, exponent], opset=15, **FLOAT)
    assert got.dtype == base_dtype


@pytest.mark.parametrize(
    "op_type, low, high",
    [("Sqrt", 0, 9), ("Exp", -5, 5), ("Log", 0.1, 9), ("Neg", -9, 9), ("Abs", -9, 9),
     ("Reciprocal", 0.5, 9), ("Floor", -9, 9), ("Ceil", -9, 9)],
)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_unary_math_matches_reference(op_type, low, high, dtype):
    assert_matches_reference(op_type, [values((3, 4), dtype, low=low, high=high)], opset=13, **FLOAT)


@pytest.mark.parametrize("dtype", [np.int8, np.int32, np.int64])
def test_neg_and_abs_on_integers(dtype):
    x = values((3, 4), dtype)
    assert_matches_reference("Neg", [x], opset=13)
    assert_matches_reference("Abs", [x], opset=13)


@pytest.mark.parametrize("op_type", ["Equal", "Less", "Greater"])
@pytest.mark.parametrize("dtype", [np.float32, np.int64, np.uint8])
def test_comparisons_return_bool(op_type, dtype):
    a, b = values((2, 3, 4), dtype, 1, low=0, high=3), values((3, 1), dtype, 2, low=0, high=3)
    (got,) = assert_matches_reference(op_type, [a, b], opset=13)
    assert got.dtype == np.bool_


@pytest.mark.parametrize("op_type", ["And", "Or"])
def test_logic(op_type):
    a = np.array([[False, False], [True, True]])
    b = np.array([False, True])
    assert_matches_reference(op_type, [a, b], opset=7)
    (negated,) = assert_matches_reference("Not", [a], opset=1)
    np.testing.assert_array_equal(negated, ~a)


@pytest.mark.parametrize("op_type", ["Sum", "Max", "Min", "Mean"])
@pytest.mark.parametrize("shapes", [[(3, 4)], [(3, 4), (4,)], [(2, 1, 4), (3, 1), (1,)]], ids=str)
def test_variadic_ops_broadcast_all_inputs(op_type, shapes):
    inputs = [values(shape, np.float32, seed) for seed, shape in enumerate(shapes)]
    if op_type == "Mean":
        # onnx.reference's Mean adds in place into the first input, which fails when a later
        # input widens the shape; NumPy's mean of the broadcast stack is the oracle.
        (got,) = run_tinyinfer(op_type, inputs, opset=13)
        np.testing.assert_allclose(got, np.mean(np.broadcast_arrays(*inputs), axis=0), **FLOAT)
    else:
        assert_matches_reference(op_type, inputs, opset=13, **FLOAT)


def test_variadic_max_on_integers():
    assert_matches_reference("Max", [values((3,), np.int32, 1), values((2, 3), np.int32, 2)], opset=13)


def test_where_broadcasts_condition_and_branches():
    condition = np.array([[True], [False]])
    x, y = values((2, 3), np.float32, 1), values((3,), np.float32, 2)
    (got,) = assert_matches_reference("Where", [condition, x, y], opset=16)
    assert got.shape == (2, 3)


# ---------------------------------------------------------------------------- shapes
@given(
    shape_a=st.lists(st.sampled_from([1, 2, 3]), min_size=0, max_size=4),
    shape_b=st.lists(st.sampled_from([1, 2, 3]), min_size=0, max_size=4),
)
@settings(max_examples=50, deadline=None)
def test_broadcast_shapes_follow_numpy(shape_a, shape_b):
    a, b = np.ones(shape_a, np.float32), np.ones(shape_b, np.float32)
    try:
        want = np.broadcast_shapes(tuple(shape_a), tuple(shape_b))
    except ValueError:
        with pytest.raises(ShapeInferenceError, match=r"Add 'add_node'.*cannot be broadcast together"):
            run_tinyinfer("Add", [a, b], opset=14)
        return
    (value,) = infer_outputs("Add", [a, b], opset=14)
    assert value.shape == want
    (got,) = run_tinyinfer("Add", [a, b], opset=14)
    assert got.shape == want


@pytest.mark.parametrize(
    "shape_a, shape_b, want",
    [
        (("N", 3), ("N", 3), ("N", 3)),  # the same symbol stays
        (("N", 1), (1, "M"), ("N", "M")),  # a known 1 gives way to a symbol
        (("N", 3), (4, 3), (4, 3)),  # a symbol meeting a known dim > 1 must be that dim
        (("N", 3), ("M", 3), (None, 3)),  # two different symbols: unknown
        ((3,), ("B", "T", 3), ("B", "T", 3)),  # rank grows on the left
        (("N", None), ("N", 5), ("N", 5)),
    ],
)
def test_symbolic_broadcasting(shape_a, shape_b, want):
    a = np.ones([d if isinstance(d, int) else 2 for d in shape_a], np.float32)
    b = np.ones([d if isinstance(d, int) else 2 for d in shape_b], np.float32)
    for op_type, dtype in [("Mul", np.float32), ("Less", np.bool_)]:
        (value,) = infer_outputs(op_type, [a, b], opset=14, shapes={0: shape_a, 1: shape_b})
        assert value.shape == want and value.dtype == dtype


def test_incompatible_static_shapes_name_the_node():
    with pytest.raises(ShapeInferenceError, match=r"Mul 'mul_node'.*\[\[2, 3\], \[4\]\] cannot be broadcast"):
        infer_outputs("Mul", [np.ones((2, 3), np.float32), Initializer(np.ones(4, np.float32))], opset=14)


def test_constant_inputs_are_folded_during_inference():
    a, b = Initializer(np.array([1.0, 2.0], np.float32)), Initializer(np.array([3.0, 4.0], np.float32))
    (value,) = infer_outputs("Add", [a, b], opset=14)
    np.testing.assert_array_equal(value.const, [4.0, 6.0])


def test_elementwise_ops_name_the_module_that_defines_them():
    """Ops made by base.elementwise() report their defining module, not ops.base."""
    from tinyinfer.ops.base import OPS

    assert type(OPS[("", "Abs")]).__module__ == "tinyinfer.ops.elementwise"
    assert type(OPS[("", "Abs")]).__name__ == "Abs"
