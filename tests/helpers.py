"""What tests share besides fixtures: tiny image folders and data trees, a project repo under
real git + DVC, shrunk params, commands with their output shown on failure, tmpfs mounts."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from transferline.config import params as P
from transferline.config.params import Clean
from transferline.data.clean import clean

ROOT = Path(__file__).resolve().parents[1]


SHARED = Path(os.environ.get("TRANSFERLINE_SHARED", ROOT.parent / "shared"))


def write_image(path: Path, rgb: np.ndarray, ext: str = ".jpg") -> Path:
    """Encode an (H, W, 3) uint8 RGB array with OpenCV and write it to `path`."""
    ok, buf = cv2.imencode(ext, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.tobytes())
    return path


def make_image_folder(root: Path, classes=("a", "b", "c"), per_class=8, size=48, seed=0) -> Path:
    """root/<class>/<i>.jpg: each class a distinct colour with noise, so classes are learnable.
    `per_class`: images of each class, or {class: images}."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        base = np.zeros(3)
        base[c % 3] = 200
        for i in range(per_class[name] if isinstance(per_class, dict) else per_class):
            img = np.clip(base + rng.normal(0, 30, (size, size, 3)), 0, 255).astype(np.uint8)
            write_image(root / name / f"{i}.jpg", img)
    return root


def run(cmd: list[str], cwd: Path, check=True, **kw) -> subprocess.CompletedProcess:
    """Run a command, returning its output; on failure show stdout/stderr in the assertion."""
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(map(str, cmd))} exited {proc.returncode}\n"
            f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    return proc


def zip_folder(folder: Path, dest: Path, top: str) -> Path:
    """Zip `folder` as `top/...` (stored: the JPEGs would not compress anyway)."""
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_STORED) as zf:
        for path in sorted(folder.rglob("*")):
            zf.write(path, f"{top}/{path.relative_to(folder).as_posix()}")
    return dest


DVC = [sys.executable, "-m", "dvc"]


PROJECT_FILES = ["dvc.yaml", "params.yaml", "stages", "transferline", ".dvcignore", ".gitignore"]


def make_project_repo(dest: Path, params: dict | None = None) -> Path:
    """A fresh git + DVC repo holding this project's pipeline (optionally with other params),
    with one commit, so DVC's experiments and metrics diff have a baseline."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.exists():
            shutil.copy2(src, dest / name)
    if params is not None:
        (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q", "-b", "main"], dest)
    run(["git", "config", "user.email", "test@example.com"], dest)
    run(["git", "config", "user.name", "test"], dest)
    run(DVC + ["init", "-q"], dest)
    shutil.copytree(ROOT / ".dvc" / "plots", dest / ".dvc" / "plots")  # dvc.yaml's templates
    run(["git", "add", "-A"], dest)
    run(["git", "commit", "-q", "-m", "pipeline"], dest)
    return dest


# The strategies the tiny pipeline keeps: the two whose training differs most (LP-FT through two
# phases on images; a head on cached features). What DVC does per strategy is the same for any
# number of them; every shipped strategy trains, shrunk, in tests/engine/test_train.py.
TINY_STRATEGIES = ("finetune", "feature_extractor")


def tiny(params: dict) -> dict:
    """The shipped params shrunk to a seconds-long CPU run: the same stages, TINY_STRATEGIES of
    the shipped strategies."""
    params["strategies"] = {name: params["strategies"][name] for name in TINY_STRATEGIES}
    params["datasets"]["demo"]["generate"].update(per_class=24, size=48)
    params["train"].update(image_size=48, workers=0, batch_size=16)
    for strategy in params["strategies"].values():
        strategy["epochs"] = 1
        for phase in strategy.get("phases", []):
            phase["epochs"] = 1
    params["evaluate"].update(batch_size=32, top_losses=4)
    params["report"].update(gallery=4, augment_samples=4)
    params["predict"].update(demo_images=3, gallery=4)
    return params


def build_pipeline(dest: Path) -> Path:
    """The whole pipeline on the tiny demo through `dvc repro`, its results committed."""
    repo = make_project_repo(dest, tiny(yaml.safe_load((ROOT / "params.yaml").read_text())))
    run(DVC + ["repro"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-q", "-m", "demo results"], repo)
    return repo


def copy_of(repo: Path, dest: Path) -> Path:
    """An independent copy of a repo (git history, DVC cache and outputs)."""
    shutil.copytree(repo, dest, symlinks=True)
    return dest


def extracted_tree(root: Path, sources: dict[str, Path | None], splits=None) -> Path:
    """A data/extracted-style folder: sources.json + one entry per source (a link to an existing
    folder, or an empty folder the test fills)."""
    root.mkdir(parents=True, exist_ok=True)
    entries = []
    for name, target in sources.items():
        if target is None:
            (root / name).mkdir()
        else:
            (root / name).symlink_to(target, target_is_directory=True)
        entries.append({"dir": name, "split": (splits or {}).get(name)})
    (root / "sources.json").write_text(json.dumps(entries))
    return root


def run_clean(ex: Path, out: Path, params: Clean | None = None):
    """Run the worker into `out`; return (summary, manifest by source, rejected by source,
    metrics dict)."""
    params = params or Clean(workers=1)
    summary = clean(ex, out / "clean", out / "clean.json", out / "rejected.csv", params)
    with open(out / "clean" / "manifest.csv", newline="", encoding="utf-8") as f:
        manifest = {r["source"]: r for r in csv.DictReader(f)}
    with open(out / "rejected.csv", newline="", encoding="utf-8") as f:
        rejected = {r["source"]: r for r in csv.DictReader(f)}
    return summary, manifest, rejected, json.loads((out / "clean.json").read_text())


CLASSES = ("a", "b", "c")


def make_clean_split(
    root: Path, per_class=8, val_per_class=3, size=40, counts: dict[str, int] | None = None
) -> tuple[Path, Path]:
    """data/clean-like images/<class>/<i>.jpg and data/split-like CSVs + classes.json; `counts`
    (class -> images, e.g. an imbalanced set) instead of `per_class` images of each of CLASSES."""
    counts = counts or {cls: per_class for cls in CLASSES}
    clean, split = root / "clean", root / "split"
    make_image_folder(clean / "images", classes=list(counts), per_class=counts, size=size)
    split.mkdir(parents=True)
    (split / "classes.json").write_text(json.dumps({"classes": list(counts)}))
    rows = {"train": [], "val": [], "test": []}
    for label, (cls, n) in enumerate(counts.items()):
        for i in range(n):
            which = "val" if i < val_per_class else "train"
            rows[which].append((f"images/{cls}/{i}.jpg", label, cls))
    for name, items in rows.items():
        with (split / f"{name}.csv").open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["path", "label", "class"])
            w.writerows(sorted(items))
    return clean, split


def make_params(params_raw: dict, strategies: dict, runtime: dict | None = None, **train) -> object:
    """The real params.yaml shrunk to a seconds-long CPU run with the given strategies."""
    raw = dict(params_raw)
    raw["threads"] = 1
    raw["train"] = {**raw["train"], "image_size": 32, "batch_size": 8, "workers": 0, **train}
    raw["runtime"] = {**raw.get("runtime", {}), "device": "cpu", **(runtime or {})}
    raw["strategies"] = strategies
    return P.validate(raw)


def run_train(params, name: str, dataset, out: Path, resume_dir: Path | None = None) -> dict:
    from transferline.engine.train import (
        train,  # torch and the models: only for the tests that train
    )

    clean, split = dataset
    return train(
        name,
        params,
        clean_dir=clean,
        split_dir=split,
        model_path=out / "m.pt",
        metrics_path=out / "m.json",
        plots_path=out / "p.tsv",
        resume_dir=resume_dir,
    )


class Mounts:
    """tmpfs mounts for tests (root only; skipped with the reason elsewhere), unmounted after."""

    def __init__(self):
        self.paths: list[Path] = []

    def tmpfs(self, path: Path, size: str) -> Path:
        """A tmpfs of `size` bytes (e.g. "2m") at `path`: writes past it fail with ENOSPC."""
        path.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            pytest.skip(
                "needs permission to mount a size-limited tmpfs (root or "
                f"CAP_SYS_ADMIN): {proc.stderr.strip() or proc.returncode}"
            )
        self.paths.append(path)
        return path

    def read_only(self, path: Path) -> None:
        """Remount the tmpfs at `path` read-only (chmod would not stop root)."""
        run(["mount", "-o", "remount,ro", str(path)], path.parent)

    def unmount_all(self) -> None:
        for path in reversed(self.paths):
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def checkpoint_meta(
    arch: str = "cnn2", classes=("a", "b", "c"), image_size: int = 32, head=None
) -> dict:
    """Checkpoint metadata as train writes it, for a model built by hand in a test."""
    from transferline import models
    from transferline.config.params import Clean
    from transferline.data.transforms import resize_size

    mean, std = models.norm_stats(arch)
    return {
        "arch": arch,
        "num_classes": len(classes),
        "classes": list(classes),
        "transform": {
            "image_size": image_size,
            "resize_size": resize_size(image_size),
            "mean": mean,
            "std": std,
        },
        "clean": Clean().model_dump(exclude={"workers"}),
        "head": models.head_spec(head),
        "strategy": {"name": "t"},
        "best_epoch": 1,
        "select": "val_acc",
    }
