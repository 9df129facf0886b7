"""Training on tinyinfer's own graphs: a small trainer, so the chapter needs no deep-learning framework.

Quantization-aware training, pruning with fine-tuning, distillation and binarization all need
gradients. :class:`Trainer` gets them from the graph itself: it takes an ONNX model (or an
``ir.Graph``), runs it forward node by node in topological order with each op's training
forward (:mod:`tinyinfer.compress.backward`), keeps what every node saved, and walks the same
nodes in reverse, calling each op's vector-Jacobian product. Where a tensor feeds several
nodes, its gradients add up.

* **Parameters** are the float initializers at the learnable inputs of each op (Conv and
  Gemm weights and biases, MatMul's right operand, BatchNormalization's scale and shift),
  or the names given as ``parameters=``. BatchNormalization's running mean and variance are
  *state*: updated by the forward pass in training mode, not by gradients.
* **Optimizers**: :class:`SGD` with momentum and :class:`Adam`, both with weight decay on
  the weights (tensors of rank 2 and more; biases and BatchNorm's scale and shift are not
  decayed, as is usual since they do not set the model's capacity).
* :meth:`Trainer.fit` runs epochs of seeded minibatches (:mod:`tinyinfer.compress.data`)
  with a cosine learning-rate decay (Loshchilov & Hutter, 2017, "SGDR", without restarts)
  and a progress bar per epoch; :meth:`Trainer.evaluate` gives the accuracy;
  :meth:`Trainer.to_onnx` writes the trained weights and running statistics back into the
  model, which tinyinfer and ONNX Runtime then run like any other.

Everything random (order, shifts, dropout masks) comes from one generator seeded by
``seed``, and the kernels are deterministic, so the same seed gives the same weights.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import onnx

from ..errors import TinyInferError
from ..frontend import to_onnx
from ..ir import Graph
from ..runtime import load
from .backward import Mode, rule_for, softmax_cross_entropy
from .data import minibatches

#: ``loss(logits, targets) -> (value, gradient with respect to the logits)``.
Loss = Callable[[np.ndarray, Any], tuple[float, np.ndarray]]
SCHEDULES = ("cosine", "constant")


# ============================================================================ optimizers
class SGD:
    """Stochastic gradient descent with momentum, in the form PyTorch uses::

        g = grad + weight_decay * p      (weights only)
        v = momentum * v + g
        p = p - lr * v
    """

    def __init__(self, lr: float = 0.05, momentum: float = 0.9, weight_decay: float = 0.0):
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.velocity: dict[str, np.ndarray] = {}

    def step(self, parameters: Mapping[str, np.ndarray], grads: Mapping[str, np.ndarray]) -> None:
        """Update every parameter in place."""
        for name, p in parameters.items():
            g = _decayed(grads[name], p, self.weight_decay)
            v = self.velocity.get(name)
            v = g.copy() if v is None else np.add(self.momentum * v, g, out=v)
            self.velocity[name] = v
            p -= p.dtype.type(self.lr) * v


class Adam:
    """Adam (Kingma & Ba, 2015): steps scaled by running estimates of the gradient's moments::

        g = grad + weight_decay * p      (weights only)
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g^2
        p = p - lr * (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps)
    """

    def __init__(self, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        self.lr, self.betas, self.eps, self.weight_decay = lr, betas, eps, weight_decay
        self.moments: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.t = 0

    def step(self, parameters: Mapping[str, np.ndarray], grads: Mapping[str, np.ndarray]) -> None:
        self.t += 1
        beta1, beta2 = self.betas
        for name, p in parameters.items():
            g = _decayed(grads[name], p, self.weight_decay)
            m, v = self.moments.get(name, (np.zeros_like(p), np.zeros_like(p)))
            m = beta1 * m + (1 - beta1) * g
            v = beta2 * v + (1 - beta2) * g * g
            self.moments[name] = (m, v)
            m_hat, v_hat = m / (1 - beta1 ** self.t), v / (1 - beta2 ** self.t)
            p -= (self.lr * m_hat / (np.sqrt(v_hat) + self.eps)).astype(p.dtype)


def _decayed(grad: np.ndarray, p: np.ndarray, weight_decay: float) -> np.ndarray:
    return grad + weight_decay * p if weight_decay and p.ndim >= 2 else grad


def make_optimizer(name: str, *, lr: float | None = None, momentum: float = 0.9, weight_decay: float = 0.0):
    """``"sgd"`` (default lr 0.05) or ``"adam"`` (default lr 0.001)."""
    if name == "sgd":
        return SGD(0.05 if lr is None else lr, momentum, weight_decay)
    if name == "adam":
        return Adam(1e-3 if lr is None else lr, weight_decay=weight_decay)
    raise TinyInferError(f"unknown optimizer {name!r}; expected 'sgd' or 'adam'")


# ============================================================================ the trainer
class Trainer:
    """Trains a model with one data input whose first output is the logits.

    ``model`` is anything :func:`tinyinfer.runtime.load` reads (a path, bytes, an
    ``onnx.ModelProto``, a Graph; a Graph is copied). ``optimizer`` is ``"sgd"``, ``"adam"``
    or an object with ``step(parameters, grads)`` (then ``lr``, ``momentum`` and
    ``weight_decay`` are its own business). ``loss`` maps ``(logits, targets)`` to the loss
    and its gradient (default: softmax cross-entropy on integer labels). ``dtype`` is the
    precision of training (float64 for gradient checks); :meth:`to_onnx` writes the weights
    back in their original dtype.
    """

    def __init__(self, model: Any, *, optimizer: Any = "sgd", lr: float | None = None, momentum: float = 0.9,
                 weight_decay: float = 0.0, loss: Loss = softmax_cross_entropy, parameters: Iterable[str] | None = None,
                 seed: int = 0, dtype=np.float32):
        self.graph = load(model.copy() if isinstance(model, Graph) else model).sort()
        self.dtype = np.dtype(dtype)
        self.rules = [(node, rule_for(node)) for node in self.graph.nodes]  # raises for an op without a rule
        self.input_name = self._data_input()
        self.output_name = self.graph.outputs[0].name
        names = self._parameter_names() if parameters is None else self._checked_parameters(parameters)
        initializers = self.graph.initializers
        state = [n for node in self.graph.nodes if node.op_type == "BatchNormalization" for n in node.inputs[3:5]
                 if n in initializers and n not in names]
        self.parameters = {name: initializers[name].astype(self.dtype) for name in names}
        self.state = {name: initializers[name].astype(self.dtype) for name in state}
        self.constants = {name: (a.astype(self.dtype) if a.dtype.kind == "f" else a)
                          for name, a in initializers.items() if name not in self.parameters and name not in self.state}
        self.needs_grad = self._tensors_that_need_gradients()
        self.optimizer = make_optimizer(optimizer, lr=lr, momentum=momentum, weight_decay=weight_decay) \
            if isinstance(optimizer, str) else optimizer
        self.loss = loss
        self.rng = np.random.default_rng(seed)
        self.step_count = 0

    # ------------------------------------------------------------------ forward and backward
    def forward(self, x: np.ndarray, *, training: bool = False) -> tuple[np.ndarray, list, dict]:
        """(logits, what each node saved, new state values): one pass over the graph."""
        values = {**self.constants, **self.state, **self.parameters, self.input_name: np.asarray(x, self.dtype)}
        mode = Mode(training=training, rng=self.rng)
        tape = []
        for node, node_rule in self.rules:
            outputs, saved = node_rule.forward(node, [values[name] if name else None for name in node.inputs], mode)
            values.update(zip(node.outputs, outputs))
            tape.append(saved)
        return values[self.output_name], tape, mode.updates

    def backward(self, tape: list, d_output: np.ndarray) -> dict[str, np.ndarray]:
        """Gradients of every parameter, from the gradient of the output, in reverse node order."""
        grads: dict[str, np.ndarray] = {self.output_name: d_output}
        for (node, node_rule), saved in zip(reversed(self.rules), reversed(tape)):
            dy = grads.pop(node.outputs[0], None)
            wanted = [name in self.needs_grad for name in node.inputs]
            if dy is None or not any(wanted):
                continue
            for name, grad, want in zip(node.inputs, node_rule.backward(node, saved, dy, wanted), wanted):
                if want and grad is not None:
                    # np.asarray: two 0-d gradients add up to a NumPy scalar, which an
                    # in-place optimizer update could not write back into
                    grads[name] = np.asarray(grads[name] + grad) if name in grads else grad
        return {name: grads.get(name, np.zeros_like(p)) for name, p in self.parameters.items()}

    def gradients(self, x: np.ndarray, targets: Any) -> tuple[float, dict[str, np.ndarray]]:
        """The loss on one batch (training mode) and its gradient per parameter; nothing is updated."""
        logits, tape, _ = self.forward(x, training=True)
        loss, d_logits = self.loss(logits, targets)
        return loss, self.backward(tape, d_logits.astype(self.dtype, copy=False))

    def train_step(self, x: np.ndarray, targets: Any) -> float:
        """One optimizer step on one batch; returns the batch's loss (before the step)."""
        logits, tape, updates = self.forward(x, training=True)
        loss, d_logits = self.loss(logits, targets)
        grads = self.backward(tape, d_logits.astype(self.dtype, copy=False))
        self.optimizer.step(self.parameters, grads)
        self.state.update(updates)
        self.step_count += 1
        return loss

    # ------------------------------------------------------------------ epochs
    def fit(self, x: np.ndarray, y: np.ndarray, *, epochs: int, batch_size: int = 64, augment: bool = False,
            schedule: str = "cosine", validation: tuple[np.ndarray, np.ndarray] | None = None,
            progress: bool = True) -> list[dict]:
        """Train for ``epochs`` passes over ``(x, y)``; one history row per epoch.

        ``schedule="cosine"`` decays the learning rate from its initial value to 0 over all
        steps, ``"constant"`` keeps it. A row holds the epoch, its mean loss, its seconds
        and, with ``validation=(x, y)``, the accuracy on it.
        """
        if schedule not in SCHEDULES:
            raise TinyInferError(f"unknown schedule {schedule!r}; expected one of {SCHEDULES}")
        if epochs < 1:
            raise TinyInferError(f"epochs must be a positive integer, got {epochs}")
        base_lr = self.optimizer.lr
        per_epoch = math.ceil(len(x) / batch_size)
        total, done = epochs * per_epoch, 0
        history = []
        for epoch in range(epochs):
            start, losses = time.perf_counter(), []
            batches = minibatches(x, y, batch_size, self.rng, augment=augment)
            for xb, yb in _epoch_bar(batches, per_epoch, f"epoch {epoch + 1}/{epochs}", progress):
                if schedule == "cosine":
                    self.optimizer.lr = base_lr * 0.5 * (1 + math.cos(math.pi * done / total))
                losses.append(self.train_step(xb, yb))
                done += 1
            row = {"epoch": epoch + 1, "loss": float(np.mean(losses)), "seconds": time.perf_counter() - start}
            if validation is not None:
                row["accuracy"] = self.evaluate(*validation)
            history.append(row)
        self.optimizer.lr = base_lr
        return history

    def predict(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Logits in inference mode (running statistics, no dropout), in batches."""
        parts = [self.forward(x[i:i + batch_size])[0] for i in range(0, len(x), batch_size)]
        return np.concatenate(parts)

    def evaluate(self, x: np.ndarray, y: np.ndarray, batch_size: int = 256) -> float:
        """Top-1 accuracy on ``(x, y)``, in inference mode."""
        return float(np.mean(self.predict(x, batch_size).argmax(axis=1) == y))

    # ------------------------------------------------------------------ export
    def to_graph(self) -> Graph:
        """A copy of the graph holding the trained weights and running statistics."""
        graph = self.graph.copy()
        for name, array in {**self.parameters, **self.state}.items():
            graph.initializers[name] = array.astype(self.graph.initializers[name].dtype)
        return graph

    def to_onnx(self) -> onnx.ModelProto:
        """The trained model as ONNX: the same graph, its weights and statistics replaced."""
        return to_onnx(self.to_graph())

    # ------------------------------------------------------------------ private helpers
    def _data_input(self) -> str:
        data = [v.name for v in self.graph.inputs if v.name not in self.graph.initializers]
        if len(data) != 1:
            raise TinyInferError(f"the trainer feeds one data input; graph '{self.graph.name}' has {data}")
        return data[0]

    def _parameter_names(self) -> list[str]:
        names: dict[str, None] = {}
        for node, node_rule in self.rules:
            for i in node_rule.parameters:
                name = node.inputs[i] if i < len(node.inputs) else ""
                if name in self.graph.initializers and self.graph.initializers[name].dtype.kind == "f":
                    names[name] = None
        return list(names)

    def _checked_parameters(self, parameters: Iterable[str]) -> list[str]:
        names = list(parameters)
        for name in names:
            array = self.graph.initializers.get(name)
            if array is None or array.dtype.kind != "f":
                raise TinyInferError(f"parameter '{name}' is not a float initializer of graph '{self.graph.name}'")
        return names

    def _tensors_that_need_gradients(self) -> set[str]:
        """Parameters and every tensor computed from one: the only gradients backward computes."""
        needed = set(self.parameters)
        for node, _ in self.rules:
            if any(name in needed for name in node.inputs):
                needed.update(node.outputs)
        return needed


def _epoch_bar(batches: Iterable, total: int, desc: str, enabled: bool) -> Iterable:
    """A tqdm bar over one epoch's batches when tqdm is installed and ``enabled``."""
    if not enabled:
        return batches
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is a dev extra; training works without it
        return batches
    return tqdm(batches, total=total, desc=desc, unit="batch", leave=False)
