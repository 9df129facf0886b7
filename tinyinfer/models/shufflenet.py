"""ShuffleNet V1 and V2: cheap pointwise convolutions, and a shuffle so the groups can talk.

A MobileNet block spends most of its multiply-adds in its 1×1 convolutions. ShuffleNet
(Zhang et al., 2018, "ShuffleNet: An Extremely Efficient Convolutional Neural Network for
Mobile Devices") makes those pointwise convolutions *grouped*, which divides their cost by
the number of groups g, and restores the flow of information between groups with a
**channel shuffle**: reshape the channels to [g, C/g], transpose, flatten. Stride-2 units
concatenate an average-pooled copy of their input instead of adding it, so the width grows
for free.

ShuffleNet V2 (Ma et al., 2018, "ShuffleNet V2: Practical Guidelines for Efficient CNN
Architecture Design") measures speed rather than counting multiply-adds and derives four
guidelines from it: equal input and output widths, no grouped 1×1 convolutions, few
branches, few elementwise ops. Its unit splits the channels into two halves, leaves one
half alone, sends the other through 1×1 → depthwise 3×3 → 1×1 at constant width,
concatenates, and shuffles.

Both networks share the same skeleton (Table 1 of V1, Table 5 of V2)::

    layer      output size   kernel, stride   repeats
    conv1      112 × 112     3×3, 2           1        24 channels
    max pool    56 ×  56     3×3, 2
    stage 2     28 ×  28     unit, 2 then 1   4
    stage 3     14 ×  14     unit, 2 then 1   8
    stage 4      7 ×   7     unit, 2 then 1   4
    (V2 only: conv5 1×1, 1024 channels, 2048 at width 2.0)
    global pool, fully connected, softmax
"""

from __future__ import annotations

import onnx

from .builder import NetworkBuilder
from .zoo import register_model

#: Units per stage (stages 2, 3, 4), the same in both papers.
STAGE_REPEATS = (4, 8, 4)

#: Channels of conv1 (Table 1 of V1, Table 5 of V2; V1's scale factor scales them too).
STEM_CHANNELS = 24

#: ShuffleNet V1, Table 1: output channels of stages 2, 3, 4 for each number of groups g.
#: The groups trade compute per channel for width: the complexity stays about 140 MFLOPs.
SHUFFLENET_V1_CHANNELS = {
    1: (144, 288, 576),
    2: (200, 400, 800),
    3: (240, 480, 960),
    4: (272, 544, 1088),
    8: (384, 768, 1536),
}

#: ShuffleNet V1, Table 1: complexity (multiply-adds at 224×224) of ShuffleNet 1× for each g.
SHUFFLENET_V1_COMPLEXITY = {1: 143e6, 2: 140e6, 3: 137e6, 4: 133e6, 8: 137e6}

#: ShuffleNet V2, Table 5: output channels of stages 2, 3, 4 and conv5, per width.
SHUFFLENET_V2_CHANNELS = {
    0.5: (48, 96, 192, 1024),
    1.0: (116, 232, 464, 1024),
    1.5: (176, 352, 704, 1024),
    2.0: (244, 488, 976, 2048),
}

#: ShuffleNet V2, Table 5: (weights, multiply-adds at 224×224) per width.
SHUFFLENET_V2_PUBLISHED = {
    0.5: (1.4e6, 41e6),
    1.0: (2.3e6, 146e6),
    1.5: (3.5e6, 299e6),
    2.0: (7.4e6, 591e6),
}


# ---------------------------------------------------------------------------- ShuffleNet V1
def shufflenet_v1_unit(net: NetworkBuilder, x: str, out_channels: int, *, stride: int, groups: int,
                       group_first: bool = True, name: str) -> str:
    """The ShuffleNet unit (Fig. 2 b, c of the V1 paper).

    1×1 group conv → BN → ReLU → channel shuffle → 3×3 depthwise (stride) → BN → 1×1 group
    conv → BN, then: stride 1, add the input and ReLU; stride 2, concatenate a 3×3 average
    pool (stride 2) of the input and ReLU — the branch then only makes ``out - in`` channels.
    The bottleneck is a quarter of the unit's output channels. ``group_first=False`` leaves
    the first 1×1 conv dense (stage 2's first unit: conv1's 24 channels are too few to split).
    """
    in_channels = net.channels(x)
    branch_channels = out_channels - in_channels if stride == 2 else out_channels
    bottleneck = out_channels // 4
    y = net.conv_bn_act(x, bottleneck, 1, groups=groups if group_first else 1, act="relu", name=f"{name}.gconv1")
    if groups > 1:
        y = net.channel_shuffle(y, groups, name=f"{name}.shuffle")
    y = net.conv_bn_act(y, bottleneck, 3, stride=stride, groups=bottleneck, act=None, name=f"{name}.dwconv")
    y = net.conv_bn_act(y, branch_channels, 1, groups=groups, act=None, name=f"{name}.gconv2")
    if stride == 1:
        y = net.add(x, y, name=f"{name}.add")
    else:
        shortcut = net.avg_pool(x, 3, 2, 1, name=f"{name}.shortcut")
        y = net.concat([shortcut, y], name=f"{name}.concat")
    return net.activation(y, "relu", name=f"{name}.relu")


@register_model(
    "shufflenet_v1",
    paper="Zhang et al., 2018, ShuffleNet: An Extremely Efficient Convolutional Neural Network for Mobile Devices",
    params=1.9e6,
    macs=140e6,
    note="ShuffleNet 1x, g=3. MACs: the paper's 140M (Table 2; its 'FLOPs' are multiply-adds, and "
    "Table 1 gives 137M for this exact network). Parameters: the paper reports none; 1.9M is the "
    "authors' figure for their released 1.0x g=3 model (megvii-model/ShuffleNet-Series, ShuffleNetV1 "
    "README). The network built here has 1.865M weights, classifier included.",
)
def shufflenet_v1(*, groups: int = 3, width: float = 1.0, resolution: int = 224, num_classes: int = 1000,
                  seed: int = 0) -> onnx.ModelProto:
    """ShuffleNet V1 with ``groups`` in {1, 2, 3, 4, 8} (Table 1) and scale factor ``width``.

    ``width`` is the paper's "ShuffleNet s×" (Table 2: 0.25, 0.5, 1, 1.5, 2), which scales
    the number of filters of every layer by s. A stage's channels are rounded to a multiple
    of 4·g, so that its bottleneck (a quarter of them) still splits into g groups, and conv1's
    24·s to a multiple of g, so that the first stride-2 branch (stage channels minus conv1's)
    does too. At g = 3 this gives the authors' released 0.5× and 2× models exactly (38M and
    524M multiply-adds); their 1.5× keeps conv1 at 24 channels (292M, here 300M).
    """
    if groups not in SHUFFLENET_V1_CHANNELS:
        raise ValueError(f"shufflenet_v1: groups must be one of {sorted(SHUFFLENET_V1_CHANNELS)}, got {groups}")
    if width <= 0:
        raise ValueError(f"shufflenet_v1: width must be positive, got {width}")
    quantum = 4 * groups
    stage_channels = [max(quantum, round(c * width / quantum) * quantum) for c in SHUFFLENET_V1_CHANNELS[groups]]
    stem_channels = max(groups, round(STEM_CHANNELS * width / groups) * groups)

    net = NetworkBuilder(f"shufflenet_v1_g{groups}_{width}x", seed=seed)
    x = net.input("input", ("N", 3, resolution, resolution))
    x = net.conv_bn_act(x, stem_channels, 3, stride=2, act="relu", name="conv1")
    x = net.max_pool(x, 3, 2, 1, name="maxpool")
    for stage, (channels, repeats) in enumerate(zip(stage_channels, STAGE_REPEATS), start=2):
        for index in range(repeats):
            x = shufflenet_v1_unit(net, x, channels, stride=2 if index == 0 else 1, groups=groups,
                                   group_first=not (stage == 2 and index == 0), name=f"stage{stage}.{index}")
    x = net.global_avg_pool(x, name="pool")
    probabilities = net.classifier(x, num_classes)
    return net.build(probabilities, doc=f"ShuffleNet V1 {width}x, g={groups}, {resolution}x{resolution}", seed=seed)


# ---------------------------------------------------------------------------- ShuffleNet V2
def shufflenet_v2_unit(net: NetworkBuilder, x: str, out_channels: int, *, stride: int, name: str) -> str:
    """The ShuffleNet V2 unit (Fig. 3 c, d of the V2 paper).

    Stride 1: split the channels in two halves; one passes untouched, the other goes through
    1×1 conv → BN → ReLU → 3×3 depthwise → BN → 1×1 conv → BN → ReLU at constant width; the
    halves are concatenated and shuffled (2 groups). Stride 2: no split — both branches see
    the whole input; the left one is 3×3 depthwise (stride 2) → BN → 1×1 conv → BN → ReLU, the
    right one as above with a stride-2 depthwise conv; each makes half the output channels.
    """
    half = out_channels // 2
    if stride == 1:
        passed, x = net.split(x, [net.channels(x) - half, half], name=f"{name}.split")
    else:
        passed = net.conv_bn_act(x, net.channels(x), 3, stride=2, groups=net.channels(x), act=None, name=f"{name}.left.dwconv")
        passed = net.conv_bn_act(passed, half, 1, act="relu", name=f"{name}.left.conv")
    y = net.conv_bn_act(x, half, 1, act="relu", name=f"{name}.right.conv1")
    y = net.conv_bn_act(y, half, 3, stride=stride, groups=half, act=None, name=f"{name}.right.dwconv")
    y = net.conv_bn_act(y, half, 1, act="relu", name=f"{name}.right.conv2")
    y = net.concat([passed, y], name=f"{name}.concat")
    return net.channel_shuffle(y, 2, name=f"{name}.shuffle")


@register_model(
    "shufflenet_v2",
    paper="Ma et al., 2018, ShuffleNet V2: Practical Guidelines for Efficient CNN Architecture Design",
    params=2.3e6,
    macs=146e6,
    note="ShuffleNet V2 1x: Table 5 of the paper (complexity 146M FLOPs, counted as multiply-adds; "
    "2.3M weights, classifier included). Stride-2 units give each branch half the output "
    "channels, as in Fig. 3 d.",
)
def shufflenet_v2(*, width: float = 1.0, resolution: int = 224, num_classes: int = 1000, seed: int = 0) -> onnx.ModelProto:
    """ShuffleNet V2 at one of Table 5's widths: 0.5, 1.0, 1.5 or 2.0."""
    if width not in SHUFFLENET_V2_CHANNELS:
        raise ValueError(f"shufflenet_v2: width must be one of {sorted(SHUFFLENET_V2_CHANNELS)} (Table 5), got {width}")
    *stage_channels, conv5_channels = SHUFFLENET_V2_CHANNELS[width]

    net = NetworkBuilder(f"shufflenet_v2_{width}x", seed=seed)
    x = net.input("input", ("N", 3, resolution, resolution))
    x = net.conv_bn_act(x, STEM_CHANNELS, 3, stride=2, act="relu", name="conv1")
    x = net.max_pool(x, 3, 2, 1, name="maxpool")
    for stage, (channels, repeats) in enumerate(zip(stage_channels, STAGE_REPEATS), start=2):
        for index in range(repeats):
            x = shufflenet_v2_unit(net, x, channels, stride=2 if index == 0 else 1, name=f"stage{stage}.{index}")
    x = net.conv_bn_act(x, conv5_channels, 1, act="relu", name="conv5")
    x = net.global_avg_pool(x, name="pool")
    probabilities = net.classifier(x, num_classes)
    return net.build(probabilities, doc=f"ShuffleNet V2 {width}x, {resolution}x{resolution}", seed=seed)
