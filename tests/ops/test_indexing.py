"""Indexing ops (tinyinfer/ops/indexing.py).

Oracles: ``onnx.reference.ReferenceEvaluator`` on one-node models, and naive Python loops
written straight from the spec's formulas where the point is the formula itself
(GatherElements, GatherND, the Scatter reductions). Comparisons are exact: these ops copy
values, and the reductions add or multiply a few small integers-valued floats, which is
exact in float32.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx_oracle import Initializer, assert_matches_reference, run_onnxruntime, run_tinyinfer

import tinyinfer
from tinyinfer import ops
from tinyinfer.errors import ExecutionError, InvalidAttributeError, ShapeInferenceError
from tinyinfer.ir import Graph, Node, Value


def arange(*shape, dtype=np.float32):
    return np.arange(int(np.prod(shape)), dtype=dtype).reshape(shape)


def ints(*values):
    return np.array(values, dtype=np.int64)


def infer_shapes_of(op_type, shapes, attrs=None, n_outputs=1, consts=None, opset=21):
    """Output shapes of one node whose inputs are graph inputs of the given shapes (or consts)."""
    consts = consts or {}
    names, graph_inputs = [], []
    for i, shape in enumerate(shapes):
        names.append(f"x{i}")
        if i not in consts:
            graph_inputs.append(Value(f"x{i}", np.float32 if i == 0 else np.int64, shape))
    node = Node(op_type, names, [f"y{i}" for i in range(n_outputs)], dict(attrs or {}), name="node")
    weights = {f"x{i}": array for i, array in consts.items()}
    graph = Graph(nodes=[node], inputs=graph_inputs, initializers=weights, opset={"": opset})
    ops.prepare_graph(graph)
    known = ops.infer_shapes(graph)
    return [known[f"y{i}"].shape for i in range(n_outputs)]


# ---------------------------------------------------------------------------- Gather
@pytest.mark.parametrize("axis", [0, 1, -1])
@pytest.mark.parametrize("indices", [ints(0, 2, -1), ints(1), np.array([[0, -2], [1, 1]], np.int32), np.array(1)])
def test_gather_matches_reference(axis, indices):
    assert_matches_reference("Gather", [arange(3, 4, 3), indices], axis=axis)


def test_gather_index_out_of_range_names_the_node():
    with pytest.raises(ExecutionError) as info:
        run_tinyinfer("Gather", [arange(3, 4), ints(0, 3)], axis=0)
    message = str(info.value)
    assert "Gather 'gather_node'" in message and "index 3 is out of range [-3, 2]" in message


def test_gather_shape_with_symbols():
    assert infer_shapes_of("Gather", [("N", 3, 4), (5, 2)], {"axis": 1}) == [("N", 5, 2, 4)]
    assert infer_shapes_of("Gather", [("N", 3, 4), ()], {"axis": 0}) == [(3, 4)]


def gather_elements_by_loops(data, indices, axis):
    out = np.empty(indices.shape, data.dtype)
    for position in itertools.product(*map(range, indices.shape)):
        source = list(position)
        source[axis] = indices[position] % data.shape[axis]
        out[position] = data[tuple(source)]
    return out


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_gather_elements_matches_loops(axis):
    # The indices are smaller than the data along the other axes too, which the spec allows.
    data = arange(3, 4)
    rng = np.random.default_rng(axis + 5)
    indices = rng.integers(-data.shape[axis], data.shape[axis], size=(2, 3))
    (got,) = run_tinyinfer("GatherElements", [data, indices], axis=axis)
    np.testing.assert_array_equal(got, gather_elements_by_loops(data, indices, axis))


def test_gather_elements_matches_reference():
    assert_matches_reference("GatherElements", [arange(3, 3), ints(1, 2, 0, -1, 0, 2).reshape(2, 3)], axis=0)


def gather_nd_by_loops(data, indices, batch_dims):
    b, k = batch_dims, indices.shape[-1]
    out = np.empty(indices.shape[:-1] + data.shape[b + k:], data.dtype)
    for position in itertools.product(*map(range, indices.shape[:-1])):
        address = tuple(position[:b]) + tuple(indices[position])
        out[position] = data[address]
    return out


@pytest.mark.parametrize(
    "data_shape, indices_shape, batch_dims",
    [
        ((2, 2), (2, 2), 0),
        ((2, 3, 4), (5, 1), 0),
        ((2, 3, 4), (2, 2, 2), 0),
        ((2, 3, 4), (2, 1), 1),
        ((2, 3, 4), (2, 5, 2), 1),
        ((2, 3, 4), (2, 3, 1), 2),
    ],
)
def test_gather_nd_matches_loops(data_shape, indices_shape, batch_dims):
    data = arange(*data_shape)
    rng = np.random.default_rng(len(indices_shape))
    k = indices_shape[-1]
    limits = np.array(data_shape[batch_dims:batch_dims + k])
    indices = (rng.integers(0, 100, size=indices_shape) % limits).astype(np.int64)
    got = assert_matches_reference("GatherND", [data, indices], batch_dims=batch_dims)[0]
    np.testing.assert_array_equal(got, gather_nd_by_loops(data, indices, batch_dims))


def test_gather_nd_negative_indices_and_shape():
    assert_matches_reference("GatherND", [arange(2, 3, 4), ints(-1, -3, 0, 2).reshape(2, 2)])
    assert infer_shapes_of("GatherND", [("N", 3, 4), ("N", 2, 1)], {"batch_dims": 1}) == [("N", 2, 4)]


def test_gather_nd_tuple_too_long_raises():
    with pytest.raises(ShapeInferenceError, match="index tuples have 3 entries"):
        infer_shapes_of("GatherND", [(2, 3), (4, 3)])


# ---------------------------------------------------------------------------- Scatter
def scatter_elements_by_loops(data, indices, updates, axis, reduction):
    out = data.copy()
    combine = {"add": np.add, "mul": np.multiply, "max": np.maximum, "min": np.minimum}[reduction]
    for position in itertools.product(*map(range, indices.shape)):
        target = list(position)
        target[axis] = indices[position] % data.shape[axis]
        out[tuple(target)] = combine(out[tuple(target)], updates[position])
    return out


@pytest.mark.parametrize("reduction", ["add", "mul", "max", "min"])
@pytest.mark.parametrize("axis", [0, 1])
def test_scatter_elements_reductions_combine_repeated_indices(reduction, axis):
    data = arange(3, 4) - 5
    rng = np.random.default_rng(7)
    indices = rng.integers(-data.shape[axis], data.shape[axis], size=(3, 4) if axis else (5, 4))  # repeats
    updates = rng.integers(-3, 4, size=indices.shape).astype(np.float32)
    (got,) = run_tinyinfer("ScatterElements", [data, indices, updates], opset=18, axis=axis, reduction=reduction)
    np.testing.assert_array_equal(got, scatter_elements_by_loops(data, indices, updates, axis, reduction))


def test_scatter_elements_matches_reference():
    data, indices = arange(3, 3), ints(1, 0, 2, 0, 2, 1).reshape(2, 3)
    assert_matches_reference("ScatterElements", [data, indices, -arange(2, 3)], axis=0)
    assert_matches_reference("ScatterElements", [data, -indices - 1, -arange(2, 3)], opset=16, axis=1, reduction="add")


def test_scatter_of_opset_10_is_scatter_elements():
    # onnx.reference has no Scatter (removed from the spec in opset 11); ONNX Runtime does.
    inputs = [arange(3, 3), ints(1, 0, 2, 0, 2, 1).reshape(2, 3), -arange(2, 3)]
    (got,) = run_tinyinfer("Scatter", inputs, opset=10, axis=1)
    (want,) = run_onnxruntime("Scatter", inputs, opset=10, axis=1)
    np.testing.assert_array_equal(got, want)


def test_scatter_unknown_reduction_is_refused():
    with pytest.raises(InvalidAttributeError, match="reduction"):
        run_tinyinfer("ScatterElements", [arange(2), ints(0), arange(1)], opset=18, reduction="mean")


@pytest.mark.parametrize("reduction", ["none", "add", "mul", "max", "min"])
def test_scatter_nd_matches_reference(reduction):
    data = arange(4, 3, 2)
    indices = ints(0, 2, -1).reshape(3, 1)  # distinct rows: every reduction is well defined
    updates = -arange(3, 3, 2)
    assert_matches_reference("ScatterND", [data, indices, updates], opset=18, reduction=reduction)


def test_scatter_nd_add_accumulates_repeated_tuples():
    data = np.zeros((3, 2), np.float32)
    indices = ints(1, 1, 1, 1, 0, 0).reshape(3, 2)  # element (1, 1) twice
    (got,) = run_tinyinfer("ScatterND", [data, indices, ints(5, 7, 2).astype(np.float32)], opset=16, reduction="add")
    np.testing.assert_array_equal(got, [[2, 0], [0, 12], [0, 0]])


def test_scatter_nd_wrong_updates_shape_raises():
    with pytest.raises(ShapeInferenceError, match="updates"):
        infer_shapes_of("ScatterND", [(4, 3), (2, 1), (2, 4)])


# ---------------------------------------------------------------------------- OneHot, TopK
@pytest.mark.parametrize("axis", [-1, 0, 1, -3])
def test_one_hot_matches_reference(axis):
    indices = ints(0, 3, -1, 7, -5, 2).reshape(2, 3)  # 7 and -5 are out of range for depth 4
    values = np.array([-1.5, 2.0], np.float32)
    assert_matches_reference("OneHot", [indices, Initializer(np.array(4, np.int64)), values], axis=axis)


def test_one_hot_float_indices_and_depth():
    # Non-integer indices and depth are cast to int64; depth may also be a [1] tensor.
    indices = np.array([0.0, 2.0, 1.0], np.float32)
    assert_matches_reference("OneHot", [indices, np.array(3.0, np.float32), ints(0, 9)])
    (got,) = run_tinyinfer("OneHot", [indices, np.array([3.0], np.float32), ints(0, 9)])
    np.testing.assert_array_equal(got, [[9, 0, 0], [0, 0, 9], [0, 9, 0]])


@pytest.mark.parametrize("largest", [0, 1])
@pytest.mark.parametrize("axis", [0, 1, -1])
@pytest.mark.parametrize("k", [0, 1, 3])
def test_top_k_matches_reference(largest, axis, k):
    x = np.random.default_rng(3).integers(0, 4, size=(4, 5, 3)).astype(np.float32)  # many ties
    assert_matches_reference("TopK", [x, Initializer(ints(k))], 2, largest=largest, axis=axis)


def test_top_k_ties_keep_the_lower_index_first_for_unsigned():
    x = np.array([[3, 1, 3, 7, 1, 7]], np.uint64)
    values, indices = run_tinyinfer("TopK", [x, Initializer(ints(4))], 2)
    np.testing.assert_array_equal(values, [[7, 7, 3, 3]])
    np.testing.assert_array_equal(indices, [[3, 5, 0, 2]])
    values, indices = run_tinyinfer("TopK", [x, Initializer(ints(3))], 2, largest=0)
    np.testing.assert_array_equal(indices, [[1, 4, 0]])


def test_top_k_as_an_attribute_before_opset_10():
    assert_matches_reference("TopK", [arange(2, 5)], 2, opset=9, k=2)


def test_top_k_k_larger_than_the_axis_raises():
    with pytest.raises(ShapeInferenceError, match="k = 6"):
        infer_shapes_of("TopK", [(2, 5), (1,)], n_outputs=2, consts={1: ints(6)})


# ---------------------------------------------------------------------------- data-dependent shapes
@pytest.mark.parametrize(
    "x", [np.array([[1, 0], [1, 1]], np.int32), np.zeros((2, 3), bool), np.array([0.0, 2.0, -1.0], np.float32)]
)
def test_non_zero_matches_reference(x):
    assert_matches_reference("NonZero", [x])


@pytest.mark.parametrize("axis", [None, 0, 1, -1])
@pytest.mark.parametrize("condition", [[True, False, True], [False, True], [False, False, False]])
def test_compress_matches_reference(axis, condition):
    kwargs = {} if axis is None else {"axis": axis}
    assert_matches_reference("Compress", [arange(3, 3), np.array(condition)], **kwargs)


def test_compress_with_a_known_condition_has_a_known_shape():
    condition = {1: np.array([True, False, True])}
    assert infer_shapes_of("Compress", [("N", 4), (3,)], {"axis": 1}, consts=condition) == [("N", 2)]


@settings(max_examples=40, deadline=None)
@given(
    values=st.lists(st.integers(-3, 3), min_size=1, max_size=12),
    sort=st.sampled_from([0, 1]),
)
def test_unique_matches_reference_without_axis(values, sort):
    x = np.array(values, np.float32)
    assert_matches_reference("Unique", [x], 4, sorted=sort)


UNIQUE_ROWS = np.array([[1, 0, 0], [1, 0, 0], [2, 3, 4], [1, 0, 0]], np.int64)


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_unique_along_an_axis_matches_reference(axis):
    assert_matches_reference("Unique", [UNIQUE_ROWS], 4, axis=axis, sorted=1)


@pytest.mark.parametrize("axis", [None, 0, 1])
def test_unique_in_first_occurrence_order_rebuilds_the_input(axis):
    # Checked by its defining properties: onnx.reference reorders unsorted sub-tensors
    # along axis 0 whatever the axis.
    x = np.array([[4, 1, 4], [0, 1, 9], [4, 1, 4]], np.int32)
    kwargs = {} if axis is None else {"axis": axis}
    y, first, inverse, counts = run_tinyinfer("Unique", [x], 4, sorted=0, **kwargs)
    flat, along = (x.reshape(-1), 0) if axis is None else (x, axis)
    np.testing.assert_array_equal(np.take(y, inverse, axis=along), flat)  # Y[inverse] is X
    np.testing.assert_array_equal(np.take(flat, first, axis=along), y)  # X[first] is Y
    assert list(first) == sorted(first)  # first occurrences, in input order
    assert counts.sum() == flat.shape[along] and (counts > 0).all()


def test_data_dependent_shapes_stay_unknown():
    assert infer_shapes_of("NonZero", [(2, 3)]) == [(2, None)]
    assert infer_shapes_of("Unique", [(2, 3)], n_outputs=4) == [(None,), (None,), (6,), (None,)]
    assert infer_shapes_of("Unique", [("N", 3)], {"axis": 1}, n_outputs=1) == [("N", None)]


def test_gather_of_a_constant_is_folded_while_planning():
    # All inputs constant: the inference driver runs the reference and keeps the value.
    node = Node("Gather", ["table", "which"], ["y"], {"axis": 0}, name="lookup")
    weights = {"table": arange(4, 2), "which": ints(3, -4)}
    graph = Graph(nodes=[node], outputs=[Value("y")], initializers=weights, opset={"": 13})
    ops.prepare_graph(graph)
    np.testing.assert_array_equal(ops.infer_shapes(graph)["y"].const, [[6, 7], [0, 1]])
    with pytest.raises(tinyinfer.TinyInferError, match="lookup"):
        graph.initializers["which"] = ints(4)
        ops.infer_shapes(graph)
