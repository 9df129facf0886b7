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

**Speed.** Per ResNet layer (batch 1, one core) F(4x4) on NumPy's BLAS ran 1.7x faster than
im2col at 64x56x56, 1.6x at 128x28x28 and 1.3x at 256x14x14. A first version on tinyinfer's
packed GEMM, one ``gemm`` call per position (36 calls, each packing its B), led im2col by
only 1.3x, 1.3x and 1.1x: its transforms ran scalar loops and wrote the transformed tiles
(2.25x the input) through memory. The fused kernel below measured (one core, best of 10,
on a machine shared with other work) 1.7-2.1x faster than im2col at 64x56, 128x28, 96x27
and 128x56 -> 32, 1.5x at 256x14, and 150-220 GFLOP/s "effective" (the direct
convolution's flops over the time). At 7x7 a tile of 4 wastes (8/7)^2 of the work, only 4
tiles share the 36 transformed filter matrices (which then stream from memory), and F(4x4)
is refused; F(2x2) or im2col win there. :func:`tinyinfer.kernels.conv.benchmark_conv`
reproduces the numbers.

**The kernels** (float32, NCHW, 3x3, stride 1, dilation 1, group 1, constant weights):
the builder transforms the filters once (``U = G g G^T`` per output and input channel, in
float64, stored float32) and packs each ``U[xi]^T`` as the B operand of the packed GEMM of
:mod:`tinyinfer.kernels.gemm` (NR-column micro-panels). A call pads the input once and runs
one parallel loop (:func:`_winograd_kernel`) over tasks of (up to 32 tiles) x (up to 128
output channels), dynamically scheduled. A task

1. transforms its tiles for every input channel, 16 tiles to a vector (``V = B^T d B`` as
   vector multiply-adds, zero entries of ``B^T`` skipped), straight into the micro-kernel's
   MR-row A-panel layout, in a buffer of its thread;
2. runs the micro-kernel ``V[xi] @ U[xi]^T`` for each of the a*a positions into a products
   buffer of its thread (tiles x output channels);
3. transforms the products back (``A^T P A``, 16 output channels to a vector) and stores each
   output pixel with the epilogue (bias, residual, activation) applied.

Everything between reading the input and writing the output stays in the core's L2. When
the tasks split the output channels (small images), the input transform runs once before,
in its own parallel loop (:func:`_winograd_transform_all`), instead of once per block of
channels. ``backend="blas"`` keeps the unfused form on NumPy's batched matmul (faster alone
on one core, but on 2 cores slowed badly by OpenBLAS's and Numba's thread pools waiting on
each other).
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
from .epilogue import (CLIP, FUSED_DOMAIN, IDENTITY, RELU, Epilogue, activate, bias_or_zeros, epilogue_of,
                       finish_row, residual_or_placeholder)
from .gemm import (KC as KC_, LANES as LANES_, MR as MR_, NR as NR_, _micro_kernel, vector_fma, vector_load,
                   vector_load_first, vector_splat, vector_store_first, vector_zero)
from .registry import named, output_buffer, register_kernel, writes_into

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


def _supports_winograd_f4(node, inputs):
    """As F2, on outputs of at least 8 x 8: on a 7 x 7 output, 4 tiles of 6 x 6 compute 8 x 8
    pixels (30 % wasted) and the transformed filters, 36 / 9 times the weights, stream from
    memory for only 4 tiles (measured 5x slower than im2col on 512 channels)."""
    if not _supports_winograd(node, inputs):
        return False
    g = float32_conv2d(node, inputs)
    return g.out_h >= 8 and g.out_w >= 8


@register_kernel("Conv", "conv2d_winograd_f4", supports=_supports_winograd_f4,
                 cost=lambda n, i: _winograd_cost(n, i, 4))
@register_kernel("FusedConv", "conv2d_winograd_f4", domain=FUSED_DOMAIN, supports=_supports_winograd_f4,
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
    name = f"conv2d_winograd_f{m}"
    if backend == "packed":
        packed = pack_filters(filters)

        def conv2d_winograd(node, x, w, bias=None, *rest, out=None):
            return run_winograd_fused(x, packed, a_t, b_t, m, bias, epilogue.residual((x, w, bias, *rest)), geometry,
                                      epilogue, output_buffer(out, geometry.output_shape))

        return writes_into(named(conv2d_winograd, name))

    def conv2d_winograd_blas(node, x, w, bias=None, *rest):
        return run_winograd(x, filters, None, a_t, b_t, m, bias, epilogue.residual((x, w, bias, *rest)), geometry,
                            epilogue)

    return named(conv2d_winograd_blas, name)


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


# ============================================================================ fused kernel (packed GEMM)
def pack_filters(filters: np.ndarray) -> np.ndarray:
    """U (a*a, M, C) -> for each position xi, ``U[xi].T`` (C x M) in the packed GEMM's
    NR-column micro-panels (K blocks of KC rows): shape (a*a, C * M rounded up to NR)."""
    gemm = PACKED_GEMM
    return np.stack([gemm.prepack_b(u, trans_b=True).data for u in filters])


def plan_winograd_tasks(tiles: int, channels: int, out_channels: int, threads: int) -> tuple[int, int]:
    """(tile micro-panels, output channels) per task of :func:`_winograd_kernel`.

    A task transforms a block of tiles (whole MR-tile panels, 16 tiles to a vector) for
    every input channel, multiplies them by a block of output channels (whole NR-channel
    panels) at each of the a*a positions, and transforms its products back. Blocks start
    at 4 panels x 128 channels (its transformed tiles and products stay in L2; 2 panels
    above 256 input channels) and are halved, tiles first (cutting the output channels costs
    a separate parallel loop for the input transform), until there are at least 3 tasks per
    thread: with dynamic scheduling a thread that the OS preempts for a while is made up
    for by the others.
    """
    gemm = PACKED_GEMM
    panels = -(-tiles // gemm.MR)
    columns = -(-out_channels // gemm.NR) * gemm.NR
    per_task = min(4 if channels <= 256 else 2, panels)
    chunk = min(128, columns)
    want = 3 * max(threads, 1)

    def count():
        return -(-panels // per_task) * -(-out_channels // chunk)

    while count() < want and threads > 1:
        if per_task > 2:
            per_task = -(-per_task // 2)
        elif chunk >= 2 * gemm.NR:
            chunk = chunk // 2 // gemm.NR * gemm.NR
        elif per_task > 1:
            per_task = 1
        else:
            break
    return per_task, chunk


def run_winograd_fused(x, packed, a_t, b_t, m, bias, residual, geo: ConvGeometry, epilogue: Epilogue,
                       y=None) -> np.ndarray:
    """F(m x m, 3x3) with the a*a products on the packed GEMM's micro-kernel, one parallel loop.

    The input is zero-padded once (:func:`pad_planes`); then each task of
    :func:`_winograd_kernel` transforms its tiles (``V = B^T d B``, straight into the
    micro-kernel's MR-row panel layout, in a buffer of its thread), runs the micro-kernel
    ``V[xi] @ U[xi]^T`` for each of the a*a positions and transforms the products back
    (``A^T P A``), applying the epilogue as it stores. Everything a task touches between
    reading the input and writing the output stays in its core's L2.
    """
    gemm = PACKED_GEMM
    size = m + 2
    positions = size * size
    tiles_h, tiles_w = -(-geo.out_h // m), -(-geo.out_w // m)
    tiles = geo.batch * tiles_h * tiles_w
    padded_w = tiles_w * m + 2
    padded = pad_planes(x, geo.pad_top, geo.pad_left, tiles_h * m + 2, padded_w, 0.0)
    threads = numba.get_num_threads()
    per_task, chunk = plan_winograd_tasks(tiles, geo.channels, geo.out_channels, threads)
    rows = per_task * gemm.MR
    per_thread = positions * rows * (geo.channels + chunk) + 3 * positions * gemm.LANES
    work = gemm.scratch(numba.config.NUMBA_NUM_THREADS * per_thread)
    # Several blocks of output channels: transform the input once, before, instead of once per block.
    pretransformed = chunk < geo.out_channels
    panels = -(-tiles // gemm.MR)
    v_all = np.empty(panels * positions * geo.channels * gemm.MR if pretransformed else 1, np.float32)
    if pretransformed:
        _winograd_transform_all(padded, padded_w, m, b_t, tiles_h, tiles_w, v_all)
    y = np.empty(geo.output_shape, np.float32) if y is None else y
    z, has_residual = residual_or_placeholder(residual)
    # dynamic scheduling (set outside: Numba cannot cache a function that calls it): a thread
    # that finishes early, or was preempted less, takes the next task
    previous = numba.set_parallel_chunksize(1)
    try:
        _winograd_kernel(padded, padded_w, packed.reshape(-1), packed.shape[1] // geo.channels, m, b_t, a_t,
                         tiles_h, tiles_w, per_task, chunk, bias_or_zeros(bias, geo.out_channels), z, has_residual,
                         epilogue.code, np.float32(epilogue.alpha), np.float32(epilogue.beta), work, per_thread,
                         pretransformed, v_all, _NO_ADDEND, y)
    finally:
        numba.set_parallel_chunksize(previous)
    return y


@numba.njit(cache=True, fastmath=True)
def _nonzeros(matrix):
    """A matrix's nonzero entries, row by row: row j is ``cols/values[starts[j]:starts[j + 1]]``."""
    rows, inner = matrix.shape
    starts = np.zeros(rows + 1, np.int64)
    cols = np.empty(rows * inner, np.int64)
    values = np.empty(rows * inner, np.float32)
    for j in range(rows):
        starts[j + 1] = starts[j]
        for i in range(inner):
            if matrix[j, i] != 0.0:
                cols[starts[j + 1]], values[starts[j + 1]] = i, matrix[j, i]
                starts[j + 1] += 1
    return starts, cols, values


@numba.njit(cache=True, fastmath=True, inline="always")
def _transform_tiles(flat, offsets, tile0, rows, c_lo, c_hi, channels, plane, padded_w, size, b_starts, b_cols,
                     b_values, d, e, half, v):
    """v[p, xi, c, 0:MR] = (B^T d B)[xi] for tiles tile0 .. tile0 + rows (p counted from tile0's
    panel) and channels c_lo .. c_hi; 16 tiles at a time, ``d``, ``e``, ``half`` scratch vectors."""
    positions = size * size
    for first in range(0, rows, LANES_):
        start = tile0 + first
        for c in range(c_lo, c_hi):
            channel_at = np.uint64(c * plane)
            for i in range(size):
                for l in range(size):
                    at = np.uint64(i * padded_w + l) + channel_at
                    dst = (i * size + l) * LANES_
                    for s in range(LANES_):
                        d[dst + s] = flat[offsets[start + s] + at]
            for j in range(size):  # e[j, l] = sum_i B^T[j, i] d[i, l]
                for l in range(size):
                    acc = vector_zero()
                    for q in range(b_starts[j], b_starts[j + 1]):
                        acc = vector_fma(vector_splat(b_values[q]), vector_load(d, (b_cols[q] * size + l) * LANES_),
                                         acc)
                    vector_store_first(e, (j * size + l) * LANES_, acc, LANES_)
            for j in range(size):  # V[j, k] = sum_l e[j, l] B^T[k, l]
                for k in range(size):
                    acc = vector_zero()
                    for q in range(b_starts[k], b_starts[k + 1]):
                        acc = vector_fma(vector_splat(b_values[q]), vector_load(e, (j * size + b_cols[q]) * LANES_),
                                         acc)
                    xi = j * size + k
                    at = (((first // MR_) * positions + xi) * channels + c) * MR_
                    vector_store_first(v, at, acc, MR_)  # tiles 0..7: the first panel
                    if first + MR_ < rows:  # tiles 8..15: the next panel
                        vector_store_first(half, 0, acc, LANES_)
                        at = np.uint64(at + positions * channels * MR_)
                        for s in range(MR_):
                            v[at + np.uint64(s)] = half[MR_ + s]


@numba.njit(cache=True, fastmath=True, parallel=True)
def _winograd_transform_all(padded, padded_w, m, b_t, tiles_h, tiles_w, v):
    """The input transform of every tile (flat ``v``: panels x a*a x C x MR), in parallel over
    16-tile groups x blocks of channels, for kernels whose tasks split the output channels."""
    n, channels, plane = padded.shape
    size = m + 2
    positions = size * size
    per_image = tiles_h * tiles_w
    tiles = n * per_image
    panels = (tiles + MR_ - 1) // MR_
    groups = (panels * MR_ + LANES_ - 1) // LANES_
    flat = padded.reshape(-1)
    b_starts, b_cols, b_values = _nonzeros(b_t)
    offsets = _tile_offsets(groups * LANES_, tiles, per_image, tiles_w, m, channels, plane, padded_w)
    blocks = (channels + CHANNEL_BLOCK - 1) // CHANNEL_BLOCK
    for task in numba.prange(groups * blocks):
        g, block = task // blocks, task % blocks
        d = np.empty(positions * LANES_, np.float32)
        e = np.empty(positions * LANES_, np.float32)
        half = np.empty(positions * LANES_, np.float32)
        first_panel = g * (LANES_ // MR_)
        rows = min(LANES_, (panels - first_panel) * MR_)
        _transform_tiles(flat, offsets, g * LANES_, rows, block * CHANNEL_BLOCK,
                         min(channels, (block + 1) * CHANNEL_BLOCK), channels, plane, padded_w, size,
                         b_starts, b_cols, b_values, d, e, half, v[first_panel * positions * channels * MR_:])


@numba.njit(cache=True)
def _tile_offsets(count, tiles, per_image, tiles_w, m, channels, plane, padded_w):
    """Where each tile starts in its image's first channel (tiles past the end repeat the last:
    their products are computed but never stored)."""
    offsets = np.empty(count, np.uint64)
    for t in range(count):
        last = min(t, tiles - 1)
        image, within = last // per_image, last % per_image
        offsets[t] = image * channels * plane + (within // tiles_w) * m * padded_w + (within % tiles_w) * m
    return offsets


@numba.njit(cache=True, fastmath=True, parallel=True)
def _winograd_kernel(padded, padded_w, u, u_columns, m, b_t, a_t, tiles_h, tiles_w, per_task, chunk, bias,
                     residual, has_residual, code, alpha, beta, work, per_thread, pretransformed, v_all, no_addend, y):
    """y = epilogue(A^T [V[xi] @ U[xi]^T]_xi A), task by task (see :func:`run_winograd_fused`).

    ``padded`` is (N, C, rows * padded_w); ``u`` is flat (a*a, C * u_columns), ``U[xi]^T``
    in NR-column panels. A task's transformed tiles are ``v[panel, xi, c, 0:MR]`` and its
    products ``P[tile, xi, channel]`` (a tile's a*a x channels block contiguous, for the output
    transform), both in ``work`` (``per_thread`` floats a thread).
    """
    n, channels, plane = padded.shape
    out_channels, out_h, out_w = y.shape[1], y.shape[2], y.shape[3]
    size = m + 2
    positions = size * size
    per_image = tiles_h * tiles_w
    tiles = n * per_image
    panels = (tiles + MR_ - 1) // MR_
    tile_tasks = (panels + per_task - 1) // per_task
    channel_tasks = (out_channels + chunk - 1) // chunk
    flat = padded.reshape(-1)
    flat_y = y.reshape(-1)
    flat_z = residual.reshape(-1)
    out_plane = out_h * out_w
    b_starts, b_cols, b_values = _nonzeros(b_t)
    a_starts, a_cols, a_values = _nonzeros(a_t)
    offsets = _tile_offsets(tile_tasks * per_task * MR_ + LANES_, tiles, per_image, tiles_w, m, channels, plane,
                            padded_w)
    for task in numba.prange(tile_tasks * channel_tasks):
        tile_task, channel_task = task // channel_tasks, task % channel_tasks
        p_lo = tile_task * per_task
        p_count = min(panels, p_lo + per_task) - p_lo
        rows = p_count * MR_
        o_lo = channel_task * chunk
        o_count = min(chunk, out_channels - o_lo)
        columns = (o_count + NR_ - 1) // NR_ * NR_
        slot = numba.get_thread_id() * per_thread
        v = work[slot:slot + positions * rows * channels]
        products = work[slot + positions * rows * channels:slot + positions * rows * (channels + columns)]
        d = work[slot + per_thread - 3 * positions * LANES_:slot + per_thread - 2 * positions * LANES_]
        e = work[slot + per_thread - 2 * positions * LANES_:slot + per_thread - positions * LANES_]
        half = work[slot + per_thread - positions * LANES_:slot + per_thread]
        # 1. the input transform, 16 tiles at a time: v[p, xi, c, 0:MR] = (B^T d B)[xi]
        if pretransformed:  # done by _winograd_transform_all, shared by the tasks of other channel blocks
            v = v_all[p_lo * positions * channels * MR_:(p_lo + p_count) * positions * channels * MR_]
        else:
            _transform_tiles(flat, offsets, p_lo * MR_, rows, 0, channels, channels, plane, padded_w, size,
                             b_starts, b_cols, b_values, d, e, half, v)
        # 2. the a*a products: P[xi] = V[xi] @ U[xi]^T on the micro-kernel
        for xi in range(positions):
            for k0 in range(0, channels, KC_):
                kb = min(KC_, channels - k0)
                for jn in range(0, columns, NR_):
                    b_at = xi * channels * u_columns + k0 * u_columns + (o_lo + jn) * kb
                    for p in range(p_count):
                        _micro_kernel(kb, v, ((p * positions + xi) * channels + k0) * MR_, u, b_at, products,
                                      (p * MR_ * positions + xi) * columns + jn, positions * columns, MR_, NR_,
                                      k0 > 0, False,
                                      no_addend, 0, 0, 0, np.float32(1.0), np.float32(0.0), 0,
                                      np.float32(0.0), np.float32(0.0), no_addend, -1)
        # 3. the output transform, 16 output channels at a time: y = f(A^T P A + bias + z)
        for r in range(rows):
            t = p_lo * MR_ + r
            if t >= tiles:
                break
            image, within = t // per_image, t % per_image
            ty, tx = within // tiles_w, within % tiles_w
            for o in range(0, o_count, LANES_):
                lanes = min(LANES_, o_count - o)
                for a in range(m):  # half[a, k] = sum_j A^T[a, j] P[j, k]
                    for k in range(size):
                        acc = vector_zero()
                        for q in range(a_starts[a], a_starts[a + 1]):
                            at = (r * positions + a_cols[q] * size + k) * columns + o
                            acc = vector_fma(vector_splat(a_values[q]), vector_load(products, at), acc)
                        vector_store_first(half, (a * size + k) * LANES_, acc, LANES_)
                bias_vector = vector_load_first(bias, o_lo + o, lanes)
                for a in range(m):
                    oh = ty * m + a
                    if oh >= out_h:
                        break
                    for b in range(m):
                        ow = tx * m + b
                        if ow >= out_w:
                            break
                        acc = bias_vector
                        for q in range(a_starts[b], a_starts[b + 1]):
                            at = (a * size + a_cols[q]) * LANES_
                            acc = vector_fma(vector_splat(a_values[q]), vector_load(half, at), acc)
                        vector_store_first(e, 0, acc, LANES_)
                        at = np.uint64((image * out_channels + o_lo + o) * out_plane + oh * out_w + ow)
                        stride = np.uint64(out_plane)
                        if has_residual:
                            for s in range(lanes):
                                e[s] += flat_z[at + np.uint64(s) * stride]
                        _activate_vector(e, lanes, code, alpha, beta)
                        for s in range(lanes):
                            flat_y[at + np.uint64(s) * stride] = e[s]


@numba.njit(cache=True, fastmath=True, inline="always")
def _activate_vector(values, count, code, alpha, beta):
    """``values[:count] = f(values[:count])``, one vectorisable loop per activation."""
    if code == RELU:
        for i in range(count):
            values[i] = max(values[i], np.float32(0.0))
    elif code == CLIP:
        for i in range(count):
            values[i] = min(max(values[i], alpha), beta)
    elif code != IDENTITY:
        for i in range(count):
            values[i] = activate(values[i], code, alpha, beta)


_NO_ADDEND = np.zeros(1, np.float32)
#: Channels one task of :func:`_winograd_input` transforms (for the same 16 tiles).
CHANNEL_BLOCK = 32

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
