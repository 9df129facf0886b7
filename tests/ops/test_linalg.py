"""Gemm, MatMul, MatMulInteger and Einsum against their definitions and ONNX Runtime.

Oracles: Gemm's formula with explicit transposes in float64; ONNX Runtime for MatMul's
broadcasting and 1-D promotion rules and for Einsum; a plain integer (int64) product for
MatMulInteger, which must match exactly.

Tolerance: float32 dot products of length <= 7 of values ~1 round to a few ulps of ~3, so
``rtol=1e-5, atol=1e-5``; float16 results are rounded to 11 bits (``rtol=atol=1e-2`` for
sums reaching ~5).
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx_oracle import Initializer, infer_outputs, run_onnxruntime, run_tinyinfer

from tinyinfer.errors import InvalidAttributeError, ShapeInferenceError

FLOAT32 = dict(rtol=1e-5, atol=1e-5)


def random(shape, dtype=np.float32, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


# ---------------------------------------------------------------------------- Gemm
@pytest.mark.parametrize("c_shape", [None, (), (1,), (5,), (1, 5), (3, 1), (3, 5)], ids=str)
@pytest.mark.parametrize("trans_a, trans_b", [(0, 0), (1, 0), (0, 1), (1, 1)])
def test_gemm_formula(trans_a, trans_b, c_shape):
    a = random((4, 3) if trans_a else (3, 4), seed=1)
    b = random((5, 4) if trans_b else (4, 5), seed=2)
    c = None if c_shape is None else random(c_shape, seed=3)
    attrs = dict(alpha=0.5, beta=-2.0, transA=trans_a, transB=trans_b)
    (y,) = run_tinyinfer("Gemm", [a, Initializer(b)] + ([] if c is None else [c]), opset=13, **attrs)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    want = 0.5 * ((a64.T if trans_a else a64) @ (b64.T if trans_b else b64))
    if c is not None:
        want = want + -2.0 * c
    assert y.dtype == np.float32 and y.shape == (3, 5)
    np.testing.assert_allclose(y, want, **FLOAT32)


@pytest.mark.parametrize("dtype", [np.float16, np.float64, np.int32, np.int64])
def test_gemm_dtypes(dtype):
    a = (random((3, 4), seed=1) * 3).astype(dtype)
    b = (random((4, 2), seed=2) * 3).astype(dtype)
    c = (random((2,), seed=3) * 3).astype(dtype)
    (y,) = run_tinyinfer("Gemm", [a, b, c], opset=13)
    assert y.dtype == dtype
    want = a.astype(np.float64) @ b.astype(np.float64) + c
    if np.issubdtype(dtype, np.integer):
        np.testing.assert_array_equal(y, want.astype(dtype))
    else:
        tolerance = dict(rtol=1e-2, atol=1e-1) if dtype == np.float16 else dict(rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(y.astype(np.float64), want, **tolerance)


def test_gemm_opset_6_accepts_broadcast_flag():
    a, b, c = random((2, 3)), random((3, 4), seed=1), random((4,), seed=2)
    (y,) = run_tinyinfer("Gemm", [a, b, c], opset=6, broadcast=1)
    np.testing.assert_allclose(y, a.astype(np.float64) @ b + c, **FLOAT32)


@pytest.mark.parametrize(
    "a_shape, b_shape, c_shape, attrs, message",
    [((3, 4), (5, 6), None, {}, "inner sizes differ"),
     ((3, 4), (4, 5), (2, 5), {}, r"C of shape \[2, 5\] does not broadcast"),
     ((3, 4, 1), (4, 5), None, {}, "A must be a matrix"),
     ((4, 3), (4, 5), None, dict(transA=0), "inner sizes differ")],
    ids=["inner", "c_shape", "rank", "needs_transA"],
)
def test_gemm_bad_shapes(a_shape, b_shape, c_shape, attrs, message):
    inputs = [random(a_shape), random(b_shape)] + ([random(c_shape)] if c_shape else [])
    with pytest.raises(ShapeInferenceError, match=rf"gemm_node.*{message}"):
        run_tinyinfer("Gemm", inputs, opset=13, **attrs)


# ---------------------------------------------------------------------------- MatMul
MATMUL_SHAPES = [
    ((3, 4), (4, 5)), ((2, 3, 4), (2, 4, 5)), ((2, 3, 4), (4, 5)), ((4,), (4, 5)), ((3, 4), (4,)),
    ((4,), (4,)), ((4,), (2, 4, 5)), ((2, 1, 3, 4), (1, 5, 4, 2)), ((2, 3, 4), (4,)), ((1, 3, 4), (6, 4, 2)),
]


@pytest.mark.parametrize("a_shape, b_shape", MATMUL_SHAPES, ids=str)
def test_matmul_matches_onnxruntime(a_shape, b_shape):
    a, b = random(a_shape, seed=1), random(b_shape, seed=2)
    (y,) = run_tinyinfer("MatMul", [a, b], opset=13)
    (want,) = run_onnxruntime("MatMul", [a, b], opset=13)
    assert y.dtype == np.float32 and y.shape == want.shape
    np.testing.assert_allclose(y, want, **FLOAT32)


@pytest.mark.parametrize("dtype", [np.float16, np.float64, np.int32, np.int64, np.uint32])
def test_matmul_dtypes(dtype):
    a = (np.abs(random((2, 3, 4), seed=1)) * 3).astype(dtype)
    b = (np.abs(random((4, 2), seed=2)) * 3).astype(dtype)
    (y,) = run_tinyinfer("MatMul", [a, b], opset=13)
    assert y.dtype == dtype
    want = a.astype(np.float64) @ b.astype(np.float64)
    if np.issubdtype(dtype, np.integer):
        np.testing.assert_array_equal(y, want.astype(dtype))
    else:
        tolerance = dict(rtol=1e-2, atol=1e-1) if dtype == np.float16 else dict(rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(y.astype(np.float64), want, **tolerance)


def test_matmul_infers_symbolic_batch():
    a, b = random((2, 3, 4)), random((4, 5))
    (y,) = infer_outputs("MatMul", [a, Initializer(b)], opset=13, shapes={0: ["B", "T", 4]})
    assert y.shape == ("B", "T", 5)
    (y,) = infer_outputs("MatMul", [a, random((4,))], opset=13, shapes={0: ["B", "T", 4]})
    assert y.shape == ("B", "T")


@pytest.mark.parametrize("a_shape, b_shape, message",
                         [((3, 4), (5, 6), "inner sizes 4 and 5 differ"),
                          ((2, 3, 4), (3, 4, 5), "cannot be broadcast"),
                          ((), (3,), "rank >= 1")], ids=["inner", "batch", "scalar"])
def test_matmul_bad_shapes(a_shape, b_shape, message):
    with pytest.raises(ShapeInferenceError, match=rf"matmul_node.*{message}"):
        run_tinyinfer("MatMul", [random(a_shape), random(b_shape)], opset=13)


# ---------------------------------------------------------------------------- MatMulInteger
@pytest.mark.parametrize("a_type, b_type", [(np.uint8, np.uint8), (np.int8, np.uint8), (np.uint8, np.int8),
                                            (np.int8, np.int8)])
@pytest.mark.parametrize("zero_points", ["none", "scalar", "per_row_and_column"])
def test_matmul_integer_is_exact(a_type, b_type, zero_points):
    rng = np.random.default_rng(0)
    a = rng.integers(np.iinfo(a_type).min, np.iinfo(a_type).max, (2, 3, 8)).astype(a_type)
    b = rng.integers(np.iinfo(b_type).min, np.iinfo(b_type).max, (8, 5)).astype(b_type)
    if zero_points == "none":
        inputs, a_zero, b_zero = [a, b], 0, 0
    elif zero_points == "scalar":
        a_zero, b_zero = np.array(3, a_type), np.array(-2 if b_type == np.int8 else 7, b_type)
        inputs = [a, b, a_zero, b_zero]
    else:
        a_zero = rng.integers(0, 10, (3,)).astype(a_type)
        b_zero = rng.integers(0, 10, (5,)).astype(b_type)
        inputs = [a, b, a_zero, b_zero]
    (y,) = run_tinyinfer("MatMulInteger", inputs, opset=10)
    a_zero = np.asarray(a_zero, np.int64)
    a_zero = a_zero.reshape(-1, 1) if a_zero.ndim == 1 else a_zero
    want = (a.astype(np.int64) - a_zero) @ (b.astype(np.int64) - np.asarray(b_zero, np.int64))
    assert y.dtype == np.int32
    np.testing.assert_array_equal(y, want)


def test_matmul_integer_rejects_float_inputs():
    with pytest.raises(ShapeInferenceError, match="A must be int8 or uint8"):
        infer_outputs("MatMulInteger", [random((2, 3)), np.zeros((3, 2), np.uint8)], opset=10)


# ---------------------------------------------------------------------------- Einsum
EQUATIONS = [
    ("ij,jk->ik", [(3, 4), (4, 5)]), ("bij,bjk->bik", [(2, 3, 4), (2, 4, 5)]), ("ij->ji", [(3, 4)]),
    ("ii->i", [(4, 4)]), ("i,i", [(5,), (5,)]), ("...ij,...jk", [(2, 3, 4), (1, 4, 5)]), ("ij", [(3, 4)]),
    ("ba", [(3, 4)]), ("bhid,bhjd->bhij", [(1, 2, 3, 4), (1, 2, 5, 4)]), ("i,j->ij", [(3,), (4,)]),
    ("...ii->...i", [(2, 3, 3)]), ("ijk->", [(2, 3, 4)]),
]


@pytest.mark.parametrize("equation, shapes", EQUATIONS, ids=[e for e, _ in EQUATIONS])
def test_einsum_matches_onnxruntime(equation, shapes):
    inputs = [random(shape, seed=i) for i, shape in enumerate(shapes)]
    (y,) = run_tinyinfer("Einsum", inputs, opset=12, equation=equation)
    (want,) = run_onnxruntime("Einsum", inputs, opset=12, equation=equation)
    assert y.dtype == np.float32 and y.shape == want.shape
    np.testing.assert_allclose(y, want, **FLOAT32)
    (value,) = infer_outputs("Einsum", inputs, opset=12, equation=equation)
    assert value.shape == want.shape


def test_einsum_bad_equations():
    with pytest.raises(InvalidAttributeError, match="einsum_node.*not an einsum equation"):
        run_tinyinfer("Einsum", [random((2, 2))], opset=12, equation="ij->j->i")
    with pytest.raises(ShapeInferenceError, match="names 2 operands but the node has 1 inputs"):
        run_tinyinfer("Einsum", [random((2, 2))], opset=12, equation="ij,jk->ik")
    with pytest.raises(ShapeInferenceError, match="label 'j' stands for sizes 3 and 4"):
        run_tinyinfer("Einsum", [random((2, 3)), random((4, 5))], opset=12, equation="ij,jk->ik")
