"""Graded tests of chapter 01's exercises (exercises/ch01_inference_systems.py).

    pytest tests/exercises/test_ch01_inference_systems.py --impl=exercises -m ex1   # form_batches
    pytest tests/exercises/test_ch01_inference_systems.py --impl=exercises -m ex2   # canary_route
    pytest tests/exercises/test_ch01_inference_systems.py --impl=exercises -m ex3   # resolve_versions
    pytest tests/exercises/test_ch01_inference_systems.py --impl=exercises -m ex4   # histogram p99

(``-m ch01_ex1`` ... picks the same tests from the whole of tests/exercises.)

Oracles: a microsecond-by-microsecond simulation of the batcher (below), worked examples and
the invariants any batching has; the binomial distribution of a fair split and a run in
other processes with other hash seeds; Triton's config.pbtxt text parsed with the protobuf
definitions tritonclient ships, and tinyinfer's own server code; answers worked out by hand
from PromQL's interpolation rule and NumPy's quantile of the raw samples. None of them reads
the solutions.
"""

from __future__ import annotations

import math
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


def ex(number: int):
    """Both marks of an exercise: ``ex<n>`` (per file) and ``ch01_ex<n>`` (across chapters)."""

    def mark(test):
        return getattr(pytest.mark, f"ch01_ex{number}")(getattr(pytest.mark, f"ex{number}")(test))

    return mark


# ============================================================================ exercise 1
def simulate_batcher(arrivals, sizes, preferred, max_batch, delay):
    """The batching rules played out one microsecond at a time, from 0 to the last deadline."""
    batches, queue, pending = [], [], list(range(len(arrivals)))

    def deadline_passed(now):
        return queue and arrivals[queue[0]] + delay <= now

    for now in range(max(arrivals) + delay + 1):
        while pending and arrivals[pending[0]] == now:
            if deadline_passed(now):
                batches.append((queue, arrivals[queue[0]] + delay))
                queue = []
            if sum(sizes[i] for i in queue) + sizes[pending[0]] > max_batch:
                batches.append((queue, now))
                queue = []
            queue = queue + [pending.pop(0)]
            if sum(sizes[i] for i in queue) in set(preferred) | {max_batch}:
                batches.append((queue, now))
                queue = []
        if deadline_passed(now):
            batches.append((queue, now))
            queue = []
    return batches


def as_plain(batches):
    """``[(list of int, int), ...]`` whatever sequence types the answer used."""
    return [([int(i) for i in indices], int(time)) for indices, time in batches]


@ex(1)
def test_form_batches_docstring_example(impl):
    got = impl.form_batches([0, 100, 150, 900], [1, 1, 2, 1], [4], 8, 500)
    assert as_plain(got) == [([0, 1, 2], 150), ([3], 1400)]


@ex(1)
@pytest.mark.parametrize("case, expected", [
    # (arrivals, sizes, preferred, max batch, delay)
    (([0, 0, 0], [1, 1, 1], [], 8, 0), [([0], 0), ([1], 0), ([2], 0)]),  # no delay: no batching
    (([0, 500], [1, 1], [], 8, 500), [([0], 500), ([1], 1000)]),  # arriving at the deadline is too late
    (([0, 499], [1, 1], [], 8, 500), [([0, 1], 500)]),
    (([0, 10, 20], [3, 3, 3], [], 8, 1000), [([0, 1], 20), ([2], 1020)]),  # 9 samples would not fit in 8
    (([0, 10, 20], [4, 4, 1], [2], 8, 1000), [([0, 1], 10), ([2], 1020)]),  # max batch reached: go
    (([0, 1, 2, 3], [1, 1, 1, 1], [2, 4], 8, 100), [([0, 1], 1), ([2, 3], 3)]),
    (([5], [1], [4], 8, 100), [([0], 105)]),
])
def test_form_batches_worked_cases(impl, case, expected):
    assert as_plain(impl.form_batches(*case)) == expected


def random_batching_cases(count: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    cases = []
    for _ in range(count):
        n = int(rng.integers(1, 40))
        max_batch = int(rng.integers(1, 17))
        arrivals = np.sort(rng.integers(0, 1500, n))
        if rng.random() < 0.3:  # bursts: many requests at the same microsecond
            arrivals = (arrivals // 200) * 200
        sizes = rng.integers(1, min(max_batch, 4) + 1, n)
        preferred = sorted({int(p) for p in rng.integers(1, max_batch + 1, int(rng.integers(0, 3)))})
        delay = int(rng.choice([0, 1, 50, 200, 800]))
        cases.append(([int(a) for a in arrivals], [int(s) for s in sizes], preferred, max_batch, delay))
    return cases


@ex(1)
@pytest.mark.parametrize("case", random_batching_cases(40), ids=[f"random{i}" for i in range(40)])
def test_form_batches_matches_a_tick_by_tick_simulation(impl, case):
    arrivals, sizes, preferred, max_batch, delay = case
    got = as_plain(impl.form_batches(list(arrivals), list(sizes), list(preferred), max_batch, delay))
    assert got == simulate_batcher(arrivals, sizes, preferred, max_batch, delay), case
    # What every batching must satisfy, whatever the rules' details:
    assert [i for indices, _ in got for i in indices] == list(range(len(arrivals))), "each request once, in order"
    for indices, time in got:
        assert sum(sizes[i] for i in indices) <= max_batch
        assert arrivals[indices[-1]] <= time <= arrivals[indices[0]] + delay


@ex(1)
@pytest.mark.parametrize("case", [
    ([0, 1], [1, 9], [], 8, 10),  # a request larger than the largest batch
    ([0, 1], [1, 0], [], 8, 10),
    ([5, 1], [1, 1], [], 8, 10),  # time going backwards
])
def test_form_batches_rejects_impossible_input(impl, case):
    with pytest.raises(ValueError):
        impl.form_batches(*case)


# ============================================================================ exercise 2
IDS = [f"user-{i}" for i in range(10_000)]


def binomial_tolerance(n: int, weight: float) -> float:
    """4.5 standard deviations of the canary count: a fair split fails this once in ~150 000."""
    return 4.5 * math.sqrt(n * weight * (1 - weight))


@ex(2)
def test_canary_route_is_sticky(impl):
    first = [impl.canary_route(request_id, 1, 2, 0.3) for request_id in IDS[:3000]]
    assert first == [impl.canary_route(request_id, 1, 2, 0.3) for request_id in IDS[:3000]]
    assert set(first) == {1, 2}


@ex(2)
def test_canary_route_is_sticky_across_processes(impl):
    # Python's hash() changes with PYTHONHASHSEED; a retry may reach a restarted server.
    script = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); import {impl.__name__} as m\n"
              "print(''.join(str(m.canary_route(f'user-{i}', 1, 2, 0.5)) for i in range(400)))")
    runs = {subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": seed}).stdout.strip() for seed in ("0", "1", "2")}
    here = "".join(str(impl.canary_route(f"user-{i}", 1, 2, 0.5)) for i in range(400))
    assert runs == {here}, "the same id must get the same version in every process"


@ex(2)
@pytest.mark.parametrize("weight", [0.01, 0.1, 0.5, 0.9])
def test_canary_share_over_10000_ids_is_the_weight(impl, weight):
    to_canary = sum(impl.canary_route(request_id, 3, 4, weight) == 4 for request_id in IDS)
    assert abs(to_canary - weight * len(IDS)) <= binomial_tolerance(len(IDS), weight), to_canary


@ex(2)
@pytest.mark.parametrize("kind", ["uuid", "digits", "short"])
def test_canary_share_does_not_depend_on_the_shape_of_ids(impl, kind):
    rng = np.random.default_rng(5)
    ids = {
        "uuid": [str(uuid.UUID(bytes=rng.bytes(16))) for _ in range(5000)],
        "digits": [str(i) for i in range(5000)],
        "short": [chr(97 + i % 26) + chr(97 + i // 26 % 26) + str(i // 676) for i in range(5000)],
    }[kind]
    to_canary = sum(impl.canary_route(request_id, 1, 2, 0.25) == 2 for request_id in ids)
    assert abs(to_canary - 0.25 * len(ids)) <= binomial_tolerance(len(ids), 0.25), to_canary


@ex(2)
def test_canary_route_extreme_weights_and_monotonicity(impl):
    assert {impl.canary_route(request_id, 7, 12, 0.0) for request_id in IDS[:2000]} == {7}
    assert {impl.canary_route(request_id, 7, 12, 1.0) for request_id in IDS[:2000]} == {12}
    on_canary = [{i for i in IDS if impl.canary_route(i, 7, 12, weight) == 12} for weight in (0.05, 0.2, 0.6)]
    assert on_canary[0] <= on_canary[1] <= on_canary[2], "raising the weight moved an id back to stable"
    assert on_canary[0] != on_canary[1] != on_canary[2]


# ============================================================================ exercise 3
@ex(3)
@pytest.mark.parametrize("policy, available, expected", [
    (None, [1, 2, 3], [3]),
    ({}, [3, 1, 2], [3]),
    ({"latest": {"num_versions": 2}}, [1, 2, 3, 10], [3, 10]),  # 10 is later than 9: numbers, not text
    ({"latest": {"num_versions": 1}}, [9, 10], [10]),
    ({"latest": {"num_versions": 5}}, [4, 7], [4, 7]),
    ({"all": {}}, [5, 2, 9], [2, 5, 9]),
    ({"specific": {"versions": ["3", "1"]}}, [1, 2, 3], [1, 3]),
    ({"specific": {"versions": [2]}}, [1, 2, 3], [2]),
    (None, [], []),
])
def test_resolve_versions_known_answers(impl, policy, available, expected):
    assert [int(v) for v in impl.resolve_versions(policy, list(available))] == expected


@ex(3)
@pytest.mark.parametrize("pbtxt, expected", [
    ("", [12]),
    ("version_policy: { latest: { num_versions: 3 } }", [4, 10, 12]),
    ("version_policy: { all { } }", [1, 4, 10, 12]),
    ("version_policy: { specific: { versions: [1, 10] } }", [1, 10]),
])
def test_resolve_versions_reads_a_real_config_pbtxt(impl, pbtxt, expected):
    from tritonclient.grpc import model_config_pb2
    from google.protobuf import json_format, text_format

    config = text_format.Parse(f'name: "m"\n{pbtxt}', model_config_pb2.ModelConfig())
    policy = json_format.MessageToDict(config, preserving_proto_field_name=True).get("version_policy")
    assert [int(v) for v in impl.resolve_versions(policy, [10, 4, 12, 1])] == expected


@ex(3)
def test_resolve_versions_agrees_with_the_server(impl):
    from tritonclient.grpc import model_config_pb2
    from google.protobuf import json_format

    from tinyinfer.serve.routing import resolve_versions as server_resolve

    rng = np.random.default_rng(11)
    for _ in range(200):
        available = [int(v) for v in rng.choice(np.arange(1, 30), int(rng.integers(1, 8)), replace=False)]
        message = model_config_pb2.ModelVersionPolicy()
        choice = rng.integers(0, 3)
        if choice == 0:
            message.latest.num_versions = int(rng.integers(1, 10))
        elif choice == 1:
            message.specific.versions.extend(int(v) for v in rng.choice(available, int(rng.integers(1, 4))))
        else:
            message.all.SetInParent()
        policy = json_format.MessageToDict(message, preserving_proto_field_name=True)
        expected = server_resolve(message, available)
        assert [int(v) for v in impl.resolve_versions(policy, available)] == expected, (policy, available)


@ex(3)
@pytest.mark.parametrize("policy, message", [
    ({"specific": {"versions": [2, 5, 7]}}, r"\[5, 7\]"),  # the missing versions are named
    ({"latest": {"num_versions": 0}}, None),
    ({"latest": {"num_versions": 1}, "all": {}}, None),
])
def test_resolve_versions_rejects_impossible_policies(impl, policy, message):
    with pytest.raises(ValueError, match=message):
        impl.resolve_versions(policy, [1, 2, 3])


# ============================================================================ exercise 4
BOUNDS = [0.005, 0.01, 0.025, 0.05, 0.1, math.inf]
COUNTS = [10, 40, 80, 95, 99, 100]  # 100 observations, cumulative


@ex(4)
def test_cumulative_buckets_docstring_example(impl):
    got = impl.cumulative_buckets(np.array([0.002, 0.004, 0.004, 0.03]), [0.0025, 0.005, 0.01, math.inf])
    assert [int(c) for c in got] == [1, 3, 3, 4]


@ex(4)
def test_cumulative_buckets_count_less_or_equal(impl):
    rng = np.random.default_rng(2)
    latencies = np.concatenate([rng.exponential(0.02, 500), BOUNDS[:-1]])  # values exactly on a bound count
    got = [int(c) for c in impl.cumulative_buckets(latencies, BOUNDS)]
    assert got == [sum(1 for value in latencies if value <= bound) for bound in BOUNDS]


@ex(4)
@pytest.mark.parametrize("q, expected", [
    (0.5, 0.01 + 0.015 * 10 / 40),  # rank 50: (10 ms, 25 ms] holds ranks 41..80
    (0.9, 0.025 + 0.025 * 10 / 15),  # rank 90: (25 ms, 50 ms] holds ranks 81..95
    (0.99, 0.1),  # rank 99 is the top of (50 ms, 100 ms]
    (0.05, 0.005 * 5 / 10),  # the first bucket starts at 0
    (0.4, 0.01),  # rank 40 is the top of the second bucket
    (0.995, 0.1),  # rank 99.5 is in the +Inf bucket: the highest finite bound
    (1.0, 0.1),
])
def test_histogram_quantile_known_answers(impl, q, expected):
    assert impl.histogram_quantile(q, BOUNDS, COUNTS) == pytest.approx(expected, rel=1e-12)


@ex(4)
def test_histogram_quantile_docstring_example(impl):
    assert impl.histogram_quantile(0.5, [0.005, 0.01, 0.025, math.inf], [10, 40, 80, 100]) == pytest.approx(0.01375)
    assert impl.histogram_quantile(0.9, [0.005, 0.01, 0.025, math.inf], [10, 40, 80, 100]) == pytest.approx(0.025)


@ex(4)
def test_histogram_quantile_conventions(impl):
    assert math.isnan(impl.histogram_quantile(0.99, BOUNDS, [0] * len(BOUNDS)))
    assert impl.histogram_quantile(-0.1, BOUNDS, COUNTS) == -math.inf
    assert impl.histogram_quantile(1.1, BOUNDS, COUNTS) == math.inf


@ex(4)
@pytest.mark.parametrize("q", [0.5, 0.9, 0.99])
def test_histogram_p99_is_within_one_bucket_of_the_samples(impl, q):
    # Fine buckets over uniform samples: the estimate may be off by at most one bucket's width.
    samples = np.random.default_rng(4).uniform(0.0, 0.2, 20_000)
    bounds = [0.005 * k for k in range(1, 41)] + [math.inf]
    counts = [int(np.count_nonzero(samples <= bound)) for bound in bounds]
    assert abs(impl.histogram_quantile(q, bounds, counts) - np.quantile(samples, q)) <= 0.005
