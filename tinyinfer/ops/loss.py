"""Classification losses, plus four small ops that have no other home yet.

**NegativeLogLikelihoodLoss** and **SoftmaxCrossEntropyLoss** turn per-class scores of shape
``[N, C, d1, ..., dk]`` and integer class labels of shape ``[N, d1, ..., dk]`` into a loss.
Each sample (one ``n`` and one position ``d1..dk``) contributes

    loss[n, d] = -weight[c] * log_prob[n, c, d],    c = target[n, d]

where ``log_prob`` is the input itself for NegativeLogLikelihoodLoss and
``LogSoftmax(scores)`` over the class axis for SoftmaxCrossEntropyLoss; ``weight`` is the
optional per-class weight (1 when absent). A sample whose label equals ``ignore_index``
contributes nothing: its loss is 0 and its weight leaves the mean's denominator too. The
``reduction`` is ``none`` (the per-sample tensor), ``sum``, or ``mean`` (the default):

    mean = sum of the losses / sum of weight[c] over the samples not ignored

which is the plain average when there are no weights — PyTorch's ``NLLLoss`` and
``CrossEntropyLoss`` define it the same way. If every sample is ignored the mean is 0 / 0 =
NaN, as in PyTorch and ONNX Runtime. Spec: NegativeLogLikelihoodLoss-22,
SoftmaxCrossEntropyLoss-13 (their older versions differ only in the types allowed).

The losses are computed in float64 and rounded once to the input type: each per-sample
loss is then the correctly rounded product, and a sum over many samples does not drift the
way a float32 running sum does. The training chapter relies on that.

The other ops, each a few lines of NumPy:

* **CumProd-26** — running product along an axis (``exclusive``, ``reverse``), the twin of
  CumSum in ``math.py``;
* **ReverseSequence-10/28** — reverse the first ``sequence_lens[b]`` steps of each batch entry;
* **CenterCropPad-18** — crop or zero-pad chosen axes to a size, keeping the centre;
* **Det-11/22** — determinants of a batch of square matrices (LU, via ``np.linalg.det``).
"""

from __future__ import annotations

import numpy as np

from ..ir.graph import Dim, Shape
from .activation import LogSoftmax
from .base import (
    Op,
    bad_attribute,
    const_ints,
    fail,
    normalize_axis,
    out,
    register,
    require_inputs,
)
from .math import CumSum
from .tensor import shape_str

_REDUCTIONS = ("none", "sum", "mean")
_LOSS_ATTRIBUTES = {"ignore_index": None, "reduction": "mean"}


# ============================================================================ losses
class _ClassificationLoss(Op):
    """Shared checks and shape inference of the two losses."""

    since = 12
    attributes = _LOSS_ATTRIBUTES

    def check(self, node):
        if node.attrs["reduction"] not in _REDUCTIONS:
            raise bad_attribute(node, f"reduction must be one of {list(_REDUCTIONS)}, got {node.attrs['reduction']!r}")

    def loss_value(self, node, inputs):
        """The Value of output 0: shape ``[N, d1, ..., dk]`` for ``none``, a scalar otherwise."""
        require_inputs(node, inputs, 2, 3)
        scores, target = inputs[0], inputs[1]
        weight = inputs[2] if len(inputs) > 2 else None
        per_sample = _per_sample_shape(node, scores.shape, target.shape)
        if weight is not None and weight.shape is not None:
            classes = scores.shape[1] if scores.shape is not None else None
            if len(weight.shape) != 1 or (_known(classes) and _known(weight.shape[0]) and weight.shape[0] != classes):
                raise fail(node, f"weight must have shape [C] = [{classes}], got {shape_str(weight.shape)}")
        shape = per_sample if node.attrs["reduction"] == "none" else ()
        return out(node, 0, scores.dtype, shape)


def _per_sample_shape(node, scores: Shape | None, target: Shape | None) -> Shape | None:
    """``[N, d1, ..., dk]`` from scores ``[N, C, d1, ..., dk]`` and target ``[N, d1, ..., dk]``."""
    if scores is not None and len(scores) < 2:
        raise fail(node, f"scores must have shape [N, C, d1, ..., dk] (rank >= 2), got {shape_str(scores)}")
    if scores is None:
        return target
    expected = (scores[0], *scores[2:])
    if target is None:
        return expected
    mismatch = len(target) != len(expected) or any(
        _known(s) and _known(t) and s != t for s, t in zip(expected, target)
    )
    if mismatch:
        raise fail(node, f"target must have shape [N, d1, ..., dk] = {shape_str(expected)} for scores "
                         f"{shape_str(scores)}, got {shape_str(target)}")
    merged: list[Dim] = [s if _known(s) else t for s, t in zip(expected, target)]
    return tuple(merged)


def _known(dim: Dim) -> bool:
    return isinstance(dim, int)


def negative_log_likelihood(node, log_prob: np.ndarray, target: np.ndarray, weight: np.ndarray | None) -> np.ndarray:
    """The loss of ``node`` (its ``reduction`` and ``ignore_index``) from log-probabilities.

    ``log_prob`` is ``[N, C, d1, ..., dk]``, ``target`` ``[N, d1, ..., dk]``; the result has
    log_prob's dtype and is a scalar unless ``reduction`` is ``none``.
    """
    ignore_index = node.attrs["ignore_index"]
    ignored = np.zeros(target.shape, bool) if ignore_index is None else target == ignore_index
    classes = log_prob.shape[1]
    label = np.where(ignored, 0, target).astype(np.int64)  # any valid class; masked below
    outside = (label < 0) | (label >= classes)
    if outside.any():
        raise IndexError(
            f"target holds class {int(label[outside][0])}, outside [0, {classes - 1}] for {classes} classes "
            f"(and not the ignore_index {ignore_index})"
        )
    picked = np.take_along_axis(log_prob, label[:, None], axis=1)[:, 0].astype(np.float64)
    sample_weight = np.ones(label.shape) if weight is None else weight.astype(np.float64)[label]
    sample_weight[ignored] = 0.0
    # An ignored sample may sit on a class of log-probability -inf, and -inf * 0 is NaN:
    # zero its log-probability before the product.
    picked[ignored] = 0.0
    loss = -picked * sample_weight
    loss[ignored] = 0.0  # +0.0, not -0.0
    reduction = node.attrs["reduction"]
    if reduction == "sum":
        loss = np.sum(loss)
    elif reduction == "mean":
        with np.errstate(invalid="ignore", divide="ignore"):  # all ignored: NaN, as PyTorch
            loss = np.sum(loss) / np.sum(sample_weight)
    return np.asarray(loss).astype(log_prob.dtype)


@register
class NegativeLogLikelihoodLoss(_ClassificationLoss):
    """NegativeLogLikelihoodLoss-12/13/22: ``-weight[c] * input[n, c, d]`` at each label c.

    The input already holds log-probabilities (e.g. a LogSoftmax output); see the module
    docstring for ``ignore_index`` and the reductions.
    """

    op_type = "NegativeLogLikelihoodLoss"

    def infer(self, node, inputs):
        return [self.loss_value(node, inputs)]

    def reference(self, node, log_prob, target, weight=None):
        return negative_log_likelihood(node, log_prob, target, weight)


@register
class SoftmaxCrossEntropyLoss(_ClassificationLoss):
    """SoftmaxCrossEntropyLoss-12/13: NegativeLogLikelihoodLoss of ``LogSoftmax(scores)``
    along the class axis 1.

    The optional second output ``log_prob`` is that LogSoftmax, shaped like the scores.
    """

    op_type = "SoftmaxCrossEntropyLoss"

    def infer(self, node, inputs):
        results = [self.loss_value(node, inputs)]
        if len(node.outputs) > 1:
            results.append(out(node, 1, inputs[0].dtype, inputs[0].shape))
        return results

    def reference(self, node, scores, labels, weights=None):
        # LogSoftmax in float64, so the loss is rounded once; log_prob is rounded to the scores' type.
        log_prob = LogSoftmax().normalize(scores.astype(np.float64), axis=1)
        loss = negative_log_likelihood(node, log_prob, labels, weights).astype(scores.dtype)
        if len(node.outputs) < 2 or not node.outputs[1]:
            return loss
        return loss, log_prob.astype(scores.dtype)


# ============================================================================ CumProd
@register
class CumProd(CumSum):
    """CumProd-26: running product of x along the axis given as a scalar input.

    ``exclusive=1`` leaves each element out of its own product (the first one is 1);
    ``reverse=1`` multiplies from the end of the axis backwards. Shape inference is
    CumSum's.
    """

    op_type = "CumProd"
    since = 26

    def reference(self, node, x, axis):
        axis = normalize_axis(node, int(np.asarray(axis).reshape(-1)[0]), x.ndim)
        if node.attrs["reverse"]:
            x = np.flip(x, axis)
        if node.attrs["exclusive"]:
            x = _shift_in_ones(x, axis)
        product = np.cumprod(x, axis=axis, dtype=x.dtype)
        if node.attrs["reverse"]:
            product = np.flip(product, axis)
        return np.ascontiguousarray(product)


def _shift_in_ones(array: np.ndarray, axis: int) -> np.ndarray:
    """Move every element one place along ``axis`` (the last drops out) and put 1 first.

    Shifting the *factors* (rather than the products, as CumSum does with its sums) keeps
    the exclusive product exact where the element dropped is 0 or inf.
    """
    shifted = np.ones_like(array)
    target = [slice(None)] * array.ndim
    source = [slice(None)] * array.ndim
    target[axis], source[axis] = slice(1, None), slice(None, -1)
    shifted[tuple(target)] = array[tuple(source)]
    return shifted


# ============================================================================ ReverseSequence
@register
class ReverseSequence(Op):
    """ReverseSequence-10/28: for each batch entry b, reverse its first ``sequence_lens[b]``
    steps along ``time_axis``; the steps after them are copied as they are.

    ``batch_axis`` and ``time_axis`` are 0 and 1 in either order; the input has rank >= 2.
    """

    op_type = "ReverseSequence"
    since = 10
    attributes = {"batch_axis": 1, "time_axis": 0}

    def check(self, node):
        axes = (node.attrs["batch_axis"], node.attrs["time_axis"])
        if sorted(axes) != [0, 1]:
            raise bad_attribute(node, f"batch_axis and time_axis must be 0 and 1 (either order), got "
                                      f"batch_axis={axes[0]}, time_axis={axes[1]}")

    def infer(self, node, inputs):
        require_inputs(node, inputs, 2)
        x, lengths = inputs
        if x.shape is not None and len(x.shape) < 2:
            raise fail(node, f"input must have rank >= 2, got {shape_str(x.shape)}")
        if lengths.shape is not None:
            batch = x.shape[node.attrs["batch_axis"]] if x.shape is not None else None
            if len(lengths.shape) != 1 or (_known(batch) and _known(lengths.shape[0]) and lengths.shape[0] != batch):
                raise fail(node, f"sequence_lens must have shape [batch_size] = [{batch}], "
                                 f"got {shape_str(lengths.shape)}")
        return [out(node, 0, x.dtype, x.shape)]

    def reference(self, node, x, sequence_lens):
        batch_axis, time_axis = node.attrs["batch_axis"], node.attrs["time_axis"]
        steps = x.shape[time_axis]
        lengths = sequence_lens.astype(np.int64)
        if ((lengths < 0) | (lengths > steps)).any():
            raise ValueError(f"sequence_lens {lengths.tolist()} must lie in [0, {steps}], the length of the time axis")
        # source[t, b]: the time step that lands on step t of batch entry b.
        time = np.arange(steps)[:, None]
        source = np.where(time < lengths[None, :], lengths[None, :] - 1 - time, time)
        if batch_axis < time_axis:
            source = source.T
        source = source.reshape(source.shape + (1,) * (x.ndim - 2))
        return np.take_along_axis(x, np.broadcast_to(source, x.shape), axis=time_axis)


# ============================================================================ CenterCropPad
@register
class CenterCropPad(Op):
    """CenterCropPad-18: crop or zero-pad each of ``axes`` (default: all) to the size in ``shape``.

    A crop keeps a centred window whose start is rounded down (the extra element, if the
    difference is odd, is dropped on the right); a pad adds zeros on both sides, the extra
    one on the right. Strings are padded with "".
    """

    op_type = "CenterCropPad"
    since = 18
    attributes = {"axes": None}

    def infer(self, node, inputs):
        require_inputs(node, inputs, 2)
        x, shape = inputs
        if x.shape is None:
            return [out(node, 0, x.dtype, None)]
        axes = self._axes(node, len(x.shape))
        count = shape.shape[0] if shape.shape is not None and len(shape.shape) == 1 else None
        if shape.shape is not None and (len(shape.shape) != 1 or (_known(count) and count != len(axes))):
            raise fail(node, f"shape must be a 1-D tensor with one size per axis ({len(axes)}), "
                             f"got shape {shape_str(shape.shape)}")
        sizes = const_ints(shape)
        result = list(x.shape)
        for i, axis in enumerate(axes):
            result[axis] = sizes[i] if sizes is not None else None
        return [out(node, 0, x.dtype, tuple(result))]

    def reference(self, node, x, shape):
        axes = self._axes(node, x.ndim)
        sizes = [int(s) for s in shape.reshape(-1)]
        if len(sizes) != len(axes) or any(s < 0 for s in sizes):
            raise ValueError(f"shape {sizes} must hold one size >= 0 for each of the axes {axes}")
        target_shape = list(x.shape)
        crop = [slice(None)] * x.ndim
        place = [slice(None)] * x.ndim
        for axis, size in zip(axes, sizes):
            have = x.shape[axis]
            begin = abs(have - size) // 2
            if size < have:
                crop[axis] = slice(begin, begin + size)
            else:
                place[axis] = slice(begin, begin + have)
            target_shape[axis] = size
        result = np.full(target_shape, "" if x.dtype == object else 0, dtype=x.dtype)
        result[tuple(place)] = x[tuple(crop)]
        return result

    def _axes(self, node, rank: int) -> list[int]:
        given = node.attrs["axes"]
        if given is None:
            return list(range(rank))
        axes = [normalize_axis(node, int(a), rank, "axes entry") for a in given]
        if len(set(axes)) != len(axes):
            raise fail(node, f"axes {list(given)} name the same axis twice")
        return axes


# ============================================================================ Det
@register
class Det(Op):
    """Det-11/22: the determinant of each matrix of a ``[*, M, M]`` input, shape ``[*]``.

    float16 and bfloat16 are computed in float32 (LAPACK has no half precision) and rounded back.
    """

    op_type = "Det"
    since = 11

    def infer(self, node, inputs):
        require_inputs(node, inputs, 1)
        x = inputs[0]
        if x.shape is None:
            return [out(node, 0, x.dtype, None)]
        if len(x.shape) < 2:
            raise fail(node, f"input must be [*, M, M] (rank >= 2), got {shape_str(x.shape)}")
        rows, columns = x.shape[-2:]
        if _known(rows) and _known(columns) and rows != columns:
            raise fail(node, f"the last two dimensions must form square matrices, got {shape_str(x.shape)}")
        return [out(node, 0, x.dtype, tuple(x.shape[:-2]))]

    def reference(self, node, x):
        work = x if x.dtype in (np.float32, np.float64) else x.astype(np.float32)
        return np.asarray(np.linalg.det(work)).astype(x.dtype)
