"""tinyinfer.runtime.compare: node counts after tinyinfer's passes next to ONNX Runtime's, and
where each engine's time goes per op family.

The ONNX Runtime column is checked against a count made here the documented way (a session
at ORT_ENABLE_EXTENDED writing its graph to ``optimized_model_filepath``); the tinyinfer
column against a PassManager run. Two small light models keep the file fast.
"""

from __future__ import annotations

import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import tinyinfer as ti
from tinyinfer.cli import main
from tinyinfer.errors import TinyInferError
from tinyinfer.models import load_light_model
from tinyinfer.passes import PassManager
from tinyinfer.runtime.compare import (NodeCountRow, node_count_table, node_counts_vs_onnxruntime, onnxruntime_node_count,
                                       op_family, time_by_op_table, time_by_op_vs_onnxruntime)

NAMES = ("squeezenet", "shufflenet")


@pytest.fixture(scope="module")
def models():
    return {name: load_light_model(name) for name in NAMES}


def ort_extended_nodes(model: onnx.ModelProto, directory) -> int:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(directory / "ort.onnx")
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return len(onnx.load(options.optimized_model_filepath).graph.node)


def test_rows_count_imported_optimized_and_onnxruntime_nodes(models, tmp_path):
    rows = node_counts_vs_onnxruntime(models)
    assert [r.model for r in rows] == list(NAMES)
    for row in rows:
        graph = ti.load(models[row.model])
        optimized, _ = PassManager("O2").run(graph)
        assert row.imported == len(graph.nodes)
        assert row.tinyinfer == len(optimized.nodes) < row.imported
        assert row.onnxruntime == ort_extended_nodes(models[row.model], tmp_path)
        assert row.ratio == pytest.approx(row.tinyinfer / row.onnxruntime)
        assert row.tinyinfer <= row.onnxruntime  # the O2 pipeline fuses at least as much as ORT on these


def test_level_is_passed_to_the_pass_manager(models):
    (o0,) = node_counts_vs_onnxruntime({"squeezenet": models["squeezenet"]}, level="O0")
    assert o0.level == "O0" and o0.tinyinfer == o0.imported


def test_graph_bytes_and_path_inputs_count_alike(models, tmp_path):
    model = models["squeezenet"]
    path = tmp_path / "squeezenet.onnx"
    onnx.save(model, str(path))
    want = onnxruntime_node_count(model)
    assert onnxruntime_node_count(model.SerializeToString()) == want
    assert onnxruntime_node_count(str(path)) == want
    assert onnxruntime_node_count(ti.load(model)) == want  # exported first: the same graph


def test_table_has_a_row_per_model_and_a_total():
    rows = [NodeCountRow("a", 100, 40, 50), NodeCountRow("b", 10, 5, 5)]
    table = node_count_table(rows)
    lines = table.splitlines()
    assert "ORT extended" in lines[0] and "tinyinfer O2" in lines[0]
    assert lines[1].split() == ["a", "100", "40", "50", "0.80"]
    assert lines[3].split() == ["total", "110", "45", "55", "0.82"]
    assert node_count_table([]) == "no models"


def test_missing_onnxruntime_is_a_clear_error(monkeypatch, models):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    with pytest.raises(TinyInferError, match="pip install onnxruntime"):
        node_counts_vs_onnxruntime({"squeezenet": models["squeezenet"]})


def test_cli_optimize_prints_the_comparison_row(models, tmp_path, capsys):
    path = tmp_path / "model.onnx"
    onnx.save(models["squeezenet"], str(path))
    out = tmp_path / "opt.tinf"  # the native format keeps the fused nodes (ONNX export decomposes them)
    assert main(["optimize", str(path), str(out), "--compare-ort"]) == 0
    text = capsys.readouterr().out
    header = next(line for line in text.splitlines() if "ORT extended" in line)
    row = text.splitlines()[text.splitlines().index(header) + 1].split()
    assert row[1:4] == [str(len(ti.load(models["squeezenet"]).nodes)), str(len(ti.load(str(out)).nodes)),
                        str(ort_extended_nodes(models["squeezenet"], tmp_path))]
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    name = ti.InferenceSession(str(out)).get_inputs()[0].name
    np.testing.assert_allclose(ti.InferenceSession(str(out), opt_level="O0").run(None, {name: x})[0],
                               ti.InferenceSession(str(path), opt_level="O0").run(None, {name: x})[0], rtol=1e-4, atol=1e-6)


def test_cli_light_all_compares_every_light_model(monkeypatch, capsys):
    import tinyinfer.models.light as light

    monkeypatch.setattr(light, "LIGHT_MODELS", NAMES)  # the real nine take half a minute
    assert main(["optimize", "light:all", "--compare-ort"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[1:4]] == [*NAMES, "total"]


def test_cli_light_all_needs_compare_ort_and_no_output_and_a_model_needs_an_output(capsys):
    assert main(["optimize", "light:all"]) == 1
    assert main(["optimize", "light:all", "out.onnx", "--compare-ort"]) == 1
    assert main(["optimize", "light:squeezenet"]) == 1
    err = capsys.readouterr().err
    assert "--compare-ort" in err and "needs an output file" in err


def conv_pool_model() -> onnx.ModelProto:
    """Conv -> Relu -> MaxPool -> Concat with itself: one op of four families."""
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 3, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Concat", ["p", "p"], ["y"], axis=1)]
    graph = helper.make_graph(nodes, "conv_pool", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 8, 8])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_op_families_group_fused_and_standard_names():
    assert op_family("Conv") == op_family("FusedConv") == op_family("QLinearConv") == "conv"
    assert op_family("Gemm") == op_family("FusedMatMul") == "gemm"
    assert op_family("ReorderInput") == op_family("ToBlocked") == "layout"
    assert op_family("HardSwish") == "elementwise"


def test_time_by_op_profiles_both_engines_per_family():
    row = time_by_op_vs_onnxruntime(conv_pool_model(), name="conv_pool", backend="reference", threads=1,
                                    runs=3, warmup=1)
    assert row.model == "conv_pool" and row.runs == 3
    # tinyinfer's O2 fuses Relu into the conv: conv, pool and concat remain, each timed.
    assert {"conv", "pool", "concat/split"} <= set(row.tinyinfer_ms)
    assert {"conv", "pool", "concat/split"} <= set(row.onnxruntime_ms)
    assert all(ms >= 0 for ms in [*row.tinyinfer_ms.values(), *row.onnxruntime_ms.values()])
    # Node time is part of the run time (the rest is overhead), on both engines.
    assert sum(row.tinyinfer_ms.values()) <= row.tinyinfer_run_ms * 1.05
    assert sum(row.onnxruntime_ms.values()) <= row.onnxruntime_run_ms * 1.05
    assert row.tinyinfer_nodes == 3 and row.onnxruntime_nodes >= 3
    table = time_by_op_table(row)
    assert "conv_pool" in table and "(overhead)" in table and "pool" in table


def test_cli_bench_by_op_prints_the_family_table(tmp_path, capsys):
    path = tmp_path / "conv_pool.onnx"
    onnx.save(conv_pool_model(), str(path))
    assert main(["bench", str(path), "--by-op", "--threads", "1", "--repeat", "2", "--warmup", "1"]) == 0
    text = capsys.readouterr().out
    assert "family" in text and "conv" in text and "ORT ms" in text
