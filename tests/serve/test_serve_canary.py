"""Canary releases on a running server: the split, promote and rollback over HTTP and the CLI,
automatic rollback of a failing canary under load, version swaps that lose no request, and
requests in flight that finish on the version they started on.

Every request goes through ``tritonclient.http`` (or the ``tinyinfer model`` command), as a
user's would. Outputs are compared with ONNX Runtime on the same model file: rtol 1e-5,
atol 1e-6, the float32 summation-order difference of a 4-term dot product.

"No request fails" is meant precisely:

* under version swaps every request is answered with status 200, by the version the response
  names (its outputs are that version's);
* with a failing canary, the only failures are the canary's own (their error names the canary
  version): every request routed to the stable version succeeds, and once the router has
  rolled the canary back no request reaches it.
"""

from __future__ import annotations

import json
import math
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnx
import pytest
import tritonclient.http as httpclient
from google.protobuf import text_format
from onnx import TensorProto, helper, numpy_helper
from serve_support import ServerThread, dense_model, write_model
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import InferenceServerException

from tinyinfer.cli import main
from tinyinfer.errors import RepositoryError
from tinyinfer.serve.repository import rollback_policy
from tinyinfer.serve.routing import RollbackPolicy

RTOL, ATOL = 1e-5, 1e-6

# The latency of a 4-feature model is scheduling noise, and on a loaded machine the p99 of 100
# such requests can differ twofold between two identical versions: only errors may roll back here.
SPLIT_CONFIG = """
max_batch_size: 8
version_policy { all { } }
dynamic_batching { max_queue_delay_microseconds: 500 }
parameters { key: "canary_p99_factor" value { string_value: "1000" } }
"""

# A small window and evidence threshold, so the failing canary is caught within a few hundred requests.
GUARDED_CONFIG = SPLIT_CONFIG + """
parameters { key: "canary_min_requests" value { string_value: "20" } }
parameters { key: "canary_window_s" value { string_value: "60" } }
parameters { key: "canary_error_factor" value { string_value: "2" } }
parameters { key: "canary_check_every" value { string_value: "5" } }
"""

SWAP_CONFIG = """
max_batch_size: 8
dynamic_batching { max_queue_delay_microseconds: 500 }
"""

# Requests wait 1.5 s for a batch: long enough to swap the version under them.
SLOW_QUEUE_CONFIG = """
max_batch_size: 8
dynamic_batching { max_queue_delay_microseconds: 1500000 }
"""


def failing_model(seed: int, limit: float = 1.0) -> onnx.ModelProto:
    """``dense_model(seed)`` that fails at run time on a batch holding any value above ``limit``.

    The guard gathers from a 2-element table at index 0 (fine) or 10 (out of range) depending
    on the data, so loading the model and shape inference cannot see the failure coming.
    """
    model = dense_model(seed)
    graph = model.graph
    graph.initializer.extend([numpy_helper.from_array(np.zeros(2, np.float32), "table"),
                              numpy_helper.from_array(np.array(limit, np.float32), "limit"),
                              numpy_helper.from_array(np.array(10, np.int64), "ten")])
    graph.node[-1].output[0] = "unguarded_total"
    graph.node.extend([
        helper.make_node("ReduceMax", ["x"], ["largest"], keepdims=0),
        helper.make_node("Greater", ["largest", "limit"], ["over"]),
        helper.make_node("Cast", ["over"], ["over_index"], to=TensorProto.INT64),
        helper.make_node("Mul", ["over_index", "ten"], ["index"]),
        helper.make_node("Gather", ["table", "index"], ["guard"]),
        helper.make_node("Add", ["unguarded_total", "guard"], ["total"]),
    ])
    return model


class Oracle:
    """ONNX Runtime sessions over a repository's model files, one per version, built once."""

    def __init__(self, repo, model: str):
        self.repo, self.model, self.sessions = repo, model, {}

    def __call__(self, version: str, x: np.ndarray) -> np.ndarray:
        import onnxruntime as ort

        if version not in self.sessions:
            path = self.repo / self.model / version / "model.onnx"
            self.sessions[version] = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return self.sessions[version].run(["y"], {"x": x})[0]


_clients = threading.local()


def infer(url: str, model: str, x: np.ndarray, request_id: str = ""):
    """A version-less request through this thread's own client (tritonclient's HTTP client,
    built on gevent, must not be shared between threads)."""
    if getattr(_clients, "url", None) != url:
        _clients.url, _clients.client = url, httpclient.InferenceServerClient(url)
    tensor = httpclient.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return _clients.client.infer(model, [tensor], request_id=request_id)


def http(server, path: str, body=None, method: str = "POST") -> tuple[int, dict]:
    """A raw request to the canary extension: (status, JSON body)."""
    data = json.dumps(body).encode() if body is not None else b""
    request = urllib.request.Request(f"http://{server.http_url}{path}", data=data if method == "POST" else None,
                                     method=method)
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def metric(server, line_start: str) -> float:
    """The value of the first Prometheus sample line starting with ``line_start`` (0 if absent)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.server.metrics_port}/metrics").read().decode()
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(line_start)]
    return values[0] if values else 0.0


def binomial_tolerance(n: int, p: float) -> float:
    """4.5 standard deviations of a binomial count: a fair split fails this once in ~150 000."""
    return 4.5 * math.sqrt(n * p * (1 - p))


@pytest.fixture(scope="module")
def split_server(tmp_path_factory):
    """A server over ``dense`` versions 1 and 2, both served."""
    repo = tmp_path_factory.mktemp("canary_repo")
    write_model(repo, "dense", 1, dense_model(seed=21), SPLIT_CONFIG)
    write_model(repo, "dense", 2, dense_model(seed=22))
    server = ServerThread(repo)
    server.repo = repo
    yield server
    server.stop()


@pytest.fixture
def served(split_server):
    """The split server, put back after the test: version 2 (the latest) stable, no canary."""
    yield split_server
    state = http(split_server, "/v2/models/dense/canary", method="GET")[1]
    if state["canary"] is not None:
        http(split_server, "/v2/models/dense/canary/rollback")
    if state["stable"] != 2:
        http(split_server, "/v2/models/dense/canary", {"version": 2, "weight": 0.5})
        http(split_server, "/v2/models/dense/canary/promote")


# ------------------------------------------------------------------------------ split and stickiness
def test_the_split_follows_the_weight_sticks_per_id_and_is_counted(served):
    status, state = http(served, "/v2/models/dense/canary", {"version": 2, "weight": 0.3, "stable": 1})
    assert status == 200 and (state["stable"], state["canary"], state["weight"]) == (1, 2, 0.3)
    url = served.http_url
    oracle = Oracle(served.repo, "dense")
    ids = [f"user-{i}" for i in range(400)]
    x = np.random.default_rng(0).standard_normal((1, 4)).astype(np.float32)

    def versions_of(request_ids):
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda request_id: infer(url, "dense", x, request_id), request_ids))
        for result in results[:20]:
            version = result.get_response()["model_version"]
            np.testing.assert_allclose(result.as_numpy("y"), oracle(version, x), rtol=RTOL, atol=ATOL)
        return [result.get_response()["model_version"] for result in results]

    before = metric(served, 'tinyinfer_routed_requests_total{model="dense",version="2"}')
    first = versions_of(ids)
    assert abs(first.count("2") - 0.3 * len(ids)) <= binomial_tolerance(len(ids), 0.3), first.count("2")
    assert versions_of(ids) == first, "a retry with the same id changed version"
    after = metric(served, 'tinyinfer_routed_requests_total{model="dense",version="2"}')
    assert after - before == 2 * first.count("2")
    counts = http(served, "/v2/models/dense/canary", method="GET")[1]["counts"]
    assert counts["2"]["routed"] >= 2 * first.count("2") and counts["2"]["failed"] == 0


def test_an_id_lands_on_the_same_version_over_grpc_as_over_http(served):
    import tritonclient.grpc as grpcclient

    http(served, "/v2/models/dense/canary", {"version": 2, "weight": 0.5, "stable": 1})
    client = grpcclient.InferenceServerClient(served.grpc_url)
    tensor = grpcclient.InferInput("x", [1, 4], "FP32")
    tensor.set_data_from_numpy(np.ones((1, 4), np.float32))
    ids = [f"retry-{i}" for i in range(40)]
    over_grpc = [client.infer("dense", [tensor], request_id=i).get_response().model_version for i in ids]
    over_http = [infer(served.http_url, "dense", np.ones((1, 4), np.float32), i).get_response()["model_version"]
                 for i in ids]
    assert over_grpc == over_http and set(over_http) == {"1", "2"}


# ------------------------------------------------------------------------------ control over HTTP
@pytest.mark.parametrize("path, body, status, message", [
    ("/v2/models/dense/canary/promote", None, 400, "no canary to promote"),
    ("/v2/models/dense/canary/rollback", None, 400, "no canary to roll back"),
    ("/v2/models/dense/canary", {"version": 1, "weight": 1.5}, 400, "strictly between 0 and 1"),
    ("/v2/models/dense/canary", {"version": 1, "weight": "half"}, 400, "a number strictly between 0 and 1"),
    ("/v2/models/dense/canary", {"version": 2, "weight": 0.5}, 400, "already the stable version"),
    ("/v2/models/dense/canary", {"version": "two", "weight": 0.5}, 400, "must be a version number"),
    ("/v2/models/dense/canary", {"weight": 0.5}, 400, '{"version": v, "weight": w}'),
    ("/v2/models/dense/canary", {"version": 7, "weight": 0.5}, 404, "has no version 7"),
    ("/v2/models/dense/canary", {"version": 1, "weight": 0.5, "stable": 9}, 404, "has no version 9"),
    ("/v2/models/nothing/canary", {"version": 1, "weight": 0.5}, 404, "unknown model 'nothing'"),
    ("/v2/models/nothing/canary/promote", None, 404, "unknown model 'nothing'"),
])
def test_canary_requests_that_cannot_apply_answer_an_error(served, path, body, status, message):
    answer = http(served, path, body)
    assert answer[0] == status and message in answer[1]["error"], answer
    assert http(served, "/v2/models/dense/canary", method="GET")[1]["canary"] is None


def test_promote_and_rollback_over_http(served):
    rollbacks = metric(served, 'tinyinfer_canary_rollbacks_total{model="dense",version="1"}')
    # Version 2 is the latest, so it is stable; put version 1 on canary (by its number as a string).
    assert http(served, "/v2/models/dense/canary", {"version": "1", "weight": 0.5})[1]["canary"] == 1
    state = http(served, "/v2/models/dense/canary/rollback")[1]
    assert (state["stable"], state["canary"], state["last_rollback"]) == (2, None, "rolled back through the API")
    assert metric(served, 'tinyinfer_canary_rollbacks_total{model="dense",version="1"}') == rollbacks + 1
    http(served, "/v2/models/dense/canary", {"version": 1, "weight": 0.5})
    state = http(served, "/v2/models/dense/canary/promote")[1]
    assert (state["stable"], state["canary"], state["weight"]) == (1, None, 0.0)
    url = served.http_url
    x = np.ones((1, 4), np.float32)
    assert {infer(url, "dense", x, f"r{i}").get_response()["model_version"] for i in range(20)} == {"1"}
    assert state["policy"]["min_requests"] == 100  # not in the config: RollbackPolicy's default


def test_a_rolled_back_latest_version_stays_out_when_the_repository_is_rescanned(served):
    http(served, "/v2/models/dense/canary", {"version": 2, "weight": 0.5, "stable": 1})
    http(served, "/v2/models/dense/canary/rollback")
    served.call(served.server.core.repository.poll())  # nothing new on disk: nothing changes
    assert http(served, "/v2/models/dense/canary", method="GET")[1]["stable"] == 1
    assert infer(served.http_url, "dense", np.ones((1, 4), np.float32)).get_response()["model_version"] == "1"


def test_the_cli_shows_sets_promotes_and_rolls_back(served, capsys):
    url = ["-u", served.http_url]
    assert main(["model", "canary", "dense", "--version", "2", "--weight", "0.25", "--stable", "1", *url]) == 0
    assert "model dense: stable version 1, canary version 2 at weight 0.25" in capsys.readouterr().out
    assert main(["model", "canary", "dense", *url]) == 0
    assert "canary version 2 at weight 0.25" in capsys.readouterr().out
    assert main(["model", "promote", "dense", *url]) == 0
    assert "model dense: stable version 2, no canary" in capsys.readouterr().out
    assert main(["model", "rollback", "dense", *url]) == 1
    assert "answered 400: no canary to roll back" in capsys.readouterr().err
    assert main(["model", "canary", "dense", "--version", "1", "--weight", "0.5", *url]) == 0
    assert main(["model", "rollback", "dense", *url]) == 0
    out = capsys.readouterr().out
    assert "stable version 2, no canary" in out and "last rollback: rolled back through the API" in out


def test_the_cli_explains_bad_arguments_and_an_unreachable_server(capsys):
    assert main(["model", "canary", "dense", "--weight", "0.5"]) == 1
    assert "give --version and --weight" in capsys.readouterr().err
    assert main(["model", "promote", "dense", "--version", "2"]) == 1
    assert "takes no --version" in capsys.readouterr().err
    assert main(["model", "canary", "dense", "-u", "127.0.0.1:9"]) == 1  # port 9 (discard): nobody listens
    assert "cannot reach a server at 127.0.0.1:9" in capsys.readouterr().err


# ------------------------------------------------------------------------------ rollback policy from config
def test_the_rollback_policy_comes_from_config_parameters():
    policy = rollback_policy(text_format.Parse(GUARDED_CONFIG, model_config_pb2.ModelConfig(name="m")))
    assert (policy.min_requests, policy.window_s, policy.error_rate_factor, policy.check_every,
            policy.p99_factor) == (20, 60.0, 2.0, 5, 1000.0)
    assert rollback_policy(model_config_pb2.ModelConfig(name="m")) == RollbackPolicy()
    for key, value, message in [("canary_min_requests", "ten", "must be int"),
                                ("canary_p99_factor", "-1", "p99_factor"),
                                ("canary_error_floor", "2", "error_rate_floor")]:
        bad = model_config_pb2.ModelConfig(name="m")
        bad.parameters[key].string_value = value
        with pytest.raises(RepositoryError, match=message):
            rollback_policy(bad)


# ------------------------------------------------------------------------------ automatic rollback under load
def test_a_failing_canary_is_rolled_back_under_load_and_stable_never_fails(tmp_path, start_server):
    write_model(tmp_path, "guarded", 1, dense_model(seed=31), GUARDED_CONFIG)
    write_model(tmp_path, "guarded", 2, failing_model(seed=32))
    server = start_server(tmp_path)
    assert http(server, "/v2/models/guarded/canary", {"version": 2, "weight": 0.3, "stable": 1})[0] == 200
    url = server.http_url
    outcomes = []  # (request id, version or None, error message or None)

    def load(worker: int) -> None:
        rng = np.random.default_rng(worker)
        for i in range(120):  # about half of these inputs hold a value above the canary's limit
            request_id = f"load-{worker}-{i}"
            try:
                answer = infer(url, "guarded", rng.standard_normal((1, 4)).astype(np.float32), request_id)
                outcomes.append((request_id, answer.get_response()["model_version"], None))
            except InferenceServerException as error:
                outcomes.append((request_id, None, error.message()))

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(load, range(4)))
    assert len(outcomes) == 480, "every request was answered"
    failures = [message for _, version, message in outcomes if version is None]
    assert failures and all("model guarded:2 failed to run the batch" in m for m in failures), failures[:3]
    state = http(server, "/v2/models/guarded/canary", method="GET")[1]
    assert state["canary"] is None and "error rate" in state["last_rollback"], state
    assert state["counts"]["1"]["failed"] == 0 and state["policy"]["min_requests"] == 20
    assert metric(server, 'tinyinfer_canary_rollbacks_total{model="guarded",version="2"}') == 1
    # After the rollback: the ids that had reached the canary, sent again, all land on stable.
    routed_to_canary = state["counts"]["2"]["routed"]
    retried = [request_id for request_id, version, _ in outcomes if version != "1"]
    x = np.full((1, 4), 5.0, np.float32)  # an input the canary would fail on
    assert {infer(url, "guarded", x, request_id).get_response()["model_version"] for request_id in retried} == {"1"}
    assert http(server, "/v2/models/guarded/canary", method="GET")[1]["counts"]["2"]["routed"] == routed_to_canary


# ------------------------------------------------------------------------------ swaps under load
class ConstantLoad:
    """``workers`` threads sending version-less requests until stopped; every answer is kept."""

    def __init__(self, server, model: str, workers: int = 4):
        self.url = server.http_url
        self.model, self.answers, self.errors = model, [], []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(seed,), daemon=True) for seed in range(workers)]
        for thread in self._threads:
            thread.start()

    def _run(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        while not self._stop.is_set():
            x = rng.standard_normal((1 + int(rng.integers(3)), 4)).astype(np.float32)
            try:
                result = infer(self.url, self.model, x)
                self.answers.append((x, result.get_response()["model_version"], result.as_numpy("y")))
            except InferenceServerException as error:
                self.errors.append(error.message())

    def wait_for(self, more: int, timeout_s: float = 20.0) -> None:
        """Block until ``more`` further requests have been answered."""
        target, deadline = len(self.answers) + len(self.errors) + more, time.monotonic() + timeout_s
        while len(self.answers) + len(self.errors) < target:
            assert time.monotonic() < deadline, "the load stalled"
            time.sleep(0.005)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)


def test_ten_version_swaps_under_constant_load_fail_no_request(tmp_path, start_server):
    write_model(tmp_path, "swap", 1, dense_model(seed=40), SWAP_CONFIG)
    # Poll mode, rescanned by hand below (not on a timer) so each swap happens at a known moment.
    server = start_server(tmp_path, model_control_mode="poll", poll_interval_s=3600)
    repository = server.server.core.repository
    load = ConstantLoad(server, "swap")
    try:
        load.wait_for(10)
        for version in range(2, 12):  # version_policy latest 1: each new version replaces the last
            write_model(tmp_path, "swap", version, dense_model(seed=40 + version))
            server.call(repository.poll())
            assert repository.model("swap").ready_versions() == [version]
            load.wait_for(10)
    finally:
        load.stop()
    assert load.errors == []
    oracle = Oracle(tmp_path, "swap")
    for x, version, y in load.answers:
        np.testing.assert_allclose(y, oracle(version, x), rtol=RTOL, atol=ATOL)
    seen = {version for _, version, _ in load.answers}
    assert seen <= {str(v) for v in range(1, 12)} and {"1", "11"} <= seen
    assert load.answers[-1][1] == "11"


def test_requests_in_flight_finish_on_the_version_they_started_on(tmp_path, start_server):
    write_model(tmp_path, "slow", 1, dense_model(seed=50), SLOW_QUEUE_CONFIG)
    server = start_server(tmp_path, model_control_mode="poll", poll_interval_s=3600)
    repository = server.server.core.repository
    batcher = repository.model("slow").versions[1].batcher
    url = server.http_url
    xs = [np.full((1, 4), float(i), np.float32) for i in range(3)]
    with ThreadPoolExecutor(3) as pool:
        waiting = [pool.submit(infer, url, "slow", x) for x in xs]
        deadline = time.monotonic() + 20
        while batcher.queue_depth < 3:  # all three wait for their batch on version 1
            assert time.monotonic() < deadline, "the requests never reached the queue"
            time.sleep(0.01)
        write_model(tmp_path, "slow", 2, dense_model(seed=51))
        server.call(repository.poll())  # version 2 loads; version 1 drains its queue, then unloads
        answers = [future.result(30) for future in waiting]
    oracle = Oracle(tmp_path, "slow")
    for x, answer in zip(xs, answers):
        assert answer.get_response()["model_version"] == "1"
        np.testing.assert_allclose(answer.as_numpy("y"), oracle("1", x), rtol=RTOL, atol=ATOL)
    assert repository.model("slow").ready_versions() == [2]
    assert infer(url, "slow", xs[0]).get_response()["model_version"] == "2"
