"""BinaryConv: the op's reference against ONNX's own Sign and Conv, and the XNOR-popcount kernel
(tinyinfer/kernels/binary_conv.py) against that reference.

Oracles: ``onnx.reference`` for ``Sign → Conv`` (the op), the reference op (the kernel), and the
NumPy twin :func:`pack_windows_numpy` (the Numba packing, bit for bit). Tolerance for the kernel:
its popcount sums are exact integers, times α in float32, while the reference sums ±α products
in float32 in another order: ``rtol = atol = 1e-5`` on outputs of size ~10.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from tinyinfer.errors import TinyInferError
from tinyinfer.ir import Node, Value
from tinyinfer.kernels import candidates
from tinyinfer.kernels.binary_conv import build_binary_conv, channel_alpha, pack_windows, pack_windows_numpy
from tinyinfer.kernels.conv import conv_geometry
from tinyinfer.ops import OPS, prepare_node

TOLERANCE = dict(rtol=1e-5, atol=1e-5)

CASES = [
    ((1, 3, 9, 11), (4, 3, 3, 3), dict(pads=[1, 1, 1, 1])),
    ((2, 5, 8, 7), (6, 5, 3, 3), dict(pads=[0, 1, 2, 1])),
    ((1, 4, 10, 9), (5, 4, 3, 3), dict(strides=[2, 2], pads=[1, 1, 1, 1])),
    ((1, 3, 13, 12), (7, 3, 3, 3), dict(dilations=[2, 2], pads=[2, 2, 2, 2])),
    ((1, 2, 9, 10), (3, 2, 5, 3), dict(strides=[1, 2], dilations=[1, 2], pads=[2, 1, 2, 3])),
    ((1, 3, 7, 9), (2, 3, 2, 2), dict(auto_pad="SAME_UPPER", strides=[2, 2])),
    ((2, 30, 6, 6), (9, 30, 3, 3), dict(pads=[1, 1, 1, 1])),  # K = 270: five words, the last partial
    ((2, 8, 7, 7), (4, 8, 1, 1), dict()),
]


def binary_case(x_shape, w_shape, *, bias=True, activation="Identity", seed=0, **attrs):
    """A prepared BinaryConv node, its input Values and arrays: weights ±α per output channel."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(x_shape).astype(np.float32)
    alpha = rng.uniform(0.1, 1.0, (w_shape[0], 1, 1, 1))
    w = (alpha * rng.choice([-1.0, 1.0], w_shape)).astype(np.float32)
    b = rng.standard_normal(w_shape[0]).astype(np.float32) if bias else None
    node = Node("BinaryConv", ["x", "w", "b" if bias else ""], ["y"],
                {**attrs, "activation": activation}, "ai.tinyinfer", "binary")
    prepare_node(node, 1)
    values = [Value("x", np.float32, x_shape), Value("w", np.float32, w_shape, w),
              None if b is None else Value("b", np.float32, b.shape, b)]
    return node, values, [x, w, b]


def onnx_sign_conv(x, w, b, attrs):
    """``Sign → Conv`` run by onnx.reference: the definition BinaryConv must meet."""
    inputs = ["signs", "w"] + (["b"] if b is not None else [])
    nodes = [helper.make_node("Sign", ["x"], ["signs"]), helper.make_node("Conv", inputs, ["y"], **attrs)]
    weights = [numpy_helper.from_array(w, "w")] + ([numpy_helper.from_array(b, "b")] if b is not None else [])
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return ReferenceEvaluator(model).run(None, {"x": x})[0]


def reference(node, arrays):
    return OPS[(node.domain, node.op_type)].reference(node, *arrays)


@pytest.mark.parametrize("x_shape, w_shape, attrs", CASES[:4])
def test_reference_is_sign_then_conv(x_shape, w_shape, attrs):
    node, _, (x, w, b) = binary_case(x_shape, w_shape, **attrs)
    x[0, 0, 0, :2] = 0.0  # Sign(0) = 0: a zero contributes nothing
    np.testing.assert_allclose(reference(node, [x, w, b]), onnx_sign_conv(x, w, b, attrs), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("x_shape, w_shape, attrs", CASES)
def test_packed_windows_equal_the_numpy_twin(x_shape, w_shape, attrs):
    node, values, (x, w, _) = binary_case(x_shape, w_shape, **attrs)
    g = conv_geometry(node, x.shape, w.shape)
    np.testing.assert_array_equal(pack_windows(x, g), pack_windows_numpy(x, g))


@pytest.mark.parametrize("x_shape, w_shape, attrs", CASES)
@pytest.mark.parametrize("bias, activation", [(True, "Identity"), (False, "Relu")])
def test_xnor_kernel_equals_the_reference(x_shape, w_shape, attrs, bias, activation):
    node, values, arrays = binary_case(x_shape, w_shape, bias=bias, activation=activation, **attrs)
    assert "binary_conv_xnor" in [k.name for k in candidates(node, values)]
    fn = build_binary_conv(node, values, [])
    expected = reference(node, arrays)
    out = np.empty_like(expected)  # the runtime's arena slot
    result = fn(node, *arrays, out=[out])
    np.testing.assert_allclose(result, expected, **TOLERANCE)


@pytest.mark.parametrize("x_shape, w_shape, attrs", [case for case in CASES[:5]])
@pytest.mark.parametrize("pad_value", [1.0, -1.0])
def test_padding_with_plus_or_minus_one_is_sign_pad_conv(x_shape, w_shape, attrs, pad_value):
    node, values, (x, w, b) = binary_case(x_shape, w_shape, pad_value=pad_value, **attrs)
    expected = onnx_sign_pad_conv(x, w, b, attrs, pad_value)
    np.testing.assert_allclose(reference(node, [x, w, b]), expected, rtol=1e-5, atol=1e-5)
    fn = build_binary_conv(node, values, [])
    np.testing.assert_allclose(fn(node, x, w, b), expected, **TOLERANCE)


def onnx_sign_pad_conv(x, w, b, attrs, pad_value):
    """``Sign → Pad(pad_value) → Conv`` (no pads of its own) by onnx.reference."""
    top, left, bottom, right = attrs["pads"]
    signs = ReferenceEvaluator(helper.make_model(helper.make_graph(
        [helper.make_node("Sign", ["x"], ["s"])], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
        [helper.make_tensor_value_info("s", TensorProto.FLOAT, None)]))).run(None, {"x": x})[0]
    padded = np.pad(signs, ((0, 0), (0, 0), (top, bottom), (left, right)), constant_values=pad_value)
    return onnx_sign_conv(padded, w, b, {**attrs, "pads": [0, 0, 0, 0]})


def test_an_input_with_an_exact_zero_takes_the_float_path():
    node, values, arrays = binary_case((1, 3, 6, 6), (4, 3, 3, 3), pads=[1, 1, 1, 1])
    arrays[0][0, 1, 2, 3] = 0.0  # the kernel has no bit for Sign(0) = 0
    fn = build_binary_conv(node, values, [])
    np.testing.assert_allclose(fn(node, *arrays), reference(node, arrays), **TOLERANCE)


def test_kernel_declines_weights_that_are_not_plus_minus_alpha():
    node, values, (x, w, b) = binary_case((1, 3, 6, 6), (4, 3, 3, 3))
    w = w.copy()
    w[2, 0, 0, 0] *= 1.5
    values[1] = Value("w", np.float32, w.shape, w)
    assert channel_alpha(w) is None
    assert "binary_conv_xnor" not in [k.name for k in candidates(node, values)]


@pytest.mark.parametrize("attrs, message", [({"group": 2}, "one group"), ({"pad_value": 0.5}, "pad_value"),
                                            ({"pad_value": 1.0, "auto_pad": "SAME_UPPER"}, "explicit pads")])
def test_binary_conv_attributes_are_checked(attrs, message):
    node = Node("BinaryConv", ["x", "w"], ["y"], attrs, "ai.tinyinfer", "bad")
    with pytest.raises(TinyInferError, match=message):
        prepare_node(node, 1)
