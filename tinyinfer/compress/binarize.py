"""Binarized networks: one bit per weight and per activation, trained with the straight-through estimator.

A binarized layer keeps only signs. Its weights are ``±1`` (BinaryConnect, Courbariaux et al.,
2015), scaled per output channel by ``α = mean |W|`` of the filter (XNOR-Net, Rastegari et al.,
2016), and its input activations are ``±1`` too (BNN, Hubara et al., 2016). A dot product of
two sign vectors is an XNOR and a popcount (:mod:`tinyinfer.kernels.binary`), and a weight
takes 1 bit instead of 32.

Training cannot work on the signs alone: they have zero gradient almost everywhere and a step
of a few thousandths would never flip one. So, as in the papers,

* each binarized layer keeps a float **latent** weight ``W``; the forward pass uses
  ``W_b = α · sign(W)``, and the backward pass carries the gradient of ``W_b`` back to ``W``
  through ``α`` exactly and through ``sign`` by the straight-through estimator (STE);
* activations go through ONNX ``Sign``, whose backward rule (:mod:`tinyinfer.compress.backward`)
  is the STE of hard tanh: the gradient passes where ``|x| <= 1``;
* after every step the latent weights are clipped to ``[-1, 1]`` (BinaryConnect): beyond
  that the STE passes no gradient and a weight could drift out of reach of a sign flip;
* the first layer (it sees the image) and the last one (it makes the logits) stay float, as
  in every one of these papers: they hold few weights and cost the most accuracy to binarize.

The network (:func:`binarized_digits_cnn`) is the digits CNN reshaped the way binarized
networks train well: BatchNormalization right before every ``Sign`` (it centres the values so
that both signs occur) and no ReLU before a sign (its output is never negative, so every
sign would be 0 or +1)::

    Conv 3x3 (float) + BN + Sign
    Conv 3x3 (binary) + BN + MaxPool + Sign
    Conv 3x3 (binary) + BN + Relu
    Flatten + Gemm (float)

**Conventions**, the same in training, in the exported ONNX model and in the engine's kernel:
activations are ONNX ``Sign`` (``Sign(0) = 0``) and convolutions pad with zeros, as ONNX
``Conv`` does. The XNOR kernel, which has no bit for 0, pads with +1 and subtracts the
border's constant contribution; an input that holds an exact 0 runs the float convolution
instead (:mod:`tinyinfer.kernels.binary_conv`). Binarized weights are exported as ``±α`` per
output channel (a latent weight of exactly 0 gets ``+α``), so the exported model is standard ONNX,
``x → Sign → Conv(W = α · sign(W_latent))``, which ONNX Runtime runs as it is and tinyinfer
rewrites to its XNOR-popcount ``BinaryConv``.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np
import onnx

from ..errors import TinyInferError, node_label
from ..ir import Graph, Node
from ..runtime import InferenceSession
from .data import DigitsSplit
from .train import Trainer

CLASSES = 10
#: Ops whose weight (input 1) a binarized network may binarize.
WEIGHTED = ("Conv", "Gemm")
#: The range latent weights are clipped to after each step (BinaryConnect).
LATENT_LIMIT = 1.0
BITS_PER_BYTE = 8
FLOAT_BYTES = 4


@dataclasses.dataclass
class BinarizedResult:
    """What :func:`train_binarized` made: the exported model, its held-out accuracy and sizes."""

    model: onnx.ModelProto
    accuracy: float
    #: Names of the weighted layers kept in float (the first and the last).
    float_layers: list[str]
    #: Bytes with 1 bit per binarized weight and float32 for everything else (α, float layers, BN).
    size_bytes: int
    #: Bytes of the same network with every parameter in float32.
    float_size_bytes: int
    history: list[dict]
    seconds: float


def binarized_digits_cnn(seed: int = 0, width: int = 32) -> onnx.ModelProto:
    """The untrained binarized digits network (see the module docstring); input ``"input"``
    (N, 1, 8, 8), output ``"logits"`` (N, 10)."""
    from ..models.builder import NetworkBuilder  # models sit beside compress; imported late, as compare.py does

    b = NetworkBuilder("binarized_digits_cnn", seed=seed)
    x = b.input("input", ("N", 1, 8, 8))
    x = b.batchnorm(b.conv(x, width, 3, name="conv1"), name="conv1.bn")
    x = b.node("Sign", [x], b.shapes[x], name="sign1")
    x = b.batchnorm(b.conv(x, 2 * width, 3, name="conv2"), name="conv2.bn")
    x = b.max_pool(x, 2, 2, name="pool1")
    x = b.node("Sign", [x], b.shapes[x], name="sign2")
    x = b.conv_bn_act(x, 4 * width, 3, name="conv3")
    logits = b.gemm(b.flatten(x, name="flatten"), CLASSES, name="logits")
    return b.build(logits, doc="binarized CNN for scikit-learn's 8x8 digits (tinyinfer.compress.binarize)",
                   calibrate=False)


def train_binarized(split: DigitsSplit, *, epochs: int = 6, seed: int = 0, progress: bool = False, width: int = 32,
                    lr: float = 0.01, batch_size: int = 32, model: Any = None) -> BinarizedResult:
    """Train a binarized network on ``split`` with Adam (cosine decay from ``lr``, one-pixel shifts)
    and export it as standard ONNX; the accuracy is tinyinfer's on ``split``'s test images.

    ``model`` defaults to :func:`binarized_digits_cnn` (``seed``, ``width``); any model whose
    weighted layers between the first and the last each read a ``Sign`` works too.
    """
    start = time.perf_counter()
    trainer = BinarizedTrainer(binarized_digits_cnn(seed, width) if model is None else model, lr=lr, seed=seed)
    history = trainer.fit(split.x_train, split.y_train, epochs=epochs, batch_size=batch_size, augment=True,
                          progress=progress)
    exported = trainer.to_onnx()
    graph = trainer.to_graph()
    return BinarizedResult(model=exported, accuracy=binarized_accuracy(exported, split),
                           float_layers=[node.name for node in trainer.float_layers],
                           size_bytes=packed_size_bytes(graph, trainer.binary_weights),
                           float_size_bytes=packed_size_bytes(graph, {}), history=history,
                           seconds=time.perf_counter() - start)


def binarized_accuracy(model: Any, split: DigitsSplit, backend: str = "reference") -> float:
    """Top-1 accuracy of ``model`` on ``split``'s test images, run by :class:`tinyinfer.InferenceSession`."""
    session = InferenceSession(model, backend=backend)
    logits = session.run(None, {session.get_inputs()[0].name: split.x_test})[0]
    return float(np.mean(logits.argmax(axis=1) == split.y_test))


# ============================================================================ the trainer
class BinarizedTrainer(Trainer):
    """A :class:`Trainer` whose middle weighted layers run on ``α · sign(W)`` of latent weights.

    ``binary_weights`` maps each binarized weight's name to its output-channel axis. Training
    uses Adam; the latent weights stay in ``self.parameters`` and are clipped to ``[-1, 1]``
    after every step. :meth:`to_graph` (and so :meth:`to_onnx`) writes the binarized weights.
    """

    def __init__(self, model: Any, *, lr: float = 0.01, seed: int = 0):
        super().__init__(model, optimizer="adam", lr=lr, seed=seed)
        self.float_layers, binarized = split_layers(self.graph)
        self.binary_weights = {node.inputs[1]: output_axis(node) for node in binarized}

    def forward(self, x: np.ndarray, *, training: bool = False) -> tuple[np.ndarray, list, dict]:
        # The graph reads parameters by name, so the binarized copies stand in for the latent
        # weights during the pass; the gradients that come back are those of the copies.
        latent = self.parameters
        self.parameters = {**latent, **self.binarized()}
        try:
            return super().forward(x, training=training)
        finally:
            self.parameters = latent

    def backward(self, tape: list, d_output: np.ndarray) -> dict[str, np.ndarray]:
        grads = super().backward(tape, d_output)
        for name, axis in self.binary_weights.items():
            grads[name] = latent_gradient(self.parameters[name], grads[name], axis)
        return grads

    def train_step(self, x: np.ndarray, targets: Any) -> float:
        loss = super().train_step(x, targets)
        for name in self.binary_weights:
            np.clip(self.parameters[name], -LATENT_LIMIT, LATENT_LIMIT, out=self.parameters[name])
        return loss

    def binarized(self) -> dict[str, np.ndarray]:
        """``α · sign(W)`` of every binarized latent weight."""
        return {name: binarize_weight(self.parameters[name], axis) for name, axis in self.binary_weights.items()}

    def to_graph(self) -> Graph:
        graph = super().to_graph()
        for name, weight in self.binarized().items():
            graph.initializers[name] = weight.astype(self.graph.initializers[name].dtype)
        return graph


# ============================================================================ the arithmetic
def binarize_weight(w: np.ndarray, axis: int = 0) -> np.ndarray:
    """XNOR-Net's ``α · sign(W)`` with ``α = mean |W|`` per index of ``axis`` (sign(0) taken as +1)."""
    alpha = channel_mean(np.abs(w), axis)
    return np.where(w >= 0, alpha, -alpha).astype(w.dtype)


def latent_gradient(w: np.ndarray, d_binary: np.ndarray, axis: int = 0) -> np.ndarray:
    """The gradient of the latent ``W`` from that of ``W_b = α · sign(W)``, ``α = mean |W|``.

    Per output channel of ``n`` weights, ``dW_b_i / dW_j = sign(W_i) sign(W_j) / n`` through
    ``α`` plus ``α · [i = j] · 1{|W_j| <= 1}`` through the sign (the hard-tanh STE), so::

        dW = α · 1{|W| <= 1} · dW_b  +  sign(W) · mean(dW_b · sign(W))
    """
    alpha = channel_mean(np.abs(w), axis)
    signs = np.where(w >= 0, 1, -1).astype(w.dtype)
    through_sign = alpha * (np.abs(w) <= LATENT_LIMIT) * d_binary
    through_alpha = signs * channel_mean(d_binary * signs, axis)
    return (through_sign + through_alpha).astype(w.dtype)


def channel_mean(x: np.ndarray, axis: int) -> np.ndarray:
    """The mean over every axis but ``axis``, shaped to broadcast against ``x``."""
    others = tuple(i for i in range(x.ndim) if i != axis % x.ndim)
    return x.mean(axis=others, keepdims=True)


# ============================================================================ the layers
def split_layers(graph: Graph) -> tuple[list[Node], list[Node]]:
    """(float layers, binarized layers) of a graph: its weighted layers in order, the first
    and the last kept float; every one between must be a Conv or Gemm that reads a ``Sign``."""
    initializers = graph.initializers
    producers = graph.producers()
    layers = [node for node in graph.sort().nodes if node.op_type in WEIGHTED + ("MatMul",)
              and len(node.inputs) > 1 and node.inputs[1] in initializers]
    if len(layers) < 3:
        names = ", ".join(node_label(node) for node in layers) or "none"
        raise TinyInferError(f"graph '{graph.name}' has no weighted layer between its first and last to binarize "
                             f"(weighted layers: {names}); expected a Conv or Gemm between them")
    middle = layers[1:-1]
    for node in middle:
        source = producers.get(node.inputs[0])
        if node.op_type not in WEIGHTED:
            raise TinyInferError(f"{node_label(node)} cannot be binarized: expected a Conv or Gemm")
        if source is None or source.op_type != "Sign":
            raise TinyInferError(f"{node_label(node)} cannot be binarized: its input '{node.inputs[0]}' is not "
                                 "the output of a Sign node, so its activations would not be binary")
    return [layers[0], layers[-1]], middle


def output_axis(node: Node) -> int:
    """The axis of a layer's weight that indexes its output channels."""
    if node.op_type == "Gemm" and not node.attrs.get("transB", 0):
        return 1
    return 0


def packed_size_bytes(graph: Graph, binary_weights: dict[str, int]) -> int:
    """Bytes of the graph's float initializers with 1 bit per element of ``binary_weights``
    (rounded up to whole bytes per tensor) plus one float32 α per output channel; every other
    float tensor at 4 bytes per element."""
    total = 0
    for name, array in graph.initializers.items():
        if array.dtype.kind != "f":
            continue
        if name in binary_weights:
            total += -(-array.size // BITS_PER_BYTE) + FLOAT_BYTES * array.shape[binary_weights[name]]
        else:
            total += FLOAT_BYTES * array.size
    return total
