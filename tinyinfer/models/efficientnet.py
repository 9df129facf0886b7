"""EfficientNet: one baseline, scaled in depth, width and resolution together.

Tan & Le, 2019, "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks",
find a small baseline, B0, by architecture search (MBConv blocks of MobileNetV2 with
squeeze-and-excitation and the swish activation), then grow it with **compound scaling**: a
network φ steps larger is α^φ deeper, β^φ wider and γ^φ higher in resolution, with
α·β²·γ² ≈ 2 so every step about doubles the FLOPs (α = 1.2, β = 1.1, γ = 1.15). B1–B7 are
that rule with the coefficients rounded (the reference implementation's table, below): the
builder takes ``width_coefficient``, ``depth_coefficient`` and ``resolution``, so
``efficientnet_b0(**EFFICIENTNET_SCALING["b3"])`` is EfficientNet-B3.

Table 1 of the paper, EfficientNet-B0 (stage, operator, resolution, channels, layers)::

    1  conv 3×3                    224 × 224    32   1
    2  MBConv1, k3×3               112 × 112    16   1
    3  MBConv6, k3×3               112 × 112    24   2
    4  MBConv6, k5×5                56 ×  56    40   2
    5  MBConv6, k3×3                28 ×  28    80   3
    6  MBConv6, k5×5                14 ×  14   112   3
    7  MBConv6, k5×5                14 ×  14   192   4
    8  MBConv6, k3×3                 7 ×   7   320   1
    9  conv 1×1 & pooling & FC       7 ×   7  1280   1

(Each row's resolution is its input's; the first block of stages 3, 4, 5 and 7 has stride 2.)
As in the authors' reference implementation (``efficientnet_model.py`` of the TPU models):
widths are scaled and rounded to multiples of 8 (:func:`make_divisible`), depths rounded up,
the squeeze-excite bottleneck is a quarter of the *block input* channels (at least 1), its
activation is swish and its gate a sigmoid, BatchNorm epsilon is 1e-3, and a block adds its
input when its stride is 1 and its width unchanged.
"""

from __future__ import annotations

import math

import onnx

from .builder import NetworkBuilder, make_divisible
from .zoo import register_model

#: Table 1: (expansion ratio, kernel, stride of the first block, output channels, repeats).
EFFICIENTNET_B0_STAGES = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
SE_RATIO = 0.25
BATCHNORM_EPSILON = 1e-3

#: Compound scaling of B0..B7 (the reference implementation's ``efficientnet_params``):
#: the keyword arguments of :func:`efficientnet_b0` for each model.
EFFICIENTNET_SCALING = {
    "b0": dict(width_coefficient=1.0, depth_coefficient=1.0, resolution=224),
    "b1": dict(width_coefficient=1.0, depth_coefficient=1.1, resolution=240),
    "b2": dict(width_coefficient=1.1, depth_coefficient=1.2, resolution=260),
    "b3": dict(width_coefficient=1.2, depth_coefficient=1.4, resolution=300),
    "b4": dict(width_coefficient=1.4, depth_coefficient=1.8, resolution=380),
    "b5": dict(width_coefficient=1.6, depth_coefficient=2.2, resolution=456),
    "b6": dict(width_coefficient=1.8, depth_coefficient=2.6, resolution=528),
    "b7": dict(width_coefficient=2.0, depth_coefficient=3.1, resolution=600),
}

#: Table 2 of the paper: (parameters, FLOPs as multiply-adds) of B0..B7. The networks built
#: here match every parameter count within 2% and the multiply-adds within 2% except B4 and
#: B5 (4.39B and 10.3B, 4-5% above the table's rounded figures, as other ports measure too).
EFFICIENTNET_PUBLISHED = {
    "b0": (5.3e6, 0.39e9),
    "b1": (7.8e6, 0.70e9),
    "b2": (9.2e6, 1.0e9),
    "b3": (12e6, 1.8e9),
    "b4": (19e6, 4.2e9),
    "b5": (30e6, 9.9e9),
    "b6": (43e6, 19e9),
    "b7": (66e6, 37e9),
}


def mbconv(net: NetworkBuilder, x: str, out_channels: int, *, expansion: int, kernel: int, stride: int, name: str) -> str:
    """Mobile inverted bottleneck with squeeze-and-excitation (MBConv, Sandler et al., 2018
    and Tan et al., 2019): [1×1 expand → BN → swish] → k×k depthwise (stride) → BN → swish →
    SE → 1×1 project → BN, plus the input when the shape is unchanged."""
    in_channels = net.channels(x)
    hidden = in_channels * expansion
    y = x
    if expansion != 1:
        y = _conv_bn(net, y, hidden, 1, act="swish", name=f"{name}.expand")
    y = _conv_bn(net, y, hidden, kernel, stride=stride, groups=hidden, act="swish", name=f"{name}.dwconv")
    reduced = max(1, int(in_channels * SE_RATIO))
    y = net.squeeze_excite(y, reduced, gate="sigmoid", act="swish", name=f"{name}.se")
    y = _conv_bn(net, y, out_channels, 1, act=None, name=f"{name}.project")
    if stride == 1 and in_channels == out_channels:
        # Training drops this branch at random ("drop connect"); inference always adds it.
        y = net.add(y, x, name=f"{name}.add")
    return y


@register_model(
    "efficientnet_b0",
    paper="Tan & Le, 2019, EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks",
    params=5.3e6,
    macs=0.39e9,
    note="EfficientNet-B0: Table 2 of the paper (5.3M parameters, 0.39B FLOPs counted as multiply-adds), "
    "squeeze-excite and classifier included, as in the authors' reference implementation.",
)
def efficientnet_b0(*, width_coefficient: float = 1.0, depth_coefficient: float = 1.0, resolution: int = 224,
                    num_classes: int = 1000, seed: int = 0) -> onnx.ModelProto:
    """EfficientNet-B0, or any compound-scaled sibling (see :data:`EFFICIENTNET_SCALING`).

    ``width_coefficient`` multiplies every width (rounded to a multiple of 8),
    ``depth_coefficient`` every stage's number of blocks (rounded up).
    """
    if width_coefficient <= 0 or depth_coefficient <= 0:
        raise ValueError(f"efficientnet: coefficients must be positive, got width {width_coefficient}, depth {depth_coefficient}")

    def width(channels: int) -> int:
        return make_divisible(channels * width_coefficient, 8)

    def depth(repeats: int) -> int:
        return int(math.ceil(repeats * depth_coefficient))

    net = NetworkBuilder(f"efficientnet_w{width_coefficient}_d{depth_coefficient}", seed=seed)
    x = net.input("input", ("N", 3, resolution, resolution))
    x = _conv_bn(net, x, width(STEM_CHANNELS), 3, stride=2, act="swish", name="stem")
    for stage, (expansion, kernel, stride, channels, repeats) in enumerate(EFFICIENTNET_B0_STAGES, start=2):
        for index in range(depth(repeats)):
            x = mbconv(net, x, width(channels), expansion=expansion, kernel=kernel, stride=stride if index == 0 else 1,
                       name=f"stage{stage}.{index}")
    x = _conv_bn(net, x, width(HEAD_CHANNELS), 1, act="swish", name="head")
    x = net.global_avg_pool(x, name="pool")
    probabilities = net.classifier(x, num_classes)
    doc = f"EfficientNet (width {width_coefficient}, depth {depth_coefficient}), {resolution}x{resolution}"
    return net.build(probabilities, doc=doc, seed=seed)


def _conv_bn(net: NetworkBuilder, x: str, out_channels: int, kernel: int, *, stride: int = 1, groups: int = 1,
             act: str | None, name: str) -> str:
    """conv → BN (epsilon 1e-3, the reference implementation's) → activation."""
    y = net.conv(x, out_channels, kernel, stride=stride, groups=groups, name=name)
    y = net.batchnorm(y, name=f"{name}.bn", epsilon=BATCHNORM_EPSILON)
    return net.activation(y, act, name=f"{name}.{act}" if act else None)
