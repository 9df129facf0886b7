"""Pruning that trains: take weights out, then let the network learn to do without them.

:func:`~tinyinfer.compress.prune.prune` removes weights from a trained model with no data;
the accuracy it costs is mostly won back by training a little longer. This module does that
training, with :class:`~tinyinfer.compress.train.Trainer` underneath:

* **Masked training.** :class:`MaskedTrainer` holds the pruned weights at exactly zero: it
  zeroes their gradients before the optimizer step (so momentum and Adam's moments never
  move them) and multiplies the weights by their masks again after it (so weight decay or
  momentum gathered before the mask was set cannot bring them back).
* **Gradual magnitude pruning** (Zhu & Gupta, 2017, "To prune, or not to prune"):
  :class:`GradualPruningTrainer` raises the sparsity along the cubic schedule
  (:func:`cubic_sparsity`), recomputing the magnitude masks every ``frequency`` steps, layer
  by layer or with one global threshold. It removes weights fast at first, while many are
  redundant, and ever more slowly as the target nears and each weight left matters more.
  :func:`prune_once_and_finetune` is the baseline to compare with: all the sparsity at once, then
  the same number of epochs of masked fine-tuning.
* **Structured pruning + fine-tuning**: :func:`prune_channels_and_finetune` shrinks the model
  with ``l1-channel`` (Li et al., 2017) or ``bn-scale`` and trains the *smaller* graph.
  Network slimming (Liu et al., 2017) first trains with an L1 penalty on the BatchNorm scales
  (:class:`SlimmingTrainer`, :func:`train_slimming`), which drives the scales of unneeded
  channels towards zero, so removing them costs little.

On the trained digits CNN (99.6 % held-out accuracy), ten epochs of the default
:class:`Recipe` bring 90 % unstructured sparsity back to 99.6 % (global threshold; 99.3 %
layer by layer), and half the channels by L1 norm to 99.8 % with 3.9x fewer MACs. Channel
counts matter beyond MACs: ONNX Runtime's fastest convolutions work on blocks of 8 channels,
so a layer left with, say, 57 channels can run slower than the unpruned one.

Every function takes a model and training data and returns a :class:`Finetuned`, whose
``model`` is a standard ONNX model that tinyinfer and ONNX Runtime run::

    split = digits_split()
    result = prune_gradually(trained_digits_cnn(), split.x_train, split.y_train, sparsity=0.9)
    result.trainer.evaluate(split.x_test, split.y_test), result.sparsity
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Mapping

import numpy as np
import onnx

from .prune import PruneError, PruneReport, prunable_weights, magnitude_masks, prune
from .train import Trainer

SCOPES = ("layer", "global")


# ============================================================================ the schedule
def cubic_sparsity(step: int, final: float, *, initial: float = 0.0, begin: int = 0, pruning_steps: int = 10,
                   frequency: int = 1) -> float:
    """The sparsity Zhu & Gupta's schedule asks for at training step ``step``:

        s_t = s_f + (s_i - s_f) (1 - (t - t_0) / (n Δt))^3,   t in {t_0, t_0 + Δt, ..., t_0 + n Δt}

    with ``t_0 = begin``, ``n = pruning_steps`` and ``Δt = frequency``. Between pruning steps
    the sparsity stays at the last one's value; before ``begin`` the network is dense (0) and
    after the last pruning step it stays at ``final``.
    """
    if step < begin:
        return 0.0
    done = min((step - begin) // frequency, pruning_steps)  # pruning steps taken so far
    return final + (initial - final) * (1.0 - done / pruning_steps) ** 3


# ============================================================================ trainers
class MaskedTrainer(Trainer):
    """A :class:`Trainer` whose masked weights stay exactly zero.

    ``masks`` maps parameter names to boolean keep-masks of the parameter's shape (``True``
    keeps the weight). The other options are :class:`Trainer`'s.
    """

    def __init__(self, model: Any, *, masks: Mapping[str, np.ndarray] | None = None, **options):
        super().__init__(model, **options)
        self.masks: dict[str, np.ndarray] = {}
        self.set_masks(masks or {})

    def set_masks(self, masks: Mapping[str, np.ndarray]) -> None:
        """Replace the masks and zero the weights they remove."""
        for name, mask in masks.items():
            if name not in self.parameters:
                raise PruneError(f"mask for '{name}', which is not a parameter of graph '{self.graph.name}'")
            if np.shape(mask) != self.parameters[name].shape:
                raise PruneError(f"the mask of '{name}' has shape {np.shape(mask)}; "
                                 f"expected the parameter's shape {self.parameters[name].shape}")
        self.masks = {name: np.asarray(mask, dtype=bool) for name, mask in masks.items()}
        self.apply_masks()

    def apply_masks(self) -> None:
        for name, mask in self.masks.items():
            np.multiply(self.parameters[name], mask, out=self.parameters[name])

    def backward(self, tape: list, d_output: np.ndarray) -> dict[str, np.ndarray]:
        grads = super().backward(tape, d_output)
        for name, mask in self.masks.items():
            grads[name] = grads[name] * mask
        return grads

    def train_step(self, x: np.ndarray, targets: Any) -> float:
        loss = super().train_step(x, targets)
        self.apply_masks()
        return loss

    def sparsity(self) -> dict[str, float]:
        """Share of zeros in each masked parameter."""
        return {name: 1.0 - float(np.count_nonzero(self.parameters[name])) / mask.size
                for name, mask in self.masks.items()}


class GradualPruningTrainer(MaskedTrainer):
    """Gradual magnitude pruning: at steps ``begin, begin + frequency, ..., begin + pruning_steps
    * frequency`` the masks of the Conv / Gemm / MatMul weights are recomputed from the current
    magnitudes at the sparsity :func:`cubic_sparsity` gives (``scope`` as in
    :func:`~tinyinfer.compress.prune.magnitude_masks`). A pruned weight is zero, the smallest
    magnitude there is, so it stays pruned: the masks only ever grow.
    """

    def __init__(self, model: Any, *, sparsity: float, pruning_steps: int, frequency: int, begin: int = 0,
                 initial_sparsity: float = 0.0, scope: str = "layer", **options):
        _check_sparsity(sparsity)
        _check_scope(scope)
        super().__init__(model, **options)
        self.schedule = dict(final=float(sparsity), initial=float(initial_sparsity), begin=begin,
                             pruning_steps=pruning_steps, frequency=frequency)
        self.scope = scope
        self.weights = [name for name in prunable_weights(self.graph) if name in self.parameters]

    def train_step(self, x: np.ndarray, targets: Any) -> float:
        if self._pruning_step(self.step_count):
            self.prune_to(cubic_sparsity(self.step_count, **self.schedule))
        return super().train_step(x, targets)

    def prune_to(self, sparsity: float) -> None:
        """Mask the ``sparsity`` share of smallest weights (per layer or globally)."""
        weights = {name: self.parameters[name] for name in self.weights}
        self.set_masks(magnitude_masks(weights, sparsity, self.scope))

    def _pruning_step(self, step: int) -> bool:
        begin, frequency = self.schedule["begin"], self.schedule["frequency"]
        last = begin + self.schedule["pruning_steps"] * frequency
        return begin <= step <= last and (step - begin) % frequency == 0


class SlimmingTrainer(Trainer):
    """Network slimming's training (Liu et al., 2017): the loss gets ``penalty * sum |gamma|``
    over every BatchNormalization scale, whose subgradient ``penalty * sign(gamma)`` is added
    to the scales' gradients. Channels the network can spare end with small ``|gamma|``,
    which is what ``bn-scale`` pruning removes first."""

    def __init__(self, model: Any, *, penalty: float = 1e-3, **options):
        super().__init__(model, **options)
        self.penalty = float(penalty)
        self.scales = [node.inputs[1] for node in self.graph.nodes
                       if node.op_type == "BatchNormalization" and node.inputs[1] in self.parameters]
        if not self.scales:
            raise PruneError(f"network slimming penalizes BatchNormalization scales, and graph "
                             f"'{self.graph.name}' has no BatchNormalization with a trainable scale")

    def backward(self, tape: list, d_output: np.ndarray) -> dict[str, np.ndarray]:
        grads = super().backward(tape, d_output)
        for name in self.scales:
            grads[name] = grads[name] + self.penalty * np.sign(self.parameters[name])
        return grads


# ============================================================================ recipes
@dataclasses.dataclass(frozen=True)
class Recipe:
    """How a model is (re)trained: optimizer settings, epochs, batches and the seed.

    The defaults fine-tune the trained digits CNN (99.6 %) after 90 % magnitude or 50 % channel
    pruning back to within half a point; training from scratch wants a larger ``lr`` (0.05).
    """

    epochs: int = 10
    optimizer: str = "sgd"
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 32
    augment: bool = True
    seed: int = 0

    def trainer_options(self) -> dict:
        return dict(optimizer=self.optimizer, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay,
                    seed=self.seed)

    def steps(self, samples: int) -> int:
        return self.epochs * math.ceil(samples / self.batch_size)


@dataclasses.dataclass
class Finetuned:
    """A model after (pruning and) training: the trainer holding it, the epochs' history, the
    wall time of training and, for the methods built on :func:`prune`, its report."""

    trainer: Trainer
    history: list[dict]
    seconds: float
    report: PruneReport | None = None

    @property
    def model(self) -> onnx.ModelProto:
        return self.trainer.to_onnx()

    @property
    def sparsity(self) -> float:
        """Share of zeros over the model's Conv / Gemm / MatMul weights."""
        weights = [self.trainer.parameters[name] for name in prunable_weights(self.trainer.graph)]
        return 1.0 - sum(np.count_nonzero(w) for w in weights) / sum(w.size for w in weights)


def run_recipe(trainer: Trainer, x: np.ndarray, y: np.ndarray, recipe: Recipe, *, report: PruneReport | None = None,
               validation: tuple[np.ndarray, np.ndarray] | None = None, progress: bool = False) -> Finetuned:
    """Train ``trainer`` on ``(x, y)`` as ``recipe`` says and time it."""
    start = time.perf_counter()
    history = trainer.fit(x, y, epochs=recipe.epochs, batch_size=recipe.batch_size, augment=recipe.augment,
                          validation=validation, progress=progress)
    return Finetuned(trainer, history, time.perf_counter() - start, report)


# ============================================================================ the methods
def prune_gradually(model: Any, x: np.ndarray, y: np.ndarray, *, sparsity: float = 0.9, scope: str = "layer",
                    recipe: Recipe = Recipe(), pruning_share: float = 0.5, frequency: int = 10,
                    **fit_options) -> Finetuned:
    """Gradual magnitude pruning of a trained ``model`` to ``sparsity``, while training on ``(x, y)``.

    The cubic schedule runs from the first step over the first ``pruning_share`` of the
    recipe's steps, pruning every ``frequency`` steps; the rest of the epochs fine-tune at
    the final sparsity. ``fit_options``: ``validation`` and ``progress`` of :func:`run_recipe`.
    """
    pruning_steps = max(1, int(pruning_share * recipe.steps(len(x))) // frequency)
    trainer = GradualPruningTrainer(model, sparsity=sparsity, scope=scope, pruning_steps=pruning_steps,
                                    frequency=frequency, **recipe.trainer_options())
    return run_recipe(trainer, x, y, recipe, **fit_options)


def prune_once_and_finetune(model: Any, x: np.ndarray, y: np.ndarray, *, sparsity: float = 0.9,
                            scope: str = "layer", recipe: Recipe = Recipe(), **fit_options) -> Finetuned:
    """The baseline: magnitude-prune ``model`` to ``sparsity`` in one shot, then fine-tune with the masks held."""
    _check_sparsity(sparsity)
    report = prune(model, method="magnitude", ratio=sparsity, scope=scope)
    trainer = MaskedTrainer(report.model, **recipe.trainer_options())
    trainer.set_masks({name: trainer.parameters[name] != 0 for name in report.sparsity})
    return run_recipe(trainer, x, y, recipe, report=report, **fit_options)


def prune_channels_and_finetune(model: Any, x: np.ndarray, y: np.ndarray, *, method: str = "l1-channel",
                                ratio: float = 0.5, recipe: Recipe = Recipe(), **fit_options) -> Finetuned:
    """Remove the ``ratio`` share of channels (``l1-channel`` or ``bn-scale``) and train the shrunk model."""
    if method not in ("l1-channel", "bn-scale"):
        raise PruneError(f"channel pruning method must be 'l1-channel' or 'bn-scale', got {method!r}")
    report = prune(model, method=method, ratio=ratio)
    return run_recipe(Trainer(report.model, **recipe.trainer_options()), x, y, recipe, report=report, **fit_options)


def train_slimming(model: Any, x: np.ndarray, y: np.ndarray, *, penalty: float = 1e-3, recipe: Recipe = Recipe(),
                   **fit_options) -> Finetuned:
    """Train ``model`` with network slimming's L1 penalty on the BatchNorm scales (see :class:`SlimmingTrainer`).

    Liu et al. use 1e-4 over 160 epochs of CIFAR; a run of ten short digits epochs needs a
    stronger push, hence the default 1e-3.
    """
    return run_recipe(SlimmingTrainer(model, penalty=penalty, **recipe.trainer_options()), x, y, recipe, **fit_options)


# ============================================================================ checks
def _check_sparsity(sparsity: float) -> None:
    if not isinstance(sparsity, (int, float)) or not 0.0 < float(sparsity) < 1.0:
        raise PruneError(f"sparsity must be a number in (0, 1) (the share of weights removed), got {sparsity!r}")


def _check_scope(scope: str) -> None:
    if scope not in SCOPES:
        raise PruneError(f"scope must be 'layer' or 'global', got {scope!r}")
