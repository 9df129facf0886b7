"""Scale-out on one machine: several ``tinyinfer serve`` replicas behind nginx.

One server process is one Python interpreter: its batches run on as many cores as its kernels
use, and when it dies every request in it dies too. The standard answer is not a scheduler of
our own but a load balancer in front of identical replicas:

* **nginx** proxies HTTP (``proxy_pass``) and gRPC (``grpc_pass``, over HTTP/2) to an
  ``upstream`` of replicas, spreading requests by least connections.
* **Retries**: when a replica refuses a connection, resets it mid-request or answers 502/503/504,
  nginx sends the same request to the next replica (``proxy_next_upstream`` ...
  ``non_idempotent``: an inference is safe to repeat, it changes no state), so a replica that
  dies under load loses no request.
* **Health checks**: nginx's open-source build only checks passively (``max_fails`` within
  ``fail_timeout`` takes a server out for a while). :class:`Cluster` adds the active half: a
  thread polls each replica's ``/v2/health/ready`` and, when one changes, marks it ``down`` in
  the config and reloads nginx (``nginx -s reload`` swaps workers without dropping connections).

:func:`nginx_config` writes the configuration; :class:`Cluster` runs replicas and nginx as child
processes on loopback (``tinyinfer cluster REPO --replicas 2``). Beyond one machine the same
shape is what Kubernetes and KServe provide (a Deployment of replicas behind a Service and an
ingress); ``deploy/`` holds the Dockerfile and KServe manifests for that.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

from ..errors import TinyInferError


class ClusterError(TinyInferError):
    """The cluster cannot start: nginx missing, a replica that never becomes ready, a port in use."""


@dataclasses.dataclass
class Replica:
    """One ``tinyinfer serve`` process and its three ports."""

    index: int
    http_port: int
    grpc_port: int
    metrics_port: int
    process: subprocess.Popen | None = None
    ready: bool = False

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


def nginx_config(replicas: list[Replica], *, http_port: int, grpc_port: int, prefix: str,
                 down: set[int] = frozenset(), max_body_mib: float = 64.0, host: str = "127.0.0.1") -> str:
    """nginx.conf for these replicas: an HTTP and a gRPC upstream, retries on the next replica,
    passive health checks, and every file nginx writes kept under ``prefix``."""
    def servers(port_of) -> str:
        return "\n".join(f"        server {host}:{port_of(r)} max_fails=1 fail_timeout=2s{' down' if r.index in down else ''};"
                         for r in replicas)

    user = "user root root;\n" if hasattr(os, "geteuid") and os.geteuid() == 0 else ""
    return f"""# written by tinyinfer.serve.cluster: {len(replicas)} replica(s) of tinyinfer serve
{user}worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 1024; }}

http {{
    access_log off;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    client_max_body_size {max_body_mib:g}m;

    upstream tinyinfer_http {{
        least_conn;
{servers(lambda r: r.http_port)}
        keepalive 32;
    }}
    upstream tinyinfer_grpc {{
        least_conn;
{servers(lambda r: r.grpc_port)}
    }}

    server {{
        listen {host}:{http_port};
        location / {{
            proxy_pass http://tinyinfer_http;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_connect_timeout 1s;
            proxy_read_timeout 120s;
            # a refused or reset connection, or an overloaded replica: the next one serves it
            proxy_next_upstream error timeout http_502 http_503 http_504 non_idempotent;
            proxy_next_upstream_tries {len(replicas) + 1};
        }}
    }}
    server {{
        listen {host}:{grpc_port} http2;
        location / {{
            grpc_pass grpc://tinyinfer_grpc;
            grpc_connect_timeout 1s;
            grpc_read_timeout 120s;
            grpc_next_upstream error timeout http_502 http_503 http_504 non_idempotent;
            grpc_next_upstream_tries {len(replicas) + 1};
        }}
    }}
}}
"""


class Cluster:
    """``replicas`` ``tinyinfer serve`` processes on free loopback ports behind one nginx on
    ``http_port`` / ``grpc_port``; a thread re-checks each replica every ``check_interval_s``.

        with Cluster("repo", replicas=2, http_port=8000, grpc_port=8001) as cluster:
            ...  # clients talk to :8000 / :8001 as to one server
    """

    def __init__(self, repository: str | os.PathLike, *, replicas: int = 2, http_port: int = 8000,
                 grpc_port: int = 8001, host: str = "127.0.0.1", serve_args: tuple[str, ...] = (),
                 check_interval_s: float = 0.5, startup_timeout_s: float = 120.0, nginx: str | None = None,
                 workdir: str | os.PathLike | None = None):
        if replicas < 1:
            raise ClusterError(f"a cluster needs at least one replica, got {replicas}")
        self.nginx = nginx or shutil.which("nginx") or _sbin("nginx")
        if self.nginx is None:
            raise ClusterError("nginx is not installed: `make nginx` installs it (apt-get install nginx-light)")
        self.repository = os.fspath(repository)
        self.host, self.http_port, self.grpc_port = host, http_port, grpc_port
        self.serve_args = tuple(serve_args)
        self.check_interval_s, self.startup_timeout_s = check_interval_s, startup_timeout_s
        self._own_workdir = workdir is None
        self.workdir = tempfile.mkdtemp(prefix="tinyinfer-cluster-") if workdir is None else os.fspath(workdir)
        self.replicas = [Replica(i, *free_ports(3)) for i in range(replicas)]
        self.down: set[int] = set()
        self.events: list[str] = []  # what the health checker saw, in order
        self._nginx: subprocess.Popen | None = None
        self._stop = threading.Event()
        self._checker: threading.Thread | None = None
        self._lock = threading.Lock()

    # -------------------------------------------------------------- life cycle
    def start(self) -> "Cluster":
        for replica in self.replicas:
            replica.process = self._spawn(replica)
        deadline = time.monotonic() + self.startup_timeout_s
        for replica in self.replicas:
            while not self._probe(replica):
                if not replica.alive or time.monotonic() > deadline:
                    self.stop()
                    raise ClusterError(f"replica {replica.index} (HTTP port {replica.http_port}) did not become "
                                       f"ready; its log: {self._log_path(replica)}")
                time.sleep(0.1)
            replica.ready = True
        for folder in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            os.makedirs(os.path.join(self.workdir, folder), exist_ok=True)
        self._write_config()
        self._nginx = subprocess.Popen([self.nginx, "-p", self.workdir, "-c", self._config_path(), "-g", "daemon off;"],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        while not _port_open(self.host, self.http_port):
            if self._nginx.poll() is not None or time.monotonic() > deadline:
                error = self._nginx.stderr.read().decode(errors="replace") if self._nginx.poll() is not None else ""
                self.stop()
                raise ClusterError(f"nginx did not start on {self.host}:{self.http_port}: {error.strip()}")
            time.sleep(0.05)
        self._checker = threading.Thread(target=self._check_loop, name="tinyinfer-cluster-health", daemon=True)
        self._checker.start()
        return self

    def stop(self) -> None:
        """Stop nginx and drain every replica (SIGTERM: each finishes its requests in flight)."""
        self._stop.set()
        if self._checker is not None:
            self._checker.join(timeout=5)
        if self._nginx is not None and self._nginx.poll() is None:
            self._nginx.send_signal(signal.SIGQUIT)  # graceful: finish open requests
            _wait(self._nginx, 10)
        for replica in self.replicas:
            if replica.alive:
                replica.process.send_signal(signal.SIGTERM)
        for replica in self.replicas:
            if replica.process is not None:
                _wait(replica.process, 30)
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "Cluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def state(self) -> dict:
        """Which replicas are up, and what the health checker has seen."""
        with self._lock:
            return {"replicas": [{"index": r.index, "http_port": r.http_port, "grpc_port": r.grpc_port,
                                  "alive": r.alive, "ready": r.ready, "in_rotation": r.index not in self.down}
                                 for r in self.replicas],
                    "events": list(self.events)}

    # -------------------------------------------------------------- health checks
    def _check_loop(self) -> None:
        while not self._stop.wait(self.check_interval_s):
            self.check()

    def check(self) -> bool:
        """Probe every replica once; on any change rewrite the config and reload nginx. Returns
        whether anything changed."""
        changed = False
        with self._lock:
            for replica in self.replicas:
                ready = replica.alive and self._probe(replica)
                if ready != replica.ready:
                    replica.ready = ready
                    changed = True
                    self.events.append(f"replica {replica.index} {'ready' if ready else 'down'}")
            down = {r.index for r in self.replicas if not r.ready}
            if changed and down != self.down:
                if len(down) == len(self.replicas):  # keep nginx's passive checks when all look down
                    down = set()
                self.down = down
                self._write_config()
                subprocess.run([self.nginx, "-p", self.workdir, "-c", self._config_path(), "-s", "reload"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
                self.events.append(f"nginx reloaded: {len(self.replicas) - len(self.down)} replica(s) in rotation")
        return changed

    def _probe(self, replica: Replica) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.host}:{replica.http_port}/v2/health/ready", timeout=1) as reply:
                return reply.status == 200
        except OSError:
            return False

    # -------------------------------------------------------------- helpers
    def _spawn(self, replica: Replica) -> subprocess.Popen:
        command = [sys.executable, "-m", "tinyinfer", "serve", self.repository, "--host", self.host,
                   "--http-port", str(replica.http_port), "--grpc-port", str(replica.grpc_port),
                   "--metrics-port", str(replica.metrics_port), *self.serve_args]
        log = open(self._log_path(replica), "wb")
        try:
            return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        finally:
            log.close()  # the child holds its own descriptor

    def _write_config(self) -> None:
        text = nginx_config(self.replicas, http_port=self.http_port, grpc_port=self.grpc_port, prefix=self.workdir,
                            down=self.down, host=self.host)
        with open(self._config_path(), "w") as f:
            f.write(text)

    def _config_path(self) -> str:
        return os.path.join(self.workdir, "nginx.conf")

    def _log_path(self, replica: Replica) -> str:
        return os.path.join(self.workdir, f"replica{replica.index}.log")


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports free right now (bound to port 0, then released)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def _sbin(name: str) -> str | None:
    path = os.path.join("/usr/sbin", name)
    return path if os.access(path, os.X_OK) else None


def _wait(process: subprocess.Popen, seconds: float) -> None:
    try:
        process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
