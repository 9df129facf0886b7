"""InferenceSession behaves like onnxruntime.InferenceSession for the same model.

ONNX Runtime is the oracle for metadata (``get_inputs``/``get_outputs``) and for results.
The elementwise float32 ops used here are correctly rounded IEEE operations in both engines,
so results are compared with a tolerance of one float32 rounding (rtol 1e-6).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import tinyinfer as ti
from tinyinfer.errors import ExecutionError, FeedNameError
from tinyinfer.ops import OPS, Op
from tinyinfer.ops.base import like
from tinyinfer.runtime import session as session_module

RTOL = 1e-6
WEIGHT = np.array([0.5, -1.0, 2.0], dtype=np.float32)


def two_input_model() -> onnx.ModelProto:
    """sum = a + b; scaled = sum * w; flags = scaled == a; counts: int64 passthrough + 1."""
    inputs = [
        helper.make_tensor_value_info("a", TensorProto.FLOAT, ["batch", 3]),
        helper.make_tensor_value_info("b", TensorProto.FLOAT, [None, 3]),
        helper.make_tensor_value_info("counts", TensorProto.INT64, [2]),
    ]
    outputs = [
        helper.make_tensor_value_info("scaled", TensorProto.FLOAT, ["batch", 3]),
        helper.make_tensor_value_info("flags", TensorProto.BOOL, ["batch", 3]),
        helper.make_tensor_value_info("next", TensorProto.INT64, [2]),
    ]
    nodes = [
        helper.make_node("Add", ["a", "b"], ["sum"], name="add"),
        helper.make_node("Mul", ["sum", "w"], ["scaled"], name="scale"),
        helper.make_node("Equal", ["scaled", "a"], ["flags"], name="compare"),
        helper.make_node("Add", ["counts", "one"], ["next"], name="increment"),
    ]
    initializers = [numpy_helper.from_array(WEIGHT, "w"), numpy_helper.from_array(np.array(1, np.int64), "one")]
    model = helper.make_model(helper.make_graph(nodes, "two", inputs, outputs, initializers),
                              opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


def feeds(batch: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "a": rng.standard_normal((batch, 3)).astype(np.float32),
        "b": rng.standard_normal((batch, 3)).astype(np.float32),
        "counts": np.array([4, 9], dtype=np.int64),
    }


@pytest.fixture
def count_compiles(monkeypatch):
    """How many plans the session compiled: wraps the compile_plan the session calls."""
    calls = []
    real = session_module.compile_plan

    def counting(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(session_module, "compile_plan", counting)
    return calls


# ---------------------------------------------------------------------------- metadata
def test_inputs_and_outputs_describe_the_model_like_onnxruntime():
    model = two_input_model()
    theirs = ort.InferenceSession(model.SerializeToString())
    ours = ti.InferenceSession(model)
    for mine, reference in [(ours.get_inputs(), theirs.get_inputs()), (ours.get_outputs(), theirs.get_outputs())]:
        assert [(a.name, a.shape, a.type) for a in mine] == [(a.name, a.shape, a.type) for a in reference]
    assert ours.get_inputs()[0].shape == ["batch", 3] and ours.get_inputs()[1].shape == [None, 3]
    assert ours.get_inputs()[2].dtype == np.int64
    assert ours.get_providers() == ["reference"]
    assert "a: tensor(float)['batch', 3]" in repr(ours)


@pytest.mark.parametrize("kind", ["path", "bytes", "ModelProto", "Graph"])
def test_session_accepts_every_model_source(tmp_path, kind):
    model = two_input_model()
    path = tmp_path / "two.onnx"
    onnx.save_model(model, path)
    source = {"path": str(path), "bytes": model.SerializeToString(), "ModelProto": model,
              "Graph": ti.frontend.load_onnx(model)}[kind]
    outputs = ti.InferenceSession(source).run(None, feeds())
    reference = ort.InferenceSession(model.SerializeToString()).run(None, feeds())
    for mine, theirs in zip(outputs, reference):
        assert mine.dtype == theirs.dtype
        np.testing.assert_allclose(mine, theirs, rtol=RTOL)


def test_session_options_like_onnxruntime_are_accepted_and_others_refused():
    model = two_input_model()
    ti.InferenceSession(model, providers=["CPUExecutionProvider"])
    with pytest.raises(ti.TinyInferError, match="unknown backend 'cuda'"):
        ti.InferenceSession(model, backend="cuda")
    with pytest.raises(ti.TinyInferError, match=r"unknown session option\(s\): \['threads_please'\]"):
        ti.InferenceSession(model, threads_please=4)


# ---------------------------------------------------------------------------- run
def test_run_all_outputs_and_subsets_in_the_requested_order():
    model = two_input_model()
    theirs = ort.InferenceSession(model.SerializeToString())
    ours = ti.InferenceSession(model)
    for names in (None, ["flags"], ["next", "scaled"], ["scaled", "scaled"]):
        expected = theirs.run(names, feeds())
        got = ours.run(names, feeds())
        assert len(got) == len(expected)
        for mine, reference in zip(got, expected):
            assert mine.dtype == reference.dtype and mine.shape == reference.shape
            np.testing.assert_allclose(mine, reference, rtol=RTOL)


def test_empty_output_list_means_all_outputs_as_in_onnxruntime():
    model = two_input_model()
    expected = ort.InferenceSession(model.SerializeToString()).run([], feeds())
    got = ti.InferenceSession(model).run([], feeds())
    assert [o.shape for o in got] == [o.shape for o in expected]


def test_initializer_listed_as_input_is_a_weight_as_in_onnxruntime():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])
    w = helper.make_tensor_value_info("w", TensorProto.FLOAT, [3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g", [x, w], [y],
                              [numpy_helper.from_array(WEIGHT, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    options.log_severity_level = 3  # ONNX Runtime warns that such a weight could be overridden
    theirs = ort.InferenceSession(model.SerializeToString(), options)
    ours = ti.InferenceSession(model)
    assert [a.name for a in ours.get_inputs()] == [a.name for a in theirs.get_inputs()] == ["x"]
    (y,) = ours.run(None, {"x": np.zeros(3, np.float32)})
    np.testing.assert_array_equal(y, WEIGHT)


def test_unknown_output_name_is_refused():
    with pytest.raises(FeedNameError, match=r"\['nope'\] are not outputs.*'scaled'"):
        ti.InferenceSession(two_input_model()).run(["nope"], feeds())


# ---------------------------------------------------------------------------- plan cache
def test_same_shapes_reuse_the_plan(count_compiles):
    sess = ti.InferenceSession(two_input_model())
    first = sess.run(None, feeds(seed=1))
    second = sess.run(None, feeds(seed=2))
    assert len(count_compiles) == 1
    assert not np.array_equal(first[0], second[0])  # a cached plan still reads the new feeds
    assert sess.plan_for(feeds(seed=3)) is sess.plan_for(feeds(seed=4))
    assert len(count_compiles) == 1


def test_new_batch_size_compiles_a_new_plan_with_concrete_shapes(count_compiles):
    sess = ti.InferenceSession(two_input_model())
    sess.run(None, feeds(batch=2))
    (scaled,) = sess.run(["scaled"], feeds(batch=5))
    assert scaled.shape == (5, 3)
    assert len(count_compiles) == 2
    sess.run(None, feeds(batch=2))
    assert len(count_compiles) == 2
    assert sess.plan_for(feeds(batch=5)).values["sum"].shape == (5, 3)
    assert sess.plan_for(feeds(batch=2)).values["sum"].shape == (2, 3)


# ---------------------------------------------------------------------------- aliasing
def passthrough_model() -> onnx.ModelProto:
    """Outputs that are a feed, a weight, and a value computed from weights only."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [3]) for name in ("x", "w", "doubled", "y")]
    nodes = [helper.make_node("Add", ["w", "w"], ["doubled"]), helper.make_node("Mul", ["x", "w"], ["y"])]
    graph = helper.make_graph(nodes, "alias", [x], outputs, [numpy_helper.from_array(WEIGHT, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_outputs_that_are_feeds_or_weights_are_copies():
    sess = ti.InferenceSession(passthrough_model())
    x = np.array([1, 2, 3], dtype=np.float32)
    out_x, out_w, out_doubled, out_y = sess.run(None, {"x": x})
    np.testing.assert_array_equal(out_x, x)
    np.testing.assert_array_equal(out_w, WEIGHT)
    for result in (out_x, out_w, out_doubled):
        result[...] = 99
    np.testing.assert_array_equal(x, [1, 2, 3])  # the caller's feed is untouched
    again = sess.run(None, {"x": x})
    np.testing.assert_array_equal(again[1], WEIGHT)
    np.testing.assert_array_equal(again[2], 2 * WEIGHT)
    np.testing.assert_array_equal(again[3], x * WEIGHT)


class TakeFirst(Op):
    """Test op: returns its first input as it is (a view), as Identity-like ops may."""

    op_type = "TakeFirst"
    domain = "test.tinyinfer"

    def infer(self, node, inputs):
        return [like(node, 0, inputs[0])]

    def reference(self, node, first, *others):
        return first[...]


def test_output_viewing_a_weight_is_a_copy(monkeypatch):
    monkeypatch.setitem(OPS, ("test.tinyinfer", "TakeFirst"), TakeFirst())
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])
    node = helper.make_node("TakeFirst", ["w", "x"], ["y"], domain="test.tinyinfer")
    graph = helper.make_graph([node], "view", [x], [y], [numpy_helper.from_array(WEIGHT, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("test.tinyinfer", 1)])
    sess = ti.InferenceSession(model)
    (result,) = sess.run(None, {"x": np.zeros(3, np.float32)})
    result[...] = 99
    (again,) = sess.run(None, {"x": np.zeros(3, np.float32)})
    np.testing.assert_array_equal(again, WEIGHT)


# ---------------------------------------------------------------------------- profile and checks
def test_profile_records_every_node_per_run():
    sess = ti.InferenceSession(two_input_model())
    for seed in range(3):
        sess.run(None, feeds(batch=4, seed=seed))
    profile = sess.profile()
    assert profile.runs == 3
    by_name = {r.name: r for r in profile.records}
    assert set(by_name) == {"add", "scale", "compare", "increment"}
    assert all(r.calls == 3 and r.total_ns > 0 and r.kernel == "reference" for r in profile.records)
    assert by_name["scale"].op_type == "Mul"
    assert by_name["scale"].input_shapes == [(4, 3), (3,)]
    assert by_name["compare"].output_shapes == [(4, 3)]
    assert set(profile.by_op()) == {"Add", "Mul", "Equal"}
    table = str(profile)
    assert table == profile.table()
    assert table.startswith("3 run(s)")
    for name, op in (("add", "Add"), ("scale", "Mul"), ("compare", "Equal"), ("increment", "Add")):
        assert any(line.split()[:2] == [name, op] for line in table.splitlines())
    assert "4x3, 3 -> 4x3" in table
    assert "ms per op type:" in table.splitlines()[-1]


def test_profile_table_shows_scalars_and_truncates():
    sess = ti.InferenceSession(two_input_model())
    sess.run(None, feeds())
    table = sess.profile().table(top=2)
    assert "... 2 more nodes" in table
    increment = next(line for line in sess.profile().table().splitlines() if line.startswith("increment"))
    assert "2, scalar -> 2" in increment


class LyingShape(Op):
    """Test op: its inference claims the output has one row more than it computes."""

    op_type = "LyingShape"
    domain = "test.tinyinfer"

    def infer(self, node, inputs):
        shape = inputs[0].shape
        return [like(node, 0, inputs[0], shape=(shape[0] + 1, *shape[1:]))]

    def reference(self, node, x):
        return x.copy()


def test_check_shapes_catches_inference_that_disagrees_with_the_result(monkeypatch):
    monkeypatch.setitem(OPS, ("test.tinyinfer", "LyingShape"), LyingShape())
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    node = helper.make_node("LyingShape", ["x"], ["y"], domain="test.tinyinfer", name="liar")
    model = helper.make_model(helper.make_graph([node], "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("test.tinyinfer", 1)])
    x_value = np.ones((2, 3), np.float32)
    (unchecked,) = ti.InferenceSession(model).run(None, {"x": x_value})
    assert unchecked.shape == (2, 3)
    with pytest.raises(ExecutionError, match=r"'liar'.*shape \[2, 3\], inference said \[3, 3\]"):
        ti.InferenceSession(model, check_shapes=True).run(None, {"x": x_value})


def test_check_shapes_passes_for_correct_ops():
    sess = ti.InferenceSession(two_input_model(), check_shapes=True)
    for batch in (1, 3):
        outputs = sess.run(None, feeds(batch=batch))
        assert [o.shape for o in outputs] == [(batch, 3), (batch, 3), (2,)]
