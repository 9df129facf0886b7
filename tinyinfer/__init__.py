"""tinyinfer: a small, complete DNN inference engine, and the book that builds it.

    import tinyinfer as ti
    sess = ti.InferenceSession("model.onnx")
    outputs = sess.run(None, {"x": x})
"""

from __future__ import annotations

import os
from typing import Any

from .errors import TinyInferError
from .ir import Graph, Node, Value
from .runtime import InferenceSession, load

__version__ = "0.1.0"


def save(graph: Graph, path: str | os.PathLike) -> None:
    """Write a graph to ``path``: ONNX for ``.onnx``, tinyinfer's own format for ``.tinf``.

    ``load`` (and ``InferenceSession``) read both back.
    """
    suffix = os.fspath(path).rsplit(".", 1)[-1].lower()
    if suffix == "tinf":
        from .ir.serialize import save_tinf

        save_tinf(graph, path)
        return
    if suffix != "onnx":
        raise TinyInferError(
            f"cannot save to '{path}': tinyinfer writes .onnx files (ONNX) and .tinf files (its own format)"
        )
    from .frontend import save_onnx

    save_onnx(graph, path)


def to_onnx(graph: Graph) -> Any:
    """The graph as an ``onnx.ModelProto``."""
    from .frontend import to_onnx as export

    return export(graph)


__all__ = ["Graph", "InferenceSession", "Node", "TinyInferError", "Value", "__version__", "load", "save", "to_onnx"]
