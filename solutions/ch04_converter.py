"""Chapter 04 answers: Split from opset 12 to 13, packing aligned tensors, reading .tinf weights.

Same names and signatures as :mod:`exercises.ch04_converter`, whose docstrings explain each
task; the comments here only say why a line is the way it is.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import struct
import zlib
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from tinyinfer.ir import dtypes


# ---------------------------------------------------------------------------- exercise 1
def split_to_opset13(model: onnx.ModelProto) -> onnx.ModelProto:
    """Move each Split's ``split`` attribute to an int64 initializer input; import opset 13."""
    upgraded = onnx.ModelProto()
    upgraded.CopyFrom(model)  # the caller's model stays as it was
    graph = upgraded.graph
    taken = _names_in(graph)
    for node in graph.node:
        if node.op_type != "Split" or node.domain not in ("", "ai.onnx"):
            continue
        sizes = [attribute for attribute in node.attribute if attribute.name == "split"]
        if not sizes:
            continue  # equal parts: the same node means the same at opset 13
        # Output names are unique in a valid graph; node names may be empty or repeated.
        name = _unique(f"{node.output[0]}_split_sizes", taken)
        graph.initializer.append(numpy_helper.from_array(np.array(sizes[0].ints, dtype=np.int64), name))
        kept = [attribute for attribute in node.attribute if attribute.name != "split"]
        del node.attribute[:]
        node.attribute.extend(kept)
        del node.input[1:]  # Split-2 and Split-11 take one input; Split-1's second one is gone too
        node.input.append(name)
    for opset in upgraded.opset_import:
        if opset.domain in ("", "ai.onnx"):
            opset.version = 13
    upgraded.ir_version = max(upgraded.ir_version, 7)  # IR 7 is the first that allows opset 13
    return upgraded


def _names_in(graph: onnx.GraphProto) -> set[str]:
    names = {value.name for value in (*graph.input, *graph.output, *graph.value_info)}
    names |= {tensor.name for tensor in graph.initializer}
    for node in graph.node:
        names.update(node.input)
        names.update(node.output)
    return names


def _unique(stem: str, taken: set[str]) -> str:
    name, i = stem, 1
    while name in taken:
        name, i = f"{stem}_{i}", i + 1
    taken.add(name)
    return name


# ---------------------------------------------------------------------------- exercise 2
def align(offset: int, alignment: int = 64) -> int:
    """Round ``offset`` up to a multiple of ``alignment``."""
    return -(-offset // alignment) * alignment  # ceiling division without floats


def pack_tensors(arrays: dict[str, np.ndarray], alignment: int = 64) -> tuple[list[dict[str, Any]], bytes]:
    """Each array's little-endian C-order bytes at the first aligned offset after the previous one."""
    entries: list[dict[str, Any]] = []
    blob = bytearray()
    for name, array in arrays.items():
        array = np.asarray(array)
        stored = array.dtype.newbyteorder("<") if array.dtype.itemsize > 1 else array.dtype
        data = np.ascontiguousarray(array, dtype=stored)  # converts byte order and layout if needed
        offset = align(len(blob), alignment)
        blob.extend(bytes(offset - len(blob)))  # zero padding up to the boundary
        blob.extend(data.tobytes())
        entries.append({
            "name": name,
            "dtype": stored.str,
            "shape": [int(d) for d in array.shape],
            "offset": offset,
            "nbytes": int(data.nbytes),
        })
    return entries, bytes(blob)


# ---------------------------------------------------------------------------- exercise 3
MAGIC = b"TINF\x00\r\n\x1a"
PREAMBLE = struct.Struct("<8sIIQII")  # magic, version, flags, header length, CRC-32, reserved


def read_tinf_weights(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Check the preamble, header and tensor table, then view each initializer in a map."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < PREAMBLE.size:  # mmap refuses an empty file, so check before mapping
            raise ValueError(f"'{path}' has {size} bytes, fewer than the {PREAMBLE.size}-byte .tinf preamble")
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)  # stays valid after close
    header, data_start = _read_header(mapped, str(path))
    data_nbytes = header["data_nbytes"]
    if data_start + data_nbytes != size:
        raise ValueError(f"'{path}' should have {data_start + data_nbytes} bytes, not {size} (truncated or extended)")
    # Every check first, every view after: no view is ever made from a file that lies.
    plans = [_checked_tensor(header["tensors"][index], data_start, data_nbytes) for index in header["initializers"]]
    # np.frombuffer on a read-only map gives read-only arrays that keep the map alive.
    return {
        name: np.frombuffer(mapped, dtype=dtype, count=count, offset=start).reshape(shape)
        for name, dtype, shape, start, count in plans
    }


def _read_header(mapped: mmap.mmap, path: str) -> tuple[dict[str, Any], int]:
    """The checked preamble and JSON header; returns the header and where the data starts."""
    magic, version, flags, header_length, checksum, reserved = PREAMBLE.unpack_from(mapped, 0)
    if magic != MAGIC:
        raise ValueError(f"'{path}' starts with {magic!r}, not the .tinf magic {MAGIC!r}")
    if version != 1:
        raise ValueError(f"'{path}' is .tinf version {version}; this reader knows version 1")
    if flags or reserved:
        raise ValueError(f"'{path}' sets flags {flags:#x} / reserved {reserved:#x}; both must be 0")
    header_end = PREAMBLE.size + header_length
    if header_end > len(mapped):
        raise ValueError(f"'{path}' is truncated: its header ends at byte {header_end}, the file has {len(mapped)}")
    raw = mapped[PREAMBLE.size:header_end]
    if zlib.crc32(raw) != checksum:
        raise ValueError(f"'{path}': the header's CRC-32 is {zlib.crc32(raw):#x}, the preamble says {checksum:#x}")
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"'{path}': the header is not UTF-8 JSON ({exc})") from None
    return header, align(header_end)


def _checked_tensor(tensor: dict[str, Any], data_start: int, data_nbytes: int) -> tuple:
    """(name, dtype, shape, file offset, element count) of a table entry that passed every check."""
    name = tensor["name"]
    try:
        dtype = np.dtype(dtypes.from_onnx(tensor["dtype"]))
    except KeyError:
        raise ValueError(f"tensor '{name}' has element type {tensor['dtype']}, no ONNX type code") from None
    if dtype.itemsize > 1:
        dtype = dtype.newbyteorder("<")  # stored little-endian, whatever machine wrote it
    shape, offset, nbytes = tuple(tensor["shape"]), tensor["offset"], tensor["nbytes"]
    count = math.prod(shape)
    needed = count * dtype.itemsize
    if nbytes != needed:
        raise ValueError(f"tensor '{name}' claims {nbytes} bytes; {list(shape)} of {dtype} needs {needed}")
    if offset % 64:
        raise ValueError(f"tensor '{name}' starts at data offset {offset}, not a multiple of 64")
    if offset < 0 or offset + nbytes > data_nbytes:
        raise ValueError(f"tensor '{name}' spans [{offset}, {offset + nbytes}), outside the {data_nbytes}-byte data")
    return name, dtype, shape, data_start + offset, count
