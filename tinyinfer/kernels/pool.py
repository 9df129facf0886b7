"""Pooling kernels: MaxPool, AveragePool (2-D) and GlobalAveragePool, float32 NCHW.

The references (``tinyinfer/ops/pool.py``) fold over kernel taps with one NumPy call per
tap, each a pass over the whole output. These kernels pad each plane once (with ``-inf`` for
max, zeros for sums), then make one pass per tap over a block of output rows that stays in
L1, and run the (batch x channel) planes in parallel.

* ``maxpool2d`` / ``averagepool2d`` accelerate MaxPool and AveragePool (opset 1-22) for
  float32, 4-D inputs, any kernel, stride, pads, dilations and ``auto_pad``, with
  ``ceil_mode`` and (AveragePool) ``count_include_pad``; MaxPool only without its optional
  ``Indices`` output. The average divides by the number of taps that count (those inside
  the input, plus those in the explicit pads with ``count_include_pad=1``; taps past the
  pads that ``ceil_mode`` adds never count), computed once in the builder.
* ``global_averagepool`` accelerates GlobalAveragePool for float32, 4-D inputs: one sum per
  plane (vectorised partial sums, so the rounding differs from NumPy's pairwise sum by a
  few ulps of the mean).
"""

from __future__ import annotations

import numba
import numpy as np

from ..ir import Node
from ..ops import OPS
from .conv import BYTES_PER_SECOND, LAUNCH_SECONDS, pad_planes
from .registry import named, output_buffer, register_kernel, writes_into

MAX, AVERAGE = 0, 1


def _pool_window(node, inputs):
    """The op's window geometry if the node is a plain float32 2-D pooling, else None."""
    x = inputs[0]
    if x.dtype != np.float32 or x.shape is None or len(x.shape) != 4:
        return None
    if not all(isinstance(d, int) and d > 0 for d in x.shape):
        return None  # unknown or empty: the reference handles it
    if node.op_type == "MaxPool" and len(node.outputs) > 1 and node.outputs[1]:
        return None  # the Indices output: the reference computes it
    return OPS[("", node.op_type)].geometry(node, tuple(x.shape[2:]))


def _supports_pool(node, inputs):
    return _pool_window(node, inputs) is not None


def _cost_pool(node, inputs):
    window = _pool_window(node, inputs)
    n, c, h, w = inputs[0].shape
    outputs = n * c * window.output[0] * window.output[1]
    moved = 4 * (2 * n * c * h * w + outputs)  # the padded copy, then the output
    return moved / BYTES_PER_SECOND + outputs * np.prod(window.kernel) / 20e9 + 2 * LAUNCH_SECONDS


@register_kernel("MaxPool", "maxpool2d", supports=_supports_pool, cost=_cost_pool)
def build_maxpool(node: Node, inputs: list, outputs: list):
    """2-D max pooling (accelerates MaxPool): float32 NCHW, any window, no Indices output."""
    return _build_pool(node, inputs, MAX, "maxpool2d")


@register_kernel("AveragePool", "averagepool2d", supports=_supports_pool, cost=_cost_pool)
def build_averagepool(node: Node, inputs: list, outputs: list):
    """2-D average pooling (accelerates AveragePool): float32 NCHW, any window, count_include_pad, ceil_mode."""
    return _build_pool(node, inputs, AVERAGE, "averagepool2d")


def _build_pool(node, inputs, mode, name):
    window = _pool_window(node, inputs)
    n, c, h, w = inputs[0].shape
    out_h, out_w = window.output
    extent_h, extent_w = window.extent
    padded_h = max(window.pads_begin[0] + h, (out_h - 1) * window.strides[0] + extent_h)
    padded_w = max(window.pads_begin[1] + w, (out_w - 1) * window.strides[1] + extent_w)
    if mode == AVERAGE:
        include = bool(node.attrs["count_include_pad"])
        scale = 1.0 / np.multiply.outer(*(_counts(window, axis, size, include) for axis, size in enumerate((h, w))))
    else:
        scale = np.ones((out_h, out_w))
    scale = np.ascontiguousarray(scale, dtype=np.float32)
    fill = -np.inf if mode == MAX else 0.0

    if mode == MAX:
        def maxpool(node, x, out=None):
            y = output_buffer(out, (n, c, out_h, out_w))
            _maxpool_kernel(np.ascontiguousarray(x, dtype=np.float32), window.pads_begin[0], window.pads_begin[1],
                            padded_h, padded_w, window.kernel[0], window.kernel[1], window.strides[0],
                            window.strides[1], window.dilations[0], window.dilations[1], y)
            return y

        return writes_into(named(maxpool, name))

    def pool(node, x, out=None):
        padded = pad_planes(x, window.pads_begin[0], window.pads_begin[1], padded_h, padded_w, fill)
        y = output_buffer(out, (n, c, out_h, out_w))
        _pool_kernel(padded, padded_w, mode, window.kernel[0], window.kernel[1], window.strides[0], window.strides[1],
                     window.dilations[0], window.dilations[1], scale, y)
        return y

    return writes_into(named(pool, name))


def _counts(window, axis: int, size: int, include_pads: bool) -> np.ndarray:
    """Per output position along one axis: how many taps of the window count for the average."""
    begin, end = window.pads_begin[axis], window.pads_end[axis]
    low, high = (-begin, size + end) if include_pads else (0, size)
    taps = np.arange(window.kernel[axis]) * window.dilations[axis]
    positions = np.arange(window.output[axis])[:, None] * window.strides[axis] - begin + taps[None, :]
    return ((positions >= low) & (positions < high)).sum(axis=1)


@numba.njit(cache=True, fastmath=True, parallel=True)
def _pool_kernel(padded, padded_w, mode, kernel_h, kernel_w, stride_h, stride_w, dilation_h, dilation_w, scale, y):
    n, channels, out_h, out_w = y.shape
    chunk = min(out_h, max(1, 4096 // padded_w))
    unit_stride = stride_h == 1 and stride_w == 1
    step = np.uint64(stride_w)
    for task in numba.prange(n * channels):
        image, channel = task // channels, task % channels
        plane = padded[image, channel]
        acc = np.empty(chunk * padded_w, np.float32)
        for oh0 in range(0, out_h, chunk):
            rows = min(chunk, out_h - oh0)
            segments = 1 if unit_stride else rows
            length = (rows - 1) * padded_w + out_w if unit_stride else out_w
            acc[:] = -np.inf if mode == MAX else 0.0
            for kh in range(kernel_h):
                for kw in range(kernel_w):
                    for segment in range(segments):
                        out = np.uint64(segment * padded_w)
                        source = np.uint64(((oh0 + segment) * stride_h + kh * dilation_h) * padded_w + kw * dilation_w)
                        if mode == MAX:
                            for k in range(np.uint64(length)):  # unsigned indices: vectorised
                                acc[out + k] = max(acc[out + k], plane[source + k * step])
                        else:
                            for k in range(np.uint64(length)):
                                acc[out + k] += plane[source + k * step]
            for r in range(rows):
                line = acc[r * padded_w:r * padded_w + out_w]
                target = y[image, channel, oh0 + r]
                if mode == MAX:
                    target[:] = line
                else:
                    factors = scale[oh0 + r]
                    for k in range(out_w):
                        target[k] = line[k] * factors[k]


@numba.njit(cache=True, fastmath=True, parallel=True)
def _maxpool_kernel(x, pad_top, pad_left, padded_h, padded_w, kernel_h, kernel_w, stride_h, stride_w, dilation_h,
                    dilation_w, y):
    """Max pooling by separable passes (a max over a box is a max of row maxima), per plane.

    Each input row, padded with -inf, is reduced over the kernel's columns at every position
    (a vector loop per tap), then sampled at the output columns (one scalar copy per output);
    an output row is then the max of ``kernel_h`` such rows (vector loops). Padding happens
    in the row buffer: no padded copy of the input.
    """
    n, channels, height, width = x.shape
    out_h, out_w = y.shape[2], y.shape[3]
    full = (out_w - 1) * stride_w + 1  # positions whose window an output starts at
    step = np.uint64(stride_w)
    for task in numba.prange(n * channels):
        image, channel = task // channels, task % channels
        line = np.full(padded_w, -np.inf, np.float32)
        across = np.empty(full, np.float32)
        rows = np.empty((padded_h, out_w), np.float32)  # row maxima at the output columns
        right = min(width, padded_w - pad_left)
        for r in range(padded_h):
            source = r - pad_top
            if source < 0 or source >= height:
                rows[r, :] = -np.inf
                continue
            line[pad_left:pad_left + right] = x[image, channel, source, :right]
            across[:] = line[:full]
            for kw in range(1, kernel_w):
                shifted = line[kw * dilation_w:kw * dilation_w + full]
                for k in range(full):
                    across[k] = max(across[k], shifted[k])
            target = rows[r]
            for k in range(np.uint64(out_w)):
                target[k] = across[k * step]
        for oh in range(out_h):
            out = y[image, channel, oh]
            out[:] = rows[oh * stride_h]
            for kh in range(1, kernel_h):
                other = rows[oh * stride_h + kh * dilation_h]
                for k in range(out_w):
                    out[k] = max(out[k], other[k])


# ---------------------------------------------------------------------------- GlobalAveragePool
def _supports_global(node, inputs):
    x = inputs[0]
    return (x.dtype == np.float32 and x.shape is not None and len(x.shape) == 4
            and all(isinstance(d, int) and d > 0 for d in x.shape))


def _cost_global(node, inputs):
    return 4 * int(np.prod(inputs[0].shape)) / BYTES_PER_SECOND + LAUNCH_SECONDS


@register_kernel("GlobalAveragePool", "global_averagepool", supports=_supports_global, cost=_cost_global)
def build_global_averagepool(node: Node, inputs: list, outputs: list):
    """Global average pooling (accelerates GlobalAveragePool): float32 NCHW."""

    def global_averagepool(node, x, out=None):
        n, c, h, w = x.shape
        planes = np.ascontiguousarray(x, dtype=np.float32).reshape(n * c, h * w)
        y = output_buffer(out, (n, c, 1, 1))
        _global_mean_kernel(planes, y.reshape(n * c))
        return y

    return writes_into(named(global_averagepool, "global_averagepool"))


@numba.njit(cache=True, fastmath=True, parallel=True)
def _global_mean_kernel(planes, y):
    count, size = planes.shape
    for p in numba.prange(count):
        total = np.float32(0.0)
        plane = planes[p]
        for i in range(size):
            total += plane[i]
        y[p] = total / np.float32(size)
