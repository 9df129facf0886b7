"""Cost metrics (tinyinfer.models.metrics), checked against costs computed by hand.

Every expected number below is worked out from the layer's shapes in the test itself, so a
test reads as the definition of the convention stated in the module docstring.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import tinyinfer

from tinyinfer.models import count_flops, load_light_model, redraw_weights
from tinyinfer.models.metrics import FLOPS_PER_ELEMENT, analyze, human_bytes, human_count

F32 = 4  # bytes per float32 element


def one_node(op_type, inputs, *, out_dtype=TensorProto.FLOAT, opset=17, outputs=1, **attrs) -> onnx.ModelProto:
    """A model of one node. ``inputs``: a shape (tuple or list, a graph input ``x0``, ``x1``...)
    or an array (an initializer ``w0``, ``w1``...) per input, ``None`` for an omitted one."""
    names, graph_inputs, initializers = [], [], []
    for i, spec in enumerate(inputs):
        if spec is None:
            names.append("")
        elif isinstance(spec, np.ndarray):
            names.append(f"w{i}")
            initializers.append(numpy_helper.from_array(spec, f"w{i}"))
        else:
            dtype, shape = (spec[0], spec[1]) if isinstance(spec, list) else (TensorProto.FLOAT, spec)
            names.append(f"x{i}")
            graph_inputs.append(helper.make_tensor_value_info(f"x{i}", dtype, shape))
    out_names = [f"y{i}" for i in range(outputs)]
    graph = helper.make_graph(
        [helper.make_node(op_type, names, out_names, name="layer", **attrs)],
        op_type.lower(),
        graph_inputs,
        [helper.make_tensor_value_info(name, out_dtype, None) for name in out_names],
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def weights(*shape, dtype=np.float32) -> np.ndarray:
    return np.ones(shape, dtype)


def only_layer(model, **kw):
    report = analyze(model, **kw)
    assert len(report.layers) == 1 and report.layers[0].known
    return report.layers[0]


# ----------------------------------------------------------------------------- matrix ops
def test_grouped_strided_dilated_conv_with_bias_at_batch_two():
    # x: [N, 4, 9, 9] with N = 2; 6 filters over 4 / 2 groups = 2 channels, 3x3, dilation 2.
    # Output side: (9 + 1 + 1 - 2 * (3 - 1) - 1) // 2 + 1 = 4, so y is [2, 6, 4, 4] = 192 elements,
    # each a dot product over 2 * 3 * 3 = 18 inputs.
    model = one_node("Conv", [("N", 4, 9, 9), weights(6, 2, 3, 3), weights(6)],
                     group=2, strides=[2, 2], dilations=[2, 2], pads=[1, 1, 1, 1])
    layer = only_layer(model, batch=2)
    assert layer.shape == "float[2x6x4x4]"
    assert layer.macs == 192 * 18
    assert layer.flops == 2 * 192 * 18  # the bias rides in the accumulator, for free
    assert (layer.params, layer.param_bytes) == (108 + 6, (108 + 6) * F32)
    assert layer.input_bytes == 2 * 4 * 9 * 9 * F32
    assert layer.activation_bytes == 192 * F32
    assert layer.memory_access == (648 + 114 + 192) * F32
    assert layer.arithmetic_intensity == pytest.approx(2 * 192 * 18 / ((648 + 114 + 192) * F32))


def test_depthwise_conv_costs_one_kernel_per_channel():
    # 8 channels, 8 groups: each output element reads 1 channel * 3 * 3 taps.
    layer = only_layer(one_node("Conv", [(1, 8, 10, 10), weights(8, 1, 3, 3)], group=8, pads=[1, 1, 1, 1]))
    assert layer.macs == 8 * 10 * 10 * 9
    assert layer.params == 8 * 9


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_contracts_over_the_right_axis_of_b(trans_b):
    b = weights(4, 5) if trans_b else weights(5, 4)
    layer = only_layer(one_node("Gemm", [(3, 5), b, weights(4)], transB=trans_b))
    assert layer.shape == "float[3x4]"
    assert layer.macs == 3 * 4 * 5
    assert layer.params == 20 + 4


def test_batched_matmul_with_broadcast_and_two_activations():
    # [2, 3, 4, 5] @ [3, 5, 6] -> [2, 3, 4, 6]: 144 outputs, each a dot product of length 5.
    layer = only_layer(one_node("MatMul", [(2, 3, 4, 5), (3, 5, 6)]))
    assert layer.macs == 144 * 5
    assert layer.params == 0 and layer.weight_bytes == 0
    assert layer.input_bytes == (120 + 90) * F32


@pytest.mark.parametrize("group", [1, 2])
def test_conv_transpose_scatters_each_input_through_its_group_of_filters(group):
    # W is [C, M / group, k, k]: every input element is multiplied by M / group * 3 * 3 weights.
    c, m_per_group = 4, 3
    model = one_node("ConvTranspose", [(1, c, 4, 4), weights(c, m_per_group, 3, 3)], group=group, strides=[2, 2])
    layer = only_layer(model)
    assert layer.shape == f"float[1x{m_per_group * group}x9x9]"  # (4 - 1) * 2 + 3 = 9
    assert layer.macs == (c * 4 * 4) * m_per_group * 9


def test_quantized_twins_einsum_and_lstm_count_macs():
    a, b = [TensorProto.UINT8, (3, 4)], [TensorProto.UINT8, (4, 2)]
    assert only_layer(one_node("MatMulInteger", [a, b], out_dtype=TensorProto.INT32)).macs == 3 * 2 * 4
    einsum = one_node("Einsum", [(2, 3, 4), (2, 4, 5)], opset=17, equation="bij,bjk->bik")
    assert only_layer(einsum).macs == 2 * 3 * 4 * 5
    # LSTM: 5 steps x batch 2, each multiplies x by W [1, 4*4, 3] and h by R [1, 4*4, 4].
    lstm = one_node("LSTM", [(5, 2, 3), weights(1, 16, 3), weights(1, 16, 4)], hidden_size=4)
    assert only_layer(lstm).macs == 5 * 2 * (16 * 3 + 16 * 4)


# ----------------------------------------------------------------------------- other op families
@pytest.mark.parametrize(
    "op_type, attrs, expected_flops",
    [
        # 6x6 input, 3x3 window, stride 1 -> 4x4 output; each output reads 9 taps.
        ("MaxPool", {"kernel_shape": [3, 3]}, 2 * 4 * 4 * 9),
        # 2x2 window, stride 2 -> 3x3 output.
        ("AveragePool", {"kernel_shape": [2, 2], "strides": [2, 2]}, 2 * 3 * 3 * 4),
        ("GlobalAveragePool", {}, 2 * 6 * 6),
        ("ReduceMean", {"axes": [2, 3]}, 2 * 6 * 6),
        ("ReduceSumSquare", {"axes": [1]}, 2 * 2 * 6 * 6),
    ],
)
def test_pooling_and_reductions_count_every_element_read(op_type, attrs, expected_flops):
    layer = only_layer(one_node(op_type, [(1, 2, 6, 6)], **attrs))
    assert layer.flops == expected_flops and layer.macs == 0


def test_broadcast_add_reads_the_small_operand_once():
    layer = only_layer(one_node("Add", [(2, 3, 4), (4,)]))
    assert layer.flops == 24
    assert layer.memory_access == (24 + 4 + 24) * F32
    with_weight = only_layer(one_node("Add", [(2, 3, 4), weights(4)]))
    assert (with_weight.params, with_weight.weight_bytes, with_weight.input_bytes) == (4, 4 * F32, 24 * F32)


@pytest.mark.parametrize("op_type", ["Relu", "Sigmoid", "HardSwish", "Softmax", "BatchNormalization"])
def test_elementwise_ops_cost_their_stated_flops_per_element(op_type):
    per_element = FLOPS_PER_ELEMENT.get(op_type, 1)
    assert (FLOPS_PER_ELEMENT["Sigmoid"], FLOPS_PER_ELEMENT["HardSwish"]) == (3, 5)  # as documented
    inputs = [(2, 3, 5)] + ([weights(3)] * 4 if op_type == "BatchNormalization" else [])
    layer = only_layer(one_node(op_type, inputs))
    assert layer.flops == per_element * 30


def test_gelu_counts_its_erf_or_tanh_formula():
    assert only_layer(one_node("Gelu", [(10,)], opset=20)).flops == 5 * 10
    assert only_layer(one_node("Gelu", [(10,)], opset=20, approximate="tanh")).flops == 9 * 10


def test_data_movement_costs_no_flops_but_memory_access():
    layer = only_layer(one_node("Transpose", [(2, 3, 4)], perm=[2, 0, 1]))
    assert layer.flops == 0 and layer.memory_access == 2 * 24 * F32


# ----------------------------------------------------------------------------- Ma et al., ShuffleNet V2
@pytest.mark.parametrize("c1, c2", [(16, 32), (24, 24), (64, 8)])
def test_pointwise_conv_memory_access_matches_shufflenet_v2(c1, c2):
    """Ma et al. (2018), section 2, guideline G1: a 1x1 conv on an h x w map costs
    MAC = hw(c1 + c2) + c1·c2 elements of memory access and B = hw·c1·c2 FLOPs (their FLOPs are
    our MACs), and MAC >= 2·sqrt(hw·B) + B / hw, with equality when c1 == c2."""
    h = w = 7
    layer = only_layer(one_node("Conv", [(1, c1, h, w), weights(c2, c1, 1, 1)]), dtype_bytes=1)
    assert layer.memory_access == h * w * (c1 + c2) + c1 * c2
    b = h * w * c1 * c2
    assert layer.macs == b
    bound = 2 * math.sqrt(h * w * b) + b / (h * w)
    if c1 == c2:
        assert layer.memory_access == pytest.approx(bound)
    else:
        assert layer.memory_access > bound


# ----------------------------------------------------------------------------- schedule and report
def chain_model() -> onnx.ModelProto:
    """x -> a = Relu(x) -> b = Relu(a) -> c = a + b -> y = Relu(c), every tensor [1, 1000] float."""
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="relu_a"),
        helper.make_node("Relu", ["a"], ["b"], name="relu_b"),
        helper.make_node("Add", ["a", "b"], ["c"], name="add"),
        helper.make_node("Relu", ["c"], ["y"], name="relu_y"),
    ]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1000])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1000])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_peak_activation_memory_frees_each_tensor_after_its_last_reader():
    report = analyze(chain_model())
    t = 1000 * F32
    # x live at the start; relu_a adds a (2t) then frees x; relu_b adds b (2t); add holds a, b
    # and c (3t) then frees a and b; relu_y adds y to c (2t).
    assert [layer.live_bytes for layer in report.layers] == [2 * t, 2 * t, 3 * t, 2 * t]
    assert report.peak_activation_bytes == 3 * t and report.peak_node == "add"
    assert report.totals["activation_bytes"] == 4 * t  # without reuse every output needs its own buffer


def test_totals_by_op_and_table_agree():
    report = analyze(chain_model())
    totals, groups = report.totals, report.by_op()
    assert set(groups) == {"Relu", "Add"} and groups["Relu"]["count"] == 3
    for key in ("flops", "memory_access", "activation_bytes"):
        assert sum(g[key] for g in groups.values()) == totals[key]
    assert totals["arithmetic_intensity"] == pytest.approx(totals["flops"] / totals["memory_access"])
    text = report.table()
    assert "relu_b" in text and "total" in text and "peak activation memory 11.7 KiB" in text
    top = report.table(top=1)
    assert "add" in top and "relu_b" not in top and "1 of 4 layers" in top


def test_constant_nodes_are_weights_and_unknown_shapes_are_reported():
    value = helper.make_tensor("v", TensorProto.FLOAT, [3], [1.0, 2.0, 3.0])
    nodes = [helper.make_node("Constant", [], ["c"], value=value, name="const"),
             helper.make_node("Mul", ["x", "c"], ["y"], name="scale")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    report = analyze(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    const, scale = report.layers
    assert const.activation_bytes == 0 and const.params == 0
    assert (scale.params, scale.weight_bytes) == (3, 3 * F32)
    assert report.unknown == ["scale"] and not scale.known and scale.flops == 0


def test_human_units():
    assert [human_count(n) for n in (12, 3400, 25_557_032, 4.09e9)] == ["12", "3.4K", "25.6M", "4.09G"]
    assert [human_bytes(n) for n in (512, 1536, 3 * 2**20)] == ["512 B", "1.5 KiB", "3 MiB"]


def test_resnet50_costs_what_its_paper_reports():
    """He et al. (2016): ResNet-50 has 25.6 M parameters and 4.1 G multiply-adds (their 'FLOPs')."""
    model = redraw_weights(load_light_model("resnet50", redraw=False))  # shapes matter, not values
    report = analyze(model)
    totals = report.totals
    assert round(totals["params"] / 1e6, 1) == 25.6
    assert round(totals["macs"] / 1e9, 1) == 4.1
    assert totals["flops"] > 2 * totals["macs"]  # plus BN, ReLU, pooling, residual adds
    assert totals["macs"] == sum(cost.macs for cost in count_flops(tinyinfer.load(model)))
    assert next(iter(report.by_op())) == "Conv" and not report.unknown
    assert 0 < report.peak_activation_bytes < totals["activation_bytes"]
    assert len(report.layers) == 176
