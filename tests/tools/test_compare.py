"""transferline/tools/compare.py: `dvc metrics diff --json` regrouped into one markdown table per
headline metric with every strategy side by side."""

from __future__ import annotations

from transferline.tools.compare import change, group_by_strategy, main, render

DIFF = {  # the shape of `dvc metrics diff BASE --all --json`
    "metrics/eval/finetune.json": {
        "accuracy": {"old": 0.69, "new": 0.75, "diff": 0.06},
        "tta.accuracy": {"old": 0.8, "new": 0.8, "diff": 0.0},
    },
    "metrics/eval/scratch.json": {
        "accuracy": {"old": 0.39, "new": None},  # file missing on the new side
    },
    "metrics/train/finetune.json": {"best_val_acc": {"old": 0.7, "new": 0.8}},
    "metrics/clean.json": {"kept": {"old": 480, "new": 480}},
}


def test_only_the_evaluation_files_are_grouped_by_strategy():
    assert list(group_by_strategy(DIFF)) == ["finetune", "scratch"]


def test_render_gives_one_table_per_metric_with_every_strategy():
    text = render(DIFF, "main", "my-branch")
    assert text.startswith("## Metrics: my-branch vs main\n")
    accuracy = text.split("**accuracy**")[1].split("**")[0]
    assert "| strategy | main | my-branch | change |" in accuracy
    assert "| finetune | 0.6900 | 0.7500 | +0.0600 |" in accuracy
    assert "| scratch | 0.3900 | - | - |" in accuracy  # one side missing shows, not hides
    assert "| finetune | 0.8000 | 0.8000 | 0 |" in text.split("**tta.accuracy**")[1]
    assert "macro_f1" not in text  # no table for a metric no strategy has


def test_no_evaluation_change_says_so():
    assert "No evaluation metrics changed." in render({}, "main")


def test_change_is_signed_and_blank_for_non_numbers():
    assert change(0.5, 0.25) == "-0.2500"
    assert change(None, 0.25) == change("a", "b") == "-"


def test_main_outside_a_dvc_repo_exits_2_naming_the_revision(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["no-such-rev"]) == 2
    assert "dvc metrics diff no-such-rev failed" in capsys.readouterr().err
