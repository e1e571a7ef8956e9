"""The training recipe beyond the tutorial's: label smoothing, gradient clipping, warmup then a
schedule, class balance (weighted loss or sampler), TrivialAugment, random erasing, MixUp and
CutMix. Each is off by default, changes what it says and nothing else, and keeps re-runs
byte-identical."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from transferline.config.params import Params
from transferline.data.datasets import SeededSampler
from transferline.engine import fit
from transferline.engine.runtime import resolve

from helpers import make_clean_split, make_params, run_train


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, Path]:
    return make_clean_split(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def imbalanced(tmp_path_factory) -> tuple[Path, Path]:
    """Train: 18 images of a, 3 of b, 3 of c; val: 2 of each."""
    counts = {"a": 20, "b": 5, "c": 5}
    return make_clean_split(tmp_path_factory.mktemp("imbalanced"), val_per_class=2, counts=counts)


CPU = resolve(device="cpu")


def _batches(seed=0, n=16, classes=3):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, 4, generator=g), torch.randint(0, classes, (n,), generator=g))]


def _linear(seed=0):
    torch.manual_seed(seed)
    model = nn.Linear(4, 3)
    with torch.no_grad():
        model.weight.mul_(10)  # confident: smoothing and weights show in the loss
    return model


# ---- the loss and the step -------------------------------------------------------------------


def test_label_smoothing_and_class_weights_change_the_train_loss_only():
    batches = _batches()
    model = _linear()
    plain, _, _ = fit.run_epoch(model, batches, CPU)
    x, y = batches[0]
    weight = torch.tensor([0.5, 2.0, 1.0])
    recipe = fit.Recipe(label_smoothing=0.2, class_weight=weight)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # a step that moves nothing
    train_loss, _, _ = fit.run_epoch(model, batches, CPU, opt, CPU.grad_scaler(), recipe=recipe)
    expected = nn.functional.cross_entropy(model(x), y, weight=weight, label_smoothing=0.2)
    assert train_loss == pytest.approx(expected.item(), rel=1e-6)
    assert train_loss != pytest.approx(plain, rel=1e-3)
    # evaluation (no optimiser) is always the plain loss, whatever the recipe
    assert fit.run_epoch(model, batches, CPU, recipe=recipe)[0] == pytest.approx(plain)


def test_gradient_clipping_bounds_the_step():
    def moved(clip: float) -> float:
        model = _linear()
        before = [p.detach().clone() for p in model.parameters()]
        opt = torch.optim.SGD(model.parameters(), lr=1.0)
        recipe = fit.Recipe(clip_grad=clip)
        fit.run_epoch(model, _batches(), CPU, opt, CPU.grad_scaler(), recipe=recipe)
        deltas = [(p.detach() - b).flatten() for p, b in zip(model.parameters(), before)]
        return torch.cat(deltas).norm().item()

    assert moved(1e-3) == pytest.approx(1e-3, rel=1e-4)  # lr 1 x gradient norm clipped to 1e-3
    assert moved(0.0) > 0.1  # 0 = off


def test_class_weights_are_inverse_frequency():
    labels = torch.tensor([0, 0, 0, 0, 1, 2])
    assert fit.class_weights(labels, 3).tolist() == pytest.approx([0.5, 2.0, 2.0])
    with pytest.raises(ValueError, match="class 2 has no training image"):
        fit.class_weights(torch.tensor([0, 1]), 3)


def test_a_weighted_sampler_draws_the_classes_evenly_and_repeatably():
    labels = [0] * 80 + [1] * 10 + [2] * 10
    weights = 1.0 / torch.bincount(torch.tensor(labels)).double()[labels]

    def draw(seed):
        gen = torch.Generator().manual_seed(seed)
        sampler = SeededSampler(len(labels), shuffle=True, generator=gen, weights=weights)
        return [i for i, _ in sampler]

    first = draw(0)
    counts = Counter(labels[i] for i in first)
    assert len(first) == len(labels)
    assert all(20 <= counts[c] <= 47 for c in range(3)), counts  # ~33 each, not 80/10/10
    assert draw(0) == first and draw(1) != first


# ---- params ----------------------------------------------------------------------------------


def test_recipe_params_are_off_by_default_and_validated(params_raw):
    p = Params.model_validate(params_raw)
    s = p.strategies["finetune"].resolved_phases()[0]
    assert (s.label_smoothing, s.clip_grad, s.warmup_epochs) == (0.0, 0.0, 0)
    a = p.train.augment
    assert p.train.balance == "none"
    assert (a.trivial_augment, a.random_erasing, a.mixup, a.cutmix) == (False, 0.0, 0.0, 0.0)
    bad = dict(params_raw["strategies"]["finetune"], warmup_epochs=2)  # its schedule is plateau
    raw = {**params_raw, "strategies": {"s": bad}}
    with pytest.raises(ValidationError, match="warmup_epochs needs schedule none, step or cosine"):
        Params.model_validate(raw)
    bad = dict(params_raw["strategies"]["finetune"], schedule={"name": "cosine"}, warmup_epochs=25)
    with pytest.raises(ValidationError, match="warmup_epochs 25 must be below epochs 25"):
        Params.model_validate({**params_raw, "strategies": {"s": bad}})
    with pytest.raises(ValidationError, match="label_smoothing"):
        Params.model_validate(
            {**params_raw, "strategies": {"s": dict(bad, warmup_epochs=0, label_smoothing=0.7)}}
        )


# ---- through training -------------------------------------------------------------------------

MODERN = {
    "arch": "cnn2",
    "weights": "none",
    "optimizer": "adamw",
    "lr": 0.01,
    "weight_decay": 0.05,
    "schedule": {"name": "cosine"},
    "warmup_epochs": 2,
    "label_smoothing": 0.1,
    "clip_grad": 1.0,
    "epochs": 4,
}
AUGMENT = {
    "crop_scale": [0.6, 1.0],
    "hflip": 0.5,
    "rotation": 0,
    "color_jitter": 0,
    "trivial_augment": True,
    "random_erasing": 0.25,
    "mixup": 0.2,
    "cutmix": 1.0,
}


def test_warmup_then_cosine_sets_each_epochs_lr(dataset, params_raw, tmp_path):
    params = make_params(params_raw, {"s": MODERN}, patience=0)
    result = run_train(params, "s", dataset, tmp_path)
    lrs = [row["lr"] for row in result["history"]]
    assert lrs == pytest.approx([0.01 / 3, 0.02 / 3, 0.01, 0.005])


def test_the_whole_recipe_is_byte_identical_on_a_rerun_and_changes_the_model(
    dataset, params_raw, tmp_path
):
    params = make_params(params_raw, {"s": MODERN}, augment=AUGMENT, balance="sampler", patience=0)
    for out in ("a", "b"):
        run_train(params, "s", dataset, tmp_path / out)
    assert (tmp_path / "a" / "m.pt").read_bytes() == (tmp_path / "b" / "m.pt").read_bytes()
    # the mixing draws from its own generator: loader workers (speed only) change nothing
    workers = make_params(
        params_raw, {"s": MODERN}, augment=AUGMENT, balance="sampler", patience=0, workers=2
    )
    run_train(workers, "s", dataset, tmp_path / "w2")
    assert (tmp_path / "w2" / "m.pt").read_bytes() == (tmp_path / "a" / "m.pt").read_bytes()
    plain = dict(AUGMENT, trivial_augment=False, random_erasing=0.0, mixup=0.0, cutmix=0.0)
    params = make_params(params_raw, {"s": MODERN}, augment=plain, patience=0)
    run_train(params, "s", dataset, tmp_path / "c")
    a = torch.load(tmp_path / "a" / "m.pt", weights_only=True)
    c = torch.load(tmp_path / "c" / "m.pt", weights_only=True)
    assert not torch.equal(a["state_dict"]["head.weight"], c["state_dict"]["head.weight"])
    assert a["strategy"]["train"]["balance"] == "sampler"
    assert a["strategy"]["train"]["augment"]["mixup"] == 0.2


@pytest.mark.parametrize("balance", ["loss", "sampler"])
def test_balance_trains_on_an_imbalanced_split(balance, imbalanced, params_raw, tmp_path):
    strategy = {"arch": "cnn1", "weights": "none", "optimizer": "adam", "lr": 0.01, "epochs": 2}
    params = make_params(params_raw, {"s": strategy}, patience=0)
    plain = run_train(params, "s", imbalanced, tmp_path / "p")
    params = make_params(params_raw, {"s": strategy}, balance=balance, patience=0)
    result = run_train(params, "s", imbalanced, tmp_path / balance)
    # the first epoch's train loss is what balancing changes (same init, same data)
    assert result["history"][0]["train_loss"] != pytest.approx(plain["history"][0]["train_loss"])
    # validation is scored the same way either way: plain, unweighted
    assert set(result["history"][0]) == set(plain["history"][0])
