"""The BinaryConv kernel: im2col on sign bits, then the XNOR-popcount GEMM.

Accelerates ``ai.tinyinfer:BinaryConv`` (reference: :mod:`tinyinfer.ops.binary`,
``act(Conv(Sign(X), W, B))``, padding 0 or ±1) for float32 NCHW input, one group, and constant weights that are
``±α`` per output channel, as a binarized network exports them (XNOR-Net). Per call:

1. :func:`pack_windows` lays every output pixel's receptive field, ``C · kh · kw`` signs, out
   as one row of bits (1 for ``x > 0``), 64 to a word: im2col, 32 times smaller than in floats.
   The channels of each input pixel are packed first, so a window is a copy of whole words
   per tap;
2. :func:`tinyinfer.kernels.binary.xnor_gemm` multiplies the weights' sign bits (packed once,
   when the session plans, tap by tap the same way) by those rows:
   ``α · (K − 2 · popcount(w XOR x))``. Bits past C are 0 in both, so they never differ and
   count for nothing;
3. the bias is added, then the **border correction**, then the activation if any. A bit has
   no 0, so the packing reads ONNX's zero padding as +1: each padded tap added ``α · sign(w)``
   where ONNX adds 0 (``pad_value · α · sign(w)`` where the node pads with ``pad_value``).
   Which taps fall in the padding depends on the output pixel only, not on the image, so
   ``Σ sign(w)`` over them is computed once per pixel and output channel (a Conv of the
   padding's indicator) and folded into the bias.

``Sign(0) = 0`` has no bit either: an input that holds an exact 0 (rare after a
BatchNormalization, possible for a constant image) runs the reference convolution for that
call, so the kernel's result is always the reference's, up to float32 rounding.

:func:`pack_windows_numpy` is the readable twin of the two Numba packing loops.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from numba import njit, prange

from ..ir import Node
from ..ops import OPS
from ..ops.fused import apply_activation
from .binary import WORD, pack_signs, xnor_gemm
from .conv import ConvGeometry, float32_conv2d
from .epilogue import FUSED_DOMAIN, bias_or_zeros
from .registry import named, output_buffer, register_kernel, writes_into

#: Largest relative spread of |w| within an output channel that still counts as one α.
ALPHA_RTOL = 1e-6


# ---------------------------------------------------------------------------- packing the windows
@njit(cache=True, parallel=True)
def _pack_channels(x, pad_top, pad_left, padded):
    """``padded[n, y, x, :]``: the C signs of one pixel of the padded input as bits, padding all +1."""
    batch, channels, height, width = x.shape
    _, rows, cols, words = padded.shape
    one = np.uint64(1)
    for line in prange(batch * rows):
        image, y = line // rows, line % rows - pad_top
        for col in range(cols):
            x_at = col - pad_left
            inside = 0 <= y < height and 0 <= x_at < width
            for word in range(words):
                value = np.uint64(0)
                for bit in range(min(WORD, channels - word * WORD)):
                    if not inside or x[image, word * WORD + bit, y, x_at] > 0:
                        value |= one << np.uint64(bit)
                padded[image, line % rows, col, word] = value


@njit(cache=True, parallel=True)
def _gather_windows(padded, kernel_h, kernel_w, stride_h, stride_w, dilation_h, dilation_w, out_h, out_w, bits):
    """Row ``(n, oh, ow)`` of ``bits``: the words of every tap of that pixel's window, tap after tap."""
    batch, _, _, words = padded.shape
    pixels = out_h * out_w
    for row in prange(batch * pixels):
        image, pixel = row // pixels, row % pixels
        top, left = (pixel // out_w) * stride_h, (pixel % out_w) * stride_w
        k = 0
        for i in range(kernel_h):
            for j in range(kernel_w):
                for word in range(words):
                    bits[row, k] = padded[image, top + i * dilation_h, left + j * dilation_w, word]
                    k += 1


def pack_windows(x: np.ndarray, g: ConvGeometry) -> np.ndarray:
    """Sign bits of every receptive field of ``x``: ``[N · OH · OW, kh · kw · ceil(C / 64)]`` uint64.

    Bit ``c`` of word ``(i, j, c // 64)`` of a row is 1 where the input under tap ``(i, j)``
    is positive or the tap falls in the padding; bits past C are 0. The channels are packed
    once per input pixel, then whole words are copied per tap (the layout of daBNN and Larq
    Compute Engine), instead of testing ``C · kh · kw`` signs for every output pixel.
    """
    words = -(-g.channels // WORD)
    rows, cols = _padded_size(g)
    padded = np.empty((g.batch, rows, cols, words), np.uint64)
    _pack_channels(np.ascontiguousarray(x, np.float32), g.pad_top, g.pad_left, padded)
    bits = np.empty((g.batch * g.out_h * g.out_w, g.kernel_h * g.kernel_w * words), np.uint64)
    _gather_windows(padded, g.kernel_h, g.kernel_w, g.stride_h, g.stride_w, g.dilation_h, g.dilation_w,
                    g.out_h, g.out_w, bits)
    return bits


def pack_windows_numpy(x: np.ndarray, g: ConvGeometry) -> np.ndarray:
    """NumPy twin of :func:`pack_windows`: pack the padded sign map along channels, then take a
    strided view of its windows."""
    signs = np.where(_padded(x > 0, g, fill=True), 1.0, -1.0)
    per_pixel = pack_signs(np.moveaxis(signs, 1, -1))  # (N, rows, cols, words)
    span_h, span_w = g.dilation_h * (g.kernel_h - 1) + 1, g.dilation_w * (g.kernel_w - 1) + 1
    windows = np.lib.stride_tricks.sliding_window_view(per_pixel, (span_h, span_w), axis=(1, 2))
    windows = windows[:, ::g.stride_h, ::g.stride_w, :, ::g.dilation_h, ::g.dilation_w][:, :g.out_h, :g.out_w]
    return np.ascontiguousarray(windows.transpose(0, 1, 2, 4, 5, 3)).reshape(g.batch * g.out_h * g.out_w, -1)


def pack_filters(w: np.ndarray) -> np.ndarray:
    """The weights' sign bits in the layout of :func:`pack_windows`: ``[M, kh · kw · ceil(C / 64)]``."""
    per_tap = pack_signs(np.ascontiguousarray(np.moveaxis(w, 1, -1)))  # (M, kh, kw, words)
    return per_tap.reshape(w.shape[0], -1)


def _padded_size(g: ConvGeometry) -> tuple[int, int]:
    """Rows and columns of the padded input that the windows read."""
    span_h, span_w = g.dilation_h * (g.kernel_h - 1) + 1, g.dilation_w * (g.kernel_w - 1) + 1
    return (g.out_h - 1) * g.stride_h + span_h, (g.out_w - 1) * g.stride_w + span_w


def _padded(a: np.ndarray, g: ConvGeometry, fill) -> np.ndarray:
    """``a`` placed at (pad_top, pad_left) in a map exactly as large as the windows read, ``fill`` around."""
    need_h, need_w = _padded_size(g)
    full = np.full((*a.shape[:2], max(need_h, g.pad_top + g.height), max(need_w, g.pad_left + g.width)), fill, a.dtype)
    full[:, :, g.pad_top:g.pad_top + g.height, g.pad_left:g.pad_left + g.width] = a
    return full[:, :, :need_h, :need_w]


# ---------------------------------------------------------------------------- the weights
@dataclasses.dataclass(frozen=True)
class BinaryWeights:
    """What the kernel keeps of a ``±α`` weight: its sign bits, α, and bias minus border correction."""

    bits: np.ndarray  # [M, words] uint64
    alpha: np.ndarray  # [M] float32
    length: int  # K = C * kh * kw
    offset: np.ndarray  # [M, OH * OW] float32: bias - α · (Σ sign(w) over padded taps)


def channel_alpha(w: np.ndarray) -> np.ndarray | None:
    """α per output channel if every weight of a channel is ``±α`` (within :data:`ALPHA_RTOL`), else None."""
    magnitude = np.abs(np.asarray(w, np.float64).reshape(w.shape[0], -1))
    alpha = magnitude.mean(axis=1)
    spread = np.abs(magnitude - alpha[:, None]).max(axis=1)
    return alpha.astype(np.float32) if np.all(spread <= ALPHA_RTOL * alpha) else None


def binary_weights(node: Node, w: np.ndarray, bias: np.ndarray | None, g: ConvGeometry) -> BinaryWeights:
    signs = np.where(w >= 0, 1.0, -1.0).astype(np.float32)
    alpha = channel_alpha(w)
    border = _padded(np.zeros((1, g.channels, g.height, g.width), np.float32), g, fill=1.0)
    conv_attrs = {name: node.attrs[name] for name in OPS[("", "Conv")].attributes}
    conv = Node("Conv", ["x", "w"], ["y"], {**conv_attrs, "pads": [0, 0, 0, 0], "auto_pad": "NOTSET"})
    correction = OPS[("", "Conv")].reference(conv, border, signs).reshape(g.out_channels, -1)
    # The packing put +1 where the padding holds pad_value (0 for ONNX's Conv): take the difference back.
    offset = bias_or_zeros(bias, g.out_channels)[:, None] - (1 - node.attrs["pad_value"]) * alpha[:, None] * correction
    return BinaryWeights(pack_filters(signs), alpha, signs[0].size,
                         np.ascontiguousarray(offset, np.float32))


def binary_conv(x: np.ndarray, weights: BinaryWeights, g: ConvGeometry, y: np.ndarray, activation: str = "Identity",
                params=None) -> np.ndarray:
    """``act(Conv(Sign(x), W, B))`` into ``y`` by XNOR and popcount, for an ``x`` with no exact zero."""
    product = xnor_gemm(weights.bits, pack_windows(x, g), weights.length, weights.alpha)
    pixels = g.out_h * g.out_w
    by_image = product.reshape(g.out_channels, g.batch, pixels).transpose(1, 0, 2)
    np.add(by_image, weights.offset, out=y.reshape(g.batch, g.out_channels, pixels))
    return y if activation == "Identity" else apply_activation(y, activation, params)


# ---------------------------------------------------------------------------- registration
def _supports_binary(node, inputs):
    g = float32_conv2d(node, inputs)
    w = inputs[1]
    bias = inputs[2] if len(inputs) > 2 else None
    constant_bias = bias is None or bias.const is not None
    return (g is not None and g.group == 1 and w.const is not None and constant_bias
            and channel_alpha(w.const) is not None)


@register_kernel("BinaryConv", "binary_conv_xnor", domain=FUSED_DOMAIN, supports=_supports_binary)
def build_binary_conv(node: Node, inputs: list, outputs: list):
    """XNOR-popcount conv (accelerates BinaryConv): float32 NCHW, group 1, constant ±α weights per channel."""
    g = float32_conv2d(node, inputs)
    bias = inputs[2].const if len(inputs) > 2 and inputs[2] is not None else None
    weights = binary_weights(node, inputs[1].const, bias, g)
    reference = OPS[(FUSED_DOMAIN, "BinaryConv")].reference

    def binary_conv_xnor(node, x, w, bias=None, out=None):
        if not x.all():  # an exact 0, whose sign is 0, has no bit: the float path computes it
            return reference(node, x, w, bias)
        y = output_buffer(out, g.output_shape)
        return binary_conv(x, weights, g, y, node.attrs["activation"], node.attrs["activation_params"])

    return writes_into(named(binary_conv_xnor, "binary_conv_xnor"))
