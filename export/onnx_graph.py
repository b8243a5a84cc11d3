"""Reading ONNX graphs the way this project needs to, in one place: constants and nested subgraphs.

ONNX keeps weights as initializers or as Constant nodes, and If/Loop/Scan bodies read values of
the graphs around them by name; walking a model without both in mind drops what those need.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


def subgraphs(node) -> Iterator:
    """Every graph inside ``node`` (If branches, Loop/Scan bodies), nested ones included."""
    for attribute in node.attribute:
        for graph in ([attribute.g] if attribute.HasField("g") else list(attribute.graphs)):
            yield graph
            for inner in graph.node:
                yield from subgraphs(inner)


def names_read(node) -> set[str]:
    """Every value ``node`` reads: its inputs and what the nodes of its subgraphs read."""
    names = {name for name in node.input if name}
    for graph in subgraphs(node):
        names |= {name for inner in graph.node for name in inner.input if name}
    return names


def constant_values(graph) -> dict[str, np.ndarray]:
    """Name -> array of every initializer and Constant node output (``value`` attribute) of ``graph``."""
    from onnx import numpy_helper

    values = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.output:
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            if value is not None:
                values[node.output[0]] = numpy_helper.to_array(value)
    return values


def producers_and_readers(graph) -> tuple[dict, dict[str, list]]:
    """Value name -> the node of ``graph`` computing it, and value name -> the nodes reading it (in order)."""
    producers = {out: node for node in graph.node for out in node.output}
    readers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    return producers, readers


def sort_topologically(graph) -> None:
    """Reorder ``graph.node`` so that every node comes after the producers of what it reads (nodes
    already in order keep it)."""
    nodes = list(graph.node)
    producer = {out: index for index, node in enumerate(nodes) for out in node.output}
    needs = [{producer[name] for name in names_read(node) if name in producer} for node in nodes]
    done: set[int] = set()
    order: list[int] = []
    while len(order) < len(nodes):
        ready = [i for i in range(len(nodes)) if i not in done and needs[i] <= done]
        if not ready:
            raise ValueError("the graph has a cycle")
        for index in ready:
            done.add(index)
            order.append(index)
    del graph.node[:]
    graph.node.extend(nodes[i] for i in order)
