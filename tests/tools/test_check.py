"""transferline/tools/check.py on a small real git + DVC repo: an honest revision reproduces (exit
0); a hand-altered metric, a metrics file missing from the commit, or non-deterministic data output
each fail (exit 1) and are named in the table."""

import json
import os
import sys

import pytest
import yaml

from helpers import DVC, ROOT, run

MAKE_DATA = """import random, sys
random.seed(None if len(sys.argv) > 1 else 0)
open("data.txt", "w").write(str(random.random()))
"""
SCORE = """import json, os
os.makedirs("metrics", exist_ok=True)
json.dump({"accuracy": 0.9, "log_loss": 0.3, "best_epoch": 3},
          open("metrics/score.json", "w"))
"""


def toy_repo(path, params_raw, nondeterministic=False, counts=None):
    path.mkdir()
    (path / "make_data.py").write_text(MAKE_DATA)
    if counts is not None:  # the split's image counts the tolerances are derived from
        (path / "metrics").mkdir()
        (path / "metrics" / "split.json").write_text(json.dumps(counts))
    (path / "score.py").write_text(SCORE)
    params_raw["check"]["data_stages"] = ["prepare"]
    (path / "params.yaml").write_text(yaml.safe_dump(params_raw))
    flag = " random" if nondeterministic else ""
    (path / "dvc.yaml").write_text(
        yaml.safe_dump(
            {
                "stages": {
                    "prepare": {
                        "cmd": f"python make_data.py{flag}",
                        "deps": ["make_data.py"],
                        "outs": ["data.txt"],
                    },
                    "score": {
                        "cmd": "python score.py",
                        "deps": ["data.txt", "score.py"],
                        "metrics": [{"metrics/score.json": {"cache": False}}],
                    },
                }
            }
        )
    )
    for cmd in (
        ["git", "init", "-q", "-b", "main"],
        ["git", "config", "user.email", "t@e"],
        ["git", "config", "user.name", "t"],
        DVC + ["init", "-q"],
    ):
        run(cmd, path)
    run(DVC + ["repro", "-q"], path)
    run(["git", "add", "-A"], path)
    run(["git", "commit", "-q", "-m", "results"], path)
    return path


def check(repo):
    env = dict(
        os.environ,
        PYTHONPATH=str(ROOT),
        PATH=f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}",
    )
    return run([sys.executable, "-m", "transferline.tools.check"], repo, check=False, env=env)


@pytest.mark.slow
def test_honest_revision_reproduces(tmp_path, params_raw):
    proc = check(toy_repo(tmp_path / "repo", params_raw))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "metrics/score.json:accuracy" in proc.stdout
    assert "prepare:data.txt" in proc.stdout
    assert "best_epoch" not in proc.stdout  # ignored by the shipped params
    assert "DRIFT" not in proc.stdout and "MISSING" not in proc.stdout


@pytest.mark.slow
def test_altered_metric_is_named(tmp_path, params_raw):
    repo = toy_repo(tmp_path / "repo", params_raw)
    (repo / "metrics/score.json").write_text('{"accuracy": 0.95, "log_loss": 0.3}')
    run(["git", "commit", "-qam", "better numbers"], repo)
    proc = check(repo)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    (line,) = [
        row for row in proc.stdout.splitlines() if row.startswith("metrics/score.json:accuracy")
    ]
    assert line.split()[1:] == ["0.95", "0.9", "0.02", "DRIFT"]
    assert "drifted: metrics/score.json:accuracy" in proc.stdout


@pytest.mark.slow
def test_metrics_file_missing_from_commit_is_drift(tmp_path, params_raw):
    repo = toy_repo(tmp_path / "repo", params_raw)
    run(["git", "rm", "-q", "--cached", "metrics/score.json"], repo)
    run(["git", "commit", "-qm", "forgot the metrics"], repo)
    proc = check(repo)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "MISSING" in proc.stdout and "metrics/score.json:accuracy" in proc.stdout


@pytest.mark.slow
def test_nondeterministic_data_stage_is_drift(tmp_path, params_raw):
    proc = check(toy_repo(tmp_path / "repo", params_raw, nondeterministic=True))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    (line,) = [row for row in proc.stdout.splitlines() if row.startswith("prepare:data.txt")]
    assert line.endswith("DRIFT")


# ---- tolerances stated in images --------------------------------------------------------------


def shipped_check():
    from transferline.config.params import load

    return load(ROOT / "params.yaml").check


COUNTS = {
    "test": {"total": 72, "classes": {"a": 24, "b": 24, "c": 24}},
    "val": {"total": 30, "classes": {"a": 10, "b": 10, "c": 10}},
}


def test_scores_move_by_the_stated_number_of_images():
    from transferline.tools.check import split_counts, tolerance_for

    check, counts = shipped_check(), split_counts(COUNTS)
    k = check.images
    assert k >= 1
    assert tolerance_for("metrics/eval/finetune.json:accuracy", check, counts) == round(k / 72, 6)
    assert tolerance_for("metrics/eval/finetune.json:tta.accuracy", check, counts) == round(
        k / 72, 6
    )
    assert tolerance_for("metrics/eval/finetune.json:balanced_accuracy", check, counts) == round(
        k / (3 * 24), 6
    )
    assert tolerance_for("metrics/eval/finetune.json:macro_f1", check, counts) == round(
        4 * k / (3 * 24), 6
    )
    assert tolerance_for("metrics/train/finetune.json:best_val_acc", check, counts) == round(
        k / 30, 6
    )
    assert tolerance_for("metrics/best.json:candidates.partial.val_acc", check, counts) == round(
        k / 30, 6
    )
    assert tolerance_for("metrics/best.json:test.accuracy", check, counts) == round(k / 72, 6)
    # not counted on images: their own absolute tolerances, or not compared
    assert tolerance_for("metrics/eval/finetune.json:log_loss", check, counts) == 0.15
    assert tolerance_for("metrics/split.json:test.total", check, counts) == 0
    assert tolerance_for("metrics/train/finetune.json:trainable_params", check, counts) == 0
    assert tolerance_for("metrics/train/finetune.json:best_epoch", check, counts) is None


def test_macro_f1_bound_holds_for_every_single_flip():
    """The bound is a bound: flipping any one prediction of a real labelling never moves macro
    F1 by more than one image's worth (4 / (C * n_min))."""
    import numpy as np
    from sklearn.metrics import f1_score

    from transferline.tools.check import Counts

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), [5, 8, 11])
    counts = Counts(len(labels), {str(c): int((labels == c).sum()) for c in range(3)})
    one_image = 4 / (3 * counts.smallest)
    for _ in range(20):
        preds = np.where(rng.random(len(labels)) < 0.7, labels, rng.integers(0, 3, len(labels)))
        base = f1_score(labels, preds, average="macro", zero_division=0)
        for i in range(len(labels)):
            for new in range(3):
                flipped = preds.copy()
                flipped[i] = new
                moved = abs(f1_score(labels, flipped, average="macro", zero_division=0) - base)
                assert moved <= one_image + 1e-12


@pytest.mark.slow
def test_a_change_of_one_image_more_than_stated_is_drift(tmp_path, params_raw):
    """The toy repo scores 0.9 on a 10-image test split: `images` k allows k/10 either way."""
    k = params_raw["check"]["images"]
    params_raw["check"]["counted_on"] = {"metrics/score.json:*": "test"}
    repo = toy_repo(
        tmp_path / "repo", params_raw, counts={"test": {"total": 10, "classes": {"x": 5, "y": 5}}}
    )
    (repo / "metrics/score.json").write_text(
        json.dumps({"accuracy": round(0.9 - (k + 1) / 10, 6), "log_loss": 0.3})
    )
    run(["git", "commit", "-qam", "worse by k + 1 images"], repo)
    proc = check(repo)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    (line,) = [
        row for row in proc.stdout.splitlines() if row.startswith("metrics/score.json:accuracy")
    ]
    assert line.split()[-2:] == [f"{k / 10:.6g}", "DRIFT"]
