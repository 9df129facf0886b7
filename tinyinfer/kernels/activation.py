"""Activation kernels: Relu on float32 tensors, in parallel.

The reference ``np.maximum(x, 0)`` is one fast pass on one thread. Networks with
pre-activation blocks (DenseNet's BatchNormalization -> Relu -> Conv) run a Relu that
no convolution can absorb before every convolution; ``relu`` splits the pass over
Numba's threads in blocks of 64 KiB (small tensors run on the calling thread: waking the
others costs more than the pass). NaN stays NaN and -0.0 becomes 0.0, as in
``np.maximum(x, 0)``: the result is bit-identical to the reference.
"""

from __future__ import annotations

import numba
import numpy as np

from ..ir import Node
from .registry import named, output_buffer, register_kernel, writes_into

#: Elements per parallel block (64 KiB of float32), and the size below which one thread does it all.
BLOCK = 16384
PARALLEL_MIN = 4 * BLOCK


def _supports_relu(node: Node, inputs: list) -> bool:
    x = inputs[0]
    return x is not None and x.dtype == np.float32 and x.shape is not None and all(isinstance(d, int) for d in x.shape)


@register_kernel("Relu", "relu", supports=_supports_relu)
def build_relu(node: Node, inputs: list, outputs: list):
    """Parallel Relu (accelerates Relu): float32, any shape."""

    def relu(node, x, out=None):
        flat = np.ascontiguousarray(x).reshape(-1)
        target = output_buffer(out, x.shape)  # may be x's own memory: elementwise, in place is safe
        y = target.reshape(-1)
        if flat.size >= PARALLEL_MIN and numba.get_num_threads() > 1:
            _relu_parallel(flat, y)
        else:
            _relu_serial(flat, y)
        return target

    return writes_into(named(relu, "relu"))


@numba.njit(cache=True)
def _relu_serial(x, y):
    for i in range(x.size):
        v = x[i]
        y[i] = np.float32(0.0) if v <= 0 else v  # NaN stays NaN, -0.0 becomes 0.0: as np.maximum(x, 0)


@numba.njit(cache=True, parallel=True)
def _relu_parallel(x, y):
    blocks = (x.size + BLOCK - 1) // BLOCK
    for block in numba.prange(blocks):
        for i in range(block * BLOCK, min(x.size, (block + 1) * BLOCK)):
            v = x[i]
            y[i] = np.float32(0.0) if v <= 0 else v
