"""ResNet-18 (He, Zhang, Ren & Sun, 2016, "Deep Residual Learning for Image Recognition").

A residual network learns ``F(x)`` and outputs ``relu(F(x) + x)``: the identity shortcut lets
gradients, and activations, pass through dozens of layers unchanged, so depth stops hurting.
ResNet-18 is the smallest network of the paper's Table 1, built from *basic blocks* (two 3×3
convolutions; the deeper networks use 1×1-3×3-1×1 bottlenecks). The stem is a 7×7 stride-2
convolution and a 3×3 stride-2 max pool; each of the four stages doubles the channels, and all
but the first halve the resolution with a stride-2 first block whose shortcut is a 1×1
stride-2 projection followed by batch norm (the paper's option B). Every convolution is
followed by batch norm (Ioffe & Szegedy, 2015) and has no bias.

The paper's Table 1 gives 1.8×10⁹ "FLOPs" for ResNet-18, which are multiply-adds; the
parameter count, 11.7M, is the reference implementation's (torchvision's 11,689,512).
"""

from __future__ import annotations

import onnx

from .builder import NetworkBuilder
from .zoo import register_model

#: He et al., 2016, Table 1, column "18-layer": (output channels, basic blocks, first stride)
#: for stages conv2_x ... conv5_x.
RESNET18_STAGES = (
    (64, 2, 1),
    (128, 2, 2),
    (256, 2, 2),
    (512, 2, 2),
)


def basic_block(net: NetworkBuilder, x: str, channels: int, stride: int, *, name: str) -> str:
    """Two 3×3 conv-BN layers plus a shortcut, then ReLU (He et al., 2016, Figure 2 left).

    The shortcut is the identity when the shape is kept, else a 1×1 projection with the block's
    stride and a batch norm, so that the sum adds tensors of the same shape.
    """
    y = net.conv_bn_act(x, channels, 3, stride=stride, act="relu", name=f"{name}.conv1")
    y = net.conv_bn_act(y, channels, 3, act=None, name=f"{name}.conv2")
    shortcut = x
    if stride != 1 or net.channels(x) != channels:
        shortcut = net.conv_bn_act(x, channels, 1, stride=stride, act=None, name=f"{name}.downsample")
    return net.activation(net.add(y, shortcut, name=f"{name}.add"), "relu", name=f"{name}.relu")


@register_model(
    "resnet18",
    paper="He et al., 2016, Deep Residual Learning for Image Recognition",
    params=11.7e6,
    macs=1.8e9,
    note="Table 1's 1.8e9 'FLOPs' are multiply-adds; params 11.7M as the reference implementation "
    "counts them (convolutions, batch-norm scale and shift, the 512x1000 classifier).",
)
def resnet18(*, resolution: int = 224, num_classes: int = 1000, seed: int = 0) -> onnx.ModelProto:
    """ResNet-18 at ``resolution``×``resolution``, outputting class probabilities."""
    net = NetworkBuilder("resnet18", seed=seed)
    x = net.input("input", ("N", 3, resolution, resolution))
    x = net.conv_bn_act(x, 64, 7, stride=2, act="relu", name="conv1")
    x = net.max_pool(x, 3, 2, padding=1, name="maxpool")
    for stage, (channels, blocks, first_stride) in enumerate(RESNET18_STAGES, start=1):
        for block in range(blocks):
            stride = first_stride if block == 0 else 1
            x = basic_block(net, x, channels, stride, name=f"layer{stage}.{block}")
    x = net.global_avg_pool(x, name="avgpool")
    probabilities = net.classifier(x, num_classes, name="fc")
    return net.build(probabilities, doc="ResNet-18 (He et al., 2016)", seed=seed)
