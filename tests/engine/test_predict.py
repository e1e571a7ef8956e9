"""transferline.engine.predict: a photo reaches the network exactly as clean + evaluate feed it, the
command line (table, JSON, gallery, exit status, unusable files), five-crop TTA, --imagenet on the
packaged backbone, and the stage's input folder and CSV."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from stages import predict as predict_stage
from transferline import models
from transferline.commands import predict as predict_cmd
from transferline.config.errors import StageError
from transferline.config.params import Clean, validate
from transferline.data import datasets as data
from transferline.data.clean import clean
from transferline.data.transforms import eval_transform, read_image
from transferline.engine import predict
from transferline.engine.inference import predict_probs
from transferline.models import bundle

from helpers import checkpoint_meta, make_image_folder, write_image

CLASSES = ("a", "b", "c")
CLEAN = Clean(max_short_side=32, workers=1)  # small, so every test image is downscaled


def _exif_rotated(path: Path, rgb: np.ndarray) -> Path:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    Image.fromarray(rgb).save(path, "JPEG", exif=exif, quality=90)
    return path


@pytest.fixture(scope="module")
def cleaned(tmp_path_factory):
    """An extracted source with odd files, the real clean stage run over it, and a checkpoint
    that records CLEAN: (root, manifest rows, checkpoint path)."""
    root = tmp_path_factory.mktemp("predict")
    src = make_image_folder(root / "extracted" / "src", classes=CLASSES, per_class=3, size=48)
    rng = np.random.default_rng(1)
    big = rng.integers(0, 255, (90, 140, 3), dtype=np.uint8)
    _exif_rotated(src / "a" / "rotated.jpg", big)
    rgba = np.dstack([big, np.where(rng.random((90, 140)) < 0.5, 255, 0).astype(np.uint8)])
    Image.fromarray(rgba, "RGBA").save(src / "b" / "cutout.png")
    Image.fromarray(big).convert("L").save(src / "c" / "grey.jpg")
    (root / "extracted" / "sources.json").write_text(json.dumps([{"dir": "src", "split": None}]))
    clean(root / "extracted", root / "clean", root / "clean.json", root / "rejected.csv", CLEAN)
    with open(root / "clean" / "manifest.csv", newline="") as f:
        manifest = list(csv.DictReader(f))
    torch.manual_seed(0)
    model = models.build("cnn2", len(CLASSES), "none")
    meta = checkpoint_meta("cnn2", CLASSES, 32)
    meta["clean"] = CLEAN.model_dump(exclude={"workers"})
    models.save_checkpoint(root / "models" / "best.pt", model, meta)
    return root, manifest, root / "models" / "best.pt"


# ---- one definition of what the network sees -------------------------------------------------


def test_a_photo_is_prepared_exactly_as_clean_stored_it(cleaned):
    root, manifest, _ = cleaned
    odd = {"rotated.jpg", "cutout.png", "grey.jpg"}
    assert {Path(r["source"]).name for r in manifest} >= odd
    for row in manifest:
        got = predict.prepare(
            row["source"], root / "extracted" / row["source"], SimpleNamespace(clean=CLEAN)
        )
        assert got.ok, row
        stored = read_image(root / "clean" / row["path"])  # what train/evaluate decode
        assert torch.equal(got.image, stored), row["source"]
    rotated = next(r for r in manifest if r["source"].endswith("rotated.jpg"))
    # upright (stored 140 wide, 90 high, EXIF says turn it), then downscaled to 32 px wide
    assert (int(rotated["width"]), int(rotated["height"])) == (32, 50)


def test_predict_gives_evaluate_probabilities_for_the_original_files(cleaned):
    root, manifest, ckpt = cleaned
    b = bundle.load(ckpt)
    inputs = [(r["source"], root / "extracted" / r["source"]) for r in manifest]
    results = predict.predict(inputs, b, top_k=3)
    rows = [(r["path"], CLASSES.index(r["class"])) for r in manifest]
    dataset = data.ImageDataset(
        root / "clean", rows, eval_transform(image_size=32, mean=b.mean, std=b.std)
    )
    loader = data.make_loader(dataset, batch_size=8, shuffle=False, workers=0, seed=0, device="cpu")
    expected = predict_probs(b.model, loader)
    for result, probs in zip(results, expected, strict=True):
        assert [c for c, _ in result.top] == [CLASSES[i] for i in probs.argsort()[::-1]]
        assert [p for _, p in result.top] == pytest.approx(sorted(probs)[::-1], abs=1e-6)


def test_tta_averages_the_softmax_of_five_crops(cleaned):
    root, manifest, ckpt = cleaned
    b = bundle.load(ckpt)
    path = root / "extracted" / manifest[0]["source"]
    (result,) = predict.predict([("x", path)], b, top_k=3, tta=True)
    views = b.transform(tta=True)(predict.prepare("x", path, b).image)  # (5, 3, 32, 32)
    assert views.shape == (5, 3, 32, 32)
    with torch.no_grad():
        expected = torch.softmax(b.model(views), 1).mean(0).double()
    assert dict(result.top) == pytest.approx(
        {c: float(expected[i]) for i, c in enumerate(CLASSES)}, abs=1e-6
    )


# ---- the command line -----------------------------------------------------------------------


@pytest.fixture
def photos(tmp_path, cleaned):
    """A folder of 3 images, a broken one, a text file and a hidden file, plus a loose image."""
    folder = make_image_folder(tmp_path / "photos", classes=("x",), per_class=3, size=40) / "x"
    (folder / "broken.jpg").write_bytes((folder / "0.jpg").read_bytes()[:300])
    (folder / "notes.txt").write_text("not an image")
    (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    loose = write_image(tmp_path / "loose.png", np.full((40, 60, 3), 90, np.uint8), ".png")
    return folder, loose


def test_table_lists_every_file_and_failures_set_the_exit_status(photos, cleaned, capsys):
    folder, loose = photos
    _, _, ckpt = cleaned
    rc = predict_cmd.main(
        [str(folder), str(loose), "missing.jpg", "--model", str(ckpt), "--top-k", "2"]
    )
    out = capsys.readouterr()
    assert rc == 1
    lines = out.out.splitlines()
    assert lines[0].split() == ["file", "top-2"]
    by_file = {line.split()[0]: line for line in lines[1:]}
    assert set(by_file) == {
        f"{folder}/{n}" for n in ("0.jpg", "1.jpg", "2.jpg", "broken.jpg", "notes.txt")
    } | {str(loose), "missing.jpg"}
    assert "FAILED truncated" in by_file[f"{folder}/broken.jpg"]
    assert "FAILED not_image" in by_file[f"{folder}/notes.txt"]
    assert "FAILED not_found" in by_file["missing.jpg"]
    assert len(by_file[str(loose)].split()) == 5  # file + 2 x (class, probability)
    assert "3 of 7 files could not be used" in out.err
    assert predict_cmd.main([str(folder / "0.jpg"), "--model", str(ckpt)]) == 0


def test_json_output_and_gallery(photos, cleaned, tmp_path, capsys):
    folder, _ = photos
    _, _, ckpt = cleaned
    rc = predict_cmd.main(
        [
            str(folder),
            "--model",
            str(ckpt),
            "--json",
            "--allow-failures",
            "--gallery",
            str(tmp_path / "g.png"),
        ]
    )
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert [p["file"] for p in out["predictions"]] == [f"{folder}/{i}.jpg" for i in range(3)]
    for p in out["predictions"]:
        probs = [t["probability"] for t in p["top_k"]]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True)
        assert sum(probs) == pytest.approx(1, abs=1e-5)
        assert {t["class"] for t in p["top_k"]} == set(CLASSES)
    assert {f["reason"] for f in out["failed"]} == {"truncated", "not_image"}
    image = cv2.imread(str(tmp_path / "g.png"))
    assert image is not None and image.shape[0] > 100


def test_runs_anywhere_without_params_and_names_the_missing_choice(tmp_path, cleaned, photos):
    folder, _ = photos
    _, _, ckpt = cleaned
    # the installed console command, away from any checkout (no stages/, no params.yaml)
    command = [str(Path(sys.executable).parent / "transferline"), "predict"]
    env_path = {"PATH": "/usr/bin:/bin"}
    ok = subprocess.run(
        [*command, str(folder / "0.jpg"), "--model", str(ckpt)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env_path,
    )
    assert ok.returncode == 0, ok.stderr
    assert "0.jpg" in ok.stdout
    missing = subprocess.run(
        [*command, str(folder)], cwd=tmp_path, capture_output=True, text=True, env=env_path
    )
    assert missing.returncode == 2
    assert "metrics/best.json: not found" in missing.stderr and "--model" in missing.stderr


def test_checkpoint_without_clean_settings_is_refused(tmp_path, cleaned):
    _, _, ckpt = cleaned
    raw = torch.load(ckpt, weights_only=True)
    del raw["clean"]
    torch.save(raw, tmp_path / "old.pt")
    with pytest.raises(StageError, match="old.pt: records no `clean` settings.*re-run training"):
        bundle.load(tmp_path / "old.pt")


# ---- what the pretrained backbone sees ------------------------------------------------------


def test_imagenet_names_come_from_the_installed_packages():
    names = bundle.imagenet_classes()
    assert len(names) == 1000 and names[0] == "tench" and names[310] == "ant"


def test_imagenet_top5_of_the_packaged_backbone(tmp_path, capsys):
    from sklearn.datasets import load_sample_image

    photo = write_image(tmp_path / "china.jpg", load_sample_image("china.jpg"))
    rc = predict_cmd.main([str(photo), "--imagenet", "--arch", "efficientnet_lite0", "--json"])
    assert rc == 0
    (p,) = json.loads(capsys.readouterr().out)["predictions"]
    assert len(p["top_k"]) == 5
    assert p["top_k"][0]["class"] == "palace"


def test_imagenet_sees_an_ant(shared_datasets, capsys):
    ants = sorted((shared_datasets / "hymenoptera_data" / "val" / "ants").glob("*.jpg"))[:4]
    assert predict_cmd.main([*map(str, ants), "--imagenet", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["kind"] == "imagenet" and out["model"] == "efficientnet_lite0"
    top5 = [[t["class"] for t in p["top_k"]] for p in out["predictions"]]
    assert sum("ant" in t for t in top5) >= 3, top5


# ---- the stage ------------------------------------------------------------------------------


def stage(tmp_path, ckpt, params_raw, **predict_params) -> tuple[int, list[dict]]:
    """Run the predict stage's command line with params.yaml from params_raw."""
    params_raw["predict"].update(predict_params)
    validate(params_raw)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params_raw))
    (tmp_path / "models").mkdir(exist_ok=True)
    (tmp_path / "models" / "finetune.pt").write_bytes(ckpt.read_bytes())
    (tmp_path / "best.json").write_text(json.dumps({"strategy": "finetune"}))
    rc = predict_stage.main(
        [
            "--params",
            str(tmp_path / "params.yaml"),
            "--unlabelled",
            str(tmp_path / "unlabelled"),
            "--best",
            str(tmp_path / "best.json"),
            "--models",
            str(tmp_path / "models"),
            "--csv",
            str(tmp_path / "p.csv"),
            "--gallery",
            str(tmp_path / "p.png"),
        ]
    )
    rc = 0 if rc is None else rc
    with open(tmp_path / "p.csv", newline="") as f:
        return rc, list(csv.DictReader(f))


def test_stage_classifies_fresh_demo_images_and_a_folder(tmp_path, cleaned, params_raw):
    _, _, ckpt = cleaned
    own = make_image_folder(tmp_path / "mine", classes=("q",), per_class=2, size=40)
    params_raw.setdefault("runtime", {})["device"] = "cpu"
    rc, rows = stage(tmp_path, ckpt, params_raw, images=str(own), demo_images=3, top_k=2)
    assert rc == 0
    assert [r["file"] for r in rows] == [
        "demo/broken.jpg",
        "demo/photo_000.jpg",
        "demo/photo_001.jpg",
        "demo/photo_002.jpg",
        "mine/q/0.jpg",
        "mine/q/1.jpg",
    ]
    assert rows[0]["error"].startswith("truncated") and rows[0]["class"] == ""
    for r in rows[1:]:
        assert r["class"] in CLASSES and r["error"] == ""
        assert len(r["top_k"].split("; ")) == 2
    first = (tmp_path / "p.csv").read_bytes(), (tmp_path / "p.png").read_bytes()
    stage(tmp_path, ckpt, params_raw, images=str(own), demo_images=3, top_k=2)
    assert ((tmp_path / "p.csv").read_bytes(), (tmp_path / "p.png").read_bytes()) == first


def test_stage_without_images_writes_the_header_and_an_empty_gallery(tmp_path, cleaned, params_raw):
    _, _, ckpt = cleaned
    params_raw["dataset"] = "hymenoptera"  # not generated: no demo images
    rc, rows = stage(tmp_path, ckpt, params_raw, images=None)
    assert rc == 0 and rows == []
    assert (tmp_path / "p.csv").read_text() == "file,class,probability,top_k,error\n"
    assert list((tmp_path / "unlabelled").iterdir()) == []
    assert cv2.imread(str(tmp_path / "p.png")) is not None


def test_stage_names_a_missing_images_folder(tmp_path, cleaned, params_raw):
    _, _, ckpt = cleaned
    with pytest.raises(StageError, match="predict.images: .*nope is not a folder"):
        stage(tmp_path, ckpt, params_raw, images=str(tmp_path / "nope"))
