"""Benchmark our training against the tutorial-style loop, on hymenoptera, side by side.

Prepares ../shared/datasets/hymenoptera_data through our own data stages (download of the local
folder, extract, clean, split: the tutorial's 153 val images stay val, test is carved from
train), then runs one after the other in this process run, on the same machine:
  (a) the tutorial loop (../shared/bench/tutorial_baseline.py), `--strategy fixed`,
      efficientnet_lite0 with the packaged weights, N epochs, 2 DataLoader workers;
  (b) the same with `--strategy finetune`;
  (c) our `feature_extractor` strategy (stages.train.train), as shipped in params.yaml;
  (d) our `finetune` strategy with its epochs set to N.
Ours use params.yaml as it is except `train.image_size: 224` (and N epochs for (d));
`threads: 2`. The tutorial gets torch's default thread count. Prints a markdown table; with
--write it replaces the generated block of the `## train` section in BENCHMARKS.md (the notes
around it stay).

Run from the repo root:  .venv/bin/python -m bench.train_bench --write
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from bench.machine import load, machine, markers, write_block
from stages.clean import clean
from stages.download import download_dataset
from stages.extract import extract_all
from stages.params import Archive, Dataset, Params, validate
from stages.split import split_dataset
from stages.train import train

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TRANSFERLINE_SHARED", ROOT.parent / "shared"))
DATASET = SHARED / "datasets" / "hymenoptera_data"
TUTORIAL = SHARED / "bench" / "tutorial_baseline.py"
IMAGE_SIZE = 224          # px; the tutorial's crop, and what params.yaml says to use for photos
VAL_IMAGES = 153          # hymenoptera's shipped val/ (70 ants + 83 bees)
TARGET_ACC = 0.93         # project goal for ours on hymenoptera at 224 px (tutorial: 0.935/0.948)
TUTORIAL_WORKERS = 2      # DataLoader processes for the tutorial loop (one per core)


# ---- data: our own stages -------------------------------------------------------------------

def prepare(data: Path, work: Path, params: Params) -> dict:
    """Run download (local folder), extract, clean and split into `work`; wall seconds each."""
    secs, start = {}, time.perf_counter()
    download_dataset(Dataset(archives=[Archive(url=str(data))]), work / "raw",
                     work / "cache", params.download, params.seed)
    secs["download"], start = time.perf_counter() - start, time.perf_counter()
    extract_all(work / "raw", work / "extracted", params.extract)
    secs["extract"], start = time.perf_counter() - start, time.perf_counter()
    summary = clean(work / "extracted", work / "clean", work / "metrics" / "clean.json",
                    work / "reports" / "rejected.csv", params.clean)
    secs["clean"], start = time.perf_counter() - start, time.perf_counter()
    split = split_dataset(work / "clean", work / "split", work / "metrics" / "split.json",
                          seed=params.seed, split_params=params.split)
    secs["split"] = time.perf_counter() - start
    if split["val"]["total"] != VAL_IMAGES:
        sys.exit(f"{data}: our split has {split['val']['total']} val images, expected the "
                 f"tutorial's {VAL_IMAGES}; the comparison would not be on the same val set")
    return {"seconds": secs, "kept": summary.metrics()["kept"],
            "split": {s: split[s]["total"] for s in ("train", "val", "test")}}


# ---- the runs -------------------------------------------------------------------------------

def bench_params(params_file: Path, finetune_epochs: int) -> Params:
    """params.yaml as shipped, except image_size 224 and finetune's epochs; still validated."""
    raw = yaml.safe_load(params_file.read_text(encoding="utf-8"))
    raw["train"]["image_size"] = IMAGE_SIZE
    raw["strategies"]["finetune"]["epochs"] = finetune_epochs
    return validate(raw, f"{params_file} (bench overrides)")


def run_tutorial(data: Path, strategy: str, epochs: int) -> dict:
    """One tutorial_baseline.py run; its JSON line plus wall and CPU seconds of the process."""
    cmd = [sys.executable, str(TUTORIAL), str(data), "--strategy", strategy,
           "--arch", "efficientnet_lite0", "--weights", "packaged", "--epochs", str(epochs),
           "--workers", str(TUTORIAL_WORKERS)]
    load = os.getloadavg()[0]
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"{TUTORIAL} failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1]
    out = json.loads(line)
    # children's CPU includes the DataLoader workers the tutorial process waited for
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    return {"run": f"tutorial `{strategy}`", "epochs": epochs, "seconds": out["seconds"],
            "images_per_second": out["images_per_second"], "best_val_acc": out["best_val_acc"],
            "process_seconds": wall, "cpu_seconds": cpu, "load": load, "raw": out}


def run_ours(strategy: str, params: Params, work: Path) -> dict:
    load = os.getloadavg()[0]
    cpu0 = time.process_time()
    got = train(strategy, params, clean_dir=work / "clean", split_dir=work / "split",
                model_path=work / "models" / f"{strategy}.pt",
                metrics_path=work / "metrics" / "train" / f"{strategy}.json",
                plots_path=work / "plots" / "train" / f"{strategy}.tsv")
    cpu = time.process_time() - cpu0
    images = sum(row["images"] for row in got["history"])  # train + val images, all epochs
    return {"run": f"ours `{strategy}`", "epochs": got["epochs"], "seconds": got["seconds"],
            "images_per_second": images / got["seconds"], "best_val_acc": got["best_val_acc"],
            "feature_seconds": got["feature_seconds"], "cpu_seconds": cpu, "load": load,
            "epoch_seconds": sum(row["seconds"] for row in got["history"]),
            "image_epochs": images}


def run_all(data: Path, work: Path, params: Params, epochs: int) -> dict[str, dict]:
    plan = {"a": lambda: run_tutorial(data, "fixed", epochs),
            "b": lambda: run_tutorial(data, "finetune", epochs),
            "c": lambda: run_ours("feature_extractor", params, work),
            "d": lambda: run_ours("finetune", params, work)}
    runs = {}
    for key, run in plan.items():  # in this order, one at a time
        runs[key] = run()
        print(f"({key}) {json.dumps(runs[key])}", file=sys.stderr)
    return runs


# ---- output ---------------------------------------------------------------------------------

COUNTERPART = {"c": "a", "d": "b"}  # ours -> the tutorial run it is compared with


def table(runs: dict[str, dict], prep: dict) -> str:
    rows = ["| run | epochs | seconds | CPU s | images/s | best val acc (153) | speed-up vs "
            "tutorial | load 1 min at start |",
            "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for key, r in runs.items():
        ips = f"{r['images_per_second']:.1f}"
        if r.get("feature_seconds"):
            n = prep["split"]["train"] + prep["split"]["val"]
            ips = f"({n / r['feature_seconds']:.1f} once) †"
        other = COUNTERPART.get(key)
        speed = f"{runs[other]['seconds'] / r['seconds']:.1f}x vs ({other})" if other else "—"
        rows.append(f"| ({key}) {r['run']} | {r['epochs']} | {r['seconds']:.1f} | "
                    f"{r['cpu_seconds']:.0f} | {ips} | {r['best_val_acc']:.4f} | {speed} | "
                    f"{r['load']:.2f} |")
    prep_s = prep["seconds"]
    c, d = runs["c"], runs["d"]
    rows += ["",
             "- seconds: the tutorial's own timer (its epoch loop only; the whole process, with "
             "imports and model build, took "
             f"(a) {runs['a']['process_seconds']:.1f} s, (b) {runs['b']['process_seconds']:.1f} "
             "s); ours: `train()`'s `seconds` (model build, feature caching, epochs and writing "
             f"the checkpoint; the epochs alone took (c) {c['epoch_seconds']:.1f} s, "
             f"(d) {d['epoch_seconds']:.1f} s)",
             "- CPU s: CPU seconds of the tutorial process and its DataLoader workers / of this "
             "process during `train()`; CPU s / seconds near 2 means both cores were ours",
             "- images/s: train + val images per epoch x epochs / seconds (the tutorial's "
             f"`images_per_second`); images per epoch: tutorial 245 train + {VAL_IMAGES} val, "
             f"ours {prep['split']['train']} train + {prep['split']['val']} val "
             f"(test carved from train)",
             f"- † (c) runs the frozen backbone once over its {prep['split']['train']} + "
             f"{prep['split']['val']} images ({c['feature_seconds']:.1f} s, the rate shown), then "
             f"trains the head on the cached features for {c['epochs']} epochs",
             f"- accuracy target for ours (>= {TARGET_ACC} best val acc): (c) "
             f"{'met' if c['best_val_acc'] >= TARGET_ACC else 'NOT met'}, (d) "
             f"{'met' if d['best_val_acc'] >= TARGET_ACC else 'NOT met'}",
             f"- our data stages, once before (c) and (d), not in their seconds: download (copy "
             f"of the folder) {prep_s['download']:.1f} s, extract {prep_s['extract']:.1f} s, "
             f"clean {prep_s['clean']:.1f} s, split {prep_s['split']:.2f} s "
             f"({sum(prep_s.values()):.1f} s in all; clean kept {prep['kept']} images); with "
             f"them (c) is {runs['a']['seconds'] / (c['seconds'] + sum(prep_s.values())):.1f}x "
             f"and (d) {runs['b']['seconds'] / (d['seconds'] + sum(prep_s.values())):.1f}x its "
             f"counterpart"]
    return "\n".join(rows)


BEGIN, END = markers("train_bench")


def results_block(body: str, args, load_before: tuple) -> str:
    cmd = ".venv/bin/python -m bench.train_bench"
    if args.epochs_tutorial != 5:
        cmd += f" --epochs-tutorial {args.epochs_tutorial}"
    return (f"{BEGIN}\n"
            f"Command: `{cmd} --write`  \n"
            f"Data: ../shared/datasets/hymenoptera_data through our download (local folder), "
            f"extract, clean and split; val = the tutorial's {VAL_IMAGES} val images  \n"
            f"Machine: {machine()}; "
            f"Python {platform.python_version()}, torch {torch.__version__} "
            f"(default threads {torch.get_num_threads()})  \n"
            f"Load average (1/5/15 min) before {load(load_before)}, after "
            f"{load(os.getloadavg())}  \n"
            f"n = 1 run of each, in the order a, b, c, d, in one process run; wall-clock "
            f"seconds.\n\n{body}\n{END}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs-tutorial", type=int, default=5,
                        help="epochs of both tutorial runs and of our finetune (default 5)")
    parser.add_argument("--data", type=Path, default=DATASET,
                        help="hymenoptera_data folder (train/, val/); default %(default)s")
    parser.add_argument("--out", type=Path, default=None,
                        help="keep the prepared data, checkpoints and results.json here "
                             "(default: a temporary folder, removed at the end)")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = parser.parse_args()
    if not (args.data / "train").is_dir() or not (args.data / "val").is_dir():
        sys.exit(f"{args.data}: no train/ and val/ folders; give --data or set "
                 "TRANSFERLINE_SHARED")
    if not TUTORIAL.is_file():
        sys.exit(f"{TUTORIAL}: not found; set TRANSFERLINE_SHARED")
    params = bench_params(args.params, args.epochs_tutorial)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.out if args.out is not None else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        prep = prepare(args.data, work, params)
        runs = run_all(args.data, work, params, args.epochs_tutorial)
        (work / "results.json").write_text(json.dumps({"prep": prep, "runs": runs}, indent=2))
    body = table(runs, prep)
    print(body)
    if args.write:
        write_block("train_bench", "train", results_block(body, args, load_before))


if __name__ == "__main__":
    main()
