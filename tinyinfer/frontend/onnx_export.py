"""tinyinfer IR -> ONNX.

Writes a :class:`ir.Graph` back as an ``onnx.ModelProto`` that ``onnx.checker`` accepts and
ONNX Runtime runs. Every attribute the node holds is written out explicitly (the ops filled
in their defaults on import), so the exported file does not depend on which defaults a reader
assumes.
"""

from __future__ import annotations

import functools

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..ir import Graph, Node, Value, dtypes

#: The newest IR version ONNX Runtime of the supported range reads; older models keep theirs.
DEFAULT_IR_VERSION = 10


def to_onnx(graph: Graph, *, producer: str = "tinyinfer", decompose: bool = True) -> onnx.ModelProto:
    """Export a graph as an ONNX model.

    ``decompose=True`` (the default) first rewrites tinyinfer's fused ``ai.tinyinfer`` nodes
    (which the O2 passes create) into the standard nodes they stand for, so any ONNX runtime
    can run the result; ``decompose=False`` writes them as they are.
    """
    if decompose:
        from ..ops.fused import decompose_fused  # the fused ops know their own decomposition
        from ..ops.layout import decompose_layout  # and the blocked-layout ops (O3) theirs
        from ..ops.qlinear import decompose_qlinear  # and the int8 ops (DQ -> float op -> Q)

        graph = decompose_fused(decompose_layout(decompose_qlinear(graph)))
    nodes = [_node_proto(node) for node in graph.nodes]
    initializers = [numpy_helper.from_array(np.asarray(array), name) for name, array in graph.initializers.items()]
    inputs = [_value_info(v, graph) for v in graph.inputs]
    outputs = [_value_info(v, graph) for v in graph.outputs]
    value_info = [_value_info(v, graph) for name, v in graph.value_info.items() if v.dtype is not None]
    proto = helper.make_graph(nodes, graph.name, inputs, outputs, initializers, value_info=value_info)
    opsets = [helper.make_opsetid(domain, version) for domain, version in sorted(graph.opset.items())]
    # Before IR version 4 every initializer also had to be a graph input; the IR keeps them
    # apart, so older models are written as IR 4 (which still reads their opsets).
    ir_version = max(graph.metadata.get("ir_version") or DEFAULT_IR_VERSION, 4)
    model = helper.make_model(proto, opset_imports=opsets, producer_name=producer, ir_version=ir_version)
    for key, value in graph.metadata.get("metadata_props", {}).items():
        helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props}, key: value})
    return model


def save_onnx(graph: Graph, path) -> None:
    onnx.save(to_onnx(graph), str(path))


def _node_proto(node: Node) -> onnx.NodeProto:
    attrs = {}
    known = _schema_attributes(node.op_type, node.domain, node.version)
    for name, value in node.attrs.items():
        if value is None or (isinstance(value, list) and not value):
            continue  # absent, or an empty list whose element type ONNX cannot tell
        if known is not None and name not in known:
            continue  # newer than the node's opset (e.g. MaxPool-9 has no ceil_mode): its default applies
        attrs[name] = _attribute_proto_value(value)
    proto = helper.make_node(node.op_type, node.inputs, node.outputs, name=node.name or None, domain=node.domain or None)
    for name, value in attrs.items():
        proto.attribute.append(helper.make_attribute(name, value))
    return proto


@functools.lru_cache(maxsize=None)
def _schema_attributes(op_type: str, domain: str, version: int) -> frozenset[str] | None:
    """The attribute names ONNX's schema of an ai.onnx op knows at ``version`` (None: unknown).

    The ops read every attribute of the newest version, with defaults that keep the old
    meaning; an older opset's checker rejects the names it does not know yet.
    """
    if domain not in ("", "ai.onnx") or not version:
        return None
    try:
        return frozenset(onnx.defs.get_schema(op_type, version, "").attributes)
    except onnx.defs.SchemaError:
        return None


def _attribute_proto_value(value):
    """An attribute as ``helper.make_attribute`` takes it: tensors, subgraphs and types as protos."""
    if isinstance(value, np.ndarray):
        return numpy_helper.from_array(value)
    if isinstance(value, Graph):
        return _subgraph_proto(value)
    if isinstance(value, Value):  # a type, e.g. Optional's ``type``
        return _type_proto(value)
    if isinstance(value, list) and value and isinstance(value[0], (Graph, Value)):
        return [_attribute_proto_value(v) for v in value]
    return value


def _subgraph_proto(graph: Graph) -> onnx.GraphProto:
    """A subgraph (If branch, Loop body) as a ``GraphProto``; it reads outer names freely."""
    nodes = [_node_proto(node) for node in graph.nodes]
    initializers = [numpy_helper.from_array(np.asarray(array), name) for name, array in graph.initializers.items()]
    inputs = [_value_info(v, graph) for v in graph.inputs]
    outputs = [_value_info(v, graph) for v in graph.outputs]
    value_info = [_value_info(v, graph) for v in graph.value_info.values() if v.dtype is not None]
    return helper.make_graph(nodes, graph.name, inputs, outputs, initializers, value_info=value_info)


def _value_info(value: Value, graph: Graph) -> onnx.ValueInfoProto:
    dtype = value.dtype
    if dtype is None and value.name in graph.initializers:
        dtype = graph.initializers[value.name].dtype
    return helper.make_value_info(value.name, _type_proto(value, dtype))


def _type_proto(value: Value, dtype=None) -> onnx.TypeProto:
    """The ONNX type of a value: a tensor type, wrapped in a sequence and/or optional type."""
    dtype = value.dtype if dtype is None else dtype
    elem = dtypes.to_onnx(dtype) if dtype is not None else onnx.TensorProto.UNDEFINED
    shape = None if value.shape is None else [d if d is not None else None for d in value.shape]
    proto = helper.make_tensor_type_proto(elem, shape)
    if value.kind in ("sequence", "optional_sequence"):
        proto = helper.make_sequence_type_proto(proto)
    if value.kind in ("optional", "optional_sequence"):
        proto = helper.make_optional_type_proto(proto)
    return proto
