"""Cost as the data grows: clean, split, `dvc status` and one training epoch at 1x, 4x and 16x
the PetImages subset, with the peak memory of each.

The larger sets are built from the real photos, not by copying bytes (clean would drop copies
as duplicates): copy j of an image is decoded, cropped by a few pixels at each edge, shifted in
brightness by a few levels and re-encoded at a JPEG quality between 88 and 95, all drawn from a
seeded generator. 1x is the subset as shipped, broken files included.

For each size, a copy of this repository (its git-tracked files) gets a `scaled` dataset entry
pointing at that folder and runs `dvc repro split` once, untimed. Then, `--repeats` times each,
in this order, every command a separate process:
  clean    python -m stages.clean over the repository copy's data/extracted, to a scratch folder
  split    python -m stages.split over its data/clean, to a scratch folder
  status   dvc status split in the repository copy (up to date: it checks the hashes of
           data/raw, data/extracted, data/clean and data/split and their stages)
  epoch    python -m stages.train scratch with epochs 1 (the shipped cnn3 recipe at 224 px,
           train.resume off): one pass over train plus val, with model build and start-up
Peak memory is the largest sum of PSS (proportional set size: a page shared by n processes
counts 1/n in each, so forked workers are not counted twice) over the process and its
children, sampled every 50 ms.

    .venv/bin/python -m bench.scale_bench --write
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import psutil
import yaml

from bench.machine import SHARED, load, machine, markers, write_block
from transferline.data.datasets import CACHE_FILE_BYTES

ROOT = Path(__file__).resolve().parents[1]
DATASET = SHARED / "datasets" / "PetImages-subset"
VENV_BIN = Path(sys.executable).parent
ENV = {**os.environ, "DVC_NO_ANALYTICS": "1", "PATH": f"{VENV_BIN}:{os.environ['PATH']}"}


# ---- the scaled datasets --------------------------------------------------------------------


def perturbed(img: np.ndarray, rng: np.random.Generator) -> bytes:
    h, w = img.shape[:2]
    top, bottom, left, right = rng.integers(0, 5, size=4)
    out = img[top : h - bottom, left : w - right].astype(np.int16) + int(rng.integers(-4, 5))
    ok, buf = cv2.imencode(
        ".jpg",
        np.clip(out, 0, 255).astype(np.uint8),
        [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(88, 96))],
    )
    assert ok
    return buf.tobytes()


def build(src: Path, dst: Path, times: int, seed: int = 0) -> int:
    """src as shipped plus times-1 perturbed re-encodings of each decodable image; file count."""
    if not (dst / ".complete").exists():
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(src, dst)
        rng = np.random.default_rng(seed)
        sources = sorted(p for p in src.rglob("*") if p.is_file()) if times > 1 else []
        for path in sources:
            raw = np.fromfile(path, np.uint8)  # the subset's broken files stay single copies
            img = cv2.imdecode(raw, cv2.IMREAD_COLOR) if raw.size else None  # empty: it raises
            if img is None or min(img.shape[:2]) < 64:
                continue
            for j in range(1, times):
                out = dst / path.relative_to(src).with_name(f"{path.stem}_v{j}.jpg")
                out.write_bytes(perturbed(img, rng))
        (dst / ".complete").touch()
    return sum(1 for p in dst.rglob("*") if p.is_file() and p.name != ".complete")


def repo_copy(dst: Path, data: Path) -> Path:
    """This repository's tracked files in `dst`, its dataset set to `data`, through split."""
    if (dst / ".complete").exists():
        return dst
    shutil.rmtree(dst, ignore_errors=True)
    tracked = (
        subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
        .stdout.decode()
        .split("\0")
    )
    for rel in filter(None, tracked):
        if (ROOT / rel).is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dst / rel)
    params = yaml.safe_load((dst / "params.yaml").read_text())
    params["datasets"]["scaled"] = {"image_size": 224, "archives": [{"url": str(data)}]}
    params["dataset"] = "scaled"
    (dst / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost"]
    for cmd in (
        ["git", "init", "-q"],
        ["git", "add", "-A"],
        [*git, "commit", "-qm", "bench"],
        ["dvc", "repro", "-q", "split"],
    ):
        subprocess.run(cmd, cwd=dst, env=ENV, check=True)
    (dst / ".complete").touch()
    return dst


# ---- one timed process ----------------------------------------------------------------------


def timed(cmd: list[str], cwd: Path) -> dict:
    """Wall seconds and peak PSS (process + children, sampled every 50 ms) of one command."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    peak, done = 0, threading.Event()

    def sample() -> None:
        nonlocal peak
        parent = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                procs = [parent, *parent.children(recursive=True)]
                peak = max(peak, sum(p.memory_full_info().pss for p in procs))
            except psutil.Error:
                pass
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    wall = time.perf_counter() - start
    done.set()
    sampler.join()
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{err[-2000:]}")
    return {"seconds": wall, "peak_mib": peak / 2**20, "stdout": out[-500:]}


def commands(repo: Path, scratch: Path) -> dict[str, list[str]]:
    py = sys.executable
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["strategies"]["scratch"]["epochs"] = 1
    params["train"]["resume"] = False
    epoch_params = scratch / "params-epoch.yaml"
    epoch_params.write_text(yaml.safe_dump(params, sort_keys=False))
    return {
        "clean": [
            py,
            "-m",
            "stages.clean",
            "--extracted",
            "data/extracted",
            "--out",
            str(scratch / "clean"),
            "--metrics",
            str(scratch / "clean.json"),
            "--rejected",
            str(scratch / "rejected.csv"),
        ],
        "split": [
            py,
            "-m",
            "stages.split",
            "--clean",
            "data/clean",
            "--out",
            str(scratch / "split"),
            "--metrics",
            str(scratch / "split.json"),
        ],
        "status": [str(VENV_BIN / "dvc"), "status", "split"],
        "epoch": [
            py,
            "-m",
            "stages.train",
            "scratch",
            "--clean",
            "data/clean",
            "--split",
            "data/split",
            "--model",
            str(scratch / "m.pt"),
            "--metrics",
            str(scratch / "m.json"),
            "--plots",
            str(scratch / "p.tsv"),
            "--params",
            str(epoch_params),
        ],
    }


def facts(repo: Path) -> dict:
    clean = json.loads((repo / "metrics" / "clean.json").read_text())
    split = json.loads((repo / "metrics" / "split.json").read_text())
    rows = sum(1 for _ in (repo / "data" / "split" / "train.csv").open()) - 1
    rows += sum(1 for _ in (repo / "data" / "split" / "val.csv").open()) - 1
    jpeg = sum(p.stat().st_size for p in (repo / "data" / "clean").rglob("*.jpg"))
    return {"kept": clean["kept"], "split": split, "train_val": rows, "clean_mib": jpeg / 2**20}


# ---- output ---------------------------------------------------------------------------------

STEPS = ("clean", "split", "status", "epoch")


def table(results: dict) -> str:
    rows = [
        "| size | files | kept | "
        + " | ".join(f"{s} s (median) | {s} peak MiB (PSS)" for s in STEPS)
        + " |",
        "|---|---:|---:|" + "---:|---:|" * len(STEPS),
    ]
    for size, r in results.items():
        cells = []
        for s in STEPS:
            runs = r["runs"][s]
            cells += [
                f"{statistics.median(x['seconds'] for x in runs):.1f}",
                f"{statistics.median(x['peak_mib'] for x in runs):.0f}",
            ]
        rows.append(f"| {size} | {r['files']} | {r['facts']['kept']} | " + " | ".join(cells) + " |")
    lines = ["", "Each run, in seconds (load 1 min at its start):", ""]
    for size, r in results.items():
        for s in STEPS:
            each = ", ".join(f"{x['seconds']:.1f} ({x['load']:.2f})" for x in r["runs"][s])
            lines.append(f"- {size} {s}: {each}")
    cap = CACHE_FILE_BYTES / 2**20
    lines += [
        "",
        f"- decoded-image cache: kept in memory when a split's clean JPEGs add up to "
        f"at most {cap:.0f} MiB (`transferline/data/datasets.py` CACHE_FILE_BYTES), else "
        f"decoded per sample; train + val JPEGs here: "
        + ", ".join(
            f"{size} {r['facts']['clean_mib']:.0f} MiB for all of data/clean "
            f"({r['facts']['train_val']} train + val rows)"
            for size, r in results.items()
        ),
    ]
    return "\n".join(rows + lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1,4,16", help="multiples of the subset (default 1,4,16)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--work",
        type=Path,
        default=Path("/tmp/transferline-scale"),
        help="built data and repository copies (kept between runs)",
    )
    ap.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = ap.parse_args()
    if not DATASET.is_dir():
        sys.exit(f"{DATASET}: not found; set TRANSFERLINE_SHARED")
    load_before = os.getloadavg()
    results = {}
    for k in map(int, args.sizes.split(",")):
        size = f"{k}x"
        data = args.work / f"data-{size}"
        files = build(DATASET, data, k)
        repo = repo_copy(args.work / f"repo-{size}", data)
        scratch = args.work / f"scratch-{size}"
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
        cmds = commands(repo, scratch)
        runs = {s: [] for s in STEPS}
        for _ in range(args.repeats):
            for s in STEPS:
                load1 = os.getloadavg()[0]
                runs[s].append({**timed(cmds[s], repo), "load": load1})
                print(
                    size,
                    s,
                    json.dumps({k: v for k, v in runs[s][-1].items() if k != "stdout"}),
                    file=sys.stderr,
                )
        status = runs["status"][-1]["stdout"]
        if "up to date" not in status:
            sys.exit(f"dvc status in {repo} is not clean:\n{status}")
        results[size] = {"files": files, "facts": facts(repo), "runs": runs}
    (args.work / "results.json").write_text(json.dumps(results, indent=1))
    body = table(results)
    print(body)
    if args.write:
        begin, end = markers("scale_bench")
        block = (
            f"{begin}\nCommand: `.venv/bin/python -m bench.scale_bench "
            f"{' '.join(sys.argv[1:])}`  \n"
            f"Data: ../shared/datasets/PetImages-subset at 1x, plus perturbed re-encodings "
            f"of each photo for the larger sizes (see the script)  \n"
            f"Machine: {machine()}; Python {platform.python_version()}  \n"
            f"Load average (1/5/15 min) before {load(load_before)}, after "
            f"{load(os.getloadavg())}  \n"
            f"n = {args.repeats} runs of each command per size; wall-clock seconds of the "
            f"whole process (start-up included), page cache warm.\n\n{body}\n{end}"
        )
        write_block("scale_bench", "scale", block)


if __name__ == "__main__":
    main()
