"""Conv and ConvTranspose against direct loops, ONNX Runtime and ONNX's reference evaluator.

Oracles:

* ``direct_conv`` and ``direct_conv_transpose`` below: the definition of each op written as
  plain nested loops over batch, output channel, output position, input channel and kernel
  tap, in float64. They share no code with tinyinfer (no im2col, no sliding windows).
* ONNX Runtime, for ``auto_pad`` and ConvTranspose's ``output_shape`` (its output size and
  pad split are computed by code independent of ours; ``onnx.reference`` fails on several
  ``output_shape`` cases).

Tolerance: a float32 output sums at most C/group * prod(kernel) <= 96 products of values of
size ~1; the float32 result differs from the float64 loop by rounding of that sum, a few
ulps of its magnitude (~10), so ``rtol=1e-5, atol=1e-5`` is ~10x that bound. float64 is held
to 1e-12.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx_oracle import Initializer, infer_outputs, run_onnxruntime, run_tinyinfer

from tinyinfer.errors import InvalidAttributeError, ShapeInferenceError

FLOAT32 = dict(rtol=1e-5, atol=1e-5)
FLOAT64 = dict(rtol=1e-12, atol=1e-12)


def random(shape, dtype=np.float32, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


# ---------------------------------------------------------------------------- oracles
def direct_conv(x, w, b, group=1, strides=None, pads=None, dilations=None):
    """Conv by its definition: Y[n, m, o] = B[m] + sum_{c, t} W[m, c, t] X[n, g*C/G + c, o*s + t*d - pad]."""
    n, channels, *spatial = x.shape
    out_channels, per_group, *kernel = w.shape
    rank = len(spatial)
    strides = strides or [1] * rank
    dilations = dilations or [1] * rank
    pads = pads or [0] * (2 * rank)
    output = [
        (spatial[i] + pads[i] + pads[rank + i] - dilations[i] * (kernel[i] - 1) - 1) // strides[i] + 1
        for i in range(rank)
    ]
    y = np.zeros((n, out_channels, *output))
    outputs_per_group = out_channels // group
    for batch, m in itertools.product(range(n), range(out_channels)):
        g = m // outputs_per_group
        for position in itertools.product(*(range(o) for o in output)):
            total = 0.0 if b is None else float(b[m])
            for c in range(per_group):
                for tap in itertools.product(*(range(k) for k in kernel)):
                    where = [position[i] * strides[i] + tap[i] * dilations[i] - pads[i] for i in range(rank)]
                    if all(0 <= where[i] < spatial[i] for i in range(rank)):
                        total += float(w[(m, c, *tap)]) * float(x[(batch, g * per_group + c, *where)])
            y[(batch, m, *position)] = total
    return y


def direct_conv_transpose(x, w, b, group=1, strides=None, pads=None, dilations=None, output_padding=None):
    """ConvTranspose by its definition: every input pixel adds X * W[c, m, t] at o*s + t*d - pad."""
    n, channels, *spatial = x.shape
    _, per_group, *kernel = w.shape
    rank = len(spatial)
    strides = strides or [1] * rank
    dilations = dilations or [1] * rank
    pads = pads or [0] * (2 * rank)
    output_padding = output_padding or [0] * rank
    output = [
        strides[i] * (spatial[i] - 1) + output_padding[i] + dilations[i] * (kernel[i] - 1) + 1
        - pads[i] - pads[rank + i]
        for i in range(rank)
    ]
    y = np.zeros((n, per_group * group, *output))
    inputs_per_group = channels // group
    for batch, c in itertools.product(range(n), range(channels)):
        g = c // inputs_per_group
        for pixel in itertools.product(*(range(s) for s in spatial)):
            for m in range(per_group):
                for tap in itertools.product(*(range(k) for k in kernel)):
                    where = [pixel[i] * strides[i] + tap[i] * dilations[i] - pads[i] for i in range(rank)]
                    if all(0 <= where[i] < output[i] for i in range(rank)):
                        y[(batch, g * per_group + m, *where)] += float(x[(batch, c, *pixel)]) * float(w[(c, m, *tap)])
    if b is not None:
        y += np.asarray(b, dtype=np.float64).reshape(-1, *(1,) * rank)
    return y


# ---------------------------------------------------------------------------- Conv
CONV_CASES = {
    # name: (x shape, w shape, attributes)
    "3x3_pad1": ((1, 2, 5, 5), (3, 2, 3, 3), dict(pads=[1, 1, 1, 1])),
    "stride2_odd": ((2, 3, 7, 6), (4, 3, 3, 3), dict(strides=[2, 2], pads=[1, 0, 1, 1])),
    "asymmetric_stride": ((1, 1, 9, 7), (2, 1, 3, 2), dict(strides=[3, 2], pads=[0, 1, 2, 0])),
    "dilation2": ((1, 2, 9, 9), (2, 2, 3, 3), dict(dilations=[2, 2], pads=[2, 2, 2, 2])),
    "dilation_stride": ((1, 2, 11, 8), (3, 2, 2, 3), dict(dilations=[3, 1], strides=[2, 3])),
    "groups2": ((2, 4, 6, 6), (6, 2, 3, 3), dict(group=2, pads=[1, 1, 1, 1])),
    "groups3_stride": ((1, 6, 7, 7), (3, 2, 3, 3), dict(group=3, strides=[2, 2])),
    "depthwise": ((2, 3, 6, 5), (3, 1, 3, 3), dict(group=3, pads=[1, 1, 1, 1])),
    "depthwise_multiplier": ((1, 3, 7, 7), (6, 1, 3, 3), dict(group=3, strides=[2, 2], dilations=[2, 1])),
    "pointwise": ((2, 5, 4, 3), (7, 5, 1, 1), {}),
    "pointwise_stride": ((1, 4, 7, 7), (3, 4, 1, 1), dict(strides=[2, 2])),
    "kernel_equals_input": ((1, 2, 4, 4), (5, 2, 4, 4), {}),
    "1d": ((2, 3, 10), (4, 3, 3), dict(strides=[2], pads=[1, 2], dilations=[2])),
    "1d_depthwise": ((1, 4, 9), (4, 1, 4), dict(group=4, pads=[2, 1])),
    "3d": ((1, 2, 5, 4, 6), (3, 2, 2, 3, 3), dict(strides=[1, 2, 2], pads=[1, 0, 1, 0, 1, 1])),
    "3d_groups_dilated": ((1, 4, 6, 5, 5), (4, 2, 2, 2, 2), dict(group=2, dilations=[2, 1, 2])),
}


@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("case", list(CONV_CASES), ids=str)
def test_conv_matches_direct_loops(case, with_bias):
    x_shape, w_shape, attrs = CONV_CASES[case]
    x, w = random(x_shape, seed=1), random(w_shape, seed=2)
    b = random(w_shape[:1], seed=3) if with_bias else None
    inputs = [x, Initializer(w)] + ([Initializer(b)] if with_bias else [])
    (y,) = run_tinyinfer("Conv", inputs, **attrs)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, direct_conv(x, w, b, **attrs), **FLOAT32)


def test_conv_weights_fed_at_run_time_and_kernel_shape_attribute():
    x, w, b = random((1, 2, 6, 6)), random((3, 2, 3, 2), seed=1), random((3,), seed=2)
    (y,) = run_tinyinfer("Conv", [x, w, b], kernel_shape=[3, 2], strides=[1, 2])
    np.testing.assert_allclose(y, direct_conv(x, w, b, strides=[1, 2]), **FLOAT32)


@pytest.mark.parametrize("dtype", [np.float64, np.float16])
def test_conv_keeps_float64_and_float16(dtype):
    x, w, b = random((1, 4, 6, 6), dtype, 1), random((4, 2, 3, 3), dtype, 2), random((4,), dtype, 3)
    (y,) = run_tinyinfer("Conv", [x, Initializer(w), Initializer(b)], group=2, pads=[1, 1, 1, 1])
    assert y.dtype == dtype
    want = direct_conv(x, w, b, group=2, pads=[1, 1, 1, 1])
    # float16 holds 11 significant bits: the result is rounded once to ~5e-4 relative, and
    # sums of ~18 products of size ~1 reach ~5, so atol 1e-2.
    tolerance = FLOAT64 if dtype == np.float64 else dict(rtol=1e-2, atol=1e-2)
    np.testing.assert_allclose(y.astype(np.float64), want, **tolerance)


@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER", "VALID"])
@pytest.mark.parametrize(
    "shape, kernel, strides, dilations",
    [((7, 6), (3, 3), (1, 1), (1, 1)), ((7, 8), (3, 2), (2, 3), (1, 1)), ((5, 5), (4, 4), (2, 2), (1, 1)),
     ((6, 7), (2, 3), (3, 2), (1, 1))],
    ids=["3x3", "stride", "even_kernel", "odd_total_pad"],
)
def test_conv_auto_pad_matches_onnxruntime(auto_pad, shape, kernel, strides, dilations):
    x, w = random((1, 2, *shape)), random((3, 2, *kernel), seed=1)
    attrs = dict(auto_pad=auto_pad, strides=list(strides), dilations=list(dilations))
    (y,) = run_tinyinfer("Conv", [x, Initializer(w)], **attrs)
    (want,) = run_onnxruntime("Conv", [x, Initializer(w)], **attrs)
    assert y.shape == want.shape
    np.testing.assert_allclose(y, want, **FLOAT32)


@pytest.mark.parametrize("auto_pad, pads", [("SAME_UPPER", [1, 2, 2, 2]), ("SAME_LOWER", [2, 2, 1, 2])])
def test_conv_auto_pad_with_dilations(auto_pad, pads):
    """ONNX Runtime refuses SAME with dilations, so the pads are worked out by hand from the
    spec: 8x7 input, 3x3 kernel dilated by 2 (spans 5), strides (2, 1) -> output ceil(8/2)=4
    and 7, total padding 3*2+5-8 = 3 and 6*1+5-7 = 4, the odd one split (1, 2) or (2, 1)."""
    x, w = random((1, 2, 8, 7)), random((3, 2, 3, 3), seed=1)
    (y,) = run_tinyinfer("Conv", [x, Initializer(w)], auto_pad=auto_pad, strides=[2, 1], dilations=[2, 2])
    want = direct_conv(x, w, None, strides=[2, 1], dilations=[2, 2], pads=pads)
    assert y.shape == (1, 3, 4, 7)
    np.testing.assert_allclose(y, want, **FLOAT32)


@settings(max_examples=25, deadline=None)
@given(
    rank=st.integers(1, 2),
    size=st.lists(st.integers(3, 7), min_size=2, max_size=2),
    kernel=st.lists(st.integers(1, 3), min_size=2, max_size=2),
    stride=st.integers(1, 3),
    dilation=st.integers(1, 2),
    pad=st.integers(0, 2),
    group=st.sampled_from([1, 2]),
    per_group=st.integers(1, 2),
    out_per_group=st.integers(1, 2),
)
def test_conv_random_configurations(rank, size, kernel, stride, dilation, pad, group, per_group, out_per_group):
    size, kernel = size[:rank], kernel[:rank]
    if any(s + 2 * pad < dilation * (k - 1) + 1 for s, k in zip(size, kernel)):
        return  # the window would not fit: covered by the error test
    x = random((2, group * per_group, *size), seed=sum(size))
    w = random((group * out_per_group, per_group, *kernel), seed=7)
    attrs = dict(group=group, strides=[stride] * rank, dilations=[dilation] * rank, pads=[pad] * (2 * rank))
    (y,) = run_tinyinfer("Conv", [x, Initializer(w)], **attrs)
    np.testing.assert_allclose(y, direct_conv(x, w, None, **attrs), **FLOAT32)


def test_conv_infers_symbolic_batch_and_static_spatial_dims():
    x, w = random((2, 3, 9, 8)), random((4, 3, 3, 3))
    (y,) = infer_outputs("Conv", [x, Initializer(w)], shapes={0: ["N", 3, 9, 8]}, strides=[2, 2], pads=[1, 1, 1, 1])
    assert y.shape == ("N", 4, 5, 4) and y.dtype == np.float32
    (y,) = infer_outputs("Conv", [x, Initializer(w)], shapes={0: ["N", 3, "H", 8]}, auto_pad="SAME_UPPER")
    assert y.shape == ("N", 4, None, 8)


def test_conv_wrong_channel_count_names_the_node():
    x, w = random((1, 4, 5, 5)), random((6, 3, 3, 3))
    with pytest.raises(ShapeInferenceError, match=r"conv_node.*3 input channels per group.*group=2.*6 channels"):
        run_tinyinfer("Conv", [x, Initializer(w)], group=2)


def test_conv_output_channels_must_divide_into_groups():
    x, w = random((1, 4, 5, 5)), random((5, 2, 3, 3))
    with pytest.raises(ShapeInferenceError, match="not a multiple of group=2"):
        run_tinyinfer("Conv", [x, Initializer(w)], group=2)


def test_conv_bad_auto_pad_is_an_attribute_error():
    x, w = random((1, 2, 5, 5)), random((3, 2, 3, 3))
    with pytest.raises(InvalidAttributeError, match=r"conv_node.*auto_pad must be one of.*'SAME'"):
        run_tinyinfer("Conv", [x, Initializer(w)], auto_pad="SAME")


@pytest.mark.parametrize(
    "attrs, message",
    [(dict(pads=[1, -1, 1, 1]), "pads must all be >= 0"), (dict(strides=[0, 1]), "strides must all be >= 1"),
     (dict(pads=[1, 1, 1]), "begin and an end value"), (dict(group=0), "group must be >= 1")],
)
def test_conv_bad_attribute_values(attrs, message):
    x, w = random((1, 2, 5, 5)), random((2, 2, 3, 3))
    with pytest.raises(InvalidAttributeError, match=message):
        run_tinyinfer("Conv", [x, Initializer(w)], **attrs)


@pytest.mark.parametrize(
    "w_shape, attrs, message",
    [((2, 2, 7, 3), {}, "spans 7 positions along spatial axis 0"),
     ((2, 2, 3), {}, "W has rank 3 but X has rank 4"),
     ((2, 2, 3, 3), dict(strides=[1, 1, 1]), "strides has 3 values"),
     ((2, 2, 3, 3), dict(kernel_shape=[2, 2]), "does not match the kernel size of W")],
    ids=["kernel_too_big", "rank", "strides_length", "kernel_shape"],
)
def test_conv_bad_shapes(w_shape, attrs, message):
    x, w = random((1, 2, 5, 5)), random(w_shape)
    with pytest.raises(ShapeInferenceError, match=message):
        run_tinyinfer("Conv", [x, Initializer(w)], **attrs)


def test_conv_bias_of_the_wrong_size():
    x, w, b = random((1, 2, 5, 5)), random((3, 2, 3, 3)), random((4,))
    with pytest.raises(ShapeInferenceError, match=r"bias B must have shape \[3\]"):
        run_tinyinfer("Conv", [x, Initializer(w), Initializer(b)])


# ---------------------------------------------------------------------------- ConvTranspose
TRANSPOSE_CASES = {
    "basic": ((1, 2, 3, 3), (2, 3, 3, 3), {}),
    "stride2": ((2, 2, 4, 3), (2, 2, 3, 3), dict(strides=[2, 2])),
    "stride_pads": ((1, 3, 4, 4), (3, 2, 3, 3), dict(strides=[2, 2], pads=[1, 0, 1, 2])),
    "output_padding": ((1, 1, 3, 4), (1, 2, 3, 3), dict(strides=[3, 2], output_padding=[2, 1])),
    "dilations": ((1, 2, 3, 3), (2, 1, 2, 2), dict(dilations=[2, 3], strides=[1, 2])),
    "groups": ((1, 4, 3, 3), (4, 3, 3, 3), dict(group=2, strides=[2, 1])),
    "depthwise": ((2, 3, 4, 4), (3, 1, 2, 2), dict(group=3, strides=[2, 2], pads=[0, 1, 1, 0])),
    "1d": ((1, 2, 5), (2, 3, 4), dict(strides=[3], pads=[1, 2])),
    "3d": ((1, 2, 2, 3, 2), (2, 2, 2, 2, 3), dict(strides=[2, 1, 2], pads=[0, 1, 1, 1, 0, 0])),
}


@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("case", list(TRANSPOSE_CASES), ids=str)
def test_conv_transpose_matches_direct_loops(case, with_bias):
    x_shape, w_shape, attrs = TRANSPOSE_CASES[case]
    group = attrs.get("group", 1)
    x, w = random(x_shape, seed=1), random(w_shape, seed=2)
    b = random((w_shape[1] * group,), seed=3) if with_bias else None
    inputs = [x, Initializer(w)] + ([Initializer(b)] if with_bias else [])
    (y,) = run_tinyinfer("ConvTranspose", inputs, **attrs)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, direct_conv_transpose(x, w, b, **attrs), **FLOAT32)


@pytest.mark.parametrize(
    "attrs",
    [dict(strides=[3, 2], output_shape=[10, 8]), dict(strides=[3, 2], output_shape=[12, 10]),
     dict(strides=[2, 2], output_shape=[6, 7]), dict(strides=[2, 2], output_shape=[8, 8], auto_pad="SAME_UPPER"),
     dict(strides=[2, 2], auto_pad="SAME_UPPER"), dict(strides=[2, 3], auto_pad="SAME_LOWER"),
     dict(strides=[2, 1], auto_pad="VALID"), dict(strides=[2, 2], output_shape=[1, 3, 9, 8])],
    ids=["output_shape_grows", "output_shape_grows_more", "output_shape_crops", "output_shape_same_upper",
         "same_upper", "same_lower", "valid", "output_shape_with_nc"],
)
def test_conv_transpose_output_shape_and_auto_pad_match_onnxruntime(attrs):
    x, w = random((1, 2, 4, 4)), random((2, 3, 3, 3), seed=1)
    (y,) = run_tinyinfer("ConvTranspose", [x, Initializer(w)], **attrs)
    oracle_attrs = dict(attrs)
    if len(attrs.get("output_shape", ())) == 4:  # old models spell out (N, C, ...); the spec wants spatial dims
        oracle_attrs["output_shape"] = attrs["output_shape"][2:]
    (want,) = run_onnxruntime("ConvTranspose", [x, Initializer(w)], **oracle_attrs)
    assert y.shape == want.shape
    np.testing.assert_allclose(y, want, **FLOAT32)


def test_conv_transpose_float64_and_symbolic_shape():
    x, w = random((2, 2, 3, 3), np.float64), random((2, 4, 2, 2), np.float64, 1)
    (y,) = run_tinyinfer("ConvTranspose", [x, Initializer(w)], strides=[2, 2])
    assert y.dtype == np.float64
    np.testing.assert_allclose(y, direct_conv_transpose(x, w, None, strides=[2, 2]), **FLOAT64)
    (value,) = infer_outputs("ConvTranspose", [x, Initializer(w)], shapes={0: ["N", 2, 3, "W"]}, strides=[2, 2])
    assert value.shape == ("N", 4, 6, None)


def test_conv_transpose_wrong_channel_count():
    x, w = random((1, 3, 4, 4)), random((2, 3, 3, 3))
    with pytest.raises(ShapeInferenceError, match=r"convtranspose_node.*X has 3 channels"):
        run_tinyinfer("ConvTranspose", [x, Initializer(w)])
