"""Graded tests of chapter 04's exercises (exercises/ch04_converter.py).

    pytest tests/exercises/test_ch04_converter.py --impl=exercises -m ex1   # split_to_opset13
    pytest tests/exercises/test_ch04_converter.py --impl=exercises -m ex2   # align, pack_tensors
    pytest tests/exercises/test_ch04_converter.py --impl=exercises -m ex3   # read_tinf_weights

(``-m ch04_ex1`` ... picks the same tests from the whole of tests/exercises.)

Oracles: for the Split upgrade, ``onnx.reference`` running the original opset-12 model against
ONNX Runtime running the converted one, ``onnx.checker``, and the original nodes themselves;
for packing, ``np.frombuffer`` reading each tensor back and the alignment arithmetic redone
here; for reading ``.tinf``, the arrays the test wrote (with tinyinfer's writer) and files the
test damages byte by byte. None of them reads the solutions.
"""

from __future__ import annotations

import json
import math
import mmap
import struct
import zlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from tinyinfer.ir import Graph, Node
from tinyinfer.ir.serialize import save_tinf


def ex(number: int):
    """Both marks of an exercise: ``ex<n>`` (per file) and ``ch04_ex<n>`` (across chapters)."""

    def mark(test):
        return getattr(pytest.mark, f"ch04_ex{number}")(getattr(pytest.mark, f"ex{number}")(test))

    return mark


# ============================================================================ exercise 1
def opset12_model(name: str) -> onnx.ModelProto:
    """A small opset-12 model around Split nodes; input ``x`` is float [N, 6, 4].

    Besides Split, the models use only ops whose meaning did not change from opset 12 to 13
    (Relu, Mul, Sigmoid, Concat: their version 13 only added bfloat16).
    """
    def out(tensor, shape):
        return helper.make_tensor_value_info(tensor, TensorProto.FLOAT, shape)

    if name == "uneven":
        nodes = [
            helper.make_node("Split", ["x"], ["a", "b", "c"], name="split", axis=1, split=[1, 2, 3]),
            helper.make_node("Relu", ["b"], ["rb"], name="relu"),
        ]
        outputs = [out("a", ["N", 1, 4]), out("rb", ["N", 2, 4]), out("c", ["N", 3, 4])]
    elif name == "negative_axis":
        nodes = [
            helper.make_node("Split", ["x"], ["p", "q"], name="split_last", axis=-1, split=[3, 1]),
            helper.make_node("Mul", ["p", "q"], ["y"], name="gate"),
        ]
        outputs = [out("y", ["N", 6, 3]), out("q", ["N", 6, 1])]
    elif name == "equal_parts":
        nodes = [
            helper.make_node("Split", ["x"], ["a", "b", "c"], name="thirds", axis=1),
            helper.make_node("Concat", ["c", "a", "b"], ["y"], name="rotate", axis=1),
        ]
        outputs = [out("y", ["N", 6, 4])]
    elif name == "several":  # unnamed nodes, a Split of a Split, and sizes with a zero
        nodes = [
            helper.make_node("Split", ["x"], ["u", "v"], axis=1, split=[4, 2]),
            helper.make_node("Split", ["u"], ["u1", "u2", "u3"], axis=2, split=[1, 3, 0]),
            helper.make_node("Sigmoid", ["u2"], ["s"]),
            helper.make_node("Split", ["v"], ["v1", "v2"], axis=1),
            helper.make_node("Split", ["s"], ["s1", "s2"], axis=1, split=[1, 3]),
        ]
        outputs = [out("u1", ["N", 4, 1]), out("u3", ["N", 4, 0]), out("s1", ["N", 1, 3]),
                   out("s2", ["N", 3, 3]), out("v1", ["N", 1, 4]), out("v2", ["N", 1, 4])]
    else:
        raise KeyError(name)
    graph = helper.make_graph(nodes, name, [out("x", ["N", 6, 4])], outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)])
    model.ir_version = 7
    onnx.checker.check_model(model, full_check=True)
    return model


MODELS = ("uneven", "negative_axis", "equal_parts", "several")


def split_sizes(model: onnx.ModelProto, tensor: str) -> np.ndarray:
    """The value of a Split's ``split`` input: an initializer or a Constant node's output."""
    for initializer in model.graph.initializer:
        if initializer.name == tensor:
            return numpy_helper.to_array(initializer)
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output[0] == tensor:
            (attribute,) = node.attribute
            if attribute.name == "value":
                return numpy_helper.to_array(attribute.t)
            if attribute.name == "value_ints":
                return np.array(attribute.ints, dtype=np.int64)
    raise AssertionError(f"'{tensor}' is neither an initializer nor a Constant's output")


def default_opset(model: onnx.ModelProto) -> int:
    (version,) = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    return version


@ex(1)
@pytest.mark.parametrize("name", MODELS)
def test_split_converted_runs_like_the_original(impl, name):
    original = opset12_model(name)
    converted = impl.split_to_opset13(original)
    onnx.checker.check_model(converted, full_check=True)
    assert default_opset(converted) == 13
    assert converted.ir_version >= 7
    x = np.random.default_rng(4).standard_normal((3, 6, 4)).astype(np.float32)
    expected = ReferenceEvaluator(original).run(None, {"x": x})
    session = ort.InferenceSession(converted.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {"x": x})
    assert [o.name for o in session.get_outputs()] == [o.name for o in original.graph.output]
    for have, want in zip(got, expected):
        # Split, Concat, Relu and Mul give exact results; Sigmoid's exp differs between
        # ONNX Runtime and NumPy by an ulp or two of float32 (relative 1e-7).
        np.testing.assert_allclose(have, want, rtol=1e-6, atol=0)


@ex(1)
@pytest.mark.parametrize("name", MODELS)
def test_split_sizes_become_an_int64_input(impl, name):
    original = opset12_model(name)
    converted = impl.split_to_opset13(original)
    old_splits = [n for n in original.graph.node if n.op_type == "Split"]
    new_splits = [n for n in converted.graph.node if n.op_type == "Split"]
    assert len(new_splits) == len(old_splits)
    for old, new in zip(old_splits, new_splits):
        assert list(new.output) == list(old.output) and new.name == old.name
        assert new.input[0] == old.input[0]
        attributes = {a.name: a for a in new.attribute}
        assert "split" not in attributes, f"Split producing {list(new.output)} still has a 'split' attribute"
        assert attributes["axis"] == {a.name: a for a in old.attribute}["axis"]
        sizes = [list(a.ints) for a in old.attribute if a.name == "split"]
        if sizes:
            assert len(new.input) == 2, f"Split producing {list(new.output)} needs the sizes as its second input"
            value = split_sizes(converted, new.input[1])
            assert value.dtype == np.int64 and value.ndim == 1
            assert value.tolist() == sizes[0]


@ex(1)
@pytest.mark.parametrize("name", MODELS)
def test_split_upgrade_leaves_other_nodes_alone(impl, name):
    original = opset12_model(name)
    snapshot = original.SerializeToString()
    converted = impl.split_to_opset13(original)
    assert original.SerializeToString() == snapshot, "the argument model was modified; work on a copy"
    original_tensors = {out for node in original.graph.node for out in node.output}
    others_before = [n for n in original.graph.node if n.op_type != "Split"]
    # Constants added for the sizes write new names; every other node must be the same node.
    others_after = [n for n in converted.graph.node if n.op_type != "Split" and set(n.output) <= original_tensors]
    assert [n.SerializeToString() for n in others_after] == [n.SerializeToString() for n in others_before]
    assert [n.output[0] for n in converted.graph.node if n.output[0] in original_tensors] == [
        n.output[0] for n in original.graph.node
    ], "node order changed"
    assert list(converted.graph.input) == list(original.graph.input)
    assert list(converted.graph.output) == list(original.graph.output)


# ============================================================================ exercise 2
def aligned(offset: int, alignment: int) -> int:
    return math.ceil(offset / alignment) * alignment if offset else 0


def sample_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "conv.weight": rng.standard_normal((8, 3, 3, 3)).astype(np.float32),
        "conv.bias": rng.standard_normal(8).astype(np.float32),
        "scale_fp16": rng.standard_normal((5, 3)).astype(np.float16),
        "step": np.array(7, dtype=np.int64),  # 0-d
        "mask": rng.random(13) > 0.5,  # bool, 13 bytes: the next tensor must be padded
        "codes": rng.integers(-128, 128, size=(3, 7), dtype=np.int8),
        "empty": np.zeros((0, 5), dtype=np.float32),
        "doubles": rng.standard_normal((2, 2)),
    }


def read_back(blob: bytes, entry: dict) -> np.ndarray:
    count = math.prod(entry["shape"])
    return np.frombuffer(blob, dtype=entry["dtype"], count=count, offset=entry["offset"]).reshape(entry["shape"])


@ex(2)
def test_align_examples(impl):
    assert impl.align(0) == 0
    assert impl.align(1) == 64
    assert impl.align(64) == 64
    assert impl.align(65) == 128
    assert impl.align(100, 16) == 112
    assert impl.align(5, 1) == 5


@ex(2)
@pytest.mark.parametrize("alignment", [1, 2, 4, 16, 64, 4096])
def test_align_is_the_next_multiple(impl, alignment):
    for offset in list(range(0, 300)) + [10**12 + 3, 2**40]:
        result = impl.align(offset, alignment)
        assert isinstance(result, int)
        assert result % alignment == 0 and offset <= result < offset + alignment, (offset, alignment, result)


@ex(2)
def test_pack_reads_back_every_tensor(impl):
    arrays = sample_arrays()
    entries, blob = impl.pack_tensors(arrays)
    assert isinstance(blob, bytes)
    assert [e["name"] for e in entries] == list(arrays)
    for entry, (name, array) in zip(entries, arrays.items()):
        assert entry["shape"] == list(array.shape), name
        assert entry["nbytes"] == array.nbytes, name
        assert np.dtype(entry["dtype"]) == array.dtype, name
        back = read_back(blob, entry)
        np.testing.assert_array_equal(back, array, err_msg=name)


@ex(2)
@pytest.mark.parametrize("alignment", [64, 16])
def test_pack_offsets_are_aligned_tight_and_disjoint(impl, alignment):
    entries, blob = impl.pack_tensors(sample_arrays(1), alignment=alignment)
    end = 0
    for entry in entries:
        assert entry["offset"] % alignment == 0, entry
        assert entry["offset"] == aligned(end, alignment), f"{entry['name']} should start at the first aligned offset"
        assert blob[end:entry["offset"]] == bytes(entry["offset"] - end), "padding must be zero bytes"
        end = entry["offset"] + entry["nbytes"]
    assert len(blob) == end, "the blob must end where the last tensor ends"
    spans = sorted((e["offset"], e["offset"] + e["nbytes"]) for e in entries if e["nbytes"])
    for (_, first_end), (second_start, _) in zip(spans, spans[1:]):
        assert first_end <= second_start, "two tensors overlap"


@ex(2)
def test_pack_stores_c_order_little_endian(impl):
    base = np.arange(12, dtype=np.float32).reshape(3, 4)
    arrays = {
        "transposed": base.T,  # not C-contiguous
        "big_endian": np.arange(6, dtype=">i4").reshape(2, 3),
        "strided": np.arange(20, dtype=np.int16)[::3],
    }
    entries, blob = impl.pack_tensors(arrays)
    for entry, (name, array) in zip(entries, arrays.items()):
        assert np.dtype(entry["dtype"]).byteorder in "<|=" and np.dtype(entry["dtype"]).str[0] in "<|", name
        np.testing.assert_array_equal(read_back(blob, entry), array, err_msg=name)
    # The raw bytes, independently of NumPy's reading: C order, little-endian.
    first = entries[0]
    raw = blob[first["offset"]:first["offset"] + first["nbytes"]]
    assert raw == struct.pack("<12f", *base.T.reshape(-1).tolist())


@ex(2)
def test_pack_nothing(impl):
    entries, blob = impl.pack_tensors({})
    assert list(entries) == [] and blob == b""


# ============================================================================ exercise 3
def weights() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {
        "conv.weight": rng.standard_normal((16, 3, 3, 3)).astype(np.float32),
        "conv.bias": rng.standard_normal(16).astype(np.float32),
        "table": rng.integers(-5, 5, size=(4, 3)).astype(np.int64),
        "half": rng.standard_normal(7).astype(np.float16),
        "flags": np.array([True, False, True]),
        "scalar": np.array(0.5, dtype=np.float64),
        "nothing": np.zeros((0, 3), dtype=np.float32),
        "last": rng.standard_normal((2, 5)).astype(np.float32),
    }


@pytest.fixture
def tinf_file(tmp_path):
    """A .tinf file written by tinyinfer: the weights above, plus a Constant whose tensor
    attribute is stored in the same table but is no initializer."""
    graph = Graph(
        nodes=[Node("Constant", [], ["c"], {"value": np.arange(6, dtype=np.float32)}, name="const", version=13)],
        initializers=weights(),
        opset={"": 13},
        name="weights",
    )
    path = tmp_path / "weights.tinf"
    save_tinf(graph, path)
    return path


@ex(3)
def test_read_returns_the_initializers(impl, tinf_file):
    expected = weights()
    got = impl.read_tinf_weights(tinf_file)
    assert list(got) == list(expected), "one entry per initializer, in the header's order (no attribute tensors)"
    for name, array in expected.items():
        assert got[name].dtype == array.dtype, name
        assert got[name].shape == array.shape, name
        np.testing.assert_array_equal(got[name], array, err_msg=name)


@ex(3)
def test_read_makes_read_only_aligned_views(impl, tinf_file):
    got = impl.read_tinf_weights(tinf_file)
    for name, array in got.items():
        assert not array.flags.owndata, f"'{name}' owns its data: it was copied, not viewed"
        assert not array.flags.writeable, f"'{name}' is writeable; a mapped model must be read-only"
        assert backed_by_a_map(array), f"'{name}' is not a view of a memory map of the file"
        if array.size:
            assert array.ctypes.data % 64 == 0, f"'{name}' is not 64-byte aligned in memory"


def backed_by_a_map(array: np.ndarray) -> bool:
    """True when the chain of ``.base`` objects ends at an ``mmap`` (np.memmap counts too)."""
    owner = array
    while isinstance(owner, np.ndarray) and owner.base is not None:
        owner = owner.base
    if isinstance(owner, memoryview):
        owner = owner.obj
    return isinstance(owner, mmap.mmap)


@ex(3)
def test_read_a_real_model(impl, tmp_path):
    import tinyinfer as ti
    from tinyinfer.models import load_light_model

    model = load_light_model("squeezenet")
    path = tmp_path / "squeezenet.tinf"
    ti.save(ti.load(model), path)
    expected = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    got = impl.read_tinf_weights(path)
    assert set(got) == set(expected)
    for name, array in expected.items():
        np.testing.assert_array_equal(got[name], array, err_msg=name)


def with_header(data: bytes, text: bytes) -> bytes:
    """The file with ``text`` as its header and everything else consistent (header length,
    CRC-32, padding, the same data section), so only the later checks can catch a lie."""
    _, version, flags, length, _, reserved = struct.unpack_from("<8sIIQII", data, 0)
    data_section = data[aligned(32 + length, 64):]
    preamble = struct.pack("<8sIIQII", b"TINF\x00\r\n\x1a", version, flags, len(text), zlib.crc32(text), reserved)
    return preamble + text + bytes(aligned(32 + len(text), 64) - 32 - len(text)) + data_section


def rewrite_header(data: bytes, change) -> bytes:
    """The file with its JSON header changed in place by ``change(header)``."""
    length = struct.unpack_from("<Q", data, 16)[0]
    header = json.loads(data[32:32 + length])
    change(header)
    return with_header(data, json.dumps(header).encode())


def patch(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    return data[:offset] + struct.pack(fmt, value) + data[offset + struct.calcsize(fmt):]


def tensor_entry(header: dict, name: str) -> dict:
    return next(t for t in header["tensors"] if t["name"] == name)


def push_beyond_the_end(header: dict) -> None:
    entry = tensor_entry(header, "last")
    entry["offset"] = aligned(header["data_nbytes"] - entry["nbytes"] + 1, 64)


def misalign(header: dict) -> None:
    tensor_entry(header, "conv.bias")["offset"] += 4


def wrong_nbytes(header: dict) -> None:
    tensor_entry(header, "table")["nbytes"] -= 8


DAMAGE = {
    "empty file": lambda d: b"",
    "shorter than the preamble": lambda d: d[:20],
    "wrong magic": lambda d: b"ONNX" + d[4:],
    "copied in text mode": lambda d: d.replace(b"\r\n", b"\n"),
    "format version 2": lambda d: patch(d, 8, "<I", 2),
    "unknown flags": lambda d: patch(d, 12, "<I", 1),
    "reserved field set": lambda d: patch(d, 28, "<I", 5),
    "header longer than the file": lambda d: patch(d, 16, "<Q", len(d)),
    "header bytes changed (CRC)": lambda d: d.replace(b'"name":"weights"', b'"name":"Weights"', 1),  # still JSON
    "truncated data": lambda d: d[:-8],
    "bytes appended": lambda d: d + bytes(64),
    "header not JSON": lambda d: with_header(d, b"{'name': 'weights'}"),
    "tensor offset not aligned": lambda d: rewrite_header(d, misalign),
    "tensor beyond the data": lambda d: rewrite_header(d, push_beyond_the_end),
    "nbytes not elements x itemsize": lambda d: rewrite_header(d, wrong_nbytes),
}


@ex(3)
@pytest.mark.parametrize("damage", list(DAMAGE))
def test_read_rejects_a_damaged_file(impl, tinf_file, tmp_path, damage):
    data = tinf_file.read_bytes()
    broken = DAMAGE[damage](data)
    assert broken != data
    path = tmp_path / "broken.tinf"
    path.write_bytes(broken)
    with pytest.raises(ValueError) as error:
        impl.read_tinf_weights(path)
    assert str(error.value), "say what is wrong"


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damage_is_real(tinf_file, damage):
    """Every damaged file is one tinyinfer's own reader refuses too (not graded: no ``impl``)."""
    from tinyinfer.errors import ModelLoadError
    from tinyinfer.ir.serialize import load_tinf_bytes

    data = tinf_file.read_bytes()
    load_tinf_bytes(data)  # the undamaged file reads
    with pytest.raises(ModelLoadError):
        load_tinf_bytes(DAMAGE[damage](data))
