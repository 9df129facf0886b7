"""DFT, STFT, the windows and MelWeightMatrix (tinyinfer/ops/signal.py) against direct formulas.

The DFT oracle is the O(N^2) sum of the spec, ``X[k] = sum_n x[n] exp(-2 pi i k n / N)``,
written as a matrix of twiddle factors; the inverse of a one-sided spectrum is summed as
``x[n] = (X[0] + 2 sum_{0<k<N/2} X[k] w^{kn} + X[N/2] (-1)^n) / N`` (real parts). Both run in
float64. tinyinfer transforms float32 in complex64, whose FFT error grows like
eps32 * log N * |x|: with |x| <= 1 and N <= 16, atol 1e-5 covers it with room; float64 is
held to 1e-12. Windows and mel filters are a handful of cosines or ratios: 1e-6 for float32
(one rounding of a value in [0, 1]), 1e-14 for float64.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from onnx import TensorProto
from onnx_oracle import Initializer, infer_outputs, run_tinyinfer

from tinyinfer.errors import InvalidAttributeError, ShapeInferenceError

TOLERANCE = {np.float32: dict(rtol=1e-5, atol=1e-5), np.float64: dict(rtol=1e-12, atol=1e-12)}


# ---------------------------------------------------------------------------- oracles
def direct_dft(z: np.ndarray, axis: int, n: int, inverse: bool = False) -> np.ndarray:
    """The spec's sum along ``axis``, after cutting or zero-padding z to n samples."""
    z = np.moveaxis(z.astype(np.complex128), axis, -1)
    fitted = np.zeros(z.shape[:-1] + (n,), np.complex128)
    keep = min(n, z.shape[-1])
    fitted[..., :keep] = z[..., :keep]
    sign = 1.0 if inverse else -1.0
    k = np.arange(n)
    twiddle = np.exp(sign * 2j * np.pi * np.outer(k, k) / n)  # twiddle[k, m] = w^{km}
    result = fitted @ twiddle.T
    if inverse:
        result /= n
    return np.moveaxis(result, -1, axis)


def direct_irfft(half: np.ndarray, axis: int, n: int) -> np.ndarray:
    """A real signal of n samples from bins 0..n//2 (zero beyond the ones given)."""
    half = np.moveaxis(half.astype(np.complex128), axis, -1)
    bins = np.zeros(half.shape[:-1] + (n // 2 + 1,), np.complex128)
    keep = min(n // 2 + 1, half.shape[-1])
    bins[..., :keep] = half[..., :keep]
    signal = np.zeros(half.shape[:-1] + (n,))
    for m in range(n):
        for k in range(n // 2 + 1):
            twice = 1.0 if k == 0 or 2 * k == n else 2.0  # bins k and n - k are conjugates
            signal[..., m] += twice * (bins[..., k] * np.exp(2j * np.pi * k * m / n)).real
    return np.moveaxis(signal / n, -1, axis)


def pairs(z: np.ndarray) -> np.ndarray:
    return np.stack([z.real, z.imag], axis=-1)


def random_signal(shape, complex_input, dtype, seed=0):
    """A ``shape + [1 or 2]`` array in [-1, 1] and the complex signal it stands for."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (*shape, 2 if complex_input else 1)).astype(dtype)
    z = x[..., 0].astype(np.float64) + (1j * x[..., 1].astype(np.float64) if complex_input else 0)
    return x, z


def dft_node(opset, x, axis, dft_length, **attrs):
    """Inputs and attributes of a DFT node in the opset-17 form (axis attribute) or the
    opset-20 form (axis input)."""
    length = None if dft_length is None else np.array(dft_length, np.int64)
    if opset < 20:
        return [x, length], dict(attrs, axis=axis)
    return [x, length, np.array(axis, np.int64)], attrs


# ---------------------------------------------------------------------------- DFT
DFT_CASES = list(itertools.product([17, 20], [1, -2, 2, -3], [None, 5, 9]))


@pytest.mark.parametrize("opset, axis, dft_length", DFT_CASES)
@pytest.mark.parametrize("complex_input", [False, True])
@pytest.mark.parametrize("inverse", [0, 1])
def test_dft_matches_direct_sum(opset, axis, dft_length, complex_input, inverse):
    x, z = random_signal((2, 6, 7), complex_input, np.float32)
    inputs, attrs = dft_node(opset, x, axis, dft_length, inverse=inverse)
    (got,) = run_tinyinfer("DFT", inputs, opset=opset, **attrs)
    signal_axis = axis % 4
    n = x.shape[signal_axis] if dft_length is None else dft_length
    want = pairs(direct_dft(z, signal_axis, n, inverse=bool(inverse)))
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_allclose(got, want, **TOLERANCE[np.float32])


@pytest.mark.parametrize("opset", [17, 20])
@pytest.mark.parametrize("dft_length", [None, 4, 7, 10])
def test_dft_onesided_forward_keeps_the_first_half(opset, dft_length):
    x, z = random_signal((3, 8), False, np.float64, seed=1)
    inputs, attrs = dft_node(opset, x, 1, dft_length, onesided=1)
    (got,) = run_tinyinfer("DFT", inputs, opset=opset, **attrs)
    n = 8 if dft_length is None else dft_length
    want = pairs(direct_dft(z, 1, n))[:, : n // 2 + 1]
    assert got.shape == (3, n // 2 + 1, 2)
    np.testing.assert_allclose(got, want, **TOLERANCE[np.float64])


@pytest.mark.parametrize("opset", [17, 20])
@pytest.mark.parametrize("bins, dft_length", [(5, None), (5, 9), (5, 6), (4, 12)])
def test_dft_onesided_inverse_returns_a_real_signal(opset, bins, dft_length):
    x, z = random_signal((2, bins, 3), True, np.float64, seed=2)
    inputs, attrs = dft_node(opset, x, 1, dft_length, onesided=1, inverse=1)
    (got,) = run_tinyinfer("DFT", inputs, opset=opset, **attrs)
    n = 2 * (bins - 1) if dft_length is None else dft_length
    assert got.shape == (2, n, 3, 1)
    np.testing.assert_allclose(got[..., 0], direct_irfft(z, 1, n), **TOLERANCE[np.float64])


def test_dft_round_trip_and_default_axis():
    x, _ = random_signal((2, 3, 8), True, np.float64, seed=3)
    (spectrum,) = run_tinyinfer("DFT", [x], opset=20)  # axis -2: the 8 samples
    (back,) = run_tinyinfer("DFT", [spectrum], opset=20, inverse=1)
    np.testing.assert_allclose(back, x, atol=1e-14)
    (old_default,) = run_tinyinfer("DFT", [x], opset=17)  # axis 1: the 3 rows
    np.testing.assert_allclose(old_default[..., 0] + 1j * old_default[..., 1],
                               direct_dft(x[..., 0] + 1j * x[..., 1], 1, 3), atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_dft_keeps_the_input_type(dtype):
    x, z = random_signal((4, 6), False, dtype, seed=4)
    (got,) = run_tinyinfer("DFT", [x], opset=20)
    assert got.dtype == dtype
    # float16 keeps 11 bits: |X| <= 6 rounds to within 6 * 2^-11.
    np.testing.assert_allclose(got, pairs(direct_dft(z, 1, 6)), atol=6e-3 if dtype == np.float16 else 1e-12)


def test_dft_infers_shapes_symbolically():
    x = np.zeros((2, 8, 1), np.float32)
    (full,) = infer_outputs("DFT", [x], opset=20, shapes={0: ("B", "T", 1)})
    assert full.shape == ("B", "T", 2)
    (half,) = infer_outputs("DFT", [x, Initializer(np.array(10))], opset=20, shapes={0: ("B", "T", 1)}, onesided=1)
    assert half.shape == ("B", 6, 2)
    (unknown_axis,) = infer_outputs("DFT", [x, None, np.array(1)], opset=20, onesided=1)
    assert unknown_axis.shape == (None, None, 2)
    (irfft,) = infer_outputs("DFT", [np.zeros((2, 5, 2), np.float32)], opset=20, onesided=1, inverse=1)
    assert irfft.shape == (2, 8, 1)


def test_dft_errors():
    real, complex_ = np.zeros((2, 4, 1), np.float32), np.zeros((2, 4, 2), np.float32)
    with pytest.raises(ShapeInferenceError, match=r"axis -1 must lie in \[-3, -2\] or \[0, 1\]"):
        run_tinyinfer("DFT", [real, None, np.array(-1)], opset=20)
    with pytest.raises(ShapeInferenceError, match="axis 2 must lie"):
        run_tinyinfer("DFT", [real], opset=17, axis=2)
    with pytest.raises(ShapeInferenceError, match="one-sided forward DFT .* takes a real signal"):
        run_tinyinfer("DFT", [complex_], opset=20, onesided=1)
    with pytest.raises(ShapeInferenceError, match="one-sided inverse DFT .* takes a complex spectrum"):
        run_tinyinfer("DFT", [real], opset=20, onesided=1, inverse=1)
    with pytest.raises(ShapeInferenceError, match="must be 1 or 2"):
        run_tinyinfer("DFT", [np.zeros((2, 4, 3), np.float32)], opset=20)
    with pytest.raises(ShapeInferenceError, match="dft_length must be >= 1"):
        run_tinyinfer("DFT", [real, Initializer(np.array(0))], opset=20)
    with pytest.raises(InvalidAttributeError, match="inverse must be 0 or 1"):
        run_tinyinfer("DFT", [real], opset=20, inverse=2)


# ---------------------------------------------------------------------------- STFT
def direct_stft(z, step, length, window, onesided):
    """Frame by frame: cut, multiply by the window, DFT by the direct sum."""
    frames = (z.shape[1] - length) // step + 1
    spectra = np.stack([direct_dft(z[:, f * step: f * step + length] * window, 1, length) for f in range(frames)], 1)
    return spectra[:, :, : length // 2 + 1] if onesided else spectra


@pytest.mark.parametrize("step, length, with_window, give_length", [
    (2, 6, True, True), (3, 5, False, True), (4, 8, True, False), (1, 16, False, False), (5, 4, True, True),
])
@pytest.mark.parametrize("onesided", [0, 1])
def test_stft_matches_direct_sum(step, length, with_window, give_length, onesided):
    x, z = random_signal((2, 16), False, np.float32, seed=5)
    window = np.hanning(length + 2)[1:-1].astype(np.float32) if with_window else None
    frame_length = np.array(length, np.int64) if give_length else None
    (got,) = run_tinyinfer("STFT", [x, np.array(step, np.int64), window, frame_length], opset=17, onesided=onesided)
    want = pairs(direct_stft(z, step, length, np.ones(length) if window is None else window, onesided))
    assert got.shape == want.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, want, **TOLERANCE[np.float32])


def test_stft_of_a_complex_signal():
    x, z = random_signal((1, 12), True, np.float64, seed=6)
    (got,) = run_tinyinfer("STFT", [x, np.array(3), None, np.array(6)], opset=17, onesided=0)
    np.testing.assert_allclose(got, pairs(direct_stft(z, 3, 6, np.ones(6), False)), **TOLERANCE[np.float64])


def test_stft_infers_its_shape():
    x = np.zeros((2, 100, 1), np.float32)
    (value,) = infer_outputs("STFT", [x, Initializer(np.array(10)), np.ones(32, np.float32)], opset=17)
    assert value.shape == (2, 7, 17, 2)
    (value,) = infer_outputs("STFT", [x, np.array(10), None, Initializer(np.array(20))], opset=17, onesided=0)
    assert value.shape == (2, None, 20, 2)


def test_stft_errors():
    x = np.zeros((1, 16, 1), np.float32)
    with pytest.raises(ShapeInferenceError, match="window has 8 samples but frame_length is 6"):
        run_tinyinfer("STFT", [x, np.array(2), np.ones(8, np.float32), Initializer(np.array(6))], opset=17)
    with pytest.raises(ShapeInferenceError, match="complex signal has no one-sided spectrum"):
        run_tinyinfer("STFT", [np.zeros((1, 16, 2), np.float32), np.array(2)], opset=17)
    with pytest.raises(ShapeInferenceError, match=r"frame_length must lie in \[1, 16\]"):
        run_tinyinfer("STFT", [x, Initializer(np.array(2)), None, Initializer(np.array(20))], opset=17)
    with pytest.raises(ShapeInferenceError, match="frame_step must be >= 1"):
        run_tinyinfer("STFT", [x, Initializer(np.array(0))], opset=17)
    with pytest.raises(ShapeInferenceError, match=r"signal must be \[batch, length, 1 or 2\]"):
        run_tinyinfer("STFT", [np.zeros((16, 1), np.float32), np.array(2)], opset=17)


# ---------------------------------------------------------------------------- windows
def window_formula(op_type, size, periodic):
    """Harris's definitions, one point at a time."""
    p = size if periodic else size - 1
    values = []
    for n in range(size):
        if op_type == "HannWindow":
            values.append(math.sin(math.pi * n / p) ** 2)
        elif op_type == "HammingWindow":
            values.append(25 / 46 - 21 / 46 * math.cos(2 * math.pi * n / p))
        else:
            values.append(0.42 - 0.5 * math.cos(2 * math.pi * n / p) + 0.08 * math.cos(4 * math.pi * n / p))
    return np.array(values)


WINDOWS = ["HannWindow", "HammingWindow", "BlackmanWindow"]


@pytest.mark.parametrize("op_type", WINDOWS)
@pytest.mark.parametrize("size", [2, 5, 8, 33])
@pytest.mark.parametrize("periodic", [0, 1])
def test_windows_match_their_formula(op_type, size, periodic):
    (got,) = run_tinyinfer(op_type, [np.array(size, np.int64)], opset=17, periodic=periodic)
    assert got.dtype == np.float32 and got.shape == (size,)
    np.testing.assert_allclose(got, window_formula(op_type, size, periodic), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("op_type", WINDOWS)
def test_periodic_window_is_the_symmetric_one_a_point_longer(op_type):
    size = np.array(10, np.int32)
    (periodic,) = run_tinyinfer(op_type, [size], opset=17, output_datatype=TensorProto.DOUBLE)
    (longer,) = run_tinyinfer(op_type, [size + 1], opset=17, periodic=0, output_datatype=TensorProto.DOUBLE)
    assert periodic.dtype == np.float64
    np.testing.assert_allclose(periodic, longer[:-1], rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(longer, longer[::-1], atol=1e-15)  # symmetric indeed


@pytest.mark.parametrize("op_type", WINDOWS)
def test_window_edge_sizes_and_integer_output(op_type):
    (symmetric,) = run_tinyinfer(op_type, [np.array(1)], opset=17, periodic=0)
    np.testing.assert_array_equal(symmetric, [1.0])  # 0 / 0 in the formula: 1 by convention
    (periodic,) = run_tinyinfer(op_type, [np.array(1)], opset=17, periodic=1)
    np.testing.assert_allclose(periodic, window_formula(op_type, 1, 1), atol=1e-7)  # w[0] = a0 - a1 + a2
    (empty,) = run_tinyinfer(op_type, [np.array(0)], opset=17)
    assert empty.shape == (0,)
    (ints,) = run_tinyinfer(op_type, [np.array(4)], opset=17, periodic=0, output_datatype=TensorProto.INT64)
    assert ints.dtype == np.int64  # values in [0, 1] truncate, like a Cast
    np.testing.assert_array_equal(ints, window_formula(op_type, 4, 0).astype(np.int64))


def test_window_errors_and_shape():
    with pytest.raises(InvalidAttributeError, match="output_datatype must be a numeric ONNX type code"):
        run_tinyinfer("HannWindow", [np.array(4)], opset=17, output_datatype=TensorProto.STRING)
    with pytest.raises(ShapeInferenceError, match="size must be >= 0"):
        run_tinyinfer("HammingWindow", [Initializer(np.array(-3))], opset=17)
    with pytest.raises(ShapeInferenceError, match="size must be a scalar"):
        run_tinyinfer("BlackmanWindow", [np.array([3, 4])], opset=17)
    (value,) = infer_outputs("HannWindow", [np.array(4)], opset=17, output_datatype=TensorProto.FLOAT16)
    assert value.shape == (None,) and value.dtype == np.float16


# ---------------------------------------------------------------------------- MelWeightMatrix
def mel_filters(bands, dft_length, rate, low, high):
    """The spec's triangles, band by band: edges evenly spaced in mel (step over bands + 2
    intervals), mapped to bins floor((dft_length + 1) f / rate)."""
    def mel(f):
        return 2595 * math.log10(1 + f / 700)

    def hertz(m):
        return 700 * (10 ** (m / 2595) - 1)

    step = (mel(high) - mel(low)) / (bands + 2)
    edges = [math.floor((dft_length + 1) * hertz(mel(low) + i * step) / rate) for i in range(bands + 2)]
    matrix = np.zeros((dft_length // 2 + 1, bands))
    for m in range(bands):
        left, centre, right = edges[m: m + 3]
        for j in range(matrix.shape[0]):
            if left <= j < centre:
                matrix[j, m] = (j - left) / (centre - left)
            elif j == centre:
                matrix[j, m] = 1.0
            elif centre < j < right:
                matrix[j, m] = (right - j) / (right - centre)
    return matrix


@pytest.mark.parametrize("bands, dft_length, rate, low, high", [
    (8, 16, 8192, 0.0, 4096.0), (10, 64, 16000, 20.0, 8000.0), (4, 31, 22050, 300.0, 6000.0),
    (20, 512, 16000, 0.0, 7600.0),
])
def test_mel_weight_matrix_matches_the_triangles(bands, dft_length, rate, low, high):
    inputs = [np.array(bands, np.int32), np.array(dft_length, np.int64), np.array(rate, np.int32),
              np.array(low, np.float32), np.array(high, np.float32)]
    (got,) = run_tinyinfer("MelWeightMatrix", inputs, opset=17)
    assert got.dtype == np.float32 and got.shape == (dft_length // 2 + 1, bands)
    np.testing.assert_allclose(got, mel_filters(bands, dft_length, rate, low, high), rtol=1e-6, atol=1e-7)
    (as_double,) = run_tinyinfer("MelWeightMatrix", inputs, opset=17, output_datatype=TensorProto.DOUBLE)
    assert as_double.dtype == np.float64 and as_double.max() == 1.0


def test_mel_weight_matrix_infers_its_shape_from_constants():
    consts = [Initializer(np.array(v)) for v in (12, 400, 16000)] + [np.array(0.0, np.float32)] * 2
    (value,) = infer_outputs("MelWeightMatrix", consts, opset=17)
    assert value.shape == (201, 12) and value.dtype == np.float32
    with pytest.raises(ShapeInferenceError, match="num_mel_bins must be a scalar"):
        run_tinyinfer("MelWeightMatrix", [np.array([4, 4])] + consts[1:], opset=17)
