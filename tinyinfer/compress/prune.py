"""Pruning: take weights out of a trained model — one by one, or whole channels at a time.

Two families, as chapter 03 tells them:

* **Unstructured** (magnitude) pruning zeroes the individual weights of smallest ``|w|``
  (Han et al., 2015), per layer (each layer loses the same share) or globally (one threshold
  for the whole model, so that layers with many small weights lose more). The model keeps its
  shape: the zeros only pay off with a sparse kernel or a compressor behind it.
* **Structured** (channel) pruning removes whole output channels of a convolution, chosen by
  the L1 norm of their filters (Li et al., 2017, "Pruning Filters for Efficient ConvNets") or
  by the scale ``|γ|`` of the BatchNormalization that follows (Liu et al., 2017, "Learning
  Efficient Convolutional Networks through Network Slimming"). The graph **physically
  shrinks**: the conv's filters and bias, its BatchNorm, a depthwise conv that follows, and
  the input channels of every consumer — down to the Gemm behind a Flatten. The result is a
  smaller standard ONNX model with fewer MACs that any runtime runs faster.

Which channels can go together is the hard part. A channel is tracked as the *element*
``(source conv, index)`` it comes from, and every tensor with a channel axis carries the list
of elements along it (its *provenance*):

* BatchNorm, activations, pooling and a depthwise conv keep their input's provenance;
* Concat on the channel axis concatenates its inputs' lists;
* an elementwise Add / Mul of two channel tensors **ties** their elements pairwise (ResNet's
  residual Add, an SE block's scale): tied channels are kept or removed together, so their
  scores are pooled (union-find over elements);
* anything else that sees a channel axis — a Reshape that moves channels (ShuffleNet's
  shuffle), a Slice, a graph output — **pins** the elements it sees: they stay.

Every source conv whose chosen channels are pinned falls back to masking: its filters are
zeroed in place instead of removed, and the report says which node pinned them and why.

``masked`` models (``--emit-masked``): the same pruning written as zeros into a model of the
original size — the removed filters *and* every weight that reads a removed channel — so its
outputs equal the shrunk model's to rounding. That is how a user checks that shrinking
changed nothing but the pruned channels.

    report = prune("resnet.onnx", "resnet.pruned.onnx", method="l1-channel", ratio=0.5)
    print(report.table())

Fine-tuning after pruning is the trainer's job (:mod:`tinyinfer.compress.train`); these
functions take a model in and give a model out, with no data.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np
import onnx

from ..errors import TinyInferError
from ..ir import Graph, Node

#: The methods :func:`prune` knows, and what each removes.
METHODS = {
    "magnitude": "zero the weights of smallest |w| (unstructured; same shapes)",
    "l1-channel": "remove the conv output channels whose filters have the smallest L1 norm (Li et al.)",
    "bn-scale": "remove the conv output channels whose BatchNorm scale |gamma| is smallest (network slimming)",
}
#: Ops whose output has the input's channels, one for one.
CHANNEL_PRESERVING = frozenset({
    "BatchNormalization", "Relu", "LeakyRelu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu",
    "Selu", "Softplus", "Softsign", "Mish", "Gelu", "Identity", "Dropout", "Neg", "Abs", "Erf",
    "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "PRelu",
})
#: Elementwise binary ops whose channel operands are tied pairwise.
BINARY = frozenset({"Add", "Sub", "Mul", "Div", "Max", "Min", "Sum"})
#: Per-channel parameters (input index -> axis) of the channel-preserving ops that have some.
_PER_CHANNEL_INPUTS = {"BatchNormalization": (1, 2, 3, 4), "PRelu": (1,)}


class PruneError(TinyInferError):
    """A pruning request that cannot be carried out: bad ratio, unknown method, no weights."""


@dataclasses.dataclass
class PruneReport:
    """What :func:`prune` did: the model, its size before and after, and per-layer detail."""

    method: str
    ratio: float
    scope: str
    model: onnx.ModelProto
    masked: onnx.ModelProto | None = None
    params_before: int = 0
    params_after: int = 0
    macs_before: int = 0
    macs_after: int = 0
    #: magnitude: weight name -> share of zeros after pruning.
    sparsity: dict[str, float] = dataclasses.field(default_factory=dict)
    #: structured: source conv -> (channels before, after).
    channels: dict[str, tuple[int, int]] = dataclasses.field(default_factory=dict)
    #: structured: the convs that were masked instead of shrunk, and why.
    fallbacks: list[str] = dataclasses.field(default_factory=list)

    @property
    def nonzero_params_after(self) -> int:
        return sum(int(np.count_nonzero(onnx.numpy_helper.to_array(t))) for t in self.model.graph.initializer)

    def table(self) -> str:
        lines = [f"pruning: {self.method}, ratio {self.ratio:g}" + (f", {self.scope}" if self.method == "magnitude" else "")]
        lines.append(f"parameters {self.params_before:,} -> {self.params_after:,} "
                     f"(non-zero {self.nonzero_params_after:,}); MACs {self.macs_before:,} -> {self.macs_after:,} "
                     f"({self.macs_before / max(self.macs_after, 1):.2f}x fewer)")
        for name, share in self.sparsity.items():
            lines.append(f"  {name:<40} {100 * share:6.1f} % zeros")
        for name, (before, after) in self.channels.items():
            lines.append(f"  {name:<40} {before:5d} -> {after:5d} channels")
        lines.extend(f"  masked, not removed: {reason}" for reason in self.fallbacks)
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def prune(model_in: Any, model_out: str | os.PathLike | None = None, *, method: str = "l1-channel",
          ratio: float = 0.5, scope: str = "layer", masked_out: str | os.PathLike | None = None,
          multiple_of: int = 1) -> PruneReport:
    """Prune ``model_in`` (path, bytes, ModelProto or Graph) with ``method`` (see
    :data:`METHODS`) at ``ratio`` (the share of weights or channels removed, in (0, 1)).

    ``scope`` (magnitude only): ``layer`` prunes each weight by its own threshold, ``global``
    uses one threshold over all weights. ``model_out`` / ``masked_out``: where to save the
    pruned model and, for the channel methods, the same-size masked model. ``multiple_of``
    (channel methods): round each layer's kept channels up to a multiple of this (8 suits
    SIMD-blocked kernels; the ratio is then a little under what was asked).
    """
    if method not in METHODS:
        raise PruneError(f"unknown pruning method {method!r}; choose one of {', '.join(METHODS)}")
    if not isinstance(ratio, (int, float)) or not 0.0 < float(ratio) < 1.0:
        raise PruneError(f"ratio must be a number in (0, 1) (the share removed), got {ratio!r}")
    if not isinstance(multiple_of, int) or multiple_of < 1:
        raise PruneError(f"multiple_of must be a positive integer, got {multiple_of!r}")
    if scope not in ("layer", "global"):
        raise PruneError(f"scope must be 'layer' or 'global', got {scope!r}")
    if masked_out is not None and method == "magnitude":
        raise PruneError("--emit-masked applies to the channel methods (l1-channel, bn-scale); "
                         "magnitude pruning already keeps the model's size")
    graph = prunable_graph(model_in)
    report = PruneReport(method, float(ratio), scope, model=None)  # type: ignore[arg-type]
    report.params_before, report.macs_before = _size(graph)
    if method == "magnitude":
        pruned = graph.copy()
        weights = prunable_weights(pruned)
        for name, mask in magnitude_masks({n: pruned.initializers[n] for n in weights}, ratio, scope).items():
            pruned.initializers[name] = np.where(mask, pruned.initializers[name], 0).astype(pruned.initializers[name].dtype)
            report.sparsity[name] = 1.0 - float(mask.mean())
    else:
        plan = ChannelPlan(graph)
        keep = plan.choose(ratio, method, multiple_of)
        pruned = plan.shrink(keep, report)
        report.masked = export_checked(plan.mask(keep))
    report.params_after, report.macs_after = _size(pruned)
    report.model = export_checked(pruned)
    _save(report.model, model_out)
    _save(report.masked, masked_out)
    return report


# ---------------------------------------------------------------------------- unstructured
def magnitude_masks(weights: dict[str, np.ndarray], ratio: float, scope: str = "layer") -> dict[str, np.ndarray]:
    """Boolean keep-masks removing the ``ratio`` share of smallest ``|w|``: per weight
    (``layer``) or over all weights with one threshold (``global``). Ties at the threshold are
    broken by position, so exactly ``round(ratio · n)`` weights go."""
    if not weights:
        raise PruneError("the model has no Conv / Gemm / MatMul weights to prune")
    if scope == "layer":
        return {name: _keep_largest(np.abs(w).ravel(), ratio).reshape(w.shape) for name, w in weights.items()}
    flat = np.concatenate([np.abs(w).ravel() for w in weights.values()])
    keep = _keep_largest(flat, ratio)
    masks, start = {}, 0
    for name, w in weights.items():
        masks[name] = keep[start:start + w.size].reshape(w.shape)
        start += w.size
    return masks


def _keep_largest(magnitudes: np.ndarray, ratio: float) -> np.ndarray:
    drop = int(round(ratio * magnitudes.size))
    keep = np.ones(magnitudes.size, dtype=bool)
    keep[np.argsort(magnitudes, kind="stable")[:drop]] = False
    return keep


def prunable_weights(graph: Graph) -> list[str]:
    """The weight operands of Conv, Gemm and MatMul (not biases)."""
    names = []
    for node in graph.nodes:
        if node.op_type in ("Conv", "Gemm", "MatMul"):
            for name in node.inputs[:2]:
                if name in graph.initializers and graph.initializers[name].ndim >= 2 and name not in names:
                    names.append(name)
    return names


# ---------------------------------------------------------------------------- structured
@dataclasses.dataclass
class _Flat:
    """A Flatten of a channel tensor: features are ``channels x spatial`` in channel-major order."""

    elements: list
    spatial: int


class ChannelPlan:
    """Channel provenance of every tensor, the ties between channels and what pins them."""

    def __init__(self, graph: Graph):
        from .. import ops
        from ..ir import Value

        self.graph = graph
        given = {v.name: Value(v.name, v.dtype, tuple(d if isinstance(d, int) else 1 for d in v.shape))
                 for v in graph.inputs if v.shape is not None}
        self.values = ops.infer_shapes(graph, given)
        self.parent: dict = {}
        self.pins: dict = {}  # element -> why it cannot go
        self.prov: dict[str, Any] = {}  # tensor -> list of elements, or _Flat
        self.sources: dict[str, Node] = {}  # conv output name -> conv
        self.consumers = graph.consumers()
        for value in graph.inputs:
            self._fresh_pinned(value.name, f"graph input '{value.name}'")
        for node in graph.topological_order():
            self._visit(node)
        for value in graph.outputs:
            self._pin(value.name, f"graph output '{value.name}'")

    # -------------------------------------------------------------- union-find
    def find(self, element):
        root = self.parent.setdefault(element, element)
        while root != self.parent[root]:
            self.parent[root] = self.parent[self.parent[root]]
            root = self.parent[root]
        self.parent[element] = root
        return root

    def _tie(self, a: list, b: list) -> None:
        for x, y in zip(a, b):
            rx, ry = self.find(x), self.find(y)
            if rx != ry:
                self.parent[rx] = ry

    # -------------------------------------------------------------- provenance
    def _channels(self, name: str) -> int | None:
        value = self.values.get(name)
        if value is None or value.shape is None or len(value.shape) < 2 or not isinstance(value.shape[1], int):
            return None
        return value.shape[1]

    def _fresh_pinned(self, name: str, why: str) -> None:
        channels = self._channels(name)
        if channels is not None:
            self.prov[name] = [("pinned", name, i) for i in range(channels)]
            for element in self.prov[name]:
                self.pins[element] = why

    def _pin(self, name: str, why: str) -> None:
        prov = self.prov.get(name)
        elements = prov.elements if isinstance(prov, _Flat) else prov or []
        for element in elements:
            self.pins.setdefault(element, why)

    def _visit(self, node: Node) -> None:
        ins = [n if n in self.prov else None for n in node.inputs]
        label = f"{node.op_type} '{node.name or node.outputs[0]}'"
        handled = False
        if node.op_type == "Conv":
            handled = self._visit_conv(node, label)
        elif node.op_type in CHANNEL_PRESERVING and ins and ins[0] is not None and not isinstance(self.prov[ins[0]], _Flat):
            handled = self._per_channel_params_fit(node)
            if handled:
                self.prov[node.outputs[0]] = self.prov[ins[0]]
        elif node.op_type in BINARY:
            handled = self._visit_binary(node)
        elif node.op_type == "Concat":
            handled = self._visit_concat(node)
        elif node.op_type in ("Flatten", "Reshape"):
            handled = self._visit_flatten(node)
        elif node.op_type in ("Gemm", "MatMul"):
            handled = isinstance(self.prov.get(node.inputs[0]), _Flat) and self._gemm_weight_axis(node) is not None
        if not handled:
            for name in node.present_inputs:
                self._pin(name, f"{label} reads the channels and is not rewired by the pruner")
        for out in node.outputs:
            if out and out not in self.prov:
                self._fresh_pinned(out, f"{label} makes channels the pruner does not track")

    def _visit_conv(self, node: Node, label: str) -> bool:
        x, w = node.inputs[0], node.inputs[1]
        weight = self.graph.initializers.get(w)
        bias_ok = len(node.inputs) < 3 or not node.inputs[2] or node.inputs[2] in self.graph.initializers
        x_prov = self.prov.get(x)
        if weight is None or weight.ndim < 3 or not bias_ok or isinstance(x_prov, _Flat):
            return False
        group = int(node.attrs.get("group", 1))
        channels_in = weight.shape[1] * group
        out = node.outputs[0]
        if group == 1:
            self.sources[out] = node
            self.prov[out] = [(out, i) for i in range(weight.shape[0])]
            return True
        if group == channels_in == weight.shape[0] and x_prov is not None:  # depthwise: channel for channel
            self.prov[out] = x_prov
            return True
        return False

    def _per_channel_params_fit(self, node: Node) -> bool:
        """Per-channel parameters must be initializers (to be sliced); others would pin."""
        for index in _PER_CHANNEL_INPUTS.get(node.op_type, ()):
            if index < len(node.inputs) and node.inputs[index]:
                param = self.graph.initializers.get(node.inputs[index])
                if param is None:
                    return False
                if node.op_type == "PRelu" and param.size != 1 and _channel_axis(param, self._rank(node.inputs[0])) is None:
                    return False
        return True

    def _rank(self, name: str) -> int:
        value = self.values.get(name)
        return len(value.shape) if value is not None and value.shape is not None else 0

    def _visit_binary(self, node: Node) -> bool:
        out_rank = self._rank(node.outputs[0])
        tensors = [n for n in node.inputs if n in self.prov]
        if not tensors or any(isinstance(self.prov[n], _Flat) for n in tensors):
            return False
        for name in node.inputs:
            if name in self.prov:
                if self._channels(name) != self._channels(node.outputs[0]):
                    return False  # broadcast along channels: not one for one
                continue
            constant = self.graph.initializers.get(name)
            if constant is None:
                return False  # a tensor whose channels the pruner cannot follow
            if constant.size != 1 and _channel_axis(constant, out_rank) is None and _spans_channels(constant, out_rank):
                return False
        first = self.prov[tensors[0]]
        for other in tensors[1:]:
            self._tie(first, self.prov[other])
        self.prov[node.outputs[0]] = first
        return True

    def _visit_concat(self, node: Node) -> bool:
        rank = self._rank(node.outputs[0])
        axis = int(node.attrs.get("axis", 1))
        if rank < 2 or axis % rank != 1 or any(n not in self.prov or isinstance(self.prov[n], _Flat) for n in node.inputs):
            return False
        self.prov[node.outputs[0]] = [e for n in node.inputs for e in self.prov[n]]
        return True

    def _visit_flatten(self, node: Node) -> bool:
        prov = self.prov.get(node.inputs[0])
        value, out = self.values.get(node.inputs[0]), self.values.get(node.outputs[0])
        if prov is None or isinstance(prov, _Flat) or value is None or out is None or value.shape is None or out.shape is None:
            return False
        shape = value.shape
        if not all(isinstance(d, int) for d in shape[1:]) or len(out.shape) != 2:
            return False
        if node.op_type == "Flatten" and int(node.attrs.get("axis", 1)) != 1:
            return False
        if out.shape[1] != int(np.prod(shape[1:])):
            return False
        self.prov[node.outputs[0]] = _Flat(prov, int(np.prod(shape[2:])))
        return True

    def _gemm_weight_axis(self, node: Node) -> int | None:
        """The axis of the Gemm / MatMul weight that meets the input features, if constant."""
        if len(node.inputs) < 2 or node.inputs[1] not in self.graph.initializers:
            return None
        if self.graph.initializers[node.inputs[1]].ndim != 2 or (node.op_type == "Gemm" and node.attrs.get("transA")):
            return None
        return 1 if node.op_type == "Gemm" and node.attrs.get("transB") else 0

    # -------------------------------------------------------------- choice
    def classes(self) -> dict:
        """Root -> the source elements tied together, for the convs that feed another conv or
        Gemm: the last layer's channels (a classifier conv's classes) are the model's answer,
        never candidates. A class with any element of a last layer stays whole."""
        feeding = self._feeding_compute()
        groups: dict = {}
        for out in self.sources:
            for element in self.prov[out]:
                groups.setdefault(self.find(element), []).append(element)
        return {root: elements for root, elements in groups.items() if all(e[0] in feeding for e in elements)}

    def _feeding_compute(self) -> set[str]:
        """Tensors from which some Conv, Gemm or MatMul is reachable downstream."""
        feeding: set[str] = set()
        for node in reversed(self.graph.topological_order()):
            if node.op_type in ("Conv", "Gemm", "MatMul") or any(o in feeding for o in node.outputs):
                feeding.update(n for n in node.present_inputs if n not in self.graph.initializers)
        return feeding

    def choose(self, ratio: float, method: str, multiple_of: int = 1) -> dict:
        """The elements to keep: ``{element: bool}`` for every source element. With
        ``multiple_of`` > 1, each layer group keeps a multiple of that many channels (the
        best-scored of the removed ones come back): kernels that block channels by 8 (SIMD
        lanes, ONNX Runtime's NCHWc) then run full blocks."""
        groups = self.classes()
        pinned_roots = {self.find(e) for e in self.pins}
        scores = self._scores(method)
        if method == "bn-scale":  # only channels with a BatchNorm scale are ranked
            groups = {root: elements for root, elements in groups.items() if all(e in scores for e in elements)}
            if not groups:
                raise PruneError(f"bn-scale ranks channels by the BatchNormalization after each conv, and model "
                                 f"'{self.graph.name}' has no conv followed by one; use l1-channel")
        # Classes that share their set of sources form one layer group (one conv, or the
        # convs a residual chain ties); the ratio applies to each layer group.
        by_layer: dict = {}
        for root, elements in groups.items():
            by_layer.setdefault(frozenset(e[0] for e in elements), []).append(root)
        keep = {e: True for out in self.sources for e in self.prov[out]}
        ranked = {root: float(np.mean([scores[e] for e in groups[root]])) for root in groups}
        if method == "bn-scale":  # one global threshold over all |gamma| (network slimming)
            candidates = sorted(ranked, key=ranked.get)
            budget = int(round(ratio * len(candidates)))
            removed_per_layer = {layer: 0 for layer in by_layer}
            layer_of = {root: layer for layer, roots in by_layer.items() for root in roots}
            for root in candidates[:budget]:
                layer = layer_of[root]
                if removed_per_layer[layer] + 1 < len(by_layer[layer]):  # leave one channel
                    removed_per_layer[layer] += 1
                    for e in groups[root]:
                        keep[e] = False
        else:
            for layer, roots in by_layer.items():
                drop = min(int(round(ratio * len(roots))), len(roots) - 1)
                for root in sorted(roots, key=ranked.get)[:drop]:
                    for e in groups[root]:
                        keep[e] = False
        if multiple_of > 1:
            for roots in by_layer.values():
                removed = sorted((r for r in roots if not keep[groups[r][0]]), key=ranked.get, reverse=True)
                while removed and (len(roots) - len(removed)) % multiple_of:
                    for e in groups[removed.pop(0)]:
                        keep[e] = True
        self.masked_roots = {self.find(e) for e, k in keep.items() if not k and self.find(e) in pinned_roots}
        return keep

    def _scores(self, method: str) -> dict:
        """Per source element: its filter's L1 norm relative to the layer's mean (l1-channel), or
        the |gamma| of the BatchNorm that reads the conv (bn-scale; convs without one get none)."""
        scores = {}
        for out, conv in self.sources.items():
            if method == "bn-scale":
                score = self._following_bn_scale(out)
                if score is None:
                    continue  # not ranked: these channels stay
                score = np.abs(score)
            else:
                weight = self.graph.initializers[conv.inputs[1]]
                l1 = np.abs(weight).reshape(weight.shape[0], -1).sum(axis=1)
                score = l1 / max(float(l1.mean()), 1e-12)
            scores.update({(out, i): float(v) for i, v in enumerate(score)})
        return scores

    def _following_bn_scale(self, name: str) -> np.ndarray | None:
        readers = self.consumers.get(name, [])
        if len(readers) == 1 and readers[0].op_type == "BatchNormalization":
            return self.graph.initializers.get(readers[0].inputs[1])
        return None

    # -------------------------------------------------------------- rewrites
    def _keep_mask(self, prov: list, keep: dict) -> np.ndarray:
        """Which channels of a tensor stay: the kept ones, and the pinned ones (zeroed at their
        source conv by the masking fallback, but still there)."""
        return np.array([keep.get(e, True) or self.find(e) in self.masked_roots for e in prov], dtype=bool)

    def shrink(self, keep: dict, report: PruneReport) -> Graph:
        """A copy of the graph with the pruned channels removed (masked where pinned)."""
        graph, masked = self._rewrite(keep, slice_=True)
        report.fallbacks.extend(self._fallback_reason(name, rows) for name, rows in masked.items())
        for out, conv in self.sources.items():
            report.channels[conv.name or out] = (len(self.prov[out]), int(self._keep_mask(self.prov[out], keep).sum()))
        graph.value_info.clear()  # shapes changed; the exporter and the runtime infer them again
        return graph

    def mask(self, keep: dict) -> Graph:
        """A copy of the graph of the original size with everything pruning removes set to zero."""
        return self._rewrite(keep, slice_=False)[0]

    def _rewrite(self, keep: dict, slice_: bool) -> tuple[Graph, dict[str, np.ndarray]]:
        """A copy of the graph whose pinned pruned filters are zeroed and whose pruned channels
        are sliced away (``slice_``) or zeroed; also the zeroed rows per source conv."""
        graph = self.graph.copy()
        masked = self._masked_filters(keep)
        for name, rows in masked.items():
            conv = self.sources[name]
            for index in (1, 2):
                if index < len(conv.inputs) and conv.inputs[index]:
                    _zero_rows(graph, conv.inputs[index], rows, _fresh_name(graph, conv.inputs[index]))
        for node in graph.nodes:
            self._rewrite_node(graph, node, keep, slice_)
        _drop_unused(graph)
        return graph, masked

    def _masked_filters(self, keep: dict) -> dict[str, np.ndarray]:
        """Source conv -> its output rows to zero because they are pinned (masking fallback)."""
        found = {}
        for out in self.sources:
            rows = np.array([not keep[e] and self.find(e) in self.masked_roots for e in self.prov[out]])
            if rows.any():
                found[out] = rows
        return found

    def _fallback_reason(self, out: str, rows: np.ndarray) -> str:
        element = next(e for e, r in zip(self.prov[out], rows) if r)
        root = self.find(element)
        why = next(reason for e, reason in self.pins.items() if self.find(e) == root)
        conv = self.sources[out]
        return f"{conv.op_type} '{conv.name or out}': {int(rows.sum())} channel(s) zeroed in place ({why})"

    def _rewrite_node(self, graph: Graph, node: Node, keep: dict, slice_: bool) -> None:
        """Slice (or zero) what this node reads or writes on pruned channels."""
        op = node.op_type
        x = node.inputs[0] if node.inputs else None
        prov = self.prov.get(x)
        if op == "Conv" and node.inputs[1] in graph.initializers:
            out = node.outputs[0]
            if out in self.sources:
                rows = self._keep_mask(self.prov[out], keep)
                _apply(graph, node, 1, rows, 0, slice_)
                if len(node.inputs) > 2 and node.inputs[2]:
                    _apply(graph, node, 2, rows, 0, slice_)
                if isinstance(prov, list) and not isinstance(prov, _Flat):
                    _apply(graph, node, 1, self._keep_mask(prov, keep), 1, slice_)
            elif isinstance(prov, list) and self.prov.get(out) is prov:  # depthwise
                rows = self._keep_mask(prov, keep)
                _apply(graph, node, 1, rows, 0, slice_)
                if len(node.inputs) > 2 and node.inputs[2]:
                    _apply(graph, node, 2, rows, 0, slice_)
                if slice_:
                    node.attrs["group"] = int(rows.sum())
        elif op in _PER_CHANNEL_INPUTS and isinstance(prov, list) and self.prov.get(node.outputs[0]) is prov:
            rows = self._keep_mask(prov, keep)
            for index in _PER_CHANNEL_INPUTS[op]:
                if index < len(node.inputs) and node.inputs[index]:
                    param = graph.initializers[node.inputs[index]]
                    if op == "PRelu" and param.size == 1:
                        continue
                    axis = 0 if op == "BatchNormalization" else _channel_axis(param, self._rank(x))
                    if slice_ or (op == "BatchNormalization" and index in (1, 2)):  # zero gamma and beta
                        _apply(graph, node, index, rows, axis, slice_)
        elif op in BINARY and node.outputs[0] in self.prov and isinstance(self.prov[node.outputs[0]], list) and slice_:
            rows = self._keep_mask(self.prov[node.outputs[0]], keep)
            rank = self._rank(node.outputs[0])
            for index, name in enumerate(node.inputs):
                if name in graph.initializers and name not in self.prov:
                    axis = _channel_axis(graph.initializers[name], rank)
                    if axis is not None:
                        _apply(graph, node, index, rows, axis, slice_)
        elif op in ("Gemm", "MatMul") and isinstance(prov, _Flat):
            rows = np.repeat(self._keep_mask(prov.elements, keep), prov.spatial)
            _apply(graph, node, 1, rows, 1 if node.op_type == "Gemm" and node.attrs.get("transB") else 0, slice_)
        elif op == "Reshape" and isinstance(self.prov.get(node.outputs[0]), _Flat) and slice_:
            flat = self.prov[node.outputs[0]]
            shape = graph.initializers.get(node.inputs[1])
            kept = int(self._keep_mask(flat.elements, keep).sum()) * flat.spatial
            if shape is not None and shape.size == 2 and shape[1] not in (-1, 0):
                _replace(graph, node, 1, np.array([shape[0], kept], dtype=shape.dtype))


def _channel_axis(constant: np.ndarray, out_rank: int) -> int | None:
    """The axis of a broadcast constant that lines up with the channel axis (1) of a rank
    ``out_rank`` tensor, if the constant has one of size > 1 there and 1 elsewhere."""
    offset = out_rank - constant.ndim
    axis = 1 - offset
    if axis < 0 or axis >= constant.ndim or constant.shape[axis] == 1:
        return None
    others = [d for i, d in enumerate(constant.shape) if i != axis]
    return axis if all(d == 1 for d in others) else None


def _spans_channels(constant: np.ndarray, out_rank: int) -> bool:
    axis = 1 - (out_rank - constant.ndim)
    return 0 <= axis < constant.ndim and constant.shape[axis] > 1


def _apply(graph: Graph, node: Node, index: int, rows: np.ndarray, axis: int, slice_: bool) -> None:
    """Keep only ``rows`` of input ``index`` along ``axis`` (slice) or zero the others."""
    array = graph.initializers[node.inputs[index]]
    if rows.all():
        return
    if slice_:
        _replace(graph, node, index, np.compress(rows, array, axis=axis))
    else:
        zeros = np.moveaxis(array.copy(), axis, 0)
        zeros[~rows] = 0
        _replace(graph, node, index, np.moveaxis(zeros, 0, axis))


def _replace(graph: Graph, node: Node, index: int, array: np.ndarray) -> None:
    """Give input ``index`` of ``node`` a new initializer (others that share the old one keep it)."""
    name = _fresh_name(graph, node.inputs[index])
    graph.initializers[name] = np.ascontiguousarray(array)
    node.inputs[index] = name


def _zero_rows(graph: Graph, name: str, rows: np.ndarray, new: str) -> None:
    for node in graph.nodes:  # every reader of this conv weight sees the masked copy
        for index, used in enumerate(node.inputs):
            if used == name:
                array = graph.initializers[name].copy()
                array[rows] = 0
                graph.initializers[new] = array
                node.inputs[index] = new


def _fresh_name(graph: Graph, stem: str) -> str:
    return graph.unique_name(f"{stem}_pruned")


def _drop_unused(graph: Graph) -> None:
    used = {n for node in graph.nodes for n in node.inputs} | set(graph.output_names)
    for name in [n for n in graph.initializers if n not in used]:
        del graph.initializers[name]


# ---------------------------------------------------------------------------- model in and out
def prunable_graph(model_in: Any) -> Graph:
    """The model after tinyinfer's O1 clean-ups: constants folded (weights that old exports
    compute with Unsqueeze or Constant become initializers that can be sliced), no-ops gone,
    BatchNorms kept (bn-scale reads them)."""
    from ..passes import PassManager
    from ..runtime import load

    graph, _ = PassManager("O1").run(load(model_in))
    if not prunable_weights(graph):
        raise PruneError(f"model '{graph.name}' has no Conv / Gemm / MatMul with constant weights to prune")
    return graph


def _size(graph: Graph) -> tuple[int, int]:
    from ..models.metrics import analyze

    totals = analyze(graph).totals
    return int(totals["params"]), int(totals["macs"])


def export_checked(graph: Graph) -> onnx.ModelProto:
    from ..frontend import to_onnx

    model = to_onnx(graph)
    onnx.checker.check_model(model)
    return model


def _save(model: onnx.ModelProto | None, path: str | os.PathLike | None) -> None:
    if model is None or path is None:
        return
    try:
        onnx.save(model, os.fspath(path))
    except OSError as exc:
        raise PruneError(f"cannot write '{os.fspath(path)}': {exc}") from None
