"""Depthwise int8 convolution: QLinearConv with one filter per channel (MobileNet's 3x3 and 5x5 layers).

Accelerates the reference op ``tinyinfer.ops.quantize.QLinearConv`` when ``group ==
channels == output channels`` (weights ``C x 1 x kh x kw``), for a uint8 NCHW input,
constant int8 weights with per-tensor or per-channel scale and zero point, 2-D, any kernel
size (3x3 and 5x5 are the ones that occur), stride, padding and dilation.

A depthwise layer has no reduction over channels, so no matrix product: each output pixel
is ``kh kw`` multiply-adds of one plane. The kernel pads each plane with the input zero
point (padding then contributes ``x_zp - x_zp = 0``) into one scratch buffer per thread,
split by the stride into phases (every ``sh``-th row and ``sw``-th column together), so
that 16 consecutive outputs read 16 consecutive values of every tap, at any stride. Each
group of 16 outputs is summed over all taps in one register — float32 fused multiply-adds
of ``x`` and ``w - w_zp``, exact because every sum is an integer below 2**24 — converted to
int32 and requantized with the GEMM's epilogue
(:func:`tinyinfer.kernels.int8_gemm.requantize_store`: Q31 multiplier, one rounding half to
even). The term ``-x_zp * sum(w - w_zp)`` and the bias are one offset per channel, computed
when the plan is built. Channels run in parallel.

Measured (one thread, best of 20, ms; the float32 ``conv2d_depthwise`` kernel alongside):
32x112x112 3x3/1 0.40 (0.37), 144x56x56 3x3/1 0.52 (0.54), 960x7x7 3x3/1 0.17 (0.33),
96x112x112 3x3/2 1.71 (1.18: the stride-2 phase split is an element-by-element copy).
"""

from __future__ import annotations

import numba
import numpy as np

from ..ir import Node
from .int8_conv import conv2d_sizes, conv_parameters, supports_qlinearconv
from .int8_gemm import (LANES, _scratch, add_i32x16, f32x16_to_i32x16, f32x16_zero, fma_f32x16, load_f32x16,
                        requantize_store, splat_i32x16, splat_i64x16)
from .registry import named, output_buffer, register_kernel, writes_into

#: Multiply-adds per second for the cost hint (both threads; a memory-bound loop).
DEPTHWISE_OPS_PER_SECOND = 20e9


def _supports_depthwise(node: Node, inputs: list) -> bool:
    """Depthwise QLinearConv: group == C == M, uint8 x, int8 w (C x 1 x kh x kw), float32-exact sums."""
    if not supports_qlinearconv(node, inputs, depthwise=True):
        return False
    w, w_zero = inputs[3].const, np.asarray(inputs[5].const, np.int64).reshape(-1)
    largest = np.abs(w.reshape(w.shape[0], -1).astype(np.int64) - w_zero.reshape(-1, 1)).sum(axis=1).max()
    return bool(255 * largest < 2 ** 24)  # every partial sum is an integer float32 holds exactly


def _cost_depthwise(node: Node, inputs: list) -> float:
    s = conv2d_sizes(node, inputs[0].shape, inputs[3].const.shape)
    return 2.0 * s["n"] * s["c"] * s["oh"] * s["ow"] * s["kh"] * s["kw"] / DEPTHWISE_OPS_PER_SECOND + 10e-6


@register_kernel("QLinearConv", "qlinearconv_depthwise", supports=_supports_depthwise, cost=_cost_depthwise)
def build_depthwise(node: Node, inputs: list, outputs: list):
    """Direct depthwise int8 conv (accelerates QLinearConv with group == channels): uint8 x, int8 w, 2-D."""
    w = inputs[3].const
    s = conv2d_sizes(node, inputs[0].shape, w.shape)
    p = conv_parameters(inputs)
    c, taps = s["c"], s["kh"] * s["kw"]
    shifted = (w.reshape(c, taps).astype(np.int32) - p["w_zero"].reshape(c, 1).astype(np.int32))
    offsets = (p["bias"] - p["x_zero"] * shifted.astype(np.int64).sum(axis=1)).astype(np.int32)
    height = max(s["h"] + s["top"], (s["oh"] - 1) * s["sh"] + s["dh"] * (s["kh"] - 1) + 1)
    width = max(s["w"] + s["left"], (s["ow"] - 1) * s["sw"] + s["dw"] * (s["kw"] - 1) + 1)
    phase_h, phase_w = -(-height // s["sh"]), -(-width // s["sw"])  # each stride phase of the padded plane
    phases = s["sh"] * s["sw"] * phase_h * phase_w + LANES  # a last vector may read past the plane
    di = np.arange(s["kh"]).repeat(s["kw"]) * s["dh"]
    dj = np.tile(np.arange(s["kw"]), s["kh"]) * s["dw"]
    # where tap (i, j) starts in the phases: phase (di % sh, dj % sw), row di // sh, column dj // sw
    tap_at = (((di % s["sh"]) * s["sw"] + dj % s["sw"]) * phase_h * phase_w
              + (di // s["sh"]) * phase_w + dj // s["sw"]).astype(np.int64)
    float_weights = shifted.astype(np.float32)

    def qlinearconv_depthwise(node, x, *rest, out=None):
        x = np.ascontiguousarray(x)
        y = output_buffer(out, (s["n"], c, s["oh"], s["ow"]), p["y_dtype"])
        threads = numba.config.NUMBA_NUM_THREADS  # numba.get_thread_id() < this
        padded = _scratch("depthwise_planes", np.float32, threads * phases).reshape(threads, phases)
        _depthwise(x.reshape(s["n"] * c, s["h"], s["w"]), float_weights, tap_at, offsets, c, s["sh"], s["sw"],
                   s["top"], s["left"], phase_h, phase_w, p["x_zero"], y.reshape(-1).view(np.uint8), s["oh"],
                   s["ow"], p["q"], p["shift"], p["y_zero"], p["low"], p["high"], padded)
        return y

    return writes_into(named(qlinearconv_depthwise, "qlinearconv_depthwise"))


@numba.njit(cache=True, parallel=True)
def _depthwise(x, weights, tap_at, offsets, channels, sh, sw, top, left, phase_h, phase_w, zero, y, oh, ow,
               q, shift, y_zero, low, high, planes_scratch):
    """Every plane (batch x channel) in parallel: pad into stride phases, sum taps in registers, requantize.

    Padded pixel (R, C) is stored in phase ``(R % sh, C % sw)`` at ``(R // sh, C // sw)``. Output
    (oy, ox) then reads, for tap t = (i, j), phase ``(i dh % sh, j dw % sw)`` at
    ``(oy + i dh // sh, ox + j dw // sw)`` — at offset ``tap_at[t] + oy * phase_w + ox``: 16
    consecutive outputs read 16 consecutive values of each tap, at any stride. Each group
    of 16 outputs is one register summed over all taps (one load and one fused multiply-add
    per tap), converted to int32 and requantized, with no store in between. The float32 sums
    are exact: they are integers below 2**24 (:func:`_supports_depthwise` checks). Scratch
    memory is one slice per thread.
    """
    planes, h, w = x.shape
    taps = tap_at.shape[0]
    for plane in numba.prange(planes):
        thread = numba.get_thread_id()
        padded = planes_scratch[thread]
        c = plane % channels
        padded[:] = np.float32(zero)
        for i in range(h):
            source = x[plane, i]
            row = top + i
            for r in range(sw):  # the columns left + j = r (mod sw)
                first = (r - left) % sw
                at = np.uint64((((row % sh) * sw + r) * phase_h + row // sh) * phase_w + (left + first) // sw)
                if sw == 1:
                    for k in range(w):
                        padded[at + np.uint64(k)] = np.float32(source[k])
                else:
                    for k in range((w - first + sw - 1) // sw):
                        padded[at + np.uint64(k)] = np.float32(source[first + k * sw])
        qv, sv = splat_i64x16(q[c]), splat_i64x16(shift[c])
        offset = splat_i32x16(offsets[c])
        out = plane * oh * ow
        for oy in range(oh):
            for ox in range(0, ow, LANES):
                acc = f32x16_zero()
                at = oy * phase_w + ox
                for t in range(taps):
                    acc = fma_f32x16(load_f32x16(padded, tap_at[t] + at), weights[c, t], acc)
                total = add_i32x16(f32x16_to_i32x16(acc), offset)
                requantize_store(y, out + oy * ow + ox, min(LANES, ow - ox), total, qv, sv, y_zero, low, high)
