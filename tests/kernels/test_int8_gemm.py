"""The int8 GEMM (u8 x s8 -> s32, requantized) against exact integer math, the QLinearMatMul reference and ONNX Runtime.

Oracles: :func:`qgemm_naive` (int64 products, the definition), the reference op
``tinyinfer.ops.quantize.QLinearMatMul`` (float64 requantization of the exact int32 sum),
and ONNX Runtime on a one-node QLinearMatMul model.

Tolerance: the accumulation is exact (integers), so the only possible difference is the
requantization's rounding. The kernel's fixed-point multiplier holds the float32 multiplier
exactly and rounds once, half to even, as the reference does: equal except when the
reference's float64 product itself rounds across a half, so we allow 1 LSB (and in these
tests see 0). gemmlowp's two roundings are allowed 1 LSB. ONNX Runtime: 1 LSB.
"""

from __future__ import annotations

import numba
import numpy as np
import pytest

import tinyinfer as ti
from tinyinfer.ir import Node, Value
from tinyinfer.kernels import candidates
from tinyinfer.kernels import int8_gemm as g
from tinyinfer.ops import OPS

LSB = 1


def _operands(rng, m, n, k, per_column):
    a = rng.integers(0, 256, (m, k), dtype=np.uint8)
    b = rng.integers(-127, 128, (k, n), dtype=np.int8)
    size = n if per_column else 1
    multiplier = (rng.uniform(0.5, 2.0, size) / (40.0 * k)).astype(np.float32)
    return a, b, multiplier


def _lsb(x, y) -> int:
    return int(np.abs(x.astype(np.int64) - y.astype(np.int64)).max()) if x.size else 0


@pytest.mark.parametrize("m, n, k", [(1, 1, 1), (5, 7, 3), (17, 33, 50), (8, 32, 64), (9, 65, 4), (64, 40, 1030)])
@pytest.mark.parametrize("per_column", [False, True])
def test_qgemm_matches_the_definition(m, n, k, per_column):
    rng = np.random.default_rng(m * 1000 + n + k)
    a, b, multiplier = _operands(rng, m, n, k, per_column)
    bias = rng.integers(-3000, 3000, n).astype(np.int32)
    for y_zero, b_zero, relu in ((np.uint8(120), 0, False), (np.int8(-7), 3, True)):
        want = g.qgemm_naive(a, 131, b, b_zero, multiplier, y_zero, bias=bias, relu=relu)
        got = g.qgemm(a, 131, b, b_zero, multiplier, y_zero, bias=bias, relu=relu)
        assert got.dtype == want.dtype and got.shape == (m, n)
        assert _lsb(got, want) <= LSB
        if relu:
            assert got.min() >= y_zero


def test_gemmlowp_rounding_stays_within_one_lsb_of_the_exact_one():
    rng = np.random.default_rng(1)
    a, b, multiplier = _operands(rng, 12, 20, 300, True)
    exact = g.qgemm_naive(a, 128, b, 0, multiplier, np.uint8(128))
    gemmlowp = g.qgemm_naive(a, 128, b, 0, multiplier, np.uint8(128), rounding="gemmlowp")
    assert _lsb(exact, gemmlowp) <= 1


def test_quantize_multiplier_is_exact_for_float32():
    multipliers = np.array([1e-6, 3.7e-4, 0.013, 0.5, 0.99, 1.0, 7.25, 1e-12, 0.0], np.float32)
    q, shift = g.quantize_multiplier(multipliers)
    back = np.ldexp(q.astype(np.float64), -shift.astype(np.int32))
    tiny = multipliers.astype(np.float64) * 2.0 ** 31 < 0.5  # cannot move any int32 past one half
    np.testing.assert_array_equal(back[~tiny], multipliers[~tiny].astype(np.float64))
    assert np.all(q[tiny] == 0) and np.all((shift >= 1) & (shift <= 63))
    with pytest.raises(ValueError, match="2\\*\\*30"):
        g.quantize_multiplier(np.float32(2.0 ** 31))


def test_requantize_rounds_half_to_even():
    q, shift = g.quantize_multiplier(np.float32(0.5))
    got = [int(g.requantize_fixed(acc, q[()], shift[()])) for acc in (-3, -1, 1, 3, 5, 2, -2)]
    assert got == [-2, 0, 0, 2, 2, 1, -1]  # -1.5, -0.5, 0.5, 1.5, 2.5 -> even; 1, -1 exact


@numba.njit(cache=True)
def _requantize_vector(acc, q, shift, zero, low, high):
    """:func:`requantize_store` on 16 int32 lanes at a time, into int64 so saturation is visible."""
    y = np.empty(acc.size, np.uint8)
    for at in range(0, acc.size, g.LANES):
        count = min(g.LANES, acc.size - at)
        lanes = g.load_i32x16_first(acc, at, count)
        g.requantize_store(y, at, count, lanes, g.splat_i64x16(q), g.splat_i64x16(shift), zero, low, high)
    return y


@pytest.mark.parametrize("multiplier", [0.5, 0.25, 2.0 ** -20, 3.7e-4, 0.013, 0.99, 7.25, 1e-12])
def test_vector_requantize_equals_the_scalar_twin_bit_for_bit(multiplier):
    q, shift = (int(v) for v in g.quantize_multiplier(np.float32(multiplier)))
    rng = np.random.default_rng(int(multiplier * 1e6) % 1000)
    ties = (np.arange(-40, 41) << max(shift - 1, 0)) // max(q, 1)  # near-ties of every parity
    acc = np.concatenate([rng.integers(-2 ** 31, 2 ** 31, 400), ties, [-2 ** 31, 2 ** 31 - 1, 0, 1, -1]])
    acc = np.clip(acc, -2 ** 31, 2 ** 31 - 1).astype(np.int32)
    want = np.array([g.requantize_fixed(a, q, shift) for a in acc]) + 10
    want = np.clip(want, 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(_requantize_vector(acc, q, shift, 10, 0, 255), want)  # exact: same integers


def _qmatmul_node(a_shape, b, b_scale, b_zero, y_zero):
    consts = [np.float32(0.02), np.uint8(131), b, b_scale, b_zero, np.float32(0.05 * np.sqrt(b.shape[0])), y_zero]
    values = [Value("a", np.uint8, a_shape)] + [
        Value(f"c{i}", np.asarray(v).dtype, np.asarray(v).shape, const=np.asarray(v)) for i, v in enumerate(consts)]
    node = Node("QLinearMatMul", [v.name for v in values], ["y"], name="qmm")
    return node, values, consts


@pytest.mark.parametrize("a_shape, n", [((3, 10), 7), ((2, 5, 33), 40)])
@pytest.mark.parametrize("per_column", [False, True])
def test_qlinear_matmul_kernel_matches_the_reference(a_shape, n, per_column):
    rng = np.random.default_rng(len(a_shape) + n)
    k = a_shape[-1]
    b = rng.integers(-127, 128, (k, n), dtype=np.int8)
    b_scale = rng.uniform(0.005, 0.02, n).astype(np.float32) if per_column else np.float32(0.01)
    node, values, consts = _qmatmul_node(a_shape, b, b_scale, np.int8(0), np.uint8(100))
    assert "int8_gemm" in {kern.name for kern in candidates(node, values)}
    a = rng.integers(0, 256, a_shape, dtype=np.uint8)
    got = g.build_qlinear_matmul(node, values, [])(node, a, *consts)
    want = OPS[("", "QLinearMatMul")].reference(node, a, *consts)
    assert got.dtype == want.dtype and got.shape == want.shape
    assert _lsb(got, want) <= LSB


def test_predicate_refuses_what_the_kernel_cannot_do():
    b = np.ones((4, 3), np.int8)
    node, values, _ = _qmatmul_node((2, 4), b, np.float32(0.01), np.int8(0), np.uint8(0))
    assert g._supports_qlinear_matmul(node, values)
    int8_a = list(values)
    int8_a[0] = Value("a", np.int8, (2, 4))
    assert not g._supports_qlinear_matmul(node, int8_a)  # s8 x s8: not this kernel
    varying_zero = list(values)
    varying_zero[5] = Value("z", np.int8, (3,), const=np.array([0, 1, 2], np.int8))
    assert not g._supports_qlinear_matmul(node, varying_zero)
    runtime_b = list(values)
    runtime_b[3] = Value("b", np.int8, (4, 3))
    assert not g._supports_qlinear_matmul(node, runtime_b)


def test_micro_kernel_uses_vnni_when_the_cpu_has_it():
    if not g.HAS_VNNI:
        pytest.skip("no AVX-512 VNNI on this CPU: the portable dot product runs")
    assert g.micro_kernel_asm().count("vpdpbusd") >= 16


def test_numba_session_runs_qlinear_matmul_on_the_int8_gemm_and_matches_onnxruntime():
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(7)
    b = rng.integers(-127, 128, (48, 24), dtype=np.int8)
    inits = [numpy_helper.from_array(np.array(v), name) for name, v in [
        ("a_s", np.float32(0.02)), ("a_z", np.uint8(128)), ("b", b), ("b_s", np.float32(0.01)),
        ("b_z", np.int8(0)), ("y_s", np.float32(0.3)), ("y_z", np.uint8(110))]]
    node = helper.make_node("QLinearMatMul", ["a", "a_s", "a_z", "b", "b_s", "b_z", "y_s", "y_z"], ["y"])
    graph = helper.make_graph([node], "qmm", [helper.make_tensor_value_info("a", TensorProto.UINT8, [5, 48])],
                              [helper.make_tensor_value_info("y", TensorProto.UINT8, [5, 24])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    a = rng.integers(0, 256, (5, 48), dtype=np.uint8)
    sess = ti.InferenceSession(model, backend="numba", select="cost")  # cost hints: no timing noise
    (got,) = sess.run(None, {"a": a})
    (want,) = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"a": a})
    assert _lsb(got, want) <= LSB
    (record,) = sess.profile().records
    assert record.kernel == "int8_gemm"


@pytest.mark.parametrize("trans_b, per_column, bias", [(0, False, True), (1, True, False)])
def test_qlinear_gemm_kernel_matches_the_reference(trans_b, per_column, bias):
    rng = np.random.default_rng(11 + trans_b)
    m, k, n = 6, 37, 19
    b = rng.integers(-127, 128, (n, k) if trans_b else (k, n), dtype=np.int8)
    b_scale = rng.uniform(0.005, 0.02, n).astype(np.float32) if per_column else np.float32(0.01)
    consts = [np.float32(0.02), np.uint8(131), b, b_scale, np.int8(0)]
    if bias:
        consts.append(rng.integers(-3000, 3000, n).astype(np.int32))
    consts += [np.float32(0.4), np.int8(3)]
    values = [Value("a", np.uint8, (m, k))] + [
        Value(f"c{i}", np.asarray(v).dtype, np.asarray(v).shape, const=np.asarray(v)) for i, v in enumerate(consts)]
    node = Node("QLinearGemm", [v.name for v in values], ["y"], {"transB": trans_b}, "ai.tinyinfer", "qgemm")
    assert "int8_gemm" in {kern.name for kern in candidates(node, values)}
    a = rng.integers(0, 256, (m, k), dtype=np.uint8)
    got = g.build_qlinear_gemm(node, values, [])(node, a, *consts)
    want = OPS[("ai.tinyinfer", "QLinearGemm")].reference(node, a, *consts)
    assert got.dtype == want.dtype and got.shape == want.shape
    assert _lsb(got, want) <= LSB
