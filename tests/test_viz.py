"""tinyinfer.viz: graph drawings and memory-plan charts, checked through their artists.

Every artist the drawing functions make carries a gid (``node:<i>``, ``edge:<a>-><b>``,
``buffer:<name>``...), so the tests count boxes, arrows and rectangles against what the
graph and the plan contain, computed here independently from the graph's nodes. Drawing
uses matplotlib's Agg backend: no display is needed.
"""

from __future__ import annotations

import os
import subprocess
import sys

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Rectangle  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import tinyinfer as ti  # noqa: E402
from tinyinfer.errors import TinyInferError  # noqa: E402
from tinyinfer.passes import PassManager  # noqa: E402
from tinyinfer.passes.memory import plan_memory  # noqa: E402
from tinyinfer.viz import draw_graph, draw_memory_plan, fitting_scale, graph_layout  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _model(nodes, inputs, outputs, weights=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(weights))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _f(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _w(name, shape, seed=0):
    return numpy_helper.from_array(np.random.default_rng(seed).standard_normal(shape).astype(np.float32), name)


def residual_block():
    """Conv-BN-Relu-Conv-BN + shortcut, Relu; plus a second output read from the middle."""
    bn = lambda p: [_w(f"{p}_s", [4]), _w(f"{p}_b", [4]), _w(f"{p}_m", [4]), numpy_helper.from_array(np.ones(4, np.float32), f"{p}_v")]
    nodes = [
        helper.make_node("Conv", ["x", "W1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("BatchNormalization", ["c1", "bn1_s", "bn1_b", "bn1_m", "bn1_v"], ["b1"], name="bn1"),
        helper.make_node("Relu", ["b1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "W2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
        helper.make_node("BatchNormalization", ["c2", "bn2_s", "bn2_b", "bn2_m", "bn2_v"], ["b2"], name="bn2"),
        helper.make_node("Add", ["b2", "x"], ["a"], name="add"),
        helper.make_node("Relu", ["a"], ["y"], name="relu2"),
        helper.make_node("Mul", ["r1", "r1"], ["sq"], name="square"),  # reads r1 twice: one edge
    ]
    weights = [_w("W1", [4, 4, 3, 3]), _w("W2", [4, 4, 3, 3], 1), *bn("bn1"), *bn("bn2")]
    return _model(nodes, [_f("x", [1, 4, 6, 6])], [_f("y", [1, 4, 6, 6]), _f("sq", [1, 4, 6, 6])], weights)


def _gids(ax, kind, prefix):
    return [p.get_gid() for p in ax.patches if isinstance(p, kind) and (p.get_gid() or "").startswith(prefix)]


def expected_edges(graph):
    """(source, target) pairs counted the naive way: producer -> reader, input -> reader,
    producer -> output; a tensor read twice by one node is one edge."""
    producer = {}
    for value in graph.inputs:
        producer[value.name] = f"input:{value.name}"
    for i, node in enumerate(graph.nodes):
        for name in node.outputs:
            producer[name] = f"node:{i}"
    edges = set()
    for i, node in enumerate(graph.nodes):
        for name in node.inputs:
            if name in producer:
                edges.add((producer[name], f"node:{i}"))
    for value in graph.outputs:
        edges.add((producer[value.name], f"output:{value.name}"))
    return edges


@pytest.mark.parametrize("optimized", [False, True])
def test_one_box_per_node_one_arrow_per_edge_and_no_weights(optimized):
    graph = ti.load(residual_block())
    if optimized:
        graph, _ = PassManager("O2").run(graph)
    ax = draw_graph(graph, title="block")
    assert sorted(_gids(ax, FancyBboxPatch, "node:")) == sorted(f"node:{i}" for i in range(len(graph.nodes)))
    assert _gids(ax, FancyBboxPatch, "input:") == ["input:x"]
    assert sorted(_gids(ax, FancyBboxPatch, "output:")) == ["output:sq", "output:y"]
    arrows = {tuple(gid.removeprefix("edge:").split("->")) for gid in _gids(ax, FancyArrowPatch, "edge:")}
    assert len(_gids(ax, FancyArrowPatch, "edge:")) == len(arrows)  # no edge drawn twice
    assert arrows == expected_edges(graph)
    texts = " ".join(t.get_text() for t in ax.texts)
    assert not any(name in texts for name in graph.initializers)  # weights are not drawn
    assert ax.get_title() == "block"


def test_a_model_proto_draws_like_its_imported_graph_and_reads_top_to_bottom():
    model = residual_block()
    ax = draw_graph(model)
    assert len(_gids(ax, FancyBboxPatch, "node:")) == len(model.graph.node)
    centre = {p.get_gid(): p.get_y() + p.get_height() / 2 for p in ax.patches if isinstance(p, FancyBboxPatch)}
    for a, b in expected_edges(ti.load(model)):
        assert centre[a] > centre[b], f"{a} should be drawn above {b}"


def test_labels_name_the_op_and_the_kernel_and_highlight_outlines_the_named_nodes():
    graph, _ = PassManager("O2").run(ti.load(residual_block()))
    ax = draw_graph(graph, highlight=["FusedConv"])
    texts = [t.get_text() for t in ax.texts]
    assert "FusedConv" in texts and any("3x3" in t and "+Relu" in t for t in texts)
    for patch in ax.patches:
        gid = patch.get_gid() or ""
        if gid.startswith("node:"):
            node = graph.nodes[int(gid.split(":")[1])]
            red = np.allclose(patch.get_edgecolor()[:3], matplotlib.colors.to_rgb("#d62728"))
            assert red == (node.op_type == "FusedConv")


def test_layout_keeps_boxes_of_a_layer_apart_and_avoids_crossings_on_branches():
    # An Inception-like fan-out written in an order that would cross if kept: the
    # branches' second nodes are listed in reverse.
    nodes = [helper.make_node("Relu", ["x"], ["r"])]
    for k in range(4):
        nodes.append(helper.make_node("Sigmoid", ["r"], [f"a{k}"]))
    for k in reversed(range(4)):
        nodes.append(helper.make_node("Neg", [f"a{k}"], [f"b{k}"]))
    nodes.append(helper.make_node("Concat", [f"b{k}" for k in range(4)], ["y"], axis=1))
    layout = graph_layout(_model(nodes, [_f("x", [1, 2])], [_f("y", [1, 8])]))
    assert layout.crossings() == 0
    for layer in layout.layers:
        spans = sorted((layout.positions[i][0] - layout.widths[i] / 2, layout.positions[i][0] + layout.widths[i] / 2)
                       for i in layer)
        assert all(a[1] <= b[0] + 1e-9 for a, b in zip(spans, spans[1:]))


def test_long_edges_get_waypoints_so_every_segment_spans_one_layer():
    layout = graph_layout(ti.load(residual_block()))
    layer_of = {item: k for k, layer in enumerate(layout.layers) for item in layer}
    for edge in layout.edges:
        points = [edge[0], *layout.routes[edge], edge[1]]
        assert [layer_of[p] for p in points] == list(range(layer_of[edge[0]], layer_of[edge[1]] + 1))


def test_sixty_node_graph_draws_into_a_given_axes():
    nodes, x = [], "x"
    for k in range(30):  # 30 residual pairs: 60 nodes
        nodes.append(helper.make_node("Relu", [x], [f"r{k}"]))
        nodes.append(helper.make_node("Add", [f"r{k}", x], [f"y{k}"]))
        x = f"y{k}"
    model = _model(nodes, [_f("x", [2])], [_f(x, [2])])
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 10))
    assert draw_graph(model, left) is left
    assert len(_gids(left, FancyBboxPatch, "node:")) == 60
    assert len(_gids(left, FancyArrowPatch, "edge:")) == 3 * 30 + 1  # x -> Relu, Relu -> Add, x -> Add; output
    fig.savefig(os.devnull, format="png")  # renders without error at the reduced scale


def test_graphs_drawn_at_one_scale_share_their_font_size():
    small = ti.load(_model([helper.make_node("Relu", ["x"], ["y"])], [_f("x", [2])], [_f("y", [2])]))
    big = ti.load(residual_block())
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 6))
    scale = min(fitting_scale(small, left), fitting_scale(big, right))
    draw_graph(small, left, scale=scale)
    draw_graph(big, right, scale=scale)
    sizes = {t.get_fontsize() for ax in (left, right) for t in ax.texts if t.get_fontweight() == "bold"}
    assert len(sizes) == 1  # op names print alike in both
    unfitted, _ = plt.subplots(1, 2, figsize=(8, 6))
    a, b = unfitted.axes
    draw_graph(small, a)
    draw_graph(big, b)
    assert len({t.get_fontsize() for ax in (a, b) for t in ax.texts if t.get_fontweight() == "bold"}) == 2


def test_drawing_something_else_is_a_clear_error():
    with pytest.raises(TinyInferError, match="cannot draw"):
        draw_graph("not a graph")


def test_memory_plan_has_one_rectangle_per_buffer_aliases_hatched_and_both_lines():
    graph, _ = PassManager("O2").run(ti.load(residual_block()))
    plan = plan_memory(graph)
    ax = draw_memory_plan(plan, title="plan")
    rectangles = {p.get_gid(): p for p in ax.patches if isinstance(p, Rectangle) and (p.get_gid() or "").startswith("buffer:")}
    assert set(rectangles) == {f"buffer:{name}" for name in plan.buffers}
    for name, buffer in plan.buffers.items():
        rect = rectangles[f"buffer:{name}"]
        assert bool(rect.get_hatch()) == (buffer.alias_of is not None)
        assert rect.get_x() == buffer.first and rect.get_width() == buffer.last - buffer.first + 1
    unit = 2**20 if plan.arena_bytes >= 2**20 else 2**10
    levels = {round(line.get_ydata()[0] * unit) for line in ax.lines if len(set(line.get_ydata())) == 1}
    assert plan.arena_bytes in levels and plan.lower_bound_bytes in levels


def test_memory_plan_with_in_place_aliases_hatches_them():
    # Relu, Sigmoid and Neg all run in place over the Conv's output: two aliases.
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"]), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Sigmoid", ["r"], ["s"]), helper.make_node("Neg", ["s"], ["y"])]
    model = _model(nodes, [_f("x", [1, 2, 4, 4])], [_f("y", None)], [_w("W", [3, 2, 1, 1])])
    plan = plan_memory(ti.load(model))
    aliases = [b for b in plan.buffers.values() if b.alias_of is not None]
    assert aliases  # the engine shares at least one buffer in place
    ax = draw_memory_plan(plan)
    hatched = [p.get_gid() for p in ax.patches if isinstance(p, Rectangle) and p.get_hatch()]
    assert sorted(hatched) == sorted(f"buffer:{b.name}" for b in aliases)


def test_drawing_works_in_a_fresh_headless_interpreter(tmp_path):
    script = f"""
import numpy as np
from onnx import TensorProto, helper
import tinyinfer as ti
from tinyinfer.passes.memory import plan_memory
from tinyinfer.viz import draw_graph, draw_memory_plan
x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])
y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])
model = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["h"]),
                                             helper.make_node("Neg", ["h"], ["y"])], "g", [x], [y]))
draw_graph(model).figure.savefig(r"{tmp_path / 'graph.png'}")
draw_memory_plan(plan_memory(ti.load(model))).figure.savefig(r"{tmp_path / 'plan.png'}")
"""
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "MPLBACKEND", "WAYLAND_DISPLAY")}
    env["MPLCONFIGDIR"] = str(tmp_path / "mpl")
    subprocess.run([sys.executable, "-c", script], check=True, env=env, timeout=120)
    for name in ("graph.png", "plan.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
