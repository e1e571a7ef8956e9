"""The training recipe beyond the tutorial's: label smoothing, gradient clipping, warmup then a
schedule, layer-wise lr decay, an EMA of the weights, class balance (weighted loss or sampler),
TrivialAugment, random erasing, MixUp and CutMix. Each is off by default, changes what it says and
nothing else, and keeps re-runs byte-identical."""

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
    s = p.strategies["scratch"].resolved_phases()[0]  # an entry that sets none of them
    assert (s.label_smoothing, s.clip_grad, s.warmup_epochs) == (0.0, 0.0, 0)
    assert (s.layer_decay, s.ema_decay, s.freeze_bn) == (1.0, 0.0, False)
    a = p.train.augment
    assert p.train.balance == "none"
    assert (a.trivial_augment, a.random_erasing, a.mixup, a.cutmix) == (False, 0.0, 0.0, 0.0)
    bad = dict(params_raw["strategies"]["scratch"], warmup_epochs=2)  # its schedule is plateau
    raw = {**params_raw, "strategies": {"s": bad}}
    with pytest.raises(ValidationError, match="warmup_epochs needs schedule none, step or cosine"):
        Params.model_validate(raw)
    scratch = params_raw["strategies"]["scratch"]
    bad = dict(scratch, schedule={"name": "cosine"}, epochs=25, warmup_epochs=25)
    with pytest.raises(ValidationError, match="warmup_epochs 25 must be below epochs 25"):
        Params.model_validate({**params_raw, "strategies": {"s": bad}})
    for key, value in [("layer_decay", 0), ("layer_decay", 1.5), ("ema_decay", 1.0)]:
        with pytest.raises(ValidationError, match=key):
            Params.model_validate(
                {**params_raw, "strategies": {"s": dict(bad, warmup_epochs=0, **{key: value})}}
            )
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


# ---- layer-wise lr decay ----------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["cnn3", "resnet18"])
def test_layer_decay_gives_each_block_its_rate_counted_back_from_the_last(arch):
    from transferline import models
    from transferline.config.params import Phase

    model = models.build(arch, 3, "none")
    blocks = models.blocks(model, arch)
    head = models.head_name(model) + "."
    phase = Phase(lr=0.1, backbone_lr_mult=0.5, layer_decay=0.5)
    opt = fit.make_optimizer(model, phase, arch)
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert len(lr_of) == len(named)  # every parameter in exactly one group
    assert opt.param_groups[0]["lr"] == 0.1  # the head first, at lr
    assert all(lr_of[id(p)] == 0.1 for n, p in named.items() if n.startswith(head))
    for k, block in enumerate(reversed(blocks)):  # the last block at lr * mult, then x 0.5 each
        first = block.split(" + ")[0]
        inside = [p for n, p in named.items() if n.startswith(first + ".")]
        assert inside
        assert [lr_of[id(p)] for p in inside] == pytest.approx([0.05 * 0.5**k] * len(inside))
    stem = next(iter(named.values()))  # the first parameter: in front of every block
    assert lr_of[id(stem)] == pytest.approx(0.05 * 0.5 ** len(blocks))
    # off (1.0): the two groups as before, head and backbone
    plain = fit.make_optimizer(model, Phase(lr=0.1, backbone_lr_mult=0.5), arch)
    assert [g["lr"] for g in plain.param_groups] == [0.1, 0.05]
    # frozen blocks are in no group: only what trains is decayed
    models.set_trainable(model, arch, 1)
    opt = fit.make_optimizer(model, phase, arch)
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.05]


# ---- an EMA of the weights ---------------------------------------------------------------------


def test_the_ema_follows_timms_warmed_up_decay():
    model = _linear()
    average = fit.WeightAverage(model, 0.9, prefix="")
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    expected = model.weight.detach().clone()
    for step in range(1, 6):
        fit.run_epoch(
            model,
            _batches(step),
            CPU,
            opt,
            CPU.grad_scaler(),
            recipe=fit.Recipe(after_step=average.update),
        )
        decay = 0.0 if step == 1 else min(0.9, 1 - step ** (-2 / 3))  # timm: s - 1 steps in
        expected = decay * expected + (1 - decay) * model.weight.detach()
    assert average.steps == 5
    assert torch.allclose(average.module.weight, expected, atol=1e-6)
    assert not torch.allclose(average.module.weight, model.weight)


def test_an_epoch_offers_its_ema_only_when_strictly_better():
    row = {"epoch": 3, "val_acc": 0.8, "val_loss": 0.5, "ema_val_acc": 0.85, "ema_val_loss": 0.6}
    assert fit._offered(row, "val_acc")["ema"] is True
    assert fit._offered(row, "val_acc")["val_acc"] == 0.85
    assert fit._offered(row, "val_loss") == {**row, "ema": False}  # its loss is worse
    tie = dict(row, ema_val_acc=0.8)
    assert fit._offered(tie, "val_acc")["ema"] is False
    plain = {"epoch": 1, "val_acc": 0.8, "val_loss": 0.5}
    assert fit._offered(plain, "val_acc") is plain


EMA = dict(MODERN, warmup_epochs=0, schedule={"name": "none"}, ema_decay=0.9, epochs=3)


@pytest.mark.parametrize(
    "strategy, ema_wins",
    [
        # one epoch at a high rate: the average (of the epoch's steps) beats the last step
        (dict(EMA, lr=0.05, epochs=1), True),
        # a slow head on features, improving every epoch: the lagging average loses
        (dict(EMA, trainable="head", cache_features=True), False),
    ],
    ids=["ema-kept", "weights-kept"],
)
def test_the_ema_is_validated_every_epoch_and_its_weights_kept_when_better(
    strategy, ema_wins, dataset, params_raw, tmp_path
):
    """What the checkpoint holds scores exactly the kept best_val_loss on val: the EMA's weights
    when they won, the trained ones otherwise."""
    from transferline.config.params import Evaluate
    from transferline.engine.evaluate import evaluate

    params = make_params(params_raw, {"s": strategy}, patience=0, select="val_loss")
    result = run_train(params, "s", dataset, tmp_path / "a")
    history = result["history"]
    assert all("ema_val_acc" in row and "ema_val_loss" in row for row in history)
    assert any(row["ema_val_loss"] != row["val_loss"] for row in history)
    losses = [r["val_loss"] for r in history] + [r["ema_val_loss"] for r in history]
    assert result["best_val_loss"] == pytest.approx(min(losses), abs=1e-6)
    assert result["best_is_ema"] is ema_wins
    # score the checkpoint on val (as the test split) with evaluate: the kept weights' loss
    clean, split = dataset
    as_test = tmp_path / "split"
    as_test.mkdir()
    for f in split.iterdir():
        (as_test / f.name).write_bytes(f.read_bytes())
    (as_test / "test.csv").write_bytes((split / "val.csv").read_bytes())
    evaluate(
        model_path=tmp_path / "a" / "m.pt",
        clean_dir=clean,
        split_dir=as_test,
        metrics_path=tmp_path / "e.json",
        confusion_path=tmp_path / "c.csv",
        settings=Evaluate(tta_flip=False),
        seed=0,
        threads=1,
    )
    import json

    scored = json.loads((tmp_path / "e.json").read_text())
    assert scored["accuracy"] == pytest.approx(result["best_val_acc"])
    assert scored["log_loss"] == pytest.approx(result["best_val_loss"], abs=1e-5)
    # the same run again: byte-identical, the EMA included
    run_train(params, "s", dataset, tmp_path / "b")
    assert (tmp_path / "a" / "m.pt").read_bytes() == (tmp_path / "b" / "m.pt").read_bytes()


def test_a_run_interrupted_with_an_ema_resumes_to_the_same_bytes(
    dataset, params_raw, tmp_path, monkeypatch
):
    params = make_params(params_raw, {"s": EMA}, patience=0)

    def run(out: Path):
        return run_train(params, "s", dataset, out, resume_dir=tmp_path / "resume")

    run(tmp_path / "ref")
    real, calls = fit._one_epoch, []

    def stop_in_epoch_3(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # after epoch 2's state was saved
        return real(*args, **kwargs)

    monkeypatch.setattr(fit, "_one_epoch", stop_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "out")
    monkeypatch.setattr(fit, "_one_epoch", real)
    result = run(tmp_path / "out")
    assert result["resumed_at"] == 2
    for name in ("m.pt", "m.json", "p.tsv"):
        assert (tmp_path / "out" / name).read_bytes() == (tmp_path / "ref" / name).read_bytes()


# ---- batch norm kept at its pretrained statistics ---------------------------------------------


def test_freeze_bn_keeps_every_running_statistic_and_still_trains_the_rest(
    dataset, params_raw, tmp_path
):
    from transferline import models

    model = models.build("resnet18", 3, "none")
    models.train_mode(model, freeze_bn=True)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)
    assert model.training and model.layer4[0].conv1.training
    models.train_mode(model)  # off: batch norm trains with the rest
    assert all(m.training for m in bns)

    strategy = dict(MODERN, arch="cnn2", warmup_epochs=0, epochs=1, freeze_bn=True)
    run_train(make_params(params_raw, {"s": strategy}, patience=0), "s", dataset, tmp_path / "f")
    batch = make_params(params_raw, {"s": dict(strategy, freeze_bn=False)}, patience=0)
    run_train(batch, "s", dataset, tmp_path / "batch")
    frozen = torch.load(tmp_path / "f" / "m.pt", weights_only=True)["state_dict"]
    batch = torch.load(tmp_path / "batch" / "m.pt", weights_only=True)["state_dict"]
    means = [k for k in frozen if k.endswith("running_mean")]
    assert means
    for k in means:  # a new BatchNorm starts at mean 0, variance 1
        var = k.replace("running_mean", "running_var")
        assert torch.equal(frozen[k], torch.zeros_like(frozen[k]))
        assert torch.equal(frozen[var], torch.ones_like(frozen[var]))
        assert not torch.equal(batch[k], torch.zeros_like(batch[k]))
    # the weights trained either way, differently
    assert not torch.equal(frozen["head.weight"], batch["head.weight"])
