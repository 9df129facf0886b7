"""Weight rounding that looks at the data: GPTQ (Frantar et al., 2022, "GPTQ: Accurate
Post-Training Quantization for Generative Pre-trained Transformers").

Rounding every weight to its nearest grid point minimises ``‖W − Ŵ‖²``, the error of the
weights. What the network feels is the error of the layer's *output* over the inputs it
really sees: with the inputs as the columns of ``X`` (for a convolution, the im2col matrix),

    ‖W X − Ŵ X‖²  =  Σ_rows  e H eᵀ        e = a row of Ŵ − W,   H = X Xᵀ

so an error along a direction the inputs often take (the positive mean of a ReLU output,
neighbouring pixels that move together) costs much, and one along a rare direction costs
little. Optimal Brain Quantization (Frantar and Alistarh, 2022), in the column order GPTQ
uses, quantizes one input column of ``W`` at a time and lets the columns not yet quantized
absorb its rounding error, in the proportions ``H⁻¹`` prescribes (Hassibi and Stork's Optimal
Brain Surgeon update):

    q_j = round(w_j / s);   ε = (w_j − s·q_j) / U_jj;   w_k −= ε · U_jk  for k > j

where ``U`` is the upper Cholesky factor of ``H⁻¹`` (the numerically stable form of the
update). Columns are processed in blocks: inside a block the update is column by column, the
rest of ``W`` gets the block's errors in one matrix product.

The grid itself does not change (the per-channel scale comes from the original weights'
max |w|), so the quantized file has the same size and layout, and runs anywhere; only which
way each weight rounds differs. ``H`` is measured in one pass over the calibration data with
the float model (:func:`input_hessians`); grouped convolutions (depthwise) keep nearest
rounding, their few inputs per output leave little to redistribute, and so do layers with
more than :data:`MAX_INPUTS` inputs (VGG's first dense layer: H would hold 25088² numbers).
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np

from ..ir import Graph, Node
from ..ops.conv import im2col, window_geometry

#: Share of H's mean diagonal added to its diagonal so it can be inverted (GPTQ's ``percdamp``).
DAMPING = 0.01
#: Columns quantized per block before the rest of W is updated in one product.
BLOCK = 128
#: Layers with more inputs keep nearest rounding (H takes inputs² float64 numbers: 512 MiB here).
MAX_INPUTS = 8192


def input_hessians(graph: Graph, reader: Any, weights: Iterable[str]) -> dict[str, np.ndarray]:
    """``H = Σ X Xᵀ`` (float64) of the input of every Conv (group 1), Gemm and MatMul reading
    one of ``weights``, accumulated over every batch of ``reader`` in one pass."""
    from ..runtime import InferenceSession
    from .calibrate import observe_over

    wanted = set(weights)
    readers: dict[str, list[Node]] = {}
    for node in graph.nodes:
        if len(node.inputs) > 1 and node.inputs[1] in wanted and _inputs_per_output(node, graph) <= MAX_INPUTS:
            readers.setdefault(node.inputs[0], []).append(node)
    hessians: dict[str, np.ndarray] = {}

    def observe(name: str, value: Any) -> None:
        for node in readers.get(name, ()):
            columns = _input_columns(node, np.asarray(value), graph.initializers[node.inputs[1]].shape)
            gram = (columns @ columns.T).astype(np.float64)
            weight = node.inputs[1]
            hessians[weight] = gram if weight not in hessians else hessians[weight] + gram

    session = InferenceSession(graph, opt_level="O0")
    observe_over(session, reader, observe, progress=False)
    return hessians


def gptq_round(w: np.ndarray, hessian: np.ndarray, scale: np.ndarray, qmin: int, qmax: int) -> np.ndarray:
    """Integers ``q`` (float64 array of whole numbers) for the rows of ``w`` (M × K) on the grid
    ``scale`` (one per row, or one), chosen to keep ``‖(w − scale·q) X‖`` small for ``H = X Xᵀ``."""
    w = np.array(w, dtype=np.float64)
    rows, count = w.shape
    scale = np.broadcast_to(np.asarray(scale, np.float64).reshape(-1, 1), (rows, 1))
    h = np.array(hessian, dtype=np.float64)
    dead = np.diag(h) == 0  # inputs that were always zero: their weights never mattered
    h[dead, dead] = 1.0
    h[np.diag_indices(count)] += DAMPING * np.mean(np.diag(h))
    upper = np.linalg.cholesky(np.linalg.inv(h)).T
    q = np.empty_like(w)
    for start in range(0, count, BLOCK):
        end = min(start + BLOCK, count)
        block = w[:, start:end]  # a view: updated in place
        errors = np.empty_like(block)
        for j in range(end - start):
            q[:, start + j] = np.clip(np.rint(block[:, j:j + 1] / scale), qmin, qmax)[:, 0]
            errors[:, j] = (block[:, j] - scale[:, 0] * q[:, start + j]) / upper[start + j, start + j]
            block[:, j:] -= np.outer(errors[:, j], upper[start + j, start + j:end])
        w[:, end:] -= errors @ upper[start:end, end:]
    return q


def as_rows(w: np.ndarray, axis: int) -> np.ndarray:
    """The weight as an (output channels × inputs) matrix, output channels on ``axis`` of ``w``."""
    return np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)


def from_rows(rows: np.ndarray, shape: tuple[int, ...], axis: int) -> np.ndarray:
    """Undo :func:`as_rows`."""
    moved = (shape[axis], *(d for i, d in enumerate(shape) if i != axis))
    return np.moveaxis(rows.reshape(moved), 0, axis)


# ---------------------------------------------------------------------------- helpers
def _inputs_per_output(node: Node, graph: Graph) -> float:
    """K, the inputs each output sums over, for the layers GPTQ handles (ungrouped Conv, Gemm
    without transA, MatMul with a 2-D weight); infinity for any other node."""
    w = graph.initializers.get(node.inputs[1])
    if node.domain or w is None:
        return float("inf")
    if node.op_type == "Conv" and node.attrs.get("group", 1) == 1:
        return int(np.prod(w.shape[1:]))
    if node.op_type == "Gemm" and not node.attrs.get("transA") and w.ndim == 2:
        return w.shape[1] if node.attrs.get("transB") else w.shape[0]
    if node.op_type == "MatMul" and w.ndim == 2:
        return w.shape[0]
    return float("inf")


def _input_columns(node: Node, x: np.ndarray, w_shape: tuple[int, ...]) -> np.ndarray:
    """The layer's inputs as columns (inputs × samples), rows ordered like :func:`as_rows`."""
    x = x.astype(np.float32, copy=False)
    if node.op_type == "Conv":
        window = window_geometry(node, x.shape[2:], w_shape[2:])
        columns = im2col(x, 1, window)[:, 0]  # (n, K, pixels)
        return columns.transpose(1, 0, 2).reshape(columns.shape[1], -1)
    return x.reshape(-1, x.shape[-1]).T
