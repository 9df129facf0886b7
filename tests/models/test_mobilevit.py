"""MobileViT-XS of the zoo: its published size, its unfold/fold, and tinyinfer against ONNX Runtime.

Oracles: the paper's parameter count and the MAC count of the zoo entry; ONNX Runtime running
the same graph; and for unfold/fold, the index formula of the MobileViT block written out as
loops over the patch offsets — the pixel at offset (i, j) of patch (a, b) becomes token
a·(W/p) + b of sequence i·p + j.

Correctness tests run at 64×64 (the last MobileViT block then sees 2×2 pixels, one patch);
only the count test builds the paper's 256×256 model.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

import tinyinfer
from tinyinfer.models import build, entry
from tinyinfer.models.builder import NetworkBuilder
from tinyinfer.models.mobilevit import fold, mobilevit_xs, unfold
from tinyinfer.models.zoo import measured_cost

SMALL = 64


def with_logits(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with the Gemm output that feeds the final Softmax as an extra graph output "logits"."""
    result = onnx.ModelProto()
    result.CopyFrom(model)
    softmax = next(node for node in result.graph.node if node.output[0] == "probabilities")
    classes = result.graph.output[0].type.tensor_type.shape.dim[1].dim_value
    result.graph.node.append(helper.make_node("Identity", [softmax.input[0]], ["logits"], name="logits"))
    result.graph.output.append(helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["N", classes]))
    return result


def images(batch: int, resolution: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 3, resolution, resolution)).astype(np.float32)


@pytest.fixture
def skip_batchnorm_calibration(monkeypatch):
    """Counting needs the graph only: skip measuring BatchNorm statistics on a forward pass
    (the slowest part of building at 256×256; statistics change no parameter count or MAC)."""
    monkeypatch.setattr("tinyinfer.models.light.calibrate_batchnorm", lambda model, **_: model)


@pytest.fixture(scope="module")
def plain_small_model() -> onnx.ModelProto:
    return mobilevit_xs(resolution=SMALL)


@pytest.fixture(scope="module")
def small_model(plain_small_model) -> onnx.ModelProto:
    return with_logits(plain_small_model)


@pytest.fixture(scope="module")
def small_session(small_model) -> tinyinfer.InferenceSession:
    return tinyinfer.InferenceSession(small_model, check_shapes=True)


# ---------------------------------------------------------------------------- published numbers
def test_params_and_macs_match_the_paper(skip_batchnorm_calibration):
    params, macs = measured_cost(build("mobilevit_xs"))
    published = entry("mobilevit_xs")
    assert params == pytest.approx(published.params, rel=0.03)
    assert macs == pytest.approx(published.macs, rel=0.03)


def test_model_passes_the_onnx_checker(small_model):
    onnx.checker.check_model(small_model, full_check=True)
    convs = [node for node in small_model.graph.node if node.op_type == "Conv"]
    # the channels of the paper's table: stem 16, stages 32, 48, 64, 80, 96, head 384
    widths = [int(next(t for t in small_model.graph.initializer if t.name == node.input[1]).dims[0]) for node in convs]
    assert widths[0] == 16 and widths[-1] == 384
    for channels in (32, 48, 64, 80, 96):
        assert channels in widths


# ---------------------------------------------------------------------------- tinyinfer == ONNX Runtime
@pytest.mark.parametrize("batch", [1, 4])
def test_tinyinfer_matches_onnxruntime(small_model, small_session, batch):
    # The same float32 graph summed in different orders (conv and matmul blocking, BatchNorm as
    # scale-and-shift, LayerNorm and softmax reductions): logits agree to ~1e-5 relative after
    # ~60 layers, so rtol 1e-3 with a floor of 1e-4 of the largest logit has margin; the
    # probabilities, squashed into [0, 1] by the softmax, within atol 1e-5.
    x = images(batch, SMALL)
    probabilities, logits = small_session.run(["probabilities", "logits"], {"input": x})
    reference = ort.InferenceSession(small_model.SerializeToString(), providers=["CPUExecutionProvider"])
    want_probabilities, want_logits = reference.run(["probabilities", "logits"], {"input": x})
    assert logits.shape == (batch, 1000)
    np.testing.assert_allclose(logits, want_logits, rtol=1e-3, atol=1e-4 * np.abs(want_logits).max())
    np.testing.assert_allclose(probabilities, want_probabilities, rtol=0, atol=1e-5)


def test_logits_have_a_sane_scale(small_session):
    (logits,) = small_session.run(["logits"], {"input": images(4, SMALL, seed=1)})
    assert np.all(np.isfinite(logits))
    assert 0.05 < logits.std() < 50


# ---------------------------------------------------------------------------- unfold and fold
def unfold_loops(x: np.ndarray, patch: int) -> np.ndarray:
    n, d, h, w = x.shape
    rows, cols = h // patch, w // patch
    out = np.empty((n, patch * patch, rows * cols, d), x.dtype)
    for i in range(patch):
        for j in range(patch):
            for a in range(rows):
                for b in range(cols):
                    out[:, i * patch + j, a * cols + b, :] = x[:, :, a * patch + i, b * patch + j]
    return out


@pytest.mark.parametrize("shape, patch", [((2, 3, 4, 6), 2), ((1, 5, 8, 8), 4), ((3, 2, 6, 3), 3), ((1, 4, 2, 2), 1)])
def test_unfold_and_fold_follow_the_patch_layout(shape, patch):
    nb = NetworkBuilder("unfold_fold")
    x = nb.input("x", ("N", *shape[1:]))
    tokens = unfold(nb, x, patch, name="unfold")
    back = fold(nb, tokens, nb.shapes[x], patch, name="fold")
    model = nb.build([tokens, back])
    feed = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    got_tokens, got_back = tinyinfer.InferenceSession(model, check_shapes=True).run(None, {"x": feed})
    np.testing.assert_array_equal(got_tokens, unfold_loops(feed, patch))  # pure data movement: exact
    np.testing.assert_array_equal(got_back, feed)


# ---------------------------------------------------------------------------- options
def test_options_change_the_cost_and_the_shapes(plain_small_model, skip_batchnorm_calibration):
    params_64, macs_64 = measured_cost(plain_small_model)
    params_128, macs_128 = measured_cost(mobilevit_xs(resolution=128))
    # no position embeddings, no resolution-dependent layer: the same parameters at any size
    assert params_64 == params_128
    assert macs_64 < macs_128
    # larger patches: shorter sequences, so fewer attention MACs and the same parameters
    coarse = mobilevit_xs(resolution=128, patch_size=4)
    params, macs = measured_cost(coarse)
    assert params == params_128 and macs < macs_128
    (probabilities,) = tinyinfer.InferenceSession(coarse, check_shapes=True).run(None, {"input": images(1, 128)})
    assert probabilities.shape == (1, 1000)
    # the classifier follows num_classes (384 inputs + a bias per class); the output too
    few = mobilevit_xs(resolution=SMALL, num_classes=10)
    params, _ = measured_cost(few)
    assert params_64 - params == 990 * 385
    (probabilities,) = tinyinfer.InferenceSession(few, check_shapes=True).run(None, {"input": images(2, SMALL)})
    assert probabilities.shape == (2, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("options", [dict(resolution=96), dict(resolution=64, patch_size=4), dict(resolution=32)])
def test_resolutions_the_patches_do_not_tile_are_refused(options):
    with pytest.raises(ValueError, match="multiple of 32"):
        mobilevit_xs(**options)


def test_builder_is_deterministic(plain_small_model):
    again, other = mobilevit_xs(resolution=SMALL), mobilevit_xs(resolution=SMALL, seed=1)
    assert plain_small_model.SerializeToString() == again.SerializeToString()
    assert plain_small_model.SerializeToString() != other.SerializeToString()
