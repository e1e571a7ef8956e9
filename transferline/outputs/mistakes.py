"""`plots/mistakes/<S>.json` (evaluate writes it, report reads it): why a model is wrong.

    {"top_losses": [{"file", "path", "actual", "predicted", "confidence", "p_actual", "loss"}],
     "most_confused": [{"actual", "predicted", "count"}],
     "per_class_accuracy": {class: fraction of its test images classified right}}

`top_losses` are the test images with the highest cross-entropy (single crop, the first seed's
model), highest first, under the user's own file name (`file`: the image's source as the clean
manifest records it; `path`: its file under data/clean), with the true and predicted class, the
predicted class's probability and the true class's. `most_confused` are the off-diagonal pairs
of the confusion matrix, most frequent first. Ties are broken by path and class names, so the file
is the same bytes for the same probabilities.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from transferline.config.errors import StageError
from transferline.outputs import atomic as files

DECIMALS = 6
TOP_PAIRS = 10  # most-confused pairs kept
EPS = 1e-12  # probability floor of the loss (a probability of exactly 0 is an infinite loss)


def build(
    probs: np.ndarray,
    labels: Sequence[int],
    paths: Sequence[str],
    classes: Sequence[str],
    top: int,
    sources: Mapping[str, str] | None = None,
) -> dict:
    """The file's content from (N, C) probabilities; `sources` maps a clean path to the user's
    file name (an image without one is named by its clean path)."""
    labels = np.asarray(labels, dtype=np.int64)
    preds = probs.argmax(axis=1)
    n = len(labels)
    p_true = probs[np.arange(n), labels]
    losses = -np.log(np.maximum(p_true, EPS))
    rounded = np.round(losses, DECIMALS)
    order = sorted(range(n), key=lambda i: (-rounded[i], paths[i]))[:top]
    sources = sources or {}
    top_losses = [
        {
            "file": sources.get(paths[i], paths[i]),
            "path": paths[i],
            "actual": classes[labels[i]],
            "predicted": classes[preds[i]],
            "confidence": round(float(probs[i, preds[i]]), DECIMALS),
            "p_actual": round(float(p_true[i]), DECIMALS),
            "loss": float(rounded[i]),
        }
        for i in order
    ]
    pairs: dict[tuple[int, int], int] = {}
    for y, p in zip(labels.tolist(), preds.tolist()):
        if y != p:
            pairs[(y, p)] = pairs.get((y, p), 0) + 1
    confused = sorted(pairs.items(), key=lambda kv: (-kv[1], classes[kv[0][0]], classes[kv[0][1]]))
    per_class = {}
    for c, name in enumerate(classes):
        mask = labels == c
        per_class[name] = round(float((preds[mask] == c).mean()), DECIMALS) if mask.any() else None
    return {
        "top_losses": top_losses,
        "most_confused": [
            {"actual": classes[y], "predicted": classes[p], "count": count}
            for (y, p), count in confused[:TOP_PAIRS]
        ],
        "per_class_accuracy": per_class,
    }


def write(path: Path, content: dict) -> None:
    files.write_json(path, content)


def read(folder: Path, strategy: str) -> dict:
    """plots/mistakes/<strategy>.json; a missing file names the stage that writes it."""
    content = files.read_json(Path(folder) / f"{strategy}.json", f"evaluate@{strategy}")
    for key in ("top_losses", "most_confused", "per_class_accuracy"):
        if key not in content:
            raise StageError(
                f"{Path(folder) / (strategy + '.json')}: no `{key}`; re-run "
                f"`dvc repro evaluate@{strategy}`"
            )
    return content
