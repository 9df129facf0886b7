"""Weight sharing and Deep Compression sizes (tinyinfer.compress.cluster).

Oracles: a mixture whose modes are known for k-means; the textbook Huffman example (CLRS
16.3: a 45, b 13, c 12, d 16, e 9, f 5 -> 224 bits) and Kraft's equality for code lengths; a
plain Python loop for the relative-index sparse format; ONNX Runtime for the clustered model.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from tinyinfer.compress.cluster import (ClusterError, cluster_weights, deep_compression_table, format_compression_table,
                                        huffman_bits, huffman_code_lengths, kmeans_1d, relative_index_gaps)
from tinyinfer.compress.prune import prune

RNG = np.random.default_rng(0)


def small_cnn() -> onnx.ModelProto:
    inits = [numpy_helper.from_array(RNG.normal(0, 0.3, (16, 3, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(RNG.normal(0, 0.1, (10, 16 * 6 * 6)).astype(np.float32), "w2")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c"]), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Flatten", ["r"], ["f"]), helper.make_node("Gemm", ["f", "w2"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "small", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def run(model, x):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


@pytest.mark.parametrize("init", ["linear", "density", "random"])
def test_kmeans_finds_the_modes_of_a_mixture(init):
    modes = np.array([-2.0, 0.5, 3.0])
    values = np.concatenate([RNG.normal(m, 0.05, 500) for m in modes])
    centroids, labels = kmeans_1d(values, 3, init=init)
    np.testing.assert_allclose(centroids, modes, atol=0.02)
    np.testing.assert_array_equal(labels, np.repeat([0, 1, 2], 500))


def test_kmeans_labels_are_nearest_centroids_and_means():
    values = RNG.normal(size=2000)
    centroids, labels = kmeans_1d(values, 8)
    nearest = np.argmin(np.abs(values[:, None] - centroids[None, :]), axis=1)
    np.testing.assert_array_equal(labels, nearest)
    for j in range(8):  # a fixed point of Lloyd's: each centroid is the mean of its values
        assert abs(values[labels == j].mean() - centroids[j]) < 1e-9


def test_huffman_matches_the_textbook_example():
    counts = {"a": 45, "b": 13, "c": 12, "d": 16, "e": 9, "f": 5}
    lengths = huffman_code_lengths(counts)
    assert sum(counts[s] * lengths[s] for s in counts) == 224
    assert sum(2.0 ** -n for n in lengths.values()) == 1.0  # Kraft: a full prefix code
    assert huffman_code_lengths({"only": 7}) == {"only": 1}
    symbols = np.repeat(np.arange(6), [45, 13, 12, 16, 9, 5])
    assert huffman_bits(symbols) == 224


def test_relative_indices_match_a_loop_and_bridge_long_gaps():
    flat = np.zeros(100, np.float32)
    flat[[0, 3, 40, 41, 99]] = [1, 2, 3, 4, 5]
    gaps, values = relative_index_gaps(flat, 3)  # gaps of at most 7
    expected_gaps, expected_values, previous = [], [], -1
    for position in np.flatnonzero(flat):
        gap = position - previous
        while gap > 7:
            expected_gaps.append(7)
            expected_values.append(0)
            gap -= 7
        expected_gaps.append(gap)
        expected_values.append(flat[position])
        previous = position
    np.testing.assert_array_equal(gaps, expected_gaps)
    np.testing.assert_array_equal(values, expected_values)
    rebuilt = np.zeros(100, np.float32)  # the format decodes back to the weight
    rebuilt[np.cumsum(gaps) - 1] = values
    np.testing.assert_array_equal(rebuilt, flat)


def test_clustered_model_has_few_values_keeps_zeros_and_runs():
    pruned = prune(small_cnn(), method="magnitude", ratio=0.5).model
    clustered, codebooks = cluster_weights(pruned, bits=3)
    onnx.checker.check_model(clustered)
    before = {t.name: numpy_helper.to_array(t) for t in pruned.graph.initializer}
    for t in clustered.graph.initializer:
        w = numpy_helper.to_array(t)
        assert np.unique(w[w != 0]).size <= 8
        np.testing.assert_array_equal(w == 0, before[t.name] == 0)
        centroids, labels = codebooks[t.name]
        np.testing.assert_array_equal(w[w != 0], centroids[labels])
    xs = [RNG.standard_normal((1, 3, 8, 8)).astype(np.float32) for _ in range(8)]
    refs = [run(pruned, x) for x in xs]

    def snr(model):
        noise = sum(np.sum((ref - run(model, x)) ** 2) for ref, x in zip(refs, xs))
        return 10 * np.log10(sum(np.sum(ref ** 2) for ref in refs) / noise)

    # More shared values, less error: each extra bit about halves the grid (up to 6 dB).
    assert snr(cluster_weights(pruned, bits=5)[0]) > snr(clustered) + 6 > snr(cluster_weights(pruned, bits=1)[0]) + 9


def test_deep_compression_table_counts_bits_per_stage():
    pruned = prune(small_cnn(), method="magnitude", ratio=0.9).model
    rows = deep_compression_table(pruned, conv_bits=4, fc_bits=2, conv_index_bits=4, fc_index_bits=3)
    conv, fc = rows
    assert (conv.kind, fc.kind) == ("conv", "fc")
    assert conv.nonzero == round(0.1 * conv.weights) and conv.entries >= conv.nonzero
    assert conv.pruned_bits == conv.entries * (32 + 4)
    assert conv.quantized_bits == conv.entries * (4 + 4) + 32 * 16
    assert fc.quantized_bits == fc.entries * (2 + 3) + 32 * 4
    for row in rows:  # every stage shrinks what the one before left
        assert row.dense_bits > row.pruned_bits > row.quantized_bits - 32 * (1 << row.weight_bits)
        assert row.huffman_bits <= row.quantized_bits
    text = format_compression_table(rows)
    assert "total" in text and "P+Q+H" in text


def test_bad_bit_widths_are_refused():
    with pytest.raises(ClusterError, match="bits must be an integer from 1 to 16"):
        cluster_weights(small_cnn(), bits=0)
    with pytest.raises(ClusterError, match="empty"):
        kmeans_1d(np.array([]), 4)
