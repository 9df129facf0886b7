"""Helpers the zoo's tests share: build without calibration, expose the logits."""

from __future__ import annotations

import onnx
import pytest
from onnx import TensorProto, helper

from tinyinfer.models import zoo


def uncalibrated(name: str, **config) -> onnx.ModelProto:
    """Build without measuring BatchNorm statistics (a full run): counting needs shapes only."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("tinyinfer.models.light.calibrate_batchnorm", lambda model, **options: model)
        return zoo.build(name, **config)


def with_logits(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` that also outputs the tensor feeding the final Softmax."""
    softmax = next(node for node in model.graph.node if node.op_type == "Softmax")
    result = onnx.ModelProto()
    result.CopyFrom(model)
    shape = [d.dim_param or d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim]
    result.graph.output.append(helper.make_tensor_value_info(softmax.input[0], TensorProto.FLOAT, shape))
    return result
