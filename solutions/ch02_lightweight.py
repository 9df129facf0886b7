"""Chapter 02 answers: conv costs, channel shuffle, MobileNetV2's block, 1×1 memory access.

Same names and signatures as :mod:`exercises.ch02_lightweight`, whose docstrings explain
each task; the comments here only say why a line is the way it is.
"""

from __future__ import annotations

import numpy as np

from tinyinfer.models import NetworkBuilder


# ---------------------------------------------------------------------------- exercise 1
def separable_conv_cost(c_in: int, c_out: int, k: int, h: int, w: int) -> dict[str, float]:
    """MACs and weights of a k×k conv and of depthwise k×k + pointwise 1×1 (stride 1, same size)."""
    pixels = h * w  # stride 1 and "same" padding: one output position per input position
    standard_params = c_out * c_in * k * k
    depthwise_params = c_in * k * k  # one k×k filter per channel
    pointwise_params = c_out * c_in
    # A convolution without bias does one MAC per weight per output position.
    standard_macs = pixels * standard_params
    separable_macs = pixels * (depthwise_params + pointwise_params)
    return {
        "standard_macs": standard_macs,
        "standard_params": standard_params,
        "separable_macs": separable_macs,
        "separable_params": depthwise_params + pointwise_params,
        "ratio": separable_macs / standard_macs,  # = 1/c_out + 1/k²
    }


# ---------------------------------------------------------------------------- exercise 2
def channel_shuffle(x: np.ndarray, groups: int) -> np.ndarray:
    """[N, C, ...] -> [N, g, C/g, ...] -> swap g and C/g -> [N, C, ...]."""
    x = np.asarray(x)
    if x.ndim < 2:
        raise ValueError(f"channel_shuffle needs [N, C, ...], got shape {x.shape}")
    channels = x.shape[1]
    if groups < 1 or channels % groups:
        raise ValueError(f"channel_shuffle: {groups} groups do not divide {channels} channels")
    n, rest = x.shape[0], x.shape[2:]
    grouped = x.reshape(n, groups, channels // groups, *rest)
    # reshape of the transposed view copies, so the result never aliases x
    return np.swapaxes(grouped, 1, 2).reshape(x.shape)


# ---------------------------------------------------------------------------- exercise 3
def inverted_residual(builder: NetworkBuilder, x: str, out_channels: int, stride: int, expansion: int) -> str:
    """Expand (1×1, BN, ReLU6) → depthwise 3×3 (BN, ReLU6) → linear project (1×1, BN) [+ x]."""
    in_channels = builder.channels(x)
    hidden = in_channels * expansion
    name = builder.fresh("inverted_residual")
    y = x
    if expansion != 1:
        y = builder.conv_bn_act(y, hidden, 1, act="relu6", name=f"{name}.expand")
    y = builder.conv_bn_act(y, hidden, 3, stride=stride, groups=hidden, act="relu6", name=f"{name}.depthwise")
    y = builder.conv_bn_act(y, out_channels, 1, act=None, name=f"{name}.project")
    if stride == 1 and in_channels == out_channels:
        y = builder.add(y, x, name=f"{name}.add")
    return y


# ---------------------------------------------------------------------------- exercise 4
def memory_access_cost_1x1(h: int, w: int, c1: int, c2: int) -> int:
    """hw·c1 read + c1·c2 weights read + hw·c2 written (Ma et al., 2018, guideline G1)."""
    return h * w * (c1 + c2) + c1 * c2
