"""Post-training quantization (PTQ): static QDQ models and dynamic integer models.

Two ways to run a float network in 8-bit integers without retraining it, shaped like
``onnxruntime.quantization`` so a user of that package feels at home:

* :func:`quantize_static` — weights are quantized offline; activation ranges are measured
  once on calibration data (:class:`~tinyinfer.compress.calibrate.Calibrator`), and the
  result is written as a standard ONNX **QDQ** model: every quantized tensor passes through
  ``QuantizeLinear → DequantizeLinear`` and every quantized weight is an int8 initializer read
  through ``DequantizeLinear``. Any runtime runs a QDQ model (in float, if it must); an engine
  that knows int8 finds the ``DQ → op → Q`` chains and replaces each by one integer op
  (tinyinfer's pass in ``passes/quantize.py``, ONNX Runtime's QDQ fusions).
* :func:`quantize_dynamic` — only weights are quantized offline; each activation is
  quantized at run time from its own range (``DynamicQuantizeLinear``), multiplied with
  ``MatMulInteger``/``ConvInteger`` in int32 and scaled back to float. No calibration data.

The rules of the static quantizer are those of Jacob et al. (CVPR 2018), as engines apply
them (ONNX Runtime's QDQ quantizer, TFLite's converter):

* BatchNormalization is folded into the convolution first (tinyinfer's O2 passes), so the
  weights that are quantized are the ones that run;
* an activation (Relu, Clip) right after a quantized op is not quantized on its own: the
  ``Q`` after it carries the range, so the integer op clamps at the zero point for free;
* Concat's inputs and output share one scale (the concat is then a copy of bytes), and so do
  the input and output of the ops that only move values (MaxPool, Resize, Reshape, ...);
* a bias is int32 with scale ``s_input · s_weight`` and zero point 0, so it adds straight
  into the int32 accumulator;
* every other op (Softmax, Sigmoid, LRN, ...) stays in float and the report says so.

Default types are ONNX Runtime's QDQ defaults, **U8S8**: activations uint8 asymmetric,
weights int8 symmetric (−127…127, zero point 0), per output channel. ``weight_type="int4"``
stores weights in 4 bits instead (symmetric −7…7, two per byte): ONNX ``int4`` tensors,
which DequantizeLinear reads from opset 21, so the model is converted to opset 21 first.
Weights shrink about 2× against int8 at the cost of 16× coarser weight steps.
"""

from __future__ import annotations

import abc
import collections
import dataclasses
import os
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import ml_dtypes
import numpy as np
import onnx

from .. import ops
from ..errors import InvalidFeedError, TinyInferError
from ..ir import Graph, Node, Value

#: The ai.onnx opset the quantized model imports at least (per-axis DequantizeLinear is 13;
#: ONNX Runtime's QDQ fusions know 13–21 best).
QDQ_OPSET = 17
#: Weight types of the static quantizer and the opset whose DequantizeLinear reads them
#: (int4 and uint4 tensors arrive in opset 21).
WEIGHT_OPSETS = {np.dtype(np.int8): QDQ_OPSET, np.dtype(ml_dtypes.int4): 21}

#: Ops whose every float input is quantized and whose output may be quantized.
COMPUTE_OPS = ("Conv", "Gemm", "MatMul")
ARITHMETIC_OPS = ("Add", "Mul")
#: Ops that move or select values without computing new ones: their output shares the
#: input's scale and zero point, so they run on the integers unchanged.
PASS_THROUGH_OPS = ("MaxPool", "Resize")
#: Shape-only ops quantized like pass-through ops, but only when their input is quantized
#: anyway (they never earn a Q/DQ pair of their own).
SHAPE_OPS = ("Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze")
#: Activations folded into the output range of the op before them.
FOLDED_ACTIVATIONS = ("Relu", "Clip")
#: What ``op_types=None`` quantizes.
DEFAULT_OP_TYPES = (*COMPUTE_OPS, *ARITHMETIC_OPS, "Concat", "AveragePool", "GlobalAveragePool", *PASS_THROUGH_OPS)

#: Nodes that mark a model as quantized already.
QUANTIZED_OPS = frozenset({
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul",
    "MatMulInteger", "ConvInteger", "QLinearGemm", "QLinearAdd", "QLinearMul", "QLinearConcat",
    "QLinearGlobalAveragePool", "QLinearAveragePool", "QLinearSigmoid", "QLinearLeakyRelu",
})

#: Why an op type stays in float (the report prints these).
FLOAT_REASONS = {
    "Softmax": "exponentials and a division need float precision; int8 brings no speed",
    "Sigmoid": "a lookup table would be needed; kept in float",
    "Tanh": "a lookup table would be needed; kept in float",
    "LRN": "a power and a division per element need float precision",
    "BatchNormalization": "not after a convolution, so not folded; runs in float",
    "Sum": "more than two inputs; runs in float",
    "Dropout": "identity at inference",
}


class CalibrationDataError(InvalidFeedError):
    """Calibration data that cannot be fed to the model: empty, wrong names or wrong shapes."""


class AlreadyQuantizedError(TinyInferError):
    """The model holds quantization nodes already; quantizing it again would be wrong."""


# ============================================================================ data readers
class CalibrationDataReader(abc.ABC):
    """A source of calibration feeds, as in ``onnxruntime.quantization``.

    ``get_next()`` returns one feed dict (input name -> array) per call and ``None`` when the
    data is exhausted. Iterating over a reader calls ``get_next`` until ``None``.
    """

    @abc.abstractmethod
    def get_next(self) -> dict[str, np.ndarray] | None:
        """The next feed dict, or None when there is no more data."""

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        while True:
            feeds = self.get_next()
            if feeds is None:
                return
            yield feeds


class ListDataReader(CalibrationDataReader):
    """A reader over a list of feed dicts (rewindable: calibration may need several passes)."""

    def __init__(self, feeds: Iterable[Mapping[str, np.ndarray]]):
        self.feeds = [dict(f) for f in feeds]
        self.position = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.position >= len(self.feeds):
            return None
        self.position += 1
        return self.feeds[self.position - 1]

    def rewind(self) -> None:
        self.position = 0

    def __len__(self) -> int:
        return len(self.feeds)


class NpzDataReader(ListDataReader):
    """Calibration samples from an ``.npz`` file: one array per model input, samples on axis 0.

    ``path_or_npz`` is a path, an opened ``np.load`` result or a dict of arrays.
    ``input_names`` are the model's input names; every one must be in the file, nothing else
    may be, and every array must hold the same number (≥ 1) of samples. Each feed keeps a
    leading batch axis of one (sample ``i`` is ``array[i:i+1]``).
    """

    def __init__(self, path_or_npz: Any, input_names: Iterable[str]):
        arrays = _read_npz(path_or_npz)
        names = list(input_names)
        where = f"calibration data {_describe(path_or_npz)}"
        missing = [n for n in names if n not in arrays]
        extra = sorted(set(arrays) - set(names))
        if missing or extra:
            raise CalibrationDataError(
                f"{where} holds arrays {sorted(arrays)}, but the model's inputs are {names}"
                + (f"; missing {missing}" if missing else "")
                + (f"; not inputs of the model: {extra}" if extra else "")
            )
        counts = {}
        for name in names:
            array = arrays[name]
            if array.ndim == 0:
                raise CalibrationDataError(f"{where}: array '{name}' is a scalar; expected samples on axis 0")
            counts[name] = array.shape[0]
        if len(set(counts.values())) > 1:
            raise CalibrationDataError(f"{where}: the arrays hold different numbers of samples on axis 0: {counts}")
        count = next(iter(counts.values()), 0)
        if count == 0:
            raise CalibrationDataError(f"{where} is empty: expected at least one sample per input")
        super().__init__({name: arrays[name][i:i + 1] for name in names} for i in range(count))


def _read_npz(source: Any) -> dict[str, np.ndarray]:
    if isinstance(source, Mapping):
        return {str(k): np.asarray(v) for k, v in source.items()}
    if isinstance(source, np.lib.npyio.NpzFile):
        return {k: source[k] for k in source.files}
    try:
        with np.load(os.fspath(source), allow_pickle=False) as data:
            if not isinstance(data, np.lib.npyio.NpzFile):
                raise CalibrationDataError(f"{source} is a single .npy array; expected an .npz with one array per input")
            return {k: data[k] for k in data.files}
    except CalibrationDataError:
        raise
    except (OSError, ValueError, EOFError) as exc:
        raise CalibrationDataError(f"cannot read calibration data {source}: {exc}") from None


def _describe(source: Any) -> str:
    return f"'{source}'" if isinstance(source, (str, os.PathLike)) else f"({type(source).__name__})"


def random_normal_reader(model: Any, samples: int = 16, *, seed: int = 0) -> ListDataReader:
    """``samples`` feeds of standard-normal data (symbolic dims = 1), for calibrating without data."""
    graph = _as_graph(model)
    rng = np.random.default_rng(seed)
    feeds = []
    for _ in range(samples):
        feed = {}
        for value in graph.inputs:
            shape = tuple(d if isinstance(d, int) else 1 for d in (value.shape or ()))
            dtype = value.dtype or np.dtype(np.float32)
            feed[value.name] = rng.standard_normal(shape).astype(dtype)
        feeds.append(feed)
    return ListDataReader(feeds)


# ============================================================================ the report
@dataclasses.dataclass
class QuantizationReport:
    """What a quantizer did: per op type, how many nodes run in integers and how many in float."""

    mode: str
    method: str | None
    per_channel: bool
    activation_type: str
    weight_type: str
    samples: int = 0
    #: The error reducers applied, in order ("cross-layer equalization", "GPTQ rounding", ...).
    techniques: list[str] = dataclasses.field(default_factory=list)
    quantized: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    kept_float: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    reasons: dict[str, str] = dataclasses.field(default_factory=dict)
    quantized_tensors: int = 0
    weight_bytes_before: int = 0
    weight_bytes_after: int = 0
    notes: list[str] = dataclasses.field(default_factory=list)
    model: onnx.ModelProto | None = dataclasses.field(default=None, repr=False)

    def keep_float(self, op_type: str, reason: str) -> None:
        self.kept_float[op_type] += 1
        self.reasons.setdefault(op_type, reason)

    def table(self) -> str:
        head = f"{self.mode} quantization"
        if self.method:
            head += f", {self.method} calibration on {self.samples} sample(s)"
        head += f", {'per-channel' if self.per_channel else 'per-tensor'} {self.weight_type} weights"
        head += f", {self.activation_type} activations"
        if self.techniques:
            head += f"; {', '.join(self.techniques)}"
        lines = [head, f"{'op':<20} {'int8':>6} {'float':>6}  why float"]
        for op_type in sorted(set(self.quantized) | set(self.kept_float)):
            lines.append(
                f"{op_type:<20} {self.quantized[op_type]:>6} {self.kept_float[op_type]:>6}  {self.reasons.get(op_type, '')}"
            )
        lines.append(
            f"{sum(self.quantized.values())} node(s) quantized, {sum(self.kept_float.values())} kept in float; "
            f"{self.quantized_tensors} activation tensor(s) quantized; weights "
            f"{self.weight_bytes_before / 2**20:.2f} MiB -> {self.weight_bytes_after / 2**20:.2f} MiB"
        )
        lines.extend(self.notes)
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


# ============================================================================ static (QDQ)
def quantize_static(
    model_in: Any,
    model_out: str | os.PathLike | None,
    calibration_data_reader: CalibrationDataReader | Iterable[Mapping[str, np.ndarray]],
    *,
    method: str = "mse",
    per_channel: bool = True,
    activation_type: Any = np.uint8,
    weight_type: Any = np.int8,
    op_types: Iterable[str] | None = None,
    equalize: bool = False,
    bias_correction: bool = True,
    weight_rounding: str = "nearest",
    progress: bool = True,
    percentile: float = 99.99,
) -> QuantizationReport:
    """Quantize a float model to a QDQ model with ranges calibrated on data.

    ``model_in`` is a path, an ``onnx.ModelProto`` or an ``ir.Graph``; ``model_out`` a path
    (``.onnx``, or ``.tinf`` for tinyinfer's format) or None (then ``report.model`` holds the
    ModelProto, as it always does). ``method`` picks the calibration
    (``minmax``, ``percentile``, ``entropy``, ``mse``; see :mod:`.calibrate`). The defaults,
    MSE ranges and bias correction, gave the best output SNR across the light models, the
    zoo and the digits CNN (chapter 03a's table); minmax is what ONNX Runtime uses. ``op_types``
    restricts which op types are quantized (default :data:`DEFAULT_OP_TYPES`).
    ``equalize`` applies cross-layer equalization before calibrating and
    ``bias_correction`` corrects each conv's bias for the mean error its quantized weights
    make (Nagel et al., 2019; :mod:`.equalize`). ``weight_rounding="gptq"`` rounds the
    weights of ungrouped convolutions and matrix products so that their *outputs* on the
    calibration data move least (:mod:`.gptq`) instead of to the nearest grid point.
    ``weight_type`` is ``int8`` or ``int4`` (4-bit weights, opset 21). ``percentile`` is the
    share of values the percentile method keeps. Returns a :class:`QuantizationReport`.
    """
    activation_type = _quantized_type(activation_type, "activation_type", (np.dtype(np.uint8), np.dtype(np.int8)))
    weight_type = _quantized_type(weight_type, "weight_type", tuple(WEIGHT_OPSETS))
    if method not in ("minmax", "percentile", "entropy", "mse"):
        raise TinyInferError(f"unknown calibration method {method!r}; choose minmax, percentile, entropy or mse")
    if weight_rounding not in ("nearest", "gptq"):
        raise TinyInferError(f"unknown weight_rounding {weight_rounding!r}; choose nearest or gptq")
    wanted = _op_types(op_types)
    model = _prepare_model(model_in, WEIGHT_OPSETS[weight_type])
    bytes_before = _weight_bytes(model)
    graph = _float_graph(model)
    feeds = _checked_feeds(graph, calibration_data_reader)
    report = QuantizationReport("static", method, per_channel, activation_type.name, weight_type.name, len(feeds))
    report.weight_bytes_before = bytes_before
    if equalize:
        graph = _equalize(graph, report)

    plan = _plan_qdq(graph, wanted, report)
    ranges = _calibrate(graph, feeds, plan.activation_names(graph), method, percentile, progress)
    params = plan.parameters(graph, ranges, activation_type)
    hessians = _input_hessians(graph, feeds, plan, report) if weight_rounding == "gptq" else None
    weights = _quantize_weights(graph, plan, params, per_channel, weight_type, hessians)
    if bias_correction:  # new biases: plan again (same tensors and weights), then quantize them
        graph = _correct_bias(graph, feeds, weights, report)
        plan = _plan_qdq(graph, wanted, QuantizationReport("static", method, per_channel, "", ""))
        weights = _quantize_weights(graph, plan, params, per_channel, weight_type, hessians)
    qdq = _insert_qdq(graph, plan, params, weights)
    result = _export(qdq, model_out)
    report.quantized_tensors = len([t for t in plan.tensors if t not in graph.initializers])
    report.weight_bytes_after = _weight_bytes(result)
    report.model = result
    return report


def _quantized_type(spelling: Any, option: str, allowed: tuple[np.dtype, ...]) -> np.dtype:
    """``spelling`` (a dtype, a type or a name such as ``"int4"``) as one of the ``allowed`` dtypes."""
    try:
        dtype = np.dtype(spelling)
    except TypeError:
        dtype = None
    if dtype not in allowed:
        raise TinyInferError(f"{option} must be one of {', '.join(t.name for t in allowed)}, got {spelling!r}")
    return dtype


def _op_types(op_types: Iterable[str] | None) -> frozenset[str]:
    if op_types is None:
        return frozenset(DEFAULT_OP_TYPES)
    wanted = frozenset(op_types)
    known = set(DEFAULT_OP_TYPES) | set(SHAPE_OPS)
    unknown = sorted(wanted - known)
    if unknown:
        raise TinyInferError(f"cannot quantize op type(s) {unknown}; the quantizer knows {sorted(known)}")
    return wanted


# ---------------------------------------------------------------------------- preparing the model
def _as_model(model_in: Any) -> onnx.ModelProto:
    """A ModelProto from a path, bytes, a ModelProto or a Graph."""
    if isinstance(model_in, onnx.ModelProto):
        return model_in
    if isinstance(model_in, Graph):
        from ..frontend import to_onnx

        return to_onnx(model_in, decompose=True)
    if isinstance(model_in, (str, os.PathLike)) and str(model_in).endswith(".tinf"):
        from ..frontend import to_onnx
        from ..runtime import load

        return to_onnx(load(model_in), decompose=True)
    from ..frontend import parse_model_bytes

    if isinstance(model_in, (bytes, bytearray)):
        return parse_model_bytes(bytes(model_in))
    path = Path(os.fspath(model_in))
    if not path.exists():
        raise TinyInferError(f"model file {path} does not exist")
    return onnx.load(str(path))


def _as_graph(model: Any) -> Graph:
    from ..runtime import load

    return load(model if isinstance(model, Graph) else _as_model(model))


def _prepare_model(model_in: Any, min_opset: int = QDQ_OPSET) -> onnx.ModelProto:
    """The float model at opset ≥ ``min_opset``, refused if it is quantized already."""
    model = _as_model(model_in)
    found = sorted({n.op_type for n in model.graph.node if n.op_type in QUANTIZED_OPS})
    if found:
        raise AlreadyQuantizedError(
            f"model '{model.graph.name}' is already quantized (it has {', '.join(found)} nodes); "
            "expected a float model"
        )
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < min_opset:
        from onnx import version_converter

        try:
            model = version_converter.convert_version(model, min_opset)
        except Exception as exc:  # the converter raises plain RuntimeErrors
            raise TinyInferError(
                f"cannot convert model '{model.graph.name}' from opset {opset} to opset {min_opset} "
                f"(needed for its DequantizeLinear): {exc}"
            ) from None
    return model


def _float_graph(model: onnx.ModelProto) -> Graph:
    """The model after tinyinfer's O2 passes (BatchNorm folded), written back with standard ops only."""
    from ..frontend import graph_from_model, to_onnx
    from ..passes import PassManager
    from ..runtime import load

    optimized, _ = PassManager("O2").run(load(model))
    graph = ops.prepare_graph(graph_from_model(to_onnx(optimized, decompose=True)))
    for node in graph.nodes:  # a two-input Sum is an Add (ResNet's residuals in old exports)
        if node.op_type == "Sum" and len(node.inputs) == 2:
            node.op_type = "Add"
    return graph


def _weight_bytes(model: onnx.ModelProto) -> int:
    return int(sum(len(t.raw_data) or onnx.numpy_helper.to_array(t).nbytes for t in model.graph.initializer))


# ---------------------------------------------------------------------------- calibration data
def _checked_feeds(graph: Graph, reader: Any) -> list[dict[str, np.ndarray]]:
    """Every feed of the reader, checked against the model's inputs (names, dtypes, shapes)."""
    if reader is None:
        raise CalibrationDataError("no calibration data: pass a CalibrationDataReader (or use quantize_dynamic)")
    if isinstance(reader, CalibrationDataReader) or hasattr(reader, "get_next"):  # onnxruntime's readers too
        source = iter(reader.get_next, None)
    elif isinstance(reader, Iterable) and not isinstance(reader, (Mapping, str, bytes)):
        source = iter(reader)
    else:
        raise CalibrationDataError(
            f"calibration data must be a reader with get_next() or a list of feed dicts, got {type(reader).__name__}"
        )
    inputs = {v.name: v for v in graph.inputs}
    feeds = []
    for index, feed in enumerate(source):
        if not isinstance(feed, Mapping):
            raise CalibrationDataError(f"calibration sample {index} is a {type(feed).__name__}; expected a dict of arrays")
        names = set(feed)
        if names != set(inputs):
            missing, extra = sorted(set(inputs) - names), sorted(names - set(inputs))
            raise CalibrationDataError(
                f"calibration sample {index} feeds {sorted(names)}, but the model's inputs are {sorted(inputs)}"
                + (f"; missing {missing}" if missing else "")
                + (f"; unknown {extra}" if extra else "")
            )
        feeds.append({name: _checked_array(inputs[name], np.asarray(array), index) for name, array in feed.items()})
    if not feeds:
        raise CalibrationDataError("the calibration data is empty: the reader returned no sample")
    return feeds


def _checked_array(value: Value, array: np.ndarray, index: int) -> np.ndarray:
    declared = value.shape
    if value.dtype is not None and array.dtype != value.dtype:
        if array.dtype.kind == value.dtype.kind == "f":
            array = array.astype(value.dtype)
        else:
            raise CalibrationDataError(
                f"calibration sample {index}: input '{value.name}' is {array.dtype}; the model expects {value.dtype}"
            )
    if declared is not None and array.ndim == len(declared) + 1 and array.shape[0] == 1:
        array = array[0]  # a reader that adds a sample axis to a model without a batch axis
    if declared is not None:
        fits = array.ndim == len(declared) and all(
            not isinstance(d, int) or d == n for d, n in zip(declared, array.shape)
        )
        if not fits:
            want = "x".join(str(d) if isinstance(d, int) else "?" for d in declared)
            raise CalibrationDataError(
                f"calibration sample {index}: input '{value.name}' has shape {list(array.shape)}; "
                f"the model expects [{want}]"
            )
    return array


# ---------------------------------------------------------------------------- the QDQ plan
class _UnionFind:
    """Tensors that must share one scale and zero point (Concat, pass-through ops)."""

    def __init__(self):
        self.parent: dict[str, str] = {}

    def find(self, name: str) -> str:
        self.parent.setdefault(name, name)
        while self.parent[name] != name:
            self.parent[name] = self.parent[self.parent[name]]
            name = self.parent[name]
        return name

    def union(self, a: str, b: str) -> None:
        self.parent[self.find(a)] = self.find(b)


@dataclasses.dataclass
class _Plan:
    """Which tensors get Q/DQ, which weights are quantized, and who shares parameters."""

    tensors: dict[str, None] = dataclasses.field(default_factory=dict)  # ordered set
    weights: dict[str, int | None] = dataclasses.field(default_factory=dict)  # name -> channel axis
    biases: dict[str, tuple[str, str]] = dataclasses.field(default_factory=dict)  # bias -> (input, weight)
    groups: _UnionFind = dataclasses.field(default_factory=_UnionFind)
    quantized_nodes: set[int] = dataclasses.field(default_factory=set)

    def activation_names(self, graph: Graph) -> list[str]:
        """Every tensor whose range must be measured: the quantized ones and their group mates."""
        names = dict.fromkeys(self.tensors)
        for name in list(self.groups.parent):
            names[name] = None
        return [n for n in names if n not in graph.initializers]

    def parameters(self, graph: Graph, ranges: dict[str, tuple[float, float]], dtype: np.dtype) -> dict[str, Any]:
        """One QuantParams per quantized tensor; group mates get the union of their ranges."""
        from .affine import compute_params

        group_range: dict[str, tuple[float, float]] = {}
        for name in self.activation_names(graph) + [t for t in self.tensors if t in graph.initializers]:
            if name in graph.initializers:
                array = np.asarray(graph.initializers[name], dtype=np.float64)
                low, high = (float(array.min()), float(array.max())) if array.size else (0.0, 0.0)
            elif name in ranges:
                low, high = (float(v) for v in ranges[name])
            else:
                continue
            root = self.groups.find(name)
            old = group_range.get(root)
            group_range[root] = (low, high) if old is None else (min(old[0], low), max(old[1], high))
        params = {}
        for name in self.tensors:
            low, high = group_range.get(self.groups.find(name), (0.0, 0.0))
            params[name] = compute_params(np.float32(min(low, 0.0)), np.float32(max(high, 0.0)), dtype, symmetric=False)
        return params


def _plan_qdq(graph: Graph, wanted: frozenset[str], report: QuantizationReport) -> _Plan:
    """Walk the graph in order and decide what each node's quantization looks like."""
    values = ops.infer_shapes(graph)
    plan = _Plan()
    producers = graph.producers()
    readers = graph.consumers()
    outputs = set(graph.output_names)
    consts = graph.initializers

    def is_float(name: str) -> bool:
        value = values.get(name) or graph.value(name)
        return value is not None and value.dtype is not None and value.dtype.kind == "f"

    def mark(name: str) -> None:
        plan.tensors[name] = None

    shape_ops: list[Node] = []

    for node in graph.topological_order():
        op = node.op_type
        data = node.present_inputs
        if op in FOLDED_ACTIVATIONS:
            source = producers.get(node.inputs[0])
            if (
                source is not None
                and id(source) in plan.quantized_nodes
                and source.op_type not in (*PASS_THROUGH_OPS, *SHAPE_OPS, "Concat")
                and len(readers.get(node.inputs[0], [])) == 1
                and node.inputs[0] not in outputs
            ):
                report.quantized[op] += 1
                plan.quantized_nodes.add(id(node))  # folded: its output's Q carries the range
            else:
                report.keep_float(op, "not right after a quantized op, so not folded into an output range")
            continue
        if op in SHAPE_OPS and not node.domain:
            shape_ops.append(node)  # decided below, once its readers are known
            continue
        if op not in wanted or node.domain:
            if op in DEFAULT_OP_TYPES and node.domain == "":
                report.keep_float(op, "excluded by op_types")
            else:
                report.keep_float(op, FLOAT_REASONS.get(op, "no int8 implementation benefits it; runs in float"))
            continue
        if not all(is_float(name) for name in data[:1]):
            report.keep_float(op, "input is not float")
            continue
        reason = _cannot_quantize(node, consts)
        if reason:
            report.keep_float(op, reason)
            continue
        if op == "Conv":
            mark(node.inputs[0])
            plan.weights[node.inputs[1]] = 0
            if len(node.inputs) > 2 and node.inputs[2]:
                plan.biases[node.inputs[2]] = (node.inputs[0], node.inputs[1])
        elif op == "Gemm":
            mark(node.inputs[0])
            plan.weights[node.inputs[1]] = 0 if node.attrs.get("transB") else 1
            bias = node.inputs[2] if len(node.inputs) > 2 else ""
            if bias and _bias_foldable(node, consts):
                plan.biases[bias] = (node.inputs[0], node.inputs[1])
        elif op == "MatMul":
            mark(node.inputs[0])
            if node.inputs[1] in consts:
                plan.weights[node.inputs[1]] = consts[node.inputs[1]].ndim - 1 if consts[node.inputs[1]].ndim == 2 else None
            else:
                mark(node.inputs[1])
        elif op in ARITHMETIC_OPS:
            for name in data:
                mark(name)
        elif op == "Concat":
            for name in data:
                mark(name)
                plan.groups.union(name, node.outputs[0])
        elif op in ("AveragePool", "GlobalAveragePool"):
            mark(node.inputs[0])
        else:  # pass-through and shape ops: the output reuses the input's parameters
            mark(node.inputs[0])
            plan.groups.union(node.inputs[0], node.outputs[0])
        plan.quantized_nodes.add(id(node))
        report.quantized[op] += 1
    # A shape op (Reshape, Transpose, ...) moves int8 values when a quantized reader wants its
    # output anyway: then its input is quantized with the same parameters. Walking backwards
    # lets a chain of them (ShuffleNet's Reshape → Transpose → Reshape) pass the decision on.
    for node in reversed(shape_ops):
        if node.outputs[0] in plan.tensors and is_float(node.inputs[0]):
            mark(node.inputs[0])
            plan.groups.union(node.inputs[0], node.outputs[0])
            plan.quantized_nodes.add(id(node))
            report.quantized[node.op_type] += 1
        else:
            report.keep_float(node.op_type, "no quantized op reads its output; a shape op earns no Q/DQ of its own")
    return plan


def _cannot_quantize(node: Node, consts: dict[str, np.ndarray]) -> str | None:
    """Why a node of a quantizable type must still stay in float (None if it need not)."""
    op = node.op_type
    if op == "Conv":
        weight = consts.get(node.inputs[1])
        if weight is None or weight.dtype.kind != "f":
            return "weight is not a float constant"
    if op == "Gemm":
        weight = consts.get(node.inputs[1])
        if weight is None or weight.dtype.kind != "f" or weight.ndim != 2:
            return "B is not a 2-D float constant"
        if node.attrs.get("transA"):
            return "transA=1 is not supported by the integer Gemm"
    if op == "MatMul" and node.inputs[1] in consts and consts[node.inputs[1]].dtype.kind != "f":
        return "weight is not float"
    if op in ("Add", "Mul") and any(consts.get(name) is not None and consts[name].size > 1 for name in node.inputs):
        # x * s + t with per-channel constants (a BatchNorm no conv absorbed): the constants'
        # spread does not fit one uint8 scale, and a float scale-shift costs one pass anyway
        return "per-channel constant operand (a scale or shift); kept in float like BatchNormalization"
    return None


def _bias_foldable(node: Node, consts: dict[str, np.ndarray]) -> bool:
    """Gemm's C can be an int32 bias when it is a constant vector and alpha = beta = 1."""
    bias = consts.get(node.inputs[2])
    return (
        bias is not None
        and bias.dtype.kind == "f"
        and bias.ndim <= 1
        and node.attrs.get("alpha", 1.0) == 1.0
        and node.attrs.get("beta", 1.0) == 1.0
    )


# ---------------------------------------------------------------------------- calibrating
def _calibrate(graph: Graph, feeds: list[dict], names: list[str], method: str, percentile: float,
               progress: bool) -> dict[str, tuple[float, float]]:
    from .calibrate import Calibrator

    options = {"percentile": percentile} if method == "percentile" else {}
    calibrator = Calibrator(method, **options)
    calibrator.collect(graph, ListDataReader(feeds), tensor_names=names, progress=progress)
    return calibrator.ranges()


def _equalize(graph: Graph, report: QuantizationReport) -> Graph:
    from .equalize import equalize_cross_layer

    graph, equalization = equalize_cross_layer(graph)
    report.techniques.append("cross-layer equalization")
    report.notes.append(f"cross-layer equalization: {len(equalization.pairs)} conv pair(s) equalized "
                        f"in {equalization.rounds} round(s)")
    return graph


def _input_hessians(graph: Graph, feeds: list[dict], plan: "_Plan", report: QuantizationReport) -> dict[str, np.ndarray]:
    from .gptq import input_hessians

    hessians = input_hessians(graph, ListDataReader(feeds), [w for w, axis in plan.weights.items() if axis is not None])
    report.techniques.append("GPTQ rounding")
    report.notes.append(f"GPTQ rounding: {len(hessians)} weight(s) rounded against their inputs' statistics")
    return hessians


def _correct_bias(graph: Graph, feeds: list[dict], weights: dict[str, "_QuantizedWeight"],
                  report: QuantizationReport) -> Graph:
    """Empirical bias correction with the weights as they will be deployed (see :mod:`.equalize`)."""
    from .equalize import correct_bias

    dequantized = {name: w.dequantized() for name, w in weights.items() if w.values.dtype != np.int32}
    corrected = correct_bias(graph, ListDataReader(feeds), dequantized, progress=False)
    report.techniques.append("bias correction")
    report.notes.append(f"bias correction: {len(dequantized)} layer bias(es) corrected on {len(feeds)} sample(s)")
    return corrected


# ---------------------------------------------------------------------------- quantizing weights
@dataclasses.dataclass
class _QuantizedWeight:
    values: np.ndarray  # int8 or int4 weights, int32 biases
    scale: np.ndarray  # float32, 0-d or 1-d
    zero_point: np.ndarray
    axis: int | None

    def dequantized(self) -> np.ndarray:
        scale = self.scale
        if self.axis is not None and scale.ndim == 1:
            shape = [1] * self.values.ndim
            shape[self.axis] = -1
            scale = scale.reshape(shape)
        return (self.values.astype(np.float32) * scale).astype(np.float32)


def _quantize_weights(graph: Graph, plan: _Plan, params: dict, per_channel: bool,
                      dtype: np.dtype = np.dtype(np.int8), hessians: dict | None = None) -> dict[str, _QuantizedWeight]:
    """Symmetric ``dtype`` weights (int8 or int4, per output channel or per tensor), rounded to
    nearest or, for the weights in ``hessians``, by GPTQ; then int32 biases."""
    from .affine import compute_params, integer_range, quantize
    from .gptq import as_rows, from_rows, gptq_round

    weights: dict[str, _QuantizedWeight] = {}
    for name, axis in plan.weights.items():
        w = np.asarray(graph.initializers[name], dtype=np.float32)
        rows_axis = axis
        if per_channel and axis is not None and w.ndim >= 1:
            reduce = tuple(i for i in range(w.ndim) if i != axis)
            bound = np.abs(w).max(axis=reduce) if w.size else np.zeros(w.shape[axis], np.float32)
            p = compute_params(-bound, bound, dtype, symmetric=True, axis=axis)
        else:
            bound = np.float32(np.abs(w).max() if w.size else 0.0)
            p = compute_params(-bound, bound, dtype, symmetric=True)
            axis = None
        q = quantize(w, p)
        if hessians and name in hessians:
            rows = gptq_round(as_rows(w, rows_axis), hessians[name], p.scale, *integer_range(dtype, symmetric=True))
            q = from_rows(rows, w.shape, rows_axis).astype(np.int32).astype(dtype)
        weights[name] = _QuantizedWeight(np.asarray(q), np.asarray(p.scale, np.float32),
                                         np.asarray(p.zero_point), axis)
    for bias, (source, weight) in plan.biases.items():
        b = np.asarray(graph.initializers[bias], dtype=np.float64)
        s_in = float(np.asarray(params[source].scale).reshape(-1)[0])
        s_w = weights[weight].scale.astype(np.float64)
        scale = np.maximum(s_in * s_w, np.finfo(np.float32).tiny).astype(np.float32)
        q = np.clip(np.rint(b / scale.astype(np.float64)), -(2**31), 2**31 - 1).astype(np.int32)
        axis = 0 if scale.ndim == 1 else None
        weights[bias] = _QuantizedWeight(q, scale, np.zeros(scale.shape, np.int32), axis)
    return weights


# ---------------------------------------------------------------------------- writing QDQ
def _insert_qdq(graph: Graph, plan: _Plan, params: dict, weights: dict[str, _QuantizedWeight]) -> Graph:
    """A copy of the float graph with Q→DQ after each quantized tensor and DQ after each weight."""
    graph = graph.copy()
    opset = graph.opset_of("")
    fresh = graph.namer()

    def constant(stem: str, array: np.ndarray) -> str:
        name = fresh(stem)
        graph.initializers[name] = np.asarray(array)
        return name

    def make(op_type: str, inputs: list[str], outputs: list[str], axis: int | None = None) -> Node:
        attrs = {"axis": axis} if axis is not None else {}
        node = Node(op_type, inputs, outputs, attrs, "", fresh(f"{outputs[0]}_{op_type}"))
        ops.prepare_node(node, opset)
        return node

    renamed: dict[str, str] = {}  # float tensor -> the DQ output its readers now read
    emitted: list[Node] = []

    def quantize_tensor(name: str) -> None:
        p = params[name]
        scale = constant(f"{name}_scale", np.asarray(p.scale, np.float32).reshape(()))
        zero = constant(f"{name}_zero_point", np.asarray(p.zero_point).reshape(()))
        if name in graph.initializers:  # a constant activation (Add's operand): stored quantized
            from .affine import quantize

            stored = constant(f"{name}_quantized", np.asarray(quantize(graph.initializers[name], p)))
        else:
            stored = fresh(f"{name}_quantized")
            emitted.append(make("QuantizeLinear", [name, scale, zero], [stored]))
        renamed[name] = fresh(f"{name}_dequantized")
        emitted.append(make("DequantizeLinear", [stored, scale, zero], [renamed[name]]))

    def dequantize_weight(name: str) -> None:
        w = weights[name]
        inputs = [constant(f"{name}_quantized", w.values), constant(f"{name}_scale", w.scale)]
        if w.values.dtype != np.int32:  # an int32 bias's zero point is 0, DequantizeLinear's default
            inputs.append(constant(f"{name}_zero_point", w.zero_point))
        renamed[name] = fresh(f"{name}_dequantized")
        emitted.append(make("DequantizeLinear", inputs, [renamed[name]], axis=w.axis))

    for name in graph.input_names:
        if name in plan.tensors:
            quantize_tensor(name)
    for node in graph.topological_order():
        for name in node.present_inputs:
            if name in weights and name not in renamed:
                dequantize_weight(name)
            elif name in plan.tensors and name in graph.initializers and name not in renamed:
                quantize_tensor(name)
        node.inputs = [renamed.get(n, n) for n in node.inputs]
        emitted.append(node)
        for name in node.outputs:
            if name in plan.tensors:
                quantize_tensor(name)
    for name in weights:
        if name in graph.initializers and not any(name in n.inputs for n in emitted):
            del graph.initializers[name]  # replaced by its quantized twin
    for name in list(plan.tensors):
        if name in graph.initializers and not any(name in n.inputs for n in emitted):
            del graph.initializers[name]
    graph.nodes = emitted
    graph.value_info = {}
    graph.validate()
    return graph


def _export(graph: Graph, model_out: Any) -> onnx.ModelProto:
    from ..frontend import to_onnx

    model = to_onnx(graph, decompose=False)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:  # a bug of the quantizer, not of the user
        raise TinyInferError(f"the quantized model does not pass onnx.checker: {exc}") from None
    if model_out is not None:
        path = os.fspath(model_out)
        if path.lower().endswith(".tinf"):
            from .. import save
            from ..runtime import load

            save(load(model), path)
        else:
            onnx.save(model, path)
    return model


# ============================================================================ dynamic
def quantize_dynamic(
    model_in: Any,
    model_out: str | os.PathLike | None,
    *,
    per_channel: bool = True,
    weight_type: Any = np.int8,
    op_types: Iterable[str] | None = None,
) -> QuantizationReport:
    """Quantize weights offline and activations at run time (no calibration data).

    Each ``MatMul``/``Gemm`` with a constant 2-D weight becomes
    ``DynamicQuantizeLinear(A) → MatMulInteger(A_q, B_q, A_zero) → Cast → Mul(A_scale · B_scale)``
    (``+ C`` for Gemm), and each ``Conv`` the same with ``ConvInteger``, as ONNX Runtime's
    dynamic quantizer writes them. Weights are int8 symmetric (zero point 0, so no weight zero
    point input is needed), per output channel when ``per_channel``.
    """
    weight_type = np.dtype(weight_type)
    if weight_type != np.dtype(np.int8):
        raise TinyInferError(f"weight_type must be int8 (symmetric weights), got {weight_type}")
    wanted = frozenset(op_types) if op_types is not None else frozenset(COMPUTE_OPS)
    unknown = sorted(wanted - set(COMPUTE_OPS))
    if unknown:
        raise TinyInferError(f"quantize_dynamic handles {list(COMPUTE_OPS)}, not {unknown}")
    model = _prepare_model(model_in)
    report = QuantizationReport("dynamic", None, per_channel, "uint8 (at run time)", weight_type.name)
    report.weight_bytes_before = _weight_bytes(model)
    graph = _float_graph(model)
    rewritten = _rewrite_dynamic(graph, wanted, per_channel, report)
    result = _export(rewritten, model_out)
    report.weight_bytes_after = _weight_bytes(result)
    report.model = result
    return report


def _rewrite_dynamic(graph: Graph, wanted: frozenset[str], per_channel: bool, report: QuantizationReport) -> Graph:
    from .affine import compute_params, quantize

    graph = graph.copy()
    opset = graph.opset_of("")
    values = ops.infer_shapes(graph)
    consts = graph.initializers
    fresh = graph.namer()

    def make(op_type: str, inputs: list[str], outputs: list[str], **attrs) -> Node:
        node = Node(op_type, inputs, outputs, attrs, "", fresh(f"{outputs[0]}_{op_type}"))
        ops.prepare_node(node, opset)
        return node

    def int8_weight(w: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
        if per_channel:
            reduce = tuple(i for i in range(w.ndim) if i != axis)
            bound = np.abs(w).max(axis=reduce)
            p = compute_params(-bound, bound, np.int8, symmetric=True, axis=axis)
        else:
            bound = np.float32(np.abs(w).max())
            p = compute_params(-bound, bound, np.int8, symmetric=True)
        return np.asarray(quantize(w, p)), np.asarray(p.scale, np.float32)

    nodes: list[Node] = []
    for node in graph.nodes:
        op = node.op_type
        x = node.inputs[0] if node.inputs else ""
        value = values.get(x)
        weight = consts.get(node.inputs[1]) if len(node.inputs) > 1 else None
        if op not in COMPUTE_OPS or node.domain:
            report.keep_float(op, FLOAT_REASONS.get(op, "dynamic quantization covers Conv, Gemm and MatMul only"))
            nodes.append(node)
            continue
        if op not in wanted:
            report.keep_float(op, "excluded by op_types")
            nodes.append(node)
            continue
        if value is None or value.dtype != np.dtype(np.float32) or weight is None or weight.dtype != np.float32:
            report.keep_float(op, "weight is not a float32 constant")
            nodes.append(node)
            continue
        if op == "MatMul" and weight.ndim != 2:
            report.keep_float(op, "weight is not 2-D")
            nodes.append(node)
            continue
        if op == "Gemm" and node.attrs.get("transA"):
            report.keep_float(op, "transA=1 is not supported by MatMulInteger")
            nodes.append(node)
            continue
        bias = node.inputs[2] if op in ("Conv", "Gemm") and len(node.inputs) > 2 and node.inputs[2] else None
        if bias is not None and bias not in consts:
            report.keep_float(op, "bias is not constant")
            nodes.append(node)
            continue
        y = node.outputs[0]
        xq, xs, xz = fresh(f"{x}_quantized"), fresh(f"{x}_scale"), fresh(f"{x}_zero_point")
        nodes.append(make("DynamicQuantizeLinear", [x], [xq, xs, xz]))
        accumulator = fresh(f"{y}_int32")
        if op == "Conv":
            wq, ws = int8_weight(weight, 0)
            conv_attrs = {k: v for k, v in node.attrs.items() if v is not None}
            nodes.append(make("ConvInteger", [xq, _store(graph, fresh, node.inputs[1], wq), xz], [accumulator], **conv_attrs))
            scale_shape = (-1,) + (1,) * (weight.ndim - 2)  # one scale per output channel of NCHW
            bias_array = None if bias is None else consts[bias].reshape(scale_shape)
        else:
            matrix = weight.T if (op == "Gemm" and node.attrs.get("transB")) else weight
            wq, ws = int8_weight(np.ascontiguousarray(matrix), 1)
            if op == "Gemm":  # alpha folds into the weight scale, beta into the bias
                ws = (ws * np.float32(node.attrs.get("alpha", 1.0))).astype(np.float32)
            nodes.append(make("MatMulInteger", [xq, _store(graph, fresh, node.inputs[1], wq), xz], [accumulator]))
            scale_shape = (-1,)
            bias_array = None if bias is None else consts[bias] * np.float32(node.attrs.get("beta", 1.0))
        as_float = fresh(f"{y}_float")
        nodes.append(make("Cast", [accumulator], [as_float], to=1))
        weight_scale = fresh(f"{node.inputs[1]}_scale")
        graph.initializers[weight_scale] = ws.reshape(scale_shape) if ws.ndim else ws
        combined = fresh(f"{y}_scale")
        nodes.append(make("Mul", [xs, weight_scale], [combined]))
        if bias is None:
            nodes.append(make("Mul", [as_float, combined], [y]))
        else:
            scaled = fresh(f"{y}_scaled")
            nodes.append(make("Mul", [as_float, combined], [scaled]))
            bias_name = fresh(f"{bias}_float")
            graph.initializers[bias_name] = np.asarray(bias_array, np.float32)
            nodes.append(make("Add", [scaled, bias_name], [y]))
        report.quantized[op] += 1
    graph.nodes = nodes
    read = {n for node in nodes for n in node.inputs} | set(graph.output_names)
    for name in list(graph.initializers):
        if name not in read:
            del graph.initializers[name]
    graph.value_info = {}
    graph.validate()
    return graph


def _store(graph: Graph, fresh, name: str, array: np.ndarray) -> str:
    stored = fresh(f"{name}_quantized")
    graph.initializers[stored] = array
    return stored
