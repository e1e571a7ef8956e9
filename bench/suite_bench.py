"""How long `make test` takes: two revisions of this repository, each in a clean clone with its
own .venv, timed in alternating order on the same machine, n times each.

Each revision is cloned from this checkout into --workdir (with `shared` beside the clone, a link
to ../shared, so the tests that read the real datasets run as in CI), installed with
`make install` (not timed), then in each of `--repeats` rounds both suites run one after the
other, the order swapped every round. Nothing else should run meanwhile: the suite uses every
core (pytest-xdist), so a second busy process slows it several times over.

Prints a markdown block (wall seconds of each run, the median, pytest's own summary line, the
ratio of the medians) and with --write replaces the suite block in BENCHMARKS.md.

    .venv/bin/python -m bench.suite_bench --old 9a8da0e --new HEAD --repeats 3 --write
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import time
from pathlib import Path

from bench.machine import ROOT, SHARED, load, machine, write_block


def sh(cmd: list[str], cwd: Path, log: Path) -> int:
    """Run `cmd` in `cwd` with its output in `log`; its exit status."""
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    env.pop("VIRTUAL_ENV", None)
    with open(log, "w") as out:
        return subprocess.run(
            cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=env
        ).returncode


def checkout(rev: str, workdir: Path) -> tuple[str, Path]:
    """A clean clone of `rev` under workdir/<sha>/main, installed; returns (short sha, path)."""
    sha = subprocess.run(
        ["git", "rev-parse", "--short", rev], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    repo = workdir / sha / "main"
    if not repo.exists():
        subprocess.run(["git", "clone", "-q", str(ROOT), str(repo)], check=True)
        subprocess.run(["git", "checkout", "-q", sha], cwd=repo, check=True)
        (repo.parent / "shared").symlink_to(SHARED.resolve(), target_is_directory=True)
    if sh(["make", "install"], repo, repo.parent / "install.log") != 0:
        raise SystemExit(f"make install failed in {repo}: see {repo.parent / 'install.log'}")
    return sha, repo


def summary(log: Path) -> str:
    """pytest's last line ("N passed, ... in X s"), without its padding."""
    lines = [line for line in log.read_text().splitlines() if re.search(r" in [\d.]+s", line)]
    return lines[-1].strip("= ") if lines else "(no summary: see the log)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", default="9a8da0e", help="the revision to compare against")
    ap.add_argument("--new", default="HEAD")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/suite-bench"))
    ap.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = ap.parse_args()
    if not (SHARED / "datasets").is_dir():
        raise SystemExit(f"{SHARED / 'datasets'} not found: the suites would skip those tests")
    args.workdir.mkdir(parents=True, exist_ok=True)
    revs = dict(old=checkout(args.old, args.workdir), new=checkout(args.new, args.workdir))
    runs: dict[str, list[tuple[float, int, str, str]]] = {key: [] for key in revs}
    for i in range(args.repeats):
        for key in ("old", "new") if i % 2 == 0 else ("new", "old"):
            sha, repo = revs[key]
            shutil.rmtree(repo / ".pytest_cache", ignore_errors=True)
            log = repo.parent / f"test-{i + 1}.log"
            before = load()
            start = time.monotonic()
            code = sh(["make", "test"], repo, log)
            seconds = time.monotonic() - start
            runs[key].append((seconds, code, summary(log), before))
            print(f"round {i + 1} {key} {sha}: {seconds:.1f} s, exit {code} ({log})", flush=True)

    medians = {key: statistics.median(r[0] for r in rows) for key, rows in runs.items()}
    lines = [
        f"`python -m bench.suite_bench --old {args.old} --new {args.new} "
        f"--repeats {args.repeats}`; {machine()}; each `make test` from a clean clone with its "
        "own .venv, the two revisions alternating, nothing else running (load average 1/5/15 "
        "before each run in the table).",
        "",
        "| revision | run | wall s | exit | pytest | load before |",
        "|---|---:|---:|---:|---|---|",
    ]
    for key, rows in runs.items():
        for n, (seconds, code, line, before) in enumerate(rows, 1):
            lines.append(
                f"| {key} {revs[key][0]} | {n} | {seconds:.1f} | {code} | {line} | {before} |"
            )
    lines += [
        "",
        f"Median: old {revs['old'][0]} **{medians['old']:.1f} s**, new {revs['new'][0]} "
        f"**{medians['new']:.1f} s**; new / old = **{medians['new'] / medians['old']:.2f}**.",
    ]
    block = "\n".join(lines)
    print(block)
    if args.write:
        write_block("suite", "test suite", block)


if __name__ == "__main__":
    main()
