"""Blocked data layouts: the ``ai.tinyinfer`` ops ToBlocked, FromBlocked and ConvNCHWc.

ONNX tensors are NCHW: the pixels of one channel lie next to each other. A SIMD unit wants
the opposite for a convolution: one vector register holds the same pixel of ``c``
neighbouring channels, so one fused multiply-add updates ``c`` output channels at once. The
*blocked* layout NCHWc (Intel's oneDNN calls it nChw8c / nChw16c, MNN NC4HW4, Ascend
NC1HWC0 with C0 = 16) cuts the channels into blocks of ``c`` and makes the channel within a
block the fastest-varying axis::

    NCHW  [N, C, H, W]   ->   NCHWc  [N, ceil(C / c), H, W, c]
    x_blocked[n, b, h, w, l] = x[n, b * c + l, h, w]     (0 where b * c + l >= C)

``c`` is the number of float32 lanes of a vector register: 8 for AVX2, 16 for AVX-512.
When C is not a multiple of ``c`` the last block is padded; ToBlocked writes zeros there,
and every blocked op here *ignores* what the padding lanes of its inputs hold (FromBlocked
drops them, ConvNCHWc reads only the real input channels), so an elementwise op in between
(a Sigmoid maps the padding 0 to 0.5) cannot change a result.

=========================================  ==================================================
op                                         computes
=========================================  ==================================================
``ToBlocked(X; block)``                    ``[N, C, *S] -> [N, ceil(C/block), *S, block]``
``FromBlocked(X; block, channels)``        the inverse, keeping the first ``channels``
``ConvNCHWc(X, W, [B], [Z])``              ``FusedConv`` on blocked X, Z and Y, weights
                                           pre-blocked (see :func:`block_conv_weights`)
``MaxPoolNCHWc(X)`` and AveragePool-,       the standard pooling op, lane by lane, on blocked
GlobalAveragePool-, GlobalMaxPool-         X and Y (attributes as the standard op's)
=========================================  ==================================================

:func:`decompose_layout` undoes the layout (for export: no other runtime knows these ops).

Each reference is the definition: ConvNCHWc converts its operands to NCHW, calls the
``FusedConv`` reference (itself the ONNX Conv reference plus residual and activation) and
blocks the result. The O3 pass ``tinyinfer/passes/layout.py`` writes these nodes; the Numba
kernels in ``tinyinfer/kernels/nchwc.py`` run them fast.
"""

from __future__ import annotations

import numpy as np

from ..ir import Graph, Node, Value
from . import fused, pool  # noqa: F401  (FusedConv and the pooling ops the blocked ops are built on)
from .base import OPS, REQUIRED, Op, bad_attribute, fail, out, register, require_inputs
from .conv import window_geometry
from .fused import DOMAIN

#: The activation attributes ConvNCHWc shares with FusedConv (same names, same meaning).
_FUSED_CONV = OPS[(DOMAIN, "FusedConv")]


# ---------------------------------------------------------------------------- the layout itself
def blocks(channels: int, block: int) -> int:
    """How many blocks of ``block`` channels hold ``channels`` channels (the last may be partial)."""
    return -(-channels // block)


def to_blocked(x: np.ndarray, block: int) -> np.ndarray:
    """``[N, C, *S] -> [N, ceil(C/block), *S, block]``, padding channels with zeros."""
    n, channels, *spatial = x.shape
    padded = blocks(channels, block) * block
    if padded != channels:
        x = np.concatenate([x, np.zeros((n, padded - channels, *spatial), x.dtype)], axis=1)
    split = x.reshape(n, padded // block, block, *spatial)  # [N, C/c, c, *S]
    return np.ascontiguousarray(np.moveaxis(split, 2, -1))  # [N, C/c, *S, c]


def from_blocked(x: np.ndarray, channels: int) -> np.ndarray:
    """``[N, C/c, *S, c] -> [N, channels, *S]``: the inverse of :func:`to_blocked`."""
    n, count, *spatial, block = x.shape
    merged = np.moveaxis(x, -1, 2).reshape(n, count * block, *spatial)
    return np.ascontiguousarray(merged[:, :channels])


def block_conv_weights(w: np.ndarray, block: int, group: int = 1) -> np.ndarray:
    """Conv weights ``[M, C/group, KH, KW]`` in the layout ConvNCHWc reads.

    * ``group == 1``: ``[M/c, C/c, KH, KW, c_in, c_out]``: for one output block, one input
      block and one tap, the ``c x c`` matrix whose row ``c_in`` is the vector of ``c``
      output-channel weights one input lane is multiplied with;
    * depthwise (``group == M == C``): ``[M/c, 1, KH, KW, 1, c]``, the ``c`` filters of one
      block side by side.

    Missing channels of a partial block are zero weights.
    """
    out_channels, per_group, kh, kw = w.shape
    out_blocks = blocks(out_channels, block)
    if group == 1:
        in_blocks = blocks(per_group, block)
        padded = np.zeros((out_blocks * block, in_blocks * block, kh, kw), w.dtype)
        padded[:out_channels, :per_group] = w
        split = padded.reshape(out_blocks, block, in_blocks, block, kh, kw)  # [M/c, co, C/c, ci, KH, KW]
        return np.ascontiguousarray(split.transpose(0, 2, 4, 5, 3, 1))
    if per_group == 1 and group == out_channels:
        padded = np.zeros((out_blocks * block, kh, kw), w.dtype)
        padded[:out_channels] = w[:, 0]
        split = padded.reshape(out_blocks, block, kh, kw).transpose(0, 2, 3, 1)  # [M/c, KH, KW, c]
        return np.ascontiguousarray(split[:, None, :, :, None, :])
    raise ValueError(f"blocked weights exist for group=1 and depthwise convs, not group={group} "
                     f"with {per_group} input channel(s) per group")


def unblock_conv_weights(wb: np.ndarray, out_channels: int, in_channels: int, group: int = 1) -> np.ndarray:
    """The inverse of :func:`block_conv_weights`: ``[M, C/group, KH, KW]``."""
    out_blocks, in_blocks, kh, kw, block_in, block = wb.shape
    if group == 1:
        w = wb.transpose(0, 5, 1, 4, 2, 3).reshape(out_blocks * block, in_blocks * block_in, kh, kw)
        return np.ascontiguousarray(w[:out_channels, :in_channels])
    w = wb[:, 0, :, :, 0, :].transpose(0, 3, 1, 2).reshape(out_blocks * block, 1, kh, kw)
    return np.ascontiguousarray(w[:out_channels])


# ---------------------------------------------------------------------------- ToBlocked
@register
class ToBlocked(Op):
    """``Y = X`` in the blocked layout: ``[N, C, *S] -> [N, ceil(C/block), *S, block]``,
    with the channels of a partial last block set to zero."""

    op_type = "ToBlocked"
    domain = DOMAIN
    since = 1
    attributes = {"block": REQUIRED}

    def check(self, node):
        if node.attrs["block"] < 1:
            raise bad_attribute(node, f"block must be >= 1, got {node.attrs['block']}")

    def infer(self, node, inputs):
        require_inputs(node, inputs, 1)
        (x,) = inputs
        block = node.attrs["block"]
        if x.shape is None:
            return [out(node, 0, x.dtype, None)]
        if len(x.shape) < 3:
            raise fail(node, f"X must be [N, C, spatial...] with at least one spatial axis, got {list(x.shape)}")
        channels = x.shape[1]
        count = blocks(channels, block) if isinstance(channels, int) else None
        return [out(node, 0, x.dtype, (x.shape[0], count, *x.shape[2:], block))]

    def reference(self, node, x):
        return to_blocked(x, node.attrs["block"])


# ---------------------------------------------------------------------------- FromBlocked
@register
class FromBlocked(Op):
    """``Y = X`` back in NCHW: ``[N, C/block, *S, block] -> [N, channels, *S]``."""

    op_type = "FromBlocked"
    domain = DOMAIN
    since = 1
    attributes = {"block": REQUIRED, "channels": REQUIRED}

    def check(self, node):
        if node.attrs["block"] < 1 or node.attrs["channels"] < 1:
            raise bad_attribute(node, f"block and channels must be >= 1, got block={node.attrs['block']}, "
                                      f"channels={node.attrs['channels']}")

    def infer(self, node, inputs):
        require_inputs(node, inputs, 1)
        (x,) = inputs
        block, channels = node.attrs["block"], node.attrs["channels"]
        if x.shape is None:
            return [out(node, 0, x.dtype, None)]
        _check_blocked(node, "X", x.shape, block, channels, least_rank=4)
        return [out(node, 0, x.dtype, (x.shape[0], channels, *x.shape[2:-1]))]

    def reference(self, node, x):
        return from_blocked(x, node.attrs["channels"])


# ---------------------------------------------------------------------------- ConvNCHWc
@register
class ConvNCHWc(Op):
    """``Y = act(Conv(X, W, B) + Z)`` (FusedConv) with X, Z and Y in the blocked layout.

    X is ``[N, ceil(C/c), H, W, c]``; W holds the Conv weights blocked by
    :func:`block_conv_weights` (``group`` = 1, or depthwise: ``group`` = C = M); B is the
    ordinary bias ``[M]``; Z and Y are ``[N, ceil(M/c), OH, OW, c]``. Attributes are
    FusedConv's (Conv's plus ``activation``, ``activation_params``) and ``in_channels`` C and
    ``out_channels`` M, which the blocked shapes do not tell. Two spatial axes only. The
    padding lanes of Y are zero; those of X and Z are never read.
    """

    op_type = "ConvNCHWc"
    domain = DOMAIN
    since = 1
    attributes = {**_FUSED_CONV.attributes, "in_channels": REQUIRED, "out_channels": REQUIRED}

    def check(self, node):
        _FUSED_CONV.check(node)
        group, channels, out_channels = node.attrs["group"], node.attrs["in_channels"], node.attrs["out_channels"]
        if channels < 1 or out_channels < 1:
            raise bad_attribute(node, f"in_channels and out_channels must be >= 1, got {channels}, {out_channels}")
        if group != 1 and not group == channels == out_channels:
            raise bad_attribute(node, f"group must be 1 or depthwise (group = in_channels = out_channels), "
                                      f"got group={group}, in_channels={channels}, out_channels={out_channels}")

    def infer(self, node, inputs):
        require_inputs(node, inputs, 2, 4)
        x, w = inputs[:2]
        bias = inputs[2] if len(inputs) > 2 else None
        z = inputs[3] if len(inputs) > 3 else None
        channels, out_channels = node.attrs["in_channels"], node.attrs["out_channels"]
        if x.shape is None or w.shape is None:
            return [out(node, 0, x.dtype, None)]
        if len(x.shape) != 5:
            raise fail(node, f"X must be blocked [N, C/c, H, W, c] (two spatial axes), got {list(x.shape)}")
        block = x.shape[4]
        if not isinstance(block, int):
            raise fail(node, f"the block size (last axis of X) must be known, got {list(x.shape)}")
        _check_blocked(node, "X", x.shape, block, channels, least_rank=5)
        depthwise = node.attrs["group"] > 1
        want = (blocks(out_channels, block), 1 if depthwise else blocks(channels, block), None, None,
                1 if depthwise else block, block)
        if len(w.shape) != 6 or any(isinstance(d, int) and e is not None and d != e for d, e in zip(w.shape, want)):
            shown = ["KH" if e is None else e for e in want]
            raise fail(node, f"W must be blocked conv weights {shown} for in_channels={channels}, "
                             f"out_channels={out_channels}, block={block}, group={node.attrs['group']}; "
                             f"got {list(w.shape)}")
        if bias is not None and bias.shape is not None and tuple(bias.shape) not in ((out_channels,), (None,)):
            raise fail(node, f"bias B must have shape [{out_channels}], got {list(bias.shape)}")
        window = window_geometry(node, x.shape[2:4], w.shape[2:4])
        shape = (x.shape[0], want[0], *window.output, block)
        if z is not None and z.shape is not None:
            if len(z.shape) != 5 or any(isinstance(a, int) and isinstance(b, int) and a != b
                                        for a, b in zip(z.shape, shape)):
                raise fail(node, f"residual Z must have the blocked output's shape {list(shape)}, got {list(z.shape)}")
        return [out(node, 0, x.dtype, shape)]

    def reference(self, node, x, w, bias=None, z=None):
        channels, out_channels, group = node.attrs["in_channels"], node.attrs["out_channels"], node.attrs["group"]
        standard = unblock_conv_weights(w, out_channels, channels if group == 1 else 1, group)
        residual = None if z is None else from_blocked(z, out_channels)
        y = _FUSED_CONV.reference(_as_fused_conv(node), from_blocked(x, channels), standard, bias, residual)
        return to_blocked(y, x.shape[-1])


# ---------------------------------------------------------------------------- pooling
class _BlockedPool(Op):
    """A pooling op on blocked X and Y: the standard op applied lane by lane.

    Pooling never mixes channels, so the blocked twin is the standard op on the NCHW view
    with every lane as a channel (padding lanes included: they are pooled, and stay padding).
    """

    standard = ""  # the op type of the standard twin
    domain = DOMAIN
    since = 1

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.op_type = f"{cls.standard}NCHWc"
        cls.attributes = dict(OPS[("", cls.standard)].attributes)
        cls.__doc__ = (f"``Y = {cls.standard}(X)`` with X and Y blocked ``[N, C/c, H, W, c]`` "
                       f"(two spatial axes); the attributes are {cls.standard}'s.")

    def check(self, node):
        OPS[("", self.standard)].check(node)

    def infer(self, node, inputs):
        require_inputs(node, inputs, 1)
        (x,) = inputs
        if x.shape is None:
            return [out(node, 0, x.dtype, None)]
        if len(x.shape) != 5:
            raise fail(node, f"X must be blocked [N, C/c, H, W, c], got {list(x.shape)}")
        (y,) = OPS[("", self.standard)].infer(self._standard_node(node), [
            _value_like(x, (x.shape[0], None, *x.shape[2:4]))])[:1]
        return [out(node, 0, x.dtype, (x.shape[0], x.shape[1], *y.shape[2:], x.shape[4]))]

    def reference(self, node, x):
        count, block = x.shape[1], x.shape[-1]
        y = OPS[("", self.standard)].reference(self._standard_node(node), from_blocked(x, count * block))
        return to_blocked(y[0] if isinstance(y, tuple) else y, block)

    def _standard_node(self, node: Node) -> Node:
        return Node(self.standard, node.inputs[:1], node.outputs[:1], node.attrs, "", node.name, node.version)


@register
class MaxPoolNCHWc(_BlockedPool):
    standard = "MaxPool"


@register
class AveragePoolNCHWc(_BlockedPool):
    standard = "AveragePool"


@register
class GlobalAveragePoolNCHWc(_BlockedPool):
    standard = "GlobalAveragePool"


@register
class GlobalMaxPoolNCHWc(_BlockedPool):
    standard = "GlobalMaxPool"


# ============================================================================ back to standard ONNX
def decompose_layout(graph: Graph) -> Graph:
    """A copy of ``graph`` with the blocked layout undone: every tensor NCHW again.

    The inverse of the O3 layout pass, for exporting a graph other runtimes can read:
    ToBlocked and FromBlocked become Identity, ConvNCHWc becomes the FusedConv it blocks
    (weights unblocked; :func:`~tinyinfer.ops.fused.decompose_fused` then writes it as Conv
    [+ Add] [+ activation]), the blocked pooling ops become their standard ops, and a
    Concat of blocked tensors already concatenates along axis 1, the channels. The lane-wise
    ops between them read NCHW tensors again and need no change.
    """
    graph = graph.copy()
    if not any(node.domain == DOMAIN and node.op_type in _LAYOUT_OPS for node in graph.nodes):
        return graph
    opset = graph.opset_of("")
    nodes = []
    for node in graph.nodes:
        if node.domain != DOMAIN or node.op_type not in _LAYOUT_OPS:
            nodes.append(node)
        elif node.op_type in ("ToBlocked", "FromBlocked"):
            nodes.append(Node("Identity", node.inputs[:1], node.outputs[:1], {}, "", node.name, opset))
        elif node.op_type == "ConvNCHWc":
            nodes.append(_unblocked_conv(graph, node))
        else:
            standard = node.op_type[: -len("NCHWc")]
            nodes.append(Node(standard, node.inputs, node.outputs, dict(node.attrs), "", node.name, opset))
    graph.nodes = nodes
    read = {name for node in nodes for name in node.inputs}
    for name in [n for n in graph.initializers if n not in read]:
        del graph.initializers[name]  # the blocked weights
    return graph


_LAYOUT_OPS = ("ToBlocked", "FromBlocked", "ConvNCHWc", "MaxPoolNCHWc", "AveragePoolNCHWc",
               "GlobalAveragePoolNCHWc", "GlobalMaxPoolNCHWc")


def _unblocked_conv(graph: Graph, node: Node) -> Node:
    group, channels = node.attrs["group"], node.attrs["in_channels"]
    blocked = graph.initializers.get(node.inputs[1])
    if blocked is None:
        raise fail(node, "cannot unblock weights that are not an initializer")
    name = graph.unique_name(f"{node.inputs[1]}/nchw")
    graph.initializers[name] = unblock_conv_weights(blocked, node.attrs["out_channels"],
                                                    channels if group == 1 else 1, group)
    fused = _as_fused_conv(node)
    fused.inputs = [node.inputs[0], name, *node.inputs[2:]]
    return fused


def _value_like(value: Value, shape) -> Value:
    return Value(value.name, value.dtype, shape)


def _as_fused_conv(node: Node) -> Node:
    """The FusedConv node a ConvNCHWc node stands for (same attributes, minus the channel counts)."""
    attrs = {k: v for k, v in node.attrs.items() if k not in ("in_channels", "out_channels")}
    return Node("FusedConv", node.inputs, node.outputs, attrs, DOMAIN, node.name, node.version)


def _check_blocked(node: Node, what: str, shape, block: int, channels: int, *, least_rank: int) -> None:
    """A blocked shape ``[N, ceil(channels/block), ..., block]``, or a ShapeInferenceError."""
    if len(shape) < least_rank:
        raise fail(node, f"{what} must be blocked [N, C/c, spatial..., c] of rank >= {least_rank}, got {list(shape)}")
    if isinstance(shape[-1], int) and shape[-1] != block:
        raise fail(node, f"{what} has blocks of {shape[-1]} channels (last axis), expected block={block}")
    if isinstance(shape[1], int) and shape[1] != blocks(channels, block):
        raise fail(node, f"{what} has {shape[1]} channel blocks of {block}, but {channels} channels need "
                         f"{blocks(channels, block)}")
