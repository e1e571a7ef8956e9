"""Train one strategy: data/clean + data/split -> models/S.pt, metrics/train/S.json,
plots/train/S.tsv (formats in docs/pipeline.md).

    python -m stages.train finetune --clean data/clean --split data/split \
        --model models/finetune.pt --metrics metrics/train/finetune.json \
        --plots plots/train/finetune.tsv

The strategy's phases run in order with epochs numbered on from one phase to the next; each
phase sets which parameters train and gets a fresh optimiser and schedule. The checkpoint keeps
the weights of the best epoch by `train.select`. With `cache_features` the frozen backbone runs
once over train and val with the eval transform and the head-only phases train the head on
those pooled features: no augmentation then, and no dropout in front of the head (the features
are the head's input with the network in eval mode); phases that train the backbone train on
images (the features are computed again for a head-only phase after one of those).

Same params, same machine -> byte-identical outputs: seeded everything, deterministic kernels,
fixed thread count, no wall-clock times in any output (they go to stderr).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import torch
from torch import nn

from transferline import models
from transferline.config import archs
from transferline.config.errors import StageError
from transferline.config.params import SPEED_ONLY as SPEED_ONLY_KEYS
from transferline.config.params import Params
from transferline.data import datasets as data
from transferline.data import transforms
from transferline.data.transforms import batch_mix, eval_transform, resize_size, train_transform
from transferline.engine import distributed, runtime
from transferline.engine import fit as loop
from transferline.engine import resume as resume_state
from transferline.engine.fit import Fit
from transferline.engine.fit import log as _log
from transferline.engine.resume import Resume
from transferline.engine.runtime import Runtime, from_params, torch_state
from transferline.models import checkpoints, heads, registry, trainable
from transferline.outputs import atomic as files
from transferline.outputs import curves
from transferline.outputs import metrics as seeds

PLOT_COLUMNS = curves.COLUMNS  # plots/train/<S>.tsv (transferline/outputs/curves.py)
# metrics whose spread over train.seeds runs is written under `std`
SPREAD = ("best_val_acc", "best_val_loss", "best_epoch")
# train.* keys that change speed only (params.SPEED_ONLY), never the weights: left out of the
# checkpoint and of the resume fingerprint
SPEED_ONLY = {key.split(".", 1)[1] for key in SPEED_ONLY_KEYS if key.startswith("train.")}
# the code a resume state must have been written by (a change starts the run from scratch)
ENGINE_MODULES = (
    loop,
    resume_state,
    registry,
    heads,
    trainable,
    checkpoints,
    data,
    runtime,
    transforms,
)

# ---- inputs and outputs ---------------------------------------------------------------------


def check_rows(rows: dict[str, list], classes: list[str], split_dir) -> None:
    """Each split's rows (path, label) before any work: none empty, every label a class of
    classes.json; else a StageError naming the split's file."""
    for split, items in rows.items():
        if not items:
            raise StageError(
                f"{Path(split_dir) / (split + '.csv')}: no images; training needs "
                "a non-empty train and val split"
            )
        bad = [p for p, label in items if not 0 <= label < len(classes)]
        if bad:
            raise StageError(
                f"{Path(split_dir) / (split + '.csv')}: {bad[0]} has a label "
                f"outside 0..{len(classes) - 1} (classes.json)"
            )


def cached_phases(strategy, phases) -> list[bool]:
    """Which phases run on cached features: with `cache_features`, every head-only one (the
    others train the backbone, on images)."""
    return [strategy.cache_features and p.trainable == "head" for p in phases]


def image_datasets(params: Params, strategy, rows, clean_dir) -> dict[str, data.ImageDataset]:
    """train/val datasets, images decoded once and shared by every seed's run; with
    `cache_features`, also "features": the train images with the eval transform (features are
    computed without augmentation), and "train" only where some phase trains on images."""
    tp = params.train
    mean, std = models.norm_stats(strategy.arch)
    resize = resize_size(params.image_size, models.crop_pct(strategy.arch))
    ev = eval_transform(image_size=params.image_size, mean=mean, std=std, resize_size=resize)
    cached = cached_phases(strategy, strategy.resolved_phases())
    plain = data.ImageDataset(clean_dir, rows["train"], ev)
    out = {"val": data.ImageDataset(clean_dir, rows["val"], ev)}
    if any(cached):
        out["features"] = plain
    if not all(cached):
        tr = train_transform(image_size=params.image_size, augment=tp.augment, mean=mean, std=std)
        out["train"] = plain.with_transform(tr)
    return out


def _balance(params: Params, dataset, num_classes: int) -> dict:
    """train.balance as tensors: {"class_weight"} for `loss` (inverse class frequency), or
    {"sample_weight"} for `sampler` (each image 1 / its class's count: classes drawn evenly)."""
    labels = torch.tensor([label for _, label in dataset.rows])
    if params.train.balance == "none":
        return {}
    try:
        weights = loop.class_weights(labels, num_classes)
    except ValueError as exc:
        raise StageError(f"train.balance: {params.train.balance}: {exc}") from None
    if params.train.balance == "loss":
        return {"class_weight": weights}
    return {"sample_weight": weights.double()[labels]}


def loaders(params: Params, datasets, rt: Runtime, cache: bool, sample_weight=None):
    """Loaders over the datasets (this process's share of them), their order and augmentation
    drawn from params.seed; train.batch_size is the global batch, split over the processes."""
    tp, w = params.train, distributed.world()
    batch = tp.batch_size // w.size
    # training shares are padded to equal length (DDP steps in lockstep); not cached features,
    # which every process gathers whole
    pad = not cache and w.size > 1
    n = -(-len(datasets["train"]) // w.size) if pad else len(datasets["train"])
    # a last batch of one sample would break BatchNorm in train mode: drop just that one
    drop_last = not cache and n > 1 and n % batch == 1
    common = dict(
        batch_size=batch,
        workers=tp.workers,
        seed=params.seed,
        device=rt.device,
        rank=w.rank,
        world=w.size,
    )
    return (
        data.make_loader(
            datasets["train"],
            shuffle=not cache,
            drop_last=drop_last,
            pad=pad,
            weights=sample_weight,
            **common,
        ),
        data.make_loader(datasets["val"], shuffle=False, **common),
    )


def _train_set(datasets) -> data.ImageDataset:
    """The training images: augmented where a phase trains on images, else the plain ones."""
    return datasets["train"] if "train" in datasets else datasets["features"]


def _steps(model, strategy, params: Params, datasets, rt: Runtime, num_classes: int, phases):
    """The steps fit() runs each phase with: ImageSteps, FeatureSteps (every phase on cached
    features), or PhasedSteps (some of each)."""
    cached = cached_phases(strategy, phases)
    balance = _balance(params, _train_set(datasets), num_classes)
    images = None
    if not all(cached):
        # the loader draws the weighted order of images; cached features draw their own
        sampled = balance.get("sample_weight")
        train_loader, val_loader = loaders(params, datasets, rt, False, sampled)
        mix = batch_mix(params.train.augment, num_classes, params.seed)
        images = loop.ImageSteps(
            model, train_loader, val_loader, rt, balance.get("class_weight"), mix
        )
    if not any(cached):
        return images

    def compute():
        plain = {"train": datasets["features"], "val": datasets["val"]}
        train_loader, val_loader = loaders(params, plain, rt, True)
        return (
            loop.cached_features(model, train_loader, rt),
            loop.cached_features(model, val_loader, rt),
        )

    name = models.head_name(model)
    features = loop.FeatureSteps(
        model.get_submodule(name),
        compute,
        params.train.batch_size,
        params.seed,
        rt,
        **balance,
        head_name=name,
    )
    if images is None:  # features once, before the first phase (as a resume expects them)
        features.refresh()
        return features
    return loop.PhasedSteps(images, features, cached)


def _meta(
    strategy_name: str, strategy, params: Params, classes, fit: Fit, extra: list = ()
) -> dict:
    """The checkpoint's description of the model; a JSON round trip gives it fresh string
    objects, so its pickled bytes do not depend on whether params came from a file or were
    built in the same process (pickle shares identical objects, e.g. a "cpu" that torch uses)."""
    tp = params.train
    mean, std = models.norm_stats(strategy.arch)
    meta = json.loads(
        json.dumps(
            {
                "arch": strategy.arch,
                "num_classes": len(classes),
                "classes": list(classes),
                "transform": {
                    "image_size": params.image_size,
                    "resize_size": resize_size(params.image_size, models.crop_pct(strategy.arch)),
                    "mean": mean,
                    "std": std,
                },
                # what predict needs to prepare a photo as clean did (workers: speed only)
                "clean": params.clean.model_dump(exclude={"workers"}),
                "head": models.head_spec(strategy.head),
                "strategy": {
                    "name": strategy_name,
                    "arch": strategy.arch,
                    "weights": strategy.weights,
                    **_weights_file(strategy.weights),
                    "cache_features": strategy.cache_features,
                    "phases": [p.model_dump() for p in strategy.resolved_phases()],
                    "seed": params.seed,
                    "train": tp.model_dump(exclude=SPEED_ONLY),
                    "runtime": params.runtime.model_dump(),
                },
                "best_epoch": fit.best["epoch"],
                "select": tp.select,
            }
        )
    )
    if extra:  # the other seeds' runs: (model, fit, steps) each
        meta["runs"] = [
            {
                "seed": params.seed + k,
                "best_epoch": f.best["epoch"],
                "state_dict": models.cpu_state(f.best_state),
            }
            for k, (_, f, _) in enumerate(extra, 1)
        ]
    return meta


# ---- the worker -----------------------------------------------------------------------------


def train(
    strategy_name: str,
    params: Params,
    *,
    clean_dir,
    split_dir,
    model_path,
    metrics_path,
    plots_path,
    resume_dir=None,
) -> dict:
    """Train one strategy and write its checkpoint, metrics and per-epoch plot.

    With `train.seeds` N > 1 the strategy trains N times (seeds seed, seed+1, ...): the checkpoint
    holds every run (the first as `state_dict`, the others under `runs`), the metrics are means over
    runs with their spread under `std` (transferline/outputs/metrics.py), and the plot shows the
    first run. Returns the metrics plus what a caller may want to check: per-phase trainable
    parameters, the epoch history, and wall-clock seconds (never written to the tracked outputs).
    With `resume_dir` (and `train.resume`), every epoch's state is kept there and an interrupted run
    continues from it; the folder is emptied once the outputs are written.
    """
    strategy = params.strategy(strategy_name)  # unknown name -> error listing the names
    archs.check(strategy.arch, strategy.weights)  # unknown arch -> error listing the archs
    phases = strategy.resolved_phases()
    classes = data.read_classes(split_dir)
    rows = {s: data.read_rows(split_dir, s) for s in ("train", "val")}
    check_rows(rows, classes, split_dir)
    rt = from_params(params.runtime)
    start = time.perf_counter()
    datasets = image_datasets(params, strategy, rows, clean_dir)
    resumes = _resumes(resume_dir, params, strategy_name, classes, rows, clean_dir)
    with distributed.process_group(rt.device) as world:
        runs = []
        for k in range(params.train.seeds):
            run_params = params.model_copy(update={"seed": params.seed + k})
            runs.append(
                _train_once(
                    strategy_name, strategy, run_params, phases, classes, datasets, rt, resumes[k]
                )
            )
    (model, fit, steps), extra = runs[0], runs[1:]
    metrics = _run_metrics(model, fit)
    if extra:
        metrics = seeds.mean_std([metrics] + [_run_metrics(m, f) for m, f, _ in extra], SPREAD)
    if world.main:  # every process holds the same weights; one writes them
        _write(
            model_path,
            metrics_path,
            plots_path,
            _meta(strategy_name, strategy, params, classes, fit, extra),
            model,
            metrics,
            fit,
        )
        for resume in filter(None, resumes):
            resume.clear()
    secs = time.perf_counter() - start
    _log(
        f"{strategy_name}: best epoch {fit.best['epoch']} val_acc {fit.best['val_acc']:.4f} "
        f"val_loss {fit.best['val_loss']:.4f}; {secs:.1f} s in all"
    )
    return {
        **metrics,
        "phases": fit.phases,
        "history": fit.history,
        "seconds": secs,
        "feature_seconds": steps.feature_seconds,
        "resumed_at": fit.resumed_at,
    }


def _write(
    model_path, metrics_path, plots_path, meta: dict, model, metrics: dict, fit: Fit
) -> None:
    models.save_checkpoint(model_path, model, meta)
    files.write_json(metrics_path, metrics)
    files.write_text(plots_path, curves.tsv_text(fit.history))


def _resumes(
    resume_dir, params: Params, strategy_name: str, classes, rows, clean_dir
) -> list[Resume | None]:
    """One resume file per seed's run, or None each when resuming is off."""
    if resume_dir is None or not params.train.resume:
        return [None] * params.train.seeds
    fingerprint = _fingerprint(params, strategy_name, classes, rows, clean_dir)
    return [
        Resume(Path(resume_dir) / f"seed{params.seed + k}.pt", fingerprint)
        for k in range(params.train.seeds)
    ]


def _fingerprint(params: Params, strategy_name: str, classes, rows, clean_dir) -> str:
    """sha256 of everything a run's weights depend on: the strategy and train settings, the
    classes and rows, every image's bytes, the engine's code and torch's version."""
    strategy = params.strategy(strategy_name)
    config = {
        "strategy": strategy.model_dump(),
        "seed": params.seed,
        "threads": params.threads,
        "train": params.train.model_dump(exclude=SPEED_ONLY),
        "runtime": params.runtime.model_dump(),
        "classes": list(classes),
        "rows": rows,
        "torch": torch.__version__,
    }
    config.update(_weights_file(strategy.weights))
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    for module in ENGINE_MODULES:
        digest.update(Path(module.__file__).read_bytes())
    digest.update(Path(__file__).read_bytes())
    for split in ("train", "val"):
        for path, _ in rows[split]:
            with open(Path(clean_dir) / path, "rb") as f:
                digest.update(hashlib.file_digest(f, "sha256").digest())
    return digest.hexdigest()


def _train_once(
    strategy_name,
    strategy,
    params: Params,
    phases,
    classes,
    datasets,
    rt: Runtime,
    resume: Resume | None = None,
):
    """One training run under `params.seed`; returns (model at its best epoch, fit, steps)."""
    threads = distributed.threads_per_process(params.threads)
    with torch_state(rt, seed=params.seed, threads=threads):
        model = models.build(
            strategy.arch, len(classes), strategy.weights, strategy.head, params.image_size
        )
        for phase in phases:  # a bad `trainable` in any phase fails now, not epochs later
            models.set_trainable(model, strategy.arch, phase.trainable)
        rt.place(model)
        _log(
            f"{strategy_name}: {strategy.arch} ({strategy.weights}), {len(classes)} classes, "
            f"{len(_train_set(datasets))} train / {len(datasets['val'])} val images, {rt.device}, "
            f"{rt.precision}, seed {params.seed}"
        )
        steps = _steps(model, strategy, params, datasets, rt, len(classes), phases)
        try:
            fit = loop.fit(model, strategy.arch, phases, steps, params.train, resume=resume)
        except loop.Diverged as exc:
            raise StageError(f"strategy {strategy_name}: {exc}") from None
        model.load_state_dict(fit.best_state)
    return model, fit, steps


def _weights_file(weights: str) -> dict:
    """{"weights_sha256": digest} for a weights file (which file a model started from), else {}."""
    if not archs.is_file(weights):
        return {}
    from transferline.models.weights import sha256

    return {"weights_sha256": sha256(Path(weights).expanduser())}


def _run_metrics(model: nn.Module, fit: Fit) -> dict:
    return {
        "best_epoch": fit.best["epoch"],
        "best_val_acc": round(fit.best["val_acc"], 6),
        "best_val_loss": round(fit.best["val_loss"], 6),
        # with an EMA (ema_decay): whether the kept weights are the average's
        **({"best_is_ema": fit.best["ema"]} if "ema" in fit.best else {}),
        "epochs": len(fit.history),
        "trainable_params": sum(p.numel() for n, p in model.named_parameters() if n in fit.trained),
        "total_params": sum(p.numel() for p in model.parameters()),
    }
