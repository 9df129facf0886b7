"""The O3 layout pass: which nodes it runs in NCHWc, where it converts, and that nothing changes.

Correctness oracle: the same model at O2 (reference backend) and, end to end, ONNX Runtime.
The blocked reference ops compute exactly the standard ops on the same numbers (they convert,
call the standard reference and convert back), so O3 against O2 on the reference backend is
compared at ``rtol = 1e-6``; with the Numba kernels (another summation order, FMA) the
tolerance is the engine's usual ``rtol = 1e-3, atol = 1e-4 * max|y|``.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import tinyinfer as ti
from tinyinfer.models import load_light_model
from tinyinfer.passes import PassManager
from tinyinfer.passes.layout import block_layout, count_conversions
from tinyinfer.runtime.session import load

DOMAIN = "ai.tinyinfer"


@pytest.fixture(autouse=True)
def private_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("TINYINFER_CACHE_DIR", str(tmp_path))


class Builder:
    """A small ONNX model, one node at a time (weights drawn from a seeded generator)."""

    def __init__(self, channels=5, size=8, batch=1):
        self.rng = np.random.default_rng(0)
        self.nodes, self.inits, self.outputs = [], [], []
        self.input = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, channels, size, size])
        self.channels = {"x": channels}

    def conv(self, source, out_channels, name, *, kernel=3, group=1, stride=1):
        per_group = self.channels[source] // group
        w = (self.rng.standard_normal((out_channels, per_group, kernel, kernel)) / np.sqrt(per_group * kernel**2))
        self.inits += [numpy_helper.from_array(w.astype(np.float32), f"{name}_w"),
                       numpy_helper.from_array(self.rng.standard_normal(out_channels).astype(np.float32), f"{name}_b")]
        self.nodes.append(helper.make_node("Conv", [source, f"{name}_w", f"{name}_b"], [name], name=name, group=group,
                                           pads=[kernel // 2] * 4, strides=[stride, stride]))
        self.channels[name] = out_channels
        return name

    def op(self, op_type, inputs, name, **attrs):
        self.nodes.append(helper.make_node(op_type, list(inputs), [name], name=name, **attrs))
        self.channels[name] = self.channels.get(inputs[0])
        return name

    def output(self, name):
        self.outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))

    def model(self):
        graph = helper.make_graph(self.nodes, "g", [self.input], self.outputs, self.inits)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _o3(model, block=8, base="O2"):
    """The graph at ``base`` level, then rewritten by the layout pass (O3 is O2 + this pass)."""
    graph, _ = PassManager(base).run(load(model))
    notes = block_layout(graph, block)
    graph.validate()
    return graph, notes


def _run(model_or_graph, x, **options):
    sess = ti.InferenceSession(model_or_graph, **options)
    return sess.run(None, {"x": x})


def _feed(model):
    shape = [d.dim_value or 2 for d in model.graph.input[0].type.tensor_type.shape.dim]
    return np.random.default_rng(1).standard_normal(shape).astype(np.float32)


def _check_same_as_o2(model, graph):
    x = _feed(model)
    for got, expected in zip(_run(graph, x, opt_level="O0"), _run(model, x, opt_level="O2")):
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6 * float(np.abs(expected).max()))


def _chain_of_three(b: Builder, source="x"):
    for i in range(3):
        source = b.op("Relu", [b.conv(source, 8 + 4 * i, f"conv{i}")], f"relu{i}")
    return source


def _no_conversion_between_blocked_ops(graph):
    producers = graph.producers()
    for node in graph.nodes:
        if node.op_type == "ToBlocked":
            source = producers.get(node.inputs[0])
            assert source is None or source.op_type != "FromBlocked", "converted out and straight back in"


# ============================================================================ where it converts
@pytest.mark.parametrize("base", ["O1", "O2"])  # Relu nodes of their own, or fused into the convs
def test_a_chain_of_three_convs_and_relus_converts_once_each_way(base):
    b = Builder()
    b.output(_chain_of_three(b))
    model = b.model()
    graph, notes = _o3(model, base=base)
    assert count_conversions(graph) == {"ToBlocked": 1, "FromBlocked": 1, "ConvNCHWc": 3, "ToBlocked_constants": 0}
    assert graph.op_histogram()["Relu"] == (3 if base == "O1" else 0)
    assert "inserted 1 ToBlocked and 1 FromBlocked" in notes[-1]
    assert [n.op_type for n in graph.nodes][0] == "ToBlocked" and graph.nodes[-1].op_type == "FromBlocked"
    assert graph.output_names == ["relu2"]  # outputs keep their names
    _check_same_as_o2(model, graph)


def test_a_branch_that_leaves_the_chain_gets_its_own_from_blocked():
    b = Builder()
    first = b.op("Relu", [b.conv("x", 8, "conv0")], "relu0")
    side = b.op("Softmax", [first], "side", axis=1)  # not lane-wise: reads NCHW
    last = b.op("Relu", [b.conv(b.conv(first, 8, "conv1"), 12, "conv2")], "relu2")
    b.output(last)
    b.output(side)
    model = b.model()
    graph, _ = _o3(model)
    assert count_conversions(graph) == {"ToBlocked": 1, "FromBlocked": 2, "ConvNCHWc": 3, "ToBlocked_constants": 0}
    softmax = next(n for n in graph.nodes if n.op_type == "Softmax")
    assert graph.producers()[softmax.inputs[0]].op_type == "FromBlocked"
    _no_conversion_between_blocked_ops(graph)
    _check_same_as_o2(model, graph)


def test_an_intermediate_graph_output_is_converted_back_and_the_chain_goes_on():
    b = Builder()
    middle = b.conv(b.conv("x", 8, "conv0"), 8, "conv1")
    b.output(b.conv(middle, 8, "conv2"))
    b.output(middle)
    model = b.model()
    graph, _ = _o3(model)
    assert count_conversions(graph) == {"ToBlocked": 1, "FromBlocked": 2, "ConvNCHWc": 3, "ToBlocked_constants": 0}
    _check_same_as_o2(model, graph)


def test_a_lone_conv_is_left_in_nchw():
    b = Builder()
    b.output(b.op("Softmax", [b.conv("x", 8, "conv0")], "s", axis=1))
    graph, notes = _o3(b.model())
    assert notes == [] and count_conversions(graph)["ConvNCHWc"] == 0


def test_a_grouped_conv_stays_in_nchw_and_splits_the_chain():
    b = Builder(channels=4)
    source = b.conv(b.conv("x", 8, "conv0"), 8, "conv1")
    source = b.conv(source, 8, "grouped", group=2)
    b.output(b.conv(b.conv(source, 8, "conv3"), 8, "conv4"))
    model = b.model()
    graph, notes = _o3(model)
    assert count_conversions(graph) == {"ToBlocked": 2, "FromBlocked": 2, "ConvNCHWc": 4, "ToBlocked_constants": 0}
    assert any(n.op_type == "Conv" and n.name == "grouped" for n in graph.nodes)
    assert sum(note.startswith("chain") for note in notes) == 2
    _check_same_as_o2(model, graph)


def test_depthwise_convs_pooling_and_residual_adds_stay_blocked():
    b = Builder(channels=6, size=12)
    b.inits += [numpy_helper.from_array(np.float32(0.0), "zero"), numpy_helper.from_array(np.float32(6.0), "six")]
    stem = b.op("Clip", [b.conv("x", 16, "stem", stride=2), "zero", "six"], "stem_act")
    depthwise = b.op("Relu", [b.conv(stem, 16, "dw", group=16)], "dw_act")
    project = b.conv(depthwise, 16, "project", kernel=1)
    added = b.op("Add", [project, stem], "residual")
    pooled = b.op("MaxPool", [added], "pool", kernel_shape=[2, 2], strides=[2, 2])
    b.output(b.op("GlobalAveragePool", [b.conv(pooled, 24, "head", kernel=1)], "gap"))
    model = b.model()
    graph, _ = _o3(model)
    kinds = graph.op_histogram()
    assert count_conversions(graph) == {"ToBlocked": 1, "FromBlocked": 1, "ConvNCHWc": 4, "ToBlocked_constants": 0}
    assert kinds[f"{DOMAIN}:MaxPoolNCHWc"] == 1 and kinds[f"{DOMAIN}:GlobalAveragePoolNCHWc"] == 1
    _check_same_as_o2(model, graph)


def test_a_binary_op_with_an_operand_from_outside_is_left_in_nchw():
    b = Builder(channels=8)
    chain = b.conv(b.conv("x", 8, "conv0"), 8, "conv1")
    b.output(b.op("Mul", [chain, "x"], "product"))  # (an Add would fuse into the conv at O2)
    model = b.model()
    graph, _ = _o3(model)
    mul = next(n for n in graph.nodes if n.op_type == "Mul")
    assert graph.producers()[mul.inputs[0]].op_type == "FromBlocked" and mul.inputs[1] == "x"
    _check_same_as_o2(model, graph)


@pytest.mark.parametrize("channels,joins", [(8, True), (5, False)])
def test_concat_joins_only_when_its_inputs_fill_whole_blocks(channels, joins):
    b = Builder()
    left = b.conv(b.conv("x", channels, "a0"), channels, "a1")
    right = b.conv(b.conv("x", 8, "b0"), 8, "b1")
    b.op("Concat", [left, right], "cat", axis=1)
    b.channels["cat"] = channels + 8
    b.output(b.conv("cat", 8, "after"))
    model = b.model()
    graph, _ = _o3(model)
    concat = next(n for n in graph.nodes if n.op_type == "Concat")
    producers = graph.producers()
    assert (producers[concat.inputs[0]].op_type == "ConvNCHWc") == joins
    _check_same_as_o2(model, graph)


def test_symbolic_batch_is_fine():
    b = Builder()
    b.input = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5, 8, 8])
    b.output(_chain_of_three(b))
    model = b.model()
    graph, _ = _o3(model)
    assert count_conversions(graph)["ConvNCHWc"] == 3
    sess_o3, sess_o2 = ti.InferenceSession(graph, opt_level="O0"), ti.InferenceSession(model)
    for batch in (1, 3):
        x = np.random.default_rng(batch).standard_normal((batch, 5, 8, 8)).astype(np.float32)
        np.testing.assert_allclose(sess_o3.run(None, {"x": x})[0], sess_o2.run(None, {"x": x})[0], rtol=1e-6, atol=1e-6)


def test_o3_registers_the_pass_and_reports_it():
    b = Builder()
    b.output(_chain_of_three(b))
    sess = ti.InferenceSession(b.model(), opt_level="O3")
    report = next(r for r in sess.optimization.passes if r.name == "nchwc_layout")
    assert report.notes[-1].startswith("converted 1 chain(s) of 3 node(s) to NCHW16c")  # Relus fused at O2
    assert "nchwc_layout" not in [r.name for r in ti.InferenceSession(b.model(), opt_level="O2").optimization.passes]


def test_batchnorm_and_per_channel_constants_run_blocked_as_scale_shift():
    """Pre-activation blocks (DenseNet: BN -> Relu -> Conv) and x * per-channel constant."""
    b = Builder(channels=8)
    channels = 8
    params = [np.abs(b.rng.standard_normal(channels)).astype(np.float32) + 0.5 for _ in range(4)]
    b.inits += [numpy_helper.from_array(p, f"bn_{i}") for i, p in enumerate(params)]
    b.inits.append(numpy_helper.from_array(b.rng.standard_normal((channels, 1, 1)).astype(np.float32), "gain"))
    source = b.conv(b.conv("x", channels, "conv0"), channels, "conv1")
    source = b.op("Concat", [source, b.conv("x", channels, "side")], "cat", axis=1)
    b.channels["cat"] = 2 * channels
    source = b.op("Relu", [b.conv(source, channels, "squeeze", kernel=1)], "squeeze_relu")
    normalized = b.op("BatchNormalization", [source, "bn_0", "bn_1", "bn_2", "bn_3"], "bn")  # after a Relu: stays
    scaled = b.op("Mul", [b.op("Relu", [normalized], "bn_relu"), "gain"], "scaled")
    b.output(b.conv(scaled, 8, "conv2"))
    model = b.model()
    graph, notes = _o3(model)
    assert graph.op_histogram()[f"{DOMAIN}:ScaleShift"] == 1 and "BatchNormalization" not in graph.op_histogram()
    conversions = count_conversions(graph)
    assert (conversions["ToBlocked"], conversions["FromBlocked"]) == (1, 1)
    assert conversions["ToBlocked_constants"] == 3  # BN scale and shift, and the gain
    _check_same_as_o2(model, graph)


def test_a_squeeze_excite_gate_broadcasts_lane_by_lane():
    """EfficientNet's SE: x * sigmoid(conv(relu(conv(GlobalAveragePool(x))))), the gate [N, C, 1, 1]."""
    b = Builder(channels=6)
    features = b.op("Relu", [b.conv(b.conv("x", 12, "conv0"), 12, "conv1")], "features")
    squeezed = b.op("GlobalAveragePool", [features], "squeeze")
    gate = b.op("Sigmoid", [b.conv(b.op("Relu", [b.conv(squeezed, 4, "reduce", kernel=1)], "r"), 12, "expand", kernel=1)],
                "gate")
    b.output(b.conv(b.op("Mul", [features, gate], "excited"), 8, "conv2"))
    model = b.model()
    graph, _ = _o3(model)
    assert count_conversions(graph) == {"ToBlocked": 1, "FromBlocked": 1, "ConvNCHWc": 5, "ToBlocked_constants": 0}
    _check_same_as_o2(model, graph)


def test_an_o3_graph_exports_to_standard_onnx():
    from tinyinfer.frontend.onnx_export import to_onnx
    from tinyinfer.ops.layout import decompose_layout

    b = Builder()
    b.output(b.op("MaxPool", [_chain_of_three(b)], "pool", kernel_shape=[2, 2], strides=[2, 2]))
    model = b.model()
    graph, _ = _o3(model)
    exported = to_onnx(decompose_layout(graph))
    assert not any(n.domain == DOMAIN for n in exported.graph.node)
    x = _feed(model)
    run = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
           for m in (exported, model)]
    np.testing.assert_allclose(run[0], run[1], rtol=1e-5, atol=1e-6)


# ============================================================================ end to end
@pytest.mark.parametrize("name", ["squeezenet", "resnet50"])
def test_light_models_at_o3_with_numba_match_onnxruntime(name):
    model = load_light_model(name)
    x = _feed(model)
    feeds = {model.graph.input[0].name: x}
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    sess = ti.InferenceSession(model, backend="numba", opt_level="O3", select="cost")
    got = sess.run(None, feeds)[0]
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-4 * float(np.abs(expected).max()))
    conversions = count_conversions(sess.graph)
    assert conversions["ToBlocked"] == conversions["FromBlocked"] == 1
    kernels = {r.kernel for r in sess.profile().records if r.op_type == "ConvNCHWc"}
    assert kernels == {"conv_nchwc_direct"}
