"""ViT-Tiny (DeiT-Ti) of the zoo: its published size, its wiring, and tinyinfer against ONNX Runtime.

Oracles: the DeiT paper's parameter and MAC counts (the zoo entry); ONNX Runtime running the
same graph; a float64 NumPy transcription of multi-head attention, softmax(Q K^T / sqrt(dh)) V,
using the model's own weights; and a symmetry of attention — without position embeddings a
ViT sees its patches as a set, so shuffling the patches of the image leaves the class token,
hence the logits, unchanged.

Correctness tests run at 32×32 with 8×8 patches (16 tokens + the class token) and full depth
and width; only the count test builds the 224×224 model.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

import tinyinfer
from tinyinfer.models import build, entry
from tinyinfer.models.builder import NetworkBuilder
from tinyinfer.models.vit import multi_head_attention, vit_tiny
from tinyinfer.models.zoo import measured_cost

SMALL = dict(resolution=32, patch_size=8)


def with_logits(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with the Gemm output that feeds the final Softmax as an extra graph output "logits"."""
    result = onnx.ModelProto()
    result.CopyFrom(model)
    softmax = next(node for node in result.graph.node if node.output[0] == "probabilities")
    classes = result.graph.output[0].type.tensor_type.shape.dim[1].dim_value
    identity = helper.make_node("Identity", [softmax.input[0]], ["logits"], name="logits")
    result.graph.node.append(identity)
    result.graph.output.append(helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["N", classes]))
    return result


def images(batch: int, resolution: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 3, resolution, resolution)).astype(np.float32)


@pytest.fixture(scope="module")
def small_model() -> onnx.ModelProto:
    return with_logits(vit_tiny(**SMALL))


@pytest.fixture(scope="module")
def small_session(small_model) -> tinyinfer.InferenceSession:
    return tinyinfer.InferenceSession(small_model, check_shapes=True)


# ---------------------------------------------------------------------------- published numbers
def test_params_and_macs_match_the_paper():
    params, macs = measured_cost(build("vit_tiny"))
    published = entry("vit_tiny")
    assert params == pytest.approx(published.params, rel=0.03)
    assert macs == pytest.approx(published.macs, rel=0.03)
    # the exact DeiT-Ti count: 12 blocks of 444,864, patch embedding, tokens, final norm, head
    # (scalar constants such as the attention scale are not parameters)
    assert params == 12 * 444_864 + 147_648 + 192 + 197 * 192 + 384 + 193_000


def test_model_passes_the_onnx_checker():
    onnx.checker.check_model(vit_tiny(**SMALL), full_check=True)
    ops = {node.op_type for node in vit_tiny(**SMALL).graph.node}
    assert "Attention" not in ops and {"MatMul", "Softmax", "LayerNormalization", "Erf"} <= ops


# ---------------------------------------------------------------------------- tinyinfer == ONNX Runtime
@pytest.mark.parametrize("batch", [1, 4])
def test_tinyinfer_matches_onnxruntime(small_model, small_session, batch):
    # Both runtimes sum the same float32 products in different orders (BLAS blocking, LayerNorm
    # and softmax reductions); through 12 blocks the logits agree to ~1e-5 relative, so rtol 1e-3
    # with an absolute floor of 1e-4 of the largest logit (for logits near zero) has margin.
    # Probabilities are in [0, 1] and squashed by the softmax, so atol 1e-5 is tight but safe.
    x = images(batch, SMALL["resolution"])
    probabilities, logits = small_session.run(["probabilities", "logits"], {"input": x})
    reference = ort.InferenceSession(small_model.SerializeToString(), providers=["CPUExecutionProvider"])
    want_probabilities, want_logits = reference.run(["probabilities", "logits"], {"input": x})
    assert logits.shape == (batch, 1000)
    np.testing.assert_allclose(logits, want_logits, rtol=1e-3, atol=1e-4 * np.abs(want_logits).max())
    np.testing.assert_allclose(probabilities, want_probabilities, rtol=0, atol=1e-5)


def test_logits_have_a_sane_scale(small_session):
    (logits,) = small_session.run(["logits"], {"input": images(4, SMALL["resolution"], seed=1)})
    assert np.all(np.isfinite(logits))
    assert 0.05 < logits.std() < 50


# ---------------------------------------------------------------------------- the attention wiring
def attention_numpy(x, weights, prefix, heads):
    """Multi-head self-attention in float64 from the Linear weights named ``prefix.qkv/proj``."""
    x = x.astype(np.float64)
    width = x.shape[-1]
    qkv = x @ weights[f"{prefix}.qkv.weight"] + weights[f"{prefix}.qkv.bias"]
    q, k, v = np.split(qkv, 3, axis=-1)
    head_dim = width // heads
    context = np.empty_like(q)
    for head in range(heads):  # one head at a time, on its own slice of columns
        cols = slice(head * head_dim, (head + 1) * head_dim)
        scores = q[..., cols] @ np.swapaxes(k[..., cols], -1, -2) / np.sqrt(head_dim)
        scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
        context[..., cols] = scores / scores.sum(axis=-1, keepdims=True) @ v[..., cols]
    return context @ weights[f"{prefix}.proj.weight"] + weights[f"{prefix}.proj.bias"]


@pytest.mark.parametrize("shape, heads", [(("N", 7, 12), 3), (("N", 4, 5, 8), 2), (("N", 6, 16), 1)])
def test_attention_matches_the_formula(shape, heads):
    # float32 through two matmuls and a softmax of a few terms: ~1e-6 relative, rtol 1e-4 has margin.
    nb = NetworkBuilder("attention", seed=3)
    x = nb.input("x", shape)
    y = multi_head_attention(nb, x, heads, name="attn")
    model = nb.build(y)
    weights = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}
    feed = np.random.default_rng(4).standard_normal((2, *shape[1:])).astype(np.float32)
    (got,) = tinyinfer.InferenceSession(model, check_shapes=True).run(None, {"x": feed})
    np.testing.assert_allclose(got, attention_numpy(feed, weights, "attn", heads), rtol=1e-4, atol=1e-5)


def shuffle_patches(x: np.ndarray, patch: int, order: np.ndarray) -> np.ndarray:
    """Rearrange the patch×patch squares of [N, C, H, W] images: square i moves to place order[i]."""
    n, c, h, w = x.shape
    rows, cols = h // patch, w // patch
    squares = x.reshape(n, c, rows, patch, cols, patch).transpose(0, 1, 2, 4, 3, 5).reshape(n, c, rows * cols, patch, patch)
    moved = np.empty_like(squares)
    moved[:, :, order] = squares
    return moved.reshape(n, c, rows, cols, patch, patch).transpose(0, 1, 2, 4, 3, 5).reshape(n, c, h, w)


def test_without_position_embeddings_patch_order_does_not_matter():
    # Self-attention is permutation-equivariant over tokens, and every other layer acts on one
    # token at a time, so permuting the patches permutes the patch tokens and leaves the class
    # token alone. Only the summation order inside softmax and A·V changes: atol 1e-5·max|logit|.
    model = with_logits(vit_tiny(**SMALL, position_embedding=False))
    session = tinyinfer.InferenceSession(model)
    x = images(2, SMALL["resolution"], seed=5)
    order = np.random.default_rng(6).permutation((SMALL["resolution"] // SMALL["patch_size"]) ** 2)
    shuffled = shuffle_patches(x, SMALL["patch_size"], order)
    assert not np.allclose(shuffled, x)
    (logits,) = session.run(["logits"], {"input": x})
    (logits_shuffled,) = session.run(["logits"], {"input": shuffled})
    np.testing.assert_allclose(logits_shuffled, logits, rtol=0, atol=1e-5 * np.abs(logits).max())


def test_position_embeddings_make_patch_order_matter(small_session):
    # The same shuffle with position embeddings changes the answer: the test above is not vacuous.
    x = images(2, SMALL["resolution"], seed=5)
    order = np.random.default_rng(6).permutation((SMALL["resolution"] // SMALL["patch_size"]) ** 2)
    (logits,) = small_session.run(["logits"], {"input": x})
    (logits_shuffled,) = small_session.run(["logits"], {"input": shuffle_patches(x, SMALL["patch_size"], order)})
    assert np.abs(logits_shuffled - logits).max() > 1e-3 * np.abs(logits).max()


# ---------------------------------------------------------------------------- options
def test_options_change_the_cost_as_expected():
    shallow = dict(SMALL, depth=4)  # every option changes each block alike: 4 blocks show it
    base_params, base_macs = measured_cost(vit_tiny(**shallow))
    # fewer pixels: fewer MACs; the only parameters that depend on resolution are the position embeddings
    params, macs = measured_cost(vit_tiny(**dict(shallow, resolution=16)))
    assert macs < base_macs and base_params - params == (17 - 5) * 192
    # a shallower encoder: 444,864 parameters fewer per block
    params, _ = measured_cost(vit_tiny(**dict(shallow, depth=2)))
    assert base_params - params == 2 * 444_864
    # a wider one, with more heads of the same width
    params, macs = measured_cost(vit_tiny(**dict(shallow, dim=384, heads=6)))
    assert params > 3 * base_params and macs > 3 * base_macs
    # no position embeddings: 17 tokens × 192 parameters fewer
    params, _ = measured_cost(vit_tiny(**shallow, position_embedding=False))
    assert base_params - params == 17 * 192
    # the head follows num_classes
    params, _ = measured_cost(vit_tiny(**shallow, num_classes=10))
    assert base_params - params == 990 * 193


def test_options_set_the_graph_shapes():
    model = vit_tiny(resolution=48, patch_size=16, dim=64, depth=2, heads=4, num_classes=7)
    session = tinyinfer.InferenceSession(model, check_shapes=True)
    (probabilities,) = session.run(None, {"input": images(3, 48)})
    assert probabilities.shape == (3, 7)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("options, message", [
    (dict(resolution=30, patch_size=8), "multiple of patch_size"),
    (dict(resolution=32, patch_size=8, dim=100, heads=3), "divisible by heads"),
])
def test_bad_options_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        vit_tiny(**options)


def test_builder_is_deterministic():
    first, again = vit_tiny(**SMALL, depth=2), vit_tiny(**SMALL, depth=2)
    other = vit_tiny(**SMALL, depth=2, seed=1)
    assert first.SerializeToString() == again.SerializeToString()
    assert first.SerializeToString() != other.SerializeToString()
