"""Models: the light reference architectures shipped with ONNX, and cost metrics."""

from .light import LIGHT_MODELS, light_model_path, load_light_model, redraw_weights
from .metrics import count_flops

__all__ = ["LIGHT_MODELS", "count_flops", "light_model_path", "load_light_model", "redraw_weights"]
