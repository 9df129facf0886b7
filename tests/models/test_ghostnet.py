"""GhostNet of the zoo: the paper's costs, valid ONNX, ONNX Runtime's outputs, ghost modules.

Costs are counted at 224×224, the paper's resolution; everything that runs the model runs it
at 96×96, which exercises every layer (the last stage still sees a 3×3 map) quickly.
"""

from __future__ import annotations

import functools

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import helper

import tinyinfer
from tinyinfer.models import zoo
from tinyinfer.models.ghostnet import GHOSTNET_BOTTLENECKS, GHOSTNET_PUBLISHED, ghostnet
from zoo_check import with_logits

SMALL = 96  # resolution of the tests that run the model
COST_TOLERANCE = 0.03  # the zoo's rule: within 3% of the published figure


@functools.lru_cache(maxsize=None)
def cost(**config) -> tuple[int, int]:
    """(parameters, MACs) of GhostNet, built without measuring BatchNorm statistics (a full run
    of the network): counting needs the shapes only."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("tinyinfer.models.light.calibrate_batchnorm", lambda model, **options: model)
        return zoo.measured_cost(ghostnet(**config))


@functools.lru_cache(maxsize=None)
def small_model() -> onnx.ModelProto:
    return ghostnet(resolution=SMALL, num_classes=100)


@functools.lru_cache(maxsize=None)
def outputs(batch: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(tinyinfer's, ONNX Runtime's) [probabilities, logits] on random normal images."""
    model = with_logits(small_model())
    images = np.random.default_rng(batch).standard_normal((batch, 3, SMALL, SMALL)).astype(np.float32)
    ours = tinyinfer.InferenceSession(model, check_shapes=True).run(None, {"input": images})
    reference = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return ours, reference.run(None, {"input": images})


def attribute(node: onnx.NodeProto, name: str):
    return next(helper.get_attribute_value(a) for a in node.attribute if a.name == name)


def test_published_cost():
    published = zoo.entry("ghostnet")
    params, macs = cost()
    assert params == pytest.approx(published.params, rel=COST_TOLERANCE)
    assert macs == pytest.approx(published.macs, rel=COST_TOLERANCE)


def test_valid_onnx():
    onnx.checker.check_model(small_model(), full_check=True)


@pytest.mark.parametrize("batch", [1, 4])
def test_matches_onnxruntime(batch):
    (probabilities, logits), (expected_probabilities, expected_logits) = outputs(batch)
    assert logits.shape == (batch, 100)
    # Both engines compute in float32 but sum in different orders; through ~60 layers the
    # rounding differences grow to ~1e-5 relative. A logit near zero inherits the absolute
    # error of the large terms it was summed from, hence atol relative to the largest logit.
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
    again = ghostnet(resolution=SMALL, num_classes=100, seed=0)
    assert again.SerializeToString() == small_model().SerializeToString()
    other = ghostnet(resolution=SMALL, num_classes=100, seed=1)
    assert other.SerializeToString() != small_model().SerializeToString()


def test_smaller_resolution_costs_fewer_macs_same_params():
    params, macs = cost()
    small_params, small_macs = cost(resolution=112)
    assert small_params == params
    assert macs / 5 < small_macs < macs / 3  # about a quarter: MACs follow the pixel count


@pytest.mark.parametrize("width", [0.5, 1.3])
def test_widths_match_table_7(width):
    expected_params, expected_macs = GHOSTNET_PUBLISHED[width]
    params, macs = cost(width=width)
    assert params == pytest.approx(expected_params, rel=COST_TOLERANCE)
    assert macs == pytest.approx(expected_macs, rel=COST_TOLERANCE)


def test_ghost_modules_make_half_their_maps_with_a_depthwise_conv():
    model = small_model()
    cheap = [n for n in model.graph.node if n.op_type == "Conv" and n.name.endswith(".cheap")]
    assert len(cheap) == 2 * len(GHOSTNET_BOTTLENECKS)  # two ghost modules per bottleneck
    weights = {t.name: t.dims for t in model.graph.initializer}
    for node in cheap:
        out_channels, in_per_group, kh, kw = weights[node.input[1]]
        assert (in_per_group, kh, kw) == (1, 3, 3)  # depthwise 3×3, one ghost per intrinsic map
        assert attribute(node, "group") == out_channels


def test_squeeze_excite_where_table_1_puts_it():
    model = small_model()
    gates = [n for n in model.graph.node if n.op_type == "HardSigmoid"]
    assert len(gates) == sum(se for *_, se, _ in GHOSTNET_BOTTLENECKS)
    for gate in gates:  # the reference implementation's hard sigmoid: ReLU6(x + 3) / 6
        assert attribute(gate, "alpha") == pytest.approx(1 / 6)
        assert attribute(gate, "beta") == pytest.approx(0.5)
    blocks = sorted({int(n.name.split(".")[0].removeprefix("bneck")) for n in gates})
    assert blocks == [i for i, (*_, se, _) in enumerate(GHOSTNET_BOTTLENECKS) if se]


def test_bad_width_is_refused():
    with pytest.raises(ValueError, match="width"):
        ghostnet(width=0)
