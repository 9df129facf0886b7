"""XNOR-popcount GEMM and convolution (tinyinfer/kernels/binary.py).

Oracles: float matrices of ±1 multiplied with ``@`` (exact in float32 for K < 2^24) and ONNX's
reference Conv (onnx.reference) on sign-binarized inputs padded with +1. Every version must agree exactly:
the products are integers.
"""

from __future__ import annotations

import numpy as np
import pytest

from tinyinfer.kernels.binary import (benchmark_xnor_gemm, binary_conv2d, binary_matmul_reference, pack_signs,
                                      unpack_signs, xnor_gemm, xnor_gemm_numpy)


def conv_reference(x: np.ndarray, w: np.ndarray, strides) -> np.ndarray:
    from onnx import TensorProto, helper
    from onnx.reference import ReferenceEvaluator

    node = helper.make_node("Conv", ["x", "w"], ["y"], strides=list(strides))
    graph = helper.make_graph([node], "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None),
                                               helper.make_tensor_value_info("w", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return ReferenceEvaluator(model).run(None, {"x": x, "w": w})[0]

RNG = np.random.default_rng(0)


@pytest.mark.parametrize("k", [1, 63, 64, 65, 130, 512])
def test_pack_and_unpack_round_trip_signs(k):
    x = RNG.standard_normal((3, k)).astype(np.float32)
    x[0, 0] = 0.0  # sign(0) = +1
    packed = pack_signs(x)
    assert packed.dtype == np.uint64 and packed.shape == (3, -(-k // 64))
    np.testing.assert_array_equal(unpack_signs(packed, k), np.where(x >= 0, 1.0, -1.0))


@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (5, 7, 63), (9, 4, 64), (13, 11, 200), (32, 33, 1000)])
def test_xnor_gemm_equals_the_float_product_of_signs(m, n, k):
    a, b = RNG.standard_normal((m, k)), RNG.standard_normal((n, k))
    expected = binary_matmul_reference(a, b)
    a_bits, b_bits = pack_signs(a), pack_signs(b)
    np.testing.assert_array_equal(xnor_gemm_numpy(a_bits, b_bits, k), expected.astype(np.int32))
    np.testing.assert_array_equal(xnor_gemm(a_bits, b_bits, k), expected.astype(np.float32))


def test_xnor_gemm_scales_rows_and_writes_into_out():
    a, b = RNG.standard_normal((6, 100)), RNG.standard_normal((5, 100))
    alpha = RNG.uniform(0.1, 2.0, 6).astype(np.float32)
    out = np.empty((6, 5), np.float32)
    result = xnor_gemm(pack_signs(a), pack_signs(b), 100, alpha, out=out)
    assert result is out
    np.testing.assert_allclose(out, alpha[:, None] * binary_matmul_reference(a, b), rtol=1e-6)


def test_xnor_gemm_refuses_rows_of_different_lengths():
    with pytest.raises(ValueError, match="packed rows differ"):
        xnor_gemm(pack_signs(np.ones((2, 64))), pack_signs(np.ones((2, 65))), 64)


@pytest.mark.parametrize("stride,pad", [(1, 0), (1, 1), (2, 1)])
def test_binary_conv_equals_the_reference_conv_on_signs(stride, pad):
    x = RNG.standard_normal((2, 5, 9, 8)).astype(np.float32)
    w = RNG.standard_normal((7, 5, 3, 3)).astype(np.float32)
    signs = np.where(x >= 0, 1.0, -1.0).astype(np.float32)
    padded = np.pad(signs, ((0, 0), (0, 0), (pad, pad), (pad, pad)), constant_values=1.0)
    expected = conv_reference(padded, np.where(w >= 0, 1.0, -1.0).astype(np.float32), strides=(stride, stride))
    np.testing.assert_array_equal(binary_conv2d(x, w, stride=stride, pad=pad, alpha=False), expected)
    alpha = np.abs(w).reshape(7, -1).mean(axis=1)
    np.testing.assert_allclose(binary_conv2d(x, w, stride=stride, pad=pad), expected * alpha[None, :, None, None],
                               rtol=1e-6)
    numpy_twin = binary_conv2d(x, w, stride=stride, pad=pad, alpha=False, kernel=xnor_gemm_numpy)
    np.testing.assert_array_equal(numpy_twin, expected)


def test_benchmark_reports_equivalent_macs():
    rows = benchmark_xnor_gemm(sizes=((8, 8, 128),), repeats=1)
    assert rows[0]["xnor_gmacs"] > 0 and rows[0]["gemm_gmacs"] > 0 and rows[0]["blas_gmacs"] > 0
    assert rows[0]["speedup"] == pytest.approx(rows[0]["xnor_gmacs"] / rows[0]["gemm_gmacs"])
