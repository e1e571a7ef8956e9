"""`transferline lr-find`: the range test on a strategy's real loader, a suggestion inside the
range where the loss falls fastest, the same curve and PNG bytes on a re-run, and an early stop
when the loss explodes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from transferline.cli import main as cli
from transferline.config.errors import StageError
from transferline.engine.lr_find import lr_find, suggest

from helpers import make_clean_split, make_params

STRATEGY = {"arch": "cnn1", "weights": "none", "optimizer": "sgd", "lr": 0.01, "epochs": 1}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_clean_split(tmp_path_factory.mktemp("data"), per_class=12, val_per_class=2)


def test_suggestion_is_the_steepest_fall_inside_the_range():
    lrs = list(np.geomspace(1e-5, 1, 50))
    # flat, then falling fastest around 1e-3, then exploding
    losses = [2.0 - np.tanh((np.log10(lr) + 3) * 2) + (5 if lr > 0.3 else 0) for lr in lrs]
    assert suggest(lrs, losses) == pytest.approx(1e-3, rel=0.3)
    with pytest.raises(StageError, match="too few to suggest"):
        suggest(lrs[:3], losses[:3])


def test_range_test_writes_a_curve_and_is_repeatable(dataset, params_raw, tmp_path):
    clean, split = dataset
    params = make_params(params_raw, {"s": STRATEGY})
    first = lr_find("s", params, clean_dir=clean, split_dir=split, out=tmp_path / "a", steps=40)
    lr_find("s", params, clean_dir=clean, split_dir=split, out=tmp_path / "b", steps=40)
    for name in ("s.png", "s.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert first == json.loads((tmp_path / "a" / "s.json").read_text())
    lrs = first["lr"]
    assert lrs[0] == pytest.approx(1e-7) and lrs == sorted(lrs)
    assert lrs[0] < first["suggested_lr"] < lrs[-1]
    assert len(first["loss"]) == len(lrs) <= 40


def test_the_range_test_stops_once_the_loss_explodes(dataset, params_raw, tmp_path):
    clean, split = dataset
    params = make_params(params_raw, {"s": STRATEGY})
    result = lr_find("s", params, clean_dir=clean, split_dir=split, out=tmp_path, end=1e8, steps=80)
    assert len(result["lr"]) < 80  # stopped early: exploded (4x the best) or not finite
    assert result["suggested_lr"] < result["lr"][-1]


def test_the_command_prints_the_suggestion(dataset, params_raw, tmp_path, capsys):
    clean, split = dataset
    raw = dict(params_raw)
    raw["train"] = {**raw["train"], "image_size": 32, "batch_size": 8}
    raw["runtime"] = {**raw["runtime"], "device": "cpu"}
    raw["strategies"] = {"s": STRATEGY}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    args = ["lr-find", "s", "--params", str(tmp_path / "params.yaml"), "--clean", str(clean)]
    args += ["--split", str(split), "--out", str(tmp_path / "out"), "--steps", "30"]
    assert cli(args) == 0
    out = capsys.readouterr().out
    result = json.loads((tmp_path / "out" / "s.json").read_text())
    assert out.startswith(f"s: suggested lr {result['suggested_lr']:g} (")
    assert (tmp_path / "out" / "s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
