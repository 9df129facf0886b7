"""Binary GEMM and convolution: ±1 values packed 64 to a word, multiplied by XNOR and popcount.

A binarized network (BinaryConnect, BNN, XNOR-Net) keeps only the sign of its weights, and of
its activations too: every value is −1 or +1, one bit (1 for +1). The dot product of two ±1
vectors of length ``K`` is then

    a · b = (#positions where the signs agree) − (#positions where they differ)
          = K − 2 · popcount(bits(a) XOR bits(b))

so 64 multiply-accumulates become one XOR and one popcount on a 64-bit word. (Papers write
XNOR: popcount(XNOR) counts the agreements, and ``2 · agreements − K`` is the same number.)
Words are padded with zero bits on both operands; padded positions XOR to 0 and count as
neither, so ``K`` is the true length.

XNOR-Net (Rastegari et al., 2016) multiplies each output channel by ``α = mean |W|`` of its
filter, which brings the binary product back to the scale of the float one; :func:`xnor_gemm`
takes ``alpha`` and applies it in the epilogue.

Three versions, each checked against the next: :func:`binary_matmul_reference` (float ±1
matrices and ``@``), :func:`xnor_gemm_numpy` (NumPy's ``bitwise_count`` on the packed words)
and :func:`xnor_gemm` (Numba: a popcount intrinsic — one instruction, ``POPCNT`` or, on CPUs
with AVX-512 VPOPCNTDQ, eight words at a time — over blocks of four output columns).
:func:`binary_conv2d` lowers a convolution to it with im2col on packed bits; :func:`benchmark_xnor_gemm`
measures it next to the float GEMM in equivalent multiply-accumulates per second.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange, types
from numba.extending import intrinsic

WORD = 64


# ---------------------------------------------------------------------------- packing
def pack_signs(x: np.ndarray) -> np.ndarray:
    """Signs of ``x`` along its last axis as bits (1 for ``x >= 0``, i.e. +1), packed into
    ``ceil(K / 64)`` uint64 words per row, zero-padded."""
    x = np.asarray(x)
    k = x.shape[-1]
    words = -(-k // WORD)
    bits = np.zeros(x.shape[:-1] + (words * WORD,), dtype=bool)
    bits[..., :k] = x >= 0
    packed = np.packbits(bits, axis=-1, bitorder="little")
    return np.ascontiguousarray(packed).view(np.uint64)


def unpack_signs(packed: np.ndarray, k: int) -> np.ndarray:
    """The ±1 float32 values of :func:`pack_signs`' words, first ``k`` per row."""
    bits = np.unpackbits(np.ascontiguousarray(packed).view(np.uint8), axis=-1, bitorder="little")[..., :k]
    return np.where(bits, 1.0, -1.0).astype(np.float32)


# ---------------------------------------------------------------------------- three versions
def binary_matmul_reference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``sign(a) @ sign(b).T`` in float (sign(0) = +1): the oracle. ``a`` is [M, K], ``b`` [N, K]."""
    return np.where(a >= 0, 1.0, -1.0) @ np.where(b >= 0, 1.0, -1.0).T


def xnor_gemm_numpy(a_bits: np.ndarray, b_bits: np.ndarray, k: int) -> np.ndarray:
    """``K − 2 · popcount(a XOR b)`` summed over words, for every row pair: [M, N] int32."""
    differ = np.bitwise_count(a_bits[:, None, :] ^ b_bits[None, :, :]).sum(axis=-1, dtype=np.int64)
    return (k - 2 * differ).astype(np.int32)


@intrinsic
def _popcount(typingctx, word):
    """LLVM's ``ctpop`` on a uint64: one POPCNT instruction (vectorised with VPOPCNTDQ)."""
    if word != types.uint64:
        return None

    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])

    return types.uint64(types.uint64), codegen


@njit(cache=True, parallel=True, fastmath=True)
def _xnor_gemm(a_bits, b_bits, k, alpha, out):
    m, words = a_bits.shape
    n = b_bits.shape[0]
    blocks = n // 4
    for i in prange(m):
        scale = alpha[i]
        for jb in range(blocks):  # four columns share each load of a's word
            j = 4 * jb
            d0 = d1 = d2 = d3 = np.uint64(0)
            for w in range(words):
                word = a_bits[i, w]
                d0 += _popcount(word ^ b_bits[j, w])
                d1 += _popcount(word ^ b_bits[j + 1, w])
                d2 += _popcount(word ^ b_bits[j + 2, w])
                d3 += _popcount(word ^ b_bits[j + 3, w])
            out[i, j] = scale * (k - 2 * np.int64(d0))
            out[i, j + 1] = scale * (k - 2 * np.int64(d1))
            out[i, j + 2] = scale * (k - 2 * np.int64(d2))
            out[i, j + 3] = scale * (k - 2 * np.int64(d3))
        for j in range(4 * blocks, n):
            d = np.uint64(0)
            for w in range(words):
                d += _popcount(a_bits[i, w] ^ b_bits[j, w])
            out[i, j] = scale * (k - 2 * np.int64(d))


def xnor_gemm(a_bits: np.ndarray, b_bits: np.ndarray, k: int, alpha: np.ndarray | None = None,
              out: np.ndarray | None = None) -> np.ndarray:
    """[M, N] float32 ``alpha[i] · (a_i · b_j)`` of packed ±1 rows (``a`` [M, W], ``b`` [N, W]
    uint64 from :func:`pack_signs`, ``k`` the true length); ``alpha`` defaults to 1."""
    a_bits, b_bits = np.ascontiguousarray(a_bits, np.uint64), np.ascontiguousarray(b_bits, np.uint64)
    if a_bits.shape[1] != b_bits.shape[1]:
        raise ValueError(f"packed rows differ in length: {a_bits.shape[1]} and {b_bits.shape[1]} words")
    m, n = a_bits.shape[0], b_bits.shape[0]
    alpha = np.ones(m, np.float32) if alpha is None else np.ascontiguousarray(alpha, np.float32)
    out = np.empty((m, n), np.float32) if out is None else out
    _xnor_gemm(a_bits, b_bits, np.int64(k), alpha, out)
    return out


# ---------------------------------------------------------------------------- convolution
def binary_conv2d(x: np.ndarray, w: np.ndarray, *, stride: int = 1, pad: int = 0, alpha: bool = True,
                  kernel=xnor_gemm) -> np.ndarray:
    """A convolution of ``sign(x)`` [N, C, H, W] with ``sign(w)`` [M, C, kh, kw], by im2col on
    bits and :func:`xnor_gemm`; with ``alpha`` each output channel is scaled by mean |w| of its
    filter (XNOR-Net). Padding adds +1 values (a binary tensor has no 0; padding with +1 is
    the convention of, e.g., Larq's ``pad_values=1``)."""
    n, c, h, width = x.shape
    m, _, kh, kw = w.shape
    signs = np.where(x >= 0, 1.0, -1.0).astype(np.float32)
    if pad:
        signs = np.pad(signs, ((0, 0), (0, 0), (pad, pad), (pad, pad)), constant_values=1.0)
    oh, ow = (h + 2 * pad - kh) // stride + 1, (width + 2 * pad - kw) // stride + 1
    windows = np.lib.stride_tricks.sliding_window_view(signs, (kh, kw), axis=(2, 3))[:, :, ::stride, ::stride]
    columns = windows.transpose(0, 2, 3, 1, 4, 5).reshape(n * oh * ow, c * kh * kw)  # one row per output pixel
    filters = w.reshape(m, -1)
    scale = np.abs(filters).mean(axis=1).astype(np.float32) if alpha else np.ones(m, np.float32)
    k = c * kh * kw
    if kernel is xnor_gemm:
        product = xnor_gemm(pack_signs(filters), pack_signs(columns), k, scale)
    else:
        product = kernel(pack_signs(filters), pack_signs(columns), k) * scale[:, None]
    return product.reshape(m, n, oh, ow).transpose(1, 0, 2, 3).astype(np.float32)


# ---------------------------------------------------------------------------- measurement
def benchmark_xnor_gemm(sizes=((256, 256, 4096), (512, 512, 8192), (1024, 1024, 1024)), repeats: int = 5) -> list[dict]:
    """Equivalent multiply-accumulates per second (M·N·K / time) of :func:`xnor_gemm` next to
    the packed float GEMM (:func:`tinyinfer.kernels.gemm.gemm`) and NumPy's BLAS, best of
    ``repeats``; ``speedup`` = XNOR over the packed float GEMM."""
    from .conv import times_ms
    from .gemm import gemm

    rng = np.random.default_rng(0)
    rows = []
    for m, n, k in sizes:
        a, b = rng.standard_normal((m, k), dtype=np.float32), rng.standard_normal((n, k), dtype=np.float32)
        a_bits, b_bits, bt = pack_signs(a), pack_signs(b), np.ascontiguousarray(b.T)
        out = np.empty((m, n), np.float32)
        timings = {"xnor": lambda: xnor_gemm(a_bits, b_bits, k, out=out), "gemm": lambda: gemm(a, bt),
                   "blas": lambda: a @ bt}
        row = {"m": m, "n": n, "k": k}
        for name, call in timings.items():
            best = min(times_ms(call, repeats)) / 1e3
            row[f"{name}_gmacs"] = m * n * k / best / 1e9
        row["speedup"] = row["xnor_gmacs"] / row["gemm_gmacs"]
        rows.append(row)
    return rows

