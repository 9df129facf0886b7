"""MobileNet V1, V2 and V3 of the zoo: the papers' costs, valid ONNX, the same answer as ONNX Runtime.

Oracles: the figures the papers publish — MobileNetV1 Tables 6 and 7 (width and resolution
multipliers), MobileNetV2 Table 4 and its reference implementation's table for widths below
one, MobileNetV3 Table 3 — the block tables themselves (how many residual additions and
squeeze-and-excite gates they imply), ``onnx.checker`` with full shape inference, and ONNX
Runtime running the same model.

Tolerances of the comparison with ONNX Runtime: both engines compute in float32 but sum in
different orders (ORT also folds batch norm into the convolutions); rounding differences of
~1e-7 relative per layer grow over 20 to 50 layers to ~1e-5 of the logits' scale, so
``rtol=1e-3`` with ``atol=1e-4 * max|logit|`` (for logits near zero) leaves ample margin while
a wrong kernel is off by O(1). Probabilities move by at most the logit error times p <= 1,
hence ``atol=1e-5`` absolute.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import numpy_helper

import tinyinfer
from tinyinfer.models import zoo
from zoo_check import uncalibrated, with_logits

MODELS = ("mobilenet_v1", "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small")
RESOLUTION = 96  # correctness runs; the published costs are checked at the papers' resolutions


def op_count(model: onnx.ModelProto, op_type: str) -> int:
    return sum(node.op_type == op_type for node in model.graph.node)


@pytest.fixture(scope="module")
def small_models():
    """Each network at 96×96 with calibrated batch norm, built once for the module."""
    return {name: with_logits(zoo.build(name, resolution=RESOLUTION)) for name in MODELS}


# ---------------------------------------------------------------------------- published figures
@pytest.mark.parametrize("name", MODELS)
def test_params_and_macs_match_the_paper(name):
    params, macs = zoo.measured_cost(uncalibrated(name))
    published = zoo.entry(name)
    assert params == pytest.approx(published.params, rel=0.03)
    assert macs == pytest.approx(published.macs, rel=0.03)


@pytest.mark.parametrize(
    "name, width, resolution, published_macs",
    [
        ("mobilenet_v1", 0.75, 224, 325e6),  # Howard et al., 2017, Table 6
        ("mobilenet_v1", 0.5, 224, 149e6),
        ("mobilenet_v1", 0.25, 224, 41e6),
        ("mobilenet_v1", 1.0, 192, 418e6),  # Table 7
        ("mobilenet_v1", 1.0, 160, 290e6),
        ("mobilenet_v1", 1.0, 128, 186e6),
        ("mobilenet_v2", 1.4, 224, 585e6),  # Sandler et al., 2018, Table 4
        ("mobilenet_v2", 0.75, 224, 209e6),  # the reference implementation's published table
        ("mobilenet_v2", 0.5, 224, 97e6),
        ("mobilenet_v2", 0.35, 224, 59e6),
        ("mobilenet_v3_large", 0.75, 224, 155e6),  # Howard et al., 2019, Table 3
        ("mobilenet_v3_small", 0.75, 224, 44e6),
    ],
)
def test_width_and_resolution_multipliers_match_the_papers(name, width, resolution, published_macs):
    _, macs = zoo.measured_cost(uncalibrated(name, width=width, resolution=resolution))
    assert macs == pytest.approx(published_macs, rel=0.03)


def test_mobilenet_v1_params_follow_the_width_multiplier():
    """Table 6: 0.75 and 0.5 MobileNet-224 have 2.6M and 1.3M parameters."""
    assert zoo.measured_cost(uncalibrated("mobilenet_v1", width=0.75))[0] == pytest.approx(2.6e6, rel=0.03)
    assert zoo.measured_cost(uncalibrated("mobilenet_v1", width=0.5))[0] == pytest.approx(1.3e6, rel=0.03)


def test_mobilenet_v3_large_075_params():
    """Table 3: MobileNetV3-Large 0.75 has 4.0M parameters (its head keeps 1280 channels)."""
    assert zoo.measured_cost(uncalibrated("mobilenet_v3_large", width=0.75))[0] == pytest.approx(4.0e6, rel=0.03)


# ---------------------------------------------------------------------------- architecture
@pytest.mark.parametrize(
    "name, residual_adds, squeeze_excites",
    [
        ("mobilenet_v1", 0, 0),
        ("mobilenet_v2", 10, 0),  # Table 2: repeats beyond the first of each stage, 1+2+3+2+2
        ("mobilenet_v3_large", 10, 8),  # Table 1: stride-1 bnecks that keep the width; SE column
        ("mobilenet_v3_small", 6, 9),  # Table 2
    ],
)
def test_blocks_follow_the_tables(small_models, name, residual_adds, squeeze_excites):
    model = small_models[name]
    assert op_count(model, "Add") == residual_adds
    assert op_count(model, "HardSigmoid") == squeeze_excites
    depthwise = [node for node in model.graph.node if node.op_type == "Conv"
                 and next(a.i for a in node.attribute if a.name == "group") > 1]
    assert len(depthwise) == {"mobilenet_v1": 13, "mobilenet_v2": 17, "mobilenet_v3_large": 15,
                              "mobilenet_v3_small": 11}[name]


def test_mobilenet_v3_uses_hard_swish_only_where_the_table_says():
    """Large: ReLU in the stem-side bnecks 1-6, h-swish in the stem, bnecks 7-15 and the head."""
    model = uncalibrated("mobilenet_v3_large", resolution=RESOLUTION)
    hardswish = {node.name.split(".")[0] for node in model.graph.node if node.op_type == "HardSwish"}
    assert hardswish == {"stem", "last", "head"} | {f"bneck{i}" for i in range(7, 16)}


@pytest.mark.parametrize("name, head", [("mobilenet_v2", 1280), ("mobilenet_v3_large", 1280), ("mobilenet_v3_small", 1024)])
def test_narrow_networks_keep_the_wide_head(name, head):
    model = uncalibrated(name, width=0.5, resolution=RESOLUTION)
    weights = {t.name: t for t in model.graph.initializer}
    assert list(weights["fc.weight"].dims) == [1000, head]


# ---------------------------------------------------------------------------- running
@pytest.mark.parametrize("name", MODELS)
def test_passes_the_onnx_checker(small_models, name):
    onnx.checker.check_model(small_models[name], full_check=True)


@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("name", MODELS)
def test_matches_onnxruntime(small_models, name, batch):
    model = small_models[name]
    image = np.random.default_rng(batch).standard_normal((batch, 3, RESOLUTION, RESOLUTION)).astype(np.float32)
    probabilities, logits = tinyinfer.InferenceSession(model, check_shapes=True).run(None, {"input": image})
    reference = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    theirs = reference.run(None, {"input": image})
    assert logits.shape == (batch, 1000)
    np.testing.assert_allclose(logits, theirs[1], rtol=1e-3, atol=1e-4 * np.abs(theirs[1]).max())
    np.testing.assert_allclose(probabilities, theirs[0], atol=1e-5)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_logits_have_a_sane_scale(small_models, name):
    model = small_models[name]
    image = np.random.default_rng(7).standard_normal((2, 3, RESOLUTION, RESOLUTION)).astype(np.float32)
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"input": image})[1]
    assert np.isfinite(logits).all()
    assert 0.05 < logits.std() < 50


# ---------------------------------------------------------------------------- options
@pytest.mark.parametrize("name", MODELS)
def test_a_narrower_network_has_fewer_params_and_macs(name):
    params, macs = zoo.measured_cost(uncalibrated(name, resolution=RESOLUTION))
    narrow_params, narrow_macs = zoo.measured_cost(uncalibrated(name, width=0.5, resolution=RESOLUTION))
    assert narrow_params < params and narrow_macs < macs


@pytest.mark.parametrize("name", MODELS)
def test_a_smaller_input_costs_fewer_macs_for_the_same_params(name):
    params, macs = zoo.measured_cost(uncalibrated(name, resolution=128))
    small_params, small_macs = zoo.measured_cost(uncalibrated(name, resolution=RESOLUTION))
    assert small_params == params and small_macs < macs


@pytest.mark.parametrize("name", MODELS)
def test_num_classes_sets_the_classifier(name):
    model = uncalibrated(name, resolution=RESOLUTION, num_classes=10)
    assert model.graph.output[0].type.tensor_type.shape.dim[1].dim_value == 10


@pytest.mark.parametrize("name", MODELS)
def test_the_same_seed_draws_the_same_weights(name):
    first = uncalibrated(name, width=0.5, resolution=64, seed=3)
    assert first.SerializeToString() == uncalibrated(name, width=0.5, resolution=64, seed=3).SerializeToString()
    other = uncalibrated(name, width=0.5, resolution=64, seed=4)
    weights = {t.name: numpy_helper.to_array(t) for t in first.graph.initializer}
    other_weights = {t.name: numpy_helper.to_array(t) for t in other.graph.initializer}
    assert not np.array_equal(weights["fc.weight"], other_weights["fc.weight"])


def test_the_same_seed_measures_the_same_batchnorm_statistics():
    first = zoo.build("mobilenet_v3_small", width=0.5, resolution=64, seed=3)
    assert first.SerializeToString() == zoo.build("mobilenet_v3_small", width=0.5, resolution=64, seed=3).SerializeToString()
