"""Data layouts of a 4-D activation tensor, and the conversions between them.

The same numbers can be laid out in memory in several orders, and which order is fastest
depends on who reads them:

* **NCHW** (ONNX, PyTorch, Caffe): one channel's image is contiguous. Good for im2col and
  for per-channel vector loops over pixels.
* **NHWC** (TensorFlow, TFLite, Arm's libraries): all channels of one pixel are contiguous.
  A 1x1 convolution is then a plain matrix product ``[N*H*W, C] @ [C, M]``.
* **NCHWc** (oneDNN's nChw8c / nChw16c; MNN's NC4HW4 is ``c = 4``): channels cut into
  blocks of ``c``, the channel within a block fastest. One vector register holds ``c``
  channels of one pixel, so a direct convolution updates ``c`` output channels with one FMA
  (see ``nchwc.py``). ``c`` = 8 float32 lanes for AVX2, 16 for AVX-512; C is padded with
  zeros to a multiple of ``c``.
* **NC1HWC0** (Huawei Ascend): NCHWc with ``C0 = 16``, named C1 = ceil(C / 16) blocks.

Each conversion exists twice: a readable NumPy function (a reshape and a transpose, which
is what the layout *means*) and a Numba kernel (an explicit copy loop, parallel over the
outer blocks, which is what the hardware does). The tests check them against each other
and for round trips. The Numba kernels take C-contiguous arrays (any dtype; the engine
only calls them on float32, so one compiled version serves).
"""

from __future__ import annotations

import numba
import numpy as np

#: The block size of Ascend's NC1HWC0 layout (C0: 16 float16 lanes of its cube unit).
ASCEND_C0 = 16


# ============================================================================ NumPy (readable)
def nchw_to_nhwc(x: np.ndarray) -> np.ndarray:
    """``[N, C, H, W] -> [N, H, W, C]``."""
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))


def nhwc_to_nchw(x: np.ndarray) -> np.ndarray:
    """``[N, H, W, C] -> [N, C, H, W]``."""
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def nchw_to_nchwc(x: np.ndarray, block: int) -> np.ndarray:
    """``[N, C, H, W] -> [N, ceil(C/block), H, W, block]``, missing channels zero."""
    n, channels, h, w = x.shape
    count = -(-channels // block)
    padded = np.zeros((n, count * block, h, w), x.dtype)
    padded[:, :channels] = x
    # Split C into (block index, lane), then move the lane to the end.
    return np.ascontiguousarray(padded.reshape(n, count, block, h, w).transpose(0, 1, 3, 4, 2))


def nchwc_to_nchw(x: np.ndarray, channels: int) -> np.ndarray:
    """``[N, C/c, H, W, c] -> [N, channels, H, W]``: the first ``channels`` channels."""
    n, count, h, w, block = x.shape
    return np.ascontiguousarray(x.transpose(0, 1, 4, 2, 3).reshape(n, count * block, h, w)[:, :channels])


def nchw_to_nc1hwc0(x: np.ndarray) -> np.ndarray:
    """``[N, C, H, W] -> [N, C1, H, W, C0]`` with ``C0 = 16`` (Ascend's name for NCHW16c)."""
    return nchw_to_nchwc(x, ASCEND_C0)


def nc1hwc0_to_nchw(x: np.ndarray, channels: int) -> np.ndarray:
    """``[N, C1, H, W, C0] -> [N, channels, H, W]``."""
    return nchwc_to_nchw(x, channels)


# ============================================================================ Numba (fast)
def nchw_to_nhwc_numba(x: np.ndarray) -> np.ndarray:
    """Numba twin of :func:`nchw_to_nhwc`."""
    return _nchw_to_nhwc(np.ascontiguousarray(x))


def nhwc_to_nchw_numba(x: np.ndarray) -> np.ndarray:
    """Numba twin of :func:`nhwc_to_nchw`."""
    return _nhwc_to_nchw(np.ascontiguousarray(x))


def nchw_to_nchwc_numba(x: np.ndarray, block: int) -> np.ndarray:
    """Numba twin of :func:`nchw_to_nchwc`."""
    n, channels, h, w = x.shape
    out = np.empty((n, -(-channels // block), h, w, block), x.dtype)
    _nchw_to_nchwc(np.ascontiguousarray(x), out)
    return out


def nchwc_to_nchw_numba(x: np.ndarray, channels: int) -> np.ndarray:
    """Numba twin of :func:`nchwc_to_nchw`."""
    n, count, h, w, block = x.shape
    if not (count - 1) * block < channels <= count * block:
        raise ValueError(f"{count} blocks of {block} hold {(count - 1) * block + 1} to {count * block} "
                         f"channels, not {channels}")
    out = np.empty((n, channels, h, w), x.dtype)
    _nchwc_to_nchw(np.ascontiguousarray(x), out)
    return out


def nchw_to_nc1hwc0_numba(x: np.ndarray) -> np.ndarray:
    """Numba twin of :func:`nchw_to_nc1hwc0`."""
    return nchw_to_nchwc_numba(x, ASCEND_C0)


def nc1hwc0_to_nchw_numba(x: np.ndarray, channels: int) -> np.ndarray:
    """Numba twin of :func:`nc1hwc0_to_nchw`."""
    return nchwc_to_nchw_numba(x, channels)


# ---------------------------------------------------------------------------- the copy loops
# Each loop writes its output in memory order (the last index fastest) and reads with a
# stride: a transpose always streams one side and gathers the other, and stores that stream
# are the cheaper choice (no read-for-ownership of half-written cache lines).

@numba.njit(cache=True, parallel=True)
def _nchw_to_nhwc(x):
    n, c, h, w = x.shape
    out = np.empty((n, h, w, c), x.dtype)
    for job in numba.prange(n * h):
        b, row = job // h, job % h
        for col in range(w):
            for ch in range(c):
                out[b, row, col, ch] = x[b, ch, row, col]
    return out


@numba.njit(cache=True, parallel=True)
def _nhwc_to_nchw(x):
    n, h, w, c = x.shape
    out = np.empty((n, c, h, w), x.dtype)
    for job in numba.prange(n * c):
        b, ch = job // c, job % c
        for row in range(h):
            for col in range(w):
                out[b, ch, row, col] = x[b, row, col, ch]
    return out


@numba.njit(cache=True, parallel=True)
def _nchw_to_nchwc(x, out):
    """``out[n, b, h, w, l] = x[n, b*c + l, h, w]``, and 0 in the lanes past the last channel."""
    n, channels, h, w = x.shape
    count, block = out.shape[1], out.shape[4]
    for job in numba.prange(n * count):
        b, k = job // count, job % count
        lanes = min(block, channels - k * block)
        for row in range(h):
            for col in range(w):
                for lane in range(lanes):
                    out[b, k, row, col, lane] = x[b, k * block + lane, row, col]
                for lane in range(lanes, block):
                    out[b, k, row, col, lane] = 0


@numba.njit(cache=True, parallel=True)
def _nchwc_to_nchw(x, out):
    """``out[n, ch, h, w] = x[n, ch // c, h, w, ch % c]`` for the channels of ``out``.

    One job per block: it reads the block once, in memory order, and writes its ``c``
    channel planes side by side (c sequential write streams; the hardware prefetchers
    follow that many).
    """
    n, channels, h, w = out.shape
    count, block = x.shape[1], x.shape[4]
    for job in numba.prange(n * count):
        b, k = job // count, job % count
        lanes = min(block, channels - k * block)
        for row in range(h):
            for col in range(w):
                for lane in range(lanes):
                    out[b, k * block + lane, row, col] = x[b, k, row, col, lane]
