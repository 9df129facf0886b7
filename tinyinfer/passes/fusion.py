"""O2 fusion passes, and the O1 cleanups that clear the way for them.

A fusion replaces a chain of nodes by fewer nodes that compute the same function. Two kinds
make up this module:

* **folding** changes weights, not the graph's shape of work: an inference-mode
  BatchNormalization, a per-channel ``Mul``/``Add`` or a bias ``Add`` after a convolution is
  an affine map ``y -> s*y + t`` per output channel, and a convolution followed by an affine
  map is a convolution with weights ``s*W`` and bias ``s*b + t`` (the "BN folding" every
  deployment toolkit does; Jacob et al., 2018, section 3.2, use the same identity before
  quantizing). ``MatMul + Add`` becomes one ``Gemm``.
* **fusing** replaces a chain by one node of the ``ai.tinyinfer`` domain
  (``tinyinfer/ops/fused.py``) or by the standard op the chain spells out: Conv or Gemm plus
  activation, Conv plus residual Add plus activation (as ONNX Runtime's FusedConv), a
  BatchNormalization no conv can absorb plus its activation (one ScaleShift), the ten-node
  decomposed LayerNormalization, the five-node decomposed GELU.

Every pass matches conservatively: an intermediate tensor of a chain must have exactly one
reader and must not be a graph output, constants must be known before running, and shapes
must show that the fused node produces the same shape as the chain did. The O1 section at
the top removes nodes that do nothing (a Reshape to the same shape, ``x * 1``, ...), which
often stand between the nodes a fusion wants to see side by side.

The fused graph computes the same function up to floating-point rounding: folded weights
are computed in float64 and rounded once to the weights' type, so a folded conv differs
from conv-then-BN by a few units in the last place.
"""

from __future__ import annotations

import numpy as np

from .. import ops
from ..ir import Graph, Node
from ..ops.fused import ACTIVATIONS, DOMAIN, DOMAIN_VERSION
from .base import register_pass
from .cleanup import eliminate_dead_code, fold_constants
from .patterns import Rewriter, channel_vector, close_to, label, other_input, scalar

SQRT_2 = float(np.sqrt(2.0))
SQRT_2_OVER_PI = float(np.sqrt(2.0 / np.pi))
#: The cubic coefficient of GELU's tanh approximation (Hendrycks & Gimpel, 2016).
GELU_CUBIC = 0.044715


# ============================================================================ O1: no-op removal
_SHAPE_ONLY = ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Expand")


@register_pass("eliminate_noop_ops", "O1")
def eliminate_noop_ops(graph: Graph) -> list[str]:
    """Remove nodes that return their input: a reshape to the same shape, an identity Transpose,
    a Cast to the same type, a Pad by zeros, a full-range Slice, an inference Dropout."""
    r = Rewriter(graph)
    for node in list(graph.nodes):
        if node.domain or not node.inputs or not node.inputs[0] or not node.outputs:
            continue
        reason = _noop_reason(r, node)
        if reason and r.bypass(node):
            r.note(f"removed {label(node)}: {reason}")
    return r.finish()


def _noop_reason(r: Rewriter, node: Node) -> str | None:
    """Why ``node`` returns its first input unchanged, or None if it may not."""
    source, result = node.inputs[0], node.outputs[0]
    op = node.op_type
    if op in _SHAPE_ONLY:
        return "output shape equals input shape" if r.same_shape(source, result) else None
    if op == "Transpose":
        shape = r.shape(source)
        if shape is None:
            return None
        perm = node.attrs.get("perm")
        identity = list(range(len(shape)))
        return "identity permutation" if (perm is None and len(shape) <= 1) or perm == identity else None
    if op in ("Cast", "CastLike"):
        before, after = r.dtype(source), r.dtype(result)
        return f"already {before}" if before is not None and before == after else None
    if op == "Pad":
        pads = node.attrs.get("pads") if node.version < 11 else _ints(r, node, 1)
        return "all pads are zero" if pads is not None and not any(pads) else None
    if op == "Slice":
        steps = _ints(r, node, 4) if node.version >= 10 and len(node.inputs) > 4 and node.inputs[4] else []
        shape = r.static_shape(source)
        if steps is None or any(step < 0 for step in steps) or shape is None:
            return None
        return "slices the full range" if shape == r.static_shape(result) else None
    if op == "Dropout":
        return "inference mode, mask unused" if _inference_dropout_without_mask(r, node) else None
    return None


def _inference_dropout_without_mask(r: Rewriter, node: Node) -> bool:
    mask = node.outputs[1] if len(node.outputs) > 1 else ""
    if mask and (r.readers(mask) or mask in r.graph.output_names):
        return False
    if len(node.inputs) > 2 and node.inputs[2]:  # training_mode (opset 12+)
        flag = r.const(node.inputs[2])
        return flag is not None and not bool(np.asarray(flag).reshape(-1)[0])
    return True


def _ints(r: Rewriter, node: Node, index: int) -> list[int] | None:
    if index >= len(node.inputs) or not node.inputs[index]:
        return None
    value = r.const(node.inputs[index])
    return None if value is None else [int(v) for v in np.asarray(value).reshape(-1)]


# ============================================================================ O1: merge pairs
@register_pass("merge_consecutive_ops", "O1")
def merge_consecutive_ops(graph: Graph) -> list[str]:
    """Merge Transpose -> Transpose into one Transpose (composed permutation) and
    Reshape -> Reshape into the last Reshape."""
    r = Rewriter(graph)
    changed = True
    while changed:
        changed = False
        for node in list(graph.nodes):
            if node.domain or not r.alive(node):
                continue
            if node.op_type == "Transpose" and _merge_transposes(r, node):
                changed = True
            elif node.op_type == "Reshape" and _merge_reshapes(r, node):
                changed = True
    return r.finish()


def _merge_transposes(r: Rewriter, second: Node) -> bool:
    """``Transpose(Transpose(x, p), q)`` is ``Transpose(x, [p[q[i]] for i])``."""
    first = r.producer(second.inputs[0], "Transpose")
    shape = r.shape(second.inputs[0])
    if first is None or first.domain or shape is None or not r.is_private(second.inputs[0]):
        return False
    rank = len(shape)
    inner = first.attrs.get("perm") or list(range(rank))[::-1]
    outer = second.attrs.get("perm") or list(range(rank))[::-1]
    if len(inner) != rank or len(outer) != rank:
        return False
    composed = [inner[i] for i in outer]
    r.set_inputs(second, [first.inputs[0]])
    second.attrs["perm"] = composed
    r.remove(first)
    r.note(f"merged {label(first)} into {label(second)}: perm {composed}")
    if composed == list(range(rank)) and r.bypass(second):
        r.note(f"removed {label(second)}: the two permutations cancel")
    return True


def _merge_reshapes(r: Rewriter, second: Node) -> bool:
    """``Reshape(Reshape(x, s1), s2)`` is ``Reshape(x, s2)`` when s2 has no 0 ("copy this dim")."""
    first = r.producer(second.inputs[0], "Reshape")
    if first is None or first.domain or not r.is_private(second.inputs[0]):
        return False
    target = r.const(second.inputs[1])
    if target is None or (0 in np.asarray(target).reshape(-1) and not second.attrs.get("allowzero")):
        return False
    r.set_inputs(second, [first.inputs[0], second.inputs[1]])
    r.remove(first)
    r.note(f"merged {label(first)} into {label(second)}")
    return True


# ============================================================================ O1: algebra
#: op -> (identity constant, whether the constant may be the first operand)
_IDENTITIES = {"Mul": (1.0, True), "Add": (0.0, True), "Sub": (0.0, False), "Div": (1.0, False), "Pow": (1.0, False)}


@register_pass("algebraic_identities", "O1")
def eliminate_algebraic_identities(graph: Graph) -> list[str]:
    """Remove x*1, 1*x, x+0, 0+x, x-0, x/1 and x**1 when the constant does not broadcast x
    to a bigger shape or another type."""
    r = Rewriter(graph)
    for node in list(graph.nodes):
        if node.domain or node.op_type not in _IDENTITIES or len(node.inputs) != 2:
            continue
        neutral, commutes = _IDENTITIES[node.op_type]
        for position in ((1, 0) if commutes else (1,)):
            constant, x = node.inputs[position], node.inputs[1 - position]
            value = r.const(constant)
            if value is None or r.const(x) is not None or value.size == 0 or np.any(value != neutral):
                continue
            result = node.outputs[0]
            if r.same_shape(x, result) and r.dtype(x) == r.dtype(result):
                node.inputs = [x, constant]  # bypass() passes the first input through
                if r.bypass(node):
                    r.note(f"removed {label(node)}: {node.op_type} by {neutral:g}")
                break
    return r.finish()


@register_pass("refold_constants", "O1")
def fold_constants_after_cleanup(graph: Graph) -> list[str]:
    """Fold constants and remove dead code again: removing a no-op (a CastLike of a constant
    to its own type, say) can leave a node whose inputs are now all constant, or unread."""
    return fold_constants(graph) + eliminate_dead_code(graph)


# ============================================================================ O2: LayerNormalization
@register_pass("fuse_layer_normalization", "O2")
def fuse_layer_normalization(graph: Graph) -> list[str]:
    """Fuse the decomposed LayerNormalization (Ba, Kiros & Hinton, 2016) into one node.

    Exporters spell ``y = (x - E[x]) / sqrt(Var[x] + eps) * gamma + beta`` (statistics over
    the trailing axes) as ReduceMean -> Sub -> Pow(2) -> ReduceMean -> Add(eps) -> Sqrt ->
    Div -> Mul(gamma) -> Add(beta); variants square with Mul(d, d), divide by multiplying
    with a Reciprocal, compute the Sub twice, or leave out gamma or beta. The result is the
    standard LayerNormalization at opset >= 17, else ``ai.tinyinfer:LayerNormalization``.
    """
    r = Rewriter(graph)
    for mean in [n for n in graph.nodes if n.op_type == "ReduceMean" and not n.domain]:
        if r.alive(mean):
            _fuse_layer_normalization_at(r, mean)
    return r.finish()


def _fuse_layer_normalization_at(r: Rewriter, mean: Node) -> bool:
    x = mean.inputs[0]
    shape = r.shape(x)
    if shape is None or not r.is_float(x):
        return False
    rank = len(shape)
    axes = _reduced_axes(r, mean, rank)
    if not axes or axes != list(range(axes[0], rank)):
        return False
    normalized_dims = shape[axes[0]:]
    if not all(isinstance(d, int) for d in normalized_dims):
        return False
    readers = r.readers(mean.outputs[0])
    if mean.outputs[0] in r.graph.output_names or not 1 <= len(readers) <= 2:
        return False
    if not all(n.op_type == "Sub" and not n.domain and n.inputs == [x, mean.outputs[0]] for n in readers):
        return False
    centered = {n.outputs[0]: n for n in readers}
    # The variance branch: square, mean, + eps, sqrt.
    square = _find_reader(r, centered, lambda n: (n.op_type == "Pow" and close_to(r.const(n.inputs[1]), 2.0))
                          or (n.op_type == "Mul" and n.inputs[0] == n.inputs[1]))
    if square is None:
        return False
    variance = r.sole_reader(square.outputs[0], "ReduceMean")
    if variance is None or _reduced_axes(r, variance, rank) != axes or not variance.attrs.get("keepdims", 1):
        return False
    add_eps = r.sole_reader(variance.outputs[0], *_ADDS)
    if not _is_add(add_eps):
        return False
    epsilon = scalar(r.const(other_input(add_eps, variance.outputs[0]) or ""))
    sqrt = r.sole_reader(add_eps.outputs[0], "Sqrt")
    if epsilon is None or epsilon < 0 or sqrt is None:
        return False
    chain = [mean, *readers, square, variance, add_eps, sqrt]
    # The division: Div(d, std), or Mul(d, Reciprocal(std)).
    divide = r.sole_reader(sqrt.outputs[0], "Div", "Reciprocal")
    if divide is None:
        return False
    if divide.op_type == "Reciprocal":
        chain.append(divide)
        divide = r.sole_reader(divide.outputs[0], "Mul")
        if divide is None or other_input(divide, chain[-1].outputs[0]) not in centered:
            return False
    elif divide.inputs[0] not in centered or divide.inputs[1] != sqrt.outputs[0]:
        return False
    chain.append(divide)
    # Each centered tensor may feed only the square and the division.
    for name in centered:
        if name in r.graph.output_names or any(n is not square and n is not divide for n in r.readers(name)):
            return False
    result = divide.outputs[0]
    gamma = beta = None
    follower = r.sole_reader(result, "Mul")
    if follower is not None and not follower.domain:
        gamma = r.const(other_input(follower, result) or "")
        if gamma is not None:
            chain.append(follower)
            result = follower.outputs[0]
    follower = r.sole_reader(result, *_ADDS)
    if _is_add(follower):
        beta = r.const(other_input(follower, result) or "")
        if beta is not None:
            chain.append(follower)
            result = follower.outputs[0]
    if not r.same_shape(result, x):
        return False
    dtype = r.dtype(x)
    scale = _over_normalized_axes(gamma, rank, axes[0], normalized_dims, 1.0, dtype)
    bias = _over_normalized_axes(beta, rank, axes[0], normalized_dims, 0.0, dtype)
    if scale is None or bias is None:
        return False
    stem = mean.name or x
    inputs = [x, r.constant(f"{stem}_ln_scale", scale)]
    if beta is not None:
        inputs.append(r.constant(f"{stem}_ln_bias", bias))
    attrs = {"axis": axes[0], "epsilon": float(epsilon), "stash_type": 1}
    node = _standard_or_fused(r, "LayerNormalization", 17, inputs, [result], attrs, mean.name)
    r.replace(chain, node)
    r.note(f"fused {len(chain)} nodes from {label(mean)} into {label(node)} ({_domain(node)})")
    return True


def _find_reader(r: Rewriter, sources: dict[str, Node], accept) -> Node | None:
    """The one node reading one of ``sources`` that ``accept`` s (None if none or several)."""
    found = []
    for name in sources:
        found += [n for n in r.readers(name) if not n.domain and accept(n) and n not in found]
    return found[0] if len(found) == 1 else None


def _reduced_axes(r: Rewriter, node: Node, rank: int) -> list[int] | None:
    """The sorted, non-negative axes a keepdims=1 reduction node reduces (None if unknown)."""
    if not node.attrs.get("keepdims", 1):
        return None
    if len(node.inputs) > 1 and node.inputs[1]:
        axes = r.const(node.inputs[1])
        axes = None if axes is None else [int(a) for a in np.asarray(axes).reshape(-1)]
    else:
        axes = node.attrs.get("axes")
    if not axes:
        return None  # "all axes" (or none, with noop_with_empty_axes): not a layer norm
    return sorted(a % rank for a in axes)


def _over_normalized_axes(constant, rank, axis, dims, neutral, dtype) -> np.ndarray | None:
    """gamma or beta as a tensor of the normalized shape ``dims`` (None if it varies elsewhere)."""
    if constant is None:
        return np.full(dims, neutral, dtype=dtype)
    if constant.ndim > rank:
        return None
    padded = constant.reshape((1,) * (rank - constant.ndim) + constant.shape)
    if any(d != 1 for d in padded.shape[:axis]):
        return None
    try:
        return np.broadcast_to(padded.reshape(padded.shape[axis:]), dims).astype(dtype)
    except ValueError:
        return None


# ============================================================================ O2: GELU
@register_pass("fuse_gelu", "O2")
def fuse_gelu(graph: Graph) -> list[str]:
    """Fuse the decomposed GELU (Hendrycks & Gimpel, 2016) into one Gelu node.

    Exact form: ``x * 0.5 * (1 + erf(x / sqrt(2)))`` — Div(x, sqrt 2) or Mul(x, 1/sqrt 2),
    Erf, Add(1), and the product of x, 0.5 and the sum in any order of Muls. Tanh form:
    ``x * 0.5 * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))`` with x^3 as Pow(x, 3) or
    x*x*x. The result is the standard Gelu at opset >= 20, else ``ai.tinyinfer:Gelu``.
    """
    r = Rewriter(graph)
    for node in list(graph.nodes):
        if node.domain or not r.alive(node):
            continue
        if node.op_type == "Erf":
            _fuse_gelu_at(r, node, *_erf_argument(r, node), approximate="none")
        elif node.op_type == "Tanh":
            _fuse_gelu_at(r, node, *_tanh_argument(r, node), approximate="tanh")
    return r.finish()


def _erf_argument(r: Rewriter, erf: Node) -> tuple[str | None, list[Node]]:
    """x and the nodes computing ``x / sqrt(2)`` for ``Erf(x / sqrt(2))``."""
    scaled = erf.inputs[0]
    producer = r.producer(scaled, "Div", "Mul")
    if producer is None or producer.domain or not r.is_private(scaled):
        return None, []
    if producer.op_type == "Div":
        x, divisor = producer.inputs
        return (x, [producer]) if close_to(r.const(divisor), SQRT_2) and r.const(x) is None else (None, [])
    leaves, inner = _product(r, producer)
    x = _only_tensor(r, leaves)
    return (x, inner) if x is not None and close_to(_constant_product(r, leaves), 1 / SQRT_2) else (None, [])


def _tanh_argument(r: Rewriter, tanh: Node) -> tuple[str | None, list[Node]]:
    """x and the nodes computing ``sqrt(2/pi) * (x + 0.044715 * x^3)`` for the tanh form."""
    argument = tanh.inputs[0]
    producer = r.producer(argument, "Mul")
    if producer is None or producer.domain or not r.is_private(argument):
        return None, []
    leaves, nodes = _product(r, producer)
    inner = _only_tensor(r, leaves)
    if inner is None or not close_to(_constant_product(r, leaves), SQRT_2_OVER_PI):
        return None, []
    add = r.producer(inner, *_ADDS)
    if not _is_add(add) or not r.is_private(inner):
        return None, []
    for x, cubic in (add.inputs, add.inputs[::-1]):
        term = r.producer(cubic, "Mul")
        if term is None or term.domain or not r.is_private(cubic) or r.const(x) is not None:
            continue
        leaves, term_nodes = _product(r, term)
        if not close_to(_constant_product(r, leaves), GELU_CUBIC):
            continue
        tensors = [leaf for leaf in leaves if r.const(leaf) is None]
        if tensors == [x] * 3:
            return x, [*nodes, add, *term_nodes]
        if len(tensors) == 1 and r.is_private(tensors[0]):
            power = r.producer(tensors[0], "Pow")
            if power is not None and not power.domain and power.inputs[0] == x and close_to(r.const(power.inputs[1]), 3.0):
                return x, [*nodes, add, *term_nodes, power]
    return None, []


def _fuse_gelu_at(r: Rewriter, core: Node, x: str | None, argument_nodes: list[Node], approximate: str) -> bool:
    """Given ``core`` = Erf or Tanh of the right argument of x, match ``0.5 * x * (1 + core)``."""
    if x is None or not r.is_float(x):
        return False
    plus = r.sole_reader(core.outputs[0], *_ADDS)
    if not _is_add(plus) or not close_to(r.const(other_input(plus, core.outputs[0]) or ""), 1.0):
        return False
    top = r.sole_reader(plus.outputs[0], "Mul")
    for _ in range(3):  # climb through at most three Muls to the product of x, 0.5 and the sum
        if top is None or top.domain:
            return False
        leaves, products = _product(r, top)
        tensors = sorted(leaf for leaf in leaves if r.const(leaf) is None)
        if tensors == sorted([x, plus.outputs[0]]) and close_to(_constant_product(r, leaves), 0.5):
            break
        top = r.sole_reader(top.outputs[0], "Mul")
    else:
        return False
    if not r.same_shape(top.outputs[0], x):
        return False
    chain = [*argument_nodes, core, plus, *products]
    node = _standard_or_fused(r, "Gelu", 20, [x], [top.outputs[0]], {"approximate": approximate}, core.name)
    r.replace(chain, node)
    r.note(f"fused {len(chain)} nodes around {label(core)} into {label(node)} ({_domain(node)}, approximate={approximate})")
    return True


def _product(r: Rewriter, top: Node) -> tuple[list[str], list[Node]]:
    """Flatten a tree of Mul nodes: its leaf operands, and the Mul nodes (top included).

    A Mul operand is descended into when a Mul computes it and nothing else reads it.
    """
    leaves, nodes, stack = [], [top], list(top.inputs)
    while stack:
        name = stack.pop()
        producer = r.producer(name, "Mul")
        if producer is not None and not producer.domain and r.is_private(name) and len(nodes) < 8:
            nodes.append(producer)
            stack.extend(producer.inputs)
        else:
            leaves.append(name)
    return leaves, nodes


def _constant_product(r: Rewriter, leaves: list[str]) -> np.ndarray | None:
    product = 1.0
    for leaf in leaves:
        value = r.const(leaf)
        if value is not None:
            if scalar(value) is None:
                return None
            product *= scalar(value)
    return np.asarray(product)


def _only_tensor(r: Rewriter, leaves: list[str]) -> str | None:
    tensors = [leaf for leaf in leaves if r.const(leaf) is None]
    return tensors[0] if len(tensors) == 1 else None


# ============================================================================ O2: MatMul + Add
@register_pass("fuse_matmul_add", "O2")
def fuse_matmul_add(graph: Graph) -> list[str]:
    """Fuse ``MatMul(A, B) + c`` into ``Gemm(A, B, c)`` (Y = A B + C) when A and B are
    matrices, B is a weight and c a constant bias that broadcasts to (M, N)."""
    if graph.opset.get("", 0) < 7:  # Gemm before opset 7 spells broadcasting out with a flag
        return []
    r = Rewriter(graph)
    for matmul in [n for n in graph.nodes if n.op_type == "MatMul" and not n.domain]:
        a, b = matmul.inputs
        product = matmul.outputs[0]
        weight = r.const(b)
        shape = r.shape(a)
        if weight is None or weight.ndim != 2 or shape is None or len(shape) != 2 or not r.is_float(a):
            continue
        add = r.sole_reader(product, *_ADDS)
        if not _is_add(add):
            continue
        bias_name = other_input(add, product)
        bias = r.const(bias_name or "")
        if bias is None or bias.ndim > 2 or not r.same_shape(add.outputs[0], product):
            continue
        gemm = Node("Gemm", [a, b, bias_name], [add.outputs[0]],
                    {"alpha": 1.0, "beta": 1.0, "transA": 0, "transB": 0}, "", matmul.name)
        ops.prepare_node(gemm, graph.opset.get("", 0))
        r.replace([matmul, add], gemm)
        r.note(f"fused {label(matmul)} and {label(add)} into Gemm")
    return r.finish()


# ============================================================================ O2: affine folding
@register_pass("fold_batchnorm", "O2")
def fold_batchnorm(graph: Graph) -> list[str]:
    """Fold an inference BatchNormalization into the Conv, ConvTranspose or Gemm before it.

    BN is ``y = gamma * (x - mu) / sqrt(var + eps) + beta = s * x + t`` per channel, with
    ``s = gamma / sqrt(var + eps)`` and ``t = beta - mu * s``. For ``x = W * input + b``:
    ``W' = W * s`` (each output channel's filter scaled) and ``b' = (b - mu) * s + beta``.
    ConvTranspose keeps its output channels on W's axis 1 (per group); Gemm on the columns
    of B' (BN over a 2-D input normalizes its axis 1).
    """
    r = Rewriter(graph)
    for bn in [n for n in graph.nodes if n.op_type == "BatchNormalization" and not n.domain]:
        affine = _batchnorm_affine(r, bn)
        x = bn.inputs[0]
        producer = r.producer(x, "Conv", "ConvTranspose", "Gemm")
        if affine is None or producer is None or producer.domain or not r.is_private(x):
            continue
        if _fold_affine_into(r, producer, *affine):
            producer.outputs[0] = bn.outputs[0]
            r.remove(bn)
            r.note(f"folded {label(bn)} into {label(producer)}")
    return r.finish()


@register_pass("fold_bias_add", "O2")
def fold_bias_add(graph: Graph) -> list[str]:
    """Fold ``Conv(x) + c`` (c a per-channel constant, [C,1,1] or [1,C,1,1]) into the conv's
    bias, ``b' = b + c``; the same for ConvTranspose, and for Gemm (``C' = beta*C + c``)."""
    r = Rewriter(graph)
    for add in [n for n in graph.nodes if _is_add(n) or (n.op_type == "Sub" and not n.domain)]:
        for position in (0, 1) if add.op_type != "Sub" else (0,):
            y, constant = add.inputs[position], add.inputs[1 - position]
            value = r.const(constant)
            producer = r.producer(y, "Conv", "ConvTranspose", "Gemm")
            if value is None or producer is None or producer.domain or not r.is_private(y):
                continue
            if not r.same_shape(add.outputs[0], y) or not r.is_float(y):
                continue
            shift = value.astype(np.float64) * (-1.0 if add.op_type == "Sub" else 1.0)
            if producer.op_type != "Gemm":
                shift = channel_vector(shift, len(r.shape(y)), _output_channels(r, producer))
                if shift is None:
                    continue
            if _fold_affine_into(r, producer, np.ones(1), shift):
                producer.outputs[0] = add.outputs[0]
                r.remove(add)
                r.note(f"folded {label(add)} of constant '{constant}' into the bias of {label(producer)}")
                break
    return r.finish()


@register_pass("fold_scale_shift", "O2")
def fold_scale_shift(graph: Graph) -> list[str]:
    """Fold per-channel constant Mul/Div/Add/Sub chains (Unsqueeze(c) -> Mul -> Add) into
    what precedes them, or into one ``ai.tinyinfer:ScaleShift``.

    After a Conv/ConvTranspose/Gemm, ``s * y + t`` becomes ``W' = W*s, b' = b*s + t``; after
    an inference BatchNormalization, ``gamma' = gamma*s, beta' = beta*s + t``; after a
    ScaleShift, its scale and shift absorb them alike. A remaining chain of two or more
    such ops on one tensor becomes one ScaleShift with the composed ``(scale, shift)``.
    """
    r = Rewriter(graph)
    changed = True
    while changed:
        changed = False
        for node in list(graph.nodes):
            if r.alive(node) and _absorb_affine(r, node):
                changed = True
    for node in list(graph.nodes):
        if r.alive(node):
            _scale_shift_chain(r, node)
    return r.finish()


def _affine_operand(r: Rewriter, node: Node) -> tuple[str, np.ndarray, np.ndarray] | None:
    """For ``node`` = y (op) c with c constant: (y, scale, shift) with node(y) = y*scale + shift."""
    if node.domain or node.op_type not in ("Mul", "Div", *_ADDS, "Sub") or len(node.inputs) != 2:
        return None
    commutes = node.op_type != "Sub" and node.op_type != "Div"
    for position in (0, 1) if commutes else (0,):
        y, constant = node.inputs[position], node.inputs[1 - position]
        value = r.const(constant)
        if value is None or r.const(y) is not None or not r.is_float(y) or not r.same_shape(node.outputs[0], y):
            continue
        value = value.astype(np.float64)
        one, zero = np.ones_like(value), np.zeros_like(value)
        if node.op_type == "Mul":
            return y, value, zero
        if node.op_type == "Div":
            return (y, 1.0 / value, zero) if np.all(value != 0) else None
        return y, one, -value if node.op_type == "Sub" else value
    return None


def _absorb_affine(r: Rewriter, node: Node) -> bool:
    """Fold one ``y*s + t`` node into the Conv/ConvTranspose/Gemm/BN/ScaleShift computing y."""
    operand = _affine_operand(r, node)
    if operand is None:
        return False
    y, scale, shift = operand
    producer = r.producer(y)
    if producer is None or not r.is_private(y):
        return False
    rank = len(r.shape(y))
    folded = False
    if producer.op_type in ("Conv", "ConvTranspose", "Gemm") and not producer.domain:
        channels = _output_channels(r, producer)
        s, t = channel_vector(scale, rank, channels), channel_vector(shift, rank, channels)
        folded = s is not None and t is not None and _fold_affine_into(r, producer, s, t)
    elif producer.op_type == "BatchNormalization" and not producer.domain and _batchnorm_affine(r, producer):
        folded = _fold_affine_into_batchnorm(r, producer, scale, shift, rank)
    elif producer.op_type == "ScaleShift" and producer.domain == DOMAIN and producer.attrs["activation"] == "Identity":
        folded = _fold_affine_into_scale_shift(r, producer, scale, shift)
    if folded:
        _swallow(r, producer, node, "folded")
    return folded


def _scale_shift_chain(r: Rewriter, first: Node) -> bool:
    """Replace two or more consecutive ``y*s + t`` nodes on one tensor by one ScaleShift."""
    operand = _affine_operand(r, first)
    if operand is None:
        return False
    x, scale, shift = operand
    chain = [first]
    while r.is_private(chain[-1].outputs[0]):
        follower = r.readers(chain[-1].outputs[0])[0]
        step = _affine_operand(r, follower)
        if step is None or step[0] != chain[-1].outputs[0]:
            break
        _, s, t = step
        scale, shift = scale * s, shift * s + t
        chain.append(follower)
    if len(chain) < 2:
        return False
    dtype = r.dtype(x)
    stem = first.name or x
    inputs = [x, r.constant(f"{stem}_scale", scale.astype(dtype)), r.constant(f"{stem}_shift", shift.astype(dtype))]
    node = Node("ScaleShift", inputs, [chain[-1].outputs[0]], {}, DOMAIN, first.name)
    _use_domain(r, node)
    r.replace(chain, node)
    r.note(f"fused {' -> '.join(label(n) for n in chain)} into one ScaleShift")
    return True


def _batchnorm_affine(r: Rewriter, bn: Node) -> tuple[np.ndarray, np.ndarray] | None:
    """(s, t) with BN(x) = s*x + t per channel, for an inference BN with constant statistics."""
    if len(bn.inputs) != 5 or len([o for o in bn.outputs if o]) != 1 or bn.attrs.get("training_mode"):
        return None
    params = [r.const(name) for name in bn.inputs[1:]]
    if any(p is None or p.ndim != 1 for p in params) or len({p.shape for p in params}) != 1:
        return None
    gamma, beta, mean, var = (p.astype(np.float64) for p in params)
    s = gamma / np.sqrt(var + bn.attrs["epsilon"])
    return s, beta - mean * s


def _output_channels(r: Rewriter, node: Node) -> int | None:
    """How many output channels (Conv, ConvTranspose) or columns (Gemm) ``node`` computes."""
    weight = r.const(node.inputs[1])
    if weight is None:
        return None
    if node.op_type == "Conv":
        return weight.shape[0]
    if node.op_type == "ConvTranspose":
        return weight.shape[1] * node.attrs["group"]
    return weight.shape[0] if node.attrs["transB"] else weight.shape[1]


def _fold_affine_into(r: Rewriter, node: Node, scale: np.ndarray, shift: np.ndarray) -> bool:
    """Make ``node`` (Conv, ConvTranspose or Gemm) compute ``scale * node(x) + shift``.

    ``scale`` is per output channel (length 1 or M); ``shift`` too, except for Gemm, where
    it may be any constant that broadcasts to (M, N).
    """
    weight = r.const(node.inputs[1])
    channels = _output_channels(r, node)
    if weight is None or weight.dtype.kind != "f" or channels is None:
        return False
    bias_name = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2] else ""
    bias = r.const(bias_name) if bias_name else None
    if bias_name and bias is None:
        return False  # a bias computed at run time cannot absorb a constant
    scale = np.asarray(scale, np.float64).reshape(-1)
    if scale.size not in (1, channels):
        return False
    scale = np.broadcast_to(scale, (channels,))
    w = weight.astype(np.float64)
    if node.op_type == "Conv":
        w = w * scale.reshape(-1, *(1,) * (w.ndim - 1))
    elif node.op_type == "ConvTranspose":
        group = node.attrs["group"]
        grouped = w.reshape(group, w.shape[0] // group, w.shape[1], *w.shape[2:])
        w = (grouped * scale.reshape(group, 1, w.shape[1], *(1,) * (w.ndim - 2))).reshape(w.shape)
    else:  # Gemm: scale the columns of B' = B (or B.T with transB)
        w = w * (scale[:, None] if node.attrs["transB"] else scale[None, :])
    if node.op_type == "Gemm":
        c = np.zeros(1) if bias is None else bias.astype(np.float64) * node.attrs["beta"]
        new_bias = c * scale + shift
        if new_bias.ndim > 2:
            return False
        node.attrs["beta"] = 1.0
    else:
        shift = np.asarray(shift, np.float64).reshape(-1)
        if shift.size not in (1, channels):
            return False
        b = np.zeros(channels) if bias is None else bias.astype(np.float64)
        new_bias = b * scale + shift
    stem = node.name or node.outputs[0]
    inputs = [node.inputs[0], r.constant(f"{node.inputs[1]}_folded", w.astype(weight.dtype)),
              r.constant(f"{bias_name or stem + '_bias'}_folded", new_bias.astype(weight.dtype))]
    r.set_inputs(node, inputs)
    return True


def _fold_affine_into_batchnorm(r: Rewriter, bn: Node, scale, shift, rank: int) -> bool:
    """``s * BN(x) + t`` is BN with ``gamma' = gamma * s`` and ``beta' = beta * s + t``."""
    gamma, beta = r.const(bn.inputs[1]), r.const(bn.inputs[2])
    channels = gamma.shape[0]
    s, t = channel_vector(scale, rank, channels), channel_vector(shift, rank, channels)
    if s is None or t is None:
        return False
    new_gamma = (gamma.astype(np.float64) * s).astype(gamma.dtype)
    new_beta = (beta.astype(np.float64) * s + t).astype(beta.dtype)
    r.set_inputs(bn, [bn.inputs[0], r.constant(f"{bn.inputs[1]}_folded", new_gamma),
                      r.constant(f"{bn.inputs[2]}_folded", new_beta), *bn.inputs[3:]])
    return True


def _fold_affine_into_scale_shift(r: Rewriter, node: Node, scale, shift) -> bool:
    old_scale, old_shift = r.const(node.inputs[1]), r.const(node.inputs[2])
    if old_scale is None or old_shift is None:
        return False
    dtype = old_scale.dtype
    new_scale = old_scale.astype(np.float64) * scale
    new_shift = old_shift.astype(np.float64) * scale + shift
    r.set_inputs(node, [node.inputs[0], r.constant(f"{node.inputs[1]}_folded", new_scale.astype(dtype)),
                        r.constant(f"{node.inputs[2]}_folded", new_shift.astype(dtype))])
    return True


# ============================================================================ O2: activations
#: Standard activation ops that a FusedConv / FusedGemm can end with.
_FUSABLE_ACTIVATIONS = tuple(a for a in ACTIVATIONS if a != "Identity")


@register_pass("fuse_conv_activation", "O2")
def fuse_conv_activation(graph: Graph) -> list[str]:
    """Fuse Conv [+ residual Add] + activation into ``ai.tinyinfer:FusedConv``, and Gemm +
    activation into ``ai.tinyinfer:FusedGemm``: ``y = act(conv(x) + z)`` in one node.

    Activations: Relu, Clip with constant bounds (ReLU6 is Clip(0, 6)), LeakyRelu,
    HardSwish, Sigmoid, HardSigmoid, Tanh. The residual z (an Add or two-input Sum) must
    have exactly the conv output's shape, as in ResNet's ``relu(bn(conv(x)) + shortcut)``.
    """
    r = Rewriter(graph)
    for add in [n for n in graph.nodes if _is_add(n)]:
        _fuse_residual(r, add)
    for act in [n for n in graph.nodes if n.op_type in _FUSABLE_ACTIVATIONS and not n.domain]:
        _fuse_activation(r, act)
    return r.finish()


def _fuse_residual(r: Rewriter, add: Node) -> bool:
    for y in add.inputs:
        residual = other_input(add, y)
        conv = r.producer(y, "Conv")
        if residual is None or conv is None or conv.domain or not r.is_private(y) or not r.is_float(y):
            continue
        if not (r.same_shape(residual, y) and r.same_shape(add.outputs[0], y)):
            continue
        inputs = [*conv.inputs[:3], *[""] * (3 - len(conv.inputs[:3]))]
        attrs = {**conv.attrs, "activation": "Identity", "activation_params": None}
        fused = Node("FusedConv", [*inputs, residual], [add.outputs[0]], attrs, DOMAIN, conv.name)
        _use_domain(r, fused)
        r.replace([conv, add], fused)
        r.note(f"fused {label(conv)} and the residual {label(add)} into FusedConv")
        return True
    return False


def _activation_source(r: Rewriter, act: Node) -> tuple[list[float], Node] | None:
    """The activation's parameters and the node computing its float input, when only it reads that."""
    y = act.inputs[0]
    params = _activation_params(r, act)
    producer = r.producer(y)
    if params is None or producer is None or not r.is_private(y) or not r.is_float(y):
        return None
    return params, producer


def _absorb_activation(r: Rewriter, producer: Node, act: Node, params: list[float]) -> bool:
    """Make a fused node (FusedConv, FusedGemm, ScaleShift) without an activation end with ``act``."""
    producer.attrs["activation"] = act.op_type
    producer.attrs["activation_params"] = params or None
    _swallow(r, producer, act, "fused")
    return True


def _swallow(r: Rewriter, producer: Node, follower: Node, verb: str) -> None:
    """``producer`` now computes what ``follower`` did (its output); ``follower`` goes."""
    producer.outputs[0] = follower.outputs[0]
    r.remove(follower)
    r.note(f"{verb} {label(follower)} into {label(producer)}")


def _fuse_activation(r: Rewriter, act: Node) -> bool:
    source = _activation_source(r, act)
    if source is None:
        return False
    params, producer = source
    standard = producer.op_type in ("Conv", "Gemm") and not producer.domain
    if (producer.domain == DOMAIN and producer.op_type in ("FusedConv", "FusedGemm")
            and producer.attrs["activation"] == "Identity"):
        return _absorb_activation(r, producer, act, params)
    if not standard or "broadcast" in producer.attrs:  # Gemm before opset 7 has no fused twin
        return False
    op_type = "FusedConv" if producer.op_type == "Conv" else "FusedGemm"
    attrs = {**producer.attrs, "activation": act.op_type, "activation_params": params or None}
    node = Node(op_type, list(producer.inputs), [act.outputs[0]], attrs, DOMAIN, producer.name)
    _use_domain(r, node)
    r.replace([producer, act], node)
    r.note(f"fused {label(producer)} and {label(act)} into {op_type}")
    return True


def _activation_params(r: Rewriter, act: Node) -> list[float] | None:
    """The activation's parameters in FusedConv's order, or None if they are not constant."""
    if act.op_type != "Clip":
        return [float(act.attrs[name]) for name in ACTIVATIONS[act.op_type]]
    if act.version < 11:
        return [float(act.attrs["min"]), float(act.attrs["max"])]
    bounds = []
    for index, missing in ((1, -np.inf), (2, np.inf)):
        name = act.inputs[index] if index < len(act.inputs) else ""
        value = scalar(r.const(name)) if name else missing
        if value is None:
            return None
        bounds.append(float(value))
    return bounds


@register_pass("fuse_scale_shift_activation", "O2")
def fuse_scale_shift_activation(graph: Graph) -> list[str]:
    """Fuse an inference BatchNormalization (or a ScaleShift) and the activation after it
    into one ``ai.tinyinfer:ScaleShift``: ``y = act(x * s + t)`` in one pass over x.

    The pre-activation blocks of DenseNet (Huang et al., 2017) run BN -> Relu -> Conv on the
    output of a Concat: no convolution precedes the BN to absorb it (``fold_batchnorm``), and
    the Relu follows a BN rather than a conv (``fuse_conv_activation``). This pass runs after
    both, so it only takes the pairs they leave.
    """
    r = Rewriter(graph)
    for act in [n for n in graph.nodes if n.op_type in _FUSABLE_ACTIVATIONS and not n.domain]:
        _fuse_scale_shift_activation_at(r, act)
    return r.finish()


def _fuse_scale_shift_activation_at(r: Rewriter, act: Node) -> bool:
    source = _activation_source(r, act)
    if source is None:
        return False
    params, producer = source
    if producer.op_type == "ScaleShift" and producer.domain == DOMAIN and producer.attrs["activation"] == "Identity":
        return _absorb_activation(r, producer, act, params)
    y = act.inputs[0]
    shape = r.shape(y)
    affine = _batchnorm_affine(r, producer) if producer.op_type == "BatchNormalization" and not producer.domain else None
    if affine is None or shape is None or len(shape) < 2:
        return False
    dtype = r.dtype(y)
    per_channel = (-1, *(1,) * (len(shape) - 2))  # broadcasts along axis 1 of X, as BN normalizes
    stem = producer.name or producer.inputs[0]
    inputs = [producer.inputs[0], r.constant(f"{stem}_scale", affine[0].reshape(per_channel).astype(dtype)),
              r.constant(f"{stem}_shift", affine[1].reshape(per_channel).astype(dtype))]
    attrs = {"activation": act.op_type, "activation_params": params or None}
    node = Node("ScaleShift", inputs, [act.outputs[0]], attrs, DOMAIN, producer.name)
    _use_domain(r, node)
    r.replace([producer, act], node)
    r.note(f"fused {label(producer)} and {label(act)} into ScaleShift")
    return True


@register_pass("remove_dead_after_fusion", "O2")
def eliminate_dead_code_after_fusion(graph: Graph) -> list[str]:
    """Remove what the fusions left unread (the constant inputs of a replaced chain, say)."""
    return eliminate_dead_code(graph)


# ============================================================================ helpers
#: Ops that add two tensors (Sum with two inputs is Add; old exporters write it for residuals).
_ADDS = ("Add", "Sum")


def _is_add(node: Node | None) -> bool:
    return node is not None and node.op_type in _ADDS and not node.domain and len(node.inputs) == 2


def _use_domain(r: Rewriter, node: Node) -> None:
    """Check a new ai.tinyinfer node's attributes and make the graph import the domain."""
    r.graph.opset.setdefault(DOMAIN, DOMAIN_VERSION)
    ops.prepare_node(node, DOMAIN_VERSION)


def _standard_or_fused(r: Rewriter, op_type: str, since: int, inputs, outputs, attrs, name: str) -> Node:
    """The standard op when the graph's opset has it (>= ``since``), else the ai.tinyinfer twin."""
    opset = r.graph.opset.get("", 0)
    if opset >= since:
        node = Node(op_type, inputs, outputs, attrs, "", name)
        ops.prepare_node(node, opset)
        return node
    node = Node(op_type, inputs, outputs, attrs, DOMAIN, name)
    _use_domain(r, node)
    return node


def _domain(node: Node) -> str:
    return node.domain or "ai.onnx"
