"""Pooling ops against direct loops and ONNX Runtime.

Oracles:

* ``direct_pool`` below: the definition written as loops over every output position and
  every kernel tap, skipping taps outside the input (max, Lp) or counting the taps inside the
  explicit pads (average with ``count_include_pad=1``). No padding arrays, no strided views.
* ONNX Runtime for ``ceil_mode``, ``auto_pad`` and MaxPool's ``Indices`` output.
* NumPy's ``mean``/``max`` for the global ops (a math identity: a global pool is a reduction
  over the spatial axes).

Tolerance: a window holds at most 27 values of size ~1; float32 sums round by a few ulps of
the sum, so ``rtol=1e-5, atol=1e-6`` for averages and Lp norms. Max pooling picks one of the
input values and is compared exactly.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from onnx_oracle import infer_outputs, run_onnxruntime, run_tinyinfer

from tinyinfer.errors import InvalidAttributeError, ShapeInferenceError

FLOAT32 = dict(rtol=1e-5, atol=1e-6)


def random(shape, dtype=np.float32, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def direct_pool(x, kind, kernel_shape, strides=None, pads=None, dilations=None, count_include_pad=0, p=2):
    """Pooling by its definition, floor mode, explicit pads; float64 result."""
    kernel = kernel_shape
    n, channels, *spatial = x.shape
    rank = len(spatial)
    strides = strides or [1] * rank
    dilations = dilations or [1] * rank
    pads = pads or [0] * (2 * rank)
    output = [
        (spatial[i] + pads[i] + pads[rank + i] - dilations[i] * (kernel[i] - 1) - 1) // strides[i] + 1
        for i in range(rank)
    ]
    y = np.zeros((n, channels, *output))
    for batch, c in itertools.product(range(n), range(channels)):
        for position in itertools.product(*(range(o) for o in output)):
            values, in_pads = [], 0
            for tap in itertools.product(*(range(k) for k in kernel)):
                where = [position[i] * strides[i] + tap[i] * dilations[i] - pads[i] for i in range(rank)]
                if all(0 <= where[i] < spatial[i] for i in range(rank)):
                    values.append(float(x[(batch, c, *where)]))
                elif all(-pads[i] <= where[i] < spatial[i] + pads[rank + i] for i in range(rank)):
                    in_pads += 1
            if kind == "max":
                result = max(values)
            elif kind == "average":
                result = sum(values) / (len(values) + (in_pads if count_include_pad else 0))
            else:
                result = sum(abs(v) ** p for v in values) ** (1.0 / p)
            y[(batch, c, *position)] = result
    return y


CASES = {
    # name: (x shape, attributes)
    "2x2_stride2": ((1, 2, 6, 6), dict(kernel_shape=[2, 2], strides=[2, 2])),
    "3x3_pad1": ((2, 3, 5, 7), dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1])),
    "3x3_stride2_pad1": ((1, 2, 8, 7), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),
    "asymmetric": ((1, 1, 7, 6), dict(kernel_shape=[3, 2], strides=[2, 1], pads=[2, 0, 1, 1])),
    "dilated": ((1, 2, 9, 8), dict(kernel_shape=[2, 3], dilations=[3, 2], pads=[1, 2, 0, 1])),
    "1d": ((2, 2, 11), dict(kernel_shape=[4], strides=[3], pads=[2, 1])),
    "3d": ((1, 2, 5, 4, 6), dict(kernel_shape=[2, 3, 3], strides=[1, 2, 2], pads=[1, 1, 0, 0, 1, 1])),
}


@pytest.mark.parametrize("case", list(CASES), ids=str)
def test_max_pool_matches_direct_loops(case):
    shape, attrs = CASES[case]
    x = random(shape)
    (y,) = run_tinyinfer("MaxPool", [x], **attrs)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, direct_pool(x, "max", **attrs).astype(np.float32))


@pytest.mark.parametrize("count_include_pad", [0, 1])
@pytest.mark.parametrize("case", list(CASES), ids=str)
def test_average_pool_matches_direct_loops(case, count_include_pad):
    shape, attrs = CASES[case]
    x = random(shape)
    (y,) = run_tinyinfer("AveragePool", [x], count_include_pad=count_include_pad, **attrs)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, direct_pool(x, "average", count_include_pad=count_include_pad, **attrs), **FLOAT32)


@pytest.mark.parametrize("p", [1, 2, 3])
@pytest.mark.parametrize("case", ["3x3_pad1", "dilated", "1d", "3d"])
def test_lp_pool_matches_direct_loops(case, p):
    shape, attrs = CASES[case]
    x = random(shape)
    (y,) = run_tinyinfer("LpPool", [x], p=p, **attrs)
    np.testing.assert_allclose(y, direct_pool(x, "lp", p=p, **attrs), **FLOAT32)


CEIL_CASES = {
    "last_window_partial": ((1, 2, 7, 7), dict(kernel_shape=[2, 2], strides=[2, 2])),
    "with_pads": ((1, 1, 8, 6), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),
    "last_window_would_start_in_pad": ((1, 1, 4, 4), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),
    "strided_3d": ((1, 1, 5, 6, 7), dict(kernel_shape=[2, 2, 3], strides=[2, 3, 2], pads=[0, 1, 1, 0, 0, 1])),
}


@pytest.mark.parametrize("op_type, extra", [("MaxPool", {}), ("AveragePool", dict(count_include_pad=0)),
                                            ("AveragePool", dict(count_include_pad=1))],
                         ids=["max", "average", "average_include_pad"])
@pytest.mark.parametrize("case", list(CEIL_CASES), ids=str)
def test_ceil_mode_matches_onnxruntime(case, op_type, extra):
    shape, attrs = CEIL_CASES[case]
    x = random(shape)
    (y,) = run_tinyinfer(op_type, [x], ceil_mode=1, **attrs, **extra)
    (want,) = run_onnxruntime(op_type, [x], ceil_mode=1, **attrs, **extra)
    assert y.shape == want.shape
    np.testing.assert_allclose(y, want, **FLOAT32)


@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER", "VALID"])
@pytest.mark.parametrize("op_type, extra", [("MaxPool", {}), ("AveragePool", {}),
                                            ("AveragePool", dict(count_include_pad=1)), ("LpPool", {})],
                         ids=["max", "average", "average_include_pad", "lp"])
@pytest.mark.parametrize("shape, kernel, strides", [((7, 6), (3, 3), (1, 1)), ((7, 8), (3, 2), (2, 3)),
                                                    ((6, 5), (2, 4), (2, 2))], ids=["3x3", "strided", "even"])
def test_auto_pad_matches_onnxruntime(op_type, extra, auto_pad, shape, kernel, strides):
    x = random((1, 2, *shape))
    attrs = dict(auto_pad=auto_pad, kernel_shape=list(kernel), strides=list(strides), **extra)
    (y,) = run_tinyinfer(op_type, [x], **attrs)
    (want,) = run_onnxruntime(op_type, [x], **attrs)
    assert y.shape == want.shape
    np.testing.assert_allclose(y, want, **FLOAT32)


@pytest.mark.parametrize("storage_order", [0, 1])
@pytest.mark.parametrize(
    "shape, attrs",
    [((2, 3, 6, 5), dict(kernel_shape=[2, 2], strides=[2, 2])),
     ((1, 2, 7, 7), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),
     ((1, 2, 8, 6), dict(kernel_shape=[3, 2], strides=[2, 1], ceil_mode=1)),
     ((1, 2, 8, 7), dict(kernel_shape=[2, 2], dilations=[2, 3], pads=[1, 0, 0, 1]))],
    ids=["2x2", "padded", "ceil", "dilated"],
)
def test_max_pool_indices_match_onnxruntime(shape, attrs, storage_order):
    x = random(shape)
    y, indices = run_tinyinfer("MaxPool", [x], 2, storage_order=storage_order, **attrs)
    want_y, want_indices = run_onnxruntime("MaxPool", [x], 2, storage_order=storage_order, **attrs)
    assert indices.dtype == np.int64
    np.testing.assert_array_equal(y, want_y)
    np.testing.assert_array_equal(indices, want_indices)


def test_max_pool_indices_point_at_the_maximum():
    x = random((2, 3, 5, 6, 4), seed=3)
    y, indices = run_tinyinfer("MaxPool", [x], 2, kernel_shape=[2, 3, 2], strides=[2, 1, 2], pads=[1, 1, 0, 0, 1, 1])
    np.testing.assert_array_equal(x.reshape(-1)[indices], y)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
def test_max_pool_integers_are_exact(dtype):
    x = np.random.default_rng(0).integers(np.iinfo(dtype).min, np.iinfo(dtype).max, (1, 2, 5, 5)).astype(dtype)
    attrs = dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    (y,) = run_tinyinfer("MaxPool", [x], **attrs)
    assert y.dtype == dtype
    np.testing.assert_array_equal(y, direct_pool(x, "max", **attrs).astype(dtype))


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
@pytest.mark.parametrize("op_type", ["MaxPool", "AveragePool", "LpPool"])
def test_pools_keep_float16_and_float64(op_type, dtype):
    x = random((1, 2, 6, 6), dtype)
    attrs = dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2])
    (y,) = run_tinyinfer(op_type, [x], **attrs)
    assert y.dtype == dtype
    kind = {"MaxPool": "max", "AveragePool": "average", "LpPool": "lp"}[op_type]
    # float16: one rounding of a result of size ~1-4 (11-bit mantissa) -> rtol 1e-3.
    tolerance = dict(rtol=1e-12, atol=1e-12) if dtype == np.float64 else dict(rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(y.astype(np.float64), direct_pool(x, kind, **attrs), **tolerance)


@pytest.mark.parametrize("shape", [(2, 3, 7), (2, 3, 4, 5), (1, 2, 3, 4, 5)])
def test_global_pools_reduce_the_spatial_axes(shape):
    x = random(shape)
    axes = tuple(range(2, len(shape)))
    (mean,) = run_tinyinfer("GlobalAveragePool", [x])
    (largest,) = run_tinyinfer("GlobalMaxPool", [x])
    assert mean.dtype == largest.dtype == np.float32
    np.testing.assert_allclose(mean, x.astype(np.float64).mean(axis=axes, keepdims=True), **FLOAT32)
    np.testing.assert_array_equal(largest, x.max(axis=axes, keepdims=True))


def test_pool_shape_inference_keeps_symbols():
    x = random((2, 3, 9, 8))
    (y,) = infer_outputs("MaxPool", [x], shapes={0: ["N", "C", 9, "W"]}, kernel_shape=[3, 3], strides=[2, 2])
    assert y.shape == ("N", "C", 4, None)
    (y,) = infer_outputs("GlobalAveragePool", [x], shapes={0: ["N", 3, "H", "W"]})
    assert y.shape == ("N", 3, 1, 1)


def test_pool_without_kernel_shape_is_an_attribute_error():
    with pytest.raises(InvalidAttributeError, match=r"maxpool_node.*'kernel_shape' is missing"):
        run_tinyinfer("MaxPool", [random((1, 1, 4, 4))])


@pytest.mark.parametrize(
    "attrs, message",
    [(dict(auto_pad="same"), "auto_pad must be one of"), (dict(storage_order=2), "storage_order must be 0 or 1"),
     (dict(ceil_mode=3), "ceil_mode must be 0 or 1"), (dict(dilations=[1, 0]), "dilations must all be >= 1")],
)
def test_pool_bad_attribute_values(attrs, message):
    with pytest.raises(InvalidAttributeError, match=message):
        run_tinyinfer("MaxPool", [random((1, 1, 4, 4))], kernel_shape=[2, 2], **attrs)


@pytest.mark.parametrize(
    "shape, attrs, message",
    [((1, 1, 4, 4), dict(kernel_shape=[2]), "kernel_shape has 1 values"),
     ((1, 1, 4, 4), dict(kernel_shape=[5, 2]), "spans 5 positions"),
     ((4, 4), dict(kernel_shape=[2]), "at least one spatial axis")],
    ids=["kernel_rank", "kernel_too_big", "no_spatial_axis"],
)
def test_pool_bad_shapes(shape, attrs, message):
    with pytest.raises(ShapeInferenceError, match=rf"averagepool_node.*{message}"):
        run_tinyinfer("AveragePool", [random(shape)], **attrs)
