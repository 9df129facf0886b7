"""Affine quantization: the map between real numbers and small integers.

A real tensor ``r`` is stored as integers ``q`` of a narrow type (int8, uint8, int4, uint4)
together with a *scale* ``s`` (a positive float) and a *zero point* ``z`` (an integer of the
quantized type)::

    q = saturate(round(r / s) + z)          quantize     (ONNX QuantizeLinear)
    r̂ = (q - z) * s                         dequantize   (ONNX DequantizeLinear)

``round`` rounds half to even (``np.rint``: 0.5 -> 0, 1.5 -> 2, -2.5 -> -2) and ``saturate``
clamps to the type's range, exactly as ONNX QuantizeLinear defines them, so a tensor quantized
here and by ONNX Runtime holds the same integers. The real 0 maps to the integer ``z``
exactly, so zero padding and ReLU's zeros cost no error (Jacob et al., 2018, "Quantization
and Training of Neural Networks for Efficient Integer-Arithmetic-Only Inference").

Where the scale and zero point come from (:func:`compute_params`): a range ``[rmin, rmax]``
that always includes 0, spread over the integers ``[qmin, qmax]``:

* **asymmetric** (uint8 activations): ``s = (rmax - rmin) / (qmax - qmin)`` and
  ``z = round(qmin - rmin / s)``, so that ``rmin`` maps to ``qmin`` and 0 maps to an integer;
* **symmetric** (int8 weights): ``s = max(|rmin|, |rmax|) / qmax_sym`` and ``z = 0``, using
  the *restricted* range −127…127 (int8) or −7…7 (int4): the grid is then symmetric around 0
  and an int8×int8 product never needs −128·−128.

Inside the range the error of a round trip is at most ``s / 2`` (rounding); outside it the
value saturates (clipping error). Calibration (:mod:`tinyinfer.compress.calibrate`) chooses
the range that balances the two.

**Per tensor** means one ``(s, z)`` for the whole tensor; **per channel** (per axis) means one
pair per slice along ``axis`` (for a Conv weight, per output channel, axis 0), which keeps
narrow channels from being crushed by the widest one.

**4-bit** values (ONNX ``int4``/``uint4``, opset 21 and later) are stored two per byte, the
first element in the low nibble (:func:`pack_int4`, :func:`unpack_int4`), as ONNX serializes
them.
"""

from __future__ import annotations

import dataclasses

import ml_dtypes
import numpy as np

from ..errors import TinyInferError

INT4 = np.dtype(ml_dtypes.int4)
UINT4 = np.dtype(ml_dtypes.uint4)

#: Quantized types and their full integer range [qmin, qmax] (what QuantizeLinear saturates to).
QUANTIZED_RANGES: dict[np.dtype, tuple[int, int]] = {
    np.dtype(np.int8): (-128, 127),
    np.dtype(np.uint8): (0, 255),
    INT4: (-8, 7),
    UINT4: (0, 15),
}


@dataclasses.dataclass(frozen=True, eq=False)  # arrays inside: compare fields explicitly
class QuantParams:
    """The scale and zero point of an affine quantizer, per tensor or per channel.

    ``scale`` is a float32 array, 0-d (per tensor) or 1-d (one entry per slice along
    ``axis``); ``zero_point`` has the same shape and the quantized ``dtype``; ``axis`` is None
    per tensor. Quantizing always saturates to the full range of ``dtype``, as ONNX does,
    whatever narrower range :func:`compute_params` spread the real range over.
    """

    scale: np.ndarray
    zero_point: np.ndarray
    dtype: np.dtype
    axis: int | None = None

    def __post_init__(self) -> None:
        dtype = np.dtype(self.dtype)
        if dtype not in QUANTIZED_RANGES:
            raise TinyInferError(f"quantized dtype must be one of {_type_names()}, got {dtype}")
        scale = np.asarray(self.scale, dtype=np.float32)
        zero_point = np.asarray(self.zero_point).astype(dtype)
        if scale.ndim > 1 or scale.shape != zero_point.shape:
            raise TinyInferError(
                f"scale and zero point must be scalars or 1-d arrays of one shape, got {scale.shape} and {zero_point.shape}"
            )
        if scale.ndim == 1 and self.axis is None:
            raise TinyInferError(f"per-channel parameters ({scale.size} scales) need an axis")
        if scale.ndim == 0 and self.axis is not None:
            raise TinyInferError(f"axis={self.axis} given, but the scale is a scalar (per tensor)")
        if not np.all(np.isfinite(scale) & (scale > 0)):
            raise TinyInferError(f"scales must be positive and finite, got {scale}")
        object.__setattr__(self, "dtype", dtype)
        object.__setattr__(self, "scale", scale)
        object.__setattr__(self, "zero_point", zero_point)

    @property
    def per_channel(self) -> bool:
        return self.axis is not None

    def broadcast(self, ndim: int) -> tuple[np.ndarray, np.ndarray]:
        """Scale (float32) and zero point (int32) shaped to broadcast against a rank-``ndim`` tensor."""
        scale, zero_point = self.scale, self.zero_point.astype(np.int32)
        if self.axis is None:
            return scale, zero_point
        axis = self.axis + ndim if self.axis < 0 else self.axis
        if not 0 <= axis < ndim:
            raise TinyInferError(f"axis {self.axis} is out of range for a tensor of rank {ndim}")
        shape = [1] * ndim
        shape[axis] = scale.size
        return scale.reshape(shape), zero_point.reshape(shape)


def integer_range(dtype, *, symmetric: bool = False, reduce_range: bool = False) -> tuple[int, int]:
    """The integers ``[qmin, qmax]`` a real range is spread over.

    Signed symmetric quantization drops the most negative value (int8: −127…127, int4:
    −7…7) so the grid is symmetric around zero point 0. ``reduce_range`` uses one bit less
    (uint8: 0…127, int8: −64…63, symmetric −63…63), as ONNX Runtime's option of that name
    does, to keep u8×s8 products from overflowing the 16-bit pair sums of x86's ``vpmaddubsw``.
    """
    dtype = np.dtype(dtype)
    if dtype not in QUANTIZED_RANGES:
        raise TinyInferError(f"quantized dtype must be one of {_type_names()}, got {dtype}")
    qmin, qmax = QUANTIZED_RANGES[dtype]
    if reduce_range:
        qmin, qmax = qmin // 2, qmax // 2
    if symmetric and qmin < 0:
        qmin = -qmax
    return qmin, qmax


def compute_params(rmin, rmax, dtype=np.int8, *, symmetric: bool = True, axis: int | None = None,
                   reduce_range: bool = False) -> QuantParams:
    """Scale and zero point mapping the real range ``[rmin, rmax]`` onto ``dtype``'s integers.

    ``rmin``/``rmax`` are scalars (per tensor) or 1-d arrays, one entry per channel along
    ``axis``. The range is first widened to include 0, so 0 is always exact.

    * symmetric: ``s = max(|rmin|, |rmax|) / qmax`` with ``z = 0`` for signed types, and ``z``
      the middle of the range (128 for uint8) for unsigned ones;
    * asymmetric: ``s = (rmax - rmin) / (qmax - qmin)``, ``z = round(qmin - rmin / s)``.

    A range of zero width (an all-zero channel) gets ``s = 1``, ``z`` as above, like ONNX
    Runtime's quantizer, so that dequantizing still gives exact zeros.
    """
    dtype = np.dtype(dtype)
    rmin = np.asarray(rmin, dtype=np.float64)
    rmax = np.asarray(rmax, dtype=np.float64)
    if rmin.shape != rmax.shape or rmin.ndim > 1:
        raise TinyInferError(f"rmin and rmax must be scalars or 1-d arrays of one shape, got {rmin.shape} and {rmax.shape}")
    if rmin.ndim == 1 and axis is None:
        raise TinyInferError(f"per-channel ranges ({rmin.size} channels) need an axis")
    if rmin.ndim == 0 and axis is not None:
        raise TinyInferError(f"axis={axis} needs per-channel ranges (1-d rmin/rmax), got scalars")
    if not (np.all(np.isfinite(rmin)) and np.all(np.isfinite(rmax))):
        raise TinyInferError(f"ranges must be finite, got rmin={rmin}, rmax={rmax}")
    if np.any(rmin > rmax):
        raise TinyInferError(f"rmin must not exceed rmax, got rmin={rmin}, rmax={rmax}")
    rmin = np.minimum(rmin, 0.0)
    rmax = np.maximum(rmax, 0.0)
    qmin, qmax = integer_range(dtype, symmetric=symmetric, reduce_range=reduce_range)
    if symmetric:
        absmax = np.maximum(-rmin, rmax)
        middle = (qmin + qmax + 1) // 2 if qmin >= 0 else 0  # unsigned: 128 for uint8, 8 for uint4
        half_steps = (qmax - qmin) / 2 if qmin >= 0 else qmax
        scale = absmax / half_steps
        zero_point = np.full(scale.shape, middle, dtype=np.float64)
    else:
        scale = (rmax - rmin) / (qmax - qmin)
        with np.errstate(divide="ignore", invalid="ignore"):
            zero_point = np.clip(np.rint(qmin - rmin / scale), qmin, qmax)
        zero_point = np.where(scale > 0, zero_point, qmin if qmin >= 0 else 0)
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    # float32 rounding can push a tiny scale to zero; the smallest normal float is the floor.
    scale = np.maximum(scale, np.finfo(np.float32).tiny)
    return QuantParams(scale, zero_point.astype(np.int32).astype(dtype), dtype, axis)


def params_from_tensor(x: np.ndarray, dtype=np.int8, *, symmetric: bool = True, axis: int | None = None,
                       reduce_range: bool = False) -> QuantParams:
    """:func:`compute_params` from a tensor's own min and max (over all of it, or per ``axis``).

    The usual way to quantize a weight: ``params_from_tensor(w, np.int8, axis=0)`` gives one
    symmetric int8 scale per output channel of a Conv weight.
    """
    x = np.asarray(x, dtype=np.float32)
    if axis is None:
        return compute_params(float(x.min()), float(x.max()), dtype, symmetric=symmetric, reduce_range=reduce_range)
    axis = _normalize_axis(axis, x.ndim)
    others = tuple(i for i in range(x.ndim) if i != axis)
    return compute_params(x.min(axis=others), x.max(axis=others), dtype, symmetric=symmetric, axis=axis,
                          reduce_range=reduce_range)


def quantize(x, params: QuantParams) -> np.ndarray:
    """``saturate(round_half_even(x / scale) + zero_point)`` as ``params.dtype``.

    The division runs in float32 (the scale's type), as ONNX QuantizeLinear specifies and
    ONNX Runtime computes it; the rounded value plus the zero point is then clamped to the
    full range of the type. NaN has no integer value; it becomes the zero point.
    """
    x = np.asarray(x, dtype=np.float32)
    scale, zero_point = params.broadcast(x.ndim)
    if params.axis is not None and x.shape[_normalize_axis(params.axis, x.ndim)] != params.scale.size:
        raise TinyInferError(
            f"tensor of shape {x.shape} has {x.shape[params.axis]} slices on axis {params.axis}, "
            f"but the parameters hold {params.scale.size} scales"
        )
    qmin, qmax = QUANTIZED_RANGES[params.dtype]
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        steps = np.rint(x / scale)  # float32 division, float32 rounding: half to even
        q = np.where(np.isnan(steps), zero_point, np.clip(steps.astype(np.float64) + zero_point, qmin, qmax))
    return q.astype(np.int32).astype(params.dtype)


def dequantize(q, params: QuantParams) -> np.ndarray:
    """``(q - zero_point) * scale`` in float32 (the integer difference is exact)."""
    q = np.asarray(q)
    scale, zero_point = params.broadcast(q.ndim)
    return ((q.astype(np.int32) - zero_point).astype(np.float32) * scale).astype(np.float32)


def fake_quantize(x, params: QuantParams) -> np.ndarray:
    """Quantize then dequantize: ``x`` as the quantized model sees it, in float32.

    For ``x`` inside the representable range ``[(qmin - z)·s, (qmax - z)·s]`` the error is at
    most ``s / 2``; outside it ``x`` is clipped to the nearest end.
    """
    return dequantize(quantize(x, params), params)


def quantization_error(x, params: QuantParams) -> float:
    """Mean squared error of a round trip, ``mean((fake_quantize(x) - x)**2)``."""
    x = np.asarray(x, dtype=np.float32)
    return float(np.mean((fake_quantize(x, params).astype(np.float64) - x) ** 2))


# ------------------------------------------------------------------------- 4-bit packing
def pack_int4(q) -> np.ndarray:
    """Pack 4-bit integers two per byte, element ``2k`` in the low nibble of byte ``k``.

    ``q`` is an int4/uint4 array (ml_dtypes) or any integer array with values in −8…7 or
    0…15; it is flattened in C order. An odd count leaves the last high nibble 0. This is
    the layout ONNX uses for ``int4``/``uint4`` tensors (``raw_data``).
    """
    q = np.asarray(q)
    values = q.astype(np.int8).astype(np.int16).ravel() if q.dtype in (INT4, UINT4) else q.astype(np.int64).ravel()
    if values.size and (values.min() < -8 or values.max() > 15):
        raise TinyInferError(f"4-bit values must lie in -8..7 (int4) or 0..15 (uint4), got {values.min()}..{values.max()}")
    nibbles = (values & 0x0F).astype(np.uint8)  # two's complement: -1 -> 0b1111
    if nibbles.size % 2:
        nibbles = np.append(nibbles, np.uint8(0))
    return (nibbles[0::2] | (nibbles[1::2] << 4)).astype(np.uint8)


def unpack_int4(packed, count: int, signed: bool = True) -> np.ndarray:
    """The first ``count`` 4-bit values of ``packed`` (see :func:`pack_int4`), as int4 or uint4.

    ``signed`` reads each nibble as two's complement (−8…7, ml_dtypes ``int4``); otherwise as
    0…15 (``uint4``). Reshape the result to the tensor's shape.
    """
    packed = np.asarray(packed, dtype=np.uint8).ravel()
    if count < 0 or count > 2 * packed.size:
        raise TinyInferError(f"cannot unpack {count} 4-bit values from {packed.size} bytes (at most {2 * packed.size})")
    nibbles = np.empty(2 * packed.size, dtype=np.int16)
    nibbles[0::2] = packed & 0x0F
    nibbles[1::2] = packed >> 4
    nibbles = nibbles[:count]
    if signed:
        nibbles = np.where(nibbles >= 8, nibbles - 16, nibbles)
        return nibbles.astype(INT4)
    return nibbles.astype(UINT4)


# ------------------------------------------------------------------------- helpers
def _normalize_axis(axis: int, ndim: int) -> int:
    if not -ndim <= axis < ndim:
        raise TinyInferError(f"axis {axis} is out of range for a tensor of rank {ndim}")
    return axis + ndim if axis < 0 else axis


def _type_names() -> str:
    return ", ".join(str(t) for t in QUANTIZED_RANGES)
