"""Vision ops against ONNX Runtime, onnx.reference, per-sample loops and identities.

Oracles:

* ONNX Runtime on one-node models wherever it implements the case (2-D GridSample in every
  mode, 3-D in linear/nearest; AffineGrid; RoiAlign; NonMaxSuppression; MaxUnpool without
  ``output_shape``; Col2Im; DeformConv; Conv for the DeformConv identity).
* ``onnx.reference`` where ONNX Runtime does not run the case (N-d cubic and 1-D GridSample)
  and for DeformConv.
* Loops written here: RoiAlign's average by its definition (every sample of every bin, one at
  a time), greedy NMS box by box, Col2Im block by block.
* Identities: an identity affine grid makes GridSample reproduce its input; DeformConv with
  zero offsets is Conv; unpooling then pooling gives back the pooled values.

Tolerance: interpolation sums at most 64 products of values ~1 in float32, so errors are a
few float32 ulps: ``rtol=1e-5, atol=1e-5``. Gathers (nearest), NMS indices and MaxUnpool
are compared exactly.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from onnx_oracle import Initializer, infer_outputs, run_onnxruntime, run_reference, run_tinyinfer

from tinyinfer.errors import InvalidAttributeError, ShapeInferenceError, TinyInferError
from tinyinfer.ops import vision

FLOAT32 = dict(rtol=1e-5, atol=1e-5)


def random(shape, seed=0, low=None, high=None):
    rng = np.random.default_rng(seed)
    if low is not None:
        return rng.uniform(low, high, shape).astype(np.float32)
    return rng.standard_normal(shape).astype(np.float32)


def assert_close(got, want, **tolerance):
    assert got.shape == want.shape, f"shape {got.shape}, expected {want.shape}"
    assert got.dtype == want.dtype, f"dtype {got.dtype}, expected {want.dtype}"
    np.testing.assert_allclose(got, want, **(tolerance or FLOAT32))


# ============================================================================ GridSample
@pytest.mark.parametrize("align_corners", [0, 1])
@pytest.mark.parametrize("padding_mode", ["zeros", "border", "reflection"])
@pytest.mark.parametrize("mode", ["linear", "nearest", "cubic"])
def test_grid_sample_2d_matches_onnxruntime(mode, padding_mode, align_corners):
    x = random((2, 3, 5, 6))
    grid = random((2, 4, 7, 2), seed=1, low=-1.4, high=1.4)  # some points fall outside
    attrs = dict(mode=mode, padding_mode=padding_mode, align_corners=align_corners, opset=20)
    (got,) = run_tinyinfer("GridSample", [x, grid], **attrs)
    (want,) = run_onnxruntime("GridSample", [x, grid], **attrs)
    assert_close(got, want)


@pytest.mark.parametrize("align_corners", [0, 1])
@pytest.mark.parametrize("padding_mode", ["zeros", "border", "reflection"])
@pytest.mark.parametrize("mode", ["linear", "nearest"])
def test_grid_sample_3d_matches_onnxruntime(mode, padding_mode, align_corners):
    x = random((1, 2, 3, 4, 5))
    grid = random((1, 2, 3, 4, 3), seed=2, low=-1.3, high=1.3)
    attrs = dict(mode=mode, padding_mode=padding_mode, align_corners=align_corners, opset=20)
    (got,) = run_tinyinfer("GridSample", [x, grid], **attrs)
    (want,) = run_onnxruntime("GridSample", [x, grid], **attrs)
    assert_close(got, want)


@pytest.mark.parametrize(
    "x_shape, grid_shape, mode, padding_mode",
    [((1, 2, 3, 3, 4), (1, 2, 2, 2, 3), "cubic", "zeros"),
     ((1, 1, 3, 4, 3), (1, 2, 1, 3, 3), "cubic", "reflection"),
     ((2, 2, 7), (2, 5, 1), "linear", "reflection"),
     ((2, 2, 7), (2, 5, 1), "cubic", "zeros")],
    ids=["3d_cubic_zeros", "3d_cubic_reflection", "1d_linear", "1d_cubic"],
)
def test_grid_sample_nd_matches_onnx_reference(x_shape, grid_shape, mode, padding_mode):
    x = random(x_shape, seed=3)
    grid = random(grid_shape, seed=4, low=-1.3, high=1.3)
    attrs = dict(mode=mode, padding_mode=padding_mode, align_corners=0, opset=20)
    (got,) = run_tinyinfer("GridSample", [x, grid], **attrs)
    (want,) = run_reference("GridSample", [x, grid], **attrs)
    assert_close(got, want)


@pytest.mark.parametrize("mode", ["bilinear", "bicubic", "nearest"])
def test_grid_sample_16_mode_names_match_onnxruntime(mode):
    x = random((1, 2, 4, 5))
    grid = random((1, 3, 3, 2), seed=5, low=-1.2, high=1.2)
    (got,) = run_tinyinfer("GridSample", [x, grid], mode=mode, padding_mode="border", opset=16)
    (want,) = run_onnxruntime("GridSample", [x, grid], mode=mode, padding_mode="border", opset=16)
    assert_close(got, want)


@pytest.mark.parametrize("align_corners", [0, 1])
@pytest.mark.parametrize("mode", ["linear", "nearest", "cubic"])
@pytest.mark.parametrize("size", [(2, 3, 5, 7), (1, 2, 3, 4, 5)], ids=["2d", "3d"])
def test_identity_affine_grid_reproduces_the_input(size, mode, align_corners):
    # The identity grid points at pixel centres (corner centres at +-1 with align_corners),
    # where every interpolation kernel is 1 at its own pixel and 0 at the others.
    rank = len(size) - 2
    x = random(size, seed=6)
    theta = np.tile(np.eye(rank, rank + 1, dtype=np.float32), (size[0], 1, 1))
    (grid,) = run_tinyinfer("AffineGrid", [theta, np.array(size, dtype=np.int64)], align_corners=align_corners)
    (y,) = run_tinyinfer("GridSample", [x, grid], mode=mode, align_corners=align_corners, opset=20)
    np.testing.assert_allclose(y, x, rtol=1e-5, atol=1e-5)


def test_grid_sample_nearest_rounds_half_to_even():
    x = np.arange(5, dtype=np.float32).reshape(1, 1, 1, 5)
    # align_corners=1 over 5 pixels: pixel = 2 * (g + 1), so these sit at 0.5, 1.5, 2.5, 3.5.
    g = np.array([-0.75, -0.25, 0.25, 0.75], dtype=np.float32)
    grid = np.stack([g, np.zeros_like(g)], axis=-1).reshape(1, 1, 4, 2)
    (y,) = run_tinyinfer("GridSample", [x, grid], mode="nearest", align_corners=1, opset=20)
    np.testing.assert_array_equal(y.reshape(-1), [0, 2, 2, 4])


def test_grid_sample_nearest_gathers_integers_exactly():
    x = np.random.default_rng(0).integers(-100, 100, (1, 2, 4, 5)).astype(np.int32)
    grid = random((1, 3, 3, 2), seed=7, low=-1.2, high=1.2)
    (got,) = run_tinyinfer("GridSample", [x, grid], mode="nearest", opset=20)
    (as_float,) = run_tinyinfer("GridSample", [x.astype(np.float32), grid], mode="nearest", opset=20)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, as_float.astype(np.int32))


def test_grid_sample_shape_inference_keeps_symbols():
    x, grid = random((2, 3, 5, 6)), random((2, 7, 9, 2))
    (y,) = infer_outputs("GridSample", [x, grid], shapes={0: ("N", 3, "H", "W"), 1: ("N", 7, 9, 2)}, opset=20)
    assert y.shape == ("N", 3, 7, 9) and y.dtype == np.float32


def test_grid_sample_old_mode_name_is_refused_at_opset_20():
    with pytest.raises(InvalidAttributeError, match="mode must be one of"):
        run_tinyinfer("GridSample", [random((1, 1, 3, 3)), random((1, 2, 2, 2))], mode="bilinear", opset=20)


def test_grid_sample_grid_of_the_wrong_rank_is_a_shape_error():
    with pytest.raises(ShapeInferenceError, match=r"grid must be \(N, \*output size, 2\)"):
        run_tinyinfer("GridSample", [random((1, 1, 3, 3)), random((1, 2, 2, 3))], opset=20)


def test_grid_sample_16_refuses_volumes():
    with pytest.raises(ShapeInferenceError, match="needs opset 20"):
        run_tinyinfer("GridSample", [random((1, 1, 2, 3, 3)), random((1, 2, 2, 2, 3))], opset=16)


# ============================================================================ AffineGrid
@pytest.mark.parametrize("align_corners", [0, 1])
@pytest.mark.parametrize("size", [(2, 3, 4, 5), (2, 1, 3, 4, 2)], ids=["2d", "3d"])
def test_affine_grid_matches_onnxruntime(size, align_corners):
    rank = len(size) - 2
    theta = random((size[0], rank, rank + 1), seed=8)
    inputs = [theta, np.array(size, dtype=np.int64)]
    (got,) = run_tinyinfer("AffineGrid", inputs, align_corners=align_corners, opset=20)
    (want,) = run_onnxruntime("AffineGrid", inputs, align_corners=align_corners, opset=20)
    assert_close(got, want)


def test_affine_grid_places_a_single_pixel_at_the_centre():
    # As PyTorch's affine_grid: a length-1 axis has its one position at 0, with or without
    # align_corners (ONNX Runtime gives -1 or 1 with align_corners).
    theta = np.tile(np.eye(2, 3, dtype=np.float32), (1, 1, 1))
    for align_corners in (0, 1):
        (grid,) = run_tinyinfer("AffineGrid", [theta, np.array([1, 1, 1, 3], dtype=np.int64)],
                                align_corners=align_corners)
        np.testing.assert_array_equal(grid[0, 0, :, 1], [0, 0, 0])


def test_affine_grid_shape_from_a_constant_or_a_fed_size():
    theta = random((2, 2, 3))
    (known,) = infer_outputs("AffineGrid", [theta, Initializer(np.array([2, 3, 4, 5], dtype=np.int64))], opset=20)
    assert known.shape == (2, 4, 5, 2)
    (fed,) = infer_outputs("AffineGrid", [theta, np.array([2, 3, 4, 5], dtype=np.int64)], opset=20)
    assert fed.shape == (2, None, None, 2)


def test_affine_grid_theta_must_match_the_size():
    with pytest.raises(ShapeInferenceError, match="size must be"):
        run_tinyinfer("AffineGrid", [random((2, 2, 3)), Initializer(np.array([2, 3, 4, 5, 6], dtype=np.int64))],
                      opset=20)


# ============================================================================ RoiAlign
ROIS = np.array([[0, 0, 9, 9], [1.3, 2.2, 7.7, 5.1], [-3, -2, 4, 3], [5, 5, 20, 14], [2, 2, 2.3, 2.4]],
                dtype=np.float32)
BATCH_INDICES = np.array([0, 1, 1, 0, 1], dtype=np.int64)


def naive_roi_align_average(x, rois, batch_indices, height, width, sampling_ratio, spatial_scale, half_pixel):
    """RoiAlign's average by its definition: every sample of every bin, one at a time."""
    _, channels, rows, cols = x.shape
    y = np.zeros((len(rois), channels, height, width))
    shift = 0.5 if half_pixel else 0.0
    for r, (x1, y1, x2, y2) in enumerate(rois.astype(np.float64)):
        x1, y1, x2, y2 = (v * spatial_scale - shift for v in (x1, y1, x2, y2))
        roi_w, roi_h = x2 - x1, y2 - y1
        if not half_pixel:
            roi_w, roi_h = max(roi_w, 1.0), max(roi_h, 1.0)
        bin_h, bin_w = roi_h / height, roi_w / width
        grid_h = sampling_ratio or int(np.ceil(roi_h / height))
        grid_w = sampling_ratio or int(np.ceil(roi_w / width))
        for ph, pw in itertools.product(range(height), range(width)):
            total = np.zeros(channels)
            for iy, ix in itertools.product(range(grid_h), range(grid_w)):
                sy = y1 + ph * bin_h + (iy + 0.5) * bin_h / grid_h
                sx = x1 + pw * bin_w + (ix + 0.5) * bin_w / grid_w
                total += bilinear(x[batch_indices[r]], sy, sx, rows, cols)
            y[r, :, ph, pw] = total / max(grid_h * grid_w, 1)
    return y


def bilinear(image, sy, sx, rows, cols):
    """Mask R-CNN's bilinear sample: 0 beyond one pixel outside, edge-clamped inside."""
    if sy < -1 or sy > rows or sx < -1 or sx > cols:
        return np.zeros(image.shape[0])
    sy, sx = max(sy, 0.0), max(sx, 0.0)
    y0, x0 = min(int(sy), rows - 1), min(int(sx), cols - 1)
    y1, x1 = min(y0 + 1, rows - 1), min(x0 + 1, cols - 1)
    ly = 0.0 if y0 == rows - 1 else sy - y0
    lx = 0.0 if x0 == cols - 1 else sx - x0
    return ((1 - ly) * (1 - lx) * image[:, y0, x0] + (1 - ly) * lx * image[:, y0, x1]
            + ly * (1 - lx) * image[:, y1, x0] + ly * lx * image[:, y1, x1])


@pytest.mark.parametrize("spatial_scale", [1.0, 0.5])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
@pytest.mark.parametrize("transform", ["half_pixel", "output_half_pixel"])
def test_roi_align_average_matches_per_sample_loops(transform, sampling_ratio, spatial_scale):
    x = random((2, 3, 10, 12), seed=9)
    attrs = dict(coordinate_transformation_mode=transform, sampling_ratio=sampling_ratio,
                 spatial_scale=spatial_scale, output_height=3, output_width=4)
    (got,) = run_tinyinfer("RoiAlign", [x, ROIS, BATCH_INDICES], **attrs)
    want = naive_roi_align_average(x, ROIS, BATCH_INDICES, 3, 4, sampling_ratio, spatial_scale,
                                   transform == "half_pixel")
    np.testing.assert_allclose(got, want, **FLOAT32)


@pytest.mark.parametrize("sampling_ratio", [0, 1, 2])
@pytest.mark.parametrize("transform", ["half_pixel", "output_half_pixel"])
@pytest.mark.parametrize("mode", ["avg", "max"])
def test_roi_align_matches_onnxruntime(mode, transform, sampling_ratio):
    x = random((2, 3, 10, 12), seed=10)
    attrs = dict(mode=mode, coordinate_transformation_mode=transform, sampling_ratio=sampling_ratio,
                 spatial_scale=0.75, output_height=2, output_width=3, opset=16)
    (got,) = run_tinyinfer("RoiAlign", [x, ROIS, BATCH_INDICES], **attrs)
    (want,) = run_onnxruntime("RoiAlign", [x, ROIS, BATCH_INDICES], **attrs)
    assert_close(got, want)


@pytest.mark.parametrize("mode", ["avg", "max"])
def test_roi_align_in_blocks_of_one_region_gives_the_same_result(mode, monkeypatch):
    x = random((2, 3, 10, 12), seed=12)
    attrs = dict(mode=mode, output_height=3, output_width=2)
    (whole,) = run_tinyinfer("RoiAlign", [x, ROIS, BATCH_INDICES], **attrs)
    monkeypatch.setattr(vision, "BLOCK_ELEMENTS", 1)
    (one_by_one,) = run_tinyinfer("RoiAlign", [x, ROIS, BATCH_INDICES], **attrs)
    np.testing.assert_array_equal(one_by_one, whole)


def test_roi_align_10_has_no_half_pixel_shift():
    x = random((2, 3, 10, 12), seed=11)
    (old,) = run_tinyinfer("RoiAlign", [x, ROIS, BATCH_INDICES], opset=10, output_height=2, output_width=2)
    (explicit,) = run_tinyinfer("RoiAlign", [x, ROIS, BATCH_INDICES], opset=16, output_height=2, output_width=2,
                                coordinate_transformation_mode="output_half_pixel")
    np.testing.assert_array_equal(old, explicit)


def test_roi_align_bad_mode_is_an_attribute_error():
    with pytest.raises(InvalidAttributeError, match="mode must be 'avg' or 'max'"):
        run_tinyinfer("RoiAlign", [random((1, 1, 4, 4)), ROIS[:1], BATCH_INDICES[:1]], mode="sum")


def test_roi_align_rois_must_hold_four_coordinates():
    with pytest.raises(ShapeInferenceError, match=r"rois must be \(num_rois, 4\)"):
        run_tinyinfer("RoiAlign", [random((1, 1, 4, 4)), ROIS[:, :3].copy(), BATCH_INDICES])


def test_roi_align_batch_index_out_of_range_is_refused():
    with pytest.raises(TinyInferError, match=r"batch_indices must lie in \[0, 1\)"):
        run_tinyinfer("RoiAlign", [random((1, 1, 4, 4)), ROIS, BATCH_INDICES])


# ============================================================================ NonMaxSuppression
def naive_nms(boxes, scores, limit, iou_threshold, score_threshold, center_point_box):
    """Greedy NMS box by box, per batch and class."""
    rows = []
    for b, c in itertools.product(range(scores.shape[0]), range(scores.shape[1])):
        candidates = [i for i in range(scores.shape[2])
                      if score_threshold is None or scores[b, c, i] > score_threshold]
        candidates.sort(key=lambda i: (-scores[b, c, i], i))
        kept = []
        for i in candidates:
            if len(kept) == limit:
                break
            if all(iou(boxes[b, i], boxes[b, k], center_point_box) <= iou_threshold for k in kept):
                kept.append(i)
        rows += [[b, c, i] for i in kept]
    return np.array(rows, dtype=np.int64).reshape(-1, 3)


def iou(first, second, center_point_box):
    def corners(box):
        if center_point_box:
            x, y, w, h = (float(v) for v in box)
            return y - h / 2, x - w / 2, y + h / 2, x + w / 2
        y1, x1, y2, x2 = (float(v) for v in box)
        return min(y1, y2), min(x1, x2), max(y1, y2), max(x1, x2)

    a, b = corners(first), corners(second)
    height = min(a[2], b[2]) - max(a[0], b[0])
    width = min(a[3], b[3]) - max(a[1], b[1])
    if height <= 0 or width <= 0:
        return 0.0
    intersection = height * width
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - intersection
    return intersection / union


def nms_inputs(limit, iou_threshold, score_threshold, seed=12):
    boxes = random((2, 20, 4), seed=seed, low=0, high=10)
    scores = random((2, 3, 20), seed=seed + 1, low=0, high=1)
    inputs = [boxes, scores, np.array([limit], dtype=np.int64), np.array([iou_threshold], dtype=np.float32)]
    if score_threshold is not None:
        inputs.append(np.array([score_threshold], dtype=np.float32))
    return inputs


@pytest.mark.parametrize("center_point_box", [0, 1])
@pytest.mark.parametrize("limit, iou_threshold, score_threshold", [(3, 0.3, None), (100, 0.0, 0.4), (100, 0.6, None),
                                                                   (5, 0.5, 0.2)])
def test_nms_matches_greedy_loops(limit, iou_threshold, score_threshold, center_point_box):
    inputs = nms_inputs(limit, iou_threshold, score_threshold)
    (got,) = run_tinyinfer("NonMaxSuppression", inputs, center_point_box=center_point_box)
    want = naive_nms(inputs[0], inputs[1], limit, iou_threshold, score_threshold, center_point_box)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("center_point_box", [0, 1])
@pytest.mark.parametrize("limit, iou_threshold, score_threshold", [(2, 0.5, None), (100, 0.3, 0.5)])
def test_nms_matches_onnxruntime(limit, iou_threshold, score_threshold, center_point_box):
    inputs = nms_inputs(limit, iou_threshold, score_threshold, seed=13)
    (got,) = run_tinyinfer("NonMaxSuppression", inputs, center_point_box=center_point_box, opset=11)
    (want,) = run_onnxruntime("NonMaxSuppression", inputs, center_point_box=center_point_box, opset=11)
    np.testing.assert_array_equal(got, want)


def test_nms_without_a_limit_selects_nothing():
    boxes, scores = nms_inputs(1, 0.5, None)[:2]
    (got,) = run_tinyinfer("NonMaxSuppression", [boxes, scores])
    assert got.shape == (0, 3) and got.dtype == np.int64


def test_nms_shape_inference_and_mismatched_inputs():
    boxes, scores = nms_inputs(1, 0.5, None)[:2]
    (selected,) = infer_outputs("NonMaxSuppression", [boxes, scores])
    assert selected.shape == (None, 3) and selected.dtype == np.int64
    with pytest.raises(ShapeInferenceError, match="disagree"):
        infer_outputs("NonMaxSuppression", [boxes, scores[:, :, :5].copy()])


# ============================================================================ MaxUnpool
def test_unpooling_then_pooling_gives_back_the_pooled_values():
    x = random((2, 3, 6, 7), seed=14)
    pooled, indices = run_onnxruntime("MaxPool", [x], 2, kernel_shape=[2, 2], strides=[2, 2])
    (unpooled,) = run_tinyinfer("MaxUnpool", [pooled, indices, np.array(x.shape, dtype=np.int64)],
                                kernel_shape=[2, 2], strides=[2, 2])
    assert unpooled.shape == x.shape
    # Every pooled value sits where MaxPool found it; everything else is zero.
    np.testing.assert_array_equal(unpooled.reshape(-1)[indices.reshape(-1)], pooled.reshape(-1))
    assert np.count_nonzero(unpooled) == np.count_nonzero(pooled)
    (again,) = run_onnxruntime("MaxPool", [np.where(unpooled == 0, -np.inf, unpooled).astype(np.float32)],
                               kernel_shape=[2, 2], strides=[2, 2])
    np.testing.assert_array_equal(again, pooled)


@pytest.mark.parametrize(
    "shape, attrs",
    [((1, 2, 3, 3), dict(kernel_shape=[3, 3], strides=[2, 2])),
     ((2, 1, 4), dict(kernel_shape=[2], strides=[2], pads=[1, 0])),
     ((1, 1, 2, 2, 3), dict(kernel_shape=[2, 2, 2]))],
    ids=["2d", "1d_padded", "3d"],
)
def test_max_unpool_matches_onnxruntime(shape, attrs):
    x = random(shape, seed=15)
    rank = len(shape) - 2
    strides, pads = attrs.get("strides", [1] * rank), attrs.get("pads", [0] * 2 * rank)
    out_spatial = [(d - 1) * s - pads[i] - pads[rank + i] + k
                   for i, (d, s, k) in enumerate(zip(shape[2:], strides, attrs["kernel_shape"]))]
    size = int(np.prod([*shape[:2], *out_spatial]))
    indices = np.random.default_rng(0).choice(size, x.size, replace=False).reshape(shape).astype(np.int64)
    (got,) = run_tinyinfer("MaxUnpool", [x, indices], **attrs)
    (want,) = run_onnxruntime("MaxUnpool", [x, indices], **attrs)
    assert_close(got, want, rtol=0, atol=0)


def test_max_unpool_output_shape_matches_onnxruntime():
    # I indexes the output_shape tensor (ONNX Runtime, PyTorch); onnx.reference and the
    # conformance test test_maxunpool_export_with_output_shape read it differently.
    x = random((1, 2, 2, 2), seed=16)
    indices = np.array([[[[0, 3], [9, 15]], [[31, 32], [48, 59]]]], dtype=np.int64)
    inputs = [x, indices, np.array([1, 2, 5, 6], dtype=np.int64)]
    (got,) = run_tinyinfer("MaxUnpool", inputs, kernel_shape=[2, 2], strides=[2, 2])
    (want,) = run_onnxruntime("MaxUnpool", inputs, kernel_shape=[2, 2], strides=[2, 2])
    assert_close(got, want, rtol=0, atol=0)


def test_max_unpool_index_outside_the_output_is_refused():
    x, indices = random((1, 1, 2, 2)), np.array([0, 1, 2, 9], dtype=np.int64).reshape(1, 1, 2, 2)
    with pytest.raises(TinyInferError, match=r"must lie in \[0, 9\)"):
        run_tinyinfer("MaxUnpool", [x, indices, np.array([1, 1, 3, 3], dtype=np.int64)], kernel_shape=[2, 2],
                      strides=[2, 2])


def test_max_unpool_needs_kernel_shape():
    with pytest.raises(InvalidAttributeError, match="kernel_shape"):
        run_tinyinfer("MaxUnpool", [random((1, 1, 2, 2)), np.zeros((1, 1, 2, 2), dtype=np.int64)])


# ============================================================================ Col2Im
def naive_col2im(data, image_shape, block_shape, strides, pads, dilations):
    """Add every (channel, tap) value of every block into the image, one at a time."""
    rank = len(image_shape)
    n, rows, _ = data.shape
    channels = rows // int(np.prod(block_shape))
    blocks = [(image_shape[i] + pads[i] + pads[rank + i] - dilations[i] * (block_shape[i] - 1) - 1) // strides[i] + 1
              for i in range(rank)]
    image = np.zeros((n, channels, *image_shape))
    columns = data.reshape(n, channels, int(np.prod(block_shape)), -1)
    for position, block in enumerate(itertools.product(*(range(b) for b in blocks))):
        for tap_index, tap in enumerate(itertools.product(*(range(k) for k in block_shape))):
            where = [block[i] * strides[i] - pads[i] + tap[i] * dilations[i] for i in range(rank)]
            if all(0 <= where[i] < image_shape[i] for i in range(rank)):
                image[(slice(None), slice(None), *where)] += columns[:, :, tap_index, position]
    return image


COL2IM_CASES = [
    ((5, 6), (2, 3), {}),
    ((7, 8), (3, 2), dict(strides=[2, 3], pads=[1, 0, 2, 1], dilations=[2, 1])),
    ((4, 5, 6), (2, 2, 3), dict(strides=[1, 2, 2])),
    ((9,), (3,), dict(strides=[2], pads=[1, 1])),
]


@pytest.mark.parametrize("image_shape, block_shape, attrs", COL2IM_CASES, ids=["2d", "strided_padded", "3d", "1d"])
def test_col2im_matches_loops_and_onnxruntime(image_shape, block_shape, attrs):
    rank = len(image_shape)
    strides = attrs.get("strides", [1] * rank)
    pads = attrs.get("pads", [0] * 2 * rank)
    dilations = attrs.get("dilations", [1] * rank)
    blocks = [(image_shape[i] + pads[i] + pads[rank + i] - dilations[i] * (block_shape[i] - 1) - 1) // strides[i] + 1
              for i in range(rank)]
    data = random((2, 3 * int(np.prod(block_shape)), int(np.prod(blocks))), seed=17)
    inputs = [data, np.array(image_shape, dtype=np.int64), np.array(block_shape, dtype=np.int64)]
    (got,) = run_tinyinfer("Col2Im", inputs, opset=18, **attrs)
    np.testing.assert_allclose(got, naive_col2im(data, image_shape, block_shape, strides, pads, dilations), **FLOAT32)
    if rank == 2:  # ONNX Runtime's Col2Im is 2-D only
        (want,) = run_onnxruntime("Col2Im", inputs, opset=18, **attrs)
        assert_close(got, want)


def test_col2im_shape_inference_with_constant_shapes():
    data = random((2, 12, 20))
    image, block = Initializer(np.array([5, 6], dtype=np.int64)), Initializer(np.array([2, 2], dtype=np.int64))
    (y,) = infer_outputs("Col2Im", [data, image, block], shapes={0: ("N", 12, 20)}, opset=18)
    assert y.shape == ("N", 3, 5, 6)


def test_col2im_block_count_must_match_the_image():
    data = random((1, 4, 7))
    with pytest.raises(ShapeInferenceError, match="20"):
        run_tinyinfer("Col2Im", [data, Initializer(np.array([5, 6], dtype=np.int64)),
                                 Initializer(np.array([2, 2], dtype=np.int64))], opset=18)


# ============================================================================ DeformConv
DEFORM_ATTRS = dict(group=2, offset_group=2, strides=[2, 2], pads=[1, 0, 1, 1], dilations=[1, 2])


def test_deform_conv_matches_onnxruntime():
    x = random((2, 4, 6, 7), seed=18)
    w = random((6, 2, 3, 3), seed=19)
    offset = random((2, 2 * 9 * 2, 3, 2), seed=20)
    mask = random((2, 2 * 9, 3, 2), seed=21, low=0, high=1)
    bias = random((6,), seed=22)
    (got,) = run_tinyinfer("DeformConv", [x, w, offset, bias, mask], opset=22, **DEFORM_ATTRS)
    (want,) = run_onnxruntime("DeformConv", [x, w, offset, bias, mask], opset=22, **DEFORM_ATTRS)
    assert_close(got, want, rtol=1e-5, atol=2e-5)


def test_deform_conv_matches_onnx_reference():
    x = random((1, 2, 5, 5), seed=23)
    w = random((3, 2, 2, 2), seed=24)
    offset = random((1, 8, 5, 5), seed=25) * 2  # offsets of a few pixels, some leaving the image
    (got,) = run_tinyinfer("DeformConv", [x, w, offset], kernel_shape=[2, 2], pads=[1, 1, 0, 0], opset=19)
    (want,) = run_reference("DeformConv", [x, w, offset], kernel_shape=[2, 2], pads=[1, 1, 0, 0], opset=19)
    assert_close(got, want)


@pytest.mark.parametrize(
    "x_shape, w_shape, attrs",
    [((2, 3, 9), (4, 3, 3), dict(strides=[2], pads=[1, 2])),
     ((1, 4, 6, 5), (4, 2, 3, 2), dict(group=2, dilations=[2, 1], pads=[2, 1, 1, 0])),
     ((1, 2, 4, 5, 3), (3, 2, 2, 3, 2), dict(strides=[1, 2, 1], pads=[0, 1, 1, 1, 1, 0]))],
    ids=["1d", "2d_grouped", "3d"],
)
def test_deform_conv_with_zero_offsets_is_conv(x_shape, w_shape, attrs):
    x, w = random(x_shape, seed=26), random(w_shape, seed=27)
    bias = random((w_shape[0],), seed=28)
    (conv,) = run_onnxruntime("Conv", [x, w, bias], **attrs)
    rank = len(x_shape) - 2
    offset = np.zeros((x_shape[0], int(np.prod(w_shape[2:])) * rank, *conv.shape[2:]), dtype=np.float32)
    (got,) = run_tinyinfer("DeformConv", [x, w, offset, bias], opset=22, **attrs)
    assert_close(got, conv)


def test_deform_conv_shape_inference():
    x, w = random((2, 4, 6, 7)), random((6, 2, 3, 3))
    offset = random((2, 36, 3, 2))
    (y,) = infer_outputs("DeformConv", [x, Initializer(w), offset], shapes={0: ("N", 4, 6, 7)}, opset=22,
                         **DEFORM_ATTRS)
    assert y.shape == ("N", 6, 3, 2)


def test_deform_conv_offset_of_the_wrong_size_is_a_shape_error():
    x, w = random((1, 2, 5, 5)), random((3, 2, 3, 3))
    with pytest.raises(ShapeInferenceError, match="offset must be"):
        run_tinyinfer("DeformConv", [x, w, random((1, 9, 3, 3))], opset=22)
