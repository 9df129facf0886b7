"""The server core: everything a request means, whichever protocol carried it.

The HTTP front end (:mod:`tinyinfer.serve.http`) and the gRPC one
(:mod:`tinyinfer.serve.grpc_server`) only translate between bytes on the wire and the calls
here: health, metadata, config, inference, statistics and the repository API of the Open
Inference Protocol v2 and Triton's extensions. Keeping the meaning in one place is what makes
both protocols answer alike, down to the error: a refused request raises a
:class:`~tinyinfer.errors.ServeError` subclass that carries its HTTP status and gRPC code.

An inference request that names no version goes where the model's
:class:`~tinyinfer.serve.routing.CanaryRouter` sends it (the latest ready version, or a
weighted stable/canary split). The version is picked and the request queued without an
``await`` in between, so a version that starts unloading afterwards still runs it: unloading
waits for its queue to empty (see :meth:`~tinyinfer.serve.batcher.Batcher.close`). Every
routed request's outcome and time in the server go back to the router
(:meth:`~tinyinfer.serve.routing.CanaryRouter.record`), which is how a bad canary is caught.

The canary itself is controlled here too (:meth:`ServerCore.set_canary`, ``promote``,
``rollback``, ``canary_state``): tinyinfer's own extension of the protocol, which neither
KServe nor Triton defines. Only the HTTP front end offers it: the gRPC service definitions
Triton ships have no call that could carry it, and the control plane needs no second wire.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import numbers
import time

import numpy as np

from .. import __version__
from ..errors import (InvalidRequestError, ModelNotFoundError, ModelUnavailableError, RepositoryError, ServeError)
from .repository import Model, ModelRepository, ModelVersion, config_datatype, datatype_dtype, dtype_datatype

log = logging.getLogger("tinyinfer.serve")

#: The protocol extensions this server implements (reported in the server metadata).
EXTENSIONS = ["classification", "model_repository", "schedule_policy", "model_configuration", "statistics",
              "binary_tensor_data"]


@dataclasses.dataclass
class InferRequest:
    """An inference request, decoded: input arrays by name, the outputs wanted (None: all)."""

    inputs: dict[str, np.ndarray]
    outputs: list[str] | None = None
    id: str = ""
    timeout_s: float | None = None


@dataclasses.dataclass
class InferResponse:
    model_name: str
    model_version: str
    id: str
    outputs: list[tuple[str, np.ndarray]]


def tensor_from_bytes(name: str, datatype: str, shape: list[int], raw: bytes) -> np.ndarray:
    """An input sent as raw little-endian bytes (binary tensor extension, gRPC raw contents)."""
    dtype = datatype_dtype(datatype).newbyteorder("<")
    count = _element_count(name, shape)
    if len(raw) != count * dtype.itemsize:
        raise InvalidRequestError(f"input {name!r}: shape {list(shape)} of {datatype} needs "
                                  f"{count * dtype.itemsize} bytes, got {len(raw)}")
    return np.frombuffer(raw, dtype=dtype).astype(dtype.newbyteorder("="), copy=False).reshape(shape)


def tensor_from_list(name: str, datatype: str, shape: list[int], data) -> np.ndarray:
    """An input sent as a (flat or nested) list of numbers, as JSON and typed gRPC contents carry it."""
    dtype = datatype_dtype(datatype)
    count = _element_count(name, shape)
    try:
        array = np.asarray(data, dtype=dtype).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise InvalidRequestError(f"input {name!r}: data is not a list of {datatype} values: {exc}") from None
    if array.size != count:
        raise InvalidRequestError(f"input {name!r}: shape {list(shape)} holds {count} elements, data has {array.size}")
    return array.reshape(shape)


def _element_count(name: str, shape) -> int:
    if any(not isinstance(d, (int, np.integer)) or d < 0 for d in shape):
        raise InvalidRequestError(f"input {name!r}: shape must be a list of non-negative integers, got {shape}")
    return int(np.prod(shape, dtype=np.int64))


class ServerCore:
    """The protocol-independent server over a :class:`~tinyinfer.serve.repository.ModelRepository`.

    ``metrics`` (a :class:`~tinyinfer.serve.metrics.ServerMetrics`) records every request;
    ``poll_interval_s`` is how often mode ``poll`` rescans the repository.
    """

    def __init__(self, repository: ModelRepository, metrics=None, *, poll_interval_s: float = 15.0):
        self.repository = repository
        self.metrics = metrics
        self.poll_interval_s = poll_interval_s
        self.accepting = False
        self._poll_task: asyncio.Task | None = None

    async def start(self, models=()) -> None:
        """Load the repository (as the control mode says); start polling in mode ``poll``."""
        await self.repository.start(models)
        if self.repository.mode == "poll":
            self._poll_task = asyncio.get_running_loop().create_task(self._poll_forever())
        self.accepting = True

    async def stop(self) -> None:
        """Stop polling, then unload every model once its queued and running requests finish."""
        self.accepting = False
        if self._poll_task is not None:
            self._poll_task.cancel()
            await asyncio.gather(self._poll_task, return_exceptions=True)
        await self.repository.close()

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval_s)
            try:
                await self.repository.poll()
            except Exception:  # a bad rescan must not end polling; the next one may succeed
                log.exception("repository poll failed")

    # ------------------------------------------------------------------ health and metadata
    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        return self.accepting

    def server_metadata(self) -> dict:
        return {"name": "tinyinfer", "version": __version__, "extensions": list(EXTENSIONS)}

    def model_ready(self, name: str, version: str = "") -> bool:
        try:
            return self._version(self.repository.model(name), version).ready
        except (ModelNotFoundError, ModelUnavailableError):
            return False

    def model_metadata(self, name: str, version: str = "") -> dict:
        model = self.repository.model(name)
        chosen = [self._version(model, version).version] if version else model.ready_versions()
        versions = [str(v) for v in chosen]
        batch = [-1] if model.config.max_batch_size > 0 else []
        tensors = {kind: [{"name": t.name, "datatype": config_datatype(t.data_type), "shape": batch + list(t.dims)}
                          for t in getattr(model.config, kind)] for kind in ("input", "output")}
        return {"name": name, "versions": versions, "platform": "tinyinfer", "inputs": tensors["input"],
                "outputs": tensors["output"]}

    def model_config(self, name: str, version: str = ""):
        """The model's ``model_config_pb2.ModelConfig``, completed from the model where the file was silent."""
        model = self.repository.model(name)
        if version:
            self._version(model, version)
        return model.config

    # ------------------------------------------------------------------ inference
    async def infer(self, name: str, version: str, request: InferRequest) -> InferResponse:
        """Check the request against the model's config, queue it on the chosen version, await its outputs."""
        start = time.perf_counter()
        model = self.repository.model(name)
        target = self._route(model, version, request.id)
        timing = None
        try:
            feeds = _check_inputs(model, request)
            wanted = _check_outputs(model, request)
            outputs, timing = await target.batcher.submit(feeds, request.timeout_s)
        except ServeError as exc:
            self._finish(model, target, False, start, timing, type(exc).__name__)
            raise
        self._finish(model, target, True, start, timing)
        return InferResponse(name, str(target.version), request.id, [(out, outputs[out]) for out in wanted])

    def _route(self, model: Model, version: str, request_id: str) -> ModelVersion:
        if version:
            target = self._version(model, version)
        elif model.router is None:
            raise _no_ready_version(model)
        else:
            routed = model.router.route(request_id or None)
            target = model.versions.get(routed)
            if target is None or not target.ready:  # the router's choice just went away: use the latest
                target = self._version(model, str(model.ready_versions()[-1]) if model.ready_versions() else "")
            if self.metrics is not None:
                self.metrics.route(model.name, target.version)
        return _check_ready(target)

    def _version(self, model: Model, version: str) -> ModelVersion:
        if not version:
            ready = model.ready_versions()
            if not ready:
                raise _no_ready_version(model)
            return model.versions[ready[-1]]
        if not version.isdigit():
            raise ModelNotFoundError(f"model {model.name!r} has no version {version!r}: versions are positive integers")
        return self.repository.version(model.name, int(version))

    def _finish(self, model: Model, target: ModelVersion, ok: bool, start: float, timing, reason: str = "") -> None:
        elapsed = time.perf_counter() - start
        stats = target.batcher.stats
        (stats.success if ok else stats.fail).add(int(elapsed * 1e9))
        if model.router is not None:
            model.router.record(target.version, ok, elapsed)
        if self.metrics is not None:
            self.metrics.request_done(model.name, target.version, ok, elapsed, timing, reason)

    # ------------------------------------------------------------------ statistics and repository
    def statistics(self, name: str = "", version: str = "") -> dict:
        """Triton's statistics extension: ``{"model_stats": [...]}`` for one model (and version) or all."""
        if not name:
            chosen = [(m.name, mv) for m in self.repository.models.values() for mv in m.versions.values()]
        elif version:
            chosen = [(name, self._version(self.repository.model(name), version))]
        else:
            chosen = [(name, mv) for mv in self.repository.model(name).versions.values()]
        return {"model_stats": [mv.batcher.stats.as_dict(model, mv.version)
                                for model, mv in sorted(chosen, key=lambda pair: (pair[0], pair[1].version))
                                if mv.batcher is not None]}

    def repository_index(self, ready_only: bool = False) -> list[dict]:
        rows = self.repository.index()
        return [row for row in rows if row["state"] == "READY"] if ready_only else rows

    async def load(self, name: str) -> None:
        """Load or reload a model; an error says why if it ends with no ready version."""
        self._check_explicit("load")
        model = await self.repository.load(name)
        if name in self.repository.failures:
            raise RepositoryError(f"model {name!r} failed to load: {self.repository.failures[name]}")
        if not model.ready_versions():
            raise _no_ready_version(model)

    async def unload(self, name: str) -> None:
        self._check_explicit("unload")
        await self.repository.unload(name)

    # ------------------------------------------------------------------ canary (tinyinfer's extension)
    def canary_state(self, name: str) -> dict:
        """The model's router: stable and canary versions, weight, counts per version, the rollback
        window (requests, errors, p99 in ms per version), the last rollback's reason and the policy."""
        router = self._router(self.repository.model(name))
        state = router.state()
        for version, window in state["window"].items():
            p99 = router.p99(version)
            window["p99_ms"] = None if math.isnan(p99) else p99 * 1e3
        state["policy"] = dataclasses.asdict(router.policy)
        return state

    def set_canary(self, name: str, version: int, weight: float, stable: int | None = None) -> dict:
        """Send ``weight`` of the model's version-less requests to ``version`` (and the rest to ``stable``,
        by default the current stable version). Both must be ready."""
        model = self.repository.model(name)
        router = self._router(model)
        if isinstance(weight, bool) or not isinstance(weight, numbers.Real):
            raise InvalidRequestError(f"a canary weight is a number strictly between 0 and 1, got {weight!r}")
        for chosen in (version, stable):
            if chosen is not None:
                _check_ready(self.repository.version(name, chosen))
        router.set_canary(version, float(weight), stable)
        return self.canary_state(name)

    def promote(self, name: str) -> dict:
        """The canary becomes the model's stable version."""
        self._router(self.repository.model(name)).promote()
        return self.canary_state(name)

    def rollback(self, name: str) -> dict:
        """Drop the canary: the stable version takes every version-less request again."""
        self._router(self.repository.model(name)).rollback("rolled back through the API")
        return self.canary_state(name)

    def _router(self, model: Model):
        if model.router is None:
            raise _no_ready_version(model)
        return model.router

    def _check_explicit(self, action: str) -> None:
        if self.repository.mode != "explicit":
            raise RepositoryError(f"cannot {action} models through the API in model control mode "
                                  f"{self.repository.mode!r}; start the server with --model-control-mode explicit")


def _check_ready(target: ModelVersion) -> ModelVersion:
    if not target.ready:
        raise ModelUnavailableError(f"model {target.model!r} version {target.version} is {target.state}"
                                    + (f": {target.reason}" if target.reason else ""))
    return target


def _no_ready_version(model: Model) -> ModelUnavailableError:
    states = "; ".join(f"version {v} is {mv.state}" + (f": {mv.reason}" if mv.reason else "")
                       for v, mv in sorted(model.versions.items()))
    return ModelUnavailableError(f"model {model.name!r} has no ready version ({states or 'no versions on disk'})")


def _check_inputs(model: Model, request: InferRequest) -> dict[str, np.ndarray]:
    """The request's inputs, checked against the config: names, datatypes, shapes, batch size."""
    config = model.config
    declared = {t.name: t for t in config.input}
    missing = sorted(set(declared) - set(request.inputs))
    extra = sorted(set(request.inputs) - set(declared))
    if missing or extra:
        raise InvalidRequestError(f"model {model.name!r} expects inputs {sorted(declared)}; "
                                  f"missing {missing}, unexpected {extra}")
    batching = config.max_batch_size > 0
    batch_sizes = set()
    for name, array in request.inputs.items():
        tensor = declared[name]
        expected_type = config_datatype(tensor.data_type)
        if array.dtype != datatype_dtype(expected_type):
            raise InvalidRequestError(f"model {model.name!r} input {name!r} expects datatype {expected_type}, "
                                      f"got {dtype_datatype(array.dtype)}")
        dims = list(tensor.dims)
        shape = list(array.shape[1:] if batching else array.shape)
        expected = ([-1] if batching else []) + dims
        if array.ndim != len(expected) or any(d != -1 and d != s for d, s in zip(dims, shape)):
            raise InvalidRequestError(f"model {model.name!r} input {name!r} expects shape {expected} (-1: any), "
                                      f"got {list(array.shape)}")
        if batching:
            batch_sizes.add(array.shape[0])
    if batching:
        if len(batch_sizes) > 1:
            raise InvalidRequestError(f"model {model.name!r}: inputs disagree on the batch size: {sorted(batch_sizes)}")
        size = batch_sizes.pop()
        if not 1 <= size <= config.max_batch_size:
            raise InvalidRequestError(f"model {model.name!r}: batch size {size} outside 1..{config.max_batch_size} "
                                      "(max_batch_size)")
    return request.inputs


def _check_outputs(model: Model, request: InferRequest) -> list[str]:
    declared = [t.name for t in model.config.output]
    if request.outputs is None:
        return declared
    unknown = [name for name in request.outputs if name not in declared]
    if unknown:
        raise InvalidRequestError(f"model {model.name!r} has no output(s) {unknown}; its outputs are {declared}")
    return list(request.outputs)
