"""ONNX -> tinyinfer IR.

Reads a model from a path, bytes or an ``onnx.ModelProto`` and returns an :class:`ir.Graph`
whose weights are NumPy arrays and whose node attributes are typed Python values. Everything
a malformed file can do wrong ends here as a :class:`~tinyinfer.errors.TinyInferError`, so
nothing past the frontend ever sees a protobuf error.

The frontend depends on the IR only: checking each node against its operator and filling
in attribute defaults is the job of :func:`tinyinfer.ops.prepare_graph`, which
:func:`tinyinfer.load` runs right after import.

Tensors stored outside the model file (ONNX "external data") are read from the model's
folder; a ``location`` that points outside that folder is refused, since a model file must
not be able to make the engine read arbitrary files.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import numpy_helper

from ..errors import InvalidAttributeError, ModelLoadError, TinyInferError, UnsupportedOpError
from ..ir import Graph, Node, Value, dtypes

Source = str | os.PathLike | bytes | bytearray | memoryview | onnx.ModelProto


def load_onnx(source: Source) -> Graph:
    """Import an ONNX model from a file path, serialized bytes or a ``ModelProto``."""
    base_dir: Path | None = None
    if isinstance(source, onnx.ModelProto):
        model = source
    elif isinstance(source, (bytes, bytearray, memoryview)):
        model = parse_model_bytes(bytes(source), what="the given bytes")
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise ModelLoadError(f"no model file at '{path}'")
        model = parse_model_bytes(path.read_bytes(), what=f"'{path}'")
        base_dir = path.resolve().parent
    else:
        raise ModelLoadError(
            f"cannot load a model from a {type(source).__name__}; give a path, bytes or onnx.ModelProto"
        )
    return graph_from_model(model, base_dir)


def parse_model_bytes(data: bytes, what: str = "model") -> onnx.ModelProto:
    """Parse serialized ONNX, turning protobuf's complaints into :class:`ModelLoadError`."""
    if not data:
        raise ModelLoadError(f"{what} is empty, not an ONNX model")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise ModelLoadError(f"{what} is not a valid ONNX model (truncated or corrupt protobuf: {exc})") from None
    # Protobuf happily parses many random byte strings into a message with odd fields; a real
    # model always carries an IR version, an opset import and a graph.
    if model.ir_version <= 0 or not model.HasField("graph") or not model.opset_import:
        raise ModelLoadError(
            f"{what} is not a valid ONNX model: it has no IR version, opset import or graph "
            f"(ir_version={model.ir_version}, {len(model.opset_import)} opset imports)"
        )
    return model


def graph_from_model(model: onnx.ModelProto, base_dir: Path | None = None) -> Graph:
    """Convert a parsed ``ModelProto``; external tensors are looked up under ``base_dir``."""
    if model.ir_version <= 0 or not model.HasField("graph"):
        raise ModelLoadError("ModelProto has no IR version or no graph")
    opset = {}
    for entry in model.opset_import:
        opset[_domain(_text(entry.domain, "opset domain"))] = int(entry.version)
    if "" not in opset and model.ir_version < 3:
        opset[""] = 1
    graph = graph_from_proto(model.graph, opset, base_dir)
    graph.metadata = {
        "ir_version": int(model.ir_version),
        "producer_name": model.producer_name,
        "producer_version": model.producer_version,
        "doc_string": model.doc_string,
        "metadata_props": {p.key: p.value for p in model.metadata_props},
    }
    graph.validate()
    return graph


def graph_from_proto(g: onnx.GraphProto, opset: dict[str, int], base_dir: Path | None = None) -> Graph:
    """Convert a ``GraphProto``: a model's main graph, or a subgraph (If branch, Loop body).

    Subgraphs found in node attributes are converted the same way, recursively; they share
    the model's opset imports. Validation is left to the caller, since a subgraph can only
    be checked with the names of its enclosing graph in scope.
    """
    graph = Graph(name=_text(g.name, "graph name") or "graph", opset=dict(opset))
    for tensor in g.initializer:
        graph.initializers[_text(tensor.name, "initializer name")] = tensor_to_array(tensor, base_dir)
    for sparse in g.sparse_initializer:
        raise UnsupportedOpError(f"sparse initializer '{sparse.values.name}' is not supported")
    graph.inputs = [value_from_proto(v) for v in g.input if v.name not in graph.initializers]
    graph.outputs = [value_from_proto(v) for v in g.output]
    graph.value_info = {v.name: value_from_proto(v) for v in g.value_info}
    for index, proto in enumerate(g.node):
        node = Node(
            op_type=_text(proto.op_type, "op type"),
            inputs=[_text(name, "tensor name") for name in proto.input],
            outputs=[_text(name, "tensor name") for name in proto.output],
            attrs={
                _text(a.name, "attribute name"): attribute_value(a, base_dir, proto, opset) for a in proto.attribute
            },
            domain=_domain(_text(proto.domain, "domain")),
            name=_text(proto.name, "node name") or f"{proto.op_type}_{index}",
        )
        domain = node.domain
        if domain not in opset:
            raise UnsupportedOpError(
                f"{node}: the model imports no opset for domain '{domain or 'ai.onnx'}'"
            )
        node.version = opset[domain]
        graph.nodes.append(node)
    return graph


def _text(value: str | bytes, what: str) -> str:
    """A string field; protobuf hands back ``bytes`` when it is not UTF-8, as only corruption makes it."""
    if isinstance(value, bytes):
        raise ModelLoadError(f"{what} {value!r} is not UTF-8 text; the model is corrupt")
    return value


def _domain(domain: str) -> str:
    return "" if domain in ("", "ai.onnx") else domain


def value_from_proto(info: onnx.ValueInfoProto) -> Value:
    """A graph input/output/value_info entry as a :class:`Value` (symbolic dims kept)."""
    return type_from_proto(info.type, _text(info.name, "value name"))


def type_from_proto(proto: onnx.TypeProto, name: str = "") -> Value:
    """A ``TypeProto`` as a :class:`Value`: a tensor, a sequence of tensors, or an optional
    of either (``kind`` says which; dtype and shape are the element tensor's)."""
    kind = proto.WhichOneof("value")
    if kind is None:  # type left out: legal for intermediate values
        return Value(name)
    if kind == "sequence_type":
        element = type_from_proto(proto.sequence_type.elem_type, name)
        if element.kind != "tensor":
            raise UnsupportedOpError(f"value '{name}' is a sequence of {element.kind}s; tinyinfer handles sequences of tensors")
        return Value(name, element.dtype, element.shape, kind="sequence")
    if kind == "optional_type":
        element = type_from_proto(proto.optional_type.elem_type, name)
        if element.kind not in ("tensor", "sequence"):
            raise UnsupportedOpError(f"value '{name}' is an optional {element.kind}; tinyinfer handles optional tensors and sequences")
        return Value(name, element.dtype, element.shape, kind="optional" if element.kind == "tensor" else "optional_sequence")
    if kind != "tensor_type":
        raise UnsupportedOpError(
            f"value '{name}' has type {kind}; tinyinfer handles tensors, sequences and optionals"
        )
    tensor_type = proto.tensor_type
    try:
        dtype = dtypes.from_onnx(tensor_type.elem_type) if tensor_type.elem_type else None
    except KeyError as exc:
        raise UnsupportedOpError(f"value '{name}': {exc.args[0]}") from None
    shape = None
    if tensor_type.HasField("shape"):
        shape = tuple(
            d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor_type.shape.dim
        )
    return Value(name, dtype, shape)


def tensor_to_array(tensor: onnx.TensorProto, base_dir: Path | None) -> np.ndarray:
    """A ``TensorProto`` as a NumPy array, reading external data safely when needed."""
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        tensor = _with_external_data(tensor, base_dir)
    try:
        array = numpy_helper.to_array(tensor)
    except (ValueError, TypeError, KeyError, AssertionError) as exc:
        raise ModelLoadError(
            f"tensor '{tensor.name}' (type {tensor.data_type}, dims {list(tensor.dims)}) cannot be read: {exc}"
        ) from None
    if tuple(array.shape) != tuple(tensor.dims):
        raise ModelLoadError(f"tensor '{tensor.name}' holds {array.size} values for dims {list(tensor.dims)}")
    return array


def _with_external_data(tensor: onnx.TensorProto, base_dir: Path | None) -> onnx.TensorProto:
    info = {entry.key: entry.value for entry in tensor.external_data}
    location = info.get("location")
    if not location:
        raise ModelLoadError(f"tensor '{tensor.name}' is marked external but names no location")
    if base_dir is None:
        raise ModelLoadError(
            f"tensor '{tensor.name}' is stored in external file '{location}'; load the model from "
            f"its path (not bytes or a ModelProto) so the file can be found"
        )
    target = (base_dir / location).resolve()
    if os.path.isabs(location) or not target.is_relative_to(base_dir):
        raise ModelLoadError(
            f"tensor '{tensor.name}': external data location '{location}' escapes the model's folder "
            f"'{base_dir}'; refusing to read it"
        )
    if not target.is_file():
        raise ModelLoadError(f"tensor '{tensor.name}': external data file '{location}' not found in '{base_dir}'")
    size = target.stat().st_size
    try:
        offset = int(info.get("offset") or 0)
        length = int(info["length"]) if info.get("length") else size - offset
    except ValueError:
        raise ModelLoadError(
            f"tensor '{tensor.name}': external data offset {info.get('offset')!r} and length "
            f"{info.get('length')!r} must be integers"
        ) from None
    if offset < 0 or length < 0 or offset + length > size:
        raise ModelLoadError(
            f"tensor '{tensor.name}': external data range [{offset}, {offset + length}) lies outside "
            f"'{location}' ({size} bytes)"
        )
    with open(target, "rb") as f:
        f.seek(offset)
        raw = f.read(length)
    copy = onnx.TensorProto()
    copy.CopyFrom(tensor)
    del copy.external_data[:]
    copy.data_location = onnx.TensorProto.DEFAULT
    copy.raw_data = raw
    return copy


def attribute_value(
    attr: onnx.AttributeProto, base_dir: Path | None, node: Any = None, opset: dict[str, int] | None = None
) -> Any:
    """An attribute as a typed Python value: int, float, str, list, NumPy array, or
    :class:`ir.Graph` for a subgraph (``opset`` is the model's, which subgraphs share);
    a type (the ``type`` of an Optional) becomes a :class:`Value` with an empty name."""
    A = onnx.AttributeProto
    kind = attr.type
    if kind == A.FLOAT:
        return float(attr.f)
    if kind == A.INT:
        return int(attr.i)
    if kind == A.STRING:
        try:
            return attr.s.decode("utf-8")
        except UnicodeDecodeError:
            return bytes(attr.s)
    if kind == A.TENSOR:
        return tensor_to_array(attr.t, base_dir)
    if kind == A.FLOATS:
        return [float(v) for v in attr.floats]
    if kind == A.INTS:
        return [int(v) for v in attr.ints]
    if kind == A.STRINGS:
        return [s.decode("utf-8", errors="replace") for s in attr.strings]
    if kind == A.TENSORS:
        return [tensor_to_array(t, base_dir) for t in attr.tensors]
    where = f" of {node.op_type} '{node.name}'" if node is not None else ""
    if kind in (A.GRAPH, A.GRAPHS):
        if opset is None:
            raise UnsupportedOpError(f"attribute '{attr.name}'{where} holds a subgraph, but no opset was given for it")
        if kind == A.GRAPH:
            return graph_from_proto(attr.g, opset, base_dir)
        return [graph_from_proto(g, opset, base_dir) for g in attr.graphs]
    if kind == A.TYPE_PROTO:
        return type_from_proto(attr.tp)
    if kind == A.TYPE_PROTOS:
        return [type_from_proto(t) for t in attr.type_protos]
    if kind in (A.SPARSE_TENSOR, A.SPARSE_TENSORS):
        raise InvalidAttributeError(f"attribute '{attr.name}'{where} holds a sparse tensor; sparse tensors are not supported")
    if kind == A.UNDEFINED and attr.ref_attr_name:
        raise UnsupportedOpError(f"attribute '{attr.name}'{where} refers to a function attribute")
    raise InvalidAttributeError(f"attribute '{attr.name}'{where} has unsupported type {kind}")


def safe_load(source: Source) -> Graph:
    """:func:`load_onnx`, with any unexpected library error reported as a ModelLoadError."""
    try:
        return load_onnx(source)
    except TinyInferError:
        raise
    except Exception as exc:  # a malformed model must never surface as a bare library error
        raise ModelLoadError(f"cannot import the model: {type(exc).__name__}: {exc}") from exc
