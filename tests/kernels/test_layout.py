"""Layout conversions: NCHW <-> NHWC, NCHWc, NC1HWC0; NumPy twins against Numba twins.

Every conversion only moves numbers, so every comparison here is exact (``array_equal``).
The oracle for the blocked layout is its index formula,
``blocked[n, b, h, w, l] = x[n, b*c + l, h, w]`` (0 past the last channel), checked element
by element on small tensors.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

import tinyinfer as ti
from tinyinfer.errors import InvalidAttributeError, ShapeInferenceError
from tinyinfer.ir import Node, Value
from tinyinfer.kernels import layout
from tinyinfer.ops import OPS, prepare_node
from tinyinfer.ops.layout import from_blocked, to_blocked

DOMAIN = "ai.tinyinfer"
SHAPES = [(1, 1, 1, 1), (1, 3, 5, 7), (2, 8, 4, 4), (1, 13, 3, 2), (2, 17, 6, 5), (1, 16, 2, 9)]


def _random(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _blocked_by_formula(x, block):
    n, channels, h, w = x.shape
    count = -(-channels // block)
    out = np.zeros((n, count, h, w, block), x.dtype)
    for b in range(count):
        for lane in range(block):
            if b * block + lane < channels:
                out[:, b, :, :, lane] = x[:, b * block + lane]
    return out


# ---------------------------------------------------------------------------- NCHWc / NC1HWC0
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("block", [4, 8, 16])
def test_nchwc_numpy_and_numba_match_the_index_formula(shape, block):
    x = _random(shape)
    expected = _blocked_by_formula(x, block)
    np.testing.assert_array_equal(layout.nchw_to_nchwc(x, block), expected)
    np.testing.assert_array_equal(layout.nchw_to_nchwc_numba(x, block), expected)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("block", [4, 8, 16])
def test_nchwc_round_trip_gives_back_the_input(shape, block):
    x = _random(shape)
    channels = shape[1]
    np.testing.assert_array_equal(layout.nchwc_to_nchw(layout.nchw_to_nchwc(x, block), channels), x)
    np.testing.assert_array_equal(layout.nchwc_to_nchw_numba(layout.nchw_to_nchwc_numba(x, block), channels), x)
    blocked = layout.nchw_to_nchwc(x, block)
    np.testing.assert_array_equal(layout.nchwc_to_nchw_numba(blocked, channels), layout.nchwc_to_nchw(blocked, channels))


def test_padding_lanes_are_zero_and_ignored_on_the_way_back():
    x = _random((1, 5, 3, 3))
    blocked = layout.nchw_to_nchwc_numba(x, 8)
    assert blocked.shape == (1, 1, 3, 3, 8)
    assert not blocked[..., 5:].any()
    blocked[..., 5:] = np.nan  # whatever the padding holds, it is dropped
    np.testing.assert_array_equal(layout.nchwc_to_nchw_numba(blocked, 5), x)
    np.testing.assert_array_equal(layout.nchwc_to_nchw(blocked, 5), x)


@pytest.mark.parametrize("shape", [(1, 3, 4, 5), (2, 16, 2, 2), (1, 33, 3, 1)])
def test_nc1hwc0_is_nchwc_with_16_lanes(shape):
    x = _random(shape)
    np.testing.assert_array_equal(layout.nchw_to_nc1hwc0(x), _blocked_by_formula(x, 16))
    np.testing.assert_array_equal(layout.nchw_to_nc1hwc0_numba(x), _blocked_by_formula(x, 16))
    np.testing.assert_array_equal(layout.nc1hwc0_to_nchw_numba(layout.nchw_to_nc1hwc0_numba(x), shape[1]), x)
    np.testing.assert_array_equal(layout.nc1hwc0_to_nchw(layout.nchw_to_nc1hwc0(x), shape[1]), x)


def test_unblocking_to_a_channel_count_the_blocks_cannot_hold_is_refused():
    blocked = np.zeros((1, 2, 3, 3, 8), np.float32)
    with pytest.raises(ValueError, match="hold 9 to 16 channels"):
        layout.nchwc_to_nchw_numba(blocked, 8)


# ---------------------------------------------------------------------------- NHWC
@pytest.mark.parametrize("shape", SHAPES)
def test_nhwc_numpy_numba_and_round_trip(shape):
    x = _random(shape)
    expected = np.stack([x[:, c] for c in range(shape[1])], axis=-1)  # channels last, by definition
    np.testing.assert_array_equal(layout.nchw_to_nhwc(x), expected)
    np.testing.assert_array_equal(layout.nchw_to_nhwc_numba(x), expected)
    np.testing.assert_array_equal(layout.nhwc_to_nchw(expected), x)
    np.testing.assert_array_equal(layout.nhwc_to_nchw_numba(expected), x)


def test_numba_conversions_accept_non_contiguous_views():
    x = _random((2, 6, 5, 4))[:, ::2, :, ::-1]  # a strided, reversed view
    np.testing.assert_array_equal(layout.nchw_to_nchwc_numba(x, 8), layout.nchw_to_nchwc(x, 8))
    np.testing.assert_array_equal(layout.nchw_to_nhwc_numba(x), layout.nchw_to_nhwc(x))


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 2), channels=st.integers(1, 40), h=st.integers(1, 6), w=st.integers(1, 6),
       block=st.sampled_from([8, 16]))
def test_random_shapes_round_trip_through_every_layout(n, channels, h, w, block):
    x = _random((n, channels, h, w), seed=channels)
    blocked = layout.nchw_to_nchwc_numba(x, block)
    np.testing.assert_array_equal(blocked, layout.nchw_to_nchwc(x, block))
    np.testing.assert_array_equal(layout.nchwc_to_nchw_numba(blocked, channels), x)
    np.testing.assert_array_equal(layout.nhwc_to_nchw_numba(layout.nchw_to_nhwc_numba(x)), x)


# ---------------------------------------------------------------------------- the ops
def _node(op_type, **attrs):
    node = Node(op_type, ["x"], ["y"], attrs, DOMAIN, op_type.lower())
    prepare_node(node, 1)
    return node


@pytest.mark.parametrize("shape", [(2, 5, 7), (1, 13, 3, 4), (1, 9, 2, 3, 2)])
def test_to_blocked_and_from_blocked_references_work_for_any_rank(shape):
    x = _random(shape)
    to_node, from_node = _node("ToBlocked", block=8), _node("FromBlocked", block=8, channels=shape[1])
    blocked = OPS[(DOMAIN, "ToBlocked")].reference(to_node, x)
    assert blocked.shape == (shape[0], -(-shape[1] // 8), *shape[2:], 8)
    (inferred,) = OPS[(DOMAIN, "ToBlocked")].infer(to_node, [Value("x", np.float32, shape)])
    assert inferred.shape == blocked.shape
    np.testing.assert_array_equal(OPS[(DOMAIN, "FromBlocked")].reference(from_node, blocked), x)
    if len(shape) == 4:
        np.testing.assert_array_equal(blocked, layout.nchw_to_nchwc(x, 8))


def test_ops_keep_symbolic_dimensions():
    (y,) = OPS[(DOMAIN, "ToBlocked")].infer(_node("ToBlocked", block=16), [Value("x", np.float32, ("N", 20, "H", 7))])
    assert y.shape == ("N", 2, "H", 7, 16)
    (z,) = OPS[(DOMAIN, "FromBlocked")].infer(_node("FromBlocked", block=16, channels=20), [y])
    assert z.shape == ("N", 20, "H", 7)


def test_bad_attributes_and_shapes_are_reported():
    with pytest.raises(InvalidAttributeError, match="block must be >= 1"):
        _node("ToBlocked", block=0)
    with pytest.raises(InvalidAttributeError, match="required attribute 'channels'"):
        _node("FromBlocked", block=8)
    node = _node("FromBlocked", block=8, channels=20)
    with pytest.raises(ShapeInferenceError, match="expected block=8"):
        OPS[(DOMAIN, "FromBlocked")].infer(node, [Value("x", np.float32, (1, 3, 4, 4, 16))])
    with pytest.raises(ShapeInferenceError, match="20 channels need 3"):
        OPS[(DOMAIN, "FromBlocked")].infer(node, [Value("x", np.float32, (1, 2, 4, 4, 8))])
    with pytest.raises(ShapeInferenceError, match="at least one spatial axis"):
        OPS[(DOMAIN, "ToBlocked")].infer(_node("ToBlocked", block=8), [Value("x", np.float32, (4, 8))])


# ---------------------------------------------------------------------------- the registered kernels
def _round_trip_model(channels):
    nodes = [
        helper.make_node("ToBlocked", ["x"], ["b"], domain=DOMAIN, block=8, name="to"),
        helper.make_node("Relu", ["b"], ["r"], name="relu"),
        helper.make_node("FromBlocked", ["r"], ["y"], domain=DOMAIN, block=8, channels=channels, name="from"),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, 6, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, channels, 6, 5])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 1)])


def test_the_session_runs_the_numba_conversion_kernels():
    # select="cost" takes a kernel over the reference whenever one supports the node.
    sess = ti.InferenceSession(_round_trip_model(11), backend="numba", select="cost", opt_level="O0")
    x = _random((1, 11, 6, 5))
    np.testing.assert_array_equal(sess.run(None, {"x": x})[0], np.maximum(x, 0))
    kernels = {r.op_type: r.kernel for r in sess.profile().records}
    assert kernels["ToBlocked"] == "to_blocked_numba"
    assert kernels["FromBlocked"] == "from_blocked_numba"


def test_blocked_helpers_of_the_ops_agree_with_the_kernels_module():
    x = _random((2, 19, 3, 4))
    np.testing.assert_array_equal(to_blocked(x, 8), layout.nchw_to_nchwc(x, 8))
    np.testing.assert_array_equal(from_blocked(to_blocked(x, 16), 19), layout.nchwc_to_nchw(layout.nchw_to_nchwc(x, 16), 19))
