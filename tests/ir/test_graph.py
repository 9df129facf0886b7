"""Specification of ir.Graph, Node and Value: order, validation, display, naming.

These tests build graphs by hand (no ONNX involved), so they pin down the IR's own rules:
what a topological order is, which structures are errors, which are only warnings.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinyinfer.errors import InvalidGraphError
from tinyinfer.ir import Graph, Node, Value


def add(name: str, a: str, b: str, out: str) -> Node:
    return Node("Add", [a, b], [out], name=name)


def chain(length: int) -> Graph:
    """x -> n0 -> t0 -> n1 -> t1 ... -> y."""
    nodes, previous = [], "x"
    for i in range(length):
        out = "y" if i == length - 1 else f"t{i}"
        nodes.append(Node("Neg", [previous], [out], name=f"n{i}"))
        previous = out
    return Graph(nodes, [Value("x", np.float32, ("N", 4))], [Value("y", np.float32, ("N", 4))], opset={"": 17})


# ---------------------------------------------------------------------------- topological order
@st.composite
def shuffled_dags(draw):
    """A random DAG (node i may read graph input 'x' or any tensor of nodes j < i), shuffled."""
    count = draw(st.integers(1, 12))
    nodes = []
    for i in range(count):
        sources = ["x"] + [f"t{j}" for j in range(i)]
        a = draw(st.sampled_from(sources))
        b = draw(st.sampled_from(sources))
        nodes.append(add(f"n{i}", a, b, f"t{i}"))
    order = draw(st.permutations(nodes))
    return Graph(list(order), [Value("x", np.float32, (2,))], [Value(f"t{count - 1}", np.float32, (2,))])


def smallest_order(graph: Graph) -> list[str]:
    """Oracle: repeatedly take the first node (in list order) whose producers are all placed."""
    producer = {out: node.name for node in graph.nodes for out in node.outputs}
    placed: list[str] = []
    pending = list(graph.nodes)
    while pending:
        for node in pending:
            if all(producer.get(name) in (None, *placed) for name in node.inputs):
                placed.append(node.name)
                pending.remove(node)
                break
    return placed


@settings(max_examples=60, deadline=None)
@given(shuffled_dags())
def test_topological_order_puts_every_node_after_its_producers(graph):
    order = graph.topological_order()
    assert sorted(n.name for n in order) == sorted(n.name for n in graph.nodes)
    position = {node.name: i for i, node in enumerate(order)}
    producer = graph.producers()
    for node in order:
        for name in node.inputs:
            if name in producer:
                assert position[producer[name].name] < position[node.name]


@settings(max_examples=60, deadline=None)
@given(shuffled_dags())
def test_topological_order_breaks_ties_by_original_position(graph):
    assert [n.name for n in graph.topological_order()] == smallest_order(graph)


def test_sorted_graph_comes_back_unchanged_and_independent_nodes_keep_their_order():
    graph = chain(6)
    assert graph.topological_order() == graph.nodes
    independent = Graph([Node("Neg", ["x"], [f"y{i}"], name=f"n{i}") for i in (3, 1, 2)], [Value("x")])
    assert [n.name for n in independent.topological_order()] == ["n3", "n1", "n2"]


def test_sort_reorders_in_place():
    graph = chain(5)
    random.Random(0).shuffle(graph.nodes)
    assert graph.sort() is graph
    assert [n.name for n in graph.nodes] == [f"n{i}" for i in range(5)]


def test_cycle_is_reported_with_the_nodes_on_it_only():
    graph = Graph(
        [
            Node("Neg", ["x"], ["before"], name="entry"),
            add("loop_a", "before", "c", "a"),
            Node("Neg", ["a"], ["b"], name="loop_b"),
            Node("Neg", ["b"], ["c"], name="loop_c"),
            Node("Neg", ["c"], ["y"], name="downstream"),
        ],
        [Value("x")],
        [Value("y")],
        name="looped",
    )
    with pytest.raises(InvalidGraphError, match="cycle") as info:
        graph.topological_order()
    message = str(info.value)
    assert "looped" in message
    for name in ("loop_a", "loop_b", "loop_c"):
        assert f"'{name}'" in message
    assert "downstream" not in message and "entry" not in message
    with pytest.raises(InvalidGraphError, match="cycle"):
        graph.validate()


# ---------------------------------------------------------------------------- validation errors
def test_valid_graph_has_no_warnings():
    assert chain(3).validate() == []
    assert chain(3).validate(allow_unused=False) == []


def test_undefined_input_is_named_with_its_reader():
    graph = Graph([add("adder", "x", "ghost", "y")], [Value("x")], [Value("y")])
    with pytest.raises(InvalidGraphError, match=r"Add 'adder'.*reads 'ghost'.*no node, input or initializer"):
        graph.validate()


@pytest.mark.parametrize(
    "nodes, inputs, initializers, first",
    [
        ([Node("Neg", ["x"], ["t"], name="one"), Node("Abs", ["x"], ["t"], name="two")], ["x"], {}, "Neg 'one'"),
        ([Node("Neg", ["w"], ["x"], name="one")], ["x"], {"w": np.ones(2, np.float32)}, "graph input"),
        ([Node("Neg", ["x"], ["w"], name="one")], ["x"], {"w": np.ones(2, np.float32)}, "initializer"),
    ],
    ids=["two-nodes", "node-overwrites-input", "node-overwrites-initializer"],
)
def test_tensor_with_two_producers_is_an_error(nodes, inputs, initializers, first):
    graph = Graph(nodes, [Value(n) for n in inputs], [Value(nodes[-1].outputs[0])], initializers)
    with pytest.raises(InvalidGraphError, match="two producers") as info:
        graph.validate()
    assert first in str(info.value)


def test_graph_input_declared_twice_is_an_error():
    graph = Graph([Node("Neg", ["x"], ["y"])], [Value("x"), Value("x")], [Value("y")])
    with pytest.raises(InvalidGraphError, match="'x' is declared twice"):
        graph.validate()


def test_node_reading_its_own_output_is_an_error():
    graph = Graph([add("selfish", "x", "y", "y")], [Value("x")], [Value("y")])
    with pytest.raises(InvalidGraphError, match="'selfish' .*reads its own output 'y'"):
        graph.validate()


def test_output_never_produced_is_an_error():
    graph = Graph([Node("Neg", ["x"], ["y"])], [Value("x")], [Value("y"), Value("nowhere")])
    with pytest.raises(InvalidGraphError, match="graph output 'nowhere' is never produced"):
        graph.validate()


def test_graph_input_may_be_an_output_and_initializer_may_be_read():
    graph = Graph(
        [add("a", "x", "w", "y")], [Value("x")], [Value("y"), Value("x")], {"w": np.zeros(1, np.float32)}
    )
    assert graph.validate() == []


# ---------------------------------------------------------------------------- validation warnings
def unused_graph() -> Graph:
    nodes = [Node("Neg", ["x"], ["y"], name="used"), Node("Abs", ["x"], ["dead"], name="unused")]
    return Graph(nodes, [Value("x")], [Value("y")], {"stale": np.ones(3, np.float32)})


def test_unused_outputs_and_initializers_are_warnings():
    warnings = unused_graph().validate()
    assert len(warnings) == 2
    assert any("'dead'" in w and "Abs 'unused'" in w and "never used" in w for w in warnings)
    assert any("initializer 'stale'" in w for w in warnings)


def test_allow_unused_false_turns_warnings_into_errors():
    with pytest.raises(InvalidGraphError) as info:
        unused_graph().validate(allow_unused=False)
    assert "'dead'" in str(info.value) and "'stale'" in str(info.value)


def test_omitted_optional_inputs_and_outputs_are_not_tensors():
    graph = Graph([Node("Clip", ["x", "", "hi"], ["y", ""], name="clip")], [Value("x")], [Value("y")],
                  {"hi": np.float32(1)})
    assert graph.validate() == []
    assert graph.nodes[0].present_inputs == ["x", "hi"]
    assert "" not in graph.producers() and "" not in graph.consumers()


# ---------------------------------------------------------------------------- queries
def test_producers_consumers_and_counts():
    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    graph = Graph(
        [add("first", "x", "w", "t"), add("second", "t", "t", "u"), add("third", "t", "u", "y")],
        [Value("x")],
        [Value("y")],
        {"w": w},
        opset={"": 17, "com.example": 1},
    )
    assert graph.producers()["u"].name == "second"
    # A node reading a tensor twice is listed once; readers come in node order.
    assert [n.name for n in graph.consumers()["t"]] == ["second", "third"]
    assert graph.parameter_count() == 6 and graph.parameter_bytes() == 24
    assert graph.op_histogram() == {"Add": 3}
    assert graph.opset_of("") == graph.opset_of("ai.onnx") == 17
    with pytest.raises(InvalidGraphError, match="no opset for domain 'com.other'"):
        graph.opset_of("com.other")
    value = graph.value("w")
    assert value.shape == (2, 3) and value.dtype == np.float32 and value.const is w
    assert graph.value("nothing") is None


# ---------------------------------------------------------------------------- summary
def test_summary_lists_types_nodes_and_attributes():
    graph = Graph(
        [
            Node("Mul", ["x", "w"], ["t"], name="scale"),
            Node("LeakyRelu", ["t"], ["y"], attrs={"alpha": 0.125, "unset": None}, name="act"),
        ],
        [Value("x", np.float32, ("N", None, 4))],
        [Value("y", np.float32, ("N", None, 4))],
        {"w": np.ones(4, np.float32)},
        opset={"": 17},
        name="tiny",
    )
    text = graph.summary()
    lines = text.splitlines()
    assert "graph 'tiny'" in lines[0] and "17" in lines[0]
    assert "2 nodes, 1 initializers, 4 parameters" in lines[1]
    assert "input  x: float[Nx?x4]" in text and "output y: float[Nx?x4]" in text
    assert any(line.split()[:3] == ["Mul", "t", "<-"] and "(x, w)" in line for line in lines)
    assert "[alpha=0.125]" in text and "unset" not in text
    assert str(graph) == text


def test_summary_truncates_long_graphs():
    text = chain(10).summary(max_nodes=3)
    assert text.count("Neg") == 3
    assert text.splitlines()[-1].strip() == "... 7 more nodes"
    assert chain(10).summary(max_nodes=None).count("Neg") == 10


# ---------------------------------------------------------------------------- names
def test_unique_name_avoids_every_name_in_use():
    graph = chain(2)
    graph.initializers["w"] = np.zeros(1, np.float32)
    assert graph.unique_name("fresh") == "fresh"
    for taken in ("x", "y", "t0", "n1", "w"):  # input, output, tensor, node name, weight
        assert graph.unique_name(taken) == f"{taken}_1"
    graph.nodes.append(Node("Neg", ["y"], ["t0_1"], name="t0_2"))
    assert graph.unique_name("t0") == "t0_3"


# ---------------------------------------------------------------------------- Value
def test_value_keeps_symbolic_and_unknown_dims():
    value = Value("x", np.float32, ["batch", None, 3])
    assert value.shape == ("batch", None, 3)
    assert value.rank == 3 and not value.is_static
    assert value.type_str() == "float[batchx?x3]"
    assert Value("s", "int64", ()).is_static and Value("s", "int64", ()).type_str() == "int64[]"
    assert Value("u").rank is None and Value("u").type_str() == "?[?]"


def test_value_normalizes_dtype_and_numpy_integer_dims():
    value = Value("x", np.float16, np.array([2, 3]))
    assert value.dtype == np.dtype(np.float16)
    assert value.shape == (2, 3) and all(type(d) is int for d in value.shape)
    assert value.is_static


def test_node_label_names_op_node_and_domain():
    node = Node("Conv", ["x", "w"], ["y"], name="conv1")
    assert str(node) == "Conv 'conv1' (domain ai.onnx)"
    node.version = 13
    assert str(node) == "Conv 'conv1' (domain ai.onnx, opset 13)"
    assert str(Node("Foo", [], ["out"], domain="com.example")) == "Foo producing ['out'] (domain com.example)"
