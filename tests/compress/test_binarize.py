"""Binarized training: the Sign STE, XNOR-Net's scaled signs and their gradient, the trained
digits network, its ONNX export and the layers it refuses to binarize."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from tinyinfer import InferenceSession
from tinyinfer.compress import binarized_accuracy, digits_split, train_binarized
from tinyinfer.compress.backward import vjp
from tinyinfer.compress.binarize import (BinarizedTrainer, binarize_weight, binarized_digits_cnn, latent_gradient,
                                         output_axis, packed_size_bytes)
from tinyinfer.errors import TinyInferError
from tinyinfer.ir import Node
from tinyinfer.models.digits import digits_cnn
from tinyinfer.ops import prepare_node
from tinyinfer.runtime import load


@pytest.fixture(scope="module")
def split():
    return digits_split()


@pytest.fixture(scope="module")
def trained(split):
    # Three epochs (about 5 s) already clear the 90 % target; the chapter trains four.
    return train_binarized(split, epochs=3, seed=0)


# ---------------------------------------------------------------------------- the Sign rule
def test_sign_passes_the_gradient_where_hard_tanh_has_slope_one():
    x = np.array([-3.0, -1.0, -0.5, 0.0, 0.25, 1.0, 1.5], np.float32)
    dy = np.arange(1, 8, dtype=np.float32)
    node = Node("Sign", ["x"], ["y"])
    prepare_node(node, 17)
    (dx,) = vjp(node, [x], dy)
    # d/dx hardtanh(x) = 1 on [-1, 1], 0 outside (Hubara et al., 2016): exact, no tolerance.
    np.testing.assert_array_equal(dx, np.where(np.abs(x) <= 1, dy, 0))


# ---------------------------------------------------------------------------- XNOR-Net weights
@pytest.mark.parametrize("shape, axis", [((4, 3, 3, 3), 0), ((6, 5), 0), ((5, 6), 1)])
def test_binarized_weights_are_plus_minus_mean_abs_per_output_channel(shape, axis):
    w = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    wb = binarize_weight(w, axis)
    channels = np.moveaxis(w, axis, 0).reshape(shape[axis], -1)
    binary = np.moveaxis(wb, axis, 0).reshape(shape[axis], -1)
    alpha = np.abs(channels).mean(axis=1, keepdims=True)
    np.testing.assert_allclose(np.abs(binary), np.broadcast_to(alpha, binary.shape), rtol=1e-6)
    np.testing.assert_array_equal(np.sign(binary), np.where(channels >= 0, 1, -1))


def test_latent_gradient_is_the_alpha_path_exactly_plus_the_ste_path():
    """Through α the gradient is a true derivative: check it against central differences of
    ``sum(G * α(W) * sign(W))`` with the signs held (no weight is near 0, so none flips)."""
    rng = np.random.default_rng(1)
    w = rng.uniform(0.2, 0.9, (3, 2, 2, 2)) * rng.choice([-1, 1], (3, 2, 2, 2))
    w[0, 0, 0, 0] = 1.5  # beyond the clip range: the STE passes nothing there
    g = rng.standard_normal(w.shape)
    signs = np.sign(w)

    def objective(v):
        return float((g * np.abs(v).mean(axis=(1, 2, 3), keepdims=True) * signs).sum())

    numeric = np.zeros_like(w)
    eps = 1e-6
    for index in np.ndindex(*w.shape):
        step = np.zeros_like(w)
        step[index] = eps
        numeric[index] = (objective(w + step) - objective(w - step)) / (2 * eps)
    alpha = np.abs(w).mean(axis=(1, 2, 3), keepdims=True)
    ste = alpha * (np.abs(w) <= 1) * g
    # float64 central differences of a function linear in each |w|: 1e-7 is rounding, not truncation.
    np.testing.assert_allclose(latent_gradient(w, g, 0) - ste, numeric, atol=1e-7)
    assert ste[0, 0, 0, 0] == 0


def test_output_axis_follows_gemm_transposition():
    conv, gemm = Node("Conv", ["x", "w"], ["y"]), Node("Gemm", ["x", "w"], ["y"])
    gemm_t = Node("Gemm", ["x", "w"], ["y"], {"transB": 1})
    assert (output_axis(conv), output_axis(gemm), output_axis(gemm_t)) == (0, 1, 0)


# ---------------------------------------------------------------------------- training
def test_binarized_digits_network_reaches_ninety_percent(trained):
    assert trained.accuracy >= 0.90
    assert trained.float_layers == ["conv1", "logits"]


def test_exported_model_is_standard_onnx_with_plus_minus_alpha_weights(trained):
    onnx.checker.check_model(trained.model)
    graph = load(trained.model)
    for name in ("conv2.weight", "conv3.weight"):
        w = graph.initializers[name].reshape(graph.initializers[name].shape[0], -1)
        magnitude = np.abs(w)
        np.testing.assert_allclose(magnitude, magnitude[:, :1].repeat(w.shape[1], axis=1), rtol=1e-6)
    assert {node.op_type for node in graph.nodes} >= {"Sign", "Conv"}


@pytest.mark.parametrize("backend", ["reference", "numba"])
def test_tinyinfer_and_onnx_runtime_agree_on_the_binarized_model(trained, split, backend):
    expected = ort.InferenceSession(trained.model.SerializeToString()).run(None, {"input": split.x_test})[0]
    got = InferenceSession(trained.model, backend=backend).run(None, {"input": split.x_test})[0]
    # Logits of size ~10 from float32 sums in different orders; measured differences ~7e-6.
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert binarized_accuracy(trained.model, split, backend) == pytest.approx(trained.accuracy)


def test_latent_weights_stay_clipped_and_the_size_counts_one_bit_per_weight(split):
    trainer = BinarizedTrainer(binarized_digits_cnn(seed=3, width=4), lr=0.5, seed=3)
    trainer.fit(split.x_train[:64], split.y_train[:64], epochs=1, progress=False)
    for name in trainer.binary_weights:
        assert np.abs(trainer.parameters[name]).max() <= 1.0
    graph = trainer.to_graph()
    binary = sum(graph.initializers[n].size for n in trainer.binary_weights)
    channels = sum(graph.initializers[n].shape[0] for n in trainer.binary_weights)
    floats = sum(a.size for n, a in graph.initializers.items() if n not in trainer.binary_weights)
    assert packed_size_bytes(graph, trainer.binary_weights) == binary // 8 + 4 * channels + 4 * floats
    assert packed_size_bytes(graph, {}) == 4 * (binary + floats)


# ---------------------------------------------------------------------------- bad input
def test_a_middle_layer_without_a_sign_before_it_is_refused():
    with pytest.raises(TinyInferError, match="conv2.*Sign"):
        BinarizedTrainer(digits_cnn(width=4))


def test_a_model_with_no_layer_between_first_and_last_is_refused():
    from tinyinfer.models.builder import NetworkBuilder

    b = NetworkBuilder("two_layers")
    x = b.input("input", ("N", 1, 8, 8))
    logits = b.gemm(b.flatten(b.conv(x, 2, 3, name="conv1")), 10, name="logits")
    with pytest.raises(TinyInferError, match="no weighted layer between"):
        BinarizedTrainer(b.build(logits, calibrate=False))
