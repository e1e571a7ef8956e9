"""transferline.data.split on manifests written straight into tmp_path (split never opens the
images)."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import sys
from collections import Counter, defaultdict
from pathlib import Path

import pytest
import yaml

from transferline.config.errors import StageError
from transferline.config.params import Split
from transferline.data.split import natural_key, split_dataset

from helpers import ROOT, run

MANIFEST_COLUMNS = ["path", "class", "split", "source", "width", "height", "sha256"]
SPLITS = ("train", "val", "test")


def write_manifest(
    clean: Path, rows: list[tuple[str, str, str]], shas: dict[str, str] | None = None
) -> Path:
    """clean/manifest.csv from (class, shipped split, name) rows; sha256 from `shas` by path,
    else unique per path."""
    clean.mkdir(parents=True, exist_ok=True)
    shas = shas or {}
    lines = []
    for cls, split, name in rows:
        path = f"images/{cls}/{name}.jpg"
        sha = shas.get(path, hashlib.sha256(path.encode()).hexdigest())
        lines.append([path, cls, split, f"ds/{cls}/{name}.jpg", 64, 48, sha])
    lines.sort()
    with (clean / "manifest.csv").open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(MANIFEST_COLUMNS)
        writer.writerows(lines)
    return clean


def images(counts: dict[str, int], split: str = "", prefix: str = "") -> list[tuple]:
    return [(cls, split, f"{prefix}{i:03d}") for cls, n in counts.items() for i in range(n)]


def read_split(out: Path) -> dict[str, list[dict[str, str]]]:
    result = {}
    for name in SPLITS:
        with (out / f"{name}.csv").open(newline="") as f:
            result[name] = list(csv.DictReader(f))
    return result


def paths(rows: list[dict[str, str]]) -> set[str]:
    return {row["path"] for row in rows}


def do_split(tmp_path: Path, rows, *, seed=0, val=0.15, test=0.15, shas=None, tag="out"):
    clean = write_manifest(tmp_path / "clean", rows, shas)
    out, metrics = tmp_path / tag / "split", tmp_path / tag / "split.json"
    result = split_dataset(clean, out, metrics, seed=seed, split_params=Split(val=val, test=test))
    return result, read_split(out), out


def test_stratified_proportions_hold_per_class(tmp_path):
    counts = {"a": 40, "b": 23, "c": 11}
    metrics, split, out = do_split(tmp_path, images(counts), val=0.2, test=0.1)
    classes = json.loads((out / "classes.json").read_text())["classes"]
    assert classes == ["a", "b", "c"]
    for cls, n in counts.items():
        per = {name: sum(r["class"] == cls for r in split[name]) for name in SPLITS}
        assert abs(per["val"] - 0.2 * n) <= 1, (cls, per)
        assert abs(per["test"] - 0.1 * n) <= 1, (cls, per)
        assert sum(per.values()) == n
        assert {name: metrics[name]["classes"][cls] for name in SPLITS} == per
    every = [r["path"] for name in SPLITS for r in split[name]]
    assert len(every) == len(set(every)) == sum(counts.values())
    for name in SPLITS:
        assert [r["path"] for r in split[name]] == sorted(paths(split[name]))
        assert all(int(r["label"]) == classes.index(r["class"]) for r in split[name])
        assert metrics[name]["total"] == len(split[name])
    assert json.loads((tmp_path / "out" / "split.json").read_text()) == metrics


def test_same_seed_is_byte_identical_other_seed_differs(tmp_path):
    rows = images({"a": 30, "b": 30, "c": 30})
    files = [
        "split/classes.json",
        "split/train.csv",
        "split/val.csv",
        "split/test.csv",
        "split.json",
    ]

    def run_with(seed, tag):
        do_split(tmp_path, rows, seed=seed, tag=tag)
        return {f: (tmp_path / tag / f).read_bytes() for f in files}

    first, again, other = run_with(0, "s0"), run_with(0, "s0b"), run_with(1, "s1")
    assert first == again
    assert first["split/val.csv"] != other["split/val.csv"]
    assert first["split/test.csv"] != other["split/test.csv"]
    assert first["split.json"] == other["split.json"]  # same counts, different images
    assert first["split/classes.json"].endswith(b"\n")


def test_shipped_val_is_kept_and_test_carved_from_train(tmp_path):
    # hymenoptera's shape: train/ and val/ ship, no test
    train = images({"ants": 30, "bees": 25}, "train", "t")
    val = images({"ants": 10, "bees": 12}, "val", "v")
    _, split, _ = do_split(tmp_path, train + val, val=0.15, test=0.2)
    shipped_train = {f"images/{c}/{n}.jpg" for c, _, n in train}
    assert paths(split["val"]) == {f"images/{c}/{n}.jpg" for c, _, n in val}
    assert paths(split["test"]) | paths(split["train"]) == shipped_train
    assert not paths(split["test"]) & paths(split["train"])
    test_counts = Counter(r["class"] for r in split["test"])
    assert test_counts == {"ants": 6, "bees": 5}  # 0.2 of the shipped train, per class


def test_shipped_train_val_test_are_untouched(tmp_path):
    shipped = {name: images({"x": 7, "y": 3}, name, name[:2]) for name in SPLITS}
    unsplit = images({"x": 2, "y": 2}, "", "u")  # no split given: counts as train
    _, split, _ = do_split(tmp_path, [r for rs in shipped.values() for r in rs] + unsplit)
    for name in SPLITS:
        expected = {f"images/{c}/{n}.jpg" for c, _, n in shipped[name]}
        if name == "train":
            expected |= {f"images/{c}/{n}.jpg" for c, _, n in unsplit}
        assert paths(split[name]) == expected, name


def test_copies_never_cross_splits(tmp_path, capsys):
    rows = images({"a": 30, "b": 30})
    shas = {}
    for cls in ("a", "b"):  # images 0..14 come in pairs: 0=1, 2=3, ...
        for i in range(0, 15, 2):
            sha = f"{cls}{i:03d}".ljust(64, "0")
            shas[f"images/{cls}/{i:03d}.jpg"] = shas[f"images/{cls}/{i + 1:03d}.jpg"] = sha
    # one image the dataset ships in both train and test, under two names
    rows += [
        ("a", "train", "dup_train"),
        ("a", "test", "dup_test"),
        ("b", "test", "t0"),
        ("a", "test", "t1"),
    ]
    shas["images/a/dup_train.jpg"] = shas["images/a/dup_test.jpg"] = "f" * 64
    _, split, _ = do_split(tmp_path, rows, shas=shas)
    where = defaultdict(set)
    for name in SPLITS:
        for row in split[name]:
            where[shas.get(row["path"], row["path"])].add(name)
    assert all(len(s) == 1 for s in where.values()), {k: v for k, v in where.items() if len(v) > 1}
    assert where["f" * 64] == {"test"}  # the most held-out shipped split wins
    assert "images/a/dup_train.jpg" in capsys.readouterr().err


def test_classes_in_natural_order(tmp_path):
    names = [str(i) for i in range(1, 13)]
    _, _, out = do_split(tmp_path, images({n: 4 for n in names}), tag="digits")
    assert json.loads((out / "classes.json").read_text())["classes"] == names
    _, split, out = do_split(tmp_path, images({"img10": 4, "img2": 4, "img1": 4}), tag="img")
    assert json.loads((out / "classes.json").read_text())["classes"] == ["img1", "img2", "img10"]
    assert {r["label"] for r in split["train"] if r["class"] == "img10"} == {"2"}
    assert sorted(["b10", "a", "b9", "B1", "b01"], key=natural_key) == [
        "a",
        "B1",
        "b01",
        "b9",
        "b10",
    ]


def test_class_with_too_few_images_is_named(tmp_path):
    with pytest.raises(StageError, match=r"class 'rare' has 2 distinct image\(s\)"):
        do_split(tmp_path, images({"common": 20, "rare": 2}))
    # with val shipped only train + test are needed, so 2 images are enough
    _, split, _ = do_split(
        tmp_path,
        images({"common": 20, "rare": 2}, "train") + images({"common": 3, "rare": 1}, "val", "v"),
        tag="ok",
    )
    assert Counter(r["class"] for r in split["test"])["rare"] == 1


def test_single_class_and_empty_manifest_fail_clearly(tmp_path):
    with pytest.raises(StageError, match=r"only one class \('solo', 9 images\)"):
        do_split(tmp_path, images({"solo": 9}))
    with pytest.raises(StageError, match=r"manifest\.csv: no images listed"):
        do_split(tmp_path, [], tag="empty")


def test_needed_split_with_zero_fraction_names_the_key(tmp_path):
    with pytest.raises(StageError, match=r"split\.val is 0"):
        do_split(tmp_path, images({"a": 10, "b": 10}), val=0.0)


def _cli_project(tmp_path: Path, val) -> Path:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["split"]["val"] = val
    tmp_path.mkdir()
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    write_manifest(tmp_path / "data" / "clean", images({"ants": 12, "bees": 12}))
    return tmp_path


def _cli(cwd: Path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return run(
        [
            sys.executable,
            "-m",
            "stages.split",
            "--clean",
            "data/clean",
            "--out",
            "data/split",
            "--metrics",
            "metrics/split.json",
        ],
        cwd,
        check=False,
        env=env,
    )


def test_cli_writes_outputs_and_rejects_bad_param(tmp_path):
    good = _cli_project(tmp_path / "good", 0.15)
    proc = _cli(good)
    assert proc.returncode == 0, proc.stderr
    for name in ("classes.json", "train.csv", "val.csv", "test.csv"):
        assert (good / "data" / "split" / name).is_file()
    assert json.loads((good / "metrics" / "split.json").read_text())["val"]["total"] == 4

    bad = _cli_project(tmp_path / "bad", 1.5)
    proc = _cli(bad)
    assert proc.returncode == 2
    assert "split.val" in proc.stderr and "Traceback" not in proc.stderr
    assert not (bad / "data" / "split").exists()
