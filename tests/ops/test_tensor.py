"""Tensor and shape-manipulation ops (tinyinfer/ops/tensor.py).

Values are checked against ``onnx.reference.ReferenceEvaluator`` on one-node models, with
exact equality: these ops only move or copy data, so there is no rounding to allow for.
Every run also checks each output's dtype and shape against the op's ``infer``
(``check_shapes=True``). Shape inference on symbolic dims is checked on small IR graphs.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx_oracle import (
    Initializer,
    assert_matches_reference,
    infer_outputs,
    run_onnxruntime,
    run_tinyinfer,
    single_node_model,
)

import tinyinfer
from tinyinfer import ops
from tinyinfer.errors import InvalidAttributeError, ShapeInferenceError
from tinyinfer.ir import Graph, Node, Value

INT64_MAX = np.iinfo(np.int64).max
INT64_MIN = np.iinfo(np.int64).min


def arange(*shape, dtype=np.float32):
    return np.arange(int(np.prod(shape)), dtype=dtype).reshape(shape)


def ints(*values):
    return np.array(values, dtype=np.int64)


def infer_graph(op_type, inputs, attrs=None, n_outputs=1, opset=21):
    """Output Values of one node whose inputs are shapes (graph inputs) or arrays (constants)."""
    names, graph_inputs, weights = [], [], {}
    for i, item in enumerate(inputs):
        name = f"x{i}"
        names.append(name)
        if isinstance(item, np.ndarray):
            weights[name] = item
        else:
            graph_inputs.append(Value(name, np.float32, item))
    node = Node(op_type, names, [f"y{i}" for i in range(n_outputs)], dict(attrs or {}), name="node")
    graph = Graph(nodes=[node], inputs=graph_inputs, initializers=weights, opset={"": opset})
    ops.prepare_graph(graph)
    known = ops.infer_shapes(graph)
    return [known[f"y{i}"] for i in range(n_outputs)]


def infer_shape(*args, **kwargs):
    return infer_graph(*args, **kwargs)[0].shape


# ---------------------------------------------------------------------------- Concat, Split
@pytest.mark.parametrize("axis", [0, 1, 2, -1, -3])
def test_concat_matches_reference(axis):
    shape = [2, 3, 4]
    a = arange(*shape)
    shape[axis] = 1
    b = -arange(*shape)
    assert_matches_reference("Concat", [a, b, a], axis=axis)


def test_concat_with_an_empty_input():
    assert_matches_reference("Concat", [arange(2, 3), np.zeros((0, 3), np.float32)], axis=0)


@pytest.mark.parametrize(
    "opset, split, kwargs, n_outputs",
    [
        (11, None, {}, 3),  # equal parts from the output count
        (11, None, {"split": [1, 4, 1]}, 3),  # split as an attribute
        (13, ints(2, 0, 4), {}, 3),  # split as an input, a zero-sized piece
        (18, None, {"num_outputs": 4}, 4),  # chunks of ceil(6 / 4) = 2: [2, 2, 2, 0]
        (18, None, {"num_outputs": 3}, 3),
    ],
)
def test_split_matches_reference(opset, split, kwargs, n_outputs):
    x = arange(2, 6)
    inputs = [x] if split is None else [x, Initializer(split)]
    got = assert_matches_reference("Split", inputs, n_outputs, opset=opset, axis=1, **kwargs)
    assert sum(part.shape[1] for part in got) == 6


def test_split_uneven_last_chunk_is_smaller():
    parts = run_tinyinfer("Split", [arange(7)], 3, opset=18, num_outputs=3)
    assert [p.tolist() for p in parts] == [[0, 1, 2], [3, 4, 5], [6]]


def test_split_not_divisible_raises():
    with pytest.raises(ShapeInferenceError, match="cannot be split into 4 equal parts"):
        infer_graph("Split", [(2, 6)], {"axis": 1}, n_outputs=4, opset=13)


# ---------------------------------------------------------------------------- Slice
SLICES = [
    # starts, ends, axes, steps
    ([1, 0], [2, 3], [0, 1], [1, 2]),
    ([0, 1], [-1, 1000], None, None),
    ([-1], [INT64_MIN], [1], [-1]),  # the whole axis backwards
    ([20], [-20], [2], [-3]),  # clamped start with a negative step
    ([-100], [100], [-1], [2]),  # both ends clamped
    ([3], [1], [1], [1]),  # empty
    ([1000], [1001], [0], None),  # start past the end
    ([0, 0, 3], [INT64_MAX, -1, 0], [0, 2, 1], [1, 1, -1]),
]


@pytest.mark.parametrize("starts, ends, axes, steps", SLICES)
def test_slice_matches_reference(starts, ends, axes, steps):
    inputs = [arange(3, 4, 5), Initializer(ints(*starts)), Initializer(ints(*ends))]
    if axes is not None or steps is not None:
        inputs.append(None if axes is None else Initializer(ints(*axes)))
    if steps is not None:
        inputs.append(Initializer(ints(*steps)))
    assert_matches_reference("Slice", inputs, opset=13)


def test_slice_with_runtime_starts_and_ends():
    # Starts and ends fed at run time: inference knows the rank only.
    inputs = [arange(3, 4, 5), ints(1, -1), ints(3, INT64_MIN), Initializer(ints(0, 2)), Initializer(ints(1, -2))]
    assert_matches_reference("Slice", inputs, opset=13)
    (value,) = infer_outputs("Slice", inputs, opset=13)
    assert value.shape == (None, 4, None)


def test_slice_as_attributes_before_opset_10():
    assert_matches_reference("Slice", [arange(3, 4)], opset=9, starts=[1, -3], ends=[3, 100], axes=[0, 1])


def slice_by_the_spec(dim, start, end, step):
    """The indices Slice picks on one axis, the slow way, sentence by sentence from the spec."""
    start += dim if start < 0 else 0
    end += dim if end < 0 else 0
    if step > 0:
        start, end = min(max(start, 0), dim), min(max(end, 0), dim)
    else:
        start, end = min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)
    picked, i = [], start
    while (i < end) if step > 0 else (i > end):
        picked.append(i)
        i += step
    return picked


@settings(max_examples=80, deadline=None)
@given(
    dim=st.integers(0, 6),
    start=st.integers(-9, 9) | st.sampled_from([INT64_MIN, INT64_MAX]),
    end=st.integers(-9, 9) | st.sampled_from([INT64_MIN, INT64_MAX]),
    step=st.integers(-3, 3).filter(bool),
)
def test_slice_clamps_as_the_spec_says(dim, start, end, step):
    # Neither runtime oracle follows the spec's clamping everywhere: onnx.reference uses
    # Python slicing (start -2 on an axis of 1 with step -1 selects nothing, the spec's
    # clamp gives index 0) and ONNX Runtime reads end = INT_MAX with a negative step as
    # "to the beginning" (the spec clamps it to dim - 1). So the oracle is the spec's text.
    x = arange(2, dim)
    inputs = [x, Initializer(ints(start)), Initializer(ints(end)), Initializer(ints(1)), Initializer(ints(step))]
    (got,) = run_tinyinfer("Slice", inputs, opset=13)
    np.testing.assert_array_equal(got, np.take(x, slice_by_the_spec(dim, start, end, step), axis=1))


def test_slice_negative_step_clamps_a_start_before_the_axis_to_index_0():
    # Start -2 on an axis of size 1 becomes -1, clamped to 0; end -2 becomes -1, "through
    # index 0": one element, as ONNX Runtime also computes.
    inputs = [arange(2, 1), Initializer(ints(-2)), Initializer(ints(-2)), Initializer(ints(1)), Initializer(ints(-1))]
    (got,) = run_tinyinfer("Slice", inputs, opset=13)
    (want,) = run_onnxruntime("Slice", inputs, opset=13)
    assert got.shape == want.shape == (2, 1)
    np.testing.assert_array_equal(got, want)


def test_slice_step_zero_raises():
    with pytest.raises(ShapeInferenceError, match="steps"):
        infer_graph("Slice", [(3, 4), ints(0), ints(2), ints(0), ints(0)], opset=13)


# ---------------------------------------------------------------------------- Reshape, Flatten
@pytest.mark.parametrize(
    "shape, allowzero",
    [
        ([4, 2, 3], 0),
        ([2, 12], 0),
        ([-1], 0),
        ([0, -1], 0),
        ([2, 0, 4, 1], 0),  # 0 copies dim 1 (3)
        ([-1, 2, 3, 2], 0),
        ([4, 3, 2], 1),  # allowzero without zeros changes nothing
    ],
)
def test_reshape_matches_reference(shape, allowzero):
    assert_matches_reference("Reshape", [arange(2, 3, 4), Initializer(ints(*shape))], allowzero=allowzero)


def test_reshape_allowzero_keeps_a_zero_dim():
    x = np.zeros((0, 3, 4), np.float32)
    got = assert_matches_reference("Reshape", [x, Initializer(ints(3, 4, 0))], allowzero=1)
    assert got[0].shape == (3, 4, 0)


def test_reshape_with_a_runtime_shape():
    got = assert_matches_reference("Reshape", [arange(2, 3, 4), ints(4, -1)])
    assert got[0].shape == (4, 6)
    (value,) = infer_outputs("Reshape", [arange(2, 3, 4), ints(4, -1)])
    assert value.shape == (None, None)


def test_reshape_incompatible_count_names_node_and_shapes():
    with pytest.raises(ShapeInferenceError) as info:
        infer_graph("Reshape", [(2, 3, 4), ints(5, 5)])
    message = str(info.value)
    assert "Reshape 'node'" in message and "[2, 3, 4]" in message and "[5, 5]" in message


def test_reshape_minus_one_that_does_not_divide_raises():
    with pytest.raises(ShapeInferenceError, match=r"\[2, 3, 4\].*\[5, -1\]"):
        infer_graph("Reshape", [(2, 3, 4), ints(5, -1)])


def test_reshape_two_minus_ones_raise():
    with pytest.raises(ShapeInferenceError, match="-1 only once"):
        infer_graph("Reshape", [(2, 3, 4), ints(-1, -1)])


@pytest.mark.parametrize("axis", [0, 1, 2, 3, -1, -3])
def test_flatten_matches_reference(axis):
    assert_matches_reference("Flatten", [arange(2, 3, 4)], axis=axis)


# ---------------------------------------------------------------------------- Transpose, Squeeze, Unsqueeze
@pytest.mark.parametrize("perm", [None, [0, 1, 2], [2, 0, 1], [1, 2, 0], [0, 2, 1]])
def test_transpose_matches_reference(perm):
    kwargs = {} if perm is None else {"perm": perm}
    assert_matches_reference("Transpose", [arange(2, 3, 4)], **kwargs)


def test_transpose_perm_that_is_no_permutation_is_refused_at_load():
    with pytest.raises(InvalidAttributeError, match="not a permutation"):
        run_tinyinfer("Transpose", [arange(2, 3)], perm=[0, 0])


def test_transpose_perm_of_the_wrong_length_raises():
    with pytest.raises(ShapeInferenceError, match="rank 3"):
        infer_graph("Transpose", [(2, 3, 4)], {"perm": [1, 0]})


@pytest.mark.parametrize("opset", [11, 13])
@pytest.mark.parametrize("axes", [None, [0], [-2, 0]])
def test_squeeze_matches_reference(opset, axes):
    x = arange(1, 3, 1, 4)
    if axes is None:
        assert_matches_reference("Squeeze", [x], opset=opset)
    elif opset < 13:
        assert_matches_reference("Squeeze", [x], opset=opset, axes=axes)
    else:
        assert_matches_reference("Squeeze", [x, Initializer(ints(*axes))], opset=opset)


def test_squeeze_of_a_dim_that_is_not_one_raises():
    with pytest.raises(ShapeInferenceError, match="cannot squeeze axis 1 of size 3"):
        infer_graph("Squeeze", [(1, 3), ints(1)])


@pytest.mark.parametrize("opset", [11, 13])
@pytest.mark.parametrize("axes", [[0], [-1], [0, 4], [3, 1], [-1, -5]])
def test_unsqueeze_matches_onnxruntime(opset, axes):
    # ONNX Runtime is the oracle: onnx.reference's Unsqueeze-11 inserts unsorted axes one
    # at a time, although the spec says their order does not matter.
    if opset < 13:
        inputs, kwargs = [arange(2, 3, 4)], {"axes": axes}
    else:
        inputs, kwargs = [arange(2, 3, 4), Initializer(ints(*axes))], {}
    (got,) = run_tinyinfer("Unsqueeze", inputs, opset=opset, **kwargs)
    (want,) = run_onnxruntime("Unsqueeze", inputs, opset=opset, **kwargs)
    np.testing.assert_array_equal(got, want)
    assert got.shape == want.shape


def test_unsqueeze_repeated_axis_raises():
    with pytest.raises(ShapeInferenceError, match="repeat"):
        infer_graph("Unsqueeze", [(2, 3), ints(0, 0)])


# ---------------------------------------------------------------------------- Expand, Tile, Pad
@pytest.mark.parametrize(
    "x_shape, shape",
    [((3, 1), (2, 1, 6)), ((3, 1), (3, 4)), ((1, 4), (1,)), ((2, 1, 4), (1, 3, 1)), ((), (2, 2))],
)
def test_expand_matches_reference(x_shape, shape):
    got = assert_matches_reference("Expand", [arange(*x_shape), Initializer(ints(*shape))])
    assert got[0].flags.writeable


def test_expand_incompatible_shape_raises():
    with pytest.raises(ShapeInferenceError, match="broadcast"):
        infer_graph("Expand", [(3, 2), ints(4, 4)])


@pytest.mark.parametrize("repeats", [(1, 1), (2, 3), (1, 0), (3, 1)])
def test_tile_matches_reference(repeats):
    assert_matches_reference("Tile", [arange(2, 3), Initializer(ints(*repeats))])


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge", "wrap"])
@pytest.mark.parametrize("pads", [(0, 2, 1, 0), (1, 1, 2, 2), (0, 0, 0, 0)])
def test_pad_matches_reference(mode, pads):
    inputs = [arange(3, 4), Initializer(ints(*pads))]
    if mode == "constant":
        inputs.append(Initializer(np.array(7.5, np.float32)))
    assert_matches_reference("Pad", inputs, opset=19, mode=mode)


def test_pad_with_axes_and_negative_pads():
    # A negative pad crops; the oracle here is plain NumPy slicing and padding.
    x = arange(3, 4, 5)
    (got,) = run_tinyinfer("Pad", [x, Initializer(ints(-1, 2, 1, -2)), None, Initializer(ints(2, 0))], opset=18)
    cropped = x[:1, :, 1:]  # axis 2: begin -1 (crop), end +1; axis 0: begin +2, end -2 (crop)
    expected = np.pad(cropped, [(2, 0), (0, 0), (0, 1)])
    np.testing.assert_array_equal(got, expected)


def test_pad_as_attributes_before_opset_11():
    assert_matches_reference("Pad", [arange(3, 4)], opset=10, pads=[0, 1, 1, 0], value=-2.0)


def test_pad_integer_data_and_default_value():
    assert_matches_reference("Pad", [arange(2, 2, dtype=np.int32), Initializer(ints(1, 0, 0, 1))], opset=19)


def test_pad_unknown_mode_is_refused():
    with pytest.raises(InvalidAttributeError, match="mode"):
        run_tinyinfer("Pad", [arange(2, 2), Initializer(ints(1, 1, 1, 1))], opset=19, mode="mirror")


def test_pad_wrong_pads_length_raises():
    with pytest.raises(ShapeInferenceError, match="pads"):
        infer_graph("Pad", [(2, 3), ints(1, 1)], opset=19)


# ---------------------------------------------------------------------------- Shape, Size, Identity, Dropout
@pytest.mark.parametrize("start, end", [(0, None), (1, None), (-1, None), (0, -1), (1, 2), (-10, 10), (2, 1)])
def test_shape_matches_reference(start, end):
    kwargs = {"start": start} if end is None else {"start": start, "end": end}
    assert_matches_reference("Shape", [arange(2, 3, 4)], **kwargs)


def test_size_and_identity_match_reference():
    assert_matches_reference("Size", [arange(2, 3, 4)])
    assert_matches_reference("Identity", [arange(2, 3, dtype=np.int8)])


@pytest.mark.parametrize("opset", [11, 13])
def test_dropout_at_inference_is_identity_with_a_true_mask(opset):
    x = arange(3, 4)
    inputs = [x] if opset < 12 else [x, Initializer(np.array(0.3, np.float32))]
    y, mask = run_tinyinfer("Dropout", inputs, 2, opset=opset)
    np.testing.assert_array_equal(y, x)
    assert mask.dtype == np.bool_ and mask.all()


def test_dropout_with_an_unnamed_mask_output():
    node = onnx.helper.make_node("Dropout", ["x"], ["y", ""], name="drop")
    x_info = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 3])
    graph = onnx.helper.make_graph([node], "g", [x_info], [onnx.helper.make_empty_tensor_value_info("y")])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)])
    x = arange(2, 3)
    (y,) = tinyinfer.InferenceSession(model, check_shapes=True).run(None, {"x": x})
    np.testing.assert_array_equal(y, x)


def test_dropout_in_training_mode_keeps_scaled_values():
    # The keep/drop draw is NumPy's Mersenne Twister from `seed`, as in ONNX's own tests:
    # kept entries are x / (1 - ratio) exactly, dropped ones 0, and the run is repeatable.
    x = np.random.default_rng(0).standard_normal((40, 50)).astype(np.float32)
    ratio, training = np.array(0.25, np.float32), np.array(True)
    inputs = [x, Initializer(ratio), Initializer(training)]
    y, mask = run_tinyinfer("Dropout", inputs, 2, opset=13, seed=3)
    expected_mask = np.random.RandomState(3).uniform(0, 1, x.shape) >= 0.25
    np.testing.assert_array_equal(mask, expected_mask)
    np.testing.assert_array_equal(y, np.where(mask, x * np.float32(1 / 0.75), 0))
    assert 0.2 < 1 - mask.mean() < 0.3  # the drop rate is about the ratio
    again, _ = run_tinyinfer("Dropout", inputs, 2, opset=13, seed=3)
    np.testing.assert_array_equal(again, y)


def test_dropout_training_without_seed_draws_fresh_masks():
    x = np.ones((64, 64), np.float32)
    inputs = [x, Initializer(np.array(0.5, np.float32)), Initializer(np.array(True))]
    session = tinyinfer.InferenceSession(single_node_model("Dropout", inputs, 2, opset=13), check_shapes=True)
    first, second = (session.run(None, {"in0": x})[1] for _ in range(2))
    assert first.dtype == np.bool_ and not np.array_equal(first, second)


# ---------------------------------------------------------------------------- DepthToSpace, SpaceToDepth, EyeLike
@pytest.mark.parametrize("mode", ["DCR", "CRD"])
@pytest.mark.parametrize("blocksize", [1, 2, 3])
def test_depth_to_space_matches_reference(mode, blocksize):
    x = arange(2, 2 * blocksize * blocksize, 3, 2)
    assert_matches_reference("DepthToSpace", [x], blocksize=blocksize, mode=mode)


@pytest.mark.parametrize("mode", ["DCR", "CRD"])
@pytest.mark.parametrize("blocksize", [1, 2])
def test_space_to_depth_inverts_depth_to_space(mode, blocksize):
    x = arange(1, 3, 4, 6)
    kwargs = {"blocksize": blocksize, "mode": mode}
    (packed,) = assert_matches_reference("SpaceToDepth", [x], opset=28, **kwargs)
    (unpacked,) = run_tinyinfer("DepthToSpace", [packed], opset=28, **kwargs)
    np.testing.assert_array_equal(unpacked, x)


def test_space_to_depth_indivisible_height_raises():
    with pytest.raises(ShapeInferenceError, match="height"):
        infer_graph("SpaceToDepth", [(1, 3, 5, 4)], {"blocksize": 2})


@pytest.mark.parametrize("k", [-1, 0, 2])
@pytest.mark.parametrize("dtype", [None, 7])
def test_eyelike_matches_reference(k, dtype):
    kwargs = {"k": k} if dtype is None else {"k": k, "dtype": dtype}
    assert_matches_reference("EyeLike", [arange(3, 4)], **kwargs)


# ---------------------------------------------------------------------------- shape inference with symbols
def test_reshape_keeps_symbolic_dims():
    assert infer_shape("Reshape", [("N", 3, 4), ints(0, -1)]) == ("N", 12)
    assert infer_shape("Reshape", [("N", 3, 4), ints(-1, 12)]) == ("N", 12)
    assert infer_shape("Reshape", [("N", 3, 4), ints(-1, 4)]) == (None, 4)
    assert infer_shape("Reshape", [("N", 3, 4), (2,)]) == (None, None)  # shape fed at run time


def test_transpose_concat_flatten_with_symbols():
    assert infer_shape("Transpose", [("N", "C", 4)], {"perm": [2, 0, 1]}) == (4, "N", "C")
    assert infer_shape("Concat", [("N", 3), ("N", 5)], {"axis": 1}) == ("N", 8)
    assert infer_shape("Concat", [("N", 3), (2, 3)], {"axis": 0}) == (None, 3)
    assert infer_shape("Flatten", [("N", 3, 4)], {"axis": 1}) == ("N", 12)
    assert infer_shape("Flatten", [("N", 3, 4)], {"axis": 2}) == (None, 4)


def test_concat_disagreeing_dims_raise():
    with pytest.raises(ShapeInferenceError, match="dimension 1"):
        infer_graph("Concat", [(2, 3), (2, 4)], {"axis": 0})


def test_slice_split_and_pad_with_symbols():
    assert infer_shape("Slice", [("N", 3, 4), ints(0), ints(INT64_MAX), ints(0)]) == ("N", 3, 4)
    backwards = [("N", 3, 4), ints(1, -1), ints(INT64_MAX, -4), ints(0, 2), ints(1, -1)]
    assert infer_shape("Slice", backwards) == (None, 3, 3)
    shapes = [v.shape for v in infer_graph("Split", [("N", 6)], {"axis": 1}, n_outputs=3)]
    assert shapes == [("N", 2)] * 3
    assert infer_shape("Pad", [("N", 3, 4), ints(0, 1, 0, 0, 1, 0)]) == ("N", 5, 4)


def test_squeeze_unsqueeze_expand_tile_with_symbols():
    assert infer_shape("Unsqueeze", [("N", 6), ints(0, -1)]) == (1, "N", 6, 1)
    assert infer_shape("Squeeze", [("N", 1), ints(1)]) == ("N",)
    assert infer_shape("Squeeze", [("N", 1)]) is None  # N might be 1 as well
    assert infer_shape("Expand", [("N", 1), ints(1, 4)]) == ("N", 4)
    assert infer_shape("Expand", [(3, 1), (3,)]) == (None, 3, None)  # shape fed at run time
    assert infer_shape("Tile", [("N", 3), ints(1, 2)]) == ("N", 6)
    assert infer_shape("DepthToSpace", [("N", 8, "H", 4)], {"blocksize": 2}) == ("N", 2, None, 8)


def test_shape_and_size_of_a_static_tensor_are_constants():
    symbolic, static = infer_graph("Shape", [("N", 3, 4)])[0], infer_graph("Shape", [(2, 3, 4)], {"start": 1})[0]
    assert symbolic.shape == (3,) and symbolic.const is None and symbolic.dtype == np.int64
    np.testing.assert_array_equal(static.const, [3, 4])
    size = infer_graph("Size", [(2, 3, 4)])[0]
    assert size.shape == () and int(size.const) == 24


def test_shape_gather_concat_reshape_chain_resolves():
    # The classic exporter pattern: reshape to [batch, -1] computed from the input's shape.
    nodes = [
        Node("Shape", ["x"], ["s"], name="shape"),
        Node("Gather", ["s", "first"], ["batch"], {"axis": 0}, name="gather"),
        Node("Unsqueeze", ["batch", "zero"], ["batch1"], name="unsqueeze"),
        Node("Concat", ["batch1", "minus_one"], ["target"], {"axis": 0}, name="concat"),
        Node("Reshape", ["x", "target"], ["y"], name="reshape"),
    ]
    graph = Graph(
        nodes=nodes,
        inputs=[Value("x", np.float32, ("N", 3, 4))],
        outputs=[Value("y")],
        initializers={"first": np.array(0, np.int64), "zero": ints(0), "minus_one": ints(-1)},
        opset={"": 13},
    )
    ops.prepare_graph(graph)
    assert ops.infer_shapes(graph)["y"].shape == (None, None)
    concrete = ops.infer_shapes(graph, {"x": Value("x", np.float32, (5, 3, 4))})
    assert concrete["y"].shape == (5, 12)
    np.testing.assert_array_equal(concrete["target"].const, [5, -1])
