"""Graded tests of chapter 06's exercises (exercises/ch06_kernels.py).

    pytest tests/exercises/test_ch06_kernels.py --impl=exercises -m ex1   # im2col, conv2d_im2col
    pytest tests/exercises/test_ch06_kernels.py --impl=exercises -m ex2   # Winograd F(2, 3)
    pytest tests/exercises/test_ch06_kernels.py --impl=exercises -m ex3   # NC4HW4 layout
    pytest tests/exercises/test_ch06_kernels.py --impl=exercises -m ex4   # blocked_matmul

(``-m ch06_ex1`` ... picks the same tests from the whole of tests/exercises.)

Oracles: ONNX Runtime's Conv on one-node models, and a naive loop over every element of the
im2col matrix; ``np.correlate`` and the F(2, 3) identity checked exactly on basis vectors,
plus a count of data-by-filter multiplications made with counting numbers; the index
formula of the blocked layout checked element by element, round trips, and tinyinfer's own
layout module; NumPy's matmul in float64, and a record of every block the GEMM reads.
None of them reads the solutions.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from tinyinfer.kernels import layout as engine_layout

OPSET = 17


def ex(number: int):
    """Both marks of an exercise: ``ex<n>`` (per file) and ``ch06_ex<n>`` (across chapters)."""

    def mark(test):
        return getattr(pytest.mark, f"ch06_ex{number}")(getattr(pytest.mark, f"ex{number}")(test))

    return mark


def _pair(value):
    return (value, value) if isinstance(value, int) else tuple(value)


def _pads(pad):
    return (pad,) * 4 if isinstance(pad, int) else tuple(pad)


# ============================================================================ exercise 1
def onnxruntime_conv(x, w, bias, stride, pad, dilation) -> np.ndarray:
    """ONNX Runtime's Conv on a one-node model (pads in ONNX order: top, left, bottom, right)."""
    inputs = ["x", "w"] + (["b"] if bias is not None else [])
    node = helper.make_node("Conv", inputs, ["y"], kernel_shape=list(w.shape[2:]), strides=list(_pair(stride)),
                            pads=list(_pads(pad)), dilations=list(_pair(dilation)))
    initializers = [numpy_helper.from_array(w, "w")] + ([numpy_helper.from_array(bias, "b")] if bias is not None else [])
    (sh, sw), (dh, dw), (top, left, bottom, right) = _pair(stride), _pair(dilation), _pads(pad)
    out_h = (x.shape[2] + top + bottom - dh * (w.shape[2] - 1) - 1) // sh + 1
    out_w = (x.shape[3] + left + right - dw * (w.shape[3] - 1) - 1) // sw + 1
    y_shape = [x.shape[0], w.shape[0], out_h, out_w]
    graph = helper.make_graph([node], "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def naive_im2col(x, kh, kw, stride, pad, dilation) -> np.ndarray:
    """The definition, one element at a time."""
    channels, height, width = x.shape
    (sh, sw), (dh, dw) = _pair(stride), _pair(dilation)
    top, left, bottom, right = _pads(pad)
    out_h = (height + top + bottom - dh * (kh - 1) - 1) // sh + 1
    out_w = (width + left + right - dw * (kw - 1) - 1) // sw + 1
    columns = np.zeros((channels * kh * kw, out_h * out_w))
    for c, i, j, oh, ow in itertools.product(range(channels), range(kh), range(kw), range(out_h), range(out_w)):
        r, s = oh * sh + i * dh - top, ow * sw + j * dw - left
        if 0 <= r < height and 0 <= s < width:
            columns[(c * kh + i) * kw + j, oh * out_w + ow] = x[c, r, s]
    return columns


# (channels, height, width, kh, kw, stride, pad, dilation)
IM2COL_CASES = [
    (1, 3, 3, 2, 2, 1, 0, 1),  # the docstring's worked example
    (2, 5, 5, 3, 3, 1, 1, 1),
    (3, 7, 6, 3, 3, 2, 1, 1),
    (2, 6, 7, 3, 2, (2, 1), (1, 0, 0, 1), 1),
    (1, 9, 8, 3, 3, 1, 2, 2),
    (2, 8, 5, 1, 3, (1, 2), (0, 1, 0, 1), (1, 2)),
    (1, 4, 4, 4, 4, 1, 0, 1),  # one output pixel
    (2, 5, 6, 5, 5, 3, 2, (1, 1)),
]


@ex(1)
def test_im2col_worked_example(impl):
    got = impl.im2col(np.arange(9.0).reshape(1, 3, 3), 2, 2)
    np.testing.assert_array_equal(got, [[0, 1, 3, 4], [1, 2, 4, 5], [3, 4, 6, 7], [4, 5, 7, 8]])


@ex(1)
@pytest.mark.parametrize("case", IM2COL_CASES, ids=[f"case{i}" for i in range(len(IM2COL_CASES))])
def test_im2col_matches_the_definition(impl, case):
    channels, height, width, kh, kw, stride, pad, dilation = case
    x = np.random.default_rng(1).standard_normal((channels, height, width)).astype(np.float32)
    expected = naive_im2col(x, kh, kw, stride, pad, dilation)
    got = np.asarray(impl.im2col(x.copy(), kh, kw, stride=stride, pad=pad, dilation=dilation))
    assert got.shape == expected.shape, f"{case}: columns must be (C*kh*kw, OH*OW) = {expected.shape}"
    # A copy, no arithmetic: every element must be exact.
    np.testing.assert_array_equal(got, expected, err_msg=f"{case}: element of the im2col matrix")


def _conv_cases():
    rng = np.random.default_rng(7)
    cases = [  # (N, C, H, W, M, kh, kw, stride, pad, dilation, bias)
        (1, 3, 8, 8, 4, 3, 3, 1, 1, 1, True),
        (2, 4, 9, 7, 5, 3, 3, 2, 1, 1, False),
        (1, 8, 10, 10, 16, 1, 1, 1, 0, 1, True),
        (1, 3, 11, 9, 2, 5, 3, (2, 1), (2, 1, 1, 0), 1, True),
        (2, 2, 12, 12, 3, 3, 3, 1, 2, 2, True),
        (1, 5, 7, 13, 6, 2, 4, (1, 3), (0, 1, 1, 2), (2, 1), False),
        (1, 16, 14, 14, 8, 3, 3, 1, 1, 1, True),
    ]
    for _ in range(12):  # seeded random shapes on top
        kh, kw = int(rng.integers(1, 5)), int(rng.integers(1, 5))
        dilation = (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
        pad = tuple(int(p) for p in rng.integers(0, 3, 4))
        h = int(rng.integers(dilation[0] * (kh - 1) + 1, 14))
        w = int(rng.integers(dilation[1] * (kw - 1) + 1, 14))
        cases.append((int(rng.integers(1, 3)), int(rng.integers(1, 7)), h, w, int(rng.integers(1, 9)), kh, kw,
                      (int(rng.integers(1, 4)), int(rng.integers(1, 4))), pad, dilation, bool(rng.integers(0, 2))))
    return cases


CONV_CASES = _conv_cases()


@ex(1)
@pytest.mark.parametrize("case", CONV_CASES, ids=[f"conv{i}" for i in range(len(CONV_CASES))])
def test_conv2d_im2col_matches_onnxruntime(impl, case):
    n, c, h, w, m, kh, kw, stride, pad, dilation, with_bias = case
    rng = np.random.default_rng(3)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    weights = rng.standard_normal((m, c, kh, kw)).astype(np.float32)
    bias = rng.standard_normal(m).astype(np.float32) if with_bias else None
    expected = onnxruntime_conv(x, weights, bias, stride, pad, dilation)
    got = np.asarray(impl.conv2d_im2col(x, weights, bias, stride=stride, pad=pad, dilation=dilation))
    assert got.shape == expected.shape, f"{case}: output shape (N, M, OH, OW) = {expected.shape}"
    assert got.dtype == np.float32, "the output is float32, as ONNX's Conv on float32 inputs"
    # Both sum C*kh*kw float32 products, in different orders: each sum's rounding error is a
    # few ulps of the sum of |products| (at most 16*5*5 = 400 terms of size ~1 here).
    scale = float(np.abs(expected).max()) or 1.0
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * scale * math.sqrt(c * kh * kw),
                               err_msg=f"{case}: conv2d_im2col against ONNX Runtime")


# ============================================================================ exercise 2
class Counted:
    """A number that counts the products of one counted number by another (data by filter).

    Products by plain numbers (the transforms' constants 0, ±1, 1/2) are not counted: they
    are additions, or done once per filter.
    """

    products = 0

    def __init__(self, value: float):
        self.value = float(value)

    @staticmethod
    def _value(other):
        return other.value if isinstance(other, Counted) else float(other)

    def __add__(self, other):
        return Counted(self.value + self._value(other))

    __radd__ = __add__

    def __sub__(self, other):
        return Counted(self.value - self._value(other))

    def __rsub__(self, other):
        return Counted(self._value(other) - self.value)

    def __neg__(self):
        return Counted(-self.value)

    def __mul__(self, other):
        if isinstance(other, Counted):
            Counted.products += 1
        return Counted(self.value * self._value(other))

    __rmul__ = __mul__

    def __truediv__(self, other):
        if isinstance(other, Counted):
            raise TypeError("divide by constants only")
        return Counted(self.value / float(other))

    def __float__(self):
        return self.value


def counted(values) -> np.ndarray:
    array = np.empty(len(values), dtype=object)
    array[:] = [Counted(v) for v in values]
    return array


@ex(2)
def test_winograd_matrices_have_the_right_shapes(impl):
    b_t, g, a_t = (np.asarray(m, dtype=np.float64) for m in impl.winograd_f23_transforms())
    assert b_t.shape == (4, 4), "B_T maps 4 inputs to 4 transformed inputs"
    assert g.shape == (4, 3), "G maps 3 filter taps to 4 transformed taps"
    assert a_t.shape == (2, 4), "A_T maps 4 products to 2 outputs"


@ex(2)
def test_winograd_data_and_output_transforms_are_additions(impl):
    b_t, _, a_t = (np.asarray(m, dtype=np.float64) for m in impl.winograd_f23_transforms())
    for name, matrix in (("B_T", b_t), ("A_T", a_t)):
        assert set(np.unique(matrix)) <= {-1.0, 0.0, 1.0}, f"{name} must hold only 0, 1 and -1 (additions only)"


@ex(2)
def test_winograd_identity_exact_on_basis_vectors(impl):
    # Y = A_T[(G g) * (B_T d)] is bilinear in (d, g): it equals the correlation for every d, g
    # exactly when it does on the 4 x 3 pairs of basis vectors. The entries are 0, ±1, ±1/2,
    # so float64 computes these 12 cases without rounding: the comparison is exact.
    b_t, g_matrix, a_t = (np.asarray(m, dtype=np.float64) for m in impl.winograd_f23_transforms())
    for i, j in itertools.product(range(4), range(3)):
        d, g = np.eye(4)[i], np.eye(3)[j]
        expected = np.correlate(d, g, "valid")  # y[k] = sum_t d[k + t] g[t]
        got = a_t @ ((g_matrix @ g) * (b_t @ d))
        np.testing.assert_array_equal(got, expected, err_msg=f"identity fails for d = e{i}, g = e{j}")


@ex(2)
def test_winograd_identity_on_random_tiles(impl):
    b_t, g_matrix, a_t = (np.asarray(m, dtype=np.float64) for m in impl.winograd_f23_transforms())
    rng = np.random.default_rng(0)
    for _ in range(200):
        d, g = rng.standard_normal(4), rng.standard_normal(3)
        # float64 with entries of size <= 1 and sums of 3 terms: a few ulps.
        np.testing.assert_allclose(a_t @ ((g_matrix @ g) * (b_t @ d)), np.correlate(d, g, "valid"),
                                   rtol=1e-12, atol=1e-12)


@ex(2)
@pytest.mark.parametrize("n", [3, 4, 5, 6, 9, 10, 17, 32, 51])
def test_winograd_conv1d_matches_correlate(impl, n):
    rng = np.random.default_rng(n)
    d, g = rng.standard_normal(n), rng.standard_normal(3)
    got = np.asarray(impl.winograd_f23_conv1d(d, g), dtype=np.float64)
    assert got.shape == (n - 2,), f"n = {n} inputs give n - 2 = {n - 2} outputs"
    np.testing.assert_allclose(got, np.correlate(d, g, "valid"), rtol=1e-12, atol=1e-12)


@ex(2)
def test_winograd_conv1d_docstring_example(impl):
    got = np.asarray(impl.winograd_f23_conv1d(np.array([1.0, 2, 3, 4, 5]), np.array([1.0, 0, -1])), dtype=np.float64)
    np.testing.assert_allclose(got, [-2, -2, -2], atol=1e-12)


@ex(2)
@pytest.mark.parametrize("n", [4, 6, 9, 10, 20])
def test_winograd_conv1d_does_4_multiplications_per_2_outputs(impl, n):
    rng = np.random.default_rng(10 + n)
    d, g = rng.standard_normal(n), rng.standard_normal(3)
    Counted.products = 0
    got = impl.winograd_f23_conv1d(counted(d), counted(g))
    products = Counted.products
    values = np.array([float(v) for v in np.asarray(got).ravel()])
    np.testing.assert_allclose(values, np.correlate(d, g, "valid"), rtol=1e-12, atol=1e-12)
    tiles = math.ceil((n - 2) / 2)
    direct = 3 * (n - 2)
    assert products > 0, ("no data-by-filter product was counted: keep d and g as given (no astype / float "
                          "conversion) so the grader can count")
    assert products == 4 * tiles, (f"n = {n}: {tiles} tiles of F(2, 3) need {4 * tiles} multiplications of data by "
                                   f"filter values (the direct formula needs {direct}); counted {products}")


# ============================================================================ exercise 3
LAYOUT_SHAPES = [(1, 4, 2, 2), (1, 8, 2, 2), (2, 6, 3, 5), (1, 1, 4, 3), (2, 13, 5, 4), (1, 3, 1, 1), (3, 17, 2, 3)]


@ex(3)
@pytest.mark.parametrize("shape", LAYOUT_SHAPES, ids=[str(s) for s in LAYOUT_SHAPES])
@pytest.mark.parametrize("c", [4, 8, 16])
def test_nchw_to_nc4hw4_index_formula(impl, shape, c):
    n, channels, h, w = shape
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32) + 1.0  # padding zeros stand out
    y = np.asarray(impl.nchw_to_nc4hw4(x, c))
    blocks = -(-channels // c)
    assert y.shape == (n, blocks, h, w, c), f"blocked shape is (N, ceil(C/c), H, W, c) = {(n, blocks, h, w, c)}"
    assert y.dtype == x.dtype, "the conversion keeps the dtype"
    for b, k, row, col, lane in itertools.product(range(n), range(blocks), range(h), range(w), range(c)):
        channel = k * c + lane
        want = x[b, channel, row, col] if channel < channels else 0.0
        assert y[b, k, row, col, lane] == want, f"y[{b}, {k}, {row}, {col}, {lane}] should be x[{b}, {channel}, {row}, {col}]" \
            + (" (a padding channel: 0)" if channel >= channels else "")


@ex(3)
@pytest.mark.parametrize("shape", LAYOUT_SHAPES, ids=[str(s) for s in LAYOUT_SHAPES])
def test_nc4hw4_to_nchw_index_formula_and_round_trip(impl, shape):
    n, channels, h, w = shape
    rng = np.random.default_rng(1)
    blocks = -(-channels // 4)
    y = rng.standard_normal((n, blocks, h, w, 4)).astype(np.float32)
    x = np.asarray(impl.nc4hw4_to_nchw(y, channels))
    assert x.shape == shape and x.dtype == y.dtype
    assert x.flags.c_contiguous, "return a C-contiguous array"
    for b, channel, row, col in itertools.product(range(n), range(channels), range(h), range(w)):
        assert x[b, channel, row, col] == y[b, channel // 4, row, col, channel % 4]
    original = rng.standard_normal(shape).astype(np.float32)
    np.testing.assert_array_equal(impl.nc4hw4_to_nchw(impl.nchw_to_nc4hw4(original), channels), original)


@ex(3)
@pytest.mark.parametrize("c", [4, 16])
def test_nc4hw4_agrees_with_tinyinfer_layout_module(impl, c):
    x = np.random.default_rng(2).standard_normal((2, 11, 3, 4)).astype(np.float32)
    np.testing.assert_array_equal(impl.nchw_to_nc4hw4(x, c), engine_layout.nchw_to_nchwc(x, c))
    blocked = engine_layout.nchw_to_nchwc(x, c)
    np.testing.assert_array_equal(impl.nc4hw4_to_nchw(blocked, 11), x)


@ex(3)
def test_nc4hw4_keeps_integer_dtypes(impl):
    x = np.arange(2 * 5 * 2 * 3, dtype=np.int32).reshape(2, 5, 2, 3)
    y = impl.nchw_to_nc4hw4(x)
    assert y.dtype == np.int32
    np.testing.assert_array_equal(impl.nc4hw4_to_nchw(y, 5), x)


@ex(3)
@pytest.mark.parametrize("channels", [4, 9, 0])
def test_nc4hw4_to_nchw_rejects_channels_that_do_not_fit(impl, channels):
    y = np.zeros((1, 2, 2, 2, 4), np.float32)  # 2 blocks of 4 hold 5..8 channels
    with pytest.raises(ValueError):
        impl.nc4hw4_to_nchw(y, channels)


# ============================================================================ exercise 4
class BlockReader:
    """A matrix that can only be read by 2-D slices, and records every read."""

    def __init__(self, array: np.ndarray, name: str):
        self._array = array
        self.name = name
        self.shape = array.shape
        self.dtype = array.dtype
        self.reads: list[tuple[int, int, int, int]] = []  # row start, row stop, col start, col stop

    def __len__(self):
        return self.shape[0]

    def __getitem__(self, key):
        if not (isinstance(key, tuple) and len(key) == 2 and all(isinstance(k, slice) for k in key)):
            raise TypeError(f"read {self.name} by blocks, as {self.name}[i0:i1, j0:j1]; got index {key!r}")
        rows, cols = (range(*k.indices(size)) for k, size in zip(key, self.shape))
        if rows.step != 1 or cols.step != 1:
            raise TypeError(f"read contiguous blocks of {self.name} (no step)")
        self.reads.append((rows.start, rows.stop, cols.start, cols.stop))
        return self._array[key].copy()

    def __array__(self, *args, **kwargs):
        raise TypeError(f"read {self.name} by blocks, as {self.name}[i0:i1, j0:j1], not as a whole array")


def _check_reads(reader: BlockReader, max_rows: int, max_cols: int) -> None:
    covered = np.zeros(reader.shape, bool)
    for r0, r1, c0, c1 in reader.reads:
        assert r1 - r0 <= max_rows and c1 - c0 <= max_cols, (
            f"read {reader.name}[{r0}:{r1}, {c0}:{c1}] is larger than a block of {max_rows} x {max_cols}")
        covered[r0:r1, c0:c1] = True
    assert covered.all(), f"some elements of {reader.name} were never read"


# (M, N, K, mc, nc, kc): odd sizes, blocks that do not divide them, blocks larger than the matrix
GEMM_CASES = [
    (5, 5, 5, 2, 2, 2),
    (7, 11, 13, 3, 4, 5),
    (17, 9, 23, 8, 8, 8),
    (31, 29, 37, 16, 8, 12),
    (1, 13, 7, 4, 4, 4),
    (9, 1, 5, 2, 3, 2),
    (6, 8, 10, 64, 64, 64),
    (64, 48, 80, 32, 16, 24),
]


@ex(4)
@pytest.mark.parametrize("case", GEMM_CASES, ids=[f"gemm{i}" for i in range(len(GEMM_CASES))])
def test_blocked_matmul_matches_numpy(impl, case):
    m, n, k, mc, nc, kc = case
    rng = np.random.default_rng(sum(case))
    a, b = rng.standard_normal((m, k)), rng.standard_normal((k, n))
    got = np.asarray(impl.blocked_matmul(BlockReader(a, "a"), BlockReader(b, "b"), mc, nc, kc))
    assert got.shape == (m, n)
    # float64 sums of at most 80 products in another order: well under 1e-12 of the sum's size.
    np.testing.assert_allclose(got, a @ b, rtol=1e-12, atol=1e-12 * math.sqrt(k))


@ex(4)
@pytest.mark.parametrize("case", GEMM_CASES, ids=[f"gemm{i}" for i in range(len(GEMM_CASES))])
def test_blocked_matmul_reads_blocks(impl, case):
    m, n, k, mc, nc, kc = case
    rng = np.random.default_rng(1)
    a, b = BlockReader(rng.standard_normal((m, k)), "a"), BlockReader(rng.standard_normal((k, n)), "b")
    impl.blocked_matmul(a, b, mc, nc, kc)
    _check_reads(a, mc, kc)
    _check_reads(b, kc, nc)
    # Every (M block, K block) pair of A and (K block, N block) pair of B is needed at least once.
    assert len(a.reads) >= math.ceil(m / mc) * math.ceil(k / kc), "too few reads of A: is every block used?"
    assert len(b.reads) >= math.ceil(k / kc) * math.ceil(n / nc), "too few reads of B: is every block used?"


@ex(4)
def test_blocked_matmul_docstring_counts(impl):
    rng = np.random.default_rng(5)
    a, b = BlockReader(rng.standard_normal((5, 5)), "a"), BlockReader(rng.standard_normal((5, 5)), "b")
    got = impl.blocked_matmul(a, b, 2, 2, 2)
    np.testing.assert_allclose(got, a._array @ b._array, rtol=1e-12, atol=1e-12)
    assert len(b.reads) == 9, "Goto's loop order reads each of B's 3 x 3 blocks once"
    assert len(a.reads) == 27, "and A's 3 x 3 blocks once per block column of C (3 times)"


@ex(4)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_blocked_matmul_result_dtype(impl, dtype):
    rng = np.random.default_rng(2)
    a = rng.standard_normal((10, 7)).astype(dtype)
    b = rng.standard_normal((7, 6)).astype(np.float32)
    got = np.asarray(impl.blocked_matmul(BlockReader(a, "a"), BlockReader(b, "b"), 4, 4, 4))
    assert got.dtype == np.result_type(dtype, np.float32)
    # float32: 7 products per sum, a few ulps of float32.
    np.testing.assert_allclose(got, a.astype(np.float64) @ b.astype(np.float64), rtol=1e-5, atol=1e-5)
