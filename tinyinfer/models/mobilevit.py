"""MobileViT-XS: MobileNetV2 blocks for local features, small transformers for global ones.

Mehta & Rastegari, 2022, "MobileViT: Light-weight, General-purpose, and Mobile-friendly Vision
Transformer". The network is a MobileNetV2 whose last three stages each end in a *MobileViT
block*, which lets every pixel see the whole feature map while keeping its spatial layout
(no class token, no position embeddings). The XS configuration (the architecture table in the
paper's appendix, and ``mobilevit_xs`` in the authors' ml-cvnets code), at 256×256:

    stage   output   block                           channels  stride  repeat  d    L   MLP
    conv1   128²     3×3 conv, BN, swish                16        2      1
    layer1  128²     MV2 (expansion 4)                  32        1      1
    layer2   64²     MV2 (expansion 4)                  48        2      3
    layer3   32²     MV2 ↓2, MobileViT block            64        2      1     96   2   192
    layer4   16²     MV2 ↓2, MobileViT block            80        2      1    120   4   240
    layer5    8²     MV2 ↓2, MobileViT block            96        2      1    144   3   288
    head      1²     1×1 conv (4·96), global pool,     384 → classes
                     linear

MV2 is MobileNetV2's inverted residual (1×1 expand, 3×3 depthwise, 1×1 linear projection,
residual when shape allows), with swish where MobileNetV2 has ReLU6. Every transformer has
4 heads and an MLP twice as wide as d.

A MobileViT block on a [N, C, H, W] map with patches of h×w pixels (2×2 here):

    local    3×3 conv-BN-swish (C -> C), then 1×1 conv (C -> d)
    unfold   [N, d, H, W] -> [N, h·w, H·W/(h·w), d]: the pixels at the same offset inside their
             patch form one sequence (H·W/(h·w) tokens), one sequence per offset
    global   L pre-norm transformer blocks (:func:`tinyinfer.models.vit.transformer_block`, swish MLP)
             on every sequence, then LayerNorm
    fold     back to [N, d, H, W]
    fuse     1×1 conv-BN-swish (d -> C), concat with the block's input, 3×3 conv-BN-swish (2C -> C)

Unfold and fold are one Reshape, one Transpose and one Reshape each.
"""

from __future__ import annotations

import onnx

from .builder import NetworkBuilder
from .vit import transformer_block
from .zoo import register_model

#: MobileViT-XS (Mehta & Rastegari, 2022, appendix): MV2 stages as
#: (out channels, stride, repeats), then MobileViT stages as
#: (out channels, transformer width d, transformer depth L, MLP width).
XS_STEM = 16
XS_MV2_STAGES = ((32, 1, 1), (48, 2, 3))
XS_VIT_STAGES = ((64, 96, 2, 192), (80, 120, 4, 240), (96, 144, 3, 288))
XS_EXPANSION = 4  # MV2 expansion factor of the XS and S models (XXS uses 2)
XS_HEADS = 4
XS_HEAD_EXPANSION = 4  # the last 1×1 conv widens 96 -> 4·96 = 384 channels


@register_model(
    "mobilevit_xs",
    paper="Mehta & Rastegari, 2022, MobileViT: Light-weight, General-purpose, and Mobile-friendly Vision Transformer",
    params=2.3e6,
    macs=1.05e9,
    note="XS at 256x256 (the paper's evaluation size): 2.3M parameters (2.32M counted). MACs: the "
         "convs, the Linear layers and the attention products Q K^T and softmax(.) V (MatMul nodes, 0.117G "
         "at 256); BatchNorm, LayerNorm, swish, softmax, adds and unfold/fold count 0. That is 1.026G, "
         "against the 1.05G (GFLOPs that are MACs) OpenMMLab's mmpretrain reports for the ml-cvnets XS model "
         "at 256, registered here. The '0.7 GFLOPs' listed for XS (e.g. on Papers with Code) is not a 256x256 "
         "count with any convention (0.909G without the attention products); it matches the convs and Linear "
         "layers alone at 224x224 (about 0.70G), i.e. a smaller input and a counter that skips the attention.",
)
def mobilevit_xs(*, resolution: int = 256, patch_size: int = 2, num_classes: int = 1000, seed: int = 0) -> onnx.ModelProto:
    """MobileViT-XS for ``resolution``² images (a multiple of 32·patch_size; the paper uses 256).

    ``patch_size`` is the side of the h×w patches every MobileViT block unfolds (2 in the
    paper's models); larger patches make shorter sequences and cost fewer attention MACs.
    """
    if resolution % (32 * patch_size):
        raise ValueError(f"resolution {resolution} must be a multiple of 32 * patch_size = {32 * patch_size}: "
                         f"the last MobileViT block unfolds a {resolution // 32}x{resolution // 32} map")
    nb = NetworkBuilder("mobilevit_xs", seed=seed)
    x = nb.input("input", ("N", 3, resolution, resolution))
    x = nb.conv_bn_act(x, XS_STEM, 3, stride=2, act="swish", name="conv1")
    layer = 1
    for channels, stride, repeats in XS_MV2_STAGES:
        for index in range(repeats):
            x = inverted_residual(nb, x, channels, stride if index == 0 else 1, XS_EXPANSION, name=f"layer{layer}.{index}")
        layer += 1
    for channels, width, depth, mlp_dim in XS_VIT_STAGES:
        x = inverted_residual(nb, x, channels, 2, XS_EXPANSION, name=f"layer{layer}.0")
        x = mobilevit_block(nb, x, width, depth, mlp_dim, heads=XS_HEADS, patch=patch_size, name=f"layer{layer}.1")
        layer += 1
    x = nb.conv_bn_act(x, XS_HEAD_EXPANSION * nb.channels(x), 1, act="swish", name="conv_1x1_exp")
    x = nb.global_avg_pool(x, name="pool")
    probabilities = nb.classifier(x, num_classes, name="classifier")
    return nb.build(probabilities, doc=f"MobileViT-XS at {resolution}x{resolution}, patch {patch_size}x{patch_size}", seed=seed)


def inverted_residual(nb: NetworkBuilder, x: str, out_channels: int, stride: int, expansion: int, *, name: str) -> str:
    """MobileNetV2's block with swish: 1×1 expand, 3×3 depthwise (stride), 1×1 linear projection."""
    in_channels = nb.channels(x)
    hidden = in_channels * expansion
    y = nb.conv_bn_act(x, hidden, 1, act="swish", name=f"{name}.expand") if expansion != 1 else x
    y = nb.conv_bn_act(y, hidden, 3, stride=stride, groups=hidden, act="swish", name=f"{name}.depthwise")
    y = nb.conv_bn_act(y, out_channels, 1, act=None, name=f"{name}.project")
    if stride == 1 and in_channels == out_channels:
        y = nb.add(x, y, name=f"{name}.residual")
    return y


def mobilevit_block(nb: NetworkBuilder, x: str, width: int, depth: int, mlp_dim: int, *, heads: int, patch: int,
                    name: str) -> str:
    """Local convs, unfold, ``depth`` transformer blocks of ``width`` on each patch offset, fold, fuse."""
    channels = nb.channels(x)
    y = nb.conv_bn_act(x, channels, 3, act="swish", name=f"{name}.local.conv3x3")
    y = nb.conv(y, width, 1, name=f"{name}.local.conv1x1")
    tokens = unfold(nb, y, patch, name=f"{name}.unfold")
    for index in range(depth):
        tokens = transformer_block(nb, tokens, heads, mlp_dim, act="swish", epsilon=1e-5, name=f"{name}.global.{index}")
    tokens = nb.layer_norm(tokens, name=f"{name}.global.norm", epsilon=1e-5)
    y = fold(nb, tokens, nb.shapes[y], patch, name=f"{name}.fold")
    y = nb.conv_bn_act(y, channels, 1, act="swish", name=f"{name}.conv_proj")
    y = nb.concat([x, y], axis=1, name=f"{name}.concat")
    return nb.conv_bn_act(y, channels, 3, act="swish", name=f"{name}.fusion")


def unfold(nb: NetworkBuilder, x: str, patch: int, *, name: str) -> str:
    """[N, d, H, W] -> [N, p², H·W/p², d]: ``out[n, i·p + j, a·(W/p) + b, c] = x[n, c, a·p + i, b·p + j]``."""
    n, d, height, width = nb.shapes[x]
    rows, cols = height // patch, width // patch
    split = nb.node("Reshape", [x, nb.const(f"{name}.split_shape", [-1, d, rows, patch, cols, patch])],
                    (n, d, rows, patch, cols, patch), name=f"{name}.split")
    # axes (n, c, a, i, b, j) -> (n, i, j, a, b, c)
    moved = nb.node("Transpose", [split], (n, patch, patch, rows, cols, d), name=f"{name}.transpose", perm=[0, 3, 5, 2, 4, 1])
    return nb.node("Reshape", [moved, nb.const(f"{name}.shape", [-1, patch * patch, rows * cols, d])],
                   (n, patch * patch, rows * cols, d), name=name)


def fold(nb: NetworkBuilder, tokens: str, shape: tuple, patch: int, *, name: str) -> str:
    """The inverse of :func:`unfold`: [N, p², H·W/p², d] -> [N, d, H, W] for ``shape`` = (N, d, H, W)."""
    n, d, height, width = shape
    rows, cols = height // patch, width // patch
    split = nb.node("Reshape", [tokens, nb.const(f"{name}.split_shape", [-1, patch, patch, rows, cols, d])],
                    (n, patch, patch, rows, cols, d), name=f"{name}.split")
    # axes (n, i, j, a, b, c) -> (n, c, a, i, b, j)
    moved = nb.node("Transpose", [split], (n, d, rows, patch, cols, patch), name=f"{name}.transpose", perm=[0, 5, 3, 1, 4, 2])
    return nb.node("Reshape", [moved, nb.const(f"{name}.shape", [-1, d, height, width])], (n, d, height, width), name=name)
