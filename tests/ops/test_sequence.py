"""Sequence and optional ops against onnx.reference and ONNX Runtime.

Sequences go in and come out as Python lists of arrays, optionals as an array, a list or
None, as both oracles hand them over. The ops only move tensors around (no arithmetic), so
results must be exactly equal.

ONNX Runtime is the main oracle. onnx.reference (1.23) is one too, except where it departs
from the spec: it inserts at the front for ``position == len(sequence)``, wraps the value of
an Optional in an extra list (and calls an empty one full), and does not let a SequenceMap
body read outer names. ONNX
Runtime in turn squeezes SplitToSequence's axis for ``keepdims=0`` even when ``split`` is
given (the spec ignores keepdims then). Those cases use the other oracle.
"""

from __future__ import annotations

import numpy as np
import onnxruntime
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto as T
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import tinyinfer as ti
from tinyinfer import ops
from tinyinfer.errors import ExecutionError, FeedShapeError, FeedTypeError, InvalidAttributeError, ShapeInferenceError
from tinyinfer.frontend import onnx_export

OPSET = 18


def seq(name, elem=T.FLOAT, shape=None):
    return helper.make_tensor_sequence_value_info(name, elem, shape)


def tensor(name, elem=T.FLOAT, shape=None):
    return helper.make_tensor_value_info(name, elem, shape)


def optional(name, element_type):
    return helper.make_value_info(name, helper.make_optional_type_proto(element_type))


def model(nodes, inputs, outputs, initializers=(), opset=OPSET):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def run_all(proto, feeds, *, runtime=True, reference=True):
    """tinyinfer (shape inference checked) against onnx.reference and ONNX Runtime."""
    got = ti.InferenceSession(proto, check_shapes=True).run(None, feeds)
    if reference:
        assert_equal(got, ReferenceEvaluator(proto).run(None, feeds))
    if runtime:
        session = onnxruntime.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        assert_equal(got, session.run(None, feeds))
    return got


def assert_equal(got, want):
    if want is None:
        assert got is None
        return
    if isinstance(want, list) and (not want or not isinstance(want[0], (int, float))):
        assert isinstance(got, list) and len(got) == len(want), f"{type(got).__name__} vs a list of {len(want)}"
        for g, w in zip(got, want):
            assert_equal(g, w)
        return
    w = np.asarray(want)
    assert isinstance(got, np.ndarray) and got.dtype == w.dtype and got.shape == w.shape, f"{got!r} vs {w!r}"
    np.testing.assert_array_equal(got, w)


ABC = {
    "a": np.arange(6, dtype=np.float32).reshape(2, 3),
    "b": np.ones((1, 3), np.float32),
    "c": -np.arange(9, dtype=np.float32).reshape(3, 3),
}


def abc_inputs():
    return [tensor(name, shape=[None, 3]) for name in "abc"]


# ---------------------------------------------------------------------------- building and reading
@pytest.mark.parametrize("position", [-3, -1, 0, 2])
def test_construct_at_length_round_trip(position):
    proto = model(
        [helper.make_node("SequenceConstruct", ["a", "b", "c"], ["s"]),
         helper.make_node("SequenceAt", ["s", "p"], ["item"]),
         helper.make_node("SequenceLength", ["s"], ["n"])],
        abc_inputs(), [tensor("item"), tensor("n", T.INT64, [])],
        [numpy_helper.from_array(np.array(position, np.int64), "p")],
    )
    item, n = run_all(proto, ABC)
    np.testing.assert_array_equal(item, [ABC["a"], ABC["b"], ABC["c"]][position])
    assert n == 3 and n.dtype == np.int64


@pytest.mark.parametrize("position", [None, 0, 1, -1, 3, -3])
def test_insert_then_erase_gives_the_sequence_back(position):
    at = 3 if position is None else position % 4 if position >= 0 else position + 3  # of 3 tensors
    insert_inputs = ["s", "d"] + ([] if position is None else ["p"])
    inits = [numpy_helper.from_array(np.array(at, np.int64), "at")]
    inits += [] if position is None else [numpy_helper.from_array(np.array(position, np.int64), "p")]
    proto = model(
        [helper.make_node("SequenceConstruct", ["a", "b", "c"], ["s"]),
         helper.make_node("SequenceInsert", insert_inputs, ["s2"]),
         helper.make_node("SequenceErase", ["s2", "at"], ["s3"])],
        [*abc_inputs(), tensor("d", shape=[4, 3])], [seq("s2"), seq("s3")], inits,
    )
    feeds = {**ABC, "d": np.full((4, 3), 7, np.float32)}
    inserted, erased = run_all(proto, feeds, reference=position not in (None, 3))
    expected = [ABC["a"], ABC["b"], ABC["c"]]
    assert_equal(inserted, expected[:at] + [feeds["d"]] + expected[at:])
    assert_equal(erased, expected)


def test_empty_sequence_grows_by_insertion():
    proto = model(
        [helper.make_node("SequenceEmpty", [], ["e"], dtype=T.INT32),
         helper.make_node("SequenceInsert", ["e", "x"], ["s"]),
         helper.make_node("SequenceInsert", ["s", "x"], ["s2"]),
         helper.make_node("SequenceLength", ["e"], ["n"])],
        [tensor("x", T.INT32, [2])], [seq("s2", T.INT32), tensor("n", T.INT64, [])],
    )
    (s2, n) = run_all(proto, {"x": np.array([1, 2], np.int32)})
    assert len(s2) == 2 and s2[0].dtype == np.int32 and n == 0


def test_sequence_inputs_and_outputs_are_lists():
    proto = model([helper.make_node("SequenceErase", ["s"], ["t"])], [seq("s", shape=["H", 2])], [seq("t")])
    sess = ti.InferenceSession(proto, check_shapes=True)
    assert sess.get_inputs()[0].type == "seq(tensor(float))"
    items = [np.zeros((1, 2), np.float32), np.ones((3, 2), np.float32)]  # 'H' differs per tensor: fine
    (out,) = sess.run(None, {"s": items})
    assert isinstance(out, list) and len(out) == 1 and out[0] is not items[0]  # no alias of a feed
    np.testing.assert_array_equal(out[0], items[0])


def test_bad_sequence_feeds_are_refused():
    proto = model([helper.make_node("SequenceLength", ["s"], ["n"])], [seq("s", shape=[2])], [tensor("n", T.INT64, [])])
    sess = ti.InferenceSession(proto)
    with pytest.raises(FeedTypeError, match="expects seq\\(tensor\\(float\\)\\): a list of arrays"):
        sess.run(None, {"s": np.zeros(2, np.float32)})
    with pytest.raises(FeedTypeError, match="expects tensor\\(float\\), got tensor\\(int64\\)"):
        sess.run(None, {"s": [np.zeros(2, np.int64)]})
    with pytest.raises(FeedShapeError, match="dimension 0 must be 2"):
        sess.run(None, {"s": [np.zeros(3, np.float32)]})
    assert sess.run(None, {"s": []})[0] == 0


def test_positions_out_of_range_name_the_node():
    proto = model(
        [helper.make_node("SequenceConstruct", ["a"], ["s"]), helper.make_node("SequenceAt", ["s", "p"], ["y"], name="at")],
        [tensor("a", shape=[2]), tensor("p", T.INT64, [])], [tensor("y")],
    )
    sess = ti.InferenceSession(proto)
    with pytest.raises(ExecutionError, match=r"SequenceAt 'at'.*position 1 is out of range \[-1, 0\]"):
        sess.run(None, {"a": np.zeros(2, np.float32), "p": np.array(1, np.int64)})


def test_mixing_element_types_is_a_shape_error():
    proto = model([helper.make_node("SequenceConstruct", ["a", "b"], ["s"])],
                  [tensor("a", shape=[2]), tensor("b", T.INT64, [2])], [seq("s")])
    with pytest.raises(ShapeInferenceError, match="one element type"):
        ti.InferenceSession(proto).run(None, {"a": np.zeros(2, np.float32), "b": np.zeros(2, np.int64)})


# ---------------------------------------------------------------------------- split and concat
@settings(max_examples=25, deadline=None)
@given(
    shape=st.lists(st.integers(1, 5), min_size=1, max_size=3),
    axis_seed=st.integers(0, 10),
    mode=st.sampled_from(["none", "scalar", "sizes"]),
    keepdims=st.sampled_from([0, 1]),
    chunk=st.integers(1, 4),
)
def test_split_to_sequence_matches_the_reference(shape, axis_seed, mode, keepdims, chunk):
    axis = axis_seed % len(shape) - (len(shape) if axis_seed % 2 else 0)
    dim = shape[axis]
    inputs, inits = ["x"], []
    if mode == "scalar":
        inputs.append("split")
        inits.append(numpy_helper.from_array(np.array(chunk, np.int64), "split"))
    elif mode == "sizes":
        sizes = [chunk] * (dim // chunk) + ([dim % chunk] if dim % chunk else [])
        inputs.append("split")
        inits.append(numpy_helper.from_array(np.array(sizes, np.int64), "split"))
    proto = model([helper.make_node("SplitToSequence", inputs, ["s"], axis=axis, keepdims=keepdims)],
                  [tensor("x", shape=shape)], [seq("s")], inits)
    x = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    (pieces,) = run_all(proto, {"x": x}, runtime=keepdims == 1 or mode == "none")
    np.testing.assert_array_equal(np.concatenate(pieces if keepdims or mode != "none" else
                                                 [np.expand_dims(p, axis) for p in pieces], axis=axis), x)


@pytest.mark.parametrize("axis, new_axis", [(0, 0), (1, 0), (-1, 0), (0, 1), (2, 1), (-1, 1), (-3, 1)])
def test_concat_from_sequence_concatenates_or_stacks(axis, new_axis):
    proto = model([helper.make_node("SequenceConstruct", ["a", "b"], ["s"]),
                   helper.make_node("ConcatFromSequence", ["s"], ["y"], axis=axis, new_axis=new_axis)],
                  [tensor("a", shape=[2, 3]), tensor("b", shape=[2, 3])], [tensor("y")])
    feeds = {"a": np.ones((2, 3), np.float32), "b": np.zeros((2, 3), np.float32)}
    (y,) = run_all(proto, feeds)
    want = np.stack if new_axis else np.concatenate
    np.testing.assert_array_equal(y, want([feeds["a"], feeds["b"]], axis=axis))


def test_concat_from_sequence_refuses_a_bad_new_axis():
    proto = model([helper.make_node("ConcatFromSequence", ["s"], ["y"], axis=0, new_axis=2)], [seq("s")], [tensor("y")])
    with pytest.raises(InvalidAttributeError, match="new_axis must be 0 or 1"):
        ti.load(proto)


# ---------------------------------------------------------------------------- SequenceMap
def test_sequence_map_applies_the_body_to_every_element_with_outer_reads():
    body = helper.make_graph(
        [helper.make_node("Mul", ["item", "w"], ["scaled"]), helper.make_node("Add", ["scaled", "bias"], ["out"]),
         helper.make_node("Shape", ["item"], ["shape"])],
        "body", [tensor("item"), tensor("w")], [tensor("out"), tensor("shape", T.INT64, [None])],
    )
    proto = model(
        [helper.make_node("SequenceMap", ["s", "w"], ["outs", "shapes"], body=body)],
        [seq("s", shape=[None]), tensor("w", shape=[1])], [seq("outs"), seq("shapes", T.INT64)],
        [numpy_helper.from_array(np.array([0.5], np.float32), "bias")],
    )
    items = [np.arange(3, dtype=np.float32), np.ones(1, np.float32)]
    outs, shapes = run_all(proto, {"s": items, "w": np.array([2.0], np.float32)}, reference=False)
    assert_equal(outs, [x * 2 + 0.5 for x in items])
    assert_equal(shapes, [np.array([3]), np.array([1])])


# ---------------------------------------------------------------------------- optionals
def test_optional_wraps_and_unwraps_tensors_and_sequences():
    proto = model(
        [helper.make_node("Optional", ["x"], ["ox"]), helper.make_node("OptionalGetElement", ["ox"], ["x2"]),
         helper.make_node("OptionalHasElement", ["ox"], ["has"]),
         helper.make_node("SequenceConstruct", ["x"], ["s"]), helper.make_node("Optional", ["s"], ["os"]),
         helper.make_node("OptionalGetElement", ["os"], ["s2"])],
        [tensor("x", shape=[2])], [tensor("x2"), tensor("has", T.BOOL, []), seq("s2")],
    )
    x = np.array([1.0, 2.0], np.float32)
    x2, has, s2 = run_all(proto, {"x": x}, reference=False)
    np.testing.assert_array_equal(x2, x)
    assert has and has.dtype == np.bool_
    assert_equal(s2, [x])


@pytest.mark.parametrize("feed", [None, np.array([3, 4], np.int32)])
def test_optional_inputs_may_be_empty(feed):
    proto = model(
        [helper.make_node("OptionalHasElement", ["o"], ["has"])],
        [optional("o", helper.make_tensor_type_proto(T.INT32, [2]))], [tensor("has", T.BOOL, [])],
    )
    sess = ti.InferenceSession(proto, check_shapes=True)
    assert sess.get_inputs()[0].type == "optional(tensor(int32))"
    (has,) = sess.run(None, {"o": feed})
    assert has == (feed is not None)
    assert_equal([has], ReferenceEvaluator(proto).run(None, {"o": feed}))


def test_empty_optional_from_the_type_attribute():
    proto = model(
        [helper.make_node("Optional", [], ["o"], type=helper.make_sequence_type_proto(helper.make_tensor_type_proto(T.FLOAT, [])))
         , helper.make_node("OptionalHasElement", ["o"], ["has"])],
        [], [tensor("has", T.BOOL, [])],
    )
    graph = ti.load(proto)
    assert ops.infer_shapes(graph)["o"].kind == "optional_sequence"
    assert run_all(proto, {}, reference=False)[0] == np.array(False)


def test_getting_from_an_empty_optional_names_the_node():
    proto = model([helper.make_node("OptionalGetElement", ["o"], ["x"], name="get")],
                  [optional("o", helper.make_tensor_type_proto(T.FLOAT, [2]))], [tensor("x")])
    with pytest.raises(ExecutionError, match="OptionalGetElement 'get'.*the optional is empty"):
        ti.InferenceSession(proto).run(None, {"o": None})


def test_optional_without_input_or_type_is_refused():
    proto = model([helper.make_node("Optional", [], ["o"])], [], [optional("o", helper.make_tensor_type_proto(T.FLOAT, []))])
    with pytest.raises(InvalidAttributeError, match="needs the 'type' attribute"):
        ti.load(proto)


def test_identity_passes_sequences_and_optionals_through():
    proto = model([helper.make_node("Identity", ["s"], ["t"])], [seq("s", shape=[2])], [seq("t", shape=[2])])
    items = [np.zeros(2, np.float32), np.ones(2, np.float32)]
    assert_equal(run_all(proto, {"s": items})[0], items)


def test_sequence_types_survive_export():
    proto = model(
        [helper.make_node("SequenceInsert", ["s", "x"], ["t"]), helper.make_node("Optional", ["t"], ["o"])],
        [seq("s", shape=[2]), tensor("x", shape=[2])],
        [helper.make_value_info("o", helper.make_optional_type_proto(helper.make_sequence_type_proto(
            helper.make_tensor_type_proto(T.FLOAT, [2]))))],
    )
    exported = onnx_export.to_onnx(ti.load(proto))
    assert exported.graph.input[0].type == proto.graph.input[0].type
    assert exported.graph.output[0].type == proto.graph.output[0].type
    feeds = {"s": [np.zeros(2, np.float32)], "x": np.ones(2, np.float32)}
    session = onnxruntime.InferenceSession(exported.SerializeToString(), providers=["CPUExecutionProvider"])
    assert_equal(ti.InferenceSession(exported).run(None, feeds), session.run(None, feeds))
