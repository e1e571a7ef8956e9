"""split: seeded, stratified train/val/test lists built from the cleaned manifest.

Reads   <clean>/manifest.csv (columns path,class,split,source,width,height,sha256) and
        params.yaml (`seed`, `split`).
Writes  <out>/classes.json, <out>/train.csv, <out>/val.csv, <out>/test.csv and <metrics>,
        exactly as docs/pipeline.md describes.
Run     python -m stages.split --clean data/clean --out data/split --metrics metrics/split.json

Rules:
- Shipped splits are kept: a row whose `split` is train/val/test stays in that split; a row with
  an empty `split` counts as train.
- If nothing ships as val, `split.val` of the train pool is carved out as val; if nothing ships
  as test, `split.test` of it is carved out as test. Both fractions are of the train pool as it
  was before any carving (val 0.15 + test 0.15 leaves 70% for train). Carving is per class,
  counts distinct images (sha256 groups, below), rounds half up, and gives each carved split at
  least one image of every class while leaving at least one for train; which images go is drawn
  with a RandomState seeded from (`seed`, class name), so one class's draw does not depend on
  the others.
- Copies never cross splits: rows sharing a sha256 form one group that is placed as a whole. A
  group the dataset ships in several splits goes to the most held-out of them (test, then val,
  then train), so a shipped evaluation set stays whole and train loses the copy; a warning
  names its paths.
- Near-duplicates (the same picture resized, re-cropped or re-encoded: difference hashes within
  `split.near_duplicate_bits` bits, transferline/data/near_duplicates.py) are carved as one
  unit, with their exact copies, so no carved split holds a near copy of another's image. Groups
  the dataset itself ships across splits are kept where they ship (its splits are its own) and
  reported: a warning, `near_duplicates` in the metrics and `near_duplicates.csv` beside the
  lists (every group of two or more images, `across_splits` yes/no).
- Labels: the classes of all rows in natural sort order (`1`, `2`, ..., `10`; `img2` before
  `img10`); label = index in classes.json.
"""

from __future__ import annotations

import csv
import math
import re
import sys
import zlib
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from transferline.config.errors import StageError
from transferline.data import near_duplicates
from transferline.outputs.atomic import json_text, staged_dir, write_json

SPLITS = ("train", "val", "test")
HELD_OUT_RANK = {"train": 0, "val": 1, "test": 2}  # a copy shipped in several splits -> highest
REQUIRED_COLUMNS = ("path", "class", "split", "sha256")  # and `dhash`, from clean (optional)
OUT_COLUMNS = ("path", "label", "class")
NEAR_FILE = "near_duplicates.csv"
NEAR_COLUMNS = ("group", "path", "class", "split", "source", "across_splits")


def natural_key(text: str) -> tuple:
    """Sort key putting digit runs in numeric order: "2" < "10", "img2" < "img10".

    re.split with a capture group puts the digit runs at the odd indices, so element types line
    up between any two keys; the original string breaks ties ("01" vs "1", "A" vs "a").
    """
    parts = re.split(r"([0-9]+)", text)
    return tuple(int(p) if i % 2 else p.casefold() for i, p in enumerate(parts)), text


def read_manifest(path: Path) -> list[dict[str, str]]:
    """The manifest's rows; StageError naming the file when it is missing, malformed or empty."""
    if not path.is_file():
        raise StageError(f"{path}: not found; run the clean stage first (dvc repro clean)")
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise StageError(
                f"{path}: missing column(s) {missing}; expected "
                "path,class,split,source,width,height,sha256 (re-run clean)"
            )
        rows = list(reader)
    for line, row in enumerate(rows, start=2):  # line 1 is the header
        if not (row["path"] and row["class"] and row["sha256"]):
            raise StageError(f"{path}:{line}: empty path, class or sha256; re-run clean")
        if row["split"] not in ("", *SPLITS):
            raise StageError(
                f"{path}:{line}: split {row['split']!r} is not one of train, val, test or empty"
            )
    if not rows:
        raise StageError(
            f"{path}: no images listed; check that the dataset holds class folders "
            "of decodable images (see reports/rejected.csv for what clean dropped)"
        )
    return rows


def group_copies(rows: list[dict[str, str]]) -> dict[str, list[dict[str, str]]]:
    """Rows grouped by sha256 (a group = one image and its byte copies), sorted by path."""
    groups: dict[str, list[dict[str, str]]] = defaultdict(list)
    for row in sorted(rows, key=lambda r: r["path"]):
        groups[row["sha256"]].append(row)
    return dict(sorted(groups.items()))


def _shipped_split(sha: str, group: list[dict[str, str]]) -> str:
    """The split a group ships in; a group shipped in several goes to the most held-out one."""
    shipped = {row["split"] or "train" for row in group}
    dest = max(shipped, key=HELD_OUT_RANK.__getitem__)
    if len(shipped) > 1:
        print(
            f"warning: {len(group)} copies of one image (sha256 {sha[:16]}) ship in "
            f"{sorted(shipped, key=HELD_OUT_RANK.__getitem__)}; all go to {dest}: "
            + ", ".join(r["path"] for r in group),
            file=sys.stderr,
        )
    if len({row["class"] for row in group}) > 1:
        print(
            f"warning: copies of one image (sha256 {sha[:16]}) are labelled with different "
            "classes; kept as labelled, placed by the first path: "
            + ", ".join(f"{r['path']} ({r['class']})" for r in group),
            file=sys.stderr,
        )
    return dest


def _carve_counts(n: int, fractions: dict[str, float]) -> dict[str, int]:
    """Images of one class (n in the train pool) to carve into each split in `fractions`:
    fraction * n rounded half up, at least 1 each; the largest carve shrinks while train would
    be left empty. Needs n >= 1 + len(fractions) (the caller checks)."""
    counts = {name: max(1, math.floor(frac * n + 0.5)) for name, frac in fractions.items()}
    while n - sum(counts.values()) < 1:
        largest = max(counts, key=lambda k: (counts[k], HELD_OUT_RANK[k]))
        counts[largest] -= 1
    return counts


def _too_few(cls: str, n_pool: int, n_total: int, carve: dict[str, float]) -> StageError:
    needed = ["train", *carve]
    return StageError(
        f"class {cls!r} has {n_pool} distinct image(s) for train ({n_total} in the manifest); "
        f"it needs at least {len(needed)}, one each for {', '.join(needed)}. Add images of "
        f"{cls!r}, or remove its folder from the dataset"
    )


def _near_units(
    groups: dict[str, list[dict[str, str]]], placed: dict[str, str], bits: int | None
) -> dict[str, str]:
    """{sha256: unit key}: the near-duplicate unit (the smallest sha256 of its near-duplicate
    group) of every group; each group is its own unit when grouping is off or the manifest has no
    hashes (a manifest from before clean stored them)."""
    keys = list(groups)
    hashes = [groups[k][0].get("dhash") or "" for k in keys]
    if bits is None or not all(hashes):
        return {k: k for k in keys}
    roots = near_duplicates.groups(hashes, bits)
    return {k: keys[r] for k, r in zip(keys, roots)}


def _near_report(
    groups: dict[str, list[dict[str, str]]], placed: dict[str, str], unit: dict[str, str]
) -> tuple[dict, list[tuple]]:
    """(metrics, near_duplicates.csv rows) for the near-duplicate groups of 2+ images, as the
    dataset shipped them."""
    members: dict[str, list[str]] = defaultdict(list)
    for sha, key in unit.items():
        members[key].append(sha)
    rows, across, images, number = [], 0, 0, 0
    for key in sorted(members):
        shas = members[key]
        if len(shas) < 2:
            continue
        number += 1
        crossing = len({placed[s] for s in shas}) > 1
        across += crossing
        group_rows = sorted((r for s in shas for r in groups[s]), key=lambda r: r["path"])
        images += len(group_rows)
        for r in group_rows:
            split = placed[r["sha256"]]
            rows.append(
                (number, r["path"], r["class"], split, r["source"], "yes" if crossing else "no")
            )
        if crossing:
            print(
                "warning: near-duplicates ship in different splits (kept where they ship): "
                + ", ".join(f"{r['path']} ({placed[r['sha256']]})" for r in group_rows),
                file=sys.stderr,
            )
    return {"groups": number, "images": images, "across_shipped_splits": across}, rows


def _carve(
    pool: dict[str, list[str]], carve: dict[str, float], seed: int, totals: Counter
) -> dict[str, str]:
    """Destination split of every train-pool group: {sha256: split}. `pool` maps class -> the
    class's group keys (sorted); `carve` maps split name -> fraction of the pool to move there."""
    dest: dict[str, str] = {}
    for cls, shas in pool.items():
        if len(shas) < 1 + len(carve):
            raise _too_few(cls, len(shas), totals[cls], carve)
        counts = _carve_counts(len(shas), carve)
        rng = np.random.RandomState([seed, zlib.crc32(cls.encode("utf-8"))])
        order = [shas[i] for i in rng.permutation(len(shas))]
        start = 0
        for name in sorted(counts, key=HELD_OUT_RANK.__getitem__, reverse=True):  # test, val
            for sha in order[start : start + counts[name]]:
                dest[sha] = name
            start += counts[name]
        for sha in order[start:]:
            dest[sha] = "train"
    return dest


def _fractions_to_carve(placed: dict[str, str], split_params: Any) -> dict[str, float]:
    """{split: fraction} for val/test when nothing ships in them; a needed 0 is an error."""
    carve = {}
    for name in ("val", "test"):
        if name in placed.values():
            continue
        frac = getattr(split_params, name)
        if frac <= 0:
            raise StageError(
                f"split.{name} is {frac} but the dataset ships no {name} split, so "
                f"{name} would be empty; set split.{name} in params.yaml (e.g. 0.15)"
            )
        carve[name] = frac
    return carve


def assign_splits(
    rows: list[dict[str, str]],
    seed: int,
    split_params: Any,
) -> tuple[list[str], dict[str, list[dict[str, str]]]]:
    """(classes in natural order, {split: rows}) following the rules in the module docstring."""
    classes, by_split, _ = _assign(rows, seed, split_params)
    return classes, by_split


def _assign(rows: list[dict[str, str]], seed: int, split_params: Any):
    """assign_splits, plus the near-duplicate report (None when grouping is off)."""
    totals = Counter(row["class"] for row in rows)
    classes = sorted(totals, key=natural_key)
    if len(classes) < 2:
        raise StageError(
            f"only one class ({classes[0]!r}, {totals[classes[0]]} images) in the "
            "manifest; classification needs at least two. Check the dataset's "
            "layout: class folders directly inside the dataset (or its split "
            "folders)"
        )
    groups = group_copies(rows)
    placed = {sha: _shipped_split(sha, group) for sha, group in groups.items()}
    bits = getattr(split_params, "near_duplicate_bits", None)
    unit = _near_units(groups, placed, bits)
    hashed = bits is not None and all(groups[k][0].get("dhash") for k in groups)
    report = _near_report(groups, placed, unit) if hashed else None
    carve = _fractions_to_carve(placed, split_params)
    # the train pool in units: a near-duplicate group's train-pool part moves as one, counted
    # under the class of its first image
    pool: dict[str, list[str]] = {cls: [] for cls in classes}
    in_unit: dict[str, list[str]] = defaultdict(list)
    for sha, split in placed.items():
        if split == "train":
            in_unit[unit[sha]].append(sha)
    for key in sorted(in_unit):
        pool[groups[in_unit[key][0]][0]["class"]].append(key)
    for key, dest in _carve(pool, carve, seed, totals).items():
        for sha in in_unit[key]:
            placed[sha] = dest
    by_split: dict[str, list[dict[str, str]]] = {name: [] for name in SPLITS}
    for sha, split in placed.items():
        by_split[split].extend(groups[sha])
    for name in SPLITS:
        by_split[name].sort(key=lambda r: r["path"])
    return classes, by_split, report


def split_metrics(classes: list[str], by_split: dict[str, list[dict[str, str]]]) -> dict:
    """{split: {"total": n, "classes": {class: n}}}, every class listed (0 when absent)."""
    out = {}
    for name, rows in by_split.items():
        counts = Counter(row["class"] for row in rows)
        out[name] = {"total": len(rows), "classes": {cls: counts[cls] for cls in classes}}
    return out


def _write_csv(path: Path, rows: Iterable[dict[str, str]], label: dict[str, int]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(OUT_COLUMNS)
        for row in rows:
            writer.writerow([row["path"], label[row["class"]], row["class"]])


def write_outputs(
    out_dir: Path,
    metrics_path: Path,
    classes: list[str],
    by_split: dict[str, list[dict[str, str]]],
    metrics: dict,
    near_rows: list[tuple] | None = None,
) -> None:
    with staged_dir(out_dir) as tmp:
        (tmp / "classes.json").write_text(json_text({"classes": classes}), encoding="utf-8")
        label = {cls: i for i, cls in enumerate(classes)}
        for name in SPLITS:
            _write_csv(tmp / f"{name}.csv", by_split[name], label)
        if near_rows is not None:
            with (tmp / NEAR_FILE).open("w", newline="", encoding="utf-8") as f:
                writer = csv.writer(f, lineterminator="\n")
                writer.writerow(NEAR_COLUMNS)
                writer.writerows(near_rows)
    write_json(metrics_path, metrics)


def read_sources(clean_dir: Path) -> dict[str, str]:
    """Clean path -> the user's own file name (the manifest's `source`); {} where there is no
    manifest (images that did not come through clean are named by their clean path)."""
    manifest = Path(clean_dir) / "manifest.csv"
    if not manifest.is_file():
        return {}
    return {row["path"]: row["source"] for row in read_manifest(manifest)}


def read_near_duplicates(split_dir: Path) -> list[dict[str, str]]:
    """data/split/near_duplicates.csv rows ([] when grouping was off)."""
    path = Path(split_dir) / NEAR_FILE
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def split_dataset(
    clean_dir: Path, out_dir: Path, metrics_path: Path, *, seed: int, split_params: Any
) -> dict:
    """Write the split for `clean_dir`'s manifest; returns the metrics (counts per split/class).
    `split_params` has `.val` and `.test` fractions (the validated `split` section)."""
    clean_dir, out_dir, metrics_path = Path(clean_dir), Path(out_dir), Path(metrics_path)
    rows = read_manifest(clean_dir / "manifest.csv")
    classes, by_split, near = _assign(rows, seed, split_params)
    metrics = split_metrics(classes, by_split)
    near_rows = None
    if near is not None:
        counts, near_rows = near
        metrics["near_duplicates"] = {"max_bits": split_params.near_duplicate_bits, **counts}
    for name in ("val", "test"):  # a shipped split may lack a class; evaluation still runs
        absent = [c for c in classes if metrics[name]["classes"][c] == 0]
        if absent:
            print(f"warning: no {name} images of class(es) {absent}", file=sys.stderr)
    write_outputs(out_dir, metrics_path, classes, by_split, metrics, near_rows)
    return metrics
