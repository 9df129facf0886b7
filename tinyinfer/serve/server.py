"""The model server process: one event loop running the HTTP server, the gRPC server and the batchers.

:class:`ModelServer` wires the pieces: a :class:`~tinyinfer.serve.repository.ModelRepository`
under a :class:`~tinyinfer.serve.core.ServerCore`, the Starlette app on uvicorn, the
``grpc.aio`` service, and the Prometheus endpoint (which prometheus-client serves from a
thread of its own). Ports given as 0 are picked by the system; the chosen ones are on the
object after :meth:`ModelServer.start`.

Stopping is graceful, as an orchestrator's SIGTERM expects: both front ends stop accepting
connections and wait for the requests in flight, then every batcher runs what it still holds
and the models unload. No request that was accepted is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from pathlib import Path

import uvicorn

from ..errors import ServeError
from .core import ServerCore
from .grpc_server import build_server
from .http import DEFAULT_MAX_BODY_BYTES, build_app
from .metrics import ServerMetrics
from .repository import ModelRepository

#: Seconds the front ends wait for requests in flight when stopping.
DRAIN_TIMEOUT_S = 30.0


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: the ModelServer stops all front ends together."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


class ModelServer:
    """Serve a model repository over HTTP, gRPC and Prometheus (``None`` as a port: that front end off)."""

    def __init__(self, repository: str | Path, *, host: str = "127.0.0.1", http_port: int | None = 8000,
                 grpc_port: int | None = 8001, metrics_port: int | None = 8002, model_control_mode: str = "none",
                 load_models: tuple[str, ...] = (), poll_interval_s: float = 15.0,
                 max_body_bytes: int = DEFAULT_MAX_BODY_BYTES):
        self.metrics = ServerMetrics()
        self.core = ServerCore(ModelRepository(repository, model_control_mode, observer=self.metrics),
                               self.metrics, poll_interval_s=poll_interval_s)
        self.host = host
        self.http_port, self.grpc_port, self.metrics_port = http_port, grpc_port, metrics_port
        self.load_models = load_models
        self.max_body_bytes = max_body_bytes
        self._uvicorn: _Uvicorn | None = None
        self._uvicorn_task: asyncio.Task | None = None
        self._grpc = None
        self._stop_requested = asyncio.Event()

    async def start(self) -> None:
        """Load the models, then open the metrics, gRPC and HTTP ports (and close them all if one fails)."""
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        await self.core.start(self.load_models)
        if self.metrics_port is not None:
            with _listening("metrics", self.host, self.metrics_port):
                self.metrics_port = self.metrics.start(self.metrics_port, self.host)
        if self.grpc_port is not None:
            with _listening("gRPC", self.host, self.grpc_port):
                self._grpc, self.grpc_port = build_server(self.core, f"{self.host}:{self.grpc_port}",
                                                          self.max_body_bytes)
            await self._grpc.start()
        if self.http_port is not None:
            sock = _http_socket(self.host, self.http_port)
            self.http_port = sock.getsockname()[1]
            config = uvicorn.Config(build_app(self.core, self.max_body_bytes), log_level="warning", lifespan="off",
                                    access_log=False, timeout_graceful_shutdown=DRAIN_TIMEOUT_S)
            self._uvicorn = _Uvicorn(config)
            self._uvicorn_task = asyncio.get_running_loop().create_task(self._uvicorn.serve(sockets=[sock]))
            while not self._uvicorn.started and not self._uvicorn_task.done():
                await asyncio.sleep(0.01)

    def request_stop(self) -> None:
        """Ask :meth:`serve_until_stopped` to stop (safe from a signal handler on the loop)."""
        self._stop_requested.set()

    async def serve_until_stopped(self) -> None:
        await self._stop_requested.wait()
        await self.stop()

    async def stop(self) -> None:
        """Stop accepting, finish every request in flight, unload the models, close the ports."""
        self.core.accepting = False
        waits = []
        if self._uvicorn is not None:
            self._uvicorn.should_exit = True
            waits.append(self._uvicorn_task)
        if self._grpc is not None:
            waits.append(self._grpc.stop(DRAIN_TIMEOUT_S))
        await asyncio.gather(*waits)
        await self.core.stop()
        self.metrics.stop()


@contextlib.contextmanager
def _listening(what: str, host: str, port: int):
    """Turn a failure to open a port (taken, not allowed) into an error that names it."""
    try:
        yield
    except (OSError, RuntimeError) as exc:
        raise ServeError(f"cannot listen for {what} on {host}:{port}: {exc}") from None


def _http_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` for uvicorn to listen on.

    IPPROTO_TCP is spelled out because asyncio sets TCP_NODELAY only on sockets that say so;
    without it Nagle's algorithm holds each response's body until the client's delayed ACK,
    about 40 ms later.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        with _listening("HTTP", host, port):
            sock.bind((host, port))
    except ServeError:
        sock.close()
        raise
    return sock
