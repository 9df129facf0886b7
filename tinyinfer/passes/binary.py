"""O2: recognise the binarized convolutions of a standard ONNX model and fuse them into BinaryConv.

A binarized network travels as standard ONNX (:mod:`tinyinfer.compress.binarize`): each binary
layer is ``Sign → Conv`` whose weight is ``±α`` per output channel (XNOR-Net's scaled signs).
Nothing in the file says "binary", so the engine finds the layers by their arithmetic: a Conv
that reads a Sign (directly, or through a ``Pad`` of the spatial axes by 0 or ±1: tools that
pad binary tensors with +1 write one) and whose every filter holds one magnitude. Such a
chain becomes one ``ai.tinyinfer:BinaryConv`` (:mod:`tinyinfer.ops.binary`), which the
XNOR-popcount kernel (:mod:`tinyinfer.kernels.binary_conv`) runs; the BinaryConv reads the
Sign's input, and the Sign goes when nothing else reads it.

This pass runs after the O2 foldings: a BatchNormalization folded into a binary conv scales each
filter by one factor, so the filter stays ``±α`` (with a new α and a bias), and the conv still
matches; so does one the O2 fusions already merged with its activation (a FusedConv without
residual), whose activation the BinaryConv keeps.
"""

from __future__ import annotations

import numpy as np

from ..ir import Graph, Node
from ..kernels.binary_conv import channel_alpha
from ..ops.binary import PAD_VALUES
from ..ops.fused import DOMAIN
from .base import register_pass
from .fusion import _use_domain
from .patterns import Rewriter, label


@register_pass("fuse_binary_conv", "O2")
def fuse_binary_conv(graph: Graph) -> list[str]:
    """Fuse ``Sign → [Pad] → Conv`` (or a FusedConv with its activation) with ``±α`` weights per
    output channel into ``ai.tinyinfer:BinaryConv``."""
    r = Rewriter(graph)
    for sign in [n for n in graph.nodes if n.op_type == "Sign" and not n.domain]:
        for reader in list(r.readers(sign.outputs[0])):
            chain = _binary_chain(r, reader)
            if chain is not None:
                _fuse(r, sign, *chain)
        if not r.readers(sign.outputs[0]) and sign.outputs[0] not in graph.output_names:
            r.remove(sign)
    return r.finish()


def _binary_chain(r: Rewriter, reader: Node) -> tuple[Node | None, Node, float, list[int] | None] | None:
    """(the Pad or None, the conv, the padding's value, the conv's pads) for a reader of a Sign."""
    if reader.op_type != "Pad" or reader.domain:
        return (None, reader, 0.0, reader.attrs.get("pads")) if _is_binary_conv(r, reader, reader.inputs[0]) else None
    conv = r.sole_reader(reader.outputs[0])
    padding = _spatial_padding(r, reader)
    if conv is None or padding is None or not _is_binary_conv(r, conv, reader.outputs[0]):
        return None
    value, pads = padding
    own = conv.attrs["pads"] or [0] * len(pads)
    if conv.attrs["auto_pad"] != "NOTSET" or (value and any(own)):  # two paddings that hold different values
        return None
    return reader, conv, value, [a + b for a, b in zip(pads, own)]


def _spatial_padding(r: Rewriter, pad: Node) -> tuple[float, list[int]] | None:
    """(value, [top, left, bottom, right]) of a constant Pad of the two spatial axes by 0 or ±1, else None."""
    if pad.attrs["mode"] != "constant":
        return None
    if pad.version < 11:
        pads, value = pad.attrs["pads"], pad.attrs["value"]
    else:
        if len(pad.inputs) > 3 and pad.inputs[3]:  # axes: rare, and not worth the bookkeeping
            return None
        pads = r.const(pad.inputs[1])
        value = r.const(pad.inputs[2]) if len(pad.inputs) > 2 and pad.inputs[2] else 0.0
    if pads is None or value is None or np.size(value) != 1 or len(pads) != 8:
        return None
    pads, value = [int(p) for p in np.reshape(pads, -1)], float(np.reshape(value, -1)[0])
    spatial = pads[2:4] + pads[6:8]
    if any(pads[i] for i in (0, 1, 4, 5)) or min(spatial) < 0 or value not in PAD_VALUES:
        return None
    return value, spatial


def _is_binary_conv(r: Rewriter, conv: Node, signs: str) -> bool:
    standard = conv.op_type == "Conv" and not conv.domain
    fused = conv.op_type == "FusedConv" and conv.domain == DOMAIN and not "".join(conv.inputs[3:])  # no residual
    if not (standard or fused) or conv.inputs[0] != signs or conv.attrs["group"] != 1:
        return False
    w = r.const(conv.inputs[1])
    return w is not None and w.ndim == 4 and r.is_float(signs) and channel_alpha(w) is not None


def _fuse(r: Rewriter, sign: Node, pad: Node | None, conv: Node, pad_value: float, pads: list[int] | None) -> None:
    attrs = {"activation": "Identity", "activation_params": None, **conv.attrs, "pads": pads, "pad_value": pad_value}
    node = Node("BinaryConv", [sign.inputs[0], *conv.inputs[1:3]], list(conv.outputs), attrs, DOMAIN, conv.name)
    _use_domain(r, node)
    chain = [conv] if pad is None else [pad, conv]
    r.replace(chain, node)
    r.note(f"fused {' and '.join(label(n) for n in [sign, *chain])} (±α weights) into BinaryConv")
