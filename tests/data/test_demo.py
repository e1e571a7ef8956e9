"""The demo archive: deterministic bytes, the promised counts, every broken kind present, and a
class signal that is shape, not colour."""

from __future__ import annotations

import hashlib
import io
import zipfile

import numpy as np
import pytest
from PIL import Image

from transferline.data.demo import CLASS_NAMES, ZIP_DATE, build_demo_zip

SMALL = dict(classes=3, per_class=12, size=32)  # seconds, not minutes


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    path = tmp_path_factory.mktemp("demo") / "demo.zip"
    summary = build_demo_zip(path, seed=0, **SMALL)
    return path, summary


def members(path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {i.filename: zf.read(i) for i in zf.infolist() if not i.is_dir()}


def decodes(data: bytes) -> Image.Image | None:
    """The fully decoded image, or None when the bytes are not a complete image."""
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
        return img
    except Exception:
        return None


def test_same_seed_same_bytes(demo, tmp_path):
    path, _ = demo
    again = build_demo_zip(tmp_path / "again.zip", seed=0, **SMALL)
    assert (tmp_path / "again.zip").read_bytes() == path.read_bytes()
    assert again.members == len(members(path))


def test_other_seed_other_images(demo, tmp_path):
    path, _ = demo
    build_demo_zip(tmp_path / "other.zip", seed=1, **SMALL)
    ours, theirs = members(path), members(tmp_path / "other.zip")
    assert sorted(ours) == sorted(theirs)  # same layout ...
    good = [n for n in ours if n.endswith("_0005.jpg")]
    assert good and all(ours[n] != theirs[n] for n in good)  # ... different pictures


def test_layout_and_fixed_metadata(demo):
    path, _ = demo
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
    names = [i.filename for i in infos]
    assert names == sorted(names)
    assert all(n.startswith(("demo/", "__MACOSX/")) for n in names)
    assert {i.date_time for i in infos} == {ZIP_DATE}
    assert {i.compress_type for i in infos} == {zipfile.ZIP_STORED}
    classes = {n.split("/")[1] for n in names if n.startswith("demo/") and n.count("/") >= 2}
    assert classes == set(CLASS_NAMES[:3])


def test_good_images_per_class(demo):
    """Decodable, full-size, unique images: exactly per_class in every class folder."""
    path, summary = demo
    files = members(path)
    size = SMALL["size"]
    for cls in CLASS_NAMES[:3]:
        seen = set()
        for name, data in files.items():
            img = decodes(data) if name.startswith(f"demo/{cls}/") else None
            if img is not None and img.size == (size, size):
                seen.add(hashlib.sha256(data).hexdigest())
        assert len(seen) == SMALL["per_class"], cls
    assert summary.good == {c: SMALL["per_class"] for c in CLASS_NAMES[:3]}


def test_broken_and_odd_files_are_there(demo):
    path, summary = demo
    files = members(path)
    in_class = {n: d for n, d in files.items() if n.startswith("demo/")}

    def find(pred):
        return [n for n, d in in_class.items() if pred(n, d)]

    jpg = lambda n: n.endswith(".jpg")  # noqa: E731
    assert find(lambda n, d: jpg(n) and d == b"")  # empty
    assert find(lambda n, d: jpg(n) and d[:2] == b"\xff\xd8" and decodes(d) is None)  # truncated
    assert find(lambda n, d: jpg(n) and d.lstrip().lower().startswith(b"<!doctype html"))
    assert find(lambda n, d: n.endswith("/Thumbs.db"))
    assert find(lambda n, d: n.endswith("/.DS_Store"))
    assert find(lambda n, d: n.split("/")[-1].startswith("._"))
    assert [n for n in files if n.startswith("__MACOSX/") and "/._" in n]
    assert find(lambda n, d: jpg(n) and d[:2] == b"BM" and decodes(d).format == "BMP")
    modes = {(decodes(d).format, decodes(d).mode) for d in in_class.values() if decodes(d)}
    assert {("JPEG", "CMYK"), ("JPEG", "L"), ("PNG", "RGBA")} <= modes
    digests = [hashlib.sha256(d).hexdigest() for d in in_class.values() if d]
    assert len(digests) > len(set(digests))  # an exact duplicate
    assert any(decodes(d) and min(decodes(d).size) < 16 for d in in_class.values())  # tiny
    assert len(summary.broken) >= 6 and set(summary.broken.values()) <= set(files)


def test_six_classes(tmp_path):
    summary = build_demo_zip(tmp_path / "six.zip", classes=6, per_class=5, size=32, seed=0)
    assert summary.classes == list(CLASS_NAMES)
    folders = {n.split("/")[1] for n in members(tmp_path / "six.zip") if n.startswith("demo/")}
    assert folders == set(CLASS_NAMES)


def test_colour_does_not_give_the_class_away(tmp_path):
    """Nearest class-mean on mean RGB, scored on held-out images: near chance (1/3)."""
    per_class = 40
    build_demo_zip(tmp_path / "d.zip", classes=3, per_class=per_class, size=32, seed=0)
    files = members(tmp_path / "d.zip")
    feats, labels = [], []
    for c, cls in enumerate(CLASS_NAMES[:3]):
        for i in range(per_class):
            img = decodes(files.get(f"demo/{cls}/{cls}_{i:04d}.jpg", b""))
            if img is not None and img.mode == "RGB":
                feats.append(np.asarray(img, np.float32).reshape(-1, 3).mean(0))
                labels.append(c)
    feats, labels = np.array(feats), np.array(labels)
    train = np.arange(len(labels)) % 2 == 0
    means = np.stack([feats[train & (labels == c)].mean(0) for c in range(3)])
    pred = np.argmin(((feats[~train, None] - means) ** 2).sum(-1), axis=1)
    assert (pred == labels[~train]).mean() < 0.5
