"""Running from the planned arena: results stay correct, outputs stay the caller's, no leaks.

The oracle is ONNX's reference evaluator (or the same session with ``memory="heap"``, whose
every result is a fresh NumPy array); tolerance 1e-6 relative, as the two run the same
float32 operations in the same order.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

import tinyinfer as ti
from tinyinfer.errors import ExecutionError
from tinyinfer.passes.memory import plan_memory
from tinyinfer.runtime.plan import compile_plan

OPSET = [helper.make_opsetid("", 17)]


def _model(nodes, inputs, outputs, initializers=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    return helper.make_model(graph, opset_imports=OPSET)


def _float(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _branchy():
    """Tensors of several sizes and lifetimes, a view (Flatten) as the output."""
    nodes = [
        helper.make_node("Exp", ["x"], ["a"]),
        helper.make_node("Sigmoid", ["x"], ["b"]),
        helper.make_node("Mul", ["a", "b"], ["c"]),
        helper.make_node("Relu", ["c"], ["d"]),
        helper.make_node("Concat", ["d", "a"], ["e"], axis=1),
        helper.make_node("Tanh", ["e"], ["f"]),
        helper.make_node("Flatten", ["f"], ["y"], axis=1),
    ]
    return _model(nodes, [_float("x", [2, 3, 4])], [_float("y", [2, 24])])


def test_arena_and_heap_agree_with_onnx_reference():
    model = _branchy()
    x = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    expected = ReferenceEvaluator(model).run(None, {"x": x})[0]
    for memory in ("arena", "heap"):
        got = ti.InferenceSession(model, memory=memory).run(None, {"x": x})[0]
        np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_outputs_survive_the_next_run():
    """The output is a view of an arena tensor inside the plan; the caller gets its own copy."""
    sess = ti.InferenceSession(_branchy())
    rng = np.random.default_rng(1)
    x1, x2 = (rng.standard_normal((2, 3, 4)).astype(np.float32) for _ in range(2))
    first = sess.run(None, {"x": x1})[0]
    kept = first.copy()
    sess.run(None, {"x": x2})
    np.testing.assert_array_equal(first, kept)
    plan = sess.plan_for({"x": x1})
    assert plan.arena_bytes > 0 and not np.may_share_memory(first, plan.arenas[0].buffer)


def test_session_arena_is_the_memory_plan():
    from tinyinfer.models import load_light_model

    model = load_light_model("squeezenet")
    sess = ti.InferenceSession(model)
    feeds = {"data_0": np.zeros((1, 3, 224, 224), np.float32)}
    plan = sess.plan_for(feeds)
    assert plan.arena_bytes == plan_memory(sess.graph).arena_bytes
    assert sess.memory_plan(feeds).ratio_to_bound <= 1.05
    # Every planned tensor really is a view of the one arena.
    arena = plan.arenas[0] if plan.arenas else None
    sess.run(None, feeds)
    arena = plan.arenas[0]
    views = [v for outs in arena.outs for v in outs if v is not None]
    assert views and all(v.base is not None and np.shares_memory(v, arena.buffer) for v in views)


def test_slice_of_unknown_size_is_not_left_pointing_into_the_arena():
    """A Slice whose bounds are a feed has no planned size; NumPy returns a view of its input,
    which lives in the arena and is reused by later tensors, so the runtime must copy it."""
    nodes = [
        helper.make_node("Exp", ["x"], ["a"]),
        helper.make_node("Slice", ["a", "starts", "ends"], ["s"]),
        helper.make_node("Neg", ["x"], ["b"]),
        helper.make_node("Sigmoid", ["b"], ["c"]),
        helper.make_node("Tanh", ["c"], ["d"]),
        helper.make_node("ReduceSum", ["d"], ["r"], keepdims=1),
        helper.make_node("Add", ["s", "r"], ["y"]),
    ]
    int64 = lambda n: helper.make_tensor_value_info(n, TensorProto.INT64, [1])  # noqa: E731
    model = _model(nodes, [_float("x", [64]), int64("starts"), int64("ends")], [_float("y", None)])
    x = np.random.default_rng(2).standard_normal(64).astype(np.float32)
    feeds = {"x": x, "starts": np.array([3]), "ends": np.array([40])}
    expected = ReferenceEvaluator(model).run(None, feeds)[0]
    got = ti.InferenceSession(model).run(None, feeds)[0]
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_concurrent_runs_get_their_own_arenas():
    model = _branchy()
    sess = ti.InferenceSession(model)
    rng = np.random.default_rng(3)
    xs = [rng.standard_normal((2, 3, 4)).astype(np.float32) for _ in range(8)]
    expected = [ReferenceEvaluator(model).run(None, {"x": x})[0] for x in xs]
    failures = []

    def worker(k):
        for _ in range(50):
            got = sess.run(None, {"x": xs[k]})[0]
            if not np.allclose(got, expected[k], rtol=1e-6):
                failures.append(k)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures


def test_kernel_that_writes_into_its_place_gets_the_arena_view():
    model = _branchy()
    graph = ti.load(model)
    seen = []

    def kernel_for(node, values):
        from tinyinfer import ops

        reference = ops.get_op(node).reference
        if node.op_type != "Mul":
            return reference

        def mul(node, a, b, out=None):
            seen.append(out)
            return np.multiply(a, b, out=out[0])

        mul.writes_out = True
        return mul

    plan = compile_plan(graph, {"x": ti.ir.Value("x", np.dtype(np.float32), (2, 3, 4))}, kernel_for)
    x = np.random.default_rng(4).standard_normal((2, 3, 4)).astype(np.float32)
    got = plan.execute([x], ["y"])[0]
    np.testing.assert_allclose(got, ReferenceEvaluator(model).run(None, {"x": x})[0], rtol=1e-6)
    (out,) = seen[0]
    assert out is not None and np.shares_memory(out, plan.arenas[0].buffer)


def test_a_result_of_the_wrong_shape_is_an_execution_error():
    model = _branchy()
    graph = ti.load(model)

    def kernel_for(node, values):
        from tinyinfer import ops

        if node.op_type == "Relu":
            return lambda node, c: np.maximum(c, 0)[:, :2]  # wrong: drops a row
        return ops.get_op(node).reference

    plan = compile_plan(graph, {"x": ti.ir.Value("x", np.dtype(np.float32), (2, 3, 4))}, kernel_for)
    with pytest.raises(ExecutionError, match="shape inference planned"):
        plan.execute([np.ones((2, 3, 4), np.float32)], ["y"])


def test_unknown_memory_mode_is_refused():
    with pytest.raises(ti.TinyInferError, match="memory must be"):
        ti.InferenceSession(_branchy(), memory="stack")


def test_observe_sees_every_intermediate_once_per_run_as_computed():
    model = _branchy()
    sess = ti.InferenceSession(model, opt_level="O0")
    x = np.random.default_rng(5).standard_normal((2, 3, 4)).astype(np.float32)
    seen = {}
    sess.run(None, {"x": x}, observe=lambda name, value: seen.setdefault(name, np.array(value, copy=True)))
    assert sorted(seen) == ["a", "b", "c", "d", "e", "f", "y"]
    np.testing.assert_allclose(seen["c"], np.exp(x) / (1 + np.exp(-x)), rtol=1e-6)
    np.testing.assert_allclose(seen["d"], np.maximum(seen["c"], 0), rtol=0)
