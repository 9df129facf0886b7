"""Counting what a network costs: multiply-accumulates and FLOPs per node.

Convention: one multiply-accumulate (MAC) is counted as 2 FLOPs; elementwise ops and
reductions count one FLOP per output (or input, for reductions) element. Shapes come from
:func:`tinyinfer.ops.infer_shapes`; symbolic dims count as 1 (batch one).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .. import ops
from ..ir import Graph, Value

_MATRIX_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}


@dataclasses.dataclass
class NodeCost:
    name: str
    op_type: str
    macs: int
    flops: int


def count_flops(graph: Graph, batch: int = 1) -> list[NodeCost]:
    """MACs and FLOPs of every node for inputs with symbolic dims set to ``batch``."""
    given = {}
    for value in graph.inputs:
        shape = tuple(d if isinstance(d, int) else batch for d in (value.shape or ()))
        given[value.name] = Value(value.name, value.dtype, shape)
    values = ops.infer_shapes(graph, given)
    costs = []
    for node in graph.nodes:
        ins = [values.get(n) if n else None for n in node.inputs]
        outs = [values.get(n) for n in node.outputs if n]
        macs = _macs(node, ins, outs)
        if macs:
            flops = 2 * macs
        else:
            flops = _elements(outs[0]) if outs and outs[0] is not None else 0
            if node.op_type.startswith("Reduce") or "Pool" in node.op_type:
                flops = _elements(ins[0]) if ins and ins[0] is not None else flops
        costs.append(NodeCost(node.name, node.op_type, macs, flops))
    return costs


def _elements(value: Value | None) -> int:
    if value is None or value.shape is None or not all(isinstance(d, int) for d in value.shape):
        return 0
    return int(np.prod(value.shape, dtype=np.int64))


def _macs(node, ins, outs) -> int:
    if node.op_type not in _MATRIX_OPS or not outs or outs[0] is None:
        return 0
    out_elements = _elements(outs[0])
    weight = ins[1] if len(ins) > 1 else None
    if weight is None or weight.shape is None or not all(isinstance(d, int) for d in weight.shape):
        return 0
    if node.op_type == "Conv":
        # every output element is a dot product over C/group * prod(kernel) inputs
        return out_elements * int(np.prod(weight.shape[1:]))
    if node.op_type == "ConvTranspose":
        # every input element is scattered through M/group * prod(kernel) weights
        return _elements(ins[0]) * int(np.prod(weight.shape[1:]))
    if node.op_type == "Gemm":
        k = weight.shape[1] if node.attrs.get("transB") else weight.shape[0]
        return out_elements * k
    a = ins[0]
    if a is None or a.shape is None or not a.shape or not isinstance(a.shape[-1], int):
        return 0
    return out_elements * a.shape[-1]  # MatMul: contracted over A's last axis
