r"""Winograd convolution F(2x2, 3x3) and F(4x4, 3x3) for Conv / FusedConv (Lavin & Gray, 2016).

Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks" (CVPR 2016), compute a
3x3 convolution tile by tile with fewer multiplications. For an output tile of ``m x m``
pixels and an ``r x r`` filter, the input tile is ``a x a`` with ``a = m + r - 1`` and

    Y = A^T [ (G g G^T) ⊙ (B^T d B) ] A                                  (1)

``g`` the filter, ``d`` the input tile, ⊙ the elementwise product: ``a*a`` multiplications
instead of ``m*m*r*r`` (16 instead of 36 for F(2x2,3x3), 36 instead of 144 for F(4x4,3x3)).
Summed over input channels, the elementwise products become, for each of the ``a*a``
positions of a tile, one matrix product ``(M x C) @ (C x tiles)``: the heavy work stays a
GEMM, 2.25x (F2) or 4x (F4) smaller than im2col's.

**Where A, G and B come from (Toom-Cook, i.e. the Chinese remainder theorem for
polynomials).** The 1-D F(m, r) computes ``y_i = sum_k d_{i+k} g_k`` for ``i < m`` from ``a``
inputs. Start from the *linear convolution* of a polynomial ``u(x)`` with m coefficients
and ``g(x)`` with r coefficients: ``s(x) = u(x) g(x)`` has ``a`` coefficients, so it is fixed
by ``a`` values. Evaluate at ``a - 1`` points ``p_j`` and at infinity (the leading
coefficient): ``s(p_j) = u(p_j) g(p_j)`` costs one multiplication per point. Reducing ``s``
modulo each ``x - p_j`` and recombining (the CRT; here the same as Lagrange interpolation
plus the leading term times ``prod (x - p_j)``) recovers ``s``:

    s = V^{-1} [ (V_m u) ⊙ (V_r g) ]

where ``V_k`` is the ``a x k`` Vandermonde matrix of the points (rows ``[1, p, ..., p^{k-1}]``,
plus the row ``[0, ..., 0, 1]`` for infinity) and ``V = V_a``. As a matrix, ``s = C(g) u`` with
``C(g) = V^{-1} diag(V_r g) V_m``. The correlation we want is the *transpose*:
``y = C(g)^T d`` (``C(g)^T`` is the m x a band matrix with ``g`` on each row), so

    y = V_m^T [ (V_r g) ⊙ (V^{-T} d) ],   i.e.   A^T = V_m^T,   G = V_r,   B^T = V^{-T}.

Any diagonal scaling can move between ``B^T`` and ``G``; :func:`winograd_matrices` scales
each row of ``B^T`` to the smallest integers and divides ``G``'s row by the same factor, which
gives Lavin & Gray's matrices exactly (up to the sign of some rows). Nesting the 1-D
algorithm along both axes gives (1). The points: F(2,3) needs 3 finite points, ``0, +1, -1``;
F(4,3) needs 5, ``0, ±1, ±2``. Larger points spread the entries of ``A^T`` and ``G`` further
apart (8 and 1/24), and so the float32 rounding; ``0, ±1, ±1/2`` is the other common choice for the last pair (F(6,3)
needs both ±2 and ±1/2). Everything is computed with exact fractions, then rounded to
float32 once.

**Accuracy.** The transforms add and subtract values of very different sizes (entries up to
8 in ``A^T`` and 1/24 in ``G`` for F(4,3)), so float32 rounding grows with the tile.
:func:`winograd_error` measures it against a float64 convolution; on ResNet's 3x3 layers
(64x56x56, 128x28x28, 256x14x14) the largest error relative to the output's range was
3-5e-7 for F(2x2) (as im2col's), 0.8-2.3e-6 for direct (one long float32 sum), and 6e-6 to
1e-5 for F(4x4), 15-25x im2col's; points ±1/2 instead of ±2 change little (6e-6 to 9.5e-6).
The tests therefore hold F(4x4) to a looser tolerance than the other kernels.

**Speed.** Per ResNet layer (batch 1, one core, NumPy's BLAS for both GEMMs) F(4x4) ran
1.7x faster than im2col at 64x56x56, 1.6x at 128x28x28 and 1.3x at 256x14x14; at 7x7 a
tile of 4 wastes (8/7)^2 of the work and the products have only 4 tiles, so F(2x2) or
im2col win there. On tinyinfer's packed GEMM (the default, see below) the 36 small products
cost one call each (~9 us of Python per call) and F(4x4) leads im2col by 1.3x, 1.3x and 1.1x.
:func:`tinyinfer.kernels.conv.benchmark_conv` reproduces the numbers.

**The kernels** (float32, NCHW, 3x3, stride 1, dilation 1, group 1, constant weights):
the builder transforms the filters once (``U = G g G^T`` per output and input channel, in
float64, stored as ``(a*a, M, C)``); each call pads the input, transforms every tile of
every channel (``V = B^T d B``, vectorised over the tiles of a block of channels, zero
entries of ``B^T`` skipped), multiplies ``U[xi] @ V[xi]`` for the ``a*a`` positions xi (the
packed GEMM of :mod:`tinyinfer.kernels.gemm`, ``U`` prepacked, so the whole conv runs on
Numba's threads; NumPy's batched matmul with ``backend="blas"``, faster alone but, on 2
cores, slowed badly by OpenBLAS's and Numba's thread pools waiting on each other), and
transforms back (``A^T . A``), applying the epilogue (bias, residual,
activation) as each output row is stored.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Sequence

import numba
import numpy as np

from ..ir import Node
from .conv import (BYTES_PER_SECOND, DEFAULT_GEMM, GEMM_FLOPS_PER_SECOND, LAUNCH_SECONDS, PACKED_GEMM,
                   ConvGeometry, float32_conv2d, pad_planes)
from .epilogue import (FUSED_DOMAIN, Epilogue, bias_or_zeros, epilogue_of, finish_row,
                       residual_or_placeholder)
from .registry import named, register_kernel

#: Interpolation points (infinity is always added) of the two algorithms.
POINTS_F2 = (0, 1, -1)
POINTS_F4 = (0, 1, -1, 2, -2)

#: Winograd pays once the batched GEMM is big enough to hide the transforms: below this many
#: input or output channels the transforms dominate and im2col/direct win (measured).
MIN_CHANNELS = 16

#: The a*a products are small: with ``T`` tiles per product the packed GEMM's rate falls
#: roughly as ``T / (T + 16)`` of its rate on big products (measured on 2 Zen 4 cores:
#: 80-105 GFLOP/s at T = 16..196, with the Python call each product costs).
WINOGRAD_TILES_HALF_RATE = 16


# ============================================================================ the matrices
def winograd_matrices(m: int, r: int = 3, points: Sequence = None) -> tuple[list, list, list]:
    """``(A^T, G, B^T)`` of F(m, r) as lists of rows of exact Fractions (see the module docstring).

    ``points`` are the ``m + r - 2`` finite interpolation points (infinity is added); by
    default 0, ±1, ±2, ... as Lavin & Gray use.
    """
    size = m + r - 1
    if points is None:
        points = [0] + [s * k for k in range(1, size) for s in (1, -1)][: size - 2]
    points = [Fraction(p) for p in points]
    if len(points) != size - 1 or len(set(points)) != len(points):
        raise ValueError(f"F({m}, {r}) needs {size - 1} distinct finite points, got {points}")
    vandermonde = _vandermonde(points, size)
    b_transposed = _transpose(_inverse(vandermonde))  # V^{-T}
    g = _vandermonde(points, r)  # V_r
    a_transposed = _transpose(_vandermonde(points, m))  # V_m^T
    for row in range(size):  # smallest integers in B^T's row; G's row takes the factor
        scale = Fraction(math.lcm(*(v.denominator for v in b_transposed[row])))
        scale /= math.gcd(*(int(v * scale) for v in b_transposed[row]))
        b_transposed[row] = [v * scale for v in b_transposed[row]]
        g[row] = [v / scale for v in g[row]]
    return a_transposed, g, b_transposed


def float32_matrices(m: int, points: Sequence = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """F(m, 3)'s ``A^T`` (m x a), ``G`` (a x 3) and ``B^T`` (a x a) as float32 arrays."""
    return tuple(np.array([[float(v) for v in row] for row in matrix], np.float32)
                 for matrix in winograd_matrices(m, 3, points))


def _vandermonde(points: list[Fraction], columns: int) -> list[list[Fraction]]:
    rows = [[p ** k for k in range(columns)] for p in points]
    rows.append([Fraction(0)] * (columns - 1) + [Fraction(1)])  # the point at infinity
    return rows


def _transpose(matrix):
    return [list(column) for column in zip(*matrix)]


def _inverse(matrix: list[list[Fraction]]) -> list[list[Fraction]]:
    """Gauss-Jordan elimination over the rationals (exact)."""
    n = len(matrix)
    rows = [list(row) + [Fraction(int(i == j)) for j in range(n)] for i, row in enumerate(matrix)]
    for column in range(n):
        pivot = next(r for r in range(column, n) if rows[r][column] != 0)
        rows[column], rows[pivot] = rows[pivot], rows[column]
        lead = rows[column][column]
        rows[column] = [v / lead for v in rows[column]]
        for r in range(n):
            if r != column and rows[r][column] != 0:
                factor = rows[r][column]
                rows[r] = [a - factor * b for a, b in zip(rows[r], rows[column])]
    return [row[n:] for row in rows]


# ============================================================================ the kernels
def _supports_winograd(node, inputs):
    g = float32_conv2d(node, inputs)
    return (g is not None and inputs[1].const is not None
            and (g.kernel_h, g.kernel_w, g.stride_h, g.stride_w) == (3, 3, 1, 1)
            and (g.dilation_h, g.dilation_w, g.group) == (1, 1, 1)
            and g.channels >= MIN_CHANNELS and g.out_channels >= MIN_CHANNELS)


def _winograd_cost(node, inputs, m):
    g = float32_conv2d(node, inputs)
    size = m + 2
    tiles_h, tiles_w = -(-g.out_h // m), -(-g.out_w // m)
    tiles = g.batch * tiles_h * tiles_w
    gemm_flops = 2 * size * size * g.out_channels * g.channels * tiles
    rate = GEMM_FLOPS_PER_SECOND * tiles / (tiles + WINOGRAD_TILES_HALF_RATE)
    padded = g.batch * g.channels * (tiles_h * m + 2) * (tiles_w * m + 2)
    transformed = size * size * tiles * (g.channels + g.out_channels)  # V and the products
    moved = 4 * (2 * padded + 2 * transformed + g.batch * g.out_channels * g.out_h * g.out_w)
    launches = 3 + size * size  # pad, 2 transforms, one GEMM per tile position
    return gemm_flops / rate + moved / BYTES_PER_SECOND + launches * LAUNCH_SECONDS


@register_kernel("Conv", "conv2d_winograd_f2", supports=_supports_winograd, cost=lambda n, i: _winograd_cost(n, i, 2))
@register_kernel("FusedConv", "conv2d_winograd_f2", domain=FUSED_DOMAIN, supports=_supports_winograd,
                 cost=lambda n, i: _winograd_cost(n, i, 2))
def build_winograd_f2(node: Node, inputs: list, outputs: list):
    """Winograd F(2x2,3x3) conv (accelerates Conv / FusedConv): float32 NCHW, 3x3, stride 1, dilation 1, group 1."""
    return build_winograd(node, inputs, 2)


@register_kernel("Conv", "conv2d_winograd_f4", supports=_supports_winograd, cost=lambda n, i: _winograd_cost(n, i, 4))
@register_kernel("FusedConv", "conv2d_winograd_f4", domain=FUSED_DOMAIN, supports=_supports_winograd,
                 cost=lambda n, i: _winograd_cost(n, i, 4))
def build_winograd_f4(node: Node, inputs: list, outputs: list):
    """Winograd F(4x4,3x3) conv (accelerates Conv / FusedConv): float32 NCHW, 3x3, stride 1, dilation 1, group 1."""
    return build_winograd(node, inputs, 4)


def build_winograd(node: Node, inputs: list, m: int, points: Sequence = None, backend: str = DEFAULT_GEMM):
    """The F(m x m, 3x3) kernel for a node; ``points`` overrides the interpolation points,
    ``backend`` ("packed" or "blas") chooses the GEMM of the a*a products."""
    geometry = float32_conv2d(node, inputs)
    epilogue = epilogue_of(node)
    a_t, g, b_t = float32_matrices(m, points)
    filters = transform_filters(inputs[1].const, m, points)
    packed = tuple(PACKED_GEMM.prepack_a(u) for u in filters) if backend == "packed" else None
    name = f"conv2d_winograd_f{m}"

    def conv2d_winograd(node, x, w, bias=None, *rest):
        return run_winograd(x, filters, packed, a_t, b_t, m, bias, epilogue.residual((x, w, bias, *rest)), geometry,
                            epilogue)

    return named(conv2d_winograd, name)


def transform_filters(w: np.ndarray, m: int, points: Sequence = None) -> np.ndarray:
    """``U[xi, k, c] = (G w[k, c] G^T)[xi]``, computed in float64, stored float32 as (a*a, M, C)."""
    a_t, g, b_t = winograd_matrices(m, 3, points)
    g = np.array([[float(v) for v in row] for row in g])
    u = np.einsum("ai,kcij,bj->abkc", g, w.astype(np.float64), g)
    size = m + 2
    return np.ascontiguousarray(u.reshape(size * size, w.shape[0], w.shape[1]), dtype=np.float32)


def run_winograd(x, filters, packed, a_t, b_t, m, bias, residual, geo: ConvGeometry, epilogue: Epilogue) -> np.ndarray:
    size = m + 2
    tiles_h, tiles_w = -(-geo.out_h // m), -(-geo.out_w // m)
    tiles = geo.batch * tiles_h * tiles_w
    # Every input tile lies inside the padded planes (the last tiles may run past the output).
    padded = pad_planes(x, geo.pad_top, geo.pad_left, tiles_h * m + 2, tiles_w * m + 2, 0.0)
    transformed = np.empty((size * size, geo.channels, tiles), np.float32)
    _input_transform(padded, tiles_w * m + 2, b_t, m, tiles_h, tiles_w, transformed)
    products = np.empty((size * size, geo.out_channels, tiles), np.float32)
    if packed is None:
        np.matmul(filters, transformed, out=products)  # one batched BLAS call
    else:
        # The a*a products are small (64 x 64 x 196 for a 56x56 layer): one call each costs
        # 1.3-1.6x the batched BLAS call alone, but keeps the whole conv on Numba's threads
        # (alternating Numba's and OpenBLAS's busy-waiting thread pools on 2 cores measured
        # up to 10x slower).
        for xi in range(size * size):
            PACKED_GEMM.gemm(packed[xi], transformed[xi], out=products[xi])
    y = np.empty(geo.output_shape, np.float32)
    z, has_residual = residual_or_placeholder(residual)
    _output_transform(products, a_t, m, tiles_h, tiles_w, bias_or_zeros(bias, geo.out_channels), z, has_residual,
                      epilogue.code, epilogue.alpha, epilogue.beta, y)
    return y


#: Channels transformed together: their tiles form one vector, so small images (few tiles
#: per channel) still give long vectorised loops.
VECTOR_LENGTH = 256


@numba.njit(cache=True, fastmath=True, parallel=True)
def _input_transform(padded, padded_w, b_t, m, tiles_h, tiles_w, transformed):
    """transformed[(j, k), c, tile] = (B^T d B)[j, k] for every input tile d of every channel."""
    n, channels = padded.shape[0], padded.shape[1]
    size = b_t.shape[0]
    per_image = tiles_h * tiles_w
    per_chunk = min(channels, max(1, VECTOR_LENGTH // per_image))
    chunks = (channels + per_chunk - 1) // per_chunk
    stride = np.uint64(m)
    for task in numba.prange(n * chunks):
        image, first_channel = task // chunks, (task % chunks) * per_chunk
        count = min(per_chunk, channels - first_channel)
        width = count * per_image
        tiles = np.empty((size, size, width), np.float32)  # d[i, l] of every tile of the chunk
        for cc in range(count):
            plane = padded[image, first_channel + cc]
            for ty in range(tiles_h):
                start = cc * per_image + ty * tiles_w
                for i in range(size):
                    row = np.uint64((ty * m + i) * padded_w)
                    for l in range(size):
                        dst = tiles[i, l, start:start + tiles_w]
                        for tx in range(np.uint64(tiles_w)):
                            dst[tx] = plane[row + tx * stride + np.uint64(l)]
        # Rows first: half[j, l] = sum_i B^T[j, i] d[i, l]; then columns: V[j, k] = sum_l half[j, l] B^T[k, l].
        half = _transform_rows(b_t, tiles)
        result = _transform_columns(b_t, half)
        first_tile = image * per_image
        for xi in range(size * size):
            for cc in range(count):
                transformed[xi, first_channel + cc, first_tile:first_tile + per_image] = \
                    result[xi, cc * per_image:(cc + 1) * per_image]


@numba.njit(cache=True, fastmath=True, parallel=True)
def _output_transform(products, a_t, m, tiles_h, tiles_w, bias, residual, has_residual, code, alpha, beta, y):
    """y[n, o, tile pixels] = f((A^T P A) + bias + z) for every tile, P the tile's products."""
    n, out_channels, out_h, out_w = y.shape
    size = a_t.shape[1]
    per_image = tiles_h * tiles_w
    per_chunk = min(out_channels, max(1, VECTOR_LENGTH // per_image))
    chunks = (out_channels + per_chunk - 1) // per_chunk
    stride = np.uint64(m)
    for task in numba.prange(n * chunks):
        image, first_channel = task // chunks, (task % chunks) * per_chunk
        count = min(per_chunk, out_channels - first_channel)
        width = count * per_image
        first_tile = image * per_image
        gathered = np.empty((size, size, width), np.float32)
        for j in range(size):
            for l in range(size):
                for cc in range(count):
                    gathered[j, l, cc * per_image:(cc + 1) * per_image] = \
                        products[j * size + l, first_channel + cc, first_tile:first_tile + per_image]
        half = _transform_rows(a_t, gathered)  # half[a, l] = sum_j A^T[a, j] P[j, l]
        pixels = _transform_columns(a_t, half)  # pixels[(a, b)] = sum_l half[a, l] A^T[b, l]
        line = np.empty(tiles_w * m, np.float32)
        for cc in range(count):
            channel = first_channel + cc
            for ty in range(tiles_h):
                start = cc * per_image + ty * tiles_w
                for a in range(m):
                    oh = ty * m + a
                    if oh >= out_h:
                        break
                    for b in range(m):
                        source = pixels[a * m + b, start:start + tiles_w]
                        for tx in range(np.uint64(tiles_w)):
                            line[tx * stride + np.uint64(b)] = source[tx]
                    residual_row = residual[image, channel, oh] if has_residual else line
                    finish_row(y[image, channel, oh], line, out_w, bias[channel], residual_row, has_residual,
                               code, alpha, beta)


@numba.njit(cache=True, fastmath=True)
def _transform_rows(matrix, tiles):
    """``out[j, l, :] = sum_i matrix[j, i] * tiles[i, l, :]`` (zero coefficients skipped)."""
    rows, inner = matrix.shape
    size, width = tiles.shape[1], tiles.shape[2]
    out = np.zeros((rows, size, width), np.float32)
    for j in range(rows):
        for i in range(inner):
            coefficient = matrix[j, i]
            if coefficient != 0.0:
                for l in range(size):
                    target, source = out[j, l], tiles[i, l]
                    for t in range(width):
                        target[t] += coefficient * source[t]
    return out


@numba.njit(cache=True, fastmath=True)
def _transform_columns(matrix, half):
    """``out[j * rows + k, :] = sum_l half[j, l, :] * matrix[k, l]`` (zero coefficients skipped)."""
    rows, inner = matrix.shape
    count, width = half.shape[0], half.shape[2]
    out = np.zeros((count * rows, width), np.float32)
    for j in range(count):
        for k in range(rows):
            target = out[j * rows + k]
            for l in range(inner):
                coefficient = matrix[k, l]
                if coefficient != 0.0:
                    source = half[j, l]
                    for t in range(width):
                        target[t] += coefficient * source[t]
    return out


# ============================================================================ accuracy
#: Layers :func:`winograd_error` measures by default: (channels, size), batch 1.
ERROR_LAYERS = ((64, 56), (128, 28), (256, 14))


def winograd_error(layers=ERROR_LAYERS, *, seed: int = 0, baselines: bool = True) -> list[dict]:
    """float32 error of each algorithm against a float64 convolution, per layer shape.

    Inputs are N(0, 1), weights He-initialised (as in a trained ResNet layer), bias 0.
    ``max_abs`` is the largest absolute error; ``max_rel`` divides it by the largest
    magnitude of the exact output (a normwise relative error; elementwise relative errors
    are meaningless where the output crosses zero). Algorithms: ``direct``, ``im2col``,
    ``winograd_f2``, ``winograd_f4`` (points 0, ±1, ±2) and ``winograd_f4_half`` (0, ±1, ±1/2);
    ``baselines=False`` leaves out direct and im2col.
    """
    from ..ops import OPS
    from .conv import benchmark_layer, build_direct, build_im2col

    rng = np.random.default_rng(seed)
    rows = []
    for channels, size in layers:
        node, inputs, x, w, b = benchmark_layer(channels, channels, size, 3, 1, 1, 1, rng)
        b = np.zeros_like(b)
        inputs[2].const = b
        exact = OPS[("", "Conv")].reference(node, x.astype(np.float64), w.astype(np.float64), b.astype(np.float64))
        scale = float(np.abs(exact).max())
        algorithms = {}
        if baselines:
            algorithms = {"direct": build_direct(node, inputs, []), "im2col": build_im2col(node, inputs, [])}
        algorithms |= {
            "winograd_f2": build_winograd(node, inputs, 2),
            "winograd_f4": build_winograd(node, inputs, 4),
            "winograd_f4_half": build_winograd(node, inputs, 4, (0, 1, -1, Fraction(1, 2), Fraction(-1, 2))),
        }
        row = {"layer": f"{channels}x{size}x{size} 3x3", "max_abs": {}, "max_rel": {}}
        for name, fn in algorithms.items():
            error = float(np.abs(fn(node, x, w, b).astype(np.float64) - exact).max())
            row["max_abs"][name] = error
            row["max_rel"][name] = error / scale
        rows.append(row)
    return rows
