"""Chapter 01 exercises: the decisions a model server makes around the engine.

1. :func:`form_batches` — a dynamic batcher's policy: which requests ride together, and when.
2. :func:`canary_route` — a sticky, weighted split of traffic between two model versions.
3. :func:`resolve_versions` — Triton's ``version_policy``: which versions on disk are served.
4. :func:`cumulative_buckets` and :func:`histogram_quantile` — a p99 from a latency histogram,
   the way Prometheus computes it from a ``/metrics`` scrape.

Replace each ``raise NotImplementedError`` with your code (the standard library and NumPy are
all you need), then grade it:

    pytest tests/exercises/test_ch01_inference_systems.py --impl=exercises -m ex1   # or ex2, ex3, ex4
    pytest tests/exercises --impl=exercises -m ch01_ex1                             # the same, by chapter mark

The graded tests compare your answers with a tick-by-tick simulation of the batcher written
in the test file, with the binomial distribution of a fair split, with Triton's own
config.pbtxt text parsed by protobuf and with tinyinfer's server, and with answers worked out
by hand from Prometheus' documented interpolation. They never look at the solution file.
"""

from __future__ import annotations

import numpy as np


# ---------------------------------------------------------------------------- exercise 1
def form_batches(arrivals_us: list[int], sizes: list[int], preferred_batch_sizes: list[int],
                 max_batch_size: int, max_queue_delay_us: int) -> list[tuple[list[int], int]]:
    """The batches a dynamic batcher forms: ``[(request indices, dispatch time in µs), ...]``.

    Request ``i`` arrives at ``arrivals_us[i]`` (integers, never decreasing; equal times arrive
    in index order) and carries ``sizes[i]`` samples (its batch dimension, ``1 <= sizes[i] <=
    max_batch_size``). The batcher keeps one queue, in arrival order, and dispatches *all* of it
    as one batch at the first moment one of these holds (execution never blocks the batcher):

    1. **Deadline** — the oldest queued request has waited ``max_queue_delay_us``: dispatch at
       ``arrival of the oldest + max_queue_delay_us``. A request arriving exactly then is too
       late for that batch.
    2. **Full** — an arriving request would push the queued samples past ``max_batch_size``:
       dispatch the queue at that arrival time, just before the request joins (it starts the
       next queue).
    3. **Preferred** — right after a request joins, the queued samples add up to one of the
       ``preferred_batch_sizes``, or to ``max_batch_size``: dispatch at that arrival time.

    When the arrivals run out, what is left in the queue waits for its deadline. Return the
    batches in dispatch order, each with its indices ascending. Raise ``ValueError`` when a
    size is out of range or the arrivals go back in time.

    These are the rules of Triton's ``dynamic_batching { preferred_batch_size,
    max_queue_delay_microseconds }`` at their core (the real batcher also, at the deadline,
    still tries to cut a preferred size out of the queue).

    Example: arrivals (0, 100, 150, 900) µs, sizes (1, 1, 2, 1), preferred (4,), max batch 8,
    delay 500 µs. Requests 0, 1, 2 add up to 4 samples at 150 µs: a preferred size, so they
    leave at once. Request 3 waits alone until 900 + 500 µs::

        [([0, 1, 2], 150), ([3], 1400)]

    Hint: walk the arrivals in order; before taking request ``i``, check whether the queue's
    deadline comes at or before ``arrivals_us[i]``.
    """
    raise NotImplementedError("exercise: form_batches (chapter 01, exercise 1)")


# ---------------------------------------------------------------------------- exercise 2
def canary_route(request_id: str, stable: int, canary: int, weight: float) -> int:
    """The version (``stable`` or ``canary``) that serves ``request_id`` when ``weight`` goes to the canary.

    A canary release sends a small share of real traffic (``0 <= weight <= 1``) to a new
    version. The split must be **sticky**: the same id always gets the same answer, in this
    process, after a restart and on any other replica — so a client's retry meets the version
    it met before. Hence no random numbers and no Python ``hash()``, which is salted per
    process (``PYTHONHASHSEED``). Instead hash the id with a cryptographic hash from
    ``hashlib`` (e.g. SHA-256 of ``request_id.encode()``), turn the first 8 bytes into an
    integer and divide by 2**64: a number ``u`` in [0, 1) that is, over many ids, uniform.
    Route to the canary when ``u < weight``.

    Consequences the grader checks: over 10 000 ids the canary's share is close to
    ``weight``; raising the weight only moves ids from stable to canary, never back; weight 0
    sends everything to stable and weight 1 everything to the canary.

    Example: with weight 0.5 about half of ``"user-0" ... "user-9999"`` go to the canary, and
    asking again for ``"user-42"`` always returns the version it returned the first time.
    """
    raise NotImplementedError("exercise: canary_route (chapter 01, exercise 2)")


# ---------------------------------------------------------------------------- exercise 3
def resolve_versions(policy: dict | None, available: list[int]) -> list[int]:
    """The versions a server loads, ascending, under Triton's ``version_policy``.

    ``available`` lists the version directories found on disk (``repo/<model>/<version>/``),
    in any order. ``policy`` is the policy in protobuf's JSON form (what Triton's ``/config``
    endpoint returns), one of::

        {"latest": {"num_versions": n}}     the n highest versions (all of them if fewer)
        {"specific": {"versions": [...]}}   exactly these
        {"all": {}}                         every version on disk

    ``None`` or ``{}`` means ``{"latest": {"num_versions": 1}}``. Protobuf's JSON writes 64-bit
    integers as strings, so ``"versions": ["1", "3"]`` is valid: convert with ``int()``.
    Versions are numbers: 10 is later than 9.

    Raise ``ValueError`` when ``specific`` names a version that is not on disk (say which),
    when ``num_versions`` is below 1, or when the policy has more than one key.

    Example: available (1, 2, 3, 10), ``{"latest": {"num_versions": 2}}`` gives [3, 10];
    ``{"specific": {"versions": ["3", "1"]}}`` gives [1, 3]; ``None`` gives [10].
    """
    raise NotImplementedError("exercise: resolve_versions (chapter 01, exercise 3)")


# ---------------------------------------------------------------------------- exercise 4
def cumulative_buckets(latencies_s: np.ndarray, upper_bounds: list[float]) -> list[int]:
    """Prometheus' cumulative histogram of ``latencies_s``: one count per upper bound.

    ``upper_bounds`` is ascending and ends with ``float("inf")``. Count ``i`` is the number of
    latencies ``<= upper_bounds[i]`` (Prometheus' ``le``, "less or equal"), so the counts never
    decrease and the last one is the number of observations.

    Example: latencies (0.002, 0.004, 0.004, 0.03) and bounds (0.0025, 0.005, 0.01, inf) give
    [1, 3, 3, 4].
    """
    raise NotImplementedError("exercise: cumulative_buckets (chapter 01, exercise 4)")


def histogram_quantile(q: float, upper_bounds: list[float], counts: list[int]) -> float:
    """The ``q``-quantile estimated from cumulative buckets, as PromQL's ``histogram_quantile``.

    A histogram keeps counts, not observations, so the quantile is an estimate:

    1. the rank is ``q · total`` (``total = counts[-1]``);
    2. find the first bucket ``b`` whose cumulative count is ``>= rank``;
    3. if ``b`` is the last (+Inf) bucket, return the highest finite bound ``upper_bounds[-2]``
       — the histogram knows nothing above it;
    4. otherwise assume the observations inside bucket ``b`` are spread evenly between its lower
       bound (the previous upper bound; 0 for the first bucket) and its upper bound, and
       interpolate linearly::

           lower + (upper - lower) · (rank - count below b) / (count in b)

    Return NaN when the histogram is empty, ``-inf`` for ``q < 0`` and ``+inf`` for ``q > 1``
    (PromQL's conventions).

    Example: bounds (0.005, 0.01, 0.025, inf), counts (10, 40, 80, 100), q = 0.5: rank 50 falls
    in (0.01, 0.025], which holds 40 observations, 10 of them up to the rank; so the median is
    ``0.01 + 0.015 · 10 / 40 = 0.01375`` s. For q = 0.9, rank 90 is in the +Inf bucket: 0.025 s.
    """
    raise NotImplementedError("exercise: histogram_quantile (chapter 01, exercise 4)")
