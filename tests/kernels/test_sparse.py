"""The sparse (CSR) conv kernel (tinyinfer/kernels/sparse.py) against the reference Conv.

Oracles: NumPy's dense ``@`` for the CSR product, and the reference Conv / FusedConv ops for
the kernel, on weights with 0-98 % zeros. Tolerance as in test_conv_kernels.py: the kernel sums
the same products in another order, ``rtol = atol = 1e-4``.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_conv_kernels import TOLERANCE, make_conv, reference

from tinyinfer.kernels import candidates
from tinyinfer.kernels.sparse import (MAX_DENSITY, benchmark_sparse_conv, build_sparse, crossover, csr_from_dense,
                                      spmm, spmm_reference)

RNG = np.random.default_rng(0)


def sparsify(w: np.ndarray, sparsity: float, seed: int = 1) -> np.ndarray:
    w = w.copy()
    w[np.random.default_rng(seed).random(w.shape) < sparsity] = 0.0
    return w


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 1.0])
def test_csr_product_equals_the_dense_product(sparsity):
    w = sparsify(RNG.standard_normal((7, 13)).astype(np.float32), sparsity)
    x = RNG.standard_normal((13, 29)).astype(np.float32)
    csr = csr_from_dense(w)
    assert csr.values.size == np.count_nonzero(w) and csr.density == pytest.approx(np.count_nonzero(w) / w.size)
    np.testing.assert_allclose(spmm_reference(csr, x), w @ x, rtol=1e-5, atol=1e-5)
    bias = RNG.standard_normal(7).astype(np.float32)
    np.testing.assert_allclose(spmm(csr, x, bias=bias), w @ x + bias[:, None], rtol=1e-5, atol=1e-5)


CASES = [
    ((1, 8, 6, 5), (9, 8, 1, 1), dict()),
    ((2, 8, 7, 7), (4, 8, 1, 1), dict(strides=[2, 2])),
    ((1, 3, 9, 11), (4, 3, 3, 3), dict(pads=[1, 1, 1, 1])),
    ((1, 4, 10, 9), (5, 4, 3, 3), dict(strides=[2, 2], pads=[1, 0, 1, 2])),
    ((1, 3, 13, 12), (7, 3, 3, 3), dict(dilations=[2, 2], pads=[2, 2, 2, 2])),
]


@pytest.mark.parametrize("x_shape,w_shape,attrs", CASES)
@pytest.mark.parametrize("fused", [False, True])
def test_sparse_conv_equals_the_reference(x_shape, w_shape, attrs, fused):
    extra = dict(residual=True, activation="Relu") if fused else {}
    node, values, arrays = make_conv(x_shape, w_shape, **extra, **attrs)
    w = sparsify(arrays[1], 0.8)
    arrays[1] = w
    values[1].const = w
    assert "conv2d_sparse" in [k.name for k in candidates(node, values)]
    fn = build_sparse(node, values, [])
    expected = reference(node, arrays)
    np.testing.assert_allclose(fn(node, *arrays), expected, **TOLERANCE)
    out = np.empty_like(expected)  # the runtime's arena slot
    assert fn(node, *arrays, out=[out]) is out
    np.testing.assert_allclose(out, expected, **TOLERANCE)


def test_dense_or_grouped_weights_do_not_get_the_sparse_kernel():
    node, values, _ = make_conv((1, 8, 6, 6), (8, 8, 3, 3), pads=[1, 1, 1, 1])
    assert "conv2d_sparse" not in [k.name for k in candidates(node, values)]  # dense
    values[1].const = sparsify(values[1].const, 1 - MAX_DENSITY / 2)
    assert "conv2d_sparse" in [k.name for k in candidates(node, values)]
    node, values, _ = make_conv((1, 8, 6, 6), (8, 2, 3, 3), group=4, pads=[1, 1, 1, 1])
    values[1].const = sparsify(values[1].const, 0.9)
    assert "conv2d_sparse" not in [k.name for k in candidates(node, values)]  # grouped


def test_benchmark_finds_a_crossover_row_per_sparsity():
    rows = benchmark_sparse_conv(channels=8, size=6, kernel=1, sparsities=(0.0, 0.9), repeats=1)
    assert [r["sparsity"] for r in rows] == [0.0, 0.9]
    assert all(r["dense_ms"] > 0 and r["sparse_ms"] > 0 for r in rows)
    assert crossover([{"sparsity": 0.5, "speedup": 0.8}, {"sparsity": 0.9, "speedup": 2.0}]) == 0.9
    assert crossover([{"sparsity": 0.5, "speedup": 0.8}]) is None
