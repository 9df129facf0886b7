"""EfficientNet of the zoo: the paper's costs, compound scaling, valid ONNX, ONNX Runtime's outputs.

Costs are counted at the paper's resolutions (224×224 for B0); everything that runs the model
runs it at 96×96, which exercises every layer (the last stage still sees a 3×3 map) quickly.
"""

from __future__ import annotations

import functools

import numpy as np
import onnx
import onnxruntime
import pytest

import tinyinfer
from tinyinfer.models import zoo
from tinyinfer.models.efficientnet import (
    EFFICIENTNET_B0_STAGES,
    EFFICIENTNET_PUBLISHED,
    EFFICIENTNET_SCALING,
    efficientnet_b0,
)
from zoo_check import with_logits

SMALL = 96  # resolution of the tests that run the model
COST_TOLERANCE = 0.03  # the zoo's rule: within 3% of the published figure


def uncalibrated(**config) -> onnx.ModelProto:
    """EfficientNet built without measuring BatchNorm statistics (a full run of the network):
    counting and structure need the shapes only."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("tinyinfer.models.light.calibrate_batchnorm", lambda model, **options: model)
        return efficientnet_b0(**config)


@functools.lru_cache(maxsize=None)
def cost(**config) -> tuple[int, int]:
    return zoo.measured_cost(uncalibrated(**config))


@functools.lru_cache(maxsize=None)
def small_model() -> onnx.ModelProto:
    return efficientnet_b0(resolution=SMALL, num_classes=100)


@functools.lru_cache(maxsize=None)
def outputs(batch: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(tinyinfer's, ONNX Runtime's) [probabilities, logits] on random normal images."""
    model = with_logits(small_model())
    images = np.random.default_rng(batch).standard_normal((batch, 3, SMALL, SMALL)).astype(np.float32)
    ours = tinyinfer.InferenceSession(model, check_shapes=True).run(None, {"input": images})
    reference = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return ours, reference.run(None, {"input": images})


def blocks(model: onnx.ModelProto) -> int:
    """Number of MBConv blocks: each has one depthwise conv (named ``stageS.I.dwconv``)."""
    return sum(node.op_type == "Conv" and node.name.endswith(".dwconv") for node in model.graph.node)


def test_published_cost():
    published = zoo.entry("efficientnet_b0")
    params, macs = cost()
    assert params == pytest.approx(published.params, rel=COST_TOLERANCE)
    assert macs == pytest.approx(published.macs, rel=COST_TOLERANCE)


@pytest.mark.parametrize("variant", ["b1", "b2", "b3"])
def test_compound_scaling_matches_table_2(variant):
    """B1-B3 are B0 with the reference implementation's coefficients, and cost what Table 2 says."""
    expected_params, expected_macs = EFFICIENTNET_PUBLISHED[variant]
    params, macs = cost(**EFFICIENTNET_SCALING[variant])
    assert params == pytest.approx(expected_params, rel=COST_TOLERANCE)
    assert macs == pytest.approx(expected_macs, rel=COST_TOLERANCE)


def test_valid_onnx():
    onnx.checker.check_model(small_model(), full_check=True)


@pytest.mark.parametrize("batch", [1, 4])
def test_matches_onnxruntime(batch):
    (probabilities, logits), (expected_probabilities, expected_logits) = outputs(batch)
    assert logits.shape == (batch, 100)
    # Both engines compute in float32 but sum in different orders (and spell sigmoid
    # differently); through ~80 layers the rounding differences grow to ~1e-5 relative. A
    # logit near zero inherits the absolute error of the large terms it was summed from,
    # hence atol relative to the largest logit.
    np.testing.assert_allclose(logits, expected_logits, rtol=1e-3, atol=1e-4 * np.abs(expected_logits).max())
    # Softmax's derivative is at most 1/2 in each input, and probabilities are <= 1.
    np.testing.assert_allclose(probabilities, expected_probabilities, rtol=0, atol=1e-5)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_activations_stay_sane():
    (_, logits), _ = outputs(4)
    assert np.isfinite(logits).all()
    assert 0.05 < logits.std() < 50


def test_deterministic_for_a_seed():
    # the same seed rebuilds the same bytes (weights and measured BatchNorm statistics alike)
    again = efficientnet_b0(resolution=SMALL, num_classes=100, seed=0)
    assert again.SerializeToString() == small_model().SerializeToString()
    other = efficientnet_b0(resolution=SMALL, num_classes=100, seed=1)
    assert other.SerializeToString() != small_model().SerializeToString()


def test_table_1_structure():
    model = uncalibrated(resolution=SMALL)
    assert blocks(model) == sum(repeats for *_, repeats in EFFICIENTNET_B0_STAGES)  # 16 MBConv blocks
    ops = [node.op_type for node in model.graph.node]
    assert ops.count("GlobalAveragePool") == 16 + 1  # an SE block in every MBConv, then the head's pool
    # the skip connection: every block but the first of each stage (which changes the shape)
    assert ops.count("Add") == sum(repeats - 1 for *_, repeats in EFFICIENTNET_B0_STAGES)
    weights = {t.name: tuple(t.dims) for t in model.graph.initializer}
    reduce = [node for node in model.graph.node if node.name.endswith(".se.reduce")]
    # SE squeezes to a quarter of the block's *input* channels: 32 -> 8 in the first block
    assert weights[reduce[0].input[1]][:2] == (8, 32)
    assert weights[reduce[1].input[1]][:2] == (4, 96)  # 16 input channels, expanded 6x


def test_depth_and_width_coefficients():
    assert blocks(uncalibrated(depth_coefficient=2.0, resolution=SMALL)) == 2 * 16
    # ceil(1.1 n) = n + 1 for every stage's n <= 4: B1 has 7 more blocks than B0
    assert blocks(uncalibrated(depth_coefficient=1.1, resolution=SMALL)) == 16 + 7
    _, macs = cost(resolution=SMALL)
    _, wide_macs = cost(width_coefficient=2.0, resolution=SMALL)
    assert 3 < wide_macs / macs < 4.5  # MACs grow with the square of the width


def test_smaller_resolution_costs_fewer_macs_same_params():
    params, macs = cost()
    small_params, small_macs = cost(resolution=112)
    assert small_params == params
    assert macs / 5 < small_macs < macs / 3  # about a quarter: MACs follow the pixel count


def test_bad_coefficients_are_refused():
    with pytest.raises(ValueError, match="coefficient"):
        efficientnet_b0(width_coefficient=0.0)
