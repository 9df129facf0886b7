"""The trainer: gradients through a whole graph, optimizer steps, export, errors, determinism."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper

from tinyinfer import InferenceSession
from tinyinfer.compress import SGD, Adam, Trainer, kl_divergence
from tinyinfer.errors import TinyInferError, UnsupportedOpError
from tinyinfer.models import NetworkBuilder


@pytest.fixture(autouse=True)
def private_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("TINYINFER_CACHE_DIR", str(tmp_path))


def small_cnn(seed: int = 0) -> onnx.ModelProto:
    """Conv+BN+Relu, a second conv added back to its input (a tensor read twice), pool, Gemm."""
    b = NetworkBuilder("small_cnn", seed=seed)
    x = b.input("x", ("N", 2, 6, 6))
    y = b.conv_bn_act(x, 4, 3, name="c1")
    y = b.add(y, b.conv(y, 4, 3, bias=True, name="c2"), name="residual")
    y = b.max_pool(y, 2, 2, name="pool")
    return b.build(b.gemm(b.flatten(y), 3, name="fc"), calibrate=False)


def batch(seed: int = 0, n: int = 8):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 2, 6, 6)).astype(np.float32), rng.integers(0, 3, n)


def test_parameters_and_state_are_found():
    trainer = Trainer(small_cnn())
    assert sorted(trainer.parameters) == sorted(
        ["c1.weight", "c1.bn.weight", "c1.bn.bias", "c2.weight", "c2.bias", "fc.weight", "fc.bias"])
    assert sorted(trainer.state) == ["c1.bn.running_mean", "c1.bn.running_var"]


def test_whole_graph_gradients_match_numerical_in_float64():
    """Every parameter's gradient through conv, BN (training), a fan-out, pool and Gemm, against
    central differences (h = 1e-6; agreement to rtol 1e-5, atol 1e-7, see test_backward.py)."""
    trainer = Trainer(small_cnn(), dtype=np.float64)
    x, y = batch()
    _, grads = trainer.gradients(x, y)
    step = 1e-6
    for name, p in trainer.parameters.items():
        numerical = np.zeros_like(p)
        for position in np.ndindex(*p.shape):
            original = p[position]
            p[position] = original + step
            plus = trainer.loss(trainer.forward(x, training=True)[0], y)[0]
            p[position] = original - step
            minus = trainer.loss(trainer.forward(x, training=True)[0], y)[0]
            p[position] = original
            numerical[position] = (plus - minus) / (2 * step)
        np.testing.assert_allclose(grads[name], numerical, rtol=1e-5, atol=1e-7, err_msg=name)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_a_few_steps_reduce_the_loss(optimizer):
    trainer = Trainer(small_cnn(), optimizer=optimizer, lr=0.05 if optimizer == "sgd" else 0.01)
    x, y = batch(n=16)
    losses = [trainer.train_step(x, y) for _ in range(15)]
    assert losses[-1] < 0.5 * losses[0]
    assert trainer.step_count == 15


def test_running_statistics_follow_the_onnx_momentum_rule():
    trainer = Trainer(small_cnn())
    x, _ = batch()
    before = trainer.state["c1.bn.running_mean"].copy()
    trainer.train_step(x, np.zeros(len(x), np.int64))
    # The batch mean of the first conv's output, computed independently with ONNX Runtime.
    first_conv = _first_conv(small_cnn()).SerializeToString()
    session = onnxruntime.InferenceSession(first_conv, providers=["CPUExecutionProvider"])
    conv = session.run(None, {"x": x})[0]
    expected = before * 0.9 + conv.mean(axis=(0, 2, 3)) * 0.1
    np.testing.assert_allclose(trainer.state["c1.bn.running_mean"], expected, rtol=1e-5, atol=1e-6)


def _first_conv(model: onnx.ModelProto) -> onnx.ModelProto:
    conv = model.graph.node[0]
    weights = [t for t in model.graph.initializer if t.name in conv.input]
    graph = helper.make_graph([conv], "conv", list(model.graph.input),
                              [helper.make_tensor_value_info(conv.output[0], TensorProto.FLOAT, None)], weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_sgd_step_matches_a_hand_written_step():
    rng = np.random.default_rng(0)
    w, b = rng.standard_normal((3, 2)), rng.standard_normal(3)
    g1 = {"w": rng.standard_normal((3, 2)), "b": rng.standard_normal(3)}
    g2 = {"w": rng.standard_normal((3, 2)), "b": rng.standard_normal(3)}
    params = {"w": w.copy(), "b": b.copy()}
    sgd = SGD(lr=0.1, momentum=0.8, weight_decay=0.01)
    sgd.step(params, g1)
    sgd.step(params, g2)
    # By hand: v1 = g1 (+ decay), p1 = p0 - lr v1; v2 = 0.8 v1 + g2 (+ decay at p1), p2 = p1 - lr v2.
    v1_w = g1["w"] + 0.01 * w
    w1 = w - 0.1 * v1_w
    w2 = w1 - 0.1 * (0.8 * v1_w + g2["w"] + 0.01 * w1)
    b2 = b - 0.1 * g1["b"] - 0.1 * (0.8 * g1["b"] + g2["b"])  # biases are not decayed
    np.testing.assert_allclose(params["w"], w2, rtol=1e-12)
    np.testing.assert_allclose(params["b"], b2, rtol=1e-12)


def test_adam_step_matches_a_hand_written_step():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((2, 2))
    grads = [rng.standard_normal((2, 2)) for _ in range(3)]
    params = {"w": w.copy()}
    adam = Adam(lr=0.01, betas=(0.9, 0.99), eps=1e-8)
    expected, m, v = w.copy(), 0.0, 0.0
    for t, g in enumerate(grads, start=1):
        adam.step(params, {"w": g})
        m = 0.9 * m + 0.1 * g
        v = 0.99 * v + 0.01 * g**2
        expected = expected - 0.01 * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.99**t)) + 1e-8)
    np.testing.assert_allclose(params["w"], expected, rtol=1e-12)
    # The first step of Adam moves every weight by lr (times the gradient's sign).
    fresh = {"w": w.copy()}
    Adam(lr=0.01).step(fresh, {"w": grads[0]})
    np.testing.assert_allclose(w - fresh["w"], 0.01 * np.sign(grads[0]), rtol=1e-6)


def test_exported_model_matches_the_trainer_in_onnxruntime_and_tinyinfer():
    """After training, ONNX Runtime and tinyinfer run the exported file to the trainer's eval
    forward within float32 rounding (rtol 1e-4, atol 1e-5: two different summation orders)."""
    trainer = Trainer(small_cnn(), optimizer="adam", lr=0.01)
    x, y = batch(n=16)
    for _ in range(5):
        trainer.train_step(x, y)
    model = trainer.to_onnx()
    onnx.checker.check_model(model)
    expected = trainer.predict(x)
    ort = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(ort.run(None, {"x": x})[0], expected, rtol=1e-4, atol=1e-5)
    for backend in ("reference", "numba"):
        got = InferenceSession(model, backend=backend).run(None, {"x": x})[0]
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    trained = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    np.testing.assert_array_equal(trained["c1.bn.running_var"], trainer.state["c1.bn.running_var"])
    assert not np.array_equal(trained["fc.weight"], _initializer(small_cnn(), "fc.weight"))


def _initializer(model, name):
    return next(onnx.numpy_helper.to_array(t) for t in model.graph.initializer if t.name == name)


def test_fit_is_deterministic_by_seed():
    x, y = batch(n=40)

    def trained(seed):
        trainer = Trainer(small_cnn(), seed=seed)
        history = trainer.fit(x, y, epochs=2, batch_size=16, augment=True, progress=False, validation=(x, y))
        return trainer, history

    (a, history), (b, _), (c, _) = trained(3), trained(3), trained(4)
    for name in a.parameters:
        np.testing.assert_array_equal(a.parameters[name], b.parameters[name])
    assert any(not np.array_equal(a.parameters[n], c.parameters[n]) for n in a.parameters)
    assert [row["epoch"] for row in history] == [1, 2]
    assert 0.0 <= history[-1]["accuracy"] <= 1.0
    assert a.optimizer.lr == 0.05  # the schedule restores the initial rate


def test_a_custom_loss_trains_towards_a_teacher():
    teacher = Trainer(small_cnn(seed=1)).predict(batch()[0])
    trainer = Trainer(small_cnn(), loss=lambda logits, target: kl_divergence(logits, target, 2.0))
    x, _ = batch()
    losses = [trainer.train_step(x, teacher) for _ in range(10)]
    assert losses[-1] < losses[0]


def test_an_op_without_backward_rule_is_named():
    b = NetworkBuilder("with_softmax")
    x = b.input("x", ("N", 4))
    model = b.build(b.node("Softmax", [b.gemm(x, 3)], ("N", 3), name="probabilities", axis=-1), calibrate=False)
    with pytest.raises(UnsupportedOpError, match="Softmax 'probabilities'.*no backward rule"):
        Trainer(model)


def test_bad_settings_are_refused():
    with pytest.raises(TinyInferError, match="unknown optimizer 'rmsprop'"):
        Trainer(small_cnn(), optimizer="rmsprop")
    with pytest.raises(TinyInferError, match="'nope' is not a float initializer"):
        Trainer(small_cnn(), parameters=["nope"])
    x, y = batch()
    with pytest.raises(TinyInferError, match="unknown schedule"):
        Trainer(small_cnn()).fit(x, y, epochs=1, schedule="step", progress=False)
    with pytest.raises(TinyInferError, match="epochs must be a positive integer, got 0"):
        Trainer(small_cnn()).fit(x, y, epochs=0, progress=False)
    b = NetworkBuilder("two_inputs")
    a, c = b.input("a", ("N", 3)), b.input("c", ("N", 3))
    with pytest.raises(TinyInferError, match="one data input"):
        Trainer(b.build(b.add(a, c), calibrate=False))
