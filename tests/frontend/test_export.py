"""ONNX export: the written model passes onnx.checker, runs in ONNX Runtime with the same
results as tinyinfer, and imports back to the same graph."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import tinyinfer as ti
from tinyinfer.frontend import load_onnx
from tinyinfer.ir import Graph, Node, Value

RNG = np.random.default_rng(7)
SCALE = (RNG.standard_normal((1, 4)) + 3).astype(np.float32)
OFFSET = RNG.standard_normal(4).astype(np.float32)
LIMIT = np.array(0.5, dtype=np.float32)


def mixed_model(opset: int = 17) -> onnx.ModelProto:
    """Arithmetic, comparison, Where and a variadic op over a symbolic batch, with weights."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 4])
    mask = helper.make_tensor_value_info("mask", TensorProto.BOOL, ["N", 4])
    nodes = [
        helper.make_node("Mul", ["x", "scale"], ["scaled"], name="scale"),
        helper.make_node("Sub", ["scaled", "offset"], ["shifted"], name="shift"),
        helper.make_node("Div", ["shifted", "scale"], ["ratio"], name="ratio"),
        helper.make_node("Greater", ["ratio", "limit"], ["mask"], name="compare"),
        helper.make_node("Neg", ["ratio"], ["negated"], name="negate"),
        helper.make_node("Where", ["mask", "ratio", "negated"], ["picked"], name="pick"),
        helper.make_node("Sum", ["picked", "x", "offset"], ["z"], name="total"),
    ]
    initializers = [numpy_helper.from_array(a, n) for n, a in (("scale", SCALE), ("offset", OFFSET), ("limit", LIMIT))]
    graph = helper.make_graph(nodes, "mixed", [x], [z, mask], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model, full_check=True)
    return model


def test_exported_model_passes_the_full_checker():
    exported = ti.to_onnx(ti.load(mixed_model()))
    onnx.checker.check_model(exported, full_check=True)
    assert exported.producer_name == "tinyinfer"


@pytest.mark.parametrize("batch", [1, 3])
def test_onnxruntime_runs_the_export_like_tinyinfer(batch):
    exported = ti.to_onnx(ti.load(mixed_model()))
    x = RNG.standard_normal((batch, 4)).astype(np.float32)
    theirs = ort.InferenceSession(exported.SerializeToString()).run(None, {"x": x})
    ours = ti.InferenceSession(exported).run(None, {"x": x})
    for a, b in zip(ours, theirs):
        assert a.dtype == b.dtype and a.shape == b.shape
        # The same IEEE float32 operations in the same order; 1e-6 leaves room for one rounding
        # difference should a vectorised kernel evaluate an expression differently.
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_hand_built_graph_exports_to_a_runnable_model():
    graph = Graph(
        nodes=[Node("Add", ["a", "b"], ["s"], name="sum"), Node("Equal", ["s", "a"], ["same"], name="eq")],
        inputs=[Value("a", np.int64, ("batch", 3)), Value("b", np.int64, (1, 3))],
        outputs=[Value("same", np.bool_, ("batch", 3))],
        opset={"": 19},
        name="built",
    )
    model = ti.to_onnx(graph)
    onnx.checker.check_model(model, full_check=True)
    assert model.ir_version == 10
    a = np.arange(6, dtype=np.int64).reshape(2, 3)
    b = np.array([[0, 1, 0]], dtype=np.int64)
    (theirs,) = ort.InferenceSession(model.SerializeToString()).run(None, {"a": a, "b": b})
    (ours,) = ti.InferenceSession(graph).run(None, {"a": a, "b": b})
    np.testing.assert_array_equal(ours, theirs)  # integer and boolean results are exact
    np.testing.assert_array_equal(ours, np.broadcast_to(b == 0, (2, 3)))


def test_round_trip_preserves_nodes_attributes_initializers_and_types():
    tensor = numpy_helper.from_array(np.array([1.5, -2.5], np.float32), "t")
    node = helper.make_node(
        "Custom", ["x", "", "scale"], ["y"], domain="com.example", name="custom",
        i=3, f=0.25, s="mode", ints=[1, 2], floats=[0.5], strings=["p", "q"], t=tensor,
    )
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["N", None, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT16, ["N", None, 2])
    weights = numpy_helper.from_array(np.array([[1, 2]], dtype=np.int8), "scale")
    graph = helper.make_graph([node], "custom_graph", [x], [y], [weights])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 3)])
    helper.set_model_props(model, {"origin": "test"})

    first = load_onnx(model)
    second = load_onnx(ti.to_onnx(first).SerializeToString())

    assert second.name == first.name == "custom_graph"
    assert second.opset == first.opset == {"": 17, "com.example": 3}
    assert second.metadata["metadata_props"] == {"origin": "test"}
    def fields(node):  # Node's == would compare the tensor attribute's truth value
        return node.op_type, node.inputs, node.outputs, node.domain, node.name, node.version

    assert [fields(n) for n in second.nodes] == [fields(n) for n in first.nodes]
    assert first.nodes[0].inputs == ["x", "", "scale"]  # the omitted optional input stays omitted
    (a, b) = first.nodes[0].attrs, second.nodes[0].attrs
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], np.ndarray):
            np.testing.assert_array_equal(a[key], b[key])
            assert a[key].dtype == b[key].dtype
        else:
            assert a[key] == b[key] and type(a[key]) is type(b[key])
    assert first.initializers.keys() == second.initializers.keys()
    np.testing.assert_array_equal(second.initializers["scale"], first.initializers["scale"])
    assert second.initializers["scale"].dtype == np.int8
    assert second.inputs == first.inputs and second.outputs == first.outputs
    assert second.inputs[0].shape == ("N", None, 2) and second.inputs[0].dtype == np.float16


def test_round_trip_of_a_prepared_graph_keeps_the_filled_in_defaults():
    prepared = ti.load(mixed_model())
    again = ti.load(ti.to_onnx(prepared))
    assert [(n.op_type, n.inputs, n.outputs, n.attrs) for n in again.nodes] == [
        (n.op_type, n.inputs, n.outputs, n.attrs) for n in prepared.nodes
    ]
    for name, array in prepared.initializers.items():
        np.testing.assert_array_equal(again.initializers[name], array)


def test_old_ir_version_model_exports_valid():
    # Before IR 4, initializers had to be listed among the graph inputs as well.
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    w_info = helper.make_tensor_value_info("w", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "old", [x, w_info], [y],
                              [numpy_helper.from_array(np.ones(2, np.float32), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 7)], ir_version=3)
    onnx.checker.check_model(model)
    exported = ti.to_onnx(ti.load(model))
    onnx.checker.check_model(exported, full_check=True)
    x_value = np.array([1, 2], np.float32)
    (theirs,) = ort.InferenceSession(exported.SerializeToString()).run(None, {"x": x_value})
    np.testing.assert_array_equal(theirs, [2, 3])


def test_save_writes_onnx_and_refuses_other_suffixes(tmp_path):
    graph = ti.load(mixed_model())
    path = tmp_path / "saved.onnx"
    ti.save(graph, path)
    onnx.checker.check_model(str(path), full_check=True)
    assert [n.name for n in load_onnx(path).nodes] == [n.name for n in graph.nodes]
    with pytest.raises(ti.TinyInferError, match="writes .onnx files"):
        ti.save(graph, tmp_path / "saved.bin")
