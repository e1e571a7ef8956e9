"""transferline/engine/train.py on tiny generated data: which parameters train, phases, checkpoints,
byte-identical reruns, cached features, early stopping and input errors."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest
import torch
import yaml

from stages import train as stages_train
from transferline import models
from transferline.config.errors import ParamsError, StageError, run_main
from transferline.data import datasets as data
from transferline.data.transforms import eval_transform
from transferline.engine import fit as loop
from transferline.engine import train as train_stage

from helpers import CLASSES, make_clean_split, make_params, run_train


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, Path]:
    return make_clean_split(tmp_path_factory.mktemp("data"))


def read_tsv(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f, delimiter="\t"))


def _initial(arch: str, weights: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """The weights train() starts from: same seed, same build call."""
    torch.manual_seed(seed)
    return models.build(arch, len(CLASSES), weights).state_dict()


def _changed(before: dict, after: dict) -> set[str]:
    return {n for n in before if not torch.equal(before[n], after[n])}


def _touching(names: set[str], prefixes: list[str]) -> set[str]:
    return {n for n in names if any(n.startswith(p + ".") for p in prefixes)}


# Per strategy kind: the module prefixes whose tensors (parameters AND BN buffers) may change.
KINDS = {
    "all": ("cnn3", "none", "all", ["stem", "features", "head"]),
    "head": ("cnn3", "none", "head", ["head"]),
    "last_block": ("cnn3", "none", 1, ["features.2", "head"]),
    "named": ("cnn3", "none", ["features.0"], ["features.0", "head"]),
    "lite0_last_block": (
        "efficientnet_lite0",
        "pretrained",
        1,
        ["blocks.6", "conv_head", "bn2", "classifier"],
    ),
}


@pytest.mark.parametrize("kind", KINDS)
def test_exactly_the_intended_tensors_change(kind, dataset, params_raw, tmp_path):
    arch, weights, trainable, prefixes = KINDS[kind]
    params = make_params(
        params_raw,
        {
            "s": {
                "arch": arch,
                "weights": weights,
                "trainable": trainable,
                "optimizer": "sgd",
                "lr": 0.05,
                "epochs": 1,
            }
        },
    )
    result = run_train(params, "s", dataset, tmp_path)
    before = _initial(arch, weights)
    model, _ = models.load_checkpoint(tmp_path / "m.pt")
    after = model.state_dict()
    expected = _touching(set(before), prefixes)
    # parameters and BN buffers of the trained part move; everything else is bit-identical
    # (frozen BN running statistics included)
    assert _changed(before, after) == expected
    params_trained = {n for n, _ in model.named_parameters()} & expected
    assert result["trainable_params"] == sum(before[n].numel() for n in params_trained)


def test_phases_switch_at_the_declared_epoch(dataset, params_raw, tmp_path):
    strategy = {
        "arch": "cnn3",
        "weights": "none",
        "trainable": "head",
        "optimizer": "sgd",
        "lr": 0.05,
        "epochs": 2,
        "phases": [{"trainable": 1, "lr": 0.01, "epochs": 2}],
    }
    result = run_train(make_params(params_raw, {"partial": strategy}), "partial", dataset, tmp_path)
    rows = read_tsv(tmp_path / "p.tsv")
    assert list(rows[0]) == list(train_stage.PLOT_COLUMNS)
    assert [r["epoch"] for r in rows] == ["1", "2", "3", "4"]
    assert [r["phase"] for r in rows] == ["1", "1", "2", "2"]
    assert [float(r["lr"]) for r in rows] == [0.05, 0.05, 0.01, 0.01]
    head, last = (p["trainable_params"] for p in result["phases"])
    assert result["phases"][0]["trainable_modules"] == ["head"]
    assert result["phases"][1]["trainable_modules"] == ["features.2", "head"]
    assert head < last
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["trainable_params"] == last and metrics["epochs"] == 4
    assert set(metrics) == {
        "best_epoch",
        "best_val_acc",
        "best_val_loss",
        "epochs",
        "trainable_params",
        "total_params",
    }


def test_checkpoint_holds_the_best_epoch_and_reloads_alone(dataset, params_raw, tmp_path):
    params = make_params(
        params_raw,
        {"s": {"arch": "cnn2", "weights": "none", "lr": 0.02, "optimizer": "adam", "epochs": 4}},
        select="val_loss",
    )
    run_train(params, "s", dataset, tmp_path)
    metrics = json.loads((tmp_path / "m.json").read_text())
    rows = read_tsv(tmp_path / "p.tsv")
    best = min(rows, key=lambda r: float(r["val_loss"]))
    assert metrics["best_epoch"] == int(best["epoch"])
    model, ckpt = models.load_checkpoint(tmp_path / "m.pt")
    assert ckpt["best_epoch"] == metrics["best_epoch"] and ckpt["select"] == "val_loss"
    assert ckpt["classes"] == list(CLASSES) and ckpt["arch"] == "cnn2"
    assert ckpt["strategy"]["phases"][0]["lr"] == 0.02
    # the reloaded model reproduces the best epoch's validation numbers on its own
    clean, split = dataset
    t = ckpt["transform"]
    ds = data.ImageDataset(
        clean,
        data.read_rows(split, "val"),
        eval_transform(image_size=t["image_size"], mean=t["mean"], std=t["std"]),
    )
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    y = torch.tensor([ds[i][1] for i in range(len(ds))])
    with torch.no_grad():
        out = model(x)
    assert (out.argmax(1) == y).float().mean().item() == pytest.approx(metrics["best_val_acc"])
    loss = torch.nn.functional.cross_entropy(out, y).item()
    assert loss == pytest.approx(metrics["best_val_loss"], abs=1e-5)


def test_same_seed_gives_byte_identical_outputs_for_any_worker_count(dataset, params_raw, tmp_path):
    # two DataLoader workers: augmentation in worker processes must be seeded too
    strategies = {
        "s": {"arch": "cnn2", "weights": "none", "optimizer": "sgd", "lr": 0.05, "epochs": 2}
    }
    params = make_params(params_raw, strategies, workers=2)
    outs = [tmp_path / "run1", tmp_path / "run2"]
    for out in outs:
        run_train(params, "s", dataset, out)
    for name in ("m.pt", "m.json", "p.tsv"):
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes(), name
    # augmentation is seeded per sample, so the worker count changes speed only
    run_train(make_params(params_raw, strategies, workers=0), "s", dataset, tmp_path / "w0")
    for name in ("m.pt", "m.json", "p.tsv"):
        assert (tmp_path / "w0" / name).read_bytes() == (outs[0] / name).read_bytes(), name
    other = make_params({**params_raw, "seed": 1}, strategies, workers=2)
    run_train(other, "s", dataset, tmp_path / "seed1")
    assert (tmp_path / "seed1" / "m.pt").read_bytes() != (outs[0] / "m.pt").read_bytes()


def shipped_strategies(params_raw: dict) -> dict:
    """params.yaml's strategies as shipped, each phase cut to one epoch."""
    strategies = {}
    for name, strategy in params_raw["strategies"].items():
        phases = [{**phase, "epochs": 1} for phase in strategy.get("phases", [])]
        strategies[name] = {**strategy, "epochs": 1, **({"phases": phases} if phases else {})}
    return strategies


@pytest.mark.parametrize("name", ["scratch", "finetune", "feature_extractor", "partial"])
def test_every_shipped_strategy_trains_and_a_second_run_writes_the_same_bytes(
    name, dataset, params_raw, tmp_path
):
    """The tiny DVC pipeline (tests/test_pipeline.py) runs two of the shipped strategies as stage
    processes, and re-runs them to the same bytes; here every one of them, shrunk, in-process."""
    strategies = shipped_strategies(params_raw)
    assert set(strategies) >= {"scratch", "finetune", "feature_extractor", "partial"}
    params = make_params(params_raw, {name: strategies[name]})
    outs = [tmp_path / "run1", tmp_path / "run2"]
    for out in outs:
        metrics = run_train(params, name, dataset, out)
    assert metrics["epochs"] == 1 + len(strategies[name].get("phases", []))
    for file in ("m.pt", "m.json", "p.tsv"):
        assert (outs[0] / file).read_bytes() == (outs[1] / file).read_bytes(), file


def test_cached_features_train_the_head_and_save_the_full_model(dataset, params_raw, tmp_path):
    params = make_params(
        params_raw,
        {
            "fx": {
                "arch": "efficientnet_lite0",
                "weights": "pretrained",
                "trainable": "head",
                "optimizer": "adam",
                "lr": 0.01,
                "epochs": 3,
                "cache_features": True,
            }
        },
    )
    run_train(params, "fx", dataset, tmp_path)
    before = _initial("efficientnet_lite0", "pretrained")
    model, _ = models.load_checkpoint(tmp_path / "m.pt")
    assert _changed(before, model.state_dict()) == {"classifier.weight", "classifier.bias"}
    # head-on-cached-features numbers == the full saved model run on the val images
    metrics = json.loads((tmp_path / "m.json").read_text())
    clean, split = dataset
    mean, std = models.norm_stats("efficientnet_lite0")
    ds = data.ImageDataset(
        clean, data.read_rows(split, "val"), eval_transform(image_size=32, mean=mean, std=std)
    )
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    y = torch.tensor([ds[i][1] for i in range(len(ds))])
    with torch.no_grad():
        loss = torch.nn.functional.cross_entropy(model(x), y).item()
    assert loss == pytest.approx(metrics["best_val_loss"], abs=1e-4)


PROBE = {
    "arch": "efficientnet_lite0",
    "weights": "pretrained",
    "trainable": "head",
    "optimizer": "adam",
    "lr": 0.01,
    "epochs": 2,
    "cache_features": True,
    "freeze_bn": True,
}
# LP-FT with the linear probe on cached features, then the last block trained on images
LP_FT = {**PROBE, "phases": [{"trainable": 1, "optimizer": "sgd", "lr": 0.01, "epochs": 2}]}


def _scores(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in ("seconds", "images")} for row in history]


def test_a_cached_probe_phase_then_a_block_trained_on_images_resumes_to_the_same_bytes(
    dataset, params_raw, tmp_path, monkeypatch
):
    params = make_params(params_raw, {"probe": PROBE, "lpft": LP_FT})
    probe = run_train(params, "probe", dataset, tmp_path / "probe")
    ref = run_train(params, "lpft", dataset, tmp_path / "ref")
    # phase 1 is the probe on cached features, epoch for epoch; phase 2 trains on images
    assert _scores(ref["history"][:2]) == _scores(probe["history"])
    assert [row["phase"] for row in ref["history"]] == [1, 1, 2, 2]
    assert ref["feature_seconds"] > 0
    model, _ = models.load_checkpoint(tmp_path / "ref" / "m.pt")
    changed = _changed(_initial("efficientnet_lite0", "pretrained"), model.state_dict())
    assert _touching(changed, ["blocks.6"]) and not _touching(changed, ["conv_stem", "blocks.0"])

    # interrupted in the cached phase, then again in the image phase: the last run resumes
    # (features computed anew from the saved weights) and ends with the uninterrupted bytes
    one_epoch = loop._one_epoch
    for stop_at in (2, 4):

        def interrupted(epoch, *args, _stop=stop_at, **kwargs):
            if epoch == _stop:
                raise KeyboardInterrupt
            return one_epoch(epoch, *args, **kwargs)

        monkeypatch.setattr(loop, "_one_epoch", interrupted)
        with pytest.raises(KeyboardInterrupt):
            run_train(params, "lpft", dataset, tmp_path / "run", resume_dir=tmp_path / "resume")
    monkeypatch.setattr(loop, "_one_epoch", one_epoch)
    got = run_train(params, "lpft", dataset, tmp_path / "run", resume_dir=tmp_path / "resume")
    assert got["resumed_at"] == 3
    assert outputs(tmp_path / "run") == outputs(tmp_path / "ref")


def test_patience_ends_a_phase_and_target_acc_ends_the_run(dataset, params_raw, tmp_path):
    # a learning rate too small to change any prediction: val_acc never improves
    frozen = {
        "arch": "cnn1",
        "weights": "none",
        "trainable": "head",
        "lr": 1e-12,
        "epochs": 3,
        "phases": [{"epochs": 3}],
    }
    run_train(make_params(params_raw, {"s": frozen}, patience=1), "s", dataset, tmp_path)
    assert [r["phase"] for r in read_tsv(tmp_path / "p.tsv")] == ["1", "1", "2"]
    learns = {"arch": "cnn2", "weights": "none", "optimizer": "adam", "lr": 0.02, "epochs": 12}
    run_train(make_params(params_raw, {"s": learns}, target_acc=0.6), "s", dataset, tmp_path)
    accs = [float(r["val_acc"]) for r in read_tsv(tmp_path / "p.tsv")]
    assert len(accs) < 12 and accs[-1] >= 0.6 and all(a < 0.6 for a in accs[:-1])
    assert json.loads((tmp_path / "m.json").read_text())["epochs"] == len(accs)


def test_early_stopping_is_on_by_default_and_epochs_are_only_a_cap(dataset, params_raw, tmp_path):
    stalled = {"arch": "cnn1", "weights": "none", "trainable": "head", "lr": 1e-12, "epochs": 40}
    params = make_params(params_raw, {"s": stalled})  # train.patience as shipped
    assert params.train.patience == 4
    run_train(params, "s", dataset, tmp_path)
    assert len(read_tsv(tmp_path / "p.tsv")) == 1 + 4  # the best epoch, then 4 without gain


def test_plateau_schedule_cuts_the_lr_once_val_loss_stops_falling(dataset, params_raw, tmp_path):
    # an lr too small to move the val loss: it never falls, so the lr is cut by gamma after
    # every schedule.patience + 1 epochs without a lower val loss
    stalled = {
        "arch": "cnn1",
        "weights": "none",
        "trainable": "head",
        "lr": 1e-12,
        "schedule": {"name": "plateau", "gamma": 0.5, "patience": 1},
        "epochs": 6,
    }
    run_train(make_params(params_raw, {"s": stalled}, patience=0), "s", dataset, tmp_path)
    lrs = [float(r["lr"]) for r in read_tsv(tmp_path / "p.tsv")]
    assert lrs == pytest.approx([1e-12, 1e-12, 1e-12, 5e-13, 5e-13, 2.5e-13], rel=1e-9)


def test_unknown_strategy_and_arch_fail_before_any_work(params_raw, tmp_path):
    missing = (tmp_path / "no-clean", tmp_path / "no-split")  # never read: checks come first
    params = make_params(params_raw, {"s": {"arch": "resnet19", "weights": "none"}})
    with pytest.raises(ParamsError, match=r"no strategy 'nope'.*\['s'\]"):
        run_train(params, "nope", missing, tmp_path)
    with pytest.raises(StageError, match="unknown arch 'resnet19'.*cnn3"):
        run_train(params, "s", missing, tmp_path)
    assert not list(tmp_path.iterdir())


def test_main_exits_2_with_a_message(params_raw, tmp_path, monkeypatch, capsys):
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params_raw))
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "train",
            "nosuch",
            "--clean",
            "c",
            "--split",
            "s",
            "--model",
            "m.pt",
            "--metrics",
            "m.json",
            "--plots",
            "p.tsv",
            "--params",
            str(params_file),
        ],
    )
    with pytest.raises(SystemExit) as exc:
        run_main(stages_train.main)
    assert exc.value.code == 2
    assert "no strategy 'nosuch'" in capsys.readouterr().err


@pytest.mark.slow
def test_training_under_bf16_autocast_learns_and_is_repeatable(params_raw, dataset, tmp_path):
    """The GPU code path (autocast, scaler, channels_last) end to end on CPU."""
    strategy = {
        "s": {"arch": "cnn1", "weights": "none", "optimizer": "adam", "lr": 0.01, "epochs": 4}
    }
    params = make_params(params_raw, strategy, runtime={"precision": "bf16"})
    first = run_train(params, "s", dataset, tmp_path / "a")
    run_train(params, "s", dataset, tmp_path / "b")
    assert (tmp_path / "a" / "m.pt").read_bytes() == (tmp_path / "b" / "m.pt").read_bytes()
    assert first["best_val_acc"] > 1 / 3  # better than chance on 3 colour classes
    ckpt = torch.load(tmp_path / "a" / "m.pt", weights_only=True)
    assert ckpt["strategy"]["runtime"]["precision"] == "bf16"
    assert all(
        t.dtype == torch.float32 for t in ckpt["state_dict"].values() if t.is_floating_point()
    )  # autocast never leaks into the saved weights


# ---- resuming after an interruption -----------------------------------------------------------

PHASED = {
    "s": {
        "arch": "cnn2",
        "weights": "none",
        "trainable": "head",
        "optimizer": "sgd",
        "lr": 0.05,
        "momentum": 0.9,
        "schedule": {"name": "none"},
        "epochs": 3,
        "phases": [
            {
                "trainable": "all",
                "optimizer": "adam",
                "lr": 0.003,
                "schedule": {"name": "plateau", "gamma": 0.5, "patience": 0},
                "epochs": 6,
            }
        ],
    }
}  # the plateau schedule's state is resumed too


def outputs(out: Path) -> dict[str, bytes]:
    return {name: (out / name).read_bytes() for name in ("m.pt", "m.json", "p.tsv")}


def train_cmd(params_path: Path, dataset, out: Path, resume: Path) -> list[str]:
    clean, split = dataset
    return [
        sys.executable,
        "-m",
        "stages.train",
        "s",
        "--clean",
        str(clean),
        "--split",
        str(split),
        "--model",
        str(out / "m.pt"),
        "--metrics",
        str(out / "m.json"),
        "--plots",
        str(out / "p.tsv"),
        "--params",
        str(params_path),
        "--resume",
        str(resume),
    ]


def saved_epochs(path: Path) -> int:
    try:
        return len(torch.load(path, weights_only=True)["history"])
    except Exception:  # not written yet, or being replaced this instant
        return 0


@pytest.mark.slow
def test_kill_9_mid_epoch_then_rerun_resumes_to_the_same_bytes(params_raw, tmp_path):
    """Killed inside phase 1, re-run, that run killed inside phase 2, re-run: the last run
    resumes from the state the second one left and writes what an uninterrupted run writes."""
    import signal
    import subprocess
    import time

    from helpers import ROOT

    dataset = make_clean_split(tmp_path / "data", per_class=40, val_per_class=10, size=48)
    params = make_params(params_raw, PHASED, image_size=48, patience=0)  # all 9 epochs
    params_path = tmp_path / "params.yaml"
    params_path.write_text(yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False))
    reference = run_train(params, "s", dataset, tmp_path / "ref")  # never interrupted
    assert len(reference["history"]) == 9
    epoch_secs = sorted(row["seconds"] for row in reference["history"])[4]

    out, resume = tmp_path / "out", tmp_path / "resume"
    for kill_after in (2, 5):  # inside phase 1, inside phase 2
        proc = subprocess.Popen(
            train_cmd(params_path, dataset, out, resume), cwd=ROOT, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 120
        while saved_epochs(resume / "seed0.pt") < kill_after and proc.poll() is None:
            assert time.monotonic() < deadline, "no resume state was written"
            time.sleep(0.01)
        time.sleep(epoch_secs / 2)  # into the next epoch
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert not (out / "m.pt").exists(), "killed too late: the run had finished"

    again = subprocess.run(
        train_cmd(params_path, dataset, out, resume), cwd=ROOT, capture_output=True, text=True
    )
    assert again.returncode == 0, again.stderr
    (line,) = [x for x in again.stderr.splitlines() if x.startswith("resuming after epoch")]
    assert int(line.split()[3]) >= 5
    assert outputs(out) == outputs(tmp_path / "ref")
    assert not (resume / "seed0.pt").exists(), "the resume state is removed at the end"


def test_state_of_other_params_is_discarded_and_resume_can_be_off(params_raw, dataset, tmp_path):
    strategy = {
        "s": {"arch": "cnn1", "weights": "none", "optimizer": "adam", "lr": 0.01, "epochs": 2}
    }
    params = make_params(params_raw, strategy)
    clean, split = dataset
    resume = tmp_path / "resume"
    kw = dict(
        clean_dir=clean,
        split_dir=split,
        metrics_path=tmp_path / "m.json",
        plots_path=tmp_path / "p.tsv",
        resume_dir=resume,
    )
    # a finished run of another lr left its state behind (as if killed before the outputs)
    other = make_params(params_raw, {"s": {**strategy["s"], "lr": 0.02}})
    fp_other = train_stage._fingerprint(
        other, "s", CLASSES, {s: data.read_rows(split, s) for s in ("train", "val")}, clean
    )
    stale = {"fingerprint": fp_other, "history": [{"epoch": 1}] * 2}
    resume.mkdir()
    torch.save(stale, resume / "seed0.pt")
    got = train_stage.train("s", params, model_path=tmp_path / "a" / "m.pt", **kw)
    assert got["resumed_at"] == 0 and len(got["history"]) == 2
    train_stage.train("s", params, model_path=tmp_path / "b" / "m.pt", **{**kw, "resume_dir": None})
    # torch.save records the file name: same name in other folders for comparable bytes
    assert (tmp_path / "a/m.pt").read_bytes() == (tmp_path / "b/m.pt").read_bytes()
    assert not (resume / "seed0.pt").exists()

    off = make_params(params_raw, strategy, resume=False)
    train_stage.train("s", off, model_path=tmp_path / "c" / "m.pt", **kw)
    assert not resume.exists() or not any(resume.iterdir())
    assert (tmp_path / "c/m.pt").read_bytes() == (tmp_path / "b/m.pt").read_bytes()


@pytest.mark.parametrize("cache", [True, False])
def test_a_richer_head_trains_alone_and_is_saved_with_the_clean_settings(
    dataset, params_raw, tmp_path, cache
):
    head = {"hidden": [8], "dropout": 0.5}
    params = make_params(
        params_raw,
        {
            "h": {
                "arch": "cnn3",
                "weights": "none",
                "trainable": "head",
                "optimizer": "adam",
                "lr": 0.01,
                "epochs": 2,
                "cache_features": cache,
                "head": head,
            }
        },
    )
    run_train(params, "h", dataset, tmp_path)
    model, ckpt = models.load_checkpoint(tmp_path / "m.pt")
    assert ckpt["head"] == head and isinstance(model.head, models.Head)
    assert ckpt["clean"] == params.clean.model_dump(exclude={"workers"})
    torch.manual_seed(params.seed)
    before = models.build("cnn3", len(CLASSES), "none", head).state_dict()
    changed = _changed(before, model.state_dict())
    assert changed == {f"head.{n}" for n in ("1.weight", "1.bias", "4.weight", "4.bias")}
    assert json.loads((tmp_path / "m.json").read_text())["trainable_params"] == sum(
        p.numel() for p in model.head.parameters()
    )


def _stage(params, dataset, out: Path, capsys, model: Path | None = None) -> tuple[int, str]:
    """The train stage's entry point, as `python -m stages.train` runs it (run_main), on
    `params` written to a file: (exit status, stderr)."""
    path = out / "params.yaml"
    path.write_text(yaml.safe_dump(params.model_dump(mode="json")))
    args = train_cmd(path, dataset, out, out / "resume")[3:]
    if model is not None:
        args[args.index("--model") + 1] = str(model)
    with pytest.raises(SystemExit) as exc:
        run_main(lambda: stages_train.main(args))
    return exc.value.code, capsys.readouterr().err


def test_a_diverging_run_stops_naming_the_strategy_and_epoch_and_writes_nothing(
    params_raw, dataset, tmp_path, capsys
):
    strategy = {"s": {"arch": "cnn1", "weights": "none", "lr": 1e30, "epochs": 3}}
    code, err = _stage(make_params(params_raw, strategy), dataset, tmp_path, capsys)
    assert code == 2, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: strategy s: training diverged: the train loss is "), err
    assert "in epoch 1 (phase 1, lr 1e+30); nothing was written; lower the lr" in last
    assert not any((tmp_path / name).exists() for name in ("m.pt", "m.json", "p.tsv"))


def test_a_full_disk_while_saving_the_checkpoint_is_one_line(
    params_raw, dataset, tmp_path, capsys, mounts
):
    small = mounts.tmpfs(tmp_path / "small", "32k")  # the checkpoint is about 100 KB
    (small / "m.pt").write_bytes(b"previous checkpoint\n")
    strategy = {"s": {"arch": "cnn2", "weights": "none", "lr": 0.01, "epochs": 1}}
    code, err = _stage(
        make_params(params_raw, strategy), dataset, tmp_path, capsys, model=small / "m.pt"
    )
    assert code == 2, err
    assert err.strip().splitlines()[-1] == (
        f"error: cannot write in {small}: No space left on device; free some space there "
        "(or point the output elsewhere) and re-run"
    ), err
    assert sorted(p.name for p in small.iterdir()) == ["m.pt"]  # no temporary left
    assert (small / "m.pt").read_bytes() == b"previous checkpoint\n"
