"""The packed GEMM (tinyinfer/kernels/gemm.py) and its kernels for MatMul, Gemm and FusedGemm.

Oracles: ``np.matmul`` in float64 (for gemm and gemm_naive), the reference ops
(``tinyinfer.ops``) for the registered kernels, and ONNX Runtime for a whole model.

Tolerance: float32 inputs are exact in float64, so the float64 product is the exact answer
up to 1e-16. A float32 sum of K products, in any order and with or without FMA, is off by
at most about ``K * eps32 * sum_p |a_ip| |b_pj|`` (the classic bound for recursive
summation, Higham, "Accuracy and Stability of Numerical Algorithms", ch. 3), so each
element is checked against that bound, computed from ``|A| @ |B|``. It is tight enough to
catch a single wrong or missing term (a term is on average ``1/K`` of that sum, far more
than ``K * eps``), and loose enough for any summation order.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import tinyinfer as ti
from tinyinfer.ir import Node, Value
from tinyinfer.kernels import KERNELS
from tinyinfer.kernels import gemm as g
from tinyinfer.ops import OPS, prepare_node

EPS32 = float(np.finfo(np.float32).eps)
SIZES = (1, 3, 7, 17, 63, 64, 65, 127, 200)


def _close(got, a, b, extra=None, scale=1.0):
    """Assert ``got`` is ``a @ b`` (+ extra) within the float32 summation bound (module docstring)."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    want = scale * (a64 @ b64) + (0.0 if extra is None else extra)
    k = a.shape[1]
    bound = (k + 2) * EPS32 * (abs(scale) * (np.abs(a64) @ np.abs(b64)) + np.abs(want)) + 1e-30
    assert got.dtype == np.float32 and got.shape == want.shape
    excess = np.abs(got - want) - bound
    assert excess.max(initial=-1) <= 0, f"worst element off by {excess.max():.3g} beyond the bound"


def _rand(rng, *shape):
    return rng.standard_normal(shape, dtype=np.float32)


# ============================================================================ gemm and gemm_naive
@pytest.mark.parametrize("m", SIZES)
def test_gemm_matches_float64_matmul_on_odd_sizes(m):
    rng = np.random.default_rng(m)
    for n in SIZES:
        for k in SIZES:
            a, b = _rand(rng, m, k), _rand(rng, k, n)
            _close(g.gemm(a, b), a, b)


@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (1, 7, 65), (65, 1, 7), (7, 65, 1), (7, 65, 3), (65, 7, 300),
                                   (127, 200, 63), (9, 70, 600)])
def test_gemm_transposes_through_packing(trans_a, trans_b, m, n, k):
    rng = np.random.default_rng(m * n + k)
    a = _rand(rng, k, m) if trans_a else _rand(rng, m, k)
    b = _rand(rng, n, k) if trans_b else _rand(rng, k, n)
    got = g.gemm(a, b, trans_a=trans_a, trans_b=trans_b)
    _close(got, a.T if trans_a else a, b.T if trans_b else b)


def test_gemm_reads_fortran_ordered_and_strided_inputs():
    rng = np.random.default_rng(1)
    a, b = _rand(rng, 40, 33), _rand(rng, 70, 33)
    _close(g.gemm(a, b.T), a, b.T)  # b.T is Fortran-ordered: no copy, packed through strides
    wide = _rand(rng, 40, 66)
    _close(g.gemm(wide[:, ::2], b.T), wide[:, ::2], b.T)  # neither order: copied once
    _close(g.gemm(a.astype(np.float64), b.T), a, b.T)  # other dtypes are converted to float32


@pytest.mark.parametrize("m", [1, 7, 17, 64])
def test_gemm_naive_matches_float64_matmul(m):
    rng = np.random.default_rng(m)
    for n, k in [(1, 1), (3, 65), (63, 7), (33, 17)]:
        a, b = _rand(rng, m, k), _rand(rng, k, n)
        out = np.empty((m, n), np.float32)
        _close(g.gemm_naive(a, b, out), a, b)


@pytest.mark.parametrize("c_shape", [(), (1,), (50,), (1, 50), (37, 1), (37, 50)])
@pytest.mark.parametrize("alpha,beta", [(1.0, 1.0), (0.5, -2.0), (-1.5, 0.0)])
def test_gemm_alpha_beta_and_broadcast_c(c_shape, alpha, beta):
    rng = np.random.default_rng(len(c_shape))
    a, b, c = _rand(rng, 37, 300), _rand(rng, 300, 50), _rand(rng, *c_shape)
    got = g.gemm(a, b, alpha=alpha, beta=beta, c=c)
    _close(got, a, b, extra=beta * c.astype(np.float64), scale=alpha)


def test_gemm_with_c_as_out_accumulates_like_blas():
    rng = np.random.default_rng(2)
    a, b = _rand(rng, 20, 45), _rand(rng, 45, 70)
    y = _rand(rng, 20, 70)
    before = y.astype(np.float64)
    assert g.gemm(a, b, out=y, alpha=2.0, beta=0.5, c=y) is y
    _close(y, a, b, extra=0.5 * before, scale=2.0)


def test_gemm_writes_into_out_of_any_layout():
    rng = np.random.default_rng(3)
    a, b = _rand(rng, 9, 8), _rand(rng, 8, 35)
    out = np.zeros((35, 9), np.float32).T  # Fortran-ordered
    assert g.gemm(a, b, out=out) is out
    _close(out, a, b)


def test_gemm_with_empty_sum_is_the_addend():
    a, b, c = np.ones((5, 0), np.float32), np.ones((0, 40), np.float32), np.arange(40, dtype=np.float32)
    np.testing.assert_array_equal(g.gemm(a, b), np.zeros((5, 40)))
    np.testing.assert_array_equal(g.gemm(a, b, beta=2.0, c=c, activation="Relu"), np.broadcast_to(2 * c, (5, 40)))
    assert g.gemm(np.ones((0, 4), np.float32), np.ones((4, 3), np.float32)).shape == (0, 3)


def test_prepacked_operands_give_the_same_product():
    rng = np.random.default_rng(4)
    a, b = _rand(rng, 70, 530), _rand(rng, 41, 530)  # K = 530: three KC blocks, the last partial
    packed_a, packed_b = g.prepack_a(a), g.prepack_b(b, trans_b=True)
    assert packed_b.shape == (530, 41) and packed_b.data.size == 530 * 64  # N padded to 2 x NR
    expected = g.gemm(a, b, trans_b=True)
    for left, right in [(packed_a, b.T), (a, packed_b), (packed_a, packed_b)]:
        got = g.gemm(left, right)
        _close(got, a, b.T)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * np.abs(expected).max())


def test_gemm_rejects_mismatched_operands():
    a, b = np.ones((3, 4), np.float32), np.ones((5, 6), np.float32)
    with pytest.raises(ValueError, match="inner sizes differ"):
        g.gemm(a, b)
    with pytest.raises(ValueError, match="prepack_b"):
        g.gemm(a, g.prepack_a(np.ones((4, 6), np.float32)))
    with pytest.raises(ValueError, match="does not broadcast"):
        g.gemm(a, np.ones((4, 6), np.float32), beta=1.0, c=np.ones(5, np.float32))
    with pytest.raises(ValueError, match="activation"):
        g.gemm(a, np.ones((4, 6), np.float32), activation="Swish")


@pytest.mark.parametrize("threads", [1, 2])
def test_parallel_and_serial_paths_agree(threads):
    rng = np.random.default_rng(5)
    a, b = _rand(rng, 130, 300), _rand(rng, 300, 550)  # big enough to run in parallel
    _close(g.gemm(a, b, threads=threads), a, b)


@pytest.mark.parametrize("m,n", [(64, 3136), (2048, 49), (1024, 1024), (1, 1000), (5, 5), (200, 7)])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_task_plan_cuts_the_larger_side_into_one_equal_part_per_thread(m, n, threads):
    mt, nt = g.plan_tasks(m, n, threads)
    rows, cols = -(-m // mt), -(-n // nt)
    assert rows * cols <= threads and (rows == 1 or cols == 1)
    assert (mt % g.MR == 0 or mt == m) and (nt % g.NR == 0 or nt == n)
    if rows > 1:
        assert m >= n and m - (rows - 1) * mt > 0  # the last part is not empty
    if cols > 1:
        assert n - (cols - 1) * nt > 0


def test_micro_kernel_compiles_to_fused_multiply_adds_on_vector_registers():
    asm = g.micro_kernel_asm()
    assert "vfmadd" in asm  # 16 FMAs per step of K; zmm on AVX-512 machines, ymm/xmm elsewhere


# ============================================================================ registered kernels
def _node(op_type, n_inputs, domain="", version=13, **attrs):
    node = Node(op_type, [f"in{i}" for i in range(n_inputs)], ["y"], attrs, domain, f"{op_type.lower()}0")
    prepare_node(node, 1 if domain else version)
    return node


def _kernel(op_type, domain=""):
    (kernel,) = [k for k in KERNELS[(domain, op_type)] if k.name == "gemm_packed"]
    return kernel


def _values(arrays, const):
    return [None if x is None else Value(f"in{i}", x.dtype, x.shape, x if i in const else None)
            for i, x in enumerate(arrays)]


def _check_kernel(node, arrays, const=()):
    """The kernel supports the node, and its output matches the reference op's."""
    op = OPS[(node.domain, node.op_type)]
    kernel = _kernel(node.op_type, node.domain)
    inputs = _values(arrays, const)
    assert kernel.supports(node, inputs)
    assert kernel.cost(node, inputs) > 0
    fn = kernel.build(node, inputs, [Value("y")])
    got, want = fn(node, *arrays), op.reference(node, *arrays)
    assert got.dtype == want.dtype and got.shape == want.shape
    k = arrays[0].shape[-1] if node.op_type == "MatMul" else max(arrays[0].shape)
    np.testing.assert_allclose(got, want, rtol=(k + 2) * EPS32 * 4, atol=(k + 2) * EPS32 * 4 * (np.abs(want).max() + 1))


@pytest.mark.parametrize("trans_a,trans_b", [(0, 0), (1, 0), (0, 1), (1, 1)])
@pytest.mark.parametrize("c_shape", [None, (1,), (33,), (5, 1), (5, 33)])
@pytest.mark.parametrize("b_const", [False, True])
def test_gemm_kernel_matches_reference(trans_a, trans_b, c_shape, b_const):
    rng = np.random.default_rng(7)
    a = _rand(rng, 70, 5) if trans_a else _rand(rng, 5, 70)
    b = _rand(rng, 33, 70) if trans_b else _rand(rng, 70, 33)
    arrays = [a, b] + ([] if c_shape is None else [_rand(rng, *c_shape)])
    node = _node("Gemm", len(arrays), alpha=0.75, beta=1.5, transA=trans_a, transB=trans_b)
    _check_kernel(node, arrays, const={1} if b_const else ())


@pytest.mark.parametrize("activation,params", [
    ("Identity", []), ("Relu", []), ("Clip", [0.0, 6.0]), ("LeakyRelu", [0.1]), ("HardSwish", []),
    ("Sigmoid", []), ("Tanh", []), ("HardSigmoid", [0.2, 0.5]),
])
def test_fused_gemm_kernel_applies_the_activation_in_its_store(activation, params):
    rng = np.random.default_rng(8)
    a, b, c = 3 * _rand(rng, 19, 40), _rand(rng, 66, 40), _rand(rng, 66)
    node = _node("FusedGemm", 3, domain="ai.tinyinfer", transB=1, activation=activation, activation_params=params)
    _check_kernel(node, [a, b, c], const={1, 2})


@pytest.mark.parametrize("a_shape,b_shape", [
    ((5, 70), (70, 33)), ((70,), (70, 33)), ((2, 3, 17, 9), (9, 40)),  # 2-D B: one tall product
    ((4, 17, 9), (4, 9, 40)), ((3, 1, 6, 9), (2, 9, 5)), ((9,), (3, 9, 8)), ((2, 5, 9), (1, 9, 4)),
])
@pytest.mark.parametrize("b_const", [False, True])
def test_matmul_kernel_matches_reference(a_shape, b_shape, b_const):
    rng = np.random.default_rng(9)
    _check_kernel(_node("MatMul", 2), [_rand(rng, *a_shape), _rand(rng, *b_shape)], const={1} if b_const else ())


def test_kernels_refuse_what_they_cannot_do():
    f32, f64 = np.dtype(np.float32), np.dtype(np.float64)
    gemm_node, matmul_node = _node("Gemm", 2), _node("MatMul", 2)
    assert not _kernel("Gemm").supports(gemm_node, [Value("a", f64, (3, 4)), Value("b", f64, (4, 5))])
    assert not _kernel("Gemm").supports(gemm_node, [Value("a", f32, ("N", 4)), Value("b", f32, (4, 5))])
    assert not _kernel("MatMul").supports(matmul_node, [Value("a", f32, (3, 4)), Value("b", f32, (4,))])
    assert not _kernel("MatMul").supports(matmul_node, [Value("a", f32, None), Value("b", f32, (4, 5))])


# ============================================================================ in a session
def _mlp(rng):
    """x (N, 20) -> MatMul + Add + Relu -> Gemm(transB) + Sigmoid -> MatMul: an MLP with three products."""
    w1, b1 = _rand(rng, 20, 48), _rand(rng, 48)
    w2, b2 = _rand(rng, 30, 48), _rand(rng, 30)
    w3 = _rand(rng, 30, 10)
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h1"], name="fc1"),
        helper.make_node("Add", ["h1", "b1"], ["h1b"], name="fc1_bias"),
        helper.make_node("Relu", ["h1b"], ["a1"], name="relu1"),
        helper.make_node("Gemm", ["a1", "w2", "b2"], ["h2"], name="fc2", transB=1),
        helper.make_node("Sigmoid", ["h2"], ["a2"], name="sigmoid2"),
        helper.make_node("MatMul", ["a2", "w3"], ["y"], name="fc3"),
    ]
    inits = [numpy_helper.from_array(v, n) for n, v in [("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2), ("w3", w3)]]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 20])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("opt_level", ["O0", "O2"])
def test_numba_session_runs_the_mlp_on_the_gemm_kernel_and_matches_onnxruntime(opt_level):
    ort = pytest.importorskip("onnxruntime")
    rng = np.random.default_rng(10)
    model = _mlp(rng)
    x = _rand(rng, 6, 20)
    sess = ti.InferenceSession(model, backend="numba", select="cost", opt_level=opt_level)
    (got,) = sess.run(None, {"x": x})
    (want,) = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    products = [r for r in sess.profile().records if r.op_type in ("MatMul", "Gemm", "FusedGemm")]
    assert len(products) == 3 and all(r.kernel == "gemm_packed" for r in products)
    if opt_level == "O2":  # MatMul + Add + Relu and Gemm + Sigmoid were fused
        assert sorted(r.op_type for r in products) == ["FusedGemm", "FusedGemm", "MatMul"]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("groups, m, k, n", [(4, 34, 34, 784), (3, 5, 7, 9), (2, 17, 300, 40)])
def test_grouped_gemm_is_one_product_per_group_with_residual_bias_and_activation(threads, groups, m, k, n):
    rng = np.random.default_rng(groups * m)
    a = _rand(rng, groups, m, k)
    b = _rand(rng, groups, k, n)
    c = _rand(rng, groups, m, n)
    bias = _rand(rng, groups * m)
    stacked = np.stack([g.prepack_a(a[i]).data for i in range(groups)])
    out = np.empty((groups, m, n), np.float32)
    g.gemm_grouped(stacked, b, out, c=c, row_bias=bias, activation="Relu", threads=threads)
    for i in range(groups):
        # relu(x) is within the bound of x: compare before the activation where x > 0
        want = a[i].astype(np.float64) @ b[i] + c[i] + bias[i * m:(i + 1) * m, None]
        bound = 4 * np.finfo(np.float32).eps * (k + 2) * (np.abs(a[i]) @ np.abs(b[i]) + np.abs(c[i]) + 1)
        assert np.all(np.abs(out[i] - np.maximum(want, 0)) <= bound)
    plain = np.empty((groups, m, n), np.float32)
    g.gemm_grouped(stacked, b, plain, threads=threads)
    for i in range(groups):
        _close(plain[i], a[i], b[i])
