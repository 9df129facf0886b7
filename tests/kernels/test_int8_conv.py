"""The int8 QLinearConv kernels (im2col + GEMM, QNNPACK indirect) against the reference op and ONNX Runtime.

Oracles: ``tinyinfer.ops.quantize.QLinearConv`` (exact integer convolution, float64
requantization of the int32 sum), and ONNX Runtime on one-node QLinearConv models.

Tolerance: at most 1 LSB of the output. The integer sums are exact; the kernels' fixed-point
requantization (Q31 multiplier holding the float32 multiplier exactly, one rounding half to
even) equals the reference's ``rint(acc * M)`` except when the reference's float64 product
rounds across a half — so 1 LSB is the bound, and these grids in fact see 0.
"""

from __future__ import annotations

import numpy as np
import pytest

import tinyinfer as ti
from tinyinfer.ir import Node, Value
from tinyinfer.kernels import candidates
from tinyinfer.kernels import int8_conv as ic
from tinyinfer.ops import OPS
from tinyinfer.ops.base import prepare_node

LSB = 1


def make_qconv(x_shape, m, kernel, *, stride=1, pads=(0, 0, 0, 0), dilation=1, per_channel=False, w_zero=0,
               y_dtype=np.uint8, bias=True, group=1, seed=0, auto_pad="NOTSET"):
    """A prepared QLinearConv node, its input Values (constants filled) and arrays."""
    rng = np.random.default_rng(seed)
    n, c, h, w = x_shape
    kh, kw = kernel
    x = rng.integers(0, 256, x_shape, dtype=np.uint8)
    weights = rng.integers(-127, 128, (m, c // group, kh, kw), dtype=np.int8)
    w_scale = rng.uniform(0.005, 0.02, m).astype(np.float32) if per_channel else np.float32(0.01)
    if per_channel and w_zero:
        w_zp = rng.integers(-w_zero, w_zero + 1, m).astype(np.int8)
    else:
        w_zp = np.full(m, w_zero, np.int8) if per_channel else np.int8(w_zero)
    y_zp = np.uint8(100) if y_dtype == np.uint8 else np.int8(-5)
    y_scale = np.float32(0.15 * np.sqrt(c // group * kh * kw))
    consts = [np.float32(0.03), np.uint8(120), weights, w_scale, w_zp, y_scale, y_zp]
    if bias:
        consts.append(rng.integers(-2000, 2000, m).astype(np.int32))
    values = [Value("x", np.uint8, x_shape)] + [
        Value(f"c{i}", np.asarray(v).dtype, np.asarray(v).shape, const=np.asarray(v)) for i, v in enumerate(consts)]
    attrs = {"kernel_shape": list(kernel), "strides": [stride, stride], "dilations": [dilation, dilation],
             "group": group, "auto_pad": auto_pad}
    if auto_pad == "NOTSET":
        attrs["pads"] = list(pads)
    node = Node("QLinearConv", [v.name for v in values], ["y"], attrs, "", "qconv")
    prepare_node(node, 10)
    return node, values, [x] + consts


def check(builder, node, values, arrays):
    got = builder(node, values, [])(node, *arrays)
    want = OPS[("", "QLinearConv")].reference(node, *arrays)
    assert got.dtype == want.dtype and got.shape == want.shape
    assert int(np.abs(got.astype(np.int64) - want.astype(np.int64)).max()) <= LSB


GRID = [
    # x shape, out channels, kernel, stride, pads, dilation
    ((1, 3, 7, 9), 5, (3, 3), 1, (1, 1, 1, 1), 1),
    ((2, 5, 8, 6), 33, (3, 3), 2, (0, 0, 0, 0), 1),
    ((1, 4, 9, 9), 40, (3, 3), 1, (2, 1, 0, 2), 2),
    ((1, 16, 5, 5), 8, (1, 1), 1, (0, 0, 0, 0), 1),
    ((1, 7, 11, 10), 70, (5, 5), 2, (2, 2, 2, 2), 1),
    ((1, 9, 6, 7), 12, (1, 3), 1, (0, 1, 0, 1), 1),
    ((1, 6, 9, 9), 9, (1, 1), 2, (0, 0, 0, 0), 1),
]


@pytest.mark.parametrize("x_shape, m, kernel, stride, pads, dilation", GRID)
@pytest.mark.parametrize("per_channel, y_dtype", [(False, np.uint8), (True, np.int8)])
def test_both_kernels_match_the_reference(x_shape, m, kernel, stride, pads, dilation, per_channel, y_dtype):
    node, values, arrays = make_qconv(x_shape, m, kernel, stride=stride, pads=pads, dilation=dilation,
                                      per_channel=per_channel, y_dtype=y_dtype, seed=m)
    assert {"qlinearconv_im2col", "qlinearconv_indirect"} <= {k.name for k in candidates(node, values)}
    check(ic.build_im2col, node, values, arrays)
    check(ic.build_indirect, node, values, arrays)


@pytest.mark.parametrize("per_channel", [False, True])
def test_im2col_handles_nonzero_weight_zero_points_and_the_indirect_kernel_declines(per_channel):
    node, values, arrays = make_qconv((1, 5, 7, 6), 11, (3, 3), pads=(1, 1, 1, 1), per_channel=per_channel,
                                      w_zero=3, bias=False)
    names = {k.name for k in candidates(node, values)}
    assert "qlinearconv_im2col" in names and "qlinearconv_indirect" not in names
    check(ic.build_im2col, node, values, arrays)


@pytest.mark.parametrize("x_shape, kernel, pads, w_zero", [
    ((5, 6, 4, 4), (3, 3), (1, 1, 1, 1), 0),   # small images: the whole batch is one GEMM
    ((3, 8, 5, 5), (1, 1), (0, 0, 0, 0), 0),   # ... a copy-free 1x1 conv too
    ((4, 5, 6, 6), (3, 3), (1, 1, 1, 1), 3),   # ... and weight zero points (per-column sums)
    ((2, 3, 17, 16), (3, 3), (1, 1, 1, 1), 0),  # 272 pixels: one GEMM per image
])
def test_im2col_over_a_batch_matches_the_reference(x_shape, kernel, pads, w_zero):
    node, values, arrays = make_qconv(x_shape, 12, kernel, pads=pads, w_zero=w_zero, per_channel=True, seed=7)
    s = ic.conv2d_sizes(node, x_shape, arrays[3].shape)
    assert ic.batched(s) == (s["oh"] * s["ow"] <= ic.BATCHED_BELOW_PIXELS)
    check(ic.build_im2col, node, values, arrays)


def test_indirect_kernel_leaves_large_copy_free_1x1_layers_to_im2col():
    large = make_qconv((1, 8, 9, 9), 16, (1, 1))  # 81 pixels: the image is im2col's column matrix
    small = make_qconv((1, 8, 7, 7), 16, (1, 1))
    padded = make_qconv((1, 8, 9, 9), 16, (1, 1), pads=(1, 1, 1, 1))  # needs columns: both kernels
    assert not ic._supports_indirect(*large[:2]) and ic._supports_im2col(*large[:2])
    assert ic._supports_indirect(*small[:2]) and ic._supports_indirect(*padded[:2])


def test_same_upper_padding():
    node, values, arrays = make_qconv((1, 4, 9, 8), 6, (3, 3), stride=2, auto_pad="SAME_UPPER")
    check(ic.build_im2col, node, values, arrays)
    check(ic.build_indirect, node, values, arrays)


def test_predicates_refuse_grouped_signed_input_and_runtime_weights():
    node, values, _ = make_qconv((1, 4, 6, 6), 4, (3, 3), group=2)
    assert not {"qlinearconv_im2col", "qlinearconv_indirect"} & {k.name for k in candidates(node, values)}
    node, values, _ = make_qconv((1, 4, 6, 6), 4, (3, 3))
    signed = [Value("x", np.int8, (1, 4, 6, 6))] + values[1:]
    assert not ic._supports_im2col(node, signed)
    runtime_w = values[:3] + [Value("w", np.int8, (4, 4, 3, 3))] + values[4:]
    assert not ic._supports_im2col(node, runtime_w) and not ic._supports_indirect(node, runtime_w)


def test_indirection_buffer_points_padding_taps_at_the_zero_point_pixel():
    node, values, _ = make_qconv((1, 4, 3, 3), 2, (3, 3), pads=(1, 1, 1, 1))
    sizes = ic.conv2d_sizes(node, (1, 4, 3, 3), (2, 4, 3, 3))
    buffer = ic.indirection_buffer(sizes, 4)
    assert buffer.shape == (9, 9)
    zero_pixel = 9 * 4
    assert buffer[0, 0] == zero_pixel and buffer[0, 4] == 0  # corner: top-left tap in the padding, centre on pixel 0
    assert buffer[4].tolist() == [4 * p for p in range(9)]  # the centre output sees the whole image


def _onnx_qconv_model(x_shape, weights, w_scale, bias, **attrs):
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(np.asarray(v), name) for name, v in [
        ("x_s", np.float32(0.03)), ("x_z", np.uint8(120)), ("w", weights), ("w_s", w_scale),
        ("w_z", np.zeros(np.shape(w_scale), np.int8)), ("y_s", np.float32(2.0)), ("y_z", np.uint8(90)), ("b", bias)]]
    node = helper.make_node("QLinearConv", ["x", "x_s", "x_z", "w", "w_s", "w_z", "y_s", "y_z", "b"], ["y"], **attrs)
    graph = helper.make_graph([node], "qconv", [helper.make_tensor_value_info("x", TensorProto.UINT8, list(x_shape))],
                              [helper.make_tensor_value_info("y", TensorProto.UINT8, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize("kernel_name", ["qlinearconv_im2col", "qlinearconv_indirect"])
def test_numba_session_picks_the_int8_kernel_and_matches_onnxruntime(kernel_name, monkeypatch):
    ort = pytest.importorskip("onnxruntime")
    from tinyinfer.kernels import registry

    # keep only the kernel under test, so the session must bind it (cost hints pick among the rest)
    kept = {key: [k for k in kernels if key != ("", "QLinearConv") or k.name == kernel_name]
            for key, kernels in registry.KERNELS.items()}
    monkeypatch.setattr(registry, "KERNELS", kept)
    rng = np.random.default_rng(3)
    weights = rng.integers(-127, 128, (16, 8, 3, 3), dtype=np.int8)
    w_scale = rng.uniform(0.005, 0.02, 16).astype(np.float32)
    bias = rng.integers(-500, 500, 16).astype(np.int32)
    model = _onnx_qconv_model((2, 8, 10, 9), weights, w_scale, bias, pads=[1, 1, 1, 1], strides=[2, 1])
    x = rng.integers(0, 256, (2, 8, 10, 9), dtype=np.uint8)
    sess = ti.InferenceSession(model, backend="numba", select="cost")
    (got,) = sess.run(None, {"x": x})
    (want,) = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    assert got.dtype == want.dtype and got.shape == want.shape
    assert int(np.abs(got.astype(np.int64) - want.astype(np.int64)).max()) <= LSB
    (record,) = sess.profile().records
    assert record.kernel == kernel_name



def _qdq_conv_add_model(x_shape, weights, w_scale, **attrs):
    """A QDQ residual join, ``Q(DQ(Q(conv(x))) + x)``, which O2 folds into one QLinearConvAdd."""
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(np.asarray(v), name) for name, v in [
        ("x_s", np.float32(0.03)), ("x_z", np.uint8(120)), ("w", weights), ("w_s", w_scale),
        ("w_z", np.zeros(np.shape(w_scale), np.int8)), ("c_s", np.float32(0.04)), ("c_z", np.uint8(130)),
        ("y_s", np.float32(0.05)), ("y_z", np.uint8(125))]]
    nodes = [helper.make_node("QuantizeLinear", ["x", "x_s", "x_z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "x_s", "x_z"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w", "w_s", "w_z"], ["wd"], axis=0),
             helper.make_node("Conv", ["xd", "wd"], ["c"], **attrs),
             helper.make_node("QuantizeLinear", ["c", "c_s", "c_z"], ["cq"]),
             helper.make_node("DequantizeLinear", ["cq", "c_s", "c_z"], ["cd"]),
             helper.make_node("Add", ["xd", "cd"], ["s"]),
             helper.make_node("QuantizeLinear", ["s", "y_s", "y_z"], ["y"])]
    graph = helper.make_graph(nodes, "qdq_conv_add", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
                              [helper.make_tensor_value_info("y", TensorProto.UINT8, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize("kernel_name", ["qlinearconv_im2col", "qlinearconv_indirect"])
@pytest.mark.parametrize("kernel,pads", [(1, [0, 0, 0, 0]), (3, [1, 1, 1, 1])])
def test_conv_with_residual_join_matches_the_unfused_pair(kernel_name, kernel, pads, monkeypatch):
    """QLinearConvAdd's kernel vs its reference (QLinearConv's, then QLinearAdd's): the same
    integers, the join being QLinearAdd's own float32 arithmetic. Vs the float QDQ chain and
    ONNX Runtime on the QDQ model: within 1 LSB (the conv's rounding, as for QLinearConv)."""
    ort = pytest.importorskip("onnxruntime")
    from tinyinfer.kernels import registry
    from tinyinfer.ops.qlinear import DOMAIN

    kept = {key: [k for k in kernels if key != (DOMAIN, "QLinearConvAdd") or k.name == kernel_name]
            for key, kernels in registry.KERNELS.items()}
    monkeypatch.setattr(registry, "KERNELS", kept)
    rng = np.random.default_rng(5)
    weights = rng.integers(-127, 128, (24, 24, kernel, kernel), dtype=np.int8)
    w_scale = rng.uniform(0.002, 0.004, 24).astype(np.float32) / kernel  # conv outputs of a few units
    model = _qdq_conv_add_model((2, 24, 7, 9), weights, w_scale, pads=pads)
    x = {"x": (rng.standard_normal((2, 24, 7, 9)) * 1.5).astype(np.float32)}
    fused = ti.InferenceSession(model, backend="numba", select="cost")
    assert fused.graph.op_histogram()["ai.tinyinfer:QLinearConvAdd"] == 1
    (got,) = fused.run(None, x)
    assert [r.kernel for r in fused.profile().records if r.op_type == "QLinearConvAdd"] == [kernel_name]
    (reference,) = ti.InferenceSession(model).run(None, x)  # the same graph on the reference ops
    np.testing.assert_array_equal(got, reference)
    (chain,) = ti.InferenceSession(model, opt_level="O1").run(None, x)  # the QDQ chain, in float
    (want,) = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, x)
    for other in (chain, want):
        assert int(np.abs(got.astype(np.int64) - other.astype(np.int64)).max()) <= LSB
