"""What a network costs, layer by layer: parameters, MACs, FLOPs, memory, memory access.

Chapter 02 compares networks that were designed to be cheap, and "cheap" has more than one
meaning. :func:`analyze` measures every node of any tinyinfer graph on six axes:

* **parameters** — elements (and bytes) of the initializers the node reads; each
  initializer is counted once overall, at its first reader, so the column sums to the model's
  size. Outputs of ``Constant`` nodes count as initializers.
* **MACs** — multiply-accumulates of the matrix ops: Conv, ConvTranspose, Gemm, MatMul, their
  integer and QLinear twins, two-operand Einsum, and the gate matrices of RNN, GRU and LSTM.
  A bias is not counted: a kernel starts its accumulator at the bias, for free.
* **FLOPs** — floating-point operations, with this convention:

  - 1 MAC = 2 FLOPs (one multiply, one add);
  - elementwise and activation ops: one FLOP per output element, except the ops listed in
    ``FLOPS_PER_ELEMENT``, which count the operations of their formula. A transcendental
    function (exp, log, erf, tanh, sqrt, sin, ...) counts as one FLOP, like an addition, so
    Sigmoid ``1 / (1 + exp(-x))`` costs 3, HardSwish ``x · min(max(x/6 + 1/2, 0), 1)`` 5, and
    Gelu 5 (erf form) or 9 (tanh form);
  - variadic Sum, Max, Min: one FLOP per output element per input after the first (Mean one more);
  - reductions (ReduceSum, ArgMax, ...): one FLOP per *input* element read (two for ReduceL2,
    ReduceL1, ReduceSumSquare, ReduceLogSumExp: an operation before the accumulate);
  - pooling: one FLOP per window tap, i.e. output elements × kernel size (padding taps
    included; LpPool two); global pooling one per input element;
  - BatchNormalization: two per element (an engine folds it into ``a·x + b`` per channel);
    Layer-, Group-, InstanceNormalization seven (mean, centre, variance, scale by 1/σ, affine);
    LRN ``size + 4`` (square, window sum, scale and bias, power, divide);
  - Resize: nearest 0; linear 2 per interpolation tap (2**k taps over k resized axes), cubic
    2 per tap (4**k taps);
  - data movement (Reshape, Transpose, Concat, Slice, Gather, Pad, Cast, ...): zero.

* **activation memory** — bytes of the tensors the node writes;
* **memory access** — bytes the node reads and writes: its activation inputs, the weights it
  reads, and its outputs. This is the "memory access cost" (MAC) of the ShuffleNet V2 paper
  (Ma et al., 2018, section 2), named ``memory_access`` here so it cannot be confused with
  multiply-accumulates. For a 1×1 convolution it is exactly the paper's ``hw(c1 + c2) + c1·c2``
  elements. Every node is counted as an engine without fusion runs it: a Reshape reads and
  writes its tensor, although a good engine makes it a free view (chapter 05);
* **arithmetic intensity** — FLOPs per byte of memory access: a roofline model's x-axis
  (Williams et al., 2009). Below the machine's FLOPs/bandwidth ratio, a layer is memory-bound.

Besides the per-layer columns, :class:`CostReport` gives the **peak activation memory** of a
simple schedule: nodes run in topological order, every tensor is allocated when its producer
runs and freed after its last reader (graph inputs live from the start, graph outputs to the
end). The optimizer chapter lowers it with in-place ops and a better order.

Shapes come from :func:`tinyinfer.ops.infer_shapes` with every symbolic dim of the graph inputs
set to ``batch``. A node whose shapes cannot be known is counted as zero and listed in
``CostReport.unknown``.

:func:`count_flops` is the older, quick count (MACs of the four matrix ops, and one FLOP per
element elsewhere) that :func:`tinyinfer.models.zoo.measured_cost` uses to compare the zoo
with the papers.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any

import numpy as np

from .. import ops
from ..ir import Graph, Node, Value

_MATRIX_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}


@dataclasses.dataclass
class NodeCost:
    name: str
    op_type: str
    macs: int
    flops: int


def count_flops(graph: Graph, batch: int = 1) -> list[NodeCost]:
    """MACs and FLOPs of every node for inputs with symbolic dims set to ``batch``."""
    given = {}
    for value in graph.inputs:
        shape = tuple(d if isinstance(d, int) else batch for d in (value.shape or ()))
        given[value.name] = Value(value.name, value.dtype, shape)
    values = ops.infer_shapes(graph, given)
    costs = []
    for node in graph.nodes:
        ins = [values.get(n) if n else None for n in node.inputs]
        outs = [values.get(n) for n in node.outputs if n]
        macs = _macs(node, ins, outs)
        if macs:
            flops = 2 * macs
        else:
            flops = _elements(outs[0]) if outs and outs[0] is not None else 0
            if node.op_type.startswith("Reduce") or "Pool" in node.op_type:
                flops = _elements(ins[0]) if ins and ins[0] is not None else flops
        costs.append(NodeCost(node.name, node.op_type, macs, flops))
    return costs


# ---------------------------------------------------------------------------- the full analysis
@dataclasses.dataclass
class LayerCost:
    """The cost of one node. Byte counts use each tensor's own dtype unless told otherwise."""

    name: str
    op_type: str
    shape: str  # the first output's type, e.g. "float[1x64x56x56]"
    params: int  # initializer elements first read here
    param_bytes: int
    macs: int
    flops: int
    input_bytes: int  # activations read (every distinct non-weight input)
    weight_bytes: int  # weights read (every distinct initializer input, shared ones too)
    activation_bytes: int  # outputs written
    live_bytes: int  # activation memory allocated while this node runs (free-after-last-use)
    known: bool = True  # False when some shape could not be inferred (costs are then 0)

    @property
    def memory_access(self) -> int:
        """Bytes read and written: Ma et al.'s memory access cost."""
        return self.input_bytes + self.weight_bytes + self.activation_bytes

    @property
    def arithmetic_intensity(self) -> float:
        """FLOPs per byte of memory access (0 for a node that moves nothing)."""
        return self.flops / self.memory_access if self.memory_access else 0.0


_SUMMED = ("params", "param_bytes", "macs", "flops", "input_bytes", "weight_bytes", "activation_bytes")


@dataclasses.dataclass
class CostReport:
    """Per-layer costs of a graph, with totals, a per-op summary and a printable table."""

    layers: list[LayerCost]
    batch: int
    peak_activation_bytes: int
    peak_node: str  # the node running when the peak is reached ("" for a graph without nodes)
    unknown: list[str] = dataclasses.field(default_factory=list)  # nodes whose shapes are unknown

    @property
    def totals(self) -> dict[str, float]:
        """Sums over every layer, plus the arithmetic intensity and peak of the whole graph."""
        totals: dict[str, float] = {key: sum(getattr(layer, key) for layer in self.layers) for key in _SUMMED}
        totals["memory_access"] = sum(layer.memory_access for layer in self.layers)
        totals["arithmetic_intensity"] = totals["flops"] / totals["memory_access"] if totals["memory_access"] else 0.0
        totals["peak_activation_bytes"] = self.peak_activation_bytes
        return totals

    def by_op(self) -> dict[str, dict[str, float]]:
        """Costs summed per op type (with a ``count`` of nodes), the most FLOPs first."""
        groups: dict[str, dict[str, float]] = {}
        for layer in self.layers:
            group = groups.setdefault(layer.op_type, dict.fromkeys(("count", *_SUMMED, "memory_access"), 0))
            group["count"] += 1
            for key in _SUMMED:
                group[key] += getattr(layer, key)
            group["memory_access"] += layer.memory_access
        for group in groups.values():
            group["arithmetic_intensity"] = group["flops"] / group["memory_access"] if group["memory_access"] else 0.0
        return dict(sorted(groups.items(), key=lambda item: (-item[1]["flops"], item[0])))

    def table(self, top: int | None = None) -> str:
        """One line per layer (graph order) and a totals line.

        ``top=N`` keeps only the N layers with the most FLOPs (still in graph order).
        """
        layers = self.layers
        if top is not None and top < len(layers):
            keep = set(sorted(range(len(layers)), key=lambda i: -layers[i].flops)[:top])
            layers = [layer for i, layer in enumerate(layers) if i in keep]
        name_width = min(max([len(layer.name) for layer in layers] + [5]), 32)
        op_width = max([len(layer.op_type) for layer in layers] + [2])
        shape_width = min(max([len(layer.shape) for layer in layers] + [6]), 26)
        header = (
            f"{'layer':<{name_width}}  {'op':<{op_width}}  {'output':<{shape_width}}  {'params':>8}  {'MACs':>8}  "
            f"{'FLOPs':>8}  {'act mem':>9}  {'mem access':>10}  {'FLOP/B':>7}"
        )
        lines = [header, "-" * len(header)]
        for layer in layers:
            lines.append(
                f"{_clip(layer.name, name_width):<{name_width}}  {layer.op_type:<{op_width}}  "
                f"{_clip(layer.shape, shape_width):<{shape_width}}  {human_count(layer.params):>8}  "
                f"{human_count(layer.macs):>8}  {human_count(layer.flops):>8}  "
                f"{human_bytes(layer.activation_bytes):>9}  {human_bytes(layer.memory_access):>10}  "
                f"{layer.arithmetic_intensity:>7.2f}" + ("" if layer.known else "  (shape unknown)")
            )
        totals = self.totals
        lines.append("-" * len(header))
        lines.append(
            f"{'total':<{name_width}}  {'':<{op_width}}  {'':<{shape_width}}  {human_count(totals['params']):>8}  "
            f"{human_count(totals['macs']):>8}  {human_count(totals['flops']):>8}  "
            f"{human_bytes(totals['activation_bytes']):>9}  {human_bytes(totals['memory_access']):>10}  "
            f"{totals['arithmetic_intensity']:>7.2f}"
        )
        if len(layers) < len(self.layers):
            lines.append(f"({len(layers)} of {len(self.layers)} layers shown: those with the most FLOPs)")
        lines.append(
            f"batch {self.batch}; peak activation memory {human_bytes(self.peak_activation_bytes)} "
            f"(free after last use, reached at {self.peak_node or '-'})"
        )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def analyze(graph_or_model: Any, batch: int = 1, dtype_bytes: int | None = None) -> CostReport:
    """Cost of every node of a model (Graph, ModelProto, path or bytes), batch ``batch``.

    ``dtype_bytes`` stores every tensor, weights included, with that many bytes per element
    (e.g. 1 to estimate an int8 deployment, 2 for float16); by default each tensor's own dtype
    decides.
    """
    from ..runtime import load  # models sit above the runtime

    graph = load(graph_or_model)
    given = {
        value.name: Value(value.name, value.dtype, tuple(d if isinstance(d, int) else batch for d in value.shape))
        for value in graph.inputs
        if value.shape is not None
    }
    tensors = _Tensors(ops.infer_shapes(graph, given), dtype_bytes)
    order = graph.topological_order()
    weights = set(graph.initializers) | {out for node in order if node.op_type == "Constant" for out in node.outputs}
    live = _live_bytes(graph, order, weights, tensors.nbytes)
    layers, counted = [], set()
    for node, live_bytes in zip(order, live):
        first_read = [n for n in dict.fromkeys(node.present_inputs) if n in weights and n not in counted]
        counted.update(first_read)
        layers.append(_layer_cost(node, tensors, weights, first_read, live_bytes))
    peak = int(np.argmax(live)) if live else None
    return CostReport(
        layers=layers,
        batch=batch,
        peak_activation_bytes=live[peak] if peak is not None else 0,
        peak_node=layers[peak].name if peak is not None else "",
        unknown=[layer.name for layer in layers if not layer.known],
    )


# ---------------------------------------------------------------------------- formatting
def human_count(n: float) -> str:
    """12, 3.4K, 25.6M, 4.09G: three significant digits with an SI prefix."""
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{prefix}"
    return f"{n:.3g}" if isinstance(n, float) and not float(n).is_integer() else str(int(n))


def human_bytes(n: float) -> str:
    """Bytes in binary units: 512 B, 1.5 KiB, 97.9 MiB."""
    for scale, unit in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if abs(n) >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{int(n)} B"


# ---------------------------------------------------------------------------- analysis helpers
def _live_bytes(graph: Graph, order: list[Node], weights: set[str], nbytes) -> list[int]:
    """Activation bytes allocated while each node runs, freeing tensors after their last use.

    A node's outputs are allocated before its inputs can be freed, so they count together.
    Graph inputs are live from the start (unless nobody reads them); graph outputs stay
    live to the end.
    """
    last_use: dict[str, int] = {}
    for step, node in enumerate(order):
        for name in node.outputs:
            if name:
                last_use[name] = step  # an output nobody reads is freed at once
        for name in node.present_inputs:
            last_use[name] = step
    for name in graph.output_names:
        last_use[name] = len(order)
    freed_at: dict[int, list[str]] = collections.defaultdict(list)
    for name, step in last_use.items():
        if name not in weights:
            freed_at[step].append(name)
    live = sum(nbytes(v.name) for v in graph.inputs if v.name in last_use and v.name not in weights)
    during = []
    for step, node in enumerate(order):
        live += sum(nbytes(name) for name in dict.fromkeys(node.outputs) if name and name not in weights)
        during.append(live)
        live -= sum(nbytes(name) for name in freed_at[step])
    return during


class _Tensors:
    """Shapes of every tensor, and their sizes in elements and bytes."""

    def __init__(self, values: dict[str, Value], dtype_bytes: int | None):
        self.values = values
        self.dtype_bytes = dtype_bytes

    def get(self, name: str) -> Value | None:
        return self.values.get(name) if name else None

    def elements(self, name: str) -> int:
        return _elements(self.get(name))

    def nbytes(self, name: str) -> int:
        value = self.get(name)
        itemsize = self.dtype_bytes or (value.dtype.itemsize if value is not None and value.dtype is not None else 4)
        return self.elements(name) * itemsize


def _layer_cost(node: Node, tensors: _Tensors, weights: set[str], first_read: list[str], live_bytes: int) -> LayerCost:
    ins = [tensors.get(n) for n in node.inputs]
    outs = [tensors.get(n) for n in node.outputs]
    read = list(dict.fromkeys(node.present_inputs))
    known = all(_elements_or_none(v) is not None for v in [*ins, *outs] if v is not None)
    is_constant = node.op_type == "Constant"  # its value is a weight, counted at its readers
    macs = _analysis_macs(node, ins, outs) if known else 0
    flops = 0 if is_constant or not known else (2 * macs if macs else _flops(node, ins, outs))
    return LayerCost(
        name=_label(node),
        op_type=node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}:{node.op_type}",
        shape=outs[0].type_str() if outs and outs[0] is not None else "?",
        params=sum(tensors.elements(n) for n in first_read),
        param_bytes=sum(tensors.nbytes(n) for n in first_read),
        macs=macs,
        flops=flops,
        input_bytes=sum(tensors.nbytes(n) for n in read if n not in weights),
        weight_bytes=sum(tensors.nbytes(n) for n in read if n in weights),
        activation_bytes=0 if is_constant else sum(tensors.nbytes(n) for n in node.outputs),
        live_bytes=live_bytes,
        known=known,
    )


def _label(node: Node) -> str:
    return node.name or (node.outputs[0] if node.outputs else node.op_type)


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


# ---------------------------------------------------------------------------- FLOP rules
#: FLOPs per output element of the elementwise ops whose formula takes more than one operation
#: (every other elementwise op costs one). A transcendental function counts as one operation.
FLOPS_PER_ELEMENT = {
    "LeakyRelu": 2,  # compare, multiply
    "PRelu": 2,  # compare, multiply
    "Clip": 2,  # min, max
    "Shrink": 2,  # compare, add or subtract the bias
    "Sigmoid": 3,  # 1 / (1 + exp(-x)): exp, add, divide
    "Softplus": 3,  # log(1 + exp(x))
    "Softsign": 3,  # x / (1 + |x|)
    "HardSigmoid": 4,  # max(0, min(1, alpha·x + beta)): multiply, add, min, max
    "HardSwish": 5,  # x · HardSigmoid(x)
    "Swish": 5,  # x · sigmoid(alpha·x)
    "Mish": 5,  # x · tanh(softplus(x))
    "Elu": 4,  # x < 0 ? alpha·(exp(x) - 1) : x: compare, exp, subtract, multiply
    "Celu": 5,  # Elu with x / alpha inside the exp
    "Selu": 5,  # Elu, then times gamma
    "BatchNormalization": 2,  # folded into a·x + b per channel
    "LayerNormalization": 7,  # mean 1, centre 1, variance 2, times 1/σ 1, scale 1, shift 1
    "GroupNormalization": 7,
    "InstanceNormalization": 7,
    "MeanVarianceNormalization": 5,  # LayerNormalization without the affine
    "RMSNormalization": 4,  # square-and-add 2, times 1/rms 1, scale 1
    "LpNormalization": 3,  # |x|^p-and-add 2, divide 1
    "Softmax": 5,  # max, subtract, exp, sum, divide
    "LogSoftmax": 5,  # max, subtract, exp, sum, subtract log-sum
    "QuantizeLinear": 4,  # divide, round, add zero point, saturate
    "DequantizeLinear": 2,  # subtract zero point, multiply
}

#: FLOPs per *input* element of reductions.
_FLOPS_PER_INPUT_ELEMENT = {
    "ReduceL1": 2,  # |x|, add
    "ReduceL2": 2,  # square, add
    "ReduceSumSquare": 2,
    "ReduceLogSumExp": 2,  # exp, add
    "GlobalLpPool": 2,
}
_REDUCTIONS = {
    "ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceLogSum", "ArgMax", "ArgMin",
    "CumSum", "CumProd", "GlobalAveragePool", "GlobalMaxPool", *_FLOPS_PER_INPUT_ELEMENT,
}  # fmt: skip

#: Ops that only move, copy or describe data: no arithmetic.
_DATA_MOVEMENT = {
    "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Dropout", "Transpose", "Concat", "Split",
    "Slice", "Gather", "GatherElements", "GatherND", "Scatter", "ScatterElements", "ScatterND", "Pad",
    "Tile", "Expand", "Shape", "Size", "Cast", "CastLike", "Constant", "ConstantOfShape", "DepthToSpace",
    "SpaceToDepth", "Compress", "NonZero", "EyeLike", "Range", "Trilu", "ReverseSequence", "CenterCropPad",
    "OneHot",
}  # fmt: skip

#: Quantized matrix ops and the float op whose MACs they share: (twin, index of A, index of B).
_QUANTIZED_TWINS = {
    "ConvInteger": ("Conv", 0, 1),
    "QLinearConv": ("Conv", 0, 3),
    "MatMulInteger": ("MatMul", 0, 1),
    "QLinearMatMul": ("MatMul", 0, 3),
}


def _flops(node: Node, ins: list[Value | None], outs: list[Value | None]) -> int:
    """FLOPs of a node without MACs, by the rules of the module docstring."""
    op = node.op_type
    out_elements = _elements(outs[0]) if outs and outs[0] is not None else 0
    in_elements = _elements(ins[0]) if ins and ins[0] is not None else 0
    if op in _DATA_MOVEMENT:
        return 0
    if op in _REDUCTIONS:
        return _FLOPS_PER_INPUT_ELEMENT.get(op, 1) * in_elements
    if op in ("MaxPool", "AveragePool", "LpPool"):
        taps = int(np.prod(node.attrs.get("kernel_shape") or [1]))
        return (2 if op == "LpPool" else 1) * out_elements * taps
    if op in ("Sum", "Max", "Min", "Mean"):
        operands = len(node.present_inputs)
        return (operands - 1 + (op == "Mean")) * out_elements
    if op == "Gelu":
        return (9 if node.attrs.get("approximate") == "tanh" else 5) * out_elements
    if op == "LRN":
        # square, a window sum over `size` channels, scale and bias, power, divide
        return (int(node.attrs.get("size") or 1) + 4) * out_elements
    if op in ("Resize", "Upsample"):
        return _resize_flops(node, ins[0], outs[0], out_elements)
    return FLOPS_PER_ELEMENT.get(op, 1) * out_elements


def _resize_flops(node: Node, x: Value | None, y: Value | None, out_elements: int) -> int:
    mode = node.attrs.get("mode") or "nearest"
    if mode == "nearest" or x is None or y is None or len(x.shape) != len(y.shape):
        return 0
    resized = sum(1 for a, b in zip(x.shape, y.shape) if a != b)
    taps = (4 if mode == "cubic" else 2) ** resized
    return 2 * taps * out_elements  # one multiply-add per tap


def _analysis_macs(node: Node, ins: list[Value | None], outs: list[Value | None]) -> int:
    """MACs of the matrix ops, including the integer and QLinear twins, Einsum and RNNs."""
    outs = [v for v in outs if v is not None]
    if node.op_type in _QUANTIZED_TWINS:
        twin, a, b = _QUANTIZED_TWINS[node.op_type]
        pick = [ins[a] if a < len(ins) else None, ins[b] if b < len(ins) else None]
        return _macs(node, pick, outs, op_type=twin)
    if node.op_type == "Einsum":
        return _einsum_macs(node.attrs.get("equation") or "", ins)
    if node.op_type in ("RNN", "GRU", "LSTM"):
        # each of seq_length × batch steps multiplies x by W and the hidden state by R
        x, w, r = (ins + [None, None, None])[:3]
        if x is None or w is None or r is None or len(x.shape) != 3:
            return 0
        return x.shape[0] * x.shape[1] * (_elements(w) + _elements(r))
    return _macs(node, ins, outs)


def _einsum_macs(equation: str, ins: list[Value | None]) -> int:
    """A two-operand Einsum without ellipsis: one MAC per point of the full index space."""
    lhs = equation.replace(" ", "").split("->")[0]
    terms = lhs.split(",")
    if len(terms) != 2 or "..." in lhs or len(ins) != 2 or any(v is None for v in ins):
        return 0
    sizes: dict[str, int] = {}
    for term, value in zip(terms, ins):
        if len(term) != len(value.shape):
            return 0
        sizes.update(zip(term, value.shape))
    return int(np.prod(list(sizes.values()), dtype=np.int64))


# ---------------------------------------------------------------------------- shared helpers
def _elements_or_none(value: Value | None) -> int | None:
    if value is None or value.shape is None or not all(isinstance(d, int) for d in value.shape):
        return None
    return int(np.prod(value.shape, dtype=np.int64))


def _elements(value: Value | None) -> int:
    """Elements of a tensor, 0 when its shape is not fully known."""
    return _elements_or_none(value) or 0


def _macs(node, ins, outs, op_type: str | None = None) -> int:
    """MACs of Conv, ConvTranspose, Gemm and MatMul (``op_type`` overrides the node's)."""
    op_type = op_type or node.op_type
    if op_type not in _MATRIX_OPS or not outs or outs[0] is None:
        return 0
    out_elements = _elements(outs[0])
    weight = ins[1] if len(ins) > 1 else None
    if weight is None or weight.shape is None or not all(isinstance(d, int) for d in weight.shape):
        return 0
    if op_type == "Conv":
        # every output element is a dot product over C/group * prod(kernel) inputs
        return out_elements * int(np.prod(weight.shape[1:]))
    if op_type == "ConvTranspose":
        # every input element is scattered through M/group * prod(kernel) weights
        return _elements(ins[0]) * int(np.prod(weight.shape[1:]))
    if op_type == "Gemm":
        k = weight.shape[1] if node.attrs.get("transB") else weight.shape[0]
        return out_elements * k
    a = ins[0]
    if a is None or a.shape is None or not a.shape or not isinstance(a.shape[-1], int):
        return 0
    return out_elements * a.shape[-1]  # MatMul: contracted over A's last axis
