"""Element types: ONNX's numbering on one side, NumPy dtypes on the other.

ONNX names element types by an integer (``TensorProto.DataType``); the engine works with
NumPy dtypes. The low-precision types (bfloat16, float8, int4, ...) come from ``ml_dtypes``,
which the ``onnx`` package already depends on.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

# ONNX TensorProto.DataType code -> (NumPy dtype, ONNX type name). The codes are fixed by
# the ONNX standard (onnx.proto), so they are spelled out rather than read from onnx here:
# the IR does not depend on the frontend's library.
_ONNX_TYPES: dict[int, tuple[np.dtype, str]] = {
    1: (np.dtype(np.float32), "float"),
    2: (np.dtype(np.uint8), "uint8"),
    3: (np.dtype(np.int8), "int8"),
    4: (np.dtype(np.uint16), "uint16"),
    5: (np.dtype(np.int16), "int16"),
    6: (np.dtype(np.int32), "int32"),
    7: (np.dtype(np.int64), "int64"),
    8: (np.dtype(object), "string"),
    9: (np.dtype(np.bool_), "bool"),
    10: (np.dtype(np.float16), "float16"),
    11: (np.dtype(np.float64), "double"),
    12: (np.dtype(np.uint32), "uint32"),
    13: (np.dtype(np.uint64), "uint64"),
    14: (np.dtype(np.complex64), "complex64"),
    15: (np.dtype(np.complex128), "complex128"),
    16: (np.dtype(ml_dtypes.bfloat16), "bfloat16"),
    17: (np.dtype(ml_dtypes.float8_e4m3fn), "float8e4m3fn"),
    18: (np.dtype(ml_dtypes.float8_e4m3fnuz), "float8e4m3fnuz"),
    19: (np.dtype(ml_dtypes.float8_e5m2), "float8e5m2"),
    20: (np.dtype(ml_dtypes.float8_e5m2fnuz), "float8e5m2fnuz"),
    21: (np.dtype(ml_dtypes.uint4), "uint4"),
    22: (np.dtype(ml_dtypes.int4), "int4"),
    23: (np.dtype(ml_dtypes.float4_e2m1fn), "float4e2m1"),
    24: (np.dtype(ml_dtypes.float8_e8m0fnu), "float8e8m0"),
    25: (np.dtype(ml_dtypes.uint2), "uint2"),
    26: (np.dtype(ml_dtypes.int2), "int2"),
    27: (np.dtype(ml_dtypes.float6_e2m3fn), "float6e2m3"),
    28: (np.dtype(ml_dtypes.float6_e3m2fn), "float6e3m2"),
}

_FROM_NUMPY: dict[np.dtype, int] = {dtype: code for code, (dtype, _) in _ONNX_TYPES.items()}

FLOAT_TYPES = frozenset(
    np.dtype(t) for t in (np.float16, np.float32, np.float64, ml_dtypes.bfloat16)
)
INTEGER_TYPES = frozenset(
    np.dtype(t)
    for t in (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64)
)


def from_onnx(code: int) -> np.dtype:
    """NumPy dtype of an ONNX element-type code; ``KeyError`` names the code."""
    if code not in _ONNX_TYPES:
        raise KeyError(f"ONNX element type {code} has no NumPy equivalent in tinyinfer")
    return _ONNX_TYPES[code][0]


def to_onnx(dtype) -> int:
    """ONNX element-type code of a NumPy dtype."""
    dtype = np.dtype(dtype)
    if dtype.kind in "US":  # fixed-width NumPy strings are ONNX strings too
        return 8
    if dtype not in _FROM_NUMPY:
        raise KeyError(f"NumPy dtype {dtype} has no ONNX element type")
    return _FROM_NUMPY[dtype]


def type_name(dtype) -> str:
    """The ``tensor(float)`` spelling ONNX Runtime uses in ``NodeArg.type``."""
    if dtype is None:
        return "tensor(unknown)"
    return f"tensor({_ONNX_TYPES[to_onnx(dtype)][1]})"
