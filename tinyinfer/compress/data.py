"""The digits data set, split and served in minibatches, every step deterministic by seed.

scikit-learn ships the UCI handwritten digits with its wheel (``sklearn.datasets.load_digits``,
no download): 1,797 grey images of 8 x 8 pixels, values 0-16, ten classes of about 180 each.
They are small enough that a CNN trains on them in seconds on a laptop CPU, and real enough
that accuracy means something: the chapter's compression methods are all measured on them.

* :func:`digits_split` scales the pixels to [0, 1] (divides by 16; no standardisation, so
  an image's zero background stays exactly 0, which quantization represents without error)
  and holds out a stratified test split (25 % by default, every class in proportion).
* :func:`minibatches` shuffles with a seeded generator and can augment each batch with
  random shifts of up to one pixel (:func:`shift_images`): a stroke one pixel to the left is
  the same digit, and the network should learn that.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

import numpy as np

from ..errors import TinyInferError

#: The digits are 8 x 8 pixels with values 0..16.
PIXEL_MAX = 16.0


@dataclasses.dataclass(frozen=True)
class DigitsSplit:
    """Training and held-out images (float32, N x 1 x 8 x 8, in [0, 1]) and labels (int64)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def digits_split(*, test_fraction: float = 0.25, seed: int = 0) -> DigitsSplit:
    """scikit-learn's digits, scaled to [0, 1], split with every class in proportion (seeded)."""
    if not 0 < test_fraction < 1:
        raise TinyInferError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images / PIXEL_MAX).astype(np.float32)[:, None, :, :]
    labels = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=test_fraction, stratify=labels, random_state=seed)
    return DigitsSplit(x_train, y_train, x_test, y_test)


def minibatches(x: np.ndarray, y: np.ndarray, batch_size: int, rng: np.random.Generator, *,
                shuffle: bool = True, augment: bool = False) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """One epoch of ``(images, labels)`` batches; the last one may be smaller.

    ``rng`` draws the order (``shuffle``) and the shifts (``augment``), so the same generator
    state gives the same epoch.
    """
    if batch_size < 1:
        raise TinyInferError(f"batch_size must be a positive integer, got {batch_size}")
    if len(x) != len(y):
        raise TinyInferError(f"{len(x)} images but {len(y)} labels; expected one label per image")
    order = rng.permutation(len(x)) if shuffle else np.arange(len(x))
    for start in range(0, len(x), batch_size):
        chosen = order[start:start + batch_size]
        images = x[chosen]
        yield (shift_images(images, rng) if augment else images), y[chosen]


def shift_images(images: np.ndarray, rng: np.random.Generator, max_shift: int = 1) -> np.ndarray:
    """Move each image (N x C x H x W) by a random whole-pixel offset in ``[-max_shift, max_shift]``
    along each axis, filling the uncovered border with zeros (the background)."""
    shifted = np.zeros_like(images)
    height, width = images.shape[2:]
    offsets = rng.integers(-max_shift, max_shift + 1, size=(len(images), 2))
    for i, (dy, dx) in enumerate(offsets):
        target = (slice(max(dy, 0), height + min(dy, 0)), slice(max(dx, 0), width + min(dx, 0)))
        source = (slice(max(-dy, 0), height + min(-dy, 0)), slice(max(-dx, 0), width + min(-dx, 0)))
        shifted[i][(slice(None), *target)] = images[i][(slice(None), *source)]
    return shifted
