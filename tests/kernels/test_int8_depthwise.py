"""The depthwise int8 QLinearConv kernel against the reference op and ONNX Runtime.

Oracles: ``tinyinfer.ops.quantize.QLinearConv`` (exact integer convolution, float64
requantization), and ONNX Runtime on a one-node depthwise QLinearConv model.

Tolerance: at most 1 LSB of the output — the sums are exact integers and the fixed-point
requantization rounds once, half to even, like the reference (see test_int8_conv.py).
"""

from __future__ import annotations

import numpy as np
import pytest

import tinyinfer as ti
from tinyinfer.ir import Node, Value
from tinyinfer.kernels import candidates
from tinyinfer.kernels import int8_depthwise as dw
from tinyinfer.ops import OPS
from tinyinfer.ops.base import prepare_node

LSB = 1


def make_depthwise(x_shape, kernel, stride, pads, dilation=1, *, per_channel=False, w_zero=0, y_dtype=np.uint8,
                   seed=0):
    rng = np.random.default_rng(seed)
    n, c, h, w = x_shape
    x = rng.integers(0, 256, x_shape, dtype=np.uint8)
    weights = rng.integers(-127, 128, (c, 1, kernel, kernel), dtype=np.int8)
    w_scale = rng.uniform(0.005, 0.02, c).astype(np.float32) if per_channel else np.float32(0.01)
    w_zp = rng.integers(-w_zero, w_zero + 1, c).astype(np.int8) if per_channel else np.int8(w_zero)
    y_zp = np.uint8(100) if y_dtype == np.uint8 else np.int8(-5)
    consts = [np.float32(0.03), np.uint8(120), weights, w_scale, w_zp, np.float32(0.2 * kernel), y_zp,
              rng.integers(-2000, 2000, c).astype(np.int32)]
    values = [Value("x", np.uint8, x_shape)] + [
        Value(f"c{i}", np.asarray(v).dtype, np.asarray(v).shape, const=np.asarray(v)) for i, v in enumerate(consts)]
    attrs = {"kernel_shape": [kernel, kernel], "strides": [stride, stride], "dilations": [dilation, dilation],
             "group": c, "pads": list(pads)}
    node = Node("QLinearConv", [v.name for v in values], ["y"], attrs, "", "dw")
    prepare_node(node, 10)
    return node, values, [x] + consts


@pytest.mark.parametrize("x_shape, kernel, stride, pads, dilation", [
    ((1, 3, 7, 9), 3, 1, (1, 1, 1, 1), 1),
    ((2, 5, 8, 6), 3, 2, (0, 0, 0, 0), 1),
    ((1, 4, 9, 19), 5, 1, (2, 2, 2, 2), 1),
    ((1, 6, 11, 10), 5, 2, (2, 1, 3, 2), 1),
    ((1, 2, 9, 9), 3, 1, (2, 2, 2, 2), 2),
    ((1, 8, 20, 21), 3, 1, (1, 1, 1, 1), 1),
    ((1, 3, 37, 70), 3, 1, (1, 1, 1, 1), 1),  # rows longer than one 16-lane load, odd tails
    ((1, 4, 35, 67), 3, 2, (1, 1, 1, 1), 1),  # stride 2: rows of 3 loads of 32 bytes, odd tails
    ((2, 3, 34, 66), 3, 2, (0, 0, 1, 1), 1),  # stride 2, padding only after: the even columns come first
    ((1, 3, 33, 65), 3, 2, (2, 3, 0, 1), 1),  # stride 2, odd left padding: the odd columns come first
    ((1, 2, 17, 33), 5, 2, (2, 2, 2, 2), 2),  # stride 2 with dilation 2: every tap in the same phase
    ((1, 3, 19, 23), 3, 3, (1, 2, 1, 0), 1),  # stride 3: the element-by-element split
    ((1, 5, 7, 7), 3, 2, (1, 1, 1, 1), 1),  # smaller than one block of outputs
    ((1, 70, 3, 3), 3, 1, (1, 1, 1, 1), 1),  # many tiny planes
])
@pytest.mark.parametrize("per_channel, w_zero, y_dtype", [(False, 0, np.uint8), (True, 3, np.int8)])
def test_depthwise_matches_the_reference(x_shape, kernel, stride, pads, dilation, per_channel, w_zero, y_dtype):
    node, values, arrays = make_depthwise(x_shape, kernel, stride, pads, dilation, per_channel=per_channel,
                                          w_zero=w_zero, y_dtype=y_dtype, seed=kernel + stride)
    names = {k.name for k in candidates(node, values)}
    assert "qlinearconv_depthwise" in names and "qlinearconv_im2col" not in names
    got = dw.build_depthwise(node, values, [])(node, *arrays)
    want = OPS[("", "QLinearConv")].reference(node, *arrays)
    assert got.dtype == want.dtype and got.shape == want.shape
    assert int(np.abs(got.astype(np.int64) - want.astype(np.int64)).max()) <= LSB


def test_predicate_refuses_channel_multipliers_and_plain_convs():
    node, values, _ = make_depthwise((1, 4, 6, 6), 3, 1, (1, 1, 1, 1))
    assert dw._supports_depthwise(node, values)
    doubled = values[:3] + [Value("w", np.int8, (8, 1, 3, 3), const=np.ones((8, 1, 3, 3), np.int8))] + values[4:]
    assert not dw._supports_depthwise(node, doubled)  # 2 filters per channel: not depthwise
    node.attrs["group"] = 1
    assert not dw._supports_depthwise(node, values)


def test_numba_session_picks_the_depthwise_kernel_and_matches_onnxruntime():
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(5)
    c = 12
    inits = [numpy_helper.from_array(np.asarray(v), name) for name, v in [
        ("x_s", np.float32(0.03)), ("x_z", np.uint8(120)),
        ("w", rng.integers(-127, 128, (c, 1, 3, 3), dtype=np.int8)),
        ("w_s", rng.uniform(0.005, 0.02, c).astype(np.float32)), ("w_z", np.zeros(c, np.int8)),
        ("y_s", np.float32(0.5)), ("y_z", np.uint8(90)), ("b", rng.integers(-500, 500, c).astype(np.int32))]]
    node = helper.make_node("QLinearConv", ["x", "x_s", "x_z", "w", "w_s", "w_z", "y_s", "y_z", "b"], ["y"],
                            group=c, pads=[1, 1, 1, 1], strides=[2, 2])
    graph = helper.make_graph([node], "dw", [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, c, 15, 14])],
                              [helper.make_tensor_value_info("y", TensorProto.UINT8, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    x = rng.integers(0, 256, (1, c, 15, 14), dtype=np.uint8)
    sess = ti.InferenceSession(model, backend="numba", select="cost")
    (got,) = sess.run(None, {"x": x})
    (want,) = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    assert int(np.abs(got.astype(np.int64) - want.astype(np.int64)).max()) <= LSB
    (record,) = sess.profile().records
    assert record.kernel == "qlinearconv_depthwise"


def split_into_phases_numpy(plane, sh, sw, top, left, phase_h, phase_w, zero):
    """The phases, read plainly: pad the plane, then phase (a, b) is ``padded[a::sh, b::sw]``."""
    h, w = plane.shape
    padded = np.full((phase_h * sh, phase_w * sw), zero, np.float32)
    padded[top:top + h, left:left + w] = plane
    return np.stack([padded[a::sh, b::sw] for a in range(sh) for b in range(sw)])


@pytest.mark.parametrize("shape, stride, top, left", [
    ((5, 40), 1, 1, 1), ((9, 71), 2, 1, 1), ((8, 64), 2, 0, 0), ((6, 33), 2, 2, 3), ((7, 50), 3, 1, 2),
    ((4, 1), 2, 0, 1),
])
def test_split_into_phases_matches_numpy_slicing(shape, stride, top, left):
    plane = np.random.default_rng(stride).integers(0, 256, shape, dtype=np.uint8)
    phase_h, phase_w = -(-(shape[0] + top + 2) // stride), -(-(shape[1] + left + 2) // stride)
    size = stride * stride * phase_h * phase_w
    padded = np.full(size + 7, -1.0, np.float32)  # the last 7 values must stay untouched
    padded[:size] = 120  # the caller fills the padding
    dw.split_into_phases(plane, stride, stride, top, left, phase_h, phase_w, padded[:size])
    want = split_into_phases_numpy(plane, stride, stride, top, left, phase_h, phase_w, 120)
    np.testing.assert_array_equal(padded[:size].reshape(want.shape), want)  # exact: small integers in float32
    assert np.all(padded[size:] == -1.0)
