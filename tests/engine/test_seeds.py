"""train.seeds: a strategy trained under N seeds keeps every run; evaluate scores each run and
reports the mean with its std; the report prints mean ± std."""

import json

import numpy as np
import pytest
import torch

from transferline.engine import evaluate
from transferline.outputs.metrics import mean_std
from transferline.report.document import Run, strategy_row

from helpers import make_clean_split, make_params, run_train


def test_mean_std_means_every_number_and_nests_the_spread_like_the_value():
    runs = [
        {"accuracy": 0.5, "epochs": 2, "tta": {"accuracy": 0.6, "f1": 0.1}},
        {"accuracy": 0.7, "epochs": 4, "tta": {"accuracy": 0.9, "f1": 0.3}},
    ]
    out = mean_std(runs, ["accuracy", "tta.accuracy"])
    assert out == {
        "accuracy": 0.6,
        "epochs": 3.0,
        "tta": {"accuracy": 0.75, "f1": 0.2},
        "std": {"accuracy": 0.1, "tta": {"accuracy": 0.15}},
        "seeds": 2,
    }


CNN = {
    "arch": "cnn1",
    "weights": "none",
    "trainable": "all",
    "optimizer": "adam",
    "lr": 0.01,
    "epochs": 2,
}


def score(path, out, params, clean, split, name):
    return evaluate.evaluate(
        model_path=path,
        clean_dir=clean,
        split_dir=split,
        metrics_path=out / f"{name}.json",
        confusion_path=out / f"{name}-confusion.json",
        settings=params.evaluate,
        seed=params.seed,
        threads=1,
    )


@pytest.mark.slow
def test_three_seeds_train_evaluate_and_report(params_raw, tmp_path):
    clean, split = make_clean_split(tmp_path / "data", per_class=10)
    # the test split reuses val's images: this is about bookkeeping, not generalisation
    (split / "test.csv").write_text((split / "val.csv").read_text())
    params = make_params(params_raw, {"cnn": CNN}, seeds=3)
    out = tmp_path / "out"
    metrics = run_train(params, "cnn", (clean, split), out)

    ckpt = torch.load(out / "m.pt", map_location="cpu", weights_only=False)
    assert [r["seed"] for r in ckpt["runs"]] == [params.seed + 1, params.seed + 2]
    states = [ckpt["state_dict"]] + [r["state_dict"] for r in ckpt["runs"]]
    first = next(iter(states[0]))
    assert not torch.equal(states[0][first], states[1][first]), "seeds must differ"
    written = json.loads((out / "m.json").read_text())
    assert written["seeds"] == 3 and set(written["std"]) == {
        "best_val_acc",
        "best_val_loss",
        "best_epoch",
    }
    assert "best_val_acc_std" not in written  # one shape: the spread lives under `std` only
    assert metrics["best_val_acc"] == written["best_val_acc"]

    scores = score(out / "m.pt", out, params, clean, split, "all")
    singles = []
    for k, state in enumerate(states):  # each run on its own, as a one-seed checkpoint
        one = {key: v for key, v in ckpt.items() if key != "runs"} | {"state_dict": state}
        torch.save(one, out / f"run{k}.pt")
        singles.append(score(out / f"run{k}.pt", out, params, clean, split, f"run{k}"))
    accs = [s["accuracy"] for s in singles]
    assert scores["seeds"] == 3
    assert scores["accuracy"] == pytest.approx(np.mean(accs), abs=1e-6)
    assert scores["std"]["accuracy"] == pytest.approx(np.std(accs), abs=1e-6)
    tta = [s["tta"]["accuracy"] for s in singles]
    assert scores["tta"]["accuracy"] == pytest.approx(np.mean(tta), abs=1e-6)
    assert scores["std"]["tta"]["accuracy"] == pytest.approx(np.std(tta), abs=1e-6)

    row = strategy_row(
        Run(
            name="cnn",
            arch="cnn1",
            weights="none",
            train=written,
            curves=[],
            eval=scores,
            confusion=[],
            per_class=[],
            mistakes={},
        )
    )
    assert row[5] == f"{written['best_val_acc']:.4f} ± {written['std']['best_val_acc']:.4f}"
    assert row[6] == f"{scores['accuracy']:.4f} ± {scores['std']['accuracy']:.4f}"
    assert row[7] == f"{scores['tta']['accuracy']:.4f} ± {scores['std']['tta']['accuracy']:.4f}"
