"""Many variants at once through DVC's own experiment queue (`dvc exp run --queue`,
`dvc queue start --jobs 2`), each pinned to its share of the cores, on the tiny demo.

The baseline is a copy of the built pipeline (conftest's `built_pipeline`); the variants run up
to one strategy's training (`train@<strategy>` as the target; README's example goes on to its
evaluation): what comes after adds nothing to what is tested here and would double its time."""

import json
import time

import pytest

from helpers import DVC, copy_of, run

pytestmark = pytest.mark.slow

TARGET = "train@feature_extractor"


def queue_rows(repo) -> dict[str, str]:
    lines = run(DVC + ["queue", "status"], repo).stdout.splitlines()
    return {
        cols[1]: cols[-1]
        for cols in (line.split() for line in lines)
        if len(cols) >= 4 and cols[1] in ("q1", "q2")
    }


def ended(repo, names) -> bool:
    refs = run(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], repo).stdout.split()
    failed = "refs/exps/celery/failed" in refs
    return failed or all(any(ref.endswith(f"/{name}") for ref in refs) for name in names)


def test_queued_experiments_run_two_at_a_time_with_their_own_threads(built_pipeline, tmp_path):
    repo = copy_of(built_pipeline, tmp_path / "repo")
    for name, lr in (("q1", "0.002"), ("q2", "0.004")):
        run(
            DVC
            + [
                "exp",
                "run",
                "--queue",
                "-n",
                name,
                "-S",
                "threads=1",
                "-S",
                f"strategies.feature_extractor.lr={lr}",
                TARGET,
            ],
            repo,
        )
    run(DVC + ["queue", "start", "--jobs", "2"], repo)
    # wait for the event, cheaply: each experiment's git ref (or the queue's stash of failed
    # ones) appears when it ends; `dvc queue status` (a DVC process) only confirms it
    deadline = time.monotonic() + 600
    while not ended(repo, ("q1", "q2")):
        assert time.monotonic() < deadline, queue_rows(repo)
        time.sleep(0.2)
    while set((rows := queue_rows(repo)).values()) - {"Success", "Failed"}:
        assert time.monotonic() < deadline, rows
        time.sleep(0.2)
    assert rows == {"q1": "Success", "q2": "Success"}, run(
        DVC + ["queue", "logs", "q1"], repo, check=False
    ).stdout
    shown = json.loads(run(DVC + ["exp", "show", "--json"], repo).stdout)
    exps = {
        e["name"]: e["data"]
        for rev in shown
        for group in rev.get("experiments") or []
        for e in group["revs"]
    }
    for name, lr in (("q1", 0.002), ("q2", 0.004)):
        params = exps[name]["params"]["params.yaml"]["data"]
        assert params["threads"] == 1
        assert params["strategies"]["feature_extractor"]["lr"] == lr
        trained = exps[name]["metrics"]["metrics/train/feature_extractor.json"]["data"]
        assert 0 <= trained["best_val_acc"] <= 1
    run(DVC + ["queue", "stop"], repo, check=False)  # no worker left behind
