"""The blocked direct convolution (NCHWc), and the layout conversions around it.

``ai.tinyinfer:ConvNCHWc`` (``tinyinfer/ops/layout.py``) is a FusedConv whose activations
are in the blocked layout ``[N, C/c, H, W, c]`` and whose weights are pre-blocked
``[M/c, C/c, KH, KW, c_in, c_out]``. That layout is chosen for this loop nest (the one of
oneDNN's and TVM's x86 convolutions; Georganas et al., "Anatomy of High-Performance Deep
Learning Convolutions on SIMD Architectures", SC 2018)::

    for each image n, output block ob, tile of T output pixels p0..p0+T-1:   (in parallel)
        acc[T][c] = 0                                  # T vector registers
        for cb, kh, kw:                                # input block, tap
            for ci in real lanes of block cb:          # one input channel
                w = W[ob, cb, kh, kw, ci, :]           # one vector load: c output channels
                for t in 0..T-1:                       # unrolled
                    acc[t] += X[n, cb, pixel(t) + tap, ci] * w    # broadcast + one FMA
        Y[n, ob, p0+t, :] = act(acc[t] + bias + Z[...])         # the fused epilogue

Every weight vector is loaded once and used T times, every input value once per c outputs:
a T x c register tile ("spatial packing" of T pixels times c output channels). Input
padding is done once per call, into a zero-bordered copy, so the inner loop has no branch.
Depthwise convolutions (group = C = M) use the same tile with a lane-wise FMA (each channel
its own filter).

**Why LLVM intrinsics.** Numba compiles with LLVM, but it disables LLVM's SLP vectoriser and
the loop vectoriser only vectorises long innermost loops; a loop of 8 or 16 lanes is fully
unrolled first and stays scalar. So :func:`_fma_broadcast` and :func:`_fma_lanes` emit the
one vector instruction each step needs (``llvm.fma.v8f32`` / ``v16f32``: ``vfmadd231ps``
on ymm / zmm registers), and they tag their memory accesses with LLVM *alias scopes*
(C's ``restrict``): the accumulator tile is a private array that never overlaps the input
or the weights. With that promise LLVM keeps the whole tile in registers for the entire
reduction and stores it once; without it, it stores every accumulator after every FMA.
(The pixel offsets of a tile are read through :func:`_input_at`, which carries the same
promise.) :func:`conv_nchwc_asm_summary` shows the compiled inner loop: one weight load and
T ``vfmadd231ps`` with a broadcast memory operand, no store.

The epilogue works on a whole tile at once (its T pixels are consecutive in memory) with
loops of run-time length, which LLVM's loop vectoriser does vectorise; bias and the mask
that zeroes the padding lanes of Y are pre-tiled to the tile's length when the node is
planned.

Kernels registered here (all float32, C-contiguous, blocks of 8 or 16 lanes):

* ``ConvNCHWc``: ``conv_nchwc_direct`` (group = 1), ``conv_nchwc_depthwise`` (group = C = M);
  any stride, padding, dilation; bias, residual and activation fused in the store;
* ``ToBlocked`` / ``FromBlocked``: ``to_blocked_numba`` / ``from_blocked_numba`` for 4-D
  tensors (the copy loops of ``tinyinfer/kernels/layout.py``);
* ``MaxPoolNCHWc`` / ``AveragePoolNCHWc``: ``pool_nchwc``; ``GlobalAveragePoolNCHWc`` /
  ``GlobalMaxPoolNCHWc``: ``global_pool_nchwc`` (lane-wise loops, so a chain of blocked
  convolutions does not leave the layout for its pooling layers).
"""

from __future__ import annotations

import re

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.errors import RequireLiteralValue
from numba.extending import intrinsic

from ..ir import Node, Value
from ..ops.conv import window_geometry
from ..ops.layout import blocks
from .epilogue import CLIP, FUSED_DOMAIN, IDENTITY, RELU, activate, epilogue_of, supports_epilogue
from .layout import _nchw_to_nchwc, _nchwc_to_nchw
from .registry import named, output_buffer, register_kernel, writes_into

#: Block sizes the kernels are compiled for: float32 lanes of an AVX2 (8) or AVX-512 (16) register.
BLOCKS = (8, 16)

#: Output pixels per register tile, by block size: 8 accumulators + 1 weight vector fit the
#: 16 ymm / 32 zmm registers. On the book's machine tiles of 4, 12 and 14 pixels ran 5-10x
#: slower than 8 (measured with the kernel compiled for each). Keep in step with the
#: wrappers ``_conv_nchwc_8`` / ``_16`` below.
TILES = {8: 8, 16: 8}

#: Register tiles one parallel job computes in a row (sharing one scratch allocation and the
#: weights of one output block in L1/L2).
TILES_PER_JOB = 8

#: Sustained rates assumed by the cost hints (2 cores; see benchmark_nchwc).
DIRECT_FLOPS_PER_SECOND = 60e9
DEPTHWISE_BYTES_PER_SECOND = 8e9


# ============================================================================ vector intrinsics
def _element_pointer(context, builder, array_type, array, index, pointee):
    """Address of ``array.flat[index]``, typed as a pointer to ``pointee`` (no wraparound, no check)."""
    data = context.make_array(array_type)(context, builder, array).data
    return builder.bitcast(builder.gep(data, [index]), pointee.as_pointer())


def _alias_scopes(module):
    """LLVM metadata: one scope for the kernel's inputs, which the accumulator tile never aliases."""
    domain = module.add_metadata([ir.MetaDataString(module, "tinyinfer.nchwc")])
    inputs = module.add_metadata([ir.MetaDataString(module, "tinyinfer.nchwc.inputs"), domain])
    return module.add_metadata([inputs])


def _vector_fma(broadcast: bool):
    """Codegen of ``acc[ia:ia+L] += x[ix] * w[iw:iw+L]`` (broadcast) or ``x[ix:ix+L] * w[iw:iw+L]``."""

    def typer(typingctx, acc, ia, x, ix, w, iw, lanes):
        if not isinstance(lanes, types.IntegerLiteral):
            raise RequireLiteralValue(lanes)
        count = lanes.literal_value
        signature = types.void(acc, ia, x, ix, w, iw, lanes)

        def codegen(context, builder, sig, args):
            acc_v, ia_v, x_v, ix_v, w_v, iw_v, _ = args
            f32 = ir.FloatType()
            vector = ir.VectorType(f32, count)
            scope = _alias_scopes(builder.module)
            acc_ptr = _element_pointer(context, builder, sig.args[0], acc_v, ia_v, vector)
            x_ptr = _element_pointer(context, builder, sig.args[2], x_v, ix_v, f32 if broadcast else vector)
            w_ptr = _element_pointer(context, builder, sig.args[4], w_v, iw_v, vector)
            total = builder.load(acc_ptr, align=4)
            x_value = builder.load(x_ptr, align=4)
            weights = builder.load(w_ptr, align=4)
            for load in (x_value, weights):
                load.set_metadata("alias.scope", scope)
            total.set_metadata("noalias", scope)
            if broadcast:  # one input value in every lane
                undefined = ir.Constant(vector, ir.Undefined)
                lane0 = builder.insert_element(undefined, x_value, ir.Constant(ir.IntType(32), 0))
                mask = ir.Constant(ir.VectorType(ir.IntType(32), count), [0] * count)
                x_value = builder.shuffle_vector(lane0, undefined, mask)
            fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vector, [vector] * 3),
                                                 f"llvm.fma.v{count}f32")
            store = builder.store(builder.call(fma, [x_value, weights, total]), acc_ptr, align=4)
            store.set_metadata("noalias", scope)
            return context.get_dummy_value()

        return signature, codegen

    return typer


@intrinsic
def _input_at(typingctx, array, index):
    """``array[index]`` read as one of the kernel's inputs (the accumulator tile never aliases it)."""
    signature = array.dtype(array, index)

    def codegen(context, builder, sig, args):
        element = context.get_value_type(sig.args[0].dtype)
        load = builder.load(_element_pointer(context, builder, sig.args[0], args[0], args[1], element))
        load.set_metadata("alias.scope", _alias_scopes(builder.module))
        return load

    return signature, codegen


#: ``_fma_broadcast(acc, ia, x, ix, w, iw, L)``: ``acc[ia:ia+L] += x[ix] * w[iw:iw+L]`` — one
#: ``vfmadd231ps`` with a broadcast operand. All arrays 1-D float32; L a literal (8 or 16).
_fma_broadcast = intrinsic(_vector_fma(broadcast=True))
#: ``_fma_lanes(acc, ia, x, ix, w, iw, L)``: ``acc[ia:ia+L] += x[ix:ix+L] * w[iw:iw+L]`` lane by lane.
_fma_lanes = intrinsic(_vector_fma(broadcast=False))


# ============================================================================ Numba kernels
@numba.njit(cache=True, inline="always")
def _pixel_offsets(offsets, first, pixels, out_w, stride_h, stride_w, padded_w, block):
    """``offsets[t]`` = flat offset in one padded input block of the top-left tap of output
    pixel ``first + t`` (the last pixel again past the end). One division per tile."""
    row = first // out_w
    col = first - row * out_w
    for t in range(offsets.shape[0]):
        offsets[t] = (row * stride_h * padded_w + col * stride_w) * block
        if first + t + 1 < pixels:
            col += 1
            if col == out_w:
                col = 0
                row += 1


@numba.njit(cache=True, fastmath=True, inline="always")
def _store_tile(acc, of, start, count, zf, has_z, bias, lanes, code, alpha, beta):
    """The epilogue: ``of[start + i] = act(acc[i] + bias[i] + z) * lanes[i]`` for ``i < count``.

    A tile's pixels are consecutive, so its outputs are one contiguous run of ``count``
    floats. ``bias`` and ``lanes`` are the block's bias and its real-channel mask (1 or 0,
    so the padding lanes of Y are 0), repeated once per pixel of the tile: every array is
    read at ``i``, and each loop below (one per activation, the test outside the loop)
    is one LLVM vectorises.
    """
    if has_z:
        for i in range(count):
            acc[i] += bias[i] + zf[start + i]
    else:
        for i in range(count):
            acc[i] += bias[i]
    if code == RELU:
        for i in range(count):
            of[start + i] = max(acc[i], np.float32(0.0)) * lanes[i]
    elif code == CLIP:
        for i in range(count):
            of[start + i] = min(max(acc[i], alpha), beta) * lanes[i]
    elif code == IDENTITY:
        for i in range(count):
            of[start + i] = acc[i] * lanes[i]
    else:
        for i in range(count):
            of[start + i] = activate(acc[i], code, alpha, beta) * lanes[i]


@numba.njit(cache=True, fastmath=True, parallel=True)
def _conv_nchwc(x, w, bias, lanes, z, has_z, out, channels, stride_h, stride_w, dilation_h, dilation_w,
                code, alpha, beta, block, tile):
    """Blocked direct conv, group 1. ``x`` is the padded input ``[N, C/c, HP, WP, c]``, ``w``
    ``[M/c, C/c, KH, KW, c, c]``, ``out`` ``[N, M/c, OH, OW, c]``; ``bias`` and ``lanes`` are
    ``[M/c, tile * c]`` (see :func:`_store_tile`)."""
    numba.literally(block)
    numba.literally(tile)
    n_images, in_blocks, padded_h, padded_w, _ = x.shape
    out_blocks, _, kernel_h, kernel_w, _, _ = w.shape
    pixels = out.shape[2] * out.shape[3]
    out_w = out.shape[3]
    tiles = (pixels + tile - 1) // tile
    xf = x.reshape(-1)
    wf = w.reshape(-1)
    of = out.reshape(-1)
    zf = z.reshape(-1)
    plane = padded_h * padded_w * block
    filters = in_blocks * kernel_h * kernel_w * block * block
    alpha = np.float32(alpha)
    beta = np.float32(beta)
    chunks = (tiles + TILES_PER_JOB - 1) // TILES_PER_JOB
    for job in numba.prange(n_images * out_blocks * chunks):
        n = job // (out_blocks * chunks)
        ob, chunk = (job // chunks) % out_blocks, job % chunks  # a job's weights: one output block
        image = n * in_blocks * plane
        acc = np.empty(tile * block, np.float32)  # the register tile (one allocation per job)
        offsets = np.empty(tile, np.int64)
        for index in range(chunk * TILES_PER_JOB, min(tiles, (chunk + 1) * TILES_PER_JOB)):
            # The last tile is moved back to end at the last pixel (it recomputes a few pixels
            # of its neighbour) so every tile is a full one; with fewer pixels than the tile,
            # the extra lanes of the tile repeat the last pixel and are not stored.
            first = min(index * tile, max(pixels - tile, 0))
            for i in range(tile * block):
                acc[i] = 0.0
            _pixel_offsets(offsets, first, pixels, out_w, stride_h, stride_w, padded_w, block)
            for cb in range(in_blocks):
                real = min(block, channels - cb * block)  # padding lanes of X are never read
                for kh in range(kernel_h):
                    for kw in range(kernel_w):
                        tap = image + cb * plane + (kh * dilation_h * padded_w + kw * dilation_w) * block
                        row = ob * filters + ((cb * kernel_h + kh) * kernel_w + kw) * block * block
                        for ci in range(real):
                            for t in range(tile):  # unrolled: tile is a compile-time constant
                                pixel = tap + _input_at(offsets, t) + ci
                                _fma_broadcast(acc, t * block, xf, pixel, wf, row + ci * block, block)
            start = ((n * out_blocks + ob) * pixels + first) * block
            _store_tile(acc, of, start, min(tile, pixels) * block, zf, has_z, bias[ob], lanes[ob], code, alpha, beta)


@numba.njit(cache=True, fastmath=True, parallel=True)
def _depthwise_nchwc(x, w, bias, lanes, z, has_z, out, stride_h, stride_w, dilation_h, dilation_w,
                     code, alpha, beta, block, tile):
    """Blocked depthwise conv: ``w`` is ``[C/c, 1, KH, KW, 1, c]``, one filter per lane."""
    numba.literally(block)
    numba.literally(tile)
    n_images, count, padded_h, padded_w, _ = x.shape
    kernel_h, kernel_w = w.shape[2], w.shape[3]
    pixels = out.shape[2] * out.shape[3]
    out_w = out.shape[3]
    tiles = (pixels + tile - 1) // tile
    xf = x.reshape(-1)
    wf = w.reshape(-1)
    of = out.reshape(-1)
    zf = z.reshape(-1)
    plane = padded_h * padded_w * block
    alpha = np.float32(alpha)
    beta = np.float32(beta)
    chunks = (tiles + TILES_PER_JOB - 1) // TILES_PER_JOB
    for job in numba.prange(n_images * count * chunks):
        n = job // (count * chunks)
        b = (job // chunks) % count
        acc = np.empty(tile * block, np.float32)
        offsets = np.empty(tile, np.int64)
        for index in range((job % chunks) * TILES_PER_JOB, min(tiles, (job % chunks + 1) * TILES_PER_JOB)):
            first = min(index * tile, max(pixels - tile, 0))
            for i in range(tile * block):
                acc[i] = 0.0
            _pixel_offsets(offsets, first, pixels, out_w, stride_h, stride_w, padded_w, block)
            for kh in range(kernel_h):
                for kw in range(kernel_w):
                    tap = (n * count + b) * plane + (kh * dilation_h * padded_w + kw * dilation_w) * block
                    row = ((b * kernel_h + kh) * kernel_w + kw) * block
                    for t in range(tile):
                        _fma_lanes(acc, t * block, xf, tap + _input_at(offsets, t), wf, row, block)
            start = ((n * count + b) * pixels + first) * block
            _store_tile(acc, of, start, min(tile, pixels) * block, zf, has_z, bias[b], lanes[b], code, alpha, beta)


# Python cannot pass a compile-time constant, and a call that asks Numba for one at run time
# (``numba.literally``) costs a dispatch of ~0.1 s. So each block size gets a small compiled
# wrapper that passes the constants from compiled code, and Python calls the wrappers.
@numba.njit(cache=True)
def _conv_nchwc_8(x, w, bias, lanes, z, has_z, out, channels, sh, sw, dh, dw, code, alpha, beta):
    _conv_nchwc(x, w, bias, lanes, z, has_z, out, channels, sh, sw, dh, dw, code, alpha, beta, 8, 8)


@numba.njit(cache=True)
def _conv_nchwc_16(x, w, bias, lanes, z, has_z, out, channels, sh, sw, dh, dw, code, alpha, beta):
    _conv_nchwc(x, w, bias, lanes, z, has_z, out, channels, sh, sw, dh, dw, code, alpha, beta, 16, 8)


@numba.njit(cache=True)
def _depthwise_nchwc_8(x, w, bias, lanes, z, has_z, out, sh, sw, dh, dw, code, alpha, beta):
    _depthwise_nchwc(x, w, bias, lanes, z, has_z, out, sh, sw, dh, dw, code, alpha, beta, 8, 8)


@numba.njit(cache=True)
def _depthwise_nchwc_16(x, w, bias, lanes, z, has_z, out, sh, sw, dh, dw, code, alpha, beta):
    _depthwise_nchwc(x, w, bias, lanes, z, has_z, out, sh, sw, dh, dw, code, alpha, beta, 16, 8)


#: block size -> (group-1 kernel, depthwise kernel); the tile is TILES[block], spelled in the wrappers.
_COMPILED = {8: (_conv_nchwc_8, _depthwise_nchwc_8), 16: (_conv_nchwc_16, _depthwise_nchwc_16)}


@numba.njit(cache=True, parallel=True)
def _pad_blocked(x, top, left, padded_h, padded_w):
    """``x`` ``[N, B, H, W, c]`` inside a zero border: ``[N, B, padded_h, padded_w, c]``."""
    n_images, count, h, w, block = x.shape
    out = np.zeros((n_images, count, padded_h, padded_w, block), x.dtype)
    for job in numba.prange(n_images * count):
        n, b = job // count, job % count
        for row in range(h):
            for col in range(w):
                for lane in range(block):
                    out[n, b, row + top, col + left, lane] = x[n, b, row, col, lane]
    return out


# ============================================================================ kernels for ConvNCHWc
def _conv_plan(node: Node, inputs: list[Value | None]) -> dict | None:
    """What the kernels need to know about a ConvNCHWc node, or None if they cannot run it."""
    x, w = inputs[0], inputs[1]
    bias = inputs[2] if len(inputs) > 2 else None
    z = inputs[3] if len(inputs) > 3 else None
    if not supports_epilogue(node) or w.const is None:
        return None
    for value in (x, w, bias, z):
        if value is not None and (value.dtype != np.float32 or not value.is_static):
            return None
    if len(x.shape) != 5 or x.shape[4] not in BLOCKS or len(w.shape) != 6:
        return None
    block = x.shape[4]
    window = window_geometry(node, x.shape[2:4], w.shape[2:4])
    out_shape = (x.shape[0], blocks(node.attrs["out_channels"], block), *window.output, block)
    if z is not None and tuple(z.shape) != out_shape:
        return None
    top, left = window.pads_begin
    needed_h = (window.output[0] - 1) * window.strides[0] + window.extent[0]
    needed_w = (window.output[1] - 1) * window.strides[1] + window.extent[1]
    return {
        "block": block,
        "depthwise": node.attrs["group"] > 1,
        "out_shape": out_shape,
        "pads": (top, left, max(needed_h, x.shape[2] + top), max(needed_w, x.shape[3] + left)),
        "strides": window.strides,
        "dilations": window.dilations,
        "flops": 2 * int(np.prod(out_shape)) * int(np.prod(w.shape[1:5])),
        "bytes": 4 * (int(np.prod(x.shape)) + int(np.prod(out_shape))),
    }


def _supports_direct(node, inputs):
    plan = _conv_plan(node, inputs)
    return plan is not None and not plan["depthwise"]


def _supports_depthwise(node, inputs):
    plan = _conv_plan(node, inputs)
    return plan is not None and plan["depthwise"]


def _cost_direct(node, inputs):
    return _conv_plan(node, inputs)["flops"] / DIRECT_FLOPS_PER_SECOND


def _cost_depthwise(node, inputs):
    return _conv_plan(node, inputs)["bytes"] / DEPTHWISE_BYTES_PER_SECOND


@register_kernel("ConvNCHWc", "conv_nchwc_direct", domain=FUSED_DOMAIN, supports=_supports_direct, cost=_cost_direct)
def build_conv_nchwc(node: Node, inputs: list, outputs: list):
    """Blocked direct conv (accelerates ai.tinyinfer:ConvNCHWc): float32 NCHW8c/16c, group 1, 2-D,
    any stride/pad/dilation, bias + residual + activation fused."""
    return writes_into(named(_bind(node, inputs, _conv_plan(node, inputs)), "conv_nchwc_direct"))


@register_kernel("ConvNCHWc", "conv_nchwc_depthwise", domain=FUSED_DOMAIN, supports=_supports_depthwise,
                 cost=_cost_depthwise)
def build_depthwise_nchwc(node: Node, inputs: list, outputs: list):
    """Blocked depthwise conv (accelerates ai.tinyinfer:ConvNCHWc): float32 NCHW8c/16c, group = C = M,
    2-D, any stride/pad/dilation, bias + residual + activation fused."""
    return writes_into(named(_bind(node, inputs, _conv_plan(node, inputs)), "conv_nchwc_depthwise"))


def _bind(node: Node, inputs: list, plan: dict):
    """The call ``fn(node, x, w, [bias], [z])`` for one node and shapes; weights prepared now."""
    block, (top, left, padded_h, padded_w) = plan["block"], plan["pads"]
    out_blocks, tile = plan["out_shape"][1], TILES[block]
    channels = node.attrs["in_channels"]
    weights = np.ascontiguousarray(inputs[1].const, dtype=np.float32)
    bias_value = inputs[2] if len(inputs) > 2 else None
    fixed_bias = None if bias_value is not None and bias_value.const is None else _tiled_bias(
        None if bias_value is None else bias_value.const, out_blocks, block, tile)
    lanes = _tiled_bias(np.ones(node.attrs["out_channels"], np.float32), out_blocks, block, tile)
    epilogue = epilogue_of(node)
    (stride_h, stride_w), (dilation_h, dilation_w) = plan["strides"], plan["dilations"]
    direct, depthwise = _COMPILED[block]
    placeholder = np.zeros((1, 1, 1, 1, block), np.float32)
    unpadded = (top, left, padded_h, padded_w)

    def run(node, x, w, bias=None, z=None, out=None):
        x = np.ascontiguousarray(x)
        padded = x if unpadded == (0, 0, x.shape[2], x.shape[3]) else _pad_blocked(x, top, left, padded_h, padded_w)
        b = fixed_bias if fixed_bias is not None else _tiled_bias(bias, out_blocks, block, tile)
        residual = placeholder if z is None else np.ascontiguousarray(z)
        y = output_buffer(out, plan["out_shape"])
        args = (stride_h, stride_w, dilation_h, dilation_w, epilogue.code, epilogue.alpha, epilogue.beta)
        if plan["depthwise"]:
            depthwise(padded, weights, b, lanes, residual, z is not None, y, *args)
        else:
            direct(padded, weights, b, lanes, residual, z is not None, y, channels, *args)
        return y

    return run


def _tiled_bias(bias: np.ndarray | None, out_blocks: int, block: int, tile: int) -> np.ndarray:
    """``[M] -> [M/c, tile * c]``: each block's values (0 past the last channel), once per tile pixel."""
    padded = np.zeros(out_blocks * block, np.float32)
    if bias is not None:
        padded[: bias.shape[0]] = bias
    return np.ascontiguousarray(np.tile(padded.reshape(out_blocks, 1, block), (1, tile, 1)).reshape(out_blocks, -1))


# ============================================================================ kernels for ToBlocked / FromBlocked
def _supports_to_blocked(node, inputs):
    x = inputs[0]
    return x.dtype == np.float32 and x.shape is not None and len(x.shape) == 4


def _supports_from_blocked(node, inputs):
    x = inputs[0]
    return x.dtype == np.float32 and x.shape is not None and len(x.shape) == 5


@register_kernel("ToBlocked", "to_blocked_numba", domain=FUSED_DOMAIN, supports=_supports_to_blocked)
def build_to_blocked(node: Node, inputs: list, outputs: list):
    """NCHW -> NCHWc copy loop (accelerates ai.tinyinfer:ToBlocked): float32, 4-D, any block."""
    block = node.attrs["block"]

    def to_blocked_numba(node, x, out=None):
        n, channels, h, w = x.shape
        y = output_buffer(out, (n, blocks(channels, block), h, w, block))
        _nchw_to_nchwc(np.ascontiguousarray(x), y)
        return y

    return writes_into(named(to_blocked_numba, "to_blocked_numba"))


@register_kernel("FromBlocked", "from_blocked_numba", domain=FUSED_DOMAIN, supports=_supports_from_blocked)
def build_from_blocked(node: Node, inputs: list, outputs: list):
    """NCHWc -> NCHW copy loop (accelerates ai.tinyinfer:FromBlocked): float32, 5-D."""
    channels = node.attrs["channels"]

    def from_blocked_numba(node, x, out=None):
        n, _, h, w, _ = x.shape
        y = output_buffer(out, (n, channels, h, w))
        _nchwc_to_nchw(np.ascontiguousarray(x), y)
        return y

    return writes_into(named(from_blocked_numba, "from_blocked_numba"))


# ============================================================================ kernels for blocked pooling
@numba.njit(cache=True, fastmath=True, parallel=True)
def _window_pool_nchwc(x, out, kernel_h, kernel_w, stride_h, stride_w, dilation_h, dilation_w, top, left,
                       low_h, high_h, low_w, high_w, is_max):
    """Max or average pooling on ``[N, B, H, W, c]``, one output row per job, ``c`` lanes at a time.

    Taps outside the input are skipped; an average divides by the taps inside
    ``[low, high)`` per axis (the input, or the input plus its explicit pads).
    """
    n_images, count, h, w, block = x.shape
    out_h, out_w = out.shape[2], out.shape[3]
    for job in numba.prange(n_images * count * out_h):
        n, b, oh = job // (count * out_h), (job // out_h) % count, job % out_h
        acc = np.empty(block, np.float32)
        for ow in range(out_w):
            start = -np.inf if is_max else 0.0
            for lane in range(block):
                acc[lane] = start
            taps = 0
            for kh in range(kernel_h):
                ih = oh * stride_h - top + kh * dilation_h
                for kw in range(kernel_w):
                    iw = ow * stride_w - left + kw * dilation_w
                    if low_h <= ih < high_h and low_w <= iw < high_w:
                        taps += 1
                    if 0 <= ih < h and 0 <= iw < w:
                        if is_max:
                            for lane in range(block):
                                acc[lane] = max(acc[lane], x[n, b, ih, iw, lane])
                        else:
                            for lane in range(block):
                                acc[lane] += x[n, b, ih, iw, lane]
            scale = np.float32(1.0) if is_max else np.float32(1.0 / max(taps, 1))
            for lane in range(block):
                out[n, b, oh, ow, lane] = acc[lane] * scale


@numba.njit(cache=True, fastmath=True, parallel=True)
def _global_pool_nchwc(x, out, is_max):
    """Global max or average pooling: ``[N, B, H, W, c] -> [N, B, 1, 1, c]``."""
    n_images, count, h, w, block = x.shape
    for job in numba.prange(n_images * count):
        n, b = job // count, job % count
        acc = np.empty(block, np.float64)
        for lane in range(block):
            acc[lane] = -np.inf if is_max else 0.0
        for row in range(h):
            for col in range(w):
                for lane in range(block):
                    v = x[n, b, row, col, lane]
                    acc[lane] = max(acc[lane], v) if is_max else acc[lane] + v
        for lane in range(block):
            out[n, b, 0, 0, lane] = acc[lane] if is_max else acc[lane] / (h * w)


def _supports_pool(node, inputs):
    x = inputs[0]
    return x.dtype == np.float32 and x.is_static and len(x.shape) == 5


@register_kernel("MaxPoolNCHWc", "pool_nchwc", domain=FUSED_DOMAIN, supports=_supports_pool)
@register_kernel("AveragePoolNCHWc", "pool_nchwc", domain=FUSED_DOMAIN, supports=_supports_pool)
def build_window_pool(node: Node, inputs: list, outputs: list):
    """Blocked max / average pooling (accelerates ai.tinyinfer:MaxPoolNCHWc, AveragePoolNCHWc):
    float32, 2-D, any kernel/stride/pad/dilation/ceil_mode/count_include_pad."""
    x = inputs[0]
    window = window_geometry(node, x.shape[2:4], node.attrs["kernel_shape"], ceil_mode=bool(node.attrs["ceil_mode"]))
    is_max = node.op_type == "MaxPoolNCHWc"
    include = not is_max and bool(node.attrs["count_include_pad"])
    (top, left), (bottom, right) = window.pads_begin, window.pads_end
    h, w = x.shape[2], x.shape[3]
    low_h, high_h, low_w, high_w = (-top, h + bottom, -left, w + right) if include else (0, h, 0, w)
    out_shape = (x.shape[0], x.shape[1], *window.output, x.shape[4])

    def pool_nchwc(node, x, out=None):
        y = output_buffer(out, out_shape)
        _window_pool_nchwc(np.ascontiguousarray(x), y, *window.kernel, *window.strides, *window.dilations,
                           top, left, low_h, high_h, low_w, high_w, is_max)
        return y

    return writes_into(named(pool_nchwc, "pool_nchwc"))


@register_kernel("GlobalAveragePoolNCHWc", "global_pool_nchwc", domain=FUSED_DOMAIN, supports=_supports_pool)
@register_kernel("GlobalMaxPoolNCHWc", "global_pool_nchwc", domain=FUSED_DOMAIN, supports=_supports_pool)
def build_global_pool(node: Node, inputs: list, outputs: list):
    """Blocked global pooling (accelerates ai.tinyinfer:GlobalAveragePoolNCHWc, GlobalMaxPoolNCHWc): float32."""
    is_max = node.op_type == "GlobalMaxPoolNCHWc"

    def global_pool_nchwc(node, x, out=None):
        n, count, _, _, block = x.shape
        y = output_buffer(out, (n, count, 1, 1, block))
        _global_pool_nchwc(np.ascontiguousarray(x), y, is_max)
        return y

    return writes_into(named(global_pool_nchwc, "global_pool_nchwc"))


# ============================================================================ inspection and measurement
def conv_nchwc_asm_summary(block: int = 8) -> dict:
    """What LLVM made of the blocked conv's inner loop: counts of vector FMAs by register width.

    Compiles a fresh, uncached copy of :func:`_conv_nchwc` for ``block`` (Numba cannot show
    the assembly of cached code; this takes a few seconds) and returns the counts of packed
    ``vfmadd...ps`` instructions on ymm (256-bit) and zmm (512-bit) registers, how many of
    them take their input value as a broadcast memory operand (``{1toN}``), the scalar
    ``vfmadd...ss`` left (the epilogue's), and the hottest loop itself: the innermost loop
    with the most packed FMAs, whose ``stores`` count is 0 when the tile stays in registers.
    """
    fresh = numba.njit(fastmath=True)(_conv_nchwc.py_func)  # serial: the same loop body, compiled faster
    x = np.zeros((1, 1, 3, 3, block), np.float32)
    w = np.zeros((1, 1, 3, 3, block, block), np.float32)
    out = np.empty((1, 1, 1, 1, block), np.float32)
    bias = np.zeros((1, TILES[block] * block), np.float32)
    fresh(x, w, bias, bias, out, False, out, block, 1, 1, 1, 1, 0, 0.0, 0.0, block, TILES[block])
    asm = "\n".join(fresh.inspect_asm().values())
    fmas = re.findall(r"vfmadd\d*ps\s+(.*)", asm)
    hot = max(_loops(asm), key=lambda body: len(re.findall(r"vfmadd\d*ps", body)), default="")
    return {
        "block": block,
        "fma_ymm": sum("ymm" in f for f in fmas),
        "fma_zmm": sum("zmm" in f for f in fmas),
        "broadcast_operands": sum("{1to" in f for f in fmas),
        "fma_scalar": len(re.findall(r"vfmadd\d*ss", asm)),
        "inner_loop_fmas": len(re.findall(r"vfmadd\d*ps", hot)),
        "inner_loop_stores": len(re.findall(r"vmovup[sd]\s+%[xyz]mm\d+, ", hot)),
        "inner_loop": hot,
    }


def _loops(asm: str) -> list[str]:
    """Bodies of the loops in an assembly listing: from a label to the jump back to it."""
    bodies = []
    for match in re.finditer(r"^(\.LBB\w+):\n", asm, flags=re.M):
        label = match.group(1)
        back = re.search(rf"^\s+j\w+\s+{re.escape(label)}\s*$", asm[match.end():], flags=re.M)
        if back:
            body = asm[match.end(): match.end() + back.end()]
            if not re.search(r"^\.LBB\w+:", body, flags=re.M):  # innermost: no label inside
                bodies.append(body)
    return bodies


def benchmark_nchwc(layers=None, *, block: int = 16, repeat: int = 10) -> list[dict]:
    """Time the blocked conv against the ConvNCHWc reference (NCHW im2col + BLAS plus the two
    conversions) and against the plain NCHW Conv reference, on ResNet-like layers.

    Returns one dict per layer: shapes, milliseconds (best of ``repeat``) and GFLOP/s.
    """
    from ..ops import OPS
    from .conv import times_ms
    from ..ops.layout import block_conv_weights, to_blocked

    layers = layers or [(64, 64, 56, 3, 1), (64, 256, 56, 1, 1), (128, 128, 28, 3, 1), (256, 256, 14, 3, 1),
                        (512, 512, 7, 3, 1), (3, 64, 224, 7, 2)]
    rng = np.random.default_rng(0)
    results = []
    for channels, out_channels, size, k, stride in layers:
        attrs = {"pads": [k // 2] * 4, "strides": [stride, stride]}
        conv = Node("Conv", ["x", "w"], ["y"], {**OPS[("", "Conv")].attributes, **attrs})
        blocked = Node("ConvNCHWc", ["x", "w"], ["y"], {**OPS[(FUSED_DOMAIN, "ConvNCHWc")].attributes, **attrs,
                                                        "in_channels": channels, "out_channels": out_channels},
                       FUSED_DOMAIN)
        x = rng.standard_normal((1, channels, size, size)).astype(np.float32)
        w = rng.standard_normal((out_channels, channels, k, k)).astype(np.float32)
        xb, wb = to_blocked(x, block), block_conv_weights(w, block)
        fn = build_conv_nchwc(blocked, [Value("x", np.float32, xb.shape), Value("w", np.float32, wb.shape, const=wb)],
                              [])
        flops = 2 * out_channels * channels * k * k * (size // stride) ** 2
        row = {"layer": f"{channels}->{out_channels} {k}x{k}/{stride} @{size}", "block": block}
        for name, call in (("nchwc_kernel", lambda: fn(blocked, xb, wb)),
                           ("nchwc_reference", lambda: OPS[(FUSED_DOMAIN, "ConvNCHWc")].reference(blocked, xb, wb)),
                           ("nchw_reference", lambda: OPS[("", "Conv")].reference(conv, x, w))):
            best = min(times_ms(call, repeat)) / 1e3
            row[f"{name}_ms"] = best * 1e3
            row[f"{name}_gflops"] = flops / best / 1e9
        results.append(row)
    return results

