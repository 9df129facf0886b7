"""O3 layout pass: run chains of convolutions in the blocked layout NCHWc.

A convolution kernel that vectorises over channels wants its activations blocked,
``[N, C/c, H, W, c]`` (``tinyinfer/ops/layout.py``, ``tinyinfer/kernels/nchwc.py``). Converting
costs a pass over memory each way, so converting around every conv would eat what the kernel
gains. Engines therefore choose the layout per *region* of the graph (oneDNN's "layout
propagation", TVM's ``AlterOpLayout``, MNN's NC4HW4 everywhere): convert once where a region
of blocked-capable ops starts, keep everything inside blocked, and convert back only where
a value leaves the region.

This pass does that in four steps:

1. **Seeds**: every float32 2-D Conv / FusedConv with constant weights, group 1 or depthwise,
   and known channel counts can become ``ai.tinyinfer:ConvNCHWc``.
2. **Growth**: in topological order, an op that works lane by lane and so does not care about
   the layout joins when *all* its data inputs come from the region: activations (Relu,
   Clip, LeakyRelu, Sigmoid, ...), binary ops (Add, Mul, ...) on two tensors with all the
   channels (same shape, or broadcast over H and W like a squeeze-excite gate) or on a
   tensor and a per-channel constant, inference BatchNormalization and
   ScaleShift (as a ScaleShift with blocked per-channel constants), Concat along the
   channels when every input but the last fills whole blocks, and pooling (MaxPool,
   AveragePool, GlobalAveragePool, GlobalMaxPool) through the ``...NCHWc`` pooling ops.
3. **Chains**: the connected regions; one with fewer than ``min_convs`` convolutions stays in
   NCHW (a lone conv would pay two conversions for one kernel).
4. **Rewrite**: ``ToBlocked`` where a region reads a tensor made outside it, ``FromBlocked``
   where a blocked tensor is read outside the region or is a graph output, never between
   two blocked ops. Conv weights are blocked now, as new initializers
   (:func:`~tinyinfer.ops.layout.block_conv_weights`).

Anything the pass does not recognise stays in NCHW, so the rewritten graph computes the same
function on any model; the blocked tensors keep their NCHW names for whoever reads them
outside (the FromBlocked writes the old name), so graph outputs and subgraphs are untouched.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Iterable

import numpy as np

from .. import ops
from ..ir import Graph, Node, Value
from ..ops.fused import DOMAIN, DOMAIN_VERSION
from ..ops.layout import block_conv_weights
from .base import register_pass
from .patterns import channel_vector

#: Channels per block the O3 pipeline uses: 16 float32 lanes (one AVX-512 register). On
#: the book's machine the 16-lane kernel beat the 8-lane one on every ResNet layer
#: (:func:`tinyinfer.kernels.nchwc.benchmark_nchwc`); :func:`benchmark_layouts` measures both.
DEFAULT_BLOCK = 16

#: A region needs this many convolutions to be worth its two conversions.
DEFAULT_MIN_CONVS = 2

#: Elementwise ops that compute each lane from the same lane of their inputs.
LANE_WISE_UNARY = frozenset({"Relu", "LeakyRelu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Identity"})
LANE_WISE_BINARY = frozenset({"Add", "Sub", "Mul", "Max", "Min", "Sum"})
#: Pooling ops with a blocked twin (op type -> twin's op type in the ai.tinyinfer domain).
POOLING = {"MaxPool": "MaxPoolNCHWc", "AveragePool": "AveragePoolNCHWc",
           "GlobalAveragePool": "GlobalAveragePoolNCHWc", "GlobalMaxPool": "GlobalMaxPoolNCHWc"}


@register_pass("nchwc_layout", "O3")
def convert_to_blocked_layout(graph: Graph) -> list[str]:
    """Run chains of convolutions in the blocked layout NCHW16c, converting only at their edges."""
    return block_layout(graph)


def block_layout(graph: Graph, block: int = DEFAULT_BLOCK, *, min_convs: int = DEFAULT_MIN_CONVS) -> list[str]:
    """Rewrite ``graph`` in place so chains of convolutions run in NCHW``block``c; returns notes."""
    values = ops.infer_shapes(graph)
    rewriter = _LayoutRewrite(graph, values, block)
    region = rewriter.grow()
    chains = [chain for chain in rewriter.chains(region) if sum(n.op_type in _CONVS for n in chain) >= min_convs]
    if not chains:
        return []
    return rewriter.rewrite(chains)


# ============================================================================ the rewrite
_CONVS = ("Conv", "FusedConv")


@dataclasses.dataclass
class _Plan:
    """How one node runs blocked.

    ``data``: the inputs that are blocked activations. ``constants``: inputs that are
    per-channel constants (index -> the vector of C values), given to the node as
    ``ToBlocked`` of a ``[1, C, 1, 1]`` constant (computed once, when the plan is compiled).
    ``op_type``: the node becomes this op (BatchNormalization -> ScaleShift), or keeps its own.
    """

    node: Node
    data: list[int]
    constants: dict[int, np.ndarray] = dataclasses.field(default_factory=dict)
    op_type: str | None = None


class _LayoutRewrite:
    """One graph being rewritten: what can run blocked (steps 1-3), then the rewrite (step 4)."""

    def __init__(self, graph: Graph, values: dict[str, Value], block: int):
        self.graph, self.values, self.block = graph, values, block
        self.producers = graph.producers()
        self.readers = graph.consumers()
        self.outputs = set(graph.output_names)
        self.plans: dict[int, _Plan] = {}  # node id -> how it runs blocked
        self.replaced_weights: set[str] = set()

    # ------------------------------------------------------------------ steps 1-3
    def grow(self) -> dict[int, _Plan]:
        """Seeds and growth: node id -> plan, for every node that can run blocked."""
        region: dict[int, _Plan] = {}
        for node in self.graph.topological_order():
            data = self._conv_inputs(node)
            if data is not None:
                region[id(node)] = _Plan(node, data)
                continue
            plan = self._lane_wise_plan(node)
            if plan is not None and all(self._made_in(region, node.inputs[i]) for i in plan.data):
                region[id(node)] = plan
        self.plans = region
        return region

    def chains(self, region: dict[int, _Plan]) -> list[list[Node]]:
        """The connected parts of the region (joined by blocked tensors), in node order."""
        parent = {key: key for key in region}

        def root(key):
            while parent[key] != key:
                parent[key] = parent[parent[key]]
                key = parent[key]
            return key

        for plan in region.values():
            for i in plan.data:
                producer = self.producers.get(plan.node.inputs[i])
                if producer is not None and id(producer) in region:
                    parent[root(id(producer))] = root(id(plan.node))
        groups: dict[int, list[Node]] = {}
        for node in self.graph.nodes:
            if id(node) in region:
                groups.setdefault(root(id(node)), []).append(node)
        return list(groups.values())

    # ------------------------------------------------------------------ step 4
    def rewrite(self, chains: list[list[Node]]) -> list[str]:
        """Replace the chains' nodes by blocked ones, with conversions at the edges; the notes."""
        graph, block = self.graph, self.block
        graph.opset.setdefault(DOMAIN, DOMAIN_VERSION)
        self.members = {id(n) for chain in chains for n in chain}
        self.blocked = {}  # NCHW name -> blocked name, for every tensor a chain makes
        for node in (n for chain in chains for n in chain):
            self.blocked[node.outputs[0]] = graph.unique_name(f"{node.outputs[0]}/nchw{block}c")
            graph.value_info.pop(node.outputs[0], None)
        self.converted: dict[str, str] = {}  # NCHW name -> its ToBlocked result
        self.placed: dict[int, list[Node]] = {}  # node id -> the nodes that take its place
        notes, totals = [], [0, 0, 0]
        for number, chain in enumerate(chains, 1):
            counts = [0, 0, 0]  # ToBlocked, FromBlocked, ToBlocked of constants
            for node in chain:
                self._rewrite_node(node, counts)
            for node in chain:
                counts[1] += self._add_exit(node)
            convs = sum(n.op_type in _CONVS for n in chain)
            notes.append(f"chain {number}: {convs} conv(s) and {len(chain) - convs} other op(s) in NCHW{block}c "
                         f"from {_label(chain[0])} to {_label(chain[-1])}; {counts[0]} ToBlocked, "
                         f"{counts[1]} FromBlocked")
            totals = [a + b for a, b in zip(totals, counts)]
        graph.nodes = [new for node in graph.nodes for new in self.placed.get(id(node), [node])]
        graph.sort()
        self._drop_unused_weights()
        notes.append(f"converted {len(chains)} chain(s) of {len(self.members)} node(s) to NCHW{block}c; "
                     f"inserted {totals[0]} ToBlocked and {totals[1]} FromBlocked"
                     + (f" (and {totals[2]} ToBlocked of per-channel constants, computed once)" if totals[2] else ""))
        return notes

    def _rewrite_node(self, node: Node, counts: list[int]) -> None:
        """The blocked node for ``node``, preceded by the ToBlocked nodes of what it reads from outside."""
        plan = self.plans[id(node)]
        inputs, entries = list(node.inputs), []
        for i in plan.data:
            name = inputs[i]
            if name in self.blocked:
                inputs[i] = self.blocked[name]
                continue
            if name not in self.converted:  # one ToBlocked per tensor, shared by every reader
                self.converted[name], entry = self._entry(name)
                entries.append(entry)
                counts[0] += 1
            inputs[i] = self.converted[name]
        for i, vector in plan.constants.items():
            inputs[i], entry = self._channel_constant(node, i, vector)
            entries.append(entry)
            counts[2] += 1
        blocked = self._blocked_node(node, inputs, self.blocked[node.outputs[0]], plan.op_type)
        self.placed[id(node)] = [*entries, blocked]

    def _add_exit(self, node: Node) -> int:
        """A FromBlocked after ``node`` if its result is read outside the chains or is a graph output."""
        name = node.outputs[0]
        outside = [r for r in self.readers.get(name, []) if id(r) not in self.members]
        if not outside and name not in self.outputs:
            return 0
        self.placed[id(node)].append(self._exit(self.blocked[name], name))
        return 1

    # ------------------------------------------------------------------ what can run blocked
    def _conv_inputs(self, node: Node) -> list[int] | None:
        """Data inputs [X, (Z)] of a conv that ConvNCHWc can run, else None."""
        fused = node.op_type == "FusedConv" and node.domain == DOMAIN
        if not (fused or (node.op_type == "Conv" and not node.domain)):
            return None
        x, w = self._value(node.inputs[0]), self._value(node.inputs[1])
        if not (self._is_nchw_float32(x) and w is not None and w.const is not None and w.is_static and len(w.shape) == 4):
            return None
        bias = node.inputs[2] if len(node.inputs) > 2 else ""
        if bias and self._const(bias) is None:
            return None
        channels, out_channels, group = x.shape[1], w.shape[0], node.attrs["group"]
        if not (group == 1 and w.shape[1] == channels) and not (group == channels == out_channels and w.shape[1] == 1):
            return None
        data = [0]
        if fused and len(node.inputs) > 3 and node.inputs[3]:
            if not self._is_nchw_float32(self._value(node.inputs[3])):
                return None
            data.append(3)
        return data

    def _lane_wise_plan(self, node: Node) -> _Plan | None:
        """How an op indifferent to the layout runs blocked, or None if it is not one."""
        if not node.outputs or not self._is_nchw_float32(self._value(node.outputs[0])):
            return None
        out_shape = self._value(node.outputs[0]).shape
        channels = out_shape[1]
        op_type = node.op_type
        if node.domain == DOMAIN and op_type == "ScaleShift":
            scale, shift = (self._channel_vector(n, channels) for n in node.inputs[1:3])
            return None if scale is None or shift is None else _Plan(node, [0], {1: scale, 2: shift})
        if node.domain:
            return None
        if op_type in LANE_WISE_UNARY:
            if op_type == "Clip" and any(self._rank(n) not in (0, None) for n in node.inputs[1:] if n):
                return None
            return _Plan(node, [0])
        if op_type in LANE_WISE_BINARY and len(node.inputs) == 2:
            if all(self._per_channel_broadcast(n, out_shape) for n in node.inputs):
                return _Plan(node, [0, 1])
            for data, other in ((0, 1), (1, 0)):  # a tensor and a per-channel constant
                vector = self._channel_vector(node.inputs[other], channels)
                if vector is not None and self._same_shape(node.inputs[data], out_shape):
                    return _Plan(node, [data], {other: vector})
            return None
        if op_type == "BatchNormalization":
            affine = self._batchnorm_affine(node, channels)
            return None if affine is None else _Plan(node, [0], {1: affine[0], 2: affine[1]}, "ScaleShift")
        if op_type == "Concat" and node.attrs["axis"] in (1, -3):
            if not all(self._is_nchw_float32(self._value(n)) for n in node.inputs):
                return None
            if all(self._value(n).shape[1] % self.block == 0 for n in node.inputs[:-1]):
                return _Plan(node, list(range(len(node.inputs))))
            return None
        if op_type in POOLING and (DOMAIN, POOLING[op_type]) in _blocked_pooling() and _pooling_supported(node):
            return _Plan(node, [0])
        return None

    def _channel_vector(self, name: str, channels: int) -> np.ndarray | None:
        """The C values of a constant that varies along the channel axis only (or a scalar)."""
        constant = self._const(name)
        if constant is None or np.asarray(constant).dtype != np.float32:
            return None
        return channel_vector(np.asarray(constant), 4, channels)

    def _batchnorm_affine(self, node: Node, channels: int) -> tuple[np.ndarray, np.ndarray] | None:
        """An inference-mode BatchNormalization with constant statistics as ``x * scale + shift``."""
        if any(node.outputs[1:]) or node.attrs.get("training_mode", 0) or len(node.inputs) != 5:
            return None
        params = [self._const(n) for n in node.inputs[1:]]
        if any(p is None or np.size(p) != channels for p in params):
            return None
        gamma, beta, mean, variance = (np.asarray(p, np.float64).reshape(-1) for p in params)
        scale = gamma / np.sqrt(variance + node.attrs["epsilon"])
        return scale.astype(np.float32), (beta - mean * scale).astype(np.float32)

    def _made_in(self, region: dict[int, _Plan], name: str) -> bool:
        producer = self.producers.get(name)
        return producer is not None and id(producer) in region

    # ------------------------------------------------------------------ building nodes
    def _entry(self, name: str) -> tuple[str, Node]:
        """The ToBlocked node giving the blocked twin of an NCHW tensor entering a chain.

        (On a constant operand, the plan computes it once when it is compiled.)
        """
        target = self.graph.unique_name(f"{name}/nchw{self.block}c")
        node = Node("ToBlocked", [name], [target], {"block": self.block}, DOMAIN, self.graph.unique_name(f"{name}/to_blocked"))
        ops.prepare_node(node, DOMAIN_VERSION)
        return target, node

    def _channel_constant(self, node: Node, index: int, vector: np.ndarray) -> tuple[str, Node]:
        """A ``[1, C, 1, 1]`` constant holding ``vector``, and the ToBlocked that blocks it."""
        stem = f"{node.name or node.outputs[0]}/channel_constant_{index}"
        name = self.graph.unique_name(stem)
        self.graph.initializers[name] = np.asarray(vector, np.float32).reshape(1, -1, 1, 1)
        return self._entry(name)

    def _exit(self, source: str, target: str) -> Node:
        channels = self._value(target).shape[1]
        node = Node("FromBlocked", [source], [target], {"block": self.block, "channels": channels}, DOMAIN,
                    self.graph.unique_name(f"{target}/from_blocked"))
        ops.prepare_node(node, DOMAIN_VERSION)
        return node

    def _blocked_node(self, node: Node, inputs: list[str], output: str, op_type: str | None = None) -> Node:
        """The node that replaces ``node`` inside a chain (reading ``inputs``, writing ``output``)."""
        if op_type == "ScaleShift":
            new = Node("ScaleShift", inputs[:3], [output], {}, DOMAIN, node.name)
            ops.prepare_node(new, DOMAIN_VERSION)
            return new
        if node.op_type in _CONVS:
            return self._conv_nchwc(node, inputs, output)
        if node.op_type in POOLING:
            attrs = dict(node.attrs)
            new = Node(POOLING[node.op_type], inputs[:1], [output], attrs, DOMAIN, node.name)
            ops.prepare_node(new, DOMAIN_VERSION)
            return new
        attrs = dict(node.attrs)
        if node.op_type == "Concat":
            attrs["axis"] = 1  # the channel-block axis (-3 would now be H)
        return Node(node.op_type, inputs, [output, *node.outputs[1:]], attrs, node.domain, node.name, node.version)

    def _conv_nchwc(self, node: Node, inputs: list[str], output: str) -> Node:
        weights = self._const(node.inputs[1])
        x = self._value(node.inputs[0])
        group = node.attrs["group"]
        name = self.graph.unique_name(f"{node.inputs[1]}/nchw{self.block}c")
        self.graph.initializers[name] = block_conv_weights(np.asarray(weights), self.block, group)
        self.replaced_weights.add(node.inputs[1])
        attrs = dict(node.attrs)
        attrs.setdefault("activation", "Identity")
        attrs.setdefault("activation_params", None)
        attrs.update(in_channels=int(x.shape[1]), out_channels=int(weights.shape[0]))
        new_inputs = [inputs[0], name, inputs[2] if len(inputs) > 2 else "", inputs[3] if len(inputs) > 3 else ""]
        while new_inputs and not new_inputs[-1]:
            new_inputs.pop()
        new = Node("ConvNCHWc", new_inputs, [output], attrs, DOMAIN, node.name)
        ops.prepare_node(new, DOMAIN_VERSION)
        return new

    def _drop_unused_weights(self) -> None:
        """Remove the NCHW weights the blocked convolutions replaced, if nobody else reads them."""
        read = {name for node in self.graph.nodes for name in (*node.present_inputs, *node.implicit_inputs)}
        for name in self.replaced_weights - read - self.outputs:
            self.graph.initializers.pop(name, None)

    # ------------------------------------------------------------------ looking at values
    def _value(self, name: str) -> Value | None:
        return self.values.get(name) if name else None

    def _const(self, name: str) -> np.ndarray | None:
        if name in self.graph.initializers:
            return self.graph.initializers[name]
        value = self._value(name)
        return None if value is None else value.const

    def _rank(self, name: str) -> int | None:
        value = self._value(name)
        return None if value is None or value.shape is None else len(value.shape)

    def _per_channel_broadcast(self, name: str, shape) -> bool:
        """Whether a 4-D tensor has all C channels and broadcasts to ``shape`` (like an SE gate
        ``[N, C, 1, 1]`` against ``[N, C, H, W]``): blocked, the two still broadcast lane by lane."""
        value = self._value(name)
        if not self._is_nchw_float32(value) or value.shape[1] != shape[1]:
            return False
        return all(d == 1 or (d is not None and d == e) for i, (d, e) in enumerate(zip(value.shape, shape)) if i != 1)

    def _same_shape(self, name: str, shape) -> bool:
        value = self._value(name)
        return (value is not None and value.shape is not None and len(value.shape) == len(shape)
                and all(a is not None and a == b for a, b in zip(value.shape, shape)))

    @staticmethod
    def _is_nchw_float32(value: Value | None) -> bool:
        """A float32 4-D tensor whose channel count is known (N, H, W may be symbolic)."""
        return (value is not None and value.dtype == np.float32 and value.shape is not None
                and len(value.shape) == 4 and isinstance(value.shape[1], int))


def _blocked_pooling() -> set[tuple[str, str]]:
    """The blocked pooling ops that exist (the domain, op type pairs registered)."""
    return {key for key in ops.OPS if key[0] == DOMAIN and key[1].endswith("PoolNCHWc")}


def _pooling_supported(node: Node) -> bool:
    """2-D pooling the blocked twins implement: no storage_order, dilations or indices output."""
    if len(node.outputs) > 1 and node.outputs[1]:
        return False  # MaxPool's Indices are NCHW positions
    if node.attrs.get("storage_order", 0) or any(d != 1 for d in node.attrs.get("dilations") or ()):
        return False
    return True


def _label(node: Node) -> str:
    return f"{node.op_type} '{node.name or node.outputs[0]}'"


# ============================================================================ measurement
def count_conversions(graph: Graph) -> dict[str, int]:
    """Layout conversions and blocked convolutions in a graph.

    ``ToBlocked`` counts the conversions of activations (each a pass over memory on every
    run); ``ToBlocked_constants`` those of constants, which the plan computes once.
    """
    on_constants = sum(1 for n in graph.nodes if n.op_type == "ToBlocked" and n.inputs[0] in graph.initializers)
    kinds = [n.op_type for n in graph.nodes if n.domain == DOMAIN]
    return {"ToBlocked": kinds.count("ToBlocked") - on_constants, "FromBlocked": kinds.count("FromBlocked"),
            "ConvNCHWc": kinds.count("ConvNCHWc"), "ToBlocked_constants": on_constants}


def benchmark_layouts(models: Iterable[str] = ("squeezenet", "resnet50", "mobilenet_v2"), *, repeat: int = 5,
                      threads: int = 0, blocks_to_try: Iterable[int] = (DEFAULT_BLOCK,)) -> list[dict]:
    """Time O2 against O3 (the blocked layout) with ``backend="numba"`` on some models.

    ``models`` names light models (``tinyinfer.models.LIGHT_MODELS``) or zoo models
    (``tinyinfer.models.build(name, resolution=224)``). For each: median and best
    milliseconds per run at O2 and at O3 for each block size (O3 = the O2 graph rewritten by
    :func:`block_layout`), the conversions O3 inserted, the kernel each blocked node ran
    with, and the largest difference between the O2 and O3 outputs. Each session plans on a
    first run (pre-inference selection times every kernel candidate of every node there);
    only the runs after it are timed.

    This is a measurement helper for the book and ``make bench``; it builds sessions, so it
    imports the runtime (a layer above the passes) when called, not when imported.
    """
    from .. import models as zoo
    from ..runtime import InferenceSession
    from ..runtime.feeds import random_feeds
    from ..runtime.session import load
    from .base import PassManager

    rows = []
    for name in models:
        model = zoo.load_light_model(name) if name in zoo.LIGHT_MODELS else zoo.build(name, resolution=224)
        optimized, _ = PassManager("O2").run(load(model))
        row: dict = {"model": name}
        reference, feeds = None, None
        for block in (None, *blocks_to_try):
            if block is None:
                key, graph = "O2", optimized
            else:  # O3 = the O2 graph rewritten by the layout pass, at this block size
                key, graph = f"O3_c{block}", optimized.copy()
                block_layout(graph, block)
            sess = InferenceSession(graph, backend="numba", opt_level="O0", threads=threads)
            feeds = feeds or random_feeds(sess.get_inputs(), seed=0)
            outputs = sess.run(None, feeds)  # plans, and times the kernel candidates of every node
            times = []
            for _ in range(repeat):
                start = time.perf_counter()
                sess.run(None, feeds)
                times.append((time.perf_counter() - start) * 1e3)
            row[f"{key}_median_ms"] = statistics.median(times)
            row[f"{key}_best_ms"] = min(times)
            if reference is None:
                reference = outputs
                continue
            row[f"{key}_max_abs_diff"] = max(float(np.abs(a - b).max()) for a, b in zip(outputs, reference))
            row[f"{key}_conversions"] = count_conversions(graph)
            row[f"{key}_kernels"] = _kernel_counts(sess)
        rows.append(row)
    return rows


def _kernel_counts(sess) -> dict[str, int]:
    """How many blocked nodes ran with each kernel (from the session's profile)."""
    counts: dict[str, int] = {}
    for record in sess.profile().records:
        if record.op_type in ("ConvNCHWc", "ToBlocked", "FromBlocked") or record.op_type.endswith("PoolNCHWc"):
            key = f"{record.op_type}:{record.kernel}"
            counts[key] = counts.get(key, 0) + 1
    return counts
