"""The Relu kernel against its reference op: bit-identical results (same comparisons, no rounding)."""

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


@pytest.mark.parametrize("size", [7, 100_000])  # one thread; in parallel blocks
def test_relu_kernel_is_bit_identical_to_the_reference(size):
    from tinyinfer.kernels import activation

    x = np.random.default_rng(size).standard_normal(size).astype(np.float32)
    x[:3] = [np.nan, -0.0, 0.0]
    node = _node("Relu", ["x"])
    values = [Value("x", np.dtype(np.float32), (size,))]
    assert [k.name for k in candidates(node, values)] == ["relu"]
    got = activation.build_relu(node, values, [])(node, x)
    expected = OPS[("", "Relu")].reference(node, x)
    assert got.tobytes() == expected.tobytes()
