"""If, Loop and Scan against ONNX Runtime and onnx.reference, on small hand-built models.

Each model reads at least one value of the enclosing graph from inside a subgraph (the
implicit inputs), since that is what the IR, the plan and the passes must get right. The
oracles are ONNX Runtime (for every case, including Scan's reverse directions and axes,
which onnx.reference does not implement) and onnx.reference where it covers the case.

Tolerance: the bodies do a few float32 adds and multiplies of values ~1, the same
operations in the same order as the oracles, so results agree to float32 rounding:
``rtol=1e-6``.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto as T
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import tinyinfer as ti
from tinyinfer import ops
from tinyinfer.errors import ExecutionError, InvalidAttributeError, InvalidGraphError, ShapeInferenceError
from tinyinfer.frontend import load_onnx, onnx_export
from tinyinfer.ir import Graph, Node, Value
from tinyinfer.passes import PassManager
from tinyinfer.passes.cleanup import eliminate_dead_code, eliminate_identity, fold_constants

RTOL = 1e-6
OPSET = 17


# ---------------------------------------------------------------------------- helpers
def tensor(name, elem=T.FLOAT, shape=None):
    return helper.make_tensor_value_info(name, elem, shape)


def weight(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def model(nodes, inputs, outputs, initializers=(), opset=OPSET):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def run_all(proto, feeds, *, reference=True):
    """tinyinfer (with its shape inference checked), ONNX Runtime and onnx.reference agree."""
    got = ti.InferenceSession(proto, check_shapes=True).run(None, feeds)
    oracles = [onnxruntime.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])]
    want = oracles[0].run(None, feeds)
    assert_same(got, want)
    if reference:
        assert_same(got, ReferenceEvaluator(proto).run(None, feeds))
    return got


def assert_same(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        w = np.asarray(w)
        assert g.dtype == w.dtype and g.shape == w.shape, f"{g.dtype}{g.shape} vs {w.dtype}{w.shape}"
        np.testing.assert_allclose(g, w, rtol=RTOL)


# ---------------------------------------------------------------------------- If
def if_model():
    """y = If(c) then x * scale else -(relu(x)): both branches read outer names."""
    then = helper.make_graph(
        [helper.make_node("Mul", ["x", "scale"], ["t"])], "then", [], [tensor("t")],
    )
    otherwise = helper.make_graph([helper.make_node("Neg", ["h"], ["e"])], "else", [], [tensor("e")])
    return model(
        [
            helper.make_node("Relu", ["x"], ["h"], name="relu"),
            helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=otherwise, name="if"),
        ],
        [tensor("x", shape=["N"]), tensor("c", T.BOOL, [])],
        [tensor("y", shape=["N"])],
        [weight("scale", np.float32(2.5))],
    )


@pytest.mark.parametrize("cond", [True, False])
@pytest.mark.parametrize("n", [1, 4])
def test_if_runs_the_chosen_branch_with_outer_values(cond, n):
    x = np.linspace(-1, 1, n, dtype=np.float32)
    (y,) = run_all(if_model(), {"x": x, "c": np.array(cond)})
    np.testing.assert_allclose(y, x * 2.5 if cond else -np.maximum(x, 0), rtol=RTOL)


def test_if_branches_of_different_shapes_leave_those_dims_unknown():
    then = helper.make_graph([helper.make_node("Identity", ["x"], ["t"])], "then", [], [tensor("t")])
    otherwise = helper.make_graph([helper.make_node("Concat", ["x", "x"], ["e"], axis=0)], "else", [], [tensor("e")])
    proto = model(
        [helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=otherwise)],
        [tensor("x", shape=[3, 2]), tensor("c", T.BOOL, [])], [tensor("y")],
    )
    values = ops.infer_shapes(ti.load(proto))
    assert values["y"].dtype == np.float32 and values["y"].shape == (None, 2)
    x = np.ones((3, 2), np.float32)
    for cond in (True, False):
        run_all(proto, {"x": x, "c": np.array(cond)})


def test_if_with_a_constant_condition_is_folded_away():
    then = helper.make_graph([helper.make_node("Neg", ["w"], ["t"])], "then", [], [tensor("t")])
    otherwise = helper.make_graph([helper.make_node("Abs", ["w"], ["e"])], "else", [], [tensor("e")])
    proto = model(
        [helper.make_node("If", ["c"], ["k"], then_branch=then, else_branch=otherwise),
         helper.make_node("Add", ["x", "k"], ["y"])],
        [tensor("x", shape=[2])], [tensor("y", shape=[2])],
        [weight("c", np.array(True)), weight("w", np.array([1.0, -2.0], np.float32))],
    )
    sess = ti.InferenceSession(proto, opt_level="O1")
    assert [n.op_type for n in sess.graph.nodes] == ["Add"]
    np.testing.assert_allclose(sess.run(None, {"x": np.zeros(2, np.float32)})[0], [-1.0, 2.0])


# ---------------------------------------------------------------------------- Loop
def loop_model(use_trips=True, use_cond=True, limit=None):
    """A loop carrying ``s`` (s += x * i) and scanning ``s``; stops once s > limit if given.

    ``x`` is read from the enclosing graph."""
    body_nodes = [
        helper.make_node("Cast", ["i"], ["i_float"], to=T.FLOAT),
        helper.make_node("Mul", ["x", "i_float"], ["step"]),
        helper.make_node("Add", ["s_in", "step"], ["s_out"]),
        helper.make_node("Identity", ["s_out"], ["scanned"]),
    ]
    if limit is None:
        body_nodes.append(helper.make_node("Identity", ["c_in"], ["c_out"]))
    else:
        body_nodes += [
            helper.make_node("ReduceSum", ["s_out"], ["total"], keepdims=0),
            helper.make_node("Less", ["total", "limit"], ["c_out"]),
        ]
    body = helper.make_graph(
        body_nodes, "body",
        [tensor("i", T.INT64, []), tensor("c_in", T.BOOL, []), tensor("s_in", shape=[2])],
        [tensor("c_out", T.BOOL, []), tensor("s_out", shape=[2]), tensor("scanned", shape=[2])],
    )
    node = helper.make_node(
        "Loop", ["M" if use_trips else "", "cond" if use_cond else "", "s0"], ["s_final", "trace"], body=body,
    )
    inputs = [tensor("x", shape=[2]), tensor("s0", shape=[2])]
    inputs += [tensor("M", T.INT64, [])] if use_trips else []
    inputs += [tensor("cond", T.BOOL, [])] if use_cond else []
    inits = [weight("limit", np.float32(limit))] if limit is not None else []
    return model([node], inputs, [tensor("s_final"), tensor("trace")], inits)


def loop_feeds(trips=None, cond=None):
    feeds = {"x": np.array([1.0, 0.5], np.float32), "s0": np.array([0.0, 1.0], np.float32)}
    if trips is not None:
        feeds["M"] = np.array(trips, np.int64)
    if cond is not None:
        feeds["cond"] = np.array(cond)
    return feeds


@pytest.mark.parametrize("trips", [1, 3, 6])
def test_loop_with_a_trip_count_carries_state_and_stacks_scan_outputs(trips):
    s_final, trace = run_all(loop_model(), loop_feeds(trips, True))
    expected = [np.array([0.0, 1.0]) + np.array([1.0, 0.5]) * sum(range(k + 1)) for k in range(trips)]
    np.testing.assert_allclose(trace, expected, rtol=RTOL)
    np.testing.assert_allclose(s_final, expected[-1], rtol=RTOL)


def test_loop_stops_when_the_body_condition_turns_false():
    # Without a trip count the body's condition alone ends the loop (a while loop).
    s_final, trace = run_all(loop_model(use_trips=False, limit=10.0), loop_feeds(cond=True), reference=False)
    assert trace.shape[0] == 4 and trace[-1].sum() >= 10.0 > trace[-2].sum()
    # With both, the first to stop wins.
    _, trace = run_all(loop_model(limit=10.0), loop_feeds(2, True))
    assert trace.shape[0] == 2


def test_loop_that_never_starts_returns_the_initial_state_and_empty_scans():
    s_final, trace = run_all(loop_model(), loop_feeds(3, False), reference=False)
    np.testing.assert_array_equal(s_final, [0.0, 1.0])
    assert trace.shape == (0, 2) and trace.dtype == np.float32
    s_final, trace = run_all(loop_model(), loop_feeds(0, True), reference=False)
    assert trace.shape == (0, 2)


def test_loop_shape_inference_knows_the_trip_count_only_when_nothing_can_stop_early():
    constant = {"M": Value("M", np.int64, (), const=np.array(4, np.int64))}
    # The body passes its condition through: the loop runs M times.
    assert ops.infer_shapes(ti.load(loop_model(use_cond=False)), constant)["trace"].shape == (4, 2)
    # A condition the body computes from data may stop it early.
    graph = ti.load(loop_model(use_cond=False, limit=10.0))
    assert ops.infer_shapes(graph, constant)["trace"].shape == (None, 2)
    # So may a condition input known only at run time.
    assert ops.infer_shapes(ti.load(loop_model()), constant)["trace"].shape == (None, 2)


def test_loop_carried_value_that_grows_gets_unknown_dims():
    """A carried tensor concatenated onto in each iteration: shape inference widens its
    length to unknown instead of claiming the initial shape. (onnx.reference runs no
    iteration when the condition input is left out, so ONNX Runtime is the oracle.)"""
    body = helper.make_graph(
        [helper.make_node("Identity", ["c_in"], ["c_out"]), helper.make_node("Concat", ["acc", "x"], ["acc_out"], axis=0)],
        "body", [tensor("i", T.INT64, []), tensor("c_in", T.BOOL, []), tensor("acc", shape=[None])],
        [tensor("c_out", T.BOOL, []), tensor("acc_out", shape=[None])],
    )
    proto = model(
        [helper.make_node("Loop", ["M", "", "a0"], ["acc_final"], body=body)],
        [tensor("M", T.INT64, []), tensor("a0", shape=[1]), tensor("x", shape=[1])], [tensor("acc_final")],
    )
    assert ops.infer_shapes(ti.load(proto))["acc_final"].shape == (None,)
    feeds = {"M": np.array(3, np.int64), "a0": np.zeros(1, np.float32), "x": np.ones(1, np.float32)}
    (acc,) = run_all(proto, feeds, reference=False)
    assert acc.shape == (4,)


def test_if_nested_in_a_loop_reads_values_two_scopes_out():
    """The inner If reads ``x`` (main graph) and ``i_float`` (the Loop body)."""
    then = helper.make_graph([helper.make_node("Mul", ["x", "i_float"], ["t"])], "then", [], [tensor("t")])
    otherwise = helper.make_graph([helper.make_node("Sub", ["x", "i_float"], ["e"])], "else", [], [tensor("e")])
    body = helper.make_graph(
        [
            helper.make_node("Cast", ["i"], ["i_float"], to=T.FLOAT),
            helper.make_node("Mod", ["i", "two"], ["parity"]),
            helper.make_node("Equal", ["parity", "zero"], ["even"]),
            helper.make_node("If", ["even"], ["picked"], then_branch=then, else_branch=otherwise, name="inner_if"),
            helper.make_node("Add", ["s_in", "picked"], ["s_out"]),
            helper.make_node("Identity", ["c_in"], ["c_out"]),
        ],
        "body", [tensor("i", T.INT64, []), tensor("c_in", T.BOOL, []), tensor("s_in", shape=[3])],
        [tensor("c_out", T.BOOL, []), tensor("s_out", shape=[3]), tensor("picked", shape=[3])],
    )
    proto = model(
        [helper.make_node("Loop", ["M", "", "s0"], ["s", "picks"], body=body, name="loop")],
        [tensor("x", shape=[3]), tensor("s0", shape=[3]), tensor("M", T.INT64, [])],
        [tensor("s"), tensor("picks")],
        [weight("two", np.int64(2)), weight("zero", np.int64(0))],
    )
    graph = ti.load(proto)
    assert graph.nodes[0].implicit_inputs == ["two", "zero", "x"]
    feeds = {"x": np.array([1.0, 2.0, 3.0], np.float32), "s0": np.zeros(3, np.float32), "M": np.array(5, np.int64)}
    s, picks = run_all(proto, feeds, reference=False)  # no condition input: see above
    x = feeds["x"]
    np.testing.assert_allclose(picks, [x * i if i % 2 == 0 else x - i for i in range(5)], rtol=RTOL)


# ---------------------------------------------------------------------------- Scan
def scan_model(directions=(0, 0), input_axes=None, output_axes=None, output_directions=None, opset=OPSET):
    """A running sum over two scan inputs (one per direction), plus ``bias`` from outside."""
    body = helper.make_graph(
        [
            helper.make_node("Add", ["acc", "a"], ["sum_a"]),
            helper.make_node("Add", ["sum_a", "b"], ["sum_ab"]),
            helper.make_node("Add", ["sum_ab", "bias"], ["acc_out"]),
            helper.make_node("Mul", ["a", "b"], ["product"]),
        ],
        "body", [tensor("acc", shape=[2]), tensor("a", shape=[2]), tensor("b", shape=[2])],
        [tensor("acc_out", shape=[2]), tensor("product", shape=[2])],
    )
    attrs = dict(body=body, num_scan_inputs=2, scan_input_directions=list(directions))
    if input_axes is not None:
        attrs["scan_input_axes"] = list(input_axes)
    if output_axes is not None:
        attrs["scan_output_axes"] = list(output_axes)
    if output_directions is not None:
        attrs["scan_output_directions"] = list(output_directions)
    a_shape = [4, 2] if not input_axes or input_axes[0] == 0 else [2, 4]
    b_shape = [4, 2] if not input_axes or input_axes[1] == 0 else [2, 4]
    return model(
        [helper.make_node("Scan", ["init", "A", "B"], ["final", "products"], **attrs)],
        [tensor("init", shape=[2]), tensor("A", shape=a_shape), tensor("B", shape=b_shape)],
        [tensor("final"), tensor("products")],
        [weight("bias", np.array([0.5, -0.5], np.float32))], opset=opset,
    ), a_shape, b_shape


@pytest.mark.parametrize(
    "directions, input_axes, output_axes, output_directions",
    [
        ((0, 0), None, None, None),
        ((1, 0), None, None, None),
        ((0, 1), [0, 1], None, None),
        ((1, 1), [1, -1], [1], [1]),
        ((0, 0), None, [-1], [0]),
    ],
)
def test_scan_directions_and_axes_match_onnxruntime(directions, input_axes, output_axes, output_directions):
    proto, a_shape, b_shape = scan_model(directions, input_axes, output_axes, output_directions)
    rng = np.random.default_rng(0)
    feeds = {
        "init": np.zeros(2, np.float32),
        "A": rng.standard_normal(a_shape).astype(np.float32),
        "B": rng.standard_normal(b_shape).astype(np.float32),
    }
    reference = directions == (0, 0) and not input_axes and not output_axes
    final, products = run_all(proto, feeds, reference=reference)
    # Independent check of the sum: every slice is added once, whatever the direction.
    np.testing.assert_allclose(final, feeds["A"].sum(axis=0 if not input_axes or input_axes[0] == 0 else 1)
                               + feeds["B"].sum(axis=0 if not input_axes or input_axes[1] == 0 else -1)
                               + 4 * np.array([0.5, -0.5]), rtol=1e-5)


def test_scan_8_runs_each_batch_entry_up_to_its_length():
    body = helper.make_graph(
        [helper.make_node("Add", ["acc", "x"], ["acc_out"]), helper.make_node("Identity", ["acc_out"], ["y"])],
        "body", [tensor("acc", shape=[2]), tensor("x", shape=[2])], [tensor("acc_out", shape=[2]), tensor("y", shape=[2])],
    )
    proto = model(
        [helper.make_node("Scan", ["lens", "init", "X"], ["final", "Y"], body=body, num_scan_inputs=1, directions=[1])],
        [tensor("lens", T.INT64, [2]), tensor("init", shape=[2, 2]), tensor("X", shape=[2, 3, 2])],
        [tensor("final"), tensor("Y")], opset=8,
    )
    x = np.arange(12, dtype=np.float32).reshape(2, 3, 2)
    feeds = {"lens": np.array([3, 2], np.int64), "init": np.zeros((2, 2), np.float32), "X": x}
    final, y = ti.InferenceSession(proto, check_shapes=True).run(None, feeds)
    np.testing.assert_allclose(final, [x[0].sum(0), x[1, :2].sum(0)])
    np.testing.assert_allclose(y[0], np.cumsum(x[0, ::-1], axis=0))
    np.testing.assert_allclose(y[1, :2], np.cumsum(x[1, 1::-1], axis=0))
    np.testing.assert_array_equal(y[1, 2], 0)  # padding past the entry's length
    # ONNX Runtime agrees on the full-length case.
    feeds["lens"] = np.array([3, 3], np.int64)
    session = onnxruntime.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    assert_same(ti.InferenceSession(proto, check_shapes=True).run(None, feeds), session.run(None, feeds))


def test_scan_shape_inference_keeps_symbolic_lengths():
    proto, _, _ = scan_model()
    graph = ti.load(proto)
    values = ops.infer_shapes(graph, {"A": Value("A", np.float32, ("T", 2)), "B": Value("B", np.float32, ("T", 2))})
    assert values["final"].shape == (2,) and values["products"].shape == ("T", 2)


# ---------------------------------------------------------------------------- IR, passes and runtime
def test_topological_order_puts_producers_of_implicit_inputs_first():
    branch = Graph([Node("Neg", ["h"], ["t"])], [], [Value("t")])
    if_node = Node("If", ["c"], ["y"], {"then_branch": branch, "else_branch": branch.copy()}, name="if")
    relu = Node("Relu", ["x"], ["h"], name="relu")
    graph = Graph([if_node, relu], [Value("x", np.float32, (2,)), Value("c", np.bool_, ())], [Value("y")],
                  opset={"": OPSET})
    assert if_node.implicit_inputs == ["h"]
    assert [n.name for n in graph.topological_order()] == ["relu", "if"]
    assert graph.consumers()["h"] == [if_node]
    assert graph.validate() == []


def test_copy_copies_subgraphs():
    graph = ti.load(if_model())
    twin = graph.copy()
    twin.nodes[1].attrs["then_branch"].nodes[0].inputs[1] = "other"
    assert graph.nodes[1].attrs["then_branch"].nodes[0].inputs == ["x", "scale"]


def test_dead_code_elimination_keeps_what_only_a_subgraph_reads():
    graph = ti.load(if_model())
    eliminate_dead_code(graph)
    assert [n.op_type for n in graph.nodes] == ["Relu", "If"] and "scale" in graph.initializers


def test_identity_elimination_renames_reads_inside_subgraphs():
    proto = if_model()
    proto.graph.node[0].output[0] = "h0"
    proto.graph.node.insert(1, helper.make_node("Identity", ["h0"], ["h"], name="copy"))
    graph = ti.load(proto)
    eliminate_identity(graph)
    assert [n.op_type for n in graph.nodes] == ["Relu", "If"]
    assert graph.nodes[1].attrs["else_branch"].nodes[0].inputs == ["h0"]
    x = np.array([-1.0, 2.0], np.float32)
    np.testing.assert_allclose(ti.InferenceSession(graph).run(None, {"x": x, "c": np.array(False)})[0], [0.0, -2.0])


def test_constant_folding_skips_a_loop_whose_body_reads_a_runtime_value():
    graph = ti.load(loop_model())
    graph.initializers["M"] = np.array(3, np.int64)
    graph.initializers["cond"] = np.array(True)
    graph.inputs = [v for v in graph.inputs if v.name not in ("M", "cond")]
    graph.initializers["s0"] = np.zeros(2, np.float32)
    graph.inputs = [v for v in graph.inputs if v.name != "s0"]
    fold_constants(graph)
    assert [n.op_type for n in graph.nodes] == ["Loop"]  # its body reads the input x
    graph.initializers["x"] = np.ones(2, np.float32)
    graph.inputs = []
    assert fold_constants(graph) and graph.nodes == []
    np.testing.assert_allclose(graph.initializers["s_final"], [3.0, 3.0])  # 0 + 1 + 2


def test_plan_keeps_implicit_inputs_alive_until_the_node_ran():
    sess = ti.InferenceSession(if_model(), opt_level="O0")
    x = np.array([-1.0, 3.0], np.float32)
    plan = sess.plan_for({"x": x, "c": np.array(False)})
    relu, if_step = plan.steps
    assert len(if_step.inputs) == 1 + len(if_step.node.implicit_inputs)
    assert not set(relu.release) & set(if_step.inputs)
    np.testing.assert_allclose(sess.run(None, {"x": x, "c": np.array(False)})[0], [0.0, -3.0])


def test_export_round_trip_of_a_model_with_if():
    graph = ti.load(if_model())
    exported = onnx_export.to_onnx(graph)
    onnx.checker.check_model(exported, full_check=True)
    x = np.array([-2.0, 0.5, 4.0], np.float32)
    session = onnxruntime.InferenceSession(exported.SerializeToString(), providers=["CPUExecutionProvider"])
    for cond in (True, False):
        feeds = {"x": x, "c": np.array(cond)}
        assert_same(session.run(None, feeds), ti.InferenceSession(if_model()).run(None, feeds))
        assert_same(ti.InferenceSession(exported).run(None, feeds), session.run(None, feeds))
    again = load_onnx(exported)
    assert again.nodes[1].attrs["then_branch"].nodes[0].inputs == ["x", "scale"]


# ---------------------------------------------------------------------------- errors
def test_undefined_name_in_a_subgraph_names_the_outer_and_inner_node():
    proto = if_model()
    otherwise = next(a.g for a in proto.graph.node[1].attribute if a.name == "else_branch")
    otherwise.node[0].input[0] = "missing"
    otherwise.node[0].name = "inner_neg"
    with pytest.raises(InvalidGraphError, match=r"If 'if'.*subgraph 'else_branch'.*Neg 'inner_neg'.*reads 'missing'"):
        load_onnx(proto)


def test_type_error_in_a_subgraph_names_the_outer_and_inner_node():
    then = helper.make_graph([helper.make_node("Add", ["x", "k"], ["t"], name="bad_add")], "then", [], [tensor("t")])
    otherwise = helper.make_graph([helper.make_node("Neg", ["x"], ["e"])], "else", [], [tensor("e")])
    proto = helper.make_model(helper.make_graph(
        [helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=otherwise, name="if")], "g",
        [tensor("x", shape=[2]), tensor("c", T.BOOL, [])], [tensor("y")], [weight("k", np.ones(3, np.int64))],
    ), opset_imports=[helper.make_opsetid("", OPSET)])
    with pytest.raises(ShapeInferenceError, match=r"If 'if'.*subgraph 'then_branch'.*Add 'bad_add'.*broadcast"):
        ti.InferenceSession(proto, opt_level="O0").run(None, {"x": np.ones(2, np.float32), "c": np.array(True)})


def test_failure_inside_a_loop_body_names_both_nodes():
    body = helper.make_graph(
        [helper.make_node("Identity", ["c_in"], ["c_out"]),
         helper.make_node("Reshape", ["s_in", "shape"], ["s_out"], name="bad_reshape")],
        "body", [tensor("i", T.INT64, []), tensor("c_in", T.BOOL, []), tensor("s_in")],
        [tensor("c_out", T.BOOL, []), tensor("s_out")],
    )
    proto = model([helper.make_node("Loop", ["M", "", "s0"], ["s"], body=body, name="loop")],
                  [tensor("M", T.INT64, []), tensor("s0", shape=[4]), tensor("shape", T.INT64, [1])], [tensor("s")])
    sess = ti.InferenceSession(proto)
    feeds = {"M": np.array(2, np.int64), "s0": np.zeros(4, np.float32), "shape": np.array([3], np.int64)}
    with pytest.raises((ExecutionError, ShapeInferenceError), match=r"Loop 'loop'.*subgraph 'body'.*Reshape 'bad_reshape'"):
        sess.run(None, feeds)


def test_bad_subgraph_signatures_are_refused_at_load():
    proto = if_model()
    then = next(a.g for a in proto.graph.node[1].attribute if a.name == "then_branch")
    then.output.append(tensor("x"))
    with pytest.raises(InvalidAttributeError, match="then_branch returns 2 values but the node has 1 outputs"):
        ti.load(proto)
    body = helper.make_graph([helper.make_node("Identity", ["c_in"], ["c_out"])], "body",
                             [tensor("c_in", T.BOOL, [])], [tensor("c_out", T.BOOL, [])])
    proto = model([helper.make_node("Loop", ["", "c"], [], body=body)], [tensor("c", T.BOOL, [])], [tensor("c")])
    with pytest.raises(InvalidAttributeError, match="body takes 1 inputs"):
        ti.load(proto)


def test_non_bool_condition_is_a_shape_error():
    proto = if_model()
    proto.graph.input[1].type.tensor_type.elem_type = T.FLOAT
    with pytest.raises(ShapeInferenceError, match="cond must be a bool tensor"):
        ti.InferenceSession(proto).run(None, {"x": np.ones(2, np.float32), "c": np.array(1.0, np.float32)})


def test_passes_at_every_level_keep_control_flow_correct():
    x = np.array([-1.0, 2.0, 3.0], np.float32)
    for level in ("O0", "O1", "O2", "O3"):
        graph, _ = PassManager(level).run(ti.load(if_model()))
        out = ti.InferenceSession(graph, opt_level="O0").run(None, {"x": x, "c": np.array(False)})[0]
        np.testing.assert_allclose(out, [0.0, -2.0, -3.0])
