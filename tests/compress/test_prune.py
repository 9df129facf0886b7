"""Pruning (tinyinfer.compress.prune): unstructured masks and channel pruning that shrinks.

Oracles: NumPy sorts for which weights or channels a criterion removes; ONNX Runtime running
the shrunk model next to the same-size masked model, whose outputs must agree (the masked
model zeroes exactly what shrinking removes, so the only difference is the order of float
sums: atol 1e-5 x the output's scale).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from tinyinfer import InferenceSession
from tinyinfer.cli import main
from tinyinfer.compress.prune import PruneError, magnitude_masks, prune
from tinyinfer.models import build

RNG = np.random.default_rng(0)


def _init(name, array):
    return numpy_helper.from_array(np.asarray(array, np.float32), name)


def _bn(name, x, y, channels, gamma=None):
    gamma = RNG.uniform(0.5, 1.5, channels) if gamma is None else gamma
    inits = [_init(f"{name}_g", gamma), _init(f"{name}_b", RNG.normal(0, 0.1, channels)),
             _init(f"{name}_m", RNG.normal(0, 0.1, channels)), _init(f"{name}_v", RNG.uniform(0.5, 2, channels))]
    return helper.make_node("BatchNormalization", [x] + [i.name for i in inits], [y], name=name), inits


def branchy_model(gamma_a=None, gamma_e=None) -> onnx.ModelProto:
    """conv A -> BN -> Relu -> depthwise -> conv B -> BN, plus conv C on A's output; B + C tied
    by a residual Add, scaled per channel, concatenated with A, then conv E -> BN -> Relu ->
    global pool -> Flatten -> Gemm (10 classes)."""
    w = {"wa": RNG.normal(0, 0.5, (8, 3, 3, 3)), "wd": RNG.normal(0, 0.5, (8, 1, 3, 3)),
         "wb": RNG.normal(0, 0.5, (8, 8, 1, 1)), "wc": RNG.normal(0, 0.5, (8, 8, 1, 1)),
         "we": RNG.normal(0, 0.5, (6, 16, 1, 1)), "k": RNG.uniform(0.5, 2, (1, 8, 1, 1)),
         "wg": RNG.normal(0, 0.5, (10, 6)), "bg": RNG.normal(0, 0.1, 10), "ba": RNG.normal(0, 0.1, 8)}
    inits = [_init(n, a) for n, a in w.items()]
    nodes = [helper.make_node("Conv", ["x", "wa", "ba"], ["ca"], name="A", pads=[1, 1, 1, 1])]
    bn, more = _bn("bnA", "ca", "na", 8, gamma_a)
    nodes += [bn, helper.make_node("Relu", ["na"], ["a"]),
              helper.make_node("Conv", ["a", "wd"], ["cd"], name="D", group=8, pads=[1, 1, 1, 1]),
              helper.make_node("Relu", ["cd"], ["d"]),
              helper.make_node("Conv", ["d", "wb"], ["cb"], name="B")]
    inits += more
    bn, more = _bn("bnB", "cb", "b", 8)
    nodes += [bn, helper.make_node("Conv", ["a", "wc"], ["c"], name="C"),
              helper.make_node("Add", ["b", "c"], ["s0"]), helper.make_node("Relu", ["s0"], ["s"]),
              helper.make_node("Mul", ["s", "k"], ["m"]),
              helper.make_node("Concat", ["m", "a"], ["cat"], axis=1),
              helper.make_node("Conv", ["cat", "we"], ["ce"], name="E")]
    inits += more
    bn, more = _bn("bnE", "ce", "ne", 6, gamma_e)
    nodes += [bn, helper.make_node("Relu", ["ne"], ["e"]), helper.make_node("GlobalAveragePool", ["e"], ["g"]),
              helper.make_node("Flatten", ["g"], ["f"]), helper.make_node("Gemm", ["f", "wg", "bg"], ["y"], transB=1)]
    inits += more
    graph = helper.make_graph(nodes, "branchy", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def shuffle_model() -> onnx.ModelProto:
    """conv -> channel shuffle (Reshape, Transpose, Reshape) -> conv: nothing the pruner can rewire."""
    inits = [_init("w1", RNG.normal(0, 0.5, (6, 3, 1, 1))), _init("w2", RNG.normal(0, 0.5, (4, 6, 1, 1))),
             numpy_helper.from_array(np.array([1, 2, 3, 4, 4], np.int64), "s5"),
             numpy_helper.from_array(np.array([1, 6, 4, 4], np.int64), "s4")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="first"),
             helper.make_node("Reshape", ["c1", "s5"], ["r1"], name="shuffle_split"),
             helper.make_node("Transpose", ["r1"], ["t"], perm=[0, 2, 1, 3, 4]),
             helper.make_node("Reshape", ["t", "s4"], ["r2"]),
             helper.make_node("Conv", ["r2", "w2"], ["y"], name="second")]
    graph = helper.make_graph(nodes, "shuffle", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 4, 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def run_ort(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Conv name -> its weight, in a (pruned) model."""
    arrays = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return {n.name: arrays[n.input[1]] for n in model.graph.node if n.op_type == "Conv"}


def zeroed_rows(weight: np.ndarray) -> set[int]:
    return {i for i in range(weight.shape[0]) if not weight[i].any()}


# ---------------------------------------------------------------------------- channel pruning
@pytest.mark.parametrize("method", ["l1-channel", "bn-scale"])
def test_shrunk_model_equals_the_masked_model_and_is_smaller(method):
    model = branchy_model()
    report = prune(model, method=method, ratio=0.5)
    onnx.checker.check_model(report.model, full_check=True)
    x = RNG.standard_normal((1, 3, 8, 8)).astype(np.float32)
    shrunk, masked = run_ort(report.model, x), run_ort(report.masked, x)
    assert shrunk.shape == (1, 10)
    np.testing.assert_allclose(shrunk, masked, rtol=0, atol=1e-5 * np.abs(masked).max())
    assert report.macs_after < report.macs_before and report.params_after < report.params_before
    ours = InferenceSession(report.model).run(None, {"x": x})[0]
    np.testing.assert_allclose(ours, shrunk, rtol=1e-4, atol=1e-5 * np.abs(shrunk).max())


def test_l1_removes_the_smallest_filters_and_ties_residual_channels():
    model = branchy_model()
    report = prune(model, method="l1-channel", ratio=0.5)
    original, masked = weights(model), weights(report.masked)
    l1 = {n: np.abs(w).reshape(len(w), -1).sum(1) for n, w in original.items()}
    relative = {n: v / v.mean() for n, v in l1.items()}
    # A stands alone (the depthwise conv and the Concat carry its channels): its 4 smallest go.
    assert zeroed_rows(masked["A"]) == set(np.argsort(relative["A"], kind="stable")[:4].tolist())
    # B and C meet in the residual Add: the same channels go from both, ranked by their mean score.
    tied = (relative["B"] + relative["C"]) / 2
    assert zeroed_rows(masked["B"]) == zeroed_rows(masked["C"]) == set(np.argsort(tied, kind="stable")[:4].tolist())
    assert zeroed_rows(masked["E"]) == set(np.argsort(relative["E"], kind="stable")[:3].tolist())
    # The depthwise conv lost A's channels, its group count with them.
    shrunk = weights(report.model)
    assert shrunk["D"].shape == (4, 1, 3, 3) and shrunk["A"].shape == (4, 3, 3, 3)
    assert shrunk["E"].shape == (3, 8, 1, 1)  # 4 of the Mul's + 4 of A's channels in, 3 out
    group = next(a.i for n in report.model.graph.node if n.name == "D" for a in n.attribute if a.name == "group")
    assert group == 4
    assert report.channels["A"] == (8, 4) and report.channels["E"] == (6, 3)


def test_bn_scale_removes_the_smallest_gammas_over_the_whole_model():
    gamma_a = np.array([0.05, 0.9, 0.01, 0.8, 0.7, 0.02, 0.6, 0.95])
    gamma_e = np.array([0.03, 1.0, 0.5, 0.04, 0.9, 0.85])
    report = prune(branchy_model(gamma_a, gamma_e), method="bn-scale", ratio=0.4)
    masked = weights(report.masked)
    # Candidates: A's 8 channels and E's 6 (B+C's tied channels have no BatchNorm on C: kept).
    # round(0.4 x 14) = 6 smallest |gamma| over both layers, one threshold: 0.01, 0.02, 0.05 of A
    # and 0.03, 0.04, 0.5 of E.
    everything = sorted([(g, "A", i) for i, g in enumerate(gamma_a)] + [(g, "E", i) for i, g in enumerate(gamma_e)])[:6]
    assert zeroed_rows(masked["A"]) == {i for _, layer, i in everything if layer == "A"}
    assert zeroed_rows(masked["E"]) == {i for _, layer, i in everything if layer == "E"}
    assert zeroed_rows(masked["B"]) == zeroed_rows(masked["C"]) == set()


def test_channels_the_pruner_cannot_rewire_are_masked_and_reported():
    model = shuffle_model()
    report = prune(model, method="l1-channel", ratio=0.5)
    assert len(report.fallbacks) == 1
    assert "first" in report.fallbacks[0] and "Reshape 'shuffle_split'" in report.fallbacks[0]
    pruned = weights(report.model)
    assert pruned["first"].shape == (6, 3, 1, 1)  # same shapes: masked, not removed
    l1 = np.abs(weights(model)["first"]).reshape(6, -1).sum(1)
    assert zeroed_rows(pruned["first"]) == set(np.argsort(l1, kind="stable")[:3].tolist())
    x = RNG.standard_normal((1, 3, 4, 4)).astype(np.float32)
    assert run_ort(report.model, x).shape == (1, 4, 4, 4)


def test_zoo_mobilenet_v2_half_the_channels_shrinks_macs():
    model = build("mobilenet_v2", resolution=64)
    report = prune(model, method="l1-channel", ratio=0.5)
    assert report.macs_before / report.macs_after >= 1.6
    assert not report.fallbacks
    x = RNG.standard_normal((1, 3, 64, 64)).astype(np.float32)
    shrunk, masked = run_ort(report.model, x), run_ort(report.masked, x)
    np.testing.assert_allclose(shrunk, masked, rtol=0, atol=1e-5 * np.abs(masked).max())


# ---------------------------------------------------------------------------- unstructured
def test_magnitude_per_layer_zeroes_the_ratio_of_each_weight():
    w = {"a": RNG.normal(size=(8, 4)), "b": RNG.normal(size=(5, 3, 2)) * 10}
    masks = magnitude_masks(w, 0.25, "layer")
    for name, mask in masks.items():
        assert (~mask).sum() == round(0.25 * w[name].size)
        assert np.abs(w[name][mask]).min() >= np.abs(w[name][~mask]).max()


def test_magnitude_global_uses_one_threshold():
    w = {"small": RNG.normal(size=(20,)) * 0.01, "large": RNG.normal(size=(20,))}
    masks = magnitude_masks(w, 0.5, "global")
    kept = np.concatenate([np.abs(w[n][masks[n]]) for n in w])
    dropped = np.concatenate([np.abs(w[n][~masks[n]]) for n in w])
    assert kept.min() >= dropped.max() and len(dropped) == 20
    assert (~masks["small"]).sum() > (~masks["large"]).sum()  # the small layer loses more


def test_magnitude_prune_keeps_shapes_and_reports_sparsity():
    model = branchy_model()
    report = prune(model, method="magnitude", ratio=0.75)
    assert report.params_after == report.params_before  # same shapes; the zeros are in the weights
    assert report.sparsity and all(abs(s - 0.75) < 0.02 for s in report.sparsity.values())
    assert report.masked is None
    x = RNG.standard_normal((1, 3, 8, 8)).astype(np.float32)
    assert run_ort(report.model, x).shape == (1, 10)


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("ratio", [0, 1, -0.1, 1.5, "half"])
def test_ratio_outside_zero_one_is_refused(ratio):
    with pytest.raises(PruneError, match=r"ratio must be a number in \(0, 1\)"):
        prune(branchy_model(), method="l1-channel", ratio=ratio)


def test_unknown_method_and_masked_magnitude_are_refused():
    with pytest.raises(PruneError, match="unknown pruning method 'random'"):
        prune(branchy_model(), method="random", ratio=0.5)
    with pytest.raises(PruneError, match="--emit-masked applies to the channel methods"):
        prune(branchy_model(), "unused.onnx", method="magnitude", ratio=0.5, masked_out="masked.onnx")


def test_bn_scale_without_batchnorm_says_to_use_l1():
    with pytest.raises(PruneError, match="no conv followed by one; use l1-channel"):
        prune(shuffle_model(), method="bn-scale", ratio=0.5)


def test_model_without_weights_is_refused():
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    with pytest.raises(PruneError, match="no Conv / Gemm / MatMul with constant weights"):
        prune(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), ratio=0.5)


# ---------------------------------------------------------------------------- CLI
def test_cli_prune_writes_the_shrunk_and_the_masked_model(tmp_path, capsys):
    source, out, masked = tmp_path / "m.onnx", tmp_path / "p.onnx", tmp_path / "masked.onnx"
    onnx.save(branchy_model(), str(source))
    assert main(["prune", str(source), str(out), "--ratio", "0.5", "--emit-masked", str(masked)]) == 0
    text = capsys.readouterr().out
    assert "MACs" in text and "8 ->     4 channels" in text
    x = RNG.standard_normal((1, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(run_ort(onnx.load(str(out)), x), run_ort(onnx.load(str(masked)), x), atol=1e-5)
    assert main(["prune", str(source), str(out), "--ratio", "2"]) == 1
    assert "ratio must be a number in (0, 1)" in capsys.readouterr().err


def test_kept_channels_round_up_to_a_multiple():
    model = build("mobilenet_v2", resolution=64)
    report = prune(model, method="bn-scale", ratio=0.5, multiple_of=8)
    kept = [after for before, after in report.channels.values() if after != before]
    assert kept and all(k % 8 == 0 for k in kept)
    plain = prune(model, method="bn-scale", ratio=0.5)
    assert report.macs_after >= plain.macs_after  # rounding up keeps more
    with pytest.raises(PruneError, match="multiple_of must be a positive integer"):
        prune(model, method="l1-channel", ratio=0.5, multiple_of=0)
