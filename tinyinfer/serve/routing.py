"""Which version of a model answers a request: version policies, canary routing, rollback.

A model repository may hold several versions of one model (``repo/<model>/1``, ``/2``, ...).
Two decisions sit between them and a request that does not name a version:

1. **Which versions are served at all** — Triton's ``version_policy`` in ``config.pbtxt``:
   ``latest { num_versions: n }`` (the n highest), ``specific { versions: [...] }`` or
   ``all {}``; with no policy, Triton serves the latest one. :func:`resolve_versions`.
2. **Which served version answers this request** — :class:`CanaryRouter`. Normally the
   *stable* version. While a *canary* is set, a fraction ``weight`` of the traffic goes to it
   (a canary release: expose a new version to a little real traffic before all of it). The
   split is sticky per request id: the id is hashed to a number in [0, 1), and the request
   goes to the canary when that number is below the weight, so a retry of the same request
   lands on the same version. Requests without an id draw the number from a seeded RNG.

The router watches what it routed. The server reports each finished request with
:meth:`CanaryRouter.record`; per version, a :class:`LatencyWindow` keeps the outcomes of the
last few seconds. When the canary's error rate or its p99 latency is worse than the stable
version's by a configured factor (:class:`RollbackPolicy`), the router rolls the canary back
on its own: every later request goes to the stable version again. This is the guard rail of
Google's SRE book on canarying: judge the canary against the stable version *under the same
traffic, at the same time*, not against a fixed threshold.

Latency quantiles come in two forms, both here so the router and the metrics agree:
:func:`quantile` over raw samples (what the window holds) and :func:`histogram_quantile`
over Prometheus-style cumulative buckets (what a ``/metrics`` scrape holds).
"""

from __future__ import annotations

import bisect
import hashlib
import math
import random
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from tinyinfer.errors import CanaryError, RepositoryError


# ------------------------------------------------------------------------ version policy
def resolve_versions(policy, available: Sequence[int]) -> list[int]:
    """The versions to serve, ascending, under Triton's ``version_policy``.

    ``policy`` is a ``model_config_pb2.ModelVersionPolicy`` (tritonclient's protobuf) or None;
    ``available`` the version numbers found on disk. A policy with no choice set, like None,
    means ``latest { num_versions: 1 }``. Versions named by ``specific`` that are not on disk
    raise :class:`~tinyinfer.errors.RepositoryError` naming them, so a typo in config.pbtxt
    is a load error rather than a model that silently serves nothing.
    """
    on_disk = sorted(set(int(v) for v in available))
    choice = policy.WhichOneof("policy_choice") if policy is not None else None
    if choice is None:
        return on_disk[-1:]
    if choice == "all":
        return on_disk
    if choice == "latest":
        count = policy.latest.num_versions
        if count < 1:
            raise RepositoryError(f"version_policy latest: num_versions must be >= 1, got {count}")
        return on_disk[-count:]
    wanted = sorted(set(int(v) for v in policy.specific.versions))
    missing = [v for v in wanted if v not in on_disk]
    if missing:
        raise RepositoryError(
            f"version_policy specific names versions {missing} that are not in the repository "
            f"(versions on disk: {on_disk})")
    return wanted


# ------------------------------------------------------------------------ latency statistics
def quantile(samples: Sequence[float], q: float) -> float:
    """The q-quantile of ``samples``, interpolating linearly between order statistics.

    This is NumPy's default method (Hyndman & Fan's type 7). NaN when there are no samples.
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"a quantile q must be in [0, 1], got {q}")
    if len(samples) == 0:
        return math.nan
    return float(np.quantile(np.asarray(samples, dtype=np.float64), q))


def histogram_quantile(q: float, upper_bounds: Sequence[float], cumulative_counts: Sequence[float]) -> float:
    """The q-quantile estimated from cumulative histogram buckets, as Prometheus computes it.

    Bucket i counts the observations <= ``upper_bounds[i]`` (the ``le`` label); the last bound
    is +Inf. The quantile's rank ``q · total`` falls in some bucket; inside it the observations
    are assumed spread evenly, so the answer interpolates linearly between the bucket's lower
    bound (the previous upper bound, or 0 for the first bucket) and its upper bound. A rank in
    the +Inf bucket returns the highest finite bound: the histogram knows nothing beyond it.
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"a quantile q must be in [0, 1], got {q}")
    if len(upper_bounds) < 2 or upper_bounds[-1] != math.inf or len(cumulative_counts) != len(upper_bounds):
        raise ValueError("histogram_quantile needs >= 2 buckets, the last with bound +Inf, one count per bucket")
    total = cumulative_counts[-1]
    if total == 0:
        return math.nan
    rank = q * total
    bucket = bisect.bisect_left(cumulative_counts, rank, hi=len(cumulative_counts) - 1)
    if bucket == len(upper_bounds) - 1:
        return float(upper_bounds[-2])
    if bucket == 0 and upper_bounds[0] <= 0:
        return float(upper_bounds[0])  # no lower bound to interpolate from
    below = cumulative_counts[bucket - 1] if bucket > 0 else 0
    lower = upper_bounds[bucket - 1] if bucket > 0 else 0.0
    inside = cumulative_counts[bucket] - below
    fraction = (rank - below) / inside if inside else 0.0
    return float(lower + (upper_bounds[bucket] - lower) * fraction)


class LatencyWindow:
    """The outcomes (ok or not, latency) of the last ``length_s`` seconds, at most ``max_samples``.

    A sliding window rather than a running total, because a rollback must react to what the
    canary does *now*: an hour of good history must not hide a minute of failures. The sample
    cap bounds memory and the cost of a quantile under heavy traffic (the newest samples stay).
    Thread-safe; ``clock`` is injectable so tests can move time by hand.
    """

    def __init__(self, length_s: float = 60.0, max_samples: int = 2000,
                 clock: Callable[[], float] = time.monotonic):
        if length_s <= 0 or max_samples < 1:
            raise ValueError(f"a window needs length_s > 0 and max_samples >= 1, got {length_s}, {max_samples}")
        self.length_s, self.max_samples = length_s, max_samples
        self._clock = clock
        self._samples: deque[tuple[float, bool, float]] = deque()
        self._errors = 0  # failed samples in the deque, kept as they come and go
        self._lock = threading.Lock()

    def add(self, ok: bool, latency_s: float) -> None:
        with self._lock:
            if len(self._samples) == self.max_samples:
                self._pop_oldest()
            self._samples.append((self._clock(), bool(ok), float(latency_s)))
            self._errors += not ok

    def counts(self) -> tuple[int, int]:
        """``(requests, errors)`` inside the window now."""
        with self._lock:
            self._expire()
            return len(self._samples), self._errors

    def latencies(self) -> np.ndarray:
        """The latencies (seconds) of every request inside the window now, oldest first."""
        with self._lock:
            self._expire()
            return np.fromiter((latency for _, _, latency in self._samples), np.float64, len(self._samples))

    def error_rate(self) -> float:
        requests, errors = self.counts()
        return errors / requests if requests else math.nan

    def quantile(self, q: float) -> float:
        return quantile(self.latencies(), q)

    def p99(self) -> float:
        return self.quantile(0.99)

    def _expire(self) -> None:
        horizon = self._clock() - self.length_s
        while self._samples and self._samples[0][0] < horizon:
            self._pop_oldest()

    def _pop_oldest(self) -> None:
        _, ok, _ = self._samples.popleft()
        self._errors -= not ok


# ------------------------------------------------------------------------ canary router
@dataclass(frozen=True)
class RollbackPolicy:
    """When the router rolls a canary back by itself.

    Over the last ``window_s`` seconds, once both versions have at least ``min_requests``
    recorded outcomes, the canary is rolled back if

    * its error rate > ``error_rate_factor`` × max(stable's error rate, ``error_rate_floor``),
      where the floor keeps one unlucky error from condemning a canary next to a stable
      version that happened to have none; or
    * its p99 latency > ``p99_factor`` × the stable version's p99.

    ``min_requests`` defaults to 100 because the p99 of fewer samples is little more than their
    maximum: one slow request would decide. The verdict is taken on every ``check_every``-th
    canary outcome, so its cost (a quantile over up to ``max_samples`` latencies per version)
    is shared by that many requests.
    """

    window_s: float = 60.0
    min_requests: int = 100
    error_rate_factor: float = 2.0
    error_rate_floor: float = 0.01
    p99_factor: float = 2.0
    max_samples: int = 2000
    check_every: int = 10

    def __post_init__(self):
        positive = {"window_s": self.window_s, "min_requests": self.min_requests, "max_samples": self.max_samples,
                    "check_every": self.check_every, "error_rate_factor": self.error_rate_factor,
                    "p99_factor": self.p99_factor}
        wrong = {name: value for name, value in positive.items() if not value > 0}
        if wrong or not 0 <= self.error_rate_floor <= 1:
            raise CanaryError(f"a rollback policy needs {', '.join(positive)} > 0 and error_rate_floor in [0, 1]; "
                              f"got {wrong or {'error_rate_floor': self.error_rate_floor}}")


def sticky_fraction(request_id: str, salt: str = "") -> float:
    """A number in [0, 1) fixed by ``request_id`` (and ``salt``), the same in every process.

    BLAKE2b rather than Python's ``hash``, which is salted per process: a retry that reaches a
    restarted server, or another replica, must land on the same version.
    """
    digest = hashlib.blake2b(f"{salt}/{request_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


class CanaryRouter:
    """Routes requests between a stable version and an optional canary; rolls back bad canaries.

    ``route(request_id)`` picks a version; ``record(version, ok, latency_s)`` reports how the
    request went. ``set_canary``, ``promote`` and ``rollback`` change the split; ``state()``
    describes it. ``on_rollback(canary, reason)``, if given, is called after every rollback,
    manual or automatic (to log it, or count it in the metrics). All methods are safe to call
    from many threads at once.
    """

    def __init__(self, stable: int, policy: RollbackPolicy | None = None, seed: int = 0,
                 clock: Callable[[], float] = time.monotonic,
                 on_rollback: Callable[[int, str], None] | None = None):
        self.policy = policy or RollbackPolicy()
        self._stable = int(stable)
        self._canary: int | None = None
        self._weight = 0.0
        self._last_rollback: str | None = None
        self._canary_outcomes = 0
        self._rng = random.Random(seed)
        self._clock = clock
        self._on_rollback = on_rollback
        self._windows: dict[int, LatencyWindow] = {}
        self._counts: dict[int, dict[str, int]] = {}
        self._lock = threading.Lock()

    # -------------------------------------------------------------------- routing
    def route(self, request_id: str | None = None) -> int:
        """The version that serves this request: sticky per id while a canary is set."""
        with self._lock:
            version = self._choose(request_id)
            self._count(version)["routed"] += 1
            return version

    def _choose(self, request_id: str | None) -> int:
        if self._canary is None:
            return self._stable
        # Salted with the canary, so each rollout exposes a different slice of the ids.
        draw = self._rng.random() if request_id is None else sticky_fraction(request_id, f"canary-{self._canary}")
        return self._canary if draw < self._weight else self._stable

    # -------------------------------------------------------------------- transitions
    def set_canary(self, version: int, weight: float, stable: int | None = None) -> None:
        """Send a fraction ``weight`` (0 < weight < 1) of the traffic to ``version``.

        ``stable``, if given, becomes the stable version first: the way to put a version that
        loading made the latest (and so the stable one) back under test against an older one.
        """
        version = int(version)
        if not 0.0 < weight < 1.0:
            raise CanaryError(f"a canary weight must be strictly between 0 and 1, got {weight}")
        with self._lock:
            stable = self._stable if stable is None else int(stable)
            if version == stable:
                raise CanaryError(f"version {version} is already the stable version; a canary must differ "
                                  "(name another stable version to test it against)")
            if version != self._canary:
                self._windows.pop(version, None)  # judge the new canary on its own traffic only
                self._canary_outcomes = 0
            self._stable, self._canary, self._weight = stable, version, float(weight)

    def promote(self) -> int:
        """The canary becomes the stable version and takes all the traffic; returns it."""
        with self._lock:
            if self._canary is None:
                raise CanaryError(f"no canary to promote (stable version {self._stable} serves everything)")
            self._stable, self._canary, self._weight = self._canary, None, 0.0
            return self._stable

    def rollback(self, reason: str = "manual rollback") -> int:
        """Drop the canary: the stable version takes all the traffic again; returns the canary."""
        with self._lock:
            canary = self._drop_canary(reason)
        self._notify(canary, reason)
        return canary

    def set_stable(self, version: int) -> None:
        """Make ``version`` the stable version (a new latest version loaded); keeps any other canary."""
        with self._lock:
            self._stable = int(version)
            if self._canary == self._stable:
                self._canary, self._weight = None, 0.0

    def _drop_canary(self, reason: str) -> int:
        if self._canary is None:
            raise CanaryError(f"no canary to roll back (stable version {self._stable} serves everything)")
        canary, self._canary, self._weight = self._canary, None, 0.0
        self._last_rollback = reason
        return canary

    def _notify(self, canary: int, reason: str) -> None:
        if self._on_rollback is not None:
            self._on_rollback(canary, reason)  # outside the lock: the callback may call us back

    # -------------------------------------------------------------------- outcomes
    def record(self, version: int, ok: bool, latency_s: float) -> None:
        """Report a finished request; may roll the canary back (see :class:`RollbackPolicy`)."""
        version = int(version)
        with self._lock:
            self._count(version)["ok" if ok else "failed"] += 1
            self._window(version).add(ok, latency_s)
            reason = None
            if version == self._canary:
                self._canary_outcomes += 1
                if self._canary_outcomes % self.policy.check_every == 0:
                    reason = self._verdict()
            canary = self._drop_canary(reason) if reason else None
        if reason:
            self._notify(canary, reason)

    def _verdict(self) -> str | None:
        """Why the canary must go, or None while it holds up (or there is too little evidence)."""
        policy = self.policy
        canary, stable = self._window(self._canary), self._window(self._stable)
        (canary_n, canary_errors), (stable_n, stable_errors) = canary.counts(), stable.counts()
        if min(canary_n, stable_n) < policy.min_requests:
            return None
        where = f"over the last {policy.window_s:g} s ({canary_n} canary, {stable_n} stable requests)"
        canary_rate, stable_rate = canary_errors / canary_n, stable_errors / stable_n
        if canary_rate > policy.error_rate_factor * max(stable_rate, policy.error_rate_floor):
            return (f"canary version {self._canary} error rate {canary_rate:.3f} > {policy.error_rate_factor:g} x "
                    f"stable version {self._stable}'s {stable_rate:.3f} (floor {policy.error_rate_floor:g}) {where}")
        canary_p99, stable_p99 = canary.p99(), stable.p99()
        if canary_p99 > policy.p99_factor * stable_p99:
            return (f"canary version {self._canary} p99 latency {canary_p99 * 1e3:.2f} ms > {policy.p99_factor:g} x "
                    f"stable version {self._stable}'s {stable_p99 * 1e3:.2f} ms {where}")
        return None

    def _window(self, version: int) -> LatencyWindow:
        if version not in self._windows:
            self._windows[version] = LatencyWindow(self.policy.window_s, self.policy.max_samples, self._clock)
        return self._windows[version]

    def _count(self, version: int) -> dict[str, int]:
        return self._counts.setdefault(version, {"routed": 0, "ok": 0, "failed": 0})

    # -------------------------------------------------------------------- introspection
    def state(self) -> dict:
        """Stable and canary versions, weight, counts per version, last rollback reason, window sizes.

        Cheap enough to call per request (no quantile); :meth:`p99` gives a version's latency.
        """
        with self._lock:
            window = {}
            for version, outcomes in self._windows.items():
                requests, errors = outcomes.counts()
                window[version] = {"requests": requests, "errors": errors}
            return {
                "stable": self._stable,
                "canary": self._canary,
                "weight": self._weight,
                "counts": {version: dict(counts) for version, counts in self._counts.items()},
                "window": window,
                "last_rollback": self._last_rollback,
            }

    def p99(self, version: int) -> float:
        """The p99 latency (seconds) of ``version`` over the window; NaN without requests."""
        with self._lock:
            window = self._windows.get(int(version))
        return window.p99() if window is not None else math.nan
