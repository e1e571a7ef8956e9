"""Many variants at once through DVC's own experiment queue (`dvc exp run --queue`,
`dvc queue start --jobs 2`), each pinned to its share of the cores, on the tiny demo.

The baseline is a copy of the built pipeline (conftest's `built_pipeline`); each variant runs only
as far as the stage it is about (a stage name as the target, as README's example does):

- q1 is finetune's training and scores with one thread instead of the baseline's two: other
  kernels, other rounding, what another CPU does. Its results must pass `make check`'s
  comparison with the stated tolerances, and the same results with the test accuracy moved by
  one image more than stated must not. finetune stands for every strategy: it trains the most
  weights through two phases (the results that move most on another CPU).
- q2 tries another rate for the head on cached features, up to its training."""

import json
import time

import pytest
import yaml

from helpers import DVC, copy_of, run

pytestmark = pytest.mark.slow

VARIANTS = {  # name -> (-S settings, target)
    "q1": (["threads=1"], "evaluate@finetune"),
    "q2": (["threads=1", "strategies.feature_extractor.lr=0.004"], "train@feature_extractor"),
}


def queue_rows(repo) -> dict[str, str]:
    lines = run(DVC + ["queue", "status"], repo).stdout.splitlines()
    return {
        cols[1]: cols[-1]
        for cols in (line.split() for line in lines)
        if len(cols) >= 4 and cols[1] in VARIANTS
    }


def outcome(repo) -> str | None:
    """ "failed" once the queue stashes a failed experiment, "done" once every variant's git ref
    exists (it appears when the experiment succeeds), else None (still running)."""
    refs = run(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], repo).stdout.split()
    if "refs/exps/celery/failed" in refs:
        return "failed"
    return "done" if all(any(r.endswith(f"/{n}") for r in refs) for n in VARIANTS) else None


def test_queued_experiments_run_two_at_a_time_with_their_own_threads(built_pipeline, tmp_path):
    from transferline.config.params import validate
    from transferline.tools.check import DRIFT, OK, compare_metrics, split_counts

    repo = copy_of(built_pipeline, tmp_path / "repo")
    for name, (settings, target) in VARIANTS.items():
        sets = [arg for setting in settings for arg in ("-S", setting)]
        run(DVC + ["exp", "run", "--queue", "-n", name, *sets, target], repo)
    run(DVC + ["queue", "start", "--jobs", "2"], repo)
    try:
        # wait for the event, cheaply (git, not a DVC process each time)
        deadline = time.monotonic() + 600
        while (state := outcome(repo)) is None:
            assert time.monotonic() < deadline, queue_rows(repo)
            time.sleep(0.2)
        assert state == "done", (
            queue_rows(repo),
            [run(DVC + ["queue", "logs", n], repo, check=False).stdout for n in VARIANTS],
        )
        shown = json.loads(run(DVC + ["exp", "show", "--json"], repo).stdout)
        diff = json.loads(run(DVC + ["exp", "diff", "HEAD", "q1", "--all", "--json"], repo).stdout)
    finally:
        run(DVC + ["queue", "stop"], repo, check=False)  # no worker left behind

    exps = {
        e["name"]: e["data"]
        for rev in shown
        for group in rev.get("experiments") or []
        for e in group["revs"]
    }
    assert {name: exps[name]["params"]["params.yaml"]["data"]["threads"] for name in VARIANTS} == {
        "q1": 1,
        "q2": 1,
    }
    q2 = exps["q2"]
    assert q2["params"]["params.yaml"]["data"]["strategies"]["feature_extractor"]["lr"] == 0.004
    trained = q2["metrics"]["metrics/train/feature_extractor.json"]["data"]
    assert 0 <= trained["best_val_acc"] <= 1

    # q1: one thread against the baseline's two, judged as `make check` judges another CPU
    diff = {path: keys for path, keys in diff["metrics"].items() if path.endswith("/finetune.json")}
    assert set(diff) == {"metrics/train/finetune.json", "metrics/eval/finetune.json"}
    check = validate(yaml.safe_load((repo / "params.yaml").read_text())).check
    counts = split_counts(json.loads((repo / "metrics/split.json").read_text()))
    rows = compare_metrics(diff, check, counts)
    assert rows and all(r.verdict == OK for r in rows), [r for r in rows if r.verdict != OK]
    moved = [r for r in rows if r.committed != r.reproduced]
    assert moved, "one thread rounds differently: some metric must move (else nothing is shown)"

    accuracy = diff["metrics/eval/finetune.json"]["accuracy"]
    accuracy["new"] = accuracy["old"] + (check.images + 1) / counts["test"].total
    (row,) = [
        r
        for r in compare_metrics(diff, check, counts)
        if r.metric == "metrics/eval/finetune.json:accuracy"
    ]
    assert row.verdict == DRIFT
