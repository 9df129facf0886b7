"""Cross-layer equalization and bias correction (Nagel et al., 2019) on small conv chains.

Oracles: the float function itself (equalization must not change it: rtol 1e-4, the float32
rounding of rescaled weights through two or three layers), ONNX Runtime on the original
model (BatchNorm folded on the way), per-channel ranges computed with explicit loops over
channels and groups, and, for bias correction, the mean output error per channel measured
on the calibration data with and without the correction.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import tinyinfer
from tinyinfer.compress.equalize import (
    correct_bias,
    equalize_cross_layer,
    fake_quantize_weights,
    fold_batchnorm,
    per_channel_int8,
    snr_db,
)
from tinyinfer.compress.affine import fake_quantize, params_from_tensor
from tinyinfer.errors import TinyInferError


# ------------------------------------------------------------------ model building
class Net:
    """A few layers written with onnx.helper; weights with widely spread channel ranges."""

    def __init__(self, channels: int, size: int = 6, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits = [], []
        self.channels = channels
        self.size = size
        self.last = "x"
        self.count = 0

    def _name(self, stem: str) -> str:
        self.count += 1
        return f"{stem}{self.count}"

    def const(self, array: np.ndarray, stem: str = "c") -> str:
        name = self._name(stem)
        self.inits.append(numpy_helper.from_array(np.asarray(array, np.float32), name))
        return name

    def conv(self, out: int, kernel: int = 1, group: int = 1, bias: bool = True, spread: float = 100.0) -> str:
        fan_in = self.channels // group * kernel * kernel
        w = self.rng.normal(0, np.sqrt(2 / fan_in), (out, self.channels // group, kernel, kernel))
        w *= np.exp(self.rng.uniform(0, np.log(spread), out)).reshape(-1, 1, 1, 1) / np.sqrt(spread)
        inputs = [self.last, self.const(w, "w")]
        if bias:
            inputs.append(self.const(self.rng.normal(0, 0.1, out), "b"))
        name = self._name("conv")
        self.nodes.append(helper.make_node("Conv", inputs, [name], name=name, kernel_shape=[kernel, kernel],
                                           pads=[kernel // 2] * 4, group=group))
        self.last, self.channels = name, out
        return name

    def op(self, op_type: str, *extra: str, **attrs) -> str:
        name = self._name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, [self.last, *extra], [name], name=name, **attrs))
        self.last = name
        return name

    def clip(self, low: float, high: float) -> str:
        return self.op("Clip", self.const(np.float32(low), "lo"), self.const(np.float32(high), "hi"))

    def batchnorm(self) -> str:
        c = self.channels
        params = [self.rng.uniform(0.2, 3, c), self.rng.normal(0, 0.2, c), self.rng.normal(0, 0.3, c),
                  self.rng.uniform(0.5, 2, c)]
        return self.op("BatchNormalization", *(self.const(p, "bn") for p in params))

    def model(self, inputs: int = 4) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes, "net", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", inputs, self.size, self.size])],
            [helper.make_tensor_value_info(self.last, TensorProto.FLOAT, None)], self.inits)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _net(inputs: int = 4, seed: int = 0) -> Net:
    net = Net(inputs, seed=seed)
    return net


def _run(model, x: np.ndarray) -> np.ndarray:
    return tinyinfer.InferenceSession(model, opt_level="O0").run(None, {"x": x})[0]


def _inputs(seed: int = 1, n: int = 2, channels: int = 4, mean: float = 0.0) -> np.ndarray:
    return np.random.default_rng(seed).normal(mean, 1.0, (n, channels, 6, 6)).astype(np.float32)


def _weights(graph, name: str) -> np.ndarray:
    node = next(n for n in graph.nodes if n.name == name)
    return graph.initializers[node.inputs[1]]


def _output_ranges(w: np.ndarray) -> np.ndarray:
    return np.array([np.abs(w[i]).max() for i in range(w.shape[0])])


def _input_ranges(w: np.ndarray, group: int) -> np.ndarray:
    """Range of each input channel j of a grouped conv weight, by explicit loops."""
    per_group_out, per_group_in = w.shape[0] // group, w.shape[1]
    ranges = []
    for j in range(per_group_in * group):
        g, k = divmod(j, per_group_in)
        ranges.append(np.abs(w[g * per_group_out:(g + 1) * per_group_out, k]).max())
    return np.array(ranges)


# ------------------------------------------------------------------ equalization
def test_conv_relu_conv_keeps_its_function_and_equalizes_the_ranges():
    net = _net()
    first = net.conv(8, kernel=3)
    net.op("Relu")
    second = net.conv(6)
    model = net.model()
    graph, report = equalize_cross_layer(model)
    x = _inputs()
    np.testing.assert_allclose(_run(graph, x), _run(model, x), rtol=1e-4, atol=1e-5)
    r1 = _output_ranges(_weights(graph, first))
    r2 = _input_ranges(_weights(graph, second), 1)
    np.testing.assert_allclose(r1, r2, rtol=1e-5)
    (pair,) = report.pairs
    assert (pair.first, pair.second, pair.activation, pair.channels) == (first, second, "Relu", 8)
    assert pair.first_spread_after < pair.first_spread_before / 3
    assert report.converged and "1 pairs" in report.table()


def test_input_model_is_not_modified():
    net = _net()
    net.conv(8, kernel=3)
    net.op("Relu")
    net.conv(6)
    model = net.model()
    before = model.SerializeToString()
    graph = tinyinfer.load(model)
    weights = {k: v.copy() for k, v in graph.initializers.items()}
    equalize_cross_layer(model)
    equalize_cross_layer(graph)
    assert model.SerializeToString() == before
    for name, value in weights.items():
        np.testing.assert_array_equal(graph.initializers[name], value)


@pytest.mark.parametrize("bounded", ["exact", "relu"])
def test_mobilenet_block_with_depthwise_and_relu6_converges(bounded):
    """expand 1x1 -> ReLU6 -> depthwise 3x3 -> ReLU6 -> project 1x1: two pairs sharing the depthwise."""
    net = _net()
    expand = net.conv(12)
    net.clip(0.0, 6.0)
    depthwise = net.conv(12, kernel=3, group=12)
    net.clip(0.0, 6.0)
    project = net.conv(5, bias=False)
    model = net.model()
    graph, report = equalize_cross_layer(model, bounded=bounded)
    assert report.converged and [(p.first, p.second) for p in report.pairs] == [(expand, depthwise), (depthwise, project)]
    x = _inputs()
    if bounded == "relu":  # ReLU6 became ReLU: identical only where nothing exceeded 6
        assert graph.op_histogram()["Clip"] == 0 and graph.op_histogram()["Relu"] == 2
        x = x * 0.05
    np.testing.assert_allclose(_run(graph, x), _run(model, x), rtol=1e-4, atol=1e-5)
    w_expand, w_depthwise, w_project = (_weights(graph, n) for n in (expand, depthwise, project))
    # Converged: both pairs equal per channel (the last pair exactly, the first within the tolerance).
    np.testing.assert_allclose(_output_ranges(w_expand), _input_ranges(w_depthwise, 12), rtol=1e-4)
    np.testing.assert_allclose(_output_ranges(w_depthwise), _input_ranges(w_project, 1), rtol=1e-5)


def test_exact_mode_clips_each_channel_at_its_own_bound():
    net = _net()
    net.conv(6)
    net.clip(0.0, 6.0)
    net.conv(3)
    model = net.model()
    graph, _ = equalize_cross_layer(model, bounded="exact")
    ops = graph.op_histogram()
    assert ops["Clip"] == 0 and ops["Relu"] == 1 and ops["Min"] == 1
    x = _inputs() * 20  # drive many activations past 6, so the bounds matter
    np.testing.assert_allclose(_run(graph, x), _run(model, x), rtol=1e-4, atol=1e-4)


def test_clip_with_a_positive_lower_bound_becomes_max_and_min():
    net = _net()
    net.conv(6)
    net.clip(0.5, 4.0)
    net.conv(3)
    model = net.model()
    graph, report = equalize_cross_layer(model)
    assert len(report.pairs) == 1 and graph.op_histogram()["Max"] == 1
    x = _inputs() * 5
    np.testing.assert_allclose(_run(graph, x), _run(model, x), rtol=1e-4, atol=1e-4)
    _, report = equalize_cross_layer(model, bounded="relu")
    assert not report.pairs and "positive lower bound" in report.skipped[0]


def test_skip_mode_leaves_bounded_pairs_alone_but_equalizes_linear_ones():
    net = _net()
    net.conv(6)
    net.clip(0.0, 6.0)
    net.conv(5)
    net.conv(4)  # conv -> conv with no activation: a linear pair
    graph, report = equalize_cross_layer(net.model(), bounded="skip")
    assert [p.activation for p in report.pairs] == ["none"] and len(report.skipped) == 1


@pytest.mark.parametrize("activation", ["LeakyRelu", "PRelu", None])
def test_homogeneous_activations_and_grouped_convs(activation):
    net = _net(seed=3)
    first = net.conv(8)
    if activation == "PRelu":
        net.op("PRelu", net.const(np.linspace(0.05, 0.3, 8).reshape(8, 1, 1), "slope"))
    elif activation:
        net.op(activation, alpha=0.1)
    second = net.conv(6, kernel=3, group=2)
    model = net.model()
    graph, report = equalize_cross_layer(model)
    assert len(report.pairs) == 1
    x = _inputs(seed=4)
    np.testing.assert_allclose(_run(graph, x), _run(model, x), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(_output_ranges(_weights(graph, first)), _input_ranges(_weights(graph, second), 2),
                               rtol=1e-5)


def test_batchnorm_is_folded_first_and_the_result_matches_onnxruntime():
    net = _net(seed=5)
    net.conv(8, kernel=3, bias=False)
    net.batchnorm()
    net.op("Relu")
    net.conv(6, kernel=3)
    net.batchnorm()
    model = net.model()
    graph, report = equalize_cross_layer(model)
    assert graph.op_histogram()["BatchNormalization"] == 0 and len(report.pairs) == 1
    x = _inputs(seed=6)
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(_run(graph, x), expected, rtol=1e-4, atol=1e-5)


def test_pairs_need_a_private_link_and_a_reluish_activation():
    net = _net()
    a = net.conv(4)
    net.conv(4)
    net.op("Add", a)  # the first conv's output also feeds the residual Add
    net.clip(-1.0, 1.0)  # negative lower bound: not homogeneous
    net.conv(3)
    _, report = equalize_cross_layer(net.model())
    assert report.pairs == []


def test_equalization_raises_per_tensor_weight_quantization_snr():
    net = _net(seed=7)
    net.conv(16, kernel=3, spread=1000.0)
    net.op("Relu")
    net.conv(16, kernel=3, group=16, spread=1000.0)
    net.op("Relu")
    net.conv(8, spread=1000.0)
    model = net.model()
    graph, _ = equalize_cross_layer(model)
    x = _inputs(seed=8, n=4)
    reference = _run(model, x)
    before = snr_db(reference, _run(fake_quantize_weights(fold_batchnorm(model)), x))
    after = snr_db(reference, _run(fake_quantize_weights(graph), x))
    assert after > before + 3.0  # spreads of 1000: equalization is worth at least half a bit (3 dB)


def test_bad_mode_raises():
    with pytest.raises(TinyInferError, match="bounded"):
        equalize_cross_layer(_net().model(), bounded="clip")


# ------------------------------------------------------------------ bias correction
def _four_bit_per_tensor(w: np.ndarray) -> np.ndarray:
    """A coarse quantizer, so the weight error's mean effect is large enough to see."""
    from tinyinfer.compress.affine import INT4

    return fake_quantize(w, params_from_tensor(w, INT4))


def _bias_net() -> tuple[onnx.ModelProto, str]:
    net = _net(seed=9)
    first = net.conv(8, kernel=3, bias=False, spread=10.0)
    net.op("Relu")
    net.conv(6, kernel=3, spread=10.0)
    net.op("Relu")
    net.op("GlobalAveragePool")
    net.op("Flatten")
    net.op("Gemm", net.const(net.rng.normal(0, 0.5, (6, 5)), "fc"), net.const(net.rng.normal(0, 0.1, 5), "fcb"))
    return net.model(), first


def _mean_errors(model, quantized, batches, tensor: str):
    """Per-channel mean of (quantized - float) at ``tensor`` and at the output, over the batches."""
    def collect(m):
        seen, outs = [], []
        session = tinyinfer.InferenceSession(m, opt_level="O0")
        for feeds in batches:
            found = {}
            outs.append(session.run(None, feeds, observe=lambda n, v: found.update({n: v.copy()}) if n == tensor else None)[0])
            seen.append(found[tensor])
        return np.concatenate(seen), np.concatenate(outs)

    (hidden_f, out_f), (hidden_q, out_q) = collect(model), collect(quantized)
    return (hidden_q - hidden_f).mean(axis=(0, 2, 3)), (out_q - out_f).mean(axis=0)


def test_bias_correction_removes_the_mean_error_per_channel():
    model, first = _bias_net()
    batches = [{"x": _inputs(seed=10 + i, n=4, mean=0.5)} for i in range(4)]
    plain = fake_quantize_weights(fold_batchnorm(model), _four_bit_per_tensor)
    corrected = fake_quantize_weights(correct_bias(model, batches, _four_bit_per_tensor, progress=False),
                                      _four_bit_per_tensor)
    hidden_plain, out_plain = _mean_errors(model, plain, batches, first)
    hidden_fixed, out_fixed = _mean_errors(model, corrected, batches, first)
    assert np.abs(hidden_plain).max() > 1e-3  # there was a bias to correct
    # The first layer sees the float input in both models: its mean error is gone exactly
    # (up to float32 accumulation over 4·8·36 values per channel).
    np.testing.assert_allclose(hidden_fixed, 0.0, atol=1e-5)
    # Downstream the inputs are already perturbed, so the correction is not exact, but helps.
    assert np.abs(out_fixed).mean() < 0.5 * np.abs(out_plain).mean()


def test_bias_correction_takes_a_mapping_of_quantized_weights_and_adds_missing_biases():
    model, first = _bias_net()
    graph = fold_batchnorm(model)
    quantized = {name: per_channel_int8(w) for name, w in graph.initializers.items() if w.ndim == 4}
    batches = [{"x": _inputs(seed=20, n=2, mean=0.5)}]
    corrected = correct_bias(graph, batches, quantized, progress=False)
    node = next(n for n in corrected.nodes if n.name == first)
    assert len(node.inputs) == 3 and corrected.initializers[node.inputs[2]].shape == (8,)
    gemm = next(n for n in corrected.nodes if n.op_type == "Gemm")
    np.testing.assert_array_equal(corrected.initializers[gemm.inputs[2]], graph.initializers[gemm.inputs[2]])


def test_bias_correction_errors():
    model, _ = _bias_net()
    with pytest.raises(TinyInferError, match="no data"):
        correct_bias(model, [], progress=False)
    with pytest.raises(TinyInferError, match="shape"):
        correct_bias(model, [{"x": _inputs()}], lambda w: w.ravel(), progress=False)
    with pytest.raises(TinyInferError, match="none of the quantized weights"):
        correct_bias(model, [{"x": _inputs()}], {"not_a_weight": np.zeros(3)}, progress=False)
