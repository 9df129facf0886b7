"""Resize and Upsample (tinyinfer/ops/resize.py).

Oracles: ``onnx.reference`` (the executable spec) on one-node models for Resize-19, ONNX
Runtime for the older forms (Resize-10, Resize-11's tf_half_pixel_for_nn, Upsample-7/9) that
the reference does not implement, and math properties (scale 1 is the identity, nearest
upsampling by 2 repeats pixels, linear interpolation reproduces a linear ramp).

Tolerance for float results: ``atol = rtol = 1e-5``. tinyinfer sums the 2-4 taps (more with
antialias) in float32, the reference in float64; each tap adds at most one float32 rounding
(~6e-8 relative) on values of order 1-10, far below 1e-5. Integer outputs are compared
exactly: both round half to even and saturate.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx_oracle import Initializer, assert_matches_reference, run_onnxruntime, run_tinyinfer

from tinyinfer import ops
from tinyinfer.errors import InvalidAttributeError, ShapeInferenceError, TinyInferError
from tinyinfer.ir import Graph, Node, Value

TOL = dict(rtol=1e-5, atol=1e-5)
TRANSFORMS = ["half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners", "asymmetric"]
NEAREST_MODES = ["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"]


def floats(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def scales(*values):
    return Initializer(np.array(values, dtype=np.float32))


def sizes(*values):
    return Initializer(np.array(values, dtype=np.int64))


def resize(x, roi=None, scale=None, size=None, opset=19, **attrs):
    return run_tinyinfer("Resize", [x, roi, scale, size], opset=opset, **attrs)[0]


def resize_matches_reference(x, roi=None, scale=None, size=None, **attrs):
    inputs = [x, roi, scale] + ([size] if size is not None else [])
    return assert_matches_reference("Resize", inputs, opset=19, **TOL, **attrs)[0]


def infer_resize(x_shape, roi=None, scale=None, size=None, opset=19, **attrs):
    """Output Value of a Resize whose X has a (possibly symbolic) declared shape."""
    names, weights = ["x"], {}
    for name, item in (("roi", roi), ("scales", scale), ("sizes", size)):
        if item is None:
            names.append("")
        elif isinstance(item, Value):
            names.append(item.name)
        else:
            names.append(name)
            weights[name] = item.array
    graph_inputs = [Value("x", np.float32, x_shape)] + [i for i in (roi, scale, size) if isinstance(i, Value)]
    node = Node("Resize", names, ["y"], attrs, name="resize_node")
    graph = Graph(nodes=[node], inputs=graph_inputs, initializers=weights, opset={"": opset})
    ops.prepare_graph(graph)
    return ops.infer_shapes(graph)["y"]


# ---------------------------------------------------------------------------- against onnx.reference
@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize("mode", ["nearest", "linear", "cubic"])
@pytest.mark.parametrize("factors", [(1, 1, 2.0, 1.5), (1, 1, 0.6, 0.5), (1, 1, 1.7, 0.8)])
def test_scales_match_reference(mode, transform, factors):
    resize_matches_reference(floats(1, 2, 5, 6), scale=scales(*factors), mode=mode,
                             coordinate_transformation_mode=transform)


@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize("mode", ["nearest", "linear", "cubic"])
def test_sizes_match_reference(mode, transform):
    resize_matches_reference(floats(2, 3, 4, 7), size=sizes(2, 3, 9, 3), mode=mode,
                             coordinate_transformation_mode=transform)


@pytest.mark.parametrize("nearest_mode", NEAREST_MODES)
@pytest.mark.parametrize("transform", ["half_pixel", "align_corners", "asymmetric"])
def test_every_nearest_mode_matches_reference(nearest_mode, transform):
    for factors in ((1, 2.5), (1, 0.4), (1, 3.0)):
        resize_matches_reference(floats(3, 10), scale=scales(*factors), mode="nearest",
                                 nearest_mode=nearest_mode, coordinate_transformation_mode=transform)


@pytest.mark.parametrize("mode", ["linear", "cubic"])
@pytest.mark.parametrize("factors", [(1, 1, 0.5, 0.3), (1, 1, 0.6, 2.0), (1, 1, 0.25, 0.75)])
def test_antialias_matches_reference(mode, factors):
    resize_matches_reference(floats(1, 2, 9, 10), scale=scales(*factors), mode=mode, antialias=1)


@pytest.mark.parametrize("antialias", [0, 1])
@pytest.mark.parametrize("factors", [(1, 1, 0.6, 0.8), (1, 1, 1.5, 2.3)])
def test_cubic_exclude_outside_and_coefficient_match_reference(antialias, factors):
    resize_matches_reference(floats(1, 1, 6, 7), scale=scales(*factors), mode="cubic", cubic_coeff_a=-0.5,
                             exclude_outside=1, antialias=antialias)


@pytest.mark.parametrize("mode", ["nearest", "linear", "cubic"])
def test_tf_crop_and_resize_matches_reference(mode):
    # The crop crosses both edges. Its corners avoid source coordinates at exact .5 ties, where
    # nearest rounding would depend on float32 vs float64 arithmetic of the roi.
    roi = Initializer(np.array([0, 0, -0.2, 0.25, 1, 1, 0.7, 1.4], dtype=np.float32))
    resize_matches_reference(floats(1, 2, 5, 6), roi=roi, size=sizes(1, 2, 4, 7), mode=mode,
                             coordinate_transformation_mode="tf_crop_and_resize", extrapolation_value=-7.5)


@pytest.mark.parametrize("axes", [[2, 3], [3, 2], [0, 2]])
def test_axes_match_reference(axes):
    x = floats(2, 3, 4, 5)
    factors = {0: 2.0, 2: 1.5, 3: 0.6}
    resize_matches_reference(x, scale=scales(*(factors[a] for a in axes)), axes=axes, mode="linear")
    resize_matches_reference(x, size=sizes(*(3 + i for i in range(len(axes)))), axes=axes, mode="cubic")


def test_negative_axes_count_from_the_back():
    # onnx.reference does not normalise negative axes, so compare with the positive spelling.
    x = floats(2, 3, 4, 5)
    got = resize(x, scale=scales(0.6, 1.5), axes=[-1, -2], mode="linear")
    np.testing.assert_array_equal(got, resize(x, scale=scales(0.6, 1.5), axes=[3, 2], mode="linear"))
    assert got.shape == (2, 3, 6, 3)


@pytest.mark.parametrize("policy", ["not_larger", "not_smaller"])
@pytest.mark.parametrize("target", [(7, 9), (2, 3), (8, 2)])
def test_keep_aspect_ratio_policy_matches_reference(policy, target):
    got = resize_matches_reference(floats(1, 1, 4, 6), size=sizes(*target), axes=[2, 3], mode="linear",
                                   keep_aspect_ratio_policy=policy)
    # The output keeps the 4:6 aspect ratio and respects the bound on every axis.
    height, width = got.shape[2:]
    bound = all(o <= t for o, t in zip((height, width), target)) if policy == "not_larger" else all(
        o >= t for o, t in zip((height, width), target))
    assert bound and abs(height / width - 4 / 6) < 0.35


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int32, np.float16, np.float64])
@pytest.mark.parametrize("mode", ["nearest", "linear", "cubic"])
def test_other_dtypes_match_reference(dtype, mode):
    """Integers are rounded half to even and saturated (cubic overshoots a 0/255 step).

    onnx.reference computes the cubic weights in float32 (cubic_coeff_a is a float32), tinyinfer
    in float64; int32 values stay within +-1000 so that difference (~1e-7 relative) cannot
    change a rounded result.
    """
    rng = np.random.default_rng(3)
    if np.dtype(dtype).kind in "iu":
        info = np.iinfo(dtype)
        low, high = max(info.min, -1000), min(info.max, 1000)
        x = rng.choice([low, high, 0], size=(1, 1, 4, 5)).astype(dtype)
    else:
        x = rng.standard_normal((1, 1, 4, 5)).astype(dtype)
    got = assert_matches_reference("Resize", [x, None, scales(1, 1, 2.5, 1.5)], opset=19, mode=mode,
                                   rtol=1e-3, atol=1e-3)[0]  # float16 output: 1e-3 ~ its precision
    assert got.dtype == dtype


@settings(max_examples=40, deadline=None)
@given(
    shape=st.lists(st.integers(1, 6), min_size=1, max_size=3),
    data=st.data(),
    mode=st.sampled_from(["nearest", "linear", "cubic"]),
    transform=st.sampled_from(["half_pixel", "half_pixel_symmetric", "align_corners", "asymmetric"]),
)
def test_random_shapes_and_scales_match_reference(shape, data, mode, transform):
    factor = st.sampled_from([0.5, 0.6, 1.0, 1.5, 2.0, 3.0])
    factors = data.draw(st.lists(factor, min_size=len(shape), max_size=len(shape)))
    if any(int(d * f) == 0 for d, f in zip(shape, factors)):
        factors = [max(f, 1.0) for f in factors]
    antialias = data.draw(st.sampled_from([0, 1])) if mode != "nearest" else 0
    resize_matches_reference(floats(*shape), scale=scales(*factors), mode=mode, antialias=antialias,
                             coordinate_transformation_mode=transform)


# ---------------------------------------------------------------------------- against ONNX Runtime
@pytest.mark.parametrize("mode", ["nearest", "linear", "cubic"])
def test_pytorch_half_pixel_output_of_length_one_samples_index_zero(mode):
    """The spec maps every output of a length-1 axis to x = 0; ONNX Runtime agrees
    (onnx.reference uses -0.5, which differs for cubic and for a fractional output width)."""
    x = floats(4, 6)
    inputs = [x, None, scales(1, 0.3)]
    attrs = dict(opset=19, mode=mode, coordinate_transformation_mode="pytorch_half_pixel")
    got = run_tinyinfer("Resize", inputs, **attrs)[0]
    want = run_onnxruntime("Resize", inputs, **attrs)[0]
    np.testing.assert_allclose(got, want, **TOL)
    np.testing.assert_allclose(got[:, 0], x[:, 0], **TOL)


@pytest.mark.parametrize("mode", ["nearest", "linear"])
@pytest.mark.parametrize("factors", [(1, 1, 2, 3), (1, 1, 0.6, 0.5), (1, 1, 1.7, 0.8)])
def test_resize_10_matches_onnxruntime(mode, factors):
    inputs = [floats(1, 1, 4, 6), scales(*factors)]
    got = run_tinyinfer("Resize", inputs, opset=10, mode=mode)[0]
    np.testing.assert_allclose(got, run_onnxruntime("Resize", inputs, opset=10, mode=mode)[0], **TOL)


@pytest.mark.parametrize("factors", [(1, 1, 2, 3), (1, 1, 0.6, 0.5), (1, 1, 1.7, 0.8)])
def test_tf_half_pixel_for_nn_of_resize_11_matches_onnxruntime(factors):
    inputs = [floats(1, 1, 4, 6), Initializer(np.zeros(0, np.float32)), scales(*factors)]
    attrs = dict(opset=11, mode="nearest", coordinate_transformation_mode="tf_half_pixel_for_nn")
    got = run_tinyinfer("Resize", inputs, **attrs)[0]
    np.testing.assert_array_equal(got, run_onnxruntime("Resize", inputs, **attrs)[0])


@pytest.mark.parametrize("opset", [7, 9])
@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_upsample_matches_onnxruntime(opset, mode):
    x = floats(1, 2, 3, 4)
    factors = [1.0, 1.0, 2.0, 2.5]
    if opset == 7:
        inputs, attrs = [x], dict(opset=7, mode=mode, scales=factors)
    else:
        inputs, attrs = [x, scales(*factors)], dict(opset=9, mode=mode)
    got = run_tinyinfer("Upsample", inputs, **attrs)[0]
    np.testing.assert_allclose(got, run_onnxruntime("Upsample", inputs, **attrs)[0], **TOL)


# ---------------------------------------------------------------------------- math properties
@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize("mode", ["nearest", "linear", "cubic"])
def test_scale_one_is_identity(mode, transform):
    x = floats(2, 3, 4, 5)
    got = resize(x, scale=scales(1, 1, 1, 1), mode=mode, coordinate_transformation_mode=transform)
    np.testing.assert_array_equal(got, x)
    antialias = int(mode != "nearest")
    got = resize(x, size=sizes(2, 3, 4, 5), mode=mode, coordinate_transformation_mode=transform, antialias=antialias)
    np.testing.assert_array_equal(got, x)


@pytest.mark.parametrize("transform", ["half_pixel", "asymmetric", "pytorch_half_pixel"])
def test_nearest_upsample_by_two_repeats_pixels(transform):
    x = floats(1, 2, 3, 4)
    got = resize(x, scale=scales(1, 1, 2, 2), mode="nearest", coordinate_transformation_mode=transform)
    np.testing.assert_array_equal(got, x.repeat(2, axis=2).repeat(2, axis=3))


def test_linear_align_corners_reproduces_a_ramp():
    """Linear interpolation is exact on a linear function, and align_corners keeps its ends."""
    x = np.linspace(-1.0, 3.0, 5, dtype=np.float32)[None, :]
    got = resize(x, size=sizes(1, 13), mode="linear", coordinate_transformation_mode="align_corners")
    np.testing.assert_allclose(got[0], np.linspace(-1.0, 3.0, 13), **TOL)


def test_antialias_downsample_averages_constant_regions():
    """Antialias weights are normalised: a constant image stays constant at any scale."""
    x = np.full((1, 1, 9, 11), 4.25, dtype=np.float32)
    for mode in ("linear", "cubic"):
        got = resize(x, scale=scales(1, 1, 0.3, 0.45), mode=mode, antialias=1)
        np.testing.assert_allclose(got, 4.25, **TOL)


def test_zero_sized_output():
    got = resize(floats(1, 3), scale=scales(1, 0.2), mode="linear")
    assert got.shape == (1, 0)


# ---------------------------------------------------------------------------- shape inference
def test_infer_keeps_symbolic_dims_with_scale_one():
    value = infer_resize(("N", 3, "H", 8), scale=scales(1, 1, 2, 2), mode="linear")
    assert value.shape == ("N", 3, None, 16)


def test_infer_uses_sizes_for_symbolic_input():
    value = infer_resize(("N", 3, "H", "W"), size=sizes(1, 3, 32, 48))
    assert value.shape == (1, 3, 32, 48)
    value = infer_resize(("N", 3, "H", "W"), size=sizes(32, 48), axes=[2, 3])
    assert value.shape == ("N", 3, 32, 48)


def test_infer_with_scales_known_only_at_run_time():
    value = infer_resize((1, 3, 8, 8), scale=Value("scales", np.float32, (4,)), mode="nearest")
    assert value.shape == (None, None, None, None)
    value = infer_resize((1, 3, 8, 8), scale=Value("scales", np.float32, (2,)), axes=[2, 3])
    assert value.shape == (1, 3, None, None)


# ---------------------------------------------------------------------------- errors
def test_scales_and_sizes_together_are_refused():
    with pytest.raises(ShapeInferenceError, match="resize_node.*either 'scales' or 'sizes', not both"):
        infer_resize((1, 1, 4, 4), scale=scales(1, 1, 2, 2), size=sizes(1, 1, 8, 8))


def test_neither_scales_nor_sizes_is_refused():
    with pytest.raises(ShapeInferenceError, match="one of 'scales' or 'sizes'"):
        infer_resize((1, 1, 4, 4), roi=Initializer(np.zeros(0, np.float32)))


@pytest.mark.parametrize(
    "attrs, message",
    [
        ({"mode": "bilinear"}, "mode must be one of"),
        ({"coordinate_transformation_mode": "corners"}, "coordinate_transformation_mode must be one of"),
        ({"nearest_mode": "nearest"}, "nearest_mode must be one of"),
        ({"keep_aspect_ratio_policy": "fit"}, "keep_aspect_ratio_policy must be one of"),
        ({"axes": [2, 2]}, "repeats an axis"),
    ],
)
def test_bad_attributes_are_refused(attrs, message):
    with pytest.raises(InvalidAttributeError, match=f"resize_node.*{message}"):
        infer_resize((1, 1, 4, 4), scale=scales(1, 1, 2, 2), **attrs)


def test_tf_half_pixel_for_nn_is_gone_in_opset_13():
    with pytest.raises(InvalidAttributeError, match="coordinate_transformation_mode"):
        infer_resize((1, 1, 4, 4), scale=scales(1, 1, 2, 2), opset=13,
                     coordinate_transformation_mode="tf_half_pixel_for_nn")


def test_cubic_is_not_in_resize_10():
    with pytest.raises(InvalidAttributeError, match="mode must be one of"):
        run_tinyinfer("Resize", [floats(1, 4), scales(1, 2)], opset=10, mode="cubic")


def test_wrong_number_of_scales_is_refused():
    with pytest.raises(ShapeInferenceError, match="scales has 2 values, expected one per resized axis \\(4\\)"):
        infer_resize((1, 1, 4, 4), scale=scales(2, 2))


def test_tf_crop_and_resize_needs_roi():
    with pytest.raises(ShapeInferenceError, match="needs the 'roi' input"):
        resize(floats(1, 1, 4, 4), size=sizes(1, 1, 3, 3), coordinate_transformation_mode="tf_crop_and_resize")


def test_scales_fed_at_run_time_are_checked_too():
    with pytest.raises(TinyInferError, match="scales must be positive"):
        run_tinyinfer("Resize", [floats(1, 4), None, np.array([1, -2], np.float32)], opset=19)
