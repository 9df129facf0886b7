"""Pre-inference kernel selection: timing, verification against the reference, the cache."""

from __future__ import annotations

import time

import numpy as np
import pytest
from onnx import TensorProto, helper

import tinyinfer as ti
from tinyinfer.runtime import select
from tinyinfer.errors import TinyInferError
from tinyinfer.kernels import registry


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """A private kernel registry and cache directory for each test."""
    monkeypatch.setattr(registry, "KERNELS", {})
    monkeypatch.setenv("TINYINFER_CACHE_DIR", str(tmp_path))


def _relu_model():
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="relu")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 64])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _register(name, fn, cost=None):
    registry.register_kernel("Relu", name, supports=lambda node, inputs: inputs[0].dtype == np.float32, cost=cost)(
        lambda node, inputs, outputs: fn
    )


def _slow_relu(node, x):
    time.sleep(0.002)
    return np.maximum(x, 0)


def _fast_relu(node, x):
    return np.maximum(x, 0)



def _wrong_relu(node, x):
    return np.abs(x)


def test_fastest_correct_kernel_is_chosen_and_shown_in_the_profile():
    _register("slow", _slow_relu)
    _register("fast", _fast_relu)
    sess = ti.InferenceSession(_relu_model(), backend="numba")
    x = np.linspace(-1, 1, 128, dtype=np.float32).reshape(2, 64)
    np.testing.assert_array_equal(sess.run(None, {"x": x})[0], np.maximum(x, 0))
    decision = sess.selector.log[0]
    # "fast" and the reference do the same work; either may win, the sleeping one never does.
    # The reference wins only by a margin (REFERENCE_MARGIN); otherwise the fastest wins.
    ms = decision["ms"]
    assert decision["chosen"] in ("fast", "reference")
    if decision["chosen"] == "reference":
        assert ms["reference"] * select.REFERENCE_MARGIN < ms["fast"]
    else:
        assert ms["fast"] <= ms["slow"]
    # a winner under ONE_THREAD_BELOW_MS is also timed on the calling thread alone ("fast@1")
    assert {"reference", "slow", "fast"} <= set(decision["ms"]) <= {"reference", "slow", "fast", "fast@1"}
    assert [r.kernel for r in sess.profile().records] == [decision["chosen"]]


def test_a_choice_to_run_on_one_thread_is_cached_and_kept():
    import json

    import numba

    seen = []

    def probe(node, x):
        seen.append(numba.get_num_threads())
        return np.maximum(x, 0)

    _register("probe", probe)
    x = np.ones((2, 64), np.float32)
    cold = ti.InferenceSession(_relu_model(), backend="numba", threads=2)
    cold.run(None, {"x": x})
    path = select.cache_dir() / "kernel_choices.json"
    choices = {key: "probe" + select.ONE_THREAD for key in json.loads(path.read_text())}
    path.write_text(json.dumps(choices))
    warm = ti.InferenceSession(_relu_model(), backend="numba", threads=2)
    seen.clear()
    warm.run(None, {"x": x})
    assert seen == [1] and warm.profile().records[0].kernel == "probe"
    assert numba.get_num_threads() == min(2, numba.config.NUMBA_NUM_THREADS)  # restored after the call


def test_a_kernel_disturbed_in_its_first_rounds_gets_a_rematch_against_the_reference(monkeypatch):
    """The kernel's first calls stall (as when a thread of a parallel kernel is preempted) for
    over 4x the reference's time, which puts it out of the first timing; the rematch sees it
    as it is, far faster than the (here deliberately slow) reference."""
    from tinyinfer.ops import OPS

    def slow_reference(node, x):
        time.sleep(0.005)
        return np.maximum(x, 0)

    calls = []

    def stalled_then_fast(node, x):
        calls.append(1)
        if len(calls) <= 3:  # the check against the reference, then two timed rounds
            time.sleep(0.05)
        return np.maximum(x, 0)

    monkeypatch.setattr(OPS[("", "Relu")], "reference", slow_reference)
    _register("stalled", stalled_then_fast)
    sess = ti.InferenceSession(_relu_model(), backend="numba", threads=1)
    x = np.linspace(-1, 1, 128, dtype=np.float32).reshape(2, 64)
    np.testing.assert_array_equal(sess.run(None, {"x": x})[0], np.maximum(x, 0))
    assert sess.selector.log[0]["chosen"] == "stalled"


def test_a_kernel_that_disagrees_with_the_reference_is_never_chosen():
    _register("wrong", _wrong_relu)
    sess = ti.InferenceSession(_relu_model(), backend="numba")
    x = -np.ones((1, 64), np.float32)
    with pytest.warns(UserWarning, match="wrong disagrees"):
        y = sess.run(None, {"x": x})[0]
    np.testing.assert_array_equal(y, 0)
    assert sess.profile().records[0].kernel == "reference"


def test_choice_is_cached_for_the_next_session(tmp_path):
    _register("fast", _fast_relu)
    x = np.ones((3, 64), np.float32)
    cold = ti.InferenceSession(_relu_model(), backend="numba")
    cold.run(None, {"x": x})
    chosen = cold.selector.log[0]["chosen"]  # "fast" or "reference": both are as quick here
    assert (tmp_path / "kernel_choices.json").is_file()
    warm = ti.InferenceSession(_relu_model(), backend="numba")
    warm.run(None, {"x": x})
    assert warm.selector.log == []  # no timing: the cached choice was used
    assert warm.profile().records[0].kernel == chosen


def test_cost_mode_picks_by_hint_without_timing():
    _register("cheap", _slow_relu, cost=lambda node, inputs: 1.0)
    _register("pricey", _fast_relu, cost=lambda node, inputs: 5.0)
    sess = ti.InferenceSession(_relu_model(), backend="numba", select="cost")
    sess.run(None, {"x": np.ones((1, 64), np.float32)})
    assert sess.profile().records[0].kernel == "cheap"


def test_nodes_without_kernels_run_their_reference_and_bad_options_are_errors():
    sess = ti.InferenceSession(_relu_model(), backend="numba")
    sess.run(None, {"x": np.ones((1, 64), np.float32)})
    assert sess.profile().records[0].kernel == "reference"
    with pytest.raises(TinyInferError, match="unknown backend"):
        ti.InferenceSession(_relu_model(), backend="cuda")
    with pytest.raises(TinyInferError, match="selection mode"):
        ti.InferenceSession(_relu_model(), backend="numba", select="guess")
