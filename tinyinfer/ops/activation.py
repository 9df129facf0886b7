"""Activation functions, and the normalising activations Softmax, LogSoftmax and Hardmax.

Most activations are elementwise and keep their input's shape and dtype; each is one line of
NumPy registered through :func:`~tinyinfer.ops.base.elementwise`. The formulas follow the ONNX
operator spec (Operators.md); where the naive formula overflows (Sigmoid, Softplus,
Softmax) the code uses the usual stable rearrangement, which is mathematically the same.

Softmax, LogSoftmax and Hardmax changed meaning at opset 13. Before it, the input is viewed as
a 2-D matrix ``[a_0 * ... * a_{k-1}, a_k * ... * a_{n-1}]`` split at ``axis`` (default 1) and
each row is normalised over the whole trailing block; from opset 13 on the op normalises
over the one axis ``axis`` (default -1).

``erf`` is computed by W. J. Cody's rational Chebyshev approximations, accurate to double
precision and vectorised, so Erf and Gelu need no SciPy and no per-element Python calls.
"""

from __future__ import annotations

import abc

import numpy as np

from .base import (
    Op,
    bad_attribute,
    dim_product,
    elementwise,
    fail,
    normalize_axis,
    out,
    register,
    require_inputs,
)

# ============================================================================ erf
# W. J. Cody, "Rational Chebyshev approximations for the error function", Mathematics of
# Computation 23 (1969), 631-637; the coefficients as published in Cody's CALERF routine
# (Netlib SPECFUN). Each polynomial is listed highest power first; the denominators are monic.
#
#   |x| <= 0.46875:      erf(x)  = x * P1(x^2) / Q1(x^2)
#   0.46875 < |x| <= 4:  erfc(x) = exp(-x^2) * P2(|x|) / Q2(|x|)
#   |x| > 4:             erfc(x) = exp(-x^2) / |x| * (1/sqrt(pi) - z * P3(z) / Q3(z)),  z = 1/x^2
_ERF_SMALL_P = (1.85777706184603153e-1, 3.16112374387056560e00, 1.13864154151050156e02,
                3.77485237685302021e02, 3.20937758913846947e03)
_ERF_SMALL_Q = (1.0, 2.36012909523441209e01, 2.44024637934444173e02,
                1.28261652607737228e03, 2.84423683343917062e03)
_ERFC_MID_P = (2.15311535474403846e-8, 5.64188496988670089e-1, 8.88314979438837594e00,
               6.61191906371416295e01, 2.98635138197400131e02, 8.81952221241769090e02,
               1.71204761263407058e03, 2.05107837782607147e03, 1.23033935479799725e03)
_ERFC_MID_Q = (1.0, 1.57449261107098347e01, 1.17693950891312499e02, 5.37181101862009858e02,
               1.62138957456669019e03, 3.29079923573345963e03, 4.36261909014324716e03,
               3.43936767414372164e03, 1.23033935480374942e03)
_ERFC_LARGE_P = (1.63153871373020978e-2, 3.05326634961232344e-1, 3.60344899949804439e-1,
                 1.25781726111229246e-1, 1.60837851487422766e-2, 6.58749161529837803e-4)
_ERFC_LARGE_Q = (1.0, 2.56852019228982242e00, 1.87295284992346047e00,
                 5.27905102951428412e-1, 6.05183413124413191e-2, 2.33520497626869185e-3)
_ERF_SMALL_LIMIT = 0.46875  # Cody's break point between the erf and the erfc forms
_ERF_IS_ONE = 6.0  # erfc(6) = 2.2e-17 < half an ulp of 1.0: erf is exactly +-1 beyond


def erf(x: np.ndarray) -> np.ndarray:
    """The error function, elementwise, in float64 (relative error ~1e-16, Cody 1969)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.abs(x)
    result = np.full_like(y, np.nan)  # NaN stays NaN: it falls in none of the ranges

    small = y <= _ERF_SMALL_LIMIT
    z = np.square(y[small])
    result[small] = x[small] * _horner(_ERF_SMALL_P, z) / _horner(_ERF_SMALL_Q, z)

    mid = (y > _ERF_SMALL_LIMIT) & (y <= 4.0)
    t = y[mid]
    erfc_mid = _exp_minus_square(t) * _horner(_ERFC_MID_P, t) / _horner(_ERFC_MID_Q, t)
    result[mid] = np.copysign(1.0 - erfc_mid, x[mid])

    large = (y > 4.0) & (y < _ERF_IS_ONE)
    t = y[large]
    z = 1.0 / np.square(t)
    tail = z * _horner(_ERFC_LARGE_P, z) / _horner(_ERFC_LARGE_Q, z)
    erfc_large = _exp_minus_square(t) / t * (1.0 / np.sqrt(np.pi) - tail)
    result[large] = np.copysign(1.0 - erfc_large, x[large])

    beyond = y >= _ERF_IS_ONE  # includes +-inf
    result[beyond] = np.copysign(1.0, x[beyond])
    return result


def _horner(coefficients, t: np.ndarray) -> np.ndarray:
    """The polynomial with ``coefficients`` (highest power first) at t, updated in place."""
    result = np.full_like(t, coefficients[0])
    for c in coefficients[1:]:
        result *= t
        result += c
    return result


def _exp_minus_square(t: np.ndarray) -> np.ndarray:
    """``exp(-t*t)`` without the rounding error of squaring t first (Cody's trick).

    t = head + tail with head a multiple of 1/16, so head*head is exact in float64 and
    t*t - head*head = (t - head)(t + head) is small and accurate.
    """
    head = np.trunc(t * 16.0) / 16.0
    return np.exp(-head * head) * np.exp(-(t - head) * (t + head))


def _erf_same_dtype(x):
    """Erf: the Gauss error function, 2/sqrt(pi) * integral_0^x exp(-t^2) dt."""
    return erf(x).astype(x.dtype)


# ============================================================================ elementwise activations
def _relu(x):
    """Relu: max(0, x)."""
    return np.maximum(x, np.zeros((), x.dtype))


def _leaky_relu(x, alpha):
    """LeakyRelu: x if x >= 0 else alpha * x."""
    return np.where(x >= 0, x, x * x.dtype.type(alpha))


def _elu(x, alpha):
    """Elu: x if x > 0 else alpha * (exp(x) - 1)."""
    return np.where(x > 0, x, x.dtype.type(alpha) * np.expm1(x))


def _selu(x, alpha, gamma):
    """Selu: gamma * x if x > 0 else gamma * alpha * (exp(x) - 1)."""
    return x.dtype.type(gamma) * np.where(x > 0, x, x.dtype.type(alpha) * np.expm1(x))


def _celu(x, alpha):
    """Celu: max(0, x) + min(0, alpha * (exp(x / alpha) - 1))."""
    a = x.dtype.type(alpha)
    return np.maximum(x, 0) + np.minimum(0, a * np.expm1(x / a))


def _sigmoid(x):
    """Sigmoid: 1 / (1 + exp(-x))."""
    # exp(-|x|) never overflows; for x < 0 use the equal form exp(x) / (1 + exp(x)).
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


def _hard_sigmoid(x, alpha, beta):
    """HardSigmoid: max(0, min(1, alpha * x + beta))."""
    return np.clip(x.dtype.type(alpha) * x + x.dtype.type(beta), 0, 1)


def _hard_swish(x):
    """HardSwish: x * max(0, min(1, x / 6 + 1 / 2))."""
    return x * np.clip(x / x.dtype.type(6) + x.dtype.type(0.5), 0, 1)


def _softplus_stable(x):
    # log(1 + exp(x)) = max(x, 0) + log(1 + exp(-|x|)), which never overflows.
    return np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))


def _softplus(x):
    """Softplus: log(exp(x) + 1)."""
    return _softplus_stable(x)


def _softsign(x):
    """Softsign: x / (1 + |x|)."""
    return x / (1 + np.abs(x))


def _thresholded_relu(x, alpha):
    """ThresholdedRelu: x if x > alpha else 0."""
    return np.where(x > x.dtype.type(alpha), x, 0)


def _mish(x):
    """Mish: x * tanh(softplus(x)) (Misra 2019)."""
    return x * np.tanh(_softplus_stable(x))


def _swish(x, alpha):
    """Swish: x * sigmoid(alpha * x) (Ramachandran et al. 2017)."""
    return x * _sigmoid(x.dtype.type(alpha) * x)


def _shrink(x, bias, lambd):
    """Shrink: x + bias if x < -lambd, x - bias if x > lambd, else 0."""
    # Compare and shift in float64: the spec's attributes are floats even for integer x.
    wide = x.astype(np.float64)
    return np.where(wide < -lambd, wide + bias, np.where(wide > lambd, wide - bias, 0.0))


def _sign(x):
    """Sign: -1, 0 or 1 by the sign of x (NaN stays NaN)."""
    return np.sign(x)


def _float32(value: float) -> float:
    """An attribute default as ONNX stores it: float attributes are float32."""
    return float(np.float32(value))


#: SELU's constants, from Klambauer et al. 2017, "Self-Normalizing Neural Networks", as the
#: spec's float32 defaults.
SELU_ALPHA = 1.67326319217681884765625
SELU_GAMMA = 1.05070102214813232421875

elementwise("Relu", _relu, since=6)
elementwise("LeakyRelu", _leaky_relu, since=6, attributes={"alpha": _float32(0.01)})
elementwise("Elu", _elu, since=6, attributes={"alpha": 1.0})
elementwise("Selu", _selu, since=6, attributes={"alpha": SELU_ALPHA, "gamma": SELU_GAMMA})
elementwise("Celu", _celu, since=12, attributes={"alpha": 1.0})
elementwise("Sigmoid", _sigmoid, since=6)
elementwise("HardSigmoid", _hard_sigmoid, since=6, attributes={"alpha": _float32(0.2), "beta": 0.5})
elementwise("HardSwish", _hard_swish, since=14)
elementwise("Tanh", np.tanh, since=6)
elementwise("Erf", _erf_same_dtype, since=9)
elementwise("Softplus", _softplus, since=1)
elementwise("Softsign", _softsign, since=1)
elementwise("ThresholdedRelu", _thresholded_relu, since=10, attributes={"alpha": 1.0})
elementwise("Mish", _mish, since=18)
elementwise("Swish", _swish, since=24, attributes={"alpha": 1.0})
elementwise("Shrink", _shrink, since=9, attributes={"bias": 0.0, "lambd": 0.5})
elementwise("Sign", _sign, since=9)


# ============================================================================ activations with checks
@register
class Gelu(Op):
    """Gelu-20: x * Phi(x), Phi the standard normal CDF (Hendrycks & Gimpel 2016).

    ``approximate="none"``: 0.5 * x * (1 + erf(x / sqrt(2))).
    ``approximate="tanh"``: 0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x^3))).
    """

    op_type = "Gelu"
    since = 20
    attributes = {"approximate": "none"}

    def check(self, node):
        if node.attrs["approximate"] not in ("none", "tanh"):
            raise bad_attribute(node, f"approximate must be 'none' or 'tanh', got {node.attrs['approximate']!r}")

    def infer(self, node, inputs):
        require_inputs(node, inputs, 1)
        return [out(node, 0, inputs[0].dtype, inputs[0].shape)]

    def reference(self, node, x):
        wide = x.astype(np.float64)
        if node.attrs["approximate"] == "tanh":
            inner = np.sqrt(2 / np.pi) * (wide + 0.044715 * wide**3)
            y = 0.5 * wide * (1 + np.tanh(inner))
        else:
            y = 0.5 * wide * (1 + erf(wide / np.sqrt(2)))
        return y.astype(x.dtype)


@register
class PRelu(Op):
    """PRelu-9/16: x if x >= 0 else slope * x, slope broadcast *unidirectionally* to x.

    Unidirectional broadcasting (Broadcasting.md): slope may be stretched to x's shape, never
    the other way, so the output has exactly x's shape.
    """

    op_type = "PRelu"
    since = 7

    def infer(self, node, inputs):
        require_inputs(node, inputs, 2)
        x, slope = inputs
        if x.shape is not None and slope.shape is not None:
            check_unidirectional(node, slope.shape, x.shape, "slope")
        return [out(node, 0, x.dtype, x.shape)]

    def reference(self, node, x, slope):
        return np.where(x >= 0, x, x * slope).astype(x.dtype, copy=False)


def check_unidirectional(node, source, target, what: str) -> None:
    """Raise unless shape ``source`` broadcasts to ``target`` without changing ``target``."""
    if len(source) > len(target):
        raise fail(node, f"{what} of shape {list(source)} has more dimensions than the input {list(target)}")
    for s, t in zip(reversed(source), reversed(target)):
        if isinstance(s, int) and s != 1 and isinstance(t, int) and s != t:
            raise fail(
                node, f"{what} of shape {list(source)} cannot be broadcast to the input shape {list(target)}"
            )


@register
class Clip(Op):
    """Clip-6/11/12/13: min(max(x, lo), hi); where lo > hi every value becomes hi.

    Before opset 11 the bounds are float attributes ``min`` and ``max`` (default: the
    float32 range); from opset 11 they are optional scalar inputs of x's type, and a missing
    bound does not clip. Integer tensors are clipped in their own type.
    """

    op_type = "Clip"
    since = 6
    #: The old attributes' defaults: the float32 range, as ONNX's Clip-6 states them.
    FLOAT32_MAX = float(np.finfo(np.float32).max)

    def defaults(self, version):
        if version < 11:
            return {"min": -self.FLOAT32_MAX, "max": self.FLOAT32_MAX}
        return {}

    def infer(self, node, inputs):
        require_inputs(node, inputs, 1, 3)
        for bound in inputs[1:]:
            if bound is not None and bound.shape is not None and dim_product(bound.shape) not in (1, None):
                raise fail(node, f"min and max must be scalars, got a bound of shape {list(bound.shape)}")
        return [out(node, 0, inputs[0].dtype, inputs[0].shape)]

    def reference(self, node, x, lo=None, hi=None):
        if lo is None and "min" in node.attrs:
            lo, hi = np.asarray(node.attrs["min"]), np.asarray(node.attrs["max"])
        result = x
        # A float32-range default overflows to inf in float16, which then clips nothing.
        with np.errstate(over="ignore"):
            if lo is not None:
                result = np.maximum(result, lo.astype(x.dtype).reshape(()))
            if hi is not None:
                result = np.minimum(result, hi.astype(x.dtype).reshape(()))
        return result.astype(x.dtype, copy=False)


# ============================================================================ softmax family
class _AxisNormalizer(Op):
    """Softmax, LogSoftmax, Hardmax: normalise along ``axis`` (see the module docstring)."""

    since = 1

    def defaults(self, version):
        return {"axis": -1 if version >= 13 else 1}

    def infer(self, node, inputs):
        require_inputs(node, inputs, 1)
        x = inputs[0]
        if x.shape is not None:
            normalize_axis(node, node.attrs["axis"], len(x.shape))
        return [out(node, 0, x.dtype, x.shape)]

    def reference(self, node, x):
        if x.size == 0:
            return x.copy()
        axis = normalize_axis(node, node.attrs["axis"], x.ndim)
        if node.version >= 13:
            return self.normalize(x, axis).astype(x.dtype, copy=False)
        # Before opset 13: a 2-D view [outer, inner] split at axis, normalised along its rows.
        matrix = x.reshape(int(np.prod(x.shape[:axis])), -1)
        return self.normalize(matrix, 1).reshape(x.shape).astype(x.dtype, copy=False)

    @abc.abstractmethod
    def normalize(self, x: np.ndarray, axis: int) -> np.ndarray:
        """The normalisation along one axis (softmax, log-softmax, hardmax)."""


@register
class Softmax(_AxisNormalizer):
    """Softmax-1/11/13: exp(x) / sum(exp(x)) along the axis (shifted by the max, for range)."""

    op_type = "Softmax"

    def normalize(self, x, axis):
        e = np.exp(x - np.max(x, axis=axis, keepdims=True))
        return e / np.sum(e, axis=axis, keepdims=True)


@register
class LogSoftmax(_AxisNormalizer):
    """LogSoftmax-1/11/13: x - log(sum(exp(x))) along the axis (shifted by the max)."""

    op_type = "LogSoftmax"

    def normalize(self, x, axis):
        shifted = x - np.max(x, axis=axis, keepdims=True)
        return shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))


@register
class Hardmax(_AxisNormalizer):
    """Hardmax-1/11/13: 1 at the first maximum along the axis, 0 elsewhere."""

    op_type = "Hardmax"

    def normalize(self, x, axis):
        first_max = np.argmax(x, axis=axis, keepdims=True)
        y = np.zeros_like(x)
        np.put_along_axis(y, first_max, 1, axis=axis)
        return y
