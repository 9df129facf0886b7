"""Reverse-mode gradients over a tinyinfer graph: one backward rule per op type.

Training needs, for every node ``y = f(x1, x2, ...)``, its vector-Jacobian product: given
``dL/dy``, the gradients ``dL/dxi``. Chained from the loss back to the weights in reverse
topological order, these products are backpropagation (Rumelhart, Hinton & Williams, 1986).
Each op type has a :class:`Rule` with two halves, registered in :data:`RULES`:

* ``forward(node, arrays, mode) -> (outputs, saved)`` computes the outputs and keeps what
  the backward half will need (``saved``). Most rules use the op's NumPy reference and keep
  the inputs and outputs; Conv, BatchNormalization and Dropout have their own forward,
  because training changes what they compute (batch statistics, a random mask) or because
  the forward already builds what the backward reuses (Conv's im2col columns).
* ``backward(node, saved, dy, wanted) -> grads`` returns one gradient per input (``None``
  for inputs with no gradient: shapes, running statistics). ``wanted[i]`` says whether
  anything needs input ``i``'s gradient, so costly products that nobody reads are skipped
  (the image of a first conv layer).

Convolution is a matrix product over im2col columns (Chellapilla, Puri & Simard, 2006). With
``cols`` the receptive fields of the batch, ``C/g * kh * kw`` rows by ``N * OH * OW`` columns,
for every group g::

    Y_g = W_g @ cols_g        dW_g = dY_g @ cols_g^T        dcols_g = W_g^T @ dY_g

and ``dX = col2im(dcols)``, the adjoint of im2col: each column entry is added back to the
input pixel it was copied from. In float32 and 2-D, im2col is the engine's Numba kernel
(:mod:`tinyinfer.kernels.conv`), the products run on its packed GEMM
(:mod:`tinyinfer.kernels.gemm`), and col2im is the Numba kernel :func:`col2im_kernel`
here. Every other case (float64 for gradient checks, 1-D or 3-D convolutions) uses the NumPy
twins :func:`im2col_taps` / :func:`col2im_taps`, which walk the kernel taps as the pooling
reference ops do; the tests check each Numba kernel against its twin.

BatchNormalization in training mode normalises with the batch's own mean and (biased)
variance and backpropagates through them (Ioffe & Szegedy, 2015)::

    dX = inv_std * (dXhat - mean(dXhat) - Xhat * mean(dXhat * Xhat)),   dXhat = dY * scale

and updates the running statistics as ONNX's BatchNormalization-15 defines it:
``running = running * momentum + batch * (1 - momentum)``.

QuantizeLinear and DequantizeLinear train as fake quantization: the straight-through
estimator across the rounding, and with it the learned-step-size gradient of the scale
(Esser et al., 2020, "LSQ"); the comment above their rules derives it.

The losses sit at the end of the graph, outside it: :func:`softmax_cross_entropy` and
:func:`kl_divergence` (soft targets at temperature T, Hinton, Vinyals & Dean, 2015) each
return the loss and its gradient with respect to the logits.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numba
import numpy as np

from ..errors import TinyInferError, UnsupportedOpError, node_label
from ..ir import Node
from ..kernels import gemm as packed_gemm
from ..kernels.conv import _im2col_kernel, valid_range
from ..ops import OPS
from ..ops.conv import Window, pad_for_windows, tap_slices, window_geometry
from ..ops.pool import _window_counts
from ..ops.quantize import INTEGER_RANGES, expand_param

Grad = np.ndarray | None


@dataclasses.dataclass
class Mode:
    """What a forward pass needs besides its inputs.

    ``training`` switches BatchNormalization to batch statistics and Dropout to a random
    mask drawn from ``rng``. Forward rules write the new values of state tensors (the
    running mean and variance, by initializer name) into ``updates``.
    """

    training: bool = False
    rng: np.random.Generator = dataclasses.field(default_factory=lambda: np.random.default_rng(0))
    updates: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Rule:
    """How one op type trains: its forward, its vector-Jacobian product, its weights."""

    forward: Callable[[Node, list, Mode], tuple[list, Any]]
    backward: Callable[[Node, Any, np.ndarray, list], list]
    #: Input positions that hold learnable weights when they are float initializers.
    parameters: tuple[int, ...] = ()


#: The registry: ONNX op type (domain ai.onnx) -> its rule.
RULES: dict[str, Rule] = {}


def reference_forward(node: Node, arrays: list, mode: Mode) -> tuple[list, Any]:
    """The op's NumPy reference; keeps the inputs and outputs for the backward half."""
    result = OPS[("", node.op_type)].reference(node, *arrays)
    outputs = [result] if isinstance(result, np.ndarray) else list(result)
    return outputs, (arrays, outputs)


def rule(op_type: str, *, forward=reference_forward, parameters: tuple[int, ...] = ()):
    """Decorator registering ``backward`` (and its forward) as the rule of ``op_type``."""

    def decorate(backward):
        RULES[op_type] = Rule(forward, backward, parameters)
        return backward

    return decorate


def rule_for(node: Node) -> Rule:
    """The node's rule; an :class:`UnsupportedOpError` naming the op if it has none."""
    if node.domain not in ("", "ai.onnx") or node.op_type not in RULES:
        raise UnsupportedOpError(
            f"{node_label(node)} has no backward rule, so the graph cannot be trained; "
            f"ops with one: {', '.join(sorted(RULES))}"
        )
    return RULES[node.op_type]


def vjp(node: Node, arrays: list, dy: np.ndarray, mode: Mode | None = None) -> list[Grad]:
    """Run one node forward then backward: the gradients of ``sum(dy * output)`` per input."""
    node_rule = rule_for(node)
    _, saved = node_rule.forward(node, list(arrays), mode or Mode())
    return node_rule.backward(node, saved, dy, [a is not None for a in arrays])


# ============================================================================ losses
def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def softmax_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean of ``-log softmax(logits)[label]`` over the batch, and its gradient ``(p - onehot) / N``."""
    n = logits.shape[0]
    log_p = log_softmax(logits)
    rows = np.arange(n)
    loss = -float(log_p[rows, labels].mean())
    grad = np.exp(log_p)
    grad[rows, labels] -= 1
    return loss, grad / n


def kl_divergence(logits: np.ndarray, teacher_logits: np.ndarray, temperature: float = 1.0) -> tuple[float, np.ndarray]:
    """``T^2 * mean KL(softmax(teacher / T) || softmax(logits / T))`` and its gradient.

    Hinton et al. multiply by ``T^2`` so that the soft targets' gradient, which shrinks as
    ``1 / T^2``, keeps its size next to a hard-label loss when T changes. The gradient with
    respect to the student's logits is ``T * (p_student - p_teacher) / N``.
    """
    t = float(temperature)
    if t <= 0:
        raise TinyInferError(f"the distillation temperature must be positive, got {temperature}")
    log_p = log_softmax(logits / t)
    log_q = log_softmax(teacher_logits / t)
    q = np.exp(log_q)
    n = logits.shape[0]
    loss = t * t * float((q * (log_q - log_p)).sum()) / n
    return loss, t * (np.exp(log_p) - q) / n


# ============================================================================ elementwise
def unbroadcast(grad: np.ndarray, shape: tuple) -> np.ndarray:
    """Sum a gradient over the axes NumPy broadcasting stretched, back to ``shape``."""
    extra = grad.ndim - len(shape)
    if extra:
        grad = grad.sum(axis=tuple(range(extra)))
    stretched = tuple(i for i, size in enumerate(shape) if size == 1 and grad.shape[i] != 1)
    if stretched:
        grad = grad.sum(axis=stretched, keepdims=True)
    return grad.reshape(shape)


@rule("Add")
def add_backward(node, saved, dy, wanted):
    (a, b), _ = saved
    return [unbroadcast(dy, a.shape), unbroadcast(dy, b.shape)]


@rule("Sub")
def sub_backward(node, saved, dy, wanted):
    (a, b), _ = saved
    return [unbroadcast(dy, a.shape), unbroadcast(-dy, b.shape)]


@rule("Mul")
def mul_backward(node, saved, dy, wanted):
    (a, b), _ = saved
    return [unbroadcast(dy * b, a.shape) if wanted[0] else None, unbroadcast(dy * a, b.shape) if wanted[1] else None]


@rule("Relu")
def relu_backward(node, saved, dy, wanted):
    _, (y,) = saved
    return [dy * (y > 0)]


@rule("Sign")
def sign_backward(node, saved, dy, wanted):
    """Sign's derivative is 0 almost everywhere, which would stop training; binarized networks
    use the straight-through estimator of Hubara et al. (2016, "Binarized Neural Networks"),
    the derivative of hard tanh: the gradient passes where ``|x| <= 1`` and stops outside."""
    (x,), _ = saved
    return [dy * (np.abs(x) <= 1)]


@rule("Sigmoid")
def sigmoid_backward(node, saved, dy, wanted):
    _, (y,) = saved
    return [dy * y * (1 - y)]


@rule("HardSwish")
def hard_swish_backward(node, saved, dy, wanted):
    """``y = x * relu6(x + 3) / 6``: slope 0 below -3, 1 above 3, ``(2x + 3) / 6`` between."""
    (x,), _ = saved
    slope = np.where(x < -3, 0, np.where(x > 3, 1, (2 * x + 3) / 6))
    return [dy * slope.astype(dy.dtype)]


@rule("Clip")
def clip_backward(node, saved, dy, wanted):
    """The gradient passes where ``lo <= x <= hi`` (where the bound is not active)."""
    (x, *bounds), _ = saved
    lo, hi = (bounds + [None, None])[:2]
    if lo is None and "min" in node.attrs:  # Clip-6 keeps its bounds as attributes
        lo, hi = node.attrs["min"], node.attrs["max"]
    passes = np.ones(x.shape, bool)
    if lo is not None:
        passes &= x >= np.asarray(lo, x.dtype).reshape(())
    if hi is not None:
        passes &= x <= np.asarray(hi, x.dtype).reshape(())
    return [dy * passes, None, None][: len(saved[0])]


# ============================================================================ shapes
@rule("Flatten")
def flatten_backward(node, saved, dy, wanted):
    (x,), _ = saved
    return [dy.reshape(x.shape)]


@rule("Reshape")
def reshape_backward(node, saved, dy, wanted):
    (x, _shape), _ = saved
    return [dy.reshape(x.shape), None]


@rule("Concat")
def concat_backward(node, saved, dy, wanted):
    arrays, _ = saved
    axis = node.attrs["axis"] % dy.ndim
    ends = np.cumsum([a.shape[axis] for a in arrays])[:-1]
    return np.split(dy, ends, axis=axis)


# ============================================================================ dense layers
@rule("Gemm", parameters=(1, 2))
def gemm_backward(node, saved, dy, wanted):
    """``Y = alpha * A' @ B' + beta * C`` (``'`` an optional transpose)."""
    (a, b, *c), _ = saved
    alpha, beta = node.attrs["alpha"], node.attrs["beta"]
    a_t = a.T if node.attrs["transA"] else a
    b_t = b.T if node.attrs["transB"] else b
    grads = [None, None]
    if wanted[0]:
        da = alpha * (dy @ b_t.T)  # dA' = alpha dY B'^T
        grads[0] = da.T if node.attrs["transA"] else da
    if wanted[1]:
        db = alpha * (a_t.T @ dy)  # dB' = alpha A'^T dY
        grads[1] = db.T if node.attrs["transB"] else db
    if c and c[0] is not None:
        grads.append(unbroadcast(beta * dy, c[0].shape))
    return grads


@rule("MatMul", parameters=(1,))
def matmul_backward(node, saved, dy, wanted):
    """NumPy ``matmul``: vectors become a row (A) or a column (B), batch axes broadcast."""
    (a, b), _ = saved
    a2 = a[None, :] if a.ndim == 1 else a
    b2 = b[:, None] if b.ndim == 1 else b
    batch = np.broadcast_shapes(a2.shape[:-2], b2.shape[:-2])
    dy2 = dy.reshape(*batch, a2.shape[-2], b2.shape[-1])
    da = unbroadcast(dy2 @ np.swapaxes(b2, -1, -2), a2.shape).reshape(a.shape) if wanted[0] else None
    db = unbroadcast(np.swapaxes(a2, -1, -2) @ dy2, b2.shape).reshape(b.shape) if wanted[1] else None
    return [da, db]


# ============================================================================ convolution
def conv_forward(node: Node, arrays: list, mode: Mode) -> tuple[list, Any]:
    """Conv as one matrix product per group over the batch's im2col columns (kept for backward)."""
    x, w = arrays[0], arrays[1]
    bias = arrays[2] if len(arrays) > 2 else None
    group = node.attrs["group"]
    window = window_geometry(node, x.shape[2:], w.shape[2:])
    columns = im2col(x, window)  # (C * taps, N, pixels)
    weights = w.reshape(group, w.shape[0] // group, -1)
    rows = columns.reshape(group, weights.shape[2], -1)
    y = np.concatenate([matrix_product(weights[g], rows[g]) for g in range(group)])
    y = np.ascontiguousarray(np.swapaxes(y.reshape(w.shape[0], x.shape[0], *window.output), 0, 1))
    if bias is not None:
        y += bias.reshape(-1, *(1,) * len(window.output))
    return [y], (x.shape, w, columns, window, bias is not None)


@rule("Conv", forward=conv_forward, parameters=(1, 2))
def conv_backward(node, saved, dy, wanted):
    x_shape, w, columns, window, has_bias = saved
    group = node.attrs["group"]
    out_per_group = w.shape[0] // group
    # dY as (group, M/g, N * pixels): the same column order as im2col's.
    dy_rows = np.ascontiguousarray(np.swapaxes(dy, 0, 1)).reshape(group, out_per_group, -1)
    grads = [None, None, dy.sum(axis=(0, *range(2, dy.ndim))) if has_bias else None]
    if wanted[1]:
        rows = columns.reshape(group, -1, dy_rows.shape[2])
        dw = [matrix_product(dy_rows[g], rows[g], trans_b=True) for g in range(group)]
        grads[1] = np.stack(dw).reshape(w.shape)
    if wanted[0]:
        weights = w.reshape(group, out_per_group, -1)
        dcolumns = np.concatenate([matrix_product(weights[g], dy_rows[g], trans_a=True) for g in range(group)])
        grads[0] = col2im(dcolumns.reshape(columns.shape), window, x_shape)
    return grads if has_bias else grads[:2]


def matrix_product(a: np.ndarray, b: np.ndarray, *, trans_a: bool = False, trans_b: bool = False) -> np.ndarray:
    """``A' @ B'``: the packed Numba GEMM in float32, NumPy's matmul in other dtypes."""
    if a.dtype == np.float32 and b.dtype == np.float32:
        return packed_gemm.gemm(a, b, trans_a=trans_a, trans_b=trans_b)
    return (a.T if trans_a else a) @ (b.T if trans_b else b)


def im2col(x: np.ndarray, window: Window) -> np.ndarray:
    """Columns ``(C * taps, N, pixels)``: row ``(c, tap)``, the input under that tap per output pixel."""
    if x.dtype != np.float32 or x.ndim != 4:
        return im2col_taps(x, window)
    n, channels, height, width = x.shape
    kernel_h, kernel_w = window.kernel
    out_h, out_w = window.output
    rows = channels * kernel_h * kernel_w
    # The whole batch as one image of N * C channels: one call of the engine's inference
    # kernel fills every image's columns, as (N, C * taps, pixels); then images move inward.
    columns = np.empty((n * rows, out_h * out_w), np.float32)
    _im2col_kernel(np.ascontiguousarray(x).reshape(1, n * channels, height, width), 0, kernel_h, kernel_w,
                   *window.strides, *window.dilations, window.pads_begin[0], window.pads_begin[1], out_h, out_w,
                   columns)
    return np.ascontiguousarray(np.swapaxes(columns.reshape(n, rows, -1), 0, 1))


def col2im(columns: np.ndarray, window: Window, x_shape: tuple) -> np.ndarray:
    """The adjoint of :func:`im2col`: every column entry added back to the pixel it came from."""
    if columns.dtype != np.float32 or len(x_shape) != 4:
        return col2im_taps(columns, window, x_shape)
    dx = np.zeros(x_shape, np.float32)
    col2im_kernel(np.ascontiguousarray(columns), *window.kernel, *window.strides, *window.dilations,
                  window.pads_begin[0], window.pads_begin[1], *window.output, dx)
    return dx


def im2col_taps(x: np.ndarray, window: Window, pad_value=0) -> np.ndarray:
    """NumPy twin of :func:`im2col`, any spatial rank: one strided view of the padded input per tap."""
    padded = pad_for_windows(x, window, pad_value)
    taps = [padded[tap_slices(window, tap)] for tap in np.ndindex(*window.kernel)]  # each (N, C, *out)
    stacked = np.stack(taps, axis=2)  # (N, C, taps, *out)
    n, channels = x.shape[:2]
    return np.moveaxis(stacked, 0, 2).reshape(channels * len(taps), n, -1)


def col2im_taps(columns: np.ndarray, window: Window, x_shape: tuple) -> np.ndarray:
    """NumPy twin of :func:`col2im`, any spatial rank."""
    n, channels = x_shape[:2]
    per_tap = columns.reshape(channels, -1, n, *window.output)
    return fold_taps((np.swapaxes(per_tap[:, t], 0, 1) for t in range(per_tap.shape[1])), window, x_shape)


def fold_taps(per_tap, window: Window, x_shape: tuple) -> np.ndarray:
    """Add one ``(N, C, *out)`` array per tap back onto the input positions under that tap."""
    padded = None
    for tap, part in zip(np.ndindex(*window.kernel), per_tap):
        if padded is None:
            padded = pad_for_windows(np.zeros(x_shape, part.dtype), window)
        padded[tap_slices(window, tap)] += part
    inside = tuple(slice(b, b + size) for b, size in zip(window.pads_begin, x_shape[2:]))
    return np.ascontiguousarray(padded[(slice(None), slice(None), *inside)])


@numba.njit(cache=True, parallel=True)
def col2im_kernel(columns, kernel_h, kernel_w, stride_h, stride_w, dilation_h, dilation_w,
                  pad_top, pad_left, out_h, out_w, dx):
    """``dx[n, c, ih, iw] += columns[(c, kh, kw), n, (oh, ow)]`` over every tap that read it.

    The adjoint of ``kernels.conv._im2col_kernel`` (twin: :func:`col2im_taps`); float32
    NCHW ``dx`` (zeroed by the caller), columns ``(C * kh * kw, N, OH * OW)``. Channels run in
    parallel: every row of the columns belongs to one channel, so no two threads write the
    same pixel.
    """
    batch, channels, height, width = dx.shape
    for c in numba.prange(channels):
        for kh in range(kernel_h):
            for kw in range(kernel_w):
                row = (c * kernel_h + kh) * kernel_w + kw
                offset = kw * dilation_w - pad_left
                low, high = valid_range(out_w, offset, stride_w, width)
                for image in range(batch):
                    for oh in range(out_h):
                        ih = oh * stride_h - pad_top + kh * dilation_h
                        if ih < 0 or ih >= height:
                            continue
                        for ow in range(low, high):
                            dx[image, c, ih, ow * stride_w + offset] += columns[row, image, oh * out_w + ow]


# ============================================================================ pooling
def _pool_window(node: Node, x_shape: tuple) -> Window:
    return window_geometry(node, x_shape[2:], node.attrs["kernel_shape"], ceil_mode=bool(node.attrs["ceil_mode"]))


def max_pool_forward(node: Node, arrays: list, mode: Mode) -> tuple[list, Any]:
    """MaxPool, remembering which tap won each window (the first of equal maxima, as ONNX's Indices)."""
    (x,) = arrays
    window = _pool_window(node, x.shape)
    padded = pad_for_windows(x, window, -np.inf)
    best = winner = None
    for t, tap in enumerate(np.ndindex(*window.kernel)):
        patch = padded[tap_slices(window, tap)]
        if best is None:
            best, winner = patch.copy(), np.zeros(patch.shape, np.int32)
            continue
        better = patch > best  # strict: a tie stays with the earlier tap
        np.copyto(best, patch, where=better)
        winner[better] = t
    outputs = [best]
    if len(node.outputs) > 1 and node.outputs[1]:
        outputs = list(OPS[("", "MaxPool")].reference(node, x))
    return outputs, (x.shape, window, winner)


@rule("MaxPool", forward=max_pool_forward)
def max_pool_backward(node, saved, dy, wanted):
    """Each window's gradient goes to the one input that won it."""
    x_shape, window, winner = saved
    count = int(np.prod(window.kernel))
    return [fold_taps((np.where(winner == t, dy, 0) for t in range(count)), window, x_shape)]


@rule("AveragePool")
def average_pool_backward(node, saved, dy, wanted):
    """Each window's gradient is shared equally among the taps its average divided by."""
    (x,), _ = saved
    window = _pool_window(node, x.shape)
    counts = _window_counts(window, x.shape[2:], include_pads=bool(node.attrs["count_include_pad"]))
    share = dy / counts.astype(dy.dtype)
    return [fold_taps((share for _ in np.ndindex(*window.kernel)), window, x.shape)]


@rule("GlobalAveragePool")
def global_average_pool_backward(node, saved, dy, wanted):
    (x,), _ = saved
    pixels = int(np.prod(x.shape[2:]))
    return [np.broadcast_to(dy / dy.dtype.type(pixels), x.shape).copy()]


# ============================================================================ normalisation, dropout
def batch_norm_forward(node: Node, arrays: list, mode: Mode) -> tuple[list, Any]:
    """Batch statistics when training (running statistics updated in ``mode``), running ones otherwise."""
    x, scale, bias, mean, var = arrays
    axes = (0, *range(2, x.ndim))
    epsilon = node.attrs["epsilon"]
    if mode.training:
        batch_mean, batch_var = x.mean(axis=axes), x.var(axis=axes)
        momentum = node.attrs["momentum"]
        mode.updates[node.inputs[3]] = (mean * momentum + batch_mean * (1 - momentum)).astype(mean.dtype)
        mode.updates[node.inputs[4]] = (var * momentum + batch_var * (1 - momentum)).astype(var.dtype)
        mean, var = batch_mean, batch_var
    shape = (-1, *(1,) * (x.ndim - 2))
    inv_std = (1 / np.sqrt(var + epsilon)).astype(x.dtype)
    x_hat = (x - mean.reshape(shape).astype(x.dtype)) * inv_std.reshape(shape)
    y = x_hat * scale.reshape(shape) + bias.reshape(shape)
    outputs = [y.astype(x.dtype, copy=False)]
    if len(node.outputs) > 1:  # a training-mode node also outputs the running statistics
        outputs += [mode.updates.get(node.inputs[3], arrays[3]), mode.updates.get(node.inputs[4], arrays[4])]
    return outputs[: len(node.outputs)], (x_hat, inv_std, scale, mode.training)


@rule("BatchNormalization", forward=batch_norm_forward, parameters=(1, 2))
def batch_norm_backward(node, saved, dy, wanted):
    x_hat, inv_std, scale, training = saved
    axes = (0, *range(2, dy.ndim))
    shape = (-1, *(1,) * (dy.ndim - 2))
    d_scale = (dy * x_hat).sum(axis=axes)
    d_bias = dy.sum(axis=axes)
    d_x_hat = dy * scale.reshape(shape)
    if training:  # the batch mean and variance depend on x too
        count = dy.size // dy.shape[1]
        d_x_hat = (d_x_hat - d_bias.reshape(shape) * scale.reshape(shape) / count
                   - x_hat * (d_scale * scale).reshape(shape) / count)
    return [d_x_hat * inv_std.reshape(shape), d_scale, d_bias, None, None]


def dropout_forward(node: Node, arrays: list, mode: Mode) -> tuple[list, Any]:
    """Inverted dropout: when training, keep each value with probability ``1 - ratio``, scaled
    by ``1 / (1 - ratio)``, so that inference needs no rescaling."""
    x = arrays[0]
    ratio = node.attrs.get("ratio", 0.5)  # an attribute up to Dropout-10
    if len(arrays) > 1 and arrays[1] is not None:  # an input from Dropout-12 on
        ratio = float(np.asarray(arrays[1]).reshape(-1)[0])
    if not 0 <= ratio < 1:
        raise TinyInferError(f"{node_label(node)}: the dropout ratio must lie in [0, 1), got {ratio}")
    keep = np.ones(x.shape, bool)
    if mode.training and ratio > 0:
        keep = mode.rng.random(x.shape) >= ratio
    factor = x.dtype.type(1 / (1 - ratio)) if mode.training else x.dtype.type(1)
    outputs = [x * keep * factor, keep][: len(node.outputs)]
    return outputs, (keep, factor, len(arrays))


@rule("Dropout", forward=dropout_forward)
def dropout_backward(node, saved, dy, wanted):
    keep, factor, inputs = saved
    return [dy * keep * factor] + [None] * (inputs - 1)


# ============================================================================ fake quantization
# A QuantizeLinear -> DequantizeLinear pair computes s * (saturate(round(x / s) + z) - z): the
# value x snapped to the grid of step s. Rounding has zero derivative almost everywhere, so
# training replaces it, in the backward pass only, by the identity (the straight-through
# estimator, Bengio, Leonard & Courville, 2013): Q behaves as ``x / s + z`` where it does not
# saturate and as a constant where it does. Chained with DequantizeLinear's exact gradient,
# the pair then passes ``dy`` to x inside the representable range and 0 outside it, and gives
# the step size the gradient of learned step size quantization (LSQ, Esser et al., 2020):
#
#     dy/ds = round(x / s) - x / s      inside the range  (Q's -x/s plus DQ's q - z)
#     dy/ds = q - z                     where q saturated (DQ's part alone)
#
# "Inside" means that saturation left the rounded value unchanged, so a value saturates from
# (qmax + 1/2) * s on, not from qmax * s as in the paper: the two differ on half a step at each
# end, and only there. LSQ's gradient scale g = 1 / sqrt(N * Qp) is not part of the rules: it
# preconditions the optimizer's step (tinyinfer.compress.qat applies it).
def _per_element(node: Node, param: np.ndarray, shape: tuple) -> np.ndarray:
    """A scale or zero point shaped to broadcast against the tensor (per tensor or per axis)."""
    if node.attrs.get("block_size", 0):
        raise TinyInferError(f"{node_label(node)}: blocked quantization has no backward rule; "
                             "expected a per-tensor or per-axis scale")
    return expand_param(node, param, shape, node.attrs["axis"], 0, "scale")


def _sum_to(grad: np.ndarray, param: np.ndarray, expanded: np.ndarray) -> np.ndarray:
    """A gradient of the tensor's shape summed back to the scale it broadcast from."""
    return unbroadcast(grad, expanded.shape).reshape(param.shape)


def quantize_linear_forward(node: Node, arrays: list, mode: Mode) -> tuple[list, Any]:
    x, scale, zero_point = (list(arrays) + [None])[:3]
    (q,) = reference_forward(node, arrays, mode)[0]
    return [q], (x, scale, zero_point, q)


@rule("QuantizeLinear", forward=quantize_linear_forward, parameters=(0, 1))
def quantize_linear_backward(node, saved, dy, wanted):
    """The straight-through estimator: ``q`` taken as ``x / s + z`` where it did not saturate."""
    x, scale, zero_point, q = saved
    s = _per_element(node, scale, x.shape).astype(x.dtype)
    steps = x / s
    rounded = np.rint(steps) + (0 if zero_point is None else _per_element(node, zero_point, x.shape).astype(x.dtype))
    if q.dtype not in INTEGER_RANGES:
        raise TinyInferError(f"{node_label(node)}: quantizing to {q.dtype} has no backward rule; "
                             "expected an integer type")
    low, high = INTEGER_RANGES[q.dtype]
    inside = (rounded >= low) & (rounded <= high)
    dx = dy * inside / s
    grads = [dx.astype(x.dtype, copy=False) if wanted[0] else None, None, None]
    if wanted[1]:
        grads[1] = _sum_to(-dx * steps, scale, s).astype(scale.dtype, copy=False)  # d(x/s)/ds = -(x/s)/s
    return grads[: len(node.inputs)]


def dequantize_linear_forward(node: Node, arrays: list, mode: Mode) -> tuple[list, Any]:
    """``(q - z) * s`` in the scale's own type (the reference rounds to float32 first)."""
    q, scale, zero_point = (list(arrays) + [None])[:3]
    centred = q.astype(np.int64)
    if zero_point is not None:
        centred = centred - _per_element(node, zero_point, q.shape).astype(np.int64)
    y = centred.astype(scale.dtype) * _per_element(node, scale, q.shape)
    return [y], (centred, scale)


@rule("DequantizeLinear", forward=dequantize_linear_forward, parameters=(1,))
def dequantize_linear_backward(node, saved, dy, wanted):
    """Exact: linear in the integers and in the scale."""
    centred, scale = saved
    s = _per_element(node, scale, centred.shape)
    grads = [dy * s if wanted[0] else None, None, None]
    if wanted[1]:
        grads[1] = _sum_to(dy * centred, scale, s).astype(scale.dtype, copy=False)
    return grads[: len(node.inputs)]
