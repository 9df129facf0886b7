"""Pictures of what the optimizer works on: a graph, and a memory plan.

:func:`draw_graph` draws a tinyinfer :class:`~tinyinfer.ir.Graph` (or an ONNX model) top to
bottom as a layered DAG, the way Sugiyama, Tagawa & Toda (1981) proposed to draw
hierarchies, in four steps:

1. **layers** — a node sits one layer below the deepest node it reads from (longest path
   from the graph inputs); a node that reads only weights moves down to just above its
   first reader;
2. **dummies** — an edge that spans several layers gets an invisible waypoint in each layer
   it crosses, so it is routed between boxes, not through them;
3. **order** — within each layer, nodes are sorted by the mean position of their neighbours
   in the layer above, then below, a few sweeps (the barycentre heuristic), keeping the
   order with the fewest edge crossings;
4. **coordinates** — each node moves as close as it can to the mean x of its neighbours
   while keeping its order and a fixed gap to the next box (an isotonic regression, solved
   exactly by pool-adjacent-violators).

Weights are not drawn: a Conv box says "3x3 /2" instead of growing an arrow from its
filter. Boxes name the op and a few attributes that tell nodes apart (kernel, stride and
group of a convolution, the activation of a fused node, a scalar operand); graph inputs and
outputs are drawn as rounded tags. The drawing is legible up to about sixty nodes.

:func:`draw_memory_plan` draws a :class:`~tinyinfer.passes.memory.MemoryPlan` as a lifetime
chart: one rectangle per tensor, from the step that writes it to the step that last reads
it, at its offset in the arena, with the in-place aliases hatched and the arena size and the
lower bound as horizontal lines.

Both functions use matplotlib only (no graphviz) and return the matplotlib Axes. Every
artist carries a ``gid`` (``node:<i>``, ``input:<name>``, ``output:<name>``,
``edge:<from>-><to>``, ``buffer:<name>``) so that tests and notebooks can find it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable

import numpy as np

from .errors import TinyInferError
from .ir import Graph, Node

# Layout units are inches at the reference font size below; a smaller axes scales both.
FONT_SIZE = 8.0
CHAR_WIDTH = 0.068  # inches per character of an 8-point sans-serif label
BOX_HEIGHT = 0.36
LAYER_GAP = 0.72  # vertical distance between the centres of two layers
BOX_GAP = 0.22  # horizontal space between two boxes of a layer
DUMMY_WIDTH = 0.06

#: Box colours by kind of op (a fused ai.tinyinfer node also gets a thick border).
_COLOURS = {
    "conv": "#9ecae1",
    "matmul": "#c6dbef",
    "norm": "#a1d99b",
    "activation": "#fdd0a2",
    "elementwise": "#e5e5e5",
    "shape": "#f2f0f7",
    "pool": "#dadaeb",
    "other": "#fff7bc",
}
_KINDS = {
    "conv": ("Conv", "ConvTranspose", "FusedConv", "NchwcConv"),
    "matmul": ("MatMul", "Gemm", "FusedGemm", "MatMulInteger", "Attention"),
    "norm": ("BatchNormalization", "LayerNormalization", "InstanceNormalization", "GroupNormalization",
             "LRN", "ScaleShift"),
    "activation": ("Relu", "Clip", "Sigmoid", "Tanh", "LeakyRelu", "HardSwish", "HardSigmoid", "Gelu", "Erf",
                   "Softmax", "Elu", "Selu", "Softplus", "PRelu"),
    "elementwise": ("Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Sum", "Neg", "Reciprocal", "ReduceMean", "Exp"),
    "shape": ("Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Concat", "Split", "Slice", "Gather",
              "Shape", "ConstantOfShape", "Expand", "Identity", "Cast", "Pad", "Dropout", "Constant"),
    "pool": ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool"),
}
_KIND_OF = {op: kind for kind, ops in _KINDS.items() for op in ops}
HIGHLIGHT = "#d62728"
FUSED_DOMAIN = "ai.tinyinfer"


# ============================================================================ layout
@dataclasses.dataclass
class GraphLayout:
    """Where everything goes: items are ``("node", i)``, ``("input", name)``, ``("output", name)``
    and ``("dummy", k)`` waypoints; ``edges`` are (source item, target item) pairs of the graph,
    ``routes`` the waypoints each edge passes through."""

    positions: dict[tuple, tuple[float, float]]
    widths: dict[tuple, float]
    layers: list[list[tuple]]
    edges: list[tuple[tuple, tuple]]
    routes: dict[tuple[tuple, tuple], list[tuple]]
    labels: dict[tuple, tuple[str, str]]

    @property
    def extent(self) -> tuple[float, float, float, float]:
        """(x min, x max, y min, y max) of every box, in layout inches."""
        xs = [(x - self.widths[item] / 2, x + self.widths[item] / 2) for item, (x, _) in self.positions.items()]
        ys = [y for _, y in self.positions.values()]
        return (min(a for a, _ in xs), max(b for _, b in xs), min(ys) - BOX_HEIGHT / 2, max(ys) + BOX_HEIGHT / 2)

    def crossings(self) -> int:
        """Edge crossings between consecutive layers (each edge split at its waypoints)."""
        return sum(_crossings(self.layers[i], self.layers[i + 1], self._segments(i)) for i in range(len(self.layers) - 1))

    def _segments(self, layer: int) -> list[tuple[tuple, tuple]]:
        top = set(self.layers[layer])
        segments = []
        for edge in self.edges:
            points = [edge[0], *self.routes[edge], edge[1]]
            segments += [(a, b) for a, b in zip(points, points[1:]) if a in top]
        return segments


def graph_layout(graph: Any) -> GraphLayout:
    """Layers, order and coordinates of a graph's drawing (see the module docstring)."""
    graph = _as_graph(graph)
    items, edges, labels = _items_and_edges(graph)
    layer_of = _layers(items, edges)
    layers, routes, widths = _with_dummies(items, edges, layer_of, labels)
    neighbours_up, neighbours_down = _adjacency(edges, routes)
    layers = _order(layers, neighbours_up, neighbours_down)
    positions = _coordinates(layers, widths, neighbours_up, neighbours_down)
    return GraphLayout(positions, widths, layers, edges, routes, labels)


def _as_graph(source: Any) -> Graph:
    if isinstance(source, Graph):
        return source
    try:
        import onnx
    except ImportError:  # pragma: no cover - onnx is a dependency
        onnx = None
    if onnx is not None and isinstance(source, onnx.ModelProto):
        from .frontend import graph_from_model

        return graph_from_model(source)
    if onnx is not None and isinstance(source, onnx.GraphProto):
        from .frontend.onnx_import import graph_from_proto

        return graph_from_proto(source, {"": 0})
    raise TinyInferError(f"cannot draw a {type(source).__name__}: expected a tinyinfer Graph or an onnx.ModelProto")


def _items_and_edges(graph: Graph):
    """Every item to draw, with its label, and the edges between items (weights left out)."""
    producers: dict[str, tuple] = {}
    items: list[tuple] = []
    labels: dict[tuple, tuple[str, str]] = {}
    weights = set(graph.initializers)
    for value in graph.inputs:
        if value.name in weights:
            continue  # old models list weights as inputs too
        item = ("input", value.name)
        items.append(item)
        producers[value.name] = item
        labels[item] = (_short_name(value.name), _shape_text(value.shape))
    nodes = graph.topological_order() if graph.nodes else []
    index = {id(node): i for i, node in enumerate(graph.nodes)}
    for node in nodes:
        item = ("node", index[id(node)])
        items.append(item)
        labels[item] = _node_label(node, graph)
        for name in node.outputs:
            if name:
                producers[name] = item
    edges: list[tuple[tuple, tuple]] = []
    seen = set()
    for node in nodes:
        target = ("node", index[id(node)])
        for name in [*node.present_inputs, *node.implicit_inputs]:
            source = producers.get(name)
            if source is not None and (source, target) not in seen:
                seen.add((source, target))
                edges.append((source, target))
    for value in graph.outputs:
        item = ("output", value.name)
        items.append(item)
        labels[item] = (_short_name(value.name), _shape_text(value.shape))
        source = producers.get(value.name)
        if source is not None:
            edges.append((source, item))
    return items, edges, labels


def _layers(items: list[tuple], edges: list[tuple]) -> dict[tuple, int]:
    """Longest path from the inputs; nodes without a producer sink to just above their readers."""
    preds: dict[tuple, list[tuple]] = {item: [] for item in items}
    succs: dict[tuple, list[tuple]] = {item: [] for item in items}
    for a, b in edges:
        preds[b].append(a)
        succs[a].append(b)
    layer: dict[tuple, int] = {}
    for item in items:  # items are in topological order
        if item[0] == "input":
            layer[item] = 0
        else:
            layer[item] = 1 + max((layer[p] for p in preds[item]), default=0)
    for item in reversed(items):
        if item[0] == "node" and not preds[item] and succs[item]:
            layer[item] = max(layer[item], min(layer[s] for s in succs[item]) - 1)
    return layer


def _with_dummies(items, edges, layer_of, labels):
    """Layers as lists of items, with one waypoint per layer an edge passes through."""
    depth = max(layer_of.values(), default=0)
    layers: list[list[tuple]] = [[] for _ in range(depth + 1)]
    widths: dict[tuple, float] = {}
    for item in items:
        layers[layer_of[item]].append(item)
        top, bottom = labels[item]
        widths[item] = max(len(top) * (1.1 if item[0] == "node" else 1.0), len(bottom), 3) * CHAR_WIDTH + 0.16
    routes: dict[tuple, list[tuple]] = {}
    count = 0
    for a, b in edges:
        route = []
        for level in range(layer_of[a] + 1, layer_of[b]):
            dummy = ("dummy", count)
            count += 1
            layers[level].append(dummy)
            widths[dummy] = DUMMY_WIDTH
            route.append(dummy)
        routes[(a, b)] = route
    return layers, routes, widths


def _adjacency(edges, routes):
    up: dict[tuple, list[tuple]] = {}
    down: dict[tuple, list[tuple]] = {}
    for edge in edges:
        points = [edge[0], *routes[edge], edge[1]]
        for a, b in zip(points, points[1:]):
            down.setdefault(a, []).append(b)
            up.setdefault(b, []).append(a)
    return up, down


def _order(layers, up, down, sweeps: int = 12):
    """Barycentre ordering, down and up sweeps; keeps the order with the fewest crossings."""
    layers = [list(layer) for layer in layers]

    def segments(i):
        top = set(layers[i])
        return [(a, b) for a in layers[i] for b in down.get(a, ()) if a in top]

    def total():
        return sum(_crossings(layers[i], layers[i + 1], segments(i)) for i in range(len(layers) - 1))

    best, best_count = [list(layer) for layer in layers], total()
    for sweep in range(sweeps):
        indices = range(1, len(layers)) if sweep % 2 == 0 else range(len(layers) - 2, -1, -1)
        for i in indices:
            fixed = layers[i - 1] if sweep % 2 == 0 else layers[i + 1]
            neighbours = up if sweep % 2 == 0 else down
            place = {item: k for k, item in enumerate(fixed)}
            current = {item: k for k, item in enumerate(layers[i])}

            def key(item):
                around = [place[n] for n in neighbours.get(item, ()) if n in place]
                # Items with no neighbour on that side keep their relative place.
                centre = sum(around) / len(around) if around else current[item] * len(fixed) / max(len(layers[i]), 1)
                return (centre, current[item])

            layers[i].sort(key=key)
        count = total()
        if count < best_count:
            best, best_count = [list(layer) for layer in layers], count
        if best_count == 0:
            break
    return best


def _crossings(top: list[tuple], bottom: list[tuple], segments) -> int:
    """Pairs of segments between two adjacent layers that cross."""
    x_top = {item: k for k, item in enumerate(top)}
    x_bottom = {item: k for k, item in enumerate(bottom)}
    ends = [(x_top[a], x_bottom[b]) for a, b in segments if a in x_top and b in x_bottom]
    count = 0
    for i in range(len(ends)):
        for j in range(i + 1, len(ends)):
            (a1, b1), (a2, b2) = ends[i], ends[j]
            if (a1 - a2) * (b1 - b2) < 0:
                count += 1
    return count


def _coordinates(layers, widths, up, down, rounds: int = 8):
    """x by isotonic regression towards the neighbours' mean; y by layer (top = inputs).

    Rounds alternate: downwards (each layer follows the layer above), upwards (the layer
    below); the last two rounds look both ways.
    """
    xs: dict[tuple, float] = {}
    for layer in layers:
        x = 0.0
        for item in layer:
            xs[item] = x + widths[item] / 2
            x += widths[item] + BOX_GAP
        for item in layer:
            xs[item] -= x / 2
    both = {item: [*up.get(item, ()), *down.get(item, ())] for item in xs}
    for r in range(rounds):
        downwards = r % 2 == 0
        order = range(1, len(layers)) if downwards else range(len(layers) - 2, -1, -1)
        neighbours = both if r >= rounds - 2 else (up if downwards else down)
        for i in order:
            desired = []
            for item in layers[i]:
                around = [xs[n] for n in neighbours.get(item, ())]
                desired.append(sum(around) / len(around) if around else xs[item])
            for item, x in zip(layers[i], _spread(desired, [widths[item] for item in layers[i]])):
                xs[item] = x
    return {item: (xs[item], -level * LAYER_GAP) for level, layer in enumerate(layers) for item in layer}


def _spread(desired: list[float], widths: list[float]) -> list[float]:
    """Positions closest (least squares) to ``desired`` keeping order and the gaps between boxes.

    With ``offset_i`` the room the boxes left of i need, ``y_i = x_i - offset_i`` must not
    decrease; the closest non-decreasing sequence to ``desired_i - offset_i`` is found by
    pool-adjacent-violators (merge neighbouring blocks while they are out of order).
    """
    offsets = [0.0]
    for a, b in zip(widths, widths[1:]):
        offsets.append(offsets[-1] + (a + b) / 2 + BOX_GAP)
    targets = [d - o for d, o in zip(desired, offsets)]
    blocks: list[list[float]] = []  # [sum, count]
    for t in targets:
        blocks.append([t, 1])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            total, count = blocks.pop()
            blocks[-1][0] += total
            blocks[-1][1] += count
    ys = [total / count for total, count in blocks for _ in range(int(count))]
    return [y + o for y, o in zip(ys, offsets)]


# ============================================================================ labels
def _node_label(node: Node, graph: Graph) -> tuple[str, str]:
    """(op type, a short detail line) for a node's box."""
    details: list[str] = []
    attrs = node.attrs
    op = node.op_type
    if op in ("Conv", "ConvTranspose", "FusedConv", "MaxPool", "AveragePool"):
        weight = graph.initializers.get(node.inputs[1]) if len(node.inputs) > 1 and op != "MaxPool" else None
        kernel = attrs.get("kernel_shape") or (list(weight.shape[2:]) if weight is not None else None)
        if kernel:
            details.append("x".join(str(k) for k in kernel))
        strides = attrs.get("strides")
        if strides and any(s != 1 for s in strides):
            details.append("/" + "x".join(str(s) for s in set(strides)))
        group = attrs.get("group") or 1
        if group > 1:
            channels = weight.shape[0] if weight is not None else None
            details.append("dw" if channels == group else f"g{group}")
    if op in ("FusedConv", "FusedGemm"):
        activation = attrs.get("activation", "Identity")
        if op == "FusedConv" and len(node.inputs) > 3 and node.inputs[3]:
            details.append("+res")
        if activation and activation != "Identity":
            details.append("+" + activation)
    elif op in ("Gemm", "MatMul"):
        weight = graph.initializers.get(node.inputs[1]) if len(node.inputs) > 1 else None
        if weight is not None:
            details.append("x".join(str(d) for d in weight.shape))
    elif op == "Transpose" and attrs.get("perm") is not None:
        details.append(str(list(attrs["perm"])).replace(" ", ""))
    elif op in ("Reshape", "Expand") and len(node.inputs) > 1 and node.inputs[1] in graph.initializers:
        details.append(str([int(v) for v in np.asarray(graph.initializers[node.inputs[1]]).reshape(-1)]).replace(" ", ""))
    elif op in ("Gelu",):
        details.append(str(attrs.get("approximate", "none")))
    elif op == "Clip":
        bounds = [_scalar_text(graph, name) for name in node.inputs[1:3]]
        if any(bounds):
            details.append(f"[{bounds[0] or ''},{bounds[1] if len(bounds) > 1 and bounds[1] else ''}]")
    elif op in ("Concat", "Softmax", "Split", "Gather", "Flatten", "LayerNormalization") and attrs.get("axis") is not None:
        details.append(f"axis {attrs['axis']}")
    elif op in ("Add", "Sub", "Mul", "Div", "Pow"):
        constants = [_scalar_text(graph, name) for name in node.inputs]
        constants = [c for c in constants if c]
        if constants:
            details.append("c=" + constants[0])
        elif any(name in graph.initializers for name in node.inputs):
            details.append("const")
    if node.domain == FUSED_DOMAIN and not details:
        details.append("fused")
    return op, " ".join(details)


def _scalar_text(graph: Graph, name: str) -> str:
    array = graph.initializers.get(name) if name else None
    if array is None or np.size(array) != 1:
        return ""
    value = float(np.asarray(array).reshape(-1)[0])
    return f"{value:.4g}"


def _short_name(name: str, limit: int = 16) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "~"


def _shape_text(shape) -> str:
    if shape is None:
        return ""
    return "[" + ",".join("?" if d is None else str(d) for d in shape) + "]"


# ============================================================================ drawing
def draw_graph(graph: Any, ax=None, *, highlight: Iterable[str] | None = None, title: str | None = None,
               scale: float | None = None):
    """Draw ``graph`` (a tinyinfer Graph or an ``onnx.ModelProto``) top to bottom; return the Axes.

    ``highlight`` names nodes to outline in red: node names, output tensor names or op types
    (e.g. ``highlight=["FusedConv"]`` after a fusion). Without ``ax`` a new figure is made,
    sized to the graph. With ``ax``, the drawing fills it, unless ``scale`` (inches per
    inch of the natural layout, 1.0 = 8-point labels) is given: then it is drawn at that
    scale, centred, so that several graphs drawn with one scale compare at a glance
    (:func:`fitting_scale` finds the largest scale at which each fits its axes).
    """
    plt, patches, path_module = _matplotlib()
    source = _as_graph(graph)
    layout = graph_layout(source)
    marked = _marked(source, set(highlight or ()))
    x0, x1, y0, y1 = layout.extent
    margin = 0.15
    width, height = x1 - x0 + 2 * margin, y1 - y0 + 2 * margin
    if ax is None:  # a figure of the drawing's natural size, shrunk to at most 14 x 22 inches
        fit = scale or min(1.0, 14.0 / width, 22.0 / height)
        figure = plt.figure(figsize=(max(width * fit, 2.0), max(height * fit, 1.0) + (0.3 if title else 0.0)))
        top = 1.0 - (0.3 / figure.get_size_inches()[1] if title else 0.0)
        ax = figure.add_axes((0.0, 0.0, 1.0, top))
    if scale is None:
        ax.set_xlim(x0 - margin, x1 + margin)
        ax.set_ylim(y0 - margin, y1 + margin)
        ax.set_aspect("equal", adjustable="box")
        scale = _inches_per_unit(ax, width, height)
    else:  # the axes' box at the given scale, centred on the drawing
        box_w, box_h = _axes_inches(ax)
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        ax.set_xlim(cx - box_w / scale / 2, cx + box_w / scale / 2)
        ax.set_ylim(cy - box_h / scale / 2, cy + box_h / scale / 2)
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=FONT_SIZE + 1)
    font = max(3.0, min(FONT_SIZE * scale, 11.0))
    for item, (x, y) in layout.positions.items():
        if item[0] == "dummy":
            continue
        _draw_item(ax, patches, source, layout, item, x, y, font, item in marked)
    for edge in layout.edges:
        _draw_edge(ax, patches, path_module, layout, edge, scale)
    return ax


def _matplotlib():
    try:
        import matplotlib.pyplot as plt
        from matplotlib import patches, path
    except ImportError:
        raise TinyInferError("drawing needs matplotlib: pip install matplotlib (or pip install tinyinfer[dev])") from None
    return plt, patches, path


def _marked(graph: Graph, wanted: set[str]) -> set[tuple]:
    if not wanted:
        return set()
    marked = set()
    for i, node in enumerate(graph.nodes):
        if node.name in wanted or node.op_type in wanted or wanted & set(node.outputs):
            marked.add(("node", i))
    return marked


def fitting_scale(graph: Any, ax) -> float:
    """The largest ``scale`` at which :func:`draw_graph` fits ``graph`` into ``ax``."""
    x0, x1, y0, y1 = graph_layout(graph).extent
    return _inches_per_unit(ax, x1 - x0 + 0.3, y1 - y0 + 0.3)


def _axes_inches(ax) -> tuple[float, float]:
    box = ax.get_position()
    fig_w, fig_h = ax.figure.get_size_inches()
    return box.width * fig_w, box.height * fig_h


def _inches_per_unit(ax, width: float, height: float) -> float:
    """How many inches one layout unit takes on the figure (the axes keeps the aspect ratio)."""
    box_w, box_h = _axes_inches(ax)
    return min(box_w / width, box_h / height)


def _draw_item(ax, patches, graph, layout, item, x, y, font, marked):
    w = layout.widths[item]
    top, bottom = layout.labels[item]
    kind, key = item
    if kind == "node":
        node = graph.nodes[key]
        colour = _COLOURS[_KIND_OF.get(node.op_type, "other")]
        fused = node.domain == FUSED_DOMAIN
        edge_colour = HIGHLIGHT if marked else ("#08306b" if fused else "#404040")
        line = 2.2 if marked else (1.6 if fused else 0.8)
        style = "round,pad=0,rounding_size=0.06"
        gid = f"node:{key}"
    else:
        colour, edge_colour, line = "white", "#404040", 0.8
        style = "round,pad=0,rounding_size=0.16"
        gid = f"{kind}:{key}"
    box = patches.FancyBboxPatch((x - w / 2, y - BOX_HEIGHT / 2), w, BOX_HEIGHT, boxstyle=style,
                                 facecolor=colour, edgecolor=edge_colour, linewidth=line,
                                 linestyle="-" if kind == "node" else "--", zorder=2)
    box.set_gid(gid)
    ax.add_patch(box)
    weight = "bold" if kind == "node" else "normal"
    if bottom:
        ax.text(x, y + 0.075, top, ha="center", va="center", fontsize=font, fontweight=weight, zorder=3)
        ax.text(x, y - 0.085, bottom, ha="center", va="center", fontsize=font * 0.85, color="#303030", zorder=3)
    else:
        ax.text(x, y, top, ha="center", va="center", fontsize=font, fontweight=weight, zorder=3)


def _draw_edge(ax, patches, path_module, layout, edge, scale):
    """One arrow per edge, through its waypoints, as smooth vertical S-curves."""
    Path = path_module.Path
    a, b = edge
    (xa, ya), (xb, yb) = layout.positions[a], layout.positions[b]
    points = [(xa, ya - BOX_HEIGHT / 2)]
    points += [layout.positions[d] for d in layout.routes[edge]]
    points.append((xb, yb + BOX_HEIGHT / 2))
    vertices = [points[0]]
    codes = [Path.MOVETO]
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        bend = (y0 - y1) / 2
        vertices += [(x0, y0 - bend), (x1, y1 + bend), (x1, y1)]
        codes += [Path.CURVE4] * 3
    arrow = patches.FancyArrowPatch(path=Path(vertices, codes), arrowstyle="-|>", mutation_scale=max(3.0, 9 * scale),
                                    linewidth=max(0.4, 0.9 * scale), color="#505050", shrinkA=0, shrinkB=0, zorder=1)
    arrow.set_gid(f"edge:{_item_id(a)}->{_item_id(b)}")
    ax.add_patch(arrow)


def _item_id(item: tuple) -> str:
    return f"{item[0]}:{item[1]}"


# ============================================================================ memory plan
def draw_memory_plan(plan, ax=None, *, title: str | None = None):
    """Draw a memory plan's buffer lifetimes (x = step, y = offset in the arena); return the Axes.

    One rectangle per buffer, spanning the steps from the node that writes it to the last
    node that reads it, at its offset; a buffer written in place over another one (an alias)
    is hatched over its owner's rectangle. The step line is the bytes alive at each step
    (its highest point is the lower bound), the dashed lines the planned arena and the
    lower bound.
    """
    plt, patches, _ = _matplotlib()
    if ax is None:
        _, ax = plt.subplots(figsize=(10, 4.2))
    buffers = list(plan.buffers.values())
    arena = max(plan.arena_bytes, 1)
    unit, unit_name = (2**20, "MiB") if arena >= 2**20 else (2**10, "KiB")
    steps = max((b.last for b in buffers), default=0) + 1
    colours = plt.get_cmap("tab20").colors
    roots = [b for b in buffers if b.alias_of is None]
    for k, b in enumerate(sorted(roots, key=lambda b: (b.first, b.name))):
        rect = patches.Rectangle((b.first, b.offset / unit), b.last - b.first + 1, b.nbytes / unit,
                                 facecolor=colours[k % len(colours)], edgecolor="white", linewidth=0.4, zorder=2)
        rect.set_gid(f"buffer:{b.name}")
        ax.add_patch(rect)
    for b in buffers:
        if b.alias_of is None:
            continue
        rect = patches.Rectangle((b.first, plan.offset_of(b.name) / unit), b.last - b.first + 1, b.nbytes / unit,
                                 facecolor="none", edgecolor="black", hatch="////", linewidth=0.5, zorder=3)
        rect.set_gid(f"buffer:{b.name}")
        ax.add_patch(rect)
    live = np.zeros(steps + 1)
    for b in roots:
        live[b.first:b.last + 1] += b.nbytes
    ax.step(np.arange(steps + 1), live / unit, where="post", color="black", linewidth=0.9,
            label="bytes alive at each step", zorder=4)
    ax.axhline(plan.arena_bytes / unit, color=HIGHLIGHT, linestyle="--", linewidth=1.1,
               label=f"planned arena {plan.arena_bytes / unit:.2f} {unit_name}", zorder=5)
    ax.axhline(plan.lower_bound_bytes / unit, color="#2171b5", linestyle=":", linewidth=1.3,
               label=f"lower bound {plan.lower_bound_bytes / unit:.2f} {unit_name}", zorder=5)
    ax.plot([], [], " ", label=f"naive (no reuse) {plan.naive_bytes / unit:.2f} {unit_name}")
    ax.set_xlim(0, steps)
    ax.set_ylim(0, max(plan.arena_bytes, plan.lower_bound_bytes, live.max() if len(live) else 0) / unit * 1.08 + 1e-9)
    ax.set_xlabel("step (node in execution order)")
    ax.set_ylabel(f"offset in the arena ({unit_name})")
    ax.legend(loc="upper right", fontsize=8, framealpha=0.9)
    if title:
        ax.set_title(title)
    return ax
