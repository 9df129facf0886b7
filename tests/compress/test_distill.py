"""Knowledge distillation: the loss against its definition and a numerical gradient, a short
run that repeats bit for bit, the study's bookkeeping, and bad settings."""

from __future__ import annotations

import numpy as np
import pytest

from tinyinfer.compress import digits_split
from tinyinfer.compress.distill import DistillationTrainer, distillation_loss, distillation_study
from tinyinfer.compress.finetune import Recipe
from tinyinfer.errors import TinyInferError
from tinyinfer.models.digits import digits_cnn


@pytest.fixture(autouse=True)
def private_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("TINYINFER_CACHE_DIR", str(tmp_path))


def logits_batch(seed: int = 0, n: int = 5, classes: int = 4):
    rng = np.random.default_rng(seed)
    return (3 * rng.standard_normal((n, classes)), 3 * rng.standard_normal((n, classes)),
            rng.integers(0, classes, n))


def naive_loss(student, teacher, labels, temperature, alpha):
    """The formula written out with explicit softmaxes, row by row."""
    total = 0.0
    for z_s, z_t, label in zip(student, teacher, labels):
        p = np.exp(z_s / temperature) / np.exp(z_s / temperature).sum()
        q = np.exp(z_t / temperature) / np.exp(z_t / temperature).sum()
        hard = -np.log(np.exp(z_s[label]) / np.exp(z_s).sum())
        total += alpha * temperature ** 2 * np.sum(q * np.log(q / p)) + (1 - alpha) * hard
    return total / len(student)


@pytest.mark.parametrize("temperature, alpha", [(1.0, 0.5), (4.0, 0.9), (2.5, 0.0), (8.0, 1.0)])
def test_loss_matches_its_formula_and_a_numerical_gradient(temperature, alpha):
    """Value to 1e-12 against the written-out formula; gradient against central differences
    (h = 1e-6 in float64: truncation and rounding both ~1e-10, so rtol 1e-6, atol 1e-9)."""
    student, teacher, labels = logits_batch()
    loss, grad = distillation_loss(student, (labels, teacher), temperature=temperature, alpha=alpha)
    assert loss == pytest.approx(naive_loss(student, teacher, labels, temperature, alpha), rel=1e-12)
    numerical = np.zeros_like(student)
    step = 1e-6
    for position in np.ndindex(*student.shape):
        plus, minus = student.copy(), student.copy()
        plus[position] += step
        minus[position] -= step
        numerical[position] = (distillation_loss(plus, (labels, teacher), temperature=temperature, alpha=alpha)[0]
                               - distillation_loss(minus, (labels, teacher), temperature=temperature,
                                                   alpha=alpha)[0]) / (2 * step)
    np.testing.assert_allclose(grad, numerical, rtol=1e-6, atol=1e-9)


def test_a_student_equal_to_its_teacher_has_no_soft_loss():
    student, _, labels = logits_batch(1)
    loss, grad = distillation_loss(student, (labels, student.copy()), temperature=3.0, alpha=1.0)
    assert loss == pytest.approx(0.0, abs=1e-12)
    np.testing.assert_allclose(grad, 0.0, atol=1e-15)


@pytest.fixture(scope="module")
def small_split():
    split = digits_split()
    return type(split)(split.x_train[:256], split.y_train[:256], split.x_test[:128], split.y_test[:128])


def test_a_short_distillation_run_is_deterministic(small_split):
    """Same seed: the same batches, shifts and teacher logits, hence bit-identical weights."""
    teacher = digits_cnn(seed=7, width=4)

    def run():
        trainer = DistillationTrainer(digits_cnn(seed=1, width=2), teacher, temperature=4.0, alpha=0.7, seed=3,
                                      lr=0.05)
        trainer.fit(small_split.x_train, small_split.y_train, epochs=1, batch_size=32, augment=True, progress=False)
        return trainer.parameters

    first, second = run(), run()
    for name in first:
        np.testing.assert_array_equal(first[name], second[name], err_msg=name)
    assert any(not np.array_equal(first[n], p) for n, p in DistillationTrainer(
        digits_cnn(seed=1, width=2), teacher).parameters.items())


def test_the_trainer_feeds_the_teachers_logits_on_the_batch_it_trains_on(small_split):
    """With alpha = 1 the step's loss is T^2 KL against the teacher's logits on those very images."""
    teacher = digits_cnn(seed=7, width=4)
    trainer = DistillationTrainer(digits_cnn(seed=1, width=2), teacher, temperature=2.0, alpha=1.0)
    x, y = small_split.x_train[:32], small_split.y_train[:32]
    expected = distillation_loss(trainer.forward(x, training=True)[0], (y, trainer.teacher_logits(x)),
                                 temperature=2.0, alpha=1.0)[0]
    assert trainer.train_step(x, y) == pytest.approx(expected, rel=1e-6)


def test_study_trains_alone_and_distilled_for_every_seed(small_split):
    study = distillation_study(digits_cnn(seed=7, width=4), lambda seed: digits_cnn(seed, width=2), small_split,
                               seeds=(0, 1), recipe=Recipe(epochs=1, lr=0.05))
    assert len(study.alone) == len(study.distilled) == 2
    assert all(0.0 <= a <= 1.0 for a in study.alone + study.distilled)
    assert study.alone != study.distilled
    assert "mean ± std" in study.table() and study.seconds["distilled"] > 0


def test_bad_distillation_settings_are_refused():
    student, teacher, labels = logits_batch()
    with pytest.raises(TinyInferError, match=r"alpha must lie in \[0, 1\], got 1.5"):
        distillation_loss(student, (labels, teacher), alpha=1.5)
    with pytest.raises(TinyInferError, match="temperature must be positive, got 0"):
        distillation_loss(student, (labels, teacher), temperature=0)
