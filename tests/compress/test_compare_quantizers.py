"""tinyinfer's quantizer side by side with ONNX Runtime's (tinyinfer/compress/compare.py).

Oracles: ONNX Runtime runs every model; the fp32 model's outputs are the reference each SNR is
measured against. The thresholds are loose lower bounds (8-bit quantization of these small
random networks gives 25-40 dB), except where a test shows ONNX Runtime's Softmax artifact:
there the default row must lose nearly all signal (< 3 dB) while the row that keeps Softmax in
float keeps it (> 15 dB) on the same data.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from test_ptq import INPUT, SHAPE, calibration, small_cnn
from tinyinfer.cli import main
from tinyinfer.compress.compare import (
    ORT_DEFAULT,
    ORT_SAME_OPS,
    compare_models,
    compare_with_onnxruntime,
    expand_specs,
    format_table,
    markdown_table,
)
from tinyinfer.compress.ptq import FLOAT_REASONS

TINYINFER = "tinyinfer (mse, bias correction)"


def wide_classifier(classes: int = 1000, softmax: bool = True) -> onnx.ModelProto:
    """conv → relu → GAP → gemm → softmax over ``classes`` near-equal logits (a random-weight
    classifier: every probability close to 1/classes, below half of a 1/255 step)."""
    rng = np.random.default_rng(0)
    weights = {"w": (rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32),
               "fc": (rng.standard_normal((classes, 8)) * 0.05).astype(np.float32),
               "fc_b": np.zeros(classes, np.float32)}
    nodes = [
        helper.make_node("Conv", [INPUT, "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "fc", "fc_b"], ["logits" if softmax else "out"], transB=1),
    ]
    if softmax:
        nodes.append(helper.make_node("Softmax", ["logits"], ["out"], axis=1))
    graph = helper.make_graph(nodes, "wide", [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, SHAPE)],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, classes])],
                              [numpy_helper.from_array(v, k) for k, v in weights.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def compare(model, **options):
    return compare_with_onnxruntime([model], calibration(4), configurations=[{"method": "mse"}], eval_samples=2,
                                    repeats=1, tinyinfer_backend="reference", **options)


# ---------------------------------------------------------------------------- the rows
def test_compare_with_onnxruntime_measures_both_quantizers():
    rows = compare(small_cnn())
    assert [row.quantizer for row in rows] == [ORT_DEFAULT, ORT_SAME_OPS, TINYINFER]
    for row in rows:
        assert row.snr_ort > 15 and row.snr_tinyinfer > 15 and row.size_mib > 0 and row.latency_ort_ms > 0
    assert TINYINFER in format_table(rows) and ORT_SAME_OPS in format_table(rows)


def test_onnxruntime_softmax_artifact_and_the_row_without_it(tmp_path):
    """ONNX Runtime's default quantizes the Softmax output with step 1/255: 1000 probabilities
    near 1/1000 round to 0. With Softmax in float, its file keeps the softmax unquantized."""
    default, same_ops, ours = compare(wide_classifier(), workdir=tmp_path)
    assert default.snr_ort < 3 and same_ops.snr_ort > 15 and ours.snr_ort > 15
    last_op = {name: [n.op_type for n in onnx.load(str(tmp_path / name)).graph.node if "out" in n.output]
               for name in ("wide_ort.onnx", "wide_ort_Softmax_Sigmoid.onnx")}
    assert last_op == {"wide_ort.onnx": ["DequantizeLinear"], "wide_ort_Softmax_Sigmoid.onnx": ["Softmax"]}


def test_row_without_softmax_is_the_default_file_when_the_model_has_none():
    default, same_ops, _ = compare(wide_classifier(10, softmax=False))
    assert same_ops.quantizer == ORT_SAME_OPS and same_ops.snr_ort == default.snr_ort
    assert same_ops.size_mib == default.size_mib


def test_kept_float_ops_of_onnxruntime_row_are_kept_float_by_tinyinfer():
    from tinyinfer.compress.compare import ORT_FLOAT_OPS

    assert set(ORT_FLOAT_OPS) <= set(FLOAT_REASONS)


def test_onnxruntime_session_builder_reads_a_path(tmp_path):
    from tinyinfer.runtime.bench import _ort_session

    model = wide_classifier(10)
    onnx.save(model, str(tmp_path / "m.onnx"))
    feeds = calibration(1)[0]
    from_path = _ort_session(tmp_path / "m.onnx", 1).run(None, feeds)[0]
    np.testing.assert_array_equal(from_path, _ort_session(model, 1).run(None, feeds)[0])


# ---------------------------------------------------------------------------- the table
def test_compare_models_table_rows_ratios_and_skips(tmp_path):
    onnx.save(small_cnn(), str(tmp_path / "small.onnx"))
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    results = compare_models([str(tmp_path / "small.onnx"), str(broken)], calib_samples=4, eval_samples=2, repeats=1,
                             tinyinfer_backend="reference")
    small, skipped = results
    assert [row.quantizer for row in small.rows] == ["fp32", ORT_DEFAULT, ORT_SAME_OPS, TINYINFER]
    fp32, theirs, theirs_same_ops, ours = small.rows
    assert fp32.snr_ort is None and theirs.snr_ort > 15 and theirs_same_ops.snr_ort > 15 and ours.snr_tinyinfer > 15
    assert small.row("onnxruntime") is theirs and small.row("tinyinfer") is ours
    assert ours.size_mib > 0 and small.kept_float == {"Softmax": FLOAT_REASONS["Softmax"]}
    record = small.to_dict()
    assert record["size_ratio"] == pytest.approx(ours.size_mib / fp32.size_mib)
    assert record["int8_over_fp32_tinyinfer"] == pytest.approx(ours.latency_tinyinfer_ms / fp32.latency_tinyinfer_ms)
    assert skipped.skipped and not skipped.rows
    table = markdown_table(results)
    assert f"| {tmp_path / 'small.onnx'} | {TINYINFER} |" in table
    assert f"| {tmp_path / 'small.onnx'} | {ORT_SAME_OPS} |" in table
    assert f"| {broken} | skipped: DecodeError" in table


def test_expand_specs_names_every_model_once():
    from tinyinfer.models import LIGHT_MODELS, list_models

    specs = expand_specs("light:all, zoo:all,digits,light:resnet50")
    assert specs == [f"light:{n}" for n in LIGHT_MODELS] + [f"zoo:{n}" for n in list_models()] + ["digits"]


def test_cli_compare_writes_json(tmp_path, capsys):
    onnx.save(small_cnn(), str(tmp_path / "small.onnx"))
    out = tmp_path / "table.json"
    assert main(["quantize", "--compare", str(tmp_path / "small.onnx"), "--samples", "2", "--json", str(out)]) == 0
    assert f"| {tmp_path / 'small.onnx'} | {ORT_DEFAULT} |" in capsys.readouterr().out
    record = json.loads(out.read_text())
    assert record["calibration_samples"] == 2
    assert [r["quantizer"] for r in record["models"][0]["rows"]][:3] == ["fp32", ORT_DEFAULT, ORT_SAME_OPS]


@pytest.mark.parametrize("argv, message", [
    (["quantize", "m.onnx", "--compare", "light:all"], "give no MODEL or OUT file"),
    (["quantize", "m.onnx"], "needs a MODEL and an OUT.onnx"),
    (["quantize", "--compare", "light:all", "--per-tensor"], "--per-tensor do not apply"),
])
def test_cli_compare_and_missing_arguments_errors(argv, message, capsys):
    assert main(argv) == 1
    assert message in capsys.readouterr().err
