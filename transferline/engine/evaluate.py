"""evaluate: score one trained strategy on the test split, single-crop and with five-crop TTA.

Reads `models/<S>.pt` (checkpoint from train), `data/split/classes.json` + `test.csv` and the
images under `data/clean/`. Writes `metrics/eval/<S>.json` (accuracy, balanced accuracy, macro F1,
log loss, top-k accuracy when there are more than `evaluate.top_k` classes, the same under `tta`),
`plots/per_class/<S>.json` (precision/recall/F1/support per class, one record per class: a DVC
plot, so the metrics stay a handful of columns at 100 classes), `plots/confusion/<S>.json` (one
`{"actual", "predicted", "path"}` record per test image, class names, sorted by path, for DVC's
`confusion` template) and `plots/mistakes/<S>.json` (the highest-loss test images under the
user's file names, the most-confused class pairs, per-class accuracy:
transferline/outputs/mistakes.py). All are deterministic for the same model, data and params.

    python -m stages.evaluate <strategy> --clean data/clean --split data/split \
        --model models/<strategy>.pt --metrics metrics/eval/<strategy>.json \
        --confusion plots/confusion/<strategy>.json --per-class plots/per_class/<strategy>.json
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    f1_score,
    log_loss,
    precision_recall_fscore_support,
    top_k_accuracy_score,
)
from tqdm import tqdm

from transferline import models
from transferline.config.errors import StageError
from transferline.config.params import Evaluate
from transferline.data import datasets as data
from transferline.data import transforms
from transferline.data.split import read_sources
from transferline.engine import runtime
from transferline.engine.inference import predict_probs
from transferline.outputs import atomic as files
from transferline.outputs import metrics as seeds
from transferline.outputs import mistakes
from transferline.outputs.atomic import write_json
from transferline.report import figures as png

DECIMALS = seeds.DECIMALS  # metrics are rounded: float noise must not show in a diff


# ---- metrics from arrays (no model, no files) -----------------------------------------------


def scores(
    probs: np.ndarray, labels: np.ndarray, num_classes: int, top_k: int | None = None
) -> dict[str, float]:
    """Summary scores of (N, C) class probabilities against (N,) integer labels.

    `top_k_accuracy` is added only when `top_k` is given and there are more classes than k
    (with k >= C it is always 1.0 and says nothing)."""
    all_labels = list(range(num_classes))
    preds = probs.argmax(axis=1)
    out = {
        "accuracy": accuracy_score(labels, preds),
        "balanced_accuracy": balanced_accuracy_score(labels, preds),
        "macro_f1": f1_score(labels, preds, labels=all_labels, average="macro", zero_division=0),
        "log_loss": log_loss(labels, probs, labels=all_labels),
    }
    if top_k is not None and num_classes > top_k:
        out["top_k_accuracy"] = top_k_accuracy_score(labels, probs, k=top_k, labels=all_labels)
    return {key: float(value) for key, value in out.items()}


def per_class(
    preds: np.ndarray, labels: np.ndarray, classes: Sequence[str]
) -> dict[str, dict[str, float | int]]:
    """precision/recall/f1/support per class name; a class never predicted scores 0, not NaN."""
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, preds, labels=list(range(len(classes))), zero_division=0
    )
    return {
        name: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(classes)
    }


# metrics whose spread over train.seeds runs is written under `std`
SPREAD = ("accuracy", "balanced_accuracy", "macro_f1", "tta.accuracy")


def compute_metrics(
    probs: np.ndarray, tta_probs: np.ndarray, labels: np.ndarray, classes: Sequence[str], top_k: int
) -> dict[str, Any]:
    """The metrics file's content: single-crop scores at the top level, TTA under `tta`,
    per-class single-crop scores under `per_class`; floats rounded to DECIMALS."""
    labels = np.asarray(labels)
    tta = scores(tta_probs, labels, len(classes))
    out: dict[str, Any] = {
        **scores(probs, labels, len(classes), top_k),
        "tta": tta,
        "per_class": per_class(probs.argmax(axis=1), labels, classes),
    }
    return _rounded(out)


def _run_states(ckpt: dict) -> list[dict]:
    return [ckpt["state_dict"]] + [run["state_dict"] for run in ckpt.get("runs", [])]


def confusion_records(
    preds: Sequence[int], labels: Sequence[int], paths: Sequence[str], classes: Sequence[str]
) -> list[dict[str, str]]:
    """One record per image with class names (not indices), sorted by path."""
    records = [
        {"actual": classes[int(y)], "predicted": classes[int(p)], "path": str(path)}
        for p, y, path in zip(preds, labels, paths, strict=True)
    ]
    return sorted(records, key=lambda r: r["path"])


def _rounded(obj: Any) -> Any:
    if isinstance(obj, float):
        return round(obj, DECIMALS)
    if isinstance(obj, dict):
        return {key: _rounded(value) for key, value in obj.items()}
    return obj


# ---- inputs ---------------------------------------------------------------------------------


def _load_model(model_path: Path, split_dir: Path, rt: runtime.Runtime):
    """Checkpoint -> (model on device, checkpoint, class names), refusing a stale model whose
    classes are not data/split's."""
    files.require_file(model_path, f"train@{model_path.stem}")
    classes = list(data.read_classes(split_dir))
    model, ckpt = models.load_checkpoint(model_path, map_location="cpu")
    if list(ckpt["classes"]) != classes:
        raise StageError(
            f"{model_path} was trained on classes {list(ckpt['classes'])} but "
            f"{split_dir / 'classes.json'} lists {classes}; the model is stale, re-run "
            f"training (dvc repro train@{model_path.stem})"
        )
    return rt.place(model).eval(), ckpt, classes


def _test_rows(split_dir: Path) -> list[tuple[str, int]]:
    rows = data.read_rows(split_dir, "test")
    if not rows:
        raise StageError(
            f"{split_dir / 'test.csv'}: the test split is empty; nothing to "
            "evaluate (raise split.test in params.yaml or add test images)"
        )
    return rows


# ---- outputs --------------------------------------------------------------------------------

# ---- the stage ------------------------------------------------------------------------------


def evaluate(
    *,
    model_path: Path,
    clean_dir: Path,
    split_dir: Path,
    metrics_path: Path,
    confusion_path: Path,
    settings: Evaluate,
    seed: int,
    threads: int,
    workers: int = 0,
    rt: runtime.Runtime | None = None,
    per_class_path: Path | None = None,
    mistakes_path: Path | None = None,
    cam_path: Path | None = None,
) -> dict[str, Any]:
    """Score `model_path` on data/split's test rows; write the metrics, confusion and (when
    given) per-class and mistakes files, and (`cam_path`) a PNG of the highest-loss test images
    with the Grad-CAM heat map of their predicted class; return the metrics dict (with
    `per_class`). `workers` only changes
    speed, never the output. `rt` (default: CPU, fp32) is where and how the model runs;
    runtime.device/precision/... in the stage."""
    rt = rt or runtime.resolve(device="cpu")
    with runtime.torch_state(rt, seed=seed, threads=threads):
        return _evaluate(
            Path(model_path),
            Path(clean_dir),
            Path(split_dir),
            Path(metrics_path),
            Path(confusion_path),
            per_class_path and Path(per_class_path),
            mistakes_path and Path(mistakes_path),
            cam_path and Path(cam_path),
            settings,
            seed,
            workers,
            rt,
        )


def _evaluate(
    model_path: Path,
    clean_dir: Path,
    split_dir: Path,
    metrics_path: Path,
    confusion_path: Path,
    per_class_path: Path | None,
    mistakes_path: Path | None,
    cam_path: Path | None,
    settings: Evaluate,
    seed: int,
    workers: int,
    rt: runtime.Runtime,
) -> dict:
    model, ckpt, classes = _load_model(model_path, split_dir, rt)
    rows = _test_rows(split_dir)
    labels = np.array([label for _, label in rows])
    tf = ckpt["transform"]
    norm = dict(
        image_size=tf["image_size"],
        mean=tf["mean"],
        std=tf["std"],
        resize_size=tf.get("resize_size"),
    )
    views = {
        "single": transforms.eval_transform(**norm),
        "tta": transforms.tta_transform(**norm, flip=settings.tta_flip),
    }
    dataset = data.ImageDataset(clean_dir, rows, None)  # images decoded once for both passes
    per_run = []
    for state in _run_states(ckpt):  # one per training seed (train.seeds); the first decides
        model.load_state_dict(state)  # the confusion records
        probs = {}
        for name, transform in views.items():
            dataset.transform = transform
            loader = data.make_loader(
                dataset,
                batch_size=settings.batch_size,
                shuffle=False,
                workers=workers,
                seed=seed,
                device=rt.device,
            )
            batches = tqdm(
                loader,
                desc=f"{name} seed {len(per_run) + 1}",
                unit="batch",
                leave=False,
                disable=None,
                file=sys.stderr,
            )  # TTA: the slow pass
            probs[name] = predict_probs(model, batches, rt, chunk=settings.batch_size)
            del loader  # ends its persistent worker processes before the next pass starts
        per_run.append(
            compute_metrics(probs["single"], probs["tta"], labels, classes, settings.top_k)
        )
        if len(per_run) == 1:
            paths = [path for path, _ in rows]
            records = confusion_records(probs["single"].argmax(axis=1), labels, paths, classes)
            names = read_sources(clean_dir)
            why = mistakes.build(
                probs["single"], labels, paths, classes, settings.top_losses, names
            )
            if cam_path is not None:  # the first seed's model, as the records
                dataset.transform = views["single"]
                cam = top_loss_cams(model, ckpt, dataset, paths, why["top_losses"], classes, rt)
    metrics = per_run[0] if len(per_run) == 1 else seeds.mean_std(per_run, SPREAD)
    write_json(confusion_path, records)
    write_json(metrics_path, {k: v for k, v in metrics.items() if k != "per_class"})
    if per_class_path is not None:
        write_json(per_class_path, per_class_rows(metrics["per_class"]))
    if mistakes_path is not None:
        mistakes.write(mistakes_path, why)
    if cam_path is not None:
        with files.written(cam_path) as tmp:
            png.heat_map_grid(path=tmp, **cam)
    return metrics


def top_loss_cams(model, ckpt: dict, dataset, paths, top: list[dict], classes, rt) -> dict:
    """heat_map_grid's keyword arguments but the path, for the highest-loss test images: each as
    the network saw it (the eval crop), the Grad-CAM of its predicted class, titled predicted
    (confidence) / true over its file name; a transformer's figure shows the images and says why
    it has no maps."""
    from transferline.models.cam import grad_cam

    tf = ckpt["transform"]
    index = {path: i for i, path in enumerate(paths)}
    x = [dataset[index[t["path"]]][0] for t in top]
    images = [transforms.denormalize(v, tf["mean"], tf["std"]).cpu().numpy() for v in x]
    titles = [
        png.gallery_title(
            {**t, "predicted": f"{t['predicted']} {t['confidence']:.2f}"}, {t["path"]: t["file"]}
        )
        for t in top
    ]
    wrong = [t["predicted"] != t["actual"] for t in top]
    title = f"Grad-CAM of the predicted class: the {len(top)} highest-loss test images"
    maps, note = None, None
    if top:
        try:
            targets = [classes.index(t["predicted"]) for t in top]
            heat = grad_cam(model, ckpt["arch"], rt.batch(torch.stack(x)), targets)
            maps = [m.float().cpu().numpy() for m in heat]
        except StageError as exc:
            note = str(exc)
    return {
        "images": images,
        "maps": maps,
        "titles": titles,
        "suptitle": title,
        "wrong": wrong,
        "note": note,
    }


def per_class_rows(table: dict[str, dict]) -> list[dict]:
    """The per-class table as DVC plot records, one per class in class order: a plot, not
    metrics, so `dvc metrics show` / `dvc exp show` keep one column per headline number
    instead of four per class."""
    return [{"class": name, **scores} for name, scores in table.items()]
