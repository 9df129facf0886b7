"""ViT-Tiny: the Vision Transformer at DeiT-Tiny size, built from plain opset-17 ops.

Dosovitskiy et al., 2021, "An Image is Worth 16x16 Words: Transformers for Image Recognition
at Scale" cut the image into 16×16 patches, project each to a ``dim``-wide token, prepend a
learned class token, add learned position embeddings and run a stack of pre-norm transformer
encoder blocks; a LayerNorm and a linear head read the class token. Touvron et al., 2021,
"Training data-efficient image transformers & distillation through attention" (DeiT) trained
the small sizes on ImageNet alone; their Table 1 names the sizes:

    model      dim   heads  depth  MLP   patch  tokens at 224    params
    DeiT-Ti    192     3     12    768    16    196 + 1 class        5M   (5.7M exactly)
    DeiT-S     384     6     12   1536    16    196 + 1 class       22M
    DeiT-B     768    12     12   3072    16    196 + 1 class       86M

One encoder block, for ``T`` tokens of width ``d`` split over ``h`` heads of width ``d/h``:

    x = x + Linear(MultiHeadAttention(LayerNorm(x)))        attention mixes tokens
    x = x + Linear(GELU(Linear(LayerNorm(x))))             the MLP (d -> 4d -> d) mixes channels
    MultiHeadAttention(x) = concat over heads of softmax(Q K^T / sqrt(d/h)) V,  [Q|K|V] = x W_qkv

Attention is spelled out in plain opset-17 ops — MatMul, Split, Reshape,
Transpose, Mul by 1/sqrt(d/h), Softmax — not the fused ``Attention`` op, so the graph runs
on older ONNX Runtime releases and the optimizer chapter has real patterns to fuse (LayerNorm,
GELU, attention). :func:`multi_head_attention` and :func:`transformer_block` work on tokens
of any rank ``[..., T, d]``; MobileViT (:mod:`tinyinfer.models.mobilevit`) reuses them.
"""

from __future__ import annotations

import math

import numpy as np
import onnx

from .builder import NetworkBuilder
from .zoo import register_model

@register_model(
    "vit_tiny",
    paper="Touvron et al., 2021, Training data-efficient image transformers & distillation through attention "
          "(DeiT-Ti; architecture of Dosovitskiy et al., 2021, An Image is Worth 16x16 Words)",
    params=5.7e6,
    macs=1.26e9,
    note="DeiT-Ti at 224x224 without the distillation token: 5.7M parameters (5.717M counted). MACs: the "
         "patch-embedding conv, every Linear, the head and the attention products Q K^T and softmax(.) V "
         "(MatMul nodes, 0.179G over 12 blocks); LayerNorm, GELU, softmax and the residual adds count 0. "
         "That is 1.254G. Papers quote DeiT-Ti as '1.3G FLOPs' (which are MACs): the same count rounded to "
         "one decimal, 3.6% above it; registered is 1.26G, the two-decimal figure of OpenMMLab's mmpretrain "
         "for DeiT-tiny with the same convention (its older 1.08G skipped the attention products: 1.075G here).",
)
def vit_tiny(*, resolution: int = 224, patch_size: int = 16, dim: int = 192, depth: int = 12, heads: int = 3,
             mlp_ratio: float = 4.0, num_classes: int = 1000, position_embedding: bool = True,
             seed: int = 0) -> onnx.ModelProto:
    """A ViT encoder (DeiT-Tiny, the table above, by default) classifying ``resolution``² images.

    ``position_embedding=False`` leaves out the learned position embeddings; the network then
    treats its patches as a set (attention is permutation-equivariant), which the tests use
    to check the attention wiring.
    """
    if resolution % patch_size:
        raise ValueError(f"resolution {resolution} is not a multiple of patch_size {patch_size}")
    if dim % heads:
        raise ValueError(f"dim {dim} is not divisible by heads {heads}")
    nb = NetworkBuilder("vit_tiny", seed=seed)
    x = nb.input("input", ("N", 3, resolution, resolution))
    tokens = patch_embedding(nb, x, dim, patch_size, name="patch_embed")
    tokens = prepend_class_token(nb, tokens, name="cls_token")
    if position_embedding:
        _, count, width = nb.shapes[tokens]
        pos = nb.weight("pos_embed", nb.rng.normal(0.0, 0.02, (1, count, width)).astype(np.float32))
        tokens = nb.add(tokens, pos, name="pos_embed.add")
    mlp_dim = int(dim * mlp_ratio)
    for index in range(depth):
        tokens = transformer_block(nb, tokens, heads, mlp_dim, act="gelu", epsilon=1e-6, name=f"blocks.{index}")
    n, _, width = nb.shapes[tokens]
    zero = nb.const("cls_index", 0)  # a scalar index: Gather drops the token axis, [N, T, d] -> [N, d]
    cls = nb.node("Gather", [tokens, zero], (n, width), name="cls_select", axis=1)
    cls = nb.layer_norm(cls, name="norm", epsilon=1e-6)
    probabilities = nb.classifier(cls, num_classes, name="head")
    return nb.build(probabilities, doc=f"ViT-Tiny ({depth} blocks, dim {dim}, {heads} heads, patch {patch_size}) "
                                      f"at {resolution}x{resolution}", seed=seed)


def patch_embedding(nb: NetworkBuilder, x: str, dim: int, patch: int, *, name: str) -> str:
    """Cut [N, C, H, W] into patch×patch squares and project each to ``dim``: [N, H·W/patch², dim].

    A linear map of every non-overlapping patch is a Conv with kernel = stride = patch; the
    feature map is then read as a sequence, row by row.
    """
    grid = nb.conv(x, dim, patch, stride=patch, padding=0, bias=True, name=name)
    n, _, gh, gw = nb.shapes[grid]
    rows = nb.node("Reshape", [grid, nb.const(f"{name}.shape", [0, dim, gh * gw])], (n, dim, gh * gw), name=f"{name}.flatten")
    return nb.node("Transpose", [rows], (n, gh * gw, dim), name=f"{name}.tokens", perm=[0, 2, 1])


def prepend_class_token(nb: NetworkBuilder, tokens: str, *, name: str) -> str:
    """[N, T, d] -> [N, 1 + T, d] with a learned class token in front.

    Concat cannot broadcast a [1, 1, d] token over the batch, so the sequence is padded with one
    empty (zero) slot in front and the class token, padded to [1, 1 + T, d], is added there:
    the same result, with no Shape/Expand sub-graph, and the batch stays symbolic.
    """
    n, count, width = nb.shapes[tokens]
    token = nb.weight(name, nb.rng.normal(0.0, 0.02, (1, 1, width)).astype(np.float32))
    # ONNX pads list the begin of every axis, then the end of every axis
    slot_pads = nb.const(f"{name}.slot_pads", [0, 1, 0, 0, 0, 0])
    slot = nb.node("Pad", [tokens, slot_pads], (n, 1 + count, width), name=f"{name}.slot")
    token_pads = nb.const(f"{name}.token_pads", [0, 0, 0, 0, count, 0])
    placed = nb.node("Pad", [token, token_pads], (1, 1 + count, width), name=f"{name}.place")
    return nb.add(slot, placed, name=f"{name}.add")


def transformer_block(nb: NetworkBuilder, x: str, heads: int, mlp_dim: int, *, act: str = "gelu",
                      epsilon: float = 1e-6, name: str) -> str:
    """Pre-norm encoder block on [..., T, d]: x + Attention(LN(x)), then x + MLP(LN(x))."""
    width = int(nb.shapes[x][-1])
    y = nb.layer_norm(x, name=f"{name}.norm1", epsilon=epsilon)
    y = multi_head_attention(nb, y, heads, name=f"{name}.attn")
    x = nb.add(x, y, name=f"{name}.residual1")
    y = nb.layer_norm(x, name=f"{name}.norm2", epsilon=epsilon)
    y = nb.linear(y, mlp_dim, name=f"{name}.mlp.fc1")
    y = nb.activation(y, act, name=f"{name}.mlp.{act}")
    y = nb.linear(y, width, name=f"{name}.mlp.fc2")
    return nb.add(x, y, name=f"{name}.residual2")


def multi_head_attention(nb: NetworkBuilder, x: str, heads: int, *, name: str) -> str:
    """Self-attention over the tokens of [..., T, d] with ``heads`` heads, then the output Linear.

    One Linear makes [Q | K | V] (PyTorch's ``qkv`` layout: three d-wide blocks, each head's
    columns contiguous); each is split into heads, [..., T, d] -> [..., h, T, d/h], with K
    transposed to [..., h, d/h, T] so that ``MatMul(Q, K)`` is Q K^T.
    """
    shape = nb.shapes[x]
    lead, count, width = tuple(shape[:-2]), shape[-2], int(shape[-1])
    if width % heads:
        raise ValueError(f"{name}: width {width} is not divisible by {heads} heads")
    head_dim = width // heads
    rank = len(shape)
    qkv = nb.linear(x, 3 * width, name=f"{name}.qkv")
    q, k, v = nb.split(qkv, [width] * 3, axis=-1, name=f"{name}.split")
    # [..., T, h·dh] -> [..., T, h, dh]; 0 copies a leading dim, so the batch may stay symbolic.
    heads_shape = nb.const(f"{name}.heads_shape", [0] * (rank - 1) + [heads, head_dim])
    front = list(range(rank - 2))
    t, h, dh = rank - 2, rank - 1, rank
    split_shape = (*lead, count, heads, head_dim)

    def per_head(value: str, role: str, perm: list[int], result: tuple) -> str:
        split = nb.node("Reshape", [value, heads_shape], split_shape, name=f"{name}.{role}.reshape")
        return nb.node("Transpose", [split], result, name=f"{name}.{role}.transpose", perm=perm)

    q = per_head(q, "q", [*front, h, t, dh], (*lead, heads, count, head_dim))
    k = per_head(k, "k", [*front, h, dh, t], (*lead, heads, head_dim, count))
    v = per_head(v, "v", [*front, h, t, dh], (*lead, heads, count, head_dim))
    scores = nb.node("MatMul", [q, k], (*lead, heads, count, count), name=f"{name}.scores")
    scale = nb.const(f"{name}.scale", 1.0 / math.sqrt(head_dim), np.float32)
    scores = nb.node("Mul", [scores, scale], nb.shapes[scores], name=f"{name}.scaled")
    weights = nb.node("Softmax", [scores], nb.shapes[scores], name=f"{name}.softmax", axis=-1)
    context = nb.node("MatMul", [weights, v], (*lead, heads, count, head_dim), name=f"{name}.context")
    # [..., h, T, dh] -> [..., T, h, dh] -> [..., T, d]: swapping two axes undoes itself.
    context = nb.node("Transpose", [context], split_shape, name=f"{name}.merge.transpose", perm=[*front, h, t, dh])
    merged = nb.node("Reshape", [context, nb.const(f"{name}.merge_shape", [0] * (rank - 1) + [width])], shape, name=f"{name}.merge")
    return nb.linear(merged, width, name=f"{name}.proj")
