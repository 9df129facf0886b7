"""GhostNet: half of the feature maps made by a cheap depthwise conv from the other half.

Han et al., 2020, "GhostNet: More Features from Cheap Operations", observe that the feature
maps of a trained CNN come in near-duplicate pairs ("ghosts"). The **ghost module** makes
``ceil(out / s)`` *intrinsic* maps with an ordinary (here 1×1) convolution and derives the
remaining ones from them with a cheap d×d depthwise convolution, then concatenates both;
with s = 2 it costs about half of the convolution it replaces. A **ghost bottleneck** is two
ghost modules (expand, then project; the second without ReLU), a stride-2 depthwise conv
between them where the block downsamples, an optional squeeze-and-excitation on the expanded
maps, and a residual connection (a depthwise + pointwise projection when the shape changes).

Table 1 of the paper, GhostNet 1.0× (#exp: expansion channels, #out: output channels)::

    input       operator       #exp  #out  SE  stride
    224² × 3    conv2d 3×3        —    16   —    2
    112² × 16   G-bneck 3×3      16    16   —    1
    112² × 16   G-bneck 3×3      48    24   —    2
     56² × 24   G-bneck 3×3      72    24   —    1
     56² × 24   G-bneck 5×5      72    40   1    2
     28² × 40   G-bneck 5×5     120    40   1    1
     28² × 40   G-bneck 3×3     240    80   —    2
     14² × 80   G-bneck 3×3     200    80   —    1
     14² × 80   G-bneck 3×3     184    80   —    1
     14² × 80   G-bneck 3×3     184    80   —    1
     14² × 80   G-bneck 3×3     480   112   1    1
     14² × 112  G-bneck 3×3     672   112   1    1
     14² × 112  G-bneck 5×5     672   160   1    2
      7² × 160  G-bneck 5×5     960   160   —    1
      7² × 160  G-bneck 5×5     960   160   1    1
      7² × 160  G-bneck 5×5     960   160   —    1
      7² × 160  G-bneck 5×5     960   160   1    1
      7² × 160  conv2d 1×1        —   960   —    1
      7² × 960  avg pool 7×7      —     —   —    —
      1² × 960  conv2d 1×1        —  1280   —    1
      1² × 1280 FC                —  1000   —    —

As in the authors' reference implementation (huawei-noah, ``ghostnet_pytorch``): every width
is rounded to a multiple of 4 (:func:`make_divisible`), the SE block reduces the expanded
channels by 4 with a ReLU and gates them with a hard sigmoid, ReLU6(x + 3) / 6, and the
1280-channel conv after the pool has a bias and a ReLU.
"""

from __future__ import annotations

import math

import onnx

from .builder import NetworkBuilder, make_divisible
from .zoo import register_model

#: Table 1: (kernel, expansion channels, output channels, squeeze-excite, stride) per bottleneck.
GHOSTNET_BOTTLENECKS = (
    (3, 16, 16, False, 1),
    (3, 48, 24, False, 2),
    (3, 72, 24, False, 1),
    (5, 72, 40, True, 2),
    (5, 120, 40, True, 1),
    (3, 240, 80, False, 2),
    (3, 200, 80, False, 1),
    (3, 184, 80, False, 1),
    (3, 184, 80, False, 1),
    (3, 480, 112, True, 1),
    (3, 672, 112, True, 1),
    (5, 672, 160, True, 2),
    (5, 960, 160, False, 1),
    (5, 960, 160, True, 1),
    (5, 960, 160, False, 1),
    (5, 960, 160, True, 1),
)
STEM_CHANNELS = 16
LAST_CHANNELS = 960  # the 1×1 conv after the last bottleneck
HEAD_CHANNELS = 1280  # the 1×1 conv after the global pool (not scaled by the width)
SE_RATIO = 0.25
CHANNEL_DIVISOR = 4  # the reference implementation rounds every width to a multiple of 4

#: Table 7 of the paper: (weights, multiply-adds at 224×224) per width multiplier.
GHOSTNET_PUBLISHED = {
    0.5: (2.6e6, 42e6),
    1.0: (5.2e6, 141e6),
    1.3: (7.3e6, 226e6),
}


def ghost_module(net: NetworkBuilder, x: str, out_channels: int, *, ratio: int = 2, cheap_kernel: int = 3,
                 relu: bool = True, name: str) -> str:
    """Ghost module (Fig. 2 b): a 1×1 conv makes ``ceil(out / ratio)`` intrinsic maps, a
    ``cheap_kernel``² depthwise conv makes ``ratio - 1`` ghosts of each; concatenated (and cut
    to ``out_channels`` if the division was not exact). BN after both, ReLU if ``relu``."""
    act = "relu" if relu else None
    intrinsic = math.ceil(out_channels / ratio)
    primary = net.conv_bn_act(x, intrinsic, 1, act=act, name=f"{name}.primary")
    ghosts = net.conv_bn_act(primary, intrinsic * (ratio - 1), cheap_kernel, groups=intrinsic, act=act, name=f"{name}.cheap")
    y = net.concat([primary, ghosts], name=f"{name}.concat")
    if intrinsic * ratio != out_channels:
        y, _ = net.split(y, [out_channels, intrinsic * ratio - out_channels], name=f"{name}.cut")
    return y


def ghost_bottleneck(net: NetworkBuilder, x: str, expansion: int, out_channels: int, *, kernel: int, stride: int,
                     squeeze_excite: bool, name: str) -> str:
    """Ghost bottleneck (Fig. 3): ghost module (ReLU) → [depthwise k×k stride 2 → BN] →
    [SE] → ghost module (linear), plus the input; when the stride or the width changes the
    shortcut is a k×k depthwise conv (with the stride) → BN → 1×1 conv → BN."""
    in_channels = net.channels(x)
    y = ghost_module(net, x, expansion, relu=True, name=f"{name}.ghost1")
    if stride > 1:
        y = net.conv_bn_act(y, expansion, kernel, stride=stride, groups=expansion, act=None, name=f"{name}.dwconv")
    if squeeze_excite:
        reduced = make_divisible(expansion * SE_RATIO, CHANNEL_DIVISOR)
        y = net.squeeze_excite(y, reduced, gate="hardsigmoid", act="relu", name=f"{name}.se")
    y = ghost_module(net, y, out_channels, relu=False, name=f"{name}.ghost2")
    if stride == 1 and in_channels == out_channels:
        shortcut = x
    else:
        shortcut = net.conv_bn_act(x, in_channels, kernel, stride=stride, groups=in_channels, act=None, name=f"{name}.shortcut.dwconv")
        shortcut = net.conv_bn_act(shortcut, out_channels, 1, act=None, name=f"{name}.shortcut.conv")
    return net.add(y, shortcut, name=f"{name}.add")


@register_model(
    "ghostnet",
    paper="Han et al., 2020, GhostNet: More Features from Cheap Operations",
    params=5.2e6,
    macs=141e6,
    note="GhostNet 1.0x: Table 7 of the paper (5.2M weights, 141M FLOPs counted as multiply-adds), "
    "classifier and SE layers included, as in the authors' reference implementation.",
)
def ghostnet(*, width: float = 1.0, resolution: int = 224, num_classes: int = 1000, seed: int = 0) -> onnx.ModelProto:
    """GhostNet with width multiplier ``width`` (Table 7: 0.5, 1.0, 1.3)."""
    if width <= 0:
        raise ValueError(f"ghostnet: width must be positive, got {width}")

    def scaled(channels: int) -> int:
        return make_divisible(channels * width, CHANNEL_DIVISOR)

    net = NetworkBuilder(f"ghostnet_{width}x", seed=seed)
    x = net.input("input", ("N", 3, resolution, resolution))
    x = net.conv_bn_act(x, scaled(STEM_CHANNELS), 3, stride=2, act="relu", name="stem")
    for index, (kernel, expansion, out_channels, squeeze_excite, stride) in enumerate(GHOSTNET_BOTTLENECKS):
        x = ghost_bottleneck(net, x, scaled(expansion), scaled(out_channels), kernel=kernel, stride=stride,
                             squeeze_excite=squeeze_excite, name=f"bneck{index}")
    x = net.conv_bn_act(x, scaled(LAST_CHANNELS), 1, act="relu", name="last_conv")
    x = net.global_avg_pool(x, name="pool")
    x = net.conv(x, HEAD_CHANNELS, 1, bias=True, name="head")
    x = net.activation(x, "relu", name="head.relu")
    probabilities = net.classifier(x, num_classes)
    return net.build(probabilities, doc=f"GhostNet {width}x, {resolution}x{resolution}", seed=seed)
