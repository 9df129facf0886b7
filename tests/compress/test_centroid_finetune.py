"""Trained quantization (tinyinfer.compress.centroids): centroid gradients, shared weights that
stay shared, pruned weights that stay zero, accuracy regained, errors.

Oracles: a plain Python loop summing per-weight gradients by cluster index (the gradients of
the unshared model from the ordinary :class:`Trainer`); counting distinct values; the digits
held-out accuracy before and after.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from tinyinfer.compress import Trainer, digits_split
from tinyinfer.compress.centroids import CentroidTrainer, finetune_centroids, grouped_gradient
from tinyinfer.compress.cluster import ClusterError, cluster_weights
from tinyinfer.compress.prune import prunable_weights, prune
from tinyinfer.errors import TinyInferError
from tinyinfer.models.digits import digits_cnn
from tinyinfer.runtime import load


@pytest.fixture(scope="module")
def digits():
    return digits_split(seed=0)


def loop_sums(grad: np.ndarray, indices: np.ndarray, clusters: int) -> np.ndarray:
    sums = [0.0] * clusters
    for g, k in zip(grad.ravel().tolist(), indices.ravel().tolist()):
        if k >= 0:
            sums[k] += g
    return np.array(sums)


@pytest.mark.parametrize("shape, clusters", [((7,), 3), ((4, 3, 3, 3), 8), ((10, 20), 2)])
def test_grouped_gradient_is_the_sum_by_index(shape, clusters):
    rng = np.random.default_rng(sum(shape))
    grad = rng.standard_normal(shape)
    indices = rng.integers(-1, clusters, size=shape)  # -1: pruned, adds to nothing
    np.testing.assert_allclose(grouped_gradient(grad, indices, clusters), loop_sums(grad, indices, clusters),
                               rtol=1e-12, atol=1e-12)  # float64 sums in another order


def test_every_weight_of_a_cluster_gets_the_summed_gradient_of_its_cluster(digits):
    pruned = prune(digits_cnn(seed=1, width=2), method="magnitude", ratio=0.5, scope="layer").model
    clustered, codebooks = cluster_weights(pruned, 2)
    x, y = digits.x_train[:16], digits.y_train[:16]
    _, plain = Trainer(clustered, dtype=np.float64).gradients(x, y)
    shared = CentroidTrainer(clustered, codebooks, dtype=np.float64)
    _, grads = shared.gradients(x, y)
    for name, indices in shared.indices.items():
        expected = loop_sums(plain[name], indices, len(shared.centroids[name]))
        want = np.where(indices < 0, 0.0, expected[indices])
        np.testing.assert_allclose(grads[name], want, rtol=1e-9, atol=1e-12)  # float64, summation order only
    for name in set(plain) - set(shared.indices):  # biases and BatchNorm parameters: their own gradients
        np.testing.assert_allclose(grads[name], plain[name], rtol=1e-12, atol=0)


@pytest.mark.parametrize("bits, optimizer", [(2, "sgd"), (3, "adam")])
def test_finetuning_keeps_indices_zeros_and_the_number_of_values(bits, optimizer, digits):
    pruned = prune(digits_cnn(seed=2, width=4), method="magnitude", ratio=0.6, scope="global").model
    before = load(pruned).initializers
    _, clustered_codebooks = cluster_weights(pruned, bits)
    if optimizer == "sgd":
        model, codebooks = finetune_centroids(pruned, digits.x_train[:256], digits.y_train[:256], bits=bits,
                                              epochs=1, lr=0.01)
    else:
        trainer = CentroidTrainer(cluster_weights(pruned, bits)[0], clustered_codebooks, optimizer="adam", lr=1e-3)
        trainer.fit(digits.x_train[:256], digits.y_train[:256], epochs=1, batch_size=32, progress=False)
        model, codebooks = trainer.to_onnx(), trainer.codebooks()
    after = load(model).initializers
    moved = 0
    for name in prunable_weights(load(pruned)):
        centroids, labels = codebooks[name]
        kept = before[name] != 0
        np.testing.assert_array_equal(after[name][~kept], 0)  # pruned positions stay exactly 0
        np.testing.assert_array_equal(labels, clustered_codebooks[name][1])  # indices unchanged
        np.testing.assert_array_equal(after[name][kept], centroids[labels])  # exactly codebook[index]
        assert np.unique(after[name][kept]).size <= 2 ** bits
        moved += not np.array_equal(centroids, clustered_codebooks[name][0])
    assert moved > 0  # the centroids did train


def test_finetuning_wins_back_accuracy_on_the_digits_cnn(digits):
    """Seeds: the network's initialisation 0, training and fine-tuning shuffles 0, split 0."""
    trainer = Trainer(digits_cnn(seed=0, width=8), lr=0.05, weight_decay=5e-4, seed=0)
    trainer.fit(digits.x_train, digits.y_train, epochs=3, batch_size=32, augment=True, progress=False)
    trained = trainer.to_onnx()
    clustered, _ = cluster_weights(trained, 3)
    finetuned, _ = finetune_centroids(trained, digits.x_train, digits.y_train, bits=3, epochs=1, seed=0)

    def accuracy(model):
        return Trainer(model).evaluate(digits.x_test, digits.y_test)

    assert accuracy(finetuned) >= accuracy(clustered)


def test_bad_requests_are_refused(digits):
    model = digits_cnn(seed=0, width=2)
    x, y = digits.x_train[:8], digits.y_train[:8]
    with pytest.raises(ClusterError, match="bits must be an integer from 1 to 16"):
        finetune_centroids(model, x, y, bits=0)
    zeros = load(model)
    for name in prunable_weights(zeros):
        zeros.initializers[name] = np.zeros_like(zeros.initializers[name])
    with pytest.raises(ClusterError, match="no clustered weights"):
        finetune_centroids(zeros, x, y, bits=2)
    clustered, codebooks = cluster_weights(model, 2)
    name = next(iter(codebooks))
    with pytest.raises(ClusterError, match="expected one per non-zero weight"):
        CentroidTrainer(clustered, {name: (codebooks[name][0], codebooks[name][1][:-1])})
    with pytest.raises(ClusterError, match="not a trainable weight"):
        CentroidTrainer(clustered, {"no_such_weight": codebooks[name]})


def test_a_model_without_weights_to_cluster_is_refused():
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu_only",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
                              [numpy_helper.from_array(np.ones(1, np.float32), "unused")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(TinyInferError, match="no Conv / Gemm / MatMul"):
        finetune_centroids(model, np.ones((2, 4), np.float32), np.zeros(2, np.int64), bits=3)
