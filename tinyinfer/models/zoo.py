"""The model zoo: every network the book builds, by name, with what its paper reports.

Each family module (``squeezenet``, ``mobilenet``, ...) registers its builders with
:func:`register_model`, giving the paper's own parameter count and multiply-accumulate
count at the paper's configuration, so the zoo can be checked against the literature
(``tests/models/test_zoo.py``) and the chapter can print both side by side.

    >>> from tinyinfer import models
    >>> models.list_models()
    ['efficientnet_b0', 'ghostnet', ...]
    >>> model = models.build("mobilenet_v2", width=1.0, resolution=224)   # an onnx.ModelProto
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import onnx

from ..errors import TinyInferError


@dataclasses.dataclass(frozen=True)
class ZooEntry:
    """A network of the zoo and the figures its paper reports at the default configuration."""

    name: str
    builder: Callable[..., onnx.ModelProto]
    paper: str  # "Sandler et al., 2018, MobileNetV2: Inverted Residuals and Linear Bottlenecks"
    params: float  # parameters the paper reports (count, e.g. 3.4e6)
    macs: float  # multiply-accumulates per image the paper reports (e.g. 300e6)
    note: str = ""  # which convention was matched where the paper is ambiguous
    family: str = ""


#: The zoo registry: name -> entry. Filled by the family modules at import time.
ZOO: dict[str, ZooEntry] = {}


def register_model(name: str, *, paper: str, params: float, macs: float, note: str = "", family: str = ""):
    """Decorator for a builder ``fn(*, seed=0, **config) -> onnx.ModelProto``."""

    def decorate(fn: Callable[..., onnx.ModelProto]) -> Callable[..., onnx.ModelProto]:
        if name in ZOO:
            raise RuntimeError(f"zoo model {name!r} registered twice")
        ZOO[name] = ZooEntry(name, fn, paper, params, macs, note, family or fn.__module__.rsplit(".", 1)[-1])
        return fn

    return decorate


def list_models() -> list[str]:
    """Names of every zoo model."""
    return sorted(ZOO)


def build(name: str, **config: Any) -> onnx.ModelProto:
    """Build a zoo model by name; ``config`` goes to its builder (width, resolution, seed...)."""
    if name not in ZOO:
        raise TinyInferError(f"no zoo model {name!r}; available: {', '.join(list_models())}")
    try:
        return ZOO[name].builder(**config)
    except TypeError as exc:
        raise TinyInferError(f"zoo model {name!r}: {exc}") from None


def entry(name: str) -> ZooEntry:
    if name not in ZOO:
        raise TinyInferError(f"no zoo model {name!r}; available: {', '.join(list_models())}")
    return ZOO[name]


def measured_cost(model: onnx.ModelProto | Any, batch: int = 1) -> tuple[int, int]:
    """(parameters, MACs per ``batch`` images) of a model, in the papers' convention.

    Parameters: every initializer except BatchNormalization's running mean and variance
    (buffers, not learned parameters — PyTorch's count, which the papers report). Integer
    constants (shapes, axes) and scalars (a Clip's bounds) are not parameters either. MACs: the multiply-adds of Conv,
    ConvTranspose, Gemm and MatMul (:func:`tinyinfer.models.metrics.count_flops`).
    """
    from ..runtime import load
    from .metrics import count_flops

    graph = load(model)
    buffers = set()
    for node in graph.nodes:
        if node.op_type == "BatchNormalization":
            buffers.update(node.inputs[3:5])
    params = sum(
        int(array.size)
        for name, array in graph.initializers.items()
        if name not in buffers and array.dtype.kind == "f" and array.ndim > 0
    )
    macs = sum(cost.macs for cost in count_flops(graph, batch=batch))
    return params, macs
