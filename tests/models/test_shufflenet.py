"""ShuffleNet V1 and V2 of the zoo: the papers' costs, valid ONNX, ONNX Runtime's outputs.

Costs are counted at 224×224, the papers' resolution; everything that runs a model runs it at
96×96, which exercises every layer (stage 4 still sees a 3×3 map) in a fraction of the time.
"""

from __future__ import annotations

import functools

import numpy as np
import onnx
import onnxruntime
import pytest

import tinyinfer
from tinyinfer.models import zoo
from tinyinfer.models.shufflenet import (
    SHUFFLENET_V1_COMPLEXITY,
    SHUFFLENET_V2_PUBLISHED,
    shufflenet_v1,
    shufflenet_v2,
)
from zoo_check import uncalibrated, with_logits

MODELS = ["shufflenet_v1", "shufflenet_v2"]
SMALL = 96  # resolution of the tests that run a model
COST_TOLERANCE = 0.03  # the zoo's rule: within 3% of the published figure


@functools.lru_cache(maxsize=None)
def cost(name: str, **config) -> tuple[int, int]:
    return zoo.measured_cost(uncalibrated(name, **config))


@functools.lru_cache(maxsize=None)
def small_model(name: str) -> onnx.ModelProto:
    return zoo.build(name, resolution=SMALL, num_classes=100)


@functools.lru_cache(maxsize=None)
def outputs(name: str, batch: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(tinyinfer's, ONNX Runtime's) [probabilities, logits] on random normal images."""
    model = with_logits(small_model(name))
    images = np.random.default_rng(batch).standard_normal((batch, 3, SMALL, SMALL)).astype(np.float32)
    ours = tinyinfer.InferenceSession(model, check_shapes=True).run(None, {"input": images})
    reference = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return ours, reference.run(None, {"input": images})


@pytest.mark.parametrize("name", MODELS)
def test_published_cost(name):
    published = zoo.entry(name)
    params, macs = cost(name)
    assert params == pytest.approx(published.params, rel=COST_TOLERANCE)
    assert macs == pytest.approx(published.macs, rel=COST_TOLERANCE)


@pytest.mark.parametrize("name", MODELS)
def test_valid_onnx(name):
    onnx.checker.check_model(small_model(name), full_check=True)


@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("name", MODELS)
def test_matches_onnxruntime(name, batch):
    (probabilities, logits), (expected_probabilities, expected_logits) = outputs(name, batch)
    assert logits.shape == (batch, 100)
    # Both engines compute in float32 but sum in different orders; through ~50 layers the
    # rounding differences grow to ~1e-5 relative. A logit near zero inherits the absolute
    # error of the large terms it was summed from, hence atol relative to the largest logit.
    np.testing.assert_allclose(logits, expected_logits, rtol=1e-3, atol=1e-4 * np.abs(expected_logits).max())
    # Softmax's derivative is at most 1/2 in each input, and probabilities are <= 1.
    np.testing.assert_allclose(probabilities, expected_probabilities, rtol=0, atol=1e-5)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_activations_stay_sane(name):
    (_, logits), _ = outputs(name, 4)
    assert np.isfinite(logits).all()
    assert 0.05 < logits.std() < 50


@pytest.mark.parametrize("name", MODELS)
def test_deterministic_for_a_seed(name):
    # the same seed rebuilds the same bytes (weights and measured BatchNorm statistics alike)
    again = zoo.build(name, resolution=SMALL, num_classes=100, seed=0)
    assert again.SerializeToString() == small_model(name).SerializeToString()
    other = zoo.build(name, resolution=SMALL, num_classes=100, seed=1)
    assert other.SerializeToString() != small_model(name).SerializeToString()


@pytest.mark.parametrize("name", MODELS)
def test_smaller_resolution_costs_fewer_macs_same_params(name):
    params, macs = cost(name)
    small_params, small_macs = cost(name, resolution=112)
    assert small_params == params
    assert macs / 5 < small_macs < macs / 3  # about a quarter: MACs follow the pixel count


# ---------------------------------------------------------------------------- options
@pytest.mark.parametrize("groups", sorted(SHUFFLENET_V1_COMPLEXITY))
def test_v1_groups_match_table_1(groups):
    """Table 1: every g gets the channels that keep ShuffleNet 1× near 140M multiply-adds."""
    _, macs = cost("shufflenet_v1", groups=groups)
    assert macs == pytest.approx(SHUFFLENET_V1_COMPLEXITY[groups], rel=COST_TOLERANCE)


def test_v1_groups_make_pointwise_convs_grouped():
    model = uncalibrated("shufflenet_v1", groups=8, resolution=SMALL)
    pointwise = [n for n in model.graph.node if n.op_type == "Conv" and n.name.endswith(("gconv1", "gconv2"))]
    groups = [next(a.i for a in n.attribute if a.name == "group") for n in pointwise]
    assert groups.count(1) == 1  # stage 2's first 1×1 conv only (its input has 24 channels)
    assert set(groups) == {1, 8}


def test_v1_scale_factor():
    params, macs = cost("shufflenet_v1")
    half_params, half_macs = cost("shufflenet_v1", width=0.5)
    assert half_params < params / 2
    # the authors' released g=3 models (megvii-model/ShuffleNet-Series): 0.5x 38M and 2x 524M
    # FLOPs (multiply-adds), about s² times 1x's
    assert half_macs == pytest.approx(38e6, rel=COST_TOLERANCE)
    assert cost("shufflenet_v1", width=2.0)[1] == pytest.approx(524e6, rel=COST_TOLERANCE)


@pytest.mark.parametrize("width", [0.5, 1.5, 2.0])
def test_v2_widths_match_table_5(width):
    expected_params, expected_macs = SHUFFLENET_V2_PUBLISHED[width]
    params, macs = cost("shufflenet_v2", width=width)
    assert params == pytest.approx(expected_params, rel=COST_TOLERANCE)
    assert macs == pytest.approx(expected_macs, rel=COST_TOLERANCE)


def test_v2_splits_and_shuffles():
    model = uncalibrated("shufflenet_v2", resolution=SMALL)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("Split") == sum(repeats - 1 for repeats in (4, 8, 4))  # every stride-1 unit
    assert ops.count("Transpose") == 4 + 8 + 4  # one shuffle per unit


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="groups"):
        shufflenet_v1(groups=5)
    with pytest.raises(ValueError, match="Table 5"):
        shufflenet_v2(width=0.75)
    with pytest.raises(tinyinfer.TinyInferError, match="shufflenet_v2"):
        zoo.build("shufflenet_v2", depth=2)
