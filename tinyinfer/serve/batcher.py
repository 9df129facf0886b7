"""The dynamic batcher: requests to one model version queue, are grouped into batches, and run.

Running eight requests of one image each as one batch of eight costs far less than eight runs:
the weights are read once, and the GEMMs get wider. Triton's dynamic batcher trades a bounded
wait for that gain, and this one follows its rules (``dynamic_batching`` in ``config.pbtxt``):

* a batch is sent as soon as the queued requests add up to a ``preferred_batch_size`` (the
  largest one they reach), or fill ``max_batch_size``;
* otherwise it is sent when the oldest request has waited ``max_queue_delay_microseconds``;
* only requests whose tensors agree in every dimension but the first join one batch; they are
  concatenated on axis 0 and the outputs split back by each request's batch size;
* the queue holds at most ``default_queue_policy.max_queue_size`` requests: one more is rejected
  at once (:class:`~tinyinfer.errors.QueueFullError`, HTTP 503) instead of growing everyone's
  latency without limit; a request that waits past its timeout fails with
  :class:`~tinyinfer.errors.RequestTimeoutError`.

A batch forms only when one of the version's ``instance_group.count`` instances (sessions) is
idle, so while every instance is busy requests accumulate into bigger batches. Each instance
runs its batch in a thread of its own, and the event loop keeps taking requests meanwhile.
Two instances compute at the same time where their code releases Python's GIL: NumPy's BLAS
calls and large ufuncs do, and so does a Numba kernel compiled with ``parallel=True`` (its
parallel launch drops the GIL) or ``nogil=True``; the Python loop over a plan's nodes holds it,
briefly, between kernels. Without ``dynamic_batching`` every request runs alone, still through
the same queue and instances.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import time
from collections import deque
from typing import Any

import numba
import numpy as np

from ..errors import (InvalidFeedError, InvalidRequestError, ModelUnavailableError, QueueFullError,
                      RequestTimeoutError, ServeError, TinyInferError)


@dataclasses.dataclass(frozen=True)
class BatchPolicy:
    """What a version's config says about batching, in seconds and counts."""

    max_batch_size: int = 0  # 0: the model's tensors have no batch dimension
    dynamic: bool = False
    preferred_sizes: tuple[int, ...] = ()
    max_queue_delay_s: float = 0.0
    max_queue_size: int = 0  # 0: unbounded
    timeout_s: float | None = None
    allow_timeout_override: bool = False

    @classmethod
    def from_config(cls, config) -> "BatchPolicy":
        """The policy of a ``model_config_pb2.ModelConfig``."""
        if not config.HasField("dynamic_batching"):
            return cls(max_batch_size=config.max_batch_size)
        batching = config.dynamic_batching
        queue = batching.default_queue_policy
        return cls(
            max_batch_size=config.max_batch_size,
            dynamic=config.max_batch_size > 0,
            preferred_sizes=tuple(sorted(batching.preferred_batch_size)) or (config.max_batch_size,),
            max_queue_delay_s=batching.max_queue_delay_microseconds / 1e6,
            max_queue_size=queue.max_queue_size,
            timeout_s=queue.default_timeout_microseconds / 1e6 if queue.default_timeout_microseconds else None,
            allow_timeout_override=queue.allow_timeout_override,
        )


@dataclasses.dataclass
class Duration:
    """A count and the nanoseconds it took, as Triton's statistics report each stage."""

    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns

    def as_dict(self) -> dict:
        return {"count": self.count, "ns": self.ns}


@dataclasses.dataclass
class Statistics:
    """One version's counters in the schema of Triton's statistics extension.

    Per request: ``success``/``fail`` (time inside the server), ``queue`` and the three compute
    stages (each request of a batch is charged the batch's time). Per execution: ``batch_stats``,
    keyed by batch size. ``inference_count`` counts inferences (a request of batch 4 counts 4),
    ``execution_count`` the batches run.
    """

    success: Duration = dataclasses.field(default_factory=Duration)
    fail: Duration = dataclasses.field(default_factory=Duration)
    queue: Duration = dataclasses.field(default_factory=Duration)
    compute_input: Duration = dataclasses.field(default_factory=Duration)
    compute_infer: Duration = dataclasses.field(default_factory=Duration)
    compute_output: Duration = dataclasses.field(default_factory=Duration)
    batch_stats: dict[int, tuple[Duration, Duration, Duration]] = dataclasses.field(default_factory=dict)
    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0

    def as_dict(self, name: str, version: int) -> dict:
        stages = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")
        inference = {stage: getattr(self, stage).as_dict() for stage in stages}
        inference["cache_hit"] = inference["cache_miss"] = Duration().as_dict()
        batches = [{"batch_size": size, "compute_input": i.as_dict(), "compute_infer": c.as_dict(),
                    "compute_output": o.as_dict()} for size, (i, c, o) in sorted(self.batch_stats.items())]
        return {"name": name, "version": str(version), "last_inference": self.last_inference_ms,
                "inference_count": self.inference_count, "execution_count": self.execution_count,
                "inference_stats": inference, "batch_stats": batches}


@dataclasses.dataclass
class Timing:
    """Where one request's time went, for the metrics."""

    queue_s: float
    compute_s: float
    batch_size: int


@dataclasses.dataclass(eq=False)
class _Request:
    feeds: dict[str, np.ndarray]
    batch_size: int
    signature: tuple  # dtypes and every dim but the first: requests that may share a batch
    future: asyncio.Future
    arrival_ns: int = dataclasses.field(default_factory=time.perf_counter_ns)


class Batcher:
    """Queue, batch and run the requests of one model version on its instances (sessions).

    ``observer`` (the server's metrics), if given, hears of every batch run
    (``batch_executed(name, size)``) and reads the queue depth (``watch_queue``).
    ``close()`` stops new requests, runs the queued ones and waits for all.
    """

    def __init__(self, sessions: list, policy: BatchPolicy, *, name: str = "", observer: Any = None):
        self.sessions = sessions
        self.policy = policy
        self.name = name
        self.observer = observer
        self.stats = Statistics()
        self.output_names = [arg.name for arg in sessions[0].get_outputs()]
        self._pending: deque[_Request] = deque()
        self._arrived = asyncio.Event()
        self._closing = False
        self._idle: asyncio.Queue = asyncio.Queue()
        for session in sessions:
            self._idle.put_nowait(session)
        self._running: set[asyncio.Task] = set()
        self._executor = concurrent.futures.ThreadPoolExecutor(len(sessions), thread_name_prefix=f"instance-{name}")
        self._scheduler = asyncio.get_running_loop().create_task(self._schedule())
        if observer is not None:
            observer.watch_queue(name, lambda: len(self._pending))

    @property
    def queue_depth(self) -> int:
        """Requests waiting for a batch (not those running)."""
        return len(self._pending)

    async def submit(self, feeds: dict[str, np.ndarray], timeout_s: float | None = None) -> tuple[dict, Timing]:
        """Queue a request and wait for its outputs (every output of the model, by name)."""
        if self._closing:
            raise ModelUnavailableError(f"model {self.name} is unloading and takes no new requests")
        if self.policy.max_queue_size and len(self._pending) >= self.policy.max_queue_size:
            raise QueueFullError(f"model {self.name}: the queue is full ({self.policy.max_queue_size} requests "
                                 "waiting, default_queue_policy.max_queue_size); retry later")
        if timeout_s is None or not self.policy.allow_timeout_override:
            timeout_s = self.policy.timeout_s
        request = _Request(feeds, _batch_size(feeds, self.policy), _signature(feeds, self.policy),
                           asyncio.get_running_loop().create_future())
        self._pending.append(request)
        self._arrived.set()
        try:
            return await asyncio.wait_for(asyncio.shield(request.future), timeout_s)
        except TimeoutError:
            if request in self._pending:  # still queued: give up on it; a running request finishes
                self._pending.remove(request)
                raise RequestTimeoutError(f"model {self.name}: the request waited in the queue longer than its "
                                          f"timeout of {timeout_s * 1e3:.1f} ms") from None
            return await request.future
        except asyncio.CancelledError:  # the client went away: do not compute for nobody
            if request in self._pending:
                self._pending.remove(request)
            raise

    async def close(self) -> None:
        """Refuse new requests, run every queued one, and wait until all have finished."""
        self._closing = True
        self._arrived.set()
        await self._scheduler
        while self._running:
            await asyncio.gather(*list(self._running))
        self._executor.shutdown(wait=False)
        if self.observer is not None:
            self.observer.forget_queue(self.name)

    # ------------------------------------------------------------------ scheduling
    async def _schedule(self) -> None:
        while True:
            session = await self._idle.get()
            batch = await self._next_batch()
            if batch is None:
                return
            task = asyncio.get_running_loop().create_task(self._execute(session, batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _next_batch(self) -> list[_Request] | None:
        """Wait until the queue holds a batch worth sending (see the module docstring); pop it."""
        while True:
            wait_s = None
            if self._pending:
                batch, ready = self._candidates()
                wait_s = self._pending[0].arrival_ns / 1e9 + self.policy.max_queue_delay_s - time.perf_counter()
                if ready or self._closing or wait_s <= 0:
                    for request in batch:
                        self._pending.remove(request)
                    return batch
            elif self._closing:
                return None
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), wait_s)
            except TimeoutError:
                pass

    def _candidates(self) -> tuple[list[_Request], bool]:
        """The batch the oldest request heads, and whether it is worth sending now."""
        first = self._pending[0]
        if not self.policy.dynamic:
            return [first], True
        batch, totals, left_out = [], [], False
        for request in self._pending:
            if request.signature != first.signature:
                continue
            total = (totals[-1] if totals else 0) + request.batch_size
            if total > self.policy.max_batch_size:
                left_out = True
                continue
            batch.append(request)
            totals.append(total)
        if totals[-1] == self.policy.max_batch_size or left_out:
            return batch, True
        preferred = [i for i, total in enumerate(totals) if total in self.policy.preferred_sizes]
        if preferred:
            return batch[:preferred[-1] + 1], True
        return batch, False

    async def _execute(self, session, batch: list[_Request]) -> None:
        start_ns = time.perf_counter_ns()
        try:
            outputs, stages = await asyncio.get_running_loop().run_in_executor(
                self._executor, _run_batch, session, [r.feeds for r in batch], self.output_names)
        except Exception as exc:  # the batch failed: every request in it hears why
            error = _serve_error(exc, self.name)
            for request in batch:
                if not request.future.done():
                    request.future.set_exception(error)
            return
        finally:
            self._idle.put_nowait(session)
        self._record(batch, start_ns, stages)
        compute_s = sum(stages) / 1e9
        for request, result in zip(batch, outputs):
            timing = Timing((start_ns - request.arrival_ns) / 1e9, compute_s, sum(r.batch_size for r in batch))
            if not request.future.done():
                request.future.set_result((result, timing))

    def _record(self, batch: list[_Request], start_ns: int, stages: tuple[int, int, int]) -> None:
        stats = self.stats
        size = sum(r.batch_size for r in batch)
        per_batch = stats.batch_stats.setdefault(size, (Duration(), Duration(), Duration()))
        for duration, stage_ns in zip(per_batch, stages):
            duration.add(stage_ns)
        for request in batch:
            stats.queue.add(start_ns - request.arrival_ns)
            for duration, stage_ns in zip((stats.compute_input, stats.compute_infer, stats.compute_output), stages):
                duration.add(stage_ns)
        stats.inference_count += size
        stats.execution_count += 1
        stats.last_inference_ms = int(time.time() * 1e3)
        if self.observer is not None:
            self.observer.batch_executed(self.name, size)


def _run_batch(session, feeds_list: list[dict], output_names: list[str]):
    """In an instance's thread: concatenate, run, split. Returns outputs per request and stage times (ns)."""
    _pin_numba_threads(session)
    t0 = time.perf_counter_ns()
    if len(feeds_list) == 1:
        feeds = feeds_list[0]
    else:
        feeds = {name: np.concatenate([f[name] for f in feeds_list]) for name in feeds_list[0]}
    t1 = time.perf_counter_ns()
    results = session.run(output_names, feeds)
    t2 = time.perf_counter_ns()
    if len(feeds_list) == 1:
        per_request = [dict(zip(output_names, results))]
    else:
        ends = np.cumsum([next(iter(f.values())).shape[0] for f in feeds_list])[:-1]
        pieces = [np.split(result, ends) for result in results]
        per_request = [{name: piece[i] for name, piece in zip(output_names, pieces)} for i in range(len(feeds_list))]
    t3 = time.perf_counter_ns()
    return per_request, (t1 - t0, t2 - t1, t3 - t2)


def _pin_numba_threads(session) -> None:
    """Give a Numba session its ``threads`` in this thread too: Numba's thread count is per calling thread,
    and instances that each spread over every core would only take turns."""
    if getattr(session, "backend", "") == "numba" and getattr(session, "threads", 0):
        numba.set_num_threads(min(session.threads, numba.config.NUMBA_NUM_THREADS))


def _batch_size(feeds: dict[str, np.ndarray], policy: BatchPolicy) -> int:
    if policy.max_batch_size == 0:
        return 1
    return next(iter(feeds.values())).shape[0]


def _signature(feeds: dict[str, np.ndarray], policy: BatchPolicy) -> tuple:
    skip = 1 if policy.max_batch_size > 0 else 0
    return tuple((name, a.dtype.str, a.shape[skip:]) for name, a in sorted(feeds.items()))


def _serve_error(exc: Exception, name: str) -> ServeError:
    if isinstance(exc, ServeError):
        return exc
    if isinstance(exc, InvalidFeedError):
        return InvalidRequestError(f"model {name}: {exc}")
    kind = "" if isinstance(exc, TinyInferError) else f"{type(exc).__name__}: "
    return ServeError(f"model {name} failed to run the batch: {kind}{exc}")
