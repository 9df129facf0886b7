"""Int8 convolution kernels for ONNX QLinearConv: im2col + int8 GEMM, and QNNPACK's indirect buffer.

Both compute the reference op ``tinyinfer.ops.quantize.QLinearConv`` (``y = saturate(
requantize(conv(x - x_zp, w - w_zp) + B) + y_zp)``) for a uint8 NCHW input, constant int8
weights (per-tensor or per-output-channel scale), 2-D, ``group == 1``, any stride, padding
and dilation, with the fixed-point requantization of :mod:`tinyinfer.kernels.int8_gemm`
(Q31 multiplier and shift, one rounding half to even: the reference's result, at most
1 LSB away in rare ties).

* **im2col + GEMM** (``qlinearconv_im2col``): every receptive field is copied into one
  column of a ``(C kh kw) x (OH OW)`` uint8 matrix, the padding filled with the input zero
  point (so it contributes ``x_zp - x_zp = 0``), then ``Y (M x OH OW) = W @ columns`` runs on
  the int8 GEMM with the weights packed once, when the plan is built. A 1x1 kernel with
  stride 1 and no padding needs no copy: the image is the column matrix. The zero-point
  terms: ``-x_zp * sum(w[m])`` and the bias are one offset per output channel (build time);
  ``-w_zp * sum(column)`` is needed only for non-zero weight zero points (per call).
* **Indirect convolution** (``qlinearconv_indirect``; Dukhan, Wu & Lu, "The Indirect
  Convolution Algorithm", 2019, as in QNNPACK): no column matrix at all. The input is
  turned into NHWC (each pixel's channels contiguous, padded to a multiple of 4) with one
  extra pixel full of the zero point. An *indirection buffer*, built once per shape, holds
  for every output pixel and kernel tap the offset of the input pixel it reads — or of
  the zero-point pixel for a tap in the padding. The micro-kernel computes 8 output
  pixels x 32 output channels: for each tap it fetches 8 offsets and streams the 8 input
  pixels' channels (4 at a time, broadcast) against packed weights (32 channels x 4,
  ``vpdpbusd``). The copy it avoids is ``kh kw`` times the input; the indirection buffer is
  ``OH OW kh kw`` offsets. Requires symmetric weights (``w_zp == 0``, the quantizer's default).

:func:`benchmark_int8_conv` compares both with the float32 conv kernels on ResNet-50 layers
(one thread, CPU clock, best of 7; milliseconds):

=========================  ===========  ===========  ===========================
layer                      int8 im2col  int8 indir.  best float32 kernel
=========================  ===========  ===========  ===========================
64x56x56 -> 64, 3x3        1.30         0.85         1.92 (Winograd F(4,3))
256x56x56 -> 64, 1x1       0.56         1.10         1.21 (1x1 as GEMM)
256x14x14 -> 256, 3x3      0.96         0.63         2.28 (Winograd F(4,3))
=========================  ===========  ===========  ===========================

Both also run ``ai.tinyinfer:QLinearConvAdd``, a conv joined with its residual add (what a
quantized ResNet block ends with): after a tile of the conv's output is requantized, and
while it is still in L1, :func:`~tinyinfer.kernels.int8_gemm.add_residual_tile` adds the
dequantized residual and quantizes the sum, ``y = Q(DQ(c) + DQ(z))``, with the very float32
arithmetic of QLinearAdd's reference: the conv's output is never written out and read back.

The indirect kernel wins the 3x3 layers (no column matrix: 270-365 GOP/s); on a 1x1 layer
im2col needs no copy either, and the indirect kernel pays its NHWC copy and its transposing
store. The cost hints encode that; timed selection measures it, and on a copy-free 1x1 layer
of more than :data:`INDIRECT_1X1_MAX_PIXELS` pixels the indirect kernel is not a candidate.
"""

from __future__ import annotations

import statistics
import time

import numba
import numpy as np

from ..ir import Node
from ..ops.quantize import conv_geometry as _qconv_geometry
from .epilogue import FUSED_DOMAIN as DOMAIN
from .int8_gemm import (INT8_OPS_PER_SECOND, CALL_SECONDS, KGROUP, LANES, NO_RESIDUAL, NR, Requantization,
                        ResidualAdd, _round_up, _scratch, add_residual_tile, broadcast_u8x4, dot4, gemm_s8u8,
                        i32x16_zero, load_s8x64, pack_s, quantize_multiplier, requantize_tile, store_i32x16,
                        _pack_v)
from .registry import named, output_buffer, register_kernel, writes_into

#: Output pixels per micro-tile of the indirect kernel.
PIXELS = 8
#: Largest image on which the indirect kernel runs a 1x1, stride-1, unpadded conv. There im2col
#: copies nothing: on the 1x1 layers of MobileNetV2 and ResNet-50 (one thread, CPU clock,
#: best of 9-15) it was 1.3-2.7x faster from 28x28 pixels up, as fast or up to 12% faster
#: at 14x14, and only at 7x7 (49 pixels: the GEMM's 32-column panels a quarter empty) was
#: the indirect kernel faster, by up to 1.3x. Not offering it on the larger images keeps a
#: timed selection on a busy machine from ever keeping it there.
INDIRECT_1X1_MAX_PIXELS = 64
#: Images of at most this many output pixels are convolved as one batch by the im2col kernel:
#: the whole batch's columns side by side make one GEMM wide enough for its 32-column panels,
#: and one call replaces one per image. (The digits CNN at batch 64 has 8x8 and 4x4 images:
#: 64 separate GEMMs of 16-64 columns spent more time launching than multiplying.)
BATCHED_BELOW_PIXELS = 256


# ============================================================================ geometry and parameters
def conv2d_sizes(node: Node, x_shape, w_shape) -> dict:
    """Sizes of a 2-D QLinearConv (pads resolved): batch, channels, height, width, out, kernel, ..."""
    geometry = _qconv_geometry(node, x_shape, w_shape)
    n, c, h, w = (int(d) for d in x_shape)
    kh, kw = (int(k) for k in geometry["kernel"])
    sh, sw = geometry["strides"]
    dh, dw = geometry["dilations"]
    top, left = geometry["begin"]
    bottom, right = geometry["end"]
    oh = (h + top + bottom - dh * (kh - 1) - 1) // sh + 1
    ow = (w + left + right - dw * (kw - 1) - 1) // sw + 1
    return dict(n=n, c=c, h=h, w=w, m=int(w_shape[0]), kh=kh, kw=kw, sh=int(sh), sw=int(sw), dh=int(dh), dw=int(dw),
                top=int(top), left=int(left), oh=oh, ow=ow)


def _scalar(value) -> bool:
    return value is not None and value.const is not None and np.asarray(value.const).size == 1


def supports_qlinearconv(node: Node, inputs: list, *, depthwise: bool = False) -> bool:
    """uint8 NCHW x, constant int8 w, constant per-tensor x/y parameters, per-tensor or per-channel w_scale/w_zp."""
    x, x_s, x_zp, w, w_s, w_zp, y_s, y_zp = inputs[:8]
    bias = inputs[8] if len(inputs) > 8 else None
    if x.dtype != np.uint8 or w.dtype != np.int8 or w.const is None:
        return False
    if x.shape is None or len(x.shape) != 4 or not all(isinstance(d, int) for d in x.shape) or w.const.ndim != 4:
        return False
    if not all(_scalar(v) for v in (x_s, x_zp, y_s, y_zp)) or y_zp.dtype not in (np.uint8, np.int8):
        return False
    m, group = w.const.shape[0], node.attrs["group"]
    if depthwise != (group != 1) or (depthwise and (group != x.shape[1] or group != m or w.const.shape[1] != 1)):
        return False
    for value in (w_s, w_zp):
        if value is None or value.const is None or np.asarray(value.const).size not in (1, m):
            return False
    if bias is not None and (bias.const is None or bias.dtype != np.int32):
        return False
    multiplier = np.float32(x_s.const) * np.asarray(w_s.const, np.float32) / np.float32(y_s.const)
    if not np.all(multiplier < 2.0 ** 30):
        return False
    sizes = conv2d_sizes(node, x.shape, w.const.shape)
    return sizes["oh"] > 0 and sizes["ow"] > 0


def supports_residual(node: Node, inputs: list) -> bool:
    """A QLinearConvAdd's residual: 8-bit Z of the output's shape, constant per-tensor z and y parameters."""
    z, z_s, z_zp, y_s, y_zp = inputs[9:14]
    if z is None or z.dtype not in (np.uint8, np.int8) or not all(_scalar(v) for v in (z_s, z_zp, y_s, y_zp)):
        return False
    if y_zp.dtype not in (np.uint8, np.int8) or z.shape is None or len(z.shape) != 4:
        return False
    s = conv2d_sizes(node, inputs[0].shape, inputs[3].const.shape)
    return tuple(z.shape) == (s["n"], s["m"], s["oh"], s["ow"])


def residual_join(node: Node, inputs: list):
    """For a QLinearConvAdd: ``z -> ResidualAdd`` for each call's Z (None for a QLinearConv)."""
    if node.op_type != "QLinearConvAdd":
        return None
    c_s, c_zp = (np.asarray(v.const) for v in inputs[6:8])
    z_s, z_zp, y_s, y_zp = (np.asarray(v.const) for v in inputs[10:14])
    scalars = [a.reshape(-1)[0] for a in (c_s, c_zp, z_s, z_zp, y_s, y_zp)]

    def join(z: np.ndarray) -> ResidualAdd:
        c_scale, c_zero, z_scale, z_zero, y_scale, y_zero = scalars
        return ResidualAdd.of(z, c_zp.dtype, c_scale, c_zero, z_scale, z_zero, y_zp.dtype, y_scale, y_zero)

    return join


def output_dtype(inputs: list) -> np.dtype:
    """The type of a QLinearConv's output (y_zp's), or of a QLinearConvAdd's (its last input's)."""
    return inputs[13].dtype if len(inputs) > 9 else inputs[7].dtype


def conv_parameters(inputs: list) -> dict:
    """The constants of a QLinearConv as the kernels use them."""
    x_s, x_zp, w, w_s, w_zp, y_s, y_zp = (v.const if v is not None else None for v in inputs[1:8])
    bias = inputs[8].const if len(inputs) > 8 and inputs[8] is not None else None
    m = w.shape[0]
    multiplier = (np.float32(x_s) * np.broadcast_to(np.asarray(w_s, np.float32).reshape(-1), (m,))
                  / np.float32(y_s)).astype(np.float32)
    q, shift = quantize_multiplier(multiplier)
    y_zero = np.asarray(y_zp)
    info = np.iinfo(y_zero.dtype)
    return dict(
        x_zero=int(np.asarray(x_zp).reshape(-1)[0]),
        w_zero=np.broadcast_to(np.asarray(w_zp, np.int64).reshape(-1), (m,)).copy(),
        bias=np.zeros(m, np.int64) if bias is None else np.asarray(bias, np.int64).reshape(-1),
        q=q, shift=shift, y_zero=int(y_zero.reshape(-1)[0]), low=int(info.min), high=int(info.max),
        y_dtype=y_zero.dtype,
    )


#: Costs of the data movement around the products (seconds per byte; fitted to
#: :func:`benchmark_int8_conv` on ResNet-50 layers):
#: writing the column matrix, the NHWC copy of the input, the indirect kernel's
#: element-by-element (transposing) store.
COLUMN_SECONDS_PER_BYTE, NHWC_SECONDS_PER_BYTE, TRANSPOSED_STORE_SECONDS = 0.5e-9, 0.6e-9, 0.5e-9


def _cost(node: Node, inputs: list, indirect: bool) -> float:
    s = conv2d_sizes(node, inputs[0].shape, inputs[3].const.shape)
    pixels = s["oh"] * s["ow"]
    k = s["c"] * s["kh"] * s["kw"]
    rows = PIXELS if indirect else 8
    ops = 2.0 * s["n"] * _round_up(s["m"], NR if indirect else 8) * _round_up(pixels, rows) * _round_up(k, KGROUP)
    if indirect:
        moved = s["c"] * s["h"] * s["w"] * NHWC_SECONDS_PER_BYTE + s["m"] * pixels * TRANSPOSED_STORE_SECONDS
    else:
        moved = 0.0 if image_is_columns(s) else k * pixels * COLUMN_SECONDS_PER_BYTE
    calls = 1 if not indirect and batched(s) else s["n"]
    return ops / INT8_OPS_PER_SECOND + s["n"] * moved + calls * CALL_SECONDS


def batched(s: dict) -> bool:
    """Whether the im2col kernel convolves the whole batch in one GEMM (small images, batch > 1)."""
    return s["n"] > 1 and s["oh"] * s["ow"] <= BATCHED_BELOW_PIXELS


def image_is_columns(s: dict) -> bool:
    """A 1x1 conv with stride 1 and no padding: im2col's column matrix is the image itself."""
    return (s["kh"] == s["kw"] == s["sh"] == s["sw"] == 1 and s["top"] == s["left"] == 0
            and (s["oh"], s["ow"]) == (s["h"], s["w"]))


# ============================================================================ im2col + GEMM
def _supports_im2col(node: Node, inputs: list) -> bool:
    return supports_qlinearconv(node, inputs)


def _supports_im2col_residual(node: Node, inputs: list) -> bool:
    return supports_qlinearconv(node, inputs) and supports_residual(node, inputs)


def _cost_im2col(node: Node, inputs: list) -> float:
    return _cost(node, inputs, indirect=False)


@register_kernel("QLinearConv", "qlinearconv_im2col", supports=_supports_im2col, cost=_cost_im2col)
@register_kernel("QLinearConvAdd", "qlinearconv_im2col", domain=DOMAIN, supports=_supports_im2col_residual,
                 cost=_cost_im2col)
def build_im2col(node: Node, inputs: list, outputs: list):
    """im2col + int8 GEMM (accelerates QLinearConv): uint8 x, int8 w, 2-D, group 1, any stride/pad/dilation.

    The weights are packed once here (the GEMM's broadcast operand), their row sums folded
    with the bias and the input zero point into one offset per output channel.
    """
    w = inputs[3].const
    s = conv2d_sizes(node, inputs[0].shape, w.shape)
    p = conv_parameters(inputs)
    m, k = s["m"], s["c"] * s["kh"] * s["kw"]
    pixels = s["oh"] * s["ow"]
    packed = pack_s(w.reshape(m, k))
    w_rows = w.reshape(m, k).astype(np.int64).sum(axis=1)
    x_zero, w_zero = p["x_zero"], p["w_zero"]
    row_offset = (p["bias"] - x_zero * w_rows + k * w_zero * x_zero).astype(np.int32)
    symmetric, per_channel_zero = not np.any(w_zero != 0), np.unique(w_zero).size > 1
    join = residual_join(node, inputs)
    whole_batch = batched(s) and join is None
    direct = image_is_columns(s) and not whole_batch
    width = s["n"] * pixels if whole_batch else pixels  # columns of one GEMM
    dtype = output_dtype(inputs)
    no_column_terms = np.zeros(width, np.int32)

    def requantization(columns, z) -> Requantization:
        """The epilogue of one GEMM: ``-w_zp * sum(column)`` (if ``w_zp != 0``), the residual (if any)."""
        col_offset, row_factor, col_factor = no_column_terms, None, None
        if not symmetric:
            sums = columns.sum(axis=0, dtype=np.int64)
            if per_channel_zero:
                row_factor, col_factor = (-w_zero).astype(np.int32), sums.astype(np.int32)
            else:
                col_offset = (-int(w_zero[0]) * sums).astype(np.int32)
        return Requantization(row_offset, col_offset, p["q"], p["shift"], False, p["y_zero"], p["low"], p["high"],
                              row_factor, col_factor, None if join is None else join(z))

    # the common case, symmetric weights and no residual, has the same epilogue for every call
    fixed = requantization(None, None) if symmetric and join is None else None
    geometry = (s["kh"], s["kw"], s["sh"], s["sw"], s["dh"], s["dw"], s["top"], s["left"], s["oh"], s["ow"], x_zero)

    def qlinearconv_im2col(node, x, *rest, out=None):
        x = np.ascontiguousarray(x)
        y = output_buffer(out, (s["n"], m, s["oh"], s["ow"]), dtype)
        columns = None if direct else _scratch("columns", np.uint8, k * width).reshape(k, width)
        if whole_batch:  # columns [K, N * pixels] -> product [M, N * pixels] -> y [N, M, pixels]
            im2col_u8(x, *geometry, columns)
            product = _scratch("batch_product", np.uint8, m * width).reshape(m, width)
            gemm_s8u8(packed, columns, fixed if fixed is not None else requantization(columns, None), out=product)
            y.reshape(s["n"], m, pixels).view(np.uint8)[...] = product.reshape(m, s["n"], pixels).transpose(1, 0, 2)
            return y
        for b in range(s["n"]):
            if direct:
                columns = x[b].reshape(k, pixels)
            else:
                im2col_u8(x[b:b + 1], *geometry, columns)
            requant = fixed if fixed is not None else requantization(columns, None if join is None else rest[8][b])
            gemm_s8u8(packed, columns, requant, out=y[b].reshape(m, pixels))
        return y

    return writes_into(named(qlinearconv_im2col, "qlinearconv_im2col"))


@numba.njit(cache=True, parallel=True)
def im2col_u8(x, kh, kw, sh, sw, dh, dw, top, left, oh, ow, zero, out):
    """Receptive fields of uint8 images (N x C x H x W) as columns: ``out[(c, i, j), (n, oy, ox)]``;
    padding = ``zero``. Image ``n``'s ``oh * ow`` columns follow image ``n - 1``'s.

    Each column-matrix row is built output row by output row: the pixels left of the image,
    the run inside it (a strided copy), the pixels right of it. Indices are unsigned, so the
    copies vectorise (Numba checks signed indices for negative values).
    """
    images, channels, height, width = x.shape
    source = x.reshape(-1)
    target = out.reshape(-1)
    pixels = oh * ow
    for row in numba.prange(channels * kh * kw):
        c, tap = row // (kh * kw), row % (kh * kw)
        i, j = tap // kw, tap % kw
        shift = j * dw - left  # input column of output column ox: ox * sw + shift
        first = min(ow, max(0, (-shift + sw - 1) // sw))  # first ox inside the image
        last = max(first, min(ow, (width - 1 - shift) // sw + 1 if width - 1 - shift >= 0 else 0))
        for n in range(images):
            for oy in range(oh):
                iy = oy * sh - top + i * dh
                at = np.uint64((row * images + n) * pixels + oy * ow)
                if iy < 0 or iy >= height:
                    for ox in range(np.uint64(ow)):
                        target[at + ox] = zero
                    continue
                for ox in range(np.uint64(first)):
                    target[at + ox] = zero
                base = np.uint64(((n * channels + c) * height + iy) * width + first * sw + shift)
                step = np.uint64(sw)
                begin = np.uint64(first)
                if sw == 1:
                    for k in range(np.uint64(last - first)):
                        target[at + begin + k] = source[base + k]
                else:
                    for k in range(np.uint64(last - first)):
                        target[at + begin + k] = source[base + k * step]
                for ox in range(np.uint64(last), np.uint64(ow)):
                    target[at + ox] = zero


# ============================================================================ indirect convolution
def _supports_indirect(node: Node, inputs: list) -> bool:
    """Symmetric weights; not a copy-free 1x1 layer of more than :data:`INDIRECT_1X1_MAX_PIXELS` pixels."""
    if not supports_qlinearconv(node, inputs) or np.any(np.asarray(inputs[5].const) != 0):
        return False
    s = conv2d_sizes(node, inputs[0].shape, inputs[3].const.shape)
    return not image_is_columns(s) or s["oh"] * s["ow"] <= INDIRECT_1X1_MAX_PIXELS


def _supports_indirect_residual(node: Node, inputs: list) -> bool:
    return _supports_indirect(node, inputs) and supports_residual(node, inputs)


def _cost_indirect(node: Node, inputs: list) -> float:
    return _cost(node, inputs, indirect=True)


def indirection_buffer(s: dict, channels_padded: int) -> np.ndarray:
    """Offsets (bytes, into the NHWC image plus its zero-point pixel) per output pixel and tap.

    Shape ``(OH OW, kh kw)``; a tap in the padding points at the pixel ``H W`` (the last,
    filled with the input zero point). One image's buffer serves every image of the batch.
    """
    oy, ox = np.divmod(np.arange(s["oh"] * s["ow"]), s["ow"])
    ky, kx = np.divmod(np.arange(s["kh"] * s["kw"]), s["kw"])
    iy = oy[:, None] * s["sh"] - s["top"] + ky[None, :] * s["dh"]
    ix = ox[:, None] * s["sw"] - s["left"] + kx[None, :] * s["dw"]
    inside = (iy >= 0) & (iy < s["h"]) & (ix >= 0) & (ix < s["w"])
    pixel = np.where(inside, iy * s["w"] + ix, s["h"] * s["w"])
    return (pixel * channels_padded).astype(np.int64)


@register_kernel("QLinearConv", "qlinearconv_indirect", supports=_supports_indirect, cost=_cost_indirect)
@register_kernel("QLinearConvAdd", "qlinearconv_indirect", domain=DOMAIN, supports=_supports_indirect_residual,
                 cost=_cost_indirect)
def build_indirect(node: Node, inputs: list, outputs: list):
    """QNNPACK indirect convolution (accelerates QLinearConv): uint8 x, int8 w with w_zp = 0, 2-D, group 1.

    Built here: the packed weights (taps x channels as K, output channels as 32-wide
    vector panels), the indirection buffer, and the per-channel offsets.
    """
    w = inputs[3].const
    s = conv2d_sizes(node, inputs[0].shape, w.shape)
    p = conv_parameters(inputs)
    m, c, taps = s["m"], s["c"], s["kh"] * s["kw"]
    cp = _round_up(c, KGROUP)
    k = taps * cp
    # K in (tap, channel) order, channels padded with zero weights: Wt[(t, c), o] = w[o, c, t]
    wt = np.zeros((taps, cp, m), np.int8)
    wt[:, :c, :] = w.reshape(m, c, taps).transpose(2, 1, 0)
    panels = np.empty(k * _round_up(m, NR), np.uint8)
    _pack_v(wt.reshape(k, m).view(np.uint8).reshape(-1), m, 0, k, 0, m, 0, panels)
    w_rows = w.reshape(m, -1).astype(np.int64).sum(axis=1)
    row_offset = (p["bias"] - p["x_zero"] * w_rows).astype(np.int32)
    indirection = indirection_buffer(s, cp)
    pixels = s["oh"] * s["ow"]
    image = s["h"] * s["w"] * cp
    join = residual_join(node, inputs)
    dtype = output_dtype(inputs)

    def qlinearconv_indirect(node, x, *rest, out=None):
        x = np.ascontiguousarray(x)
        y = output_buffer(out, (s["n"], m, s["oh"], s["ow"]), dtype)
        nhwc = _scratch("nhwc", np.uint8, image + cp)
        tiles = _scratch("indirect_tiles", np.int32, numba.config.NUMBA_NUM_THREADS * 2 * NR * NR)
        for b in range(s["n"]):
            to_nhwc_u8(x[b], cp, p["x_zero"], nhwc)
            residual = NO_RESIDUAL if join is None else join(rest[8][b])
            _indirect_conv(nhwc, indirection, taps, cp, panels, m, y[b].reshape(-1).view(np.uint8), pixels, tiles,
                           row_offset, p["q"], p["shift"], p["y_zero"], p["low"], p["high"], residual.z,
                           join is not None, residual.integers, residual.scales)
        return y

    return writes_into(named(qlinearconv_indirect, "qlinearconv_indirect"))


@numba.njit(cache=True)
def to_nhwc_u8(x, channels_padded, zero, out):
    """One CHW uint8 image -> HWC with ``channels_padded`` bytes per pixel, then one pixel of ``zero``.

    A transpose, in blocks of 64 pixels (a block's ``64 x channels_padded`` bytes stay in L1
    while every channel's run of 64 bytes is read into it).
    """
    channels, height, width = x.shape
    flat = x.reshape(channels, height * width)
    pixels = height * width
    for p0 in range(0, pixels, 64):
        p1 = min(pixels, p0 + 64)
        for c in range(channels):
            row = flat[c]
            for i in range(p0, p1):
                out[i * channels_padded + c] = row[i]
        for c in range(channels, channels_padded):
            for i in range(p0, p1):
                out[i * channels_padded + c] = 0
    for c in range(channels_padded):
        out[pixels * channels_padded + c] = zero


@numba.njit(cache=True, parallel=True)
def _indirect_conv(x, indirection, taps, cp, panels, m, y, pixels, tiles, row_offset, q, shift, zero, low, high,
                   z, has_z, z_integers, z_scales):
    """All tiles of one image: 8 output pixels x 32 output channels each, pixel blocks in parallel."""
    blocks = (pixels + PIXELS - 1) // PIXELS
    groups = cp // KGROUP
    k = taps * cp
    none = np.zeros(LANES, np.int32)  # no per-pixel offsets (read as a vector of up to 16 pixels)
    for block in numba.prange(blocks):
        thread = numba.get_thread_id()
        tile = tiles[thread * 2 * NR * NR:(thread + 1) * 2 * NR * NR]
        p0 = block * PIXELS
        rows = min(PIXELS, pixels - p0)
        for j0 in range(0, m, NR):
            cols = min(NR, m - j0)
            _indirect_micro_kernel(x, indirection, p0, rows, taps, groups, cp, panels, j0 * k, tile)
            # transpose to (channel, pixel): each output channel's pixels are contiguous in NCHW
            for r in range(PIXELS):
                for c in range(NR):
                    tile[NR * NR + c * NR + r] = tile[r * NR + c]
            requantize_tile(tile, NR * NR, cols, rows, y, j0 * pixels + p0, pixels, 1, j0, 0, row_offset, none,
                            none, none, False, q, shift, False, zero, low, high)
            if has_z:
                add_residual_tile(y, j0 * pixels + p0, cols, rows, pixels, 1, z, z_integers, z_scales)


@numba.njit(cache=True, inline="always")
def _indirect_micro_kernel(x, indirection, p0, rows, taps, groups, cp, panels, w_at, tile):
    """``tile[r, c] = sum_t sum_ch x[pixel(p0 + r, t), ch] * w[c, ch, t]`` for 8 pixels x 32 channels.

    Row r's input pixel for tap t is ``x[indirection[p0 + r, t]:][:cp]`` (the last valid row
    is repeated for a partial block: its results are not stored). Each step broadcasts 4
    channels of each of the 8 pixels against 2 vectors of 16 output channels x 4.
    """
    c00 = c01 = c10 = c11 = c20 = c21 = c30 = c31 = i32x16_zero()
    c40 = c41 = c50 = c51 = c60 = c61 = c70 = c71 = i32x16_zero()
    last = rows - 1
    for t in range(taps):
        o0 = indirection[p0 + min(0, last), t]
        o1 = indirection[p0 + min(1, last), t]
        o2 = indirection[p0 + min(2, last), t]
        o3 = indirection[p0 + min(3, last), t]
        o4 = indirection[p0 + min(4, last), t]
        o5 = indirection[p0 + min(5, last), t]
        o6 = indirection[p0 + min(6, last), t]
        o7 = indirection[p0 + min(7, last), t]
        for g in range(groups):
            v0 = load_s8x64(panels, w_at)
            v1 = load_s8x64(panels, w_at + 64)
            e = 4 * g
            a = broadcast_u8x4(x, o0 + e)
            c00 = dot4(c00, a, v0)
            c01 = dot4(c01, a, v1)
            a = broadcast_u8x4(x, o1 + e)
            c10 = dot4(c10, a, v0)
            c11 = dot4(c11, a, v1)
            a = broadcast_u8x4(x, o2 + e)
            c20 = dot4(c20, a, v0)
            c21 = dot4(c21, a, v1)
            a = broadcast_u8x4(x, o3 + e)
            c30 = dot4(c30, a, v0)
            c31 = dot4(c31, a, v1)
            a = broadcast_u8x4(x, o4 + e)
            c40 = dot4(c40, a, v0)
            c41 = dot4(c41, a, v1)
            a = broadcast_u8x4(x, o5 + e)
            c50 = dot4(c50, a, v0)
            c51 = dot4(c51, a, v1)
            a = broadcast_u8x4(x, o6 + e)
            c60 = dot4(c60, a, v0)
            c61 = dot4(c61, a, v1)
            a = broadcast_u8x4(x, o7 + e)
            c70 = dot4(c70, a, v0)
            c71 = dot4(c71, a, v1)
            w_at += 4 * NR
    store_i32x16(tile, 0 * NR, c00)
    store_i32x16(tile, 0 * NR + LANES, c01)
    store_i32x16(tile, 1 * NR, c10)
    store_i32x16(tile, 1 * NR + LANES, c11)
    store_i32x16(tile, 2 * NR, c20)
    store_i32x16(tile, 2 * NR + LANES, c21)
    store_i32x16(tile, 3 * NR, c30)
    store_i32x16(tile, 3 * NR + LANES, c31)
    store_i32x16(tile, 4 * NR, c40)
    store_i32x16(tile, 4 * NR + LANES, c41)
    store_i32x16(tile, 5 * NR, c50)
    store_i32x16(tile, 5 * NR + LANES, c51)
    store_i32x16(tile, 6 * NR, c60)
    store_i32x16(tile, 6 * NR + LANES, c61)
    store_i32x16(tile, 7 * NR, c70)
    store_i32x16(tile, 7 * NR + LANES, c71)


# ============================================================================ benchmark
#: ResNet-50 convolutions (batch 1, 224 x 224): (channels, size, out channels, kernel, stride, pad).
RESNET50_LAYERS = (
    (64, 56, 64, 3, 1, 1),  # layer1 3x3
    (256, 56, 64, 1, 1, 0),  # layer1 1x1 reduce
    (256, 14, 256, 3, 1, 1),  # layer3 3x3
)


def benchmark_int8_conv(layers=RESNET50_LAYERS, repeats: int = 5, seed: int = 0, threads: int | None = None,
                        clock: str = "wall", depthwise: bool = False) -> list[dict]:
    """Milliseconds and GOP/s of the int8 conv kernels and the float32 Conv kernels per layer.

    Each kernel is built through the registry on a one-node QLinearConv / Conv; the best of
    ``repeats`` runs (interleaved) is reported, ``2 M K OH OW / seconds`` for the GOP/s.
    ``depthwise``: every layer is a depthwise conv (``group`` = channels = out channels; ``M``
    in ``layers`` is ignored), as MobileNet's are.
    """
    from ..ir import Value
    from .registry import KERNELS
    now = time.thread_time if clock == "cpu" else time.perf_counter
    old = numba.get_num_threads()
    rows = []
    try:
        if threads:
            numba.set_num_threads(threads)
        rng = np.random.default_rng(seed)
        for c, size, m, kernel, stride, pad in layers:
            m, group = (c, c) if depthwise else (m, 1)
            attrs = {"auto_pad": "NOTSET", "dilations": None, "group": group, "kernel_shape": [kernel, kernel],
                     "pads": [pad] * 4, "strides": [stride, stride]}
            x8 = rng.integers(0, 256, (1, c, size, size), dtype=np.uint8)
            w8 = rng.integers(-127, 128, (m, c // group, kernel, kernel), dtype=np.int8)
            consts = [np.float32(0.02), np.uint8(128), w8, np.full(m, 0.01, np.float32), np.zeros(m, np.int8),
                      np.float32(0.5), np.uint8(100), rng.integers(-1000, 1000, m).astype(np.int32)]
            values = [Value("x", np.dtype(np.uint8), x8.shape)] + [
                Value(f"c{i}", np.asarray(v).dtype, np.asarray(v).shape, const=np.asarray(v))
                for i, v in enumerate(consts)]
            qnode = Node("QLinearConv", [v.name for v in values], ["y"], attrs=dict(attrs), name="q")
            calls = {}
            for kern in KERNELS[("", "QLinearConv")]:
                if kern.supports(qnode, values):
                    fn = kern.build(qnode, values, [])
                    calls[kern.name] = (lambda fn=fn: fn(qnode, x8, *consts))
            xf = rng.standard_normal((1, c, size, size), dtype=np.float32)
            wf = rng.standard_normal((m, c // group, kernel, kernel), dtype=np.float32)
            bf = rng.standard_normal(m, dtype=np.float32)
            fvalues = [Value("x", np.dtype(np.float32), xf.shape), Value("w", np.dtype(np.float32), wf.shape, const=wf),
                       Value("b", np.dtype(np.float32), bf.shape, const=bf)]
            fnode = Node("Conv", ["x", "w", "b"], ["y"], attrs=dict(attrs), name="f")
            for kern in KERNELS.get(("", "Conv"), []):
                try:
                    if kern.supports(fnode, fvalues):
                        fn = kern.build(fnode, fvalues, [])
                        calls["fp32:" + kern.name] = (lambda fn=fn: fn(fnode, xf, wf, bf))
                except Exception:  # a float kernel that cannot take this layer is left out
                    continue
            times = {name: [] for name in calls}
            for call in calls.values():
                call()
            for _ in range(max(repeats, 1)):
                for name, call in calls.items():
                    start = now()
                    call()
                    times[name].append(now() - start)
            out = (size + 2 * pad - kernel) // stride + 1
            ops = 2.0 * m * (c // group) * kernel * kernel * out * out
            row = {"layer": f"{c}x{size}x{size} -> {m}, {kernel}x{kernel}/{stride}"}
            for name, seconds in times.items():
                row[f"{name}_ms"] = min(seconds) * 1e3
                row[f"{name}_median_ms"] = statistics.median(seconds) * 1e3
                row[f"{name}_gops"] = ops / min(seconds) / 1e9
            rows.append(row)
    finally:
        numba.set_num_threads(old)
    return rows
