"""Every mistake a user can make ends in a TinyInferError subclass that says what was expected.

Malformed files, unsupported ops and opsets, bad attributes and bad feeds each get their
own class; no bare KeyError, IndexError or ValueError reaches the user, which a fuzz loop
over mutated model bytes checks as well.
"""

from __future__ import annotations

import copy
import inspect

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import tinyinfer as ti
from tinyinfer import errors
from tinyinfer.errors import (
    FeedNameError,
    FeedShapeError,
    FeedTypeError,
    InvalidAttributeError,
    InvalidFeedError,
    InvalidGraphError,
    ModelLoadError,
    ShapeInferenceError,
    TinyInferError,
    UnsupportedOpError,
)
from tinyinfer.ops import OPS, REQUIRED, Op
from tinyinfer.ops.base import bad_attribute, like

WEIGHT = np.array([1.0, -2.0, 0.5], dtype=np.float32)


def small_model() -> onnx.ModelProto:
    """y = Where(x > w, x - w, x * w) + bias; x: float[N, 3]."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])
    nodes = [
        helper.make_node("Greater", ["x", "w"], ["mask"], name="compare"),
        helper.make_node("Sub", ["x", "w"], ["minus"], name="minus"),
        helper.make_node("Mul", ["x", "w"], ["times"], name="times"),
        helper.make_node("Where", ["mask", "minus", "times"], ["picked"], name="pick"),
        helper.make_node("Add", ["picked", "bias"], ["y"], name="bias"),
    ]
    initializers = [numpy_helper.from_array(WEIGHT, "w"), numpy_helper.from_array(np.float32(0.25), "bias")]
    model = helper.make_model(helper.make_graph(nodes, "small", [x], [y], initializers),
                              opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


def one_node_model(node, inputs, outputs, opsets=(("", 17),)) -> onnx.ModelProto:
    graph = helper.make_graph([node], "one", inputs, outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])


def tensor(name, elem=TensorProto.FLOAT, shape=("N", 3)):
    return helper.make_tensor_value_info(name, elem, shape)


def test_every_error_is_a_tinyinfer_error():
    classes = [c for _, c in inspect.getmembers(errors, inspect.isclass) if c.__module__ == errors.__name__]
    assert len(classes) >= 10
    assert all(issubclass(c, TinyInferError) for c in classes)
    assert all(issubclass(c, InvalidFeedError) for c in (FeedNameError, FeedTypeError, FeedShapeError))


# ---------------------------------------------------------------------------- malformed files
SERIALIZED = small_model().SerializeToString()


@pytest.mark.parametrize("fraction", [0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99])
def test_truncated_model_bytes(fraction):
    cut = SERIALIZED[: int(len(SERIALIZED) * fraction)]
    with pytest.raises(ModelLoadError, match="is not a valid ONNX model"):
        ti.InferenceSession(cut)


def test_every_truncation_point_is_refused():
    for end in range(1, len(SERIALIZED)):
        with pytest.raises(ModelLoadError):
            ti.InferenceSession(SERIALIZED[:end])


@pytest.mark.parametrize("length", [1, 5, 64, 1000, 20000])
def test_random_bytes(length):
    noise = np.random.default_rng(length).integers(0, 256, length, dtype=np.uint8).tobytes()
    with pytest.raises(ModelLoadError, match="not a valid ONNX model"):
        ti.InferenceSession(noise)


def test_empty_bytes():
    with pytest.raises(ModelLoadError, match="empty, not an ONNX model"):
        ti.InferenceSession(b"")


def test_text_file(tmp_path):
    path = tmp_path / "notes.onnx"
    path.write_text("This is a README, not a model.\nNothing to see here.\n")
    with pytest.raises(ModelLoadError, match=r"'.*notes.onnx' is not a valid ONNX model"):
        ti.InferenceSession(path)


def test_missing_path_and_directory(tmp_path):
    with pytest.raises(ModelLoadError, match="no model file at '.*absent.onnx'"):
        ti.InferenceSession(tmp_path / "absent.onnx")
    with pytest.raises(ModelLoadError, match="no model file"):
        ti.InferenceSession(str(tmp_path))


def test_names_that_are_not_utf8():
    data = bytearray(SERIALIZED)
    position = data.index(b"Greater")
    data[position + 1] = 0xFF  # protobuf then hands the op type back as bytes
    with pytest.raises(ModelLoadError, match=r"op type b'G\\xffeater' is not UTF-8 text"):
        ti.InferenceSession(bytes(data))


def test_source_of_the_wrong_kind():
    with pytest.raises(ModelLoadError, match="cannot load a model from a int; give a path, bytes or onnx.ModelProto"):
        ti.InferenceSession(42)


# ---------------------------------------------------------------------------- ops and opsets
def test_unknown_op_names_op_domain_opset_and_node():
    model = one_node_model(helper.make_node("Frobnicate", ["x"], ["y"], name="mystery"), [tensor("x")], [tensor("y")])
    with pytest.raises(UnsupportedOpError) as info:
        ti.InferenceSession(model)
    message = str(info.value)
    for part in ("'Frobnicate'", "'mystery'", "ai.onnx", "opset 17", "supported_ops()"):
        assert part in message


def test_op_in_a_domain_the_model_does_not_import():
    node = helper.make_node("Add", ["x", "x"], ["y"], domain="com.example", name="foreign")
    with pytest.raises(UnsupportedOpError, match="'foreign'.*imports no opset for domain 'com.example'"):
        ti.InferenceSession(one_node_model(node, [tensor("x")], [tensor("y")]))


def test_default_domain_without_an_opset_import():
    node = helper.make_node("Add", ["x", "x"], ["y"], name="plain")
    model = one_node_model(node, [tensor("x")], [tensor("y")], opsets=(("com.example", 1),))
    with pytest.raises(UnsupportedOpError, match="'plain'.*imports no opset for domain 'ai.onnx'"):
        ti.InferenceSession(model)


def test_opset_older_than_the_op_supports():
    node = helper.make_node("Sub", ["x", "x"], ["y"], name="minus")  # Sub-6 had explicit broadcast attributes
    model = one_node_model(node, [tensor("x")], [tensor("y")], opsets=(("", 6),))
    onnx.checker.check_model(model)
    with pytest.raises(UnsupportedOpError, match=r"Sub 'minus'.*opset 6 is older than opset 7.*version_converter"):
        ti.InferenceSession(model)


# ---------------------------------------------------------------------------- attributes
class Scale(Op):
    """Test op: y = x * factor, with a required attribute and an integer-valued one."""

    op_type = "Scale"
    domain = "test.tinyinfer"
    attributes = {"factor": REQUIRED, "repeat": 1}

    def check(self, node):
        if node.attrs["repeat"] < 1:
            raise bad_attribute(node, f"attribute 'repeat' must be >= 1, got {node.attrs['repeat']}")

    def infer(self, node, inputs):
        return [like(node, 0, inputs[0])]

    def reference(self, node, x):
        return (x * node.attrs["factor"]).astype(x.dtype)


@pytest.fixture
def scale_model(monkeypatch):
    monkeypatch.setitem(OPS, ("test.tinyinfer", "Scale"), Scale())

    def build(**attrs):
        node = helper.make_node("Scale", ["x"], ["y"], domain="test.tinyinfer", name="scaler", **attrs)
        return one_node_model(node, [tensor("x")], [tensor("y")], opsets=(("test.tinyinfer", 1),))

    return build


def test_attributes_that_are_right_work(scale_model):
    (y,) = ti.InferenceSession(scale_model(factor=2.0)).run(None, {"x": WEIGHT[None]})
    np.testing.assert_array_equal(y, 2 * WEIGHT[None])


def test_unknown_attribute_name(scale_model):
    with pytest.raises(InvalidAttributeError, match=r"'scaler'.*unknown attribute\(s\) \['factr'\].*'factor'"):
        ti.InferenceSession(scale_model(factor=2.0, factr=3.0))
    with pytest.raises(InvalidAttributeError, match=r"Add 'bias'.*unknown attribute\(s\) \['alpha'\]"):
        model = small_model()
        model.graph.node[-1].attribute.append(helper.make_attribute("alpha", 1.0))
        ti.InferenceSession(model)


def test_missing_required_attribute(scale_model):
    with pytest.raises(InvalidAttributeError, match="Scale 'scaler'.*required attribute 'factor' is missing"):
        ti.InferenceSession(scale_model())


@pytest.mark.parametrize(
    "attrs, expected",
    [
        ({"factor": 2.0, "repeat": 0}, "'repeat' must be >= 1, got 0"),
        ({"factor": 2.0, "repeat": 1.5}, "'repeat' must be an integer, got 1.5"),
        ({"factor": 2.0, "repeat": [1, 2]}, "'repeat' must be a single int, got a list"),
    ],
)
def test_bad_attribute_values(scale_model, attrs, expected):
    with pytest.raises(InvalidAttributeError, match=expected):
        ti.InferenceSession(scale_model(**attrs))


# ---------------------------------------------------------------------------- feeds
@pytest.fixture(scope="module")
def pair_session():
    """Two inputs sharing the symbolic dim 'N': a: float[N, 3], b: float[N, 3] -> a + b."""
    node = helper.make_node("Add", ["a", "b"], ["y"])
    return ti.InferenceSession(one_node_model(node, [tensor("a"), tensor("b")], [tensor("y")]))


def ones(*shape, dtype=np.float32):
    return np.ones(shape, dtype)


def test_missing_feed(pair_session):
    with pytest.raises(FeedNameError, match=r"missing feed\(s\) \['b'\]; the model's inputs are \['a', 'b'\]"):
        pair_session.run(None, {"a": ones(2, 3)})


def test_unexpected_feed(pair_session):
    with pytest.raises(FeedNameError, match=r"unexpected feed\(s\) \['c'\]"):
        pair_session.run(None, {"a": ones(2, 3), "b": ones(2, 3), "c": ones(2, 3)})


def test_feeds_that_are_not_a_dict(pair_session):
    with pytest.raises(FeedNameError, match="feeds must be a dict"):
        pair_session.run(None, [ones(2, 3), ones(2, 3)])


@pytest.mark.parametrize(
    "bad, found",
    [
        (ones(2, 3, dtype=np.float64), r"tensor\(double\)"),
        (ones(2, 3, dtype=np.int32), r"tensor\(int32\)"),
        (np.zeros((2, 3), "datetime64[s]"), "a type ONNX has no name for"),
        ([[1.0, 2.0, 3.0], [4.0]], "not convertible to an array"),
    ],
    ids=["double", "int32", "datetime", "ragged-list"],
)
def test_wrong_dtype(pair_session, bad, found):
    with pytest.raises(FeedTypeError, match=rf"input 'b' expects tensor\(float\).*{found}"):
        pair_session.run(None, {"a": ones(2, 3), "b": bad})


def test_wrong_rank(pair_session):
    with pytest.raises(FeedShapeError, match=r"input 'a' expects rank 2 \[N, 3\], got rank 3 \[1, 2, 3\]"):
        pair_session.run(None, {"a": ones(1, 2, 3), "b": ones(2, 3)})


def test_wrong_static_dim(pair_session):
    with pytest.raises(FeedShapeError, match=r"input 'b' expects \[N, 3\], got \[2, 4\] \(dimension 1 must be 3\)"):
        pair_session.run(None, {"a": ones(2, 3), "b": ones(2, 4)})


def test_inconsistent_symbolic_dim(pair_session):
    with pytest.raises(FeedShapeError, match=r"input 'b' dimension 0 \('N'\) is 5, but 'N' is 2 in input 'a'"):
        pair_session.run(None, {"a": ones(2, 3), "b": ones(5, 3)})


def test_correct_feeds_still_work_after_errors(pair_session):
    (y,) = pair_session.run(None, {"a": ones(4, 3), "b": ones(4, 3)})
    np.testing.assert_array_equal(y, np.full((4, 3), 2, np.float32))


# ---------------------------------------------------------------------------- graph structure
def test_cycle_in_a_model_file():
    nodes = [helper.make_node("Add", ["x", "c"], ["a"], name="one"), helper.make_node("Neg", ["a"], ["c"], name="two"),
             helper.make_node("Neg", ["a"], ["y"], name="out")]
    model = helper.make_model(helper.make_graph(nodes, "loop", [tensor("x")], [tensor("y")]))
    with pytest.raises(InvalidGraphError, match="cycle through: Add 'one'.*Neg 'two'"):
        ti.InferenceSession(model)


def test_node_with_more_outputs_than_its_op_makes():
    node = helper.make_node("Add", ["x", "x"], ["y", "extra"], name="greedy")
    model = one_node_model(node, [tensor("x")], [tensor("y")])
    with pytest.raises(ShapeInferenceError, match=r"'greedy'.*declares 2 outputs.*\['extra'\]"):
        ti.InferenceSession(model).run(None, {"x": ones(1, 3)})


def test_shapes_that_cannot_broadcast():
    node = helper.make_node("Add", ["a", "b"], ["y"], name="mismatch")
    model = one_node_model(node, [tensor("a", shape=[2, 3]), tensor("b", shape=[4])], [tensor("y", shape=None)])
    with pytest.raises(ShapeInferenceError, match=r"'mismatch'.*\[\[2, 3\], \[4\]\] cannot be broadcast"):
        ti.InferenceSession(model).run(None, {"a": ones(2, 3), "b": ones(4)})


# ---------------------------------------------------------------------------- fuzzing
def _feeds_for(session) -> dict[str, np.ndarray] | None:
    """Small feeds matching the declared inputs, or None if a declared shape is not small."""
    result = {}
    for value in session.graph.inputs:
        if value.dtype is None or value.shape is None or value.dtype.kind not in "biuf":
            return None
        shape = tuple(d if isinstance(d, int) else 2 for d in value.shape)
        if any(d > 64 for d in shape) or len(shape) > 6:
            return None
        result[value.name] = np.ones(shape, value.dtype)
    return result


def _load_and_run(model: bytes | onnx.ModelProto) -> None:
    session = ti.InferenceSession(model)
    feeds = _feeds_for(session)
    if feeds is not None:
        session.run(None, feeds)


def _mutate(data: bytes, rng: np.random.Generator) -> bytes:
    buffer = bytearray(data)
    kind = rng.integers(4)
    position = int(rng.integers(len(buffer)))
    if kind == 0:  # flip one bit
        buffer[position] ^= 1 << int(rng.integers(8))
    elif kind == 1:  # overwrite a few bytes
        count = int(rng.integers(1, 5))
        buffer[position : position + count] = rng.integers(0, 256, count, dtype=np.uint8).tobytes()
    elif kind == 2:  # delete a short run
        del buffer[position : position + int(rng.integers(1, 8))]
    else:  # insert a short run
        buffer[position:position] = rng.integers(0, 256, int(rng.integers(1, 8)), dtype=np.uint8).tobytes()
    return bytes(buffer)


def test_mutated_models_fail_only_with_tinyinfer_errors():
    rng = np.random.default_rng(2024)
    outcomes = {"ran": 0, "refused": 0}
    for trial in range(200):
        data = _mutate(SERIALIZED, rng)
        try:
            _load_and_run(data)
            outcomes["ran"] += 1
        except TinyInferError:
            outcomes["refused"] += 1
        except Exception as exc:  # pragma: no cover - the failure message is the point
            pytest.fail(f"mutation {trial} raised a bare {type(exc).__name__}: {exc}")
    assert outcomes["refused"] > 0 and outcomes["ran"] > 0  # both paths were exercised


ELEMENTWISE = ["Add", "Sub", "Mul", "Div", "Neg", "Abs", "Equal", "Greater", "Where", "Sum", "Not"]
NAMES = ["x", "w", "bias", "mask", "minus", "times", "picked", "y", "", "nowhere"]


def _mutate_structure(model: onnx.ModelProto, rng: np.random.Generator) -> None:
    """One well-formed protobuf edit that may break the model's meaning: types, dims, wiring, ops."""
    graph = model.graph
    node = graph.node[int(rng.integers(len(graph.node)))]
    kind = int(rng.integers(8))
    if kind == 0:
        graph.input[0].type.tensor_type.elem_type = int(rng.integers(0, 30))
    elif kind == 1:
        dim = graph.input[0].type.tensor_type.shape.dim[int(rng.integers(2))]
        if rng.random() < 0.5:
            dim.dim_value = int(rng.integers(0, 5))
        else:
            dim.dim_param = str(rng.choice(["N", "M"]))
    elif kind == 2:
        node.op_type = str(rng.choice(ELEMENTWISE))
    elif kind == 3:
        if node.input and rng.random() < 0.5:
            del node.input[int(rng.integers(len(node.input)))]
        else:
            node.input.append(str(rng.choice(NAMES)))
    elif kind == 4:
        node.output.append(str(rng.choice(NAMES)))
    elif kind == 5:
        weight = graph.initializer[int(rng.integers(len(graph.initializer)))]
        shape = tuple(int(d) for d in rng.integers(1, 4, int(rng.integers(0, 3))))
        dtype = [np.float32, np.float64, np.int64, np.bool_][int(rng.integers(4))]
        weight.CopyFrom(numpy_helper.from_array(rng.standard_normal(shape).astype(dtype), weight.name))
    elif kind == 6:
        node.attribute.append(helper.make_attribute(str(rng.choice(["alpha", "axis"])), 1))
    else:
        model.opset_import[0].version = int(rng.integers(0, 25))


def test_structurally_broken_models_fail_only_with_tinyinfer_errors():
    rng = np.random.default_rng(7)
    base = small_model()
    outcomes = {"ran": 0, "refused": 0}
    for trial in range(300):
        model = copy.deepcopy(base)
        for _ in range(int(rng.integers(1, 4))):
            _mutate_structure(model, rng)
        try:
            _load_and_run(model)
            outcomes["ran"] += 1
        except TinyInferError:
            outcomes["refused"] += 1
        except Exception as exc:  # pragma: no cover - the failure message is the point
            pytest.fail(f"structural mutation {trial} raised a bare {type(exc).__name__}: {exc}")
    assert outcomes["refused"] > 0 and outcomes["ran"] > 0
