"""Element types: ONNX's codes, NumPy's dtypes and ONNX Runtime's type names agree.

The oracles are onnx's own mapping (``onnx.helper.tensor_dtype_to_np_dtype``) and the
``NodeArg.type`` strings ONNX Runtime reports for a model input of each type.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from tinyinfer.ir import dtypes

#: Every element type code tinyinfer maps (TensorProto.FLOAT ... TensorProto.FLOAT4E2M1).
CODES = list(range(1, 24))


@pytest.mark.parametrize("code", CODES, ids=[TensorProto.DataType.Name(c) for c in CODES])
def test_codes_map_to_the_dtype_onnx_uses_and_back(code):
    dtype = dtypes.from_onnx(code)
    assert dtype == np.dtype(helper.tensor_dtype_to_np_dtype(code))
    assert dtypes.to_onnx(dtype) == code


#: The codes ONNX Runtime can load as a model input (it has no kernel taking complex or 4-bit types).
ORT_CODES = [c for c in CODES if c not in (14, 15, 21, 22, 23)]


@pytest.mark.parametrize("code", CODES, ids=[TensorProto.DataType.Name(c) for c in CODES])
def test_type_name_is_the_lowercase_onnx_name(code):
    expected = f"tensor({TensorProto.DataType.Name(code).lower()})"
    assert dtypes.type_name(dtypes.from_onnx(code)) == expected


@pytest.mark.parametrize("code", ORT_CODES, ids=[TensorProto.DataType.Name(c) for c in ORT_CODES])
def test_type_name_is_onnxruntime_spelling(code):
    x = helper.make_tensor_value_info("x", code, [2])
    y = helper.make_tensor_value_info("y", code, [2])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    expected = ort.InferenceSession(model.SerializeToString()).get_inputs()[0].type
    assert dtypes.type_name(dtypes.from_onnx(code)) == expected


def test_numpy_strings_are_onnx_strings():
    assert dtypes.to_onnx(np.dtype("U5")) == dtypes.to_onnx(np.dtype("S3")) == TensorProto.STRING
    assert dtypes.type_name(np.dtype(object)) == "tensor(string)"


def test_unknown_codes_and_dtypes_are_named():
    with pytest.raises(KeyError, match="ONNX element type 0"):
        dtypes.from_onnx(TensorProto.UNDEFINED)
    with pytest.raises(KeyError, match="datetime64"):
        dtypes.to_onnx(np.dtype("datetime64[s]"))
    assert dtypes.type_name(None) == "tensor(unknown)"


def test_float_and_integer_families():
    assert np.dtype(ml_dtypes.bfloat16) in dtypes.FLOAT_TYPES
    assert {np.dtype(t) for t in (np.float16, np.float32, np.float64)} <= dtypes.FLOAT_TYPES
    assert np.dtype(np.uint64) in dtypes.INTEGER_TYPES and np.dtype(np.int8) in dtypes.INTEGER_TYPES
    assert np.dtype(np.bool_) not in dtypes.INTEGER_TYPES | dtypes.FLOAT_TYPES
    assert not dtypes.FLOAT_TYPES & dtypes.INTEGER_TYPES


def test_onnx_is_the_source_of_the_codes():
    # The table spells the codes out; this guards it against a typo.
    assert dtypes.to_onnx(np.float32) == onnx.TensorProto.FLOAT
    assert dtypes.to_onnx(np.int64) == onnx.TensorProto.INT64
    assert dtypes.to_onnx(np.bool_) == onnx.TensorProto.BOOL
