"""Knowledge distillation: a small network learns from the soft answers of a big one.

A trained network's output says more than its top class: that a "7" looks a little like a
"1" and not at all like a "6". Hinton, Vinyals & Dean (2015, "Distilling the Knowledge in a
Neural Network") train a small *student* on these relative probabilities of the *teacher*,
softened by a temperature T (``softmax(z / T)``; T > 1 lifts the small probabilities), mixed
with the usual loss on the true labels::

    L = alpha * T^2 * KL(softmax(z_t / T) || softmax(z_s / T)) + (1 - alpha) * CE(y, z_s)

The ``T^2`` keeps the soft term's gradient, which shrinks as ``1 / T^2``, as large as the
hard term's when T changes; :func:`~tinyinfer.compress.backward.kl_divergence` already
includes it.

:class:`DistillationTrainer` runs the teacher (any model, through
:class:`tinyinfer.InferenceSession`) on each training batch, after augmentation, so the
student matches the teacher on exactly the images it sees. :func:`distillation_study` trains
the same student alone and distilled over several seeds, the comparison the paper makes. On
the digits, a width-4 student (4,158 parameters, 1/27 of the teacher's) reaches 97.8 ± 0.3 %
alone and 98.6 ± 0.8 % distilled (T = 4, alpha = 0.9, three seeds)::

    study = distillation_study(trained_digits_cnn(), lambda seed: digits_cnn(seed, width=4), digits_split())
    print(study.table())
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import TinyInferError
from ..runtime import InferenceSession
from .backward import kl_divergence, softmax_cross_entropy
from .data import DigitsSplit
from .finetune import Recipe, run_recipe
from .train import Trainer


def distillation_loss(logits: np.ndarray, targets: tuple[np.ndarray, np.ndarray], *, temperature: float = 4.0,
                      alpha: float = 0.9) -> tuple[float, np.ndarray]:
    """Hinton et al.'s loss on a batch and its gradient with respect to the student's ``logits``.

    ``targets`` is ``(labels, teacher_logits)``; ``alpha`` weighs the soft term (T^2 KL at
    ``temperature``) against the cross-entropy on the labels.
    """
    if not 0.0 <= alpha <= 1.0:
        raise TinyInferError(f"the distillation weight alpha must lie in [0, 1], got {alpha}")
    labels, teacher_logits = targets
    soft, d_soft = kl_divergence(logits, teacher_logits, temperature)
    hard, d_hard = softmax_cross_entropy(logits, labels)
    return alpha * soft + (1 - alpha) * hard, alpha * d_soft + (1 - alpha) * d_hard


class DistillationTrainer(Trainer):
    """Trains ``student`` with :func:`distillation_loss` against ``teacher``'s logits.

    ``teacher`` is anything :class:`tinyinfer.InferenceSession` runs, with the student's
    input and as many classes. ``targets`` of :meth:`train_step` are the labels; those of
    :meth:`gradients` are ``(labels, teacher_logits)``. Other options are :class:`Trainer`'s.
    """

    def __init__(self, student: Any, teacher: Any, *, temperature: float = 4.0, alpha: float = 0.9,
                 teacher_backend: str = "numba", **options):
        loss = functools.partial(distillation_loss, temperature=temperature, alpha=alpha)
        super().__init__(student, loss=loss, **options)
        self.teacher = InferenceSession(teacher, backend=teacher_backend)
        self.teacher_input = self.teacher.get_inputs()[0].name

    def teacher_logits(self, x: np.ndarray) -> np.ndarray:
        return self.teacher.run(None, {self.teacher_input: np.asarray(x, np.float32)})[0].astype(self.dtype)

    def train_step(self, x: np.ndarray, labels: np.ndarray) -> float:
        return super().train_step(x, (labels, self.teacher_logits(x)))


@dataclasses.dataclass
class DistillationStudy:
    """Test accuracies of the student trained alone and distilled, one per seed."""

    seeds: list[int]
    alone: list[float]
    distilled: list[float]
    seconds: dict[str, float]

    def table(self) -> str:
        rows = [f"{'student':<10} " + " ".join(f"seed {s:<3}" for s in self.seeds) + "   mean ± std"]
        for name, accuracies in (("alone", self.alone), ("distilled", self.distilled)):
            cells = " ".join(f"{100 * a:8.2f}" for a in accuracies)
            rows.append(f"{name:<10} {cells}   {100 * np.mean(accuracies):.2f} ± {100 * np.std(accuracies):.2f}")
        return "\n".join(rows)


def distillation_study(teacher: Any, make_student: Callable[[int], Any], split: DigitsSplit, *,
                       seeds: Sequence[int] = (0, 1, 2), recipe: Recipe = Recipe(epochs=10, lr=0.05),
                       temperature: float = 4.0, alpha: float = 0.9, progress: bool = False) -> DistillationStudy:
    """For each seed, train ``make_student(seed)`` on ``split`` alone and with ``teacher``
    (the same initial weights, batches and recipe), and measure both on the test images."""
    study = DistillationStudy(list(seeds), [], [], {"alone": 0.0, "distilled": 0.0})
    for seed in seeds:
        seeded = dataclasses.replace(recipe, seed=seed)
        options = seeded.trainer_options()
        for name, trainer in (("alone", Trainer(make_student(seed), **options)),
                              ("distilled", DistillationTrainer(make_student(seed), teacher, temperature=temperature,
                                                                alpha=alpha, **options))):
            result = run_recipe(trainer, split.x_train, split.y_train, seeded, progress=progress)
            getattr(study, name).append(trainer.evaluate(split.x_test, split.y_test))
            study.seconds[name] += result.seconds
    return study
