"""The ``tinyinfer`` command, driven as a user drives it (in-process, through ``main``)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from tinyinfer.cli import main


@pytest.fixture
def model_path(tmp_path):
    """y = relu(x @ W + b) with a symbolic batch dim."""
    rng = np.random.default_rng(0)
    w = helper.make_tensor("W", TensorProto.FLOAT, [4, 3], rng.standard_normal(12).astype(np.float32).tolist())
    b = helper.make_tensor("b", TensorProto.FLOAT, [3], [0.1, -0.2, 0.3])
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["z"]),
         helper.make_node("Relu", ["z"], ["y"])],
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        [w, b],
    )
    path = tmp_path / "mlp.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_info_lists_inputs_ops_parameters_and_flops(model_path, capsys):
    assert main(["info", str(model_path)]) == 0
    text = capsys.readouterr().out
    assert "input  x: float[Nx4]" in text
    assert "parameters: 15" in text  # 4*3 weights + 3 biases
    assert "MatMul" in text and "Relu" in text
    assert "MACs" in text


def test_run_with_random_feeds_and_saved_outputs(model_path, tmp_path, capsys):
    out = tmp_path / "out.npz"
    assert main(["run", str(model_path), "--dim", "N=5", "--output", str(out)]) == 0
    saved = np.load(out)
    assert saved["y"].shape == (5, 3)
    assert (saved["y"] >= 0).all()  # it went through a Relu
    assert "y: float32 [5, 3]" in capsys.readouterr().out


def test_run_with_given_input_matches_numpy(model_path, tmp_path):
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "out.npz"
    assert main(["run", str(model_path), "--input", f"x={tmp_path / 'x.npy'}", "--output", str(out)]) == 0
    model = onnx.load(str(model_path))
    w = onnx.numpy_helper.to_array(model.graph.initializer[0])
    b = onnx.numpy_helper.to_array(model.graph.initializer[1])
    np.testing.assert_allclose(np.load(out)["y"], np.maximum(x @ w + b, 0), rtol=1e-6)


def test_bad_model_is_a_clear_error_with_exit_code_1(tmp_path, capsys):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07this is not a model")
    assert main(["info", str(bad)]) == 1
    assert "tinyinfer: error:" in capsys.readouterr().err


def test_wrong_input_dtype_is_reported(model_path, tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.zeros((2, 4), np.float64))
    assert main(["run", str(model_path), "--input", f"x={tmp_path / 'x.npy'}"]) == 1
    assert "expects tensor(float)" in capsys.readouterr().err


def test_bench_reports_both_engines_and_agreement(model_path, capsys):
    assert main(["bench", str(model_path), "--repeat", "3", "--warmup", "1", "--onnx-reference"]) == 0
    text = capsys.readouterr().out
    assert "tinyinfer (reference)" in text and "tinyinfer (numba)" in text and "onnxruntime" in text
    assert "onnx.reference" in text


def test_conformance_subset_counts_passes(capsys):
    assert main(["conformance", "--op", "Relu"]) == 0
    assert "passed, 0 failed" in capsys.readouterr().out


@pytest.mark.parametrize("suffix", ["onnx", "tinf"])
def test_optimize_prints_the_report_and_saves_a_runnable_model(model_path, tmp_path, capsys, suffix):
    out = tmp_path / f"opt.{suffix}"
    assert main(["optimize", str(model_path), str(out), "--level", "O2", "--memory"]) == 0
    text = capsys.readouterr().out
    assert "optimisation level O2" in text and "dead_code_elimination" in text and "lower bound" in text
    x = np.ones((2, 4), np.float32)
    import tinyinfer as ti

    np.testing.assert_allclose(
        ti.InferenceSession(str(out)).run(None, {"x": x})[0], ti.InferenceSession(str(model_path)).run(None, {"x": x})[0],
        rtol=1e-6,
    )


# ---------------------------------------------------------------- bench: suite, GEMM, dispatch
def test_bench_suite_prints_the_table_and_writes_json_and_figure(model_path, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TINYINFER_CACHE_DIR", str(tmp_path / "cache"))
    record, figure = tmp_path / "bench.json", tmp_path / "bench.png"
    assert main(["bench", "--suite", str(model_path), "--threads", "1", "--batch", "1,2", "--repeat", "1",
                 "--budget", "0", "--json", str(record), "--figure", str(figure)]) == 0
    text = capsys.readouterr().out
    assert "numba/ORT" in text and "ref/numba" in text and str(model_path) in text
    suite = __import__("json").loads(record.read_text())["suite"]
    assert [(r["batch"], r["status"]) for r in suite["rows"]] == [(1, "ok"), (2, "ok")]
    assert set(suite["rows"][0]["engines"]) == {"reference", "numba", "onnxruntime"}
    assert figure.read_bytes()[:4] == b"\x89PNG"


def test_bench_suite_fails_loudly_when_numba_disagrees(model_path, tmp_path, capsys, monkeypatch):
    from tinyinfer import InferenceSession
    from tinyinfer.runtime import bench

    class WrongNumba(InferenceSession):
        def run(self, output_names, feeds, run_options=None):
            results = super().run(output_names, feeds, run_options)
            return [r * 2.0 + 1.0 for r in results] if self.backend == "numba" else results

    monkeypatch.setenv("TINYINFER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(bench, "InferenceSession", WrongNumba)
    assert main(["bench", "--suite", str(model_path), "--threads", "1", "--batch", "1", "--repeat", "1",
                 "--budget", "0"]) == 1
    captured = capsys.readouterr()
    assert "MISMATCH" in captured.out and "numba disagrees with the reference" in captured.err


def test_bench_gemm_with_tiny_sizes(capsys):
    assert main(["bench", "--gemm", "--gemm-sizes", "16,32", "--gemm-shapes", "none", "--threads", "1",
                 "--repeat", "1", "--naive-up-to", "16"]) == 0
    text = capsys.readouterr().out
    assert "GFLOP/s" in text and "naive 1t" in text and "packed 1t" in text and "BLAS 1t" in text


def test_bench_dispatch_reports_us_per_node(capsys):
    assert main(["bench", "--dispatch", "--nodes", "8"]) == 0
    text = capsys.readouterr().out
    assert "us per node" in text and "reference" in text and "numba" in text and "direct loop" in text


def test_bench_needs_something_to_run(capsys):
    assert main(["bench"]) == 1
    assert "--suite" in capsys.readouterr().err
    assert main(["bench", "--suite", "light", "--threads", "one"]) == 1
    assert "--threads expects" in capsys.readouterr().err
