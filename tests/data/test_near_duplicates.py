"""Near-duplicates: a perceptual hash that survives resizing, re-encoding and a small crop, groups
joined transitively, kept inside one split when split carves val/test, and reported (not moved)
when the dataset ships them in different splits."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from transferline.config.params import Split
from transferline.data import near_duplicates as nd
from transferline.data.split import split_dataset

from helpers import SHARED, extracted_tree, run_clean

MAX_BITS = Split().near_duplicate_bits


def _picture(seed: int, size=(240, 320)) -> np.ndarray:
    """A smooth 'photo': blurred random blobs (a hash of pure noise would mean nothing)."""
    rng = np.random.default_rng(seed)
    img = np.zeros((*size, 3), np.uint8)
    for _ in range(12):
        centre = (int(rng.integers(0, size[1])), int(rng.integers(0, size[0])))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        cv2.circle(img, centre, int(rng.integers(15, 90)), colour, -1)
    return cv2.GaussianBlur(img, (0, 0), 6)


def _variants(img: np.ndarray) -> dict[str, np.ndarray]:
    h, w = img.shape[:2]
    ok, jpeg = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 40])
    return {
        "resized": cv2.resize(img, (w // 2, h // 2), interpolation=cv2.INTER_AREA),
        "re-encoded": cv2.imdecode(jpeg, cv2.IMREAD_COLOR),
        # 1% off each side: what a 4-bit dHash survives (2% is caught about half the time)
        "cropped": img[h // 100 : h - h // 100, w // 100 : w - w // 100],
        "greyscale": cv2.cvtColor(img, cv2.COLOR_BGR2GRAY),
    }


def _bits(a: str, b: str) -> int:
    return bin(int(a, 16) ^ int(b, 16)).count("1")


def _photos() -> list[np.ndarray]:
    folder = SHARED / "datasets" / "hymenoptera_data" / "val" / "bees"
    if not folder.is_dir():  # real photos where ../shared is there, drawn ones elsewhere
        return [_picture(s) for s in range(6)]
    return [cv2.imread(str(p)) for p in sorted(folder.glob("*.jpg"))[:6]]


def test_copies_stay_within_the_threshold_and_other_pictures_beyond_it():
    pictures = _photos() + [_picture(s) for s in range(100, 104)]
    hashes = [nd.dhash(p) for p in pictures]
    for img, h in zip(pictures, hashes):
        for name, copy in _variants(img).items():
            assert _bits(h, nd.dhash(copy)) <= MAX_BITS, name
    others = [_bits(a, b) for i, a in enumerate(hashes) for b in hashes[i + 1 :]]
    assert min(others) > MAX_BITS


def test_groups_join_transitively_and_take_exact_copies():
    a = "0000000000000000"
    hashes = [a, "0000000000000007", "000000000000003f", "ffffffffffffffff", "fffffffffffffff0"]
    # 0-1: 3 bits, 1-2: 3 bits (0-2: 6 bits, joined through 1); 3-4: 4 bits
    assert nd.groups(hashes, 4) == [0, 0, 0, 3, 3]
    assert nd.groups(hashes, 2) == [0, 1, 2, 3, 4]
    assert nd.groups(hashes, 2, same=[(1, 4)]) == [0, 1, 2, 3, 1]


# ---- split -----------------------------------------------------------------------------------

COLUMNS = ["path", "class", "split", "source", "width", "height", "sha256", "dhash"]


def _manifest(clean: Path, rows: list[tuple[str, str, str, str]]) -> None:
    """(class, shipped split, name, dhash) rows."""
    clean.mkdir(parents=True, exist_ok=True)
    lines = sorted(
        [
            f"images/{c}/{n}.jpg",
            c,
            s,
            f"photos/{c}/{n}.JPG",
            64,
            48,
            hashlib.sha256(f"{c}/{n}".encode()).hexdigest(),
            h,
        ]
        for c, s, n, h in rows
    )
    with (clean / "manifest.csv").open("w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(COLUMNS)
        w.writerows(lines)


def _hash(k: int) -> str:
    """Hashes far apart from each other: k's bits spread over all 64 positions."""
    return f"{int.from_bytes(hashlib.sha256(str(k).encode()).digest()[:8], 'big'):016x}"


def _split_of(out: Path) -> dict[str, str]:
    where = {}
    for name in ("train", "val", "test"):
        with (out / f"{name}.csv").open() as f:
            where.update({r["path"]: name for r in csv.DictReader(f)})
    return where


@pytest.mark.parametrize("seed", range(6))
def test_a_near_duplicate_group_is_carved_into_one_split(tmp_path, seed):
    rows = [(c, "", f"{c}{i:02d}", _hash(100 * ord(c) + i)) for c in "ab" for i in range(20)]
    base = int(_hash(7), 16)
    for k, bit in enumerate((0, 1, 2)):  # three near copies of one picture in class a
        rows.append(("a", "", f"copy{k}", f"{base ^ (1 << bit):016x}"))
    _manifest(tmp_path / "clean", rows)
    out = tmp_path / "split"
    metrics = split_dataset(
        tmp_path / "clean", out, tmp_path / "split.json", seed=seed, split_params=Split()
    )
    where = _split_of(out)
    assert len({where[f"images/a/copy{k}.jpg"] for k in range(3)}) == 1
    assert metrics["near_duplicates"] == {
        "max_bits": MAX_BITS,
        "groups": 1,
        "images": 3,
        "across_shipped_splits": 0,
    }


def test_near_duplicates_the_dataset_ships_across_splits_are_reported_not_moved(tmp_path):
    rows = [
        (c, s, f"{c}{s}{i}", _hash(1000 * ord(c) + 10 * len(s) + i))
        for c in "ab"
        for s in ("train", "test")
        for i in range(4)
    ]
    base = int(_hash(9), 16)
    rows += [
        ("a", "train", "leak_train", f"{base:016x}"),
        ("a", "test", "leak_test", f"{base ^ 1:016x}"),
    ]
    _manifest(tmp_path / "clean", rows)
    out = tmp_path / "split"
    metrics = split_dataset(
        tmp_path / "clean", out, tmp_path / "split.json", seed=0, split_params=Split()
    )
    assert metrics["near_duplicates"]["across_shipped_splits"] == 1
    where = _split_of(out)  # the dataset's own splits stay as shipped
    assert where["images/a/leak_train.jpg"] == "train"
    assert where["images/a/leak_test.jpg"] == "test"
    with (out / "near_duplicates.csv").open() as f:
        listed = list(csv.DictReader(f))
    assert [(r["group"], r["source"], r["split"], r["across_splits"]) for r in listed] == [
        ("1", "photos/a/leak_test.JPG", "test", "yes"),
        ("1", "photos/a/leak_train.JPG", "train", "yes"),
    ]


def test_near_duplicate_grouping_can_be_off(tmp_path):
    base = int(_hash(3), 16)
    rows = [(c, "", f"{c}{i:02d}", _hash(1000 * ord(c) + i)) for c in "ab" for i in range(10)]
    rows += [("a", "", "x", f"{base:016x}"), ("a", "", "y", f"{base ^ 1:016x}")]
    _manifest(tmp_path / "clean", rows)
    metrics = split_dataset(
        tmp_path / "clean",
        tmp_path / "split",
        tmp_path / "split.json",
        seed=0,
        split_params=Split(near_duplicate_bits=None),
    )
    assert "near_duplicates" not in metrics


# ---- clean stores the hash --------------------------------------------------------------------


def test_clean_stores_a_hash_that_finds_resized_and_reencoded_copies(tmp_path):
    src = tmp_path / "src" / "pets"
    src.mkdir(parents=True)
    img = _picture(5)
    cv2.imwrite(str(src / "original.png"), img)
    for name, copy in _variants(img).items():
        cv2.imwrite(str(src / f"{name}.jpg"), copy)
    cv2.imwrite(str(src / "other.png"), _picture(6))
    ex = extracted_tree(tmp_path / "extracted", {"ds": src.parent})
    _, manifest, _, _ = run_clean(ex, tmp_path / "out")
    hashes = {Path(source).stem: row["dhash"] for source, row in manifest.items()}
    assert all(len(h) == 16 for h in hashes.values())
    for name in ("resized", "re-encoded", "cropped", "greyscale"):
        assert _bits(hashes["original"], hashes[name]) <= MAX_BITS, name
    assert _bits(hashes["original"], hashes["other"]) > MAX_BITS
    assert json.loads((tmp_path / "out" / "clean.json").read_text())["kept"] == 6
