"""Quantization ops (tinyinfer/ops/quantize.py).

Oracles: ``onnx.reference`` on one-node models and ONNX Runtime (for the integer conv and
matmul ops, which the compression chapter relies on), plus the properties the spec states:
round half to even, saturation at the type bounds, and a quantize -> dequantize round trip
within half a step for values inside the representable range.

Integer outputs are compared exactly. Dequantized floats are compared with ``rtol = 1e-6``:
both sides compute ``(q - zero_point) * scale`` in float32, one rounding, so they agree to the
last bit; a float16/bfloat16 output gets the tolerance of its own precision.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper
from onnx_oracle import (
    Initializer,
    assert_matches_reference,
    infer_outputs,
    run_onnxruntime,
    run_reference,
    run_tinyinfer,
)

from tinyinfer.errors import InvalidAttributeError, ShapeInferenceError, TinyInferError

RNG = np.random.default_rng(0)
SMALL_INTEGERS = [ml_dtypes.uint4, ml_dtypes.int4, ml_dtypes.uint2, ml_dtypes.int2]
INTEGER_OUTPUTS = [np.uint8, np.int8, np.uint16, np.int16, *SMALL_INTEGERS]
FLOAT_OUTPUTS = [
    ml_dtypes.float8_e4m3fn,
    ml_dtypes.float8_e4m3fnuz,
    ml_dtypes.float8_e5m2,
    ml_dtypes.float8_e5m2fnuz,
    ml_dtypes.float4_e2m1fn,
]


def scalar(value, dtype):
    """A 0-d array (ONNX Runtime takes arrays as feeds, not NumPy scalars)."""
    return np.array(value, dtype=dtype)


def f32(value):
    return scalar(value, np.float32)


def floats(*shape, spread=100.0):
    return (RNG.standard_normal(shape) * spread).astype(np.float32)


def is_integer(dtype) -> bool:
    return np.dtype(dtype).kind in "iu" or np.dtype(dtype) in {np.dtype(t) for t in SMALL_INTEGERS}


def zero_point_for(dtype, shape=()):
    """A zero point of ``dtype``: anywhere in the middle half for integers, 0 for float types."""
    if not is_integer(dtype):
        return np.zeros(shape, dtype=dtype)
    info = ml_dtypes.iinfo(dtype)
    return RNG.integers(info.min // 2, info.max // 2 + 1, size=shape).astype(dtype)


def spread_for(dtype):
    """Input spread that overflows each type's range a little, so saturation is exercised."""
    info = ml_dtypes.iinfo(dtype) if is_integer(dtype) else ml_dtypes.finfo(dtype)
    return 1.5 * float(info.max)


def quantized(shape, dtype):
    info = np.iinfo(dtype)
    return RNG.integers(info.min, info.max + 1, size=shape).astype(dtype)


GRANULARITY = {  # scale shape for an input of shape (3, 8), and the attributes that select it
    "tensor": ((), {}),
    "axis": ((8,), {"axis": 1}),
    "block": ((3, 3), {"axis": 1, "block_size": 3}),  # 8 = 3 + 3 + 2: a short last block
}


# ---------------------------------------------------------------------------- QuantizeLinear
@pytest.mark.parametrize("dtype", INTEGER_OUTPUTS + FLOAT_OUTPUTS, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("granularity", list(GRANULARITY))
def test_quantize_matches_reference(dtype, granularity):
    shape, attrs = GRANULARITY[granularity]
    x = floats(3, 8, spread=spread_for(dtype) / 2)
    scale = RNG.uniform(0.2, 1.0, shape).astype(np.float32)
    inputs = [x, Initializer(scale), Initializer(zero_point_for(dtype, shape))]
    got = assert_matches_reference("QuantizeLinear", inputs, opset=25, **attrs)[0]
    assert got.dtype == np.dtype(dtype)


@pytest.mark.parametrize("dtype", [ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e5m2])
def test_quantize_to_float8_without_saturation_matches_reference(dtype):
    x = np.array([1e6, -1e6, np.inf, np.nan, 3.3, -0.0], np.float32)
    assert_matches_reference("QuantizeLinear", [x, f32(2.0), np.zeros((), dtype)], opset=21, saturate=0)


@pytest.mark.parametrize("output_dtype", [None, TensorProto.INT8, TensorProto.UINT16, TensorProto.INT4])
def test_quantize_without_zero_point_uses_output_dtype_or_uint8(output_dtype):
    attrs = {} if output_dtype is None else {"output_dtype": output_dtype}
    got = assert_matches_reference("QuantizeLinear", [floats(4, 5), Initializer(f32(0.7))], opset=21, **attrs)[0]
    assert got.dtype == (np.uint8 if output_dtype is None else helper.tensor_dtype_to_np_dtype(output_dtype))


@pytest.mark.parametrize("scale_dtype", [np.float16, ml_dtypes.bfloat16])
@pytest.mark.parametrize("precision", [None, TensorProto.FLOAT])
def test_quantize_with_a_narrow_scale_or_precision_matches_reference(scale_dtype, precision):
    attrs = {} if precision is None else {"precision": precision}
    inputs = [floats(16, spread=30), scalar(0.37, scale_dtype), scalar(3, np.int8)]
    assert_matches_reference("QuantizeLinear", inputs, opset=25, **attrs)


def test_quantize_rounds_half_to_even():
    x = np.array([0.5, 1.5, 2.5, 3.5, -0.5, -1.5, -2.5, 2.4999, 2.5001], np.float32)
    got = run_tinyinfer("QuantizeLinear", [x, f32(1.0), scalar(0, np.int8)], opset=13)[0]
    assert got.tolist() == [0, 2, 2, 4, 0, -2, -2, 2, 3]
    got = run_tinyinfer("QuantizeLinear", [x * 0.25, f32(0.25), scalar(10, np.uint8)], opset=13)[0]
    assert got.tolist() == [10, 12, 12, 14, 10, 8, 8, 12, 13]


@pytest.mark.parametrize("dtype", INTEGER_OUTPUTS, ids=lambda d: np.dtype(d).name)
def test_quantize_saturates_at_the_type_bounds(dtype):
    info = ml_dtypes.iinfo(dtype)
    x = np.array([-1e9, float(info.min) - 0.6, float(info.max) + 0.6, 1e9, np.inf, -np.inf], np.float32)
    got = run_tinyinfer("QuantizeLinear", [x, f32(1.0), np.zeros((), dtype)], opset=25)[0]
    assert got.astype(np.int64).tolist() == [info.min, info.min, info.max, info.max, info.max, info.min]


@settings(max_examples=60, deadline=None)
@given(
    scale=st.floats(1e-3, 10.0),
    zero_point=st.integers(0, 255),
    values=st.lists(st.floats(-1.0, 1.0), min_size=1, max_size=20),
)
def test_quantize_dequantize_round_trip_is_within_half_a_step(scale, zero_point, values):
    """For x inside [(0 - zp) * s, (255 - zp) * s], |dequantize(quantize(x)) - x| <= s / 2."""
    scale = f32(scale)
    low, high = (0 - zero_point) * float(scale), (255 - zero_point) * float(scale)
    x = (low + (np.array(values) + 1) / 2 * (high - low)).astype(np.float32)
    q = run_tinyinfer("QuantizeLinear", [x, scale, scalar(zero_point, np.uint8)], opset=13)[0]
    back = run_tinyinfer("DequantizeLinear", [q, scale, scalar(zero_point, np.uint8)], opset=13)[0]
    # float32 rounding of x / scale and of the product adds a few ulps of the value.
    slack = 4 * np.finfo(np.float32).eps * np.maximum(np.abs(x), float(scale) * 255)
    assert np.all(np.abs(back.astype(np.float64) - x) <= float(scale) / 2 + slack)


# ---------------------------------------------------------------------------- DequantizeLinear
@pytest.mark.parametrize("dtype", INTEGER_OUTPUTS + FLOAT_OUTPUTS, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("granularity", list(GRANULARITY))
def test_dequantize_matches_reference(dtype, granularity):
    shape, attrs = GRANULARITY[granularity]
    q = run_tinyinfer("QuantizeLinear", [floats(3, 8, spread=spread_for(dtype) / 3), f32(1.0), np.zeros((), dtype)],
                      opset=25)[0]
    scale = RNG.uniform(0.01, 2.0, shape).astype(np.float32)
    inputs = [q, Initializer(scale), Initializer(zero_point_for(dtype, shape))]
    assert_matches_reference("DequantizeLinear", inputs, opset=25, rtol=1e-6, **attrs)


def test_dequantize_int32_without_zero_point_matches_reference():
    q = RNG.integers(-(2**20), 2**20, (4, 6)).astype(np.int32)
    assert_matches_reference("DequantizeLinear", [q, Initializer(RNG.uniform(0.01, 2.0, 6).astype(np.float32))],
                             opset=21, rtol=1e-6, axis=1)


@pytest.mark.parametrize("scale_dtype", [np.float16, ml_dtypes.bfloat16])
def test_dequantize_output_follows_the_scale_type(scale_dtype):
    inputs = [np.arange(-5, 5, dtype=np.int8), scalar(0.3, scale_dtype), scalar(1, np.int8)]
    got = assert_matches_reference("DequantizeLinear", inputs, opset=21, rtol=1e-2)[0]  # bfloat16: ~4e-3 relative
    assert got.dtype == np.dtype(scale_dtype)


def test_dequantize_output_dtype_attribute():
    inputs = [np.arange(10, dtype=np.uint8), f32(0.3)]
    got = assert_matches_reference("DequantizeLinear", inputs, opset=23, output_dtype=TensorProto.FLOAT16, rtol=1e-3)[0]
    assert got.dtype == np.float16


def test_dequantize_10_is_per_tensor():
    got = run_tinyinfer("DequantizeLinear", [np.array([0, 10, 255], np.uint8), f32(2.0), scalar(10, np.uint8)], opset=10)
    assert got[0].tolist() == [-20.0, 0.0, 490.0]


# ---------------------------------------------------------------------------- DynamicQuantizeLinear
@pytest.mark.parametrize(
    "x",
    [
        floats(3, 4),
        np.abs(floats(5)) + 1.0,  # all positive: the range is widened to include 0
        -np.abs(floats(5)) - 1.0,  # all negative
        np.zeros((2, 2), np.float32),  # all zero: scale 1/255
        np.array([0.0, 2.0, -1.0, 2.5, 1.5], np.float32),
    ],
)
def test_dynamic_quantize_matches_reference_and_onnxruntime(x):
    got = assert_matches_reference("DynamicQuantizeLinear", [x], 3, opset=11, rtol=1e-7)
    if x.any():  # ONNX Runtime picks another scale for an all-zero input (any scale is right)
        for mine, theirs in zip(got, run_onnxruntime("DynamicQuantizeLinear", [x], 3, opset=11)):
            np.testing.assert_allclose(mine, theirs, rtol=1e-7)
    assert [a.dtype for a in got] == [np.uint8, np.float32, np.uint8]
    assert got[1].shape == () and got[2].shape == ()


# ---------------------------------------------------------------------------- QLinearMatMul
def qlinear_matmul_inputs(a_shape, b_shape, a_dtype=np.uint8, b_dtype=np.int8, y_dtype=np.uint8, b_scale_shape=()):
    a_zero = RNG.integers(0, 100) if a_dtype == np.uint8 else -3
    return [
        quantized(a_shape, a_dtype), f32(0.02), scalar(a_zero, a_dtype),
        Initializer(quantized(b_shape, b_dtype)),
        Initializer(RNG.uniform(0.001, 0.01, b_scale_shape).astype(np.float32)),
        Initializer(np.zeros(b_scale_shape, b_dtype)),
        f32(0.3), scalar(RNG.integers(0, 100), y_dtype),
    ]


@pytest.mark.parametrize("a_dtype", [np.uint8, np.int8])
@pytest.mark.parametrize("b_dtype", [np.uint8, np.int8])
@pytest.mark.parametrize("y_dtype", [np.uint8, np.int8])
def test_qlinear_matmul_matches_reference_and_onnxruntime(a_dtype, b_dtype, y_dtype):
    inputs = qlinear_matmul_inputs((5, 16), (16, 7), a_dtype, b_dtype, y_dtype)
    got = run_tinyinfer("QLinearMatMul", inputs, opset=21)[0]
    assert got.dtype == y_dtype
    np.testing.assert_array_equal(got, run_reference("QLinearMatMul", inputs, opset=21)[0])
    if a_dtype == y_dtype and (a_dtype, b_dtype) != (np.int8, np.uint8):  # the combinations ONNX Runtime has
        np.testing.assert_array_equal(got, run_onnxruntime("QLinearMatMul", inputs, opset=10)[0])


def test_qlinear_matmul_batched_and_per_column_match_onnxruntime():
    inputs = qlinear_matmul_inputs((2, 3, 5, 8), (8, 4), b_scale_shape=(4,))
    got = run_tinyinfer("QLinearMatMul", inputs, opset=10)[0]
    np.testing.assert_array_equal(got, run_onnxruntime("QLinearMatMul", inputs, opset=10)[0])
    assert got.shape == (2, 3, 5, 4)


def test_qlinear_matmul_is_exact_for_long_rows():
    """K = 4096 rows of extreme values: the int32 accumulator reaches -1.3e8 and stays exact."""
    a, b = np.full((1, 4096), 255, np.uint8), np.full((4096, 1), -128, np.int8)
    inputs = [a, f32(1.0), scalar(0, np.uint8), b, f32(1.0), scalar(0, np.int8), f32(2.0**21), scalar(0, np.int8)]
    got = run_tinyinfer("QLinearMatMul", inputs, opset=10)[0]
    assert got.item() == np.rint(255 * -128 * 4096 / 2.0**21)  # -63.75 -> -64


# ---------------------------------------------------------------------------- ConvInteger, QLinearConv
CONV_CASES = [
    dict(),
    dict(pads=[1, 1, 1, 1]),
    dict(strides=[2, 1], pads=[0, 1, 1, 0]),
    dict(dilations=[2, 2], pads=[2, 2, 2, 2]),
    dict(auto_pad="SAME_UPPER", strides=[2, 2]),
    dict(auto_pad="SAME_LOWER"),
    dict(group=2, pads=[1, 1, 1, 1]),
]


@pytest.mark.parametrize("attrs", CONV_CASES)
def test_conv_integer_matches_onnxruntime_and_reference(attrs):
    group = attrs.get("group", 1)
    x, w = quantized((2, 4, 7, 6), np.uint8), quantized((6, 4 // group, 3, 3), np.uint8)
    inputs = [x, Initializer(w), scalar(17, np.uint8), Initializer(scalar(130, np.uint8))]
    got = run_tinyinfer("ConvInteger", inputs, opset=10, **attrs)[0]
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, run_onnxruntime("ConvInteger", inputs, opset=10, **attrs)[0])
    np.testing.assert_array_equal(got, run_reference("ConvInteger", inputs, opset=10, **attrs)[0])


def test_conv_integer_per_channel_weight_zero_point_matches_reference():
    x, w = quantized((1, 2, 5, 5), np.int8), quantized((3, 2, 2, 2), np.int8)
    inputs = [x, Initializer(w), scalar(-4, np.int8), Initializer(np.array([1, -2, 3], np.int8))]
    assert_matches_reference("ConvInteger", inputs, opset=10)


@pytest.mark.parametrize("spatial", [(9,), (4, 3, 5)])
def test_conv_integer_1d_and_3d_match_reference(spatial):
    x = quantized((1, 2, *spatial), np.uint8)
    w = quantized((3, 2, *([2] * len(spatial))), np.uint8)
    assert_matches_reference("ConvInteger", [x, Initializer(w), scalar(3, np.uint8)], opset=10)


@pytest.mark.parametrize("attrs", CONV_CASES)
@pytest.mark.parametrize("x_dtype", [np.uint8, np.int8])
def test_qlinear_conv_per_channel_with_bias_matches_onnxruntime(attrs, x_dtype):
    group, out_channels = attrs.get("group", 1), 6
    x, w = quantized((1, 4, 7, 6), x_dtype), quantized((out_channels, 4 // group, 3, 3), np.int8)
    inputs = [
        x, f32(0.05), scalar(-7 if x_dtype == np.int8 else 128, x_dtype),
        Initializer(w),
        Initializer(RNG.uniform(0.001, 0.02, out_channels).astype(np.float32)),
        Initializer(np.zeros(out_channels, np.int8)),
        f32(0.25), scalar(5, x_dtype),
        Initializer(RNG.integers(-5000, 5000, out_channels).astype(np.int32)),
    ]
    got = run_tinyinfer("QLinearConv", inputs, opset=10, **attrs)[0]
    assert got.dtype == x_dtype
    np.testing.assert_array_equal(got, run_onnxruntime("QLinearConv", inputs, opset=10, **attrs)[0])


def test_qlinear_conv_without_bias_matches_reference():
    x, w = quantized((1, 3, 5, 5), np.uint8), quantized((2, 3, 3, 3), np.uint8)
    inputs = [x, f32(0.1), scalar(120, np.uint8), Initializer(w), Initializer(f32(0.01)),
              Initializer(scalar(127, np.uint8)), f32(0.5), scalar(100, np.uint8)]
    assert_matches_reference("QLinearConv", inputs, opset=10, pads=[1, 1, 1, 1])


def test_integer_conv_infers_symbolic_batch():
    inputs = [quantized((2, 4, 8, 8), np.uint8), Initializer(quantized((5, 4, 3, 3), np.uint8))]
    (value,) = infer_outputs("ConvInteger", inputs, shapes={0: ("N", 4, 8, 8)}, opset=10, strides=[2, 2])
    assert value.dtype == np.int32 and value.shape == ("N", 5, 3, 3)


# ---------------------------------------------------------------------------- errors
def test_output_dtype_must_agree_with_the_zero_point():
    inputs = [floats(3), f32(1.0), scalar(0, np.uint8)]
    with pytest.raises(ShapeInferenceError, match="quantizelinear_node.*output_dtype .* differs from the zero point"):
        run_tinyinfer("QuantizeLinear", inputs, opset=21, output_dtype=TensorProto.INT8)


def test_output_dtype_must_be_a_quantized_type():
    with pytest.raises(InvalidAttributeError, match="output_dtype 1 is not a quantized type"):
        run_tinyinfer("QuantizeLinear", [floats(3), f32(1.0)], opset=21, output_dtype=TensorProto.FLOAT)


def test_per_axis_scale_of_the_wrong_length_is_refused():
    with pytest.raises(ShapeInferenceError, match="y_scale has 3 values but the input's axis 1 has length 4"):
        run_tinyinfer("QuantizeLinear", [floats(2, 4), Initializer(np.ones(3, np.float32))], opset=13)


def test_blocked_scale_of_the_wrong_shape_is_refused():
    inputs = [quantized((2, 8), np.uint8), Initializer(np.ones((2, 2), np.float32))]
    with pytest.raises(TinyInferError, match=r"x_scale has shape \[2, 2\]; .* must be \[2, 3\]"):
        run_tinyinfer("DequantizeLinear", inputs, opset=21, axis=1, block_size=3)


def test_negative_block_size_is_refused():
    with pytest.raises(InvalidAttributeError, match="block_size must be positive"):
        run_tinyinfer("DequantizeLinear", [quantized((2, 8), np.uint8), f32(1.0)], opset=21, block_size=-2)


def test_zero_point_type_must_match_the_input():
    inputs = [quantized((4,), np.uint8), f32(1.0), scalar(0, np.int8)]
    with pytest.raises(ShapeInferenceError, match="x_zero_point has type int8, but x has type uint8"):
        run_tinyinfer("DequantizeLinear", inputs, opset=13)


def test_conv_integer_channel_mismatch_is_refused():
    inputs = [quantized((1, 4, 5, 5), np.uint8), Initializer(quantized((2, 3, 3, 3), np.uint8))]
    with pytest.raises(ShapeInferenceError, match="x has 4 channels but w expects 3"):
        run_tinyinfer("ConvInteger", inputs, opset=10)


def test_bad_auto_pad_is_refused():
    inputs = [quantized((1, 1, 5, 5), np.uint8), Initializer(quantized((1, 1, 3, 3), np.uint8))]
    with pytest.raises(InvalidAttributeError, match="auto_pad must be"):
        run_tinyinfer("ConvInteger", inputs, opset=10, auto_pad="SAME")
