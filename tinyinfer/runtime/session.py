"""InferenceSession: the API of ``onnxruntime.InferenceSession``, on tinyinfer's engine.

    sess = InferenceSession("model.onnx")
    sess.get_inputs()[0].name, .shape, .type
    outputs = sess.run(None, {"x": x})
    print(sess.profile())

A session owns one prepared :class:`~tinyinfer.ir.Graph` and a cache of compiled
:class:`~tinyinfer.runtime.plan.Plan` s, one per set of input shapes: the first run with new
shapes plans (shape inference, constant computation, slot assignment), every later run with
the same shapes only executes the plan.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Mapping, Sequence

import numpy as np

from .. import ops
from ..errors import FeedNameError, FeedShapeError, FeedTypeError, TinyInferError
from ..ir import Graph, Value, dtypes, serialize
from .plan import Plan, compile_plan
from .profiler import NodeRecord, Profile

BACKENDS = ("reference", "numba")


@dataclasses.dataclass(frozen=True)
class NodeArg:
    """Name, shape and type of a model input or output, as ``onnxruntime.NodeArg`` has them."""

    name: str
    shape: list  # ints for static dims, strings for symbolic ones, None where unknown
    type: str  # e.g. "tensor(float)"
    dtype: np.dtype | None = None


def load(source: Any) -> Graph:
    """Import a model (ONNX or ``.tinf`` path or bytes, ``onnx.ModelProto`` or Graph) and prepare its ops."""
    if isinstance(source, Graph):
        return ops.prepare_graph(source)
    if serialize.is_tinf(source):  # a .tinf path, or bytes that start with its magic
        if isinstance(source, (bytes, bytearray, memoryview)):
            return ops.prepare_graph(serialize.load_tinf_bytes(source))
        return ops.prepare_graph(serialize.load_tinf(source))
    from ..frontend import safe_load  # the runtime sits above the frontend

    graph = safe_load(source)
    return ops.prepare_graph(graph)


class InferenceSession:
    """Run a model. ``model`` is a path, serialized bytes, an ``onnx.ModelProto`` or a Graph.

    ``backend="reference"`` runs every node with its plain NumPy reference op.
    ``backend="numba"`` runs each node with the fastest registered Numba kernel that supports
    it (``select="time"`` times the candidates once on the real shapes; ``select="cost"`` uses
    their cost hints) and the reference op where none does; ``threads`` sets Numba's threads.
    ``opt_level`` ("O0" … "O3", default "O2") chooses the graph passes run before planning;
    ``sess.optimization`` is their report and ``sess.source_graph`` the graph as imported.
    ``check_shapes=True`` checks every node's result against the inferred dtype and shape
    (slower; the conformance tests use it to test shape inference).
    ``memory="arena"`` (default) runs every intermediate tensor from one planned block of
    memory per input shape (see :mod:`tinyinfer.passes.memory`); ``memory="heap"`` lets each
    node allocate its results, as a simple interpreter does. ``sess.memory_plan(feeds)``
    reports the plan.
    """

    def __init__(self, model: Any, *, backend: str = "reference", opt_level: str = "O2", threads: int = 0,
                 select: str = "time", check_shapes: bool = False, memory: str = "arena", **options: Any):
        if backend not in BACKENDS:
            raise TinyInferError(f"unknown backend {backend!r}; available: {', '.join(BACKENDS)}")
        if memory not in ("arena", "heap"):
            raise TinyInferError(f"memory must be 'arena' or 'heap', got {memory!r}")
        self.memory = memory
        if options.get("providers") is not None or options.get("sess_options") is not None:
            options.pop("providers", None)
            options.pop("sess_options", None)
        if options:
            raise TinyInferError(f"unknown session option(s): {sorted(options)}")
        from ..passes import PassManager  # passes sit below the runtime; imported late to keep import light

        self.source_graph = load(model)
        self.graph, self.optimization = PassManager(opt_level).run(self.source_graph)
        self.opt_level = opt_level
        self.backend = backend
        self.threads = threads
        self.selector = None
        if backend == "numba":
            from .. import kernels  # noqa: F401  (registers the kernels)
            from .select import KernelSelector

            if threads:
                import numba

                numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
            try:
                self.selector = KernelSelector(select, threads=threads)
            except ValueError as exc:
                raise TinyInferError(str(exc)) from None
        self.check_shapes = check_shapes
        self._plans: dict[tuple, Plan] = {}
        self._runs = 0
        self._run_ns = 0
        self._inputs = [_node_arg(v) for v in self.graph.inputs]
        self._outputs = [_node_arg(v) for v in self.graph.outputs]
        self._model_path = os.fspath(model) if isinstance(model, (str, os.PathLike)) else None

    # ------------------------------------------------------------------ metadata
    def get_inputs(self) -> list[NodeArg]:
        return list(self._inputs)

    def get_outputs(self) -> list[NodeArg]:
        return list(self._outputs)

    def get_providers(self) -> list[str]:
        return [self.backend]

    # ------------------------------------------------------------------ running
    def run(self, output_names: Sequence[str] | None, input_feed: Mapping[str, Any], run_options: Any = None,
            *, observe=None) -> list[np.ndarray]:
        """Compute the named outputs (all of them for ``None``) from the feeds.

        ``observe(name, value)`` is called with every intermediate value as it is computed
        (names are those of ``sess.graph``, the optimized graph; use ``opt_level="O0"`` to see
        the tensors of the model as imported). Values live in reused memory: copy to keep.
        """
        arrays = self._check_feeds(input_feed)
        if isinstance(output_names, str):
            raise FeedNameError(f"output_names must be a list of names or None, got the string {output_names!r}")
        wanted = list(output_names) if output_names else self.graph.output_names
        known = set(self.graph.output_names)
        unknown = [name for name in wanted if name not in known]
        if unknown:
            raise FeedNameError(f"requested output(s) {unknown} are not outputs of the model; outputs are {sorted(known)}")
        key = tuple(_feed_key(a) for a in arrays)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plan(arrays)
            self._plans[key] = plan
        start = time.perf_counter_ns()
        results = plan.execute(arrays, wanted, check_shapes=self.check_shapes, observe=observe)
        self._run_ns += time.perf_counter_ns() - start
        self._runs += 1
        # Outputs that are weights or feeds are copied: a caller writing to a result must not
        # change the model or its own input.
        return [_detach(r, arrays, plan) for r in results]

    def plan_for(self, feeds: Mapping[str, Any]) -> Plan:
        """The compiled plan the given feeds run with (compiled now if new)."""
        arrays = self._check_feeds(feeds)
        key = tuple(_feed_key(a) for a in arrays)
        if key not in self._plans:
            self._plans[key] = self._plan(arrays)
        return self._plans[key]

    def memory_plan(self, feeds: Mapping[str, Any]):
        """The :class:`~tinyinfer.passes.memory.MemoryPlan` the given feeds' shapes run with."""
        return self.plan_for(feeds).memory

    def profile(self) -> Profile:
        """Per-node time, op and shapes, summed over every run so far (all plans)."""
        merged: dict[int, NodeRecord] = {}
        for plan in self._plans.values():
            for step in plan.steps:
                record = step.record
                if id(step.node) not in merged:
                    merged[id(step.node)] = dataclasses.replace(record)
                else:  # the same node planned for other input shapes: one row, summed
                    total = merged[id(step.node)]
                    total.calls += record.calls
                    total.total_ns += record.total_ns
                    if record.calls:
                        total.input_shapes, total.output_shapes = record.input_shapes, record.output_shapes
        return Profile(records=list(merged.values()), runs=self._runs, run_ns=self._run_ns)

    def _plan(self, arrays: list[np.ndarray]) -> Plan:
        given = {v.name: _feed_type(v, a) for v, a in zip(self.graph.inputs, arrays)}
        return compile_plan(self.graph, given, kernel_for=self.selector, arena=self.memory == "arena")

    def _check_feeds(self, feeds: Mapping[str, Any]) -> list[np.ndarray]:
        if not isinstance(feeds, Mapping):
            raise FeedNameError(f"feeds must be a dict of input name -> array, got {type(feeds).__name__}")
        names = self.graph.input_names
        missing = [n for n in names if n not in feeds]
        extra = [n for n in feeds if n not in names]
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing feed(s) {missing}")
            if extra:
                parts.append(f"unexpected feed(s) {extra}")
            raise FeedNameError(f"{' and '.join(parts)}; the model's inputs are {names}")
        arrays = []
        bound: dict[str, tuple[str, int]] = {}
        for value in self.graph.inputs:
            feed = feeds[value.name]
            if value.kind != "tensor":
                arrays.append(self._check_sequence_or_optional(value, feed, bound))
                continue
            arrays.append(self._check_tensor(value, feed, bound))
        return arrays

    def _check_sequence_or_optional(self, value: Value, feed: Any, bound: dict) -> Any:
        """A feed for a sequence (a list of arrays) or an optional (None, or its element)."""
        if feed is None:
            if value.kind in ("optional", "optional_sequence"):
                return None
            raise FeedTypeError(f"input '{value.name}' expects {_value_type(value)}, got None")
        if value.kind in ("sequence", "optional_sequence"):
            if not isinstance(feed, (list, tuple)):
                raise FeedTypeError(
                    f"input '{value.name}' expects {_value_type(value)}: a list of arrays, got a {type(feed).__name__}"
                )
            # The tensors of a sequence may differ in their symbolic dims, so none are bound.
            element = Value(value.name, value.dtype, value.shape)
            return [self._check_tensor(element, item, {}) for item in feed]
        return self._check_tensor(Value(value.name, value.dtype, value.shape), feed, bound)

    def _check_tensor(self, value: Value, array: Any, bound: dict) -> np.ndarray:
        """A tensor feed: converted to an array, its dtype and static dims checked, its symbols bound."""
        if not isinstance(array, np.ndarray):
            try:
                array = np.asarray(array)
            except (ValueError, TypeError) as exc:  # ragged nested lists, odd objects
                raise FeedTypeError(
                    f"input '{value.name}' expects {_type(value.dtype)}; the feed (a "
                    f"{type(array).__name__}) is not convertible to an array: {exc}"
                ) from None
        if value.dtype is not None and array.dtype != value.dtype:
            raise FeedTypeError(
                f"input '{value.name}' expects {_type(value.dtype)}, got {_type(array.dtype)} "
                f"(numpy {array.dtype}); convert with .astype({_numpy_name(value.dtype)})"
            )
        if value.shape is not None:
            if array.ndim != len(value.shape):
                raise FeedShapeError(
                    f"input '{value.name}' expects rank {len(value.shape)} {_dims(value.shape)}, "
                    f"got rank {array.ndim} {list(array.shape)}"
                )
            for axis, (dim, size) in enumerate(zip(value.shape, array.shape)):
                if isinstance(dim, int) and dim != size:
                    raise FeedShapeError(
                        f"input '{value.name}' expects {_dims(value.shape)}, got {list(array.shape)} "
                        f"(dimension {axis} must be {dim})"
                    )
                if isinstance(dim, str):
                    if dim in bound and bound[dim][1] != size:
                        other, was = bound[dim]
                        raise FeedShapeError(
                            f"input '{value.name}' dimension {axis} ('{dim}') is {size}, but '{dim}' "
                            f"is {was} in input '{other}'"
                        )
                    bound.setdefault(dim, (value.name, size))
        return array

    def __repr__(self) -> str:
        ins = ", ".join(f"{a.name}: {a.type}{a.shape}" for a in self._inputs)
        outs = ", ".join(f"{a.name}: {a.type}{a.shape}" for a in self._outputs)
        return f"InferenceSession({self.backend}; inputs {ins}; outputs {outs})"


def _node_arg(value: Value) -> NodeArg:
    shape = [] if value.shape is None else [d for d in value.shape]
    return NodeArg(value.name, shape, _value_type(value), value.dtype)


def _value_type(value: Value) -> str:
    """ONNX Runtime's spelling of a value's type: ``tensor(float)``, ``seq(tensor(float))``,
    ``optional(tensor(float))`` or ``optional(seq(tensor(float)))``."""
    tensor = dtypes.type_name(value.dtype) if value.dtype is not None else "tensor(unknown)"
    return {
        "tensor": tensor,
        "sequence": f"seq({tensor})",
        "optional": f"optional({tensor})",
        "optional_sequence": f"optional(seq({tensor}))",
    }[value.kind]


def _feed_key(feed: Any) -> tuple:
    """What a plan depends on in a feed: dtype and shape, of each tensor of a sequence."""
    if feed is None:
        return ("none",)
    if isinstance(feed, list):
        return ("sequence", *(_feed_key(item) for item in feed))
    return (feed.dtype.str, feed.shape)


def _feed_type(declared: Value, feed: Any) -> Value:
    """The Value a plan is compiled for: the feed's type, of the declared kind."""
    if feed is None:
        return Value(declared.name, declared.dtype, declared.shape, kind=declared.kind)
    if isinstance(feed, list):
        if not feed:
            return Value(declared.name, declared.dtype, declared.shape, kind=declared.kind)
        shapes = {item.shape for item in feed}
        same_rank = len({len(s) for s in shapes}) == 1
        shape = tuple(d[0] if len(set(d)) == 1 else None for d in zip(*shapes)) if same_rank else None
        return Value(declared.name, feed[0].dtype, shape, kind=declared.kind)
    return Value(declared.name, feed.dtype, feed.shape, kind=declared.kind)


def _type(dtype) -> str:
    """ONNX Runtime's spelling of a dtype (``tensor(float)``), or a note that ONNX has none."""
    try:
        return dtypes.type_name(dtype)
    except KeyError:
        return "a type ONNX has no name for"


def _numpy_name(dtype: np.dtype) -> str:
    if hasattr(np, dtype.name) and np.dtype(getattr(np, dtype.name)) == dtype:
        return f"np.{dtype.name}"
    return f"ml_dtypes.{dtype.name}"  # bfloat16, float8, int4 ... live in ml_dtypes


def _dims(shape) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _detach(result: Any, feeds: list, plan: Plan) -> Any:
    """A result the caller may write to: copied when it is (or views) a weight or a feed."""
    if result is None:
        return None
    if isinstance(result, list):
        return [_detach(item, feeds, plan) for item in result]
    return np.array(result, copy=True) if _shares(result, feeds, plan) else result


def _shares(result: np.ndarray, feeds: list, plan: Plan) -> bool:
    """Whether a result is, or views, a constant of the plan (a weight) or a feed."""
    if any(result is c for c in plan.slots if c is not None):
        return True
    if not result.size:
        return False
    constants = [c for c in plan.slots if isinstance(c, np.ndarray) and c.size]
    return any(np.may_share_memory(result, a) for a in (*constants, *_arrays(feeds)) if a.size)


def _arrays(feeds: list) -> list[np.ndarray]:
    """The arrays of the feeds, those inside sequences included."""
    found = []
    for feed in feeds:
        if isinstance(feed, list):
            found.extend(feed)
        elif feed is not None:
            found.append(feed)
    return found
