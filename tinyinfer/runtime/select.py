"""Choosing a kernel for every node: by timing them once ("pre-inference") or by cost hints.

MNN calls it pre-inference: when a session is resized to its real input shapes, every
candidate implementation of each convolution is run once and the fastest is kept. tinyinfer
does the same when it plans a graph for new input shapes: for each node it builds the
registered kernels that support the node (:func:`tinyinfer.kernels.candidates`) and the
reference op, runs each a few times on inputs of the real shapes (weights are the real
weights), checks that each kernel agrees with the reference, and binds the fastest.

The choice is cached, keyed by op, attributes, input types and shapes, the thread count and
the CPU, in a JSON file (``$TINYINFER_CACHE_DIR`` or ``~/.cache/tinyinfer``), so the next
session on the same machine starts warm. ``mode="cost"`` picks by the kernels' cost hints
without timing anything.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np

from .. import ops
from ..ir import Node, Value

MODES = ("time", "cost")


def cache_dir() -> Path:
    return Path(os.environ.get("TINYINFER_CACHE_DIR") or Path.home() / ".cache" / "tinyinfer")


def cpu_name() -> str:
    """The CPU model the choice was measured on (LLVM's name for it, as Numba compiles for it)."""
    try:
        import llvmlite.binding as llvm

        return llvm.get_host_cpu_name()
    except Exception:  # llvmlite comes with numba; without it, the platform's word will do
        return platform.processor() or platform.machine()


class KernelSelector:
    """``selector(node, values) -> fn``: the function the plan binds for a node."""

    def __init__(self, mode: str = "time", *, threads: int = 0, repeats: int = 3, cache: bool = True):
        if mode not in MODES:
            raise ValueError(f"kernel selection mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self.threads = threads
        self.repeats = repeats
        self.cache_path = cache_dir() / "kernel_choices.json" if cache else None
        self._choices = self._load()
        self.log: list[dict] = []  # one entry per decision, for reports

    # ------------------------------------------------------------------ the decision
    def __call__(self, node: Node, values: dict[str, Value]) -> Callable:
        from ..kernels import candidates

        reference = ops.get_op(node).reference
        inputs = [values.get(n) if n else None for n in node.inputs]
        outputs = [values.get(n) if n else None for n in node.outputs]
        kernels = candidates(node, inputs)
        if not kernels:
            return reference
        if self.mode == "cost":
            return self._by_cost(node, kernels, inputs, outputs, reference)
        key = self._key(node, inputs)
        chosen = self._choices.get(key)
        if chosen is not None:
            if chosen == "reference":
                return reference
            for kernel in kernels:
                if kernel.name == chosen:
                    return _bound(kernel, node, inputs, outputs)
        fn, name, timings = self._by_timing(node, kernels, inputs, outputs, reference)
        self._choices[key] = name
        self.log.append({"node": node.name, "op": node.op_type, "chosen": name, "ms": timings})
        self._save()
        return fn

    def _by_cost(self, node, kernels, inputs, outputs, reference):
        hinted = [(k.cost(node, inputs), k) for k in kernels if k.cost is not None]
        kernel = min(hinted, key=lambda pair: pair[0])[1] if hinted else kernels[0]
        self.log.append({"node": node.name, "op": node.op_type, "chosen": kernel.name, "ms": {}})
        return _bound(kernel, node, inputs, outputs)

    def _by_timing(self, node, kernels, inputs, outputs, reference):
        sample = _sample_inputs(inputs)
        if sample is None:  # shapes not known: cannot time, trust the first kernel
            return _bound(kernels[0], node, inputs, outputs), kernels[0].name, {}
        expected = _as_tuple(reference(node, *sample))
        timings = {"reference": _time(lambda: reference(node, *sample), self.repeats)}
        best_fn, best_name = reference, "reference"
        for kernel in kernels:
            fn = _bound(kernel, node, inputs, outputs)
            got = _as_tuple(fn(node, *sample))  # the first call also compiles, outside the timing
            if not _agrees(got, expected):
                warnings.warn(f"kernel {kernel.name} disagrees with the reference on {node}; not used", stacklevel=2)
                continue
            timings[kernel.name] = _time(lambda: fn(node, *sample), self.repeats)
            if timings[kernel.name] < timings[best_name]:
                best_fn, best_name = fn, kernel.name
        return best_fn, best_name, timings

    # ------------------------------------------------------------------ the cache
    def _key(self, node: Node, inputs: list[Value | None]) -> str:
        description = {
            "op": f"{node.domain}:{node.op_type}",
            "attrs": {k: _jsonable(v) for k, v in sorted(node.attrs.items())},
            "inputs": [None if v is None else [str(v.dtype), list(v.shape or ()), v.const is not None] for v in inputs],
            "threads": self.threads,
            "cpu": cpu_name(),
        }
        text = json.dumps(description, sort_keys=True, default=str)
        return hashlib.sha1(text.encode()).hexdigest()

    def _load(self) -> dict[str, str]:
        if self.cache_path is None or not self.cache_path.is_file():
            return {}
        try:
            data = json.loads(self.cache_path.read_text())
        except (OSError, ValueError):
            return {}  # a damaged cache is only a cold start
        return data if isinstance(data, dict) else {}

    def _save(self) -> None:
        if self.cache_path is None:
            return
        try:
            self.cache_path.parent.mkdir(parents=True, exist_ok=True)
            temporary = self.cache_path.with_suffix(f".{os.getpid()}.tmp")
            temporary.write_text(json.dumps(self._choices, indent=0, sort_keys=True))
            os.replace(temporary, self.cache_path)
        except OSError:
            pass  # a read-only home directory must not stop inference


def _bound(kernel, node, inputs, outputs) -> Callable:
    fn = kernel.build(node, inputs, outputs)
    if getattr(fn, "kernel_name", None) == kernel.name:
        return fn
    inner = fn  # a shared function or a method: tag a thin wrapper, not the function itself

    def bound(node, *arrays):
        return inner(node, *arrays)

    bound.kernel_name = kernel.name
    return bound


def _sample_inputs(inputs: list[Value | None]) -> list | None:
    rng = np.random.default_rng(0)
    sample = []
    for value in inputs:
        if value is None:
            sample.append(None)
        elif value.const is not None:
            sample.append(value.const)
        elif value.shape is None or not all(isinstance(d, int) for d in value.shape) or value.dtype is None:
            return None
        elif value.dtype.kind == "f":
            sample.append(rng.standard_normal(value.shape).astype(value.dtype))
        elif value.dtype.kind in "iu":
            sample.append(rng.integers(0, 4, value.shape).astype(value.dtype))
        elif value.dtype.kind == "b":
            sample.append(rng.random(value.shape) < 0.5)
        else:
            return None
    return sample


def _time(call: Callable, repeats: int) -> float:
    best = float("inf")
    for _ in range(max(repeats, 1)):
        start = time.perf_counter()
        call()
        best = min(best, (time.perf_counter() - start) * 1e3)
    return best


def _as_tuple(result) -> tuple:
    if isinstance(result, np.ndarray) or not isinstance(result, (list, tuple)):
        return (result,)
    return tuple(result)


def _agrees(got: tuple, expected: tuple) -> bool:
    """Kernels sum in other orders than NumPy: allow float32 rounding over long sums."""
    if len(got) < len(expected):
        return False
    for a, b in zip(got, expected):
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape or a.dtype != b.dtype:
            return False
        if b.dtype.kind == "f":
            scale = float(np.abs(b).max()) if b.size else 0.0
            if not np.allclose(a, b, rtol=1e-3, atol=1e-4 * max(scale, 1e-6)):
                return False
        elif not np.array_equal(a, b):
            return False
    return True


def _jsonable(value):
    if isinstance(value, np.ndarray):
        return [str(value.dtype), list(value.shape), hashlib.sha1(value.tobytes()).hexdigest()]
    return value
