"""The compiled Plan: constants folded while planning, intermediates released after their
last use, requested outputs always kept."""

from __future__ import annotations

import numpy as np
import pytest

import tinyinfer as ti
from tinyinfer.errors import ExecutionError
from tinyinfer.ir import Graph, Node, Value
from tinyinfer.ops import OPS, Op
from tinyinfer.ops.base import like
from tinyinfer.runtime import compile_plan

A = np.array([1.0, 2.0, 3.0], dtype=np.float32)
B = np.array([0.5, 0.25, -1.0], dtype=np.float32)


def prepared(nodes, inputs, outputs, initializers=None) -> Graph:
    graph = Graph(nodes, inputs, outputs, dict(initializers or {}), opset={"": 17})
    graph.validate()
    return ti.load(graph)


def plan_of(graph: Graph, **shapes):
    given = {v.name: Value(v.name, v.dtype, shapes.get(v.name, v.shape)) for v in graph.inputs}
    return compile_plan(graph, given)


def slot_names(plan) -> dict[int, str]:
    """Slot index -> tensor name, read back from the steps' bindings and the outputs."""
    names = {}
    for step in plan.steps:
        for index, name in zip((*step.inputs, *step.outputs), (*step.node.inputs, *step.node.outputs)):
            if index >= 0:
                names[index] = name
    names.update({index: name for name, index in plan.output_slots.items()})
    return names


def x_value(shape=(3,)) -> Value:
    return Value("x", np.float32, shape)


# ---------------------------------------------------------------------------- constant folding
def test_nodes_on_weights_only_are_computed_while_planning():
    graph = prepared(
        [
            Node("Add", ["a", "b"], ["ab"], name="weights_only"),
            Node("Neg", ["ab"], ["neg_ab"], name="still_weights_only"),
            Node("Mul", ["x", "neg_ab"], ["y"], name="needs_x"),
        ],
        [x_value()],
        [Value("y", np.float32, (3,))],
        {"a": A, "b": B},
    )
    plan = plan_of(graph)
    assert [step.node.name for step in plan.steps] == ["needs_x"]
    folded = plan.slots[plan.steps[0].inputs[1]]
    np.testing.assert_array_equal(folded, -(A + B))  # the same float32 ops, so exact
    x = np.array([2.0, -1.0, 4.0], np.float32)
    (y,) = plan.execute([x], ["y"])
    np.testing.assert_array_equal(y, x * -(A + B))


def test_graph_of_constants_only_has_no_steps():
    graph = prepared(
        [Node("Sub", ["a", "b"], ["y"], name="difference"), Node("Neg", ["x"], ["unused"], name="neg")],
        [x_value()],
        [Value("y", np.float32, (3,))],
        {"a": A, "b": B},
    )
    plan = plan_of(graph)
    assert [s.node.name for s in plan.steps] == ["neg"]
    (y,) = plan.execute([np.zeros(3, np.float32)], ["y"])
    np.testing.assert_array_equal(y, A - B)


def test_execute_leaves_the_plan_template_unchanged():
    graph = prepared([Node("Add", ["x", "a"], ["t"]), Node("Neg", ["t"], ["y"])], [x_value()],
                     [Value("y", np.float32, (3,))], {"a": A})
    plan = plan_of(graph)
    template = list(plan.slots)
    plan.execute([np.ones(3, np.float32)], ["y"])
    assert all(a is b for a, b in zip(plan.slots, template))
    assert plan.slots[plan.input_slots[0]] is None


# ---------------------------------------------------------------------------- slot release
def branching_graph() -> Graph:
    """x -> t1 -> t2 ------> y      t1 is read again by the last node, so it lives long;
               t1 -> dead           'dead' nobody reads; 'mid' is an output also read later."""
    nodes = [
        Node("Neg", ["x"], ["t1"], name="first"),
        Node("Abs", ["t1"], ["t2"], name="second"),
        Node("Exp", ["t1"], ["dead"], name="unread"),
        Node("Add", ["t2", "a"], ["mid"], name="third"),
        Node("Mul", ["mid", "t2"], ["t3"], name="fourth"),
        Node("Sub", ["t3", "t1"], ["y"], name="last"),
    ]
    outputs = [Value("y", np.float32, ("N", 3)), Value("mid", np.float32, ("N", 3))]
    return prepared(nodes, [x_value(("N", 3))], outputs, {"a": A})


def expected_releases(plan) -> dict[str, set[str]]:
    """Oracle: each tensor that is not an input, output or constant goes after its last touch."""
    keep = set(plan.output_slots.values()) | set(plan.input_slots)
    last: dict[int, str] = {}
    for step in plan.steps:
        for index in (*step.inputs, *step.outputs):
            if index >= 0:
                last[index] = step.node.name
    names = slot_names(plan)
    releases = {step.node.name: set() for step in plan.steps}
    for index, node in last.items():
        if index not in keep and plan.slots[index] is None:
            releases[node].add(names[index])
    return releases


def test_intermediates_are_released_after_their_last_reader():
    plan = plan_of(branching_graph(), x=(2, 3))
    names = slot_names(plan)
    released = {step.node.name: {names[i] for i in step.release} for step in plan.steps}
    assert released == expected_releases(plan)
    assert released == {
        "first": set(),
        "second": set(),
        "unread": {"dead"},
        "third": set(),
        "fourth": {"t2"},
        "last": {"t1", "t3"},
    }


def test_inputs_outputs_and_weights_are_never_released():
    plan = plan_of(branching_graph(), x=(2, 3))
    released = {index for step in plan.steps for index in step.release}
    assert not released & set(plan.output_slots.values())
    assert not released & set(plan.input_slots)
    assert all(plan.slots[index] is None for index in released)  # constants live with the plan


def test_outputs_survive_release_and_are_correct():
    plan = plan_of(branching_graph(), x=(2, 3))
    x = np.array([[1, -2, 3], [-4, 5, -6]], dtype=np.float32)
    y, mid = plan.execute([x], ["y", "mid"])
    t1 = -x
    t2 = np.abs(t1)
    np.testing.assert_allclose(mid, t2 + A, rtol=1e-6)  # float32 add: one rounding
    np.testing.assert_allclose(y, (t2 + A) * t2 - t1, rtol=1e-6)


def test_plan_values_hold_concrete_shapes():
    plan = plan_of(branching_graph(), x=(5, 3))
    assert plan.values["t3"].shape == (5, 3) and plan.values["t3"].dtype == np.float32
    assert plan.steps[0].record.input_shapes == [(5, 3)]


# ---------------------------------------------------------------------------- failures
class Explodes(Op):
    """Test op whose reference fails the way a buggy NumPy expression would."""

    op_type = "Explodes"
    domain = "test.tinyinfer"

    def infer(self, node, inputs):
        return [like(node, 0, inputs[0])]

    def reference(self, node, x):
        return x.reshape(7, -1)


def test_op_failure_at_run_time_names_the_node(monkeypatch):
    monkeypatch.setitem(OPS, ("test.tinyinfer", "Explodes"), Explodes())
    graph = Graph([Node("Explodes", ["x"], ["y"], domain="test.tinyinfer", name="boom")], [x_value()],
                  [Value("y", np.float32, (3,))], opset={"test.tinyinfer": 1})
    sess = ti.InferenceSession(graph)
    with pytest.raises(ExecutionError, match=r"Explodes 'boom'.*failed on inputs \[\('float32', \(3,\)\)\].*ValueError"):
        sess.run(None, {"x": A})


class SignAndMagnitude(Op):
    """Test op with two outputs of different types: (x > 0, |x|)."""

    op_type = "SignAndMagnitude"
    domain = "test.tinyinfer"

    def infer(self, node, inputs):
        return [like(node, 0, inputs[0], dtype=np.dtype(bool)), like(node, 1, inputs[0])]

    def reference(self, node, x):
        return x > 0, np.abs(x)


@pytest.mark.parametrize("outputs", [["positive", ""], ["", "magnitude"], ["positive", "magnitude"]])
def test_omitted_outputs_are_skipped_when_running_and_checking(monkeypatch, outputs):
    monkeypatch.setitem(OPS, ("test.tinyinfer", "SignAndMagnitude"), SignAndMagnitude())
    node = Node("SignAndMagnitude", ["x"], outputs, domain="test.tinyinfer", name="split")
    graph = Graph([node], [x_value()], [Value(n) for n in outputs if n], opset={"test.tinyinfer": 1})
    x = np.array([-1.0, 0.0, 2.0], np.float32)
    results = ti.InferenceSession(graph, check_shapes=True).run(None, {"x": x})
    expected = {"positive": x > 0, "magnitude": np.abs(x)}
    for name, result in zip([n for n in outputs if n], results):
        assert result.dtype == expected[name].dtype
        np.testing.assert_array_equal(result, expected[name])


class TooFewResults(SignAndMagnitude):
    op_type = "TooFewResults"

    def reference(self, node, x):
        return x > 0


def test_op_returning_too_few_results_is_named(monkeypatch):
    monkeypatch.setitem(OPS, ("test.tinyinfer", "TooFewResults"), TooFewResults())
    # Fine while the missing result is an output the model leaves out ...
    node = Node("TooFewResults", ["x"], ["positive", ""], domain="test.tinyinfer", name="short")
    graph = Graph([node], [x_value()], [Value("positive")], opset={"test.tinyinfer": 1})
    (positive,) = ti.InferenceSession(graph).run(None, {"x": A})
    np.testing.assert_array_equal(positive, A > 0)
    # ... an error naming the node once the model wants it.
    node = Node("TooFewResults", ["x"], ["positive", "magnitude"], domain="test.tinyinfer", name="short")
    graph = Graph([node], [x_value()], [Value("magnitude")], opset={"test.tinyinfer": 1})
    with pytest.raises(ExecutionError, match="'short'.*returned 1 outputs, expected 2"):
        ti.InferenceSession(graph).run(None, {"x": A})


# ---------------------------------------------------------------------------- the prepared run loop
def test_an_omitted_optional_input_reads_none():
    """Clip(x, '', max): the empty min is passed to the op as None (the slot it reads is never written)."""
    high = np.array(1.5, np.float32)
    graph = prepared([Node("Relu", ["x"], ["r"]), Node("Clip", ["r", "", "hi"], ["y"])], [x_value()],
                     [Value("y", np.float32, (3,))], {"hi": high})
    plan = plan_of(graph)
    (clip,) = [step for step in plan.steps if step.node.op_type == "Clip"]
    assert clip.inputs[1] == -1 and plan.slots[clip.reads[1]] is None
    for _ in range(2):  # the None slot stays None run after run
        (y,) = plan.execute([np.array([-1.0, 1.0, 3.0], np.float32)], ["y"])
        np.testing.assert_array_equal(y, [0.0, 1.0, 1.5])


def test_a_result_written_where_planned_is_kept_and_any_other_is_copied_there():
    from tinyinfer.kernels.registry import writes_into

    graph = prepared([Node("Neg", ["x"], ["t"], name="writes"), Node("Abs", ["t"], ["u"], name="returns"),
                      Node("Exp", ["u"], ["y"])], [x_value()], [Value("y", np.float32, (3,))])
    plan = plan_of(graph)
    writer, returner = plan.steps[0], plan.steps[1]
    seen = {}

    def neg(node, x, out=None):
        np.negative(x, out=out[0])
        seen["planned"] = out[0]
        return out[0]

    writer.fn, writer.writes_out = writes_into(neg), True
    returner.fn = lambda node, t: np.abs(t) + 0  # a fresh array, copied into u's place
    x = np.array([1.0, -2.0, 3.0], np.float32)
    kept = []
    plan.execute([x], ["y"], observe=lambda name, value: kept.append((name, value)))
    (y,) = plan.execute([x], ["y"])
    np.testing.assert_allclose(y, np.exp(np.abs(-x)))
    assert writer.one_planned_output and returner.one_planned_output
    t, u = dict(kept)["t"], dict(kept)["u"]
    assert t is seen["planned"]  # the kernel's own out array, kept as it is
    assert np.shares_memory(u, plan.arenas[0].buffer)  # the fresh array was copied into the arena
