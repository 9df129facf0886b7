"""Data-free error reducers of Nagel et al. (2019), "Data-Free Quantization Through Weight
Equalization and Bias Correction": cross-layer equalization and (empirical) bias correction.

**Cross-layer equalization (CLE).** Per-tensor weight quantization uses one scale for all
output channels, set by the widest one; after BatchNorm folding, channel ranges of a
depthwise convolution often differ by a factor of 100 or more, and the narrow channels are
left with a handful of levels. For two layers in a row,

    y = W2 · f(W1 · x + b1) + b2        with f positively homogeneous: f(z / s) = f(z) / s for s > 0

(ReLU, LeakyReLU, PReLU, or no activation), dividing output channel i of layer 1 (its filter
and bias) by s_i and multiplying input channel i of layer 2 by s_i leaves y unchanged. Nagel et
al. choose ``s_i = sqrt(r1_i · r2_i) / r2_i = sqrt(r1_i / r2_i)``, where r1_i is the range
(max |w|) of output channel i of W1 and r2_i that of input channel i of W2: afterwards both
ranges are sqrt(r1_i · r2_i), equal, and the precision lost to per-tensor quantization is
shared between the two layers. In a chain (MobileNet's expand → depthwise → project) each
layer takes part in two pairs, so the pairs are equalized in turn until the scales converge.

A bounded activation (ReLU6 = Clip(0, 6)) is not homogeneous: ``clip(z / s, 0, 6) ≠ clip(z, 0,
6) / s``. ``bounded="exact"`` keeps the function identical by giving the clip per-channel
bounds, ``6 / s_i`` (``Min`` with a per-channel constant after a ``Relu``); ``bounded="relu"``
replaces ReLU6 with ReLU, as Nagel et al. do for MobileNetV2, which changes the function
wherever an activation exceeded 6 (a trained network is expected to tolerate it);
``bounded="skip"`` leaves such pairs alone.

**Bias correction.** Quantizing a weight adds an error ε = Ŵ - W whose effect on an output
channel is not zero on average: E[Ŵx] - E[Wx] = E[εx] ≠ 0, a shift of every activation that
later layers amplify. :func:`correct_bias` measures E[εx] per output channel on calibration
data (the empirical variant of the paper, with each layer's float input) and subtracts it from
the layer's bias, so that E[ŷ] = E[y].

Both work on float graphs with BatchNorm folded into the convolutions first
(:func:`fold_batchnorm`, the O2 pass of that name, without fusing activations).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping

import numpy as np

from ..errors import TinyInferError
from ..ir import Graph, Node
from ..ops import prepare_node
from .affine import fake_quantize, params_from_tensor

#: Activations f with f(z / s) = f(z) / s for every s > 0: nothing to change when equalizing.
HOMOGENEOUS_ACTIVATIONS = ("Relu", "LeakyRelu", "PRelu")
BOUNDED_MODES = ("exact", "relu", "skip")

#: The O2 passes that fold BatchNorm into convolutions, without the conv + activation fusion
#: that would hide the activation between two equalized layers.
_FOLDING_PASSES = ["fold_batchnorm", "remove_dead_after_fusion"]


def fold_batchnorm(model: Any) -> Graph:
    """A copy of the model as a Graph, every foldable BatchNormalization folded into its Conv/Gemm.

    Nothing else changes: a graph without BatchNorm comes back with the same tensor names and
    weights (so a caller's map from weight names to quantized weights stays valid).
    """
    from ..passes import PassManager
    from ..runtime import load

    graph = load(model)
    if not any(node.op_type == "BatchNormalization" and not node.domain for node in graph.nodes):
        return graph.copy()
    graph, _ = PassManager("O2", passes=_FOLDING_PASSES).run(graph)
    return graph


# ============================================================================ equalization
@dataclasses.dataclass
class EqualizedPair:
    """One pair of layers CLE equalized, with the spread of their shared channel ranges.

    ``spread`` = largest / smallest non-zero channel range (max |w|) over the channels the two
    layers share: output channels of ``first``, input channels of ``second``. Per-tensor
    quantization gives the narrowest channel ``1 / spread`` of the levels the widest one gets.
    """

    first: str
    second: str
    activation: str
    channels: int
    first_spread_before: float
    first_spread_after: float
    second_spread_before: float
    second_spread_after: float


@dataclasses.dataclass
class EqualizationReport:
    """What :func:`equalize_cross_layer` did: the pairs, and how many rounds it took."""

    pairs: list[EqualizedPair]
    rounds: int
    converged: bool
    skipped: list[str] = dataclasses.field(default_factory=list)

    def table(self, limit: int | None = 12) -> str:
        lines = [f"cross-layer equalization: {len(self.pairs)} pairs, {self.rounds} rounds"
                 f"{'' if self.converged else ' (not converged)'}"]
        lines.append(f"{'first layer':<28} {'second layer':<28} {'ch':>5}  {'W1 spread':>17}  {'W2 spread':>17}")
        shown = self.pairs if limit is None else self.pairs[:limit]
        for p in shown:
            lines.append(
                f"{p.first[:28]:<28} {p.second[:28]:<28} {p.channels:>5}  "
                f"{p.first_spread_before:7.1f} -> {p.first_spread_after:<7.1f}  "
                f"{p.second_spread_before:7.1f} -> {p.second_spread_after:<7.1f}"
            )
        if len(shown) < len(self.pairs):
            lines.append(f"... {len(self.pairs) - len(shown)} more pairs")
        for note in self.skipped:
            lines.append(f"skipped: {note}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


@dataclasses.dataclass
class _Pair:
    first: Node
    second: Node
    activation: Node | None
    bounds: tuple[float, float] | None  # a bounded Clip's (min, max), to be rewritten
    scale: np.ndarray  # accumulated s_i over all rounds


def equalize_cross_layer(model: Any, *, bounded: str = "exact", max_rounds: int = 100,
                         tolerance: float = 1e-6) -> tuple[Graph, EqualizationReport]:
    """Cross-layer equalization of every Conv → [activation] → Conv pair (Nagel et al., 2019).

    ``model``: a Graph, ModelProto or path; it is not modified (BatchNorm is folded on a copy
    first). A pair qualifies when the first Conv's output feeds only the activation (or the
    second Conv) and the activation's output only the second Conv, both weights are constant,
    and the activation is Relu, LeakyRelu, PRelu, none, or a Clip with min ≥ 0 (handled as
    ``bounded`` says: "exact", "relu" or "skip", see the module docstring). Grouped and
    depthwise convolutions are handled: input channel j of a conv with ``group`` groups lives
    in the rows of its group, at column j mod (channels per group).

    Rounds repeat over all pairs until every scale of a round is within ``tolerance`` of 1.
    Returns the equalized graph and an :class:`EqualizationReport`.
    """
    if bounded not in BOUNDED_MODES:
        raise TinyInferError(f"bounded must be one of {', '.join(BOUNDED_MODES)}, got {bounded!r}")
    graph = fold_batchnorm(model)
    pairs, skipped = _find_pairs(graph, bounded)
    nodes = {node.name: node for pair in pairs for node in (pair.first, pair.second)}
    # Work in float64 on copies, keyed by node name; write back once at the end.
    weights = {name: graph.initializers[node.inputs[1]].astype(np.float64) for name, node in nodes.items()}
    biases = {name: graph.initializers[node.inputs[2]].astype(np.float64) if _bias_name(node) else None
              for name, node in nodes.items()}
    before = [_spreads(weights[p.first.name], weights[p.second.name], p.second) for p in pairs]
    rounds, converged = _balance(pairs, weights, biases, max_rounds, tolerance)

    for name, node in nodes.items():
        _store(graph, node, 1, weights[name])
        if biases[name] is not None:
            _store(graph, node, 2, biases[name])
    for pair in pairs:
        if pair.bounds is not None:
            _rewrite_bounded_activation(graph, pair, bounded)
    graph.validate()
    equalized = []
    for pair, (first_before, second_before) in zip(pairs, before):
        first_after, second_after = _spreads(weights[pair.first.name], weights[pair.second.name], pair.second)
        equalized.append(EqualizedPair(pair.first.name, pair.second.name, _describe(pair), int(pair.scale.size),
                                       first_before, first_after, second_before, second_after))
    return graph, EqualizationReport(equalized, rounds, converged, skipped)


def _balance(pairs: list[_Pair], weights: dict[str, np.ndarray], biases: dict[str, np.ndarray | None],
             max_rounds: int, tolerance: float) -> tuple[int, bool]:
    """Equalize every pair in turn, round after round, until no scale moves by more than ``tolerance``.

    Per pair: r1 = output-channel ranges of W1, r2 = input-channel ranges of W2,
    s = sqrt(r1 / r2); W1 and b1 are divided by s per output channel, W2 multiplied by s per
    input channel, after which both ranges are sqrt(r1 · r2). Returns (rounds, converged).
    """
    if not pairs:
        return 0, True
    for rounds in range(1, max_rounds + 1):
        largest_change = 0.0
        for pair in pairs:
            w1, w2 = weights[pair.first.name], weights[pair.second.name]
            group = pair.second.attrs["group"]
            r1, r2 = _output_channel_ranges(w1), _input_channel_ranges(w2, group)
            s = np.ones_like(r1)
            usable = (r1 > 0) & (r2 > 0)  # a dead channel has nothing to balance
            s[usable] = np.sqrt(r1[usable] / r2[usable])
            weights[pair.first.name] = w1 / s.reshape(-1, *(1,) * (w1.ndim - 1))
            if biases[pair.first.name] is not None:
                biases[pair.first.name] = biases[pair.first.name] / s
            weights[pair.second.name] = _scale_input_channels(w2, s, group)
            pair.scale = pair.scale * s
            largest_change = max(largest_change, float(np.max(np.abs(s - 1.0))))
        if largest_change <= tolerance:
            return rounds, True
    return max_rounds, False


def _bias_name(node: Node) -> str:
    return node.inputs[2] if len(node.inputs) > 2 else ""


def _find_pairs(graph: Graph, bounded: str) -> tuple[list[_Pair], list[str]]:
    """Every Conv → [activation] → Conv chain that equalization may rescale."""
    producers, consumers = graph.producers(), graph.consumers()
    outputs = set(graph.output_names)
    _name_nodes(graph)  # the weights and the report are keyed by node name

    def private(name: str, reader: Node) -> bool:
        return name not in outputs and consumers.get(name, []) == [reader]

    pairs, skipped = [], []
    for second in graph.nodes:
        if not _is_float_conv(graph, second):
            continue
        x = second.inputs[0]
        middle = producers.get(x)
        activation, bounds = None, None
        if middle is not None and not middle.domain and middle.op_type in (*HOMOGENEOUS_ACTIVATIONS, "Clip"):
            if not private(x, second):
                continue
            if middle.op_type == "Clip":
                clip = _clip_bounds(graph, middle)
                if clip is None or clip[0] < 0:
                    continue  # bounds unknown, or a negative lower bound: not a ReLU-like clip
                if clip != (0.0, math.inf):
                    if bounded == "skip":
                        skipped.append(f"Clip '{middle.name}' {clip} before '{second.name}' is bounded (bounded='skip')")
                        continue
                    if bounded == "relu" and clip[0] != 0.0:
                        skipped.append(f"Clip '{middle.name}' {clip} has a positive lower bound: not a ReLU6")
                        continue
                    bounds = clip
            if middle.op_type == "PRelu" and graph.initializers.get(middle.inputs[1]) is None:
                continue
            activation, x = middle, middle.inputs[0]
        first = producers.get(x)
        if first is None or not _is_float_conv(graph, first) or not private(x, activation or second):
            continue
        channels = graph.initializers[first.inputs[1]].shape[0]
        w2 = graph.initializers[second.inputs[1]]
        if w2.shape[1] * second.attrs["group"] != channels:
            continue
        pairs.append(_Pair(first, second, activation, bounds, np.ones(channels)))
    return pairs, skipped


def _name_nodes(graph: Graph) -> None:
    """Give every unnamed node a unique name (ONNX allows empty node names)."""
    seen: set[str] = set()
    for index, node in enumerate(graph.nodes):
        if not node.name or node.name in seen:
            node.name = graph.unique_name(f"{node.op_type.lower()}_{index}")
        seen.add(node.name)


def _is_float_conv(graph: Graph, node: Node) -> bool:
    """A standard Conv whose weight (and bias, if any) are float constants."""
    if node.op_type != "Conv" or node.domain:
        return False
    weight = graph.initializers.get(node.inputs[1])
    if weight is None or weight.dtype.kind != "f":
        return False
    return len(node.inputs) < 3 or not node.inputs[2] or node.inputs[2] in graph.initializers


def _clip_bounds(graph: Graph, clip: Node) -> tuple[float, float] | None:
    """(min, max) of a Clip with constant bounds (attributes before opset 11, inputs after)."""
    if clip.version and clip.version < 11:
        return float(clip.attrs["min"]), float(clip.attrs["max"])
    bounds = []
    for index, missing in ((1, -math.inf), (2, math.inf)):
        name = clip.inputs[index] if index < len(clip.inputs) else ""
        if not name:
            bounds.append(missing)
            continue
        value = graph.initializers.get(name)
        if value is None or value.size != 1:
            return None
        bounds.append(float(value.reshape(())))
    return bounds[0], bounds[1]


def _output_channel_ranges(w: np.ndarray) -> np.ndarray:
    """max |w| of each output channel (axis 0) of a conv weight."""
    return np.abs(w).reshape(w.shape[0], -1).max(axis=1)


def _input_channel_ranges(w: np.ndarray, group: int) -> np.ndarray:
    """max |w| over everything that multiplies input channel j, for j = 0 … group·(C/group) - 1."""
    grouped = np.abs(w).reshape(group, w.shape[0] // group, w.shape[1], -1)
    return grouped.max(axis=(1, 3)).reshape(-1)


def _scale_input_channels(w: np.ndarray, s: np.ndarray, group: int) -> np.ndarray:
    """Multiply every weight that reads input channel j by s_j."""
    grouped = w.reshape(group, w.shape[0] // group, w.shape[1], -1)
    return (grouped * s.reshape(group, 1, w.shape[1], 1)).reshape(w.shape)


def _spreads(w1: np.ndarray, w2: np.ndarray, second: Node) -> tuple[float, float]:
    return _spread(_output_channel_ranges(w1)), _spread(_input_channel_ranges(w2, second.attrs["group"]))


def _spread(ranges: np.ndarray) -> float:
    ranges = ranges[ranges > 0]
    return float(ranges.max() / ranges.min()) if ranges.size else 1.0


def _store(graph: Graph, node: Node, index: int, value: np.ndarray) -> None:
    """Put a rescaled weight or bias in the graph, under a new name if others read the old one."""
    name = node.inputs[index]
    dtype = graph.initializers[name].dtype
    if sum(name in n.inputs for n in graph.nodes) > 1:
        name = graph.unique_name(f"{name}_equalized")
        node.inputs[index] = name
    graph.initializers[name] = value.astype(dtype)


def _rewrite_bounded_activation(graph: Graph, pair: _Pair, bounded: str) -> None:
    """Replace a Clip(low, high) that the channel scales no longer commute with.

    "relu": Relu (only for low = 0). "exact": Relu (low = 0) or Max with the per-channel lower
    bounds low / s_i, then Min with the per-channel upper bounds high / s_i.
    """
    clip, (low, high) = pair.activation, pair.bounds
    index = graph.nodes.index(clip)
    x, y = clip.inputs[0], clip.outputs[0]
    if bounded == "relu":
        relu = Node("Relu", [x], [y], name=clip.name)
        prepare_node(relu, graph.opset_of(""))
        graph.nodes[index] = relu
        _drop_unread(graph, clip.inputs[1:])
        return
    weight = graph.initializers[pair.first.inputs[1]]
    shape = (-1, *(1,) * (weight.ndim - 2))  # per channel: axis 1 of the N x C x ... activation
    replacement = []
    lower_out = graph.unique_name(f"{y}_lower") if math.isfinite(high) else y
    if low == 0.0:
        replacement.append(Node("Relu", [x], [lower_out], name=graph.unique_name(f"{clip.name}_relu")))
    else:
        lows = graph.unique_name(f"{clip.name}_low")
        graph.initializers[lows] = (low / pair.scale).reshape(shape).astype(weight.dtype)
        replacement.append(Node("Max", [x, lows], [lower_out], name=graph.unique_name(f"{clip.name}_max")))
    if math.isfinite(high):
        highs = graph.unique_name(f"{clip.name}_high")
        graph.initializers[highs] = (high / pair.scale).reshape(shape).astype(weight.dtype)
        replacement.append(Node("Min", [lower_out, highs], [y], name=graph.unique_name(f"{clip.name}_min")))
    for node in replacement:  # typed attributes and opset version, as the frontend gives them
        prepare_node(node, graph.opset_of(""))
    graph.nodes[index:index + 1] = replacement
    _drop_unread(graph, clip.inputs[1:])


def _drop_unread(graph: Graph, names: list[str]) -> None:
    """Remove initializers among ``names`` that no node reads any more (a replaced Clip's bounds)."""
    read = {name for node in graph.nodes for name in node.inputs}
    for name in names:
        if name and name in graph.initializers and name not in read:
            del graph.initializers[name]


def _describe(pair: _Pair) -> str:
    if pair.activation is None:
        return "none"
    if pair.bounds is not None:
        return f"Clip({pair.bounds[0]:g}, {pair.bounds[1]:g})"
    return pair.activation.op_type


# ============================================================================ weight quantization
WeightQuantizer = Callable[[np.ndarray], np.ndarray]


def per_tensor_int8(weight: np.ndarray) -> np.ndarray:
    """Symmetric int8 fake quantization of a whole weight with one scale (the CLE setting)."""
    return fake_quantize(weight, params_from_tensor(weight, np.int8))


def per_channel_int8(weight: np.ndarray) -> np.ndarray:
    """Symmetric int8 fake quantization with one scale per output channel (axis 0)."""
    return fake_quantize(weight, params_from_tensor(weight, np.int8, axis=0))


def _weighted_nodes(graph: Graph) -> list[Node]:
    """Conv and Gemm nodes whose weight is a float constant."""
    found = []
    for node in graph.nodes:
        if node.domain or node.op_type not in ("Conv", "Gemm") or len(node.inputs) < 2:
            continue
        weight = graph.initializers.get(node.inputs[1])
        if weight is not None and weight.dtype.kind == "f":
            found.append(node)
    return found


def fake_quantize_weights(model: Any, quantize_weight: WeightQuantizer = per_tensor_int8) -> Graph:
    """A copy of the model with every Conv/Gemm weight replaced by ``quantize_weight(weight)``.

    Activations stay float: the graph measures the error weight quantization alone causes.
    """
    from ..runtime import load

    graph = load(model).copy()
    for node in _weighted_nodes(graph):
        _store(graph, node, 1, np.asarray(quantize_weight(graph.initializers[node.inputs[1]]), dtype=np.float32))
    return graph


def snr_db(reference: np.ndarray, approximation: np.ndarray) -> float:
    """Signal-to-noise ratio, 10·log10(Σ reference² / Σ (reference - approximation)²), in dB."""
    reference = np.asarray(reference, dtype=np.float64)
    noise = np.sum((reference - np.asarray(approximation, dtype=np.float64)) ** 2)
    return math.inf if noise == 0 else float(10 * np.log10(np.sum(reference**2) / noise))


# ============================================================================ bias correction
def correct_bias(model: Any, reader: Any, quantize_weight: WeightQuantizer | Mapping[str, np.ndarray] | None = None,
                 *, progress: bool = True) -> Graph:
    """Empirical bias correction: make E[ŷ] = E[y] per output channel of every Conv and Gemm.

    ``quantize_weight`` is the weight quantizer the model will be deployed with: a function
    ``weight -> fake-quantized weight`` (default: per-tensor symmetric int8), or a mapping from
    weight initializer name to its dequantized value. For each layer, ε = Ŵ - W; one pass over
    ``reader`` (feed dicts, as :class:`~tinyinfer.compress.calibrate.Calibrator` takes them)
    computes, from each layer's float input x, the mean over the batch and spatial positions of
    the layer applied to x with weight ε and no bias — E[Ŵx] - E[Wx] per output channel —
    and that mean is subtracted from the bias (a zero bias is added where there was none).

    Returns the corrected graph with its float weights: quantize them with the same quantizer
    afterwards. BatchNorm is folded first, as for equalization.
    """
    from .. import ops
    from ..runtime import InferenceSession
    from .calibrate import observe_over

    graph = fold_batchnorm(model)
    _name_nodes(graph)  # errors and sums are keyed by node name
    layers = _weighted_nodes(graph)
    errors: dict[str, np.ndarray] = {}
    for node in layers:
        weight = graph.initializers[node.inputs[1]]
        if isinstance(quantize_weight, Mapping):
            if node.inputs[1] not in quantize_weight:
                continue
            quantized = np.asarray(quantize_weight[node.inputs[1]], dtype=np.float64)
        else:
            quantized = np.asarray((quantize_weight or per_tensor_int8)(weight), dtype=np.float64)
        if quantized.shape != weight.shape:
            raise TinyInferError(
                f"the quantized weight of {node.op_type} '{node.name}' has shape {quantized.shape}, "
                f"expected {weight.shape}"
            )
        errors[node.name] = (quantized - weight).astype(weight.dtype)
    if isinstance(quantize_weight, Mapping) and quantize_weight and not errors:
        raise TinyInferError(
            f"none of the quantized weights {sorted(quantize_weight)[:4]} is the weight of a Conv or Gemm of the "
            f"graph (after BatchNorm folding, weights are named like "
            f"{[n.inputs[1] for n in layers[:2]]})"
        )
    readers: dict[str, list[Node]] = {}
    for node in layers:
        if node.name in errors:
            readers.setdefault(node.inputs[0], []).append(node)
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}

    def observe(name: str, value: Any) -> None:
        for node in readers.get(name, ()):
            # The layer run with weight ε and no bias: its output is Ŵx - Wx (x is float).
            difference = ops.get_op(node).reference(_without_bias(node), value, errors[node.name])
            axes = tuple(i for i in range(difference.ndim) if i != 1)
            sums[node.name] = sums.get(node.name, 0.0) + difference.astype(np.float64).sum(axis=axes)
            counts[node.name] = counts.get(node.name, 0) + difference.size // difference.shape[1]

    session = InferenceSession(graph, opt_level="O0")
    observe_over(session, reader, observe, progress)
    for node in layers:
        if node.name in sums:
            _subtract_from_bias(graph, node, sums[node.name] / counts[node.name])
    graph.validate()
    return graph


def _without_bias(node: Node) -> Node:
    return Node(node.op_type, node.inputs[:2], node.outputs, node.attrs, node.domain, node.name, node.version)


def _subtract_from_bias(graph: Graph, node: Node, shift: np.ndarray) -> None:
    """bias ← bias - shift (per output channel); a missing bias becomes -shift."""
    dtype = graph.initializers[node.inputs[1]].dtype
    bias_name = node.inputs[2] if len(node.inputs) > 2 else ""
    if node.op_type == "Gemm":
        beta = node.attrs["beta"]
        bias = graph.initializers[bias_name].astype(np.float64) * beta if bias_name else np.zeros(1)
        if bias.ndim == 2 and bias.shape[0] != 1:  # a full (M, N) C: the shift broadcasts over rows
            new_bias = bias - shift.reshape(1, -1)
        else:
            new_bias = bias.reshape(-1) - shift
        node.attrs["beta"] = 1.0
    else:
        bias = graph.initializers[bias_name].astype(np.float64) if bias_name else np.zeros_like(shift)
        new_bias = bias - shift
    if not bias_name:
        bias_name = graph.unique_name(f"{node.name}_bias_corrected")
        node.inputs[2:] = [bias_name]
        graph.initializers[bias_name] = new_bias.astype(dtype)
    else:
        _store(graph, node, 2, new_bias)
