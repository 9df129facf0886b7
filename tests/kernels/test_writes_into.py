"""Kernels write their results into the memory the runtime plans for them (``out=``).

The runtime hands a kernel marked :func:`~tinyinfer.kernels.registry.writes_into` its output's
place in the arena; any other function's result is copied there (one more pass over memory
per node). For each small model below, every node's every candidate kernel is built on the
node's real types and called twice on the node's real inputs: once on its own and once with
a planned array (filled with junk first). The planned array must come back, holding exactly
the bytes the call without it returned. Oracle: the kernel itself, without ``out`` (each
kernel is checked against its reference op in its own test file).
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import tinyinfer as ti
from tinyinfer.kernels import candidates

RNG = np.random.default_rng(11)


def _model(nodes, inputs, initializers, opset=17):
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name, shape in inputs],
        [helper.make_tensor_value_info(nodes[-1].output[0], TensorProto.UNDEFINED, None)],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in initializers.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _weights(*shape, scale=0.3):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def _float_gemms():
    nodes = [helper.make_node("Gemm", ["x", "w", "c"], ["g"], transB=1), helper.make_node("Relu", ["g"], ["r"]),
             helper.make_node("Reshape", ["r", "shape"], ["r3"]),
             helper.make_node("MatMul", ["r3", "v"], ["m"]), helper.make_node("MatMul", ["m", "u"], ["y"])]
    inits = {"w": _weights(8, 16), "c": _weights(8), "shape": np.array([2, 2, 8]), "v": _weights(8, 6),
             "u": _weights(2, 6, 5)}
    return _model(nodes, [("x", [4, 16])], inits), "O2"


def _float_convs():
    """Depthwise and pooling in NCHW (O2), and the blocked twins of a conv chain (O3)."""
    nodes = [helper.make_node("Conv", ["x", "w"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("Conv", ["b", "d"], ["c"], pads=[1, 1, 1, 1], group=16),
             helper.make_node("Conv", ["c", "w2"], ["e"]),
             helper.make_node("MaxPool", ["e"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("GlobalAveragePool", ["p"], ["y"])]
    inits = {"w": _weights(16, 8, 3, 3), "d": _weights(16, 1, 3, 3), "w2": _weights(16, 16, 1, 1)}
    return _model(nodes, [("x", [1, 8, 10, 10])], inits)


def _pre_activation():
    """DenseNet's BatchNormalization -> Relu on a Concat (a ScaleShift), then an average pool."""
    channels = 12
    nodes = [helper.make_node("Concat", ["x", "z"], ["j"], axis=1),
             helper.make_node("BatchNormalization", ["j", "s", "t", "mu", "var"], ["n"]),
             helper.make_node("Relu", ["n"], ["r"]),
             helper.make_node("AveragePool", ["r"], ["y"], kernel_shape=[2, 2], strides=[2, 2])]
    inits = {"s": _weights(channels) + 1, "t": _weights(channels), "mu": _weights(channels),
             "var": np.abs(_weights(channels)) + 0.5}
    return _model(nodes, [("x", [1, 8, 6, 6]), ("z", [1, 4, 6, 6])], inits)


def _quantized():
    """A QDQ model whose chains fold into int8 ops (QLinearConv, QLinearConvAdd, QLinearAdd, ...)."""
    def q(name, scale, zero):
        return [helper.make_node("QuantizeLinear", [name, f"{scale}", f"{zero}"], [f"{name}_q"]),
                helper.make_node("DequantizeLinear", [f"{name}_q", f"{scale}", f"{zero}"], [f"{name}_d"])]

    def weight(name, *shape):
        inits[f"{name}_i"] = RNG.integers(-127, 128, shape).astype(np.int8)
        inits[f"{name}_s"] = RNG.uniform(0.002, 0.004, shape[0]).astype(np.float32)
        inits[f"{name}_z"] = np.zeros(shape[0], np.int8)
        return helper.make_node("DequantizeLinear", [f"{name}_i", f"{name}_s", f"{name}_z"], [name], axis=0)

    inits = {"s": np.float32(0.04), "z": np.uint8(128), "one": np.float32(0.1), "zero": np.uint8(0)}
    nodes = [*q("x", "s", "z"), weight("w", 8, 8, 3, 3), weight("d", 8, 1, 3, 3), weight("p", 8, 8, 1, 1),
             helper.make_node("Conv", ["x_d", "w"], ["a"], pads=[1, 1, 1, 1]), *q("a", "s", "z"),
             helper.make_node("Conv", ["a_d", "d"], ["b"], pads=[1, 1, 1, 1], group=8), *q("b", "s", "z"),
             helper.make_node("Conv", ["b_d", "p"], ["c"]), *q("c", "s", "z"),
             helper.make_node("Add", ["c_d", "a_d"], ["e"]), *q("e", "s", "z"),
             helper.make_node("Add", ["e_d", "x_d"], ["f"]), *q("f", "s", "z"),
             helper.make_node("MaxPool", ["f_d"], ["m"], kernel_shape=[2, 2], strides=[2, 2]), *q("m", "s", "z"),
             helper.make_node("GlobalAveragePool", ["m_d"], ["g"]), *q("g", "s", "z"),
             helper.make_node("Flatten", ["g_d"], ["h"]), weight("v", 5, 8),
             helper.make_node("Gemm", ["h", "v"], ["k"], transB=1), *q("k", "one", "zero"),
             helper.make_node("MatMul", ["k_d", "u"], ["y"])]
    inits["u_i"] = RNG.integers(-127, 128, (5, 3)).astype(np.int8)
    inits.update(u_s=np.float32(0.01), u_z=np.int8(0))
    nodes.insert(-1, helper.make_node("DequantizeLinear", ["u_i", "u_s", "u_z"], ["u"]))
    nodes.append(helper.make_node("QuantizeLinear", ["y", "one", "zero"], ["y_q"]))
    return _model(nodes, [("x", [1, 8, 6, 6])], inits)


CASES = {
    "float gemms": (_float_gemms()[0], "O2"),
    "float convs": (_float_convs(), "O2"),
    "blocked convs": (_float_convs(), "O3"),
    "pre-activation": (_pre_activation(), "O2"),
    "int8": (_quantized(), "O2"),
}

#: Kernels that must have been checked (so the cases really reach them).
EXPECTED = {
    "gemm_packed", "conv2d_depthwise", "maxpool2d", "global_averagepool", "averagepool2d", "to_blocked_numba",
    "from_blocked_numba", "conv_nchwc_direct", "conv_nchwc_depthwise", "pool_nchwc", "global_pool_nchwc",
    "scale_shift", "concat", "quantize_linear_8bit", "qlinearconv_im2col", "qlinearconv_indirect",
    "qlinearconv_depthwise", "qlinear_add", "maxpool2d_int8", "qlinear_global_averagepool", "int8_gemm",
}


def _feeds(model):
    return {i.name: RNG.standard_normal([d.dim_value for d in i.type.tensor_type.shape.dim]).astype(np.float32)
            for i in model.graph.input}


@pytest.mark.parametrize("case", list(CASES))
def test_every_candidate_kernel_writes_into_the_planned_array(case):
    model, level = CASES[case]
    feeds = _feeds(model)
    sess = ti.InferenceSession(model, backend="numba", opt_level=level, select="cost")
    seen = dict(feeds)
    sess.run(None, feeds, observe=lambda name, value: seen.__setitem__(name, np.array(value, copy=True)))
    plan = sess.plan_for(feeds)
    seen.update({name: value for name, value in sess.graph.initializers.items()})
    for step in plan.steps:
        node = step.node
        inputs = [plan.values[name] if name else None for name in node.inputs]
        outputs = [plan.values[name] for name in node.outputs if name]
        arrays = [seen[name] if name else None for name in node.inputs]
        for kernel in candidates(node, inputs):
            fn = kernel.build(node, inputs, outputs)
            assert getattr(fn, "writes_out", False), f"{kernel.name} on {node.op_type} does not write into out"
            alone = fn(node, *arrays)
            planned = np.full(outputs[0].shape, 7, outputs[0].dtype)
            got = fn(node, *arrays, out=[planned])
            assert got is planned, kernel.name
            np.testing.assert_array_equal(planned, alone, err_msg=kernel.name)


def test_the_cases_reach_every_kernel_that_makes_a_fresh_array():
    reached = set()
    for model, level in CASES.values():
        plan = ti.InferenceSession(model, backend="numba", opt_level=level, select="cost").plan_for(_feeds(model))
        for step in plan.steps:
            inputs = [plan.values[name] if name else None for name in step.node.inputs]
            reached |= {kernel.name for kernel in candidates(step.node, inputs)}
    assert EXPECTED <= reached, sorted(EXPECTED - reached)
