"""Models: the zoo of chapter 02, the light reference architectures, and cost metrics."""

from . import (  # noqa: F401  (imported for their zoo registrations)
    efficientnet,
    ghostnet,
    mobilenet,
    mobilevit,
    resnet,
    shufflenet,
    squeezenet,
    vit,
)
from .builder import NetworkBuilder
from .digits import digits_accuracy, digits_cnn, trained_digits_cnn
from .light import LIGHT_MODELS, calibrate_batchnorm, light_model_path, load_light_model, redraw_weights
from .metrics import CostReport, analyze, count_flops
from .zoo import ZOO, ZooEntry, build, entry, list_models, register_model

__all__ = [
    "CostReport",
    "LIGHT_MODELS",
    "NetworkBuilder",
    "ZOO",
    "ZooEntry",
    "analyze",
    "build",
    "calibrate_batchnorm",
    "count_flops",
    "digits_accuracy",
    "digits_cnn",
    "entry",
    "light_model_path",
    "list_models",
    "load_light_model",
    "redraw_weights",
    "register_model",
    "trained_digits_cnn",
]
