"""``tinyinfer zoo`` and ``zoo:NAME`` model arguments, on a tiny network registered by the test.

The zoo's real builders are not needed: each test swaps the registry for an empty one
(``monkeypatch`` on ``tinyinfer.models.zoo.ZOO``) and registers what it needs.
"""

from __future__ import annotations

import onnx
import pytest

from tinyinfer.cli import main
from tinyinfer.models import NetworkBuilder, register_model, zoo

# tinynet at width 1, resolution 8: conv 3 -> 8 channels, 3x3 (216 weights), BatchNorm (8 scales,
# 8 shifts; its 16 running statistics are not parameters), Gemm 8 -> 10 (80 weights, 10 biases).
TINY_PARAMS = 216 + 16 + 90
# conv: 8 x 8 x 8 outputs, each over 3 x 3 x 3 inputs; Gemm: 10 outputs over 8 inputs.
TINY_MACS = 8 * 8 * 8 * 27 + 80


def build_tinynet(*, width: float = 1.0, resolution: int = 8, seed: int = 0) -> onnx.ModelProto:
    net = NetworkBuilder("tinynet", seed=seed)
    x = net.input("image", ("N", 3, resolution, resolution))
    y = net.conv_bn_act(x, int(8 * width), 3, name="stem")
    y = net.classifier(net.global_avg_pool(y), 10)
    return net.build(y, seed=seed)


@pytest.fixture
def tiny_zoo(monkeypatch):
    """A zoo holding only ``tinynet``; ``calls`` records the options each build received."""
    monkeypatch.setattr(zoo, "ZOO", {})
    calls = []

    def builder(**config):
        calls.append(config)
        return build_tinynet(**config)

    register_model("tinynet", paper="Nobody et al., 2024, A Network Small Enough to Test", params=TINY_PARAMS,
                   macs=TINY_MACS, family="testnets", note="counted by hand in the test")(builder)
    return calls


def test_zoo_list_shows_our_figures_next_to_the_papers(tiny_zoo, capsys):
    assert main(["zoo", "list", "--notes"]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("tinynet"))
    assert "testnets" in line and "Nobody et al., 2024" in line
    assert line.count(str(TINY_PARAMS)) == 2  # ours and the paper's agree
    assert line.count(f"{TINY_MACS / 1e3:.3g}K") == 2
    assert "note on tinynet: counted by hand" in out
    assert main(["zoo", "list"]) == 0
    assert "note on" not in capsys.readouterr().out


def test_zoo_list_works_with_an_empty_zoo(monkeypatch, capsys):
    monkeypatch.setattr(zoo, "ZOO", {})
    assert main(["zoo", "list"]) == 0
    assert "no zoo models registered" in capsys.readouterr().out


def test_zoo_list_reports_a_broken_builder_and_lists_the_rest(tiny_zoo, capsys):
    def broken(**config):
        raise ValueError("half-written builder")

    register_model("broken", paper="Someone, 2025", params=1e6, macs=1e8, family="testnets")(broken)
    assert main(["zoo", "list"]) == 0
    captured = capsys.readouterr()
    assert "broken" in captured.out and "error" in captured.out and "tinynet" in captured.out
    assert "cannot build broken: ValueError: half-written builder" in captured.err


def test_zoo_list_without_building_uses_only_the_registry(tiny_zoo, capsys):
    assert main(["zoo", "list", "--no-build"]) == 0
    assert tiny_zoo == []  # no builder ran
    assert "tinynet" in capsys.readouterr().out


def test_zoo_export_writes_a_valid_model_with_only_the_given_options(tiny_zoo, tmp_path, capsys):
    out = tmp_path / "tiny.onnx"
    assert main(["zoo", "export", "tinynet", str(out)]) == 0
    assert tiny_zoo == [{}]  # the builder's own defaults
    onnx.checker.check_model(str(out), full_check=True)
    assert f"wrote {out}: tinynet (default configuration)" in capsys.readouterr().out

    wide = tmp_path / "wide.onnx"
    assert main(["zoo", "export", "tinynet", str(wide), "--width", "2", "--resolution", "16", "--seed", "3"]) == 0
    assert tiny_zoo[-1] == {"width": 2.0, "resolution": 16, "seed": 3}
    model = onnx.load(str(wide))
    onnx.checker.check_model(model, full_check=True)
    dims = [d.dim_value or d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["N", 3, 16, 16]
    assert "width=2.0, resolution=16, seed=3" in capsys.readouterr().out


def test_zoo_export_errors_exit_1_with_a_clear_message(tiny_zoo, tmp_path, capsys):
    assert main(["zoo", "export", "nonet", str(tmp_path / "x.onnx")]) == 1
    assert "unknown zoo model 'nonet'; available: tinynet" in capsys.readouterr().err
    assert main(["zoo", "export", "tinynet", str(tmp_path / "missing" / "x.onnx")]) == 1
    assert "cannot write" in capsys.readouterr().err

    register_model("fixed", paper="Someone, 2025", params=1, macs=1)(lambda *, seed=0: build_tinynet(seed=seed))
    assert main(["zoo", "export", "fixed", str(tmp_path / "f.onnx"), "--width", "0.5"]) == 1
    err = capsys.readouterr().err
    assert "zoo model 'fixed'" in err and "unexpected keyword argument 'width'" in err


def test_info_accepts_zoo_models_and_prints_every_cost(tiny_zoo, capsys):
    assert main(["info", "zoo:tinynet", "--layers"]) == 0
    out = capsys.readouterr().out
    assert "paper: Nobody et al., 2024" in out
    assert f"MACs                    {TINY_MACS:,}" in out
    for label in ("FLOPs", "activation memory", "peak activation memory", "memory access", "arithmetic intensity"):
        assert label in out
    assert "Conv" in out and "total" in out and "stem" in out  # the op histogram and the layer table


def test_info_batch_scales_the_costs(tiny_zoo, capsys):
    assert main(["info", "zoo:tinynet", "--batch", "4", "--layers", "--top", "1"]) == 0
    out = capsys.readouterr().out
    assert f"MACs                    {4 * TINY_MACS:,}" in out
    assert "1 of " in out  # --top 1 keeps the costliest layer only


def test_unknown_zoo_model_is_an_error_for_every_command(tiny_zoo, capsys):
    for command in ("info", "run", "bench"):
        assert main([command, "zoo:resnet_9000"]) == 1
        assert "unknown zoo model 'resnet_9000'; available: tinynet" in capsys.readouterr().err


def test_run_and_bench_accept_zoo_models(tiny_zoo, capsys):
    assert main(["run", "zoo:tinynet", "--dim", "N=2"]) == 0
    assert "float32 [2, 10]" in capsys.readouterr().out
    assert main(["bench", "zoo:tinynet", "--repeat", "1", "--warmup", "0"]) == 0
    assert "onnxruntime" in capsys.readouterr().out


def test_zoo_without_a_command_prints_its_help(capsys):
    assert main(["zoo"]) == 2
    assert "export" in capsys.readouterr().out
