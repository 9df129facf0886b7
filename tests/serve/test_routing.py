"""Version policies, the sticky canary router, automatic rollback and the latency statistics.

Oracles: version policies written as Triton's own config.pbtxt text and parsed with the
protobuf definitions tritonclient ships; the binomial distribution for the canary split
(a tolerance of 4.5 standard deviations, so a correct router fails about once in 150 000
runs); a hand-moved clock for the sliding window; quantiles computed by hand from order
statistics and Prometheus' documented bucket interpolation.
"""

from __future__ import annotations

import math
import subprocess
import sys
import threading

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from tinyinfer.errors import CanaryError, RepositoryError, TinyInferError
from tinyinfer.serve.routing import (
    CanaryRouter,
    LatencyWindow,
    RollbackPolicy,
    histogram_quantile,
    quantile,
    resolve_versions,
)


class ManualClock:
    """A clock the test moves by hand."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def policy_from_pbtxt(text: str):
    """The ``version_policy`` of a config.pbtxt holding ``text``, parsed as Triton parses it."""
    config = text_format.Parse(text, model_config_pb2.ModelConfig())
    return config.version_policy if config.HasField("version_policy") else None


# ============================================================================ version policy
@pytest.mark.parametrize("pbtxt, available, expected", [
    ("", [1, 2, 3], [3]),  # no policy: Triton serves the latest version
    ("version_policy: { latest: { num_versions: 1 } }", [3, 1, 2], [3]),
    ("version_policy: { latest: { num_versions: 2 } }", [1, 2, 3, 10], [3, 10]),  # numeric, not text, order
    ("version_policy: { latest: { num_versions: 5 } }", [4, 7], [4, 7]),  # fewer on disk than asked for
    ("version_policy: { all: {} }", [5, 2, 9], [2, 5, 9]),
    ("version_policy: { specific: { versions: [3, 1] } }", [1, 2, 3], [1, 3]),
    ("version_policy: { specific: { versions: 2 } }", [1, 2, 3], [2]),
    ("", [], []),
    ("version_policy: { all: {} }", [], []),
])
def test_resolve_versions(pbtxt, available, expected):
    assert resolve_versions(policy_from_pbtxt(pbtxt), available) == expected


def test_an_empty_policy_message_means_latest_one():
    assert resolve_versions(model_config_pb2.ModelVersionPolicy(), [1, 4, 2]) == [4]


def test_specific_versions_missing_on_disk_are_named():
    policy = policy_from_pbtxt("version_policy: { specific: { versions: [1, 4, 6] } }")
    with pytest.raises(RepositoryError, match=r"\[4, 6\].*on disk: \[1, 2, 3\]") as info:
        resolve_versions(policy, [1, 2, 3])
    assert isinstance(info.value, TinyInferError)


def test_latest_zero_versions_is_an_error():
    with pytest.raises(RepositoryError, match="num_versions must be >= 1"):
        resolve_versions(policy_from_pbtxt("version_policy: { latest: { num_versions: 0 } }"), [1, 2])


# ============================================================================ routing
IDS = [f"request-{i}" for i in range(10_000)]


def test_without_a_canary_everything_goes_to_stable():
    router = CanaryRouter(stable=3)
    assert {router.route(request_id) for request_id in IDS[:500]} | {router.route(None)} == {3}


def test_the_same_id_always_lands_on_the_same_version():
    first, second = CanaryRouter(stable=1, seed=0), CanaryRouter(stable=1, seed=99)
    first.set_canary(2, 0.3)
    second.set_canary(2, 0.3)
    picks = [first.route(request_id) for request_id in IDS[:2000]]
    assert picks == [first.route(request_id) for request_id in IDS[:2000]], "a retry changed version"
    assert picks == [second.route(request_id) for request_id in IDS[:2000]], "another router disagreed"
    assert set(picks) == {1, 2}


def test_stickiness_survives_a_restart_with_another_hash_seed():
    # Python's hash() is salted per process; a retry may reach a restarted server or a replica.
    script = ("from tinyinfer.serve.routing import CanaryRouter\n"
              "r = CanaryRouter(stable=1); r.set_canary(2, 0.5)\n"
              "print(''.join(str(r.route(f'request-{i}')) for i in range(300)))")
    runs = {subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": seed}).stdout.strip() for seed in ("1", "2")}
    router = CanaryRouter(stable=1)
    router.set_canary(2, 0.5)
    assert runs == {"".join(str(router.route(f"request-{i}")) for i in range(300))}


@pytest.mark.parametrize("weight", [0.05, 0.1, 0.5, 0.9])
def test_split_over_10000_ids_is_close_to_the_weight(weight):
    router = CanaryRouter(stable=1)
    router.set_canary(2, weight)
    to_canary = sum(router.route(request_id) == 2 for request_id in IDS)
    tolerance = 4.5 * math.sqrt(len(IDS) * weight * (1 - weight))  # 4.5 binomial standard deviations
    assert abs(to_canary - weight * len(IDS)) <= tolerance, (to_canary, weight)


def test_requests_without_an_id_split_by_a_seeded_rng():
    routers = [CanaryRouter(stable=1, seed=7) for _ in range(2)]
    for router in routers:
        router.set_canary(2, 0.2)
    picks = [[router.route(None) for _ in range(10_000)] for router in routers]
    assert picks[0] == picks[1], "the same seed must give the same sequence"
    to_canary = picks[0].count(2)
    assert abs(to_canary - 2000) <= 4.5 * math.sqrt(10_000 * 0.2 * 0.8)


def test_raising_the_weight_only_moves_ids_from_stable_to_canary():
    router = CanaryRouter(stable=1)
    router.set_canary(2, 0.1)
    before = {request_id for request_id in IDS if router.route(request_id) == 2}
    router.set_canary(2, 0.4)
    after = {request_id for request_id in IDS if router.route(request_id) == 2}
    assert before < after


# ============================================================================ transitions
def test_promote_makes_the_canary_stable():
    router = CanaryRouter(stable=1)
    router.set_canary(2, 0.25)
    assert router.state()["canary"] == 2 and router.state()["weight"] == 0.25
    assert router.promote() == 2
    state = router.state()
    assert (state["stable"], state["canary"], state["weight"]) == (2, None, 0.0)
    assert {router.route(request_id) for request_id in IDS[:500]} == {2}


def test_manual_rollback_returns_all_traffic_to_stable_and_keeps_the_reason():
    seen = []
    router = CanaryRouter(stable=1, on_rollback=lambda version, reason: seen.append((version, reason)))
    router.set_canary(2, 0.5)
    assert router.rollback("operator saw a bad dashboard") == 2
    state = router.state()
    assert (state["stable"], state["canary"], state["last_rollback"]) == (1, None, "operator saw a bad dashboard")
    assert seen == [(2, "operator saw a bad dashboard")]
    assert {router.route(request_id) for request_id in IDS[:500]} == {1}


def test_set_stable_follows_a_newly_loaded_version():
    router = CanaryRouter(stable=1)
    router.set_stable(3)
    assert router.route("x") == 3
    router.set_canary(4, 0.5)
    router.set_stable(4)  # the canary's version became stable: no canary left
    assert (router.state()["stable"], router.state()["canary"]) == (4, None)


@pytest.mark.parametrize("weight", [0.0, 1.0, -0.1, 1.5])
def test_a_weight_outside_zero_one_is_refused(weight):
    router = CanaryRouter(stable=1)
    with pytest.raises(CanaryError, match="strictly between 0 and 1"):
        router.set_canary(2, weight)
    assert router.state()["canary"] is None


def test_a_canary_equal_to_stable_is_refused():
    with pytest.raises(CanaryError, match="already the stable version"):
        CanaryRouter(stable=1).set_canary(1, 0.5)


@pytest.mark.parametrize("action", ["promote", "rollback"])
def test_promote_or_rollback_without_a_canary_is_refused(action):
    with pytest.raises(CanaryError, match=f"no canary to {'promote' if action == 'promote' else 'roll back'}"):
        getattr(CanaryRouter(stable=1), action)()


@pytest.mark.parametrize("field, value", [("window_s", 0), ("min_requests", 0), ("check_every", 0),
                                          ("p99_factor", -1.0), ("error_rate_floor", 1.5)])
def test_a_rollback_policy_that_cannot_work_is_refused(field, value):
    with pytest.raises(CanaryError, match=field):
        RollbackPolicy(**{field: value})


# ============================================================================ automatic rollback
def feed(router, rng, requests, canary_error_rate=0.0, stable_error_rate=0.0, canary_slowdown=1.0):
    """Route ``requests`` ids and record an outcome for each, as a server would."""
    for i in range(requests):
        version = router.route(f"user-{rng.integers(1 << 30)}-{i}")
        is_canary = version == 2  # the canary of every test below
        error_rate = canary_error_rate if is_canary else stable_error_rate
        latency = rng.lognormal(math.log(0.005), 0.3) * (canary_slowdown if is_canary else 1.0)
        router.record(version, ok=rng.random() >= error_rate, latency_s=latency)


POLICY = RollbackPolicy(window_s=30.0, min_requests=50, error_rate_factor=2.0, error_rate_floor=0.01, p99_factor=2.0)


def test_a_canary_that_fails_often_is_rolled_back():
    seen = []
    router = CanaryRouter(stable=1, policy=POLICY, on_rollback=lambda version, reason: seen.append(version))
    router.set_canary(2, 0.3)
    feed(router, np.random.default_rng(0), 2000, canary_error_rate=0.2, stable_error_rate=0.01)
    state = router.state()
    assert state["canary"] is None and state["stable"] == 1
    assert "error rate" in state["last_rollback"] and "canary version 2" in state["last_rollback"]
    assert seen == [2], "the callback runs once per rollback"


def test_a_slow_canary_is_rolled_back_on_p99():
    router = CanaryRouter(stable=1, policy=POLICY)
    router.set_canary(2, 0.3)
    feed(router, np.random.default_rng(1), 2000, canary_slowdown=4.0)
    assert router.state()["canary"] is None
    assert "p99 latency" in router.state()["last_rollback"]


def test_a_good_canary_is_kept():
    router = CanaryRouter(stable=1, policy=POLICY)
    router.set_canary(2, 0.3)
    feed(router, np.random.default_rng(2), 4000, canary_error_rate=0.01, stable_error_rate=0.01, canary_slowdown=1.2)
    state = router.state()
    assert state["canary"] == 2 and state["last_rollback"] is None
    assert state["window"][2]["requests"] >= POLICY.min_requests  # it was judged, and passed


@pytest.mark.parametrize("canary_fails_every, rolled_back", [(5, True), (16, False)])
def test_error_rate_is_judged_against_the_stable_version(canary_fails_every, rolled_back):
    # Stable fails 1 request in 20 (5 %); a canary failing 1 in 5 (20 %, 4x) must go, one failing
    # 1 in 16 (6.25 %, 1.25x) must stay. Deterministic outcomes, so the rates are exact.
    router = CanaryRouter(stable=1, policy=POLICY)
    router.set_canary(2, 0.5)
    for i in range(1, 401):
        router.record(1, ok=i % 20 != 0, latency_s=0.01)
        router.record(2, ok=i % canary_fails_every != 0, latency_s=0.01)
    assert (router.state()["canary"] is None) == rolled_back


def test_no_verdict_before_min_requests():
    router = CanaryRouter(stable=1, policy=POLICY)
    assert POLICY.min_requests % POLICY.check_every == 0, "the 50th outcome must be one that is checked"
    router.set_canary(2, 0.5)
    for _ in range(POLICY.min_requests):
        router.record(1, ok=True, latency_s=0.01)
    for _ in range(POLICY.min_requests - 1):
        router.record(2, ok=False, latency_s=0.01)
    assert router.state()["canary"] == 2, "49 failures are not yet evidence under min_requests=50"
    router.record(2, ok=False, latency_s=0.01)
    assert router.state()["canary"] is None


def test_old_failures_leave_the_window():
    clock = ManualClock()
    router = CanaryRouter(stable=1, policy=POLICY, clock=clock)
    router.set_canary(2, 0.5)
    for _ in range(POLICY.min_requests - 1):
        router.record(2, ok=False, latency_s=0.01)
    clock.now += POLICY.window_s + 1  # those failures are now history
    for _ in range(POLICY.min_requests):
        router.record(1, ok=True, latency_s=0.01)
        router.record(2, ok=True, latency_s=0.01)
    assert router.state()["canary"] == 2
    assert router.state()["window"][2] == {"requests": POLICY.min_requests, "errors": 0}
    assert router.p99(2) == pytest.approx(0.01) and math.isnan(router.p99(3))


def test_a_new_canary_is_judged_on_its_own_traffic():
    router = CanaryRouter(stable=1, policy=POLICY)
    for _ in range(POLICY.min_requests):
        router.record(1, ok=True, latency_s=0.01)
        router.record(2, ok=False, latency_s=0.01)  # version 2 failed while asked for by name
    router.set_canary(2, 0.5)
    for _ in range(POLICY.check_every):  # enough for a verdict to be taken
        router.record(2, ok=True, latency_s=0.01)
    assert router.state()["canary"] == 2


# ============================================================================ thread safety
def test_many_threads_routing_and_recording_keep_exact_counts():
    router = CanaryRouter(stable=1, policy=RollbackPolicy(min_requests=10**9))  # never roll back here
    router.set_canary(2, 0.3)
    threads, per_thread = 8, 1500
    start = threading.Barrier(threads)

    def client(number: int):
        start.wait()
        for i in range(per_thread):
            version = router.route(f"t{number}-{i}" if i % 4 else None)
            router.record(version, ok=i % 10 != 0, latency_s=0.001)
            if i % 500 == 0:
                router.state()

    workers = [threading.Thread(target=client, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    counts = router.state()["counts"]
    total = threads * per_thread
    assert sum(c["routed"] for c in counts.values()) == total
    assert sum(c["ok"] + c["failed"] for c in counts.values()) == total
    assert sum(c["failed"] for c in counts.values()) == threads * len(range(0, per_thread, 10))
    for version in (1, 2):
        assert counts[version]["routed"] == counts[version]["ok"] + counts[version]["failed"]


def test_concurrent_rollback_happens_once():
    seen = []
    router = CanaryRouter(stable=1, policy=RollbackPolicy(min_requests=20),
                          on_rollback=lambda version, reason: seen.append(version))
    router.set_canary(2, 0.5)
    for _ in range(20):
        router.record(1, ok=True, latency_s=0.001)
    workers = [threading.Thread(target=lambda: [router.record(2, ok=False, latency_s=0.001) for _ in range(200)])
               for _ in range(6)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert seen == [2]


# ============================================================================ latency statistics
def order_statistic_quantile(samples, q):
    """Hyndman & Fan type 7 by hand: position q·(n-1) in the sorted samples, linear in between."""
    ordered = sorted(samples)
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@pytest.mark.parametrize("q", [0.0, 0.5, 0.9, 0.99, 1.0])
def test_quantile_interpolates_between_order_statistics(q):
    samples = list(np.random.default_rng(3).exponential(0.01, 137))
    assert quantile(samples, q) == pytest.approx(order_statistic_quantile(samples, q), rel=1e-12)


def test_quantile_of_nothing_is_nan_and_q_is_checked():
    assert math.isnan(quantile([], 0.99))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        quantile([1.0], 1.5)


# Cumulative buckets (le = 5 ms, 10 ms, 25 ms, 50 ms, 100 ms, +Inf) of 100 observations.
BOUNDS = [0.005, 0.01, 0.025, 0.05, 0.1, math.inf]
CUMULATIVE = [10, 40, 80, 95, 99, 100]


@pytest.mark.parametrize("q, expected", [
    (0.5, 0.01 + 0.015 * (50 - 40) / 40),  # rank 50 in (10 ms, 25 ms], 10 of its 40
    (0.9, 0.025 + 0.025 * (90 - 80) / 15),
    (0.99, 0.1),  # rank 99 is the top of (50 ms, 100 ms]
    (0.05, 0.005 * 5 / 10),  # the first bucket starts at 0
    (0.995, 0.1),  # rank in the +Inf bucket: the highest finite bound
    (0.4, 0.01),
])
def test_histogram_quantile_known_answers(q, expected):
    assert histogram_quantile(q, BOUNDS, CUMULATIVE) == pytest.approx(expected, rel=1e-12)


def test_histogram_quantile_tracks_the_samples_within_a_bucket_width():
    samples = np.random.default_rng(4).uniform(0.0, 0.2, 20_000)
    bounds = list(np.arange(1, 41) * 0.005) + [math.inf]
    cumulative = [int(np.sum(samples <= bound)) for bound in bounds]
    for q in (0.5, 0.9, 0.99):
        assert abs(histogram_quantile(q, bounds, cumulative) - np.quantile(samples, q)) <= 0.005


def test_histogram_quantile_edge_cases():
    assert math.isnan(histogram_quantile(0.99, [0.1, math.inf], [0, 0]))
    with pytest.raises(ValueError, match=r"\+Inf"):
        histogram_quantile(0.5, [0.1, 0.2], [1, 2])


def test_latency_window_forgets_old_samples_and_caps_its_size():
    clock = ManualClock()
    window = LatencyWindow(length_s=10.0, max_samples=5, clock=clock)
    window.add(False, 1.0)
    clock.now += 11.0
    for latency in (0.1, 0.2, 0.3):
        window.add(True, latency)
    assert window.counts() == (3, 0)
    np.testing.assert_array_equal(window.latencies(), [0.1, 0.2, 0.3])
    for latency in (0.4, 0.5, 0.6):
        window.add(latency != 0.6, latency)
    assert window.counts() == (5, 1)
    np.testing.assert_array_equal(window.latencies(), [0.2, 0.3, 0.4, 0.5, 0.6])
    assert window.error_rate() == pytest.approx(0.2)
    assert window.p99() == pytest.approx(order_statistic_quantile([0.2, 0.3, 0.4, 0.5, 0.6], 0.99))
    clock.now += 11.0
    assert window.counts() == (0, 0) and math.isnan(window.error_rate()) and math.isnan(window.p99())
