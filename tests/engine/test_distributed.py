"""Training as several processes (DistributedDataParallel under torchrun's launcher, gloo on
CPU): the ranks' shares add up to the one-process batches, two processes give the one-process
results (exactly where batch statistics play no part, within a stated tolerance where they
do), and a crash of one rank ends the run with a clear error and leaves earlier outputs alone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from transferline.config.params import load, validate
from transferline.data import datasets as data

from helpers import ROOT, make_image_folder, run_train

HERE = Path(__file__).resolve().parent  # ddp_ranks.py, what torchrun's ranks run

CLASSES = ("a", "b", "c")


def test_rank_shares_add_up_to_the_one_process_batches():
    def draws(rank, world, pad):
        gen = torch.Generator().manual_seed(7)
        sampler = data.SeededSampler(
            10, shuffle=True, generator=gen, rank=rank, world=world, pad=pad
        )
        return list(sampler), len(sampler)

    (single, _), batch = draws(0, 1, False), 4
    shares = [draws(r, 2, True) for r in range(2)]
    assert [n for _, n in shares] == [5, 5]
    for b in range(2):  # global batch b = rank 0's and rank 1's local batch b (2 each)
        local = [s[b * 2 : (b + 1) * 2] for s, _ in shares]
        assert sorted(local[0] + local[1]) == sorted(single[b * batch : (b + 1) * batch])
    unpadded = [draws(r, 3, False)[0] for r in range(3)]
    assert sorted(x for s in unpadded for x in s) == sorted(single)  # val: each sample once


def make_data(root: Path) -> tuple[Path, Path]:
    clean, split = root / "clean", root / "split"
    make_image_folder(clean / "images", classes=CLASSES, per_class=14, size=40)
    split.mkdir(parents=True)
    (split / "classes.json").write_text(json.dumps({"classes": list(CLASSES)}))
    for name, ids in (("train", range(4, 14)), ("val", range(4))):
        lines = ["path,label,class"] + [
            f"images/{c}/{i}.jpg,{k},{c}" for k, c in enumerate(CLASSES) for i in ids
        ]
        (split / f"{name}.csv").write_text("\n".join(lines) + "\n")
    return clean, split


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("ddp"))


STRATEGIES = {  # name -> (strategy, how close two processes must come to one)
    # frozen backbone (BN on running statistics): DDP's averaged gradient is the one-process
    # gradient, so only float summation order differs
    "head": (
        {
            "arch": "cnn2",
            "weights": "none",
            "trainable": "head",
            "optimizer": "sgd",
            "lr": 0.1,
            "momentum": 0.9,
            "epochs": 3,
        },
        1e-4,
    ),
    # features computed in shares and gathered; the head then trains on all of them
    "cached": (
        {
            "arch": "cnn2",
            "weights": "none",
            "trainable": "head",
            "optimizer": "adam",
            "lr": 0.01,
            "epochs": 3,
            "cache_features": True,
        },
        1e-4,
    ),
    # LP-FT: the probe on features gathered from shares, then every weight on image shares
    # with batch norm on its running statistics (so the averaged gradient is one process's)
    "lpft": (
        {
            "arch": "cnn2",
            "weights": "none",
            "trainable": "head",
            "optimizer": "adam",
            "lr": 0.01,
            "epochs": 2,
            "cache_features": True,
            "freeze_bn": True,
            "phases": [{"trainable": "all", "lr": 0.003, "epochs": 1}],
        },
        1e-3,
    ),
    # everything trains: BatchNorm normalises over each process's half batch, so results move
    # a little (measured here with global batch 16, 8 per process: training loss by up to
    # 0.13, training accuracy 0.17, val loss 0.04, val accuracy not at all; with batch 8 the
    # strided-stem CNN's 4-image BatchNorm batches moved training loss by 0.36)
    "all": (
        {
            "arch": "cnn2",
            "weights": "none",
            "trainable": "all",
            "optimizer": "adam",
            "lr": 0.003,
            "epochs": 3,
        },
        0.2,
    ),
}


def params_file(params_raw, tmp_path: Path, nproc: int) -> Path:
    raw = dict(params_raw)
    raw.update(threads=2, strategies={k: v for k, (v, _) in STRATEGIES.items()})
    raw["train"] = {
        **raw["train"],
        "image_size": 32,
        "batch_size": 16,
        "workers": 0,
        "nproc": nproc,
    }
    raw["runtime"] = {**raw.get("runtime", {}), "device": "cpu"}
    validate(raw)
    path = tmp_path / f"params-{nproc}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def train_cmd(name: str, params: Path, dataset, out: Path, **extra) -> list[str]:
    clean, split = dataset
    cmd = [
        sys.executable,
        "-m",
        "stages.train",
        name,
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
        str(params),
    ]
    return cmd + [a for k, v in extra.items() for a in (f"--{k}", str(v))]


def curves(out: Path) -> list[dict]:
    lines = (out / "p.tsv").read_text().splitlines()
    head = lines[0].split("\t")
    return [dict(zip(head, map(float, line.split("\t")))) for line in lines[1:]]


@pytest.mark.slow
def test_two_processes_match_one(params_raw, dataset, tmp_path):
    """Each strategy trained by one process (the stage's own function, here) and by two (the
    train stage's `main` in each of torchrun's ranks, started by the launcher the stage uses:
    one launch for the four runs, tests/engine/ddp_ranks.py)."""
    launch = (
        "import sys; from transferline.engine import distributed; "
        "distributed.launch(2, 'ddp_ranks', sys.argv[1:])"
    )
    two = params_file(params_raw, tmp_path, 2)
    stage_args = [train_cmd(name, two, dataset, tmp_path / "n2" / name)[3:] for name in STRATEGIES]
    proc = subprocess.run(
        [sys.executable, "-c", launch, json.dumps(stage_args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(HERE)])},
    )
    assert proc.returncode == 0, proc.stderr
    one = load(params_file(params_raw, tmp_path, 1))
    for name, (_, tolerance) in STRATEGIES.items():
        run_train(one, name, dataset, tmp_path / "n1" / name)
        runs = {n: curves(tmp_path / f"n{n}" / name) for n in (1, 2)}
        assert len(runs[1]) == len(runs[2]) == 3, name
        for a, b in zip(runs[1], runs[2]):
            for key in ("train_loss", "val_loss", "val_acc", "train_acc"):
                assert abs(a[key] - b[key]) <= tolerance, (name, key, a, b)
        if name == "all":  # the tolerance is not vacuous: the curves do move
            assert any(a["train_loss"] != b["train_loss"] for a, b in zip(*runs.values()))


def rank_pid(parent: int, rank: int) -> int | None:
    """The pid of the process torchrun started as `rank` (its RANK variable), if running."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = (entry / "environ").read_bytes().split(b"\0")
            status = (entry / "status").read_text()
        except OSError:
            continue
        if (
            f"RANK={rank}".encode() in env
            and b"LOCAL_WORLD_SIZE=2" in env
            and f"PPid:\t{parent}\n" in status
        ):
            return int(entry.name)
    return None


@pytest.mark.slow
def test_a_crashed_rank_ends_the_run_and_keeps_the_previous_outputs(params_raw, dataset, tmp_path):
    params = params_file(params_raw, tmp_path, 2)
    raw = yaml.safe_load(params.read_text())
    # nothing may end the run before the kill: a cap far away, early stopping off
    raw["strategies"]["all"]["epochs"] = 1000
    raw["train"].update(patience=0, target_acc=1.0)
    params.write_text(yaml.safe_dump(raw, sort_keys=False))
    out = tmp_path / "out"
    out.mkdir()
    previous = {f: f"previous {f}\n".encode() for f in ("m.pt", "m.json", "p.tsv")}
    for f, content in previous.items():
        (out / f).write_bytes(content)
    proc = subprocess.Popen(
        train_cmd("all", params, dataset, out), cwd=ROOT, stderr=subprocess.PIPE, text=True
    )
    # Wait for an event, not a number of seconds: the first finished epoch's log line proves
    # both ranks are inside training (rank 0 logs after the epoch's all-reduce).
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if "(phase 1)" in line and "train loss" in line:
            break
    else:
        pytest.fail("the run ended before its first epoch:\n" + "".join(lines))
    victim = rank_pid(proc.pid, 1)  # torchrun's agent runs in this process, ranks are children
    assert victim is not None, "rank 1 is not running after the first epoch"
    os.kill(victim, signal.SIGKILL)
    _, rest = proc.communicate(timeout=300)
    stderr = "".join(lines) + rest
    assert proc.returncode == 2, stderr
    assert "rank 1 (exit code -9) of 2 processes failed" in stderr
    assert "Traceback" not in stderr.split("error:")[-1]
    assert {f: (out / f).read_bytes() for f in previous} == previous
