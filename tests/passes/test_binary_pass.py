"""The fuse_binary_conv pass: ``Sign → [Pad] → Conv`` with ±α filters becomes BinaryConv, nothing else does,
and the fused graph computes what the standard one does (checked against ONNX Runtime).

Tolerance: the binary kernel's popcounts are exact, the float convs sum ±α products in another
order, so logits of size ~10 agree to ``atol = 1e-4``. The inputs are Gaussian, so no value
that a Sign reads sits within rounding of 0 (where a sign could flip between two orders of
summation) except with negligible probability.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from tinyinfer import InferenceSession
from tinyinfer.compress.binarize import BinarizedTrainer, binarized_digits_cnn
from tinyinfer.frontend import to_onnx
from tinyinfer.ir import Value
from tinyinfer.models.digits import digits_cnn
from tinyinfer.passes import PassManager
from tinyinfer.runtime import load


@pytest.fixture(scope="module")
def binarized():
    """The binarized digits network with ±α weights (untrained: the pass looks at arithmetic, not accuracy)."""
    return BinarizedTrainer(binarized_digits_cnn(seed=1, width=8)).to_onnx()


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).standard_normal((5, 1, 8, 8)).astype(np.float32)


def optimized(model):
    graph, report = PassManager("O2").run(load(model))
    return graph, report


def test_binary_convs_are_fused_and_the_float_ones_are_not(binarized):
    graph, _ = optimized(binarized)
    fused = {node.name: node for node in graph.nodes if node.op_type == "BinaryConv"}
    assert sorted(fused) == ["conv2", "conv3"]
    assert fused["conv3"].attrs["activation"] == "Relu"  # merged with its Relu first, kept
    assert not [node for node in graph.nodes if node.op_type == "Sign"]
    assert [node.op_type for node in graph.nodes][0] == "Conv"  # the float first layer


def test_a_conv_after_a_sign_with_float_weights_is_left_alone():
    latent = binarized_digits_cnn(seed=1, width=8)  # He-initialised weights: not ±α
    graph, _ = optimized(latent)
    assert not [node for node in graph.nodes if node.op_type == "BinaryConv"]
    graph, _ = optimized(digits_cnn(width=4))  # no Sign at all
    assert not [node for node in graph.nodes if node.op_type == "BinaryConv"]


@pytest.mark.parametrize("backend", ["reference", "numba"])
def test_fused_graph_computes_what_onnx_runtime_computes(binarized, images, backend):
    expected = ort.InferenceSession(binarized.SerializeToString()).run(None, {"input": images})[0]
    session = InferenceSession(binarized, backend=backend, select="cost")  # cost: the first kernel, untimed
    np.testing.assert_allclose(session.run(None, {"input": images})[0], expected, atol=1e-4)
    if backend == "numba":
        kernels = {record.name: record.kernel for record in session.profile().records}
        assert kernels["conv2"] == kernels["conv3"] == "binary_conv_xnor"


def test_fused_graph_exports_back_to_sign_and_conv(binarized, images):
    graph, _ = optimized(binarized)
    exported = to_onnx(graph)
    assert {node.op_type for node in exported.graph.node} >= {"Sign", "Conv"}
    assert all(not node.domain for node in exported.graph.node)
    expected = ort.InferenceSession(binarized.SerializeToString()).run(None, {"input": images})[0]
    got = ort.InferenceSession(exported.SerializeToString()).run(None, {"input": images})[0]
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_a_sign_read_by_another_node_stays(binarized):
    graph = load(binarized)
    sign = next(node for node in graph.nodes if node.op_type == "Sign")
    graph.outputs.append(Value(sign.outputs[0], np.dtype(np.float32), None))
    optimized_graph, _ = PassManager("O2").run(graph)
    assert any(node.op_type == "Sign" for node in optimized_graph.nodes)
    assert any(node.op_type == "BinaryConv" for node in optimized_graph.nodes)


def sign_pad_conv(pad_value: float, pad: int, conv_pad: int, opset: int = 17):
    """``Sign → Pad(pad_value, pad on each spatial side) → Conv(±α, pads conv_pad)`` as ONNX."""
    rng = np.random.default_rng(2)
    w = (rng.uniform(0.1, 1, (5, 1, 1, 1)) * rng.choice([-1.0, 1.0], (5, 4, 3, 3))).astype(np.float32)
    pads = np.array([0, 0, pad, pad, 0, 0, pad, pad], np.int64)
    weights = [numpy_helper.from_array(w, "w")]
    if opset < 11:  # Pad-2: pads and value are attributes
        pad_node = helper.make_node("Pad", ["s"], ["p"], name="pad", pads=pads.tolist(), value=pad_value)
    else:
        pad_node = helper.make_node("Pad", ["s", "pads", "value"], ["p"], name="pad")
        weights += [numpy_helper.from_array(pads, "pads"), numpy_helper.from_array(np.array(pad_value, np.float32), "value")]
    nodes = [helper.make_node("Sign", ["x"], ["s"], name="sign"), pad_node,
             helper.make_node("Conv", ["p", "w"], ["y"], name="conv", pads=[conv_pad] * 4)]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4, 6, 6])
    graph = helper.make_graph(nodes, "sign_pad_conv", [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


@pytest.mark.parametrize("pad_value, pad, conv_pad, fused_pads, opset", [
    (1.0, 1, 0, [1, 1, 1, 1], 17), (-1.0, 2, 0, [2, 2, 2, 2], 17), (0.0, 1, 1, [2, 2, 2, 2], 17),
    (1.0, 1, 0, [1, 1, 1, 1], 10)])
def test_a_pad_between_sign_and_conv_is_absorbed(pad_value, pad, conv_pad, fused_pads, opset):
    model = sign_pad_conv(pad_value, pad, conv_pad, opset)
    graph, _ = optimized(model)
    assert [node.op_type for node in graph.nodes] == ["BinaryConv"]
    assert graph.nodes[0].attrs["pad_value"] == pad_value and graph.nodes[0].attrs["pads"] == fused_pads
    x = np.random.default_rng(3).standard_normal((2, 4, 6, 6)).astype(np.float32)
    expected = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    session = InferenceSession(model, backend="numba", select="cost")
    np.testing.assert_allclose(session.run(None, {"x": x})[0], expected, atol=1e-4)
    assert session.profile().records[0].kernel == "binary_conv_xnor"
    exported = to_onnx(graph)  # back to Sign [→ Pad] → Conv
    got = ort.InferenceSession(exported.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_two_paddings_of_different_values_are_not_merged():
    graph, _ = optimized(sign_pad_conv(1.0, 1, 1))  # +1 from the Pad, then 0 from the Conv
    assert not [node for node in graph.nodes if node.op_type == "BinaryConv"]
