"""The affine map of tinyinfer.compress.affine, checked against ONNX itself.

Oracles: onnx.reference and ONNX Runtime running one-node QuantizeLinear / DequantizeLinear
models (per tensor and per axis; int8/uint8 at opset 19, int4/uint4 at opset 21, the first
opset with 4-bit types), ONNX Runtime's own scale/zero-point formula, onnx's int4 packing, and
the error bound of rounding (|fake_quantize(x) - x| <= scale / 2 inside the range).
Integers must match exactly; dequantized floats too (an exact integer difference times one
float32 scale is a single rounding in both implementations).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from onnxruntime.quantization import quant_utils

from tinyinfer.compress.affine import (
    INT4,
    UINT4,
    QuantParams,
    compute_params,
    dequantize,
    fake_quantize,
    integer_range,
    pack_int4,
    params_from_tensor,
    quantize,
    unpack_int4,
)
from tinyinfer.errors import TinyInferError

ONNX_TYPE = {np.dtype(np.int8): TensorProto.INT8, np.dtype(np.uint8): TensorProto.UINT8,
             INT4: TensorProto.INT4, UINT4: TensorProto.UINT4}
DTYPES = [np.dtype(np.int8), np.dtype(np.uint8), INT4, UINT4]


def _opset(dtype) -> int:
    # int4/uint4 arrived in opset 21; per-axis 8-bit needs 13, and onnx.reference's oldest
    # DequantizeLinear is the opset-19 one.
    return 21 if dtype in (INT4, UINT4) else 19


def _quantize_model(shape, params: QuantParams, *, cast_to_int8: bool) -> onnx.ModelProto:
    """x -> QuantizeLinear [-> Cast(int8), since ONNX Runtime cannot hand int4 back to NumPy]."""
    attrs = {} if params.axis is None else {"axis": params.axis}
    nodes = [helper.make_node("QuantizeLinear", ["x", "scale", "zero"], ["q"], **attrs)]
    out_type = ONNX_TYPE[params.dtype]
    if cast_to_int8:
        nodes.append(helper.make_node("Cast", ["q"], ["y"], to=TensorProto.INT8))
        out_type = TensorProto.INT8
    graph = helper.make_graph(
        nodes, "quantize",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info(nodes[-1].output[0], out_type, list(shape))],
        [numpy_helper.from_array(params.scale, "scale"), numpy_helper.from_array(params.zero_point, "zero")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", _opset(params.dtype))])


def _dequantize_model(q: np.ndarray, params: QuantParams) -> onnx.ModelProto:
    """A DequantizeLinear whose quantized input is an initializer (4-bit types cannot be fed)."""
    attrs = {} if params.axis is None else {"axis": params.axis}
    graph = helper.make_graph(
        [helper.make_node("DequantizeLinear", ["q", "scale", "zero"], ["y"], **attrs)], "dequantize", [],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(q.shape))],
        [numpy_helper.from_array(q, "q"), numpy_helper.from_array(params.scale, "scale"),
         numpy_helper.from_array(params.zero_point, "zero")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", _opset(params.dtype))])


def _ort(model: onnx.ModelProto, feeds: dict) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def _random_params(rng, dtype, channels: int | None, axis: int | None, symmetric: bool) -> QuantParams:
    if channels is None:
        low, high = -rng.uniform(0.1, 3), rng.uniform(0.1, 3)
    else:
        low, high = -rng.uniform(0.1, 3, channels), rng.uniform(0.1, 3, channels)
    return compute_params(low, high, dtype, symmetric=symmetric, axis=axis)


def _inputs(rng, params: QuantParams, shape) -> np.ndarray:
    """Values across and beyond the range, plus exact ties (half-way between two levels)."""
    scale, _ = params.broadcast(len(shape))
    x = rng.normal(0, 2, shape).astype(np.float32)
    ties = (rng.integers(-20, 20, shape) + 0.5).astype(np.float32) * scale
    pick = rng.random(shape) < 0.3
    return np.where(pick, ties, x).astype(np.float32)


CASES = [
    (dtype, axis, symmetric)
    for dtype in DTYPES
    for axis in (None, 0, 1)
    for symmetric in (True, False)
]


@pytest.mark.parametrize("dtype, axis, symmetric", CASES)
def test_quantize_matches_onnx_reference_and_onnxruntime(dtype, axis, symmetric):
    rng = np.random.default_rng(CASES.index((dtype, axis, symmetric)))
    shape = (4, 5, 3)
    params = _random_params(rng, dtype, None if axis is None else shape[axis], axis, symmetric)
    x = _inputs(rng, params, shape)
    ours = quantize(x, params)
    assert ours.dtype == dtype and ours.shape == shape
    expected = ReferenceEvaluator(_quantize_model(shape, params, cast_to_int8=False)).run(None, {"x": x})[0]
    assert expected.dtype == dtype
    np.testing.assert_array_equal(ours.astype(np.int16), expected.astype(np.int16))
    four_bit = dtype in (INT4, UINT4)
    runtime = _ort(_quantize_model(shape, params, cast_to_int8=four_bit), {"x": x})
    np.testing.assert_array_equal(ours.astype(np.int16), runtime.astype(np.int16))


@pytest.mark.parametrize("dtype, axis, symmetric", CASES)
def test_dequantize_matches_onnx_reference_and_onnxruntime(dtype, axis, symmetric):
    rng = np.random.default_rng(100 + CASES.index((dtype, axis, symmetric)))
    shape = (3, 4, 2)
    params = _random_params(rng, dtype, None if axis is None else shape[axis], axis, symmetric)
    qmin, qmax = integer_range(dtype)
    q = rng.integers(qmin, qmax + 1, shape).astype(dtype)
    ours = dequantize(q, params)
    assert ours.dtype == np.float32
    model = _dequantize_model(q, params)
    np.testing.assert_array_equal(ours, ReferenceEvaluator(model).run(None, {})[0])
    np.testing.assert_array_equal(ours, _ort(model, {}))


def test_round_half_to_even_and_saturation():
    params = QuantParams(np.float32(0.5), np.int8(0), np.int8)
    x = np.array([0.25, 0.75, -0.25, -0.75, 1.25, 100.0, -100.0, np.nan], np.float32)
    np.testing.assert_array_equal(quantize(x, params), [0, 2, 0, -2, 2, 127, -128, 0])


@pytest.mark.parametrize("dtype, symmetric, reduce_range", [
    (np.uint8, False, False), (np.uint8, True, False), (np.uint8, False, True), (np.uint8, True, True),
    (np.int8, False, False), (np.int8, True, False),
    (UINT4, False, False), (UINT4, True, False), (INT4, False, False),
])
def test_compute_params_matches_onnxruntime_quantizer(dtype, symmetric, reduce_range):
    """Where the conventions agree, the scale and zero point are ONNX Runtime's.

    (They differ on purpose for int8 with reduce_range — ONNX Runtime uses -64..64, tinyinfer
    the 7-bit -64..63 — and for symmetric int4, where tinyinfer restricts to -7..7 as for int8.)
    """
    qtype = {np.dtype(np.uint8): TensorProto.UINT8, np.dtype(np.int8): TensorProto.INT8,
             UINT4: TensorProto.UINT4, INT4: TensorProto.INT4}[np.dtype(dtype)]
    qmin, qmax = quant_utils.get_qmin_qmax_for_qType(qtype, reduce_range=reduce_range, symmetric=symmetric)
    assert (qmin, qmax) == integer_range(dtype, symmetric=symmetric, reduce_range=reduce_range)
    for rmin, rmax in [(-1.0, 2.0), (-0.3, 0.05), (0.5, 4.0), (-6.0, -1.0)]:
        zero, scale = quant_utils.compute_scale_zp(np.float32(rmin), np.float32(rmax), qmin, qmax, symmetric=symmetric)
        ours = compute_params(rmin, rmax, dtype, symmetric=symmetric, reduce_range=reduce_range)
        np.testing.assert_allclose(ours.scale, scale, rtol=1e-6)  # float64 vs float32 arithmetic
        assert int(ours.zero_point.astype(np.int32)) == int(np.asarray(zero).astype(np.int32))


def test_compute_params_known_values():
    p = compute_params(-1.0, 2.0, np.uint8, symmetric=False)
    assert p.scale == np.float32(3 / 255) and p.zero_point == 85 and p.zero_point.dtype == np.uint8
    p = compute_params(-1.0, 2.0, np.int8)  # symmetric: max |r| over 127, zero point 0
    assert p.scale == np.float32(2 / 127) and p.zero_point == 0
    p = compute_params(0.5, 2.0, np.uint8, symmetric=False)  # widened to [0, 2]: 0 stays exact
    assert p.zero_point == 0 and p.scale == np.float32(2 / 255)
    p = compute_params(0.0, 0.0, np.int8)  # an all-zero tensor
    assert p.scale == 1 and p.zero_point == 0
    p = compute_params(np.array([-1.0, 0.0, -4.0]), np.array([1.0, 0.0, 2.0]), np.int8, axis=0)
    np.testing.assert_allclose(p.scale, np.float32([1 / 127, 1, 4 / 127]))
    assert p.axis == 0 and p.zero_point.shape == (3,)


def test_params_from_tensor_per_channel_uses_each_channels_range():
    w = np.zeros((3, 2, 2, 2), np.float32)
    w[0], w[1], w[2] = 0.1, -2.0, 0.0
    p = params_from_tensor(w, np.int8, axis=0)
    np.testing.assert_allclose(p.scale, np.float32([0.1 / 127, 2 / 127, 1.0]))
    np.testing.assert_allclose(fake_quantize(w, p), w, atol=1e-7)


@settings(max_examples=60, deadline=None)
@given(
    x=hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=3, max_side=6),
                 elements=st.floats(-50, 50, width=32)),
    rmin=st.floats(-40, 0), width=st.floats(1e-3, 80),
    dtype=st.sampled_from(DTYPES), symmetric=st.booleans(),
)
def test_fake_quantize_error_is_at_most_half_a_step_inside_the_range(x, rmin, width, dtype, symmetric):
    params = compute_params(rmin, rmin + width, dtype, symmetric=symmetric)
    qmin, qmax = integer_range(dtype)
    scale, zero = float(params.scale), int(params.zero_point.astype(np.int32))
    low, high = (qmin - zero) * scale, (qmax - zero) * scale
    y = fake_quantize(x, params)
    inside = (x >= low) & (x <= high)
    # Half a step, plus float32 rounding of x / scale and of the product (a few ulps of |x|).
    slack = scale / 2 * (1 + 1e-6) + 4 * np.finfo(np.float32).eps * np.abs(x)
    assert np.all(np.abs(y - x)[inside] <= slack[inside])
    # Outside the range a value saturates to the nearest end of the grid.
    np.testing.assert_allclose(y[x > high], np.float32(high), rtol=1e-6)
    np.testing.assert_allclose(y[x < low], np.float32(low), rtol=1e-6)
    assert fake_quantize(np.zeros(1, np.float32), params)[0] == 0  # zero is exact


@settings(max_examples=40, deadline=None)
@given(q=hnp.arrays(np.int8, st.integers(0, 33), elements=st.integers(-8, 7)))
def test_pack_int4_is_onnx_layout_and_round_trips(q):
    four = q.astype(INT4)
    packed = pack_int4(four)
    assert packed.dtype == np.uint8 and packed.size == (q.size + 1) // 2
    assert packed.tobytes() == numpy_helper.from_array(four, "w").raw_data
    np.testing.assert_array_equal(unpack_int4(packed, q.size).astype(np.int8), q)


@settings(max_examples=40, deadline=None)
@given(q=hnp.arrays(np.uint8, st.integers(0, 33), elements=st.integers(0, 15)))
def test_pack_uint4_is_onnx_layout_and_round_trips(q):
    four = q.astype(UINT4)
    packed = pack_int4(four)
    assert packed.tobytes() == numpy_helper.from_array(four, "w").raw_data
    unpacked = unpack_int4(packed, q.size, signed=False)
    assert unpacked.dtype == UINT4
    np.testing.assert_array_equal(unpacked.astype(np.uint8), q)


def test_unpack_int4_reads_tensors_onnx_helper_packs():
    values = [-8, -1, 0, 7, 3]
    tensor = helper.make_tensor("w", TensorProto.INT4, [5], values)
    raw = numpy_helper.from_array(numpy_helper.to_array(tensor), "w").raw_data
    np.testing.assert_array_equal(unpack_int4(np.frombuffer(raw, np.uint8), 5).astype(np.int8), values)
    assert pack_int4(np.array([1, 2])).tolist() == [0x21]  # first element in the low nibble


def test_four_bit_weight_round_trip_through_a_packed_onnx_initializer():
    """Quantize to int4, pack, store as an ONNX int4 tensor, run DequantizeLinear in ONNX Runtime."""
    rng = np.random.default_rng(0)
    w = rng.normal(0, 1, (4, 3)).astype(np.float32)
    params = params_from_tensor(w, INT4, axis=0)
    q = quantize(w, params)
    packed = pack_int4(q)
    tensor = onnx.TensorProto(name="q", data_type=TensorProto.INT4, dims=[4, 3], raw_data=packed.tobytes())
    model = _dequantize_model(q, params)
    model.graph.initializer[0].CopyFrom(tensor)
    np.testing.assert_array_equal(_ort(model, {}), fake_quantize(w, params))


@pytest.mark.parametrize("call, message", [
    (lambda: compute_params(1.0, -1.0), "must not exceed"),
    (lambda: compute_params(np.array([-1.0]), np.array([1.0])), "need an axis"),
    (lambda: compute_params(-1.0, 1.0, axis=0), "per-channel ranges"),
    (lambda: compute_params(-1.0, np.inf), "finite"),
    (lambda: compute_params(-1.0, 1.0, np.int32), "quantized dtype"),
    (lambda: quantize(np.zeros((2, 3)), compute_params(np.zeros(4), np.ones(4), axis=1)), "4 scales"),
    (lambda: QuantParams(np.float32(0), np.int8(0), np.int8), "positive"),
    (lambda: pack_int4(np.array([16])), "4-bit values"),
    (lambda: unpack_int4(np.zeros(2, np.uint8), 5), "cannot unpack"),
])
def test_bad_input_raises_a_tinyinfer_error(call, message):
    with pytest.raises(TinyInferError, match=message):
        call()
