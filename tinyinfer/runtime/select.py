"""Choosing a kernel for every node: by timing them once ("pre-inference") or by cost hints.

MNN calls it pre-inference: when a session is resized to its real input shapes, every
candidate implementation of each convolution is run once and the fastest is kept. tinyinfer
does the same when it plans a graph for new input shapes: for each node it builds the
registered kernels that support the node (:func:`tinyinfer.kernels.candidates`) and the
reference op, runs each a few times on inputs of the real shapes (weights are the real
weights), checks that each kernel agrees with the reference, and binds the fastest.

Timing on a machine shared with other work is noisy, and a choice is kept, so the candidates
are timed in interleaved rounds (best of :attr:`KernelSelector.repeats`), the reference has to
beat the fastest kernel by :data:`REFERENCE_MARGIN`, and a winner that takes under
:data:`ONE_THREAD_BELOW_MS` is also timed on the calling thread alone: a small op can be
faster without waking Numba's other threads (and is never held up by a preempted one). In
a numba session the reference ops run with BLAS on one thread
(:func:`tinyinfer.kernels.threads.single_threaded_blas`).

The choice is cached, keyed by op, attributes, input types and shapes, the candidate
kernels, the thread count and the CPU, in a JSON file (``$TINYINFER_CACHE_DIR`` or
``~/.cache/tinyinfer``), so the next session on the same machine starts warm.
``mode="cost"`` picks by the kernels' cost hints without timing anything.
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
#: The reference is chosen over the fastest kernel only when that kernel is slower by more than this factor.
REFERENCE_MARGIN = 1.2
#: Kernels faster than this (ms) on all threads are also timed on the calling thread alone;
#: a choice to run on one thread is cached as the kernel's name with this suffix.
ONE_THREAD_BELOW_MS = 1.0
ONE_THREAD = "@1"
#: Part of every cache key: raised when kernels change enough that old choices are stale.
CHOICE_VERSION = 6


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

    def __init__(self, mode: str = "time", *, threads: int = 0, repeats: int = 5, cache: bool = True):
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
        from ..kernels.threads import single_threaded_blas

        # The reference runs between Numba's kernels: BLAS threads would wait on cores
        # Numba's threads are using (see tinyinfer.kernels.threads).
        reference = single_threaded_blas(ops.get_op(node).reference)
        inputs = [values.get(n) if n else None for n in node.inputs]
        outputs = [values.get(n) if n else None for n in node.outputs]
        kernels = candidates(node, inputs)
        if not kernels:
            return reference
        if self.mode == "cost":
            return self._by_cost(node, kernels, inputs, outputs, reference)
        key = self._key(node, inputs, [k.name for k in kernels])
        chosen = self._choices.get(key)
        if chosen is not None:
            if chosen == "reference":
                return reference
            name, one_thread = (chosen[:-len(ONE_THREAD)], True) if chosen.endswith(ONE_THREAD) else (chosen, False)
            for kernel in kernels:
                if kernel.name == name:
                    fn = _bound(kernel, node, inputs, outputs)
                    return _on_one_thread(fn) if one_thread else fn
        fn, name, timings = self._by_timing(node, kernels, inputs, outputs, reference)
        one_thread = name.endswith(ONE_THREAD)
        self._choices[key] = name
        name = name[:-len(ONE_THREAD)] if one_thread else name
        self.log.append({"node": node.name, "op": node.op_type, "chosen": name, "ms": timings,
                         "threads": 1 if one_thread else self.threads})
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
        contenders = {"reference": reference}
        for kernel in kernels:
            fn = _bound(kernel, node, inputs, outputs)
            got = _as_tuple(fn(node, *sample))  # the first call also compiles, outside the timing
            if not _agrees(got, expected):
                warnings.warn(f"kernel {kernel.name} disagrees with the reference on {node}; not used", stacklevel=2)
                continue
            contenders[kernel.name] = fn
        timings = _time_interleaved(node, contenders, sample, self.repeats)
        best_name = min(timings, key=timings.get)
        kernels_only = {name: ms for name, ms in timings.items() if name != "reference"}
        if best_name == "reference" and kernels_only:
            # The reference must win clearly, and twice: on a machine shared with other work a
            # kernel's calls can all be disturbed (a parallel one waits for a preempted thread,
            # and two slow rounds put it out of the running), and a choice is cached for good.
            fastest = min(kernels_only, key=kernels_only.get)
            duel = {fastest: contenders[fastest], "reference": reference}
            rematch = _time_interleaved(node, duel, sample, self.repeats)
            timings = {name: min(ms, rematch.get(name, ms)) for name, ms in timings.items()}
            if timings[fastest] <= REFERENCE_MARGIN * timings["reference"]:
                best_name = fastest
        if best_name != "reference" and timings[best_name] < ONE_THREAD_BELOW_MS and numba_threads() > 1:
            # A small op may be faster on the calling thread alone than with the others woken
            # (and is not held up by a preempted one): time that too, against the winner.
            alone = best_name + ONE_THREAD
            duel = {best_name: contenders[best_name], alone: _on_one_thread(contenders[best_name])}
            rematch = _time_interleaved(node, duel, sample, self.repeats)
            timings[alone] = rematch[alone]
            timings[best_name] = min(timings[best_name], rematch[best_name])
            if timings[alone] < timings[best_name]:
                return duel[alone], alone, timings
        return contenders[best_name], best_name, timings

    # ------------------------------------------------------------------ the cache
    def _key(self, node: Node, inputs: list[Value | None], kernels: list[str] = ()) -> str:
        description = {
            "version": CHOICE_VERSION,
            "kernels": list(kernels),  # a new kernel for the node makes it a new decision
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


def numba_threads() -> int:
    import numba

    return numba.get_num_threads()


def _on_one_thread(fn: Callable) -> Callable:
    """``fn`` run with Numba limited to the calling thread (its parallel loops run inline)."""
    import numba

    def alone(node, *arrays, **options):
        previous = numba.get_num_threads()
        numba.set_num_threads(1)
        try:
            return fn(node, *arrays, **options)
        finally:
            numba.set_num_threads(previous)

    alone.kernel_name = getattr(fn, "kernel_name", "reference")
    alone.writes_out = getattr(fn, "writes_out", False)  # out= (the runtime's arena) passes through
    return alone


def _bound(kernel, node, inputs, outputs) -> Callable:
    fn = kernel.build(node, inputs, outputs)
    if getattr(fn, "kernel_name", None) == kernel.name:
        return fn
    inner = fn  # a shared function or a method: tag a thin wrapper, not the function itself

    def bound(node, *arrays, **options):
        return inner(node, *arrays, **options)

    bound.kernel_name = kernel.name
    bound.writes_out = getattr(inner, "writes_out", False)
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


def _time_interleaved(node: Node, contenders: dict[str, Callable], sample: list, repeats: int) -> dict[str, float]:
    """Best time (ms) of each contender over ``repeats`` rounds, one call of each per round.

    Interleaving spreads a busy moment of the machine (other processes on a shared machine
    preempt a thread for milliseconds) over all contenders instead of one; the minimum is
    the least disturbed call. A contender whose best of the first two rounds is over 4x the
    best so far is out of the running after them (it cannot win; no need to time it further;
    one round alone could be one unlucky call).
    """
    timings = {name: float("inf") for name in contenders}
    running = list(contenders)
    for round_ in range(max(repeats, 1)):
        for name in running:
            timings[name] = min(timings[name], _time(lambda: contenders[name](node, *sample), 1))
        if round_ == 1 and len(running) > 1:
            best = min(timings.values())
            running = [name for name in running if timings[name] <= 4 * best]
    return timings


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
