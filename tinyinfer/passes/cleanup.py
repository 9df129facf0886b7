"""O1 cleanup passes: rewrites that never change a result, only remove work.

* constant folding — a node whose inputs are all known before running (weights, static
  shapes) is computed once, now, and replaced by its result;
* identity elimination — Identity, and Dropout outside training, pass their input through;
* dead-code elimination — nodes whose outputs nobody reads, and unused weights, go;
* common-subexpression elimination — two nodes with the same op, attributes and inputs
  compute the same value: the second goes, its readers read the first's result.
"""

from __future__ import annotations

import numpy as np

from .. import ops
from ..ir import Graph
from .base import register_pass
from .rewrite import bypass, rename_uses


@register_pass("constant_folding", "O1")
def fold_constants(graph: Graph) -> list[str]:
    """Compute nodes whose inputs are all constant and store their results as weights."""
    values = ops.infer_shapes(graph)
    notes = []
    kept = []
    for node in graph.nodes:
        results = [values.get(name) for name in node.outputs if name]
        foldable = (
            node.outputs
            and getattr(ops.get_op(node), "deterministic", True)
            and all(v is not None and v.const is not None for v in results)
        )
        if not foldable:
            kept.append(node)
            continue
        for value in results:
            graph.initializers[value.name] = np.asarray(value.const)
        notes.append(f"folded {node.op_type} '{node.name}' into {len(results)} constant(s)")
    graph.nodes = kept
    return notes


@register_pass("eliminate_identity", "O1")
def eliminate_identity(graph: Graph) -> list[str]:
    """Remove Identity nodes, and Dropout nodes that run in inference mode."""
    notes = []
    for node in list(graph.nodes):
        if node.op_type == "Identity" or (node.op_type == "Dropout" and _inference_dropout(graph, node)):
            if len(node.outputs) > 1 and node.outputs[1]:
                continue  # the mask is used; keep the node
            if bypass(graph, node, node.inputs[0], node.outputs[0]):
                notes.append(f"removed {node.op_type} '{node.name}'")
    return notes


def _inference_dropout(graph: Graph, node) -> bool:
    """Dropout is the identity unless training_mode is given and true (opset 12+)."""
    if len(node.inputs) < 3 or not node.inputs[2]:
        return True
    flag = graph.initializers.get(node.inputs[2])
    return flag is not None and not bool(np.asarray(flag).reshape(-1)[0])


@register_pass("dead_code_elimination", "O1")
def eliminate_dead_code(graph: Graph) -> list[str]:
    """Remove nodes whose outputs are never read, then weights nobody reads.

    What a node's subgraphs read from the graph (its implicit inputs) counts as read.
    """
    notes = []
    needed = set(graph.output_names)
    kept = []
    for node in reversed(graph.topological_order()):
        if any(name and name in needed for name in node.outputs):
            kept.append(node)
            needed.update(node.present_inputs)
            needed.update(node.implicit_inputs)
        else:
            notes.append(f"removed unused {node.op_type} '{node.name}'")
    graph.nodes = kept[::-1]
    for name in list(graph.initializers):
        if name not in needed:
            del graph.initializers[name]
            notes.append(f"removed unused weight '{name}'")
    return notes


@register_pass("common_subexpression_elimination", "O1")
def eliminate_common_subexpressions(graph: Graph) -> list[str]:
    """Merge nodes that compute the same op with the same attributes on the same inputs.

    Local value numbering over the topological order: renaming as it goes, a merge upstream
    makes the nodes downstream identical too, and they merge in the same walk. Random ops
    (two calls differ) and nodes with subgraphs are left alone; so is a duplicate whose
    output is a graph output, since that name must stay.
    """
    seen: dict[tuple, object] = {}
    outputs = set(graph.output_names)
    notes = []
    for node in graph.topological_order():
        if node.subgraphs() or not node.outputs or not getattr(ops.get_op(node), "deterministic", True):
            continue
        key = (node.domain, node.op_type, node.version, tuple(node.inputs),
               tuple(sorted((name, _frozen(value)) for name, value in node.attrs.items())))
        first = seen.setdefault(key, node)
        if first is node or any(name in outputs for name in node.outputs):
            continue
        for old, new in zip(node.outputs, first.outputs):
            if old and new:
                rename_uses(graph, old, new)
        graph.nodes.remove(node)
        notes.append(f"{node.op_type} '{node.name}' computes what '{first.name}' does: merged")
    return notes


def _frozen(value) -> str:
    """A hashable, exact spelling of an attribute value (arrays by dtype, shape and bytes)."""
    if isinstance(value, np.ndarray):
        return f"{value.dtype.str}{value.shape}{value.tobytes().hex()}"
    return repr(value)
