"""The digits CNN: the small real network chapter 03 compresses, trained by tinyinfer itself.

scikit-learn's 8 x 8 handwritten digits (:mod:`tinyinfer.compress.data`) are a task where
accuracy is real and training takes seconds, so quantization, pruning, distillation and
binarization can each be measured on a trained model instead of random weights.

The network, for ``width`` w (default 32)::

    input (N, 1, 8, 8)
    Conv 3x3, w      + BatchNorm + Relu          8 x 8
    Conv 3x3, 2w     + BatchNorm + Relu          8 x 8
    MaxPool 2x2                                  4 x 4
    Conv 3x3, 4w     + BatchNorm + Relu          4 x 4
    Flatten, Gemm 64w -> 10                      logits (N, 10)

At w = 32: 113,386 parameters and 2.4 M multiply-accumulates per image. Almost all the
parameters sit in three tensors (the last conv, the middle conv and the classifier), so the
file is nearly all weights: an int8 QDQ copy, whose per-channel scales, int32 biases and extra
nodes cost about 10 kB whatever the network's size, comes to 0.27 x the float32 file only
from about 110,000 weights on (0.2685 here, with :func:`tinyinfer.compress.quantize_static`
per channel; 0.2725 with a second 2x2 pool before the classifier and 98,000 parameters).

:func:`trained_digits_cnn` trains it with :class:`tinyinfer.compress.Trainer` (SGD with
momentum, cosine decay, one-pixel shifts) and caches the trained file next to the kernel
selection cache, keyed by the training settings, so every chapter and test after the first
loads it in milliseconds.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import onnx

from ..compress.data import digits_split
from ..compress.train import Trainer
from ..runtime import InferenceSession
from ..runtime.select import cache_dir
from .builder import NetworkBuilder

#: Changes whenever the architecture or the training recipe changes, so old cached files are not reused.
VERSION = 1
CLASSES = 10
#: The training recipe of :func:`trained_digits_cnn` (epochs and seed are its arguments).
RECIPE = {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4, "batch_size": 32,
          "augment": True, "schedule": "cosine", "test_fraction": 0.25}


def digits_cnn(seed: int = 0, width: int = 32) -> onnx.ModelProto:
    """The untrained network (He-initialised weights); input ``"input"`` (N, 1, 8, 8), output ``"logits"`` (N, 10)."""
    b = NetworkBuilder("digits_cnn", seed=seed)
    x = b.input("input", ("N", 1, 8, 8))
    x = b.conv_bn_act(x, width, 3, name="conv1")
    x = b.conv_bn_act(x, 2 * width, 3, name="conv2")
    x = b.max_pool(x, 2, 2, name="pool1")
    x = b.conv_bn_act(x, 4 * width, 3, name="conv3")
    logits = b.gemm(b.flatten(x, name="flatten"), CLASSES, name="logits")
    return b.build(logits, doc="CNN for scikit-learn's 8x8 digits (tinyinfer.models.digits)", calibrate=False)


def trained_digits_cnn(seed: int = 0, epochs: int = 10, cache: bool = True, *, width: int = 32,
                       progress: bool = False) -> onnx.ModelProto:
    """:func:`digits_cnn` trained on the training split of :func:`~tinyinfer.compress.data.digits_split`.

    With ``cache`` the trained model is read from, or written to,
    ``<cache dir>/digits/digits_cnn-<key>.onnx``, where the cache directory is the kernel
    selection cache's (``$TINYINFER_CACHE_DIR`` or ``~/.cache/tinyinfer``) and the key hashes
    :data:`VERSION`, :data:`RECIPE`, ``seed``, ``epochs`` and ``width``.
    """
    settings = {"version": VERSION, **RECIPE, "seed": seed, "epochs": epochs, "width": width}
    path = cache_dir() / "digits" / f"digits_cnn-{_key(settings)}.onnx"
    if cache and path.is_file():
        return onnx.load(str(path))
    model = _train(settings, progress)
    if cache:
        _save_atomically(model, path)
    return model


def digits_accuracy(model, backend: str = "reference", *, seed: int = 0) -> float:
    """Top-1 accuracy of ``model`` (path, bytes, ModelProto or Graph) on the held-out digits,
    run through :class:`tinyinfer.InferenceSession`; ``seed`` picks the split."""
    split = digits_split(test_fraction=RECIPE["test_fraction"], seed=seed)
    session = InferenceSession(model, backend=backend)
    logits = session.run(None, {session.get_inputs()[0].name: split.x_test})[0]
    return float(np.mean(logits.argmax(axis=1) == split.y_test))


def _train(settings: dict, progress: bool) -> onnx.ModelProto:
    split = digits_split(test_fraction=settings["test_fraction"], seed=settings["seed"])
    trainer = Trainer(digits_cnn(settings["seed"], settings["width"]), optimizer=settings["optimizer"],
                      lr=settings["lr"], momentum=settings["momentum"], weight_decay=settings["weight_decay"],
                      seed=settings["seed"])
    trainer.fit(split.x_train, split.y_train, epochs=settings["epochs"], batch_size=settings["batch_size"],
                augment=settings["augment"], schedule=settings["schedule"], progress=progress)
    return trainer.to_onnx()


def _key(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def _save_atomically(model: onnx.ModelProto, path: Path) -> None:
    """Write to a temporary name, then rename: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(f".{os.getpid()}.tmp")
    onnx.save(model, str(temporary))
    os.replace(temporary, path)
