"""The memory planner: every plan must be valid, and as small as its lower bound allows."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from onnx import TensorProto, helper

import tinyinfer as ti
from tinyinfer.ir import Value
from tinyinfer.models.light import LIGHT_MODELS
from tinyinfer.passes.memory import ALIGNMENT, plan_memory


def _assert_valid(plan):
    """No two buffers that are alive at the same step may share a byte (brute force)."""
    roots = {name: b for name, b in plan.buffers.items() if b.alias_of is None}
    for a, b in itertools.combinations(roots.values(), 2):
        alive_together = a.first <= b.last and b.first <= a.last
        overlap = a.offset < b.offset + b.nbytes and b.offset < a.offset + a.nbytes
        assert not (alive_together and overlap and a.nbytes and b.nbytes), (a, b)
    for b in roots.values():
        assert b.offset % ALIGNMENT == 0 and b.offset + b.nbytes <= plan.arena_bytes
    assert plan.lower_bound_bytes <= plan.arena_bytes <= max(plan.naive_bytes, plan.lower_bound_bytes)


def _chain(ops, shape=(1, 1024)):
    nodes, prev = [], "x"
    for i, op in enumerate(ops):
        nodes.append(helper.make_node(op, [prev], [f"t{i}"], name=f"n{i}"))
        prev = f"t{i}"
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
                              [helper.make_tensor_value_info(prev, TensorProto.FLOAT, list(shape))])
    return ti.load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def test_chain_of_in_place_ops_needs_one_buffer():
    plan = plan_memory(_chain(["Exp", "Relu", "Sigmoid", "Tanh"]))
    _assert_valid(plan)
    assert plan.naive_bytes == 3 * 4096  # the last result is the graph's output: the caller's, not the arena's
    assert "t3" not in plan.buffers
    assert plan.arena_bytes == 4096  # every op writes over its input


def test_chain_without_in_place_alternates_two_buffers():
    plan = plan_memory(_chain(["Exp", "Relu", "Sigmoid", "Tanh"]), in_place=False)
    _assert_valid(plan)
    assert plan.arena_bytes == plan.lower_bound_bytes == 2 * 4096


def test_view_shares_its_source_and_keeps_it_alive():
    nodes = [
        helper.make_node("Exp", ["x"], ["a"], name="exp"),
        helper.make_node("Flatten", ["a"], ["v"], name="view", axis=0),
        helper.make_node("Sigmoid", ["x"], ["b"], name="sig"),
        helper.make_node("Tanh", ["b"], ["c"], name="tanh"),
        helper.make_node("Reshape", ["c"], ["d"], name="reshape", allowzero=0),
        helper.make_node("Add", ["v", "d"], ["y"], name="add"),
    ]
    nodes[4].input.append("shape")
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 256])],
        [helper.make_tensor("shape", TensorProto.INT64, [2], [1, 256])],
    )
    plan = plan_memory(ti.load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])), in_place=False)
    _assert_valid(plan)
    assert plan.buffers["v"].alias_of == "a" and plan.offset_of("v") == plan.offset_of("a")
    # a is read (through its view v) by the last node, so it lives to the end
    assert plan.buffers["a"].last == 5
    assert plan.offset_of("a") not in (plan.offset_of("b"), plan.offset_of("c"))
    assert plan.naive_bytes == 3 * 1024  # a, b, c; the views own no bytes


def test_subgraph_reads_keep_outer_tensors_alive():
    then_out = helper.make_tensor_value_info("t", TensorProto.FLOAT, [64])
    then_graph = helper.make_graph([helper.make_node("Neg", ["a"], ["t"])], "then", [], [then_out])
    else_graph = helper.make_graph([helper.make_node("Abs", ["a"], ["t"])], "else", [], [then_out])
    nodes = [
        helper.make_node("Exp", ["x"], ["a"], name="exp"),
        helper.make_node("Sigmoid", ["x"], ["b"], name="sig"),
        helper.make_node("Tanh", ["b"], ["c"], name="tanh"),
        helper.make_node("If", ["cond"], ["r"], name="if", then_branch=then_graph, else_branch=else_graph),
        helper.make_node("Add", ["r", "c"], ["y"], name="add"),
    ]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [64]), helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [64])],
    )
    plan = plan_memory(ti.load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])))
    _assert_valid(plan)
    order = [n.name for n in ti.load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])).topological_order()]
    assert plan.buffers["a"].last == order.index("if")  # read only inside the If's branches


def test_input_read_later_is_not_overwritten_in_place():
    nodes = [
        helper.make_node("Exp", ["x"], ["a"], name="exp"),
        helper.make_node("Relu", ["a"], ["b"], name="relu"),  # a is still read by add
        helper.make_node("Add", ["a", "b"], ["y"], name="add"),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [256])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [256])])
    plan = plan_memory(ti.load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])))
    _assert_valid(plan)
    assert plan.buffers["b"].alias_of is None
    assert plan.offset_of("a") != plan.offset_of("b")


def test_symbolic_batch_planned_for_given_shapes():
    graph = _chain(["Relu", "Exp"], shape=("N", 64))
    small = plan_memory(graph, {"x": Value("x", np.float32, (1, 64))})
    big = plan_memory(graph, {"x": Value("x", np.float32, (8, 64))})
    assert big.arena_bytes == 8 * small.arena_bytes


@pytest.mark.parametrize("name", LIGHT_MODELS)
def test_light_models_plans_are_valid_and_near_the_bound(name):
    from tinyinfer.models import load_light_model
    from tinyinfer.passes import optimize

    graph, _ = optimize(ti.load(load_light_model(name)), "O2")
    plan = plan_memory(graph)
    _assert_valid(plan)
    assert plan.ratio_to_bound <= 1.05, plan.summary()
    # Chains such as VGG can only alternate two buffers; the branchy networks share far more.
    branchy = name in ("squeezenet", "resnet50", "densenet121", "inception_v1", "inception_v2", "shufflenet")
    assert plan.arena_bytes < plan.naive_bytes / (3 if branchy else 1.3)
