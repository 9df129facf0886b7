"""Convolution kernels for Conv and ai.tinyinfer:FusedConv: direct, im2col + GEMM, and 1x1.

All three compute the reference op ``tinyinfer.ops.conv.Conv`` (Conv-22) for float32, 2-D,
NCHW tensors, and its fused twin ``FusedConv`` (``act(Conv(x) + z)``), whose bias, residual
and activation they apply in their own store loop (:mod:`tinyinfer.kernels.epilogue`).

* **direct** (``conv2d_direct``, :func:`build_direct`): the definition, loop by loop:
  output channels x output pixels x input channels x taps. Four output channels share
  every input load (a register block), output pixels are the vectorised inner loop (with
  stride 1, one loop runs over several rows of the zero-padded input, flattened), and
  blocks of channels run in parallel. Extra memory: one zero-padded copy of the input.
  Every group/stride/pad/dilation works.
* **im2col + GEMM** (``conv2d_im2col``, :func:`build_im2col`): copy every receptive field
  into one column of a matrix (Chellapilla, Puri & Simard, 2006), then multiply by the
  weights as a ``(M/group) x (C/group * kh * kw)`` matrix: one big, fast matrix product
  instead of many small dot products, paid for with a column buffer of ``C*kh*kw x OH*OW``
  floats per image (:func:`im2col_bytes`; 7.2 MB for a 3x3 layer of 64 channels at 56x56).
* **1x1 as GEMM** (``conv2d_1x1``, :func:`build_1x1`): with a 1x1 kernel, stride 1 and no
  padding, the input image already *is* the column matrix, so the conv is one matrix
  product per image and group, with no copy at all.

A Numba detail that decides the speed of every loop here: Numba checks each signed index
for a negative value (Python's ``a[-1]``), which keeps LLVM from vectorising a loop whose
index is computed. Indices of type ``uint64`` (constants included: in Numba
``uint64 + int64`` is a float) skip that check, and the inner loops run 4-9x faster.

The matrix products run on the package's packed GEMM (:mod:`tinyinfer.kernels.gemm`, with
the weights prepacked in the builder); its store loop applies the epilogue (bias, residual,
activation) to each tile of the output as it is written. Without that module they fall back
to NumPy's BLAS followed by one epilogue pass per image (:func:`multiply`).

:func:`benchmark_conv` times every algorithm on ResNet-like layers; the Winograd kernels
live in :mod:`tinyinfer.kernels.winograd`, the depthwise ones in
:mod:`tinyinfer.kernels.depthwise`.
"""

from __future__ import annotations

import dataclasses
import time

import numba
import numpy as np

from ..ir import Node, Value
from ..ops.conv import window_geometry
from .epilogue import (FUSED_DOMAIN, Epilogue, bias_or_zeros, epilogue_of, finish_in_place, finish_row,
                       residual_or_placeholder, supports_epilogue)
from .registry import named, output_buffer, register_kernel, writes_into

#: Output channels computed together by the direct kernel (they share each input load).
CHANNEL_BLOCK = 4

#: Sustained rates on the machine the book was written on (2 Zen 4 cores, both threads),
#: from :func:`benchmark_conv`; the cost hints are ``flops / rate + bytes / bandwidth``,
#: in seconds. Only their ratios matter for ``select="cost"``.
DIRECT_FLOPS_PER_SECOND = 60e9  # conv2d_direct on 3x3 layers (~33 GFLOP/s per core)
GEMM_FLOPS_PER_SECOND = 140e9  # the packed GEMM on im2col shapes (~80 GFLOP/s per core)
BYTES_PER_SECOND = 10e9  # writing then reading a buffer that does not fit in L2
LAUNCH_SECONDS = 10e-6  # starting one parallel Numba kernel or one GEMM (threads wake up)


# ============================================================================ geometry
@dataclasses.dataclass(frozen=True)
class ConvGeometry:
    """A 2-D convolution's sizes, strides and pads (NCHW input, MCkk weights)."""

    batch: int
    channels: int
    height: int
    width: int
    out_channels: int
    group: int
    kernel_h: int
    kernel_w: int
    stride_h: int
    stride_w: int
    dilation_h: int
    dilation_w: int
    pad_top: int
    pad_left: int
    out_h: int
    out_w: int

    @property
    def output_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.out_channels, self.out_h, self.out_w)

    @property
    def flops(self) -> int:
        """Multiply-adds x 2 of the direct definition."""
        per_output = (self.channels // self.group) * self.kernel_h * self.kernel_w
        return 2 * self.batch * self.out_channels * self.out_h * self.out_w * per_output

    @property
    def column_rows(self) -> int:
        return self.channels * self.kernel_h * self.kernel_w


def conv_geometry(node: Node, x_shape, w_shape) -> ConvGeometry:
    """The geometry of a 2-D Conv/FusedConv node on these shapes (pads resolved from auto_pad)."""
    window = window_geometry(node, tuple(x_shape[2:]), tuple(w_shape[2:]))
    n, c, h, w = (int(d) for d in x_shape)
    return ConvGeometry(
        n, c, h, w, int(w_shape[0]), int(node.attrs["group"]), *window.kernel, *window.strides,
        *window.dilations, int(window.pads_begin[0]), int(window.pads_begin[1]), *window.output,
    )


def float32_conv2d(node: Node, inputs: list[Value | None]) -> ConvGeometry | None:
    """The geometry if the node is a float32 2-D conv with known shapes every kernel here
    handles (and, for FusedConv, an activation and residual the epilogue implements)."""
    if not supports_epilogue(node):
        return None
    x, w = inputs[0], inputs[1]
    bias = inputs[2] if len(inputs) > 2 else None
    residual = inputs[3] if len(inputs) > 3 else None
    for value in (x, w, bias, residual):
        if value is not None and value.dtype != np.float32:
            return None
    if x.shape is None or w.shape is None or len(x.shape) != 4 or len(w.shape) != 4:
        return None
    if not all(isinstance(d, int) and d > 0 for d in (*x.shape, *w.shape)):
        return None  # unknown or empty: the reference handles it
    kernel_shape = node.attrs.get("kernel_shape")
    if kernel_shape is not None and tuple(kernel_shape) != tuple(w.shape[2:]):
        return None
    geometry = conv_geometry(node, x.shape, w.shape)
    if geometry.channels != w.shape[1] * geometry.group or geometry.out_channels % geometry.group:
        return None
    if residual is not None and tuple(residual.shape or ()) != geometry.output_shape:
        return None
    return geometry


def im2col_bytes(node: Node, x_shape, w_shape) -> int:
    """Bytes of the im2col column buffer for one image: ``C*kh*kw x OH*OW`` float32 values.

    :func:`conv2d_im2col` builds one image's columns at a time, so this is its whole extra
    memory whatever the batch size.
    """
    g = conv_geometry(node, x_shape, w_shape)
    return 4 * g.column_rows * g.out_h * g.out_w


# ============================================================================ the matrix products
def _find_packed_gemm():
    """The package's packed GEMM module if it is there, else None (NumPy's BLAS is used)."""
    try:
        from . import gemm
    except ImportError:
        return None
    return gemm


#: ``tinyinfer.kernels.gemm`` (None without it): looked up once, a module-level cache.
PACKED_GEMM = _find_packed_gemm()
#: "packed": tinyinfer's GEMM, whose store loop applies the epilogue; "blas": np.matmul,
#: followed by :func:`~tinyinfer.kernels.epilogue.finish_in_place` on each image.
GEMM_BACKENDS = ("packed", "blas")
DEFAULT_GEMM = "packed" if PACKED_GEMM is not None else "blas"


@dataclasses.dataclass(frozen=True)
class ConvWeights:
    """W as one ``(M/g) x (C/g * kh * kw)`` matrix per group, prepacked for the packed GEMM."""

    matrices: np.ndarray  # (g, M/g, K)
    packed: tuple | None  # one PackedMatrix per group ("packed" backend)
    backend: str
    stacked: np.ndarray | None = None  # the packed groups' data as one (g, size) array, for gemm_grouped


def conv_weights(w: np.ndarray, group: int, backend: str = DEFAULT_GEMM) -> ConvWeights:
    matrices = np.ascontiguousarray(w.reshape(group, w.shape[0] // group, -1), dtype=np.float32)
    packed = tuple(PACKED_GEMM.prepack_a(m) for m in matrices) if backend == "packed" else None
    stacked = np.stack([p.data for p in packed]) if packed is not None and group > 1 else None
    return ConvWeights(matrices, packed, backend, stacked)


def multiply(weights: ConvWeights, columns: np.ndarray, out: np.ndarray, bias, residual, epilogue: Epilogue) -> None:
    """``out = f(W @ columns + bias + residual)`` for one image, every group.

    ``columns`` is (C/g*kh*kw * g) x P, ``out`` and ``residual`` (or None) M x P, ``bias``
    (M,) or None. The packed GEMM adds the residual as its C and the bias as a per-row shift,
    in the store of each tile: no pass over the output besides that store.
    """
    group, rows, inner = weights.matrices.shape
    if weights.stacked is not None and out.flags.c_contiguous:  # every group in one call, one parallel loop
        z = None if residual is None else residual.reshape(group, rows, -1)
        PACKED_GEMM.gemm_grouped(weights.stacked, columns.reshape(group, inner, -1), out.reshape(group, rows, -1),
                                 c=z, row_bias=bias, activation=epilogue.name,
                                 activation_params=(epilogue.alpha, epilogue.beta))
        return
    for g in range(group):
        target = out[g * rows:(g + 1) * rows]
        source = columns[g * inner:(g + 1) * inner]
        if weights.backend == "blas":
            np.matmul(weights.matrices[g], source, out=target)
            continue
        b = None if bias is None else bias[g * rows:(g + 1) * rows]
        z = None if residual is None else residual[g * rows:(g + 1) * rows]
        # the residual is C, the bias a per-row shift: both added in the GEMM's store
        PACKED_GEMM.gemm(weights.packed[g], source, out=target, c=z, beta=0.0 if z is None else 1.0,
                         activation=epilogue.name, activation_params=(epilogue.alpha, epilogue.beta), row_bias=b)
    if weights.backend == "blas" and (bias is not None or residual is not None or epilogue.code != 0):
        z = _NO_RESIDUAL_3D if residual is None else residual[None]
        finish_in_place(out[None], bias_or_zeros(bias, out.shape[0]), z, residual is not None,
                        epilogue.code, epilogue.alpha, epilogue.beta, 8)


_NO_RESIDUAL_3D = np.zeros((1, 1, 1), np.float32)


# ============================================================================ direct
def _supports_direct(node, inputs):
    return float32_conv2d(node, inputs) is not None


def _cost_direct(node, inputs):
    g = float32_conv2d(node, inputs)
    # Blocks of 4 output channels per group: a group of 1 channel (depthwise) costs 4.
    blocks = -(-(g.out_channels // g.group) // CHANNEL_BLOCK) * CHANNEL_BLOCK * g.group
    padded_h, padded_w = padded_size(g)
    moved = 4 * (2 * g.batch * g.channels * padded_h * padded_w + _output_elements(g))
    return g.flops * blocks / g.out_channels / DIRECT_FLOPS_PER_SECOND + moved / BYTES_PER_SECOND + 2 * LAUNCH_SECONDS


def _output_elements(g: ConvGeometry) -> int:
    return g.batch * g.out_channels * g.out_h * g.out_w


@register_kernel("Conv", "conv2d_direct", supports=_supports_direct, cost=_cost_direct)
@register_kernel("FusedConv", "conv2d_direct", domain=FUSED_DOMAIN, supports=_supports_direct, cost=_cost_direct)
def build_direct(node: Node, inputs: list, outputs: list):
    """Direct conv (accelerates Conv / FusedConv): float32 NCHW, 2-D, any group/stride/pad/dilation."""
    geometry = float32_conv2d(node, inputs)
    epilogue = epilogue_of(node)
    packed = None if inputs[1].const is None else pack_direct_weights(inputs[1].const, geometry.group)

    def conv2d_direct(node, x, w, bias=None, *rest, out=None):
        weights = packed if packed is not None else pack_direct_weights(w, geometry.group)
        return run_direct(x, weights, bias, epilogue.residual((x, w, bias, *rest)), geometry, epilogue,
                          output_buffer(out, geometry.output_shape))

    return writes_into(named(conv2d_direct, "conv2d_direct"))


def pack_direct_weights(w: np.ndarray, group: int) -> np.ndarray:
    """W (M, C/g, kh, kw) -> (g, blocks, C/g, kh, kw, 4): the 4 weights a tap needs side by side.

    Each group's output channels are padded with zero filters to a multiple of
    :data:`CHANNEL_BLOCK`, so a block never straddles two groups.
    """
    out_channels, per_group, kh, kw = w.shape
    outputs_per_group = out_channels // group
    blocks = -(-outputs_per_group // CHANNEL_BLOCK)
    padded = np.zeros((group, blocks * CHANNEL_BLOCK, per_group, kh, kw), np.float32)
    padded[:, :outputs_per_group] = w.reshape(group, outputs_per_group, per_group, kh, kw)
    packed = padded.reshape(group, blocks, CHANNEL_BLOCK, per_group, kh, kw).transpose(0, 1, 3, 4, 5, 2)
    return np.ascontiguousarray(packed)


def run_direct(x, packed, bias, residual, g: ConvGeometry, epilogue: Epilogue, y=None) -> np.ndarray:
    padded_h, padded_w = padded_size(g)
    padded = pad_planes(x, g.pad_top, g.pad_left, padded_h, padded_w, 0.0)
    y = np.empty(g.output_shape, np.float32) if y is None else y
    z, has_residual = residual_or_placeholder(residual)
    _direct_kernel(padded, padded_w, packed, bias_or_zeros(bias, g.out_channels), z, has_residual, epilogue.code,
                   epilogue.alpha, epilogue.beta, g.stride_h, g.stride_w, g.dilation_h, g.dilation_w, y)
    return y


def padded_size(g: ConvGeometry) -> tuple[int, int]:
    """Height and width of the zero-padded input every window of the conv lies inside."""
    extent_h = g.dilation_h * (g.kernel_h - 1) + 1
    extent_w = g.dilation_w * (g.kernel_w - 1) + 1
    return (max(g.pad_top + g.height, (g.out_h - 1) * g.stride_h + extent_h),
            max(g.pad_left + g.width, (g.out_w - 1) * g.stride_w + extent_w))


def pad_planes(x: np.ndarray, top: int, left: int, height: int, width: int, value: float) -> np.ndarray:
    """x (N, C, H, W) placed at (top, left) in a (N, C, height * width) array filled with ``value``.

    Kernels that read a padded input need no bounds test in their inner loop; the planes are
    flattened so a stride-1 kernel can run one loop over several output rows.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    padded = np.empty((x.shape[0], x.shape[1], height * width), np.float32)
    _pad_kernel(x, top, left, height, width, np.float32(value), padded)
    return padded


@numba.njit(cache=True, fastmath=True, parallel=True)
def _pad_kernel(x, top, left, height, width, value, padded):
    n, channels, rows, cols = x.shape
    for task in numba.prange(n * channels):
        image, channel = task // channels, task % channels
        plane = padded[image, channel]
        for r in range(height):
            line = plane[r * width:(r + 1) * width]
            source = r - top
            if source < 0 or source >= rows:
                line[:] = value
                continue
            end = min(width, left + cols)
            line[:left] = value
            line[left:end] = x[image, channel, source, :end - left]
            line[end:] = value


@numba.njit(cache=True, fastmath=True, inline="always")
def valid_range(length, offset, stride, size):
    """Output positions ``o < length`` whose input ``o*stride + offset`` lies in ``[0, size)``."""
    low = 0 if offset >= 0 else (-offset + stride - 1) // stride
    high = min(length, (size - 1 - offset) // stride + 1) if size - 1 - offset >= 0 else 0
    return low, max(low, high)


@numba.njit(cache=True, fastmath=True, parallel=True)
def _direct_kernel(padded, padded_w, packed, bias, residual, has_residual, code, alpha, beta,
                   stride_h, stride_w, dilation_h, dilation_w, y):
    n = padded.shape[0]
    groups, blocks, per_group, kernel_h, kernel_w, _ = packed.shape
    out_channels, out_h, out_w = y.shape[1], y.shape[2], y.shape[3]
    outputs_per_group = out_channels // groups
    # Output rows computed together: 4 x rows x padded_w accumulators stay within L1 (16 KiB).
    chunk = min(out_h, max(1, 1024 // padded_w))
    unit_stride = stride_h == 1 and stride_w == 1
    step = np.uint64(stride_w)
    for task in numba.prange(n * groups * blocks):
        image = task // (groups * blocks)
        group = (task // blocks) % groups
        block = task % blocks
        first = group * outputs_per_group + block * 4
        count = min(4, outputs_per_group - block * 4)
        acc = np.empty((4, chunk * padded_w), np.float32)
        a0, a1, a2, a3 = acc[0], acc[1], acc[2], acc[3]
        for oh0 in range(0, out_h, chunk):
            rows = min(chunk, out_h - oh0)
            # With stride 1, output pixel (oh, ow) reads padded[oh + i, ow + j]: in flattened
            # planes one loop covers all the chunk's rows (the padded_w - out_w columns in
            # between are computed and dropped). With a stride, one loop per output row.
            segments = 1 if unit_stride else rows
            length = (rows - 1) * padded_w + out_w if unit_stride else out_w
            acc[:, :] = 0.0
            for c in range(per_group):
                plane = padded[image, group * per_group + c]
                for kh in range(kernel_h):
                    for kw in range(kernel_w):
                        w0 = packed[group, block, c, kh, kw, 0]
                        w1 = packed[group, block, c, kh, kw, 1]
                        w2 = packed[group, block, c, kh, kw, 2]
                        w3 = packed[group, block, c, kh, kw, 3]
                        for segment in range(segments):
                            # Unsigned indices: Numba then drops its negative-index wraparound
                            # and LLVM vectorises the loop (x4 faster, measured).
                            out = np.uint64(segment * padded_w)
                            top = (oh0 + segment) * stride_h + kh * dilation_h
                            source = np.uint64(top * padded_w + kw * dilation_w)
                            for k in range(np.uint64(length)):
                                v = plane[source + k * step]
                                a0[out + k] += w0 * v
                                a1[out + k] += w1 * v
                                a2[out + k] += w2 * v
                                a3[out + k] += w3 * v
            for j in range(count):
                m = first + j
                for r in range(rows):
                    row = acc[j, r * padded_w:r * padded_w + out_w]
                    residual_row = residual[image, m, oh0 + r] if has_residual else row
                    finish_row(y[image, m, oh0 + r], row, out_w, bias[m], residual_row, has_residual, code, alpha, beta)


# ============================================================================ im2col + GEMM
def _supports_im2col(node, inputs):
    g = float32_conv2d(node, inputs)
    return g is not None and not _is_pointwise(g)  # a 1x1 stride-1 conv needs no columns: conv2d_1x1


def _cost_im2col(node, inputs):
    g = float32_conv2d(node, inputs)
    columns = g.column_rows * g.out_h * g.out_w * g.batch
    launches = g.batch * (1 + g.group)
    moved = 4 * (2 * columns + _output_elements(g))
    return g.flops / GEMM_FLOPS_PER_SECOND + moved / BYTES_PER_SECOND + launches * LAUNCH_SECONDS


@register_kernel("Conv", "conv2d_im2col", supports=_supports_im2col, cost=_cost_im2col)
@register_kernel("FusedConv", "conv2d_im2col", domain=FUSED_DOMAIN, supports=_supports_im2col, cost=_cost_im2col)
def build_im2col(node: Node, inputs: list, outputs: list, backend: str = DEFAULT_GEMM):
    """im2col + GEMM conv (accelerates Conv / FusedConv): float32 NCHW, 2-D, any group/stride/pad/dilation."""
    geometry = float32_conv2d(node, inputs)
    epilogue = epilogue_of(node)
    prepared = None if inputs[1].const is None else conv_weights(inputs[1].const, geometry.group, backend)

    def conv2d_im2col(node, x, w, bias=None, *rest, out=None):
        weights = prepared if prepared is not None else conv_weights(w, geometry.group, backend)
        return run_im2col(x, weights, bias, epilogue.residual((x, w, bias, *rest)), geometry, epilogue,
                          output_buffer(out, geometry.output_shape))

    return writes_into(named(conv2d_im2col, "conv2d_im2col"))


def run_im2col(x, weights: ConvWeights, bias, residual, g: ConvGeometry, epilogue: Epilogue, y=None) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    pixels = g.out_h * g.out_w
    y = np.empty(g.output_shape, np.float32) if y is None else y
    flat = y.reshape(g.batch, g.out_channels, pixels)
    z = None if residual is None else np.ascontiguousarray(residual, dtype=np.float32).reshape(flat.shape)
    columns = np.empty((g.column_rows, pixels), np.float32)  # one image's columns, reused per image
    for image in range(g.batch):
        _im2col_kernel(x, image, g.kernel_h, g.kernel_w, g.stride_h, g.stride_w, g.dilation_h, g.dilation_w,
                       g.pad_top, g.pad_left, g.out_h, g.out_w, columns)
        multiply(weights, columns, flat[image], bias, None if z is None else z[image], epilogue)
    return y


@numba.njit(cache=True, fastmath=True, parallel=True)
def _im2col_kernel(x, image, kernel_h, kernel_w, stride_h, stride_w, dilation_h, dilation_w,
                   pad_top, pad_left, out_h, out_w, columns):
    """columns[(c, kh, kw), (oh, ow)] = x[image, c, oh*sh + kh*dh - pt, ow*sw + kw*dw - pl] (0 outside)."""
    channels, height, width = x.shape[1], x.shape[2], x.shape[3]
    taps = kernel_h * kernel_w
    step = np.uint64(stride_w)
    for r in numba.prange(channels * taps):
        c = r // taps
        kh = (r % taps) // kernel_w
        kw = r % kernel_w
        offset = kw * dilation_w - pad_left
        low, high = valid_range(out_w, offset, stride_w, width)
        for oh in range(out_h):
            dst = columns[r, oh * out_w:(oh + 1) * out_w]
            ih = oh * stride_h - pad_top + kh * dilation_h
            if ih < 0 or ih >= height:
                dst[:] = 0.0
                continue
            row = x[image, c, ih]
            dst[:low] = 0.0
            start, first = np.uint64(low), np.uint64(low * stride_w + offset)
            for k in range(np.uint64(high - low)):  # unsigned: no wraparound test, vectorised
                dst[start + k] = row[first + k * step]
            dst[high:] = 0.0


# ============================================================================ 1x1 as GEMM
def _is_pointwise(g: ConvGeometry) -> bool:
    return (g.kernel_h, g.kernel_w, g.stride_h, g.stride_w, g.pad_top, g.pad_left) == (1, 1, 1, 1, 0, 0) \
        and (g.out_h, g.out_w) == (g.height, g.width)


def _supports_1x1(node, inputs):
    g = float32_conv2d(node, inputs)
    return g is not None and _is_pointwise(g)


def _cost_1x1(node, inputs):
    g = float32_conv2d(node, inputs)
    launches = g.batch * g.group
    return g.flops / GEMM_FLOPS_PER_SECOND + 4 * _output_elements(g) / BYTES_PER_SECOND + launches * LAUNCH_SECONDS


@register_kernel("Conv", "conv2d_1x1", supports=_supports_1x1, cost=_cost_1x1)
@register_kernel("FusedConv", "conv2d_1x1", domain=FUSED_DOMAIN, supports=_supports_1x1, cost=_cost_1x1)
def build_1x1(node: Node, inputs: list, outputs: list, backend: str = DEFAULT_GEMM):
    """1x1 conv as GEMM (accelerates Conv / FusedConv): float32 NCHW, 1x1 kernel, stride 1, no pads, any group."""
    geometry = float32_conv2d(node, inputs)
    epilogue = epilogue_of(node)
    prepared = None if inputs[1].const is None else conv_weights(inputs[1].const, geometry.group, backend)

    def conv2d_1x1(node, x, w, bias=None, *rest, out=None):
        weights = prepared if prepared is not None else conv_weights(w, geometry.group, backend)
        return run_1x1(x, weights, bias, epilogue.residual((x, w, bias, *rest)), geometry, epilogue,
                       output_buffer(out, geometry.output_shape))

    return writes_into(named(conv2d_1x1, "conv2d_1x1"))


def run_1x1(x, weights: ConvWeights, bias, residual, g: ConvGeometry, epilogue: Epilogue, y=None) -> np.ndarray:
    pixels = g.height * g.width
    images = np.ascontiguousarray(x, dtype=np.float32).reshape(g.batch, g.channels, pixels)
    y = np.empty(g.output_shape, np.float32) if y is None else y
    flat = y.reshape(g.batch, g.out_channels, pixels)
    z = None if residual is None else np.ascontiguousarray(residual, dtype=np.float32).reshape(flat.shape)
    for image in range(g.batch):  # the image is its own column matrix
        multiply(weights, images[image], flat[image], bias, None if z is None else z[image], epilogue)
    return y


# ============================================================================ benchmark
#: Layers :func:`benchmark_conv` times: (C, M, size, kernel, stride, group), batch 1, "same" pads.
#: ResNet-18/34's 3x3 layers, ResNet's stem, two 1x1 layers, MobileNet depthwise layers.
BENCHMARK_LAYERS = (
    (64, 64, 56, 3, 1, 1), (128, 128, 28, 3, 1, 1), (256, 256, 14, 3, 1, 1), (512, 512, 7, 3, 1, 1),
    (3, 64, 224, 7, 2, 1),
    (64, 256, 56, 1, 1, 1), (256, 1024, 14, 1, 1, 1),
    (144, 144, 56, 3, 1, 144), (144, 144, 56, 3, 2, 144), (672, 672, 14, 5, 1, 672),
)


def benchmark_conv(layers=BENCHMARK_LAYERS, *, batch: int = 1, repeats: int = 20, threads: int | None = None,
                   clock: str = "wall", algorithms=None, with_onnxruntime: bool = True) -> list[dict]:
    """Time every conv algorithm that supports each layer, the reference and ONNX Runtime.

    ``layers`` holds ``(C, M, size, kernel, stride, group)`` tuples (square inputs, pads
    ``kernel // 2``). Each row has ``ms`` (best of ``repeats`` after a warm-up call) and
    ``median_ms`` per algorithm, ``gflops`` (the direct definition's 2*M*C/g*k*k*OH*OW flops
    over the best time, so Winograd's are "effective"), ``im2col_bytes`` (one image's column
    buffer) and, for 3x3 layers, ``f4_vs_im2col``: im2col's time over F(4x4)'s, both on
    tinyinfer's packed GEMM ("packed") and both on NumPy's BLAS ("blas"). Algorithms:
    ``direct``, ``im2col``, ``im2col_blas``, ``1x1``, ``1x1_blas``, ``winograd_f2``,
    ``winograd_f4``, ``winograd_f4_blas``, ``depthwise``,
    ``reference`` (tinyinfer's NumPy Conv) and ``onnxruntime`` (the same one-node model, as
    many threads as Numba uses); ``algorithms`` limits the list (a sequence of those names).
    ``blas`` names the BLAS library NumPy runs on.

    ``threads`` sets Numba's, BLAS's and ONNX Runtime's thread counts for the run (default:
    Numba's current count, BLAS and ONNX Runtime as they are). ``clock="thread"`` (with
    ``threads=1``) times with the calling thread's CPU time instead of the wall clock: on a
    machine other jobs share, it does not count the time they take the core away.
    """
    if clock not in ("wall", "thread") or (clock == "thread" and threads != 1):
        raise ValueError("clock must be 'wall', or 'thread' with threads=1")
    if threads is None:
        return _benchmark_conv(layers, batch, repeats, time.perf_counter, algorithms, with_onnxruntime)
    from threadpoolctl import threadpool_limits

    previous = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        with threadpool_limits(threads):
            return _benchmark_conv(layers, batch, repeats, time.thread_time if clock == "thread" else time.perf_counter,
                                   algorithms, with_onnxruntime)
    finally:
        numba.set_num_threads(previous)


def _benchmark_conv(layers, batch, repeats, clock, wanted, with_onnxruntime):
    from ..ops import OPS
    from .depthwise import _supports_depthwise, build_depthwise
    from .winograd import _supports_winograd, build_winograd, build_winograd_f2, build_winograd_f4

    kernels = {
        "direct": (_supports_direct, build_direct),
        "im2col": (_supports_im2col, build_im2col),
        "im2col_blas": (_supports_im2col, lambda n, i, o: build_im2col(n, i, o, backend="blas")),
        "1x1": (_supports_1x1, build_1x1),
        "1x1_blas": (_supports_1x1, lambda n, i, o: build_1x1(n, i, o, backend="blas")),
        "winograd_f2": (_supports_winograd, build_winograd_f2),
        "winograd_f4": (_supports_winograd, build_winograd_f4),
        "winograd_f4_blas": (_supports_winograd, lambda n, i, o: build_winograd(n, i, 4, backend="blas")),
        "depthwise": (_supports_depthwise, build_depthwise),
    }
    reference = OPS[("", "Conv")].reference
    blas = _blas_name()
    rng = np.random.default_rng(0)
    rows = []
    for channels, out_channels, size, kernel, stride, group in layers:
        node, inputs, x, w, b = benchmark_layer(channels, out_channels, size, kernel, stride, group, batch, rng)
        g = float32_conv2d(node, inputs)
        label = f"{channels}->{out_channels} {size}x{size} {kernel}x{kernel}/{stride}"
        label += f" g{group}" if group > 1 else ""
        row = {"layer": label, "shape": (channels, out_channels, size, kernel, stride, group), "batch": batch,
               "gflop": g.flops / 1e9, "im2col_bytes": im2col_bytes(node, x.shape, w.shape), "blas": blas,
               "ms": {}, "median_ms": {}}
        calls = {key: build(node, inputs, []) for key, (supports, build) in kernels.items()
                 if supports(node, inputs) and (wanted is None or key in wanted)}
        calls["reference"] = reference
        if with_onnxruntime and (wanted is None or "onnxruntime" in wanted):
            session = _onnxruntime_session(node, w, b, x.shape)
            if session is not None:
                calls["onnxruntime"] = lambda node, x, w, b, session=session: session.run(None, {"x": x})[0]
        expected = reference(node, x, w, b)
        scale = float(np.abs(expected).max())
        for key, fn in calls.items():
            # A wrong kernel fails here rather than being timed.
            np.testing.assert_allclose(fn(node, x, w, b), expected, rtol=2e-3, atol=2e-3 * scale)
            times = times_ms(lambda: fn(node, x, w, b), repeats, clock)
            row["ms"][key], row["median_ms"][key] = min(times), float(np.median(times))
        row["gflops"] = {k: g.flops / (v * 1e6) for k, v in row["ms"].items()}
        ms = row["ms"]
        if {"winograd_f4", "im2col"} <= set(ms):
            row["f4_vs_im2col"] = {"packed": ms["im2col"] / ms["winograd_f4"]}
            if {"winograd_f4_blas", "im2col_blas"} <= set(ms):
                row["f4_vs_im2col"]["blas"] = ms["im2col_blas"] / ms["winograd_f4_blas"]
        rows.append(row)
    return rows


def benchmark_layer(channels, out_channels, size, kernel, stride, group, batch, rng):
    """A Conv node with He-initialised constant weights and a bias, its input Values and arrays."""
    pad = kernel // 2
    node = Node("Conv", ["x", "w", "b"], ["y"], {
        "auto_pad": "NOTSET", "dilations": [1, 1], "group": group, "kernel_shape": [kernel, kernel],
        "pads": [pad] * 4, "strides": [stride, stride]}, "", "conv")
    fan_in = channels // group * kernel * kernel
    x = rng.standard_normal((batch, channels, size, size)).astype(np.float32)
    w = rng.standard_normal((out_channels, channels // group, kernel, kernel)) * np.sqrt(2 / fan_in)
    w = w.astype(np.float32)
    b = (rng.standard_normal(out_channels) * 0.1).astype(np.float32)
    inputs = [Value("x", np.float32, x.shape), Value("w", np.float32, w.shape, w), Value("b", np.float32, b.shape, b)]
    return node, inputs, x, w, b


def times_ms(call, repeats: int, clock=time.perf_counter) -> list[float]:
    """Milliseconds of ``repeats`` calls after one untimed call (compilation, caches)."""
    call()  # compile / warm up
    times = []
    for _ in range(repeats):
        start = clock()
        call()
        times.append((clock() - start) * 1e3)
    return times


def _blas_name() -> str:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "unknown"
    for pool in threadpool_info():
        if pool.get("user_api") == "blas":
            return (f"{pool.get('internal_api')} {pool.get('version')} "
                    f"({pool.get('architecture')}, {pool.get('num_threads')} threads)")
    return "unknown"


def _onnxruntime_session(node, w, b, x_shape):
    try:
        import onnxruntime
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        return None
    attrs = {k: v for k, v in node.attrs.items() if v is not None}
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["y"], **attrs)], "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = numba.get_num_threads()
    return onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
