"""Pruning with training: the cubic schedule, masks that hold, global vs layer thresholds,
channel pruning + fine-tuning exported to ONNX Runtime, network slimming's penalty, errors."""

from __future__ import annotations

import numpy as np
import onnxruntime
import pytest

from tinyinfer.compress import Trainer, digits_split
from tinyinfer.compress.finetune import (GradualPruningTrainer, MaskedTrainer, Recipe, SlimmingTrainer, cubic_sparsity,
                                         prune_channels_and_finetune, prune_gradually, prune_once_and_finetune,
                                         train_slimming)
from tinyinfer.compress.prune import PruneError
from tinyinfer.errors import UnsupportedOpError
from tinyinfer.models import NetworkBuilder
from tinyinfer.models.digits import digits_cnn

#: Tiny runs: a width-2 or width-4 digits CNN, a few hundred images, one or two epochs.
QUICK = Recipe(epochs=1, lr=0.05, batch_size=32)


@pytest.fixture(autouse=True)
def private_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("TINYINFER_CACHE_DIR", str(tmp_path))


@pytest.fixture(scope="module")
def digits():
    split = digits_split()
    return split.x_train[:320], split.y_train[:320], split.x_test, split.y_test


def weight_names(trainer) -> list[str]:
    return [name for name, p in trainer.parameters.items() if p.ndim >= 2]


# ---------------------------------------------------------------------------- the schedule
@pytest.mark.parametrize("step, expected", [
    (0, 0.0), (9, 0.0),                 # dense before t0
    (10, 0.0), (14, 0.0),               # s_i at t0, held until the next pruning step
    (15, 0.9 - 0.9 * 0.75 ** 3),        # (1 - 1/4)^3 = 0.421875 -> 0.5203125
    (20, 0.9 - 0.9 * 0.5 ** 3),         # 0.7875
    (29, 0.9 - 0.9 * 0.25 ** 3),        # 0.8859375, held from step 25
    (30, 0.9), (1000, 0.9),             # s_f from t0 + n dt on
])
def test_cubic_schedule_at_known_steps(step, expected):
    """Zhu & Gupta's s_t with s_i = 0, s_f = 0.9, t0 = 10, n = 4, dt = 5, computed by hand."""
    assert cubic_sparsity(step, 0.9, begin=10, pruning_steps=4, frequency=5) == pytest.approx(expected, abs=1e-12)


def test_cubic_schedule_starts_at_the_initial_sparsity_and_never_decreases():
    values = [cubic_sparsity(t, 0.8, initial=0.2, pruning_steps=7, frequency=3) for t in range(40)]
    assert values[0] == pytest.approx(0.2) and values[-1] == pytest.approx(0.8)
    assert all(b >= a for a, b in zip(values, values[1:]))


# ---------------------------------------------------------------------------- masks
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_masked_weights_stay_exactly_zero_through_training(optimizer, digits):
    """Momentum, Adam's moments and weight decay all act on every weight; the masked ones must
    still be exactly 0 after each step, and the others must move."""
    x, y, _, _ = digits
    trainer = MaskedTrainer(digits_cnn(seed=1, width=2), optimizer=optimizer, lr=0.05, weight_decay=1e-3)
    rng = np.random.default_rng(0)
    masks = {name: rng.random(trainer.parameters[name].shape) > 0.7 for name in weight_names(trainer)}
    start = {name: trainer.parameters[name].copy() for name in masks}
    # Momentum gathered before the masks are set must not revive a masked weight either.
    trainer.optimizer.step(trainer.parameters, trainer.gradients(x[:32], y[:32])[1])
    trainer.set_masks(masks)
    for step in range(4):
        _, grads = trainer.gradients(x[:32], y[:32])
        trainer.train_step(x[32 * step:32 * step + 32], y[32 * step:32 * step + 32])
        for name, mask in masks.items():
            assert np.all(trainer.parameters[name][~mask] == 0), name
            assert np.all(grads[name][~mask] == 0), name
    for name, mask in masks.items():
        assert not np.allclose(trainer.parameters[name][mask], start[name][mask]), name
    assert trainer.sparsity() == pytest.approx({name: 1 - m.mean() for name, m in masks.items()}, abs=1e-12)


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_gradual_pruning_follows_the_schedule_and_never_revives_a_weight(scope, digits):
    x, y, _, _ = digits
    trainer = GradualPruningTrainer(digits_cnn(seed=2, width=2), sparsity=0.75, scope=scope, pruning_steps=3,
                                    frequency=2, lr=0.05)
    names = weight_names(trainer)
    pruned_before = {name: np.zeros(trainer.parameters[name].shape, bool) for name in names}
    for step in range(8):
        trainer.train_step(x[16 * step:16 * step + 16], y[16 * step:16 * step + 16])
        total = sum(trainer.parameters[n].size for n in names)
        zeros = {name: trainer.parameters[name] == 0 for name in names}
        expected = cubic_sparsity(step, 0.75, pruning_steps=3, frequency=2)
        # round(ratio * n) weights go, per layer or over all layers: within one weight per layer of the target.
        assert sum(z.sum() for z in zeros.values()) == pytest.approx(expected * total, abs=len(names))
        for name in names:
            assert np.all(zeros[name][pruned_before[name]]), f"{name} revived a pruned weight at step {step}"
        pruned_before = zeros
    assert trainer.step_count == 8


def test_global_masks_use_one_threshold_and_layer_masks_one_each(digits):
    """After pruning, global: every kept |w| in the model is >= every pruned |w| (before the
    step), so layers end with different sparsities; layer: each weight has the target sparsity."""
    x, y, _, _ = digits
    model = digits_cnn(seed=3, width=4)
    for scope in ("global", "layer"):
        trainer = GradualPruningTrainer(model, sparsity=0.6, scope=scope, pruning_steps=1, frequency=1,
                                        initial_sparsity=0.6, lr=0.0)
        names = weight_names(trainer)
        before = {name: np.abs(trainer.parameters[name]).copy() for name in names}
        trainer.train_step(x[:16], y[:16])
        kept = {name: trainer.masks[name] for name in names}
        shares = [1 - kept[name].mean() for name in names]
        if scope == "global":
            smallest_kept = min(before[name][kept[name]].min() for name in names)
            largest_pruned = max(before[name][~kept[name]].max() for name in names if (~kept[name]).any())
            assert smallest_kept >= largest_pruned
            assert max(shares) - min(shares) > 0.1
            assert sum((~kept[n]).sum() for n in names) == round(0.6 * sum(before[n].size for n in names))
        else:
            for name in names:
                assert (~kept[name]).sum() == round(0.6 * before[name].size), name
                assert before[name][kept[name]].min() >= before[name][~kept[name]].max(), name


def test_one_shot_and_gradual_end_at_the_target_sparsity(digits):
    x, y, _, _ = digits
    model = digits_cnn(seed=4, width=4)
    once = prune_once_and_finetune(model, x, y, sparsity=0.8, scope="global", recipe=QUICK)
    gradual = prune_gradually(model, x, y, sparsity=0.8, scope="layer", recipe=QUICK, frequency=2)
    assert once.sparsity == pytest.approx(0.8, abs=1e-3)
    assert gradual.sparsity == pytest.approx(0.8, abs=1e-3)
    assert once.report.method == "magnitude" and len(once.history) == QUICK.epochs


# ---------------------------------------------------------------------------- channels
@pytest.mark.parametrize("method", ["l1-channel", "bn-scale"])
def test_shrunk_and_finetuned_model_runs_in_onnxruntime_with_the_trainers_accuracy(method, digits):
    """The exported model's logits equal the trainer's inference forward to float32 rounding
    (atol 1e-4 on logits of size ~10, summed over a few hundred products); hence the same
    accuracy, which the test checks exactly."""
    x, y, x_test, y_test = digits
    model = digits_cnn(seed=5, width=4)
    if method == "bn-scale":
        model = train_slimming(model, x, y, penalty=1e-3, recipe=QUICK).model
    result = prune_channels_and_finetune(model, x, y, method=method, ratio=0.5, recipe=QUICK)
    assert result.report.macs_after * 1.6 <= result.report.macs_before
    session = onnxruntime.InferenceSession(result.model.SerializeToString(), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"input": x_test})[0]
    np.testing.assert_allclose(logits, result.trainer.predict(x_test), atol=1e-4, rtol=1e-4)
    assert np.mean(logits.argmax(axis=1) == y_test) == result.trainer.evaluate(x_test, y_test)


def test_slimming_adds_the_l1_subgradient_to_the_batchnorm_scales(digits):
    """In float64 the penalized gradient is the plain one plus penalty * sign(gamma), exactly
    on the scales (to 1e-15) and unchanged elsewhere."""
    x, y, _, _ = digits
    model = digits_cnn(seed=6, width=2)
    plain = Trainer(model, dtype=np.float64).gradients(x[:16], y[:16])[1]
    slimming = SlimmingTrainer(model, penalty=0.01, dtype=np.float64)
    penalized = slimming.gradients(x[:16], y[:16])[1]
    assert sorted(slimming.scales) == ["conv1.bn.weight", "conv2.bn.weight", "conv3.bn.weight"]
    for name, grad in plain.items():
        extra = 0.01 * np.sign(slimming.parameters[name]) if name in slimming.scales else 0.0
        np.testing.assert_allclose(penalized[name], grad + extra, rtol=0, atol=1e-15, err_msg=name)


# ---------------------------------------------------------------------------- errors
@pytest.mark.parametrize("sparsity", [0, 1, 1.5, -0.2, "half"])
def test_sparsity_outside_zero_one_is_refused(sparsity, digits):
    x, y, _, _ = digits
    with pytest.raises(PruneError, match=r"sparsity must be a number in \(0, 1\)"):
        prune_gradually(digits_cnn(width=2), x, y, sparsity=sparsity, recipe=QUICK)
    with pytest.raises(PruneError, match=r"sparsity must be a number in \(0, 1\)"):
        prune_once_and_finetune(digits_cnn(width=2), x, y, sparsity=sparsity, recipe=QUICK)


@pytest.mark.parametrize("ratio", [0.0, 1.0, 2])
def test_channel_ratio_outside_zero_one_is_refused(ratio, digits):
    x, y, _, _ = digits
    with pytest.raises(PruneError, match=r"ratio must be a number in \(0, 1\)"):
        prune_channels_and_finetune(digits_cnn(width=2), x, y, ratio=ratio, recipe=QUICK)


def test_bad_scope_method_and_masks_are_refused(digits):
    x, y, _, _ = digits
    with pytest.raises(PruneError, match="scope must be 'layer' or 'global', got 'row'"):
        prune_gradually(digits_cnn(width=2), x, y, scope="row", recipe=QUICK)
    with pytest.raises(PruneError, match="'l1-channel' or 'bn-scale', got 'magnitude'"):
        prune_channels_and_finetune(digits_cnn(width=2), x, y, method="magnitude", recipe=QUICK)
    trainer = MaskedTrainer(digits_cnn(width=2))
    with pytest.raises(PruneError, match="'nope', which is not a parameter"):
        trainer.set_masks({"nope": np.ones(3, bool)})
    with pytest.raises(PruneError, match=r"mask of 'conv1.weight' has shape \(3,\); expected .*\(2, 1, 3, 3\)"):
        trainer.set_masks({"conv1.weight": np.ones(3, bool)})


def test_slimming_without_batchnorm_is_refused():
    b = NetworkBuilder("mlp")
    model = b.build(b.gemm(b.input("x", ("N", 4)), 3, name="fc"), calibrate=False)
    with pytest.raises(PruneError, match="no BatchNormalization"):
        SlimmingTrainer(model)


def test_training_an_op_without_a_backward_rule_names_it(digits):
    x, y, _, _ = digits
    b = NetworkBuilder("with_softmax")
    inp = b.input("x", ("N", 1, 8, 8))
    logits = b.gemm(b.flatten(b.conv(inp, 2, 3, name="c")), 10, name="fc")
    model = b.build(b.node("Softmax", [logits], ("N", 10), name="probabilities", axis=-1), calibrate=False)
    with pytest.raises(UnsupportedOpError, match="Softmax 'probabilities'.*no backward rule"):
        prune_gradually(model, x, y, recipe=QUICK)
