"""Chapter 06 exercises: the loop nests inside an inference engine's kernels.

1. :func:`im2col` and :func:`conv2d_im2col` — lower a convolution to one matrix product.
2. :func:`winograd_f23_transforms` and :func:`winograd_f23_conv1d` — Winograd's F(2, 3):
   two outputs of a 3-tap filter with 4 multiplications instead of 6.
3. :func:`nchw_to_nc4hw4` and :func:`nc4hw4_to_nchw` — the blocked layout MNN calls NC4HW4.
4. :func:`blocked_matmul` — a matrix product by blocks of M, N and K (cache blocking).

Replace each ``raise NotImplementedError`` with your code (NumPy is all you need), then grade it:

    pytest tests/exercises/test_ch06_kernels.py --impl=exercises -m ex1   # or ex2, ex3, ex4
    pytest tests/exercises --impl=exercises -m ch06_ex1                   # the same, by chapter mark

The graded tests compare your answers with ONNX Runtime's Conv, with naive loops written in
the test file, with ``np.correlate``, and with properties any correct answer has (round
trips, exact polynomial identities, counts of multiplications and of block reads). They never
look at the solution file.
"""

from __future__ import annotations

import numpy as np


# ---------------------------------------------------------------------------- exercise 1
def im2col(x: np.ndarray, kh: int, kw: int, stride=1, pad=0, dilation=1) -> np.ndarray:
    """The im2col matrix of one image ``x`` of shape (C, H, W) for a ``kh``×``kw`` kernel.

    ``stride`` and ``dilation`` are an int or a pair ``(along H, along W)``; ``pad`` is an int or
    four ints ``(top, left, bottom, right)`` — ONNX's order for ``pads`` of a 2-D Conv
    (``[x1_begin, x2_begin, x1_end, x2_end]``). The output has

        OH = (H + top + bottom - dilation_h·(kh - 1) - 1) // stride_h + 1     (OW likewise)

    rows and columns. Return a float array of shape ``(C·kh·kw, OH·OW)`` with

        columns[(c·kh + i)·kw + j, oh·OW + ow] = x[c, oh·stride_h + i·dilation_h - top,
                                                     ow·stride_w + j·dilation_w - left]

    and 0 where that position falls in the padding (outside the image). Column ``p`` is the
    receptive field of output pixel ``p``, flattened in the order of the weights
    ``w[m, c, i, j]``; so a convolution is ``w.reshape(M, C·kh·kw) @ columns``
    (Chellapilla, Puri & Simard, 2006).

    Worked example: ``x = np.arange(9.).reshape(1, 3, 3)``, a 2×2 kernel, stride 1, no pad:
    OH = OW = 2 and the 4×4 result is (rows = the taps (0,0), (0,1), (1,0), (1,1))::

        [[0, 1, 3, 4],
         [1, 2, 4, 5],
         [3, 4, 6, 7],
         [4, 5, 7, 8]]

    Hint: pad the image once with ``np.pad``; then each tap ``(c, i, j)`` is one strided slice
    of the padded image, ``padded[c, i·dh : i·dh + sh·(OH-1) + 1 : sh, j·dw : ... : sw]``.
    """
    raise NotImplementedError("exercise: im2col (chapter 06, exercise 1)")


def conv2d_im2col(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None = None, stride=1, pad=0,
                  dilation=1) -> np.ndarray:
    """ONNX's Conv (group 1) for ``x`` (N, C, H, W) and ``w`` (M, C, kh, kw), by im2col + GEMM.

    ``stride``, ``pad`` and ``dilation`` as in :func:`im2col`; ``bias`` is None or (M,).
    For each image: build its columns with your :func:`im2col`, multiply
    ``w.reshape(M, -1) @ columns`` (an (M, OH·OW) matrix), add the bias to every column, and
    reshape to (M, OH, OW). Return float32, shape (N, M, OH, OW).

    Example: ``x`` of shape (1, 3, 8, 8), ``w`` of shape (4, 3, 3, 3), ``pad=1`` gives (1, 4, 8, 8);
    with ``stride=2`` it gives (1, 4, 4, 4).
    """
    raise NotImplementedError("exercise: conv2d_im2col (chapter 06, exercise 1)")


# ---------------------------------------------------------------------------- exercise 2
def winograd_f23_transforms() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Winograd's F(2, 3) as three matrices ``(B_T, G, A_T)`` of shapes (4, 4), (4, 3), (2, 4).

    F(2, 3) computes two outputs of a 3-tap correlation,
    ``y[i] = d[i]·g[0] + d[i+1]·g[1] + d[i+2]·g[2]`` for i = 0, 1, from 4 inputs ``d`` as

        y = A_T @ ((G @ g) * (B_T @ d))                       (* is elementwise)

    The filter transform ``G @ g`` is computed once per filter, before inference; the data
    transform ``B_T @ d`` and the output transform ``A_T @ (...)`` must use additions and
    subtractions only: every entry of ``B_T`` and ``A_T`` is 0, 1 or -1. So the only
    multiplications of data by filter values are the 4 of the elementwise product, where
    the direct formula needs 2 × 3 = 6 (Lavin & Gray, 2016).

    Derivation (Toom-Cook, with the points 0, 1, -1 and ∞): the four products are

        m1 = (d0 - d2)·g0            m2 = (d1 + d2)·(g0 + g1 + g2)/2
        m4 = (d1 - d3)·g2            m3 = (d2 - d1)·(g0 - g1 + g2)/2

    and ``y0 = m1 + m2 + m3``, ``y1 = m2 - m3 - m4``. Read the rows of ``B_T`` off the data
    factors, the rows of ``G`` off the filter factors (in the same order m1, m2, m3, m4), and
    ``A_T`` off the two sums. Check it on paper with d = (1, 2, 3, 4), g = (1, 1, 1): y = (6, 9).
    """
    raise NotImplementedError("exercise: winograd_f23_transforms (chapter 06, exercise 2)")


def winograd_f23_conv1d(d: np.ndarray, g: np.ndarray) -> np.ndarray:
    """The valid correlation of ``d`` (length n >= 3) with ``g`` (length 3), by F(2, 3) tiles.

    The result has n - 2 values, ``y[i] = d[i]·g[0] + d[i+1]·g[1] + d[i+2]·g[2]`` (what
    ``np.correlate(d, g, "valid")`` returns). Compute ``U = G @ g`` once; then for each tile
    of two outputs starting at ``i = 0, 2, 4, ...`` take the 4 inputs ``d[i:i+4]`` (tiles
    overlap by 2), and ``y[i:i+2] = A_T @ (U * (B_T @ d[i:i+4]))``. When n - 2 is odd, the last
    tile runs one input past the end: append a zero to ``d`` and drop the extra output.

    The grader counts multiplications: it calls this function with object arrays of numbers
    that count every product of a data value by a filter value. Use only NumPy arithmetic
    (``+``, ``-``, ``*``, ``@``), slicing and ``np.concatenate`` / ``np.append`` on ``d`` and
    ``g`` — do not convert them with ``astype`` or ``np.asarray(..., dtype=float)``. A correct
    answer does 4 such products per tile: 16 for n = 10, where the direct formula does 24.

    Example: d = (1, 2, 3, 4, 5), g = (1, 0, -1) gives (-2, -2, -2).
    """
    raise NotImplementedError("exercise: winograd_f23_conv1d (chapter 06, exercise 2)")


# ---------------------------------------------------------------------------- exercise 3
def nchw_to_nc4hw4(x: np.ndarray, c: int = 4) -> np.ndarray:
    """``x`` (N, C, H, W) in the blocked layout NCHWc: shape (N, ceil(C / c), H, W, c).

    The channels are cut into blocks of ``c`` (MNN's NC4HW4 is ``c = 4``; oneDNN's nChw16c
    and Ascend's NC1HWC0 are ``c = 16``), and the channel within a block becomes the last,
    fastest-varying axis:

        y[n, b, h, w, l] = x[n, b·c + l, h, w]      if b·c + l < C, else 0

    so one pixel's ``c`` channels sit side by side, one SIMD vector. When C is not a
    multiple of ``c`` the last block is padded with zero channels. Keep the dtype of ``x``.

    Example: x of shape (1, 6, 2, 2) with c = 4 gives shape (1, 2, 2, 2, 4); ``y[0, 1, :, :, 2:]``
    are the two padding channels, all zeros.
    Hint: pad C with zeros, reshape C to (blocks, c), move that ``c`` axis to the end.
    """
    raise NotImplementedError("exercise: nchw_to_nc4hw4 (chapter 06, exercise 3)")


def nc4hw4_to_nchw(y: np.ndarray, channels: int) -> np.ndarray:
    """Undo :func:`nchw_to_nc4hw4`: ``y`` (N, B, H, W, c) back to (N, channels, H, W).

    ``x[n, k, h, w] = y[n, k // c, h, w, k % c]`` for ``k < channels``; the padding channels
    are dropped. Raise ``ValueError`` when ``channels`` does not fit the blocks, that is
    unless ``(B - 1)·c < channels <= B·c``. Keep the dtype; return a C-contiguous array.
    """
    raise NotImplementedError("exercise: nc4hw4_to_nchw (chapter 06, exercise 3)")


# ---------------------------------------------------------------------------- exercise 4
def blocked_matmul(a, b, mc: int, nc: int, kc: int) -> np.ndarray:
    """``a @ b`` (a: M×K, b: K×N) computed block by block, as a cache-blocked GEMM is.

    Loop over blocks of at most ``mc`` rows of C, ``nc`` columns of C and ``kc`` steps of K
    (the sizes need not divide M, N, K: the last block of each is smaller), and accumulate

        C[i0:i1, j0:j1] += a[i0:i1, p0:p1] @ b[p0:p1, j0:j1]

    The loop order of Goto & van de Geijn (2008) is: blocks of N (outermost), then of K
    (read the block of ``b`` once here), then of M (read the block of ``a``); then the block
    product. A block of ``b`` (kc × nc) is reused by every block of ``a`` in the innermost
    loop, which is why it is sized to stay in the L2/L3 cache.

    ``a`` and ``b`` may be any objects with a ``.shape`` and ``.dtype`` that return a NumPy
    array when sliced with two slices, ``a[i0:i1, p0:p1]``: read them only that way, one
    block at a time (the grader records every read and checks that no read is larger than
    a block). Return a NumPy array of shape (M, N) with the dtype ``np.result_type(a.dtype,
    b.dtype)``.

    Example: with M = N = K = 5 and mc = nc = kc = 2 there are 3 blocks along each axis;
    the loop reads 3·3 = 9 blocks of ``b`` and 3·3·3 = 27 blocks of ``a``.
    """
    raise NotImplementedError("exercise: blocked_matmul (chapter 06, exercise 4)")
