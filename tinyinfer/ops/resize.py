"""Resize (and its ancestor Upsample): sample a tensor on a finer or coarser grid.

Every output element is a weighted average of input elements near a *source coordinate*.
The ONNX spec (Resize-19) splits this in two choices, one per attribute:

* ``coordinate_transformation_mode`` maps an output index ``y`` to a real source
  coordinate ``x`` (``half_pixel``: ``x = (y + 0.5) / scale - 0.5``, ``align_corners``,
  ``asymmetric``, ``tf_crop_and_resize`` with a region of interest, ...);
* ``mode`` picks the weights around ``x``: ``nearest`` (one input element, chosen by
  ``nearest_mode``), ``linear`` (the two neighbours, weights ``1 - t`` and ``t``) or ``cubic``
  (four neighbours, Keys' cubic convolution kernel with coefficient ``cubic_coeff_a``,
  R. Keys, "Cubic convolution interpolation for digital image processing", 1981).
  ``antialias`` stretches the linear/cubic kernel by ``1 / scale`` when shrinking, so that
  every input element contributes (a low-pass filter, as in Pillow).

These filters are *separable*: resizing an N-d tensor is resizing one axis after the other.
So the reference computes, per axis, an index array and a weight array of shape
``(output length, taps)`` once, then does one gather and weighted sum per tap over the whole
tensor. Indices outside the input are clamped to its edge (or dropped, with
``exclude_outside``).

Resize-10 and Upsample-7/9 are the older forms: ``scales`` only, the ``asymmetric``
transform, and nearest rounding down when enlarging and up when shrinking (what ONNX Runtime
does for these versions).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from ..ir import Node
from .base import Op, bad_attribute, fail, normalize_axis, out, register, require_inputs

MODES = ("nearest", "linear", "cubic")
TRANSFORMS = (
    "half_pixel",
    "half_pixel_symmetric",
    "pytorch_half_pixel",
    "align_corners",
    "asymmetric",
    "tf_crop_and_resize",
)
#: Resize-11 also had this transform; Resize-13 removed it.
TF_HALF_PIXEL_FOR_NN = "tf_half_pixel_for_nn"
NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")
#: What Resize-10 and Upsample do: floor when enlarging, ceil when shrinking.
NEAREST_LEGACY = "legacy"
ASPECT_POLICIES = ("stretch", "not_larger", "not_smaller")


@dataclasses.dataclass
class AxisPlan:
    """How one axis is resized: its lengths, its scale and (for tf_crop_and_resize) its crop."""

    axis: int
    in_length: int
    out_length: int
    scale: float
    #: The real-valued output length ``scale * in_length`` the spec's formulas use (it equals
    #: ``out_length`` when the size was given directly).
    out_width: float
    roi: tuple[float, float] = (0.0, 1.0)

    def is_identity(self, transform: str) -> bool:
        if transform == "tf_crop_and_resize":
            return False
        return self.out_length == self.in_length and self.scale == 1.0


@dataclasses.dataclass
class ResizeSettings:
    """The attributes that decide the source coordinate and the weights, read once per node."""

    mode: str
    transform: str
    nearest_mode: str
    cubic_coeff_a: float = -0.75
    exclude_outside: bool = False
    antialias: bool = False
    extrapolation_value: float = 0.0


@register
class Resize(Op):
    """Resize ``X`` to ``sizes`` or by ``scales`` (one of the two), following Resize-19."""

    op_type = "Resize"
    since = 10
    attributes = {
        "mode": "nearest",
        "coordinate_transformation_mode": "half_pixel",
        "nearest_mode": "round_prefer_floor",
        "cubic_coeff_a": -0.75,
        "exclude_outside": 0,
        "extrapolation_value": 0.0,
        "antialias": 0,
        "axes": None,
        "keep_aspect_ratio_policy": "stretch",
    }

    def check(self, node):
        attrs = node.attrs
        modes = MODES if node.version >= 11 else ("nearest", "linear")
        if attrs["mode"] not in modes:
            raise bad_attribute(node, f"mode must be one of {list(modes)}, got {attrs['mode']!r}")
        transforms = TRANSFORMS + ((TF_HALF_PIXEL_FOR_NN,) if node.version < 13 else ())
        if attrs["coordinate_transformation_mode"] not in transforms:
            raise bad_attribute(
                node,
                f"coordinate_transformation_mode must be one of {list(transforms)}, "
                f"got {attrs['coordinate_transformation_mode']!r}",
            )
        if attrs["nearest_mode"] not in NEAREST_MODES:
            raise bad_attribute(
                node, f"nearest_mode must be one of {list(NEAREST_MODES)}, got {attrs['nearest_mode']!r}"
            )
        if attrs["keep_aspect_ratio_policy"] not in ASPECT_POLICIES:
            raise bad_attribute(
                node,
                f"keep_aspect_ratio_policy must be one of {list(ASPECT_POLICIES)}, "
                f"got {attrs['keep_aspect_ratio_policy']!r}",
            )
        axes = attrs["axes"]
        if axes is not None and len(set(axes)) != len(axes):
            raise bad_attribute(node, f"axes {axes} repeats an axis")

    def infer(self, node, inputs):
        require_inputs(node, inputs, 1 if node.version >= 11 else 2, 4 if node.version >= 11 else 2)
        x, roi, scales, sizes = _split_inputs(node, inputs)
        if x.shape is None:
            return [out(node, 0, x.dtype, None)]
        scales, sizes = _present(scales), _present(sizes)
        if scales is not None and sizes is not None:
            raise fail(node, "give either 'scales' or 'sizes', not both")
        if scales is None and sizes is None:
            raise fail(node, "one of 'scales' or 'sizes' must be given")
        known = all(v.const is not None for v in (scales, sizes) if v is not None)
        rank = len(x.shape)
        axes = _axes(node, rank)
        if not known:
            shape = tuple(None if i in axes else d for i, d in enumerate(x.shape))
            return [out(node, 0, x.dtype, shape)]
        if x.is_static:
            plans = plan_axes(node, x.shape, _const(_present(roi)), _const(scales), _const(sizes), need_roi=False)
            shape = list(x.shape)
            for plan in plans:
                shape[plan.axis] = plan.out_length
            return [out(node, 0, x.dtype, tuple(shape))]
        # Symbolic input dims: an axis keeps its dim when its scale is 1, takes a given size
        # when stretching to ``sizes``, and is unknown otherwise.
        given = _const(scales if scales is not None else sizes)
        wanted = _per_axis_values(node, given, axes, rank, what="scales/sizes")
        shape = list(x.shape)
        for axis in axes:
            if scales is not None:
                factor = float(wanted[axis])
                dim = x.shape[axis]
                shape[axis] = dim if factor == 1.0 else (math.floor(dim * factor) if isinstance(dim, int) else None)
            elif node.attrs["keep_aspect_ratio_policy"] == "stretch":
                shape[axis] = int(wanted[axis])
            else:
                shape[axis] = None
        return [out(node, 0, x.dtype, tuple(shape))]

    def reference(self, node, x, *rest):
        roi, scales, sizes = (list(rest) + [None] * 3)[:3] if node.version >= 11 else (None, rest[0], None)
        scales, sizes = _nonempty(scales), _nonempty(sizes)
        if scales is not None and sizes is not None:
            raise fail(node, "give either 'scales' or 'sizes', not both")
        if scales is None and sizes is None:
            raise fail(node, "one of 'scales' or 'sizes' must be given")
        plans = plan_axes(node, x.shape, _nonempty(roi), scales, sizes)
        return resize_array(x, plans, settings_of(node))


@register
class Upsample(Op):
    """Upsample-7/9 (deprecated since opset 10): Resize-10 with ``scales`` as attribute (7-8) or input (9)."""

    op_type = "Upsample"
    since = 7
    attributes = {"mode": "nearest", "scales": None}

    def check(self, node):
        mode = node.attrs["mode"]
        if mode not in ("nearest", "linear", "bilinear"):
            raise bad_attribute(node, f"mode must be 'nearest' or 'linear', got {mode!r}")
        if node.version < 9 and node.attrs["scales"] is None:
            raise bad_attribute(node, "required attribute 'scales' is missing (Upsample before opset 9)")

    def _scales(self, node, inputs_scales):
        if node.attrs["scales"] is not None:
            return np.asarray(node.attrs["scales"], dtype=np.float32)
        return inputs_scales

    def infer(self, node, inputs):
        require_inputs(node, inputs, 1 if node.attrs["scales"] is not None else 2, 2)
        x = inputs[0]
        scales = self._scales(node, inputs[1].const if len(inputs) > 1 and inputs[1] is not None else None)
        if x.shape is None:
            return [out(node, 0, x.dtype, None)]
        if scales is None:
            return [out(node, 0, x.dtype, (None,) * len(x.shape))]
        scales = np.asarray(scales, dtype=np.float64).reshape(-1)
        if len(scales) != len(x.shape):
            raise fail(node, f"scales has {len(scales)} values for an input of rank {len(x.shape)}")
        shape = tuple(
            d if s == 1.0 else (math.floor(d * s) if isinstance(d, int) else None) for d, s in zip(x.shape, scales)
        )
        return [out(node, 0, x.dtype, shape)]

    def reference(self, node, x, scales=None):
        scales = self._scales(node, scales)
        plans = plan_axes(node, x.shape, None, np.asarray(scales), None)
        mode = "linear" if node.attrs["mode"] in ("linear", "bilinear") else "nearest"
        return resize_array(x, plans, ResizeSettings(mode, "asymmetric", NEAREST_LEGACY))


# ---------------------------------------------------------------------------- planning
def settings_of(node: Node) -> ResizeSettings:
    attrs = node.attrs
    if node.op_type != "Resize" or node.version < 11:  # Resize-10: asymmetric, legacy rounding
        return ResizeSettings(attrs["mode"], "asymmetric", NEAREST_LEGACY)
    return ResizeSettings(
        mode=attrs["mode"],
        transform=attrs["coordinate_transformation_mode"],
        nearest_mode=attrs["nearest_mode"],
        cubic_coeff_a=float(attrs["cubic_coeff_a"]),
        exclude_outside=bool(attrs["exclude_outside"]),
        antialias=bool(attrs["antialias"]),
        extrapolation_value=float(attrs["extrapolation_value"]),
    )


def plan_axes(node: Node, shape, roi, scales, sizes, *, need_roi: bool = True) -> list[AxisPlan]:
    """Output length, scale and crop of every axis of an input of static ``shape``.

    With ``scales``, ``out = floor(in * scale)`` (the region of interest does not change the
    output length, as in ONNX Runtime and the ONNX reference). With ``sizes``, the scale is
    ``size / in``, or under ``keep_aspect_ratio_policy`` one common scale (the smallest for
    ``not_larger``, the largest for ``not_smaller``) with ``out = round_half_up(scale * in)``.
    """
    rank = len(shape)
    axes = _axes(node, rank) if node.op_type == "Resize" else list(range(rank))
    plans = {i: AxisPlan(i, shape[i], shape[i], 1.0, float(shape[i])) for i in range(rank)}
    if scales is not None:
        factors = _per_axis_values(node, scales, axes, rank, what="scales")
        for axis in axes:
            factor = float(factors[axis])
            if factor <= 0:
                raise fail(node, f"scales must be positive, got {factor} for axis {axis}")
            length = shape[axis]
            plans[axis] = AxisPlan(axis, length, math.floor(length * factor), factor, factor * length)
    else:
        targets = _per_axis_values(node, sizes, axes, rank, what="sizes").astype(np.int64)
        if any(targets[a] < 0 for a in axes):
            raise fail(node, f"sizes must not be negative, got {list(np.asarray(sizes).reshape(-1))}")
        policy = node.attrs.get("keep_aspect_ratio_policy", "stretch")
        if policy == "stretch":
            for axis in axes:
                length, target = shape[axis], int(targets[axis])
                factor = target / length if length else 1.0
                plans[axis] = AxisPlan(axis, length, target, factor, float(target))
        else:
            ratios = [targets[a] / shape[a] for a in axes if shape[a]]
            factor = float(min(ratios) if policy == "not_larger" else max(ratios)) if ratios else 1.0
            for axis in axes:
                length = shape[axis]
                plans[axis] = AxisPlan(axis, length, math.floor(factor * length + 0.5), factor, factor * length)
    if roi is not None:
        roi = np.asarray(roi, dtype=np.float64).reshape(-1)
        if len(roi) != 2 * len(axes):
            raise fail(node, f"roi must hold 2 values per resized axis ({2 * len(axes)}), got {len(roi)}")
        for i, axis in enumerate(axes):
            plans[axis].roi = (float(roi[i]), float(roi[len(axes) + i]))
    elif need_roi and settings_of(node).transform == "tf_crop_and_resize":
        raise fail(node, "coordinate_transformation_mode 'tf_crop_and_resize' needs the 'roi' input")
    return [plans[i] for i in range(rank)]


def _axes(node: Node, rank: int) -> list[int]:
    axes = node.attrs.get("axes") if node.op_type == "Resize" else None
    if axes is None:
        return list(range(rank))
    return [normalize_axis(node, a, rank, "axes entry") for a in axes]


def _per_axis_values(node: Node, values, axes: list[int], rank: int, what: str) -> np.ndarray:
    """Spread values given for ``axes`` over all ``rank`` axes (others get 1 / their size)."""
    values = np.asarray(values).reshape(-1)
    if len(values) != len(axes):
        raise fail(node, f"{what} has {len(values)} values, expected one per resized axis ({len(axes)})")
    full = np.ones(rank, dtype=np.float64)
    full[axes] = values
    return full


def _split_inputs(node: Node, inputs):
    if node.version >= 11:
        padded = list(inputs) + [None] * (4 - len(inputs))
        return padded[0], padded[1], padded[2], padded[3]
    return inputs[0], None, inputs[1], None


def _present(value):
    """An optional input as given, or None when it is left out or a known empty tensor."""
    if value is None:
        return None
    if value.shape is not None and 0 in value.shape:
        return None
    if value.const is not None and np.asarray(value.const).size == 0:
        return None
    return value


def _const(value):
    return None if value is None else value.const


def _nonempty(array):
    return None if array is None or np.asarray(array).size == 0 else array


# ---------------------------------------------------------------------------- the computation
def resize_array(x: np.ndarray, plans: list[AxisPlan], settings: ResizeSettings) -> np.ndarray:
    """Resize ``x`` one axis at a time; the result has ``x``'s dtype."""
    active = [p for p in plans if not p.is_identity(settings.transform)]
    if settings.mode == "nearest":
        result = x
        for plan in active:
            result = _resize_axis_nearest(result, plan, settings)
        return result if active else x.copy()
    result = x.astype(_compute_dtype(x.dtype), copy=False)
    for plan in active:
        result = _resize_axis_filter(result, plan, settings)
    return _back_to(result, x.dtype)


def source_coordinates(plan: AxisPlan, transform: str) -> np.ndarray:
    """The real source coordinate ``x`` of every output index ``y`` along one axis (spec formulas)."""
    y = np.arange(plan.out_length, dtype=np.float64)
    length, scale, width = plan.in_length, plan.scale, plan.out_width
    if transform == "half_pixel":
        return (y + 0.5) / scale - 0.5
    if transform == "half_pixel_symmetric":
        # Centre the (possibly fractional) output window on the input's centre.
        offset = length / 2 * (1 - plan.out_length / width)
        return offset + (y + 0.5) / scale - 0.5
    if transform == "pytorch_half_pixel":
        return (y + 0.5) / scale - 0.5 if plan.out_length > 1 else np.zeros_like(y)
    if transform == "align_corners":
        return y * (length - 1) / (width - 1) if width != 1 else np.zeros_like(y)
    if transform == "asymmetric":
        return y / scale
    if transform == TF_HALF_PIXEL_FOR_NN:
        return (y + 0.5) / scale
    if transform == "tf_crop_and_resize":
        start, end = plan.roi
        if width == 1:
            return np.full_like(y, (start + end) / 2 * (length - 1))
        return start * (length - 1) + y * (end - start) * (length - 1) / (width - 1)
    raise ValueError(f"unknown coordinate transformation {transform!r}")


def _nearest_index(x: np.ndarray, plan: AxisPlan, nearest_mode: str) -> np.ndarray:
    if nearest_mode == "round_prefer_floor":  # ties go down: 2.5 -> 2
        index = np.ceil(x - 0.5)
    elif nearest_mode == "round_prefer_ceil":  # ties go up: 2.5 -> 3
        index = np.floor(x + 0.5)
    elif nearest_mode == "floor":
        index = np.floor(x)
    elif nearest_mode == "ceil":
        index = np.ceil(x)
    else:  # NEAREST_LEGACY
        index = np.ceil(x) if plan.scale < 1 else np.floor(x)
    return np.clip(index, 0, plan.in_length - 1).astype(np.intp)


def _resize_axis_nearest(data: np.ndarray, plan: AxisPlan, settings: ResizeSettings) -> np.ndarray:
    x = source_coordinates(plan, settings.transform)
    result = np.take(data, _nearest_index(x, plan, settings.nearest_mode), axis=plan.axis)
    return _extrapolate(result, x, plan, settings)


def filter_taps(x: np.ndarray, plan: AxisPlan, settings: ResizeSettings) -> tuple[np.ndarray, np.ndarray]:
    """Input indices and weights, each ``(out_length, taps)``, of the linear or cubic filter.

    The kernel ``k`` has support ``radius`` (1 for linear, 2 for cubic); with antialias and a
    scale below 1 it is stretched to ``k(d * scale)``, which widens it to ``radius / scale``.
    Tap ``i`` sits at ``floor(x) + i`` for ``i`` in ``[start, 1 - start]``, the smallest
    window that holds every tap with non-zero weight.
    """
    radius = 1 if settings.mode == "linear" else 2
    stretch = min(plan.scale, 1.0) if settings.antialias else 1.0
    start = math.floor(-radius / stretch) + 1
    offsets = np.arange(start, 2 - start)
    base = np.floor(x)
    index = base[:, None].astype(np.int64) + offsets[None, :]
    distance = np.abs((index - x[:, None]) * stretch)
    if settings.mode == "linear":
        weights = np.maximum(0.0, 1.0 - distance)
    else:
        weights = keys_cubic(distance, settings.cubic_coeff_a)
    if settings.exclude_outside:
        weights = np.where((index < 0) | (index >= plan.in_length), 0.0, weights)
    if settings.antialias or settings.exclude_outside:
        total = weights.sum(axis=1, keepdims=True)
        weights = weights / np.where(total == 0, 1.0, total)
    return np.clip(index, 0, plan.in_length - 1).astype(np.intp), weights


def keys_cubic(distance: np.ndarray, a: float) -> np.ndarray:
    """Keys' cubic convolution kernel at ``|d|`` (Keys 1981, eq. 4)."""
    d = distance
    near = ((a + 2) * d - (a + 3)) * d * d + 1
    far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
    return np.where(d <= 1, near, np.where(d < 2, far, 0.0))


def _resize_axis_filter(data: np.ndarray, plan: AxisPlan, settings: ResizeSettings) -> np.ndarray:
    x = source_coordinates(plan, settings.transform)
    index, weights = filter_taps(x, plan, settings)
    weights = weights.astype(data.dtype)
    along = [1] * data.ndim
    along[plan.axis] = plan.out_length
    result = None
    for tap in range(index.shape[1]):  # a few taps (4 for cubic), each one gather over the tensor
        term = np.take(data, index[:, tap], axis=plan.axis) * weights[:, tap].reshape(along)
        result = term if result is None else result + term
    if result is None:  # zero-length output
        shape = list(data.shape)
        shape[plan.axis] = plan.out_length
        result = np.zeros(shape, dtype=data.dtype)
    return _extrapolate(result, x, plan, settings)


def _extrapolate(result: np.ndarray, x: np.ndarray, plan: AxisPlan, settings: ResizeSettings) -> np.ndarray:
    """tf_crop_and_resize: positions whose source lies outside the input get extrapolation_value."""
    if settings.transform != "tf_crop_and_resize":
        return result
    outside = (x < 0) | (x > plan.in_length - 1)
    if not outside.any():
        return result
    along = [1] * result.ndim
    along[plan.axis] = plan.out_length
    return np.where(outside.reshape(along), np.asarray(settings.extrapolation_value, dtype=result.dtype), result)


def _compute_dtype(dtype: np.dtype) -> np.dtype:
    """float32 is enough for float32 and narrower floats (a few taps summed); float64 otherwise."""
    if dtype.kind == "f" and dtype.itemsize <= 4 or dtype.name == "bfloat16":
        return np.dtype(np.float32)
    return np.dtype(np.float64)


def _back_to(result: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Round (half to even) and saturate for integer types; plain cast for floats."""
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return np.clip(np.rint(result), info.min, info.max).astype(dtype)
    return result.astype(dtype, copy=False)
