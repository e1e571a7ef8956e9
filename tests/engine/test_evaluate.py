"""transferline.engine.evaluate: metrics from hand-made probabilities, TTA averaging with fake
models, and a real (tiny, untrained) checkpoint scored on generated images in tmp_path."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from transferline import models
from transferline.config.errors import StageError
from transferline.config.params import validate
from transferline.data import datasets as data
from transferline.data import transforms
from transferline.engine.evaluate import compute_metrics, confusion_records, evaluate, scores
from transferline.engine.inference import predict_probs
from transferline.engine.runtime import resolve

from helpers import ROOT, checkpoint_meta, make_image_folder

CPU = resolve(device="cpu")

CLASSES = ["cat", "dog", "eel"]
# labels 0 0 1 1 2 2, argmax 0 1 1 1 2 0: 4 of 6 right
LABELS = np.array([0, 0, 1, 1, 2, 2])
PROBS = np.array(
    [
        [0.7, 0.2, 0.1],
        [0.3, 0.6, 0.1],
        [0.1, 0.8, 0.1],
        [0.2, 0.5, 0.3],
        [0.1, 0.1, 0.8],
        [0.5, 0.1, 0.4],
    ]
)
TOP_KEYS = {"accuracy", "balanced_accuracy", "macro_f1", "log_loss"}
PER_CLASS_KEYS = {"precision", "recall", "f1", "support"}


def flat_keys(obj, prefix=""):
    if isinstance(obj, dict):
        return {k for key, value in obj.items() for k in flat_keys(value, f"{prefix}{key}.")}
    return {prefix.rstrip(".")}


# ---- metrics from arrays --------------------------------------------------------------------


def test_scores_match_hand_computed_values():
    got = scores(PROBS, LABELS, 3)
    # per class (precision, recall): cat (1/2, 1/2), dog (2/3, 1), eel (1, 1/2)
    f1 = [0.5, 2 * (2 / 3) / (2 / 3 + 1), 2 * 0.5 / 1.5]
    assert got["accuracy"] == pytest.approx(4 / 6)
    assert got["balanced_accuracy"] == pytest.approx((0.5 + 1 + 0.5) / 3)
    assert got["macro_f1"] == pytest.approx(sum(f1) / 3)
    assert got["log_loss"] == pytest.approx(-np.mean(np.log(PROBS[np.arange(6), LABELS])))
    assert "top_k_accuracy" not in got


def test_compute_metrics_layout_rounding_and_per_class():
    tta = np.roll(PROBS, 1, axis=1)  # a different set of predictions for the TTA side
    m = compute_metrics(PROBS, tta, LABELS, CLASSES, top_k=5)
    assert set(m) == TOP_KEYS | {"tta", "per_class"}
    assert set(m["tta"]) == TOP_KEYS
    assert m["tta"]["accuracy"] == pytest.approx(np.mean(tta.argmax(1) == LABELS))
    assert list(m["per_class"]) == CLASSES
    assert m["per_class"]["dog"] == {"precision": 0.666667, "recall": 1.0, "f1": 0.8, "support": 2}
    assert m["per_class"]["cat"]["precision"] == 0.5
    assert m["accuracy"] == 0.666667  # rounded to 6 decimals


def test_class_never_predicted_scores_zero_not_nan():
    probs = np.array([[0.9, 0.1, 0.0], [0.8, 0.2, 0.0], [0.1, 0.9, 0.0]])
    m = compute_metrics(probs, probs, np.array([0, 2, 1]), CLASSES, top_k=5)
    assert m["per_class"]["eel"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert all(math.isfinite(v) for v in (m["macro_f1"], m["log_loss"]))


def test_top_k_only_when_more_classes_than_k():
    labels = np.array([0, 1, 2, 0])
    probs = np.array(
        [
            [0.5, 0.3, 0.2],  # top-1 hit
            [0.5, 0.3, 0.2],  # top-2 hit only
            [0.5, 0.3, 0.2],  # miss even in top 2
            [0.2, 0.3, 0.5],
        ]
    )  # miss even in top 2
    with_k = compute_metrics(probs, probs, labels, CLASSES, top_k=2)
    assert with_k["accuracy"] == 0.25
    assert with_k["top_k_accuracy"] == 0.5
    assert "top_k_accuracy" not in with_k["tta"]
    assert "top_k_accuracy" not in compute_metrics(probs, probs, labels, CLASSES, top_k=3)


def test_keys_identical_across_strategies():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 40)
    good = compute_metrics(
        rng.dirichlet(np.ones(3), 40), rng.dirichlet(np.ones(3), 40), labels, CLASSES, top_k=2
    )
    never_eel = np.tile([0.6, 0.4, 0.0], (40, 1))  # a class never predicted, p = 0 somewhere
    poor = compute_metrics(never_eel, never_eel, labels, CLASSES, top_k=2)
    assert (
        flat_keys(good)
        == flat_keys(poor)
        == (
            TOP_KEYS
            | {"top_k_accuracy"}
            | {f"tta.{k}" for k in TOP_KEYS}
            | {f"per_class.{c}.{k}" for c in CLASSES for k in PER_CLASS_KEYS}
        )
    )
    assert math.isfinite(poor["log_loss"])


def test_confusion_records_use_class_names_sorted_by_path():
    records = confusion_records(
        [2, 0, 1], [2, 1, 1], ["images/z.jpg", "images/a.jpg", "images/m.jpg"], CLASSES
    )
    assert records == [
        {"actual": "dog", "predicted": "cat", "path": "images/a.jpg"},
        {"actual": "dog", "predicted": "dog", "path": "images/m.jpg"},
        {"actual": "eel", "predicted": "eel", "path": "images/z.jpg"},
    ]


# ---- TTA averaging --------------------------------------------------------------------------


class LogitsInPixels(torch.nn.Module):
    """Returns the first 3 pixels of channel 0, row 0 as the logits: tests choose the outputs."""

    def forward(self, x):
        return x[:, 0, 0, :3]


def test_tta_averages_softmax_over_views():
    torch.manual_seed(0)
    x = torch.randn(4, 10, 3, 8, 8) * 3  # (B, V, 3, H, W)
    got = predict_probs(LogitsInPixels(), [(x, torch.zeros(4))], chunk=7)  # chunks cut views
    want = torch.softmax(x[:, :, 0, 0, :3].double(), dim=2).mean(dim=1).numpy()
    assert got.shape == (4, 3)
    np.testing.assert_allclose(got, want, atol=1e-6)
    logit_mean = torch.softmax(x[:, :, 0, 0, :3].mean(dim=1).double(), dim=1).numpy()
    assert not np.allclose(got, logit_mean, atol=1e-3)  # probabilities, not logits, averaged
    single = predict_probs(LogitsInPixels(), [(x[:, 0], None), (x[:, 1], None)])
    assert single.shape == (8, 3)
    np.testing.assert_allclose(single.sum(axis=1), 1.0)


class RightOnlyWhenFlipped(torch.nn.Module):
    """Two classes; the true class is 0 for every image. A view whose left column is brighter
    than its right one (the mirrored views here) gets a confident right answer; any other view a
    mild wrong one."""

    def forward(self, x):
        flipped = x[:, :, :, 0].mean(dim=(1, 2)) > x[:, :, :, -1].mean(dim=(1, 2))
        right, wrong = torch.tensor([6.0, 0.0]), torch.tensor([0.0, 1.0])
        return torch.where(flipped[:, None], right, wrong)


def test_tta_with_flips_fixes_a_model_right_only_on_flipped_views():
    ramp = torch.linspace(0, 1, 8).expand(2, 3, 8, 8)  # brighter on the right: (B, 3, H, W)
    crops = torch.stack([ramp] * 5, dim=1)  # (B, 5, 3, H, W) unflipped views
    ten = torch.cat([crops, crops.flip(-1)], dim=1)  # + their mirror images
    model = RightOnlyWhenFlipped()
    assert (predict_probs(model, [(ramp, None)]).argmax(1) == 1).all()  # single view: wrong
    assert (predict_probs(model, [(crops, None)]).argmax(1) == 1).all()  # five crops: wrong
    probs = predict_probs(model, [(ten, None)])
    p_right = 0.5 * (
        torch.softmax(torch.tensor([6.0, 0.0]), 0)[0]
        + torch.softmax(torch.tensor([0.0, 1.0]), 0)[0]
    )
    np.testing.assert_allclose(probs[:, 0], float(p_right), atol=1e-6)
    assert (probs.argmax(1) == 0).all()


def test_tta_transform_gives_five_or_ten_views():
    img = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, 40, 52), np.uint8))
    norm = dict(image_size=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    five = transforms.tta_transform(**norm, flip=False)(img)
    ten = transforms.tta_transform(**norm, flip=True)(img)
    assert five.shape == (5, 3, 32, 32) and ten.shape == (10, 3, 32, 32)
    for view in five:  # every crop's mirror image is among the ten views
        assert min(float((view.flip(-1) - v).abs().max()) for v in ten) < 1e-5


# ---- the stage on a real checkpoint ---------------------------------------------------------


def write_split(split_dir: Path, clean_dir: Path, classes: list[str]) -> list[tuple[str, int]]:
    """data/split for every image under clean_dir/images: classes.json and test.csv (all
    images), train.csv and val.csv (the same rows; evaluate reads only test)."""
    rows = sorted(
        (p.relative_to(clean_dir).as_posix(), classes.index(p.parent.name))
        for p in (clean_dir / "images").glob("*/*.jpg")
    )
    split_dir.mkdir(parents=True, exist_ok=True)
    (split_dir / "classes.json").write_text(json.dumps({"classes": classes}))
    for name in ("train", "val", "test"):
        with (split_dir / f"{name}.csv").open("w", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(["path", "label", "class"])
            w.writerows([path, label, classes[label]] for path, label in rows)
    return rows


@pytest.fixture
def tiny(tmp_path, params_raw):
    """A cnn1 checkpoint (untrained), 3 classes x 4 generated images, all in test."""
    classes = ["a", "b", "c"]
    clean = tmp_path / "clean"
    make_image_folder(clean / "images", classes=classes, per_class=4, size=40)
    rows = write_split(tmp_path / "split", clean, classes)
    torch.manual_seed(0)
    model = models.build("cnn1", len(classes), "none")
    models.save_checkpoint(tmp_path / "m.pt", model, checkpoint_meta("cnn1", classes, 32))
    params = validate(params_raw)
    return tmp_path, rows, params


def run_evaluate(root: Path, params, tag="out", model="m.pt", split="split", every_output=False):
    """The stage's function on root's files; `every_output` adds the mistakes file and the
    Grad-CAM figure to the metrics, confusion and per-class files."""
    return evaluate(
        model_path=root / model,
        clean_dir=root / "clean",
        split_dir=root / split,
        metrics_path=root / tag / "metrics.json",
        confusion_path=root / tag / "confusion.json",
        per_class_path=root / tag / "per_class.json",
        mistakes_path=root / tag / "mistakes.json" if every_output else None,
        cam_path=root / tag / "cam.png" if every_output else None,
        settings=params.evaluate.model_copy(update={"batch_size": 5}),
        seed=params.seed,
        threads=1,
    )


def test_evaluate_end_to_end_writes_contract_files(tiny):
    root, rows, params = tiny
    metrics = run_evaluate(root, params)
    on_disk = json.loads((root / "out" / "metrics.json").read_text())
    # the headline numbers only: per-class scores are a plot, not columns of `dvc metrics show`
    assert on_disk == {k: v for k, v in metrics.items() if k != "per_class"}
    assert flat_keys(on_disk) == (TOP_KEYS | {f"tta.{k}" for k in TOP_KEYS})  # 3 <= top_k
    table = json.loads((root / "out" / "per_class.json").read_text())
    assert [r["class"] for r in table] == ["a", "b", "c"]
    assert all(set(r) == PER_CLASS_KEYS | {"class"} for r in table)
    assert [r["support"] for r in table] == [4, 4, 4]
    assert table == [{"class": c, **metrics["per_class"][c]} for c in "abc"]
    records = json.loads((root / "out" / "confusion.json").read_text())
    assert [r["path"] for r in records] == [p for p, _ in rows]
    assert {r["actual"] for r in records} == {"a", "b", "c"}
    assert {r["predicted"] for r in records} <= {"a", "b", "c"}
    acc = np.mean([r["actual"] == r["predicted"] for r in records])
    assert on_disk["accuracy"] == pytest.approx(acc, abs=1e-6)
    # deterministic: two runs write the same bytes, in every file the stage writes
    for tag in ("every", "again"):
        run_evaluate(root, params, tag=tag, every_output=True)
    names = sorted(p.name for p in (root / "every").iterdir())
    assert names == ["cam.png", "confusion.json", "metrics.json", "mistakes.json", "per_class.json"]
    for name in names:
        assert (root / "every" / name).read_bytes() == (root / "again" / name).read_bytes()
    assert (root / "every" / "metrics.json").read_bytes() == (
        root / "out" / "metrics.json"
    ).read_bytes()


def test_class_mismatch_with_split_says_retrain(tiny):
    root, _, params = tiny
    (root / "split" / "classes.json").write_text(json.dumps({"classes": ["a", "c", "b"]}))
    with pytest.raises(StageError, match=r"m\.pt.*re-run training"):
        run_evaluate(root, params)
    assert not (root / "out").exists()


def test_missing_model_is_named(tmp_path, params_raw):
    params = validate(params_raw)
    with pytest.raises(StageError, match=r"nothere\.pt: not found; run `dvc repro train@nothere`"):
        run_evaluate(tmp_path, params, model="nothere.pt")


def test_cli_missing_model_exits_2_with_message(tmp_path, params_raw):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params_raw))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "stages.evaluate",
            "scratch",
            "--clean",
            "c",
            "--split",
            "s",
            "--model",
            "models/scratch.pt",
            "--metrics",
            "m.json",
            "--confusion",
            "c.json",
            "--per-class",
            "p.json",
            "--mistakes",
            "w.json",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 2, proc.stderr
    assert "models/scratch.pt: not found; run `dvc repro train@scratch`" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_mistakes_name_the_users_files_and_rank_by_loss(tiny):
    """plots/mistakes/<S>.json: the highest-loss test images under the names the clean manifest
    records (the user's own), their loss consistent with the probabilities, the confused pairs
    adding up to the errors the confusion records hold."""
    root, rows, params = tiny
    with (root / "clean" / "manifest.csv").open("w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["path", "class", "split", "source", "width", "height", "sha256"])
        for k, (path, label) in enumerate(rows):
            w.writerow([path, "abc"[label], "", f"holiday/IMG_{k:04d}.JPG", 40, 40, "0" * 64])
    settings = params.evaluate.model_copy(update={"batch_size": 5, "top_losses": 5})
    evaluate(
        model_path=root / "m.pt",
        clean_dir=root / "clean",
        split_dir=root / "split",
        metrics_path=root / "out" / "metrics.json",
        confusion_path=root / "out" / "confusion.json",
        mistakes_path=root / "out" / "mistakes.json",
        settings=settings,
        seed=params.seed,
        threads=1,
    )
    why = json.loads((root / "out" / "mistakes.json").read_text())
    top = why["top_losses"]
    names = {path: f"holiday/IMG_{k:04d}.JPG" for k, (path, _) in enumerate(rows)}
    assert len(top) == 5 and all(t["file"] == names[t["path"]] for t in top)
    assert [t["loss"] for t in top] == sorted((t["loss"] for t in top), reverse=True)
    assert all(t["loss"] == pytest.approx(-np.log(t["p_actual"]), abs=1e-5) for t in top)
    records = json.loads((root / "out" / "confusion.json").read_text())
    wrong = sum(r["actual"] != r["predicted"] for r in records)
    assert sum(p["count"] for p in why["most_confused"]) == wrong
    accuracy = json.loads((root / "out" / "metrics.json").read_text())["accuracy"]
    per_class = why["per_class_accuracy"]
    assert sum(per_class.values()) / 3 == pytest.approx(accuracy, abs=1e-6)  # 4 images each


def test_grad_cam_figure_of_the_highest_loss_images(tiny):
    """plots/cam/<S>.png: the top-loss test images (mistakes.json's, in its order) as the network
    saw them, each with a heat map of its predicted class in [0, 1]; the same bytes twice."""
    from PIL import Image

    from transferline.engine.evaluate import top_loss_cams

    root, rows, params = tiny
    settings = params.evaluate.model_copy(update={"batch_size": 5, "top_losses": 6})
    for tag in ("out", "again"):
        evaluate(
            model_path=root / "m.pt",
            clean_dir=root / "clean",
            split_dir=root / "split",
            metrics_path=root / tag / "metrics.json",
            confusion_path=root / tag / "confusion.json",
            mistakes_path=root / tag / "mistakes.json",
            cam_path=root / tag / "cam.png",
            settings=settings,
            seed=params.seed,
            threads=1,
        )
    png = (root / "out" / "cam.png").read_bytes()
    assert png == (root / "again" / "cam.png").read_bytes()
    assert Image.open(root / "out" / "cam.png").size[0] >= 400  # a 4-wide grid
    top = json.loads((root / "out" / "mistakes.json").read_text())["top_losses"]
    model, ckpt = models.load_checkpoint(root / "m.pt", map_location="cpu")
    tf = ckpt["transform"]
    view = transforms.eval_transform(image_size=32, mean=tf["mean"], std=tf["std"])
    dataset = data.ImageDataset(root / "clean", rows, view)
    paths = [p for p, _ in rows]
    cam = top_loss_cams(model, ckpt, dataset, paths, top, list("abc"), CPU)
    images, maps, titles = cam["images"], cam["maps"], cam["titles"]
    assert len(images) == len(maps) == len(titles) == 6
    assert all(m.shape == (32, 32) and 0 <= m.min() and m.max() <= 1 for m in maps)
    heads = [f"{t['predicted']} {t['confidence']:.2f} / {t['actual']}" for t in top]
    assert [title.split("\n")[0] for title in titles] == heads
    assert cam["wrong"] == [t["predicted"] != t["actual"] for t in top]
    assert cam["note"] is None
