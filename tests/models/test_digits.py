"""The digits CNN and its data: shapes, sizes, splits, augmentation, training and its cache."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
import pytest

from tinyinfer.compress.data import digits_split, minibatches, shift_images
from tinyinfer.errors import TinyInferError
from tinyinfer.models import digits
from tinyinfer.models.digits import digits_accuracy, digits_cnn, trained_digits_cnn
from tinyinfer.models.zoo import measured_cost


@pytest.fixture(autouse=True)
def private_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("TINYINFER_CACHE_DIR", str(tmp_path))


# ============================================================================ data
def test_split_is_scaled_stratified_and_seeded():
    split = digits_split()
    assert split.x_train.shape == (1347, 1, 8, 8) and split.x_test.shape == (450, 1, 8, 8)
    assert split.x_train.dtype == np.float32 and split.y_train.dtype == np.int64
    assert split.x_train.min() == 0.0 and split.x_train.max() == 1.0
    # Stratified: each class's share of the test split is within one image of its share overall.
    overall = np.bincount(np.concatenate([split.y_train, split.y_test]), minlength=10)
    assert np.all(np.abs(np.bincount(split.y_test, minlength=10) - overall * 450 / 1797) <= 1)
    again, other = digits_split(), digits_split(seed=1)
    np.testing.assert_array_equal(again.x_test, split.x_test)
    assert not np.array_equal(other.y_test, split.y_test)
    with pytest.raises(TinyInferError, match="test_fraction"):
        digits_split(test_fraction=1.5)


def test_shift_images_against_a_pixel_loop():
    rng = np.random.default_rng(0)
    images = rng.random((6, 1, 8, 8)).astype(np.float32)
    shifted = shift_images(images, np.random.default_rng(5))
    offsets = np.random.default_rng(5).integers(-1, 2, size=(6, 2))
    for i, (dy, dx) in enumerate(offsets):
        expected = np.zeros((8, 8), np.float32)
        for r in range(8):
            for c in range(8):
                if 0 <= r - dy < 8 and 0 <= c - dx < 8:
                    expected[r, c] = images[i, 0, r - dy, c - dx]
        np.testing.assert_array_equal(shifted[i, 0], expected)


def test_minibatches_cover_the_epoch_once_and_repeat_by_seed():
    x, y = np.arange(10, dtype=np.float32).reshape(10, 1, 1, 1), np.arange(10)
    batches = list(minibatches(x, y, 4, np.random.default_rng(0)))
    assert [len(b[1]) for b in batches] == [4, 4, 2]
    assert sorted(np.concatenate([b[1] for b in batches])) == list(range(10))
    again = list(minibatches(x, y, 4, np.random.default_rng(0)))
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(batches, again))
    with pytest.raises(TinyInferError, match="one label per image"):
        list(minibatches(x, y[:5], 4, np.random.default_rng(0)))
    with pytest.raises(TinyInferError, match="batch_size must be a positive integer, got 0"):
        list(minibatches(x, y, 0, np.random.default_rng(0)))


# ============================================================================ the network
def test_digits_cnn_structure_and_size():
    model = digits_cnn()
    onnx.checker.check_model(model)
    params, macs = measured_cost(model)
    assert 30_000 <= params <= 120_000  # 113,386: see the module docstring for why not fewer
    assert model.graph.input[0].name == "input" and model.graph.output[0].name == "logits"
    weight_bytes = 4 * sum(np.prod(t.dims) for t in model.graph.initializer)
    assert len(model.SerializeToString()) < 1.02 * weight_bytes  # the graph itself is small next to its weights
    x = np.random.default_rng(0).random((3, 1, 8, 8)).astype(np.float32)
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert session.run(None, {"input": x})[0].shape == (3, 10)
    first = onnx.numpy_helper.to_array(model.graph.initializer[0])
    np.testing.assert_array_equal(first, onnx.numpy_helper.to_array(digits_cnn().graph.initializer[0]))
    assert not np.array_equal(first, onnx.numpy_helper.to_array(digits_cnn(seed=1).graph.initializer[0]))


def test_short_training_is_well_above_chance():
    """Three epochs of a half-width network: chance is 10 %; the test asks for 90 % (98.4 % measured)."""
    model = trained_digits_cnn(epochs=3, width=16, cache=False)
    assert digits_accuracy(model) >= 0.90
    assert digits_accuracy(model, backend="numba") == digits_accuracy(model)


def test_trained_model_is_cached_by_settings(tmp_path, monkeypatch):
    first = trained_digits_cnn(epochs=1, width=4)
    files = list((tmp_path / "digits").glob("digits_cnn-*.onnx"))
    assert len(files) == 1

    def no_training(*args):
        raise AssertionError("a cached model was trained again")

    monkeypatch.setattr(digits, "_train", no_training)
    assert trained_digits_cnn(epochs=1, width=4).SerializeToString() == first.SerializeToString()
    with pytest.raises(AssertionError, match="trained again"):
        trained_digits_cnn(epochs=2, width=4)  # other settings, another file


def test_trained_digits_cnn_reaches_98_percent():
    """The default recipe (10 epochs; 99.6 % measured with seed 0, 99.1 % and 99.3 % with seeds 1 and 2)."""
    model = trained_digits_cnn()
    assert digits_accuracy(model) >= 0.98
    split = digits_split()
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"input": split.x_test})[0]
    assert np.mean(logits.argmax(axis=1) == split.y_test) >= 0.98
