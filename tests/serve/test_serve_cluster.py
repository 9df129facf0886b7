"""Replicas behind nginx (tinyinfer.serve.cluster): requests keep succeeding while one dies.

The oracle is ONNX Runtime on the same model file; the check that nothing is lost is every
response of a concurrent load being 200 with the right numbers, across a replica killed with
SIGKILL in the middle of it. Needs nginx (``make nginx`` installs it); without it the
end-to-end tests skip and say so.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
import urllib.request

import numpy as np
import pytest
from serve_support import dense_model, onnxruntime_outputs, write_model

from tinyinfer.serve.cluster import Cluster, ClusterError, Replica, free_ports, nginx_config

NGINX = shutil.which("nginx") or (shutil.which("nginx", path="/usr/sbin"))
needs_nginx = pytest.mark.skipif(NGINX is None, reason="nginx is not installed (make nginx installs it)")


def test_config_has_both_upstreams_retries_and_down_replicas(tmp_path):
    replicas = [Replica(0, 9100, 9101, 9102), Replica(1, 9200, 9201, 9202)]
    text = nginx_config(replicas, http_port=8000, grpc_port=8001, prefix=str(tmp_path), down={1})
    assert "server 127.0.0.1:9100 max_fails=1 fail_timeout=2s;" in text
    assert "server 127.0.0.1:9200 max_fails=1 fail_timeout=2s down;" in text
    assert "server 127.0.0.1:9201 max_fails=1 fail_timeout=2s down;" in text  # gRPC upstream too
    assert "proxy_next_upstream error timeout http_502 http_503 http_504 non_idempotent;" in text
    assert "listen 127.0.0.1:8001 http2;" in text and "grpc_pass grpc://tinyinfer_grpc;" in text
    assert f"pid {tmp_path}/nginx.pid;" in text


def test_free_ports_are_distinct():
    ports = free_ports(5)
    assert len(set(ports)) == 5


def test_missing_nginx_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name, **kw: None)
    monkeypatch.setattr("tinyinfer.serve.cluster._sbin", lambda name: None)
    with pytest.raises(ClusterError, match="nginx is not installed"):
        Cluster(tmp_path)
    with pytest.raises(ClusterError, match="at least one replica"):
        Cluster(tmp_path, replicas=0, nginx="/bin/true")


def infer(port: int, x: np.ndarray) -> tuple[int, dict]:
    body = json.dumps({"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32",
                                   "data": x.ravel().tolist()}]}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v2/models/dense/infer", data=body,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as error:
        return error.code, {"error": error.read().decode(errors="replace")}


@needs_nginx
def test_killing_a_replica_under_load_loses_no_request(tmp_path):
    repo = tmp_path / "repo"
    path = write_model(repo, "dense", 1, dense_model(0))
    http_port, grpc_port = free_ports(2)
    results: list[tuple[int | str, bool]] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client(seed: int) -> None:
        rng = np.random.default_rng(seed)
        while not stop.is_set():
            x = rng.standard_normal((2, 4)).astype(np.float32)
            try:
                status, reply = infer(http_port, x)
            except OSError as exc:  # a connection nginx dropped: a lost request, reported below
                status, reply = repr(exc), {}
            ok = False
            if status == 200:
                y = next(o for o in reply["outputs"] if o["name"] == "y")
                expected = onnxruntime_outputs(path, {"x": x})["y"]
                ok = np.allclose(np.array(y["data"], np.float32).reshape(expected.shape), expected, rtol=1e-5, atol=1e-6)
            with lock:
                results.append((status, ok))

    with Cluster(repo, replicas=2, http_port=http_port, grpc_port=grpc_port, check_interval_s=0.2) as cluster:
        threads = [threading.Thread(target=client, args=(seed,)) for seed in range(4)]
        for thread in threads:
            thread.start()
        time.sleep(1.5)
        cluster.replicas[0].process.kill()  # SIGKILL: no drain, connections reset mid-request
        time.sleep(2.0)
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        state = cluster.state()
        after = infer(http_port, np.ones((1, 4), np.float32))[0]
        grpc_ready = _grpc_ready(grpc_port)
    assert len(results) > 20, "the load generator barely ran"
    assert [r for r in results if r != (200, True)] == []  # every request answered, and right
    assert "replica 0 down" in state["events"]
    assert [r["in_rotation"] for r in state["replicas"]] == [False, True]
    assert after == 200
    assert grpc_ready  # gRPC reaches the surviving replica through nginx's HTTP/2 proxy too


def _grpc_ready(port: int) -> bool:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
    try:
        return client.is_server_ready() and client.is_model_ready("dense")
    finally:
        client.close()


@needs_nginx
def test_cli_cluster_serves_and_stops_on_sigterm(tmp_path):
    import signal
    import subprocess
    import sys

    repo = tmp_path / "repo"
    write_model(repo, "dense", 1, dense_model(1))
    http_port, grpc_port = free_ports(2)
    process = subprocess.Popen([sys.executable, "-m", "tinyinfer", "cluster", str(repo), "--replicas", "2",
                                "--http-port", str(http_port), "--grpc-port", str(grpc_port)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        banner = process.stdout.readline()
        assert banner.startswith(f"nginx on HTTP :{http_port}"), banner
        status, reply = infer(http_port, np.ones((3, 4), np.float32))
        assert status == 200 and reply["model_name"] == "dense"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
        assert "stopped" in process.stdout.read()
    finally:
        if process.poll() is None:
            process.kill()
