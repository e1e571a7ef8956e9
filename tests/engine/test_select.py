"""transferline.engine.select: the best strategy by validation (never test), ties, the file it
writes."""

from __future__ import annotations

import json

import pytest

from transferline.config.errors import StageError
from transferline.engine.select import choose, select

# val: beta best by accuracy, gamma best by loss; test: alpha best (must not matter)
TRAIN = {"alpha": (0.80, 0.50), "beta": (0.90, 0.40), "gamma": (0.85, 0.30)}
TEST = {"alpha": 0.99, "beta": 0.70, "gamma": 0.75}


def write(root, train=TRAIN, test=TEST):
    for sub in ("train", "eval"):
        (root / sub).mkdir(exist_ok=True)
    for name, (acc, loss) in train.items():
        (root / "train" / f"{name}.json").write_text(
            json.dumps({"best_val_acc": acc, "best_val_loss": loss, "best_epoch": 3})
        )
        (root / "eval" / f"{name}.json").write_text(
            json.dumps(
                {
                    "accuracy": test[name],
                    "balanced_accuracy": test[name],
                    "macro_f1": 0.5,
                    "log_loss": 1.0,
                    "tta": {"accuracy": test[name] - 0.01},
                }
            )
        )


def run(root, by="val_acc", names=tuple(TRAIN)):
    return select(
        list(names),
        train_metrics=root / "train",
        eval_metrics=root / "eval",
        out=root / "best.json",
        by=by,
    )


@pytest.mark.parametrize("by, expected", [("val_acc", "beta"), ("val_loss", "gamma")])
def test_best_is_chosen_on_validation_not_test(tmp_path, by, expected):
    write(tmp_path)
    result = run(tmp_path, by)
    assert result["strategy"] == expected  # alpha has the best test accuracy and loses
    written = json.loads((tmp_path / "best.json").read_text())
    assert written == result
    assert written["by"] == by
    assert written["test"] == {
        "accuracy": TEST[expected],
        "balanced_accuracy": TEST[expected],
        "macro_f1": 0.5,
        "tta_accuracy": pytest.approx(TEST[expected] - 0.01),
    }
    assert written["val_acc"] == TRAIN[expected][0]
    assert set(written["candidates"]) == set(TRAIN)


def test_ties_go_to_the_other_validation_score_then_to_the_first_listed():
    tied = {
        "a": {"val_acc": 0.9, "val_loss": 0.5},
        "b": {"val_acc": 0.9, "val_loss": 0.4},
        "c": {"val_acc": 0.9, "val_loss": 0.4},
    }
    assert choose(tied, "val_acc") == "b"
    assert choose({"c": tied["c"], "b": tied["b"]}, "val_acc") == "c"
    assert (
        choose(
            {"x": {"val_acc": 0.7, "val_loss": 0.3}, "y": {"val_acc": 0.8, "val_loss": 0.3}},
            "val_loss",
        )
        == "y"
    )


def test_missing_metrics_name_the_stage_to_run(tmp_path):
    write(tmp_path)
    (tmp_path / "train" / "beta.json").unlink()
    with pytest.raises(StageError, match=r"beta\.json: not found; run `dvc repro train@beta`"):
        run(tmp_path)
