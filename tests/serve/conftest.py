"""Model repositories built in tmp folders, and a model server running in a background thread.

The tests talk to the server only through NVIDIA's ``tritonclient`` (HTTP and gRPC) or plain
HTTP, as a user would; the server runs on loopback with ports picked by the system.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from serve_support import DENSE_CONFIG, MAX_BODY_BYTES, ServerThread, dense_model, write_model


@pytest.fixture
def start_server():
    """``start_server(repo, **options)`` -> a running ServerThread, stopped after the test."""
    servers = []

    def start(repo: Path, **options) -> ServerThread:
        servers.append(ServerThread(repo, **options))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A server over a repository of: ``dense`` (versions 1 and 2, both served), ``auto`` (no
    config.pbtxt: completed from the model) and ``broken`` (a file that is not a model)."""
    repo = tmp_path_factory.mktemp("repo")
    write_model(repo, "dense", 1, dense_model(seed=1), DENSE_CONFIG)
    write_model(repo, "dense", 2, dense_model(seed=2))
    write_model(repo, "auto", 1, dense_model(seed=3))
    write_model(repo, "broken", 1, b"not an onnx model")
    server = ServerThread(repo, max_body_bytes=MAX_BODY_BYTES)
    server.repo = repo
    yield server
    server.stop()
