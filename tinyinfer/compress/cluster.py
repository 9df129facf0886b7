"""Weight sharing: k-means clustering of each layer's weights, and the size of a model after
Deep Compression's three stages (Han et al., 2016, "Deep Compression: Compressing Deep Neural
Networks with Pruning, Trained Quantization and Huffman Coding").

1. **Pruning** (:mod:`.prune`) leaves a sparse weight. It is stored as its non-zero values
   plus, for each, the *gap* since the previous non-zero in a fixed number of index bits
   (the paper uses 8 for conv layers and 5 for fully connected ones); a gap too long for
   those bits costs a filler zero entry.
2. **Weight sharing**: the non-zero weights of a layer are clustered into ``2^b`` values by
   one-dimensional k-means (:func:`kmeans_1d`, centroids initialised evenly between the
   smallest and largest weight — the paper's *linear* initialisation, which keeps the rare
   large weights that matter most). Each weight becomes a ``b``-bit index into a codebook of
   ``2^b`` float32 centroids. Zeros left by pruning stay exactly zero.
3. **Huffman coding** of the weight indices and of the gaps: both are far from uniform, so a
   prefix code (:func:`huffman_code_lengths`) takes fewer bits than the fixed widths.

:func:`cluster_weights` applies stage 2 to a model (the result is still a float ONNX model
whose layers hold at most ``2^b`` distinct values, so any runtime checks its accuracy);
:func:`deep_compression_table` reports the bits each stage takes, layer by layer, as the
paper's compression table does.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
from typing import Any

import numpy as np

from ..errors import TinyInferError
from .prune import export_checked, prunable_graph, prunable_weights


class ClusterError(TinyInferError):
    """A clustering request that cannot be carried out (bad bit width, no weights)."""


# ---------------------------------------------------------------------------- k-means
def kmeans_1d(values: np.ndarray, k: int, *, iterations: int = 50, init: str = "linear",
              seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means on a 1-D array: ``(centroids sorted ascending, label per value)``.

    ``init``: ``linear`` (evenly between min and max), ``density`` (at evenly spaced quantiles)
    or ``random`` (k distinct values drawn with ``seed``). In one dimension the nearest
    centroid is found by binary search between the midpoints of sorted centroids. A centroid
    that loses all its values keeps its place.
    """
    values = np.asarray(values, np.float64).ravel()
    if values.size == 0:
        raise ClusterError("cannot cluster an empty weight")
    k = min(int(k), np.unique(values).size)
    if init == "linear":
        centroids = np.linspace(values.min(), values.max(), k)
    elif init == "density":
        centroids = np.quantile(values, np.linspace(0, 1, k))
    elif init == "random":
        centroids = np.sort(np.random.default_rng(seed).choice(np.unique(values), k, replace=False))
    else:
        raise ClusterError(f"unknown k-means initialisation {init!r}; choose linear, density or random")
    labels = np.zeros(values.size, dtype=np.int64)
    for _ in range(iterations):
        labels = np.searchsorted((centroids[1:] + centroids[:-1]) / 2, values)
        sums = np.bincount(labels, weights=values, minlength=k)
        counts = np.bincount(labels, minlength=k)
        updated = np.where(counts > 0, sums / np.maximum(counts, 1), centroids)
        if np.allclose(updated, centroids, rtol=0, atol=1e-12):
            break
        centroids = np.sort(updated)
    labels = np.searchsorted((centroids[1:] + centroids[:-1]) / 2, values)
    return centroids, labels


# ---------------------------------------------------------------------------- Huffman
def huffman_code_lengths(counts: dict[Any, int]) -> dict[Any, int]:
    """Code length in bits per symbol of an optimal prefix code for these counts (Huffman:
    merge the two rarest subtrees until one is left; a symbol's length is its depth). A
    single symbol still takes one bit."""
    symbols = [(count, i, [s]) for i, (s, count) in enumerate(counts.items()) if count > 0]
    if not symbols:
        return {}
    if len(symbols) == 1:
        return {symbols[0][2][0]: 1}
    lengths = {s: 0 for _, _, group in symbols for s in group}
    tie = itertools.count(len(symbols))
    heapq.heapify(symbols)
    while len(symbols) > 1:
        first, second = heapq.heappop(symbols), heapq.heappop(symbols)
        for s in first[2] + second[2]:
            lengths[s] += 1
        heapq.heappush(symbols, (first[0] + second[0], next(tie), first[2] + second[2]))
    return lengths


def huffman_bits(symbols: np.ndarray) -> int:
    """Bits to Huffman-code this sequence (its codebook not counted)."""
    values, counts = np.unique(np.asarray(symbols).ravel(), return_counts=True)
    lengths = huffman_code_lengths(dict(zip(values.tolist(), counts.tolist())))
    return int(sum(count * lengths[v] for v, count in zip(values.tolist(), counts.tolist())))


# ---------------------------------------------------------------------------- sparse storage
def relative_index_gaps(flat: np.ndarray, index_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Deep Compression's sparse format of a flattened weight: ``(gaps, values)``, one entry per
    non-zero, each gap counting the positions since the previous entry (≤ ``2^bits − 1``); a
    longer gap is bridged by filler entries of value 0 at the largest gap."""
    largest = (1 << index_bits) - 1
    positions = np.flatnonzero(flat)
    gaps = np.diff(positions, prepend=-1)
    fillers = (gaps - 1) // largest  # entries needed before each non-zero
    ends = np.cumsum(fillers + 1) - 1  # where each non-zero lands
    out_gaps = np.full(int(ends[-1]) + 1 if ends.size else 0, largest, dtype=np.int64)
    out_values = np.zeros(out_gaps.size, dtype=flat.dtype)
    out_gaps[ends] = gaps - fillers * largest
    out_values[ends] = flat[positions]
    return out_gaps, out_values


# ---------------------------------------------------------------------------- a model
@dataclasses.dataclass
class LayerCompression:
    """One weight through the three stages (sizes in bits)."""

    name: str
    kind: str  # conv or fc
    weights: int
    nonzero: int
    dense_bits: int  # float32
    entries: int  # non-zeros plus fillers
    index_bits: int
    weight_bits: int
    pruned_bits: int  # float32 values + fixed-width gaps
    quantized_bits: int  # b-bit indices + fixed-width gaps + codebook
    huffman_bits: int  # Huffman-coded indices and gaps + codebook

    @property
    def density(self) -> float:
        return self.nonzero / self.weights


def cluster_weights(model: Any, bits: int | dict[str, int] = 4, *, init: str = "linear"):
    """``(model, codebooks)``: every Conv / Gemm / MatMul weight replaced by its nearest of
    ``2^bits`` k-means centroids (``bits`` per weight name, or one for all), zeros kept.
    ``codebooks`` maps weight name -> ``(centroids, indices)`` with index 0 … 2^b − 1 per
    non-zero weight in row-major order."""
    graph = prunable_graph(model)
    codebooks = {}
    for name in prunable_weights(graph):
        b = bits.get(name, 8) if isinstance(bits, dict) else bits
        if not isinstance(b, int) or not 1 <= b <= 16:
            raise ClusterError(f"bits must be an integer from 1 to 16, got {b!r} for '{name}'")
        weight = graph.initializers[name]
        nonzero = weight != 0
        if not nonzero.any():
            continue
        centroids, labels = kmeans_1d(weight[nonzero], 1 << b, init=init)
        shared = weight.copy()
        shared[nonzero] = centroids[labels].astype(weight.dtype)
        graph.initializers[name] = shared
        codebooks[name] = (centroids.astype(np.float32), labels)
    return export_checked(graph), codebooks


def deep_compression_table(model: Any, *, conv_bits: int = 8, fc_bits: int = 5, conv_index_bits: int = 8,
                           fc_index_bits: int = 5, init: str = "linear") -> list[LayerCompression]:
    """The paper's compression table for a (pruned) model: per Conv / Gemm / MatMul weight,
    its size dense, pruned (CSR-like with relative indices), pruned + quantized (``conv_bits``
    / ``fc_bits`` per weight, the paper's 8 and 5) and + Huffman-coded."""
    graph = prunable_graph(model)
    rows = []
    for name in prunable_weights(graph):
        weight = graph.initializers[name]
        kind = "conv" if weight.ndim > 2 else "fc"
        bits = conv_bits if kind == "conv" else fc_bits
        index_bits = conv_index_bits if kind == "conv" else fc_index_bits
        gaps, values = relative_index_gaps(weight.ravel(), index_bits)
        nonzero = int(np.count_nonzero(weight))
        codebook_bits = 32 * (1 << bits)
        if nonzero:
            centroids, labels = kmeans_1d(values[values != 0], 1 << bits, init=init)
            codes = np.full(values.size, -1, dtype=np.int64)  # fillers get their own code
            codes[values != 0] = labels
        else:
            codes = np.zeros(0, dtype=np.int64)
        entries = int(values.size)
        rows.append(LayerCompression(
            name=name, kind=kind, weights=int(weight.size), nonzero=nonzero, dense_bits=32 * int(weight.size),
            entries=entries, index_bits=index_bits, weight_bits=bits,
            pruned_bits=entries * (32 + index_bits),
            quantized_bits=entries * (bits + index_bits) + codebook_bits,
            huffman_bits=huffman_bits(codes) + huffman_bits(gaps) + codebook_bits,
        ))
    if not rows:
        raise ClusterError("the model has no Conv / Gemm / MatMul weights")
    return rows


def format_compression_table(rows: list[LayerCompression]) -> str:
    """Per layer and in total: weights, density, bits per stage and the compression ratios."""
    lines = [f"{'layer':<28}{'kind':>5}{'weights':>12}{'density':>9}{'pruned':>9}{'P+Q':>8}{'P+Q+H':>8}"]
    for row in rows + [_total(rows)]:
        lines.append(f"{row.name[:27]:<28}{row.kind:>5}{row.weights:>12,}{100 * row.density:8.1f}%"
                     f"{row.dense_bits / row.pruned_bits:8.1f}x{row.dense_bits / row.quantized_bits:7.1f}x"
                     f"{row.dense_bits / row.huffman_bits:7.1f}x")
    lines.append("ratios: float32 dense size / size after pruning (CSR, relative indices), + weight sharing, "
                 "+ Huffman coding; codebooks counted")
    return "\n".join(lines)


def _total(rows: list[LayerCompression]) -> LayerCompression:
    def total(field: str) -> int:
        return sum(getattr(r, field) for r in rows)

    return LayerCompression("total", "", total("weights"), total("nonzero"), total("dense_bits"), total("entries"),
                            0, 0, total("pruned_bits"), total("quantized_bits"), total("huffman_bits"))
