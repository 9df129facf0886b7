"""Specification of the native ``.tinf`` format: round trips, zero-copy loading, robustness.

The tests read the byte layout with their own ``struct`` calls, following the table in
``tinyinfer/ir/serialize.py``, so the documented layout is checked, not just the code's
agreement with itself. The ONNX models the graphs come from are the oracle for round trips,
and ``InferenceSession`` on the ``.onnx`` file is the oracle for outputs (bit-identical:
the same ops run on the same weights, so not even rounding may differ).
"""

from __future__ import annotations

import json
import math
import mmap
import os
import random
import struct
import time
import zlib

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import tinyinfer as ti
from tinyinfer import ops
from tinyinfer.errors import InvalidAttributeError, InvalidGraphError, ModelLoadError, TinyInferError
from tinyinfer.frontend import load_onnx
from tinyinfer.ir import Graph, Node, Value, dtypes, serialize
from tinyinfer.ir.serialize import (
    MAGIC,
    is_tinf,
    load_tinf,
    load_tinf_bytes,
    read_tinf_header,
    save_tinf,
    to_tinf_bytes,
)
from tinyinfer.models import load_light_model

# The documented preamble: magic, version, flags, header length, header CRC-32, reserved.
PREAMBLE = struct.Struct("<8sIIQII")


# ---------------------------------------------------------------------------- models
def attribute_model() -> onnx.ModelProto:
    """One node of a made-up op carrying every attribute type, and symbolic dims."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "C", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", None, 4])
    t = helper.make_tensor_value_info("t", TensorProto.FLOAT, None)
    node = helper.make_node(
        "Everything",
        ["x"],
        ["t"],
        name="every",
        domain="test.tinf",
        i=-7,
        f=0.1,
        f_inf=float("inf"),
        f_neg_inf=float("-inf"),
        f_nan=float("nan"),
        s="héllo",
        raw=b"\xff\x00\xfe",
        ints=[1, -2, 3],
        floats=[0.5, -1e-30, 3.0],
        strings=["a", "bé", ""],
        tensor=numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3), "tensor"),
        tensors=[
            numpy_helper.from_array(np.array([5, -6], dtype=np.int64), "ta"),
            numpy_helper.from_array(np.array([[True], [False]]), "tb"),
        ],
    )
    node.attribute.append(helper.make_attribute("empty", [], attr_type=onnx.AttributeProto.INTS))
    relu = helper.make_node("Relu", ["t"], ["y"], name="relu")
    graph = helper.make_graph([node, relu], "attributes", [x], [y], value_info=[t])
    return helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("test.tinf", 1)],
        producer_name="tests",
    )


def typed_model() -> onnx.ModelProto:
    """y = Where(mask, Gather((x + f16) * bf16, idx, axis=1), Constant 0): four weight dtypes."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])
    weights = [
        numpy_helper.from_array(np.array([0.5, -1.25, 2.0, 1e-3], dtype=np.float16), "half"),
        numpy_helper.from_array(np.array([1.5, -2.0, 0.375, 3.0], dtype=ml_dtypes.bfloat16), "brain"),
        numpy_helper.from_array(np.array([3, 0, 2], dtype=np.int64), "idx"),
        numpy_helper.from_array(np.array([True, False, True]), "mask"),
    ]
    nodes = [
        helper.make_node("Cast", ["half"], ["half32"], to=TensorProto.FLOAT, name="cast_half"),
        helper.make_node("Cast", ["brain"], ["brain32"], to=TensorProto.FLOAT, name="cast_brain"),
        helper.make_node("Add", ["x", "half32"], ["a"], name="add"),
        helper.make_node("Mul", ["a", "brain32"], ["m"], name="mul"),
        helper.make_node("Gather", ["m", "idx"], ["g"], axis=1, name="gather"),
        helper.make_node(
            "Constant", [], ["zero"], name="zero", value=numpy_helper.from_array(np.zeros((), np.float32), "zero")
        ),
        helper.make_node("Where", ["mask", "g", "zero"], ["y"], name="where"),
    ]
    graph = helper.make_graph(nodes, "typed", [x], [y], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="tests")
    onnx.checker.check_model(model)
    return model


@pytest.fixture(scope="module")
def squeezenet(tmp_path_factory):
    """SqueezeNet written as .onnx and as .tinf (from the imported, unprepared graph)."""
    folder = tmp_path_factory.mktemp("squeezenet")
    onnx_path, tinf_path = folder / "squeezenet.onnx", folder / "squeezenet.tinf"
    onnx.save(load_light_model("squeezenet"), onnx_path)
    save_tinf(load_onnx(onnx_path), tinf_path)
    return onnx_path, tinf_path


# ---------------------------------------------------------------------------- helpers
def assert_same_graph(expected: Graph, actual: Graph) -> None:
    """Everything a graph holds is equal; arrays bit for bit, with the same dtype and shape."""
    assert actual.name == expected.name
    assert actual.opset == expected.opset
    assert actual.metadata == expected.metadata
    assert actual.inputs == expected.inputs and actual.outputs == expected.outputs
    assert actual.value_info == expected.value_info
    assert list(actual.initializers) == list(expected.initializers)
    for name, array in expected.initializers.items():
        assert_same_array(array, actual.initializers[name])
    assert len(actual.nodes) == len(expected.nodes)
    for want, got in zip(expected.nodes, actual.nodes):
        fields = ("op_type", "domain", "name", "version", "inputs", "outputs")
        assert [getattr(got, f) for f in fields] == [getattr(want, f) for f in fields]
        assert list(got.attrs) == list(want.attrs)
        for key, value in want.attrs.items():
            assert_same_attribute(value, got.attrs[key])


def assert_same_attribute(expected, actual) -> None:
    assert type(actual) is type(expected), (expected, actual)
    if isinstance(expected, np.ndarray):
        assert_same_array(expected, actual)
    elif isinstance(expected, list):
        assert len(actual) == len(expected)
        for want, got in zip(expected, actual):
            assert_same_attribute(want, got)
    elif isinstance(expected, float) and math.isnan(expected):
        assert math.isnan(actual)
    else:
        assert actual == expected


def assert_same_array(expected: np.ndarray, actual: np.ndarray) -> None:
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    if expected.dtype == object:
        assert actual.tolist() == expected.tolist()
    else:
        assert np.ascontiguousarray(actual).tobytes() == np.ascontiguousarray(expected).tobytes()


def split(data: bytes) -> tuple[tuple, dict, bytes]:
    """(preamble fields, header, data section), read by the documented layout."""
    fields = PREAMBLE.unpack_from(data, 0)
    header_end = PREAMBLE.size + fields[3]
    data_start = -(-header_end // 64) * 64
    return fields, json.loads(data[PREAMBLE.size:header_end]), data[data_start:]


def assemble(header: dict | bytes, data: bytes, *, version: int = 1, flags: int = 0) -> bytes:
    """A file with a correct CRC around any header: lets tests reach the checks behind the CRC."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    head = PREAMBLE.pack(MAGIC, version, flags, len(raw), zlib.crc32(raw), 0) + raw
    return head + bytes(-len(head) % 64) + data


def with_header(data: bytes, mutate) -> bytes:
    _, header, section = split(data)
    mutate(header)
    return assemble(header, section)


def mapped_base(array: np.ndarray):
    """The object at the end of an array's ``base`` chain (through a memoryview, if any)."""
    owner = array
    while isinstance(owner, np.ndarray) and owner.base is not None:
        owner = owner.base
    return owner.obj if isinstance(owner, memoryview) else owner


def random_array(dtype: np.dtype, shape: tuple, rng: np.random.Generator) -> np.ndarray:
    count = math.prod(shape)
    if dtype == np.bool_:
        return rng.integers(0, 2, count).astype(bool).reshape(shape)
    if dtype == object:
        return np.array([f"s{i}é" for i in range(count)], dtype=object).reshape(shape)
    if dtype.itemsize == 1 and dtype.kind == "V":  # ml_dtypes' 1-byte types: random *valid* codes
        return rng.standard_normal(count).astype(dtype).reshape(shape)
    return np.frombuffer(rng.bytes(count * dtype.itemsize), dtype=dtype).reshape(shape).copy()


# ---------------------------------------------------------------------------- round trips
def test_squeezenet_round_trip_keeps_everything(squeezenet):
    onnx_path, tinf_path = squeezenet
    assert_same_graph(load_onnx(onnx_path), load_tinf(tinf_path))


def test_squeezenet_outputs_are_bit_identical(squeezenet):
    onnx_path, tinf_path = squeezenet
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224), dtype=np.float32)
    (want,) = ti.InferenceSession(onnx_path).run(None, {"data_0": x})
    (from_path,) = ti.InferenceSession(tinf_path).run(None, {"data_0": x})
    (from_bytes,) = ti.InferenceSession(tinf_path.read_bytes()).run(None, {"data_0": x})
    np.testing.assert_array_equal(from_path, want, strict=True)
    np.testing.assert_array_equal(from_bytes, want, strict=True)


def test_squeezenet_file_size_and_load_time(squeezenet):
    onnx_path, tinf_path = squeezenet
    onnx_size, tinf_size = onnx_path.stat().st_size, tinf_path.stat().st_size
    # The same raw weights in both; .tinf adds < 64 bytes of padding per tensor and a JSON header.
    assert abs(tinf_size - onnx_size) / onnx_size < 0.03
    start = time.perf_counter()
    load_onnx(onnx_path)
    middle = time.perf_counter()
    load_tinf(tinf_path)
    end = time.perf_counter()
    print(f"\nsqueezenet: .onnx {onnx_size:,} B, import {1e3 * (middle - start):.2f} ms; "
          f".tinf {tinf_size:,} B, load {1e3 * (end - middle):.2f} ms")


def test_prepared_graph_round_trips_and_stays_prepared(squeezenet):
    onnx_path, _ = squeezenet
    prepared = ti.load(onnx_path)  # attrs typed, defaults (some None) filled in
    again = load_tinf_bytes(to_tinf_bytes(prepared))
    assert_same_graph(prepared, again)
    assert_same_graph(prepared, ops.prepare_graph(again))


def test_every_attribute_type_round_trips():
    graph = load_onnx(attribute_model())
    loaded = load_tinf_bytes(to_tinf_bytes(graph))
    assert_same_graph(graph, loaded)
    attrs = loaded.nodes[0].attrs
    assert attrs["raw"] == b"\xff\x00\xfe" and attrs["s"] == "héllo" and attrs["empty"] == []
    assert attrs["f_inf"] == math.inf and attrs["f_neg_inf"] == -math.inf and math.isnan(attrs["f_nan"])
    assert attrs["tensors"][1].dtype == np.bool_
    assert loaded.inputs[0].shape == ("N", "C", 4) and loaded.outputs[0].shape == ("N", None, 4)
    assert loaded.value_info["t"].shape is None


def test_tensor_attributes_are_aligned_data_blocks(tmp_path):
    path = tmp_path / "attributes.tinf"
    save_tinf(load_onnx(attribute_model()), path)
    attrs = load_tinf(path).nodes[0].attrs
    header = read_tinf_header(path)
    assert [t["name"] for t in header["tensors"]] == ["every.tensor", "every.tensors.0", "every.tensors.1"]
    for array in (attrs["tensor"], *attrs["tensors"]):
        assert isinstance(mapped_base(array), mmap.mmap)
        assert array.ctypes.data % 64 == 0


def test_typed_model_runs_bit_identical(tmp_path):
    model = typed_model()
    path = tmp_path / "typed.tinf"
    ti.save(ti.load(model), path)
    graph = load_tinf(path)
    assert [a.dtype for a in graph.initializers.values()] == [
        np.float16, ml_dtypes.bfloat16, np.int64, np.bool_,
    ]
    x = np.random.default_rng(1).standard_normal((5, 4), dtype=np.float32)
    (want,) = ti.InferenceSession(model).run(None, {"x": x})
    (got,) = ti.InferenceSession(str(path)).run(None, {"x": x})
    np.testing.assert_array_equal(got, want, strict=True)
    assert ti.InferenceSession(path).get_inputs()[0].shape == ["N", 4]


@pytest.mark.parametrize("code", sorted(code for code in dtypes._ONNX_TYPES if code != 8) + [8])
@pytest.mark.parametrize("shape", [(), (0,), (3, 5), (2, 0, 3), (2, 1, 3)])
def test_every_dtype_and_shape_round_trips(code, shape):
    dtype = dtypes.from_onnx(code)
    array = random_array(dtype, shape, np.random.default_rng(code))
    graph = Graph(initializers={"w": array, "wt": array.T}, opset={"": 17}, name=f"dtype{code}")
    loaded = load_tinf_bytes(to_tinf_bytes(graph))
    assert_same_array(array, loaded.initializers["w"])
    assert_same_array(array.T, loaded.initializers["wt"])  # non-contiguous arrays are stored as C order


def test_big_endian_arrays_are_stored_little_endian():
    array = np.arange(6, dtype=">i4").reshape(2, 3)
    loaded = load_tinf_bytes(to_tinf_bytes(Graph(initializers={"w": array}))).initializers["w"]
    assert loaded.dtype == np.int32 and loaded.tolist() == array.tolist()


def test_saving_is_deterministic_and_json_header_is_readable(squeezenet):
    _, tinf_path = squeezenet
    graph = load_tinf(tinf_path)
    assert to_tinf_bytes(graph) == tinf_path.read_bytes()
    header = read_tinf_header(tinf_path)
    conv = header["nodes"][0]
    assert conv["op_type"] == "Conv" and conv["attrs"]["kernel_shape"] == {"ints": [3, 3]}
    assert header["inputs"] == [{"name": "data_0", "dtype": 1, "shape": [1, 3, 224, 224]}]


# ---------------------------------------------------------------------------- zero copy, layout
def test_initializers_are_read_only_aligned_views_of_the_map(squeezenet):
    _, tinf_path = squeezenet
    graph = load_tinf(tinf_path)
    for name, array in graph.initializers.items():
        assert isinstance(mapped_base(array), mmap.mmap), name
        assert not array.flags.writeable, name
        assert array.ctypes.data % 64 == 0, name
        with pytest.raises(ValueError):
            array.reshape(-1)[:1] = 0


def test_bytes_load_views_the_given_bytes():
    data = to_tinf_bytes(ti.load(typed_model()))
    graph = load_tinf_bytes(data)
    for array in graph.initializers.values():
        assert mapped_base(array) is data and not array.flags.writeable
    writable = bytearray(data)
    assert not load_tinf_bytes(writable).initializers["idx"].flags.writeable


def test_layout_matches_the_documented_table():
    data = to_tinf_bytes(ti.load(typed_model()))
    (magic, version, flags, header_length, crc, reserved), header, section = split(data)
    assert (magic, version, flags, reserved) == (b"TINF\x00\r\n\x1a", 1, 0, 0)
    assert crc == zlib.crc32(data[32:32 + header_length])
    assert len(section) == header["data_nbytes"] and len(data) % 64 == len(section) % 64
    for entry in header["tensors"]:
        if "offset" in entry:
            assert entry["offset"] % 64 == 0
            dtype = dtypes.from_onnx(entry["dtype"]).newbyteorder("<")
            stored = np.frombuffer(section, dtype, math.prod(entry["shape"]), entry["offset"])
            assert entry["nbytes"] == stored.nbytes
    idx = header["tensors"][header["initializers"][2]]
    assert np.frombuffer(section, "<i8", 3, idx["offset"]).tolist() == [3, 0, 2]


def test_string_tensors_live_in_the_header():
    labels = np.array([["cat", "dög"], ["", "x"]], dtype=object)
    data = to_tinf_bytes(Graph(initializers={"labels": labels}))
    entry = split(data)[1]["tensors"][0]
    assert entry["strings"] == ["cat", "dög", "", "x"] and "offset" not in entry
    assert_same_array(labels, load_tinf_bytes(data).initializers["labels"])


# ---------------------------------------------------------------------------- public entry points
def test_ti_save_and_load_and_session_recognise_tinf(tmp_path):
    graph = ti.load(typed_model())
    path = tmp_path / "model.tinf"
    ti.save(graph, path)
    assert is_tinf(path) and is_tinf(path.read_bytes()) and not is_tinf(typed_model().SerializeToString())
    assert_same_graph(graph, ti.load(path))
    sniffed = tmp_path / "model.bin"  # no .tinf suffix: recognised by its magic
    sniffed.write_bytes(path.read_bytes())
    assert_same_graph(graph, ti.load(sniffed))
    x = np.ones((2, 4), np.float32)
    np.testing.assert_array_equal(ti.InferenceSession(path).run(None, {"x": x})[0],
                                  ti.InferenceSession(typed_model()).run(None, {"x": x})[0])


def test_save_is_atomic_and_leaves_no_temporary_files(tmp_path):
    path = tmp_path / "model.tinf"
    save_tinf(ti.load(typed_model()), path)
    old = load_tinf(path)
    before = path.read_bytes()
    bad = Graph(nodes=[Node("Relu", ["x"], ["y"], {"alpha": {"not": "storable"}})], inputs=[Value("x")])
    with pytest.raises(InvalidAttributeError, match="attribute 'alpha'"):
        save_tinf(bad, path)
    assert path.read_bytes() == before
    # Overwriting a file whose weights are mapped keeps the old views valid.
    graph = ti.load(typed_model())
    graph.initializers["idx"] = np.array([1, 1, 1], np.int64)
    save_tinf(graph, path)
    assert old.initializers["idx"].tolist() == [3, 0, 2]
    assert load_tinf(path).initializers["idx"].tolist() == [1, 1, 1]
    assert sorted(os.listdir(tmp_path)) == ["model.tinf"]
    with pytest.raises(TinyInferError, match="cannot write"):
        save_tinf(graph, tmp_path / "missing" / "model.tinf")


def test_unstorable_graphs_are_refused_clearly():
    with pytest.raises(TinyInferError, match="metadata must be JSON"):
        to_tinf_bytes(Graph(metadata={"when": object()}))
    with pytest.raises(TinyInferError, match="UTF-8"):
        to_tinf_bytes(Graph(initializers={"s": np.array([b"\xff"], dtype=object)}))


def test_subgraphs_and_sequence_values_round_trip():
    """If/Loop bodies are stored as graph attributes (their weights in the one data area);
    sequence and optional values keep their kind. Oracle: onnx.reference on the ONNX model."""
    from onnx.reference import ReferenceEvaluator

    scalar = helper.make_tensor_value_info
    bias = numpy_helper.from_array(np.arange(4, dtype=np.float32), "bias")
    body = helper.make_graph(
        [helper.make_node("Add", ["acc_in", "bias"], ["acc_out"]), helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Mul", ["acc_out", "two"], ["scan_out"])],
        "body",
        [scalar("i", TensorProto.INT64, []), scalar("cond_in", TensorProto.BOOL, []), scalar("acc_in", TensorProto.FLOAT, [4])],
        [scalar("cond_out", TensorProto.BOOL, []), scalar("acc_out", TensorProto.FLOAT, [4]), scalar("scan_out", TensorProto.FLOAT, [4])],
        [bias],
    )
    then_graph = helper.make_graph([helper.make_node("Neg", ["final"], ["r"])], "then", [], [scalar("r", TensorProto.FLOAT, [4])])
    else_graph = helper.make_graph([helper.make_node("Abs", ["final"], ["r"])], "else", [], [scalar("r", TensorProto.FLOAT, [4])])
    nodes = [
        helper.make_node("Loop", ["trips", "flag", "x"], ["final", "scans"], body=body),
        helper.make_node("If", ["flag"], ["y"], then_branch=then_graph, else_branch=else_graph),
        helper.make_node("SequenceConstruct", ["y", "x"], ["seq"]),
    ]
    graph = helper.make_graph(
        nodes, "control",
        [scalar("trips", TensorProto.INT64, []), scalar("flag", TensorProto.BOOL, []), scalar("x", TensorProto.FLOAT, [4])],
        [scalar("y", TensorProto.FLOAT, [4]), scalar("scans", TensorProto.FLOAT, [None, 4]),
         helper.make_tensor_sequence_value_info("seq", TensorProto.FLOAT, [4])],
        [numpy_helper.from_array(np.array(2.0, np.float32), "two")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    loaded = load_tinf_bytes(to_tinf_bytes(load_onnx(model)))
    loop = next(n for n in loaded.nodes if n.op_type == "Loop")
    assert isinstance(loop.attrs["body"], Graph) and loop.attrs["body"].initializers["bias"].tolist() == [0, 1, 2, 3]
    assert [v.kind for v in loaded.outputs] == ["tensor", "tensor", "sequence"]
    feeds = {"trips": np.array(3), "flag": np.array(True), "x": np.linspace(-1, 1, 4).astype(np.float32)}
    expected = ReferenceEvaluator(model).run(None, feeds)
    got = ti.InferenceSession(loaded).run(None, feeds)
    for g, e in zip(got, expected):
        if isinstance(e, list):
            assert len(g) == len(e) and all(np.array_equal(a, b) for a, b in zip(g, e))
        else:
            np.testing.assert_array_equal(g, e)


# ---------------------------------------------------------------------------- robustness
@pytest.fixture(scope="module")
def good() -> bytes:
    return to_tinf_bytes(load_onnx(typed_model()))


def test_missing_empty_and_foreign_files(tmp_path):
    with pytest.raises(ModelLoadError, match="no model file"):
        load_tinf(tmp_path / "absent.tinf")
    (tmp_path / "empty.tinf").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="empty"):
        load_tinf(tmp_path / "empty.tinf")
    with pytest.raises(ModelLoadError, match="not a .tinf model"):
        load_tinf_bytes(typed_model().SerializeToString())
    with pytest.raises(ModelLoadError, match="no model file"):
        ti.InferenceSession(tmp_path / "absent.tinf")


def test_truncation_anywhere_is_detected(good, tmp_path):
    points = sorted({*range(0, 40), *range(40, len(good), max(1, len(good) // 97)), len(good) - 1})
    path = tmp_path / "cut.tinf"
    for length in points:
        with pytest.raises(ModelLoadError, match="truncated|empty|not a .tinf model"):
            load_tinf_bytes(good[:length])
        if length % 10 == 0:  # the file path takes the mmap route
            path.write_bytes(good[:length])
            with pytest.raises(ModelLoadError):
                load_tinf(path)


def test_trailing_bytes_are_refused(good):
    with pytest.raises(ModelLoadError, match="unexpected bytes"):
        load_tinf_bytes(good + b"\0")


def test_flipped_header_bytes_fail_the_checksum(good):
    header_length = PREAMBLE.unpack_from(good, 0)[3]
    for position in range(32, 32 + header_length, 7):
        damaged = bytearray(good)
        damaged[position] ^= 0x20
        with pytest.raises(ModelLoadError, match="CRC-32"):
            load_tinf_bytes(bytes(damaged))


def test_damaged_magic_and_text_mode_copies(good):
    with pytest.raises(ModelLoadError, match="text mode"):
        load_tinf_bytes(good.replace(b"\r\n", b"\n", 1))
    with pytest.raises(ModelLoadError, match="not a .tinf model"):
        load_tinf_bytes(b"ONNX" + good[4:])


@pytest.mark.parametrize(
    ("version", "flags", "message"),
    [(2, 0, "version 2 \\(written by a newer tinyinfer\\)"), (0, 0, "version 0"), (1, 1, "flags 0x1")],
)
def test_wrong_version_or_flags(good, version, flags, message):
    _, header, section = split(good)
    with pytest.raises(ModelLoadError, match=message):
        load_tinf_bytes(assemble(header, section, version=version, flags=flags))


def first_tensor(change):
    return lambda header: change(header["tensors"][0])


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (first_tensor(lambda t: t.update(offset=t["offset"] + (1 << 20))), "beyond the"),
        (first_tensor(lambda t: t.update(offset=t["offset"] + 8)), "not a multiple of 64"),
        (first_tensor(lambda t: t.update(nbytes=t["nbytes"] - 2)), "needs 4 x 2 = 8"),
        (first_tensor(lambda t: t.update(shape=[5])), "needs 5 x 2 = 10"),
        (first_tensor(lambda t: t.update(shape=[-4])), "non-negative integer"),
        (first_tensor(lambda t: t.update(dtype=99)), "element type 99"),
        (first_tensor(lambda t: t.update(dtype="float")), "should be an integer"),
        (first_tensor(lambda t: t.pop("nbytes")), "has no 'nbytes'"),
        (lambda h: h["tensors"][1].update(offset=h["tensors"][0]["offset"]), "overlap"),
        (lambda h: h.update(data_nbytes=h["data_nbytes"] + 64), "truncated"),
        (lambda h: h.update(initializers=[0, 99]), "tensor #99"),
        (lambda h: h.update(initializers=[0, 0]), "two initializers"),
        (lambda h: h["nodes"][5]["attrs"].update(value={"tensor": -1}), "tensor #-1"),
        (lambda h: h["nodes"][0]["attrs"].update(to={"int": "1"}), "should be an integer"),
        (lambda h: h["nodes"][0]["attrs"].update(to={"complex": 1}), "unknown type"),
        (lambda h: h["nodes"][0]["attrs"].update(to={"bytes": "***"}), "base64"),
        (lambda h: h["nodes"][0]["attrs"].update(to=[1]), "one-key object"),
        (lambda h: h["nodes"][0].update(version=True), "should be a non-negative integer"),
        (lambda h: h["inputs"][0].update(shape=[1.5]), "an integer, a name or null"),
        (lambda h: h.pop("nodes"), "has no 'nodes'"),
        (lambda h: h.update(opset=[17]), "should be an object"),
    ],
)
def test_inconsistent_headers_are_refused_before_any_view(good, mutate, message):
    with pytest.raises(ModelLoadError, match=message):
        load_tinf_bytes(with_header(good, mutate))


def last_tensor(change):
    return lambda header: change(header["tensors"][-1])


def last_node(change):
    return lambda header: change(header["nodes"][-1])


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (last_tensor(lambda t: t.update(offset=t["offset"] + 8)), "tensor 'zero.value' starts at data offset"),
        (last_tensor(lambda t: t.update(shape=[True])), "tensor 'zero.value': 'shape'\\[0\\] should be a non-negative"),
        (last_tensor(lambda t: t.update(nbytes=2**70)), "tensor 'zero.value' claims 1180591620717411303424 bytes"),
        (last_node(lambda n: n["inputs"].append(7)), "node #6 \\(Where\\): 'inputs'\\[3\\] should be a string"),
        (last_node(lambda n: n.update(version=-1)), "node #6 \\(Where\\): 'version' should be a non-negative"),
        (last_node(lambda n: n.pop("domain")), "node #6 \\(Where\\) has no 'domain'"),
        (last_node(lambda n: n["attrs"].update(k={"ints": [1, 2.5]})), "attribute 'k'\\[1\\] should be an integer"),
        (last_node(lambda n: n["attrs"].update(k={"floats": [1, "x"]})), "attribute 'k'\\[1\\] should be a number"),
    ],
)
def test_a_fault_in_the_last_entry_is_named(good, mutate, message):
    # The tables are checked a column at a time; a fault anywhere in a column sends the
    # reader entry by entry, and the message must name the entry and field, as for the first.
    with pytest.raises(ModelLoadError, match=message):
        load_tinf_bytes(with_header(good, mutate))


def test_column_checks_build_what_the_entry_by_entry_reader_builds(squeezenet):
    header = read_tinf_header(squeezenet[1])
    reader = serialize._HeaderReader(header, "squeezenet")
    by_column = serialize._numeric_tensors(header["tensors"], header["data_nbytes"])
    assert by_column is not None, "a well-formed table passes the column checks"
    by_entry = [reader.tensor(entry, i, header["data_nbytes"]) for i, entry in enumerate(header["tensors"])]
    assert by_column == by_entry
    assert serialize._node_columns_are_well_formed(header["nodes"])
    reader.tensor_count = len(by_entry)
    nodes = reader.nodes(header["nodes"])
    for index, (entry, node) in enumerate(zip(header["nodes"], nodes)):
        want = reader.node(entry, index)
        assert (node.op_type, node.inputs, node.outputs, node.domain, node.name, node.version) == \
            (want.op_type, want.inputs, want.outputs, want.domain, want.name, want.version)
        assert node.attrs == want.attrs


def test_headers_that_are_not_json_objects(good):
    section = split(good)[2]
    for raw, message in [(b"[1, 2]", "not an object"), (b"{\"name\": ", "not UTF-8 JSON"),
                         (b"\xff\xfe", "not UTF-8 JSON"), (b"{\"x\": NaN}", "not UTF-8 JSON")]:
        with pytest.raises(ModelLoadError, match=message):
            load_tinf_bytes(assemble(raw, section))


def test_dangling_reference_is_an_invalid_graph(good):
    mutated = with_header(good, lambda h: h["nodes"][2]["inputs"].__setitem__(0, "nowhere"))
    with pytest.raises(InvalidGraphError, match="nowhere"):
        load_tinf_bytes(mutated)


def random_json_edit(header: dict, rng: random.Random) -> None:
    """Replace or delete one randomly chosen field anywhere in the header."""
    parent, key = None, None
    node = header
    for _ in range(rng.randint(1, 5)):
        if isinstance(node, dict) and node:
            parent, key = node, rng.choice(list(node))
        elif isinstance(node, list) and node:
            parent, key = node, rng.randrange(len(node))
        else:
            break
        node = parent[key]
    if parent is None:
        return
    if isinstance(parent, dict) and rng.random() < 0.2:
        del parent[key]
        return
    parent[key] = rng.choice([None, -1, 0, 1, 63, 64, 2**70, 1.5, True, "", "x", "nan", [], [1, "a"], {}, {"int": 1}])


def test_fuzzed_files_load_or_raise_tinyinfer_errors(good):
    """200 seeded mutations of raw bytes and of header fields (behind a valid CRC)."""
    rng = random.Random(0)
    outcomes = {"loaded": 0, "refused": 0}
    for _ in range(200):
        kind = rng.choice(["flip", "byte", "cut", "append", "insert", "json", "json"])
        data = bytearray(good)
        if kind == "flip":
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        elif kind == "byte":
            data[rng.randrange(32)] = rng.randrange(256)
        elif kind == "cut":
            del data[rng.randrange(len(data)):]
        elif kind == "append":
            data += rng.randbytes(rng.randint(1, 100))
        elif kind == "insert":
            at = rng.randrange(len(data))
            data[at:at] = rng.randbytes(rng.randint(1, 64))
        else:
            data = bytearray(with_header(good, lambda header: random_json_edit(header, rng)))
        try:
            ops.prepare_graph(load_tinf_bytes(bytes(data)))
            outcomes["loaded"] += 1
        except TinyInferError:
            outcomes["refused"] += 1
    assert outcomes["refused"] > 100  # most mutations must be caught, not only survived
