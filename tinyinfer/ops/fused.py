"""Fused operators of the ``ai.tinyinfer`` domain, and their decomposition back to ONNX.

The O2 passes (``tinyinfer/passes/fusion.py``) replace chains of standard nodes by one node
that does the same arithmetic in one step, the way ONNX Runtime's ``com.microsoft`` contrib
ops do (FusedConv, FusedGemm):

=================================  ==================================================================
op                                 computes
=================================  ==================================================================
``FusedConv(X, W, [B], [Z])``      ``act(Conv(X, W, B) + Z)`` — a conv, an optional residual, an
                                   activation (ONNX Runtime's FusedConv / Conv+Add+Relu fusion)
``FusedGemm(A, B, [C])``           ``act(Gemm(A, B, C))``
``ScaleShift(X, scale, shift)``    ``act(X * scale + shift)`` (both broadcast to X: a per-channel affine,
                                   e.g. an inference BatchNormalization, and its activation)
``Gelu(X)``                        Gelu-20 for models that import an older opset
``LayerNormalization(X, S, [B])``  LayerNormalization-17 for models that import an older opset
=================================  ==================================================================

``activation`` names the function applied last, with its parameters in
``activation_params``: ``Identity``, ``Relu``, ``Sigmoid``, ``Tanh``, ``HardSwish`` (no
parameters), ``LeakyRelu`` ``[alpha]``, ``HardSigmoid`` ``[alpha, beta]`` and ``Clip``
``[min, max]`` (ReLU6 is ``Clip [0, 6]``). Each reference computes exactly what the standard
ops it replaces compute, by calling their own reference functions.

No other runtime knows this domain, so :func:`decompose_fused` rewrites each fused node back
into the standard nodes it stands for (FusedConv -> Conv [+ Add] [+ activation]); the ONNX
exporter calls it, so an optimized graph still exports to a model ONNX Runtime runs.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..ir import Graph, Node
# The standard ops the fused ones build on must be registered before the classes below read them.
from . import activation as _activation, conv as _conv, linalg as _linalg, normalization as _normalization  # noqa: F401
from .base import OPS, Op, bad_attribute, broadcast_shapes, fail, out, prepare_node, register, require_inputs

#: The domain of tinyinfer's own operators.
DOMAIN = "ai.tinyinfer"
#: Its opset version (every fused op is at version 1).
DOMAIN_VERSION = 1

#: Activations a fused op may end with -> the names of their parameters.
ACTIVATIONS: dict[str, tuple[str, ...]] = {
    "Identity": (),
    "Relu": (),
    "Sigmoid": (),
    "Tanh": (),
    "HardSwish": (),
    "LeakyRelu": ("alpha",),
    "HardSigmoid": ("alpha", "beta"),
    "Clip": ("min", "max"),
}

_ACTIVATION_ATTRIBUTES = {"activation": "Identity", "activation_params": None}


# ---------------------------------------------------------------------------- activations
def apply_activation(y: np.ndarray, activation: str, params) -> np.ndarray:
    """``activation(y)`` computed by the standard op's own reference."""
    if activation == "Identity":
        return y
    names = ACTIVATIONS[activation]
    params = list(params or ())
    if activation == "Clip":  # the opset-11 form: bounds are scalar inputs of y's type
        bounds = [np.asarray(v, dtype=np.float64).astype(y.dtype) for v in params]
        return _call(activation, {}, y, *bounds)
    return _call(activation, dict(zip(names, params)), y)


def _call(op_type: str, attrs: dict[str, Any], *arrays):
    """Run the standard op ``op_type`` on arrays, with the given (complete) attributes."""
    op = OPS[("", op_type)]
    node = Node(op_type, [f"in{i}" for i in range(len(arrays))], ["out"], attrs={**op.attributes, **attrs})
    return op.reference(node, *arrays)


def _check_activation(node: Node) -> None:
    activation = node.attrs["activation"]
    if activation not in ACTIVATIONS:
        raise bad_attribute(node, f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    wanted = ACTIVATIONS[activation]
    given = node.attrs["activation_params"] or []
    if len(given) != len(wanted):
        raise bad_attribute(
            node, f"activation {activation} takes {len(wanted)} parameter(s) {list(wanted)}, got {list(given)}"
        )


def _without_activation(node: Node, op_type: str, inputs: int) -> Node:
    """The standard node a fused node extends: its attributes minus the activation ones."""
    attrs = {k: v for k, v in node.attrs.items() if k not in _ACTIVATION_ATTRIBUTES}
    return Node(op_type, node.inputs[:inputs], node.outputs[:1], attrs, "", node.name, node.version)


# ---------------------------------------------------------------------------- FusedConv
@register
class FusedConv(Op):
    """``Y = act(Conv(X, W, B) + Z)``: Conv-22, an optional residual Z of Y's shape, an activation.

    Attributes are Conv's plus ``activation`` and ``activation_params`` (see the module
    docstring). Z, when given, must have exactly the conv output's shape.
    """

    op_type = "FusedConv"
    domain = DOMAIN
    since = 1
    attributes = {**OPS[("", "Conv")].attributes, **_ACTIVATION_ATTRIBUTES}

    def check(self, node):
        OPS[("", "Conv")].check(node)
        _check_activation(node)

    def infer(self, node, inputs):
        require_inputs(node, inputs, 2, 4)
        (y,) = OPS[("", "Conv")].infer(_without_activation(node, "Conv", 3), inputs[:3])
        z = inputs[3] if len(inputs) > 3 else None
        if z is not None and z.shape is not None and y.shape is not None:
            if len(z.shape) != len(y.shape) or any(
                isinstance(a, int) and isinstance(b, int) and a != b for a, b in zip(z.shape, y.shape)
            ):
                raise fail(node, f"residual Z must have the conv output's shape {list(y.shape)}, got {list(z.shape)}")
        return [out(node, 0, y.dtype, y.shape)]

    def reference(self, node, x, w, bias=None, z=None):
        y = OPS[("", "Conv")].reference(_without_activation(node, "Conv", 3), x, w, bias)
        if z is not None:
            y = y + z
        return apply_activation(y, node.attrs["activation"], node.attrs["activation_params"]).astype(x.dtype, copy=False)


# ---------------------------------------------------------------------------- FusedGemm
@register
class FusedGemm(Op):
    """``Y = act(alpha * A' @ B' + beta * C)``: Gemm-13 followed by an activation."""

    op_type = "FusedGemm"
    domain = DOMAIN
    since = 1
    attributes = {**OPS[("", "Gemm")].attributes, **_ACTIVATION_ATTRIBUTES}

    def check(self, node):
        _check_activation(node)

    def infer(self, node, inputs):
        require_inputs(node, inputs, 2, 3)
        (y,) = OPS[("", "Gemm")].infer(_without_activation(node, "Gemm", 3), inputs)
        return [out(node, 0, y.dtype, y.shape)]

    def reference(self, node, a, b, c=None):
        y = OPS[("", "Gemm")].reference(_without_activation(node, "Gemm", 3), a, b, c)
        return apply_activation(y, node.attrs["activation"], node.attrs["activation_params"]).astype(a.dtype, copy=False)


# ---------------------------------------------------------------------------- ScaleShift
@register
class ScaleShift(Op):
    """``Y = act(X * scale + shift)``; scale and shift broadcast *to* X (Y has X's shape).

    What a chain ``Mul(X, s) -> Add(., t)`` of constants computes, in one pass over X: an
    inference-mode batch norm, or the per-channel affine maps of Caffe's Scale layer. The
    activation lets a pre-activation block (DenseNet's BatchNormalization -> Relu before
    each convolution, whose BN no convolution can absorb) run as one pass instead of two.
    """

    op_type = "ScaleShift"
    domain = DOMAIN
    since = 1
    attributes = dict(_ACTIVATION_ATTRIBUTES)

    def check(self, node):
        _check_activation(node)

    def infer(self, node, inputs):
        require_inputs(node, inputs, 3)
        x, scale, shift = inputs
        shape = broadcast_shapes(node, x.shape, scale.shape, shift.shape)
        if shape is not None and x.shape is not None and len(shape) != len(x.shape):
            raise fail(node, f"scale {list(scale.shape)} and shift {list(shift.shape)} must broadcast to X "
                             f"{list(x.shape)} without adding dimensions")
        return [out(node, 0, x.dtype, x.shape)]

    def reference(self, node, x, scale, shift):
        y = (x * scale.astype(x.dtype, copy=False) + shift.astype(x.dtype, copy=False)).astype(x.dtype, copy=False)
        return apply_activation(y, node.attrs["activation"], node.attrs["activation_params"]).astype(x.dtype, copy=False)


# ---------------------------------------------------------------------------- Gelu, LayerNormalization
@register
class Gelu(Op):
    """Gelu-20 (``approximate`` = "none" or "tanh") for graphs that import an opset before 20."""

    op_type = "Gelu"
    domain = DOMAIN
    since = 1
    attributes = {"approximate": "none"}

    def check(self, node):
        OPS[("", "Gelu")].check(node)

    def infer(self, node, inputs):
        return OPS[("", "Gelu")].infer(node, inputs)

    def reference(self, node, x):
        return OPS[("", "Gelu")].reference(node, x)


@register
class LayerNormalization(Op):
    """LayerNormalization-17 for graphs that import an opset before 17 (output Y only)."""

    op_type = "LayerNormalization"
    domain = DOMAIN
    since = 1
    attributes = {"axis": -1, "epsilon": 1e-5, "stash_type": 1}

    def check(self, node):
        OPS[("", "LayerNormalization")].check(node)

    def infer(self, node, inputs):
        return OPS[("", "LayerNormalization")].infer(node, inputs)[:1]

    def reference(self, node, x, scale, bias=None):
        result = OPS[("", "LayerNormalization")].reference(node, x, scale, bias)
        return result[0] if isinstance(result, tuple) else result


# ============================================================================ decomposition
def decompose_fused(graph: Graph) -> Graph:
    """A copy of ``graph`` whose ``ai.tinyinfer`` nodes are rewritten as standard ONNX nodes.

    Each fused node becomes the nodes it was fused from, at the graph's ai.onnx opset (Clip
    bounds as attributes before opset 11, ReduceMean axes as an attribute before 18, ...),
    so the result runs in any ONNX runtime. Graphs without fused nodes come back unchanged
    (as a copy).
    """
    graph = graph.copy()
    if not any(node.domain == DOMAIN for node in graph.nodes):
        return graph
    opset = graph.opset_of("")
    taken = set(_names(graph))
    nodes: list[Node] = []
    for node in graph.nodes:
        if node.domain != DOMAIN:
            nodes.append(node)
            continue
        expand = _DECOMPOSITIONS.get(node.op_type)
        if expand is None:
            raise fail(node, f"tinyinfer does not know how to write {DOMAIN}:{node.op_type} as standard ONNX")
        emitted = expand(_Emitter(graph, node, opset, taken), node)
        for new in emitted:
            prepare_node(new, opset)
        nodes.extend(emitted)
    graph.nodes = nodes
    graph.opset.pop(DOMAIN, None)
    return graph


class _Emitter:
    """Names and constants for the standard nodes one fused node becomes."""

    def __init__(self, graph: Graph, node: Node, opset: int, taken: set[str]):
        self.graph, self.node, self.opset, self.taken = graph, node, opset, taken
        self.stem = node.name or node.outputs[0]

    def tensor(self, what: str) -> str:
        """A fresh tensor name (also unique among names handed out for other nodes)."""
        name, i = f"{self.stem}/{what}", 1
        while name in self.taken:
            name, i = f"{self.stem}/{what}_{i}", i + 1
        self.taken.add(name)
        return name

    def constant(self, what: str, array: np.ndarray) -> str:
        name = self.tensor(what)
        self.graph.initializers[name] = np.asarray(array)
        return name

    def make(self, op_type: str, inputs: list[str], outputs: list[str], **attrs) -> Node:
        return Node(op_type, inputs, outputs, attrs, "", self.tensor(op_type) if self.node.name else "")

    def activation(self, source: str, target: str, activation: str, params, dtype) -> list[Node]:
        """The standard node(s) computing ``target = activation(source)``."""
        params = list(params or ())
        if activation == "Identity":
            return [self.make("Identity", [source], [target])]
        if activation == "Clip":
            if self.opset < 11:
                return [self.make("Clip", [source], [target], min=float(params[0]), max=float(params[1]))]
            low = self.constant("clip_min", np.asarray(params[0], dtype=np.float64).astype(dtype))
            high = self.constant("clip_max", np.asarray(params[1], dtype=np.float64).astype(dtype))
            return [self.make("Clip", [source, low, high], [target])]
        return [self.make(activation, [source], [target], **dict(zip(ACTIVATIONS[activation], map(float, params))))]


def _names(graph: Graph):
    yield from graph.initializers
    yield from graph.input_names
    yield from graph.output_names
    for node in graph.nodes:
        yield node.name
        yield from node.inputs
        yield from node.outputs


def _dtype_of(graph: Graph, node: Node, index: int = 1) -> np.dtype:
    """The element type of a fused node's weights (its inputs' type), float32 if unknown."""
    name = node.inputs[index]
    if name in graph.initializers:
        return graph.initializers[name].dtype
    value = graph.value(name)
    return value.dtype if value is not None and value.dtype is not None else np.dtype(np.float32)


def _decompose_fused_conv(emit: _Emitter, node: Node) -> list[Node]:
    conv_attrs = {k: v for k, v in node.attrs.items() if k not in _ACTIVATION_ATTRIBUTES}
    inputs = list(node.inputs)
    residual = inputs[3] if len(inputs) > 3 and inputs[3] else ""
    activation = node.attrs["activation"]
    result = node.outputs[0]
    nodes = []
    conv_out = result if not residual and activation == "Identity" else emit.tensor("conv")
    has_bias = len(inputs) > 2 and bool(inputs[2])
    nodes.append(emit.make("Conv", inputs[:3] if has_bias else inputs[:2], [conv_out], **conv_attrs))
    if residual:
        summed = result if activation == "Identity" else emit.tensor("residual")
        nodes.append(emit.make("Add", [conv_out, residual], [summed]))
        conv_out = summed
    if activation != "Identity":
        nodes += emit.activation(conv_out, result, activation, node.attrs["activation_params"], _dtype_of(emit.graph, node))
    return nodes


def _decompose_fused_gemm(emit: _Emitter, node: Node) -> list[Node]:
    gemm_attrs = {k: v for k, v in node.attrs.items() if k not in _ACTIVATION_ATTRIBUTES}
    activation = node.attrs["activation"]
    result = node.outputs[0]
    gemm_out = result if activation == "Identity" else emit.tensor("gemm")
    nodes = [emit.make("Gemm", [n for n in node.inputs if n], [gemm_out], **gemm_attrs)]
    if activation != "Identity":
        nodes += emit.activation(gemm_out, result, activation, node.attrs["activation_params"], _dtype_of(emit.graph, node))
    return nodes


def _decompose_scale_shift(emit: _Emitter, node: Node) -> list[Node]:
    x, scale, shift = node.inputs
    activation = node.attrs["activation"]
    result = node.outputs[0]
    scaled, shifted = emit.tensor("scaled"), result if activation == "Identity" else emit.tensor("shifted")
    nodes = [emit.make("Mul", [x, scale], [scaled]), emit.make("Add", [scaled, shift], [shifted])]
    if activation != "Identity":
        nodes += emit.activation(shifted, result, activation, node.attrs["activation_params"], _dtype_of(emit.graph, node))
    return nodes


def _decompose_gelu(emit: _Emitter, node: Node) -> list[Node]:
    """0.5 * x * (1 + erf(x / sqrt(2))), or the tanh form 0.5 * x * (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    (x,) = node.inputs[:1]
    dtype = _dtype_of(emit.graph, node, 0)
    half = emit.constant("half", np.asarray(0.5, dtype))
    one = emit.constant("one", np.asarray(1.0, dtype))
    nodes = []
    if node.attrs["approximate"] == "tanh":
        three = emit.constant("three", np.asarray(3.0, dtype))
        cubic = emit.constant("cubic_coefficient", np.asarray(0.044715, dtype))
        root = emit.constant("sqrt_2_over_pi", np.asarray(np.sqrt(2 / np.pi), dtype))
        cube, weighted, inner, scaled, core = (emit.tensor(w) for w in ("cube", "weighted", "inner", "scaled", "tanh"))
        nodes += [
            emit.make("Pow", [x, three], [cube]),
            emit.make("Mul", [cube, cubic], [weighted]),
            emit.make("Add", [x, weighted], [inner]),
            emit.make("Mul", [inner, root], [scaled]),
            emit.make("Tanh", [scaled], [core]),
        ]
    else:
        root2 = emit.constant("sqrt_2", np.asarray(np.sqrt(2.0), dtype))
        divided, core = emit.tensor("divided"), emit.tensor("erf")
        nodes += [emit.make("Div", [x, root2], [divided]), emit.make("Erf", [divided], [core])]
    plus_one, product = emit.tensor("plus_one"), emit.tensor("product")
    nodes += [
        emit.make("Add", [core, one], [plus_one]),
        emit.make("Mul", [x, plus_one], [product]),
        emit.make("Mul", [product, half], node.outputs[:1]),
    ]
    return nodes


def _decompose_layer_normalization(emit: _Emitter, node: Node) -> list[Node]:
    """(x - mean) / sqrt(var + eps) * scale + bias, with ReduceMean over axes ``axis`` .. last."""
    x, scale = node.inputs[:2]
    bias = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2] else ""
    value = emit.graph.value(x)
    if value is None or value.shape is None:
        raise fail(node, "cannot decompose LayerNormalization without knowing the rank of X")
    rank = len(value.shape)
    axis = node.attrs["axis"] % rank
    axes = list(range(axis, rank))
    dtype = _dtype_of(emit.graph, node, 1)

    def reduce_mean(source: str, target: str) -> Node:
        if emit.opset >= 18:
            return emit.make("ReduceMean", [source, emit.constant("axes", np.asarray(axes, np.int64))], [target], keepdims=1)
        return emit.make("ReduceMean", [source], [target], axes=axes, keepdims=1)

    mean, centered, square, variance, shifted, std, normalized = (
        emit.tensor(w) for w in ("mean", "centered", "square", "variance", "variance_eps", "std", "normalized")
    )
    epsilon = emit.constant("epsilon", np.asarray(node.attrs["epsilon"], dtype))
    scaled = node.outputs[0] if not bias else emit.tensor("scaled")
    nodes = [
        reduce_mean(x, mean),
        emit.make("Sub", [x, mean], [centered]),
        emit.make("Mul", [centered, centered], [square]),
        reduce_mean(square, variance),
        emit.make("Add", [variance, epsilon], [shifted]),
        emit.make("Sqrt", [shifted], [std]),
        emit.make("Div", [centered, std], [normalized]),
        emit.make("Mul", [normalized, scale], [scaled]),
    ]
    if bias:
        nodes.append(emit.make("Add", [scaled, bias], node.outputs[:1]))
    return nodes


_DECOMPOSITIONS = {
    "FusedConv": _decompose_fused_conv,
    "FusedGemm": _decompose_fused_gemm,
    "ScaleShift": _decompose_scale_shift,
    "Gelu": _decompose_gelu,
    "LayerNormalization": _decompose_layer_normalization,
}
