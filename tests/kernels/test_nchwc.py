"""The blocked convolution ConvNCHWc: its reference against ONNX's Conv, its Numba kernels
against its reference, and the blocked pooling ops against the standard ones.

Tolerances: the kernels sum ``C * KH * KW`` float32 products in another order than the
reference's BLAS matrix product (and fuse multiply and add), so results differ by float32
rounding that grows with the length of the sum: ``rtol = 1e-4`` and an absolute floor of
``1e-5`` times the largest output, the same rule the kernel selector uses (loosened by 10x).
The reference itself computes exactly the standard Conv on the same numbers, so it is
compared with ONNX Runtime at ``rtol = 1e-5``.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import tinyinfer as ti
from tinyinfer.errors import InvalidAttributeError, ShapeInferenceError
from tinyinfer.ir import Node, Value
from tinyinfer.kernels import candidates, nchwc
from tinyinfer.ops import OPS, prepare_node
from tinyinfer.ops.layout import block_conv_weights, from_blocked, to_blocked, unblock_conv_weights

DOMAIN = "ai.tinyinfer"
CONV = OPS[(DOMAIN, "ConvNCHWc")]


def _close(got, expected, rtol=1e-4):
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=1e-5 * max(float(np.abs(expected).max()), 1e-6))


def _conv_node(channels, out_channels, *, group=1, inputs=("x", "w", "b"), **attrs):
    all_attrs = {"in_channels": channels, "out_channels": out_channels, "group": group, **attrs}
    node = Node("ConvNCHWc", list(inputs), ["y"], all_attrs, DOMAIN, "conv")
    prepare_node(node, 1)
    return node


def _case(channels, out_channels, size, kernel, *, block=8, group=1, residual=False, seed=0, **attrs):
    """(node, blocked arrays, their Values) for one ConvNCHWc problem on random data."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, channels, *size)).astype(np.float32)
    w = rng.standard_normal((out_channels, channels // group, kernel, kernel)).astype(np.float32)
    b = rng.standard_normal(out_channels).astype(np.float32)
    node = _conv_node(channels, out_channels, group=group, inputs=("x", "w", "b", "z")[: 3 + residual],
                      kernel_shape=[kernel, kernel], **attrs)
    arrays = [to_blocked(x, block), block_conv_weights(w, block, group), b]
    values = [Value("x", np.float32, arrays[0].shape), Value("w", np.float32, arrays[1].shape, const=arrays[1]),
              Value("b", np.float32, b.shape, const=b)]
    if residual:
        (y,) = CONV.infer(node, values)
        arrays.append(rng.standard_normal(y.shape).astype(np.float32))
        values.append(Value("z", np.float32, y.shape))
    return node, arrays, values


# ============================================================================ the reference
def _onnx_conv(x, w, b, **attrs):
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.mark.parametrize("channels,out_channels,group,attrs", [
    (3, 5, 1, {"pads": [1, 1, 1, 1]}),
    (13, 20, 1, {"strides": [2, 2], "pads": [0, 1, 2, 1]}),
    (8, 16, 1, {"dilations": [2, 2], "pads": [2, 2, 2, 2]}),
    (12, 12, 12, {"pads": [1, 1, 1, 1], "strides": [2, 1]}),
    (17, 17, 17, {"auto_pad": "SAME_UPPER"}),
])
def test_reference_equals_onnx_conv_in_blocked_form(channels, out_channels, group, attrs):
    node, (xb, wb, b), _ = _case(channels, out_channels, (9, 7), 3, group=group, **attrs)
    x = from_blocked(xb, channels)
    w = unblock_conv_weights(wb, out_channels, channels // group, group)
    expected = _onnx_conv(x, w, b, kernel_shape=[3, 3], group=group, **attrs)
    got = CONV.reference(node, xb, wb, b)
    assert got.shape == to_blocked(expected, 8).shape == tuple(CONV.infer(node, [Value("x", np.float32, xb.shape),
                                                                                  Value("w", np.float32, wb.shape)])[0].shape)
    _close(from_blocked(got, out_channels), expected, rtol=1e-5)
    assert not got[:, -1, ..., out_channels % 8 or 8:].any()  # padding lanes of Y are zero


def test_reference_applies_residual_then_activation():
    node, arrays, _ = _case(5, 6, (4, 4), 1, residual=True, activation="Clip", activation_params=[0.0, 0.5])
    xb, wb, b, zb = arrays
    conv = np.einsum("nchw,mc->nmhw", from_blocked(xb, 5), unblock_conv_weights(wb, 6, 5)[:, :, 0, 0])
    expected = np.clip(conv + b[:, None, None] + from_blocked(zb, 6), 0.0, 0.5)
    _close(from_blocked(CONV.reference(node, *arrays), 6), expected, rtol=1e-5)


def test_weight_blocking_round_trips():
    w = np.random.default_rng(1).standard_normal((20, 13, 3, 1)).astype(np.float32)
    blocked = block_conv_weights(w, 8)
    assert blocked.shape == (3, 2, 3, 1, 8, 8)
    np.testing.assert_array_equal(unblock_conv_weights(blocked, 20, 13), w)
    # row c_in of a tap's matrix holds the weights of that input channel for the c outputs
    np.testing.assert_array_equal(blocked[1, 0, 2, 0, 3, :], w[8:16, 3, 2, 0])
    depthwise = w[:, :1]
    np.testing.assert_array_equal(unblock_conv_weights(block_conv_weights(depthwise, 8, 20), 20, 1, 20), depthwise)


def test_bad_attributes_and_shapes_are_reported():
    with pytest.raises(InvalidAttributeError, match="group must be 1 or depthwise"):
        _conv_node(8, 16, group=2)
    with pytest.raises(InvalidAttributeError, match="activation must be one of"):
        _conv_node(8, 8, activation="Softsign")
    node = _conv_node(13, 20)
    x = Value("x", np.float32, (1, 2, 5, 5, 8))
    with pytest.raises(ShapeInferenceError, match="W must be blocked conv weights"):
        CONV.infer(node, [x, Value("w", np.float32, (3, 2, 3, 3, 8, 4))])
    with pytest.raises(ShapeInferenceError, match="13 channels need 2"):
        CONV.infer(node, [Value("x", np.float32, (1, 3, 5, 5, 8)), Value("w", np.float32, (3, 2, 3, 3, 8, 8))])
    with pytest.raises(ShapeInferenceError, match="two spatial axes"):
        CONV.infer(node, [Value("x", np.float32, (1, 2, 5, 8)), Value("w", np.float32, (3, 2, 3, 3, 8, 8))])


# ============================================================================ the kernels
def _run_kernel(node, arrays, values):
    found = {k.name: k for k in candidates(node, values)}
    name = "conv_nchwc_depthwise" if node.attrs["group"] > 1 else "conv_nchwc_direct"
    assert name in found, f"{name} refused {node}"
    fn = found[name].build(node, values, [])
    return fn(node, *arrays)


GRID = [  # channels, out_channels, (H, W), kernel, attrs
    (3, 8, (9, 9), 3, {"pads": [1, 1, 1, 1]}),
    (5, 7, (6, 11), 3, {"strides": [2, 2], "pads": [1, 0, 1, 2]}),
    (16, 24, (8, 8), 1, {}),
    (17, 9, (7, 5), 5, {"pads": [2, 2, 2, 2], "dilations": [1, 2]}),
    (8, 13, (10, 9), 3, {"dilations": [2, 2], "strides": [1, 2], "pads": [2, 2, 2, 2]}),
    (20, 20, (3, 3), 3, {}),  # one output pixel: fewer pixels than the register tile
    (9, 33, (12, 12), 7, {"strides": [2, 2], "pads": [3, 3, 3, 3]}),
    (11, 6, (5, 6), 2, {"auto_pad": "SAME_LOWER"}),
]


@pytest.mark.parametrize("channels,out_channels,size,kernel,attrs", GRID)
def test_direct_kernel_matches_the_reference(channels, out_channels, size, kernel, attrs):
    node, arrays, values = _case(channels, out_channels, size, kernel, **attrs)
    got = _run_kernel(node, arrays, values)
    _close(got, CONV.reference(node, *arrays))


@pytest.mark.parametrize("activation,params", [("Relu", None), ("LeakyRelu", [0.1]), ("HardSwish", None),
                                               ("Sigmoid", None), ("Clip", [-0.5, 6.0])])
def test_direct_kernel_fuses_bias_residual_and_activation(activation, params):
    node, arrays, values = _case(12, 10, (6, 7), 3, residual=True, pads=[1, 1, 1, 1], activation=activation,
                                 activation_params=params)
    got = _run_kernel(node, arrays, values)
    _close(got, CONV.reference(node, *arrays))
    assert not got[:, -1, ..., 2:].any()  # 10 channels: lanes 2..7 of the last block are padding


@pytest.mark.parametrize("channels,size,kernel,attrs", [
    (8, (9, 9), 3, {"pads": [1, 1, 1, 1]}),
    (13, (10, 7), 3, {"strides": [2, 2], "pads": [1, 1, 1, 1]}),
    (20, (11, 11), 5, {"pads": [2, 2, 2, 2], "dilations": [2, 1]}),
    (3, (2, 2), 3, {"pads": [1, 1, 1, 1], "strides": [2, 2]}),
])
def test_depthwise_kernel_matches_the_reference(channels, size, kernel, attrs):
    # 16 lanes, as the O3 pipeline uses (one compiled variant less for this file)
    node, arrays, values = _case(channels, channels, size, kernel, block=16, group=channels, residual=True,
                                 activation="Clip", activation_params=[0.0, 6.0], **attrs)
    _close(_run_kernel(node, arrays, values), CONV.reference(node, *arrays))


def test_the_kernel_never_reads_padding_lanes_of_its_input():
    node, arrays, values = _case(5, 8, (6, 6), 3, pads=[1, 1, 1, 1])
    expected = CONV.reference(node, *arrays)
    arrays[0] = arrays[0].copy()
    arrays[0][..., 5:] = np.nan  # e.g. Sigmoid(0) = 0.5, or worse, in the padding of X
    _close(_run_kernel(node, arrays, values), expected)


def test_sixteen_lane_blocks():
    node, arrays, values = _case(21, 18, (7, 9), 3, block=16, strides=[2, 1], pads=[1, 1, 1, 1], residual=True,
                                 activation="Relu")
    _close(_run_kernel(node, arrays, values), CONV.reference(node, *arrays))


@pytest.mark.parametrize("why,change", [
    ("float64 input", lambda v: [Value("x", np.float64, v[0].shape), *v[1:]]),
    ("weights only known at run time", lambda v: [v[0], Value("w", np.float32, v[1].shape), *v[2:]]),
    ("symbolic batch", lambda v: [Value("x", np.float32, ("N", *v[0].shape[1:])), *v[1:]]),
])
def test_predicates_refuse_what_the_kernels_do_not_handle(why, change):
    node, _, values = _case(8, 8, (5, 5), 3)
    assert not candidates(node, change(values)), why


def test_blocks_other_than_8_and_16_are_refused():
    node, _, values = _case(8, 8, (5, 5), 3, block=4)
    assert not candidates(node, values)


def test_inner_loop_is_a_register_tile_of_vector_fmas():
    """What LLVM made of the loop nest (compiles a fresh copy: a few seconds)."""
    import llvmlite.binding as llvm

    if not llvm.get_host_cpu_features().get("fma", False):  # the CPU, not the code, decides the skip
        pytest.skip("this CPU has no vector FMA instructions")
    summary = nchwc.conv_nchwc_asm_summary(8)
    fmas, tile = summary["inner_loop_fmas"], nchwc.TILES[8]
    assert fmas and fmas % tile == 0  # one FMA per pixel of the tile (per step, if LLVM unrolls the loop)
    assert summary["inner_loop_stores"] == 0  # the tile stays in registers


# ============================================================================ blocked pooling
@pytest.mark.parametrize("op_type,attrs", [
    ("MaxPool", {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    ("MaxPool", {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}),
    ("AveragePool", {"kernel_shape": [3, 2], "pads": [1, 0, 1, 1], "count_include_pad": 1}),
    ("AveragePool", {"kernel_shape": [2, 2], "strides": [2, 2]}),
    ("GlobalAveragePool", {}),
    ("GlobalMaxPool", {}),
])
def test_blocked_pooling_matches_the_standard_op_and_its_kernel(op_type, attrs):
    x = np.random.default_rng(2).standard_normal((2, 13, 9, 8)).astype(np.float32)
    standard = Node(op_type, ["x"], ["y"], attrs, "", "pool")
    prepare_node(standard, 17)
    blocked = Node(f"{op_type}NCHWc", ["x"], ["y"], attrs, DOMAIN, "pool")
    prepare_node(blocked, 1)
    op = OPS[(DOMAIN, f"{op_type}NCHWc")]
    xb = to_blocked(x, 8)
    expected = OPS[("", op_type)].reference(standard, x)
    got = op.reference(blocked, xb)
    (inferred,) = op.infer(blocked, [Value("x", np.float32, xb.shape)])
    assert got.shape == inferred.shape
    np.testing.assert_array_equal(from_blocked(got, 13), expected)
    kernels = candidates(blocked, [Value("x", np.float32, xb.shape)])
    assert kernels, f"no kernel for {op_type}NCHWc"
    fn = kernels[0].build(blocked, [Value("x", np.float32, xb.shape)], [inferred])
    _close(from_blocked(fn(blocked, xb), 13), expected, rtol=1e-5)


# ============================================================================ in a session
def _conv_chain_model(channels=6, size=10):
    rng = np.random.default_rng(3)
    inits, nodes, source = [], [], "x"
    for i, (out_channels, kernel, stride, group) in enumerate([(16, 3, 1, 1), (16, 3, 2, 16), (12, 1, 1, 1)]):
        per_group = (channels if i == 0 else prev) // group
        w = (rng.standard_normal((out_channels, per_group, kernel, kernel)) * 0.3).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(rng.standard_normal(out_channels).astype(np.float32), f"b{i}")]
        nodes += [helper.make_node("Conv", [source, f"w{i}", f"b{i}"], [f"c{i}"], name=f"conv{i}", group=group,
                                   pads=[kernel // 2] * 4, strides=[stride, stride]),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}")]
        source, prev = f"r{i}", out_channels
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, size, size])],
                              [helper.make_tensor_value_info(source, TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_session_at_o3_runs_the_blocked_kernels_and_matches_onnxruntime():
    model = _conv_chain_model()
    x = np.random.default_rng(4).standard_normal((1, 6, 10, 10)).astype(np.float32)
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    sess = ti.InferenceSession(model, backend="numba", opt_level="O3", select="cost")
    got = sess.run(None, {"x": x})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-4 * float(np.abs(expected).max()))
    kernels = {r.name: r.kernel for r in sess.profile().records if r.op_type == "ConvNCHWc"}
    assert kernels == {"conv0": "conv_nchwc_direct", "conv1": "conv_nchwc_depthwise", "conv2": "conv_nchwc_direct"}
