"""tinyinfer.runtime.compare: node counts after tinyinfer's passes next to ONNX Runtime's.

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
from tinyinfer.runtime.compare import NodeCountRow, node_count_table, node_counts_vs_onnxruntime, onnxruntime_node_count

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
