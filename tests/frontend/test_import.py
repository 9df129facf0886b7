"""ONNX import: from a path, bytes or a ModelProto; symbolic dims; typed attributes; external data.

The frontend alone (``tinyinfer.frontend.load_onnx``) does not look ops up, so some tests use
made-up op types to exercise attribute parsing; sessions (``ti.InferenceSession``) check
them against the registry.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import tinyinfer as ti
from tinyinfer.errors import ModelLoadError, UnsupportedOpError
from tinyinfer.frontend import load_onnx

W = np.arange(6, dtype=np.float32).reshape(2, 3) / 4
B = np.array([1.5, -2.0, 0.25], dtype=np.float32)


def weighted_model() -> onnx.ModelProto:
    """y = (x + W) * B, x: float[N, 2, 3] with a symbolic batch."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, 3])
    nodes = [helper.make_node("Add", ["x", "W"], ["t"], name="add"), helper.make_node("Mul", ["t", "B"], ["y"], name="mul")]
    graph = helper.make_graph(nodes, "weighted", [x], [y], [numpy_helper.from_array(W, "W"), numpy_helper.from_array(B, "B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="tests")
    onnx.checker.check_model(model)
    return model


def expected_y(x: np.ndarray) -> np.ndarray:
    return (x + W) * B


# ---------------------------------------------------------------------------- sources
@pytest.mark.parametrize("kind", ["str", "Path", "bytes", "bytearray", "memoryview", "ModelProto"])
def test_every_source_kind_gives_the_same_graph(tmp_path, kind):
    model = weighted_model()
    path = tmp_path / "model.onnx"
    onnx.save_model(model, path)
    data = model.SerializeToString()
    source = {
        "str": str(path),
        "Path": path,
        "bytes": data,
        "bytearray": bytearray(data),
        "memoryview": memoryview(data),
        "ModelProto": model,
    }[kind]
    graph = load_onnx(source)
    assert graph.name == "weighted"
    assert graph.opset == {"": 17}
    assert [(n.op_type, n.inputs, n.outputs, n.name, n.version) for n in graph.nodes] == [
        ("Add", ["x", "W"], ["t"], "add", 17),
        ("Mul", ["t", "B"], ["y"], "mul", 17),
    ]
    assert graph.input_names == ["x"]  # initializers are not inputs
    np.testing.assert_array_equal(graph.initializers["W"], W)
    np.testing.assert_array_equal(graph.initializers["B"], B)
    assert graph.initializers["W"].dtype == np.float32
    assert graph.metadata["producer_name"] == "tests"


def test_symbolic_and_unknown_dims_survive_import():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", None, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", None, 8])
    hidden = helper.make_tensor_value_info("h", TensorProto.FLOAT, ["batch", "seq", 8])
    graph = helper.make_graph([helper.make_node("Neg", ["x"], ["h"]), helper.make_node("Abs", ["h"], ["y"])],
                              "g", [x], [y], value_info=[hidden])
    imported = load_onnx(helper.make_model(graph))
    assert imported.inputs[0].shape == ("batch", None, 8)
    assert imported.outputs[0].shape == ("batch", None, 8)
    assert imported.value_info["h"].shape == ("batch", "seq", 8)
    assert imported.inputs[0].dtype == np.float32
    sess = ti.InferenceSession(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert sess.get_inputs()[0].shape == ["batch", None, 8]


def test_missing_node_names_are_filled_in_and_metadata_is_kept():
    model = weighted_model()
    for node in model.graph.node:
        node.name = ""
    helper.set_model_props(model, {"author": "tinyinfer tests"})
    graph = load_onnx(model)
    assert [n.name for n in graph.nodes] == ["Add_0", "Mul_1"]
    assert graph.metadata["metadata_props"] == {"author": "tinyinfer tests"}
    assert graph.metadata["ir_version"] == model.ir_version


def test_attributes_become_typed_python_values():
    tensor = numpy_helper.from_array(np.array([[1, 2], [3, 4]], dtype=np.int64), "t")
    node = helper.make_node(
        "Anything", ["x"], ["y"], domain="com.example",
        i=3, f=0.5, s="same_upper", ints=[1, -2], floats=[0.25, 2.0], strings=["a", "b"], t=tensor,
    )
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    model = helper.make_model(helper.make_graph([node], "g", [x], [y]), opset_imports=[
        helper.make_opsetid("", 17), helper.make_opsetid("com.example", 2)])
    graph = load_onnx(model)
    attrs = graph.nodes[0].attrs
    assert attrs["i"] == 3 and type(attrs["i"]) is int
    assert attrs["f"] == 0.5 and type(attrs["f"]) is float
    assert attrs["s"] == "same_upper"
    assert attrs["ints"] == [1, -2] and attrs["floats"] == [0.25, 2.0] and attrs["strings"] == ["a", "b"]
    np.testing.assert_array_equal(attrs["t"], [[1, 2], [3, 4]])
    assert graph.nodes[0].domain == "com.example" and graph.nodes[0].version == 2


def test_map_types_and_sparse_weights_are_refused():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    mapping = helper.make_value_info("m", helper.make_map_type_proto(TensorProto.INT64, helper.make_tensor_type_proto(TensorProto.FLOAT, [1])))
    graph = helper.make_graph([helper.make_node("Neg", ["x"], ["y"])], "g", [x, mapping], [y])
    with pytest.raises(UnsupportedOpError, match="value 'm' has type map_type"):
        load_onnx(helper.make_model(graph))

    sparse = helper.make_sparse_tensor(
        numpy_helper.from_array(np.array([1.0], np.float32), "sp"), numpy_helper.from_array(np.array([0], np.int64)), [4]
    )
    graph = helper.make_graph([helper.make_node("Neg", ["x"], ["y"])], "g", [x], [y], sparse_initializer=[sparse])
    with pytest.raises(UnsupportedOpError, match="sparse initializer 'sp'"):
        load_onnx(helper.make_model(graph))


def test_import_validates_the_graph():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Add", ["x", "ghost"], ["y"], name="reader")], "g", [x], [y])
    with pytest.raises(ti.TinyInferError, match="'reader'.*reads 'ghost'"):
        load_onnx(helper.make_model(graph))


# ---------------------------------------------------------------------------- external data
@pytest.fixture
def external_model(tmp_path) -> Path:
    """A model in ``tmp_path/model/`` whose weights are in ``weights.bin`` next to it."""
    folder = tmp_path / "model"
    folder.mkdir()
    path = folder / "model.onnx"
    onnx.save_model(weighted_model(), path, save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.bin", size_threshold=0)
    assert (folder / "weights.bin").stat().st_size == W.nbytes + B.nbytes
    return path


def tampered(path: Path, name: str = "W", **changes: str) -> Path:
    """A copy of the model next to it, with the external-data entries of tensor ``name`` changed."""
    model = onnx.load_model(path, load_external_data=False)
    tensor = next(t for t in model.graph.initializer if t.name == name)
    entries = {e.key: e.value for e in tensor.external_data}
    entries.update(changes)
    del tensor.external_data[:]
    for key, value in entries.items():
        tensor.external_data.add(key=key, value=value)
    copy = path.with_name("tampered.onnx")
    copy.write_bytes(model.SerializeToString())
    return copy


def test_external_data_is_read_from_the_model_folder(external_model):
    model = onnx.load_model(external_model, load_external_data=False)
    assert all(t.data_location == TensorProto.EXTERNAL for t in model.graph.initializer)
    graph = load_onnx(external_model)
    np.testing.assert_array_equal(graph.initializers["W"], W)
    np.testing.assert_array_equal(graph.initializers["B"], B)
    x = np.random.default_rng(0).standard_normal((2, 2, 3)).astype(np.float32)
    (y,) = ti.InferenceSession(external_model).run(None, {"x": x})
    np.testing.assert_allclose(y, expected_y(x), rtol=1e-6)  # same float32 ops; 1e-6 allows one rounding


@pytest.mark.parametrize("where", ["parent", "absolute", "deep-parent"])
def test_external_location_outside_the_model_folder_is_refused(external_model, where):
    secret = external_model.parent.parent / "secret.bin"
    secret.write_bytes(b"\0" * 64)  # exists, readable, and still must not be read
    location = {
        "parent": "../secret.bin",
        "absolute": str(secret.resolve()),
        "deep-parent": "sub/../../secret.bin",
    }[where]
    with pytest.raises(ModelLoadError, match="escapes the model's folder") as info:
        load_onnx(tampered(external_model, location=location))
    assert "'W'" in str(info.value) and location in str(info.value)
    with pytest.raises(ModelLoadError, match="escapes"):
        ti.InferenceSession(tampered(external_model, location=location))


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symbolic links")
def test_symlink_pointing_outside_the_model_folder_is_refused(external_model):
    secret = external_model.parent.parent / "secret.bin"
    secret.write_bytes(b"\0" * 64)
    (external_model.parent / "link.bin").symlink_to(secret)
    with pytest.raises(ModelLoadError, match="escapes"):
        load_onnx(tampered(external_model, location="link.bin"))


def test_missing_external_file_is_named(external_model):
    (external_model.parent / "weights.bin").unlink()
    with pytest.raises(ModelLoadError, match="external data file 'weights.bin' not found"):
        ti.InferenceSession(external_model)


@pytest.mark.parametrize(
    "changes",
    [{"offset": "1000"}, {"length": "1000"}, {"offset": "40", "length": "12"}, {"offset": "-4"}],
    ids=["offset-past-end", "length-past-end", "range-past-end", "negative-offset"],
)
def test_external_range_outside_the_file_is_refused(external_model, changes):
    with pytest.raises(ModelLoadError, match=r"external data range .* lies outside 'weights.bin' \(36 bytes\)"):
        ti.InferenceSession(tampered(external_model, **changes))


def test_external_length_not_matching_the_dims_is_refused(external_model):
    with pytest.raises(ModelLoadError, match="'W'"):
        ti.InferenceSession(tampered(external_model, length="8"))


def test_non_integer_offset_is_refused(external_model):
    with pytest.raises(ModelLoadError, match="'W'.*offset"):
        ti.InferenceSession(tampered(external_model, offset="twelve"))


def test_external_data_without_a_path_asks_for_one(external_model):
    with pytest.raises(ModelLoadError, match="stored in external file 'weights.bin'; load the model from its path"):
        ti.InferenceSession(external_model.read_bytes())
    unresolved = onnx.load_model(external_model, load_external_data=False)
    with pytest.raises(ModelLoadError, match="load the model from its path"):
        ti.InferenceSession(unresolved)
    # A ModelProto whose external data onnx already loaded is self-contained.
    loaded = onnx.load_model(external_model)
    np.testing.assert_array_equal(load_onnx(loaded).initializers["W"], W)
