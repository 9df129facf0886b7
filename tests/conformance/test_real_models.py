"""The nine real architectures with re-drawn weights, against ONNX Runtime.

The conformance suite's real-model tests run the light models as shipped, where every
weight is 0.02: equal weights make a transposed filter or a flipped window invisible. Here
the same graphs get seeded He-scaled weights and BatchNorm statistics measured on random
input (``tinyinfer.models.load_light_model``), and tinyinfer must agree with ONNX Runtime on
the logits (the input of the final Softmax, where there is one) and on every output.

Tolerance: rtol 1e-3 and atol 1e-4 of the largest |value|. Both engines compute in float32
but sum in different orders (BLAS blocking vs ONNX Runtime's MLAS), so results differ by a
few float32 ulps per layer; over up to 120 layers that stays well inside 1e-3 relative.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import tinyinfer as ti
from tinyinfer.models import LIGHT_MODELS, load_light_model
from tinyinfer.runtime.feeds import random_feeds


def _with_logits(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    softmax = [n for n in model.graph.node if n.op_type == "Softmax"]
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    extra = []
    if softmax:
        extra = [softmax[-1].input[0]]
        exposed.graph.output.append(onnx.helper.make_tensor_value_info(extra[0], onnx.TensorProto.FLOAT, None))
    return exposed, [o.name for o in exposed.graph.output]


@pytest.mark.parametrize("name", LIGHT_MODELS)
def test_light_model_with_redrawn_weights_matches_onnxruntime(name):
    model, names = _with_logits(load_light_model(name, seed=1))
    session = ti.InferenceSession(model)
    feeds = random_feeds(session.get_inputs(), seed=2)
    got = session.run(names, feeds)
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(names, feeds)
    for output, a, b in zip(names, got, want):
        assert a.shape == b.shape and a.dtype == b.dtype, output
        assert np.isfinite(b).all()
        scale = float(np.abs(b).max())
        assert scale > 0, f"{output} is all zeros: the weights hide nothing but also test nothing"
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4 * scale, err_msg=f"{name}: {output}")


def test_redrawn_weights_are_not_constant():
    model = load_light_model("squeezenet", seed=0)
    weights = [onnx.numpy_helper.to_array(t) for t in model.graph.initializer if t.dims and len(t.dims) == 4]
    assert weights and all(w.std() > 0 for w in weights)
    assert not any(n.op_type == "ConstantOfShape" for n in model.graph.node)


def test_calibrated_batchnorm_keeps_resnet_logits_in_a_sane_range():
    model, names = _with_logits(load_light_model("resnet50"))
    session = ti.InferenceSession(model)
    logits = session.run([names[-1]], random_feeds(session.get_inputs(), seed=3))[0]
    assert 0.1 < float(logits.std()) < 100
