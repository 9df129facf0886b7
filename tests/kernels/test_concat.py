"""The Concat kernel against its reference op: the same bytes (a copy rounds nothing)."""

from __future__ import annotations

import numpy as np
import pytest

from tinyinfer.ir import Node, Value
from tinyinfer.kernels import candidates
from tinyinfer.ops import OPS
from tinyinfer.ops.base import prepare_node


def _node(op_type, inputs, outputs=("y",), **attrs):
    node = Node(op_type, list(inputs), list(outputs), attrs, "", "n")
    prepare_node(node, 15)
    return node


@pytest.mark.parametrize("shapes, axis", [
    ([(1, 64, 28, 28), (1, 32, 28, 28)], 1),  # DenseNet's join: the first input is copied in parallel
    ([(2, 3, 5), (2, 4, 5), (2, 1, 5)], -2),
    ([(3, 2), (3, 7)], 1),
    ([(4,), (5,)], 0),
])
def test_concat_kernel_is_bit_identical_to_the_reference(shapes, axis):
    from tinyinfer.kernels import concat

    rng = np.random.default_rng(len(shapes))
    arrays = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    names = [f"x{i}" for i in range(len(arrays))]
    node = _node("Concat", names, axis=axis)
    values = [Value(n, np.dtype(np.float32), a.shape) for n, a in zip(names, arrays)]
    assert [k.name for k in candidates(node, values)] == ["concat"]
    got = concat.build_concat(node, values, [])(node, *arrays)
    assert got.tobytes() == OPS[("", "Concat")].reference(node, *arrays).tobytes()


def test_a_session_picks_concat_and_relu_and_matches_onnxruntime():
    import onnxruntime
    from onnx import TensorProto, helper

    import tinyinfer as ti

    nodes = [helper.make_node("Relu", ["a"], ["r"]), helper.make_node("Concat", ["r", "b"], ["y"], axis=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, 96, 28, 28]),
                                           helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 32, 28, 28])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    rng = np.random.default_rng(0)
    feeds = {"a": rng.standard_normal((1, 96, 28, 28)).astype(np.float32),
             "b": rng.standard_normal((1, 32, 28, 28)).astype(np.float32)}
    # select="cost": the kernels have no cost hints, so the first registered one is bound
    sess = ti.InferenceSession(model, backend="numba", threads=2, opt_level="O0", select="cost")
    got = sess.run(None, feeds)[0]
    assert [r.kernel for r in sess.profile().records] == ["relu", "concat"]
    expected = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, feeds)[0]
    np.testing.assert_array_equal(got, expected)


def test_kernels_write_into_the_memory_the_runtime_plans():
    from tinyinfer.kernels import activation, concat

    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((1, 4, 3, 3)).astype(np.float32), rng.standard_normal((1, 2, 3, 3)).astype(np.float32)
    node = _node("Concat", ["a", "b"], axis=1)
    values = [Value("a", np.dtype(np.float32), a.shape), Value("b", np.dtype(np.float32), b.shape)]
    fn = concat.build_concat(node, values, [])
    assert fn.writes_out
    planned = np.empty((1, 6, 3, 3), np.float32)
    assert fn(node, a, b, out=[planned]) is planned
    np.testing.assert_array_equal(planned, np.concatenate([a, b], axis=1))
    relu_node = _node("Relu", ["a"])
    relu = activation.build_relu(relu_node, [Value("a", np.dtype(np.float32), a.shape)], [])
    expected = np.maximum(a, 0)
    assert relu(relu_node, a, out=[a]) is a  # in place, as the planner may ask of an elementwise op
    np.testing.assert_array_equal(a, expected)
