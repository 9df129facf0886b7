"""Chapter 01 answers: a batching policy, a sticky canary split, version policies, a histogram p99.

Same names and signatures as :mod:`exercises.ch01_inference_systems`, whose docstrings explain
each task; the comments here only say why a line is the way it is.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np


# ---------------------------------------------------------------------------- exercise 1
def form_batches(arrivals_us: list[int], sizes: list[int], preferred_batch_sizes: list[int],
                 max_batch_size: int, max_queue_delay_us: int) -> list[tuple[list[int], int]]:
    """Event-driven: between two arrivals only the deadline can fire, so check it before each."""
    if any(not 1 <= size <= max_batch_size for size in sizes):
        raise ValueError(f"every request size must be in [1, {max_batch_size}], got {list(sizes)}")
    if any(later < earlier for earlier, later in zip(arrivals_us, arrivals_us[1:])):
        raise ValueError("arrival times must never decrease")
    dispatch_at = set(preferred_batch_sizes) | {max_batch_size}
    batches, queue, queued = [], [], 0

    def dispatch(time_us: int):
        nonlocal queue, queued
        batches.append((queue, time_us))
        queue, queued = [], 0

    for index, (arrival, size) in enumerate(zip(arrivals_us, sizes)):
        # "<=": a request arriving exactly at the deadline is too late for that batch.
        if queue and arrivals_us[queue[0]] + max_queue_delay_us <= arrival:
            dispatch(arrivals_us[queue[0]] + max_queue_delay_us)
        if queued + size > max_batch_size:
            dispatch(arrival)
        queue.append(index)
        queued += size
        if queued in dispatch_at:
            dispatch(arrival)
    if queue:
        dispatch(arrivals_us[queue[0]] + max_queue_delay_us)
    return batches


# ---------------------------------------------------------------------------- exercise 2
def canary_route(request_id: str, stable: int, canary: int, weight: float) -> int:
    """SHA-256 is the same in every process, unlike ``hash()``; 8 bytes give 64 uniform bits."""
    digest = hashlib.sha256(request_id.encode("utf-8")).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    # u is fixed per id, so a larger weight keeps every id that was below the smaller one.
    return canary if u < weight else stable


# ---------------------------------------------------------------------------- exercise 3
def resolve_versions(policy: dict | None, available: list[int]) -> list[int]:
    """Dispatch on the one key of the policy; everything sorted numerically."""
    on_disk = sorted({int(version) for version in available})
    policy = policy or {"latest": {"num_versions": 1}}
    if len(policy) != 1:
        raise ValueError(f"a version policy has exactly one of latest/specific/all, got {sorted(policy)}")
    (kind, body), = policy.items()
    if kind == "all":
        return on_disk
    if kind == "latest":
        n = int(body.get("num_versions", 0))
        if n < 1:
            raise ValueError(f"latest needs num_versions >= 1, got {n}")
        return on_disk[-n:]
    if kind == "specific":
        wanted = sorted({int(version) for version in body.get("versions", [])})
        missing = sorted(set(wanted) - set(on_disk))
        if missing:
            raise ValueError(f"specific versions {missing} are not on disk (found {on_disk})")
        return wanted
    raise ValueError(f"unknown version policy {kind!r}: expected latest, specific or all")


# ---------------------------------------------------------------------------- exercise 4
def cumulative_buckets(latencies_s: np.ndarray, upper_bounds: list[float]) -> list[int]:
    """``searchsorted(..., 'right')`` counts the values <= each bound, all bounds at once."""
    ordered = np.sort(np.asarray(latencies_s, dtype=np.float64))
    return [int(n) for n in np.searchsorted(ordered, upper_bounds, side="right")]


def histogram_quantile(q: float, upper_bounds: list[float], counts: list[int]) -> float:
    """Find the bucket holding rank q·total, then interpolate linearly inside it."""
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    total = counts[-1]
    if total == 0:
        return math.nan
    rank = q * total
    b = next(i for i, count in enumerate(counts) if count >= rank)
    if b == len(counts) - 1:
        return float(upper_bounds[-2])
    lower, below = (0.0, 0) if b == 0 else (upper_bounds[b - 1], counts[b - 1])
    in_bucket = counts[b] - below
    if in_bucket == 0:
        return float(lower)  # only when rank is 0 and the first buckets are empty
    return float(lower + (upper_bounds[b] - lower) * (rank - below) / in_bucket)
