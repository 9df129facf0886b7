"""The MobileNets: V1, V2 and V3 (Large and Small), the networks that made depthwise
separable convolutions the default for phones.

* **MobileNetV1** (Howard et al., 2017, "MobileNets: Efficient Convolutional Neural Networks
  for Mobile Vision Applications") factorises each 3×3 convolution into a *depthwise* 3×3
  (one filter per channel) and a *pointwise* 1×1 that mixes channels: for 3×3 kernels that is
  8 to 9 times fewer multiply-adds. Two hyper-parameters trade accuracy for cost: the width
  multiplier α thins every layer, the resolution multiplier shrinks the input.
* **MobileNetV2** (Sandler et al., 2018, "MobileNetV2: Inverted Residuals and Linear
  Bottlenecks") wraps the depthwise convolution in an *inverted residual*: a 1×1 expansion
  (t times wider), the depthwise 3×3, and a *linear* 1×1 projection back to a narrow
  bottleneck, with a shortcut between bottlenecks. ReLU6 everywhere except the projection.
* **MobileNetV3** (Howard et al., 2019, "Searching for MobileNetV3") keeps V2's block, found
  by architecture search, and adds squeeze-and-excitation with a hard-sigmoid gate in some
  blocks, hard-swish in the deeper half, 5×5 depthwise kernels, and a cheaper head: the last
  1×1 convolution runs after global pooling, on a 1×1 map.

Channel counts scaled by a width multiplier are rounded to multiples of 8 with
:func:`~tinyinfer.models.builder.make_divisible` wherever the authors' reference
implementation (TensorFlow's slim ``mobilenet``) rounds them.
"""

from __future__ import annotations

import onnx

from .builder import NetworkBuilder, make_divisible
from .zoo import register_model

#: Howard et al., 2017, Table 1: the depthwise separable layers after the stem
#: ("Conv / s2", 3×3×3×32) as (pointwise output channels, depthwise stride).
MOBILENET_V1_LAYERS = (
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (1024, 2),
    (1024, 1),
)

#: Sandler et al., 2018, Table 2: bottleneck stages as (expansion t, output channels c,
#: repeats n, first stride s), after a 3×3/32 stride-2 stem and before a 1×1/1280 convolution.
MOBILENET_V2_STAGES = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)

#: Howard et al., 2019, Table 1 (MobileNetV3-Large): every bneck as (kernel, expansion size,
#: output channels, squeeze-and-excite, activation, stride), after a 3×3/16 stride-2 h-swish stem.
MOBILENET_V3_LARGE_BLOCKS = (
    (3, 16, 16, False, "relu", 1),
    (3, 64, 24, False, "relu", 2),
    (3, 72, 24, False, "relu", 1),
    (5, 72, 40, True, "relu", 2),
    (5, 120, 40, True, "relu", 1),
    (5, 120, 40, True, "relu", 1),
    (3, 240, 80, False, "hardswish", 2),
    (3, 200, 80, False, "hardswish", 1),
    (3, 184, 80, False, "hardswish", 1),
    (3, 184, 80, False, "hardswish", 1),
    (3, 480, 112, True, "hardswish", 1),
    (3, 672, 112, True, "hardswish", 1),
    (5, 672, 160, True, "hardswish", 2),
    (5, 960, 160, True, "hardswish", 1),
    (5, 960, 160, True, "hardswish", 1),
)

#: Howard et al., 2019, Table 2 (MobileNetV3-Small), same columns as the Large table.
MOBILENET_V3_SMALL_BLOCKS = (
    (3, 16, 16, True, "relu", 2),
    (3, 72, 24, False, "relu", 2),
    (3, 88, 24, False, "relu", 1),
    (5, 96, 40, True, "hardswish", 2),
    (5, 240, 40, True, "hardswish", 1),
    (5, 240, 40, True, "hardswish", 1),
    (5, 120, 48, True, "hardswish", 1),
    (5, 144, 48, True, "hardswish", 1),
    (5, 288, 96, True, "hardswish", 2),
    (5, 576, 96, True, "hardswish", 1),
    (5, 576, 96, True, "hardswish", 1),
)


# ---------------------------------------------------------------------------- blocks
def depthwise_separable(net: NetworkBuilder, x: str, out_channels: int, stride: int, *, act: str = "relu",
                        name: str) -> str:
    """MobileNetV1's layer (Howard et al., 2017, Figure 3): depthwise 3×3 then pointwise 1×1,
    each followed by batch norm and the activation."""
    channels = net.channels(x)
    x = net.conv_bn_act(x, channels, 3, stride=stride, groups=channels, act=act, name=f"{name}.depthwise")
    return net.conv_bn_act(x, out_channels, 1, act=act, name=f"{name}.pointwise")


def inverted_residual(net: NetworkBuilder, x: str, expanded: int, out_channels: int, *, kernel: int = 3,
                      stride: int = 1, act: str = "relu6", se_channels: int | None = None, name: str) -> str:
    """The inverted residual block of MobileNetV2 and V3 (Sandler et al., 2018, Table 1).

    1×1 expansion to ``expanded`` channels (skipped when there is nothing to expand), depthwise
    ``kernel``×``kernel`` with the stride, optional squeeze-and-excitation to ``se_channels``
    with a hard-sigmoid gate (V3), then a *linear* 1×1 projection: no activation, because a
    ReLU in the narrow bottleneck would destroy information. A shortcut adds the input when the
    block keeps the shape.
    """
    channels = net.channels(x)
    y = x
    if expanded != channels:
        y = net.conv_bn_act(y, expanded, 1, act=act, name=f"{name}.expand")
    y = net.conv_bn_act(y, expanded, kernel, stride=stride, groups=expanded, act=act, name=f"{name}.depthwise")
    if se_channels:
        y = net.squeeze_excite(y, se_channels, gate="hardsigmoid", act="relu", name=f"{name}.se")
    y = net.conv_bn_act(y, out_channels, 1, act=None, name=f"{name}.project")
    if stride == 1 and channels == out_channels:
        y = net.add(y, x, name=f"{name}.add")
    return y


# ---------------------------------------------------------------------------- networks
@register_model(
    "mobilenet_v1",
    paper="Howard et al., 2017, MobileNets: Efficient Convolutional Neural Networks for Mobile Vision Applications",
    params=4.2e6,
    macs=569e6,
    note="Table 8, 1.0 MobileNet-224; params count batch-norm scale and shift (4.23M).",
)
def mobilenet_v1(*, width: float = 1.0, resolution: int = 224, num_classes: int = 1000,
                 seed: int = 0) -> onnx.ModelProto:
    """MobileNetV1 with width multiplier α = ``width`` at ``resolution``×``resolution``.

    Layers get ``int(α·channels)`` channels, at least 8, as in the reference implementation;
    the paper's widths are 1.0, 0.75, 0.5, 0.25 and its resolutions 224, 192, 160, 128.
    """
    def scaled(channels: int) -> int:
        return max(8, int(channels * width))

    net = NetworkBuilder("mobilenet_v1", seed=seed)
    x = net.input("input", ("N", 3, resolution, resolution))
    x = net.conv_bn_act(x, scaled(32), 3, stride=2, act="relu", name="stem")
    for index, (channels, stride) in enumerate(MOBILENET_V1_LAYERS, start=1):
        x = depthwise_separable(net, x, scaled(channels), stride, name=f"layer{index}")
    x = net.global_avg_pool(x, name="avgpool")
    probabilities = net.classifier(x, num_classes, name="fc")
    return _build(net, probabilities, resolution, doc=f"MobileNetV1 {width}/{resolution} (Howard et al., 2017)", seed=seed)


@register_model(
    "mobilenet_v2",
    paper="Sandler et al., 2018, MobileNetV2: Inverted Residuals and Linear Bottlenecks",
    params=3.47e6,
    macs=300e6,
    note="1.0/224. The paper's tables round the parameters to 3.4M; 3.47M is the figure the authors' "
    "reference implementation (TensorFlow slim) publishes, which counts convolution and classifier "
    "weights but not batch norm. We count batch-norm scale and shift as well: 3.50M (+1%).",
)
def mobilenet_v2(*, width: float = 1.0, resolution: int = 224, num_classes: int = 1000,
                 seed: int = 0) -> onnx.ModelProto:
    """MobileNetV2 with width multiplier ``width`` at ``resolution``×``resolution``.

    Every layer's channels are ``make_divisible(width·c, 8)``, except the last 1×1 convolution,
    which keeps its 1280 channels for widths below 1 (Sandler et al., 2018, Section 6.1: "for
    multipliers less than one, we apply width multiplier to all layers except the very last
    convolutional layer").
    """
    net = NetworkBuilder("mobilenet_v2", seed=seed)
    x = net.input("input", ("N", 3, resolution, resolution))
    x = net.conv_bn_act(x, make_divisible(32 * width), 3, stride=2, act="relu6", name="stem")
    for stage, (expansion, channels, repeats, first_stride) in enumerate(MOBILENET_V2_STAGES, start=1):
        out_channels = make_divisible(channels * width)
        for block in range(repeats):
            expanded = net.channels(x) * expansion
            x = inverted_residual(net, x, expanded, out_channels, stride=first_stride if block == 0 else 1,
                                  act="relu6", name=f"stage{stage}.{block}")
    x = net.conv_bn_act(x, make_divisible(1280 * max(1.0, width)), 1, act="relu6", name="last")
    x = net.global_avg_pool(x, name="avgpool")
    probabilities = net.classifier(x, num_classes, name="fc")
    return _build(net, probabilities, resolution, doc=f"MobileNetV2 {width}/{resolution} (Sandler et al., 2018)", seed=seed)


_V3_NOTE = ("Counted: SE (reduced width make_divisible(expansion/4, 8), 1x1 convs with bias, ReLU, "
            "hard-sigmoid gate) and the whole head (last 1x1 conv + BN + h-swish, global pool, 1x1 conv "
            "with bias and no BN + h-swish, classifier Gemm); dropout omitted. As in the reference "
            "implementation, widths below 1 keep the {head}-channel head and scale expansions as ratios "
            "of the block's input: Large 0.75 measures 3.99M params, 155M MACs (Table 3: 4.0M, 155M), "
            "Small 0.75 43M MACs (Table 3: 44M).")


@register_model(
    "mobilenet_v3_large",
    paper="Howard et al., 2019, Searching for MobileNetV3",
    params=5.4e6,
    macs=219e6,
    note="Table 3, Large 1.0/224. " + _V3_NOTE.format(head="1280"),
)
def mobilenet_v3_large(*, width: float = 1.0, resolution: int = 224, num_classes: int = 1000,
                       seed: int = 0) -> onnx.ModelProto:
    """MobileNetV3-Large (Howard et al., 2019, Table 1) with width multiplier ``width``."""
    return _mobilenet_v3("mobilenet_v3_large", MOBILENET_V3_LARGE_BLOCKS, 1280, width=width,
                         resolution=resolution, num_classes=num_classes, seed=seed)


@register_model(
    "mobilenet_v3_small",
    paper="Howard et al., 2019, Searching for MobileNetV3",
    params=2.5e6,
    macs=56e6,
    note="Table 3, Small 1.0/224. Table 2 marks SE on the 576-channel 1x1 conv too; the reference "
    "implementation has none there, and neither do we. " + _V3_NOTE.format(head="1024"),
)
def mobilenet_v3_small(*, width: float = 1.0, resolution: int = 224, num_classes: int = 1000,
                       seed: int = 0) -> onnx.ModelProto:
    """MobileNetV3-Small (Howard et al., 2019, Table 2) with width multiplier ``width``."""
    return _mobilenet_v3("mobilenet_v3_small", MOBILENET_V3_SMALL_BLOCKS, 1024, width=width,
                         resolution=resolution, num_classes=num_classes, seed=seed)


def _mobilenet_v3(name: str, blocks, head_channels: int, *, width: float, resolution: int, num_classes: int,
                  seed: int) -> onnx.ModelProto:
    """The network around a V3 block table: h-swish stem, the bnecks, the efficient last stage.

    The last stage (Howard et al., 2019, Section 5.3 and Figure 5) puts the expensive 1×1
    convolution after global pooling: a 1×1 conv + BN + h-swish to 6× the last bottleneck
    width, pool to 1×1, then a 1×1 conv with bias and no batch norm ("NBN") + h-swish to
    ``head_channels``, and the classifier.
    """
    net = NetworkBuilder(name, seed=seed)
    x = net.input("input", ("N", 3, resolution, resolution))
    x = net.conv_bn_act(x, make_divisible(16 * width), 3, stride=2, act="hardswish", name="stem")
    in_channels = 16  # the paper's input width of the first bneck
    for index, (kernel, expansion, channels, se, act, stride) in enumerate(blocks, start=1):
        # The reference implementation states each expansion as a ratio of the block's input
        # width (e.g. 200 = 2.5 × 80) and applies it to the scaled input; at width 1 that is
        # the table's expansion size exactly.
        expanded = make_divisible(expansion / in_channels * net.channels(x))
        in_channels = channels
        x = inverted_residual(net, x, expanded, make_divisible(channels * width), kernel=kernel, stride=stride,
                              act=act, se_channels=make_divisible(expanded / 4) if se else None,
                              name=f"bneck{index}")
    x = net.conv_bn_act(x, 6 * net.channels(x), 1, act="hardswish", name="last")
    x = net.global_avg_pool(x, name="avgpool")
    x = net.conv(x, make_divisible(head_channels * max(1.0, width)), 1, bias=True, name="head")
    x = net.activation(x, "hardswish", name="head.hardswish")
    probabilities = net.classifier(x, num_classes, name="fc")
    return _build(net, probabilities, resolution, doc=f"{name} {width}/{resolution} (Howard et al., 2019)", seed=seed)


def _build(net: NetworkBuilder, output: str, resolution: int, *, doc: str, seed: int) -> onnx.ModelProto:
    """The finished model, its BatchNorm statistics measured on as many pixels as two 224×224 images.

    Below 224 the last stages see tiny maps (3×3 at 96×96): statistics from two images, 18
    values per channel, fit those two images so closely that on any other input the
    activations grow at every batch norm (MobileNetV3-Large's logits reach the tens at 96×96;
    about 1 with :func:`~tinyinfer.models.builder.calibration_batch`'s eleven images).
    """
    return net.build(output, doc=doc, seed=seed)
