"""Frontends: ONNX import (path, bytes, ModelProto) and export back to ONNX."""

from .onnx_export import save_onnx, to_onnx
from .onnx_import import graph_from_model, load_onnx, parse_model_bytes, safe_load

__all__ = ["graph_from_model", "load_onnx", "parse_model_bytes", "safe_load", "save_onnx", "to_onnx"]
