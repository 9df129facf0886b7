"""O2: fold the ``DequantizeLinear → op → QuantizeLinear`` chains of a QDQ model into int8 ops.

A QDQ model (what :func:`tinyinfer.compress.quantize_static` and ONNX Runtime's quantizer
write) computes in float: every quantized tensor is dequantized before the op that reads it
and quantized again after. An engine gets its speed by reading the chain as one integer op
(Jacob et al., 2018, section 2): the op's inputs are the integers *before* the
DequantizeLinear, its output the integers *after* the QuantizeLinear, and the scales become
the requantization multiplier. This pass does that rewrite:

=========================================  ==========================================================
chain                                      becomes
=========================================  ==========================================================
DQ(x), DQ(w), [DQ(b)] → Conv → [Relu] → Q  ONNX ``QLinearConv`` (int32 bias with scale ``x_s · w_s``)
DQ(a), DQ(b) → MatMul → Q                  ONNX ``QLinearMatMul``
DQ(a), DQ(B), [DQ(C)] → Gemm → [Relu] → Q  ``ai.tinyinfer:QLinearGemm``
DQ(a), DQ(b) → Add / Mul → [Relu] → Q      ``ai.tinyinfer:QLinearAdd`` / ``QLinearMul``
DQ(x)... → Concat → Q                      ``ai.tinyinfer:QLinearConcat``
DQ(x) → AveragePool / GlobalAveragePool→Q  ``ai.tinyinfer:QLinearAveragePool`` / ``QLinearGlobalAveragePool``
DQ(x) → MaxPool / Reshape / ... → Q        the same op on the integers (when Q's scale and zero
                                           point are DQ's: max and moves commute with the affine map)
=========================================  ==========================================================

A second pass, :func:`fuse_qlinear_conv_add`, then joins each ``QLinearConv → QLinearAdd``
pair (a residual block's last conv and its shortcut add) into ``ai.tinyinfer:QLinearConvAdd``.

A Relu (or a Clip) between the op and the Q is absorbed when the Q's saturation already
performs it: ``Q(relu(y)) = max(Q(y), zero_point)``, which is ``Q(y)`` itself when the zero
point is the type's minimum (a range that starts at 0, as the quantizer gives a Relu's output).

Matching is conservative, as in :mod:`.fusion`: the float tensors inside a chain must have
one reader and not be graph outputs, scales and zero points must be constants, activations
must be quantized per tensor. A chain that does not match stays as it is (it still runs,
in float). DequantizeLinear nodes nobody reads any more are removed.

The pass is registered at O2 but placed first in the pipeline (``passes/base.py`` imports
this module at its end): O1's constant folding would otherwise compute every weight's
DequantizeLinear into a float weight before the chain could be read as an integer op.
"""

from __future__ import annotations

import numpy as np

from .. import ops
from ..ir import Graph, Node
from ..ops.qlinear import DOMAIN
from ..ops.quantize import INTEGER_RANGES
from .base import register_pass
from .patterns import Rewriter, label, scalar

#: Ops that move or select values: with equal input and output parameters they run on the integers.
INTEGER_PASS_THROUGH = ("MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze")
EIGHT_BIT = (np.dtype(np.uint8), np.dtype(np.int8))


@register_pass("fold_qdq", "O2")
def fold_qdq(graph: Graph) -> list[str]:
    """Replace DequantizeLinear → op → QuantizeLinear chains by int8 ops (QLinearConv, ...)."""
    if not any(node.op_type == "QuantizeLinear" and not node.domain for node in graph.nodes):
        return []
    r = Rewriter(graph)
    for node in list(graph.nodes):
        if node.domain or not r.alive(node):
            continue
        fold = _FOLDS.get(node.op_type)
        if fold is not None:
            fold(r, node)
    _remove_unread_dequantize(r)
    return r.finish()


@register_pass("fuse_qlinear_conv_add", "O2")
def fuse_qlinear_conv_add(graph: Graph) -> list[str]:
    """Fuse ``QLinearConv → QLinearAdd`` (a residual join) into one ``ai.tinyinfer:QLinearConvAdd``.

    After :func:`fold_qdq`, a ResNet block ends with a QLinearConv whose only reader is the
    QLinearAdd of the shortcut (its Relu folded into the add's saturation). One node computes
    the same integers: the conv's requantized output never leaves the kernel's store.
    """
    r = Rewriter(graph)
    for add in [n for n in graph.nodes if n.op_type == "QLinearAdd" and n.domain == DOMAIN]:
        for position in (0, 3):
            conv = r.producer(add.inputs[position], "QLinearConv")
            shortcut = add.inputs[3 - position]
            if conv is None or conv.domain or not r.is_private(add.inputs[position]):
                continue
            if not (r.same_shape(add.inputs[position], shortcut) and r.same_shape(shortcut, add.outputs[0])):
                continue
            conv_inputs = [*conv.inputs, *[""] * (9 - len(conv.inputs))]
            inputs = [*conv_inputs[:6], *add.inputs[position + 1:position + 3], conv_inputs[8],
                      *add.inputs[3 - position:6 - position], *add.inputs[6:8]]
            _replace(r, [conv, add], "QLinearConvAdd", DOMAIN, inputs, add.outputs[0], dict(conv.attrs),
                     conv.name or add.outputs[0])
            break
    return r.finish()


# ---------------------------------------------------------------------------- matching helpers
class _Dequantized:
    """What a DequantizeLinear feeding the chain reads: integers, scale, zero point, axis."""

    def __init__(self, node: Node, scale: np.ndarray, zero_point: np.ndarray | None):
        self.node = node
        self.values, self.scale_name = node.inputs[0], node.inputs[1]
        self.zero_name = node.inputs[2] if len(node.inputs) > 2 else ""
        self.scale, self.zero_point = scale, zero_point
        self.axis = node.attrs.get("axis", 1)

    @property
    def per_tensor(self) -> bool:
        return self.scale.size == 1


def _dequantized(r: Rewriter, name: str, *, per_tensor: bool = True) -> _Dequantized | None:
    """The DequantizeLinear producing ``name`` with constant parameters and an 8-bit input."""
    node = r.producer(name, "DequantizeLinear")
    if node is None or node.domain or node.attrs.get("block_size"):
        return None
    scale = r.const(node.inputs[1])
    zero_name = node.inputs[2] if len(node.inputs) > 2 else ""
    zero = r.const(zero_name) if zero_name else None
    if scale is None or (zero_name and zero is None) or r.dtype(node.inputs[0]) not in EIGHT_BIT:
        return None
    if scale.dtype != np.float32 or r.dtype(name) != np.dtype(np.float32):
        return None
    if per_tensor and scale.size != 1:
        return None
    return _Dequantized(node, np.asarray(scale), None if zero is None else np.asarray(zero))


def _quantized_output(r: Rewriter, name: str) -> tuple[Node, list[Node]] | None:
    """The per-tensor QuantizeLinear that is ``name``'s only reader, through at most one Relu/Clip.

    Returns (Q node, the activation nodes between) when the activation is implied by Q's
    saturation (see the module docstring).
    """
    between: list[Node] = []
    reader = r.sole_reader(name)
    if reader is not None and reader.op_type in ("Relu", "Clip") and not reader.domain:
        between.append(reader)
        name = reader.outputs[0]
        reader = r.sole_reader(name)
    if reader is None or reader.op_type != "QuantizeLinear" or reader.domain:
        return None
    scale = r.const(reader.inputs[1])
    zero_name = reader.inputs[2] if len(reader.inputs) > 2 else ""
    zero = r.const(zero_name) if zero_name else None
    if scale is None or scale.size != 1 or not zero_name or zero is None or zero.dtype not in EIGHT_BIT:
        return None
    if reader.attrs.get("output_dtype") or reader.attrs.get("block_size"):
        return None
    for activation in between:
        if not _implied_by_saturation(r, activation, float(scale.reshape(-1)[0]), zero):
            return None
    return reader, between


def _implied_by_saturation(r: Rewriter, activation: Node, scale: float, zero: np.ndarray) -> bool:
    low, high = INTEGER_RANGES[zero.dtype]
    z = int(zero.reshape(-1)[0])
    if activation.op_type == "Relu":
        return z == low
    bounds = []
    for index, default in ((1, -np.inf), (2, np.inf)):
        name = activation.inputs[index] if index < len(activation.inputs) else ""
        value = scalar(r.const(name)) if name else default
        if value is None:
            return False
        bounds.append(value)
    return np.rint(bounds[0] / scale) + z <= low and np.rint(bounds[1] / scale) + z >= high


def _zero_or_default(r: Rewriter, dq: _Dequantized, stem: str) -> str:
    """DQ's zero point input, or a new uint8 zero when DQ left it out (the spec's default)."""
    if dq.zero_name:
        return dq.zero_name
    return r.constant(f"{stem}_zero_point", np.zeros(dq.scale.shape, dtype=r.dtype(dq.values)))


def _replace(r: Rewriter, chain: list[Node], op_type: str, domain: str, inputs: list[str], output: str,
             attrs: dict, name: str) -> Node:
    node = Node(op_type, inputs, [output], attrs, domain, name)
    if domain:
        r.graph.opset.setdefault(domain, 1)
        ops.prepare_node(node, 1)
    else:
        ops.prepare_node(node, r.graph.opset_of(""))
    r.replace(chain, node)
    r.note(f"folded {' → '.join(n.op_type for n in chain)} into {op_type} '{name}'")
    return node


def _rank(r: Rewriter, name: str) -> int | None:
    shape = r.shape(name)
    return None if shape is None else len(shape)


# ---------------------------------------------------------------------------- Conv, MatMul, Gemm
def _fold_conv(r: Rewriter, conv: Node) -> None:
    x = _dequantized(r, conv.inputs[0])
    w = _dequantized(r, conv.inputs[1], per_tensor=False)
    tail = _quantized_output(r, conv.outputs[0])
    if x is None or w is None or tail is None or (not w.per_tensor and w.axis not in (0, -_rank(r, w.values))):
        return
    q, between = tail
    w_zero = _zero_or_default(r, w, conv.inputs[1])
    inputs = [x.values, x.scale_name, _zero_or_default(r, x, conv.inputs[0]), w.values, w.scale_name, w_zero,
              q.inputs[1], q.inputs[2]]
    bias = conv.inputs[2] if len(conv.inputs) > 2 else ""
    if bias:
        integer_bias = _integer_bias(r, bias, x.scale, w.scale, stem=f"{conv.name or bias}_bias_int32")
        if integer_bias is None:
            return
        inputs.append(integer_bias)
    attrs = {k: v for k, v in conv.attrs.items()}
    _replace(r, [conv, *between, q], "QLinearConv", "", inputs, q.outputs[0], attrs, conv.name or q.outputs[0])


def _fold_matmul(r: Rewriter, matmul: Node) -> None:
    a = _dequantized(r, matmul.inputs[0])
    b = _dequantized(r, matmul.inputs[1], per_tensor=False)
    tail = _quantized_output(r, matmul.outputs[0])
    if a is None or b is None or tail is None or _rank(r, a.values) != 2 or _rank(r, b.values) != 2:
        return
    if not b.per_tensor and b.axis not in (1, -1):
        return  # QLinearMatMul's b_scale is per column
    q, between = tail
    inputs = [a.values, a.scale_name, _zero_or_default(r, a, matmul.inputs[0]),
              b.values, b.scale_name, _zero_or_default(r, b, matmul.inputs[1]), q.inputs[1], q.inputs[2]]
    _replace(r, [matmul, *between, q], "QLinearMatMul", "", inputs, q.outputs[0], {}, matmul.name or q.outputs[0])


def _fold_gemm(r: Rewriter, gemm: Node) -> None:
    attrs = gemm.attrs
    if attrs.get("transA") or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
        return
    a = _dequantized(r, gemm.inputs[0])
    b = _dequantized(r, gemm.inputs[1], per_tensor=False)
    tail = _quantized_output(r, gemm.outputs[0])
    if a is None or b is None or tail is None:
        return
    trans_b = int(attrs.get("transB", 0))
    if not b.per_tensor and b.axis not in ((0, -2) if trans_b else (1, -1)):
        return  # one scale per output column only
    q, between = tail
    inputs = [a.values, a.scale_name, _zero_or_default(r, a, gemm.inputs[0]),
              b.values, b.scale_name, _zero_or_default(r, b, gemm.inputs[1])]
    bias = gemm.inputs[2] if len(gemm.inputs) > 2 else ""
    if bias:
        shape = r.shape(bias)
        if shape is None or len(shape) > 1:
            return
        integer_bias = _integer_bias(r, bias, a.scale, b.scale, stem=f"{gemm.name or bias}_bias_int32")
        if integer_bias is None:
            return
        inputs.append(integer_bias)
    inputs += [q.inputs[1], q.inputs[2]]
    _replace(r, [gemm, *between, q], "QLinearGemm", DOMAIN, inputs, q.outputs[0], {"transB": trans_b},
             gemm.name or q.outputs[0])


def _integer_bias(r: Rewriter, bias: str, input_scale: np.ndarray, weight_scale: np.ndarray, stem: str) -> str | None:
    """The bias as int32 with scale ``input_scale · weight_scale`` (zero point 0), or None.

    A bias the quantizer stored that way already (``DQ(b_int32, x_s · w_s)``) is used as it
    is; a float constant bias (or one stored with another scale) is requantized once, here.
    """
    wanted = (np.float32(input_scale.reshape(-1)[0]) * weight_scale.astype(np.float32).reshape(-1)).astype(np.float32)
    dq = r.producer(bias, "DequantizeLinear")
    if dq is not None and r.dtype(dq.inputs[0]) == np.dtype(np.int32):
        stored = r.const(dq.inputs[1])
        zero = r.const(dq.inputs[2]) if len(dq.inputs) > 2 and dq.inputs[2] else None
        if stored is not None and (zero is None or not np.any(zero)):
            stored, expected = np.broadcast_arrays(stored.reshape(-1), wanted) if stored.size in (1, wanted.size) \
                else (None, None)
            if stored is not None and np.allclose(stored, expected, rtol=1e-6, atol=0):
                return dq.inputs[0]
    value = r.const(bias)
    if value is None or value.dtype.kind != "f":
        return None
    integers = np.rint(value.astype(np.float64).reshape(-1) / wanted.astype(np.float64))
    return r.constant(stem, np.clip(integers, -(2**31), 2**31 - 1).astype(np.int32))


# ---------------------------------------------------------------------------- elementwise, concat, pools
def _fold_binary(r: Rewriter, node: Node) -> None:
    if len(node.inputs) != 2:
        return
    a, b = _dequantized(r, node.inputs[0]), _dequantized(r, node.inputs[1])
    tail = _quantized_output(r, node.outputs[0])
    if a is None or b is None or tail is None:
        return
    q, between = tail
    inputs = [a.values, a.scale_name, _zero_or_default(r, a, node.inputs[0]),
              b.values, b.scale_name, _zero_or_default(r, b, node.inputs[1]), q.inputs[1], q.inputs[2]]
    op_type = "QLinearAdd" if node.op_type in ("Add", "Sum") else "QLinearMul"
    _replace(r, [node, *between, q], op_type, DOMAIN, inputs, q.outputs[0], {}, node.name or q.outputs[0])


def _fold_concat(r: Rewriter, concat: Node) -> None:
    sources = [_dequantized(r, name) for name in concat.inputs]
    tail = _quantized_output(r, concat.outputs[0])
    if any(s is None for s in sources) or tail is None or tail[1]:
        return
    q = tail[0]
    inputs = [q.inputs[1], q.inputs[2]]
    for source, name in zip(sources, concat.inputs):
        inputs += [source.values, source.scale_name, _zero_or_default(r, source, name)]
    _replace(r, [concat, q], "QLinearConcat", DOMAIN, inputs, q.outputs[0], {"axis": concat.attrs["axis"]},
             concat.name or q.outputs[0])


def _fold_pool(r: Rewriter, pool: Node) -> None:
    x = _dequantized(r, pool.inputs[0])
    tail = _quantized_output(r, pool.outputs[0])
    if x is None or tail is None or tail[1]:
        return
    q = tail[0]
    inputs = [x.values, x.scale_name, _zero_or_default(r, x, pool.inputs[0]), q.inputs[1], q.inputs[2]]
    attrs = {k: v for k, v in pool.attrs.items()} if pool.op_type == "AveragePool" else {}
    _replace(r, [pool, q], f"QLinear{pool.op_type}", DOMAIN, inputs, q.outputs[0], attrs, pool.name or q.outputs[0])


def _fold_pass_through(r: Rewriter, node: Node) -> None:
    """``DQ → MaxPool → Q`` with equal parameters is MaxPool on the integers (and so for moves)."""
    x = _dequantized(r, node.inputs[0])
    tail = _quantized_output(r, node.outputs[0])
    if x is None or tail is None or tail[1]:
        return
    q = tail[0]
    q_scale, q_zero = r.const(q.inputs[1]), r.const(q.inputs[2])
    same = (
        np.float32(q_scale.reshape(-1)[0]) == np.float32(x.scale.reshape(-1)[0])
        and q_zero.dtype == r.dtype(x.values)
        and int(q_zero.reshape(-1)[0]) == (0 if x.zero_point is None else int(x.zero_point.reshape(-1)[0]))
    )
    if not same or (node.op_type == "MaxPool" and len(node.outputs) > 1 and node.outputs[1]):
        return
    moved = Node(node.op_type, [x.values, *node.inputs[1:]], [q.outputs[0]], dict(node.attrs), "", node.name,
                 node.version)
    r.replace([node, q], moved)
    r.note(f"{label(node)} runs on the 8-bit integers (equal parameters before and after)")


def _remove_unread_dequantize(r: Rewriter) -> None:
    """DequantizeLinear nodes whose readers were all folded away (weights, mostly)."""
    while True:
        unread = [n for n in r.graph.nodes if n.op_type == "DequantizeLinear" and not n.domain
                  and not r.readers(n.outputs[0]) and n.outputs[0] not in r.graph.output_names]
        if not unread:
            return
        r.remove(*unread)


_FOLDS = {
    "Conv": _fold_conv,
    "MatMul": _fold_matmul,
    "Gemm": _fold_gemm,
    "Add": _fold_binary,
    "Sum": _fold_binary,
    "Mul": _fold_binary,
    "Concat": _fold_concat,
    "AveragePool": _fold_pool,
    "GlobalAveragePool": _fold_pool,
    **{op: _fold_pass_through for op in INTEGER_PASS_THROUGH},
}
