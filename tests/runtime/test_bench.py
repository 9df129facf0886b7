"""The benchmark harness (tinyinfer.runtime.bench and .microbench): what it runs, checks and writes.

Speeds are never asserted (machines are noisy); these tests check that every engine runs,
that disagreements are reported, and that the table, the JSON record and the figure exist.
Models are tiny and every timing loop runs once.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from tinyinfer import InferenceSession
from tinyinfer.runtime import bench, microbench

FAST = dict(repeat=1, budget=0.0, warmup=0)


@pytest.fixture(autouse=True)
def private_kernel_cache(tmp_path, monkeypatch):
    """Kernel choices go to a fresh directory, not the developer's cache."""
    monkeypatch.setenv("TINYINFER_CACHE_DIR", str(tmp_path / "cache"))


def two_node_model(batch="N"):
    """y = relu(x @ W): two nodes, a batch dimension ``batch`` (a symbol or 1)."""
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["z"]), helper.make_node("Relu", ["z"], ["y"])],
        "two_nodes",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 3])],
        [w],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def reshape_model(target):
    """x [1, 2, 3] -> Reshape(target) -> Relu: batch 1 hard-coded in the model's shapes."""
    shape = numpy_helper.from_array(np.array(target, np.int64), "shape")
    out_shape = [d if d > 0 else 6 for d in target]
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["r"]), helper.make_node("Relu", ["r"], ["y"])],
        "reshape",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
        [shape],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """One suite run shared by the tests that only read it: a two-node model, 2 x 2 rows."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TINYINFER_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        return bench.benchmark_suite([("two_nodes", two_node_model())], threads=(1, 2), batches=(1, 3), **FAST)


def test_suite_times_every_engine_on_every_row(report):
    assert [(r.batch, r.threads) for r in report.rows] == [(1, 1), (1, 2), (3, 1), (3, 2)]
    for row in report.rows:
        assert row.status == "ok", row.note
        assert list(row.engines) == list(bench.ENGINES)
        for run in row.engines.values():
            assert run.times_ms and run.warmup_s is not None and not run.error
        assert row.engines["numba"].agrees and row.engines["onnxruntime"].agrees
        assert row.engines["numba"].max_abs_diff <= 1e-5
    assert not report.errors


def test_suite_table_names_models_engines_and_ratios(report):
    text = report.table()
    assert "two_nodes" in text and "numba/ORT" in text and "ref/numba" in text and "warm-up s" in text
    assert "numpy BLAS" in text
    assert len([line for line in text.splitlines() if line.startswith("two_nodes")]) == 4


def test_suite_json_has_the_fields(report):
    record = json.loads(json.dumps(report.to_dict()))  # must be plain JSON
    assert {"machine", "settings", "rows", "errors", "warnings"} <= set(record)
    assert {"cpu", "cores", "blas", "numba", "onnxruntime"} <= set(record["machine"])
    assert record["settings"]["threads"] == [1, 2] and record["settings"]["batches"] == [1, 3]
    row = record["rows"][0]
    assert {"model", "batch", "threads", "status", "engines", "numba_over_onnxruntime", "reference_over_numba"} <= set(row)
    assert {"median_ms", "best_ms", "runs", "warmup_s", "max_abs_diff", "agrees", "blas_threads"} <= set(
        row["engines"]["numba"])


def test_suite_figure_is_written(report, tmp_path):
    path = tmp_path / "figures" / "bench.png"
    bench.write_suite_figure(report, path)
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_reference_rows_pin_blas_to_the_row_threads(report):
    pytest.importorskip("threadpoolctl")
    for row in report.rows:
        assert row.engines["reference"].blas_threads == row.threads


def test_numba_disagreeing_is_an_error(monkeypatch):
    class WrongNumba(InferenceSession):
        def run(self, output_names, feeds, run_options=None):
            results = super().run(output_names, feeds, run_options)
            return [r + 1.0 for r in results] if self.backend == "numba" else results

    monkeypatch.setattr(bench, "InferenceSession", WrongNumba)
    report = bench.benchmark_suite([("two_nodes", two_node_model())], threads=(1,), batches=(1,), **FAST)
    (row,) = report.rows
    assert row.status == "mismatch" and row.engines["numba"].agrees is False
    assert any("numba disagrees" in error for error in report.errors)
    assert "MISMATCH" in report.table()


def test_a_failing_engine_is_reported_not_raised(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no such provider")

    monkeypatch.setattr(bench, "_ort_session", broken)
    report = bench.benchmark_suite([("two_nodes", two_node_model())], engines=("reference", "onnxruntime"),
                                   threads=(1,), batches=(1,), **FAST)
    assert report.rows[0].status == "error"
    assert any("no such provider" in error for error in report.errors)


def test_fixed_batch_models_get_a_batch_dim_or_say_why():
    # Reshape [1, 6] keeps the batch first: rewritten to [0, 6] (copy dim 0).
    model, note = bench.with_batch_dim(reshape_model([1, 6]))
    assert model is not None and "1 Reshape" in note
    x = np.random.default_rng(0).standard_normal((3, 2, 3)).astype(np.float32)
    (y,) = InferenceSession(model).run(None, {"x": x})
    np.testing.assert_array_equal(y, np.maximum(x.reshape(3, 6), 0))
    # Reshape [6] drops the batch dimension: no batch-N version exists.
    model, note = bench.with_batch_dim(reshape_model([6]))
    assert model is None and note.startswith("fixed batch")
    # An already symbolic batch is left alone.
    symbolic = two_node_model()
    assert bench.with_batch_dim(symbolic) == (symbolic, "")


def test_suite_reports_fixed_batch_rows_and_checks_batch_n_against_batch_1():
    report = bench.benchmark_suite([("flat", reshape_model([6])), ("kept", reshape_model([1, 6]))],
                                   engines=("reference", "onnxruntime"), threads=(1,), batches=(1, 2), **FAST)
    status = {(r.model, r.batch): r.status for r in report.rows}
    assert status == {("flat", 1): "ok", ("flat", 2): "fixed batch", ("kept", 1): "ok", ("kept", 2): "ok"}
    assert "FIXED BATCH" in report.table() and not report.errors


def test_compare_outputs_scales_the_absolute_tolerance():
    ref = [np.array([1000.0, 0.0], np.float32)]
    assert bench.compare_outputs([np.array([1000.5, 0.05], np.float32)], ref)[1]  # within 1e-3 rel, 0.1 abs
    diff, agrees = bench.compare_outputs([np.array([1000.0, 0.5], np.float32)], ref)
    assert not agrees and diff == pytest.approx(0.5)
    assert not bench.compare_outputs([np.zeros(3, np.float32)], [np.zeros(2, np.float32)])[1]


def test_gemm_table_with_tiny_sizes():
    rows = microbench.gemm_table((16, 24), [(8, 40, 24, "toy conv")], threads=(1,), repeats=1, naive_up_to=16)
    assert [(r["m"], r["n"], r["k"]) for r in rows] == [(16, 16, 16), (24, 24, 24), (8, 40, 24)]
    assert rows[0]["naive"] > 0 and "naive" not in rows[1]
    for row in rows:
        assert row["gemm_1t"] > 0 and row["gemm_prepacked_a_1t"] > 0 and row["blas_1t"] > 0
    text = microbench.format_gemm_table(rows, (1,))
    assert "toy conv" in text and "packed 1t" in text and "BLAS 1t" in text


def test_conv_gemm_shapes_are_im2col_products():
    w = numpy_helper.from_array(np.zeros((4, 3, 3, 3), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    assert microbench.conv_gemm_shapes(model) == [(4, 64, 27, "1 x 3x3 conv")]


def test_dispatch_benchmark_runs():
    result = microbench.benchmark_dispatch(nodes=6, runs=2)
    assert set(result["backends"]) == {"reference", "numba"}
    for numbers in result["backends"].values():
        assert numbers["planned_nodes"] == 6 and numbers["run_us"] > 0
    assert result["direct_us"] > 0
    assert "us per node" in microbench.format_dispatch(result)


def test_time_in_turn_calls_the_two_in_turn_and_times_each():
    calls = []
    first, second = (lambda: calls.append("a")), (lambda: calls.append("b"))
    ours, theirs = bench.time_in_turn([first, second], repeat=3, warmup=1, budget_s=60.0)
    assert calls == ["a", "b"] * 4  # one warm-up pair, then three timed pairs
    assert len(ours) == len(theirs) == 3 and min(ours + theirs) >= 0.0
