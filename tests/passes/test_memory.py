"""The memory planner: every plan must be valid, and as small as its lower bound allows."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from onnx import TensorProto, helper

import tinyinfer as ti
from tinyinfer.ir import Value
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
    assert plan.naive_bytes == 4 * 4096
    assert plan.arena_bytes == 4096  # every op writes over its input


def test_chain_without_in_place_alternates_two_buffers():
    plan = plan_memory(_chain(["Exp", "Relu", "Sigmoid", "Tanh"]), in_place=False)
    _assert_valid(plan)
    assert plan.arena_bytes == plan.lower_bound_bytes == 2 * 4096


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


@pytest.mark.parametrize("name", ["squeezenet", "resnet50", "densenet121", "inception_v1"])
def test_light_models_plans_are_valid_and_near_the_bound(name):
    from tinyinfer.models import load_light_model
    from tinyinfer.passes import optimize

    graph, _ = optimize(ti.load(load_light_model(name)), "O2")
    plan = plan_memory(graph)
    _assert_valid(plan)
    # The target is 1.05; 1.10 is the line below which a change is a regression, not noise.
    assert plan.ratio_to_bound <= 1.10, plan.summary()
    assert plan.arena_bytes < plan.naive_bytes / 3
