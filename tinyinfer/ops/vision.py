"""Vision ops: sampling at real-valued positions, region pooling, box suppression, unpooling.

* **GridSample** reads ``X`` at the positions of a grid (Jaderberg et al., "Spatial
  Transformer Networks", 2015), **AffineGrid** makes such a grid from affine matrices, and
  **DeformConv** is a convolution whose kernel taps sit at learned offsets (Dai et al.,
  "Deformable Convolutional Networks", 2017; Zhu et al., "Deformable ConvNets v2", 2018).
  All three come down to *interpolating at real coordinates*: every output point has, per
  spatial axis, a few taps (1 for nearest, 2 for linear, 4 for Keys' cubic) with weights;
  N-linear and N-cubic interpolation take the outer product of the per-axis taps. The
  reference computes the taps of every point at once and does one gather per tap
  combination (4 for bilinear, 16 for bicubic), whatever the image size.
* **RoiAlign** (He et al., "Mask R-CNN", 2017) averages (or maxes) bilinear samples on a
  regular grid inside each bin of each region. Bilinear weights are separable, so average
  pooling is two matrix products per region: ``Y[r] = A_y[r] @ X[image of r] @ A_x[r]^T``,
  where ``A_y[r, bin, row]`` sums the weights that the bin's samples give to that row.
* **NonMaxSuppression** is greedy: per (batch, class), take the best remaining box and drop
  the boxes that overlap it too much. The loop runs over selections, all (batch, class)
  pairs advancing together, each step one vectorised IoU of the chosen boxes against all.
* **MaxUnpool** scatters values back to the positions MaxPool took them from; **Col2Im**
  adds column blocks back into an image (the ``col2im`` of ConvTranspose, from ``conv.py``).

The spec versions followed are named in each op's docstring; where the spec leaves a
detail open, the choice of ONNX Runtime (and of onnx.reference, which the conformance tests
are generated with) is followed and named.
"""

from __future__ import annotations

import itertools

import numpy as np

from .base import REQUIRED, Op, bad_attribute, const_ints, dim_product, fail, out, register, require_inputs
from .conv import Window, _compute_dtype, col2im
from .resize import keys_cubic

#: Keys' cubic coefficient GridSample uses (PyTorch's and ONNX Runtime's bicubic).
CUBIC_A = -0.75
PADDING_MODES = ("zeros", "border", "reflection")
#: RoiAlign pools as many regions at a time as keep its intermediate arrays near this many
#: elements (a large region has many samples: ``ceil(region size / bins)`` per bin and axis).
BLOCK_ELEMENTS = 1 << 22


# ============================================================================ GridSample
@register
class GridSample(Op):
    """``Y[n, c, p] = interpolation of X[n, c] at grid[n, p]`` for every output point ``p``.

    ``grid`` is ``(N, *out, r)`` for an ``X`` of shape ``(N, C, D1, ..., Dr)``; its last axis
    lists normalised coordinates in ``[-1, 1]`` *innermost axis first* (x, then y, then z).
    A coordinate is mapped to pixel units (``align_corners`` decides whether -1 and 1 are the
    centres or the outer edges of the corner pixels), then, if it falls outside the image,
    clamped (``border``; cubic clamps each tap instead, as PyTorch) or mirrored
    (``reflection``); taps outside the image read 0 (``zeros``), the edge (``border``) or the
    mirror image (``reflection``). ``nearest`` rounds half to even. Spec: GridSample-22
    (N-d since GridSample-20; GridSample-16 was 2-D, with the mode names ``bilinear`` and
    ``bicubic``).
    """

    op_type = "GridSample"
    since = 16
    attributes = {"align_corners": 0, "mode": "linear", "padding_mode": "zeros"}
    #: GridSample-16 names -> GridSample-20 names.
    OLD_MODES = {"bilinear": "linear", "bicubic": "cubic"}

    def defaults(self, version):
        return {**self.attributes, "mode": "bilinear"} if version < 20 else self.attributes

    def check(self, node):
        attrs = node.attrs
        modes = ("bilinear", "nearest", "bicubic") if node.version < 20 else ("linear", "nearest", "cubic")
        if attrs["mode"] not in modes:
            raise bad_attribute(node, f"mode must be one of {list(modes)} at opset {node.version}, got {attrs['mode']!r}")
        if attrs["padding_mode"] not in PADDING_MODES:
            raise bad_attribute(node, f"padding_mode must be one of {list(PADDING_MODES)}, got {attrs['padding_mode']!r}")
        if attrs["align_corners"] not in (0, 1):
            raise bad_attribute(node, f"align_corners must be 0 or 1, got {attrs['align_corners']}")

    def infer(self, node, inputs):
        require_inputs(node, inputs, 2)
        x, grid = inputs
        if x.shape is not None and len(x.shape) < 3:
            raise fail(node, f"X must be (N, C, D1, ...) with at least one spatial axis, got shape {list(x.shape)}")
        if x.shape is not None and node.version < 20 and len(x.shape) != 4:
            raise fail(node, f"GridSample-{node.version} takes a 4-D X (N, C, H, W), got shape {list(x.shape)}; "
                             f"N-d sampling needs opset 20")
        if x.shape is None or grid.shape is None:
            return [out(node, 0, x.dtype, None)]
        rank = len(x.shape) - 2
        if len(grid.shape) != rank + 2 or _differs(grid.shape[-1], rank) or _differs(grid.shape[0], x.shape[0]):
            raise fail(node, f"grid must be (N, *output size, {rank}) for X of shape {list(x.shape)} "
                             f"(one coordinate per spatial axis), got {list(grid.shape)}")
        return [out(node, 0, x.dtype, (x.shape[0], x.shape[1], *grid.shape[1:-1]))]

    def reference(self, node, x, grid):
        mode = self.OLD_MODES.get(node.attrs["mode"], node.attrs["mode"])
        padding, align_corners = node.attrs["padding_mode"], bool(node.attrs["align_corners"])
        spatial = x.shape[2:]
        rank = len(spatial)
        # Coordinates in the grid's precision (as ONNX Runtime computes them), so that
        # rounding ties in nearest mode fall the same way.
        grid = grid.astype(_compute_dtype(grid.dtype), copy=False)
        coordinates = []
        for axis, length in enumerate(spatial):
            c = _unnormalize(grid[..., rank - 1 - axis], length, align_corners)
            if mode == "nearest":
                c = np.rint(c)  # half to even, as PyTorch
            if mode != "cubic" or padding != "border":
                # Cubic sampling with border padding clamps each tap, not the coordinate
                # (as PyTorch and ONNX Runtime do; onnx.reference clamps the coordinate).
                c = _bring_inside(c, length, padding, align_corners)
            coordinates.append(c)
        return sample(x, coordinates, mode, padding, align_corners)


def _unnormalize(coordinate: np.ndarray, length: int, align_corners: bool) -> np.ndarray:
    """Normalised ``[-1, 1]`` to pixel units: corner centres (align_corners) or outer edges."""
    if align_corners:
        return (coordinate + 1) / 2 * (length - 1)
    return ((coordinate + 1) * length - 1) / 2


def _bounds(length: int, align_corners: bool) -> tuple[float, float]:
    """The span a coordinate must lie in: corner centres, or the image's outer edges."""
    return (0.0, length - 1.0) if align_corners else (-0.5, length - 0.5)


def _bring_inside(c: np.ndarray, length: int, padding: str, align_corners: bool) -> np.ndarray:
    """A coordinate outside the image, clamped (border) or mirrored (reflection) back in."""
    if padding == "zeros":
        return c
    low, high = _bounds(length, align_corners)
    outside = (c < low) | (c > high)
    if padding == "border":
        return np.where(outside, np.clip(c, 0, length - 1), c)
    return np.where(outside, _reflect(c, low, high), c)


def _reflect(c: np.ndarray, low: float, high: float) -> np.ndarray:
    """Mirror ``c`` at ``low`` and ``high`` until it lies between them (a triangle wave)."""
    span = high - low
    if span <= 0:
        return np.full_like(c, low)
    below = c < low
    distance = np.where(below, low - c, c - high)
    flips = np.floor(distance / span)
    rest = distance - flips * span
    even = flips % 2 == 0
    reflected = np.where(below == even, low + rest, high - rest)
    return np.where((c < low) | (c > high), reflected, c)


def sample(x: np.ndarray, coordinates: list[np.ndarray], mode: str, padding: str, align_corners: bool) -> np.ndarray:
    """Interpolate ``x`` (N, C, *spatial) at pixel coordinates, one array (N, *points) per axis.

    Returns ``(N, C, *points)`` in ``x``'s dtype. Taps outside the image follow ``padding``
    (reflection mirrors at the bounds ``align_corners`` gives).
    """
    n, channels, *spatial = x.shape
    points = coordinates[0].shape[1:]
    size = int(np.prod(points, dtype=np.int64))
    flat = x.reshape(n, channels, int(np.prod(spatial, dtype=np.int64)))
    strides = [int(np.prod(spatial[axis + 1:])) for axis in range(len(spatial))]
    taps = [_axis_taps(c, length, mode, padding, align_corners) for c, length in zip(coordinates, spatial)]
    if mode == "nearest":  # one tap per axis: a plain gather, for any dtype
        index = sum(t[0][0] * s for t, s in zip(taps, strides)).reshape(n, 1, size)
        valid = np.logical_and.reduce([t[0][1] for t in taps]).reshape(n, 1, size)
        values = np.take_along_axis(flat, index, axis=2)
        return np.where(valid, values, np.zeros((), x.dtype)).reshape(n, channels, *points)
    # Integers are interpolated in floating point and cast back (truncated) at the end.
    compute = _compute_dtype(x.dtype) if x.dtype.kind == "f" or x.dtype.name == "bfloat16" else np.dtype(np.float64)
    flat = flat.astype(compute, copy=False)
    result = np.zeros((n, channels, size), dtype=compute)
    for combination in itertools.product(*taps):  # 2**r (linear) or 4**r (cubic) tap combinations
        index = sum(tap[0] * s for tap, s in zip(combination, strides)).reshape(n, 1, size)
        weight = np.prod([tap[1] for tap in combination], axis=0).reshape(n, 1, size)
        result += weight.astype(compute, copy=False) * np.take_along_axis(flat, index, axis=2)
    return result.reshape(n, channels, *points).astype(x.dtype, copy=False)


def _axis_taps(c: np.ndarray, length: int, mode: str, padding: str, align_corners: bool):
    """The taps of one axis: a list of (index into the axis, weight) pairs.

    For ``nearest`` the single pair holds (index, inside-the-image mask) instead.
    """
    if mode == "nearest":
        index, valid = _tap_index(c.astype(np.int64), length, padding, align_corners)
        return [(index, valid)]
    base = np.floor(c)
    t = c - base
    base = base.astype(np.int64)
    if mode == "linear":
        offsets, weights = (0, 1), (1 - t, t)
    else:  # Keys' cubic kernel at the distances of the four taps around c
        offsets = (-1, 0, 1, 2)
        weights = tuple(keys_cubic(np.abs(t - o), CUBIC_A) for o in offsets)
    taps = []
    for offset, weight in zip(offsets, weights):
        index, valid = _tap_index(base + offset, length, padding, align_corners)
        taps.append((index, weight * valid))
    return taps


def _tap_index(index: np.ndarray, length: int, padding: str, align_corners: bool):
    """Where a tap reads (always a valid index) and whether it reads the image at all."""
    if padding == "zeros":
        valid = (index >= 0) & (index < length)
        return np.clip(index, 0, length - 1), valid
    if padding == "reflection":
        low, high = _bounds(length, align_corners)
        index = np.trunc(_reflect(index.astype(np.float64), low, high)).astype(np.int64)
    return np.clip(index, 0, length - 1), np.ones(index.shape, dtype=bool)


# ============================================================================ AffineGrid
@register
class AffineGrid(Op):
    """The sampling grid ``theta @ (x, y[, z], 1)`` over a regular grid of ``size``.

    ``theta`` is ``(N, 2, 3)`` (2-D) or ``(N, 3, 4)`` (3-D), ``size`` the int64 output size
    ``(N, C, H, W)`` or ``(N, C, D, H, W)``; the result is ``(N, H, W, 2)`` or
    ``(N, D, H, W, 3)``, coordinates innermost axis first, ready for GridSample. A length-1
    axis sits at 0 (as in PyTorch). Spec: AffineGrid-20.
    """

    op_type = "AffineGrid"
    since = 20
    attributes = {"align_corners": 0}

    def check(self, node):
        if node.attrs["align_corners"] not in (0, 1):
            raise bad_attribute(node, f"align_corners must be 0 or 1, got {node.attrs['align_corners']}")

    def infer(self, node, inputs):
        require_inputs(node, inputs, 2)
        theta, size = inputs
        rank = None
        if theta.shape is not None:
            if len(theta.shape) != 3 or (_known(theta.shape[1]) and theta.shape[1] not in (2, 3)) or (
                _known(theta.shape[1], theta.shape[2]) and theta.shape[2] != theta.shape[1] + 1
            ):
                raise fail(node, f"theta must be (N, 2, 3) for 2-D or (N, 3, 4) for 3-D, got {list(theta.shape)}")
            rank = theta.shape[1] if _known(theta.shape[1]) else None
        values = const_ints(size)
        if values is not None:
            if len(values) not in (4, 5) or (rank is not None and len(values) != rank + 2):
                raise fail(node, f"size must be (N, C, H, W) or (N, C, D, H, W) matching theta, got {values}")
            return [out(node, 0, theta.dtype, (values[0], *values[2:], len(values) - 2))]
        if rank is None and size.shape is not None and _known(*size.shape):
            rank = size.shape[0] - 2
        if rank is None:
            return [out(node, 0, theta.dtype, None)]
        batch = theta.shape[0] if theta.shape is not None else None
        return [out(node, 0, theta.dtype, (batch, *(None,) * rank, rank))]

    def reference(self, node, theta, size):
        batch, _, *spatial = (int(v) for v in np.asarray(size).reshape(-1))
        rank = len(spatial)
        if theta.shape != (batch, rank, rank + 1):
            raise fail(node, f"theta must be ({batch}, {rank}, {rank + 1}) for a size of batch {batch} with "
                             f"{rank} spatial axes, got {list(theta.shape)}")
        compute = _compute_dtype(theta.dtype)
        align_corners = bool(node.attrs["align_corners"])
        axes = [_base_positions(length, align_corners, compute) for length in spatial]
        # Homogeneous positions (x, y[, z], 1): the innermost axis first.
        mesh = np.meshgrid(*axes, indexing="ij")
        base = np.stack([*mesh[::-1], np.ones(tuple(spatial), compute)], axis=-1)
        grid = np.einsum("...k,njk->n...j", base, theta.astype(compute, copy=False))
        return grid.astype(theta.dtype, copy=False)


def _base_positions(length: int, align_corners: bool, dtype) -> np.ndarray:
    """Evenly spaced positions in [-1, 1]: pixel centres, or corner centres at the ends."""
    if length <= 1:
        return np.zeros(length, dtype)
    if align_corners:
        return np.linspace(-1, 1, length, dtype=dtype)
    return ((2 * np.arange(length, dtype=dtype) + 1) / length - 1).astype(dtype)


# ============================================================================ RoiAlign
@register
class RoiAlign(Op):
    """Pool each region ``rois[r] = (x1, y1, x2, y2)`` of image ``batch_indices[r]`` into an
    ``output_height x output_width`` grid of bins.

    Each bin holds ``sampling_ratio`` (or ``ceil(bin size)``) samples per axis, placed at
    the centres of equal sub-bins; a sample is the bilinear interpolation of X (0 if it lies
    more than one pixel outside the map). ``avg`` averages the samples; ``max`` takes, as ONNX
    Runtime does, the largest *weighted corner* ``w * X[corner]`` over the samples' four
    corners. ``half_pixel`` shifts the scaled region by -0.5 pixel; ``output_half_pixel``
    (RoiAlign-10's behaviour) does not, and stretches regions smaller than a pixel to one.
    Spec: RoiAlign-22.
    """

    op_type = "RoiAlign"
    since = 10
    attributes = {
        "coordinate_transformation_mode": "half_pixel",
        "mode": "avg",
        "output_height": 1,
        "output_width": 1,
        "sampling_ratio": 0,
        "spatial_scale": 1.0,
    }

    def defaults(self, version):
        if version < 16:  # RoiAlign-10 had no half-pixel shift
            return {**self.attributes, "coordinate_transformation_mode": "output_half_pixel"}
        return self.attributes

    def check(self, node):
        attrs = node.attrs
        if attrs["mode"] not in ("avg", "max"):
            raise bad_attribute(node, f"mode must be 'avg' or 'max', got {attrs['mode']!r}")
        transform = attrs["coordinate_transformation_mode"]
        if transform not in ("half_pixel", "output_half_pixel"):
            raise bad_attribute(node, "coordinate_transformation_mode must be 'half_pixel' or 'output_half_pixel', "
                                      f"got {transform!r}")
        for name in ("output_height", "output_width"):
            if attrs[name] < 1:
                raise bad_attribute(node, f"{name} must be >= 1, got {attrs[name]}")
        if attrs["sampling_ratio"] < 0:
            raise bad_attribute(node, f"sampling_ratio must be >= 0 (0: adaptive), got {attrs['sampling_ratio']}")

    def infer(self, node, inputs):
        require_inputs(node, inputs, 3)
        x, rois, batch_indices = inputs
        if x.shape is not None and len(x.shape) != 4:
            raise fail(node, f"X must be 4-D (N, C, H, W), got shape {list(x.shape)}")
        if rois.shape is not None and (len(rois.shape) != 2 or _differs(rois.shape[1], 4)):
            raise fail(node, f"rois must be (num_rois, 4) holding (x1, y1, x2, y2), got shape {list(rois.shape)}")
        if batch_indices.shape is not None and len(batch_indices.shape) != 1:
            raise fail(node, f"batch_indices must be 1-D (num_rois,), got shape {list(batch_indices.shape)}")
        count = None
        for value in (rois, batch_indices):
            if value.shape is not None and _known(value.shape[0]):
                if count is not None and count != value.shape[0]:
                    raise fail(node, f"rois has {count} rows but batch_indices has {value.shape[0]} entries")
                count = value.shape[0]
        channels = x.shape[1] if x.shape is not None else None
        return [out(node, 0, x.dtype, (count, channels, node.attrs["output_height"], node.attrs["output_width"]))]

    def reference(self, node, x, rois, batch_indices):
        attrs = node.attrs
        n, channels, height, width = x.shape
        batch_indices = np.asarray(batch_indices).astype(np.int64).reshape(-1)
        if rois.shape != (len(batch_indices), 4):
            raise fail(node, f"rois must be ({len(batch_indices)}, 4), got {list(rois.shape)}")
        if ((batch_indices < 0) | (batch_indices >= n)).any():
            raise fail(node, f"batch_indices must lie in [0, {n}), got {batch_indices.tolist()}")
        half_pixel = attrs["coordinate_transformation_mode"] == "half_pixel"
        corners = rois.astype(np.float64) * attrs["spatial_scale"] - (0.5 if half_pixel else 0.0)
        rows = _roi_axis_samples(corners[:, 1], corners[:, 3], attrs["output_height"], height, attrs, half_pixel)
        cols = _roi_axis_samples(corners[:, 0], corners[:, 2], attrs["output_width"], width, attrs, half_pixel)
        data = x.astype(_compute_dtype(x.dtype), copy=False)
        average = attrs["mode"] == "avg"
        # Regions go in blocks, so that the intermediate arrays stay near BLOCK_ELEMENTS.
        if average:
            per_region = channels * height * attrs["output_width"]
        else:
            per_region = channels * rows["low"][0].size * cols["low"][0].size
        block = max(1, BLOCK_ELEMENTS // max(per_region, 1))
        y = np.empty((len(batch_indices), channels, attrs["output_height"], attrs["output_width"]), data.dtype)
        for start in range(0, len(batch_indices), block):
            part = slice(start, start + block)
            block_rows = {key: value[part] for key, value in rows.items()}
            block_cols = {key: value[part] for key, value in cols.items()}
            if average:
                y[part] = _roi_average(data, batch_indices[part], block_rows, block_cols, height, width)
            else:
                y[part] = _roi_max(data, batch_indices[part], block_rows, block_cols)
        return y.astype(x.dtype, copy=False)


def _roi_axis_samples(start, end, bins: int, size: int, attrs, half_pixel: bool) -> dict:
    """Sample positions of every region along one axis, as bilinear taps.

    Returns arrays of shape ``(rois, bins, samples)`` (samples padded to the largest count):
    ``low``/``high`` tap indices, their weights (0 for a sample off the map), ``exists``
    (False for padding), and ``count`` (rois,), the samples per bin of each region.
    """
    length = end - start
    if not half_pixel:
        length = np.maximum(length, 1.0)  # RoiAlign-10 stretches malformed regions to a pixel
    bin_size = length / bins
    ratio = attrs["sampling_ratio"]
    count = np.full(len(start), ratio) if ratio > 0 else np.ceil(length / bins).astype(np.int64)
    count = np.maximum(count, 0)
    most = int(count.max(initial=0))
    step = bin_size / np.maximum(count, 1)
    position = (start[:, None, None] + np.arange(bins)[None, :, None] * bin_size[:, None, None]
                + (np.arange(most)[None, None, :] + 0.5) * step[:, None, None])
    exists = np.arange(most)[None, None, :] < count[:, None, None]
    on_map = (position >= -1.0) & (position <= size)
    position = np.maximum(position, 0.0)
    low = np.floor(position).astype(np.int64)
    at_edge = low >= size - 1
    low = np.where(at_edge, size - 1, low)
    high = np.where(at_edge, size - 1, low + 1)
    fraction = np.where(at_edge, 0.0, position - low)
    keep = on_map & exists
    return {"low": low, "high": high, "w_low": (1 - fraction) * keep, "w_high": fraction * keep,
            "exists": exists, "count": count}


def _roi_average(x, batch_indices, rows, cols, height, width):
    """Average pooling as ``A_y[r] @ X[b] @ A_x[r]^T / samples``, grouped by image."""
    weights_y = _axis_matrix(rows, height).astype(x.dtype)  # (rois, bins_y, height)
    weights_x = _axis_matrix(cols, width).astype(x.dtype)  # (rois, bins_x, width)
    samples = np.maximum(rows["count"] * cols["count"], 1).astype(x.dtype)
    y = np.zeros((len(batch_indices), x.shape[1], weights_y.shape[1], weights_x.shape[1]), dtype=x.dtype)
    for image in np.unique(batch_indices):  # one pair of batched products per image
        chosen = batch_indices == image
        along_x = np.matmul(x[image][None], weights_x[chosen].swapaxes(1, 2)[:, None])  # (r, C, H, bins_x)
        y[chosen] = np.matmul(weights_y[chosen][:, None], along_x)
    return y / samples[:, None, None, None]


def _axis_matrix(taps: dict, size: int) -> np.ndarray:
    """``A[r, bin, i]``: the total weight the samples of a bin give to pixel ``i`` of one axis."""
    pixels = np.arange(size)
    low = (taps["low"][..., None] == pixels) * taps["w_low"][..., None]
    high = (taps["high"][..., None] == pixels) * taps["w_high"][..., None]
    return (low + high).sum(axis=2)


def _roi_max(x, batch_indices, rows, cols):
    """Max pooling over the weighted corners of every sample (ONNX Runtime's definition)."""
    image = batch_indices[:, None, None, None, None, None]
    channel = np.arange(x.shape[1])[None, :, None, None, None, None]
    best = None
    for row, w_row in ((rows["low"], rows["w_low"]), (rows["high"], rows["w_high"])):
        for col, w_col in ((cols["low"], cols["w_low"]), (cols["high"], cols["w_high"])):
            # (rois, C, bins_y, samples_y, bins_x, samples_x)
            values = x[image, channel, row[:, None, :, :, None, None], col[:, None, None, None, :, :]]
            weighted = values * (w_row[:, None, :, :, None, None] * w_col[:, None, None, None, :, :]).astype(x.dtype)
            best = weighted if best is None else np.maximum(best, weighted)
    exists = rows["exists"][:, None, :, :, None, None] & cols["exists"][:, None, None, None, :, :]
    best = np.where(exists, best, -np.inf).max(axis=(3, 5), initial=-np.inf)
    return np.where(np.isneginf(best), 0, best)  # a bin without samples is 0


# ============================================================================ NonMaxSuppression
@register
class NonMaxSuppression(Op):
    """Greedy non-maximum suppression per (batch, class); returns ``[batch, class, box]`` rows.

    Boxes are ``[y1, x1, y2, x2]`` (any two opposite corners; ``center_point_box=0``) or
    ``[x_center, y_center, width, height]`` (``center_point_box=1``). Boxes scoring at most
    ``score_threshold`` never count; in score order (ties: lower index first), a box is kept
    unless its IoU with an already kept box of its class is *strictly* greater than
    ``iou_threshold``; at most ``max_output_boxes_per_class`` are kept (0 or absent: none).
    Rows come ordered by batch, then class, then selection. Spec: NonMaxSuppression-11.
    """

    op_type = "NonMaxSuppression"
    since = 10
    attributes = {"center_point_box": 0}

    def check(self, node):
        if node.attrs["center_point_box"] not in (0, 1):
            raise bad_attribute(node, f"center_point_box must be 0 (corners) or 1 (centre and size), "
                                      f"got {node.attrs['center_point_box']}")

    def infer(self, node, inputs):
        require_inputs(node, inputs, 2, 5)
        boxes, scores = inputs[:2]
        if boxes.shape is not None and (len(boxes.shape) != 3 or _differs(boxes.shape[2], 4)):
            raise fail(node, f"boxes must be (num_batches, spatial_dimension, 4), got shape {list(boxes.shape)}")
        if scores.shape is not None and len(scores.shape) != 3:
            raise fail(node, f"scores must be (num_batches, num_classes, spatial_dimension), "
                             f"got shape {list(scores.shape)}")
        if boxes.shape is not None and scores.shape is not None:
            if _differs(boxes.shape[0], scores.shape[0]) or _differs(boxes.shape[1], scores.shape[2]):
                raise fail(node, f"boxes {list(boxes.shape)} and scores {list(scores.shape)} disagree on the "
                                 f"number of batches or of boxes")
        return [out(node, 0, np.dtype(np.int64), (None, 3))]

    def reference(self, node, boxes, scores, max_output_boxes_per_class=None, iou_threshold=None,
                  score_threshold=None):
        limit = _scalar(max_output_boxes_per_class, 0)
        batches, classes, count = scores.shape
        if limit <= 0 or count == 0 or batches == 0 or classes == 0:
            return np.zeros((0, 3), dtype=np.int64)
        dtype = boxes.dtype
        iou_limit = dtype.type(_scalar(iou_threshold, 0.0))
        y_min, x_min, y_max, x_max = _box_corners(boxes, node.attrs["center_point_box"])
        # Per (batch, class): box indices in score order, and each corner in that order.
        order = np.argsort(-scores, axis=2, kind="stable")
        ranked = [np.take_along_axis(corner[:, None, :], order, axis=2) for corner in (y_min, x_min, y_max, x_max)]
        alive = np.ones(scores.shape, dtype=bool)
        if score_threshold is not None and np.asarray(score_threshold).size:
            floor = _scalar(score_threshold, 0.0)
            alive = np.take_along_axis(scores, order, axis=2) > floor
        kept = np.zeros((batches, classes), dtype=np.int64)
        selected = []  # (batch, class, box, step) rows
        step = 0
        while True:
            alive &= (kept < limit)[..., None]
            active = alive.any(axis=2)
            if not active.any():
                break
            best = alive.argmax(axis=2)[..., None]  # the first alive box in score order
            b, c = np.nonzero(active)
            selected.append(np.stack([b, c, order[b, c, best[b, c, 0]], np.full(len(b), step)], axis=1))
            kept += active
            chosen = [np.take_along_axis(corner, best, axis=2) for corner in ranked]
            alive &= ~(_suppresses(chosen, ranked, iou_limit) & active[..., None])
            np.put_along_axis(alive, best, False, axis=2)
            step += 1
        rows = np.concatenate(selected)
        rows = rows[np.lexsort((rows[:, 3], rows[:, 1], rows[:, 0]))]
        return rows[:, :3].astype(np.int64)


def _box_corners(boxes: np.ndarray, center_point_box: int):
    """(y_min, x_min, y_max, x_max), each (batches, boxes), in the boxes' dtype."""
    if center_point_box:
        x, y, w, h = np.moveaxis(boxes, 2, 0)
        return y - h / 2, x - w / 2, y + h / 2, x + w / 2
    y1, x1, y2, x2 = np.moveaxis(boxes, 2, 0)
    return np.minimum(y1, y2), np.minimum(x1, x2), np.maximum(y1, y2), np.maximum(x1, x2)


def _suppresses(chosen, others, iou_limit) -> np.ndarray:
    """Whether each of ``others`` overlaps the chosen box of its row with IoU > ``iou_limit``.

    Boxes that do not overlap, or have no area, never suppress (as in ONNX Runtime).
    """
    cy0, cx0, cy1, cx1 = chosen
    oy0, ox0, oy1, ox1 = others
    width = np.minimum(cx1, ox1) - np.maximum(cx0, ox0)
    height = np.minimum(cy1, oy1) - np.maximum(cy0, oy0)
    overlap = (width > 0) & (height > 0)
    intersection = np.where(overlap, width * height, 0)
    area_chosen = (cx1 - cx0) * (cy1 - cy0)
    area_others = (ox1 - ox0) * (oy1 - oy0)
    union = area_chosen + area_others - intersection
    usable = overlap & (intersection > 0) & (area_chosen > 0) & (area_others > 0) & (union > 0)
    iou = intersection / np.where(usable, union, 1)
    return usable & (iou > iou_limit)


def _scalar(array, default):
    """The single value of an optional scalar input, or ``default`` when it is absent/empty."""
    if array is None or np.asarray(array).size == 0:
        return default
    value = np.asarray(array).reshape(-1)[0]
    return int(value) if np.issubdtype(np.asarray(array).dtype, np.integer) else float(value)


# ============================================================================ MaxUnpool
@register
class MaxUnpool(Op):
    """Scatter ``X`` into zeros at the flat positions ``I`` (MaxPool's ``Indices``).

    The output is ``(N, C, (D - 1) * stride - pad_begin - pad_end + kernel, ...)``, or
    ``output_shape`` when given (it tells apart the input sizes that pool to the same size);
    ``I`` indexes that output, flattened row-major, as MaxPool's indices index its input.
    This is what the spec says of ``I``, and what ONNX Runtime and PyTorch do, so that
    unpooling an odd-sized MaxPool puts every value back where it came from. (The spec's
    example for ``output_shape``, and onnx.reference, instead scatter into the default-size
    output and pad it at the end.) Spec: MaxUnpool-22.
    """

    op_type = "MaxUnpool"
    since = 9
    attributes = {"kernel_shape": REQUIRED, "pads": None, "strides": None}

    def check(self, node):
        attrs = node.attrs
        rank = len(attrs["kernel_shape"])
        if any(k < 1 for k in attrs["kernel_shape"]):
            raise bad_attribute(node, f"kernel_shape must all be >= 1, got {attrs['kernel_shape']}")
        if attrs["strides"] is not None and (len(attrs["strides"]) != rank or any(s < 1 for s in attrs["strides"])):
            raise bad_attribute(node, f"strides must hold {rank} values >= 1, got {attrs['strides']}")
        if attrs["pads"] is not None and (len(attrs["pads"]) != 2 * rank or any(p < 0 for p in attrs["pads"])):
            raise bad_attribute(node, f"pads must hold {2 * rank} values >= 0 (begin and end per axis), "
                                      f"got {attrs['pads']}")

    def infer(self, node, inputs):
        require_inputs(node, inputs, 2, 3)
        x, indices = inputs[:2]
        shape_input = inputs[2] if len(inputs) > 2 else None
        if x.shape is not None and len(x.shape) != len(node.attrs["kernel_shape"]) + 2:
            raise fail(node, f"X must be (N, C) plus {len(node.attrs['kernel_shape'])} spatial axes (one per "
                             f"kernel_shape entry), got shape {list(x.shape)}")
        if x.shape is not None and indices.shape is not None and any(
            _differs(a, b) for a, b in zip(x.shape, indices.shape)
        ):
            raise fail(node, f"I must have the shape of X {list(x.shape)}, got {list(indices.shape)}")
        if shape_input is not None:
            wanted = const_ints(shape_input)
            if wanted is not None:
                return [out(node, 0, x.dtype, tuple(wanted))]
            rank = len(x.shape) if x.shape is not None else None
            return [out(node, 0, x.dtype, None if rank is None else (None,) * rank)]
        if x.shape is None:
            return [out(node, 0, x.dtype, None)]
        return [out(node, 0, x.dtype, (*x.shape[:2], *self._default_size(node, x.shape[2:])))]

    def _default_size(self, node, spatial):
        attrs = node.attrs
        rank = len(spatial)
        strides = attrs["strides"] or [1] * rank
        pads = attrs["pads"] or [0] * (2 * rank)
        return tuple(
            (d - 1) * s - pads[i] - pads[rank + i] + k if _known(d) else None
            for i, (d, s, k) in enumerate(zip(spatial, strides, attrs["kernel_shape"]))
        )

    def reference(self, node, x, indices, output_shape=None):
        if output_shape is not None:
            shape = tuple(int(v) for v in np.asarray(output_shape).reshape(-1))
            if len(shape) != x.ndim or shape[:2] != x.shape[:2]:
                raise fail(node, f"output_shape {list(shape)} must have rank {x.ndim} and keep N and C of X "
                                 f"{list(x.shape[:2])}")
        else:
            shape = (*x.shape[:2], *self._default_size(node, x.shape[2:]))
        size = int(np.prod(shape, dtype=np.int64))
        flat_indices = np.asarray(indices).astype(np.int64).reshape(-1)
        if ((flat_indices < 0) | (flat_indices >= size)).any():
            raise fail(node, f"indices in I must lie in [0, {size}) for an output of shape {list(shape)}")
        y = np.zeros(size, dtype=x.dtype)
        y[flat_indices] = x.reshape(-1)
        return y.reshape(shape)


# ============================================================================ Col2Im
@register
class Col2Im(Op):
    """Add column blocks back into an image (the inverse layout of im2col; PyTorch's ``fold``).

    ``input`` is ``(N, C * prod(block_shape), L)``: for each of the ``L`` block positions
    (row-major over the image), one column of ``C x block`` values. Value ``(c, tap)`` of
    block ``b`` is added at ``b * stride - pad_begin + tap * dilation``; positions in the
    padding are dropped. The result is ``(N, C, *image_shape)``. Spec: Col2Im-18.
    """

    op_type = "Col2Im"
    since = 18
    attributes = {"dilations": None, "pads": None, "strides": None}

    def check(self, node):
        for name in ("dilations", "strides"):
            values = node.attrs[name]
            if values is not None and any(v < 1 for v in values):
                raise bad_attribute(node, f"{name} must all be >= 1, got {values}")
        pads = node.attrs["pads"]
        if pads is not None and (len(pads) % 2 or any(p < 0 for p in pads)):
            raise bad_attribute(node, f"pads must hold a begin and an end value >= 0 per axis, got {pads}")

    def infer(self, node, inputs):
        require_inputs(node, inputs, 3)
        data, image, block = inputs
        if data.shape is not None and len(data.shape) != 3:
            raise fail(node, f"input must be 3-D (N, C * prod(block_shape), L), got shape {list(data.shape)}")
        image_shape, block_shape = const_ints(image), const_ints(block)
        batch = data.shape[0] if data.shape is not None else None
        if image_shape is None or block_shape is None:
            rank = image.shape[0] if image.shape is not None and len(image.shape) == 1 else None
            if not _known(rank):
                return [out(node, 0, data.dtype, None)]
            return [out(node, 0, data.dtype, (batch, None, *(image_shape or [None] * rank)))]
        window = self._window(node, image_shape, block_shape)
        channels = None
        if data.shape is not None and _known(data.shape[1]):
            channels = self._channels(node, data.shape[1], block_shape)
            if _known(data.shape[2]) and data.shape[2] != dim_product(self._blocks(window)):
                raise fail(node, f"input has {data.shape[2]} blocks but image_shape {image_shape}, block_shape "
                                 f"{block_shape} and the attributes give {self._blocks(window)} = "
                                 f"{dim_product(self._blocks(window))}")
        return [out(node, 0, data.dtype, (batch, channels, *image_shape))]

    def reference(self, node, data, image_shape, block_shape):
        image_shape = [int(v) for v in np.asarray(image_shape).reshape(-1)]
        block_shape = [int(v) for v in np.asarray(block_shape).reshape(-1)]
        window = self._window(node, image_shape, block_shape)
        blocks = self._blocks(window)
        n, rows, count = data.shape
        channels = self._channels(node, rows, block_shape)
        if count != dim_product(blocks):
            raise fail(node, f"input has {count} blocks but the image holds {blocks} = {dim_product(blocks)}")
        compute = data.dtype if data.dtype.kind in "iu" else _compute_dtype(data.dtype)
        contributions = data.astype(compute, copy=False).reshape(n, channels, *block_shape, *blocks)
        return col2im(contributions, window, tuple(blocks)).astype(data.dtype, copy=False)

    def _window(self, node, image_shape, block_shape) -> Window:
        rank = len(image_shape)
        if len(block_shape) != rank:
            raise fail(node, f"block_shape {block_shape} and image_shape {image_shape} must have the same length")
        attrs = node.attrs
        strides = tuple(attrs["strides"] or [1] * rank)
        dilations = tuple(attrs["dilations"] or [1] * rank)
        pads = tuple(attrs["pads"] or [0] * (2 * rank))
        if len(strides) != rank or len(dilations) != rank or len(pads) != 2 * rank:
            raise fail(node, f"strides, dilations and pads must have {rank}, {rank} and {2 * rank} values for a "
                             f"{rank}-D image")
        return Window(tuple(block_shape), strides, dilations, pads[:rank], pads[rank:], tuple(image_shape))

    def _blocks(self, window: Window) -> list[int]:
        """How many block positions fit along each axis of the padded image."""
        return [
            (size + begin + end - extent) // stride + 1
            for size, begin, end, extent, stride in zip(window.output, window.pads_begin, window.pads_end,
                                                        window.extent, window.strides)
        ]

    def _channels(self, node, rows: int, block_shape) -> int:
        per_channel = dim_product(block_shape)
        if per_channel < 1 or rows % per_channel:
            raise fail(node, f"input's second axis ({rows}) must be a multiple of prod(block_shape) = {per_channel}")
        return rows // per_channel


# ============================================================================ DeformConv
@register
class DeformConv(Op):
    """Convolution whose kernel taps are displaced by per-position ``offset``s (and scaled by
    an optional ``mask``, DCNv2).

    Tap ``t`` of output position ``o`` reads X, bilinearly interpolated with zeros outside,
    at ``o * stride - pad_begin + t * dilation + offset[n, g, t, :, o]``; the offsets of
    channel group ``g`` (``offset_group``) apply to its ``C / offset_group`` channels. The
    sampled columns then meet W in the grouped matrix product of Conv. Spec: DeformConv-22.
    """

    op_type = "DeformConv"
    since = 19
    attributes = {
        "dilations": None,
        "group": 1,
        "kernel_shape": None,
        "offset_group": 1,
        "pads": None,
        "strides": None,
    }

    def check(self, node):
        attrs = node.attrs
        for name in ("group", "offset_group"):
            if attrs[name] < 1:
                raise bad_attribute(node, f"{name} must be >= 1, got {attrs[name]}")
        for name in ("dilations", "strides", "kernel_shape"):
            if attrs[name] is not None and any(v < 1 for v in attrs[name]):
                raise bad_attribute(node, f"{name} must all be >= 1, got {attrs[name]}")
        if attrs["pads"] is not None and (len(attrs["pads"]) % 2 or any(p < 0 for p in attrs["pads"])):
            raise bad_attribute(node, f"pads must hold a begin and an end value >= 0 per axis, got {attrs['pads']}")

    def infer(self, node, inputs):
        require_inputs(node, inputs, 3, 5)
        x, w, offset = inputs[:3]
        attrs = node.attrs
        if x.shape is None or w.shape is None:
            return [out(node, 0, x.dtype, None if x.shape is None else (x.shape[0], None, *(None,) * (len(x.shape) - 2)))]
        if len(x.shape) < 3 or len(w.shape) != len(x.shape):
            raise fail(node, f"X must be (N, C, D1, ...) and W (oC, C/group, k1, ...) of the same rank, got "
                             f"{list(x.shape)} and {list(w.shape)}")
        rank = len(x.shape) - 2
        channels, out_channels = x.shape[1], w.shape[0]
        if _known(channels, w.shape[1]) and channels != w.shape[1] * attrs["group"]:
            raise fail(node, f"X has {channels} channels but W expects {w.shape[1]} per group x group={attrs['group']}")
        if _known(channels) and channels % attrs["offset_group"]:
            raise fail(node, f"X's {channels} channels are not divisible by offset_group={attrs['offset_group']}")
        kernel = tuple(attrs["kernel_shape"] or w.shape[2:])
        spatial = self._output_size(node, x.shape[2:], kernel)
        if offset.shape is not None and _known(*kernel):
            want = attrs["offset_group"] * dim_product(kernel) * rank
            if len(offset.shape) != rank + 2 or _differs(offset.shape[1], want):
                raise fail(node, f"offset must be (N, offset_group * prod(kernel) * {rank} = {want}, *output), "
                                 f"got {list(offset.shape)}")
        return [out(node, 0, x.dtype, (x.shape[0], out_channels, *spatial))]

    def _output_size(self, node, spatial, kernel):
        rank = len(spatial)
        strides, dilations, pads = self._geometry(node, rank)
        return tuple(
            (d + pads[i] + pads[rank + i] - dilations[i] * (k - 1) - 1) // strides[i] + 1 if _known(d, k) else None
            for i, (d, k) in enumerate(zip(spatial, kernel))
        )

    def _geometry(self, node, rank):
        attrs = node.attrs
        strides = list(attrs["strides"] or [1] * rank)
        dilations = list(attrs["dilations"] or [1] * rank)
        pads = list(attrs["pads"] or [0] * (2 * rank))
        if len(strides) != rank or len(dilations) != rank or len(pads) != 2 * rank:
            raise fail(node, f"strides, dilations and pads must have {rank}, {rank} and {2 * rank} values for "
                             f"{rank} spatial axes")
        return strides, dilations, pads

    def reference(self, node, x, w, offset, bias=None, mask=None):
        attrs = node.attrs
        n, channels, *spatial = x.shape
        rank = len(spatial)
        kernel = tuple(w.shape[2:])
        out_channels, group, offset_group = w.shape[0], attrs["group"], attrs["offset_group"]
        strides, dilations, pads = self._geometry(node, rank)
        output = self._output_size(node, spatial, kernel)
        taps, positions = dim_product(kernel), dim_product(output)
        if offset.shape != (n, offset_group * taps * rank, *output):
            raise fail(node, f"offset must have shape {[n, offset_group * taps * rank, *output]}, "
                             f"got {list(offset.shape)}")
        dtype, compute = x.dtype, _compute_dtype(x.dtype)
        offset = offset.astype(np.float64).reshape(n, offset_group, taps, rank, positions)
        # Undisplaced position of every (tap, output position) along each axis.
        tap_grid = np.indices(kernel).reshape(rank, taps)
        out_grid = np.indices(output).reshape(rank, positions)
        coordinates = []
        for axis in range(rank):
            base = (out_grid[axis] * strides[axis] - pads[axis])[None, :] + (tap_grid[axis] * dilations[axis])[:, None]
            coordinates.append((base + offset[:, :, :, axis]).reshape(n * offset_group, taps * positions))
        grouped = x.astype(compute, copy=False).reshape(n * offset_group, channels // offset_group, *spatial)
        columns = sample(grouped, coordinates, "linear", "zeros", True)  # (n*og, C/og, taps*positions)
        columns = columns.reshape(n, offset_group, channels // offset_group, taps, positions)
        if mask is not None:
            columns = columns * mask.astype(compute, copy=False).reshape(n, offset_group, 1, taps, positions)
        columns = columns.reshape(n, group, channels // group * taps, positions)
        kernels = w.astype(compute, copy=False).reshape(group, out_channels // group, -1)
        y = np.matmul(kernels, columns).reshape(n, out_channels, *output)
        if bias is not None:
            y += bias.astype(compute, copy=False).reshape(-1, *(1,) * rank)
        return y.astype(dtype, copy=False)


# ============================================================================ private helpers
def _known(*dims) -> bool:
    return all(isinstance(d, int) for d in dims)


def _differs(dim, expected) -> bool:
    """True when a known dim is not the expected (known) value."""
    return isinstance(dim, int) and isinstance(expected, int) and dim != expected
