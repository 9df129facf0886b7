"""Constant, ConstantOfShape, Range, Cast and CastLike (tinyinfer/ops/generator.py).

Oracles: ``onnx.reference`` on one-node models (exact equality: these ops create or convert
values, and both sides round the same way), ``onnx.numpy_helper.to_float8e8m0`` for the
float8e8m0 rounding modes, and properties (saturation bounds, integer round trips).
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from onnx import TensorProto, helper, numpy_helper
from onnx_oracle import Initializer, assert_matches_reference, infer_outputs, run_reference, run_tinyinfer

import tinyinfer
from tinyinfer import ops
from tinyinfer.errors import InvalidAttributeError, ShapeInferenceError, TinyInferError, UnsupportedOpError
from tinyinfer.ir import Graph, Node, Value
from tinyinfer.ops.generator import to_float8e8m0

FLOAT8 = [TensorProto.FLOAT8E4M3FN, TensorProto.FLOAT8E4M3FNUZ, TensorProto.FLOAT8E5M2, TensorProto.FLOAT8E5M2FNUZ]
#: Values that exercise rounding, overflow, underflow and the special values.
AWKWARD = np.array([0.47892547, -0.0, 1000000, 1e-7, np.nan, np.inf, -np.inf, -1e-7, -1000000, 448, 464, 57344, 0.5],
                   dtype=np.float32)


def constant_model(**attrs) -> onnx.ModelProto:
    node = helper.make_node("Constant", [], ["y"], name="const_node", **attrs)
    graph = helper.make_graph([node], "g", [], [helper.make_empty_tensor_value_info("y")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


def run_constant(**attrs) -> np.ndarray:
    return tinyinfer.InferenceSession(constant_model(**attrs), check_shapes=True).run(None, {})[0]


def prepare(op_type, attrs, inputs=(), opset=21):
    """Prepare one IR node (attribute checks run here) and infer its outputs."""
    names = [f"x{i}" for i in range(len(inputs))]
    node = Node(op_type, names, ["y"], dict(attrs), name="node")
    graph = Graph(nodes=[node], inputs=[Value(n, v.dtype, v.shape, const=v.const) for n, v in zip(names, inputs)],
                  opset={"": opset})
    ops.prepare_graph(graph)
    return ops.infer_shapes(graph)["y"]


# ---------------------------------------------------------------------------- Constant
@pytest.mark.parametrize(
    "attrs, dtype, shape",
    [
        ({"value": numpy_helper.from_array(np.arange(6, dtype=np.int32).reshape(2, 3))}, np.int32, (2, 3)),
        ({"value_float": 2.5}, np.float32, ()),
        ({"value_floats": [1.0, -2.0, 3.5]}, np.float32, (3,)),
        ({"value_int": -7}, np.int64, ()),
        ({"value_ints": [4, 5]}, np.int64, (2,)),
        ({"value_string": "hello"}, object, ()),
        ({"value_strings": ["a", "bc"]}, object, (2,)),
    ],
)
def test_constant_forms_match_reference(attrs, dtype, shape):
    got = run_constant(**attrs)
    want = onnx.reference.ReferenceEvaluator(constant_model(**attrs)).run(None, {})[0]
    assert got.dtype == np.dtype(dtype) and got.shape == shape
    np.testing.assert_array_equal(got, np.asarray(want, dtype=got.dtype))


def test_constant_holds_a_float8_tensor():
    value = numpy_helper.from_array(np.array([1.0, 448.0], dtype=ml_dtypes.float8_e4m3fn))
    got = run_constant(value=value)
    assert got.dtype == ml_dtypes.float8_e4m3fn and got.astype(np.float32).tolist() == [1.0, 448.0]


def test_constant_needs_exactly_one_value():
    with pytest.raises(InvalidAttributeError, match="const_node.*exactly one of"):
        run_constant(value_int=1, value_float=2.0)
    with pytest.raises(InvalidAttributeError, match="exactly one of .* got none"):
        run_constant()


def test_sparse_constants_are_refused():
    sparse = helper.make_sparse_tensor(
        numpy_helper.from_array(np.array([1.0], np.float32), "values"),
        numpy_helper.from_array(np.array([2], np.int64), "indices"),
        [4],
    )
    with pytest.raises(InvalidAttributeError, match="sparse_value"):  # the importer refuses the type
        run_constant(sparse_value=sparse)
    with pytest.raises(UnsupportedOpError, match="sparse_value"):  # and the op, given an IR node
        prepare("Constant", {"sparse_value": object()})


# ---------------------------------------------------------------------------- ConstantOfShape
@pytest.mark.parametrize(
    "shape, value",
    [
        ([2, 3], None),  # default: float32 zeros
        ([4], numpy_helper.from_array(np.array([7], np.int64))),
        ([2, 0, 3], numpy_helper.from_array(np.array([1.5], np.float16))),
        ([], numpy_helper.from_array(np.array([True]))),
    ],
)
def test_constant_of_shape_matches_reference(shape, value):
    attrs = {} if value is None else {"value": value}
    for inputs in ([np.array(shape, np.int64)], [Initializer(np.array(shape, np.int64))]):
        got = assert_matches_reference("ConstantOfShape", inputs, **attrs)[0]
        assert got.shape == tuple(shape)


def test_constant_of_shape_infers_rank_from_a_runtime_shape():
    (value,) = infer_outputs("ConstantOfShape", [np.array([2, 3, 4], np.int64)])
    assert value.dtype == np.float32 and value.shape == (None, None, None)


def test_constant_of_shape_refuses_negative_dims_and_multi_element_values():
    with pytest.raises(ShapeInferenceError, match="negative dimension"):
        run_tinyinfer("ConstantOfShape", [Initializer(np.array([2, -1], np.int64))])
    with pytest.raises(InvalidAttributeError, match="exactly one element"):
        value = numpy_helper.from_array(np.zeros(2, np.float32))
        run_tinyinfer("ConstantOfShape", [np.array([2], np.int64)], value=value)


# ---------------------------------------------------------------------------- Range
@pytest.mark.parametrize(
    "start, limit, delta",
    [
        (np.int32(3), np.int32(9), np.int32(3)),
        (np.int64(10), np.int64(4), np.int64(-2)),
        (np.int16(0), np.int16(5), np.int16(7)),
        (np.int64(5), np.int64(5), np.int64(1)),  # empty
        (np.int64(0), np.int64(-3), np.int64(1)),  # empty: limit behind start
        (np.float32(1.0), np.float32(5.0), np.float32(0.3)),
        (np.float64(-1.5), np.float64(2.0), np.float64(0.25)),
        (np.float32(10), np.float32(4), np.float32(-1.5)),
        (np.float16(0.0), np.float16(2.0), np.float16(0.1)),
    ],
)
def test_range_matches_reference(start, limit, delta):
    inputs = [np.array(v) for v in (start, limit, delta)]
    assert_matches_reference("Range", inputs, opset=11)
    assert_matches_reference("Range", [Initializer(a) for a in inputs], opset=11)


def test_range_values_are_start_plus_i_delta_not_a_running_sum():
    got = run_tinyinfer("Range", [np.array(v, np.float32) for v in (0.0, 1.0, 0.1)], opset=11)[0]
    np.testing.assert_array_equal(got, (np.arange(10) * np.float64(np.float32(0.1))).astype(np.float32))


def test_range_refuses_zero_delta_and_non_scalars():
    with pytest.raises(TinyInferError, match="delta must not be zero"):
        run_tinyinfer("Range", [np.array(v, np.int64) for v in (0, 5, 0)], opset=11)
    with pytest.raises(ShapeInferenceError, match="'limit' must be a scalar"):
        inputs = [np.array(0.0, np.float32), np.array([5.0, 6.0], np.float32), np.array(1.0, np.float32)]
        run_tinyinfer("Range", inputs, opset=11)


def test_range_accepts_one_element_tensors_as_onnxruntime_does():
    inputs = [np.array(0.0, np.float32), np.array([5.0], np.float32), np.array(1.0, np.float32)]
    np.testing.assert_array_equal(run_tinyinfer("Range", inputs, opset=11)[0], np.arange(5, dtype=np.float32))


# ---------------------------------------------------------------------------- Cast
NUMERIC = [np.float32, np.float64, np.float16, np.int8, np.uint8, np.int16, np.uint16, np.int32, np.int64,
           np.uint32, np.uint64, np.bool_, ml_dtypes.bfloat16]


@pytest.mark.parametrize("source", NUMERIC)
@pytest.mark.parametrize("target", NUMERIC)
def test_cast_between_numeric_types_matches_reference(source, target):
    values = np.array([0, 1, 2, 7, 100, 127], dtype=np.float32)  # in range of every type
    x = values.astype(source)
    got = assert_matches_reference("Cast", [x], to=helper.np_dtype_to_tensor_dtype(np.dtype(target)))[0]
    assert got.dtype == np.dtype(target)


@pytest.mark.parametrize("to", FLOAT8)
@pytest.mark.parametrize("saturate", [0, 1])
@pytest.mark.parametrize("source", [np.float32, np.float16])
def test_cast_to_float8_matches_reference(to, saturate, source):
    with np.errstate(over="ignore"):  # 1e6 is inf in float16, on purpose
        x = AWKWARD.astype(source)
    assert_matches_reference("Cast", [x], to=to, saturate=saturate)


@pytest.mark.parametrize("to", FLOAT8)
def test_saturating_float8_cast_never_overflows(to):
    dtype = helper.tensor_dtype_to_np_dtype(to)
    got = run_tinyinfer("Cast", [AWKWARD], to=to)[0].astype(np.float32)
    largest = float(ml_dtypes.finfo(dtype).max)
    finite = ~np.isnan(AWKWARD)
    assert np.all(np.abs(got[finite]) <= largest) and np.all(np.isnan(got[~finite]))
    assert got[list(AWKWARD).index(np.inf)] == largest and got[list(AWKWARD).index(-np.inf)] == -largest


@pytest.mark.parametrize(
    "to", [TensorProto.INT4, TensorProto.UINT4, TensorProto.FLOAT4E2M1, TensorProto.INT2, TensorProto.UINT2]
)
def test_cast_to_small_types_matches_reference(to):
    assert_matches_reference("Cast", [np.arange(-9, 16, dtype=np.float32)], to=to)


@pytest.mark.parametrize("source", [ml_dtypes.int4, ml_dtypes.uint4, ml_dtypes.float8_e5m2, ml_dtypes.float4_e2m1fn])
def test_cast_from_small_types_matches_reference(source):
    x = np.arange(0, 8, dtype=np.float32).astype(source)
    for to in (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.INT8):
        assert_matches_reference("Cast", [x], to=to)


def test_cast_strings_to_numbers_matches_reference():
    x = np.array(["1.5", "-INF", "+inf", "NaN", "1e-5", "1E8", "100"], dtype=object)
    assert_matches_reference("Cast", [x], to=TensorProto.FLOAT)
    assert_matches_reference("Cast", [np.array(["12", "-7", "9007199254740993"], dtype=object)], to=TensorProto.INT64)


def test_cast_numbers_to_strings_matches_reference():
    x = np.array([1.5, -2.25, np.nan, np.inf, 1e10, 0.1], np.float32)
    got = run_tinyinfer("Cast", [x], to=TensorProto.STRING)[0]
    want = run_reference("Cast", [x], to=TensorProto.STRING)[0]
    assert got.dtype == object and got.tolist() == want.tolist()


def test_cast_low_precision_types_to_strings_prints_their_values():
    x = np.array([3, -2], dtype=ml_dtypes.int4)
    assert run_tinyinfer("Cast", [x], to=TensorProto.STRING)[0].tolist() == ["3", "-2"]
    x = np.array([1.5, -448], dtype=ml_dtypes.float8_e4m3fn)
    assert run_tinyinfer("Cast", [x], to=TensorProto.STRING)[0].tolist() == ["1.5", "-448.0"]


@pytest.mark.parametrize("round_mode", ["up", "down", "nearest"])
@pytest.mark.parametrize("saturate", [0, 1])
def test_cast_to_float8e8m0_matches_onnx_rounding(round_mode, saturate):
    rng = np.random.default_rng(0)
    x = np.concatenate([np.exp2(rng.uniform(-130, 128, 500)), [0.0, 1.5, 3.0, 2.0**127 * 1.9, np.inf, np.nan]])
    x = x.astype(np.float32)
    want = numpy_helper.to_float8e8m0(x, bool(saturate), round_mode).view(np.uint8)
    np.testing.assert_array_equal(to_float8e8m0(x, saturate=bool(saturate), round_mode=round_mode).view(np.uint8), want)
    got = run_tinyinfer("Cast", [x], to=TensorProto.FLOAT8E8M0, saturate=saturate, round_mode=round_mode)[0]
    np.testing.assert_array_equal(got.view(np.uint8), want)


@settings(max_examples=50, deadline=None)
@given(hnp.arrays(np.int32, hnp.array_shapes(max_dims=3, max_side=5), elements=st.integers(-(2**24), 2**24)))
def test_int32_to_float32_and_back_is_exact_below_two_to_the_24(x):
    there = run_tinyinfer("Cast", [x], to=TensorProto.FLOAT)[0]
    back = run_tinyinfer("Cast", [there], to=TensorProto.INT32)[0]
    np.testing.assert_array_equal(back, x)


def test_cast_wraps_out_of_range_integers_like_the_spec_says():
    got = run_tinyinfer("Cast", [np.array([200, -200, 300], np.int16)], to=TensorProto.INT8)[0]
    assert got.tolist() == [-56, 56, 44]


def test_cast_infers_the_target_type():
    (value,) = infer_outputs("Cast", [np.zeros((2, 3), np.float32)], shapes={0: ("N", 3)}, to=TensorProto.FLOAT16)
    assert value.dtype == np.float16 and value.shape == ("N", 3)


@pytest.mark.parametrize("code", [0, 99, -1])
def test_cast_to_an_unknown_type_code_is_refused(code):
    with pytest.raises(InvalidAttributeError, match=f"node.*'to'={code} is not an ONNX element type"):
        prepare("Cast", {"to": code}, [Value("x", np.float32, (2,))])


def test_cast_needs_to_and_a_valid_round_mode():
    with pytest.raises(InvalidAttributeError, match="'to'"):
        prepare("Cast", {}, [Value("x", np.float32, (2,))])
    with pytest.raises(InvalidAttributeError, match="round_mode must be one of"):
        prepare("Cast", {"to": 1, "round_mode": "sideways"}, [Value("x", np.float32, (2,))])


# ---------------------------------------------------------------------------- CastLike
@pytest.mark.parametrize("target", [np.float16, np.int64, np.uint8, ml_dtypes.float8_e4m3fn, ml_dtypes.bfloat16])
def test_castlike_matches_reference(target):
    x = np.array([0.5, 3.75, 200.0, -1.0], np.float32)
    if np.dtype(target).kind == "u":
        x = np.abs(x)
    got = assert_matches_reference("CastLike", [x, np.zeros(0, target)], opset=21)[0]
    assert got.dtype == np.dtype(target)


def test_castlike_saturate_off_matches_reference():
    assert_matches_reference("CastLike", [AWKWARD, np.zeros(1, ml_dtypes.float8_e4m3fn)], opset=21, saturate=0)
