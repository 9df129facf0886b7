"""Reading QDQ models: is a model quantized, and what is its float twin?

A QDQ model (what :func:`tinyinfer.compress.quantize_static` and ONNX Runtime's quantizer
write) is a float model with ``QuantizeLinear → DequantizeLinear`` pairs on its activations
and ``DequantizeLinear`` nodes on its integer weights. Its **float twin** is the same network
with the quantization taken out: every weight dequantized once into a float initializer
(so the twin computes with exactly the rounded weights) and every activation pair
``DQ(Q(x))`` replaced by ``x``. Timing the two side by side shows what int8 buys on an engine
(``tinyinfer bench model.int8.onnx``); comparing their outputs isolates the error of
quantizing the activations.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import TinyInferError

#: Ops of the operator-oriented format (QOperator): not QDQ, no float twin to take.
QOPERATOR_OPS = frozenset({"QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "QLinearAdd", "QLinearMul",
                           "QLinearConcat", "QLinearGlobalAveragePool", "QLinearAveragePool"})


def is_qdq_model(model: onnx.ModelProto) -> bool:
    """Whether the model holds QuantizeLinear / DequantizeLinear nodes."""
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)


def float_twin(model: onnx.ModelProto) -> onnx.ModelProto:
    """The QDQ model with its quantization removed: constant weights dequantized, activation
    ``Q → DQ`` pairs bypassed. A Q or DQ that is neither (a model's quantized input or
    output) stays."""
    found = sorted({n.op_type for n in model.graph.node if n.op_type in QOPERATOR_OPS})
    if found:
        raise TinyInferError(f"model '{model.graph.name}' is in the QOperator format ({', '.join(found)}); "
                             "a float twin is taken from QDQ models")
    twin = onnx.ModelProto()
    twin.CopyFrom(model)
    graph = twin.graph
    constants = {t.name: t for t in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    renamed: dict[str, str] = {}  # a DQ's output -> the float tensor that replaces it
    dropped = []
    for node in graph.node:
        if node.op_type != "DequantizeLinear":
            continue
        source = producer.get(node.input[0])
        if node.input[0] in constants and all(name in constants for name in node.input[1:] if name):
            folded = numpy_helper.from_array(_dequantize(node, constants), node.output[0])
            graph.initializer.append(folded)
            dropped.append(node)
        elif source is not None and source.op_type == "QuantizeLinear":
            renamed[node.output[0]] = source.input[0]
            dropped.append(node)
    for node in dropped:
        graph.node.remove(node)
    for node in graph.node:
        for i, name in enumerate(node.input):
            node.input[i] = renamed.get(name, name)
    outputs = {o.name for o in graph.output}
    for output in graph.output:  # a graph output that was a DQ: keep its name with an Identity
        if output.name in renamed:
            graph.node.append(helper.make_node("Identity", [renamed[output.name]], [output.name]))
    _remove_unused(graph, outputs)
    return twin


def _dequantize(node: onnx.NodeProto, constants: dict) -> np.ndarray:
    q = numpy_helper.to_array(constants[node.input[0]]).astype(np.float32)
    scale = numpy_helper.to_array(constants[node.input[1]]).astype(np.float32)
    zero = (numpy_helper.to_array(constants[node.input[2]]).astype(np.float32)
            if len(node.input) > 2 and node.input[2] else np.zeros_like(scale))
    axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
    if scale.ndim == 1 and scale.size > 1:  # per axis: line the parameters up with that axis
        shape = [1] * q.ndim
        shape[axis % q.ndim] = scale.size
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return ((q - zero) * scale).astype(np.float32)


def _remove_unused(graph: onnx.GraphProto, outputs: set[str]) -> None:
    """Drop nodes none of whose outputs is read (repeatedly), then unread initializers."""
    while True:
        read = {name for node in graph.node for name in node.input} | outputs
        dead = [node for node in graph.node if not any(o in read for o in node.output if o)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    read = {name for node in graph.node for name in node.input} | outputs
    for tensor in [t for t in graph.initializer if t.name not in read]:
        graph.initializer.remove(tensor)
