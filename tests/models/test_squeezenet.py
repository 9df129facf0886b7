"""SqueezeNet 1.1 of the zoo: the published cost, a valid ONNX model, the same answer as ONNX Runtime.

Oracles: the parameter count of v1.1 (1,235,496, the authors' Caffe model) and the paper's
v1.0 architecture (Table 1: 1,248,424 parameters) built from the same fire modules,
``onnx.checker`` with full shape inference, and ONNX Runtime running the same model.
Tolerances of the comparison with ONNX Runtime: both engines compute in float32 but sum in
different orders; rounding differences of ~1e-7 relative per layer grow over 18 layers to
~1e-5 of the logits' scale, so ``rtol=1e-3`` with ``atol=1e-4 * max|logit|`` (for logits
near zero) leaves ample margin while a wrong kernel is off by O(1). Probabilities move by at
most the logit error times p <= 1, hence ``atol=1e-5`` absolute.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
import pytest

import tinyinfer
from tinyinfer.runtime import load
from tinyinfer.models import count_flops, zoo
from tinyinfer.models.builder import NetworkBuilder
from tinyinfer.models.squeezenet import fire
from zoo_check import with_logits

RESOLUTION = 96  # correctness runs; the published cost is checked at 224


@pytest.fixture(scope="module")
def squeezenet():
    return with_logits(zoo.build("squeezenet1_1", resolution=RESOLUTION))


def test_params_and_macs_match_the_published_figures():
    params, macs = zoo.measured_cost(zoo.build("squeezenet1_1"))
    published = zoo.entry("squeezenet1_1")
    assert params == pytest.approx(published.params, rel=0.03)
    assert macs == pytest.approx(published.macs, rel=0.03)
    assert params == 1_235_496  # the authors' v1.1 model, exactly


def test_fire_modules_reproduce_the_papers_v1_0_parameter_count():
    """Table 1 of the paper (v1.0: 7×7/96 stem, pools after conv1, fire4, fire8) totals 1,248,424."""
    net = NetworkBuilder("squeezenet1_0")
    x = net.input("input", ("N", 3, 224, 224))
    x = net.conv(x, 96, 7, stride=2, padding=0, bias=True)
    x = net.max_pool(x, 3, 2, ceil_mode=True)
    fires = [(16, 64, 64), (16, 64, 64), (32, 128, 128), (32, 128, 128), (48, 192, 192), (48, 192, 192),
             (64, 256, 256), (64, 256, 256)]
    for index, spec in enumerate(fires, start=2):
        x = fire(net, x, *spec, name=f"fire{index}")
        if index in (4, 8):
            x = net.max_pool(x, 3, 2, ceil_mode=True)
    x = net.conv(x, 1000, 1, bias=True)
    params, macs = zoo.measured_cost(net.build(x, calibrate=False))
    assert params == 1_248_424
    # "2.4x less computation than v1.0": v1.0 (819M at 224 with its pools) / v1.1 = 2.35.
    assert macs > 2.3 * zoo.entry("squeezenet1_1").macs


def test_passes_the_onnx_checker(squeezenet):
    onnx.checker.check_model(squeezenet, full_check=True)


@pytest.mark.parametrize("batch", [1, 4])
def test_matches_onnxruntime(squeezenet, batch):
    image = np.random.default_rng(batch).standard_normal((batch, 3, RESOLUTION, RESOLUTION)).astype(np.float32)
    probabilities, logits = tinyinfer.InferenceSession(squeezenet, check_shapes=True).run(None, {"input": image})
    reference = onnxruntime.InferenceSession(squeezenet.SerializeToString(), providers=["CPUExecutionProvider"])
    theirs = reference.run(None, {"input": image})
    assert logits.shape == (batch, 1000)
    np.testing.assert_allclose(logits, theirs[1], rtol=1e-3, atol=1e-4 * np.abs(theirs[1]).max())
    np.testing.assert_allclose(probabilities, theirs[0], atol=1e-5)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_logits_have_a_sane_scale(squeezenet):
    image = np.random.default_rng(7).standard_normal((2, 3, RESOLUTION, RESOLUTION)).astype(np.float32)
    session = onnxruntime.InferenceSession(squeezenet.SerializeToString(), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"input": image})[1]
    assert np.isfinite(logits).all()
    assert 0.05 < logits.std() < 50


@pytest.mark.parametrize("resolution, feature_map", [(224, 13), (227, 14), (96, 5)])
def test_class_maps_follow_caffe_ceil_pooling(resolution, feature_map):
    """The pools round up, as in Caffe: 224 gives 13×13 class maps, the authors' 227 crop 14×14."""
    model = zoo.build("squeezenet1_1", resolution=resolution)
    assert zoo.measured_cost(model)[0] == 1_235_496
    conv10 = next(cost for cost in count_flops(load(model)) if cost.name == "conv10")
    assert conv10.macs == 512 * 1000 * feature_map**2


def test_a_smaller_input_costs_fewer_macs():
    macs = [zoo.measured_cost(zoo.build("squeezenet1_1", resolution=r))[1] for r in (96, 160, 224, 227)]
    assert macs == sorted(macs) and len(set(macs)) == 4


def test_num_classes_sets_the_last_convolution():
    model = zoo.build("squeezenet1_1", resolution=RESOLUTION, num_classes=10)
    assert model.graph.output[0].type.tensor_type.shape.dim[1].dim_value == 10
    params, _ = zoo.measured_cost(model)
    assert params == 1_235_496 - (512 + 1) * (1000 - 10)


def test_the_same_seed_builds_the_same_model():
    first = zoo.build("squeezenet1_1", resolution=RESOLUTION, seed=3)
    assert first.SerializeToString() == zoo.build("squeezenet1_1", resolution=RESOLUTION, seed=3).SerializeToString()
    assert first.SerializeToString() != zoo.build("squeezenet1_1", resolution=RESOLUTION, seed=4).SerializeToString()
