"""select: choose the best strategy on validation, and report its test score.

Reads `metrics/train/<S>.json` (validation scores at the epoch each model was kept) and
`metrics/eval/<S>.json` (test scores) for every strategy under `strategies:` in params.yaml.
Writes `metrics/best.json`:

    {"strategy": "<S>", "by": "val_acc", "val_acc": ..., "val_loss": ...,
     "test": {"accuracy", "balanced_accuracy", "macro_f1", "tta_accuracy"},
     "candidates": {"<S>": {"val_acc", "val_loss"}, ...}}

    python -m stages.select --train-metrics metrics/train --eval-metrics metrics/eval \
        --out metrics/best.json

The choice looks only at validation (`select.by`; ties go to the other validation score, then to
the strategy listed first), so the chosen strategy's test score is an unbiased estimate of how it
does on new images. Picking the strategy with the best *test* score would make that score
optimistic: the test split would have been used to choose. predict and export use this choice.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from transferline.config.errors import StageError
from transferline.outputs import atomic as files
from transferline.outputs.atomic import write_json

# select.by -> (train metrics key, +1 when higher is better, the tie-breaker's select.by)
CRITERIA = {
    "val_acc": ("best_val_acc", 1, "val_loss"),
    "val_loss": ("best_val_loss", -1, "val_acc"),
}
TEST_KEYS = ("accuracy", "balanced_accuracy", "macro_f1")


def _val(train: dict, name: str, source: Path) -> dict[str, float]:
    try:
        return {"val_acc": float(train["best_val_acc"]), "val_loss": float(train["best_val_loss"])}
    except (KeyError, TypeError, ValueError):
        raise StageError(
            f"{source}: lacks best_val_acc/best_val_loss; re-run `dvc repro train@{name}`"
        ) from None


def choose(candidates: dict[str, dict[str, float]], by: str) -> str:
    """The best name by validation `by`, ties to the other score, then to the first listed."""
    _, sign, other = CRITERIA[by]
    other_sign = CRITERIA[other][1]
    order = list(candidates)
    return min(
        order,
        key=lambda n: (
            -sign * candidates[n][by],
            -other_sign * candidates[n][other],
            order.index(n),
        ),
    )


def select(
    names: Sequence[str], *, train_metrics: Path, eval_metrics: Path, out: Path, by: str
) -> dict[str, Any]:
    """Choose among `names` (params order) by validation; write and return metrics/best.json."""
    if by not in CRITERIA:
        raise StageError(f"select.by: {by!r}; choose one of {', '.join(CRITERIA)}")
    candidates = {}
    for name in names:
        path = Path(train_metrics) / f"{name}.json"
        candidates[name] = _val(files.read_json(path, f"train@{name}"), name, path)
    best = choose(candidates, by)
    test = files.read_json(Path(eval_metrics) / f"{best}.json", f"evaluate@{best}")
    result = {
        "strategy": best,
        "by": by,
        **candidates[best],
        "test": {**{k: test[k] for k in TEST_KEYS}, "tta_accuracy": test["tta"]["accuracy"]},
        "candidates": candidates,
    }
    write_json(Path(out), result)
    return result


def best_checkpoint(best_json: str | Path, models_dir: str | Path) -> Path:
    """models/<strategy>.pt for the strategy metrics/best.json names (no torch: predict and
    export resolve it before they load a model, so a missing choice is named at once)."""
    path = Path(best_json)
    try:
        name = json.loads(path.read_text(encoding="utf-8"))["strategy"]
    except FileNotFoundError:
        raise StageError(
            f"{path}: not found; run `dvc repro select` to choose the best "
            "strategy, or give --model models/<strategy>.pt"
        ) from None
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise StageError(f"{path}: no strategy in it ({exc}); re-run `dvc repro select`") from None
    return Path(models_dir) / f"{name}.pt"
