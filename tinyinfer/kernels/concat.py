"""Concat on Numba's threads: float32 tensors joined along any axis.

The reference, ``np.concatenate``, copies on one thread. DenseNet joins every layer's new
channels to all the earlier ones (58 Concat nodes in DenseNet-121, 40 MB copied per image),
so the copy is worth sharing out. ``concat`` views every input, C-ordered, as ``outer x
inner`` (``outer`` = the product of the dimensions before ``axis``, ``inner`` = the rest of
that input), and copies each input's rows into their place in the output, cut into blocks
of 64 KiB that Numba's threads take in turn; inputs too small to be worth waking the
threads for are copied on the calling thread. The result is the same bytes as the
reference's.
"""

from __future__ import annotations

import numba
import numpy as np

from ..ir import Node
from .registry import named, output_buffer, register_kernel, writes_into

#: Elements per parallel block (64 KiB of float32); smaller inputs are copied on one thread.
BLOCK = 16384


def _supports_concat(node: Node, inputs: list) -> bool:
    if not inputs or any(v is None or v.dtype != np.float32 or v.shape is None for v in inputs):
        return False
    if not all(isinstance(d, int) for v in inputs for d in v.shape):
        return False
    rank = len(inputs[0].shape)
    return rank >= 1 and all(len(v.shape) == rank for v in inputs)


@register_kernel("Concat", "concat", supports=_supports_concat)
def build_concat(node: Node, inputs: list, outputs: list):
    """Parallel Concat (accelerates Concat): float32, any axis, inputs of equal rank."""
    rank = len(inputs[0].shape)
    axis = node.attrs["axis"] % rank
    outer = int(np.prod(inputs[0].shape[:axis], dtype=np.int64))
    inners = [int(np.prod(v.shape[axis:], dtype=np.int64)) for v in inputs]
    offsets = np.cumsum([0] + inners)
    width = int(offsets[-1])
    shape = list(inputs[0].shape)
    shape[axis] = sum(v.shape[axis] for v in inputs)

    def concat(node, *arrays, out=None):
        y = output_buffer(out, shape)
        if any(np.may_share_memory(y, array) for array in arrays):
            y = np.empty(shape, np.float32)  # the planned memory overlaps an input: copy elsewhere
        flat = y.reshape(outer, width)
        threads = numba.get_num_threads() > 1
        for array, inner, offset in zip(arrays, inners, offsets):
            source = np.ascontiguousarray(array).reshape(outer, inner)
            if threads and outer * inner >= 4 * BLOCK:
                _copy_parallel(source, flat, offset)
            else:
                flat[:, offset:offset + inner] = source
        return y

    return writes_into(named(concat, "concat"))


@numba.njit(cache=True, parallel=True)
def _copy_parallel(source, target, offset):
    """target[:, offset:offset + inner] = source (outer x inner), in blocks of BLOCK elements."""
    outer, inner = source.shape
    per_row = (inner + BLOCK - 1) // BLOCK
    for task in numba.prange(outer * per_row):
        row, block = task // per_row, task % per_row
        start = block * BLOCK
        stop = min(inner, start + BLOCK)
        src = source[row]
        dst = target[row]
        for i in range(start, stop):
            dst[offset + i] = src[i]
