"""SqueezeNet 1.1 (Iandola, Han, Moskewicz, Ashraf, Dally & Keutzer, 2016, "SqueezeNet:
AlexNet-level accuracy with 50x fewer parameters and <0.5MB model size").

SqueezeNet saves parameters with the *fire module*: a 1×1 "squeeze" convolution cuts the
channels down (strategy 2 of the paper: fewer input channels to the 3×3 filters), then an
"expand" layer runs 1×1 and 3×3 convolutions side by side on the squeezed tensor and
concatenates them (strategy 1: replace most 3×3 filters by 1×1). There is no fully connected
layer: a last 1×1 convolution produces one map per class and global average pooling turns
each map into a logit.

Version 1.1, published in the authors' repository (forresti/SqueezeNet, ``SqueezeNet_v1.1``),
keeps the fire modules of the paper's Table 1 but starts with a 3×3/64 stride-2 convolution
instead of 7×7/96 and pools earlier (after conv1, fire3 and fire5 instead of after conv1,
fire4 and fire8), which cuts the computation 2.4 times at the same accuracy. The network has
no batch norm; every convolution has a bias and is followed by ReLU. Pooling rounds up
(Caffe's convention), as in the reference model.
"""

from __future__ import annotations

import onnx

from .builder import NetworkBuilder
from .zoo import register_model

#: SqueezeNet v1.1 from the authors' repository: layers in order, fire modules as
#: (squeeze 1×1, expand 1×1, expand 3×3) filters; "pool" is a 3×3 stride-2 max pool.
SQUEEZENET_1_1_LAYERS = (
    ("conv1", 64),
    ("pool", None),
    ("fire2", (16, 64, 64)),
    ("fire3", (16, 64, 64)),
    ("pool", None),
    ("fire4", (32, 128, 128)),
    ("fire5", (32, 128, 128)),
    ("pool", None),
    ("fire6", (48, 192, 192)),
    ("fire7", (48, 192, 192)),
    ("fire8", (64, 256, 256)),
    ("fire9", (64, 256, 256)),
)


def fire(net: NetworkBuilder, x: str, squeeze: int, expand1x1: int, expand3x3: int, *, name: str) -> str:
    """Squeeze with 1×1 filters, expand with 1×1 and 3×3 filters in parallel, concatenate."""
    squeezed = conv_relu(net, x, squeeze, 1, name=f"{name}.squeeze")
    expanded1x1 = conv_relu(net, squeezed, expand1x1, 1, name=f"{name}.expand1x1")
    expanded3x3 = conv_relu(net, squeezed, expand3x3, 3, name=f"{name}.expand3x3")
    return net.concat([expanded1x1, expanded3x3], name=f"{name}.concat")


def conv_relu(net: NetworkBuilder, x: str, channels: int, kernel: int, *, stride: int = 1, padding: int | None = None,
              name: str) -> str:
    """Convolution with bias, then ReLU: SqueezeNet's only layer type (it has no batch norm)."""
    y = net.conv(x, channels, kernel, stride=stride, padding=padding, bias=True, name=name)
    return net.activation(y, "relu", name=f"{name}.relu")


@register_model(
    "squeezenet1_1",
    paper="Iandola et al., 2016, SqueezeNet: AlexNet-level accuracy with 50x fewer parameters "
    "and <0.5MB model size (v1.1 from the authors' repository)",
    params=1.235e6,
    macs=350e6,
    note="v1.1 has no paper table; its repository says only '2.4x less computation than v1.0'. "
    "Registered: 0.35 GMACs at 224x224, the figure the torchvision port reports; our count is "
    "349M, and the paper's v1.0 (Table 1, 1,248,424 params, reproduced exactly) costs 819M at 224, "
    "/2.4 = 341M. At Caffe's 227x227 crop v1.1 costs 388M (ceil-mode pools give 56/28/14 maps). "
    "Params 1.235M: convolution weights and biases; there is no classifier Gemm.",
)
def squeezenet1_1(*, resolution: int = 224, num_classes: int = 1000, seed: int = 0) -> onnx.ModelProto:
    """SqueezeNet 1.1 at ``resolution``×``resolution``, outputting class probabilities.

    Output ``"logits"`` (the pooled class maps) feeds the final Softmax; it plays the part the
    classifier Gemm plays in the other zoo models.
    """
    net = NetworkBuilder("squeezenet1_1", seed=seed)
    x = net.input("input", ("N", 3, resolution, resolution))
    for name, spec in SQUEEZENET_1_1_LAYERS:
        if name == "conv1":
            x = conv_relu(net, x, spec, 3, stride=2, padding=0, name="conv1")
        elif name == "pool":
            x = net.max_pool(x, 3, 2, ceil_mode=True, name="maxpool")
        else:
            x = fire(net, x, *spec, name=name)
    # The classifier: dropout (identity at inference), a 1×1 conv to one map per class, ReLU,
    # global average pooling to one logit per class.
    x = conv_relu(net, x, num_classes, 1, name="conv10")
    x = net.global_avg_pool(x, name="avgpool")
    logits = net.flatten(x, name="logits")
    probabilities = net.node("Softmax", [logits], net.shapes[logits], name="probabilities", axis=-1)
    return net.build(probabilities, doc="SqueezeNet 1.1 (Iandola et al., 2016)", seed=seed)
