"""ResNet-18 of the zoo: the paper's cost, a valid ONNX model, the same answer as ONNX Runtime.

Oracles: the figures He et al. (2016) publish (Table 1: 1.8e9 multiply-adds; 11.7M
parameters), ``onnx.checker`` with full shape inference, and ONNX Runtime running the same
model. Tolerances of the comparison with ONNX Runtime: both engines compute in float32 but
sum in different orders (im2col products here, ORT's own kernels and its batch-norm folding
there); rounding differences of ~1e-7 relative per layer grow over 18 layers to ~1e-5 of the
logits' scale, so ``rtol=1e-3`` with ``atol=1e-4 * max|logit|`` (for logits near zero) leaves
ample margin while still catching any wrong kernel (those are off by O(1)). Probabilities are
softmax of the logits, which moves by at most the logit error times p <= 1, hence
``atol=1e-5`` absolute.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
import pytest

import tinyinfer
from tinyinfer.models import zoo
from zoo_check import uncalibrated, with_logits

RESOLUTION = 64  # correctness runs; the published cost is checked at the paper's 224


@pytest.fixture(scope="module")
def resnet18():
    return with_logits(zoo.build("resnet18", resolution=RESOLUTION))


def test_params_and_macs_match_the_paper():
    params, macs = zoo.measured_cost(uncalibrated("resnet18"))
    published = zoo.entry("resnet18")
    assert params == pytest.approx(published.params, rel=0.03)
    assert macs == pytest.approx(published.macs, rel=0.03)
    assert params == 11_689_512  # the reference implementation's exact count


def test_passes_the_onnx_checker(resnet18):
    onnx.checker.check_model(resnet18, full_check=True)


@pytest.mark.parametrize("batch", [1, 4])
def test_matches_onnxruntime(resnet18, batch):
    image = np.random.default_rng(batch).standard_normal((batch, 3, RESOLUTION, RESOLUTION)).astype(np.float32)
    ours = tinyinfer.InferenceSession(resnet18, check_shapes=True).run(None, {"input": image})
    reference = onnxruntime.InferenceSession(resnet18.SerializeToString(), providers=["CPUExecutionProvider"])
    theirs = reference.run(None, {"input": image})
    probabilities, logits = ours
    assert logits.shape == (batch, 1000)
    np.testing.assert_allclose(logits, theirs[1], rtol=1e-3, atol=1e-4 * np.abs(theirs[1]).max())
    np.testing.assert_allclose(probabilities, theirs[0], atol=1e-5)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_logits_have_a_sane_scale(resnet18):
    image = np.random.default_rng(7).standard_normal((2, 3, RESOLUTION, RESOLUTION)).astype(np.float32)
    session = onnxruntime.InferenceSession(resnet18.SerializeToString(), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"input": image})[1]
    assert np.isfinite(logits).all()
    assert 0.05 < logits.std() < 50


def test_resolution_changes_macs_not_params():
    params, macs = zoo.measured_cost(uncalibrated("resnet18", resolution=RESOLUTION))
    full_params, full_macs = zoo.measured_cost(uncalibrated("resnet18"))
    assert params == full_params
    # The cost of the convolutions scales with the pixels: (64/224)^2 of it, plus the classifier.
    assert macs == pytest.approx(full_macs * (RESOLUTION / 224) ** 2, rel=0.02)


def test_num_classes_sets_the_classifier():
    model = uncalibrated("resnet18", resolution=RESOLUTION, num_classes=10)
    assert model.graph.output[0].type.tensor_type.shape.dim[1].dim_value == 10
    params, _ = zoo.measured_cost(model)
    assert params == 11_689_512 - (512 + 1) * (1000 - 10)


def test_the_same_seed_builds_the_same_model():
    first = uncalibrated("resnet18", resolution=RESOLUTION, seed=3)
    assert first.SerializeToString() == uncalibrated("resnet18", resolution=RESOLUTION, seed=3).SerializeToString()
    assert first.SerializeToString() != uncalibrated("resnet18", resolution=RESOLUTION, seed=4).SerializeToString()
