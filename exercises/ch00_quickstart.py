"""Chapter 00 exercises: the three ideas at the heart of every inference engine.

1. :func:`conv_output_shape` — how big is the output of a convolution or a pooling window?
   Shape inference needs this before any data exists, to plan memory.
2. :func:`topological_sort` — in which order can the nodes run? A node may only run after
   every node that produces one of its inputs (Kahn's algorithm).
3. :func:`run_graph` — put both together: walk the graph in that order and call each node's
   NumPy reference op. That loop *is* an inference engine; everything later in the book
   (passes, kernels, memory planning) makes it faster without changing what it computes.

Replace each ``raise NotImplementedError`` with your code, then grade it:

    pytest tests/exercises --impl=exercises -m ex1     # or ex2, ex3, or no -m for all

The graded tests compare your answers with ONNX Runtime and with properties any correct
answer has; they never look at the solution file.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from tinyinfer.errors import InvalidGraphError  # noqa: F401  (exercise 2 raises it)
from tinyinfer.ir import Graph, Node
from tinyinfer.ops import get_op  # noqa: F401  (exercise 3 uses it)


# ---------------------------------------------------------------------------- exercise 1
def conv_output_shape(
    input_shape: Sequence[int],
    kernel_shape: Sequence[int],
    strides: Sequence[int] | None = None,
    pads: Sequence[int] | None = None,
    dilations: Sequence[int] | None = None,
) -> tuple[int, ...]:
    """The spatial output dimensions of an ONNX Conv or MaxPool/AveragePool window.

    All arguments describe the *spatial* axes only (H, W for images; one axis for 1-D
    signals, three for video): ``input_shape=(H, W)``, not ``(N, C, H, W)``.

    * ``strides`` — step of the window along each axis (default all 1).
    * ``pads`` — ONNX layout ``[x1_begin, x2_begin, ..., x1_end, x2_end]``: first every
      axis's padding at the start, then every axis's padding at the end. Length is twice
      the number of spatial axes (default all 0).
    * ``dilations`` — gap between kernel taps (default all 1). A kernel of size ``k`` with
      dilation ``d`` covers ``d * (k - 1) + 1`` input positions.

    For each axis ``i`` (with ``n`` spatial axes):

        padded    = input_shape[i] + pads[i] + pads[i + n]
        covered   = dilations[i] * (kernel_shape[i] - 1) + 1
        output[i] = (padded - covered) // strides[i] + 1          (floor division)

    Worked example: a 5x5 image, 3x3 kernel, stride 2, one pixel of padding all round
    (``pads=[1, 1, 1, 1]``): padded = 7, covered = 3, output = (7 - 3) // 2 + 1 = 3,
    so the answer is ``(3, 3)``. With dilation 2 instead the kernel covers 5 pixels:
    (7 - 5) // 2 + 1 = 2.

    Return a tuple of Python ``int``. Raise ``ValueError`` if the (dilated) kernel does not
    fit in the padded input along some axis (an output dimension would be < 1), or if the
    lengths of the arguments do not match.

    Hints: turn ``None`` into the ONNX defaults first; ``zip`` over the axes.
    """
    raise NotImplementedError("exercise: conv_output_shape (chapter 00, exercise 1)")


# ---------------------------------------------------------------------------- exercise 2
def topological_sort(graph: Graph) -> list[Node]:
    """The nodes of ``graph`` in an order where each node comes after its producers.

    A node *depends on* another node when it reads a tensor that the other node writes
    (``producer.outputs`` contains a name in ``node.inputs``). Graph inputs, initializers
    and the empty name ``""`` (an omitted optional input) have no producer.

    Kahn's algorithm (1962):

    1. For every node count how many *distinct* producer nodes it waits for, and remember,
       for every node, which nodes wait for it.
    2. Put every node that waits for nobody in a queue.
    3. Repeatedly take a node from the queue and append it to the result; each node waiting
       for it now waits for one fewer; when that count reaches 0, it joins the queue.
    4. If the result holds fewer nodes than the graph, the rest wait on each other: a cycle.
       Raise :class:`tinyinfer.errors.InvalidGraphError` naming (some of) those nodes.

    Tiny example: nodes listed as ``[C: z = Add(y, y), A: x = Neg(in), B: y = Exp(x)]``
    sort to ``[A, B, C]``.

    Return a new list holding every node of ``graph.nodes`` exactly once; do not reorder
    ``graph.nodes`` itself. Any valid order is accepted.

    Hints: ``Node`` is a dataclass compared by value and is not hashable, so key your
    dictionaries by the node's position in ``graph.nodes`` (an ``int``), not by the node.
    A node reading the same tensor twice (``Add(y, y)``) depends on its producer once;
    ``collections.deque`` is a good queue.
    """
    raise NotImplementedError("exercise: topological_sort (chapter 00, exercise 2)")


# ---------------------------------------------------------------------------- exercise 3
def run_graph(graph: Graph, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run ``graph`` on ``feeds`` and return ``{name: array}`` for every graph output.

    This is the whole interpreter of an inference engine, in about twenty lines:

    1. Start an environment ``env`` (a dict from tensor name to array) holding the
       weights, ``graph.initializers``, and the ``feeds`` (graph input name -> array).
    2. For each node in topological order (your :func:`topological_sort` from exercise 2,
       or ``graph.topological_order()`` if you skipped it):

       * gather its input arrays ``env[name]``, passing ``None`` for an empty name ``""``
         (an optional input the model left out);
       * compute ``results = get_op(node).reference(node, *arrays)`` — the op's plain NumPy
         definition;
       * a reference returns one array for a single-output op, or a tuple (or list) of
         arrays; store each result under its output name (skip outputs named ``""``).
    3. Return ``{value.name: env[value.name] for value in graph.outputs}``.

    ``graph`` is what ``tinyinfer.load(...)`` returns: a prepared graph whose nodes already
    have every attribute filled in, so ``reference`` can run directly.

    Example: for ``y = Add(x, w)`` with initializer ``w = [1, 2]`` and feeds
    ``{"x": np.array([10., 20.])}`` the answer is ``{"y": array([11., 22.])}``.

    Hints: ``isinstance(results, (tuple, list))`` tells the two return forms apart;
    ``np.asarray`` turns a NumPy scalar into a 0-d array; do not modify
    ``feeds`` or ``graph.initializers`` (copy the dict, not the arrays).
    """
    raise NotImplementedError("exercise: run_graph (chapter 00, exercise 3)")
