"""Quantization-aware training (QAT): fine-tune a network through the rounding it will run with.

Post-training quantization rounds trained weights once and hopes the network copes; at 8 bits
it does, at 4 bits the rounding error of every weight adds up. QAT puts the quantizers into
the training graph so that the weights learn to live on the grid (Jacob et al., 2018; Krishnamoorthi,
2018, "Quantizing deep convolutional networks for efficient inference: A whitepaper").

Here the training graph *is* a QDQ graph. :func:`quantize_aware_train`

1. quantizes the model with :func:`~tinyinfer.compress.quantize_static`, which folds
   BatchNormalization into the convolutions (so that the weights trained are the weights
   that run), decides where the ``QuantizeLinear → DequantizeLinear`` pairs go and
   calibrates the activation ranges (per tensor, uint8 asymmetric);
2. folds the float model the same way (:func:`fold_batch_norm`): its weights are where
   training starts, not the rounded ones;
3. turns each integer weight of that model back into a float weight read through a
   quantizer, ``W → QuantizeLinear → Clip → DequantizeLinear`` (per output channel,
   symmetric). The integers are held in int8 whatever the bit width b: ``Clip`` to
   ``±(2^(b-1) - 1)`` (−7…7 for 4 bits) makes int8 act as the narrower type, in ONNX Runtime
   too; the biases stay float while training;
4. trains it with :class:`~tinyinfer.compress.Trainer`, whose rules for the pair
   (:mod:`tinyinfer.compress.backward`) pass gradients straight through the rounding;
5. writes the **same QDQ model the PTQ step wrote**, node for node: only its initializers
   change (the trained weights rounded to int8 or int4, their scales, int32 biases with
   scale ``s_input · s_weight``, and the activations' scales and zero points).

Two ways to treat the step sizes:

* ``method="ste"`` (straight-through estimator): weight scales follow the weights
  (``max |w| / qmax`` per channel, at every step); activation ranges follow an exponential
  moving average of each batch's min and max, starting from the calibrated range.
* ``method="lsq"`` (learned step size quantization, Esser et al., 2020): every scale is a
  parameter, learned by gradient descent with the paper's gradient scale
  ``g = 1 / sqrt(N * Qp)`` (N the values one scale covers in one sample, Qp the largest
  positive level), which keeps steps of the scales in proportion to steps of the weights.
  Weight steps start where the quantization error of the weights is least, activation steps
  at the calibrated ones; zero points stay where calibration put them. The quantizer of the
  model's input keeps its calibrated range, the data's own: learned, its step once grew from
  1/255 to 0.79 in three epochs (a binarised image) and cost 3 points of accuracy.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Iterable, Mapping

import numpy as np
import onnx

from ..errors import TinyInferError
from ..frontend import to_onnx
from ..ir import Graph, Node
from ..ops import prepare_node
from ..passes import PassManager
from ..runtime import InferenceSession, load
from .affine import INT4, compute_params
from .ptq import quantize_static
from .train import Trainer

METHODS = ("ste", "lsq")
#: Activations are uint8: Qp of LSQ's gradient scale for them.
ACTIVATION_LEVELS = 255
#: The weight of the old range in the moving average of activation ranges (``method="ste"``).
RANGE_MOMENTUM = 0.9


@dataclasses.dataclass(frozen=True)
class FakeQuantizedWeight:
    """One weight of the training graph and the integer initializer it becomes on export."""

    weight: str  # float initializer the training graph learns
    scale: str  # its step sizes; the same name in the training graph and the QDQ model
    stored: str  # the int8 / int4 initializer of the QDQ model
    axis: int | None


@dataclasses.dataclass(frozen=True)
class QuantizedBias:
    """A bias, float while training, int32 with scale ``s_input · s_weight`` on export."""

    bias: str
    stored: str
    scale: str
    input_scale: str
    weight_scale: str


@dataclasses.dataclass
class QatResult:
    """What :func:`quantize_aware_train` made: the QDQ model, the training history, its seconds."""

    model: onnx.ModelProto
    history: list[dict]
    seconds: float
    trainer: "QuantizationAwareTrainer"


def quantize_aware_train(model: Any, train_data: tuple[np.ndarray, np.ndarray], *, weight_bits: int = 8,
                         activation_bits: int = 8, method: str = "ste", epochs: int = 3, lr: float = 0.01,
                         per_channel: bool = True, calibration: np.ndarray | None = None, batch_size: int = 32,
                         augment: bool = True, validation: tuple[np.ndarray, np.ndarray] | None = None,
                         seed: int = 0, progress: bool = True) -> QatResult:
    """Fine-tune the float ``model`` with fake-quantized weights and activations; export QDQ.

    ``train_data`` is ``(images, labels)``; ``calibration`` the images whose ranges start
    the activation quantizers (default: the first 256 training images). ``weight_bits``
    from 2 to 8 (4 and below are stored as ONNX int4, opset 21), ``activation_bits`` 8.
    Training is SGD with momentum 0.9 and cosine decay from ``lr``; ``validation=(x, y)``
    adds the accuracy of each epoch to the history.
    """
    start = time.perf_counter()
    x, y = train_data
    trainer = prepare_qat(model, x[:256] if calibration is None else calibration, weight_bits=weight_bits,
                          activation_bits=activation_bits, method=method, per_channel=per_channel, lr=lr, seed=seed)
    history = trainer.fit(x, y, epochs=epochs, batch_size=batch_size, augment=augment, validation=validation,
                          progress=progress)
    return QatResult(trainer.to_qdq(), history, time.perf_counter() - start, trainer)


def prepare_qat(model: Any, calibration: np.ndarray, *, weight_bits: int = 8, activation_bits: int = 8,
                method: str = "ste", per_channel: bool = True, calibration_method: str = "minmax",
                lr: float = 0.01, momentum: float = 0.9, seed: int = 0) -> "QuantizationAwareTrainer":
    """The trainer :func:`quantize_aware_train` fits, before any step.

    Activation ranges come from ``calibration_method`` (minmax by default: the moving
    average of the STE carries on with min and max). Its
    :meth:`~QuantizationAwareTrainer.to_qdq` right away gives post-training quantization at
    ``weight_bits``: weights rounded to nearest on a max scale, biases not corrected, exactly
    :func:`quantize_static` with ``method=calibration_method, bias_correction=False`` at 8 and
    4 bits.
    """
    if method not in METHODS:
        raise TinyInferError(f"unknown QAT method {method!r}; expected one of {METHODS}")
    if not 2 <= weight_bits <= 8:
        raise TinyInferError(f"weight_bits must lie in 2..8 (held in int8, stored as int4 up to 4), got {weight_bits}")
    if activation_bits != 8:
        raise TinyInferError(f"activations are quantized to uint8: activation_bits must be 8, got {activation_bits}")
    calibration = np.asarray(calibration, np.float32)
    if calibration.ndim == 0 or len(calibration) == 0:
        raise TinyInferError("the calibration data is empty; expected at least one image on axis 0")
    folded = fold_batch_norm(model)
    storage = INT4 if weight_bits <= 4 else np.int8
    qdq = quantize_static(model, None, _feeds(folded, calibration), method=calibration_method, per_channel=per_channel,
                          weight_type=storage, bias_correction=False, progress=False).model
    return QuantizationAwareTrainer(qdq, folded, weight_bits=weight_bits, method=method, lr=lr, momentum=momentum,
                                    seed=seed, sample=calibration[:1])


def compare_with_ptq(model: Any, split: Any, *, weight_bits: Iterable[int] = (8, 4, 3, 2),
                     methods: Iterable[str] = METHODS, epochs: int = 3, lr: float = 0.01, calibration: int = 256,
                     per_channel: bool = True, seed: int = 0, progress: bool = False) -> list[dict]:
    """Held-out accuracy of PTQ and of QAT per method, one row per weight width (activations uint8).

    ``split`` has ``x_train, y_train, x_test, y_test`` (a :class:`~tinyinfer.compress.DigitsSplit`).
    PTQ at 8 and 4 bits is :func:`quantize_static` with its defaults; below 4 bits, which it
    does not store, it is :func:`prepare_qat`'s model before training (nearest rounding on a
    max scale). A row holds the accuracies (``fp32``, ``ptq`` and one per method), each
    method's training seconds and the bytes of each file.
    """
    images = split.x_train[:calibration]
    fp32 = _accuracy(model, split)
    rows = []
    for bits in weight_bits:
        if bits in (4, 8):
            ptq = quantize_static(model, None, _feeds(model, images), weight_type=f"int{bits}", per_channel=per_channel,
                                  progress=False).model
        else:
            ptq = prepare_qat(model, images, weight_bits=bits, per_channel=per_channel, seed=seed).to_qdq()
        row = {"weight_bits": bits, "fp32": fp32, "ptq": _accuracy(ptq, split), "ptq_bytes": ptq.ByteSize()}
        for method in methods:
            result = quantize_aware_train(model, (split.x_train, split.y_train), weight_bits=bits, method=method,
                                          epochs=epochs, lr=lr, per_channel=per_channel, calibration=images,
                                          seed=seed, progress=progress)
            row.update({method: _accuracy(result.model, split), f"{method}_seconds": result.seconds,
                        f"{method}_bytes": result.model.ByteSize()})
        rows.append(row)
    return rows


def _feeds(model: Any, images: np.ndarray, batch: int = 32) -> list[dict[str, np.ndarray]]:
    """Calibration feeds for the model's one input, ``batch`` images each."""
    name = load(model).inputs[0].name
    return [{name: images[i:i + batch]} for i in range(0, len(images), batch)]


def _accuracy(model: Any, split: Any) -> float:
    session = InferenceSession(model)
    logits = session.run(None, {session.get_inputs()[0].name: split.x_test})[0]
    return float(np.mean(logits.argmax(axis=1) == split.y_test))


def fold_batch_norm(model: Any) -> onnx.ModelProto:
    """The float model after tinyinfer's O2 passes (BatchNorm folded), in standard ONNX ops."""
    optimized, _ = PassManager("O2").run(load(model))
    return to_onnx(optimized, decompose=True)


# ============================================================================ the trainer
class QuantizationAwareTrainer(Trainer):
    """A :class:`Trainer` over the fake-quantized twin of a QDQ model, that exports QDQ again.

    ``qdq`` is the QDQ model (from :func:`quantize_static`), ``float_model`` the float model
    it was quantized from (its weights are where training starts).
    """

    def __init__(self, qdq: onnx.ModelProto, float_model: onnx.ModelProto, *, weight_bits: int, method: str,
                 lr: float, momentum: float, seed: int, sample: np.ndarray):
        self.qdq = load(qdq)
        self.weight_bits, self.method = weight_bits, method
        self.qmax = 2 ** (weight_bits - 1) - 1
        graph, self.weights, self.biases = fake_quantized_graph(self.qdq, load(float_model), self.qmax)
        self.activations = activation_quantizers(graph)
        learned = [w.weight for w in self.weights] + [b.bias for b in self.biases]
        if method == "lsq":  # the data's own range is known: its quantizer stays as calibrated
            fed = {n.inputs[1] for n in graph.nodes
                   if n.op_type == "QuantizeLinear" and n.inputs[0] in graph.input_names}
            learned += [w.scale for w in self.weights] + [scale for scale in self.activations if scale not in fed]
        super().__init__(graph, optimizer="sgd", lr=lr, momentum=momentum, parameters=learned, seed=seed)
        tracked = [n for scale, zero in self.activations.items() for n in (scale, zero)] if method == "ste" else []
        tracked += [w.scale for w in self.weights if w.scale not in self.parameters]
        for name in tracked:  # state, so that training may update them and to_graph writes them
            self.state[name] = self.constants.pop(name)
        self.ranges = {scale: _range_of(self.state[scale], self.state[zero])
                       for scale, zero in self.activations.items() if method == "ste"}
        if method == "lsq":
            for w in self.weights:
                start = lsq_initial_step(self.parameters[w.weight], self.qmax, w.axis)
                self.parameters[w.scale] = start.astype(self.dtype)
            self.optimizer = StepSizeGradientScale(self.optimizer, self._gradient_scales(sample))

    def forward(self, x: np.ndarray, *, training: bool = False) -> tuple[np.ndarray, list, dict]:
        """The trainer's forward; with the STE, weight scales follow the weights first, and in
        training the activation ranges follow the batch."""
        if self.method == "ste":
            self._refresh_weight_scales()
        logits, tape, updates = super().forward(x, training=training)
        if training and self.method == "ste":
            updates.update(self._moving_ranges(tape))
        return logits, tape, updates

    def to_qdq(self) -> onnx.ModelProto:
        """The QDQ model with the trained weights, biases and scales; onnx.checker passes it."""
        if self.method == "ste":
            self._refresh_weight_scales()
        trained = {**self.constants, **self.parameters, **self.state}
        graph = self.qdq.copy()
        for w in self.weights:
            scale = trained[w.scale].astype(np.float32)
            q = _round_to_grid(trained[w.weight], _along(scale, w.axis, trained[w.weight].ndim), self.qmax)
            graph.initializers[w.stored] = q.astype(graph.initializers[w.stored].dtype)
            graph.initializers[w.scale] = scale
        for b in self.biases:
            scale = trained[b.input_scale].astype(np.float64) * trained[b.weight_scale].astype(np.float64)
            scale = np.maximum(scale, np.finfo(np.float32).tiny).astype(np.float32)
            q = np.clip(np.rint(trained[b.bias].astype(np.float64) / scale), -(2**31), 2**31 - 1)
            graph.initializers[b.stored] = q.astype(np.int32)
            graph.initializers[b.scale] = scale.reshape(graph.initializers[b.scale].shape)
        for scale, zero in self.activations.items():
            for name in (scale, zero):
                graph.initializers[name] = trained[name].astype(graph.initializers[name].dtype)
        model = to_onnx(graph, decompose=False)
        onnx.checker.check_model(model)
        return model

    # ------------------------------------------------------------------ private helpers
    def _refresh_weight_scales(self) -> None:
        for w in self.weights:
            self.state[w.scale] = weight_step(self.parameters[w.weight], self.qmax, w.axis).astype(self.dtype)

    def _moving_ranges(self, tape: list) -> dict[str, np.ndarray]:
        """New scales and zero points from a moving average of the batch's min and max."""
        batch: dict[str, tuple[float, float]] = {}
        for (node, _), saved in zip(self.rules, tape):
            if node.op_type == "QuantizeLinear" and node.inputs[1] in self.ranges:
                x = saved[0]
                low, high = batch.get(node.inputs[1], (math.inf, -math.inf))
                batch[node.inputs[1]] = (min(low, float(x.min())), max(high, float(x.max())))
        updates = {}
        for scale, (low, high) in batch.items():
            old_low, old_high = self.ranges[scale]
            low = RANGE_MOMENTUM * old_low + (1 - RANGE_MOMENTUM) * low
            high = RANGE_MOMENTUM * old_high + (1 - RANGE_MOMENTUM) * high
            self.ranges[scale] = (low, high)
            p = compute_params(np.float32(min(low, 0.0)), np.float32(max(high, 0.0)), np.uint8, symmetric=False)
            updates[scale] = p.scale.astype(self.dtype)
            updates[self.activations[scale]] = p.zero_point
        return updates

    def _gradient_scales(self, sample: np.ndarray) -> dict[str, float]:
        """LSQ's g = 1 / sqrt(N * Qp) per learned scale; N counted on one sample's forward."""
        _, tape, _ = super().forward(sample[:1])
        factors = {}
        for (node, _), saved in zip(self.rules, tape):
            scale = node.inputs[1] if node.op_type == "QuantizeLinear" else ""
            if scale in self.parameters and scale not in factors:
                levels = ACTIVATION_LEVELS if scale in self.activations else self.qmax
                factors[scale] = 1 / math.sqrt(saved[0].size / saved[1].size * levels)
        return factors


class StepSizeGradientScale:
    """An optimizer whose gradients of step sizes are multiplied by LSQ's ``g`` first.

    Esser et al. scale the step size's gradient so that its updates are as large, relative
    to the step size, as the weights' updates are relative to the weights; without ``g``
    the sum over N values makes the step size move far too fast. Step sizes are kept
    positive after each update.
    """

    def __init__(self, optimizer: Any, factors: Mapping[str, float]):
        self.optimizer = optimizer
        self.factors = dict(factors)

    @property
    def lr(self) -> float:
        return self.optimizer.lr

    @lr.setter
    def lr(self, value: float) -> None:
        self.optimizer.lr = value

    def step(self, parameters: Mapping[str, np.ndarray], grads: Mapping[str, np.ndarray]) -> None:
        scaled = {name: np.asarray(g * self.factors[name], parameters[name].dtype) if name in self.factors else g
                  for name, g in grads.items()}
        self.optimizer.step(parameters, scaled)
        for name in self.factors:
            np.maximum(parameters[name], np.finfo(np.float32).tiny, out=parameters[name])


# ============================================================================ the training graph
def fake_quantized_graph(qdq: Graph, float_graph: Graph, qmax: int
                         ) -> tuple[Graph, list[FakeQuantizedWeight], list[QuantizedBias]]:
    """The QDQ graph with float weights read through ``Q → Clip(±qmax) → DQ`` and float biases.

    Weights and biases start from ``float_graph``'s values: the k-th Conv or Gemm of the QDQ
    graph reads the weights of the k-th Conv or Gemm of the float graph (BatchNorm folded,
    as the quantizer folds it; the shapes are checked).
    """
    graph = qdq.copy()
    twins = iter([node for node in float_graph.sort().nodes if node.op_type in ("Conv", "Gemm")])
    producers = graph.producers()
    bounds = _constant(graph, "weight_level_min", np.int8(-qmax)), _constant(graph, "weight_level_max", np.int8(qmax))
    weights, biases, nodes, dropped = [], [], [], []
    for node in graph.sort().nodes:
        readers = {i: producers[name] for i, name in enumerate(node.inputs[1:3], 1)
                   if _is_constant_dq(producers.get(name), graph)}
        if node.op_type not in ("Conv", "Gemm") or 1 not in readers:
            nodes.append(node)
            continue
        twin = next(twins, None)
        if twin is None or twin.op_type != node.op_type or \
                graph.initializers[readers[1].inputs[0]].shape != float_graph.initializers[twin.inputs[1]].shape:
            raise TinyInferError(f"node '{node.name}' ({node.op_type}) has no float twin in the folded model "
                                 f"(found {twin and twin.name!r}); expected the same layers in the same order")
        dropped += [readers[1].inputs[0], *readers[1].inputs[2:]]  # the integers and their zero point
        weight = _fake_quantize_weight(graph, readers[1], twin.inputs[1], float_graph, bounds, nodes)
        weights.append(weight)
        if 2 in readers:
            dropped += readers[2].inputs  # int32 bias and its scale: float while training
            biases.append(_float_bias(graph, node, readers[2], twin.inputs[2], float_graph, producers, weight))
        nodes.append(node)
    graph.nodes = [n for n in nodes if not (n.op_type == "DequantizeLinear" and n.inputs[0] in
                                            {b.stored for b in biases})]
    for name in dropped:
        graph.initializers.pop(name, None)
    graph.value_info = {}
    return graph.sort(), weights, biases


def activation_quantizers(graph: Graph) -> dict[str, str]:
    """Scale -> zero point of every QuantizeLinear on an activation (not on a weight)."""
    return {node.inputs[1]: node.inputs[2] for node in graph.nodes
            if node.op_type == "QuantizeLinear" and node.inputs[0] not in graph.initializers}


def weight_step(w: np.ndarray, qmax: int, axis: int | None) -> np.ndarray:
    """Symmetric step sizes ``max |w| / qmax`` per slice along ``axis`` (all of w if None);
    1 for an all-zero slice, as :func:`~tinyinfer.compress.compute_params` gives."""
    w = np.abs(np.asarray(w, np.float64))
    bound = w.max() if axis is None else w.max(axis=tuple(i for i in range(w.ndim) if i != axis))
    step = bound / qmax
    return np.asarray(np.maximum(np.where(step > 0, step, 1.0).astype(np.float32), np.finfo(np.float32).tiny))


def lsq_initial_step(w: np.ndarray, qmax: int, axis: int | None, candidates: int = 64) -> np.ndarray:
    """Starting step sizes for LSQ: per slice along ``axis``, the step of least quantization
    error ``||w - fake_quantize(w)||^2`` among ``candidates`` fractions of ``max |w| / qmax``.

    LSQ itself starts from ``2 mean|w| / sqrt(Qp)``; a least-error start, as LSQ+ (Bhalgat et
    al., 2020) uses for its activations, trained better on the digits CNN (3-bit per-tensor
    weights: 99.3-99.6 % instead of 95.3-95.6 %). At 2 and 3 bits it keeps most weights off
    zero, where ``max |w| / qmax`` rounds nearly all of them to it.
    """
    w = np.asarray(w, np.float64)
    rows = w.reshape(1, -1) if axis is None else np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)
    top = weight_step(rows, qmax, 0).astype(np.float64)[:, None]
    best, best_error = top[:, 0].copy(), np.full(len(rows), np.inf)
    for fraction in np.linspace(1 / candidates, 1, candidates):
        step = top * fraction
        error = ((np.clip(np.rint(rows / step), -qmax, qmax) * step - rows) ** 2).sum(axis=1)
        better = error < best_error
        best[better], best_error[better] = step[better, 0], error[better]
    return np.asarray(best.reshape(()) if axis is None else best, np.float32)


# ------------------------------------------------------------------------ private helpers
def _fake_quantize_weight(graph: Graph, dq: Node, float_name: str, float_graph: Graph, bounds: tuple[str, str],
                          nodes: list[Node]) -> FakeQuantizedWeight:
    """Rewire ``dq`` to read ``Clip(Q(float weight))``; the Q and Clip go into ``nodes``."""
    stored, scale = dq.inputs[0], dq.inputs[1]
    axis = dq.attrs.get("axis") if np.ndim(graph.initializers[scale]) == 1 else None
    graph.initializers[float_name] = np.asarray(float_graph.initializers[float_name], np.float32)
    zero = _constant(graph, f"{stored}_int8_zero_point", np.zeros(np.shape(graph.initializers[scale]), np.int8))
    levels, clipped = f"{stored}_levels", f"{stored}_clipped"
    attrs = {} if axis is None else {"axis": axis}
    for op_type, inputs, output in (("QuantizeLinear", [float_name, scale, zero], levels),
                                    ("Clip", [levels, *bounds], clipped)):
        node = Node(op_type, inputs, [output], dict(attrs) if op_type != "Clip" else {}, "", f"{output}_{op_type}")
        prepare_node(node, graph.opset_of(""))
        nodes.append(node)
    dq.inputs = [clipped, scale, zero]
    return FakeQuantizedWeight(float_name, scale, stored, axis)


def _float_bias(graph: Graph, node: Node, dq: Node, float_name: str, float_graph: Graph, producers: dict,
                weight: FakeQuantizedWeight) -> QuantizedBias:
    source = producers.get(node.inputs[0])
    if source is None or source.op_type != "DequantizeLinear":
        raise TinyInferError(f"node '{node.name}' has an int32 bias but no quantized input to take its scale from")
    graph.initializers[float_name] = np.asarray(float_graph.initializers[float_name], np.float32)
    node.inputs[2] = float_name
    return QuantizedBias(float_name, dq.inputs[0], dq.inputs[1], source.inputs[1], weight.scale)


def _is_constant_dq(node: Node | None, graph: Graph) -> bool:
    return node is not None and node.op_type == "DequantizeLinear" and node.inputs[0] in graph.initializers


def _constant(graph: Graph, name: str, value: np.ndarray) -> str:
    graph.initializers[name] = np.asarray(value)
    return name


def _range_of(scale: np.ndarray, zero_point: np.ndarray) -> tuple[float, float]:
    """The real range ``[(0 - z) s, (255 - z) s]`` a uint8 quantizer covers."""
    s, z = float(scale), int(zero_point)
    return (0 - z) * s, (ACTIVATION_LEVELS - z) * s


def _along(scale: np.ndarray, axis: int | None, ndim: int) -> np.ndarray:
    if axis is None:
        return scale
    shape = [1] * ndim
    shape[axis] = -1
    return scale.reshape(shape)


def _round_to_grid(w: np.ndarray, scale: np.ndarray, qmax: int) -> np.ndarray:
    """``clip(round_half_even(w / s), -qmax, qmax)``, divided in float32 as QuantizeLinear does."""
    return np.clip(np.rint(np.asarray(w, np.float32) / scale), -qmax, qmax).astype(np.int8)
