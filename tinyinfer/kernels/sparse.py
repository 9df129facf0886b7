"""Sparse convolution: a pruned conv's weights in CSR, multiplied only where they are not zero.

Magnitude pruning (:mod:`tinyinfer.compress.prune`) leaves most of a weight matrix zero, but a
dense kernel multiplies the zeros all the same. Stored as **CSR** (compressed sparse rows: for
each output channel ``m``, the column indices ``k`` and values of its non-zeros), the product
``Y = W · X`` of an ``M x K`` weight by the ``K x P`` im2col columns of an image becomes

    for each output row m:                      (in parallel)
        acc[:] = 0
        for each non-zero (k, v) of row m:      (nnz / M of them)
            acc[:] += v * X[k, :]               (a contiguous row of P pixels: vectorised)
        Y[m, :] = f(acc + bias[m] + Z[m, :])    (the fused epilogue)

— 2·nnz·P flops instead of 2·M·K·P, but each is an AXPY that streams a row of ``X`` from
cache, with none of the register blocking that makes the dense GEMM fast. The sparse kernel
therefore only wins past some sparsity: :func:`benchmark_sparse_conv` measures where on this
machine (the "crossover"), and the runtime's kernel selection, which times both on the real
shapes, picks it only where it wins. A pointwise (1x1) conv needs no im2col at all: ``X`` is
the image itself, ``C x HW``, the case XNNPACK's sparse inference targets (Elsen et al., 2020,
"Fast Sparse ConvNets").

:func:`spmm_reference` is the readable NumPy twin the kernel is tested against.
"""

from __future__ import annotations

import dataclasses

import numba
import numpy as np

from ..ir import Node
from .conv import _im2col_kernel, _is_pointwise, float32_conv2d, times_ms
from .epilogue import FUSED_DOMAIN, bias_or_zeros, epilogue_of, finish_row, residual_or_placeholder
from .registry import named, output_buffer, register_kernel, writes_into

#: Weights with at most this share of non-zeros get the sparse kernel as a candidate.
MAX_DENSITY = 0.5


@dataclasses.dataclass(frozen=True)
class CSR:
    """A matrix in compressed sparse rows: row ``m``'s non-zeros are
    ``values[indptr[m]:indptr[m + 1]]`` at columns ``indices[...]``."""

    indptr: np.ndarray  # int64, M + 1
    indices: np.ndarray  # int32, nnz
    values: np.ndarray  # float32, nnz
    shape: tuple[int, int]

    @property
    def density(self) -> float:
        return self.values.size / max(self.shape[0] * self.shape[1], 1)


def csr_from_dense(w: np.ndarray) -> CSR:
    """CSR of a 2-D matrix (or of a conv weight, flattened to ``M x C·kh·kw``)."""
    matrix = np.asarray(w, np.float32).reshape(w.shape[0], -1)
    rows, cols = np.nonzero(matrix)
    indptr = np.zeros(matrix.shape[0] + 1, np.int64)
    np.cumsum(np.bincount(rows, minlength=matrix.shape[0]), out=indptr[1:])
    return CSR(indptr, cols.astype(np.int32), matrix[rows, cols].astype(np.float32), matrix.shape)


def spmm_reference(w: CSR, x: np.ndarray) -> np.ndarray:
    """``W @ X`` row by row: each output row is its non-zeros times the rows of X they pick."""
    out = np.zeros((w.shape[0], x.shape[1]), np.float32)
    for m in range(w.shape[0]):
        start, end = w.indptr[m], w.indptr[m + 1]
        out[m] = w.values[start:end] @ x[w.indices[start:end]]
    return out


@numba.njit(cache=True, fastmath=True, parallel=True)
def _spmm(indptr, indices, values, x, out, bias, residual, has_residual, code, alpha, beta):
    """out[m] = f(sum_k W[m, k] x[k] + bias[m] + residual[m]) for every row m (x is K x P)."""
    rows, pixels = out.shape
    for m in numba.prange(rows):
        acc = np.zeros(pixels, np.float32)
        for t in range(indptr[m], indptr[m + 1]):
            v = values[t]
            source = x[indices[t]]
            for p in range(pixels):
                acc[p] += v * source[p]
        finish_row(out[m], acc, pixels, bias[m], residual[m] if has_residual else acc, has_residual, code, alpha, beta)


def spmm(w: CSR, x: np.ndarray, out: np.ndarray | None = None, bias: np.ndarray | None = None) -> np.ndarray:
    """``W @ X (+ bias per row)`` with the Numba kernel; ``x`` is ``K x P`` float32."""
    x = np.ascontiguousarray(x, np.float32)
    out = np.empty((w.shape[0], x.shape[1]), np.float32) if out is None else out
    _spmm(w.indptr, w.indices, w.values, x, out, bias_or_zeros(bias, w.shape[0]), out, False, 0, 0.0, 0.0)
    return out


# ---------------------------------------------------------------------------- the conv kernel
def _weight_density(inputs) -> float | None:
    w = inputs[1]
    if w is None or w.const is None:
        return None
    return float(np.count_nonzero(w.const)) / max(w.const.size, 1)


def _supports_sparse(node, inputs):
    g = float32_conv2d(node, inputs)
    density = _weight_density(inputs)
    return g is not None and g.group == 1 and density is not None and density <= MAX_DENSITY


def _cost_sparse(node, inputs):
    g = float32_conv2d(node, inputs)
    nonzeros = np.count_nonzero(inputs[1].const)
    return 2 * g.batch * nonzeros * g.out_h * g.out_w / 20e9 + 10e-6  # AXPYs at ~20 GFLOP/s, one launch


@register_kernel("Conv", "conv2d_sparse", supports=_supports_sparse, cost=_cost_sparse)
@register_kernel("FusedConv", "conv2d_sparse", domain=FUSED_DOMAIN, supports=_supports_sparse, cost=_cost_sparse)
def build_sparse(node: Node, inputs: list, outputs: list):
    """Sparse conv (accelerates Conv / FusedConv): float32 NCHW, group 1, constant weights at most half non-zero, CSR."""
    g = float32_conv2d(node, inputs)
    weights = csr_from_dense(inputs[1].const)
    epilogue = epilogue_of(node)
    pointwise = _is_pointwise(g)

    def conv2d_sparse(node, x, w, bias=None, *rest, out=None):
        y = output_buffer(out, g.output_shape)
        return run_sparse(x, weights, bias, epilogue.residual((x, w, bias, *rest)), g, epilogue, pointwise, y)

    return writes_into(named(conv2d_sparse, "conv2d_sparse"))


def run_sparse(x, weights: CSR, bias, residual, g, epilogue, pointwise: bool, y: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, np.float32)
    pixels = g.out_h * g.out_w
    flat = y.reshape(g.batch, g.out_channels, pixels)
    z, has_residual = residual_or_placeholder(residual)
    z = z.reshape(g.batch, g.out_channels, pixels) if has_residual else z.reshape(1, 1, 1)
    b = bias_or_zeros(bias, g.out_channels)
    columns = None if pointwise else np.empty((g.column_rows, pixels), np.float32)
    for image in range(g.batch):
        if pointwise:
            source = x[image].reshape(g.channels, pixels)
        else:
            _im2col_kernel(x, image, g.kernel_h, g.kernel_w, g.stride_h, g.stride_w, g.dilation_h, g.dilation_w,
                           g.pad_top, g.pad_left, g.out_h, g.out_w, columns)
            source = columns
        _spmm(weights.indptr, weights.indices, weights.values, source, flat[image], b,
              z[image] if has_residual else z[0], has_residual, epilogue.code, epilogue.alpha, epilogue.beta)
    return y


# ---------------------------------------------------------------------------- measurement
def benchmark_sparse_conv(channels: int = 128, size: int = 28, kernel: int = 1,
                          sparsities=(0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98), repeats: int = 5) -> list[dict]:
    """Milliseconds of one conv (``channels`` in and out, ``size x size``, ``kernel x kernel``,
    batch 1) by the dense kernel the runtime would pick (1x1 as GEMM, else im2col) and by the
    sparse kernel, at each weight sparsity; ``speedup`` = dense / sparse."""
    from ..ir import Value
    from ..ops.base import prepare_node
    from .conv import build_1x1, build_im2col

    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, channels, size, size), dtype=np.float32)
    node = Node("Conv", ["x", "w"], ["y"], {"pads": [kernel // 2] * 4})
    prepare_node(node, 17)
    rows = []
    for sparsity in sparsities:
        w = rng.standard_normal((channels, channels, kernel, kernel), dtype=np.float32)
        w[rng.random(w.shape) < sparsity] = 0.0
        inputs = [Value("x", np.dtype(np.float32), x.shape), Value("w", np.dtype(np.float32), w.shape, const=w)]
        dense = (build_1x1 if kernel == 1 else build_im2col)(node, inputs, [None])
        sparse = build_sparse(node, inputs, [None])
        expected = dense(node, x, w)
        np.testing.assert_allclose(sparse(node, x, w), expected, rtol=1e-3, atol=1e-3)
        times = {name: min(times_ms(lambda: fn(node, x, w), repeats)) / 1e3
                 for name, fn in (("dense", dense), ("sparse", sparse))}
        rows.append({"sparsity": sparsity, "dense_ms": 1e3 * times["dense"], "sparse_ms": 1e3 * times["sparse"],
                     "speedup": times["dense"] / times["sparse"]})
    return rows


def crossover(rows: list[dict]) -> float | None:
    """The smallest measured sparsity from which the sparse kernel is faster, or None."""
    winning = [r["sparsity"] for r in rows if r["speedup"] > 1.0]
    return min(winning) if winning else None

