"""Normalization: BatchNormalization, InstanceNormalization, LayerNormalization,
GroupNormalization, RMSNormalization, MeanVarianceNormalization, LpNormalization and LRN.

All but the last two standardise a tensor over some axes, ``(x - mean) / sqrt(var + eps)``,
then apply a learned per-channel affine map; they differ only in *which axes* the
statistics are taken over:

==========================  ===============================================  ==========================
op                          statistics over                                  paper
==========================  ===============================================  ==========================
BatchNormalization          N and spatial axes (stored running statistics)   Ioffe & Szegedy, 2015
InstanceNormalization       spatial axes of each (n, c)                      Ulyanov et al., 2016
LayerNormalization          axes ``axis`` .. last of each sample             Ba, Kiros & Hinton, 2016
GroupNormalization          channel groups and spatial axes of each sample   Wu & He, 2018
RMSNormalization            like LayerNormalization, no mean subtracted      Zhang & Sennrich, 2019
==========================  ===============================================  ==========================

LRN is the local response normalization of AlexNet (Krizhevsky et al., 2012). Statistics of
half-precision inputs are computed in float32 (``stash_type`` where the spec has it) and
the result is cast back, so float32 stays float32 and float16 stays float16.
"""

from __future__ import annotations

import numpy as np

from ..ir import dtypes
from .base import REQUIRED, Op, bad_attribute, fail, normalize_axis, out, register, require_inputs


# ---------------------------------------------------------------------------- BatchNormalization
@register
class BatchNormalization(Op):
    """``Y = scale * (X - mean) / sqrt(var + epsilon) + B`` per channel (axis 1).

    Inference mode uses the stored ``input_mean`` and ``input_var``. In training mode
    (``training_mode=1`` from opset 14; extra outputs before it) the statistics of the batch
    are used instead, and the running statistics are updated as
    ``running = input * momentum + batch * (1 - momentum)``. Spec: BatchNormalization-15
    (inference semantics unchanged since opset 7; ``spatial=0`` of opset 7-8 means the
    parameters have one value per (channel, position), which broadcasting handles).
    """

    op_type = "BatchNormalization"
    since = 7
    attributes = {"epsilon": 1e-5, "momentum": 0.9, "training_mode": 0}

    def defaults(self, version):
        if version < 9:
            return {"epsilon": 1e-5, "momentum": 0.9, "spatial": 1}
        if version < 14:
            return {"epsilon": 1e-5, "momentum": 0.9}
        return self.attributes

    def infer(self, node, inputs):
        require_inputs(node, inputs, 5)
        x, mean = inputs[0], inputs[3]
        if x.shape is not None and len(x.shape) < 2:
            raise fail(node, f"X must be (N, C, ...), got shape {list(x.shape)}")
        channels = x.shape[1] if x.shape is not None else None
        for name, value in zip(("scale", "B", "input_mean", "input_var"), inputs[1:5]):
            if value.shape is not None and len(value.shape) == 1:
                size = value.shape[0]
                if isinstance(size, int) and isinstance(channels, int) and size != channels:
                    raise fail(node, f"{name} has {size} values but X has {channels} channels (axis 1)")
        results = [out(node, 0, x.dtype, x.shape)]
        for i in range(1, len(node.outputs)):
            results.append(out(node, i, mean.dtype, mean.shape))
        return results

    def reference(self, node, x, scale, bias, mean, var):
        epsilon = node.attrs["epsilon"]
        compute = _compute_dtype(x.dtype)
        xc = x.astype(compute, copy=False)
        if not _training(node):
            # Fold the four per-channel vectors into one multiply-add over X.
            factor = scale.astype(compute) / np.sqrt(var.astype(compute) + epsilon)
            shift = bias.astype(compute) - mean.astype(compute) * factor
            y = xc * _per_channel(factor, x.ndim)
            y += _per_channel(shift, x.ndim)
            return y.astype(x.dtype, copy=False)
        axes = (0, *range(2, x.ndim))
        batch_mean, batch_var = xc.mean(axis=axes), xc.var(axis=axes)
        factor = scale.astype(compute) / np.sqrt(batch_var + epsilon)
        y = (xc - _per_channel(batch_mean, x.ndim)) * _per_channel(factor, x.ndim)
        y += _per_channel(bias.astype(compute), x.ndim)
        momentum = node.attrs["momentum"]
        running_mean = (mean * momentum + batch_mean * (1 - momentum)).astype(mean.dtype)
        running_var = (var * momentum + batch_var * (1 - momentum)).astype(var.dtype)
        # Opsets 7-13 may also ask for the batch statistics ("saved" for the backward pass);
        # like ONNX Runtime (and cuDNN), the saved variance is 1 / sqrt(var + epsilon).
        saved_inverse_std = 1 / np.sqrt(batch_var + epsilon)
        outputs = (y.astype(x.dtype), running_mean, running_var,
                   batch_mean.astype(mean.dtype), saved_inverse_std.astype(var.dtype))
        return outputs[: len(node.outputs)]


def _training(node) -> bool:
    if "training_mode" in node.attrs:  # opset 14 on
        return bool(node.attrs["training_mode"])
    return len([name for name in node.outputs if name]) > 1  # opset 7-13: outputs ask for training


def _per_channel(values: np.ndarray, rank: int) -> np.ndarray:
    """Shape a per-channel vector (or a per-(channel, position) tensor) to broadcast over (N, C, ...)."""
    if values.ndim == 1:
        return values.reshape(-1, *(1,) * (rank - 2))
    return values


# ---------------------------------------------------------------------------- InstanceNormalization
@register
class InstanceNormalization(Op):
    """``Y[n, c] = scale[c] * (X[n, c] - mean) / sqrt(var + epsilon) + B[c]``, statistics per (n, c).

    Spec: InstanceNormalization-22 (same meaning since opset 6).
    """

    op_type = "InstanceNormalization"
    since = 6
    attributes = {"epsilon": 1e-5}

    def infer(self, node, inputs):
        require_inputs(node, inputs, 3)
        x = inputs[0]
        if x.shape is not None and len(x.shape) < 3:
            raise fail(node, f"input must be (N, C, D1, ...) with at least one spatial axis, got {list(x.shape)}")
        return [out(node, 0, x.dtype, x.shape)]

    def reference(self, node, x, scale, bias):
        compute = _compute_dtype(x.dtype)
        y = _standardize(x.astype(compute, copy=False), tuple(range(2, x.ndim)), node.attrs["epsilon"])
        y = y * _per_channel(scale.astype(compute), x.ndim) + _per_channel(bias.astype(compute), x.ndim)
        return y.astype(x.dtype, copy=False)


# ---------------------------------------------------------------------------- LayerNormalization
@register
class LayerNormalization(Op):
    """``Y = (X - mean) / sqrt(var + epsilon) * Scale + B``, statistics over axes ``axis`` .. last.

    Optional outputs ``Mean`` and ``InvStdDev`` (``1 / sqrt(var + epsilon)``) have the shape
    of X with the normalized axes set to 1 and the element type ``stash_type`` (the
    precision the statistics are computed in, float32 by default). Spec: LayerNormalization-17.
    """

    op_type = "LayerNormalization"
    since = 17
    attributes = {"axis": -1, "epsilon": 1e-5, "stash_type": 1}

    def check(self, node):
        _check_stash_type(node)

    def infer(self, node, inputs):
        require_inputs(node, inputs, 2, 3)
        x = inputs[0]
        stash = dtypes.from_onnx(node.attrs["stash_type"])
        results = [out(node, 0, x.dtype, x.shape)]
        statistics_shape = None
        if x.shape is not None:
            axis = normalize_axis(node, node.attrs["axis"], len(x.shape))
            statistics_shape = (*x.shape[:axis], *(1,) * (len(x.shape) - axis))
        for i in range(1, len(node.outputs)):
            results.append(out(node, i, stash, statistics_shape))
        return results

    def reference(self, node, x, scale, bias=None):
        axis = normalize_axis(node, node.attrs["axis"], x.ndim)
        stash = dtypes.from_onnx(node.attrs["stash_type"])
        xs = x.astype(stash, copy=False)
        axes = tuple(range(axis, x.ndim))
        mean = xs.mean(axis=axes, keepdims=True)
        centered = xs - mean
        inverse_std = 1.0 / np.sqrt((centered * centered).mean(axis=axes, keepdims=True) + node.attrs["epsilon"])
        y = centered * inverse_std * scale.astype(stash, copy=False)
        if bias is not None:
            y += bias.astype(stash, copy=False)
        return (y.astype(x.dtype, copy=False), mean, inverse_std)[: max(1, len(node.outputs))]


# ---------------------------------------------------------------------------- GroupNormalization
@register
class GroupNormalization(Op):
    """Standardize each sample over ``num_groups`` groups of channels (and all spatial axes),
    then ``Y = scale * normalized + bias``.

    From opset 21, ``scale`` and ``bias`` have one value per channel; in opset 18 one per
    group. Spec: GroupNormalization-21.
    """

    op_type = "GroupNormalization"
    since = 18
    attributes = {"epsilon": 1e-5, "num_groups": REQUIRED, "stash_type": 1}

    def defaults(self, version):
        if version < 21:
            return {"epsilon": 1e-5, "num_groups": REQUIRED}
        return self.attributes

    def check(self, node):
        if node.attrs["num_groups"] < 1:
            raise bad_attribute(node, f"num_groups must be >= 1, got {node.attrs['num_groups']}")
        if "stash_type" in node.attrs:
            _check_stash_type(node)

    def infer(self, node, inputs):
        require_inputs(node, inputs, 3)
        x = inputs[0]
        if x.shape is not None:
            if len(x.shape) < 2:
                raise fail(node, f"X must be (N, C, ...), got shape {list(x.shape)}")
            channels, groups = x.shape[1], node.attrs["num_groups"]
            if isinstance(channels, int) and channels % groups:
                raise fail(node, f"X has {channels} channels, which cannot be split into num_groups={groups} groups")
        return [out(node, 0, x.dtype, x.shape)]

    def reference(self, node, x, scale, bias):
        groups = node.attrs["num_groups"]
        stash = dtypes.from_onnx(node.attrs.get("stash_type", 1))
        n, channels = x.shape[:2]
        grouped = x.astype(stash, copy=False).reshape(n, groups, -1)
        y = _standardize(grouped, (2,), node.attrs["epsilon"]).reshape(x.shape)
        scale, bias = scale.astype(stash), bias.astype(stash)
        if node.version < 21:  # one value per group: repeat it for the group's channels
            scale, bias = np.repeat(scale, channels // groups), np.repeat(bias, channels // groups)
        y = y * _per_channel(scale, x.ndim) + _per_channel(bias, x.ndim)
        return y.astype(x.dtype, copy=False)


# ---------------------------------------------------------------------------- RMSNormalization
@register
class RMSNormalization(Op):
    """``Y = X / sqrt(mean(X**2) + epsilon) * scale``, the mean over axes ``axis`` .. last.

    The output has the element type of ``scale``. Spec: RMSNormalization-23.
    """

    op_type = "RMSNormalization"
    since = 23
    attributes = {"axis": -1, "epsilon": 1e-5, "stash_type": 1}

    def check(self, node):
        _check_stash_type(node)

    def infer(self, node, inputs):
        require_inputs(node, inputs, 2)
        x, scale = inputs
        if x.shape is not None:
            normalize_axis(node, node.attrs["axis"], len(x.shape))
        return [out(node, 0, scale.dtype, x.shape)]

    def reference(self, node, x, scale):
        axis = normalize_axis(node, node.attrs["axis"], x.ndim)
        stash = dtypes.from_onnx(node.attrs["stash_type"])
        xs = x.astype(stash, copy=False)
        mean_square = (xs * xs).mean(axis=tuple(range(axis, x.ndim)), keepdims=True)
        y = xs / np.sqrt(mean_square + node.attrs["epsilon"]) * scale.astype(stash, copy=False)
        return y.astype(scale.dtype, copy=False)


# ---------------------------------------------------------------------------- MeanVarianceNormalization
@register
class MeanVarianceNormalization(Op):
    """``Y = (X - mean) / (std + 1e-9)``, statistics over ``axes`` (default N, H, W).

    The 1e-9 comes from the spec's function body. Spec: MeanVarianceNormalization-13.
    """

    op_type = "MeanVarianceNormalization"
    since = 9
    attributes = {"axes": [0, 2, 3]}

    def infer(self, node, inputs):
        require_inputs(node, inputs, 1)
        x = inputs[0]
        if x.shape is not None:
            for axis in node.attrs["axes"]:
                normalize_axis(node, axis, len(x.shape), "axes entry")
        return [out(node, 0, x.dtype, x.shape)]

    def reference(self, node, x):
        axes = tuple(normalize_axis(node, a, x.ndim, "axes entry") for a in node.attrs["axes"])
        xc = x.astype(_compute_dtype(x.dtype), copy=False)
        mean = xc.mean(axis=axes, keepdims=True)
        std = np.sqrt(((xc - mean) ** 2).mean(axis=axes, keepdims=True))
        return ((xc - mean) / (std + 1e-9)).astype(x.dtype, copy=False)


# ---------------------------------------------------------------------------- LpNormalization
@register
class LpNormalization(Op):
    """``Y = X / ||X||_p`` along ``axis`` (p = 1 or 2); a zero norm gives 0. Spec: LpNormalization-22."""

    op_type = "LpNormalization"
    since = 1
    attributes = {"axis": -1, "p": 2}

    def check(self, node):
        if node.attrs["p"] not in (1, 2):
            raise bad_attribute(node, f"p must be 1 or 2, got {node.attrs['p']}")

    def infer(self, node, inputs):
        require_inputs(node, inputs, 1)
        x = inputs[0]
        if x.shape is not None:
            normalize_axis(node, node.attrs["axis"], len(x.shape))
        return [out(node, 0, x.dtype, x.shape)]

    def reference(self, node, x):
        axis = normalize_axis(node, node.attrs["axis"], x.ndim)
        xc = x.astype(_compute_dtype(x.dtype), copy=False)
        if node.attrs["p"] == 1:
            norm = np.abs(xc).sum(axis=axis, keepdims=True)
        else:
            norm = np.sqrt((xc * xc).sum(axis=axis, keepdims=True))
        y = xc / np.where(norm == 0, 1, norm)  # a zero vector stays zero instead of 0/0
        return y.astype(x.dtype, copy=False)


# ---------------------------------------------------------------------------- LRN
@register
class LRN(Op):
    """Local response normalization across channels (AlexNet):

    ``Y[n, c] = X[n, c] / (bias + alpha / size * sum of X[n, c']**2) ** beta`` for ``c'`` in
    ``[c - floor((size-1)/2), c + ceil((size-1)/2)]``. Spec: LRN-13.
    """

    op_type = "LRN"
    since = 1
    attributes = {"alpha": 1e-4, "beta": 0.75, "bias": 1.0, "size": REQUIRED}

    def check(self, node):
        if node.attrs["size"] < 1:
            raise bad_attribute(node, f"size must be >= 1, got {node.attrs['size']}")

    def infer(self, node, inputs):
        require_inputs(node, inputs, 1)
        x = inputs[0]
        if x.shape is not None and len(x.shape) < 2:
            raise fail(node, f"X must be (N, C, ...), got shape {list(x.shape)}")
        return [out(node, 0, x.dtype, x.shape)]

    def reference(self, node, x):
        size, attrs = node.attrs["size"], node.attrs
        xc = x.astype(_compute_dtype(x.dtype), copy=False)
        before, after = (size - 1) // 2, size - 1 - (size - 1) // 2
        squares = np.pad(xc * xc, [(0, 0), (before, after)] + [(0, 0)] * (x.ndim - 2))
        channels = x.shape[1]
        window_sum = sum(squares[:, offset:offset + channels] for offset in range(size))  # size is small
        y = xc / (attrs["bias"] + attrs["alpha"] / size * window_sum) ** attrs["beta"]
        return y.astype(x.dtype, copy=False)


# ---------------------------------------------------------------------------- private helpers
def _standardize(x: np.ndarray, axes: tuple[int, ...], epsilon: float) -> np.ndarray:
    mean = x.mean(axis=axes, keepdims=True)
    centered = x - mean
    variance = (centered * centered).mean(axis=axes, keepdims=True)
    return centered / np.sqrt(variance + epsilon)


def _compute_dtype(dtype: np.dtype) -> np.dtype:
    """float64 stays float64; everything narrower computes in float32."""
    return np.dtype(np.float64) if dtype == np.float64 else np.dtype(np.float32)


def _check_stash_type(node) -> None:
    try:
        stash = dtypes.from_onnx(node.attrs["stash_type"])
    except KeyError:
        stash = None
    if stash is None or stash not in dtypes.FLOAT_TYPES:
        raise bad_attribute(node, f"stash_type must be a floating-point ONNX type code (1 = float), "
                                  f"got {node.attrs['stash_type']}")
