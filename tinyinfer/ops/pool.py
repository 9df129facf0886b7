"""Pooling: MaxPool, AveragePool, LpPool and their global forms (ONNX opset 1-22).

A pooling window slides exactly like a convolution kernel, so these ops reuse the window
geometry of ``conv.py`` (output size, ``auto_pad``, ``ceil_mode``, dilations). Each one pads
the input once (with ``-inf`` for max, zeros for sums) and then folds over the *kernel
taps*: a tap is one strided view of the padded input that holds, for every output
position, the element under that tap. A 3x3 max pool is therefore nine vectorised
``np.maximum`` calls, whatever the image size.

Average pooling divides by how many taps of each window count: the taps inside the input,
plus those inside the explicit ``pads`` when ``count_include_pad=1``. Taps that only exist
because ``ceil_mode`` let the last window run past the padding never count (as in ONNX
Runtime and PyTorch). Windows are separable, so the count is a product of 1-d counts.
"""

from __future__ import annotations

import numpy as np

from .base import REQUIRED, Op, bad_attribute, fail, out, register, require_inputs
from .conv import Window, check_window_attributes, pad_for_windows, tap_slices, window_geometry

# Attributes every windowed pooling op understands (each op's spec adds its own). Older
# opsets know fewer of them (ceil_mode came in MaxPool-10, AveragePool-10 and LpPool-18,
# dilations in MaxPool-10, AveragePool-19 and LpPool-18); tinyinfer accepts the newest set at
# every version: their defaults keep the old meaning.
_WINDOW_ATTRIBUTES = {
    "auto_pad": "NOTSET",
    "ceil_mode": 0,
    "dilations": None,
    "kernel_shape": REQUIRED,
    "pads": None,
    "strides": None,
}


class _WindowPool(Op):
    """Shared shape inference and geometry of MaxPool, AveragePool and LpPool."""

    def check(self, node):
        check_window_attributes(node)
        if node.attrs["ceil_mode"] not in (0, 1):
            raise bad_attribute(node, f"ceil_mode must be 0 or 1, got {node.attrs['ceil_mode']}")

    def geometry(self, node, spatial) -> Window:
        return window_geometry(node, spatial, node.attrs["kernel_shape"], ceil_mode=bool(node.attrs["ceil_mode"]))

    def infer(self, node, inputs):
        require_inputs(node, inputs, 1)
        x = inputs[0]
        if x.shape is None:
            return [out(node, 0, x.dtype, None)]
        if len(x.shape) < 3:
            raise fail(node, f"X must be (N, C, D1, ...) with at least one spatial axis, got shape {list(x.shape)}")
        window = self.geometry(node, x.shape[2:])
        shape = (*x.shape[:2], *window.output)
        return [out(node, 0, x.dtype, shape)]


# ---------------------------------------------------------------------------- MaxPool
@register
class MaxPool(_WindowPool):
    """``Y[n, c, o] = max over taps t of X[n, c, o*stride + t*dilation - pad]``, padding ignored.

    The optional second output ``Indices`` (int64) holds where each maximum came from, as
    an index into the flattened X: ``(n*C + c) * prod(D) + spatial index``, the spatial index
    row-major (``storage_order=0``) or column-major (``storage_order=1``). Ties go to the
    first tap in row-major order. Spec: MaxPool-22.
    """

    op_type = "MaxPool"
    since = 1
    attributes = {**_WINDOW_ATTRIBUTES, "storage_order": 0}

    def check(self, node):
        super().check(node)
        if node.attrs["storage_order"] not in (0, 1):
            raise bad_attribute(node, f"storage_order must be 0 or 1, got {node.attrs['storage_order']}")

    def infer(self, node, inputs):
        (y,) = super().infer(node, inputs)
        results = [y]
        if len(node.outputs) > 1:
            results.append(out(node, 1, np.dtype(np.int64), y.shape))
        return results

    def reference(self, node, x):
        window = self.geometry(node, x.shape[2:])
        padded = pad_for_windows(x, window, _lowest(x.dtype))
        if len(node.outputs) < 2 or not node.outputs[1]:
            y = None
            for tap in np.ndindex(*window.kernel):
                patch = padded[tap_slices(window, tap)]
                y = patch.copy() if y is None else np.maximum(y, patch, out=y)
            return y
        return _max_with_indices(x, padded, window, node.attrs["storage_order"])


def _max_with_indices(x: np.ndarray, padded: np.ndarray, window: Window, storage_order: int):
    """MaxPool that also tracks the flattened input index of each maximum."""
    n, channels, *spatial = x.shape
    rank = len(spatial)
    # What one step along each spatial axis adds to the flattened index.
    if storage_order == 0:
        weights = [int(np.prod(spatial[axis + 1:])) for axis in range(rank)]  # row-major
    else:
        weights = [int(np.prod(spatial[:axis])) for axis in range(rank)]  # column-major
    base = (np.arange(n * channels, dtype=np.int64) * int(np.prod(spatial))).reshape(n, channels, *(1,) * rank)
    best = indices = None
    for tap in np.ndindex(*window.kernel):
        patch = padded[tap_slices(window, tap)]
        where = base.copy()
        for axis in range(rank):
            positions = (np.arange(window.output[axis]) * window.strides[axis] - window.pads_begin[axis]
                         + tap[axis] * window.dilations[axis])
            shape = [1] * rank
            shape[axis] = -1
            where = where + (positions * weights[axis]).reshape(1, 1, *shape)
        if best is None:
            best, indices = patch.copy(), np.broadcast_to(where, patch.shape).copy()
            continue
        better = patch > best  # strict: the first tap wins a tie
        np.copyto(best, patch, where=better)
        np.copyto(indices, where, where=better)
    return best, indices


# ---------------------------------------------------------------------------- AveragePool
@register
class AveragePool(_WindowPool):
    """``Y[n, c, o] = mean of X over the window``, padding counted only if ``count_include_pad``.

    Spec: AveragePool-22.
    """

    op_type = "AveragePool"
    since = 1
    attributes = {**_WINDOW_ATTRIBUTES, "count_include_pad": 0}

    def reference(self, node, x):
        window = self.geometry(node, x.shape[2:])
        compute = _accumulate_dtype(x.dtype)
        padded = pad_for_windows(x.astype(compute, copy=False), window)
        total = _sum_over_taps(padded, window)
        counts = _window_counts(window, x.shape[2:], include_pads=bool(node.attrs["count_include_pad"]))
        return (total / counts.astype(compute)).astype(x.dtype, copy=False)


def _window_counts(window: Window, spatial, *, include_pads: bool) -> np.ndarray:
    """How many taps of each window count for the average, shape ``window.output``."""
    counts = np.ones((), dtype=np.int64)
    for axis, size in enumerate(spatial):
        begin, end = window.pads_begin[axis], window.pads_end[axis]
        low, high = (-begin, size + end) if include_pads else (0, size)
        positions = (np.arange(window.output[axis])[:, None] * window.strides[axis] - begin
                     + np.arange(window.kernel[axis])[None, :] * window.dilations[axis])
        per_axis = ((positions >= low) & (positions < high)).sum(axis=1)
        counts = np.multiply.outer(counts, per_axis)
    return counts


# ---------------------------------------------------------------------------- LpPool
@register
class LpPool(_WindowPool):
    """``Y[n, c, o] = (sum over the window of |X|**p) ** (1/p)``; padding adds nothing.

    Spec: LpPool-22 (``p`` an integer since LpPool-2).
    """

    op_type = "LpPool"
    since = 2
    attributes = {**_WINDOW_ATTRIBUTES, "p": 2}

    def check(self, node):
        super().check(node)
        if node.attrs["p"] < 1:
            raise bad_attribute(node, f"p must be >= 1, got {node.attrs['p']}")

    def reference(self, node, x):
        p = node.attrs["p"]
        window = self.geometry(node, x.shape[2:])
        compute = _accumulate_dtype(x.dtype)
        padded = pad_for_windows(np.abs(x.astype(compute, copy=False)) ** p, window)
        return (_sum_over_taps(padded, window) ** (1.0 / p)).astype(x.dtype, copy=False)


# ---------------------------------------------------------------------------- global pooling
class _GlobalPool(Op):
    """Reduce all spatial axes of ``(N, C, D1, ...)`` to size 1."""

    since = 1

    def infer(self, node, inputs):
        require_inputs(node, inputs, 1)
        x = inputs[0]
        if x.shape is None:
            return [out(node, 0, x.dtype, None)]
        if len(x.shape) < 3:
            raise fail(node, f"X must be (N, C, D1, ...) with at least one spatial axis, got shape {list(x.shape)}")
        return [out(node, 0, x.dtype, (*x.shape[:2], *(1 for _ in x.shape[2:])))]


@register
class GlobalAveragePool(_GlobalPool):
    """``Y[n, c] = mean of X[n, c, ...]``, kept as ``(N, C, 1, ..., 1)``. Spec: GlobalAveragePool-22."""

    op_type = "GlobalAveragePool"

    def reference(self, node, x):
        axes = tuple(range(2, x.ndim))
        return x.mean(axis=axes, keepdims=True, dtype=_accumulate_dtype(x.dtype)).astype(x.dtype, copy=False)


@register
class GlobalMaxPool(_GlobalPool):
    """``Y[n, c] = max of X[n, c, ...]``, kept as ``(N, C, 1, ..., 1)``. Spec: GlobalMaxPool-22."""

    op_type = "GlobalMaxPool"

    def reference(self, node, x):
        return x.max(axis=tuple(range(2, x.ndim)), keepdims=True)


# ---------------------------------------------------------------------------- private helpers
def _sum_over_taps(padded: np.ndarray, window: Window) -> np.ndarray:
    total = None
    for tap in np.ndindex(*window.kernel):
        patch = padded[tap_slices(window, tap)]
        total = patch.copy() if total is None else np.add(total, patch, out=total)
    return total


def _lowest(dtype: np.dtype):
    """The padding value max-pooling never picks: -inf, or the smallest integer."""
    if np.issubdtype(dtype, np.integer):
        return np.iinfo(dtype).min
    return -np.inf


def _accumulate_dtype(dtype: np.dtype) -> np.dtype:
    """Sums of half-precision values accumulate in float32 (float16 has an 11-bit mantissa)."""
    return np.dtype(np.float64) if dtype == np.float64 else np.dtype(np.float32)
