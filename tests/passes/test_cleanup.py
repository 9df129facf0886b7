"""O1 cleanup passes on small graphs, and the PassManager's report."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import tinyinfer as ti
from tinyinfer.errors import TinyInferError
from tinyinfer.passes import PassManager, optimize


def _model(nodes, inputs, outputs, initializers=(), opset=17):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _f(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def test_constant_folding_computes_shape_chains_and_weight_arithmetic():
    # w2 = w * 2 is all-constant; Shape(x) of a static input is constant too
    w = helper.make_tensor("w", TensorProto.FLOAT, [3], [1.0, 2.0, 3.0])
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    nodes = [
        helper.make_node("Mul", ["w", "two"], ["w2"], name="scale_weight"),
        helper.make_node("Shape", ["x"], ["shape"], name="shape_of_x"),
        helper.make_node("Reshape", ["x", "shape"], ["x_same"], name="reshape"),
        helper.make_node("Add", ["x_same", "w2"], ["y"], name="add"),
    ]
    graph = ti.load(_model(nodes, [_f("x", [2, 3])], [_f("y", [2, 3])], [w, two]))
    optimized, report = optimize(graph, "O1")
    ops = [n.op_type for n in optimized.nodes]
    assert "Mul" not in ops and "Shape" not in ops
    np.testing.assert_array_equal(optimized.initializers["w2"], [2.0, 4.0, 6.0])
    assert "w" not in optimized.initializers  # now unused, removed by dead-code elimination
    assert report.nodes_before == 4 and report.nodes_after == len(optimized.nodes)


def test_identity_and_inference_dropout_are_removed_but_results_stay():
    nodes = [
        helper.make_node("Identity", ["x"], ["a"], name="id1"),
        helper.make_node("Relu", ["a"], ["b"], name="relu"),
        helper.make_node("Dropout", ["b"], ["c"], name="drop"),
        helper.make_node("Identity", ["c"], ["y"], name="id_out"),
    ]
    model = _model(nodes, [_f("x", ["N", 4])], [_f("y", ["N", 4])])
    optimized, _ = optimize(ti.load(model), "O1")
    assert [n.op_type for n in optimized.nodes] == ["Relu"]
    assert optimized.nodes[0].outputs == ["y"]  # the producer now writes the graph output
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    (got,) = ti.InferenceSession(model).run(None, {"x": x})
    np.testing.assert_array_equal(got, np.maximum(x, 0))


def test_identity_from_graph_input_to_graph_output_is_kept():
    model = _model([helper.make_node("Identity", ["x"], ["y"])], [_f("x", [2])], [_f("y", [2])])
    optimized, _ = optimize(ti.load(model), "O2")
    assert [n.op_type for n in optimized.nodes] == ["Identity"]


def test_dead_code_elimination_removes_unused_branches():
    nodes = [
        helper.make_node("Relu", ["x"], ["y"], name="used"),
        helper.make_node("Exp", ["x"], ["unused1"], name="dead1"),
        helper.make_node("Log", ["unused1"], ["unused2"], name="dead2"),
    ]
    optimized, report = optimize(ti.load(_model(nodes, [_f("x", [2])], [_f("y", [2])])), "O1")
    assert [n.name for n in optimized.nodes] == ["used"]
    dce = [r for r in report.passes if r.name == "dead_code_elimination"][0]
    assert any("dead2" in note for note in dce.notes) and any("dead1" in note for note in dce.notes)


def test_common_subexpressions_merge_in_chains_and_keep_outputs_and_random_ops():
    """Oracle: ONNX Runtime on the original model; the training-mode Dropout twins (random
    draws) must both stay."""
    nodes = [
        helper.make_node("Transpose", ["x"], ["t1"], perm=[0, 2, 1], name="transpose_a"),
        helper.make_node("Transpose", ["x"], ["t2"], perm=[0, 2, 1], name="transpose_b"),
        helper.make_node("Transpose", ["x"], ["t3"], perm=[2, 1, 0], name="other_perm"),
        helper.make_node("Relu", ["t1"], ["r1"], name="relu_a"),
        helper.make_node("Relu", ["t2"], ["r2"], name="relu_b"),  # identical once t2 -> t1
        helper.make_node("Add", ["r1", "r2"], ["y"], name="add"),
        helper.make_node("Sigmoid", ["x"], ["s1"], name="sig_a"),
        helper.make_node("Sigmoid", ["x"], ["s2"], name="sig_b"),  # a graph output: kept
        helper.make_node("Dropout", ["x", "ratio", "training"], ["u1"], name="rand_a"),
        helper.make_node("Dropout", ["x", "ratio", "training"], ["u2"], name="rand_b"),
        helper.make_node("Sub", ["u1", "u2"], ["d"], name="sub"),
    ]
    model = _model(nodes, [_f("x", [2, 3, 4])], [_f("y", [2, 4, 3]), _f("t3", [4, 3, 2]), _f("s1", None),
                                                 _f("s2", None), _f("d", None)],
                   [helper.make_tensor("ratio", TensorProto.FLOAT, [], [0.5]),
                    helper.make_tensor("training", TensorProto.BOOL, [], [True])])
    optimized, report = optimize(ti.load(model), "O1")
    names = {n.name for n in optimized.nodes}
    assert "transpose_b" not in names and "relu_b" not in names
    assert {"other_perm", "sig_a", "sig_b", "rand_a", "rand_b"} <= names
    cse = [r for r in report.passes if r.name == "common_subexpression_elimination"][0]
    assert len(cse.notes) == 2
    x = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    got = ti.InferenceSession(optimized, opt_level="O0").run(["y", "t3", "s1", "s2"], {"x": x})
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        ["y", "t3", "s1", "s2"], {"x": x})
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=1e-6)


def test_level_O0_changes_nothing_and_unknown_level_is_an_error():
    nodes = [helper.make_node("Identity", ["x"], ["a"]), helper.make_node("Relu", ["a"], ["y"])]
    graph = ti.load(_model(nodes, [_f("x", [2])], [_f("y", [2])]))
    optimized, report = optimize(graph, "O0")
    assert len(optimized.nodes) == 2 and report.passes == []
    with pytest.raises(TinyInferError, match="unknown optimisation level"):
        PassManager("O9")
    with pytest.raises(TinyInferError, match="unknown optimisation level"):
        ti.InferenceSession(_model(nodes, [_f("x", [2])], [_f("y", [2])]), opt_level="fast")


def test_optimizing_does_not_touch_the_input_graph():
    nodes = [helper.make_node("Identity", ["x"], ["a"]), helper.make_node("Relu", ["a"], ["y"])]
    graph = ti.load(_model(nodes, [_f("x", [2])], [_f("y", [2])]))
    optimize(graph, "O2")
    assert [n.op_type for n in graph.nodes] == ["Identity", "Relu"]


@pytest.mark.parametrize("name", ["squeezenet", "resnet50"])
def test_light_models_same_outputs_at_every_level(name):
    from tinyinfer.models import load_light_model
    from tinyinfer.runtime.feeds import random_feeds

    model = load_light_model(name)
    sessions = {level: ti.InferenceSession(model, opt_level=level) for level in ("O0", "O1", "O2")}
    feeds = random_feeds(sessions["O0"].get_inputs(), seed=0)
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    for level, session in sessions.items():
        got = session.run(None, feeds)[0]
        # float32 with different summation orders: a few ulps per layer (see test_real_models.py)
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-5, err_msg=level)
