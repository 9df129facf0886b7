"""Reduce ops and ArgMax/ArgMin against ONNX's reference evaluator and NumPy's own reductions.

Both spellings of ``axes`` are exercised: the attribute (ReduceSum before opset 13, the
others before 18) and the optional input (given at run time, or as a weight known while
inferring shapes). Tolerance: sums in a different order differ by a few ulps of the largest
partial sum, so rtol 1e-5 in float32 and 1e-12 in float64; integer results are exact.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx_oracle import Initializer, assert_matches_reference, infer_outputs, run_tinyinfer

from tinyinfer.errors import ShapeInferenceError

REDUCE_OPS = [
    "ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd",
    "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare",
]
#: The first opset in which each op takes ``axes`` as an input.
AXES_INPUT_SINCE = {op: 13 if op == "ReduceSum" else 18 for op in REDUCE_OPS}
TOLERANCE = {np.float32: dict(rtol=1e-5, atol=1e-6), np.float64: dict(rtol=1e-12, atol=1e-14)}


def positive(shape=(3, 4, 5), dtype=np.float32, seed=0):
    """Values in [0.5, 1.5]: valid for ReduceLogSum, and products stay near 1."""
    return (np.random.default_rng(seed).random(shape) + 0.5).astype(dtype)


def reduce_inputs(op_type, x, axes, opset, as_weight=False):
    """(inputs, attrs) that pass ``axes`` the way the op's version expects."""
    if opset >= AXES_INPUT_SINCE[op_type]:
        if axes is None:
            return [x], {}
        axes_array = np.array(axes, dtype=np.int64)
        return [x, Initializer(axes_array) if as_weight else axes_array], {}
    return [x], ({} if axes is None else {"axes": list(axes)})


AXES = [None, [0], [1], [-1], [0, 2], [2, -3], [0, 1, 2]]


@pytest.mark.parametrize("keepdims", [0, 1])
@pytest.mark.parametrize("axes", AXES, ids=str)
@pytest.mark.parametrize("op_type", REDUCE_OPS)
def test_reduce_with_axes_input_matches_reference(op_type, axes, keepdims):
    opset = AXES_INPUT_SINCE[op_type]
    for as_weight in (False, True):
        inputs, attrs = reduce_inputs(op_type, positive(), axes, opset, as_weight)
        assert_matches_reference(op_type, inputs, opset=opset, keepdims=keepdims, **attrs, **TOLERANCE[np.float32])


@pytest.mark.parametrize("axes", [None, [1], [0, -1]], ids=str)
@pytest.mark.parametrize("op_type", REDUCE_OPS)
def test_reduce_with_axes_attribute_matches_reference(op_type, axes):
    opset = AXES_INPUT_SINCE[op_type] - 2  # 11 for ReduceSum, 16 for the others
    inputs, attrs = reduce_inputs(op_type, positive(dtype=np.float64), axes, opset)
    for keepdims in (0, 1):
        assert_matches_reference(op_type, inputs, opset=opset, keepdims=keepdims, **attrs, **TOLERANCE[np.float64])


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint32])
@pytest.mark.parametrize("op_type", ["ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceSumSquare", "ReduceMean"])
def test_integer_reductions_keep_the_integer_type(op_type, dtype):
    x = np.random.default_rng(1).integers(0, 5, (3, 4)).astype(dtype)
    inputs, attrs = reduce_inputs(op_type, x, [1], AXES_INPUT_SINCE[op_type])
    if op_type == "ReduceSumSquare":
        # onnx.reference widens int32/uint32 to 64 bits here, against the spec (output type T).
        (got,) = run_tinyinfer(op_type, inputs, opset=AXES_INPUT_SINCE[op_type], **attrs)
        np.testing.assert_array_equal(got, np.sum(x * x, axis=1, keepdims=True))
        assert got.dtype == dtype
    else:
        assert_matches_reference(op_type, inputs, opset=AXES_INPUT_SINCE[op_type], **attrs)


@pytest.mark.parametrize("op_type", ["ReduceMax", "ReduceMin"])
def test_max_and_min_of_booleans(op_type):
    x = np.array([[True, False], [False, False], [True, True]])
    (got,) = run_tinyinfer(op_type, [x, np.array([1])], opset=20)
    want = x.any(axis=1, keepdims=True) if op_type == "ReduceMax" else x.all(axis=1, keepdims=True)
    np.testing.assert_array_equal(got, want)
    assert got.dtype == np.bool_


#: The identity element each reduction gives over an empty axis.
EMPTY_IDENTITY = {
    "ReduceSum": 0.0, "ReduceMax": -np.inf, "ReduceMin": np.inf, "ReduceProd": 1.0, "ReduceL1": 0.0,
    "ReduceL2": 0.0, "ReduceLogSum": -np.inf, "ReduceLogSumExp": -np.inf, "ReduceSumSquare": 0.0,
}


@pytest.mark.parametrize("op_type", sorted(EMPTY_IDENTITY))
def test_reducing_an_empty_axis_gives_the_identity(op_type):
    x = np.zeros((2, 0, 4), np.float32)
    (got,) = run_tinyinfer(op_type, [x, np.array([1])], opset=AXES_INPUT_SINCE[op_type])
    np.testing.assert_array_equal(got, np.full((2, 1, 4), EMPTY_IDENTITY[op_type], np.float32))


def test_integer_max_of_an_empty_axis_is_the_types_minimum():
    (got,) = run_tinyinfer("ReduceMax", [np.zeros((0, 3), np.int32), np.array([0])], opset=18, keepdims=0)
    np.testing.assert_array_equal(got, np.full(3, np.iinfo(np.int32).min, np.int32))


def test_empty_tensor_reduced_along_another_axis_stays_empty():
    (got,) = run_tinyinfer("ReduceSum", [np.zeros((2, 0, 4), np.float32), np.array([2])], opset=13)
    assert got.shape == (2, 0, 1)


@pytest.mark.parametrize("op_type", REDUCE_OPS)
def test_no_axes_reduces_everything_unless_noop(op_type):
    x = positive(dtype=np.float64)
    opset = AXES_INPUT_SINCE[op_type]
    for axes in ([x], [x, np.array([], np.int64)]):
        (everything,) = run_tinyinfer(op_type, axes, opset=opset, keepdims=0)
        assert everything.shape == ()
        assert_matches_reference(op_type, axes, opset=opset, noop_with_empty_axes=1, **TOLERANCE[np.float64])


def test_noop_with_empty_axes_returns_the_input_for_sum():
    x = positive()
    (got,) = run_tinyinfer("ReduceSum", [x, np.array([], np.int64)], opset=13, noop_with_empty_axes=1)
    np.testing.assert_array_equal(got, x)


def test_log_sum_exp_of_large_numbers_is_finite():
    x = np.array([[1000.0, 1000.0], [-1000.0, -1000.0]], np.float32)
    with np.errstate(over="raise", invalid="raise"):
        (got,) = run_tinyinfer("ReduceLogSumExp", [x, np.array([1])], opset=18, keepdims=0)
    np.testing.assert_allclose(got, [1000.0 + np.log(2.0), -1000.0 + np.log(2.0)], rtol=1e-6)


@given(
    shape=st.lists(st.integers(1, 4), min_size=1, max_size=4),
    data=st.data(),
    keepdims=st.integers(0, 1),
)
@settings(max_examples=40, deadline=None)
def test_sum_max_mean_agree_with_numpy(shape, data, keepdims):
    rank = len(shape)
    axes = data.draw(st.lists(st.integers(-rank, rank - 1), min_size=1, max_size=rank, unique_by=lambda a: a % rank))
    x = np.random.default_rng(rank).standard_normal(shape)
    for op_type, numpy_fn in [("ReduceSum", np.sum), ("ReduceMax", np.max), ("ReduceMean", np.mean)]:
        (got,) = run_tinyinfer(op_type, [x, np.array(axes)], opset=18, keepdims=keepdims)
        want = numpy_fn(x, axis=tuple(axes), keepdims=bool(keepdims))
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------------------- shape inference
@pytest.mark.parametrize("op_type", REDUCE_OPS)
def test_symbolic_dims_are_kept_when_not_reduced(op_type):
    x = positive((2, 3, 4))
    opset = AXES_INPUT_SINCE[op_type]
    inputs, attrs = reduce_inputs(op_type, x, [1], opset, as_weight=True)
    (kept,) = infer_outputs(op_type, inputs, opset=opset, shapes={0: ("N", 3, "W")}, **attrs)
    (dropped,) = infer_outputs(op_type, inputs, opset=opset, shapes={0: ("N", 3, "W")}, keepdims=0, **attrs)
    assert kept.shape == ("N", 1, "W") and dropped.shape == ("N", "W")
    assert kept.dtype == np.float32


def test_axes_known_only_at_run_time_still_give_the_rank():
    x, axes = positive((2, 3, 4)), np.array([0, 2])
    (kept,) = infer_outputs("ReduceSum", [x, axes], opset=13)
    (dropped,) = infer_outputs("ReduceSum", [x, axes], opset=13, keepdims=0)
    assert kept.shape == (None, None, None)
    assert dropped.shape == (None,)
    (ones,) = infer_outputs("ReduceSum", [np.ones((1, 3), np.float32), axes[:1]], opset=13)
    assert ones.shape == (1, None)


@pytest.mark.parametrize("op_type", ["ReduceSum", "ReduceMean"])
def test_axis_out_of_range_names_the_node(op_type):
    inputs, attrs = reduce_inputs(op_type, positive((2, 3)), [2], AXES_INPUT_SINCE[op_type], as_weight=True)
    with pytest.raises(ShapeInferenceError, match=rf"{op_type} '{op_type.lower()}_node'.*axes entry 2 is out of range"):
        run_tinyinfer(op_type, inputs, opset=AXES_INPUT_SINCE[op_type], **attrs)


def test_axis_out_of_range_in_attribute_form():
    with pytest.raises(ShapeInferenceError, match="reducemax_node.*out of range for a tensor of rank 2"):
        run_tinyinfer("ReduceMax", [positive((2, 3))], opset=13, axes=[-3])


def test_repeated_axis_is_rejected():
    with pytest.raises(ShapeInferenceError, match="same axis twice"):
        run_tinyinfer("ReduceSum", [positive((2, 3)), Initializer(np.array([1, -1]))], opset=13)


# ---------------------------------------------------------------------------- ArgMax / ArgMin
@pytest.mark.parametrize("op_type", ["ArgMax", "ArgMin"])
@pytest.mark.parametrize("axis", [0, 1, -1])
@pytest.mark.parametrize("keepdims", [0, 1])
@pytest.mark.parametrize("select_last_index", [0, 1])
def test_arg_reduce_matches_reference(op_type, axis, keepdims, select_last_index):
    # Small integers make ties likely, so first versus last index matters.
    x = np.random.default_rng(2).integers(0, 3, (3, 4, 5)).astype(np.float32)
    (got,) = assert_matches_reference(
        op_type, [x], opset=13, axis=axis, keepdims=keepdims, select_last_index=select_last_index
    )
    assert got.dtype == np.int64


@pytest.mark.parametrize("dtype", [np.int8, np.uint16, np.int64, np.float64])
def test_arg_reduce_dtypes(dtype):
    x = np.array([[3, 1, 3], [0, 2, 2]], dtype=dtype)
    assert_matches_reference("ArgMax", [x], opset=13, axis=1, select_last_index=1)
    assert_matches_reference("ArgMin", [x], opset=11, axis=0)


def test_arg_reduce_picks_first_or_last_of_ties():
    x = np.array([[1.0, 5.0, 5.0, 0.0]], np.float32)
    assert run_tinyinfer("ArgMax", [x], opset=13, axis=1)[0].tolist() == [[1]]
    assert run_tinyinfer("ArgMax", [x], opset=13, axis=1, select_last_index=1)[0].tolist() == [[2]]


def test_arg_reduce_shape_inference_and_bad_axis():
    (value,) = infer_outputs("ArgMax", [positive((2, 3))], opset=13, axis=1, keepdims=0, shapes={0: ("N", 3)})
    assert value.shape == ("N",) and value.dtype == np.int64
    with pytest.raises(ShapeInferenceError, match="argmin_node.*axis 2 is out of range"):
        run_tinyinfer("ArgMin", [positive((2, 3))], opset=13, axis=2)
