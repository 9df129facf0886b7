"""One-node ONNX models, run by tinyinfer and by ONNX's reference evaluator.

The op tests compare tinyinfer against ``onnx.reference.ReferenceEvaluator``, the executable
form of the ONNX spec, on models holding a single node. Inputs given as arrays become graph
inputs; inputs given as :class:`Initializer` become weights (known while inferring shapes).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np
import onnx
from onnx import helper
from onnx.reference import ReferenceEvaluator

import tinyinfer
from tinyinfer import ops
from tinyinfer.ir import Value, dtypes


@dataclasses.dataclass
class Initializer:
    """An input stored in the model as a weight instead of fed at run time."""

    array: np.ndarray


def single_node_model(
    op_type: str,
    inputs: Sequence[np.ndarray | Initializer | None],
    n_outputs: int = 1,
    *,
    opset: int = 21,
    shapes: dict[int, Sequence[Any]] | None = None,
    **attrs: Any,
) -> onnx.ModelProto:
    """A model ``op_type(inputs, **attrs)``; ``None`` leaves an optional input out.

    ``shapes`` overrides the declared shape of graph input number i (e.g. symbolic dims).
    Output types are left unknown, so the model checker does not judge them.
    """
    names, graph_inputs, weights = [], [], []
    for i, item in enumerate(inputs):
        if item is None:
            names.append("")
            continue
        name = f"in{i}"
        names.append(name)
        if isinstance(item, Initializer):
            weights.append(onnx.numpy_helper.from_array(np.asarray(item.array), name))
        else:
            shape = (shapes or {}).get(i, item.shape)
            graph_inputs.append(helper.make_tensor_value_info(name, dtypes.to_onnx(item.dtype), shape))
    outputs = [f"out{i}" for i in range(n_outputs)]
    node = helper.make_node(op_type, names, outputs, name=f"{op_type.lower()}_node", **attrs)
    graph = helper.make_graph(
        [node], "single_node", graph_inputs, [helper.make_empty_tensor_value_info(o) for o in outputs], weights
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def feeds_of(inputs: Sequence[np.ndarray | Initializer | None]) -> dict[str, np.ndarray]:
    return {
        f"in{i}": item for i, item in enumerate(inputs) if item is not None and not isinstance(item, Initializer)
    }


def run_tinyinfer(op_type: str, inputs, n_outputs: int = 1, **kwargs) -> list[np.ndarray]:
    """Run the one-node model through tinyinfer, checking every output against its ``infer``."""
    model = single_node_model(op_type, inputs, n_outputs, **kwargs)
    return tinyinfer.InferenceSession(model, check_shapes=True).run(None, feeds_of(inputs))


def run_reference(op_type: str, inputs, n_outputs: int = 1, **kwargs) -> list[np.ndarray]:
    """Run the same model through ``onnx.reference.ReferenceEvaluator``."""
    model = single_node_model(op_type, inputs, n_outputs, **kwargs)
    return ReferenceEvaluator(model).run(None, feeds_of(inputs))


def infer_outputs(op_type: str, inputs, n_outputs: int = 1, **kwargs) -> list[Value]:
    """The output Values tinyinfer's shape inference gives, from the declared input types."""
    model = single_node_model(op_type, inputs, n_outputs, **kwargs)
    graph = tinyinfer.load(model)
    known = ops.infer_shapes(graph)
    return [known[f"out{i}"] for i in range(n_outputs)]


def assert_matches_reference(op_type: str, inputs, n_outputs: int = 1, *, rtol=0.0, atol=0.0, **kwargs):
    """Same dtypes, same shapes and values within ``rtol``/``atol`` (exact for integers)."""
    got = run_tinyinfer(op_type, inputs, n_outputs, **kwargs)
    want = run_reference(op_type, inputs, n_outputs, **kwargs)
    for g, w in zip(got, want):
        w = np.asarray(w)
        assert g.dtype == w.dtype, f"dtype {g.dtype}, reference {w.dtype}"
        assert g.shape == w.shape, f"shape {g.shape}, reference {w.shape}"
        if w.dtype.kind in "biuO":
            np.testing.assert_array_equal(g, w)
        else:
            np.testing.assert_allclose(
                g.astype(np.float64), w.astype(np.float64), rtol=rtol, atol=atol, equal_nan=True
            )
    return got


def run_onnxruntime(op_type: str, inputs, n_outputs: int = 1, **kwargs) -> list[np.ndarray]:
    """Run the model through ONNX Runtime: the oracle where ``onnx.reference`` follows only the
    newest version of an op (e.g. Softmax before opset 13)."""
    import onnxruntime

    model = single_node_model(op_type, inputs, n_outputs, **kwargs)
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds_of(inputs))
