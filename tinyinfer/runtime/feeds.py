"""Random inputs that fit a model's declared inputs (for ``tinyinfer run`` and ``bench``)."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from ..errors import FeedShapeError


def concrete_shape(shape: Sequence, dims: Mapping[str, int] | None = None, default: int = 1) -> tuple[int, ...]:
    """Replace symbolic dims by the sizes in ``dims`` (or ``default``)."""
    dims = dims or {}
    result = []
    for d in shape:
        if isinstance(d, int):
            result.append(d)
        elif isinstance(d, str) and d in dims:
            result.append(int(dims[d]))
        else:
            result.append(default)
    return tuple(result)


def random_feeds(inputs, *, seed: int = 0, dims: Mapping[str, int] | None = None, default_dim: int = 1) -> dict[str, np.ndarray]:
    """One random array per input (``NodeArg`` list from ``get_inputs()``).

    Floats are standard normal, integers uniform in [0, 10), booleans fair coins. Symbolic
    dimensions take their size from ``dims`` or ``default_dim``.
    """
    rng = np.random.default_rng(seed)
    feeds = {}
    for arg in inputs:
        dtype = np.dtype(arg.dtype) if arg.dtype is not None else np.dtype(np.float32)
        shape = concrete_shape(arg.shape or [], dims, default_dim)
        if any(s < 0 for s in shape):
            raise FeedShapeError(f"input '{arg.name}' has a negative dimension {shape}")
        if dtype.kind == "f" or dtype.kind == "V":
            array = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind in "iu":
            array = rng.integers(0, 10, size=shape).astype(dtype)
        elif dtype.kind == "b":
            array = rng.random(shape) < 0.5
        else:
            array = rng.standard_normal(shape).astype(dtype)
        feeds[arg.name] = array
    return feeds
