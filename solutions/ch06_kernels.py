"""Chapter 06 answers: im2col, Winograd F(2, 3), the NC4HW4 layout, a blocked GEMM.

Same names and signatures as :mod:`exercises.ch06_kernels`, whose docstrings explain each
task; the comments here only say why a line is the way it is.
"""

from __future__ import annotations

import numpy as np


def _pair(value) -> tuple[int, int]:
    return (int(value), int(value)) if np.isscalar(value) else (int(value[0]), int(value[1]))


def _pads(pad) -> tuple[int, int, int, int]:
    if np.isscalar(pad):
        return (int(pad),) * 4
    top, left, bottom, right = (int(p) for p in pad)
    return top, left, bottom, right


# ---------------------------------------------------------------------------- exercise 1
def im2col(x: np.ndarray, kh: int, kw: int, stride=1, pad=0, dilation=1) -> np.ndarray:
    """One strided slice of the zero-padded image per tap (c, i, j): C·kh·kw slices in all."""
    x = np.asarray(x)
    channels, height, width = x.shape
    (sh, sw), (dh, dw) = _pair(stride), _pair(dilation)
    top, left, bottom, right = _pads(pad)
    out_h = (height + top + bottom - dh * (kh - 1) - 1) // sh + 1
    out_w = (width + left + right - dw * (kw - 1) - 1) // sw + 1
    padded = np.pad(x, ((0, 0), (top, bottom), (left, right)))
    columns = np.empty((channels, kh, kw, out_h, out_w), dtype=np.result_type(x.dtype, np.float32))
    for i in range(kh):
        for j in range(kw):
            # Tap (i, j) of every output pixel: rows i·dh, i·dh + sh, ... of the padded image.
            rows = slice(i * dh, i * dh + sh * (out_h - 1) + 1, sh)
            cols = slice(j * dw, j * dw + sw * (out_w - 1) + 1, sw)
            columns[:, i, j] = padded[:, rows, cols]
    # (c, i, j) is the weights' order: the row index (c·kh + i)·kw + j.
    return columns.reshape(channels * kh * kw, out_h * out_w)


def conv2d_im2col(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None = None, stride=1, pad=0,
                  dilation=1) -> np.ndarray:
    """Per image: ``W (M x C·kh·kw) @ columns (C·kh·kw x OH·OW)``, plus the bias, reshaped."""
    x, w = np.asarray(x, np.float32), np.asarray(w, np.float32)
    out_channels, _, kh, kw = w.shape
    matrix = w.reshape(out_channels, -1)
    images = []
    for image in x:
        columns = im2col(image, kh, kw, stride, pad, dilation)
        y = matrix @ columns
        if bias is not None:
            y = y + np.asarray(bias, np.float32)[:, None]  # one bias per output channel (row)
        images.append(y)
    (sh, sw), (dh, dw) = _pair(stride), _pair(dilation)
    top, left, bottom, right = _pads(pad)
    out_h = (x.shape[2] + top + bottom - dh * (kh - 1) - 1) // sh + 1
    out_w = (x.shape[3] + left + right - dw * (kw - 1) - 1) // sw + 1
    return np.stack(images).reshape(x.shape[0], out_channels, out_h, out_w).astype(np.float32)


# ---------------------------------------------------------------------------- exercise 2
def winograd_f23_transforms() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lavin & Gray's F(2, 3): the rows follow m1..m4 of the exercise's docstring."""
    b_t = np.array([
        [1, 0, -1, 0],  # d0 - d2
        [0, 1, 1, 0],  # d1 + d2
        [0, -1, 1, 0],  # d2 - d1
        [0, 1, 0, -1],  # d1 - d3
    ], dtype=np.float64)
    g = np.array([
        [1.0, 0.0, 0.0],  # g0
        [0.5, 0.5, 0.5],  # (g0 + g1 + g2) / 2
        [0.5, -0.5, 0.5],  # (g0 - g1 + g2) / 2
        [0.0, 0.0, 1.0],  # g2
    ])
    a_t = np.array([
        [1, 1, 1, 0],  # y0 = m1 + m2 + m3
        [0, 1, -1, -1],  # y1 = m2 - m3 - m4
    ], dtype=np.float64)
    return b_t, g, a_t


def winograd_f23_conv1d(d: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Tiles of 2 outputs from 4 inputs (overlapping by 2); U = G g once for all tiles."""
    b_t, g_matrix, a_t = winograd_f23_transforms()
    d, g = np.asarray(d), np.asarray(g)
    outputs = len(d) - 2
    if outputs % 2:
        d = np.append(d, 0.0)  # the last tile reads one input past the end
    u = g_matrix @ g  # the filter transform: once per filter, not per tile
    tiles = []
    for i in range(0, outputs, 2):
        v = b_t @ d[i:i + 4]  # additions only: B_T holds 0 and ±1
        tiles.append(a_t @ (u * v))  # the 4 multiplications of the tile
    return np.concatenate(tiles)[:outputs]


# ---------------------------------------------------------------------------- exercise 3
def nchw_to_nc4hw4(x: np.ndarray, c: int = 4) -> np.ndarray:
    """Zero-pad C to whole blocks, split C into (blocks, c), move the lane axis c last."""
    x = np.asarray(x)
    n, channels, h, w = x.shape
    blocks = -(-channels // c)
    padded = np.zeros((n, blocks * c, h, w), dtype=x.dtype)
    padded[:, :channels] = x
    return np.ascontiguousarray(padded.reshape(n, blocks, c, h, w).transpose(0, 1, 3, 4, 2))


def nc4hw4_to_nchw(y: np.ndarray, channels: int) -> np.ndarray:
    """Move the lane axis back next to the block axis, merge them, drop the padding channels."""
    y = np.asarray(y)
    n, blocks, h, w, c = y.shape
    if not (blocks - 1) * c < channels <= blocks * c:
        raise ValueError(f"{blocks} blocks of {c} channels hold {(blocks - 1) * c + 1} to {blocks * c} "
                         f"channels, not {channels}")
    merged = y.transpose(0, 1, 4, 2, 3).reshape(n, blocks * c, h, w)
    return np.ascontiguousarray(merged[:, :channels])


# ---------------------------------------------------------------------------- exercise 4
def blocked_matmul(a, b, mc: int, nc: int, kc: int) -> np.ndarray:
    """Goto's loop order: N blocks, then K blocks (B's block read once), then M blocks."""
    m, k = a.shape
    k_b, n = b.shape
    if k != k_b:
        raise ValueError(f"cannot multiply {m} x {k} by {k_b} x {n}")
    c = np.zeros((m, n), dtype=np.result_type(a.dtype, b.dtype))
    for j0 in range(0, n, nc):
        j1 = min(j0 + nc, n)  # the last block may be smaller
        for p0 in range(0, k, kc):
            p1 = min(p0 + kc, k)
            b_block = b[p0:p1, j0:j1]  # reused by every block of A below
            for i0 in range(0, m, mc):
                i1 = min(i0 + mc, m)
                c[i0:i1, j0:j1] += a[i0:i1, p0:p1] @ b_block
    return c
