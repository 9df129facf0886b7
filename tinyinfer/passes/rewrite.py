"""Small graph-editing tools the passes share: renaming uses, removing nodes safely."""

from __future__ import annotations

from ..ir import Graph, Node


def rename_uses(graph: Graph, old: str, new: str) -> None:
    """Make every node that reads ``old`` read ``new`` instead, inside subgraphs too."""
    for node in graph.nodes:
        if old in node.inputs:
            node.inputs = [new if name == old else name for name in node.inputs]
        for _, subgraph in node.subgraphs():
            if old in subgraph.outer_names():  # read from outside, not defined inside
                rename_uses(subgraph, old, new)
                for value in subgraph.outputs:
                    if value.name == old:
                        value.name = new


def bypass(graph: Graph, node: Node, source: str, target: str) -> bool:
    """Remove ``node``, whose output ``target`` equals its input ``source``.

    Readers of ``target`` then read ``source``. When ``target`` is a graph output, the
    producer of ``source`` is renamed to write ``target`` instead — possible only if
    ``source`` is made by a node and is not itself a graph input or output. Returns whether
    the node could be removed.
    """
    outputs = set(graph.output_names)
    if target in outputs:
        producers = graph.producers()
        if source in outputs or source in graph.input_names or source not in producers:
            return False
        producer = producers[source]
        producer.outputs = [target if name == source else name for name in producer.outputs]
        graph.nodes.remove(node)
        rename_uses(graph, source, target)
        return True
    graph.nodes.remove(node)
    rename_uses(graph, target, source)
    return True


def consumers_of(graph: Graph, name: str) -> list[Node]:
    return [node for node in graph.nodes if name in node.inputs]


def is_used(graph: Graph, name: str) -> bool:
    return name in graph.output_names or any(name in node.inputs for node in graph.nodes)
