"""The model repository: Triton's layout on disk, Triton's ``config.pbtxt`` schema, loading and unloading.

A repository is a folder with one folder per model and one numbered folder per version::

    repo/
      resnet/
        config.pbtxt          # optional: Triton's ModelConfig in protobuf text format
        1/model.onnx
        2/model.tinf

``config.pbtxt`` is parsed into ``tritonclient``'s own ``model_config_pb2.ModelConfig``, the
message Triton Inference Server reads, so a config written for Triton means the same here:
``max_batch_size``, ``input``/``output``, ``dynamic_batching``, ``instance_group``,
``version_policy``, ``model_warmup``, and ``parameters`` for tinyinfer's own options: the
engine's (``backend``, ``opt_level``, ``threads``) and the canary's automatic rollback
(:data:`CANARY_PARAMETERS`, see :func:`rollback_policy`). A missing config, or one without
inputs and outputs, is completed from the model itself, as Triton's auto-complete does: when
every input and output has a symbolic first dimension, the model batches and that dimension
leaves ``dims``.

Which versions are served follows the ``version_policy`` (latest N, all, specific; see
:func:`tinyinfer.serve.routing.resolve_versions`). Each served version owns a
:class:`~tinyinfer.serve.batcher.Batcher` over ``instance_group.count`` sessions. A version that
fails to load is marked ``UNAVAILABLE`` with the reason, which the repository index shows;
the other versions and models keep serving.

The model control modes are Triton's: ``none`` loads every model at start and never changes,
``poll`` loads every model at start and rescans the folder (new versions load, removed ones
drain and unload), ``explicit`` loads only what the repository API asks for.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from ..errors import CanaryError, InvalidRequestError, ModelNotFoundError, RepositoryError, TinyInferError
from ..runtime import InferenceSession
from .batcher import BatchPolicy, Batcher
from .routing import CanaryRouter, RollbackPolicy, resolve_versions

log = logging.getLogger("tinyinfer.serve")

CONTROL_MODES = ("none", "poll", "explicit")
MODEL_FILES = ("model.onnx", "model.tinf")
#: Triton's auto-complete gives a batching model this max_batch_size (its --default-max-batch-size).
DEFAULT_MAX_BATCH_SIZE = 4
#: The engine options ``parameters`` may set, with their defaults (those of InferenceSession).
ENGINE_PARAMETERS = {"backend": "reference", "opt_level": "O2", "threads": "0"}
#: ``parameters`` that set the canary's :class:`~tinyinfer.serve.routing.RollbackPolicy`, by its field names.
CANARY_PARAMETERS = {"canary_window_s": "window_s", "canary_min_requests": "min_requests",
                     "canary_error_factor": "error_rate_factor", "canary_error_floor": "error_rate_floor",
                     "canary_p99_factor": "p99_factor", "canary_check_every": "check_every"}

# Element types: the config's enum name, the protocol's datatype string, the NumPy dtype.
_TYPES = [
    ("TYPE_BOOL", "BOOL", np.bool_), ("TYPE_UINT8", "UINT8", np.uint8), ("TYPE_UINT16", "UINT16", np.uint16),
    ("TYPE_UINT32", "UINT32", np.uint32), ("TYPE_UINT64", "UINT64", np.uint64), ("TYPE_INT8", "INT8", np.int8),
    ("TYPE_INT16", "INT16", np.int16), ("TYPE_INT32", "INT32", np.int32), ("TYPE_INT64", "INT64", np.int64),
    ("TYPE_FP16", "FP16", np.float16), ("TYPE_FP32", "FP32", np.float32), ("TYPE_FP64", "FP64", np.float64),
]
_DATATYPE_DTYPE = {datatype: np.dtype(dtype) for _, datatype, dtype in _TYPES}
_DTYPE_DATATYPE = {np.dtype(dtype): datatype for _, datatype, dtype in _TYPES}
_CONFIG_DATATYPE = {model_config_pb2.DataType.Value(enum): datatype for enum, datatype, _ in _TYPES}


def datatype_dtype(datatype: str) -> np.dtype:
    """The NumPy dtype of a protocol datatype (``"FP32"`` -> float32)."""
    if datatype not in _DATATYPE_DTYPE:
        raise InvalidRequestError(f"datatype {datatype!r} is not served; expected one of {sorted(_DATATYPE_DTYPE)}")
    return _DATATYPE_DTYPE[datatype]


def dtype_datatype(dtype: np.dtype) -> str:
    """The protocol datatype of a NumPy dtype (float32 -> ``"FP32"``)."""
    if np.dtype(dtype) not in _DTYPE_DATATYPE:
        raise InvalidRequestError(f"element type {np.dtype(dtype)} has no protocol datatype; served types are "
                                  f"{sorted(_DATATYPE_DTYPE)}")
    return _DTYPE_DATATYPE[np.dtype(dtype)]


def config_datatype(data_type: int) -> str:
    """The protocol datatype of a config enum value (``TYPE_FP32`` -> ``"FP32"``)."""
    return _CONFIG_DATATYPE[data_type]


def dtype_config_type(dtype: np.dtype) -> int:
    """The config enum value of a NumPy dtype (float32 -> ``TYPE_FP32``)."""
    if np.dtype(dtype) not in _DTYPE_DATATYPE:
        raise RepositoryError(f"element type {np.dtype(dtype)} has no Triton datatype; served types are "
                              f"{sorted(_DATATYPE_DTYPE)}")
    return model_config_pb2.DataType.Value("TYPE_" + _DTYPE_DATATYPE[np.dtype(dtype)])


# ---------------------------------------------------------------------------------------- config
def read_config(model_dir: Path) -> model_config_pb2.ModelConfig:
    """``model_dir/config.pbtxt`` as a ModelConfig (an empty one named after the folder if absent)."""
    config = model_config_pb2.ModelConfig()
    path = model_dir / "config.pbtxt"
    if path.exists():
        try:
            text_format.Parse(path.read_text(), config)
        except text_format.ParseError as exc:
            raise RepositoryError(f"{path} is not a valid Triton model config: {exc}") from None
    if not config.name:
        config.name = model_dir.name
    elif config.name != model_dir.name:
        raise RepositoryError(f"{path} names the model {config.name!r}, but its folder is {model_dir.name!r}; "
                              "Triton requires them to match")
    return config


def engine_options(config: model_config_pb2.ModelConfig) -> dict:
    """The InferenceSession options the config's ``parameters`` set (backend, opt_level, threads)."""
    unknown = sorted(set(config.parameters) - set(ENGINE_PARAMETERS) - set(CANARY_PARAMETERS))
    if unknown:
        raise RepositoryError(f"model {config.name!r}: unknown parameter(s) {unknown}; "
                              f"tinyinfer reads {sorted(ENGINE_PARAMETERS) + sorted(CANARY_PARAMETERS)}")
    values = {key: config.parameters[key].string_value if key in config.parameters else default
              for key, default in ENGINE_PARAMETERS.items()}
    if not values["threads"].isdigit():
        raise RepositoryError(f"model {config.name!r}: parameter threads must be an integer, got {values['threads']!r}")
    return {"backend": values["backend"], "opt_level": values["opt_level"], "threads": int(values["threads"])}


def rollback_policy(config: model_config_pb2.ModelConfig) -> RollbackPolicy:
    """When the model's canary is rolled back by itself, from ``parameters`` (defaults: RollbackPolicy's).

    For example, roll back once 50 requests of each version within 30 s show the canary
    failing three times as often as the stable version, or at 1.5 x its p99::

        parameters { key: "canary_window_s" value { string_value: "30" } }
        parameters { key: "canary_min_requests" value { string_value: "50" } }
        parameters { key: "canary_error_factor" value { string_value: "3" } }
        parameters { key: "canary_p99_factor" value { string_value: "1.5" } }

    ``canary_error_floor`` (the least stable error rate the factor multiplies) and
    ``canary_check_every`` (judge on every n-th canary outcome) are read too.
    """
    values = {}
    for key, field in CANARY_PARAMETERS.items():
        if key not in config.parameters:
            continue
        text = config.parameters[key].string_value
        kind = int if field in ("min_requests", "check_every") else float
        try:
            values[field] = kind(text)
        except ValueError:
            raise RepositoryError(f"model {config.name!r}: parameter {key} must be {kind.__name__} "
                                  f"(in a string_value), got {text!r}") from None
    try:
        return RollbackPolicy(**values)
    except CanaryError as exc:
        raise RepositoryError(f"model {config.name!r}: canary parameters: {exc}") from None


def instance_count(config: model_config_pb2.ModelConfig) -> int:
    """How many sessions serve each version: the sum of the CPU instance groups' counts (1 if none)."""
    count = 0
    for group in config.instance_group:
        if group.kind == model_config_pb2.ModelInstanceGroup.KIND_GPU:
            raise RepositoryError(f"model {config.name!r}: instance_group asks for KIND_GPU; tinyinfer runs on the CPU")
        count += group.count or 1
    return count or 1


def warmup_feeds(config: model_config_pb2.ModelConfig) -> list[dict[str, np.ndarray]]:
    """The feeds of the config's ``model_warmup`` samples, each ``count`` times (at least once).

    tinyinfer compiles one plan per input shape (and, on the Numba backend, times the kernels
    for it), so the first batch of a new size is slow. Triton's ``model_warmup`` runs chosen
    batch sizes at load, before the version takes traffic: list the sizes the batcher will form.
    """
    rng = np.random.default_rng(0)
    feeds = []
    for sample in config.model_warmup:
        batch = [sample.batch_size] if config.max_batch_size > 0 else []
        arrays = {}
        for name, spec in sample.inputs.items():
            dtype, shape = datatype_dtype(config_datatype(spec.data_type)), batch + list(spec.dims)
            source = spec.WhichOneof("input_data_type")
            if source == "zero_data":
                arrays[name] = np.zeros(shape, dtype)
            elif source == "random_data":
                arrays[name] = (rng.random(shape) if dtype.kind == "f" else rng.integers(0, 2, shape)).astype(dtype)
            else:
                raise RepositoryError(f"model {config.name!r}: warmup sample {sample.name!r} input {name!r} must use "
                                      "zero_data or random_data (input_data_file is not supported)")
        feeds += [arrays] * max(sample.count, 1)
    return feeds


def complete_config(config: model_config_pb2.ModelConfig, session: InferenceSession) -> None:
    """Fill what the config leaves out from the model, as Triton's auto-complete does.

    Inputs and outputs come from the model when the config lists none. If the config does not
    say ``max_batch_size`` and every input and output has a symbolic first dimension, the model
    batches: ``max_batch_size`` becomes :data:`DEFAULT_MAX_BATCH_SIZE`, the first dimension
    leaves ``dims`` and ``dynamic_batching`` is turned on.
    """
    args = session.get_inputs() + session.get_outputs()
    if not config.input and not config.output and config.max_batch_size == 0:
        if all(arg.shape and not isinstance(arg.shape[0], int) for arg in args):
            config.max_batch_size = DEFAULT_MAX_BATCH_SIZE
            if not config.HasField("dynamic_batching"):
                config.dynamic_batching.SetInParent()
    skip = 1 if config.max_batch_size > 0 else 0
    for declared, args in ((config.input, session.get_inputs()), (config.output, session.get_outputs())):
        if not declared:
            for arg in args:
                declared.add(name=arg.name, data_type=dtype_config_type(arg.dtype), dims=_config_dims(arg.shape[skip:]))


def check_config(config: model_config_pb2.ModelConfig, session: InferenceSession) -> None:
    """Raise RepositoryError unless every input and output the config names is the model's, with its dtype."""
    for kind, declared, actual in (("input", config.input, session.get_inputs()),
                                   ("output", config.output, session.get_outputs())):
        by_name = {arg.name: arg for arg in actual}
        for tensor in declared:
            if tensor.name not in by_name:
                raise RepositoryError(f"model {config.name!r}: config {kind} {tensor.name!r} is not a model {kind}; "
                                      f"the model's are {sorted(by_name)}")
            model_type = _DTYPE_DATATYPE.get(by_name[tensor.name].dtype)
            if config_datatype(tensor.data_type) != model_type:
                raise RepositoryError(f"model {config.name!r}: config {kind} {tensor.name!r} is "
                                      f"{config_datatype(tensor.data_type)}, the model's is {model_type}")


def _config_dims(shape: Iterable) -> list[int]:
    return [d if isinstance(d, int) else -1 for d in shape]


# ------------------------------------------------------------------------------------- versions
@dataclasses.dataclass
class ModelVersion:
    """One version of a model: its state (LOADING, READY, UNLOADING, UNAVAILABLE) and its batcher."""

    model: str
    version: int
    state: str = "LOADING"
    reason: str = ""
    batcher: Batcher | None = None
    stamp: float = 0.0  # newest modification time of the version's files when it was loaded

    @property
    def ready(self) -> bool:
        return self.state == "READY"


@dataclasses.dataclass
class Model:
    """A loaded model: its (completed) config, its versions and the router of version-less requests."""

    name: str
    config: model_config_pb2.ModelConfig
    config_text: str
    versions: dict[int, ModelVersion] = dataclasses.field(default_factory=dict)
    router: CanaryRouter | None = None
    policy: RollbackPolicy = dataclasses.field(default_factory=RollbackPolicy)
    on_rollback: Callable[[int, str], None] | None = None  # told of every rollback of this model's canary

    def ready_versions(self) -> list[int]:
        return sorted(v for v, mv in self.versions.items() if mv.ready)

    def refresh_router(self, previously_ready: Iterable[int] = ()) -> None:
        """Point version-less requests at the latest ready version when it has just loaded,
        unless a canary split is live.

        Triton's rule without a canary: a newly loaded highest version answers. Only a *new*
        one takes over, so a version that was rolled back (or demoted by setting an older stable
        version) stays out when the repository is merely rescanned. A canary whose version is
        no longer ready is rolled back, and a stable version that went away gives way to the
        latest; the router (and its history) otherwise stays, under the config's current
        rollback policy.
        """
        ready = self.ready_versions()
        if not ready:
            self.router = None
            return
        if self.router is None:
            self.router = CanaryRouter(ready[-1], self.policy, on_rollback=self.on_rollback)
            return
        self.router.policy = self.policy
        state = self.router.state()
        if state["canary"] is not None and state["canary"] not in ready:
            self.router.rollback(f"canary version {state['canary']} is no longer loaded")
            state["canary"] = None
        newest_is_new = ready[-1] not in set(previously_ready)
        if state["stable"] not in ready or (state["canary"] is None and newest_is_new):
            self.router.set_stable(ready[-1])


class ModelRepository:
    """The models of one repository folder, loaded and unloaded by the control mode's rules.

    Every method runs on the server's event loop; sessions are built in a worker thread so a
    slow load never stalls requests to other models. ``observer`` (the server's metrics) hears
    of every batch a batcher executes and of every canary rolled back.
    """

    def __init__(self, root: str | Path, mode: str = "none", *, observer=None):
        if mode not in CONTROL_MODES:
            raise RepositoryError(f"model control mode must be one of {CONTROL_MODES}, got {mode!r}")
        self.root = Path(root)
        if not self.root.is_dir():
            raise RepositoryError(f"model repository {self.root} is not a folder")
        self.mode = mode
        self.observer = observer
        self.models: dict[str, Model] = {}
        self.failures: dict[str, str] = {}  # model -> why its config could not be read
        self._lock = asyncio.Lock()

    def model_names(self) -> list[str]:
        """Names of the model folders on disk."""
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    async def start(self, models: Iterable[str] = ()) -> None:
        """Load every model (modes none and poll) or only ``models`` (explicit)."""
        for name in (self.model_names() if self.mode != "explicit" else models):
            await self.load(name)

    async def poll(self) -> None:
        """Bring the loaded models in line with the disk: new models and versions load, removed ones unload."""
        on_disk = set(self.model_names())
        for name in sorted(on_disk):
            await self.load(name, retry_failed=False)
        for name in sorted(set(self.models) - on_disk):
            await self.unload(name)

    async def load(self, name: str, *, retry_failed: bool = True) -> Model | None:
        """Load (or reload) a model: the versions its policy selects.

        A version already loaded stays as it is unless its files or the config changed (then
        it is built anew and swapped in). ``retry_failed=False`` (polling) also leaves a
        version that failed alone until its files change.
        """
        model_dir = self.root / name
        if not model_dir.is_dir():
            raise ModelNotFoundError(f"no model {name!r} in repository {self.root}; models: {self.model_names()}")
        async with self._lock:
            try:
                config = read_config(model_dir)
                options = engine_options(config)
                policy = rollback_policy(config)
                instances = instance_count(config)
                text = (model_dir / "config.pbtxt").read_text() if (model_dir / "config.pbtxt").exists() else ""
                on_disk = _version_dirs(model_dir)
                version_policy = config.version_policy if config.HasField("version_policy") else None
                wanted = resolve_versions(version_policy, on_disk)
                warmup = warmup_feeds(config)
            except TinyInferError as exc:
                self.failures[name] = str(exc)
                log.error("model %s: %s", name, exc)
                return self.models.get(name)
            self.failures.pop(name, None)
            old = self.models.get(name)
            keep = {} if old is None or old.config_text != text else {
                v: mv for v, mv in old.versions.items()
                if v in wanted and mv.stamp == _stamp(model_dir / str(v)) and (mv.ready or not retry_failed)}
            built = {v: await _build_version(model_dir, name, v, options, instances, warmup)
                     for v in wanted if v not in keep}
            model = Model(name, config, text, versions=dict(keep), policy=policy,
                          on_rollback=functools.partial(self._rolled_back, name))
            _complete_from_newest(model, built)
            for v, (mv, sessions) in built.items():
                if sessions:
                    mv.batcher = Batcher(sessions, BatchPolicy.from_config(model.config), name=f"{name}:{v}",
                                         observer=self.observer)
                    mv.state = "READY"
                model.versions[v] = mv
            retired = [mv for v, mv in (old.versions.items() if old else ()) if model.versions.get(v) is not mv]
            model.router = old.router if old is not None else None
            model.refresh_router(old.ready_versions() if old is not None else ())
            self.models[name] = model
        await _retire(retired)
        return model

    async def unload(self, name: str) -> None:
        """Stop routing to the model, let its queued and running requests finish, then drop it."""
        async with self._lock:
            model = self.models.pop(name, None)
        if model is None:
            if name not in self.model_names():
                raise ModelNotFoundError(f"no model {name!r} in repository {self.root}")
            return
        await _retire(list(model.versions.values()))

    async def close(self) -> None:
        """Unload everything (finishing the requests in flight)."""
        for name in list(self.models):
            await self.unload(name)

    def index(self) -> list[dict]:
        """The repository index of Triton's repository extension: one row per model version on offer."""
        rows = []
        for name in self.model_names():
            model = self.models.get(name)
            if model is None:
                reason = self.failures.get(name, "unloaded")
                rows.append({"name": name, "version": "", "state": "UNAVAILABLE", "reason": reason})
                continue
            for v, mv in sorted(model.versions.items()):
                rows.append({"name": name, "version": str(v), "state": mv.state, "reason": mv.reason})
        return rows

    def _rolled_back(self, name: str, canary: int, reason: str) -> None:
        log.warning("model %s: canary version %d rolled back: %s", name, canary, reason)
        if self.observer is not None:
            self.observer.canary_rolled_back(name, canary)

    def model(self, name: str) -> Model:
        if name not in self.models:
            raise ModelNotFoundError(f"unknown model {name!r}; loaded models: {sorted(self.models)}")
        return self.models[name]

    def version(self, name: str, version: int) -> ModelVersion:
        model = self.model(name)
        if version not in model.versions:
            raise ModelNotFoundError(f"model {name!r} has no version {version}; versions: {sorted(model.versions)}")
        return model.versions[version]


def _version_dirs(model_dir: Path) -> list[int]:
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def _stamp(version_dir: Path) -> float:
    """The newest modification time among a version folder's files: a change means "reload me"."""
    try:
        return max((p.stat().st_mtime for p in version_dir.rglob("*")), default=version_dir.stat().st_mtime)
    except OSError:  # removed while we looked: the next scan sees it gone
        return 0.0


def _model_file(version_dir: Path) -> Path:
    for filename in MODEL_FILES:
        if (version_dir / filename).exists():
            return version_dir / filename
    raise RepositoryError(f"{version_dir} holds no model file; expected one of {', '.join(MODEL_FILES)}")


async def _build_version(model_dir: Path, name: str, version: int, options: dict, instances: int,
                         warmup: list[dict]):
    """(ModelVersion, sessions): the sessions built (and warmed up) in a worker thread, or none and the reason."""
    mv = ModelVersion(name, version, stamp=_stamp(model_dir / str(version)))

    def build() -> list[InferenceSession]:
        sessions = [InferenceSession(path, **options) for _ in range(instances)]
        for session in sessions:
            for feeds in warmup:
                session.run(None, feeds)
        return sessions

    try:
        path = _model_file(model_dir / str(version))
        sessions = await asyncio.to_thread(build)
    except Exception as exc:  # any failure marks only this version unavailable
        mv.state, mv.reason = "UNAVAILABLE", f"{type(exc).__name__}: {exc}"
        log.error("model %s version %d failed to load: %s", name, version, mv.reason)
        return mv, []
    return mv, sessions


def _complete_from_newest(model: Model, built: dict) -> None:
    """Complete the config from the newest version that loaded, and check every version against it."""
    sessions_by_version = {v: sessions[0] for v, (_, sessions) in built.items() if sessions}
    sessions_by_version.update({v: mv.batcher.sessions[0] for v, mv in model.versions.items() if mv.batcher})
    if not sessions_by_version:
        return
    complete_config(model.config, sessions_by_version[max(sessions_by_version)])
    for mv, sessions in built.values():
        if not sessions:
            continue
        try:
            check_config(model.config, sessions[0])
        except RepositoryError as exc:
            mv.state, mv.reason = "UNAVAILABLE", str(exc)
            sessions.clear()


async def _retire(versions: list[ModelVersion]) -> None:
    """Unload versions: no new requests reach them; the ones queued or running finish first."""
    for mv in versions:
        if mv.batcher is not None:
            mv.state = "UNLOADING"
    await asyncio.gather(*(mv.batcher.close() for mv in versions if mv.batcher is not None))
    for mv in versions:
        mv.state = "UNAVAILABLE"
        mv.reason = mv.reason or "unloaded"
