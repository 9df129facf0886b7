"""Prometheus metrics of the model server, on a port of their own.

What an operator watches on a dashboard, per model and version: requests that succeeded and
failed, where their time went (waiting in the queue, computing, in total), how big the batches
the batcher formed were, how many requests are waiting now, how version-less requests were
split between a stable version and a canary (``tinyinfer_routed_requests``), and how many
canaries were rolled back (``tinyinfer_canary_rollbacks``). The names start with
``tinyinfer_``; Prometheus adds ``_total`` to counters and ``_bucket``/``_sum``/``_count`` to
histograms.

Each server owns a private ``CollectorRegistry`` (not prometheus-client's global one), so
several servers can live in one process, as they do in the tests.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

#: Latency buckets in seconds: 100 µs to 10 s, about three per decade.
LATENCY_BUCKETS = (1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServerMetrics:
    """The server's metrics in a private registry; ``start(port)`` serves them at ``/metrics``."""

    def __init__(self):
        self.registry = CollectorRegistry()
        labels = ["model", "version"]
        r = self.registry
        self.success = Counter("tinyinfer_request_success", "Inference requests that succeeded", labels, registry=r)
        self.failure = Counter("tinyinfer_request_failure", "Inference requests that failed", labels + ["reason"],
                               registry=r)
        self.queue_seconds = Histogram("tinyinfer_queue_duration_seconds", "Time a request waited for its batch",
                                       labels, buckets=LATENCY_BUCKETS, registry=r)
        self.compute_seconds = Histogram("tinyinfer_compute_duration_seconds",
                                         "Time the batch carrying a request took to run", labels,
                                         buckets=LATENCY_BUCKETS, registry=r)
        self.request_seconds = Histogram("tinyinfer_request_duration_seconds", "Time a request spent in the server",
                                         labels, buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("tinyinfer_batch_size", "Size of the batches executed", labels,
                                    buckets=BATCH_BUCKETS, registry=r)
        self.queue_depth = Gauge("tinyinfer_queue_depth", "Requests waiting in the queue", labels, registry=r)
        self.routed = Counter("tinyinfer_routed_requests", "Requests that named no version, by the version "
                              "the router chose (the stable/canary split)", labels, registry=r)
        self.rollbacks = Counter("tinyinfer_canary_rollbacks", "Canary versions rolled back, by hand or by the "
                                 "rollback policy", labels, registry=r)
        self._http = None
        self.port: int | None = None

    def start(self, port: int, host: str = "127.0.0.1") -> int:
        """Serve ``/metrics`` on ``host:port`` (0 picks a free port); returns the port."""
        self._http, _ = start_http_server(port, addr=host, registry=self.registry)
        self.port = self._http.server_port
        return self.port

    def stop(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None

    # ------------------------------------------------------------------ events
    def request_done(self, model: str, version: int, ok: bool, total_s: float, timing=None,
                     reason: str = "") -> None:
        """A request finished; ``timing`` (a batcher ``Timing``) when it reached the batcher."""
        labels = (model, str(version))
        if ok:
            self.success.labels(*labels).inc()
        else:
            self.failure.labels(*labels, reason or "error").inc()
        self.request_seconds.labels(*labels).observe(total_s)
        if timing is not None:
            self.queue_seconds.labels(*labels).observe(timing.queue_s)
            self.compute_seconds.labels(*labels).observe(timing.compute_s)

    def batch_executed(self, name: str, size: int) -> None:
        """Called by a batcher (named ``model:version``) for every batch it runs."""
        self.batch_size.labels(*name.rsplit(":", 1)).observe(size)

    def route(self, model: str, version: int) -> None:
        self.routed.labels(model, str(version)).inc()

    def canary_rolled_back(self, model: str, version: int) -> None:
        self.rollbacks.labels(model, str(version)).inc()

    def watch_queue(self, name: str, depth) -> None:
        """Report ``depth()`` as the queue depth of the batcher ``model:version`` at every scrape."""
        self.queue_depth.labels(*name.rsplit(":", 1)).set_function(depth)

    def forget_queue(self, name: str) -> None:
        try:
            self.queue_depth.remove(*name.rsplit(":", 1))
        except KeyError:
            pass
