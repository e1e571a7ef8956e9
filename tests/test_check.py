"""tools/check.py on a small real git + DVC repo: an honest revision reproduces (exit 0); a
hand-altered metric, a metrics file missing from the commit, or non-deterministic data output
each fail (exit 1) and are named in the table."""
import os
import sys

import pytest
import yaml

from conftest import DVC, ROOT, run

MAKE_DATA = """import random, sys
random.seed(None if len(sys.argv) > 1 else 0)
open("data.txt", "w").write(str(random.random()))
"""
SCORE = """import json, os
os.makedirs("metrics", exist_ok=True)
json.dump({"accuracy": 0.9, "log_loss": 0.3, "best_epoch": 3},
          open("metrics/score.json", "w"))
"""


def toy_repo(path, params_raw, nondeterministic=False):
    path.mkdir()
    (path / "make_data.py").write_text(MAKE_DATA)
    (path / "score.py").write_text(SCORE)
    params_raw["check"]["data_stages"] = ["prepare"]
    (path / "params.yaml").write_text(yaml.safe_dump(params_raw))
    flag = " random" if nondeterministic else ""
    (path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {
        "prepare": {"cmd": f"python make_data.py{flag}", "deps": ["make_data.py"],
                    "outs": ["data.txt"]},
        "score": {"cmd": "python score.py", "deps": ["data.txt", "score.py"],
                  "metrics": [{"metrics/score.json": {"cache": False}}]}}}))
    for cmd in (["git", "init", "-q", "-b", "main"], ["git", "config", "user.email", "t@e"],
                ["git", "config", "user.name", "t"], DVC + ["init", "-q"]):
        run(cmd, path)
    run(DVC + ["repro", "-q"], path)
    run(["git", "add", "-A"], path)
    run(["git", "commit", "-q", "-m", "results"], path)
    return path


def check(repo):
    env = dict(os.environ, PYTHONPATH=str(ROOT),
               PATH=f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}")
    return run([sys.executable, "-m", "tools.check"], repo, check=False, env=env)


@pytest.mark.slow
def test_honest_revision_reproduces(tmp_path, params_raw):
    proc = check(toy_repo(tmp_path / "repo", params_raw))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "metrics/score.json:accuracy" in proc.stdout
    assert "prepare:data.txt" in proc.stdout
    assert "best_epoch" not in proc.stdout          # ignored by the shipped params
    assert "DRIFT" not in proc.stdout and "MISSING" not in proc.stdout


@pytest.mark.slow
def test_altered_metric_is_named(tmp_path, params_raw):
    repo = toy_repo(tmp_path / "repo", params_raw)
    (repo / "metrics/score.json").write_text('{"accuracy": 0.95, "log_loss": 0.3}')
    run(["git", "commit", "-qam", "better numbers"], repo)
    proc = check(repo)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    (line,) = [l for l in proc.stdout.splitlines() if l.startswith("metrics/score.json:accuracy")]
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
    (line,) = [l for l in proc.stdout.splitlines() if l.startswith("prepare:data.txt")]
    assert line.endswith("DRIFT")
