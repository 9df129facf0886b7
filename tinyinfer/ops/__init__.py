"""Operators: shape inference and a plain NumPy reference for each ONNX op tinyinfer runs.

One module per op family; importing this package registers them all in :data:`OPS`.
"""

from .base import (
    LATEST_OPSET,
    OPS,
    REQUIRED,
    Op,
    get_op,
    normalize_domain,
    prepare_node,
    register,
    supported_ops,
)
from . import (  # noqa: F401  (imported for their registrations)
    activation,
    attention,
    binary,
    control_flow,
    conv,
    elementwise,
    fused,
    generator,
    indexing,
    layout,
    linalg,
    loss,
    math,
    normalization,
    pool,
    qlinear,
    quantize,
    recurrent,
    reduce,
    resize,
    sequence,
    signal,
    tensor,
    vision,
)
from .inference import infer_shapes, prepare_graph

__all__ = [
    "LATEST_OPSET",
    "OPS",
    "REQUIRED",
    "Op",
    "get_op",
    "infer_shapes",
    "normalize_domain",
    "prepare_graph",
    "prepare_node",
    "register",
    "supported_ops",
]
