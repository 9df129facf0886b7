"""``.tinf``: tinyinfer's own model file, a JSON header plus weights that load without a copy.

ONNX stores a model as one protobuf message. To read a single weight, a reader parses the
whole message, and protobuf hands every tensor back as a fresh ``bytes`` object that NumPy
then copies once more; the weights of a 100 MB model pass through memory two or three times
before the first inference. Engines built for phones (TFLite, MNN, ncnn) avoid that with
FlatBuffers-style files: the file *is* the in-memory layout, a table of offsets points into
one buffer, and "loading" means mapping the file and following offsets. ``.tinf`` keeps that
idea where it pays, for the weights, and stays simple everywhere else:

* the **weights** are raw little-endian arrays, each starting on a 64-byte boundary, so
  :func:`load_tinf` maps the file (``mmap``, read-only) and every initializer is a NumPy view
  into the map: no parse, no copy, and the operating system pages in only the weights a run
  touches. 64 bytes is a cache line and the width of an AVX-512 register, so a kernel may use
  aligned loads on any tensor.
* the **graph** (names, nodes, attributes, types; a few kB even for large networks) is a UTF-8
  JSON header. Python builds an :class:`~tinyinfer.ir.Graph` of Python objects from it either
  way, so a zero-copy FlatBuffers table would save a millisecond and cost a schema compiler,
  a runtime library and a file nobody can read; JSON comes with the standard library, and
  ``head -c 2000 model.tinf`` shows the graph to a human.

Byte layout (all integers little-endian)::

    offset        size   field
    0             8      magic  b"TINF\\x00\\r\\n\\x1a"
    8             4      format version, uint32 (this module writes and reads version 1)
    12            4      flags, uint32 (none defined yet: must be 0)
    16            8      header length H in bytes, uint64
    24            4      CRC-32 of the header bytes, uint32 (zlib.crc32)
    28            4      reserved, must be 0
    32            H      header: UTF-8 JSON object (below)
    32 + H        pad    zeros up to D = the next multiple of 64
    D             ...    tensor data: tensor i occupies [D + offset_i, D + offset_i + nbytes_i),
                         every offset_i a multiple of 64, zeros between tensors;
                         the file ends exactly at D + data_nbytes

The magic borrows PNG's trick: the NUL stops tools that sniff text, and a file that went
through a text-mode copy (``\\r\\n`` -> ``\\n``, or a DOS end-of-file at ``\\x1a``) no longer
matches, so the damage is reported instead of producing garbage weights. Offsets are relative
to ``D`` so that the header does not depend on its own length.

The header (version 1)::

    {"name": "squeezenet", "opset": {"": 13}, "metadata": {...},
     "inputs":  [{"name": "x", "dtype": 1, "shape": ["N", 3, 224, 224]}, ...],   # dtype: ONNX
     "outputs": [...], "value_info": [...],                                     # code or null;
     "nodes": [{"op_type": "Conv", "domain": "", "name": "conv1", "version": 13,  # dims: int,
                "inputs": ["x", "w", "b"], "outputs": ["y"],                      # str or null
                "attrs": {"strides": {"ints": [2, 2]}, "auto_pad": {"string": "NOTSET"}}}],
     "initializers": [0, 1],                       # indices into "tensors"
     "tensors": [{"name": "w", "dtype": 1, "shape": [64, 3, 3, 3], "offset": 0, "nbytes": 6912},
                 {"name": "labels", "dtype": 8, "shape": [2], "strings": ["cat", "dog"]}],
     "data_nbytes": 6912}

An attribute is a one-key object naming its type: ``int``, ``float`` (a JSON number, or
``"nan"``, ``"inf"``, ``"-inf"``), ``string``, ``bytes`` (base64), ``ints``, ``floats``,
``strings``, ``tensor`` (an index into ``tensors``: tensor attributes are data blocks like
weights), ``tensors`` (a list of indices), or ``none`` (an attribute the op declares but the
model leaves out). Element types are ONNX's ``TensorProto.DataType`` codes
(:mod:`tinyinfer.ir.dtypes`), including the ``ml_dtypes`` types; sub-byte types (int4, ...)
are stored one element per byte, as NumPy holds them, so the view stays zero-copy. String
tensors (code 8) have no byte layout NumPy can view, so their values live in the header.

Reading trusts nothing: the magic, version, flags, header length against the file size, the
header checksum, the JSON structure, and every tensor's dtype, shape, ``nbytes`` (= elements x
item size), alignment, bounds and overlap are checked before the first view is made, and any
failure is a :class:`~tinyinfer.errors.ModelLoadError` that says what is wrong. The checks of
the two big tables, tensors and nodes, run a column at a time (all offsets at once, all
names at once), so that checking a 900-node network costs about a millisecond. The weights
themselves carry no checksum: verifying them would read every page of the file, which is
exactly what mapping it avoids.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import io
import itertools
import json
import math
import mmap
import operator
import os
import secrets
import struct
import zlib
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable

import numpy as np

from ..errors import InvalidAttributeError, ModelLoadError, TinyInferError, node_label
from . import dtypes
from .graph import KINDS, Graph, Node, Value

MAGIC = b"TINF\x00\r\n\x1a"
FORMAT_VERSION = 1
#: Every tensor starts on a multiple of this many bytes (one cache line, one AVX-512 register).
ALIGNMENT = 64
#: magic, version, flags, header length, header CRC-32, reserved.
PREAMBLE = struct.Struct("<8sIIQII")
#: Refuse deeper tensors: no real model comes close, and NumPy's own limit is not much higher.
MAX_RANK = 32

_STRING_CODE = 8
_SPECIAL_FLOATS = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}

Source = str | os.PathLike | bytes | bytearray | memoryview


# ================================================================ public API
def save_tinf(graph: Graph, path: str | os.PathLike) -> None:
    """Write ``graph`` to ``path`` as ``.tinf``, atomically.

    The file is written under a temporary name in the same folder and renamed over ``path``
    (``os.replace``) only once complete, so a crash or an error never leaves a half-written
    model behind, and a process that has the old file mapped keeps its (old) weights. (On
    Windows a mapped file cannot be replaced: drop graphs loaded from ``path`` first.)
    """
    header, blocks = _encode(graph)  # fails, if it must, before the file system is touched
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        # os.open with mode 0o666 lets the umask decide the permissions, as open() would.
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        with os.fdopen(fd, "wb") as f:
            _write(f, header, blocks)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise TinyInferError(f"cannot write '{path}': {exc}") from exc
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def to_tinf_bytes(graph: Graph) -> bytes:
    """The ``.tinf`` encoding of ``graph`` as bytes (what :func:`save_tinf` writes)."""
    header, blocks = _encode(graph)
    out = io.BytesIO()
    _write(out, header, blocks)
    return out.getvalue()


def load_tinf(path: str | os.PathLike) -> Graph:
    """Read a ``.tinf`` file; initializers are read-only NumPy views into a memory map of it.

    The map stays open as long as any of those arrays is alive (each array's ``base`` chain
    ends at the ``mmap`` object) and closes with the last of them.
    """
    path = Path(path)
    what = f"'{path}'"
    if not path.is_file():
        raise ModelLoadError(f"no model file at '{path}'")
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                raise ModelLoadError(f"{what} is empty, not a .tinf model")
            mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except OSError as exc:
        raise ModelLoadError(f"cannot read {what}: {exc}") from exc
    try:
        return _decode(mapped, what)
    except BaseException:
        # Without views (the usual case: checks fail before any is made) the map closes now;
        # otherwise it closes when the last view is collected.
        with contextlib.suppress(BufferError):
            mapped.close()
        raise


def load_tinf_bytes(data: bytes | bytearray | memoryview) -> Graph:
    """Read ``.tinf`` from memory; initializers are read-only views into ``data``.

    The views are as aligned as ``data``'s own buffer is (a ``bytes`` object's usually is to
    16 bytes); :func:`load_tinf` guarantees 64-byte alignment in memory too.
    """
    try:
        buffer = memoryview(data).cast("B").toreadonly()
    except (TypeError, ValueError) as exc:
        raise ModelLoadError(f"cannot read a .tinf model from a {type(data).__name__}: {exc}") from None
    return _decode(buffer, "the given bytes")


def read_tinf_header(source: Source) -> dict[str, Any]:
    """The decoded JSON header of a ``.tinf`` file or bytes, after the preamble checks.

    For looking inside a model (``json.dumps(read_tinf_header(p), indent=1)``); it does not
    check the tensor table, :func:`load_tinf` does.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _read_header(memoryview(source).cast("B"), "the given bytes")[0]
    path = Path(source)
    if not path.is_file():
        raise ModelLoadError(f"no model file at '{path}'")
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            return _read_header(mapped, f"'{path}'")[0]  # reads the header's pages only
    except (OSError, ValueError) as exc:  # mmap refuses an empty file with ValueError
        if path.stat().st_size == 0:
            raise ModelLoadError(f"'{path}' is empty, not a .tinf model") from None
        raise ModelLoadError(f"cannot read '{path}': {exc}") from exc


def is_tinf(source: Any) -> bool:
    """True for a ``.tinf`` path, or a file or bytes that start like a ``.tinf`` model.

    Only the first four magic bytes are compared, so that a file whose signature was damaged
    (a text-mode copy) still reaches :func:`load_tinf` and its explanation.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        try:
            return memoryview(source).cast("B")[:4].tobytes() == MAGIC[:4]
        except (TypeError, ValueError):
            return False
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.suffix.lower() == ".tinf":
            return True
        try:
            with open(path, "rb") as f:
                return f.read(4) == MAGIC[:4]
        except OSError:
            return False
    return False


# ================================================================ writing
class _TensorTable:
    """Collects the tensors to store and lays them out, each at a 64-byte aligned offset."""

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []
        self.blocks: list[tuple[int, np.ndarray]] = []  # (offset, uint8 bytes) per data block
        self.end = 0

    def add(self, name: str, array: Any) -> int:
        array = np.asarray(array)
        if array.ndim > MAX_RANK:
            raise TinyInferError(f"tensor '{name}' has rank {array.ndim}; .tinf stores up to rank {MAX_RANK}")
        dtype = array.dtype.newbyteorder("=") if array.dtype.byteorder not in "=|" else array.dtype
        try:
            code = dtypes.to_onnx(dtype)
        except KeyError:
            raise TinyInferError(f"tensor '{name}' has dtype {array.dtype}, which .tinf cannot store") from None
        entry: dict[str, Any] = {"name": name, "dtype": code, "shape": [int(d) for d in array.shape]}
        if code == _STRING_CODE:
            entry["strings"] = [_string_item(name, item) for item in array.reshape(-1).tolist()]
        else:
            data = np.ascontiguousarray(array, dtype=_stored_dtype(dtype)).reshape(-1).view(np.uint8)
            offset = _align(self.end)
            entry["offset"], entry["nbytes"] = offset, int(data.nbytes)
            self.blocks.append((offset, data))
            self.end = offset + data.nbytes
        self.entries.append(entry)
        return len(self.entries) - 1


def _encode(graph: Graph) -> tuple[bytes, list[tuple[int, np.ndarray]]]:
    table = _TensorTable()
    header = _encode_graph(graph, table)
    header.update({"opset": dict(graph.opset), "metadata": graph.metadata,
                   "tensors": table.entries, "data_nbytes": table.end})
    try:
        text = json.dumps(header, ensure_ascii=False, allow_nan=False, separators=(",", ":"), default=_json_scalar)
    except (TypeError, ValueError) as exc:
        raise TinyInferError(
            f"graph '{graph.name}' cannot be stored as .tinf: {exc} (metadata must be JSON data: "
            f"dicts with string keys, lists, strings, finite numbers, booleans, None)"
        ) from None
    return text.encode("utf-8"), table.blocks


def _write(out: BinaryIO, header: bytes, blocks: list[tuple[int, np.ndarray]]) -> None:
    out.write(PREAMBLE.pack(MAGIC, FORMAT_VERSION, 0, len(header), zlib.crc32(header), 0))
    out.write(header)
    header_end = PREAMBLE.size + len(header)
    out.write(bytes(_align(header_end) - header_end))
    position = 0
    for offset, data in blocks:
        out.write(bytes(offset - position))
        out.write(data)
        position = offset + data.nbytes


def _encode_graph(graph: Graph, table: "_TensorTable") -> dict[str, Any]:
    """A graph's own part of the header: the top-level graph, or a subgraph (If, Loop, Scan
    bodies) stored as a node attribute; every tensor of either goes to the one table."""
    initializers = [table.add(name, array) for name, array in graph.initializers.items()]
    return {
        "name": graph.name,
        "inputs": [_encode_value(v) for v in graph.inputs],
        "outputs": [_encode_value(v) for v in graph.outputs],
        "value_info": [_encode_value(v) for v in graph.value_info.values()],
        "nodes": [_encode_node(node, table) for node in graph.nodes],
        "initializers": initializers,
    }


def _encode_value(value: Value) -> dict[str, Any]:
    shape = None
    if value.shape is not None:
        shape = list(value.shape)
        for dim in shape:
            if not (dim is None or isinstance(dim, str) or (isinstance(dim, int) and not isinstance(dim, bool))):
                raise TinyInferError(f"value '{value.name}' has dimension {dim!r}; dims are ints, names or None")
    dtype = None if value.dtype is None else dtypes.to_onnx(value.dtype)
    entry = {"name": value.name, "dtype": dtype, "shape": shape}
    if value.kind != "tensor":
        entry["kind"] = value.kind  # a sequence or an optional; absent means a tensor
    return entry


def _encode_node(node: Node, table: _TensorTable) -> dict[str, Any]:
    attrs = {name: _encode_attribute(node, name, value, table) for name, value in node.attrs.items()}
    return {
        "op_type": node.op_type,
        "domain": node.domain,
        "name": node.name,
        "version": int(node.version),
        "inputs": list(node.inputs),
        "outputs": list(node.outputs),
        "attrs": attrs,
    }


def _encode_attribute(node: Node, name: str, value: Any, table: _TensorTable) -> dict[str, Any]:
    """One attribute as ``{type: value}``; ONNX has no bool attribute, so bools are ints."""
    where = f"{node.name or node.op_type}.{name}"
    if value is None:
        return {"none": None}
    if isinstance(value, (int, np.integer, np.bool_)):
        return {"int": int(value)}
    if isinstance(value, (float, np.floating)):
        return {"float": _float_to_json(value)}
    if isinstance(value, str):
        return {"string": value}
    if isinstance(value, bytes):
        return {"bytes": base64.b64encode(value).decode("ascii")}
    if isinstance(value, np.ndarray):
        return {"tensor": table.add(where, value)}
    if isinstance(value, Graph):
        return {"graph": _encode_graph(value, table)}
    if isinstance(value, (list, tuple)):
        items = list(value)
        if all(isinstance(v, (int, np.integer, np.bool_)) for v in items):
            return {"ints": [int(v) for v in items]}  # an empty list lands here too
        if all(isinstance(v, (int, float, np.integer, np.floating)) for v in items):
            return {"floats": [_float_to_json(v) for v in items]}
        if all(isinstance(v, str) for v in items):
            return {"strings": items}
        if all(isinstance(v, np.ndarray) for v in items):
            return {"tensors": [table.add(f"{where}.{i}", v) for i, v in enumerate(items)]}
    raise InvalidAttributeError(
        f"{node_label(node)}: attribute '{name}' holds {type(value).__name__} {_preview(value)}, which .tinf "
        f"cannot store (int, float, str, bytes, NumPy array, graph, or a list of int, float, str or arrays)"
    )


def _float_to_json(value: float) -> float | str:
    value = float(value)
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value  # json writes repr(value), which reads back as the same float


def _string_item(name: str, item: Any) -> str:
    if isinstance(item, bytes):
        try:
            return item.decode("utf-8")
        except UnicodeDecodeError:
            pass
    elif isinstance(item, str):
        return item
    raise TinyInferError(f"string tensor '{name}' holds {item!r}; .tinf stores UTF-8 text only")


def _json_scalar(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} {_preview(value)} is not JSON data")


# ================================================================ reading
def _decode(buffer: Any, what: str) -> Graph:
    """Check everything, then build the Graph with views into ``buffer``."""
    try:
        header, data_start = _read_header(buffer, what)
        reader = _HeaderReader(header, what)
        tensors = reader.tensor_table(data_start, len(buffer))
        graph = reader.graph(lambda index: _materialize(buffer, data_start, tensors[index]))
    except TinyInferError:
        raise
    except Exception as exc:  # a hostile file must not surface as a bare library error
        raise ModelLoadError(f"{what} cannot be read as a .tinf model: {type(exc).__name__}: {exc}") from exc
    graph.validate()
    return graph


def _read_header(buffer: Any, what: str) -> tuple[dict[str, Any], int]:
    """The preamble checks and the JSON header; returns it and the data section's start."""
    size = len(buffer)
    if size == 0:
        raise ModelLoadError(f"{what} is empty, not a .tinf model")
    if size < PREAMBLE.size:
        start = bytes(buffer[:8])
        if MAGIC.startswith(start) or start.startswith(MAGIC[:4]):
            raise ModelLoadError(
                f"{what} is truncated: {size} bytes, less than the {PREAMBLE.size}-byte .tinf preamble"
            )
        raise ModelLoadError(f"{what} is not a .tinf model ({size} bytes, no .tinf signature)")
    magic, version, flags, header_length, checksum, reserved = PREAMBLE.unpack_from(buffer, 0)
    if magic != MAGIC:
        raise ModelLoadError(_bad_magic(magic, what))
    if version != FORMAT_VERSION:
        newer = " (written by a newer tinyinfer)" if version > FORMAT_VERSION else ""
        raise ModelLoadError(
            f"{what} is .tinf format version {version}{newer}; this tinyinfer reads version {FORMAT_VERSION}"
        )
    if flags != 0:
        raise ModelLoadError(f"{what} sets .tinf flags {flags:#x}, which this tinyinfer does not know")
    if reserved != 0:
        raise ModelLoadError(f"{what} is corrupt: the reserved preamble field is {reserved:#x}, not 0")
    header_end = PREAMBLE.size + header_length
    if header_end > size:
        raise ModelLoadError(
            f"{what} is truncated: its header should end at byte {header_end}, but the file has {size} bytes"
        )
    raw = bytes(buffer[PREAMBLE.size:header_end])
    if zlib.crc32(raw) != checksum:
        raise ModelLoadError(
            f"{what} is corrupt: the header's CRC-32 is {zlib.crc32(raw):#010x}, the preamble says {checksum:#010x}"
        )
    try:
        header = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ModelLoadError(f"{what} is corrupt: its header is not UTF-8 JSON ({exc})") from None
    if not isinstance(header, dict):
        raise ModelLoadError(f"{what} is corrupt: its header is a JSON {type(header).__name__}, not an object")
    return header, _align(header_end)


def _bad_magic(magic: bytes, what: str) -> str:
    if magic.startswith(MAGIC[:4]):
        return (
            f"{what} has a damaged .tinf signature {magic!r} (expected {MAGIC!r}); a copy in text mode, "
            f"which rewrites line endings, does this: copy .tinf files as binary"
        )
    return f"{what} is not a .tinf model: it starts with {magic!r}, not {MAGIC!r}"


def _reject_constant(name: str) -> None:
    raise ValueError(f"non-standard JSON constant {name}")


def _materialize(buffer: Any, data_start: int, tensor: tuple) -> np.ndarray:
    name, dtype, shape, offset, strings = tensor
    if strings is not None:
        array = np.empty(len(strings), dtype=object)
        array[:] = strings
        array = array.reshape(shape)
        array.flags.writeable = False
        return array
    count = math.prod(shape)
    return np.frombuffer(buffer, dtype=dtype, count=count, offset=data_start + offset).reshape(shape)


class _Check:
    """What a JSON field must hold, spelled for the error message when it does not.

    ``json.loads`` makes exactly ``int``, ``float``, ``str``, ``list``, ``dict``, ``bool`` and
    ``None``, never a subclass, so an exact type test is the whole check (and keeps ``true``
    from passing as the integer 1). ``condition``, when given, is a further test on a whole
    list of values of the right types (a minimum, a set of allowed strings).
    """

    def __init__(self, expected: str, *types: type, condition: Callable[[list], bool] | None = None):
        self.expected = expected
        self.types = frozenset(types)
        self.condition = condition

    def __call__(self, value: Any) -> bool:
        return type(value) in self.types and (self.condition is None or self.condition([value]))

    def all(self, values: Iterable[Any]) -> bool:
        """True when every value passes: one C-level sweep of ``type`` over the whole list."""
        values = values if isinstance(values, (list, tuple)) else list(values)
        return set(map(type, values)) <= self.types and (self.condition is None or self.condition(values))


def _non_negative(values: list) -> bool:
    return min(values, default=0) >= 0


def _special_floats_only(values: list) -> bool:
    return all(v in _SPECIAL_FLOATS for v in values if type(v) is str)


_INT = _Check("an integer", int)
_COUNT = _Check("a non-negative integer", int, condition=_non_negative)
_REAL = _Check("a number", int, float)
_STR = _Check("a string", str)
_LIST = _Check("a list", list)
_DICT = _Check("an object", dict)
_NUMBER = _Check('a number (or "nan", "inf", "-inf")', int, float, str, condition=_special_floats_only)
_DIM = _Check("an integer, a name or null", int, str, type(None))

_MISSING = object()  # a field the header leaves out
_UNDECODED = object()  # an attribute the column path leaves to the checked path
_TENSOR_FIELDS = operator.itemgetter("name", "dtype", "shape", "offset", "nbytes")
_NODE_FIELDS = operator.itemgetter("op_type", "inputs", "outputs", "domain", "name", "version", "attrs")


class _HeaderReader:
    """Turns the decoded header into a Graph, checking each field's type on the way.

    Checking field by field costs a Python call per value, and a large network has a few
    thousand nodes and tensors: that was most of the time of a load. So the two big tables,
    tensors and nodes, are first checked *by column* (all names at once, all offsets at
    once, ...), which runs at C speed; only a table that fails a column check is walked entry
    by entry, the slow way, to find and name the first bad field. A well-formed file never
    takes the slow path, and a damaged one gets the same message either way.
    """

    def __init__(self, header: dict[str, Any], what: str):
        self.header = header
        self.what = what
        self.tensor_count = 0  # set by tensor_table(), which must run first
        self.tensor_array: Callable[[int], np.ndarray] | None = None  # set by graph()

    def corrupt(self, message: str) -> ModelLoadError:
        return ModelLoadError(f"{self.what} is not a valid .tinf model: {message}")

    def field(self, obj: dict[str, Any], key: str, check: _Check, where: str) -> Any:
        value = obj.get(key, _MISSING)
        if value is _MISSING:
            raise self.corrupt(f"{where} has no '{key}'")
        if not check(value):
            raise self.mismatch(value, check, f"{where}: '{key}'")
        return value

    def expect(self, value: Any, check: _Check, where: str) -> Any:
        if not check(value):
            raise self.mismatch(value, check, where)
        return value

    def items(self, obj: dict[str, Any], key: str, check: _Check, where: str) -> list[Any]:
        values = self.field(obj, key, _LIST, where)
        if not check.all(values):
            index = next(i for i, v in enumerate(values) if not check(v))
            raise self.mismatch(values[index], check, f"{where}: '{key}'[{index}]")
        return values

    def mismatch(self, value: Any, check: _Check, where: str) -> ModelLoadError:
        return self.corrupt(f"{where} should be {check.expected}, found {_preview(value)}")

    # ------------------------------------------------------------ tensor table
    def tensor_table(self, data_start: int, size: int) -> list[tuple]:
        """(name, dtype, shape, offset, strings) per tensor, all checked against the file."""
        data_nbytes = self.field(self.header, "data_nbytes", _COUNT, "the header")
        if data_start + data_nbytes != size:
            state = "truncated" if data_start + data_nbytes > size else "followed by unexpected bytes"
            raise ModelLoadError(
                f"{self.what} is {state}: its tensor data should end at byte {data_start + data_nbytes}, "
                f"but the file has {size} bytes"
            )
        entries = self.items(self.header, "tensors", _DICT, "the header")
        tensors = _numeric_tensors(entries, data_nbytes)
        if tensors is None:
            tensors = [self.tensor(entry, i, data_nbytes) for i, entry in enumerate(entries)]
        self.check_overlap(tensors)
        self.tensor_count = len(tensors)
        return tensors

    def tensor(self, entry: dict[str, Any], index: int, data_nbytes: int) -> tuple:
        """One entry of the table, checked field by field (the slow path that names faults)."""
        name = self.field(entry, "name", _STR, f"tensor #{index}")
        where = f"tensor '{name}'"
        code = self.field(entry, "dtype", _INT, where)
        dtype = self.dtype(code, where)
        shape = tuple(self.items(entry, "shape", _COUNT, where))
        if len(shape) > MAX_RANK:
            raise self.corrupt(f"{where} has rank {len(shape)}; .tinf stores up to rank {MAX_RANK}")
        count = math.prod(shape)
        if code == _STRING_CODE:
            strings = self.items(entry, "strings", _STR, where)
            if len(strings) != count:
                raise self.corrupt(f"{where} of shape {list(shape)} holds {len(strings)} strings, not {count}")
            return name, dtype, shape, 0, strings
        offset = self.field(entry, "offset", _COUNT, where)
        nbytes = self.field(entry, "nbytes", _COUNT, where)
        if nbytes != count * dtype.itemsize:
            raise self.corrupt(
                f"{where} claims {nbytes} bytes, but shape {list(shape)} of {dtype} needs "
                f"{count} x {dtype.itemsize} = {count * dtype.itemsize}"
            )
        if offset % ALIGNMENT:
            raise self.corrupt(f"{where} starts at data offset {offset}, not a multiple of {ALIGNMENT}")
        if offset + nbytes > data_nbytes:
            raise self.corrupt(
                f"{where} spans data bytes [{offset}, {offset + nbytes}), beyond the {data_nbytes}-byte data section"
            )
        return name, _stored_dtype(dtype), shape, offset, None

    def check_overlap(self, tensors: list[tuple]) -> None:
        """No two tensors' bytes may overlap (every span is already inside the data section)."""
        blocks = [t for t in tensors if t[4] is None and _nbytes(t)]
        starts = np.array([t[3] for t in blocks], dtype=np.int64)
        ends = starts + np.array([_nbytes(t) for t in blocks], dtype=np.int64)
        order = np.argsort(starts, kind="stable")
        if not np.any(starts[order][1:] < ends[order][:-1]):
            return
        spans = sorted((t[3], t[3] + _nbytes(t), t[0]) for t in blocks)
        for (_, end, first), (start, _, second) in zip(spans, spans[1:]):
            if start < end:
                raise self.corrupt(f"the data of tensors '{first}' and '{second}' overlap")

    def dtype(self, code: int, where: str) -> np.dtype:
        try:
            return dtypes.from_onnx(code)
        except KeyError:
            raise self.corrupt(f"{where} has element type {code}, which is no known ONNX type code") from None

    # ------------------------------------------------------------ graph
    def graph(self, tensor: Callable[[int], np.ndarray]) -> Graph:
        header = self.header
        self.tensor_array = tensor
        graph = self.subgraph(header, "the header")
        opset = self.field(header, "opset", _DICT, "the header")
        graph.opset = {domain: self.expect(v, _COUNT, f"opset '{domain}'") for domain, v in opset.items()}
        graph.metadata = self.field(header, "metadata", _DICT, "the header")
        return graph

    def subgraph(self, entry: dict[str, Any], where: str) -> Graph:
        """The graph described by ``entry`` (the header itself, or a subgraph attribute)."""
        graph = Graph(name=self.field(entry, "name", _STR, where))
        graph.inputs = self.values(entry, "inputs", where)
        graph.outputs = self.values(entry, "outputs", where)
        graph.value_info = {value.name: value for value in self.values(entry, "value_info", where)}
        for index in self.items(entry, "initializers", _INT, where):
            array = self.tensor_ref(index, f"{where}: initializer list")
            name = self.header["tensors"][index]["name"]
            if name in graph.initializers:
                raise self.corrupt(f"{where}: two initializers are named '{name}'")
            graph.initializers[name] = array
        graph.nodes = self.nodes(self.items(entry, "nodes", _DICT, where))
        return graph

    def values(self, entry: dict[str, Any], key: str, where: str) -> list[Value]:
        entries = self.items(entry, key, _DICT, where)
        return [self.value(item, f"{key} #{i}") for i, item in enumerate(entries)]

    def value(self, entry: dict[str, Any], where: str) -> Value:
        name = self.field(entry, "name", _STR, where)
        where = f"value '{name}'"
        if "dtype" not in entry or "shape" not in entry:
            raise self.corrupt(f"{where} needs 'dtype' and 'shape' (null when unknown)")
        code, shape = entry["dtype"], entry["shape"]
        dtype = None if code is None else self.dtype(self.expect(code, _INT, f"{where}: 'dtype'"), where)
        if shape is not None:
            shape = tuple(self.items(entry, "shape", _DIM, where))
        kind = entry.get("kind", "tensor")
        if kind not in KINDS:
            raise self.corrupt(f"{where} has kind {_preview(kind)}; expected one of {', '.join(KINDS)}")
        return Value(name, dtype, shape, kind=kind)

    def nodes(self, entries: list[dict[str, Any]]) -> list[Node]:
        """The nodes, their fields checked by column when they can be, else node by node."""
        if not _node_columns_are_well_formed(entries):
            return [self.node(entry, index) for index, entry in enumerate(entries)]
        return [
            Node(op_type, inputs, outputs, self.attributes(attrs, f"node #{index} ({op_type})") if attrs else {},
                 domain, name, version)
            for index, (op_type, inputs, outputs, domain, name, version, attrs) in enumerate(map(_NODE_FIELDS, entries))
        ]

    def node(self, entry: dict[str, Any], index: int) -> Node:
        """One node, checked field by field (the slow path that names faults)."""
        op_type = self.field(entry, "op_type", _STR, f"node #{index}")
        where = f"node #{index} ({op_type})"
        node = Node(
            op_type=op_type,
            inputs=self.items(entry, "inputs", _STR, where),
            outputs=self.items(entry, "outputs", _STR, where),
            domain=self.field(entry, "domain", _STR, where),
            name=self.field(entry, "name", _STR, where),
            version=self.field(entry, "version", _COUNT, where),
        )
        node.attrs = self.attributes(self.field(entry, "attrs", _DICT, where), where)
        return node

    def attributes(self, attrs: dict[str, Any], where: str) -> dict[str, Any]:
        decoded = {}
        for name, encoded in attrs.items():
            value = _plain_attribute(encoded)
            if value is _UNDECODED:  # not one of the common kinds, or malformed
                value = self.attribute(encoded, f"{where}: attribute '{name}'")
            decoded[name] = value
        return decoded

    def attribute(self, encoded: Any, where: str) -> Any:
        if not isinstance(encoded, dict) or len(encoded) != 1:
            raise self.corrupt(f"{where} should be a one-key object {{type: value}}, found {_preview(encoded)}")
        (kind, value), = encoded.items()
        if kind == "none" and value is None:
            return None
        if kind == "int":
            return self.expect(value, _INT, where)
        if kind == "float":
            return float(_SPECIAL_FLOATS.get(self.expect(value, _NUMBER, where), value))
        if kind == "string":
            return self.expect(value, _STR, where)
        if kind == "bytes":
            try:
                return base64.b64decode(self.expect(value, _STR, where), validate=True)
            except binascii.Error:
                raise self.corrupt(f"{where} is not valid base64") from None
        if kind in ("ints", "floats", "strings", "tensors"):
            items = self.expect(value, _LIST, where)
            check = {"ints": _INT, "floats": _NUMBER, "strings": _STR, "tensors": _INT}[kind]
            items = [self.expect(v, check, f"{where}[{i}]") for i, v in enumerate(items)]
            if kind == "floats":
                return [float(_SPECIAL_FLOATS.get(v, v)) for v in items]
            if kind == "tensors":
                return [self.tensor_ref(i, where) for i in items]
            return items
        if kind == "tensor":
            return self.tensor_ref(self.expect(value, _INT, where), where)
        if kind == "graph":
            return self.subgraph(self.expect(value, _DICT, where), where)
        raise self.corrupt(f"{where} has unknown type {_preview(kind)} (or a value that does not fit it)")

    def tensor_ref(self, index: Any, where: str) -> np.ndarray:
        if not _INT(index) or not 0 <= index < self.tensor_count:
            raise self.corrupt(f"{where} refers to tensor #{index}, but the table has {self.tensor_count}")
        return self.tensor_array(index)


# ------------------------------------------------------------ column checks
def _numeric_tensors(entries: list[dict[str, Any]], data_nbytes: int) -> list[tuple] | None:
    """The tensor table checked column by column, or None if any check fails (or the table
    holds string tensors): then :meth:`_HeaderReader.tensor` walks it and names the fault."""
    try:
        names, codes, shapes, offsets, sizes = zip(*map(_TENSOR_FIELDS, entries))
    except (KeyError, ValueError):  # a missing field, or no tensors at all
        return None
    if not (_STR.all(names) and _INT.all(codes) and _LIST.all(shapes) and _COUNT.all(offsets)
            and _COUNT.all(sizes) and _COUNT.all(itertools.chain.from_iterable(shapes))):
        return None
    if max(map(len, shapes)) > MAX_RANK or _STRING_CODE in codes:
        return None
    stored = {}
    for code in set(codes):
        try:
            stored[code] = _stored_dtype(dtypes.from_onnx(code))
        except KeyError:
            return None
    counts = list(map(math.prod, shapes))
    needed = [count * stored[code].itemsize for count, code in zip(counts, codes)]
    if list(sizes) != needed or any(offset % ALIGNMENT for offset in offsets):
        return None
    if any(offset + nbytes > data_nbytes for offset, nbytes in zip(offsets, sizes)):
        return None
    return [(name, stored[code], tuple(shape), offset, None)
            for name, code, shape, offset in zip(names, codes, shapes, offsets)]


def _node_columns_are_well_formed(entries: list[dict[str, Any]]) -> bool:
    """True when every node has every field, of the right type (attributes are checked as
    they are decoded)."""
    if not entries:
        return True
    try:
        op_types, inputs, outputs, domains, names, versions, attrs = zip(*map(_NODE_FIELDS, entries))
    except KeyError:
        return False
    return (_STR.all(op_types + domains + names) and _COUNT.all(versions) and _LIST.all(inputs + outputs)
            and _STR.all(itertools.chain.from_iterable(inputs + outputs)) and _DICT.all(attrs))


def _plain_attribute(encoded: Any) -> Any:
    """The value of a well-formed attribute of a common kind (int, float, string, their lists,
    none); ``_UNDECODED`` for anything else, which :meth:`_HeaderReader.attribute` then
    decodes or refuses."""
    if type(encoded) is not dict or len(encoded) != 1:
        return _UNDECODED
    (kind, value), = encoded.items()
    if kind == "ints":
        return value if type(value) is list and _INT.all(value) else _UNDECODED
    if kind == "int":
        return value if type(value) is int else _UNDECODED
    if kind == "float":
        return float(value) if type(value) in (float, int) else _UNDECODED
    if kind == "string":
        return value if type(value) is str else _UNDECODED
    if kind == "floats":
        return [float(v) for v in value] if type(value) is list and _REAL.all(value) else _UNDECODED
    if kind == "strings":
        return value if type(value) is list and _STR.all(value) else _UNDECODED
    if kind == "none" and value is None:
        return None
    return _UNDECODED


# ================================================================ helpers
def _align(offset: int) -> int:
    return -(-offset // ALIGNMENT) * ALIGNMENT


def _stored_dtype(dtype: np.dtype) -> np.dtype:
    """The dtype as stored: little-endian for multi-byte NumPy numbers (native on x86 and ARM)."""
    dtype = np.dtype(dtype)
    return dtype.newbyteorder("<") if dtype.kind in "biufc" and dtype.itemsize > 1 else dtype


def _nbytes(tensor: tuple) -> int:
    _, dtype, shape, _, _ = tensor
    return math.prod(shape) * dtype.itemsize


def _preview(value: Any, width: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."
