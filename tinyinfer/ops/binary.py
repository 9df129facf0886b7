"""BinaryConv: a convolution of the signs of its input, the layer of a binarized network.

A binarized network (:mod:`tinyinfer.compress.binarize`) exports each binary layer as standard
nodes, ``Sign → Conv``, whose weights are ``±α`` per output channel (XNOR-Net); other tools
pad the signs with +1 first (``Sign → Pad(1) → Conv``: a binary tensor has no 0). The O2 pass
``fuse_binary_conv`` (:mod:`tinyinfer.passes.binary`) turns either chain into one
``ai.tinyinfer`` node, so that the runtime can give it the XNOR-popcount kernel
(:mod:`tinyinfer.kernels.binary_conv`)::

    BinaryConv(X, W, [B]) = act(Conv(Sign(X) padded with pad_value, W, B))

Its attributes are FusedConv's (one group), plus ``pad_value``: what the padding holds,
0 as in ONNX's Conv (the default) or ±1 as a ``Pad`` node put it there. The activation
(``activation``, ``activation_params``) is there because the O2 fusions may already have
merged the binary conv with a ReLU after it. The reference computes exactly that, with
ONNX's ``Sign(0) = 0``. :func:`decompose_binary_conv` writes the node back as the standard
nodes when a graph is exported.
"""

from __future__ import annotations

import numpy as np

from ..ir import Node
from . import fused
from .base import OPS, Op, bad_attribute, register, require_inputs
from .fused import DOMAIN


#: Values the padding of a BinaryConv may hold.
PAD_VALUES = (0.0, 1.0, -1.0)


def as_fused_conv(node: Node, inputs: list[str] | None = None) -> Node:
    """The FusedConv node a BinaryConv node applies after its Sign (reading ``inputs``); with a
    non-zero ``pad_value`` its pads are zero (a Pad before it holds them)."""
    attrs = {name: value for name, value in node.attrs.items() if name != "pad_value"}
    if node.attrs["pad_value"]:
        attrs["pads"] = [0] * len(attrs["pads"])
    return Node("FusedConv", list(node.inputs if inputs is None else inputs), node.outputs[:1], attrs,
                DOMAIN, node.name, node.version)


def padded_signs(node: Node, x: np.ndarray) -> np.ndarray:
    """``Sign(x)``, padded with ``pad_value`` on the spatial axes when that is not 0."""
    signs = np.sign(x)
    if not node.attrs["pad_value"]:
        return signs
    pads = node.attrs["pads"]
    half = len(pads) // 2
    widths = [(0, 0), (0, 0), *zip(pads[:half], pads[half:])]
    return np.pad(signs, widths, constant_values=node.attrs["pad_value"])


@register
class BinaryConv(Op):
    """``Y = act(Conv(Sign(X) padded with pad_value, W, B))``: FusedConv-1's attributes and
    shapes, one group, no residual."""

    op_type = "BinaryConv"
    domain = DOMAIN
    since = 1
    attributes = {**OPS[(DOMAIN, "FusedConv")].attributes, "pad_value": 0.0}

    def check(self, node):
        OPS[(DOMAIN, "FusedConv")].check(node)
        if node.attrs["group"] != 1:
            raise bad_attribute(node, f"BinaryConv takes one group, got group={node.attrs['group']}")
        if node.attrs["pad_value"] not in PAD_VALUES:
            raise bad_attribute(node, f"pad_value must be one of {PAD_VALUES}, got {node.attrs['pad_value']}")
        if node.attrs["pad_value"] and (node.attrs["auto_pad"] != "NOTSET" or not node.attrs["pads"]):
            raise bad_attribute(node, "a non-zero pad_value needs explicit pads (auto_pad NOTSET)")

    def infer(self, node, inputs):
        require_inputs(node, inputs, 2, 3)
        plain = Node(node.op_type, node.inputs, node.outputs, {**node.attrs, "pad_value": 0.0}, node.domain,
                     node.name, node.version)  # the padding's value does not change a shape
        return OPS[(DOMAIN, "FusedConv")].infer(as_fused_conv(plain), inputs)

    def reference(self, node, x, w, bias=None):
        return OPS[(DOMAIN, "FusedConv")].reference(as_fused_conv(node), padded_signs(node, x), w, bias)


def decompose_binary_conv(emit, node: Node) -> list[Node]:
    """``Sign`` (then ``Pad`` for a non-zero pad_value), then the Conv and activation of a
    FusedConv: the standard nodes the fused one stands for."""
    signs = emit.tensor("sign")
    nodes = [emit.make("Sign", node.inputs[:1], [signs])]
    if node.attrs["pad_value"]:
        padded, pads = emit.tensor("padded"), node.attrs["pads"]
        half = len(pads) // 2
        onnx_pads = [0, 0, *pads[:half], 0, 0, *pads[half:]]
        value = np.asarray(node.attrs["pad_value"], np.float32)
        if emit.opset < 11:  # pads and value were attributes until Pad-11
            nodes.append(emit.make("Pad", [signs], [padded], pads=onnx_pads, value=float(value)))
        else:
            nodes.append(emit.make("Pad", [signs, emit.constant("pads", np.asarray(onnx_pads, np.int64)),
                                           emit.constant("pad_value", value)], [padded]))
        signs = padded
    conv = as_fused_conv(node, [signs, *node.inputs[1:]])
    return nodes + fused._decompose_fused_conv(emit, conv)


fused._DECOMPOSITIONS["BinaryConv"] = decompose_binary_conv  # the exporter's table of fused ops
