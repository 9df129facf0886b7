"""Chapter 04 exercises: a converter's two jobs, upgrading a model and laying out its weights.

1. :func:`split_to_opset13` — upgrade the Split nodes of an opset-12 ONNX model to opset 13,
   where the piece sizes moved from an attribute to an input: the kind of rewrite
   ``onnx.version_converter`` does for every operator.
2. :func:`align` and :func:`pack_tensors` — lay tensors out in one byte buffer, each on a
   64-byte boundary, the way a ``.tinf`` file stores its weights.
3. :func:`read_tinf_weights` — read the weights of a ``.tinf`` file back as zero-copy views of
   a memory map, checking everything the file says before trusting it.

Replace each ``raise NotImplementedError`` with your code, then grade it:

    pytest tests/exercises/test_ch04_converter.py --impl=exercises -m ex1   # or ex2, ex3
    pytest tests/exercises --impl=exercises -m ch04_ex1                     # the same, by chapter mark

The graded tests run your converted models in ONNX Runtime against ``onnx.reference`` on the
original, read your packed tensors back with ``np.frombuffer``, and compare the weights you
read with the arrays the test wrote; they never look at the solution file.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import onnx


# ---------------------------------------------------------------------------- exercise 1
def split_to_opset13(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return a copy of an opset-12 ``model`` with every Split node in its opset-13 form.

    Up to opset 12 the sizes of the pieces are an attribute, ``split=[2, 3]``; from opset 13
    on they are an optional second *input*, a 1-D int64 tensor, so that a graph can compute
    them at run time. An opset-13 runtime does not read the attribute any more: a model that
    only changes its opset import silently loses its piece sizes (the checker rejects it).

    For every Split node of the main graph (domain ``""`` or ``"ai.onnx"``):

    * if it has a ``split`` attribute, remove the attribute and pass the same sizes as the
      node's second input: add an int64 initializer (``onnx.numpy_helper.from_array``) or a
      ``Constant`` node before the Split, under a name no other tensor of the graph uses
      (several Splits may exist, and a node's ``name`` may be empty);
    * keep ``axis`` and every other attribute, the node's name, inputs and outputs;
    * a Split without ``split`` (equal parts) needs nothing: leave it as it is.

    Then set the version of the default-domain opset import (``""`` or ``"ai.onnx"``) to 13,
    and ``ir_version`` to at least 7 (the IR version that introduced opset 13). Leave every
    other node untouched and keep the node order (a Constant you add goes before its Split).
    Do not modify ``model`` itself: copy it first (``copy = onnx.ModelProto();
    copy.CopyFrom(model)``). You may assume the model's other operators mean the same at opset
    12 and 13 (the graded models use such ops only) and that it has no subgraphs.

    Example::

        # opset 12:  a, b = Split(x, axis=1, split=[2, 3])
        # opset 13:  a, b = Split(x, sizes, axis=1)      with initializer sizes = int64 [2, 3]

    ``onnx.checker.check_model`` must accept the result and ONNX Runtime must compute the same
    outputs from it as ``onnx.reference`` computes from the original.
    """
    raise NotImplementedError("exercise: split_to_opset13 (chapter 04, exercise 1)")


# ---------------------------------------------------------------------------- exercise 2
def align(offset: int, alignment: int = 64) -> int:
    """The smallest multiple of ``alignment`` that is ``>= offset`` (``offset >= 0``).

    Examples: ``align(0) == 0``, ``align(1) == 64``, ``align(64) == 64``, ``align(65) == 128``,
    ``align(100, 16) == 112``. One line of integer arithmetic, no loop and no float.
    """
    raise NotImplementedError("exercise: align (chapter 04, exercise 2)")


def pack_tensors(arrays: dict[str, np.ndarray], alignment: int = 64) -> tuple[list[dict[str, Any]], bytes]:
    """Lay ``arrays`` out in one blob of bytes, each starting at a multiple of ``alignment``.

    This is how ``.tinf`` (and, with 16 bytes, TFLite) stores weights: a loader can map the
    file and make each weight a NumPy view at ``data_start + offset`` without copying, and a
    kernel may use aligned vector loads on every weight.

    Place the tensors in the order of the dict. Tensor ``i`` starts at
    ``offset_i = align(end_{i-1}, alignment)`` (the first at 0), where ``end_{i-1}`` is where
    the previous tensor's bytes stop; the gap between tensors is zero bytes, and the blob ends
    exactly where the last tensor ends (an empty dict gives an empty blob). Store each array's
    elements in C order (row-major) and little-endian, whatever the array's own layout and
    byte order (``np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<"))`` for multi-byte
    types; one-byte types have no byte order).

    Return ``(entries, blob)``: ``blob`` is ``bytes``; ``entries`` is a list with one dict per
    tensor, in the same order, with the keys

        "name"    the dict key
        "dtype"   the stored dtype as NumPy spells it, ``np.dtype(...).str``: "<f4", "|b1", "<i8"
        "shape"   list of ints (``[]`` for a 0-d array)
        "offset"  where the tensor starts in ``blob``
        "nbytes"  its size in bytes (0 for an empty array)

    Example: ``{"w": float32 [2, 3], "b": int64 [3]}`` gives ``w`` at offset 0 with 24 bytes,
    ``b`` at offset 64 with 24 bytes, and a blob of 88 bytes (40 zeros between them).
    Anyone can read a tensor back with
    ``np.frombuffer(blob, e["dtype"], count=prod(e["shape"]), offset=e["offset"]).reshape(e["shape"])``.
    """
    raise NotImplementedError("exercise: pack_tensors (chapter 04, exercise 2)")


# ---------------------------------------------------------------------------- exercise 3
def read_tinf_weights(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The initializers of a ``.tinf`` file as read-only NumPy views of a memory map of it.

    The layout is documented at the top of ``tinyinfer/ir/serialize.py`` (all integers
    little-endian):

        offset  size  field
        0       8     magic b"TINF\\x00\\r\\n\\x1a"
        8       4     format version, uint32 (must be 1)
        12      4     flags, uint32 (must be 0)
        16      8     header length H, uint64
        24      4     CRC-32 of the header bytes (zlib.crc32), uint32
        28      4     reserved (must be 0)
        32      H     header: UTF-8 JSON
        D = the first multiple of 64 at or after 32 + H: the tensor data starts here

    ``struct.unpack_from("<8sIIQII", buffer, 0)`` reads the 32-byte preamble. In the header,
    ``header["tensors"]`` lists every stored tensor as ``{"name", "dtype", "shape", "offset",
    "nbytes"}`` (``dtype`` is an ONNX element-type code: turn it into a NumPy dtype with
    ``tinyinfer.ir.dtypes.from_onnx(code)``, stored little-endian), ``header["initializers"]``
    holds the indices of the tensors that are initializers, and ``header["data_nbytes"]`` the
    size of the data section, so the file is exactly ``D + data_nbytes`` bytes long. Tensor
    ``t`` occupies bytes ``[D + t["offset"], D + t["offset"] + t["nbytes"])``. (String tensors,
    ``dtype`` 8, hold their values in the header under ``"strings"``; the graded files have
    none.)

    Read the file the zero-copy way: ``mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)``,
    then ``np.frombuffer(mapped, dtype, count, offset)`` for each initializer. The arrays are
    views (``arr.flags.owndata`` is False), read-only, and 64-byte aligned in memory, because
    a map starts on a page boundary and every ``offset`` is a multiple of 64.

    A file can be truncated, damaged or hostile, and a view made from a lie reads the wrong
    bytes (or crashes later). So check, *before* making any view, and raise ``ValueError``
    with a message that says what is wrong when:

    * the file is shorter than the 32-byte preamble, or the magic is not exactly the 8 bytes
      above (a copy in text mode turns ``\\r\\n`` into ``\\n``: the magic catches that);
    * the version is not 1, or flags or reserved are not 0;
    * the header does not fit in the file, its CRC-32 differs from the preamble's, or it is
      not UTF-8 JSON;
    * the file size is not ``D + data_nbytes`` (truncated, or bytes appended);
    * a tensor's ``nbytes`` is not (number of elements) x (item size), its ``offset`` is not a
      multiple of 64, or it does not lie inside the data section.

    Return ``{name: array}`` for the initializers, in the header's order.
    """
    raise NotImplementedError("exercise: read_tinf_weights (chapter 04, exercise 3)")
