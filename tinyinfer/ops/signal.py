"""Signal processing: DFT, STFT, the Hann, Hamming and Blackman windows, MelWeightMatrix.

These are the ops of an audio front end (a log-mel spectrogram is Window → STFT → |X|² →
MatMul with a MelWeightMatrix → Log), following the ONNX spec: DFT-17/20, STFT-17,
HannWindow-17, HammingWindow-17, BlackmanWindow-17, MelWeightMatrix-17.

**Complex numbers as a trailing axis.** ONNX has no complex type for these ops: a signal is
a real tensor whose last dimension is 1 (a real signal) or 2 (real and imaginary parts). A
spectrum is always ``[..., 2]``, except the inverse of a one-sided spectrum, which is real
(``[..., 1]``).

**The transform.** Along the chosen axis, with ``N = dft_length``,

    forward:  X[k] = sum_{n<N} x[n] exp(-2 pi i k n / N)
    inverse:  x[n] = 1/N sum_{k<N} X[k] exp(+2 pi i k n / N)

(the 1/N sits on the inverse, as in NumPy and SciPy). The signal is cut to N samples or
zero-padded up to N first. ``onesided=1`` uses the conjugate symmetry of the spectrum of a
real signal, ``X[N - k] = conj(X[k])``: the forward transform takes a real signal and keeps
bins ``0 .. N//2`` (an RFFT); the inverse takes those bins and returns the real signal (an
IRFFT, whose default N is ``2 * (bins - 1)``). ``np.fft`` computes each in O(N log N), in
the input's own precision as ONNX Runtime does: complex128 for float64, complex64 for float32
and the half types (whose results are then rounded to the input type).

**Windows** are the generalised cosine windows of F. J. Harris, "On the use of windows for
harmonic analysis with the discrete Fourier transform" (Proc. IEEE 66, 1978):

    w[n] = a0 - a1 cos(2 pi n / P) + a2 cos(4 pi n / P),    n = 0 .. size - 1

with P = size for a periodic window (``periodic=1``, the default, for spectral analysis)
and P = size - 1 for a symmetric one (filter design). Hann is (1/2, 1/2, 0), Hamming
(25/46, 21/46, 0), Blackman (0.42, 0.5, 0.08), the constants ONNX's function bodies use.
"""

from __future__ import annotations

import math

import numpy as np

from ..ir import Node, dtypes
from ..ir.graph import Dim
from .base import Op, bad_attribute, const_ints, dim_product, fail, out, register, require_inputs
from .tensor import shape_str

#: ONNX type codes the window ops and MelWeightMatrix may produce (their T2 / T3):
#: float, uint8, int8, uint16, int16, int32, int64, float16, double, uint32, uint64, bfloat16.
_OUTPUT_TYPE_CODES = (1, 2, 3, 4, 5, 6, 7, 10, 11, 12, 13, 16)


# ============================================================================ DFT
@register
class DFT(Op):
    """DFT-17/20: the discrete Fourier transform along one signal axis.

    Input ``[..., 1]`` (real) or ``[..., 2]`` (complex); output ``[..., 2]`` with the axis
    resized to ``dft_length`` (``dft_length // 2 + 1`` for a one-sided forward transform),
    or ``[..., 1]`` for the inverse of a one-sided spectrum. The axis is the attribute
    ``axis`` (default 1) up to opset 19 and the optional scalar input ``axis`` (default -2,
    the last signal axis) from opset 20. Either way it may not be the last (real/imaginary)
    axis: it lies in ``[-r, -2]`` or ``[0, r - 2]`` for an input of rank r.

    An inverse one-sided transform reads bins ``0 .. N//2`` of its input: extra bins are
    ignored and missing ones taken as 0 (as NumPy's ``irfft`` and ONNX's reference do; ONNX
    Runtime gives other values when the bin count is not ``N//2 + 1``).
    """

    op_type = "DFT"
    since = 17

    def defaults(self, version):
        if version < 20:
            return {"inverse": 0, "axis": 1, "onesided": 0}
        return {"inverse": 0, "onesided": 0}

    def check(self, node):
        for name in ("inverse", "onesided"):
            if node.attrs[name] not in (0, 1):
                raise bad_attribute(node, f"{name} must be 0 or 1, got {node.attrs[name]}")

    def infer(self, node, inputs):
        require_inputs(node, inputs, 1, 3)
        x = inputs[0]
        length_input = inputs[1] if len(inputs) > 1 else None
        axis_input = inputs[2] if len(inputs) > 2 else None
        for name, value in (("dft_length", length_input), ("axis", axis_input)):
            if value is not None and value.shape is not None and dim_product(value.shape) not in (1, None):
                raise fail(node, f"{name} must be a scalar, got shape {shape_str(value.shape)}")
        if x.shape is None:
            return [out(node, 0, x.dtype, None)]
        _check_signal(node, x.shape)
        inverse_onesided = node.attrs["inverse"] and node.attrs["onesided"]
        shape = list(x.shape)
        shape[-1] = 1 if inverse_onesided else 2
        given_length = const_ints(length_input)
        if axis_input is not None and axis_input.const is None:
            # The axis is known only at run time: only a transform that keeps every length
            # (no dft_length, not one-sided) leaves the signal dims known.
            if length_input is not None or node.attrs["onesided"]:
                shape[:-1] = [None] * (len(shape) - 1)
            return [out(node, 0, x.dtype, tuple(shape))]
        axis = self._axis(node, const_ints(axis_input), len(x.shape))
        if length_input is not None and given_length is None:
            shape[axis] = None
        else:
            shape[axis] = _transformed_length(node, x.shape[axis], given_length)
        return [out(node, 0, x.dtype, tuple(shape))]

    def reference(self, node, x, dft_length=None, axis=None):
        _check_signal(node, x.shape)
        axis = self._axis(node, None if axis is None else [int(np.asarray(axis).reshape(-1)[0])], x.ndim)
        given = None if dft_length is None else [int(np.asarray(dft_length).reshape(-1)[0])]
        n = _dft_length(node, x.shape[axis], given)
        signal = _complex(x)
        if node.attrs["inverse"] and node.attrs["onesided"]:
            result = np.fft.irfft(signal, n=n, axis=axis)[..., None]  # real: [..., 1]
            return result.astype(x.dtype)
        if node.attrs["inverse"]:
            spectrum = np.fft.ifft(signal, n=n, axis=axis)
        elif node.attrs["onesided"]:
            spectrum = np.fft.rfft(signal.real, n=n, axis=axis)
        else:
            spectrum = np.fft.fft(signal, n=n, axis=axis)
        return _real_pairs(spectrum, x.dtype)

    def _axis(self, node: Node, given: list[int] | None, rank: int) -> int:
        """The signal axis, from the input (opset 20) or the attribute; never the last axis."""
        if given is not None:
            axis = given[0]
        else:
            axis = node.attrs.get("axis", -2)
        if 0 <= axis <= rank - 2:
            return axis
        if -rank <= axis <= -2:
            return axis + rank
        raise fail(node, f"axis {axis} must lie in [{-rank}, -2] or [0, {rank - 2}] for an input of rank {rank}: "
                         f"the last axis holds the real and imaginary parts")


def _check_signal(node: Node, shape) -> None:
    """Rank >= 2, last dim 1 or 2, and the one-sided forms on the right kind of input."""
    if len(shape) < 2:
        raise fail(node, f"input must be [..., signal, 1 or 2] (rank >= 2), got {shape_str(shape)}")
    last = shape[-1]
    if isinstance(last, int) and last not in (1, 2):
        raise fail(node, f"the last dimension holds (real) or (real, imaginary) and must be 1 or 2, "
                         f"got {shape_str(shape)}")
    if node.attrs["onesided"] and last == 2 and not node.attrs["inverse"]:
        raise fail(node, "a one-sided forward DFT (onesided=1) takes a real signal: the last dimension "
                         f"must be 1, got {shape_str(shape)}")
    if node.attrs["onesided"] and last == 1 and node.attrs["inverse"]:
        raise fail(node, "a one-sided inverse DFT (onesided=1, inverse=1) takes a complex spectrum: the last "
                         f"dimension must be 2, got {shape_str(shape)}")


def _dft_length(node: Node, axis_size: int, given: list[int] | None) -> int:
    """N: the given ``dft_length``, else the axis size (``2 * (size - 1)`` for an IRFFT)."""
    if given is not None:
        n = given[0]
    elif node.attrs["inverse"] and node.attrs["onesided"]:
        n = 2 * (axis_size - 1)
    else:
        n = axis_size
    if n < 1:
        raise fail(node, f"dft_length must be >= 1, got {n} (axis of size {axis_size})")
    return n


def _transformed_length(node: Node, axis_size: Dim, given: list[int] | None) -> Dim:
    """The output's length along the axis (None if it depends on an unknown size)."""
    if given is None and not isinstance(axis_size, int):
        return None if node.attrs["onesided"] else axis_size
    n = _dft_length(node, axis_size, given)
    if node.attrs["onesided"] and not node.attrs["inverse"]:
        return n // 2 + 1
    return n


def _complex(x: np.ndarray) -> np.ndarray:
    """``[..., 1]`` or ``[..., 2]`` real pairs as a complex array without the last axis:
    complex128 for float64, complex64 for every narrower float type."""
    complex_type = np.complex128 if x.dtype == np.float64 else np.complex64
    z = x[..., 0].astype(complex_type)
    if x.shape[-1] == 2:
        z.imag = x[..., 1]
    return z


def _real_pairs(z: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """A complex array as ``[..., 2]`` (real, imaginary) of ``dtype``."""
    return np.stack([z.real, z.imag], axis=-1).astype(dtype)


# ============================================================================ STFT
@register
class STFT(Op):
    """STFT-17: the DFT of frames of a ``[batch, length, 1 or 2]`` signal.

    Frame f covers samples ``f * frame_step .. f * frame_step + frame_length - 1`` and is
    multiplied by ``window`` (all ones if absent) before its DFT of size ``frame_length``;
    there are ``(length - frame_length) // frame_step + 1`` frames (no padding). The output is
    ``[batch, frames, bins, 2]`` with ``bins = frame_length // 2 + 1`` if ``onesided`` (the
    default, for a real signal) else ``frame_length``. ``frame_length`` defaults to the
    window's length, or to the whole signal if there is no window either.
    """

    op_type = "STFT"
    since = 17
    attributes = {"onesided": 1}

    def check(self, node):
        if node.attrs["onesided"] not in (0, 1):
            raise bad_attribute(node, f"onesided must be 0 or 1, got {node.attrs['onesided']}")

    def infer(self, node, inputs):
        require_inputs(node, inputs, 2, 4)
        signal, step = inputs[0], inputs[1]
        window = inputs[2] if len(inputs) > 2 else None
        length_input = inputs[3] if len(inputs) > 3 else None
        for name, value in (("frame_step", step), ("frame_length", length_input)):
            if value is not None and value.shape is not None and dim_product(value.shape) not in (1, None):
                raise fail(node, f"{name} must be a scalar, got shape {shape_str(value.shape)}")
        if window is not None and window.shape is not None and len(window.shape) != 1:
            raise fail(node, f"window must be 1-D, got shape {shape_str(window.shape)}")
        if signal.shape is None:
            return [out(node, 0, signal.dtype, None)]
        self._check_signal(node, signal.shape)
        batch, samples = signal.shape[0], signal.shape[1]
        window_length = window.shape[0] if window is not None and window.shape is not None else None
        if length_input is not None:
            frame_length = _first(const_ints(length_input))
            _check_window(node, window_length, frame_length)
            if frame_length is None:
                frame_length = window_length
        else:
            frame_length = samples if window is None else window_length
        frame_step = _first(const_ints(step))
        frames = None
        if all(isinstance(v, int) for v in (samples, frame_length, frame_step)):
            frames = _frame_count(node, samples, frame_length, frame_step)
        bins = None
        if isinstance(frame_length, int):
            bins = frame_length // 2 + 1 if node.attrs["onesided"] else frame_length
        return [out(node, 0, signal.dtype, (batch, frames, bins, 2))]

    def reference(self, node, signal, frame_step, window=None, frame_length=None):
        self._check_signal(node, signal.shape)
        samples = signal.shape[1]
        if frame_length is not None:
            length = int(np.asarray(frame_length).reshape(-1)[0])
        else:
            length = window.shape[0] if window is not None else samples
        if window is not None:
            _check_window(node, window.shape[0], length)
        step = int(np.asarray(frame_step).reshape(-1)[0])
        count = _frame_count(node, samples, length, step)
        # frames[b, f, t] = signal[b, f * step + t]: a strided view, nothing copied.
        frames = np.lib.stride_tricks.sliding_window_view(_complex(signal), length, axis=1)[:, ::step][:, :count]
        taper = np.ones(length, frames.real.dtype) if window is None else window.astype(frames.real.dtype)
        if node.attrs["onesided"]:
            spectrum = np.fft.rfft(frames.real * taper, axis=-1)
        else:
            spectrum = np.fft.fft(frames * taper, axis=-1)
        return _real_pairs(spectrum, signal.dtype)

    @staticmethod
    def _check_signal(node: Node, shape) -> None:
        if len(shape) != 3 or (isinstance(shape[-1], int) and shape[-1] not in (1, 2)):
            raise fail(node, f"signal must be [batch, length, 1 or 2], got {shape_str(shape)}")
        if node.attrs["onesided"] and shape[-1] == 2:
            raise fail(node, "a complex signal has no one-sided spectrum: set onesided=0 "
                             f"(signal {shape_str(shape)})")


def _first(values: list[int] | None) -> int | None:
    return None if values is None else values[0]


def _check_window(node: Node, window_length: Dim, frame_length: Dim) -> None:
    if isinstance(window_length, int) and isinstance(frame_length, int) and window_length != frame_length:
        raise fail(node, f"window has {window_length} samples but frame_length is {frame_length}")


def _frame_count(node: Node, samples: int, frame_length: int, frame_step: int) -> int:
    if frame_step < 1:
        raise fail(node, f"frame_step must be >= 1, got {frame_step}")
    if not 1 <= frame_length <= samples:
        raise fail(node, f"frame_length must lie in [1, {samples}] (the signal's length), got {frame_length}")
    return (samples - frame_length) // frame_step + 1


# ============================================================================ windows
def _output_dtype(node: Node) -> np.dtype:
    code = node.attrs["output_datatype"]
    if code not in _OUTPUT_TYPE_CODES:
        raise bad_attribute(
            node, f"output_datatype must be a numeric ONNX type code among {list(_OUTPUT_TYPE_CODES)}, got {code}"
        )
    return dtypes.from_onnx(code)


def _scalar(node: Node, value, name: str) -> None:
    if value is not None and value.shape is not None and dim_product(value.shape) not in (1, None):
        raise fail(node, f"{name} must be a scalar, got shape {shape_str(value.shape)}")


class _CosineWindow(Op):
    """``w[n] = a0 - a1 cos(2 pi n / P) + a2 cos(4 pi n / P)``, n < size (module docstring).

    A symmetric window of one point is [1]: there the formula would divide 0 by 0 (ONNX
    Runtime returns NaN); PyTorch and SciPy return 1 as well.
    """

    since = 17
    attributes = {"periodic": 1, "output_datatype": 1}
    coefficients: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def check(self, node):
        _output_dtype(node)
        if node.attrs["periodic"] not in (0, 1):
            raise bad_attribute(node, f"periodic must be 0 or 1, got {node.attrs['periodic']}")

    def infer(self, node, inputs):
        require_inputs(node, inputs, 1)
        _scalar(node, inputs[0], "size")
        size = _first(const_ints(inputs[0]))
        if size is not None and size < 0:
            raise fail(node, f"size must be >= 0, got {size}")
        return [out(node, 0, _output_dtype(node), (size,))]

    def reference(self, node, size):
        size = int(np.asarray(size).reshape(-1)[0])
        if size < 0:
            raise fail(node, f"size must be >= 0, got {size}")
        period = size if node.attrs["periodic"] else size - 1
        a0, a1, a2 = self.coefficients
        if period == 0:  # a symmetric window of one point (or an empty periodic one)
            window = np.ones(size)
        else:
            angle = 2 * np.pi * np.arange(size) / period
            window = a0 - a1 * np.cos(angle) + a2 * np.cos(2 * angle)
        return window.astype(_output_dtype(node))


@register
class HannWindow(_CosineWindow):
    """HannWindow-17: ``0.5 - 0.5 cos(2 pi n / P)``, i.e. ``sin(pi n / P)^2``."""

    op_type = "HannWindow"
    coefficients = (0.5, 0.5, 0.0)


@register
class HammingWindow(_CosineWindow):
    """HammingWindow-17: ``25/46 - 21/46 cos(2 pi n / P)`` (Hamming's 0.54 / 0.46, exactly
    the pair that cancels the first side lobe)."""

    op_type = "HammingWindow"
    coefficients = (25 / 46, 21 / 46, 0.0)


@register
class BlackmanWindow(_CosineWindow):
    """BlackmanWindow-17: ``0.42 - 0.5 cos(2 pi n / P) + 0.08 cos(4 pi n / P)``."""

    op_type = "BlackmanWindow"
    coefficients = (0.42, 0.5, 0.08)


# ============================================================================ MelWeightMatrix
@register
class MelWeightMatrix(Op):
    """MelWeightMatrix-17: triangular filters mapping ``dft_length // 2 + 1`` linear DFT bins to
    ``num_mel_bins`` mel bands; output ``[dft_length // 2 + 1, num_mel_bins]``.

    The mel scale is ``mel(f) = 2595 log10(1 + f / 700)``. ``num_mel_bins + 2`` edges are
    spaced evenly in mel from ``mel(lower_edge_hertz)`` with the step
    ``(mel(upper_edge_hertz) - mel(lower_edge_hertz)) / (num_mel_bins + 2)`` (the divisor
    ONNX's reference and ONNX Runtime use), and each edge is mapped to the DFT bin
    ``floor((dft_length + 1) * f / sample_rate)``. Band m rises linearly from 0 at edge m to
    1 at edge m + 1 and falls back to 0 at edge m + 2; the peak is always 1.
    """

    op_type = "MelWeightMatrix"
    since = 17
    attributes = {"output_datatype": 1}

    def check(self, node):
        _output_dtype(node)

    def infer(self, node, inputs):
        require_inputs(node, inputs, 5)
        names = ("num_mel_bins", "dft_length", "sample_rate", "lower_edge_hertz", "upper_edge_hertz")
        for name, value in zip(names, inputs):
            _scalar(node, value, name)
        bands, dft_length = _first(const_ints(inputs[0])), _first(const_ints(inputs[1]))
        bins = dft_length // 2 + 1 if dft_length is not None else None
        return [out(node, 0, _output_dtype(node), (bins, bands))]

    def reference(self, node, num_mel_bins, dft_length, sample_rate, lower_edge_hertz, upper_edge_hertz):
        bands, length, rate = (int(np.asarray(v).reshape(-1)[0]) for v in (num_mel_bins, dft_length, sample_rate))
        lower, upper = (float(np.asarray(v).reshape(-1)[0]) for v in (lower_edge_hertz, upper_edge_hertz))
        if bands < 1 or length < 1 or rate < 1:
            raise fail(node, f"num_mel_bins, dft_length and sample_rate must be >= 1, got {bands}, {length}, {rate}")
        low_mel, high_mel = _hertz_to_mel(lower), _hertz_to_mel(upper)
        edges_mel = low_mel + np.arange(bands + 2) * ((high_mel - low_mel) / (bands + 2))
        edges = np.floor((length + 1) * _mel_to_hertz(edges_mel) / rate).astype(np.int64)
        left, centre, right = edges[:-2], edges[1:-1], edges[2:]
        j = np.arange(length // 2 + 1)[:, None]  # DFT bin, down the rows
        with np.errstate(divide="ignore", invalid="ignore"):  # the empty slopes are masked out
            rising = (j - left) / (centre - left)
            falling = (right - j) / (right - centre)
        weights = np.where((left <= j) & (j < centre), rising, 0.0)
        weights = np.where((centre < j) & (j < right), falling, weights)
        weights = np.where(j == centre, 1.0, weights)
        return weights.astype(_output_dtype(node))


def _hertz_to_mel(hertz):
    return 2595.0 * np.log1p(np.asarray(hertz, np.float64) / 700.0) / math.log(10.0)


def _mel_to_hertz(mel):
    return 700.0 * np.expm1(np.asarray(mel, np.float64) * math.log(10.0) / 2595.0)
