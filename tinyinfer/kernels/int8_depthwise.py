"""Depthwise int8 convolution: QLinearConv with one filter per channel (MobileNet's 3x3 and 5x5 layers).

Accelerates the reference op ``tinyinfer.ops.quantize.QLinearConv`` when ``group ==
channels == output channels`` (weights ``C x 1 x kh x kw``), for a uint8 NCHW input,
constant int8 weights with per-tensor or per-channel scale and zero point, 2-D, any kernel
size (3x3 and 5x5 are the ones that occur), stride, padding and dilation.

A depthwise layer has no reduction over channels, so no matrix product: each output pixel
is ``kh kw`` multiply-adds of one plane. Planes (batch x channel) run in parallel, each in
three steps:

1. **Split into stride phases** (:func:`split_into_phases`). The plane, padded with the
   input zero point (padding then contributes ``x_zp - x_zp = 0``), is stored as float32
   split by the stride: every ``sh``-th row and ``sw``-th column together (stride 1: one
   phase, the padded plane). Then 16 consecutive outputs read 16 consecutive values of
   every tap, at any stride. The split is vectorised: 16 pixels per step, one masked load
   of 16 bytes (stride 1) or 32 bytes (stride 2, a shuffle keeping every other byte), a
   widening to float32, one masked store. The padding lies at the same places in every
   plane, so each thread's buffer is filled with the zero point once per call.
2. **Sum the taps** (:func:`sum_taps`). One flat index walks all output rows, each row
   running on over the phase's last few columns (whose results are dropped), so that even
   a 7x7 plane fills whole vectors. 64 outputs at a time are four registers, each summed
   over all taps by float32 fused multiply-adds of ``x`` and ``w - w_zp`` — exact, because
   every sum is an integer below 2**24 — four independent chains in flight.
3. **Requantize** with the GEMM's epilogue (:func:`tinyinfer.kernels.int8_gemm.requantize_store`:
   Q31 multiplier, one rounding half to even) into a row buffer, and copy each output
   row's ``OW`` bytes out.

The term ``-x_zp * sum(w - w_zp)`` and the bias are one offset per channel, computed when
the plan is built.

Measured with ``benchmark_int8_conv(layers, depthwise=True, threads=1, clock="cpu")`` (one
thread, CPU clock, best of 20 to 60 on a loaded 2-core machine, ms), the float32
``conv2d_depthwise`` kernel alongside:

==================  =====  =======
layer (3x3)         int8   float32
==================  =====  =======
32x112x112 /1       0.28   0.39
144x56x56 /1        0.36   0.49
960x7x7 /1          0.14   0.27
96x112x112 /2       0.48   0.96
144x56x56 /2        0.25   0.41
192x28x28 /2        0.14   0.22
576x14x14 /2        0.19   0.31
==================  =====  =======

The vectorised split is what makes stride 2 pay: copied element by element, the
96x112x112 /2 layer's split alone took 1.2 ms, 2.5 times the whole layer now.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir as llvm_ir
from numba.core import cgutils
from numba.extending import intrinsic

from ..ir import Node
from .int8_conv import conv2d_sizes, conv_parameters, supports_qlinearconv
from .int8_gemm import (LANES, _scratch, add_i32x16, f32x16, f32x16_to_i32x16, f32x16_zero, fma_f32x16, load_f32x16,
                        requantize_store, splat_i32x16, splat_i64x16, store_f32x16_first)
from .registry import named, output_buffer, register_kernel, writes_into

#: Outputs summed together: four registers of 16 lanes, four independent chains of multiply-adds.
BLOCK = 4 * LANES
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
    span = s["oh"] * phase_w  # outputs summed per plane: every row runs on to the phase's width
    rows_size = -(-span // BLOCK) * BLOCK
    # the last block reads up to BLOCK - 1 outputs and a row's worth of taps past the plane
    phases = s["sh"] * s["sw"] * phase_h * phase_w + BLOCK + phase_w
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
        rows = _scratch("depthwise_rows", np.uint8, threads * rows_size).reshape(threads, rows_size)
        _depthwise(x.reshape(s["n"] * c, s["h"], s["w"]), float_weights, tap_at, offsets, c, s["sh"], s["sw"],
                   s["top"], s["left"], phase_h, phase_w, p["x_zero"], y.reshape(-1).view(np.uint8), s["oh"],
                   s["ow"], p["q"], p["shift"], p["y_zero"], p["low"], p["high"], padded, rows)
        return y

    return writes_into(named(qlinearconv_depthwise, "qlinearconv_depthwise"))


@numba.njit(cache=True, parallel=True)
def _depthwise(x, weights, tap_at, offsets, channels, sh, sw, top, left, phase_h, phase_w, zero, y, oh, ow,
               q, shift, y_zero, low, high, planes_scratch, rows_scratch):
    """Every plane (batch x channel) in parallel: split into stride phases, sum the taps, requantize, store.

    Scratch memory is one padded plane and one row buffer per thread. The padding sits at the
    same places in every plane, so a thread fills its plane with the zero point at its first
    plane of the call, and each plane then overwrites only its pixels.
    """
    planes = x.shape[0]
    filled = np.zeros(planes_scratch.shape[0], np.bool_)
    for plane in numba.prange(planes):
        thread = numba.get_thread_id()
        padded, rows = planes_scratch[thread], rows_scratch[thread]
        if not filled[thread]:
            padded[:] = np.float32(zero)
            filled[thread] = True
        c = plane % channels
        split_into_phases(x[plane], sh, sw, top, left, phase_h, phase_w, padded)
        sum_taps(padded, weights[c], tap_at, offsets[c], q[c], shift[c], y_zero, low, high, oh * phase_w, rows)
        for oy in range(oh):  # drop the columns past each output row; unsigned indices let the copy vectorise
            source, target = np.uint64(oy * phase_w), np.uint64((plane * oh + oy) * ow)
            for ox in range(np.uint64(ow)):
                y[target + ox] = rows[source + ox]


@numba.njit(cache=True, inline="always")
def split_into_phases(plane, sh, sw, top, left, phase_h, phase_w, padded):
    """Split one uint8 plane by the stride into float32 phases (``padded`` holds the padding already).

    Padded pixel (R, C) goes to phase ``(R % sh, C % sw)`` at ``(R // sh, C // sw)``. Row by
    row, the input columns ``first, first + sw, ...`` that share a phase are read 16 at a
    time — one masked load of ``16 sw`` bytes, every ``sw``-th byte widened to float32, one
    masked store — for strides 1 and 2; element by element for larger strides.
    """
    h, w = plane.shape
    for i in range(h):
        source = plane[i]
        row = top + i
        for r in range(sw):  # the input columns landing in column phase r: left + k = r (mod sw)
            first = (r - left) % sw
            count = (w - first + sw - 1) // sw
            at = (((row % sh) * sw + r) * phase_h + row // sh) * phase_w + (left + first) // sw
            for m in range(0, count, LANES):
                n = min(LANES, count - m)
                k = first + m * sw
                if sw == 1:
                    store_f32x16_first(padded, at + m, widen_u8x16(source, k, n), n)
                elif sw == 2:
                    store_f32x16_first(padded, at + m, widen_every_other_u8x16(source, k, n), n)
                else:
                    for e in range(n):
                        padded[at + m + e] = np.float32(source[k + e * sw])


@numba.njit(cache=True, inline="always")
def sum_taps(padded, weights, tap_at, offset, q, shift, y_zero, low, high, span, rows):
    """``rows[p] = requantize(offset + sum_t weights[t] * padded[tap_at[t] + p])`` for ``p < span``.

    Output (oy, ox) reads tap t at ``tap_at[t] + oy * phase_w + ox``: one flat index
    ``p = oy * phase_w + ox`` walks every output row and runs on over the phase's last few
    columns (their results are dropped), so small planes fill whole vectors. A block of 64
    outputs is four registers summed over all taps — one load and one fused multiply-add per
    tap and register, four independent chains — then converted to int32 and requantized. The
    float32 sums are exact: they are integers below 2**24 (:func:`_supports_depthwise` checks).
    """
    taps = tap_at.shape[0]
    qv, sv, base = splat_i64x16(q), splat_i64x16(shift), splat_i32x16(offset)
    for p in range(0, span, BLOCK):
        a0 = a1 = a2 = a3 = f32x16_zero()
        for t in range(taps):
            at, weight = tap_at[t] + p, weights[t]
            a0 = fma_f32x16(load_f32x16(padded, at), weight, a0)
            a1 = fma_f32x16(load_f32x16(padded, at + LANES), weight, a1)
            a2 = fma_f32x16(load_f32x16(padded, at + 2 * LANES), weight, a2)
            a3 = fma_f32x16(load_f32x16(padded, at + 3 * LANES), weight, a3)
        for v, acc in ((0, a0), (1, a1), (2, a2), (3, a3)):
            at = p + v * LANES
            total = add_i32x16(f32x16_to_i32x16(acc), base)
            requantize_store(rows, at, min(LANES, span - at), total, qv, sv, y_zero, low, high)


def _widen_u8(step: int):
    """An intrinsic: bytes ``array[index + step * i]`` for ``i < count <= 16`` as float32 lanes (zeros after).

    One masked load of the ``step * (count - 1) + 1`` bytes spanned (nothing past them is read),
    a shuffle picking every ``step``-th byte, an unsigned conversion to float32.
    """
    span = LANES * step
    bytes_type = llvm_ir.VectorType(llvm_ir.IntType(8), span)
    mask_type = llvm_ir.VectorType(llvm_ir.IntType(1), span)
    i32 = llvm_ir.IntType(32)

    @intrinsic
    def widen(typingctx, array, index, count):
        def codegen(context, builder, signature, args):
            array_arg, index_arg, count_arg = args
            data = context.make_array(signature.args[0])(context, builder, array_arg).data
            pointer = builder.bitcast(builder.gep(data, [index_arg]), bytes_type.as_pointer())
            count32 = builder.trunc(count_arg, i32) if count_arg.type.width > 32 else count_arg
            needed = builder.add(builder.mul(builder.sub(count32, i32(1)), i32(step)), i32(1))
            lanes = llvm_ir.Constant(llvm_ir.VectorType(i32, span), list(range(span)))
            splat = builder.shuffle_vector(
                builder.insert_element(llvm_ir.Constant(lanes.type, llvm_ir.Undefined), needed, i32(0)),
                llvm_ir.Constant(lanes.type, llvm_ir.Undefined), llvm_ir.Constant(lanes.type, None))
            mask = builder.icmp_signed("<", lanes, splat)
            load = cgutils.get_or_insert_function(
                builder.module,
                llvm_ir.FunctionType(bytes_type, [bytes_type.as_pointer(), i32, mask_type, bytes_type]),
                f"llvm.masked.load.v{span}i8.p0")
            loaded = builder.call(load, [pointer, i32(1), mask, llvm_ir.Constant(bytes_type, None)])
            if step > 1:
                every = llvm_ir.Constant(llvm_ir.VectorType(i32, LANES), [step * i for i in range(LANES)])
                loaded = builder.shuffle_vector(loaded, llvm_ir.Constant(bytes_type, llvm_ir.Undefined), every)
            return builder.uitofp(loaded, llvm_ir.VectorType(llvm_ir.FloatType(), LANES))

        return f32x16(array, index, count), codegen

    return widen


#: ``array[index:index+count]`` / ``array[index:index+2*count:2]`` of a uint8 array as float32 lanes.
widen_u8x16, widen_every_other_u8x16 = _widen_u8(1), _widen_u8(2)
