"""The learning-rate range test (Smith 2015; fastai's `lr_find`) on a strategy's real data.

The strategy's network, trainable parameters, optimiser and training loader (augmentation and
all, as train builds them) take one step per batch while the learning rate grows exponentially
from `start` to `end`; the loss is smoothed (exponential moving average, debiased) and the test
stops once it exceeds 4x the lowest smoothed loss. The suggestion is the rate where the smoothed
loss falls fastest (the steepest slope against log lr, fastai's `steep`), ignoring the first and
last tenth of the range. The backbone's rate keeps its `backbone_lr_mult` ratio to the head's.

Seeded from params.yaml, with the deterministic kernels train uses: the same data and params give
the same curve, the same suggestion and the same PNG bytes. Nothing of the pipeline is written.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch.nn.functional as F
from matplotlib.figure import Figure

from transferline import models
from transferline.config.errors import StageError
from transferline.config.params import Params
from transferline.data import datasets as data
from transferline.engine import distributed
from transferline.engine.fit import make_optimizer
from transferline.engine.runtime import from_params, torch_state
from transferline.engine.train import check_rows, image_datasets, loaders
from transferline.outputs import atomic as files
from transferline.report import figures as png

SMOOTH = 0.98  # weight of the running average (fastai's beta)
DIVERGED = 4.0  # stop once the smoothed loss exceeds this many times the lowest
MARGIN = 0.1  # fraction of the points at each end left out of the suggestion


def suggest(lrs: list[float], losses: list[float]) -> float:
    """The lr where the smoothed loss falls fastest against log lr (ends left out)."""
    if len(lrs) < 5:
        raise StageError(
            f"the range test stopped after {len(lrs)} steps; too few to suggest a rate "
            "(lower --start, or use more training images)"
        )
    cut = int(len(lrs) * MARGIN) if len(lrs) >= 10 else 0
    slope = np.gradient(np.asarray(losses), np.log(np.asarray(lrs)))
    i = cut + int(np.argmin(slope[cut : len(lrs) - cut]))
    return float(lrs[i])


def lr_find(
    strategy_name: str,
    params: Params,
    *,
    clean_dir: Path,
    split_dir: Path,
    out: Path,
    start: float = 1e-7,
    end: float = 10.0,
    steps: int = 100,
) -> dict:
    """Run the range test for the strategy's first phase; write `<out>/<strategy>.png` (loss
    against lr, the suggestion marked) and `<out>/<strategy>.json`; return the JSON's content."""
    if not 0 < start < end:
        raise StageError(f"the range needs 0 < start < end (got {start} .. {end})")
    strategy = params.strategy(strategy_name)
    phase = strategy.resolved_phases()[0]
    classes = data.read_classes(split_dir)
    rows = {s: data.read_rows(split_dir, s) for s in ("train", "val")}
    check_rows(rows, classes, split_dir)
    rt = from_params(params.runtime)
    cached = strategy.model_copy(update={"cache_features": False})  # images, not features
    loader, _ = loaders(params, image_datasets(params, cached, rows, clean_dir), rt, cache=False)
    threads = distributed.threads_per_process(params.threads)
    lrs, losses = [], []
    with torch_state(rt, seed=params.seed, threads=threads):
        model = models.build(
            strategy.arch, len(classes), strategy.weights, strategy.head, params.image_size
        )
        models.set_trainable(model, strategy.arch, phase.trainable)
        rt.place(model)
        optimizer = make_optimizer(model, phase, strategy.arch)
        # head 1, backbone mult (times layer_decay per block)
        ratios = [g["lr"] / phase.lr for g in optimizer.param_groups]
        gamma = (end / start) ** (1 / max(1, steps - 1))
        avg, best = 0.0, math.inf
        batches = iter(())
        for step in range(steps):
            lr = start * gamma**step
            for group, ratio in zip(optimizer.param_groups, ratios):
                group["lr"] = lr * ratio
            try:
                x, y = next(batches)
            except StopIteration:
                batches = iter(loader)
                x, y = next(batches)
            models.train_mode(model, phase.freeze_bn)
            with rt.autocast():
                loss = F.cross_entropy(model(rt.batch(x)).float(), y.to(rt.device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            value = loss.item()
            if not math.isfinite(value):
                break
            avg = SMOOTH * avg + (1 - SMOOTH) * value
            smoothed = avg / (1 - SMOOTH ** (step + 1))
            lrs.append(lr)
            losses.append(smoothed)
            best = min(best, smoothed)
            if smoothed > DIVERGED * best:
                break
    suggestion = suggest(lrs, losses)
    result = {
        "strategy": strategy_name,
        "arch": strategy.arch,
        "trainable": phase.trainable,
        "optimizer": phase.optimizer,
        "suggested_lr": float(f"{suggestion:.3g}"),
        "lr": [float(f"{v:.6g}") for v in lrs],
        "loss": [round(v, 6) for v in losses],
    }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _figure(result, out / f"{strategy_name}.png")
    files.write_json(out / f"{strategy_name}.json", result)
    return result


def _figure(result: dict, path: Path) -> None:
    fig = Figure(figsize=(6.0, 4.0), layout="constrained")
    ax = fig.subplots()
    ax.plot(result["lr"], result["loss"], color="tab:blue")
    ax.axvline(result["suggested_lr"], color="tab:red", linestyle="--")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (head; the backbone's keeps backbone_lr_mult)")
    ax.set_ylabel("training loss (smoothed)")
    ax.set_title(f"{result['strategy']}: suggested lr {result['suggested_lr']:g}")
    with files.written(path) as tmp:
        png.save(fig, tmp)
