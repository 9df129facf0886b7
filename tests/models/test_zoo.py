"""The zoo as a whole: every network the issue names, and its published-numbers table."""

from __future__ import annotations

import pytest

from tinyinfer import models
from tinyinfer.errors import TinyInferError
from tinyinfer.models.zoo import measured_cost

ZOO_NAMES = [
    "squeezenet1_1", "mobilenet_v1", "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small",
    "shufflenet_v1", "shufflenet_v2", "ghostnet", "efficientnet_b0", "resnet18", "vit_tiny", "mobilevit_xs",
]


def test_every_network_is_registered():
    assert sorted(ZOO_NAMES) == models.list_models()


def test_published_numbers_table(monkeypatch, capsys):
    """Params and MACs of every zoo model at its paper's configuration, within 3% of the paper."""
    # Counting needs shapes only: skip the BatchNorm calibration run.
    monkeypatch.setattr("tinyinfer.models.light.calibrate_batchnorm", lambda model, **options: model)
    rows, misses = [], []
    for name in ZOO_NAMES:
        entry = models.entry(name)
        params, macs = measured_cost(models.build(name))
        dp, dm = params / entry.params - 1, macs / entry.macs - 1
        rows.append(f"{name:<20} {params / 1e6:7.3f}M {entry.params / 1e6:6.2f}M {dp:+6.1%}   "
                    f"{macs / 1e6:8.1f}M {entry.macs / 1e6:7.0f}M {dm:+6.1%}")
        if abs(dp) > 0.03 or abs(dm) > 0.03:
            misses.append(name)
    with capsys.disabled():
        print("\n" + f"{'model':<20} {'params':>8} {'paper':>7} {'diff':>6}   {'MACs':>9} {'paper':>8} {'diff':>6}")
        print("\n".join(rows))
    assert not misses, f"more than 3% from the paper: {misses}"


def test_unknown_model_and_bad_option_are_clear_errors():
    with pytest.raises(TinyInferError, match="no zoo model 'mobilenet_v9'"):
        models.build("mobilenet_v9")
    with pytest.raises(TinyInferError, match="mobilenet_v2"):
        models.build("mobilenet_v2", wingspan=2)
