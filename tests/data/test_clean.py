"""clean stage: real OpenCV/Pillow on the shared real datasets and on tiny generated files."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from transferline.config.errors import StageError
from transferline.config.params import Clean
from transferline.data import clean as clean_mod
from transferline.data.clean import clean, discover, jpeg_complete, judge

from helpers import ROOT, extracted_tree, make_image_folder, run, run_clean, write_image

PARAMS = Clean(workers=1)


# ---- helpers --------------------------------------------------------------------------------


def read_rgb(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert bgr is not None and bgr.ndim == 3 and bgr.shape[2] == 3, f"{path}: not 3-channel"
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def pil_reference(path: Path, size: tuple[int, int]) -> np.ndarray:
    """What the image should look like: Pillow's upright RGB, resized to `size` (w, h)."""
    with Image.open(path) as im:
        rgb = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)


def all_bytes(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def jpeg_bytes(h=64, w=80, seed=0, **kw) -> bytes:
    rng = np.random.default_rng(seed)
    rgb = cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (7, 7), 0)
    ok, buf = cv2.imencode(".jpg", rgb, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return buf.tobytes()


# ---- PetImages (real corrupt files) ---------------------------------------------------------


def test_pets_rejects_exactly_the_broken_files(pets):
    reasons = {s: (r["class"], r["reason"]) for s, r in pets["rejected"].items()}
    assert reasons == {
        "PetImages/Cat/666.jpg": ("Cat", "empty"),
        "PetImages/Cat/Thumbs.db": ("Cat", "not_image"),
        "PetImages/Cat/10404.jpg": ("Cat", "not_image"),  # PSD: see the module docstring
        "PetImages/Dog/74.jpg": ("Dog", "duplicate"),  # sorted first: Dog/180.jpg is kept
        "PetImages/Dog/10797.jpg": ("Dog", "duplicate"),  # GIF, copy of Dog/10401.jpg
    }
    assert "PSD" in pets["rejected"]["PetImages/Cat/10404.jpg"]["detail"]
    assert pets["rejected"]["PetImages/Dog/74.jpg"]["detail"] == "PetImages/Dog/180.jpg"
    assert pets["rejected"]["PetImages/Dog/10797.jpg"]["detail"] == "PetImages/Dog/10401.jpg"
    assert {"PetImages/Dog/180.jpg", "PetImages/Dog/10401.jpg"} <= set(pets["manifest"])


def test_pets_counts_add_up(pets):
    n_files = sum(1 for p in pets["src"].glob("*/*") if p.is_file())
    m = pets["metrics"]
    assert n_files == 689
    assert m["kept"] + m["rejected"] == n_files
    assert m["kept"] == len(pets["manifest"]) == 684
    assert m["rejected"] == len(pets["rejected"]) == sum(m["reasons"].values())
    assert sum(c["kept"] + c["rejected"] for c in m["classes"].values()) == n_files
    assert m["classes"] == {
        "Cat": {"kept": 336, "rejected": 3},
        "Dog": {"kept": 348, "rejected": 2},
    }
    assert list(m["reasons"]) == sorted(clean_mod.REASONS)  # every reason, sorted like every JSON
    written = sorted(p.relative_to(pets["out"]).as_posix() for p in pets["out"].rglob("*.jpg"))
    assert written == sorted(r["path"] for r in pets["manifest"].values())


def test_pets_manifest_rows(pets):
    rows = list(pets["manifest"].values())
    assert [r["path"] for r in rows] == sorted(r["path"] for r in rows)
    for r in rows:
        data = (pets["src"] / r["source"].removeprefix("PetImages/")).read_bytes()
        assert r["sha256"] == hashlib.sha256(data).hexdigest()
        assert r["path"] == f"images/{r['class']}/{r['sha256'][:16]}.jpg"
        assert r["split"] == ""
        w, h = int(r["width"]), int(r["height"])
        assert min(w, h) <= 256
        assert Image.open(pets["out"] / r["path"]).size == (w, h)


@pytest.mark.parametrize(
    "name",
    [
        "Dog/1789.jpg",  # CMYK JPEG
        "Cat/23.jpg",  # BMP named .jpg
        "Dog/1259.jpg",  # palette BMP named .jpg
        "Cat/140.jpg",  # GIF named .jpg
        "Cat/1564.jpg",  # EXIF Orientation=8
        "Dog/1827.jpg",  # EXIF Orientation=8
        "Cat/1.jpg",
    ],
)  # an ordinary JPEG
def test_pets_kept_upright_rgb_with_pillow_colours(pets, name):
    row = pets["manifest"][f"PetImages/{name}"]
    out = read_rgb(pets["out"] / row["path"])
    ref = pil_reference(pets["src"] / name, (out.shape[1], out.shape[0]))
    with Image.open(pets["src"] / name) as im:
        upright_w, upright_h = ImageOps.exif_transpose(im).size
    # same orientation as exif_transpose, scaled so the shorter side is 256 (or left alone)
    assert (out.shape[1] > out.shape[0]) == (upright_w > upright_h)
    assert abs(out.shape[1] / out.shape[0] - upright_w / upright_h) < 0.01
    # colours and orientation: an inverted CMYK or a 180-degree turn would differ by ~50+
    assert np.abs(out.astype(int) - ref).mean() < 4, name


def test_pets_exif_rotated_is_landscape(pets):
    # Cat/1564.jpg is stored 284x400 (portrait) with Orientation=8: upright it is 400x284
    row = pets["manifest"]["PetImages/Cat/1564.jpg"]
    assert (int(row["width"]), int(row["height"])) == (361, 256)


def test_pets_greyscale_becomes_three_equal_channels(pets):
    out = read_rgb(pets["out"] / pets["manifest"]["PetImages/Dog/1773.jpg"]["path"])
    assert out.shape[2] == 3
    assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 1], out[..., 2])
    assert out.std() > 10  # a real picture, not a flat fill


@pytest.mark.parametrize(
    "name",
    [
        "Cat/117.jpg",
        "Cat/1161.jpg",
        "Dog/1028.jpg",  # data after EOI
        "Dog/10408.jpg",  # zero after EOI
        "Cat/1418.jpg",
        "Cat/1614.jpg",
    ],
)  # extraneous bytes before EOI
def test_pets_harmless_jpeg_oddities_are_kept(pets, name):
    assert f"PetImages/{name}" in pets["manifest"]
    assert jpeg_complete((pets["src"] / name).read_bytes())


# ---- hymenoptera (ships train/ and val/) ----------------------------------------------------


def test_hymenoptera_splits_and_counts(hymenoptera):
    m, manifest = hymenoptera["metrics"], hymenoptera["manifest"]
    assert m["kept"] == 245 + 153 and m["rejected"] == 0 and hymenoptera["rejected"] == {}
    splits = [r["split"] for r in manifest.values()]
    assert splits.count("train") == 245 and splits.count("val") == 153
    assert all(r["source"].split("/")[1] == r["split"] for r in manifest.values())
    assert m["classes"] == {
        "ants": {"kept": 194, "rejected": 0},
        "bees": {"kept": 204, "rejected": 0},
    }


def test_hymenoptera_placeholder_gif_is_kept_as_rgb(hymenoptera):
    # Decision (module docstring): a decodable image is kept whatever it shows; the placeholder
    # is label noise that ships in the tutorial's training set.
    row = hymenoptera["manifest"]["hymenoptera_data/train/ants/imageNotFound.gif"]
    assert (row["class"], row["split"]) == ("ants", "train")
    assert read_rgb(hymenoptera["out"] / row["path"]).shape == (256, 256, 3)  # 300x300 GIF


def test_hymenoptera_big_jpeg_is_downscaled_and_odd_names_kept(hymenoptera, shared_datasets):
    manifest = hymenoptera["manifest"]
    name = (
        "val/ants/ants-devouring-remains-of-large-dead-insect-on-red-tile-in-Stellenbosch-"
        "South-Africa-closeup-1-DHD.jpg"
    )
    row = manifest[f"hymenoptera_data/{name}"]
    out = read_rgb(hymenoptera["out"] / row["path"])
    assert min(out.shape[:2]) == 256
    ref = pil_reference(shared_datasets / "hymenoptera_data" / name, (out.shape[1], out.shape[0]))
    assert np.abs(out.astype(int) - ref).mean() < 4  # libjpeg 1/N-scale decode looks the same
    for odd in [
        "train/ants/ant photos.jpg",
        "train/ants/formica.jpeg",
        "val/ants/F.pergan.28(f).jpg",
    ]:
        assert f"hymenoptera_data/{odd}" in manifest


# ---- tiny generated files: one reason each --------------------------------------------------


def test_truncated_jpeg(tmp_path):
    data = jpeg_bytes()
    for cut in (len(data) * 6 // 10, len(data) - 2):  # mid-scan, and only the EOI marker lost
        path = tmp_path / f"cut{cut}.jpg"
        path.write_bytes(data[:cut])
        assert not jpeg_complete(data[:cut]), cut  # caught even where a decoder pads with grey
        assert judge(path, PARAMS).reason == "truncated", cut
    (tmp_path / "whole.jpg").write_bytes(data + b"<html>trailing page</html>")
    assert jpeg_complete(data + b"<html>trailing page</html>")
    assert judge(tmp_path / "whole.jpg", PARAMS).reason is None


def test_truncated_png(tmp_path):
    ok, buf = cv2.imencode(
        ".png", np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    )
    (tmp_path / "cut.png").write_bytes(buf.tobytes()[: buf.size // 2])
    assert judge(tmp_path / "cut.png", PARAMS).reason == "truncated"


@pytest.mark.parametrize(
    "content",
    [
        b"<!DOCTYPE html><html><body>404 Not Found</body></html>",
        b"just some text\n" * 20,
        b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        ",
    ],
)
def test_not_an_image(tmp_path, content):
    path = tmp_path / "photo.jpg"  # the name says jpg; the bytes decide
    path.write_bytes(content)
    assert judge(path, PARAMS).reason == "not_image"


def test_damaged_jpeg_is_undecodable(tmp_path):
    data = bytearray(jpeg_bytes())
    sos = data.index(b"\xff\xda")
    data[20:sos] = b"\x00" * (sos - 20)  # wipe the tables, keep SOI and a complete scan + EOI
    (tmp_path / "bad.jpg").write_bytes(bytes(data))
    assert judge(tmp_path / "bad.jpg", PARAMS).reason == "undecodable"


def test_too_many_pixels_refused_before_decoding(tmp_path, monkeypatch):
    def no_decode(*_a, **_k):
        raise AssertionError("decoded a file that should be refused from its header")

    monkeypatch.setattr(cv2, "imdecode", no_decode)
    monkeypatch.setattr(Image.Image, "load", no_decode)
    write_image(tmp_path / "small.png", np.zeros((40, 50, 3), np.uint8), ".png")
    res = judge(tmp_path / "small.png", Clean(workers=1, max_pixels=1999))
    assert (res.reason, res.detail) == (
        "too_many_pixels",
        "50x40 = 2000 pixels > clean.max_pixels 1999",
    )

    # a 1 kB PNG whose header claims 10000x10000 (100 M pixels, over the default limit)
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")
        )

    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", (10000).to_bytes(4, "big") * 2 + b"\x08\x02\x00\x00\x00")
        + chunk(b"IDAT", zlib.compress(bytes(30001) * 10))
        + chunk(b"IEND", b"")
    )
    (tmp_path / "bomb.png").write_bytes(png)
    assert judge(tmp_path / "bomb.png", Clean(workers=1)).reason == "too_many_pixels"


def test_too_small_and_the_boundary(tmp_path):
    write_image(tmp_path / "tiny.jpg", np.full((8, 8, 3), 128, np.uint8))
    write_image(tmp_path / "edge.jpg", np.full((16, 40, 3), 128, np.uint8))
    assert judge(tmp_path / "tiny.jpg", PARAMS).reason == "too_small"
    assert judge(tmp_path / "edge.jpg", PARAMS).reason is None  # min_side 16 is allowed


def test_empty(tmp_path):
    (tmp_path / "0.jpg").write_bytes(b"")
    assert judge(tmp_path / "0.jpg", PARAMS).reason == "empty"


def test_rgba_png_is_composited_on_white(tmp_path):
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[:, 16:] = (0, 0, 255, 255)  # right half opaque red (BGRA); left half transparent black
    ok, buf = cv2.imencode(".png", rgba)
    (tmp_path / "logo.png").write_bytes(buf.tobytes())
    res = judge(tmp_path / "logo.png", PARAMS)
    rgb = cv2.cvtColor(
        cv2.imdecode(np.frombuffer(res.jpeg, np.uint8), cv2.IMREAD_UNCHANGED), cv2.COLOR_BGR2RGB
    )
    assert rgb.shape == (32, 32, 3)
    assert np.abs(rgb[:, :12].astype(int) - 255).max() < 8  # white, not black
    assert np.abs(rgb[:, 20:].astype(int) - (255, 0, 0)).max() < 12  # red stays red


def test_downscale_short_side_and_quality(tmp_path):
    write_image(tmp_path / "big.png", np.full((300, 500, 3), 90, np.uint8), ".png")
    res = judge(tmp_path / "big.png", Clean(workers=1, max_short_side=100, jpeg_quality=60))
    assert (res.width, res.height) == (167, 100)  # 500 * 100 / 300 = 166.7, rounded
    assert Image.open(io.BytesIO(res.jpeg)).size == (167, 100)


# ---- layout, names, determinism, errors -----------------------------------------------------


def test_layout_detection(tmp_path):
    img = np.full((20, 20, 3), 100, np.uint8)
    ex = extracted_tree(tmp_path / "ex", dict.fromkeys("abcde"), splits={"c": "test"})
    for rel in [
        "a/wrapper/data/train/cat/1.jpg",
        "a/wrapper/data/Valid/cat/2.jpg",
        "a/wrapper/data/test-set/dog/3.jpg",
        "a/wrapper/README.txt",
        "b/cat/4.jpg",
        "b/dog/deeper/5.jpg",
        "b/.ipynb_checkpoints/x/6.jpg",
        "b/LICENSE",
        "c/train/7.jpg",
        "d/training/cat/8.jpg",
        "e/train/cat/9.jpg",
    ]:
        write_image(ex / rel, img)
    cands, classes = discover(ex)
    got = [(c.source, c.cls, c.split) for c in cands]
    assert got == [
        ("a/wrapper/data/Valid/cat/2.jpg", "cat", "val"),
        ("a/wrapper/data/test-set/dog/3.jpg", "dog", "test"),
        ("a/wrapper/data/train/cat/1.jpg", "cat", "train"),
        ("b/cat/4.jpg", "cat", ""),
        ("b/dog/deeper/5.jpg", "dog", ""),
        ("c/train/7.jpg", "train", "test"),  # split given: children are classes
        ("d/training/cat/8.jpg", "cat", ""),  # not a split name: a wrapper
        ("e/train/cat/9.jpg", "cat", "train"),
    ]  # a lone split folder is kept
    assert classes == ["cat", "dog", "train"]


def test_mixed_split_and_class_folders_is_an_error(tmp_path):
    ex = extracted_tree(tmp_path / "ex", {"d": None})
    write_image(ex / "d/train/cat/1.jpg", np.full((20, 20, 3), 1, np.uint8))
    write_image(ex / "d/dog/2.jpg", np.full((20, 20, 3), 1, np.uint8))
    with pytest.raises(StageError, match=r"mixes split folders \['train'\].*\['dog'\]"):
        discover(ex)


def test_missing_sources_json(tmp_path):
    with pytest.raises(StageError, match="sources.json: not found"):
        clean(tmp_path, tmp_path / "o", tmp_path / "m.json", tmp_path / "r.csv", PARAMS)


def odd_names_tree(root: Path) -> Path:
    ex = extracted_tree(root, {"set": None})
    rng = np.random.default_rng(3)
    for i, rel in enumerate(
        [
            "chat noir/un chat.jpg",
            "chat noir/ünïcødé 猫 (2).png",
            'chien/a,b "quoted".jpg',
            "chien/.hidden.jpg",
            "chien/Thumbs.db",
            "chien/copy of chat.jpg",
            "vide/broken.jpg",
        ]
    ):
        write_image(
            ex / "set" / rel,
            rng.integers(0, 256, (40 + i, 60, 3), dtype=np.uint8),
            Path(rel).suffix if rel.endswith(".png") else ".jpg",
        )
    (ex / "set/chien/Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(500))
    (ex / "set/chien/copy of chat.jpg").write_bytes((ex / "set/chat noir/un chat.jpg").read_bytes())
    (ex / "set/vide/broken.jpg").write_bytes(b"")
    return ex


def test_odd_names_duplicates_across_classes_and_empty_class(tmp_path, capsys):
    ex = odd_names_tree(tmp_path / "ex")
    summary, manifest, rejected, metrics = run_clean(ex, tmp_path / "out")
    assert set(manifest) == {
        "set/chat noir/un chat.jpg",
        "set/chat noir/ünïcødé 猫 (2).png",
        'set/chien/a,b "quoted".jpg',
        "set/chien/.hidden.jpg",
    }
    assert {s: (r["reason"], r["detail"][:8]) for s, r in rejected.items()} == {
        "set/chien/Thumbs.db": ("not_image", "no image"),
        "set/chien/copy of chat.jpg": ("duplicate", "set/chat"),
        "set/vide/broken.jpg": ("empty", "0 bytes"),
    }
    assert rejected["set/chien/copy of chat.jpg"]["detail"] == "set/chat noir/un chat.jpg"
    # the duplicate's image is not left behind in the other class; the empty class has no folder
    images = tmp_path / "out/clean/images"
    assert sorted(p.relative_to(images).parts[0] for p in images.rglob("*.jpg")) == [
        "chat noir",
        "chat noir",
        "chien",
        "chien",
    ]
    assert not (images / "vide").exists()
    assert summary.empty_classes == ["vide"]
    assert metrics["classes"]["vide"] == {"kept": 0, "rejected": 1}
    assert "class 'vide' has no usable image" in capsys.readouterr().err


def test_output_identical_for_any_worker_count_and_rerun(tmp_path):
    ex = odd_names_tree(tmp_path / "ex")
    make_image_folder(ex / "gen", classes=("chat noir", "chien"), per_class=40, size=48)
    rng = np.random.default_rng(5)
    for i in range(8):  # big enough to be downscaled
        write_image(
            ex / f"gen/chien/big{i}.jpg", rng.integers(0, 256, (300 + i, 400, 3), dtype=np.uint8)
        )
    entries = json.loads((ex / "sources.json").read_text()) + [{"dir": "gen", "split": "val"}]
    (ex / "sources.json").write_text(json.dumps(entries))
    outs = []
    for i, workers in enumerate([1, 2, 2]):
        out = tmp_path / f"out{min(i, 1)}"  # third run overwrites the second's output
        run_clean(ex, out, Clean(workers=workers))
        outs.append(all_bytes(out))
    assert len(outs[0]) == 4 + 88 + 3  # images, manifest, metrics, rejected
    assert outs[0] == outs[1] == outs[2]
    assert {
        r["split"] for r in csv.DictReader(io.StringIO(outs[0]["clean/manifest.csv"].decode()))
    } == {"", "val"}
    assert not list(tmp_path.glob("out*/.*"))  # no temp folders or files left behind


def test_nothing_usable_is_an_error_and_keeps_previous_output(tmp_path):
    ex = odd_names_tree(tmp_path / "ex")
    run_clean(ex, tmp_path / "out")
    before = all_bytes(tmp_path / "out")
    for p in (ex / "set").rglob("*.*"):
        p.write_bytes(b"not an image")
    with pytest.raises(
        StageError, match=re.escape(f"{ex}: none of its 7 files is a usable image (not_image 7)")
    ):
        run_clean(ex, tmp_path / "out")
    assert all_bytes(tmp_path / "out") == before
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "clean",
        "clean.json",
        "rejected.csv",
    ]


def test_interrupted_run_leaves_previous_output(tmp_path, monkeypatch):
    ex = odd_names_tree(tmp_path / "ex")
    run_clean(ex, tmp_path / "out")
    before = all_bytes(tmp_path / "out")
    real_judge, calls = clean_mod.judge, []

    def judge_then_die(path, params):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_judge(path, params)

    monkeypatch.setattr(clean_mod, "judge", judge_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_clean(ex, tmp_path / "out")
    assert all_bytes(tmp_path / "out") == before
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "clean",
        "clean.json",
        "rejected.csv",
    ]


def test_cli_with_two_workers(tmp_path):
    odd_names_tree(tmp_path / "data" / "extracted")
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    cmd = [
        sys.executable,
        "-m",
        "stages.clean",
        "--extracted",
        "data/extracted",
        "--out",
        "data/clean",
        "--metrics",
        "metrics/clean.json",
        "--rejected",
        "reports/rejected.csv",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = run(cmd, tmp_path, env=env)
    assert "kept 4, rejected 3" in proc.stdout
    assert "Traceback" not in proc.stderr and "RuntimeWarning" not in proc.stderr
    assert json.loads((tmp_path / "metrics/clean.json").read_text())["kept"] == 4
    assert (
        (tmp_path / "reports/rejected.csv").read_text().startswith("source,class,reason,detail\n")
    )
    (tmp_path / "data/extracted/sources.json").unlink()
    proc = run(cmd, tmp_path, env=env, check=False)
    assert proc.returncode == 2 and "sources.json: not found" in proc.stderr


def test_rerun_replaces_the_whole_output(tmp_path):
    ex = odd_names_tree(tmp_path / "ex")
    _, manifest, _, _ = run_clean(ex, tmp_path / "out")
    gone = manifest['set/chien/a,b "quoted".jpg']["path"]
    (ex / 'set/chien/a,b "quoted".jpg').unlink()
    _, manifest, _, _ = run_clean(ex, tmp_path / "out")
    assert len(manifest) == 3
    assert not (tmp_path / "out/clean" / gone).exists()  # no stale image from the last run
    assert len(list((tmp_path / "out/clean/images").rglob("*.jpg"))) == 3


@pytest.mark.parametrize("workers", [1, 2])
def test_copies_across_classes_keep_only_the_first(tmp_path, workers):
    ex = extracted_tree(tmp_path / "ex", {"set": None})
    write_image(ex / "set/a/x.jpg", np.full((30, 30, 3), 7, np.uint8))
    write_image(ex / "set/a/other.jpg", np.full((30, 30, 3), 200, np.uint8))
    for copy in ("set/b/y.jpg", "set/b/z.jpg", "set/a/zz.jpg"):
        (ex / copy).parent.mkdir(parents=True, exist_ok=True)
        (ex / copy).write_bytes((ex / "set/a/x.jpg").read_bytes())
    summary, manifest, rejected, _ = run_clean(ex, tmp_path / "out", Clean(workers=workers))
    assert set(manifest) == {"set/a/x.jpg", "set/a/other.jpg"}
    assert {s: r["detail"] for s, r in rejected.items()} == dict.fromkeys(
        ["set/a/zz.jpg", "set/b/y.jpg", "set/b/z.jpg"], "set/a/x.jpg"
    )
    assert summary.empty_classes == ["b"]
    images = tmp_path / "out/clean/images"
    assert sorted(p.relative_to(images).as_posix() for p in images.rglob("*")) == sorted(
        ["a"] + [r["path"].removeprefix("images/") for r in manifest.values()]
    )


def test_clean_and_its_workers_never_import_torch():
    """clean runs before any model exists; torch's import time and memory would be paid by the
    stage process, the forkserver and every worker."""
    import subprocess

    probe = (
        "import sys, transferline.data.clean as c\n"
        "ctx = c._worker_context()\n"
        "with ctx.Pool(1) as pool:\n"
        "    worker = pool.apply(eval, (\"'torch' in __import__('sys').modules\",))\n"
        "print('torch' in sys.modules, worker)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["False", "False"]


def test_clean_workers_ignore_ctrl_c_from_birth():
    """Ctrl-C reaches every process in the group; a worker still starting (before any pool
    initializer runs) must not print a KeyboardInterrupt traceback of its own."""
    import subprocess

    probe = (
        "import signal, transferline.data.clean as c\n"
        "ctx = c._worker_context()\n"
        "with ctx.Pool(1) as pool:\n"  # no initializer: what the worker is born with
        "    print(pool.apply(signal.getsignal, (signal.SIGINT,)) == signal.SIG_IGN,\n"
        "          signal.getsignal(signal.SIGINT) == signal.default_int_handler)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["True", "True"]  # the main process itself still turns Ctrl-C into an error
