"""Graded tests of chapter 00's exercises (exercises/ch00_quickstart.py).

    pytest tests/exercises --impl=exercises -m ex1     # conv_output_shape
    pytest tests/exercises --impl=exercises -m ex2     # topological_sort
    pytest tests/exercises --impl=exercises -m ex3     # run_graph

Oracles: ONNX Runtime (the output shape of a real Conv/MaxPool node, the outputs of small
models) and the defining property of a topological order. None of them reads the solutions.
"""

from __future__ import annotations

import random

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import tinyinfer
from tinyinfer.errors import InvalidGraphError
from tinyinfer.ir import Graph, Node, Value
from tinyinfer.ops import OPS, Op

# Models here use ai.onnx opset 17 and IR version 8, both long supported by ONNX Runtime.
OPSET = 17


def make_model(nodes, inputs, outputs, initializers=()) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "exercise", inputs, outputs, initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def run_onnxruntime(model: onnx.ModelProto, feeds: dict) -> dict[str, np.ndarray]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, feeds)))


# ============================================================================ exercise 1
def onnxruntime_window_output(op_type, input_shape, kernel_shape, strides=None, pads=None, dilations=None):
    """Spatial output shape of a real one-channel Conv or MaxPool node run by ONNX Runtime."""
    rank = len(input_shape)
    attrs = {"kernel_shape": list(kernel_shape)}
    for name, value in (("strides", strides), ("pads", pads), ("dilations", dilations)):
        if value is not None:
            attrs[name] = list(value)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, *input_shape])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * (2 + rank))
    initializers = []
    inputs = ["x"]
    if op_type == "Conv":
        weight = np.ones((1, 1, *kernel_shape), np.float32)
        initializers.append(numpy_helper.from_array(weight, "w"))
        inputs.append("w")
    node = helper.make_node(op_type, inputs, ["y"], **attrs)
    model = make_model([node], [x], [y], initializers)
    feeds = {"x": np.zeros((1, 1, *input_shape), np.float32)}
    (result,) = run_onnxruntime(model, feeds).values()
    assert result.shape[:2] == (1, 1) and len(result.shape) == 2 + rank
    return tuple(result.shape[2:])


def _random_windows(count: int, seed: int, pooling: bool):
    """Seeded random window configurations over 1-3 spatial axes, each with output >= 1."""
    rng = random.Random(seed)
    cases = []
    for _ in range(count):
        rank = rng.choice([1, 2, 2, 2, 3])
        kernel = [rng.randint(1, 5) for _ in range(rank)]
        strides = [rng.randint(1, 3) for _ in range(rank)]
        dilations = [rng.randint(1, 3) for _ in range(rank)]
        # ONNX pooling wants each pad smaller than the kernel; Conv accepts any padding.
        limit = (lambda k: k - 1) if pooling else (lambda k: 3)
        begins = [rng.randint(0, limit(k)) for k in kernel]
        ends = [rng.randint(0, limit(k)) for k in kernel]
        covered = [d * (k - 1) + 1 for d, k in zip(dilations, kernel)]
        sizes = [max(1, c - b - e) + rng.randint(0, 7) for c, b, e in zip(covered, begins, ends)]
        cases.append((sizes, kernel, strides, begins + ends, dilations))
    return cases


# Real layers whose sizes readers will meet again (AlexNet conv1, ResNet stem, pooling).
FAMOUS = [
    ("Conv", (224, 224), (11, 11), (4, 4), (2, 2, 2, 2), (1, 1)),  # AlexNet conv1 -> 55x55
    ("Conv", (224, 224), (7, 7), (2, 2), (3, 3, 3, 3), (1, 1)),  # ResNet stem -> 112x112
    ("MaxPool", (112, 112), (3, 3), (2, 2), (1, 1, 1, 1), (1, 1)),  # ResNet pool -> 56x56
    ("Conv", (5, 5), (3, 3), (2, 2), (1, 1, 1, 1), (1, 1)),  # the docstring's example
    ("Conv", (5, 5), (3, 3), (2, 2), (1, 1, 1, 1), (2, 2)),  # ... with dilation 2
    ("Conv", (9, 7), (3, 2), (1, 3), (0, 2, 1, 0), (2, 1)),  # every axis different
]

GRID = (
    FAMOUS
    + [("Conv", *case) for case in _random_windows(60, seed=0, pooling=False)]
    + [("MaxPool", *case) for case in _random_windows(40, seed=1, pooling=True)]
)


@pytest.mark.ex1
@pytest.mark.parametrize(
    "op_type, input_shape, kernel_shape, strides, pads, dilations",
    GRID,
    ids=[f"{case[0]}-{i}" for i, case in enumerate(GRID)],
)
def test_conv_output_shape_matches_onnxruntime(impl, op_type, input_shape, kernel_shape, strides, pads, dilations):
    expected = onnxruntime_window_output(op_type, input_shape, kernel_shape, strides, pads, dilations)
    got = impl.conv_output_shape(tuple(input_shape), tuple(kernel_shape), tuple(strides), tuple(pads), tuple(dilations))
    assert tuple(got) == expected, (
        f"{op_type} on {input_shape} with kernel {kernel_shape}, strides {strides}, pads {pads}, "
        f"dilations {dilations}: ONNX Runtime gives {expected}, you gave {got}"
    )


@pytest.mark.ex1
def test_conv_output_shape_returns_a_tuple_of_ints(impl):
    got = impl.conv_output_shape((32, 32), (3, 3), (1, 1), (1, 1, 1, 1), (1, 1))
    assert isinstance(got, tuple) and all(type(d) is int for d in got), f"expected a tuple of int, got {got!r}"
    assert got == (32, 32)


@pytest.mark.ex1
@pytest.mark.parametrize("input_shape, kernel_shape", [((7, 7), (3, 3)), ((10,), (4,)), ((6, 5, 4), (1, 2, 3))])
def test_conv_output_shape_defaults_are_onnx_defaults(impl, input_shape, kernel_shape):
    # Leaving out strides, pads and dilations means 1, 0 and 1 (what a Conv node without
    # those attributes does).
    expected = onnxruntime_window_output("Conv", input_shape, kernel_shape)
    assert tuple(impl.conv_output_shape(input_shape, kernel_shape)) == expected


@pytest.mark.ex1
@pytest.mark.parametrize(
    "input_shape, kernel_shape, strides, pads, dilations",
    [
        ((2, 2), (3, 3), (1, 1), (0, 0, 0, 0), (1, 1)),  # kernel larger than the image
        ((5, 5), (3, 3), (1, 1), (0, 0, 0, 0), (3, 3)),  # dilated kernel covers 7 > 5
        ((8,), (5,), (1,), (0, 0), (2,)),  # covers 9 > 8
    ],
)
def test_conv_output_shape_rejects_a_kernel_that_does_not_fit(impl, input_shape, kernel_shape, strides, pads, dilations):
    with pytest.raises(ValueError):
        impl.conv_output_shape(input_shape, kernel_shape, strides, pads, dilations)


# ============================================================================ exercise 2
def random_dag(seed: int) -> Graph:
    """A random DAG of 1-25 nodes with fan-in 1-3, repeated inputs, weights, multi-output
    nodes and omitted optional inputs; its nodes are then shuffled out of order."""
    rng = random.Random(seed)
    graph = Graph(name=f"dag{seed}", inputs=[Value("in0"), Value("in1")], opset={"": OPSET})
    graph.initializers["w"] = np.zeros(1, np.float32)
    available = ["in0", "in1", "w"]
    for i in range(rng.randint(1, 25)):
        inputs = [rng.choice(available) for _ in range(rng.randint(1, 3))]
        if rng.random() < 0.2:
            inputs.insert(1, "")  # an optional input left out
        outputs = [f"t{i}"] + ([f"t{i}b"] if rng.random() < 0.2 else [])
        graph.nodes.append(Node("Sum", inputs, outputs, name=f"n{i}"))
        available.extend(outputs)
    graph.outputs = [Value(available[-1])]
    rng.shuffle(graph.nodes)
    return graph


def assert_topological(graph: Graph, order) -> None:
    order = list(order)
    assert sorted(map(id, order)) == sorted(map(id, graph.nodes)), (
        "the result must hold every node of graph.nodes exactly once (the same Node objects)"
    )
    position = {name: i for i, node in enumerate(order) for name in node.outputs if name}
    for i, node in enumerate(order):
        for name in node.inputs:
            if name in position:
                assert position[name] < i, (
                    f"node {node.name} (position {i}) reads '{name}', produced by a node at position {position[name]}"
                )


@pytest.mark.ex2
@pytest.mark.parametrize("seed", range(30))
def test_topological_sort_puts_producers_first(impl, seed):
    graph = random_dag(seed)
    before = [node.name for node in graph.nodes]
    order = impl.topological_sort(graph)
    assert_topological(graph, order)
    assert [node.name for node in graph.nodes] == before, "graph.nodes must not be reordered"


@pytest.mark.ex2
def test_topological_sort_reverse_chain(impl):
    # A chain listed backwards: the only valid order is the reverse of the listing.
    nodes = [Node("Neg", [f"t{i}"], [f"t{i + 1}"], name=f"n{i}") for i in range(6)]
    graph = Graph(nodes=nodes[::-1], inputs=[Value("t0")], outputs=[Value("t6")])
    assert [n.name for n in impl.topological_sort(graph)] == [f"n{i}" for i in range(6)]


@pytest.mark.ex2
def test_topological_sort_counts_a_repeated_input_once(impl):
    # z = Add(y, y): the producer of y must release z once, not twice.
    graph = Graph(
        nodes=[
            Node("Add", ["y", "y"], ["z"], name="C"),
            Node("Neg", ["in"], ["x"], name="A"),
            Node("Exp", ["x"], ["y"], name="B"),
        ],
        inputs=[Value("in")],
        outputs=[Value("z")],
    )
    assert [n.name for n in impl.topological_sort(graph)] == ["A", "B", "C"]


@pytest.mark.ex2
def test_topological_sort_of_an_empty_graph(impl):
    assert list(impl.topological_sort(Graph(name="empty"))) == []


@pytest.mark.ex2
@pytest.mark.parametrize("length", [1, 2, 3])
def test_topological_sort_rejects_a_cycle(impl, length):
    # n0 -> n1 -> ... -> n{length-1} -> n0, fed also by a graph input, plus an innocent node.
    nodes = [Node("Add", [f"c{(i - 1) % length}", "in"], [f"c{i}"], name=f"n{i}") for i in range(length)]
    nodes.append(Node("Neg", ["in"], ["free"], name="innocent"))
    graph = Graph(nodes=nodes, inputs=[Value("in")], outputs=[Value("free")], name="cyclic")
    with pytest.raises(InvalidGraphError):
        impl.topological_sort(graph)


# ============================================================================ exercise 3
def _info(name, elem_type, shape):
    return helper.make_tensor_value_info(name, elem_type, shape)


F = TensorProto.FLOAT


def model_diamond():
    # Two branches from x meet again: (x + w) * x - sqrt(|x|), with a broadcast weight.
    w = numpy_helper.from_array(np.array([0.5, -1.0, 2.0], np.float32), "w")
    nodes = [
        helper.make_node("Add", ["x", "w"], ["a"]),
        helper.make_node("Mul", ["a", "x"], ["b"]),
        helper.make_node("Abs", ["x"], ["c"]),
        helper.make_node("Sqrt", ["c"], ["d"]),
        helper.make_node("Sub", ["b", "d"], ["y"]),
    ]
    return make_model(nodes, [_info("x", F, [2, 3])], [_info("y", F, [2, 3])], [w]), ["x"]


def model_two_outputs():
    # An intermediate that is both a graph output and read by a later node.
    nodes = [
        helper.make_node("Exp", ["x"], ["e"]),
        helper.make_node("Sum", ["e", "x", "z"], ["s"]),
        helper.make_node("Div", ["s", "e"], ["y"]),
    ]
    inputs = [_info("x", F, [4, 1]), _info("z", F, [1, 5])]
    outputs = [_info("e", F, [4, 1]), _info("y", F, [4, 5])]
    return make_model(nodes, inputs, outputs), ["x", "z"]


def model_select():
    # A boolean intermediate feeding Where, and variadic Max/Min over three tensors.
    k = numpy_helper.from_array(np.full((1, 4), 0.25, np.float32), "k")
    nodes = [
        helper.make_node("Greater", ["x", "z"], ["mask"]),
        helper.make_node("Where", ["mask", "x", "z"], ["larger"]),
        helper.make_node("Max", ["x", "z", "k"], ["top"]),
        helper.make_node("Min", ["x", "z", "k"], ["bottom"]),
        helper.make_node("Sub", ["top", "bottom"], ["spread"]),
        helper.make_node("Mul", ["spread", "larger"], ["y"]),
    ]
    inputs = [_info("x", F, [3, 4]), _info("z", F, [3, 4])]
    return make_model(nodes, inputs, [_info("y", F, [3, 4]), _info("mask", TensorProto.BOOL, [3, 4])], [k]), ["x", "z"]


def model_integers():
    # int64 arithmetic: ONNX Div truncates toward zero, which is not NumPy's floor division.
    d = numpy_helper.from_array(np.array([3, -2], np.int64), "d")
    nodes = [
        helper.make_node("Mul", ["i", "i"], ["sq"]),
        helper.make_node("Sub", ["sq", "i"], ["t"]),
        helper.make_node("Div", ["t", "d"], ["q"]),
        helper.make_node("Neg", ["q"], ["y"]),
    ]
    i = TensorProto.INT64
    return make_model(nodes, [_info("i", i, [3, 2])], [_info("y", i, [3, 2])], [d]), ["i"]


def model_small_cnn():
    # Conv -> Relu -> MaxPool -> Flatten -> Gemm -> Softmax: a whole (tiny) classifier.
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((4, 2, 3, 3)) * np.sqrt(2 / 18)).astype(np.float32)  # He scale
    b = (rng.standard_normal(4) * 0.1).astype(np.float32)
    fc = (rng.standard_normal((3, 4 * 3 * 3)) * np.sqrt(2 / 36)).astype(np.float32)
    fb = np.zeros(3, np.float32)
    weights = [numpy_helper.from_array(a, n) for a, n in ((w, "w"), (b, "b"), (fc, "fc"), (fb, "fb"))]
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "fc", "fb"], ["g"], transB=1),
        helper.make_node("Softmax", ["g"], ["y"], axis=1),
    ]
    return make_model(nodes, [_info("x", F, [2, 2, 6, 6])], [_info("y", F, [2, 3])], weights), ["x"]


MODELS = {
    "diamond": model_diamond,
    "two_outputs": model_two_outputs,
    "select": model_select,
    "integers": model_integers,
    "small_cnn": model_small_cnn,
}


def random_feeds(model: onnx.ModelProto, names: list[str], seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for value in model.graph.input:
        if value.name not in names:
            continue
        shape = [d.dim_value for d in value.type.tensor_type.shape.dim]
        if value.type.tensor_type.elem_type == TensorProto.INT64:
            feeds[value.name] = rng.integers(-9, 10, size=shape).astype(np.int64)
        else:
            feeds[value.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


@pytest.mark.ex3
@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("seed", [0, 1])
def test_run_graph_matches_onnxruntime(impl, name, seed):
    model, input_names = MODELS[name]()
    feeds = random_feeds(model, input_names, seed)
    expected = run_onnxruntime(model, feeds)

    graph = tinyinfer.load(model)
    # Shuffle the node list so that only a real topological walk gets the order right.
    random.Random(seed).shuffle(graph.nodes)
    given = {k: v.copy() for k, v in feeds.items()}
    got = impl.run_graph(graph, given)

    assert set(got) == set(expected), f"expected outputs {sorted(expected)}, got {sorted(got)}"
    for output, want in expected.items():
        have = np.asarray(got[output])
        assert have.dtype == want.dtype, f"output '{output}': dtype {have.dtype}, ONNX Runtime gives {want.dtype}"
        assert have.shape == want.shape, f"output '{output}': shape {have.shape}, ONNX Runtime gives {want.shape}"
        # float32 results may differ from ONNX Runtime by a few units in the last place
        # (different exp/sqrt implementations, different summation order in Conv and Gemm).
        np.testing.assert_allclose(have, want, rtol=1e-5, atol=1e-6, err_msg=f"output '{output}'")
    for key, value in feeds.items():
        np.testing.assert_array_equal(given[key], value, err_msg=f"run_graph changed the feed '{key}'")


class SortPair(Op):
    """Test-only op: (lo, hi) = elementwise (min, max) of a and b; a third input, optional,
    is added to both when given. Exercises a tuple result and an omitted input ("")."""

    op_type = "SortPair"
    domain = "test.ch00"

    def infer(self, node, inputs):
        return [Value(name, inputs[0].dtype, inputs[0].shape) for name in node.outputs]

    def reference(self, node, a, b, offset=None):
        lo, hi = np.minimum(a, b), np.maximum(a, b)
        if offset is not None:
            lo, hi = lo + offset, hi + offset
        return lo, hi


@pytest.mark.ex3
def test_run_graph_handles_tuple_results_and_omitted_inputs(impl, monkeypatch):
    monkeypatch.setitem(OPS, ("test.ch00", "SortPair"), SortPair())
    graph = Graph(
        nodes=[
            Node("Neg", ["lo"], ["y"], name="neg"),
            Node("SortPair", ["a", "b", "one"], ["lo2", ""], domain="test.ch00", name="again"),
            Node("SortPair", ["a", "b", ""], ["lo", "hi"], domain="test.ch00", name="pair"),
            Node("Add", ["hi", "lo2"], ["z"], name="add"),
        ],
        inputs=[Value("a", np.float32, (3,)), Value("b", np.float32, (3,))],
        outputs=[Value("y"), Value("z"), Value("hi")],
        initializers={"one": np.ones(3, np.float32)},
        opset={"": OPSET, "test.ch00": 1},
    )
    graph = tinyinfer.load(graph)
    a = np.array([1.0, 5.0, -2.0], np.float32)
    b = np.array([3.0, 4.0, -7.0], np.float32)
    got = impl.run_graph(graph, {"a": a, "b": b})
    assert set(got) == {"y", "z", "hi"}, f"expected the graph outputs y, z, hi; got {sorted(got)}"
    np.testing.assert_array_equal(got["y"], -np.minimum(a, b))
    np.testing.assert_array_equal(got["hi"], np.maximum(a, b))
    np.testing.assert_array_equal(got["z"], np.maximum(a, b) + np.minimum(a, b) + 1)
