"""A small helper to write networks as ONNX graphs, layer by layer, with sensible weights.

The zoo's builders describe a network the way its paper does — conv, batch norm, activation,
block after block — and get back an ``onnx.ModelProto`` that ONNX Runtime runs unchanged.
:class:`NetworkBuilder` keeps track of every tensor's shape (batch stays symbolic, ``"N"``),
names nodes and weights after the layer they belong to, and draws weights:

* conv and dense weights: He initialisation, N(0, 2 / fan_in) (He et al., 2015), so a ReLU
  network keeps its activation scale layer after layer;
* BatchNormalization: scale near 1, shift near 0, and running statistics that are later
  measured on random input (:func:`tinyinfer.models.light.calibrate_batchnorm`), the way a
  trained network's statistics describe the activations that really arrive.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

Shape = tuple  # (batch symbol or int, dims...)


class NetworkBuilder:
    """Accumulates nodes and weights; every method returns the name of its output tensor."""

    def __init__(self, name: str, *, seed: int = 0, opset: int = 17):
        self.name = name
        self.opset = opset
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: dict[str, np.ndarray] = {}
        self.shapes: dict[str, Shape] = {}
        self.inputs: list[onnx.ValueInfoProto] = []
        self._counts: dict[str, int] = {}

    # ------------------------------------------------------------------ naming
    def fresh(self, stem: str) -> str:
        """A new unique name ``stem``, ``stem_1``, ``stem_2``, ..."""
        count = self._counts.get(stem, 0)
        self._counts[stem] = count + 1
        return stem if count == 0 else f"{stem}_{count}"

    def node(self, op_type: str, inputs: Sequence[str], shape: Shape, *, name: str | None = None, **attrs) -> str:
        """Add one node with one output of the given shape; returns the output's name."""
        node_name = self.fresh(name or op_type.lower())
        output = node_name if node_name not in self.shapes else self.fresh(node_name)
        self.nodes.append(helper.make_node(op_type, list(inputs), [output], name=node_name, **attrs))
        self.shapes[output] = tuple(shape)
        return output

    def weight(self, name: str, array: np.ndarray) -> str:
        name = self.fresh(name)
        self.initializers[name] = np.asarray(array)
        return name

    def const(self, name: str, values, dtype=np.int64) -> str:
        return self.weight(name, np.asarray(values, dtype=dtype))

    def input(self, name: str, shape: Shape, dtype: int = TensorProto.FLOAT) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, dtype, list(shape)))
        self.shapes[name] = tuple(shape)
        return name

    def channels(self, x: str) -> int:
        return int(self.shapes[x][1])

    # ------------------------------------------------------------------ convolutional layers
    def conv(self, x: str, out_channels: int, kernel: int | Sequence[int] = 1, *, stride: int = 1, groups: int = 1,
             dilation: int = 1, padding: int | None = None, bias: bool = False, name: str = "conv") -> str:
        """2-D convolution; ``padding=None`` keeps the size at stride 1 ("same" for odd kernels)."""
        n, c, h, w = self.shapes[x]
        kh, kw = (kernel, kernel) if isinstance(kernel, int) else tuple(kernel)
        if c % groups or out_channels % groups:
            raise ValueError(f"{name}: channels {c} -> {out_channels} not divisible by groups {groups}")
        if padding is None:
            pads = [dilation * (kh - 1) // 2, dilation * (kw - 1) // 2] * 2
        else:
            pads = [padding] * 4
        fan_in = c // groups * kh * kw
        wname = self.weight(f"{name}.weight", self.rng.normal(0.0, math.sqrt(2.0 / fan_in), (out_channels, c // groups, kh, kw)).astype(np.float32))
        inputs = [x, wname]
        if bias:
            inputs.append(self.weight(f"{name}.bias", self.rng.normal(0.0, 0.01, out_channels).astype(np.float32)))
        oh = (h + pads[0] + pads[2] - dilation * (kh - 1) - 1) // stride + 1
        ow = (w + pads[1] + pads[3] - dilation * (kw - 1) - 1) // stride + 1
        return self.node("Conv", inputs, (n, out_channels, oh, ow), name=name, kernel_shape=[kh, kw],
                         strides=[stride, stride], pads=pads, group=groups, dilations=[dilation, dilation])

    def batchnorm(self, x: str, *, name: str = "bn", epsilon: float = 1e-5) -> str:
        c = self.channels(x)
        scale = self.weight(f"{name}.weight", self.rng.uniform(0.8, 1.2, c).astype(np.float32))
        shift = self.weight(f"{name}.bias", self.rng.normal(0.0, 0.05, c).astype(np.float32))
        mean = self.weight(f"{name}.running_mean", np.zeros(c, np.float32))
        var = self.weight(f"{name}.running_var", np.ones(c, np.float32))
        return self.node("BatchNormalization", [x, scale, shift, mean, var], self.shapes[x], name=name, epsilon=epsilon)

    def activation(self, x: str, kind: str | None, *, name: str | None = None) -> str:
        """relu, relu6, hardswish, hardsigmoid, sigmoid, swish (x·sigmoid(x)), gelu; None = identity."""
        shape = self.shapes[x]
        if kind is None:
            return x
        if kind == "relu":
            return self.node("Relu", [x], shape, name=name)
        if kind == "relu6":
            low, high = self.const("zero", 0.0, np.float32), self.const("six", 6.0, np.float32)
            return self.node("Clip", [x, low, high], shape, name=name or "relu6")
        if kind == "hardswish":
            return self.node("HardSwish", [x], shape, name=name)
        if kind == "hardsigmoid":
            # MobileNetV3's h-sigmoid is ReLU6(x + 3) / 6, i.e. HardSigmoid with alpha = 1/6.
            return self.node("HardSigmoid", [x], shape, name=name, alpha=1.0 / 6.0, beta=0.5)
        if kind == "sigmoid":
            return self.node("Sigmoid", [x], shape, name=name)
        if kind == "swish":
            gate = self.node("Sigmoid", [x], shape, name=(name or "swish") + ".sigmoid")
            return self.node("Mul", [x, gate], shape, name=name or "swish")
        if kind == "gelu":
            return self.node("Gelu", [x], shape, name=name) if self.opset >= 20 else self._gelu_erf(x, name or "gelu")
        raise ValueError(f"unknown activation {kind!r}")

    def _gelu_erf(self, x: str, name: str) -> str:
        """GELU(x) = x · ½ (1 + erf(x / √2)) spelled in opset-17 ops."""
        shape = self.shapes[x]
        scaled = self.node("Div", [x, self.const(f"{name}.sqrt2", math.sqrt(2.0), np.float32)], shape, name=f"{name}.div")
        erf = self.node("Erf", [scaled], shape, name=f"{name}.erf")
        plus = self.node("Add", [erf, self.const(f"{name}.one", 1.0, np.float32)], shape, name=f"{name}.add")
        half = self.node("Mul", [x, self.const(f"{name}.half", 0.5, np.float32)], shape, name=f"{name}.half")
        return self.node("Mul", [half, plus], shape, name=name)

    def conv_bn_act(self, x: str, out_channels: int, kernel: int = 1, *, stride: int = 1, groups: int = 1,
                    act: str | None = "relu", name: str = "conv") -> str:
        y = self.conv(x, out_channels, kernel, stride=stride, groups=groups, name=name)
        y = self.batchnorm(y, name=f"{name}.bn")
        return self.activation(y, act, name=f"{name}.{act}" if act else None)

    def max_pool(self, x: str, kernel: int, stride: int, padding: int = 0, *, ceil_mode: bool = False, name: str = "maxpool") -> str:
        return self._pool("MaxPool", x, kernel, stride, padding, ceil_mode, name)

    def avg_pool(self, x: str, kernel: int, stride: int, padding: int = 0, *, name: str = "avgpool") -> str:
        return self._pool("AveragePool", x, kernel, stride, padding, False, name)

    def _pool(self, op_type, x, kernel, stride, padding, ceil_mode, name):
        n, c, h, w = self.shapes[x]
        rounding = math.ceil if ceil_mode else math.floor
        oh = int(rounding((h + 2 * padding - kernel) / stride)) + 1
        ow = int(rounding((w + 2 * padding - kernel) / stride)) + 1
        return self.node(op_type, [x], (n, c, oh, ow), name=name, kernel_shape=[kernel, kernel],
                         strides=[stride, stride], pads=[padding] * 4, ceil_mode=int(ceil_mode))

    def global_avg_pool(self, x: str, *, name: str = "gap") -> str:
        n, c = self.shapes[x][:2]
        return self.node("GlobalAveragePool", [x], (n, c, 1, 1), name=name)

    def add(self, a: str, b: str, *, name: str = "add") -> str:
        return self.node("Add", [a, b], self.shapes[a], name=name)

    def mul(self, a: str, b: str, *, name: str = "mul") -> str:
        return self.node("Mul", [a, b], self.shapes[a], name=name)

    def concat(self, xs: Sequence[str], axis: int = 1, *, name: str = "concat") -> str:
        shape = list(self.shapes[xs[0]])
        shape[axis] = sum(self.shapes[x][axis] for x in xs)
        return self.node("Concat", list(xs), tuple(shape), name=name, axis=axis)

    def split(self, x: str, sizes: Sequence[int], axis: int = 1, *, name: str = "split") -> list[str]:
        node_name = self.fresh(name)
        outputs = [f"{node_name}.{i}" for i in range(len(sizes))]
        self.nodes.append(helper.make_node("Split", [x, self.const(f"{node_name}.sizes", list(sizes))], outputs, name=node_name, axis=axis))
        for out, size in zip(outputs, sizes):
            shape = list(self.shapes[x])
            shape[axis] = size
            self.shapes[out] = tuple(shape)
        return outputs

    def channel_shuffle(self, x: str, groups: int, *, name: str = "shuffle") -> str:
        """ShuffleNet's channel shuffle: reshape to [N, g, C/g, H, W], swap g and C/g, flatten back."""
        n, c, h, w = self.shapes[x]
        grouped = self.node("Reshape", [x, self.const(f"{name}.shape", [0, groups, c // groups, h, w])], (n, groups, c // groups, h, w), name=f"{name}.reshape")
        swapped = self.node("Transpose", [grouped], (n, c // groups, groups, h, w), name=f"{name}.transpose", perm=[0, 2, 1, 3, 4])
        return self.node("Reshape", [swapped, self.const(f"{name}.back", [0, c, h, w])], (n, c, h, w), name=name)

    def squeeze_excite(self, x: str, reduced: int, *, gate: str = "sigmoid", act: str = "relu", name: str = "se") -> str:
        """Squeeze-and-excitation (Hu et al., 2018): global pool, two 1×1 convs, channel gate."""
        c = self.channels(x)
        s = self.global_avg_pool(x, name=f"{name}.pool")
        s = self.conv(s, reduced, 1, bias=True, name=f"{name}.reduce")
        s = self.activation(s, act, name=f"{name}.{act}")
        s = self.conv(s, c, 1, bias=True, name=f"{name}.expand")
        s = self.activation(s, gate, name=f"{name}.{gate}")
        return self.mul(x, s, name=f"{name}.scale")

    # ------------------------------------------------------------------ dense layers and heads
    def flatten(self, x: str, *, name: str = "flatten") -> str:
        shape = self.shapes[x]
        return self.node("Flatten", [x], (shape[0], int(np.prod(shape[1:]))), name=name, axis=1)

    def gemm(self, x: str, out_features: int, *, name: str = "fc", init: str = "he") -> str:
        n, k = self.shapes[x]
        std = math.sqrt(2.0 / k) if init == "he" else math.sqrt(1.0 / k)
        w = self.weight(f"{name}.weight", self.rng.normal(0.0, std, (out_features, k)).astype(np.float32))
        b = self.weight(f"{name}.bias", self.rng.normal(0.0, 0.01, out_features).astype(np.float32))
        return self.node("Gemm", [x, w, b], (n, out_features), name=name, transB=1)

    def linear(self, x: str, out_features: int, *, name: str = "linear", bias: bool = True) -> str:
        """x @ W (+ b) over the last axis of an [N, ..., in] tensor (MatMul, then Add)."""
        shape = self.shapes[x]
        k = int(shape[-1])
        w = self.weight(f"{name}.weight", self.rng.normal(0.0, math.sqrt(1.0 / k), (k, out_features)).astype(np.float32))
        y = self.node("MatMul", [x, w], (*shape[:-1], out_features), name=f"{name}.matmul" if bias else name)
        if bias:
            b = self.weight(f"{name}.bias", self.rng.normal(0.0, 0.01, out_features).astype(np.float32))
            y = self.node("Add", [y, b], self.shapes[y], name=name)
        return y

    def layer_norm(self, x: str, *, name: str = "ln", epsilon: float = 1e-6) -> str:
        d = int(self.shapes[x][-1])
        scale = self.weight(f"{name}.weight", self.rng.uniform(0.9, 1.1, d).astype(np.float32))
        shift = self.weight(f"{name}.bias", self.rng.normal(0.0, 0.02, d).astype(np.float32))
        return self.node("LayerNormalization", [x, scale, shift], self.shapes[x], name=name, axis=-1, epsilon=epsilon)

    def classifier(self, x: str, classes: int, *, name: str = "classifier") -> str:
        """Flatten then Gemm to logits, then Softmax (the zoo's models output probabilities)."""
        logits = self.gemm(self.flatten(x, name=f"{name}.flatten"), classes, name=name, init="xavier")
        return self.node("Softmax", [logits], self.shapes[logits], name="probabilities", axis=-1)

    # ------------------------------------------------------------------ finishing
    def build(self, output: str | Sequence[str], *, doc: str = "", calibrate: bool = True, seed: int = 0) -> onnx.ModelProto:
        """The ONNX model, checked; BatchNorm statistics measured on random input.

        The statistics come from :func:`calibration_batch` images of the input's resolution,
        so the small last feature maps of a low resolution still give every channel enough
        samples.
        """
        outputs = [output] if isinstance(output, str) else list(output)
        graph = helper.make_graph(
            self.nodes,
            self.name,
            self.inputs,
            [helper.make_tensor_value_info(o, TensorProto.FLOAT, list(self.shapes[o])) for o in outputs],
            [numpy_helper.from_array(a, n) for n, a in self.initializers.items()],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)],
                                  producer_name="tinyinfer.models", ir_version=8, doc_string=doc)
        onnx.checker.check_model(model)
        if calibrate:
            from . import light

            spatial = [d for d in self.shapes[self.inputs[0].name][2:] if isinstance(d, int)]
            pixels = int(np.prod(spatial)) if spatial else 224 * 224
            model = light.calibrate_batchnorm(model, seed=seed, batch=calibration_batch(int(round(pixels ** 0.5))))
        return model


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """``value`` rounded to the nearest multiple of ``divisor``, never more than 10% below it.

    The channel rounding of the MobileNet reference implementations (TensorFlow's slim
    ``mobilenet`` and its ports): widths scaled by a multiplier are snapped to multiples of 8,
    which vector units like, but a layer never shrinks by more than 10% through the rounding.
    """
    floor = divisor if min_value is None else min_value
    rounded = max(floor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def calibration_batch(resolution: int, *, pixels: int = 2 * 224 * 224) -> int:
    """How many random images to measure BatchNorm statistics on at ``resolution``.

    As many as hold ``pixels`` (two 224×224 images), and at least two. A network's last
    stages see a 32× smaller map: 7×7 at 224, but 3×3 at 96, where two images give each
    channel only 18 samples — too few, and the variance measured on them is often much too
    small, so activations blow up stage after stage (EfficientNet-B0's logits reach the
    hundreds at 96×96 with two calibration images, about 1 with eleven).
    """
    return max(2, math.ceil(pixels / (resolution * resolution)))
