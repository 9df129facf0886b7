"""Quantized operators of the ``ai.tinyinfer`` domain: int8 ops ONNX has no standard form for.

ONNX has ``QLinearConv`` and ``QLinearMatMul`` (in :mod:`tinyinfer.ops.quantize`); the
other ops a QDQ model quantizes need integer twins too. These follow ONNX Runtime's
``com.microsoft`` contrib ops of the same names, with the inputs in QLinearMatMul's order —
each quantized tensor followed by its scale and zero point:

==========================================================  =================================================
op                                                          computes
==========================================================  =================================================
``QLinearGemm(A, a_s, a_zp, B, b_s, b_zp, [C], y_s, y_zp)``  ``(A - a_zp) @ op(B - b_zp) + C`` in int32,
                                                            requantized by ``a_s · b_s / y_s`` (``transB``)
``QLinearAdd(A, a_s, a_zp, B, b_s, b_zp, y_s, y_zp)``       ``Q(DQ(A) + DQ(B))`` with broadcasting
``QLinearMul(...)``                                         ``Q(DQ(A) · DQ(B))``
``QLinearConcat(y_s, y_zp, X1, x1_s, x1_zp, ...)``          ``Q(Concat(DQ(X1), DQ(X2), ...))`` (``axis``)
``QLinearGlobalAveragePool(X, x_s, x_zp, y_s, y_zp)``       ``Q(GlobalAveragePool(DQ(X)))``
``QLinearAveragePool(X, x_s, x_zp, y_s, y_zp)``             ``Q(AveragePool(DQ(X)))`` (AveragePool's attributes)
``QLinearConvAdd(X, x_s, x_zp, W, w_s, w_zp, c_s, c_zp,``   ``QLinearAdd(QLinearConv(X, ..., B), c_s, c_zp,
``[B], Z, z_s, z_zp, y_s, y_zp)``                             Z, z_s, z_zp, y_s, y_zp)``: a ResNet block's last
                                                            conv with its residual add (Conv's attributes)
==========================================================  =================================================

``DQ(q) = (q - zp) · s`` and ``Q(r) = saturate(round_half_even(r / s) + zp)`` exactly as ONNX
DequantizeLinear / QuantizeLinear compute them in float32, so each reference gives the very
integers the ``DequantizeLinear → op → QuantizeLinear`` chain it replaces gives (QLinearGemm,
whose accumulation is exact in int32, differs from the float chain by at most one unit of
``y_s``). ``C`` of QLinearGemm is an int32 bias with scale ``a_s · b_s`` and zero point 0,
like QLinearConv's ``B``. Per-channel ``b_s``/``b_zp`` hold one value per output column.

No other runtime knows this domain, so :func:`decompose_qlinear` writes each node back as the
``DequantizeLinear → op → QuantizeLinear`` chain it stands for; the ONNX exporter calls it.
"""

from __future__ import annotations

import numpy as np

from ..ir import Graph, Node, Value
from . import linalg as _linalg, pool as _pool, tensor as _tensor  # noqa: F401  (the float ops used below)
from .base import OPS, Op, bad_attribute, broadcast_shapes, fail, out, prepare_node, register, require_inputs
from .quantize import INTEGER_RANGES, dequantize, integer_matmul, quantize

#: The domain of tinyinfer's own operators (shared with the fused ops).
DOMAIN = "ai.tinyinfer"
#: ai.onnx opset whose float ops the references call (and the decomposition writes).
FLOAT_OPSET = 22


# ---------------------------------------------------------------------------- shared pieces
def _dq(q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None) -> np.ndarray:
    """``(q - zero_point) * scale`` in float32 (one scale and zero point per tensor)."""
    zero_point = None if zero_point is None else np.asarray(zero_point).reshape(())
    return dequantize(q, np.asarray(scale, np.float32).reshape(()), zero_point, np.float32)


def _q(r: np.ndarray, scale: np.ndarray, zero_point: np.ndarray) -> np.ndarray:
    """``saturate(round_half_even(r / scale) + zero_point)`` in the zero point's type."""
    zero_point = np.asarray(zero_point)
    return quantize(r.astype(np.float32, copy=False), np.asarray(scale, np.float32).reshape(()),
                    zero_point.reshape(()), zero_point.dtype)


def _float_node(node: Node, op_type: str, inputs: int) -> Node:
    """The standard float node a quantized node wraps (same attributes, ``inputs`` inputs)."""
    return Node(op_type, [f"x{i}" for i in range(inputs)], ["y"], dict(node.attrs), "", node.name, FLOAT_OPSET)


def _check_quantized(node: Node, value: Value | None, what: str) -> None:
    if value is not None and value.dtype is not None and value.dtype not in (np.dtype(np.uint8), np.dtype(np.int8)):
        raise fail(node, f"{what} must be uint8 or int8, got {value.dtype}")


def _check_scalar(node: Node, value: Value | None, what: str) -> None:
    if value is not None and value.shape is not None and int(np.prod([d for d in value.shape if isinstance(d, int)])) > 1:
        raise fail(node, f"{what} must hold one value (per-tensor quantization), got shape {list(value.shape)}")


def _output_type(node: Node, zero_point: Value) -> np.dtype:
    if zero_point.dtype is None:
        return np.dtype(np.uint8)
    if zero_point.dtype not in (np.dtype(np.uint8), np.dtype(np.int8)):
        raise fail(node, f"y_zero_point must be uint8 or int8, got {zero_point.dtype}")
    return zero_point.dtype


# ---------------------------------------------------------------------------- QLinearGemm
@register
class QLinearGemm(Op):
    """``Y = requantize((A - a_zp) @ op(B - b_zp) + C, a_s · b_s / y_s, y_zp)``; ``op`` transposes if ``transB``.

    A is (M, K) uint8/int8, B is (K, N) (or (N, K) with ``transB=1``), ``b_s``/``b_zp`` a
    scalar or one value per output column N, C an optional int32 bias of N values.
    """

    op_type = "QLinearGemm"
    domain = DOMAIN
    since = 1
    attributes = {"transB": 0}

    def check(self, node):
        if node.attrs["transB"] not in (0, 1):
            raise bad_attribute(node, f"transB must be 0 or 1, got {node.attrs['transB']}")

    def infer(self, node, inputs):
        require_inputs(node, inputs, 8, 9)
        a, b = inputs[0], inputs[3]
        bias, y_zero_point = (inputs[6], inputs[8]) if len(inputs) == 9 else (None, inputs[7])
        _check_quantized(node, a, "A")
        _check_quantized(node, b, "B")
        if bias is not None and bias.dtype is not None and bias.dtype != np.dtype(np.int32):
            raise fail(node, f"C must be an int32 bias, got {bias.dtype}")
        if a.shape is None or b.shape is None:
            return [out(node, 0, _output_type(node, y_zero_point), None)]
        if len(a.shape) != 2 or len(b.shape) != 2:
            raise fail(node, f"A and B must be matrices, got shapes {list(a.shape)} and {list(b.shape)}")
        k_a = a.shape[1]
        k_b, n = (b.shape[1], b.shape[0]) if node.attrs["transB"] else b.shape
        if isinstance(k_a, int) and isinstance(k_b, int) and k_a != k_b:
            raise fail(node, f"A is {list(a.shape)} but op(B) has {k_b} rows; the inner dimensions must match")
        return [out(node, 0, _output_type(node, y_zero_point), (a.shape[0], n))]

    def reference(self, node, a, a_scale, a_zero_point, b, b_scale, b_zero_point, *rest):
        bias, y_scale, y_zero_point = rest if len(rest) == 3 else (None, *rest)
        if node.attrs["transB"]:
            b = b.T
        b_zero = np.asarray(b_zero_point).astype(np.int32).reshape(-1)  # one per column of op(B), or one
        shifted_a = a.astype(np.int32) - np.asarray(a_zero_point).astype(np.int32).reshape(())
        shifted_b = b.astype(np.int32) - (b_zero if b_zero.size > 1 else b_zero[0])
        accumulator = integer_matmul(shifted_a, shifted_b)
        if bias is not None:
            accumulator = accumulator + bias.astype(np.int32).reshape(-1)
        multiplier = (np.asarray(a_scale, np.float32).reshape(()) * np.asarray(b_scale, np.float32).reshape(-1)
                      / np.asarray(y_scale, np.float32).reshape(())).astype(np.float32)
        y_zero_point = np.asarray(y_zero_point)
        low, high = INTEGER_RANGES[y_zero_point.dtype]
        scaled = np.rint(accumulator.astype(np.float64) * multiplier.astype(np.float64))
        return np.clip(scaled + float(y_zero_point.reshape(-1)[0]), low, high).astype(y_zero_point.dtype)


# ---------------------------------------------------------------------------- QLinearAdd, QLinearMul
class _QLinearBinary(Op):
    """``Y = Q(DQ(A) <op> DQ(B))`` with NumPy broadcasting; every scale and zero point per tensor."""

    domain = DOMAIN
    since = 1
    float_op = ""

    def infer(self, node, inputs):
        require_inputs(node, inputs, 8)
        a, b, y_zero_point = inputs[0], inputs[3], inputs[7]
        _check_quantized(node, a, "A")
        _check_quantized(node, b, "B")
        for index, what in ((1, "a_scale"), (2, "a_zero_point"), (4, "b_scale"), (5, "b_zero_point"), (6, "y_scale")):
            _check_scalar(node, inputs[index], what)
        return [out(node, 0, _output_type(node, y_zero_point), broadcast_shapes(node, a.shape, b.shape))]

    def reference(self, node, a, a_scale, a_zero_point, b, b_scale, b_zero_point, y_scale, y_zero_point):
        real = OPS[("", self.float_op)].reference(_float_node(node, self.float_op, 2),
                                                 _dq(a, a_scale, a_zero_point), _dq(b, b_scale, b_zero_point))
        return _q(real, y_scale, y_zero_point)


@register
class QLinearAdd(_QLinearBinary):
    """``Y = Q(DQ(A) + DQ(B))`` (ONNX Runtime's com.microsoft QLinearAdd)."""

    op_type = "QLinearAdd"
    float_op = "Add"


@register
class QLinearMul(_QLinearBinary):
    """``Y = Q(DQ(A) · DQ(B))`` (ONNX Runtime's com.microsoft QLinearMul)."""

    op_type = "QLinearMul"
    float_op = "Mul"


# ---------------------------------------------------------------------------- QLinearConcat
@register
class QLinearConcat(Op):
    """``Y = Q(Concat(DQ(X1), DQ(X2), ...))`` along ``axis``; inputs ``y_s, y_zp`` then ``(X, x_s, x_zp)`` each.

    When every input shares the output's scale and zero point (what the quantizer arranges)
    this is a plain concatenation of the integers.
    """

    op_type = "QLinearConcat"
    domain = DOMAIN
    since = 1
    attributes = {"axis": 1}

    def infer(self, node, inputs):
        if len(inputs) < 5 or (len(inputs) - 2) % 3:
            raise fail(node, f"expected y_scale, y_zero_point and triples (X, x_scale, x_zero_point), got {len(inputs)} inputs")
        tensors = inputs[2::3]
        for i, value in enumerate(tensors):
            _check_quantized(node, value, f"input {i}")
        (y,) = OPS[("", "Concat")].infer(_float_node(node, "Concat", len(tensors)), tensors)
        return [out(node, 0, _output_type(node, inputs[1]), y.shape)]

    def reference(self, node, y_scale, y_zero_point, *triples):
        tensors, scales, zero_points = triples[0::3], triples[1::3], triples[2::3]
        y_scale_value, y_zero_value = np.float32(np.asarray(y_scale).reshape(-1)[0]), np.asarray(y_zero_point).reshape(())
        if all(np.float32(np.asarray(s).reshape(-1)[0]) == y_scale_value and np.asarray(z).reshape(()) == y_zero_value
               and t.dtype == y_zero_value.dtype for t, s, z in zip(tensors, scales, zero_points)):
            return np.concatenate(tensors, axis=node.attrs["axis"])  # shared parameters: the integers as they are
        reals = [_dq(t, s, z) for t, s, z in zip(tensors, scales, zero_points)]
        return _q(np.concatenate(reals, axis=node.attrs["axis"]), y_scale, y_zero_point)


# ---------------------------------------------------------------------------- pooling
class _QLinearPool(Op):
    """``Y = Q(pool(DQ(X)))``; inputs ``X, x_s, x_zp, y_s, y_zp``."""

    domain = DOMAIN
    since = 1
    float_op = ""

    def check(self, node):
        OPS[("", self.float_op)].check(node)

    def infer(self, node, inputs):
        require_inputs(node, inputs, 5)
        _check_quantized(node, inputs[0], "X")
        (y,) = OPS[("", self.float_op)].infer(_float_node(node, self.float_op, 1), inputs[:1])
        return [out(node, 0, _output_type(node, inputs[4]), y.shape)]

    def reference(self, node, x, x_scale, x_zero_point, y_scale, y_zero_point):
        real = OPS[("", self.float_op)].reference(_float_node(node, self.float_op, 1), _dq(x, x_scale, x_zero_point))
        return _q(real, y_scale, y_zero_point)


@register
class QLinearGlobalAveragePool(_QLinearPool):
    """``Y = Q(GlobalAveragePool(DQ(X)))``, shape (N, C, 1, ..., 1)."""

    op_type = "QLinearGlobalAveragePool"
    float_op = "GlobalAveragePool"
    attributes = {}

    def check(self, node):
        pass


@register
class QLinearAveragePool(_QLinearPool):
    """``Y = Q(AveragePool(DQ(X)))`` with AveragePool-22's attributes."""

    op_type = "QLinearAveragePool"
    float_op = "AveragePool"
    attributes = dict(OPS[("", "AveragePool")].attributes)


# ---------------------------------------------------------------------------- QLinearConvAdd
@register
class QLinearConvAdd(Op):
    """``Y = QLinearAdd(QLinearConv(X, x_s, x_zp, W, w_s, w_zp, c_s, c_zp, B), c_s, c_zp, Z, z_s, z_zp, y_s, y_zp)``.

    The pair a QDQ ResNet folds into at every residual join: the block's last convolution,
    quantized to ``(c_s, c_zp)`` as the model says, then added to the shortcut Z (of the
    conv output's shape) and quantized to ``(y_s, y_zp)``. One node lets a kernel do both in
    the conv's store, while the conv's tile is in registers, instead of writing the conv's
    output and reading it back for the add. B may be left out (an empty name).
    """

    op_type = "QLinearConvAdd"
    domain = DOMAIN
    since = 1
    attributes = dict(OPS[("", "QLinearConv")].attributes)

    def check(self, node):
        OPS[("", "QLinearConv")].check(node)

    def infer(self, node, inputs):
        if len(node.inputs) != 14 or any(v is None for i, v in enumerate(inputs) if i != 8):
            raise fail(node, f"expects 14 inputs (only B, the 9th, may be empty), got {node.inputs}")
        (c,) = OPS[("", "QLinearConv")].infer(_conv_node(node), inputs[:9])
        z = inputs[9]
        _check_quantized(node, z, "Z")
        for index, what in ((10, "z_scale"), (11, "z_zero_point"), (12, "y_scale")):
            _check_scalar(node, inputs[index], what)
        if z.shape is not None and c.shape is not None and (len(z.shape) != len(c.shape) or any(
                isinstance(a, int) and isinstance(b, int) and a != b for a, b in zip(z.shape, c.shape))):
            raise fail(node, f"Z must have the conv output's shape {list(c.shape)}, got {list(z.shape)}")
        return [out(node, 0, _output_type(node, inputs[13]), c.shape)]

    def reference(self, node, x, x_scale, x_zero_point, w, w_scale, w_zero_point, c_scale, c_zero_point, bias,
                  z, z_scale, z_zero_point, y_scale, y_zero_point):
        c = OPS[("", "QLinearConv")].reference(_conv_node(node), x, x_scale, x_zero_point, w, w_scale, w_zero_point,
                                               c_scale, c_zero_point, bias)
        add = Node("QLinearAdd", ["c", *node.inputs[6:8], *node.inputs[9:]], node.outputs[:1], {}, DOMAIN, node.name, 1)
        return OPS[(DOMAIN, "QLinearAdd")].reference(add, c, c_scale, c_zero_point, z, z_scale, z_zero_point,
                                                     y_scale, y_zero_point)


def _conv_node(node: Node) -> Node:
    """The QLinearConv inside a QLinearConvAdd (its first nine inputs, B possibly empty)."""
    return Node("QLinearConv", node.inputs[:9], ["c"], dict(node.attrs), "", node.name, FLOAT_OPSET)


# ============================================================================ decomposition
#: op type -> (float op, positions of (tensor, scale, zero point) inputs, position of (y_s, y_zp)).
_LAYOUTS = {
    "QLinearAdd": ("Add", ((0, 1, 2), (3, 4, 5)), (6, 7)),
    "QLinearMul": ("Mul", ((0, 1, 2), (3, 4, 5)), (6, 7)),
    "QLinearGlobalAveragePool": ("GlobalAveragePool", ((0, 1, 2),), (3, 4)),
    "QLinearAveragePool": ("AveragePool", ((0, 1, 2),), (3, 4)),
}


def decompose_qlinear(graph: Graph) -> Graph:
    """A copy of ``graph`` whose quantized ``ai.tinyinfer`` nodes are ``DQ → float op → Q`` chains.

    The result is a standard QDQ model (ai.onnx opset ≥ 13 is needed for per-column weight
    scales; the graph's opset is raised to 13 if it is older). Graphs without such nodes come
    back unchanged (as a copy).
    """
    graph = graph.copy()
    kinds = {"QLinearGemm", "QLinearConcat", "QLinearConvAdd", *_LAYOUTS}
    if not any(node.domain == DOMAIN and node.op_type in kinds for node in graph.nodes):
        return graph
    opset = max(graph.opset.get("", 13), 13)
    graph.opset[""] = opset
    fresh = graph.namer()

    def make(op_type: str, inputs: list[str], outputs: list[str], **attrs) -> Node:
        node = Node(op_type, inputs, outputs, attrs, "", fresh(f"{outputs[0]}/{op_type}"))
        prepare_node(node, opset)
        return node

    nodes: list[Node] = []
    for node in graph.nodes:
        if node.domain != DOMAIN or node.op_type not in kinds:
            nodes.append(node)
            continue
        y = node.outputs[0]
        real_y = fresh(f"{y}/float")

        def dq(tensor: str, scale: str, zero: str, axis: int | None = None) -> str:
            real = fresh(f"{tensor}/dequantized")
            attrs = {} if axis is None else {"axis": axis}
            nodes.append(make("DequantizeLinear", [tensor, scale, zero], [real], **attrs))
            return real

        if node.op_type == "QLinearGemm":
            a, a_s, a_z, b, b_s, b_z = node.inputs[:6]
            bias, y_s, y_z = (node.inputs[6], *node.inputs[7:9]) if len(node.inputs) == 9 else ("", *node.inputs[6:8])
            trans_b = node.attrs["transB"]
            per_column = _size(graph, b_s) != 1
            inputs = [dq(a, a_s, a_z), dq(b, b_s, b_z, axis=(0 if trans_b else 1) if per_column else None)]
            if bias:
                bias_scale = fresh(f"{bias}/scale")
                nodes.append(make("Mul", [a_s, b_s], [bias_scale]))
                inputs.append(dq(bias, bias_scale, "", axis=0 if per_column else None))
            nodes.append(make("Gemm", inputs, [real_y], transB=trans_b))
        elif node.op_type == "QLinearConvAdd":
            conv_inputs, (z, z_s, z_z, y_s, y_z) = node.inputs[:9], node.inputs[9:]
            c = fresh(f"{y}/conv")
            conv_attrs = {k: v for k, v in node.attrs.items() if v is not None}
            nodes.append(make("QLinearConv", conv_inputs if conv_inputs[8] else conv_inputs[:8], [c], **conv_attrs))
            nodes.append(make("Add", [dq(c, *conv_inputs[6:8]), dq(z, z_s, z_z)], [real_y]))
        elif node.op_type == "QLinearConcat":
            y_s, y_z = node.inputs[:2]
            triples = [node.inputs[i:i + 3] for i in range(2, len(node.inputs), 3)]
            nodes.append(make("Concat", [dq(*t) for t in triples], [real_y], axis=node.attrs["axis"]))
        else:
            float_op, operands, (ys_index, yz_index) = _LAYOUTS[node.op_type]
            y_s, y_z = node.inputs[ys_index], node.inputs[yz_index]
            reals = [dq(*(node.inputs[i] for i in triple)) for triple in operands]
            attrs = {k: v for k, v in node.attrs.items() if v is not None}
            nodes.append(make(float_op, reals, [real_y], **attrs))
        nodes.append(make("QuantizeLinear", [real_y, y_s, y_z], [y]))
    graph.nodes = nodes
    return graph


def _size(graph: Graph, name: str) -> int:
    value = graph.initializers.get(name)
    return 1 if value is None else int(np.asarray(value).size)
