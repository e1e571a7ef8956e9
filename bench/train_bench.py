"""Benchmark our shipped strategies against the tutorial-style loop, side by side, n times.

Prepares a dataset through our own data stages (download of the local folder, extract, clean,
split), then, in each of `--repeats` rounds and in this order on the same machine:
  - the tutorial loop (../shared/bench/tutorial_baseline.py) for each `--tutorial` strategy
    (default: finetune, then fixed), EfficientNet-Lite0 with the packaged weights, its own
    recipe (batch 4, SGD + StepLR, 2 DataLoader workers), `--tutorial-epochs` epochs (25);
  - every strategy of params.yaml as shipped (transferline.engine.train.train; early stopping as set
  there),
    then its test accuracy (transferline.engine.evaluate.evaluate, single view).
Ours use params.yaml unchanged except `train.image_size: 224`, the tutorial's crop.

hymenoptera_data ships train/ and val/: our val is the tutorial's 153 val images, so best val
accuracy compares like with like (both pick their best epoch on those images); our test split is
carved from train. PetImages has no val/, so only our strategies run there (`--tutorial none`),
to show where early stopping ends each curve.

Writes results.json (every run, with its per-epoch curve) to --out and prints a markdown block;
with --write it replaces the dataset's generated block in BENCHMARKS.md (notes around it stay).

    .venv/bin/python -m bench.train_bench --repeats 3 --write
    .venv/bin/python -m bench.train_bench --data ../shared/datasets/PetImages-subset \\
        --tutorial none --repeats 1 --write
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from bench.machine import SHARED, load, machine, markers, write_block
from transferline.config.params import Archive, Dataset, Params, validate
from transferline.data.clean import clean
from transferline.data.download import download_dataset
from transferline.data.extract import extract_all
from transferline.data.split import split_dataset
from transferline.engine.evaluate import evaluate
from transferline.engine.runtime import from_params
from transferline.engine.train import train

ROOT = Path(__file__).resolve().parents[1]
DATASET = SHARED / "datasets" / "hymenoptera_data"
TUTORIAL = SHARED / "bench" / "tutorial_baseline.py"
IMAGE_SIZE = 224  # px; the tutorial's crop
TUTORIAL_WORKERS = 2  # DataLoader processes for the tutorial loop (one per core)
# ours -> the tutorial run it is held against (speed and accuracy)
COUNTERPART = {"finetune": "finetune", "partial": "finetune", "feature_extractor": "fixed"}
SPEED_GOAL = {"all four": 3.0, "feature_extractor": 50.0}  # x faster than the counterpart


# ---- data: our own stages -------------------------------------------------------------------


def prepare(data: Path, work: Path, params: Params) -> dict:
    """Run download (local folder), extract, clean and split into `work`; wall seconds each."""
    secs, start = {}, time.perf_counter()
    download_dataset(
        Dataset(archives=[Archive(url=str(data))]),
        work / "raw",
        work / "cache",
        params.download,
        params.seed,
    )
    secs["download"], start = time.perf_counter() - start, time.perf_counter()
    extract_all(work / "raw", work / "extracted", params.extract)
    secs["extract"], start = time.perf_counter() - start, time.perf_counter()
    summary = clean(
        work / "extracted",
        work / "clean",
        work / "metrics" / "clean.json",
        work / "reports" / "rejected.csv",
        params.clean,
    )
    secs["clean"], start = time.perf_counter() - start, time.perf_counter()
    split = split_dataset(
        work / "clean",
        work / "split",
        work / "metrics" / "split.json",
        seed=params.seed,
        split_params=params.split,
    )
    secs["split"] = time.perf_counter() - start
    return {
        "seconds": secs,
        "kept": summary.metrics()["kept"],
        "split": {s: split[s]["total"] for s in ("train", "val", "test")},
    }


def bench_params(params_file: Path) -> Params:
    """params.yaml as shipped, at 224 px; still validated."""
    raw = yaml.safe_load(params_file.read_text(encoding="utf-8"))
    raw["train"]["image_size"] = IMAGE_SIZE
    return validate(raw, f"{params_file} (image_size {IMAGE_SIZE})")


# ---- the runs -------------------------------------------------------------------------------


def run_tutorial(data: Path, strategy: str, epochs: int) -> dict:
    """One tutorial_baseline.py run: its JSON line plus wall and CPU seconds of the process."""
    cmd = [
        sys.executable,
        str(TUTORIAL),
        str(data),
        "--strategy",
        strategy,
        "--arch",
        "efficientnet_lite0",
        "--weights",
        "packaged",
        "--epochs",
        str(epochs),
        "--workers",
        str(TUTORIAL_WORKERS),
    ]
    load1 = os.getloadavg()[0]
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"{TUTORIAL} failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    out = json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1])
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    return {
        "who": "tutorial",
        "strategy": strategy,
        "epochs": epochs,
        "seconds": out["seconds"],
        "process_seconds": wall,
        "cpu_seconds": cpu,
        "best_val_acc": out["best_val_acc"],
        "load": load1,
        "raw": out,
    }


def run_ours(strategy: str, params: Params, work: Path, r: int) -> dict:
    load1 = os.getloadavg()[0]
    cpu0 = time.process_time()
    model = work / "models" / f"{strategy}-{r}.pt"
    got = train(
        strategy,
        params,
        clean_dir=work / "clean",
        split_dir=work / "split",
        model_path=model,
        metrics_path=work / "metrics" / f"{strategy}-{r}.json",
        plots_path=work / "plots" / f"{strategy}-{r}.tsv",
    )
    cpu = time.process_time() - cpu0
    test = evaluate(
        model_path=model,
        clean_dir=work / "clean",
        split_dir=work / "split",
        metrics_path=work / "metrics" / f"{strategy}-{r}-test.json",
        confusion_path=work / "metrics" / f"{strategy}-{r}-confusion.json",
        settings=params.evaluate,
        seed=params.seed,
        threads=params.threads,
        rt=from_params(params.runtime),
    )
    curve = [
        {k: row[k] for k in ("epoch", "phase", "lr", "train_loss", "val_loss", "val_acc")}
        for row in got["history"]
    ]
    return {
        "who": "ours",
        "strategy": strategy,
        "epochs": got["epochs"],
        "best_epoch": got["best_epoch"],
        "seconds": got["seconds"],
        "cpu_seconds": cpu,
        "feature_seconds": got["feature_seconds"],
        "best_val_acc": got["best_val_acc"],
        "test_acc": test["accuracy"],
        "load": load1,
        "curve": curve,
    }


# ---- summary --------------------------------------------------------------------------------


def med(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def by(runs: list[dict], who: str, strategy: str) -> list[dict]:
    return [r for r in runs if r["who"] == who and r["strategy"] == strategy]


def plateau(curve: list[dict]) -> str:
    """How the curve ends: val loss and accuracy of the best epoch and of the last ones."""
    best = min(curve, key=lambda row: row["val_loss"])
    tail = ", ".join(f"{row['val_loss']:.3f}" for row in curve[-4:])
    return (
        f"lowest val loss {best['val_loss']:.3f} at epoch {best['epoch']}; last "
        f"{min(4, len(curve))}: {tail} (lr {curve[-1]['lr']:.2g} at the end)"
    )


def table(runs: list[dict], prep: dict, strategies: list[str], tutorial: list[str]) -> str:
    n = max(r["round"] for r in runs)
    rows = [
        "| run | epochs (median) | seconds, median | per round | best val acc, median | "
        "test acc, median | load 1 min at start |",
        "|---|---:|---:|---|---:|---:|---|",
    ]
    groups = [("tutorial", s) for s in tutorial] + [("ours", s) for s in strategies]
    for who, s in groups:
        rs = by(runs, who, s)
        test = f"{med(rs, 'test_acc'):.4f}" if who == "ours" else "—"
        each = ", ".join(f"{r['seconds']:.1f}" for r in rs)
        loads = ", ".join(f"{r['load']:.2f}" for r in rs)
        rows.append(
            f"| {who} `{s}` | {med(rs, 'epochs'):g} | {med(rs, 'seconds'):.1f} | "
            f"{each} | {med(rs, 'best_val_acc'):.4f} | {test} | {loads} |"
        )
    totals = [
        sum(r["seconds"] for r in runs if r["who"] == "ours" and r["round"] == k)
        for k in range(1, n + 1)
    ]
    each = ", ".join(f"{t:.1f}" for t in totals)
    rows.append(
        f"| ours, all {len(strategies)} | | {statistics.median(totals):.1f} | {each} | | | |"
    )
    lines = [""]
    if "finetune" in tutorial:
        ratio = med(by(runs, "tutorial", "finetune"), "seconds") / statistics.median(totals)
        lines.append(
            f"- ours, all {len(strategies)} strategies together vs tutorial `finetune` "
            f"alone: {ratio:.2f}x faster (goal >= {SPEED_GOAL['all four']:g}x: "
            f"{'met' if ratio >= SPEED_GOAL['all four'] else 'NOT met'})"
        )
    for s, other in COUNTERPART.items():
        if other not in tutorial or s not in strategies:
            continue
        ours, theirs = by(runs, "ours", s), by(runs, "tutorial", other)
        ratio = med(theirs, "seconds") / med(ours, "seconds")
        goal = SPEED_GOAL.get(s)
        verdict = f" (goal >= {goal:g}x: {'met' if ratio >= goal else 'NOT met'})" if goal else ""
        acc_ok = med(ours, "best_val_acc") >= med(theirs, "best_val_acc")
        lines.append(
            f"- `{s}` vs tutorial `{other}`: {ratio:.1f}x faster{verdict}; best val acc "
            f"{med(ours, 'best_val_acc'):.4f} vs {med(theirs, 'best_val_acc'):.4f} "
            f"({'equal or better' if acc_ok else 'WORSE'})"
        )
    for s in strategies:
        first = by(runs, "ours", s)[0]
        lines.append(
            f"- `{s}` curve, round 1: {first['epochs']} epochs, best (kept) epoch "
            f"{first['best_epoch']}; {plateau(first['curve'])}"
        )
    p = prep["seconds"]
    lines.append(
        f"- data stages, once, not in any row: download {p['download']:.1f} s, extract "
        f"{p['extract']:.1f} s, clean {p['clean']:.1f} s, split {p['split']:.2f} s; "
        f"clean kept {prep['kept']}; split train {prep['split']['train']} / val "
        f"{prep['split']['val']} / test {prep['split']['test']}"
    )
    return "\n".join(rows + lines)


def results_block(
    name: str, body: str, cmd: str, data: Path, n: int, load_before: tuple, n_tutorial: int
) -> str:
    begin, end = markers(name)
    return (
        f"{begin}\n"
        f"Command: `{cmd}`  \n"
        f"Data: {data} through our download (local folder), extract, clean and split  \n"
        f"Machine: {machine()}; Python {platform.python_version()}, torch "
        f"{torch.__version__} (default threads {torch.get_num_threads()})  \n"
        f"Load average (1/5/15 min) before {load(load_before)}, after "
        f"{load(os.getloadavg())}  \n"
        f"n = {n} rounds, each running every row once in the order listed"
        f"{f' (the tutorial in the first {n_tutorial} only)' if n_tutorial < n else ''}; "
        "wall-clock "
        f"seconds: the tutorial's own timer (its epoch loop), ours `train()`'s (model "
        f"build, feature caching, epochs, checkpoint).\n\n{body}\n{end}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--data",
        type=Path,
        default=DATASET,
        help="class-folder dataset (hymenoptera_data: train/ + val/); default %(default)s",
    )
    ap.add_argument("--repeats", type=int, default=3, help="rounds (default 3)")
    ap.add_argument(
        "--tutorial",
        default="finetune,fixed",
        help="tutorial strategies per round, comma-separated, or none",
    )
    ap.add_argument("--tutorial-epochs", type=int, default=25)
    ap.add_argument(
        "--tutorial-repeats",
        type=int,
        default=None,
        help="run the tutorial in the first N rounds only (default: every round); its "
        "25-epoch fine-tuning takes 12 to 16 minutes a round on 2 cores",
    )
    ap.add_argument(
        "--strategies",
        default=None,
        help="ours, comma-separated (default: every entry of params.yaml)",
    )
    ap.add_argument(
        "--out",
        type=Path,
        default=None,
        help="keep prepared data, checkpoints and results.json here",
    )
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    ap.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = ap.parse_args()
    tutorial = [] if args.tutorial == "none" else args.tutorial.split(",")
    if tutorial and not ((args.data / "train").is_dir() and (args.data / "val").is_dir()):
        sys.exit(f"{args.data}: the tutorial needs train/ and val/ folders; use --tutorial none")
    if tutorial and not TUTORIAL.is_file():
        sys.exit(f"{TUTORIAL}: not found; set TRANSFERLINE_SHARED")
    params = bench_params(args.params)
    strategies = args.strategies.split(",") if args.strategies else list(params.strategies)
    load_before = os.getloadavg()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        work = args.out or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        prep = prepare(args.data, work, params)
        tutorial_rounds = args.repeats if args.tutorial_repeats is None else args.tutorial_repeats
        for r in range(1, args.repeats + 1):
            for s in tutorial if r <= tutorial_rounds else []:
                runs.append({"round": r, **run_tutorial(args.data, s, args.tutorial_epochs)})
                print(json.dumps(runs[-1]), file=sys.stderr)
            for s in strategies:
                runs.append({"round": r, **run_ours(s, params, work, r)})
                print(
                    json.dumps({k: v for k, v in runs[-1].items() if k != "curve"}), file=sys.stderr
                )
            (work / "results.json").write_text(json.dumps({"prep": prep, "runs": runs}, indent=1))
    body = table(runs, prep, strategies, tutorial)
    print(body)
    if args.write:
        name = f"train_bench_{args.data.name}"
        cmd = " ".join([".venv/bin/python -m bench.train_bench", *sys.argv[1:]])
        write_block(
            name,
            "train",
            results_block(name, body, cmd, args.data, args.repeats, load_before, tutorial_rounds),
        )


if __name__ == "__main__":
    main()
