"""Reproducibility check: re-run the pipeline from a clean clone and compare with what was
committed.

    transferline check [--rev REV] [--keep]        (or: make check REV=...)

Clones the repository at REV (default HEAD) into a temporary folder, runs `dvc repro --force`
there with this Python environment, then compares:

- the outputs of the data stages (`check.data_stages`): their hashes in the reproduced
  `dvc.lock` must equal the committed ones (byte-identical data);
- every metric DVC knows (`dvc metrics diff REV --all --json`): the reproduced value must be
  within the tolerance `params.yaml`'s `check:` gives it. A score counted on images (accuracy,
  balanced accuracy, macro F1 on the val or test split) may move by `check.images` images'
  worth, derived from that split's counts in `check.counts` (metrics/split.json): another CPU
  rounds differently, and a model trained there may classify an image or two differently. A
  metric present on one side only is drift too (DVC itself reports that with exit status 0, so
  it is checked here);
- `dvc status` must be clean after the run.

Prints a table (metric, committed, reproduced, tolerance, verdict) and exits 1 when anything
drifted, 2 when the check itself could not run. The tolerances are read from REV's params.yaml.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from transferline.config import params as P
from transferline.config.errors import ParamsError, StageError

OK, DRIFT, MISSING = "ok", "DRIFT", "MISSING"


@dataclass(frozen=True)
class Row:
    metric: str  # "path:key.sub"
    committed: object
    reproduced: object
    tolerance: float | None
    verdict: str


@dataclass(frozen=True)
class Counts:
    """The images a split holds (metrics/split.json): what a score on it is counted over."""

    total: int
    classes: dict[str, int]

    @property
    def smallest(self) -> int:
        return min(self.classes.values())


def split_counts(split_metrics: dict) -> dict[str, Counts]:
    """{split: Counts} from split.json's {"test": {"total": n, "classes": {...}}, ...}."""
    return {
        name: Counts(int(v["total"]), {c: int(k) for c, k in v["classes"].items()})
        for name, v in split_metrics.items()
        if isinstance(v, dict) and v.get("classes")
    }


# How far a score can move when `k` images change their predicted class, by the key's last part:
# accuracy counts images (k/n); balanced accuracy averages per-class recalls (k/(C*n_min)); a
# class's F1 = 2TP/(n_c + p_c) moves by at most 2/n_c per image, and one image touches two
# classes (its old and new prediction), so macro F1 moves by at most 4k/(C*n_min).
SCORE_BOUNDS = (
    ("balanced_accuracy", lambda k, n: k / (len(n.classes) * n.smallest)),
    ("*f1", lambda k, n: 4 * k / (len(n.classes) * n.smallest)),
    ("*acc*", lambda k, n: k / n.total),
    ("top*", lambda k, n: k / n.total),
)


def image_bound(metric: str, check: P.Check, counts: dict[str, Counts]) -> float | None:
    """The tolerance of a score counted on images: `check.images` images' worth, or None when
    `metric` is not one (or its split's counts are unknown)."""
    split = next(
        (s for pattern, s in check.counted_on.items() if fnmatch.fnmatchcase(metric, pattern)), None
    )
    if split is None or split not in counts:
        return None
    leaf = metric.rsplit(":", 1)[-1].rsplit(".", 1)[-1]
    for pattern, bound in SCORE_BOUNDS:
        if fnmatch.fnmatchcase(leaf, pattern):
            return bound(check.images, counts[split])
    return None


def tolerance_for(
    metric: str, check: P.Check, counts: dict[str, Counts] | None = None
) -> float | None:
    """Absolute tolerance for "path:key": None = not compared (`ignore`); else the first
    matching `tolerances` pattern, the image-count bound of a score, or `tolerance`."""
    if any(fnmatch.fnmatchcase(metric, pattern) for pattern in check.ignore):
        return None
    for pattern, tol in check.tolerances.items():
        if fnmatch.fnmatchcase(metric, pattern):
            return tol
    bound = image_bound(metric, check, counts or {})
    return check.tolerance if bound is None else round(bound, 6)


def compare_metrics(
    diff: dict, check: P.Check, counts: dict[str, Counts] | None = None
) -> list[Row]:
    """Rows from `dvc metrics diff --all --json` output ({path: {key: {old, new}}})."""
    rows = []
    for path in sorted(diff):
        for key in sorted(diff[path]):
            old, new = diff[path][key].get("old"), diff[path][key].get("new")
            metric = f"{path}:{key}"
            tol = tolerance_for(metric, check, counts)
            if tol is None:
                continue
            if old is None or new is None:
                verdict = MISSING
            elif isinstance(old, (int, float)) and isinstance(new, (int, float)):
                verdict = OK if math.isclose(old, new, rel_tol=0, abs_tol=tol + 1e-12) else DRIFT
            else:
                verdict = OK if old == new else DRIFT
            rows.append(Row(metric, old, new, tol, verdict))
    return rows


def compare_data_stages(
    committed_lock: dict, reproduced_lock: dict, stages: list[str]
) -> list[Row]:
    """One row per output of each data stage: its hash must not change."""

    def outs(lock: dict, stage: str) -> dict[str, str]:
        entry = lock.get("stages", {}).get(stage, {})
        return {o["path"]: o.get("md5") for o in entry.get("outs", [])}

    rows = []
    for stage in stages:
        old, new = outs(committed_lock, stage), outs(reproduced_lock, stage)
        for path in sorted(old.keys() | new.keys()):
            o, n = old.get(path), new.get(path)
            verdict = MISSING if o is None or n is None else (OK if o == n else DRIFT)
            rows.append(Row(f"{stage}:{path}", o, n, 0.0, verdict))
    return rows


def format_table(rows: list[Row]) -> str:
    def cell(v):
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.6g}"
        return str(v)[:12] if isinstance(v, str) and len(v) == 32 else str(v)

    table = [("metric", "committed", "reproduced", "tolerance", "verdict")]
    table += [
        (r.metric, cell(r.committed), cell(r.reproduced), cell(r.tolerance), r.verdict)
        for r in rows
    ]
    widths = [max(len(line[i]) for line in table) for i in range(5)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def sh(cmd: list[str], cwd: Path, env: dict, log=None) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        cmd,
        cwd=cwd,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if log else subprocess.PIPE,
    )
    if log is not None:
        log.write(proc.stdout)
    if proc.returncode != 0:
        tail = proc.stdout[-3000:] if log else proc.stderr[-3000:]
        raise StageError(f"`{' '.join(cmd)}` failed in {cwd} (exit {proc.returncode}):\n{tail}")
    return proc


def clone(repo: Path, rev: str, dest: Path, env: dict) -> None:
    sh(["git", "clone", "--quiet", "--no-checkout", str(repo), str(dest)], repo, env)
    sh(["git", "checkout", "--quiet", "--detach", rev], dest, env)
    # reuse finished downloads (outside DVC's outputs) so a real dataset is not fetched again
    cache = repo / ".cache"
    if cache.is_dir():
        (dest / ".cache").symlink_to(cache.resolve(), target_is_directory=True)


def tool_env() -> dict:
    """This interpreter's bin folder first on PATH, so `dvc` and `python` are this venv's."""
    env = dict(os.environ, DVC_NO_ANALYTICS="1")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def check(repo: Path, rev: str, workdir: Path, log) -> list[Row]:
    env = tool_env()
    clone(repo, rev, workdir, env)
    committed_lock = (
        yaml.safe_load((workdir / "dvc.lock").read_text())
        if (workdir / "dvc.lock").exists()
        else {}
    )
    params = P.load(workdir / "params.yaml")
    print(f"reproducing {rev} in {workdir} (log: {log.name}) ...", file=sys.stderr)
    sh(["dvc", "repro", "--force"], workdir, env, log=log)
    reproduced_lock = yaml.safe_load((workdir / "dvc.lock").read_text())
    diff = json.loads(
        sh(["dvc", "metrics", "diff", "HEAD", "--all", "--json"], workdir, env).stdout or "{}"
    )
    rows = compare_data_stages(committed_lock, reproduced_lock, params.check.data_stages)
    split_json = workdir / params.check.counts
    counts = split_counts(json.loads(split_json.read_text())) if split_json.is_file() else {}
    rows += compare_metrics(diff, params.check, counts)
    status = json.loads(sh(["dvc", "status", "--json"], workdir, env).stdout or "{}")
    rows.append(
        Row(
            "dvc status",
            "clean",
            "clean" if not status else json.dumps(status)[:60],
            None,
            OK if not status else DRIFT,
        )
    )
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="transferline check", description=__doc__.split("\n\n")[0])
    ap.add_argument("--rev", default="HEAD", help="git revision to reproduce (default HEAD)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary clone")
    ap.add_argument("--log-dir", default="logs", help="where the run's log goes (untracked)")
    args = ap.parse_args(argv)
    repo = Path(
        subprocess.run(
            ["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True, check=True
        ).stdout.strip()
    )
    log_dir = repo / args.log_dir
    log_dir.mkdir(exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="transferline-check-"))
    try:
        with open(log_dir / "check.log", "w") as log:
            rows = check(repo, args.rev, workdir / "repo", log)
    except (StageError, ParamsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        if args.keep:
            print(f"kept the clone in {workdir / 'repo'}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print(format_table(rows))
    bad = [r for r in rows if r.verdict != OK]
    if bad:
        print(
            f"\n{len(bad)} of {len(rows)} checks drifted: "
            + ", ".join(r.metric for r in bad[:10])
            + (" ..." if len(bad) > 10 else "")
        )
        return 1
    print(f"\nreproduced: all {len(rows)} checks agree with {args.rev}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
