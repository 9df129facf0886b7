"""``tinyinfer serve``: a zoo network exported and served as a user would, and a graceful SIGTERM drain."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from serve_support import dense_model, onnxruntime_outputs, write_model

from tinyinfer.cli import main


def test_a_zoo_network_exported_and_served_matches_onnxruntime(tmp_path, start_server):
    path = tmp_path / "mobilenet_v2" / "1" / "model.onnx"
    path.parent.mkdir(parents=True)
    assert main(["zoo", "export", "mobilenet_v2", str(path), "--width", "0.35", "--resolution", "32"]) == 0
    server = start_server(tmp_path)
    client = grpcclient.InferenceServerClient(server.grpc_url)
    metadata = client.get_model_metadata("mobilenet_v2", as_json=True)
    assert metadata["inputs"][0]["shape"] == ["-1", "3", "32", "32"]  # auto-completed: a batching model
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    tensor = grpcclient.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    probabilities = client.infer("mobilenet_v2", [tensor]).as_numpy("probabilities")
    # 50-odd float32 layers summed in another order than ONNX Runtime's: 1e-5 on probabilities.
    np.testing.assert_allclose(probabilities, onnxruntime_outputs(path, {"input": x})["probabilities"], atol=1e-5)


def test_serve_explains_a_bad_repository_a_bad_limit_or_a_taken_port(tmp_path, capsys):
    free_ports = ["--http-port", "0", "--grpc-port", "0", "--metrics-port", "0"]
    assert main(["serve", str(tmp_path / "missing"), *free_ports]) == 1
    assert "missing is not a folder" in capsys.readouterr().err
    assert main(["serve", str(tmp_path), "--max-body-mib", "0"]) == 1
    assert "--max-body-mib must be positive" in capsys.readouterr().err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        assert main(["serve", str(tmp_path), *free_ports, "--http-port", port]) == 1
    assert f"cannot listen for HTTP on 127.0.0.1:{port}" in capsys.readouterr().err


SLOW_QUEUE = """
max_batch_size: 8
dynamic_batching { max_queue_delay_microseconds: 1500000 }
"""


def test_sigterm_finishes_the_request_in_flight_and_exits_0(tmp_path):
    write_model(tmp_path, "dense", 1, dense_model(seed=12), SLOW_QUEUE)
    command = [sys.executable, "-m", "tinyinfer", "serve", str(tmp_path), "--http-port", "0", "--grpc-port", "0",
               "--metrics-port", "0"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as process:
        try:
            drain_on_sigterm(process, tmp_path)
        finally:
            if process.poll() is None:
                process.kill()


def drain_on_sigterm(process: subprocess.Popen, repo: Path) -> None:
    """Queue a request, send SIGTERM while it waits, and check it is answered and the server exits 0."""
    banner = ""
    while "serving" not in banner:
        banner = process.stdout.readline()
        assert banner, f"the server exited early: {process.stderr.read()}"
    http_port, metrics_port = re.search(r"HTTP [\d.]+:(\d+), .* metrics http://[\d.]+:(\d+)", banner).groups()
    x = np.ones((1, 4), np.float32)
    tensor = httpclient.InferInput("x", [1, 4], "FP32")
    tensor.set_data_from_numpy(x)
    with ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(httpclient.InferenceServerClient(f"127.0.0.1:{http_port}").infer, "dense", [tensor])
        queued = 'tinyinfer_queue_depth{model="dense",version="1"} 1.0'
        deadline = time.monotonic() + 20
        while queued not in urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics").read().decode():
            assert time.monotonic() < deadline, "the request never reached the queue"
            time.sleep(0.02)
        process.send_signal(signal.SIGTERM)  # while the request waits for its batch
        y = in_flight.result(timeout=30).as_numpy("y")
    np.testing.assert_allclose(y, onnxruntime_outputs(repo / "dense" / "1" / "model.onnx", {"x": x})["y"],
                               rtol=1e-5, atol=1e-6)
    assert process.wait(timeout=30) == 0
    assert "drained and stopped" in process.stdout.read()
