"""The O2 fusion passes and the O1 cleanups of ``tinyinfer/passes/fusion.py``.

Each pass gets a small graph where it applies and one where it must not, and every graph is
checked three ways: the node count after the pass, tinyinfer at O2 against tinyinfer at O0
(the unfused graph through the reference ops), and ONNX Runtime on the original model.

Tolerances. Folding computes new weights (``W * gamma / sqrt(var + eps)``) in float64 and
rounds them once to float32, where the unfused graph rounds after each of conv, BN, Mul and
Add: the results differ by a few float32 ulps of the largest value, hence rtol 1e-4 and
atol 1e-5 on outputs of order 1. Fusions that only regroup the same float32 operations
(activations, residual adds) are compared with the same tolerance for simplicity. Whole
models sum up to 120 layers in different orders than ONNX Runtime: rtol 1e-3 and atol
1e-4 of the largest logit, as in tests/conformance/test_real_models.py.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import tinyinfer as ti
from tinyinfer.errors import InvalidAttributeError
from tinyinfer.ir import Graph, Node, Value
from tinyinfer.models import LIGHT_MODELS, load_light_model
from tinyinfer.ops.fused import DOMAIN, decompose_fused
from tinyinfer.passes import PassManager, optimize

RTOL, ATOL = 1e-4, 1e-5
RNG = np.random.default_rng(0)


# ---------------------------------------------------------------------------- helpers
def _f(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _w(name, array):
    return numpy_helper.from_array(np.asarray(array, dtype=np.float32), name)


def _model(nodes, inputs, outputs, weights=(), opset=17):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(weights))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8  # readable by every ONNX Runtime of the supported range
    return model


def _random(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def _batchnorm_weights(prefix, channels):
    return [
        _w(f"{prefix}_scale", RNG.uniform(0.5, 1.5, channels)),
        _w(f"{prefix}_bias", RNG.standard_normal(channels)),
        _w(f"{prefix}_mean", RNG.standard_normal(channels) * 0.1),
        _w(f"{prefix}_var", RNG.uniform(0.5, 2.0, channels)),
    ]


def _optimized(model, level="O2"):
    graph, report = optimize(ti.load(model), level)
    return graph


def _ops(graph):
    return [n.op_type for n in graph.nodes]


def _check(model, feeds, level="O2"):
    """tinyinfer at ``level`` == tinyinfer at O0 == ONNX Runtime; returns the optimized graph."""
    fast = ti.InferenceSession(model, opt_level=level)
    plain = ti.InferenceSession(model, opt_level="O0")
    theirs = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    for got, unfused, want in zip(fast.run(None, feeds), plain.run(None, feeds), theirs):
        assert got.shape == want.shape and got.dtype == want.dtype
        np.testing.assert_allclose(got, unfused, rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    _check_export(fast.graph, feeds, theirs)
    return fast.graph


def _check_export(graph, feeds, want):
    """The optimized graph exports (fused nodes decomposed) to a model ONNX Runtime runs alike."""
    exported = ti.to_onnx(graph)
    assert all(node.domain in ("", "ai.onnx") for node in exported.graph.node)
    got = ort.InferenceSession(exported.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL)


def _conv_bn_model(*, group=1, bias=True, transpose=False, extra_reader=False):
    op = "ConvTranspose" if transpose else "Conv"
    weight_shape = (4, 8 // group, 3, 3) if transpose else (8, 4 // group, 3, 3)
    weights = [_w("W", _random(*weight_shape) * 0.3), *_batchnorm_weights("bn", 8)]
    inputs = ["x", "W"]
    if bias:
        weights.append(_w("B", _random(8)))
        inputs.append("B")
    nodes = [
        helper.make_node(op, inputs, ["c"], name="conv", pads=[1, 1, 1, 1], group=group),
        helper.make_node("BatchNormalization", ["c", "bn_scale", "bn_bias", "bn_mean", "bn_var"], ["y"], name="bn"),
    ]
    outputs = [_f("y", None)]
    if extra_reader:
        nodes.append(helper.make_node("Sigmoid", ["c"], ["other"], name="other_reader"))
        outputs.append(_f("other", None))
    return _model(nodes, [_f("x", [2, 4, 6, 6])], outputs, weights)


# ---------------------------------------------------------------------------- Conv + BN
@pytest.mark.parametrize("group", [1, 2])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("transpose", [False, True])
def test_batchnorm_folds_into_conv_and_conv_transpose(group, bias, transpose):
    model = _conv_bn_model(group=group, bias=bias, transpose=transpose)
    graph = _check(model, {"x": _random(2, 4, 6, 6)})
    assert _ops(graph) == ["ConvTranspose" if transpose else "Conv"]
    assert not any(name.startswith("bn_") for name in graph.initializers)  # the BN weights are gone


def test_batchnorm_is_not_folded_when_the_conv_output_has_another_reader():
    graph = _check(_conv_bn_model(extra_reader=True), {"x": _random(2, 4, 6, 6)})
    assert "BatchNormalization" in _ops(graph) and "Conv" in _ops(graph)


def test_batchnorm_in_training_mode_is_not_folded():
    model = _conv_bn_model()
    model.graph.node[1].attribute.append(helper.make_attribute("training_mode", 1))
    graph = _optimized(model)
    assert "BatchNormalization" in _ops(graph)


@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("with_c", [True, False])
def test_batchnorm_folds_into_gemm(trans_b, with_c):
    b = _random(5, 6) if trans_b else _random(6, 5)
    weights = [_w("B", b), *_batchnorm_weights("bn", 5)]
    inputs = ["a", "B"]
    if with_c:
        weights.append(_w("C", _random(5)))
        inputs.append("C")
    nodes = [
        helper.make_node("Gemm", inputs, ["g"], transB=trans_b, alpha=0.5, beta=2.0),
        helper.make_node("BatchNormalization", ["g", "bn_scale", "bn_bias", "bn_mean", "bn_var"], ["y"]),
    ]
    graph = _check(_model(nodes, [_f("a", [3, 6])], [_f("y", [3, 5])], weights), {"a": _random(3, 6)})
    assert _ops(graph) == ["Gemm"]


# ---------------------------------------------------------------------------- bias Add, MatMul + Add
@pytest.mark.parametrize("bias_shape", [(8, 1, 1), (1, 8, 1, 1), (1,), ()])
def test_constant_per_channel_add_folds_into_the_conv_bias(bias_shape):
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Add", ["c", "b"], ["y"])]
    weights = [_w("W", _random(8, 4, 3, 3)), _w("b", _random(*bias_shape))]
    graph = _check(_model(nodes, [_f("x", [1, 4, 5, 5])], [_f("y", None)], weights), {"x": _random(1, 4, 5, 5)})
    assert _ops(graph) == ["Conv"] and len(graph.nodes[0].inputs) == 3


def test_add_of_a_full_tensor_or_a_non_constant_does_not_become_a_conv_bias():
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c", "full"], ["y"]),  # varies over space: not a bias
        helper.make_node("Conv", ["x", "W"], ["d"], pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["d", "z"], ["y2"]),  # a run-time tensor: not a bias
    ]
    weights = [_w("W", _random(8, 4, 3, 3)), _w("full", _random(1, 8, 5, 5))]
    model = _model(nodes, [_f("x", [1, 4, 5, 5]), _f("z", [1, 8, 5, 5])], [_f("y", None), _f("y2", None)], weights)
    graph, _ = PassManager(passes=["fold_bias_add"]).run(ti.load(model))
    assert _ops(graph) == ["Conv", "Add", "Conv", "Add"]
    _check(model, {"x": _random(1, 4, 5, 5), "z": _random(1, 8, 5, 5)})


@pytest.mark.parametrize("bias_shape", [(5,), (1, 5), (3, 5)])
def test_matmul_add_becomes_gemm(bias_shape):
    nodes = [helper.make_node("MatMul", ["a", "B"], ["m"]), helper.make_node("Add", ["b", "m"], ["y"])]
    model = _model(nodes, [_f("a", [3, 4])], [_f("y", [3, 5])], [_w("B", _random(4, 5)), _w("b", _random(*bias_shape))])
    graph = _check(model, {"a": _random(3, 4)})
    assert _ops(graph) == ["Gemm"]


def test_batched_matmul_and_non_constant_bias_stay_matmul_add():
    nodes = [
        helper.make_node("MatMul", ["a3", "B"], ["m3"]),
        helper.make_node("Add", ["m3", "b"], ["y3"]),  # 3-D: Gemm takes matrices only
        helper.make_node("MatMul", ["a", "B"], ["m"]),
        helper.make_node("Add", ["m", "z"], ["y"]),  # the bias is computed at run time
    ]
    model = _model(nodes, [_f("a3", [2, 3, 4]), _f("a", [3, 4]), _f("z", [3, 5])], [_f("y3", None), _f("y", None)],
                   [_w("B", _random(4, 5)), _w("b", _random(5))])
    graph = _check(model, {"a3": _random(2, 3, 4), "a": _random(3, 4), "z": _random(3, 5)})
    assert _ops(graph).count("MatMul") == 2 and "Gemm" not in _ops(graph)


# ---------------------------------------------------------------------------- activations
ACTIVATION_NODES = {
    "Relu": lambda: (helper.make_node("Relu", ["c"], ["y"]), []),
    "ReLU6": lambda: (helper.make_node("Clip", ["c", "lo", "hi"], ["y"]), [_w("lo", 0.0), _w("hi", 6.0)]),
    "Clip": lambda: (helper.make_node("Clip", ["c", "", "hi"], ["y"]), [_w("hi", 0.5)]),
    "LeakyRelu": lambda: (helper.make_node("LeakyRelu", ["c"], ["y"], alpha=0.2), []),
    "HardSwish": lambda: (helper.make_node("HardSwish", ["c"], ["y"]), []),
    "Sigmoid": lambda: (helper.make_node("Sigmoid", ["c"], ["y"]), []),
    "HardSigmoid": lambda: (helper.make_node("HardSigmoid", ["c"], ["y"], alpha=0.3, beta=0.4), []),
    "Tanh": lambda: (helper.make_node("Tanh", ["c"], ["y"]), []),
}


@pytest.mark.parametrize("activation", sorted(ACTIVATION_NODES))
def test_conv_and_activation_fuse_into_one_fused_conv(activation):
    act, weights = ACTIVATION_NODES[activation]()
    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["c"], pads=[1, 1, 1, 1]), act]
    weights += [_w("W", _random(6, 3, 3, 3)), _w("B", _random(6))]
    graph = _check(_model(nodes, [_f("x", [1, 3, 5, 5])], [_f("y", None)], weights), {"x": _random(1, 3, 5, 5) * 3})
    assert [(n.domain, n.op_type) for n in graph.nodes] == [(DOMAIN, "FusedConv")]
    assert graph.nodes[0].attrs["activation"] == act.op_type


@pytest.mark.parametrize("activation", ["Relu", "LeakyRelu", "Sigmoid"])
def test_gemm_and_activation_fuse_into_one_fused_gemm(activation):
    act, _ = ACTIVATION_NODES[activation]()
    nodes = [helper.make_node("Gemm", ["a", "B", "C"], ["c"], transB=1), act]
    model = _model(nodes, [_f("a", [2, 4])], [_f("y", [2, 3])], [_w("B", _random(3, 4)), _w("C", _random(3))])
    graph = _check(model, {"a": _random(2, 4)})
    assert [(n.domain, n.op_type) for n in graph.nodes] == [(DOMAIN, "FusedGemm")]


def test_clip_with_run_time_bounds_and_activation_of_shared_conv_output_are_not_fused():
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["c"]),
        helper.make_node("Clip", ["c", "lo"], ["y"]),  # the bound is an input: not known now
        helper.make_node("Conv", ["x", "W2"], ["d"]),
        helper.make_node("Relu", ["d"], ["r"]),
        helper.make_node("Neg", ["d"], ["n"]),  # d has two readers
    ]
    model = _model(nodes, [_f("x", [1, 3, 4, 4]), _f("lo", [])], [_f("y", None), _f("r", None), _f("n", None)],
                   [_w("W", _random(2, 3, 1, 1)), _w("W2", _random(2, 3, 1, 1))])
    graph = _check(model, {"x": _random(1, 3, 4, 4), "lo": np.array(-0.1, np.float32)})
    assert sorted(_ops(graph)) == ["Clip", "Conv", "Conv", "Neg", "Relu"]


def test_resnet_block_conv_bn_add_relu_becomes_one_fused_conv_with_residual():
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "bn_scale", "bn_bias", "bn_mean", "bn_var"], ["b"]),
        helper.make_node("Add", ["x", "b"], ["s"]),
        helper.make_node("Relu", ["s"], ["y"]),
    ]
    model = _model(nodes, [_f("x", [2, 4, 5, 5])], [_f("y", None)], [_w("W", _random(4, 4, 3, 3) * 0.3), *_batchnorm_weights("bn", 4)])
    graph = _check(model, {"x": _random(2, 4, 5, 5)})
    assert len(graph.nodes) == 1
    fused = graph.nodes[0]
    assert (fused.op_type, fused.attrs["activation"], fused.inputs[3]) == ("FusedConv", "Relu", "x")


def test_residual_that_broadcasts_is_not_fused():
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"]), helper.make_node("Add", ["c", "z"], ["y"])]
    model = _model(nodes, [_f("x", [1, 3, 4, 4]), _f("z", [1, 1, 4, 4])], [_f("y", None)], [_w("W", _random(2, 3, 1, 1))])
    graph = _check(model, {"x": _random(1, 3, 4, 4), "z": _random(1, 1, 4, 4)})
    assert _ops(graph) == ["Conv", "Add"]


# ---------------------------------------------------------------------------- LayerNormalization
def _layer_norm_nodes(*, square="Pow", divide="Div", gamma=True, beta=True, axes=(-1,), opset=17):
    def mean(source, target):
        if opset >= 18:
            return helper.make_node("ReduceMean", [source, "axes"], [target])
        return helper.make_node("ReduceMean", [source], [target], axes=list(axes))

    nodes = [mean("x", "mu"), helper.make_node("Sub", ["x", "mu"], ["d"])]
    nodes.append(helper.make_node("Pow", ["d", "two"], ["sq"]) if square == "Pow" else helper.make_node("Mul", ["d", "d"], ["sq"]))
    nodes += [mean("sq", "var"), helper.make_node("Add", ["var", "eps"], ["ve"]), helper.make_node("Sqrt", ["ve"], ["std"])]
    if divide == "Div":
        nodes.append(helper.make_node("Div", ["d", "std"], ["n"]))
    else:
        nodes += [helper.make_node("Reciprocal", ["std"], ["inv"]), helper.make_node("Mul", ["inv", "d"], ["n"])]
    last = "n"
    if gamma:
        nodes.append(helper.make_node("Mul", ["n", "gamma"], ["scaled"]))
        last = "scaled"
    if beta:
        nodes.append(helper.make_node("Add", [last, "beta"], ["y"]))
        last = "y"
    weights = [_w("two", 2.0), _w("eps", 1e-5), _w("gamma", RNG.uniform(0.5, 1.5, 8)), _w("beta", _random(8))]
    if opset >= 18:
        weights.append(numpy_helper.from_array(np.asarray(axes, np.int64), "axes"))
    return nodes, last, weights


@pytest.mark.parametrize("variant", [
    dict(), dict(square="Mul"), dict(divide="Reciprocal"), dict(beta=False), dict(gamma=False), dict(opset=18),
])
def test_decomposed_layer_normalization_becomes_one_node(variant):
    opset = variant.get("opset", 17)
    nodes, last, weights = _layer_norm_nodes(**variant)
    model = _model(nodes, [_f("x", [2, 3, 8])], [_f(last, None)], weights, opset=opset)
    graph = _check(model, {"x": _random(2, 3, 8) * 2 + 1})
    assert [(n.domain, n.op_type) for n in graph.nodes] == [("", "LayerNormalization")]
    assert graph.nodes[0].attrs["epsilon"] == pytest.approx(1e-5)


def test_layer_normalization_before_opset_17_is_the_fused_op():
    nodes, last, weights = _layer_norm_nodes(opset=13)
    graph = _check(_model(nodes, [_f("x", [2, 3, 8])], [_f(last, None)], weights, opset=13), {"x": _random(2, 3, 8)})
    assert [(n.domain, n.op_type) for n in graph.nodes] == [(DOMAIN, "LayerNormalization")]


def test_normalization_over_a_middle_axis_or_with_the_mean_read_elsewhere_is_not_fused():
    nodes, last, weights = _layer_norm_nodes(axes=(1,), gamma=False, beta=False)
    model = _model(nodes, [_f("x", [2, 3, 8])], [_f(last, None)], weights)
    graph = _check(model, {"x": _random(2, 3, 8)})
    assert "LayerNormalization" not in _ops(graph)
    nodes, last, weights = _layer_norm_nodes()
    model = _model(nodes, [_f("x", [2, 3, 8])], [_f(last, None), _f("mu", None)], weights)  # mu is an output
    graph = _check(model, {"x": _random(2, 3, 8)})
    assert "LayerNormalization" not in _ops(graph)


# ---------------------------------------------------------------------------- GELU
def _gelu_erf_nodes(style):
    scale = helper.make_node("Div", ["x", "sqrt2"], ["u"]) if style != "mul" else helper.make_node("Mul", ["x", "inv_sqrt2"], ["u"])
    nodes = [scale, helper.make_node("Erf", ["u"], ["e"]), helper.make_node("Add", ["e", "one"], ["p"])]
    if style == "half_first":  # (x * 0.5) * (1 + erf)
        nodes += [helper.make_node("Mul", ["x", "half"], ["h"]), helper.make_node("Mul", ["h", "p"], ["y"])]
    else:  # (x * (1 + erf)) * 0.5
        nodes += [helper.make_node("Mul", ["x", "p"], ["xp"]), helper.make_node("Mul", ["xp", "half"], ["y"])]
    weights = [_w("sqrt2", np.sqrt(2.0)), _w("inv_sqrt2", 1 / np.sqrt(2.0)), _w("one", 1.0), _w("half", 0.5)]
    return nodes, weights


def _gelu_tanh_nodes(cube):
    nodes = []
    if cube == "pow":
        nodes.append(helper.make_node("Pow", ["x", "three"], ["x3"]))
    else:
        nodes += [helper.make_node("Mul", ["x", "x"], ["x2"]), helper.make_node("Mul", ["x2", "x"], ["x3"])]
    nodes += [
        helper.make_node("Mul", ["x3", "c"], ["cx3"]),
        helper.make_node("Add", ["x", "cx3"], ["inner"]),
        helper.make_node("Mul", ["k", "inner"], ["arg"]),
        helper.make_node("Tanh", ["arg"], ["t"]),
        helper.make_node("Add", ["one", "t"], ["p"]),
        helper.make_node("Mul", ["half", "x"], ["h"]),
        helper.make_node("Mul", ["h", "p"], ["y"]),
    ]
    weights = [_w("three", 3.0), _w("c", 0.044715), _w("k", np.sqrt(2 / np.pi)), _w("one", 1.0), _w("half", 0.5)]
    return nodes, weights


@pytest.mark.parametrize("opset", [13, 20])
@pytest.mark.parametrize("form", ["div", "mul", "half_first", "tanh_pow", "tanh_mul"])
def test_decomposed_gelu_becomes_one_node(form, opset):
    nodes, weights = _gelu_tanh_nodes(form[5:]) if form.startswith("tanh") else _gelu_erf_nodes(form)
    model = _model(nodes, [_f("x", [4, 6])], [_f("y", None)], weights, opset=opset)
    graph = _check(model, {"x": _random(4, 6) * 2})
    assert [(n.domain, n.op_type) for n in graph.nodes] == [("" if opset >= 20 else DOMAIN, "Gelu")]
    assert graph.nodes[0].attrs["approximate"] == ("tanh" if form.startswith("tanh") else "none")


def test_gelu_with_a_wrong_constant_or_a_shared_intermediate_is_not_fused():
    nodes, weights = _gelu_erf_nodes("div")
    weights[-1] = _w("half", 0.6)  # not GELU
    graph = _check(_model(nodes, [_f("x", [4, 6])], [_f("y", None)], weights, opset=20), {"x": _random(4, 6)})
    assert "Gelu" not in _ops(graph)
    nodes, weights = _gelu_erf_nodes("div")
    model = _model(nodes, [_f("x", [4, 6])], [_f("y", None), _f("e", None)], weights, opset=20)  # erf is an output
    graph = _check(model, {"x": _random(4, 6)})
    assert "Gelu" not in _ops(graph) and "Erf" in _ops(graph)


# ---------------------------------------------------------------------------- Unsqueeze-Mul-Add chains
def _affine_chain(source):
    """Unsqueeze(per-channel s) -> Mul -> Unsqueeze(t) -> Add, as the light DenseNet writes it."""
    return [
        helper.make_node("Unsqueeze", ["s"], ["s4"], axes=[1, 2]),
        helper.make_node("Mul", [source, "s4"], ["m"]),
        helper.make_node("Unsqueeze", ["t"], ["t4"], axes=[1, 2]),
        helper.make_node("Add", ["m", "t4"], ["y"]),
    ]


def test_scale_shift_chain_after_a_conv_folds_into_its_weights():
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"]), *_affine_chain("c")]
    weights = [_w("W", _random(6, 3, 1, 1)), _w("s", _random(6)), _w("t", _random(6))]
    model = _model(nodes, [_f("x", [1, 3, 4, 4])], [_f("y", None)], weights, opset=11)
    graph = _check(model, {"x": _random(1, 3, 4, 4)})
    assert _ops(graph) == ["Conv"]


def test_scale_shift_chain_after_batchnorm_folds_into_it_and_elsewhere_becomes_scale_shift():
    nodes = [
        helper.make_node("Concat", ["x", "x"], ["cat"], axis=1),
        helper.make_node("BatchNormalization", ["cat", "bn_scale", "bn_bias", "bn_mean", "bn_var"], ["b"]),
        *_affine_chain("b"),
        helper.make_node("Mul", ["cat", "s4"], ["m2"]),
        helper.make_node("Add", ["m2", "t4"], ["y2"]),
    ]
    weights = [*_batchnorm_weights("bn", 6), _w("s", _random(6)), _w("t", _random(6))]
    model = _model(nodes, [_f("x", [2, 3, 4, 4])], [_f("y", None), _f("y2", None)], weights, opset=11)
    graph = _check(model, {"x": _random(2, 3, 4, 4)})
    assert sorted(_ops(graph)) == ["BatchNormalization", "Concat", "ScaleShift"]


@pytest.mark.parametrize("activation,attrs", [("Relu", {}), ("LeakyRelu", {"alpha": 0.2}), ("Sigmoid", {})])
def test_batchnorm_and_activation_on_a_concat_become_one_scale_shift(activation, attrs):
    """DenseNet's pre-activation: no conv before the BN, so BN -> act is one ScaleShift."""
    nodes = [
        helper.make_node("Concat", ["x", "z"], ["cat"], axis=1),
        helper.make_node("BatchNormalization", ["cat", "bn_scale", "bn_bias", "bn_mean", "bn_var"], ["b"]),
        helper.make_node(activation, ["b"], ["r"], **attrs),
        helper.make_node("Conv", ["r", "W"], ["y"]),
    ]
    weights = [*_batchnorm_weights("bn", 5), _w("W", _random(4, 5, 1, 1))]
    model = _model(nodes, [_f("x", [2, 3, 4, 4]), _f("z", [2, 2, 4, 4])], [_f("y", None)], weights)
    graph = _check(model, {"x": _random(2, 3, 4, 4), "z": _random(2, 2, 4, 4)})
    assert _ops(graph) == ["Concat", "ScaleShift", "Conv"]
    (scale_shift,) = [n for n in graph.nodes if n.op_type == "ScaleShift"]
    assert scale_shift.attrs["activation"] == activation


def test_batchnorm_read_twice_keeps_its_activation_apart():
    nodes = [
        helper.make_node("Concat", ["x", "x"], ["cat"], axis=1),
        helper.make_node("BatchNormalization", ["cat", "bn_scale", "bn_bias", "bn_mean", "bn_var"], ["b"]),
        helper.make_node("Relu", ["b"], ["y"]),
        helper.make_node("Neg", ["b"], ["y2"]),
    ]
    model = _model(nodes, [_f("x", [1, 3, 4, 4])], [_f("y", None), _f("y2", None)], _batchnorm_weights("bn", 6))
    graph = _check(model, {"x": _random(1, 3, 4, 4)})
    assert sorted(_ops(graph)) == ["BatchNormalization", "Concat", "Neg", "Relu"]


def test_a_scale_shift_with_an_activation_absorbs_no_later_affine_map():
    """relu(x*s + t) * s2 is not a ScaleShift of x: a second pipeline run must leave the Mul."""
    nodes = [
        helper.make_node("Concat", ["x", "x"], ["cat"], axis=1),
        helper.make_node("BatchNormalization", ["cat", "bn_scale", "bn_bias", "bn_mean", "bn_var"], ["b"]),
        helper.make_node("Relu", ["b"], ["r"]),
        helper.make_node("Mul", ["r", "s"], ["y"]),
    ]
    weights = [*_batchnorm_weights("bn", 6), _w("s", _random(6, 1, 1))]
    model = _model(nodes, [_f("x", [1, 3, 4, 4])], [_f("y", None)], weights)
    feeds = {"x": _random(1, 3, 4, 4)}
    once = _check(model, feeds)
    assert _ops(once) == ["Concat", "ScaleShift", "Mul"]
    again, _ = optimize(once, "O2")
    assert _ops(again) == ["Concat", "ScaleShift", "Mul"]
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    np.testing.assert_allclose(ti.InferenceSession(again).run(None, feeds)[0], want, rtol=RTOL, atol=ATOL)


def test_lone_mul_by_a_non_constant_is_left_alone():
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"]), helper.make_node("Mul", ["c", "g"], ["y"])]
    model = _model(nodes, [_f("x", [1, 3, 4, 4]), _f("g", [1, 2, 1, 1])], [_f("y", None)], [_w("W", _random(2, 3, 1, 1))])
    graph = _check(model, {"x": _random(1, 3, 4, 4), "g": _random(1, 2, 1, 1)})
    assert _ops(graph) == ["Conv", "Mul"]


# ---------------------------------------------------------------------------- O1 cleanups
def _single(op, inputs, weights=(), out_type=TensorProto.FLOAT, **attrs):
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node(op, ["r", *inputs], ["y"], **attrs)]
    return _model(nodes, [_f("x", [2, 3, 4])], [helper.make_tensor_value_info("y", out_type, None)], weights)


I64 = lambda name, values: numpy_helper.from_array(np.asarray(values, np.int64), name)  # noqa: E731

NOOPS = {
    "Reshape": (_single("Reshape", ["shape"], [I64("shape", [2, 3, 4])]), _single("Reshape", ["shape"], [I64("shape", [6, 4])])),
    "Transpose": (_single("Transpose", [], perm=[0, 1, 2]), _single("Transpose", [], perm=[0, 2, 1])),
    "Cast": (_single("Cast", [], to=TensorProto.FLOAT), _single("Cast", [], out_type=TensorProto.DOUBLE, to=TensorProto.DOUBLE)),
    "Pad": (_single("Pad", ["pads"], [I64("pads", [0] * 6)]), _single("Pad", ["pads"], [I64("pads", [0, 0, 1, 0, 0, 1])])),
    "Slice": (_single("Slice", ["st", "en"], [I64("st", [0]), I64("en", [100])]),
              _single("Slice", ["st", "en"], [I64("st", [1]), I64("en", [100])])),
    "Mul": (_single("Mul", ["one"], [_w("one", np.ones((3, 1)))]), _single("Mul", ["one"], [_w("one", np.ones((2, 2, 3, 4)))])),
    "Add": (_single("Add", ["zero"], [_w("zero", 0.0)]), _single("Add", ["zero"], [_w("zero", 0.5)])),
    "Sub": (_single("Sub", ["zero"], [_w("zero", [0.0])]), _single("Sub", ["zero"], [_w("zero", [1.0])])),
    "Div": (_single("Div", ["one"], [_w("one", 1.0)]), _single("Div", ["one"], [_w("one", 2.0)])),
    "Pow": (_single("Pow", ["one"], [_w("one", 1.0)]), _single("Pow", ["one"], [_w("one", 2.0)])),
}


@pytest.mark.parametrize("op", sorted(NOOPS))
def test_o1_removes_nodes_that_do_nothing_and_keeps_the_ones_that_do(op):
    noop, useful = NOOPS[op]
    feeds = {"x": _random(2, 3, 4)}
    assert _ops(_check(noop, feeds, "O1")) == ["Relu"]
    assert _ops(_check(useful, feeds, "O1")) == ["Relu", op]


def test_consecutive_transposes_compose_and_consecutive_reshapes_keep_the_last():
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("Transpose", ["r"], ["t1"], perm=[1, 2, 0]),
        helper.make_node("Transpose", ["t1"], ["t2"], perm=[0, 2, 1]),
        helper.make_node("Reshape", ["t2", "s1"], ["a"]),
        helper.make_node("Reshape", ["a", "s2"], ["y"]),
        helper.make_node("Transpose", ["r"], ["u1"], perm=[1, 0, 2]),
        helper.make_node("Transpose", ["u1"], ["u"], perm=[1, 0, 2]),  # cancels the first
        helper.make_node("Neg", ["u"], ["z"]),
    ]
    model = _model(nodes, [_f("x", [2, 3, 4])], [_f("y", None), _f("z", None)], [I64("s1", [12, 2]), I64("s2", [4, -1])])
    graph = _check(model, {"x": _random(2, 3, 4)}, "O1")
    assert sorted(_ops(graph)) == ["Neg", "Relu", "Reshape", "Transpose"]
    transpose = next(n for n in graph.nodes if n.op_type == "Transpose")
    assert transpose.attrs["perm"] == [1, 0, 2]  # [1, 2, 0] then [0, 2, 1]


def test_inference_dropout_with_an_unread_mask_is_removed():
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Dropout", ["r"], ["y", "mask"], ratio=0.5)]
    model = _model(nodes, [_f("x", [2, 3])], [_f("y", None)], opset=9)
    assert _ops(_optimized(model, "O1")) == ["Relu"]


# ---------------------------------------------------------------------------- fused ops and export
def test_fused_op_rejects_an_unknown_activation_and_wrong_parameter_count():
    graph = Graph(
        nodes=[Node("FusedConv", ["x", "W"], ["y"], {"activation": "Swish"}, DOMAIN, "bad")],
        inputs=[Value("x", np.float32, (1, 1, 3, 3))],
        outputs=[Value("y", np.float32, None)],
        initializers={"W": np.ones((1, 1, 1, 1), np.float32)},
        opset={"": 17, DOMAIN: 1},
    )
    with pytest.raises(InvalidAttributeError, match="activation must be one of"):
        ti.load(graph)
    graph.nodes[0].attrs = {"activation": "LeakyRelu", "activation_params": [0.1, 0.2]}
    with pytest.raises(InvalidAttributeError, match="takes 1 parameter"):
        ti.load(graph)


def test_export_without_decomposition_keeps_the_fused_domain():
    act, weights = ACTIVATION_NODES["Relu"]()
    model = _model([helper.make_node("Conv", ["x", "W"], ["c"]), act], [_f("x", [1, 3, 4, 4])], [_f("y", None)],
                   [_w("W", _random(2, 3, 1, 1))])
    graph = _optimized(model)
    kept = ti.frontend.to_onnx(graph, decompose=False)
    assert [n.domain for n in kept.graph.node] == [DOMAIN]
    assert DOMAIN in {o.domain for o in kept.opset_import}
    plain = decompose_fused(graph)
    assert [n.op_type for n in plain.nodes] == ["Conv", "Relu"] and DOMAIN not in plain.opset
    assert [n.domain for n in graph.nodes] == [DOMAIN]  # decomposition works on a copy


# ---------------------------------------------------------------------------- the nine light models
_TABLE: dict[str, tuple[int, int, int]] = {}


@pytest.fixture(scope="module", autouse=True)
def _print_node_table():
    yield
    if _TABLE:
        print("\nnodes per light model: tinyinfer O0 -> O2, and ONNX Runtime after ORT_ENABLE_EXTENDED")
        print(f"{'model':<14} {'O0':>5} {'O2':>5} {'ORT':>5}")
        for name, (before, after, theirs) in _TABLE.items():
            print(f"{name:<14} {before:>5} {after:>5} {theirs:>5}")


def _with_logits(model):
    """Also output the Softmax input (the logits), where outputs are probabilities."""
    softmax = [n for n in model.graph.node if n.op_type == "Softmax"]
    if softmax:
        model.graph.output.append(helper.make_tensor_value_info(softmax[-1].input[0], TensorProto.FLOAT, None))
    return model


@pytest.mark.slow
@pytest.mark.parametrize("name", LIGHT_MODELS)
def test_light_model_at_O2_matches_onnxruntime_with_clearly_fewer_nodes(name, tmp_path):
    model = _with_logits(load_light_model(name, seed=3))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "ort.onnx")
    reference = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    session = ti.InferenceSession(model)
    feeds = {session.get_inputs()[0].name: np.random.default_rng(4).standard_normal((1, 3, 224, 224)).astype(np.float32)}
    want = reference.run(None, feeds)
    for got, expected in zip(session.run(None, feeds), want):
        np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-4 * float(np.abs(expected).max()))
    exported = ti.to_onnx(session.graph)
    again = ort.InferenceSession(exported.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    for got, expected in zip(again, want):
        np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-4 * float(np.abs(expected).max()))
    before, after = len(session.source_graph.nodes), len(session.graph.nodes)
    theirs = len(onnx.load(options.optimized_model_filepath).graph.node)
    _TABLE[name] = (before, after, theirs)
    assert after <= 0.7 * before and after <= theirs
