"""Depthwise 3x3 and 5x5 convolution kernels for Conv / FusedConv (MobileNet's workhorse).

A depthwise conv (``group == C == M``: every channel filtered by its own kernel, Howard et
al., "MobileNets", 2017) does ``k*k`` multiply-adds per output, against ``C*k*k`` for a dense
conv: far too little work for a matrix product to pay, and im2col would copy every input
pixel ``k*k`` times to save nothing. The kernel here is the definition, arranged so the
CPU's vector units stay busy:

* the input is padded once, so the inner loop has no bounds tests;
* all ``k*k`` taps are summed in one pass over an output row (the weights sit in
  registers: 9 or 25 loads and multiply-adds per output, one store), instead of one
  pass over the output per tap; with stride 1 a pass covers several output rows at once
  (flattened planes, as in ``conv2d_direct``);
* channels run in parallel; bias, residual and activation are applied as each row is stored.

Accelerates ``tinyinfer.ops.conv.Conv`` and ``ai.tinyinfer:FusedConv`` for float32 NCHW, 2-D,
``group == C == M`` (one filter per channel), 3x3 or 5x5 kernels, stride 1 or 2 (the same
along both axes), dilation 1, any padding.
"""

from __future__ import annotations

import numba
import numpy as np

from ..ir import Node
from .conv import BYTES_PER_SECOND, LAUNCH_SECONDS, ConvGeometry, float32_conv2d, pad_planes, padded_size
from .epilogue import FUSED_DOMAIN, Epilogue, bias_or_zeros, epilogue_of, finish_row, residual_or_placeholder
from .registry import named, output_buffer, register_kernel, writes_into

#: Multiply-adds per second of the depthwise kernel's inner loop (2 Zen 4 cores; it is
#: memory-bound before it gets there).
DEPTHWISE_TAPS_PER_SECOND = 60e9


def _depthwise_case(node, inputs) -> ConvGeometry | None:
    g = float32_conv2d(node, inputs)
    if g is None:
        return None
    if not (g.group == g.channels == g.out_channels):
        return None
    if g.kernel_h != g.kernel_w or g.kernel_h not in (3, 5) or g.stride_h != g.stride_w or g.stride_h not in (1, 2):
        return None
    if (g.dilation_h, g.dilation_w) != (1, 1):
        return None
    return g


def _supports_depthwise(node, inputs):
    return _depthwise_case(node, inputs) is not None


def _cost_depthwise(node, inputs):
    g = _depthwise_case(node, inputs)
    outputs = g.batch * g.out_channels * g.out_h * g.out_w
    padded_h, padded_w = padded_size(g)
    moved = 4 * (2 * g.batch * g.channels * padded_h * padded_w + outputs)
    return outputs * g.kernel_h * g.kernel_w / DEPTHWISE_TAPS_PER_SECOND + moved / BYTES_PER_SECOND + 2 * LAUNCH_SECONDS


@register_kernel("Conv", "conv2d_depthwise", supports=_supports_depthwise, cost=_cost_depthwise)
@register_kernel("FusedConv", "conv2d_depthwise", domain=FUSED_DOMAIN, supports=_supports_depthwise,
                 cost=_cost_depthwise)
def build_depthwise(node: Node, inputs: list, outputs: list):
    """Depthwise 3x3/5x5 conv (accelerates Conv / FusedConv): float32 NCHW, group == C == M, stride 1 or 2."""
    geometry = _depthwise_case(node, inputs)
    epilogue = epilogue_of(node)

    def conv2d_depthwise(node, x, w, bias=None, *rest, out=None):
        return run_depthwise(x, w, bias, epilogue.residual((x, w, bias, *rest)), geometry, epilogue,
                             output_buffer(out, geometry.output_shape))

    return writes_into(named(conv2d_depthwise, "conv2d_depthwise"))


def run_depthwise(x, w, bias, residual, g: ConvGeometry, epilogue: Epilogue, y: np.ndarray) -> np.ndarray:
    padded_h, padded_w = padded_size(g)
    padded = pad_planes(x, g.pad_top, g.pad_left, padded_h, padded_w, 0.0)
    weights = np.ascontiguousarray(w, dtype=np.float32).reshape(g.channels, g.kernel_h * g.kernel_w)
    z, has_residual = residual_or_placeholder(residual)
    _depthwise_kernel(padded, padded_w, weights, g.kernel_h, g.stride_h, bias_or_zeros(bias, g.channels), z,
                      has_residual, epilogue.code, epilogue.alpha, epilogue.beta, y)
    return y


@numba.njit(cache=True, fastmath=True, parallel=True)
def _depthwise_kernel(padded, padded_w, weights, kernel, stride, bias, residual, has_residual, code, alpha, beta, y):
    n, channels, out_h, out_w = y.shape
    chunk = min(out_h, max(1, 4096 // padded_w))  # output rows per pass (<= 16 KiB of accumulators)
    # Every index is unsigned (constants included: uint64 + int64 is float64 in Numba), so
    # Numba drops its negative-index wraparound and LLVM vectorises (x9 faster, measured).
    step, row = np.uint64(stride), np.uint64(padded_w)
    one, two, three, four = np.uint64(1), np.uint64(2), np.uint64(3), np.uint64(4)
    for task in numba.prange(n * channels):
        image, channel = task // channels, task % channels
        plane = padded[image, channel]
        w = weights[channel]
        acc = np.empty(chunk * padded_w, np.float32)
        for oh0 in range(0, out_h, chunk):
            rows = min(chunk, out_h - oh0)
            segments = 1 if stride == 1 else rows
            length = (rows - 1) * padded_w + out_w if stride == 1 else out_w
            for segment in range(segments):
                out = np.uint64(segment * padded_w)
                top = np.uint64((oh0 + segment) * stride * padded_w)
                if kernel == 3:
                    w0, w1, w2, w3, w4, w5, w6, w7, w8 = w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7], w[8]
                    middle, bottom = top + row, top + two * row
                    for k in range(np.uint64(length)):
                        s = k * step
                        acc[out + k] = (w0 * plane[top + s] + w1 * plane[top + s + one] + w2 * plane[top + s + two]
                                        + w3 * plane[middle + s] + w4 * plane[middle + s + one]
                                        + w5 * plane[middle + s + two] + w6 * plane[bottom + s]
                                        + w7 * plane[bottom + s + one] + w8 * plane[bottom + s + two])
                else:
                    acc[out:out + np.uint64(length)] = 0.0
                    for kh in range(5):
                        v0, v1, v2, v3, v4 = w[5 * kh], w[5 * kh + 1], w[5 * kh + 2], w[5 * kh + 3], w[5 * kh + 4]
                        base = top + np.uint64(kh) * row
                        for k in range(np.uint64(length)):
                            s = base + k * step
                            acc[out + k] += (v0 * plane[s] + v1 * plane[s + one] + v2 * plane[s + two]
                                             + v3 * plane[s + three] + v4 * plane[s + four])
            for r in range(rows):
                line = acc[r * padded_w:r * padded_w + out_w]
                oh = oh0 + r
                residual_row = residual[image, channel, oh] if has_residual else line
                finish_row(y[image, channel, oh], line, out_w, bias[channel], residual_row, has_residual,
                           code, alpha, beta)
