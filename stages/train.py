"""Train one strategy: data/clean + data/split -> models/S.pt, metrics/train/S.json,
plots/train/S.tsv (formats in docs/pipeline.md).

    python -m stages.train finetune --clean data/clean --split data/split \
        --model models/finetune.pt --metrics metrics/train/finetune.json \
        --plots plots/train/finetune.tsv

The strategy's phases run in order with epochs numbered on from one phase to the next; each
phase sets which parameters train and gets a fresh optimiser and schedule. The checkpoint keeps
the weights of the best epoch by `train.select`. With `cache_features` (head-only strategies) the
frozen backbone runs once over train and val with the eval transform and the head trains on
those pooled features: no augmentation then, and no dropout in front of the head (the features
are the head's input with the network in eval mode).

Same params, same machine -> byte-identical outputs: seeded everything, deterministic kernels,
fixed thread count, no wall-clock times in any output (they go to stderr).
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from stages import data, files, models
from stages.runtime import Runtime, from_params, torch_state
from stages.params import Params, Phase, StageError, load, run_main
from stages.transforms import eval_transform, resize_size, train_transform

PLOT_COLUMNS = ("epoch", "phase", "lr", "train_loss", "train_acc", "val_loss", "val_acc")


def _log(msg: str) -> None:
    tqdm.write(msg, file=sys.stderr)


# ---- optimiser and schedule per phase -------------------------------------------------------

_OPTIMIZERS = {
    "sgd": lambda groups, ph: torch.optim.SGD(groups, lr=ph.lr, momentum=ph.momentum,
                                              nesterov=ph.nesterov,
                                              weight_decay=ph.weight_decay),
    "adam": lambda groups, ph: torch.optim.Adam(groups, lr=ph.lr, weight_decay=ph.weight_decay),
    "adamw": lambda groups, ph: torch.optim.AdamW(groups, lr=ph.lr,
                                                  weight_decay=ph.weight_decay),
}

_SCHEDULES = {
    "none": lambda opt, ph: None,
    "step": lambda opt, ph: torch.optim.lr_scheduler.StepLR(opt, ph.schedule.step_size,
                                                            ph.schedule.gamma),
    "cosine": lambda opt, ph: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=ph.epochs),
}


def _optimizer(model: nn.Module, phase: Phase) -> torch.optim.Optimizer:
    """Head at phase.lr (group 0), other trainable parameters at lr * backbone_lr_mult."""
    head = models.head_name(model) + "."
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [{"params": [p for n, p in trainable if n.startswith(head)], "lr": phase.lr},
              {"params": [p for n, p in trainable if not n.startswith(head)],
               "lr": phase.lr * phase.backbone_lr_mult}]
    return _OPTIMIZERS[phase.optimizer]([g for g in groups if g["params"]], phase)


# ---- one pass over batches ------------------------------------------------------------------

def _epoch(fn: nn.Module, batches: Iterable, rt: Runtime, optimizer=None, scaler=None,
           desc: str = "") -> tuple[float, float, int]:
    """(mean loss, accuracy, n) of fn over batches; one optimiser step per batch if given."""
    loss_sum = torch.zeros((), dtype=torch.float64, device=rt.device)
    correct = torch.zeros((), dtype=torch.int64, device=rt.device)
    n = 0
    for x, y in tqdm(batches, desc=desc, leave=False, disable=None, file=sys.stderr):
        x, y = rt.batch(x), y.to(rt.device, non_blocking=True)
        with torch.set_grad_enabled(optimizer is not None), rt.autocast():
            out = fn(x)
            loss = F.cross_entropy(out.float(), y)
        if optimizer is not None:
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        loss_sum += loss.detach().double() * len(y)
        correct += (out.argmax(1) == y).sum()
        n += len(y)
    return loss_sum.item() / n, correct.item() / n, n


class _ImageSteps:
    """Whole network on (augmented) image batches: every strategy without cache_features."""
    feature_seconds = 0.0

    def __init__(self, model, train_loader, val_loader, rt):
        self.model, self.train_loader, self.val_loader, self.rt = (model, train_loader,
                                                                   val_loader, rt)
        self.scaler = rt.grad_scaler()

    def train_epoch(self, optimizer, desc):
        models.train_mode(self.model)  # frozen parts (and their BN statistics) stay in eval
        return _epoch(self.model, self.train_loader, self.rt, optimizer, self.scaler, desc)

    def val_epoch(self, desc):
        self.model.eval()
        return _epoch(self.model, self.val_loader, self.rt, desc=desc)


class _FeatureSteps:
    """Only the head, on backbone features computed once (cache_features)."""

    def __init__(self, head, train_xy, val_xy, batch_size, seed, rt):
        self.head, self.train_xy, self.val_xy, self.bs, self.rt = (head, train_xy, val_xy,
                                                                   batch_size, rt)
        self.generator = torch.Generator().manual_seed(seed)  # batch order per epoch
        self.scaler = rt.grad_scaler()

    def _batches(self, xy, order):
        x, y = xy
        return [(x[i], y[i]) for i in order.to(x.device).split(self.bs)]

    def train_epoch(self, optimizer, desc):
        self.head.train()
        order = torch.randperm(len(self.train_xy[1]), generator=self.generator)
        return _epoch(self.head, self._batches(self.train_xy, order), self.rt, optimizer,
                      self.scaler, desc)

    def val_epoch(self, desc):
        self.head.eval()
        order = torch.arange(len(self.val_xy[1]))
        return _epoch(self.head, self._batches(self.val_xy, order), self.rt, desc=desc)


@torch.no_grad()
def _features(model: nn.Module, loader, rt: Runtime) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, F) float32 inputs of the head, (N,) labels: the network in eval mode, head bypassed."""
    name = models.head_name(model)
    head = models.swap_head(model, nn.Identity(), name)
    model.eval()
    feats, labels = [], []
    try:
        for x, y in tqdm(loader, desc="features", leave=False, disable=None, file=sys.stderr):
            with rt.autocast():
                feats.append(model(rt.batch(x)).float())
            labels.append(y.to(rt.device))
    finally:
        models.swap_head(model, head, name)
    return torch.cat(feats), torch.cat(labels)


# ---- the phases -----------------------------------------------------------------------------

def _better(row: dict, best: dict | None, select: str) -> bool:
    """Strictly better than the best so far (ties keep the earlier epoch)."""
    if best is None:
        return True
    if select == "val_acc":
        return row["val_acc"] > best["val_acc"]
    return row["val_loss"] < best["val_loss"]


@dataclass
class _Fit:
    history: list[dict] = field(default_factory=list)
    best: dict | None = None                  # history row of the best epoch so far
    best_state: dict | None = None            # state_dict copy at that epoch
    phases: list[dict] = field(default_factory=list)  # per phase: epochs run, trainable params
    trained: set[str] = field(default_factory=set)    # parameters trainable in any phase


def _fit(model, arch: str, phases: list[Phase], steps, train_p) -> _Fit:
    fit = _Fit()
    for k, phase in enumerate(phases, 1):
        info = models.set_trainable(model, arch, phase.trainable)
        fit.trained |= {n for n, p in model.named_parameters() if p.requires_grad}
        _log(f"phase {k}: trainable {phase.trainable!r} -> {info['trainable_params']:,} of "
             f"{info['total_params']:,} parameters ({', '.join(info['trainable_modules'])})")
        epochs, stop = _run_phase(model, k, phase, steps, train_p, fit)
        fit.phases.append({"phase": k, "epochs": epochs, **info})
        if stop:
            break
    return fit


def _run_phase(model, k: int, phase: Phase, steps, train_p, fit: _Fit) -> tuple[int, bool]:
    """One phase's epochs, a fresh optimiser and schedule; (epochs run, stop the whole run?).

    train.patience ends this phase (the next one changes the setting and may still improve);
    train.target_acc ends the run.
    """
    optimizer = _optimizer(model, phase)
    scheduler = _SCHEDULES[phase.schedule.name](optimizer, phase)
    stale = 0
    for run in range(1, phase.epochs + 1):
        row = _one_epoch(len(fit.history) + 1, k, optimizer, steps)
        if scheduler is not None:
            scheduler.step()
        fit.history.append(row)
        if _better(row, fit.best, train_p.select):
            fit.best, stale = row, 0
            fit.best_state = {n: t.detach().clone() for n, t in model.state_dict().items()}
        else:
            stale += 1
        if train_p.target_acc < 1.0 and row["val_acc"] >= train_p.target_acc:
            _log(f"val_acc {row['val_acc']:.4f} reached train.target_acc; stopping")
            return run, True
        if train_p.patience and stale >= train_p.patience:
            _log(f"no better {train_p.select} for {stale} epochs; ending phase {k}")
            return run, False
    return phase.epochs, False


def _one_epoch(epoch: int, phase: int, optimizer, steps) -> dict:
    lr = optimizer.param_groups[0]["lr"]  # group 0 is the head
    start = time.perf_counter()
    train_loss, train_acc, n_train = steps.train_epoch(optimizer, f"epoch {epoch} train")
    val_loss, val_acc, n_val = steps.val_epoch(f"epoch {epoch} val")
    secs = time.perf_counter() - start
    _log(f"epoch {epoch:3d} (phase {phase}) lr {lr:.3g}  train loss {train_loss:.4f} "
         f"acc {train_acc:.4f}  val loss {val_loss:.4f} acc {val_acc:.4f}  "
         f"[{secs:.1f} s, {(n_train + n_val) / secs:.1f} img/s]")
    # seconds/images are for the caller and the log only; the TSV keeps PLOT_COLUMNS
    return {"epoch": epoch, "phase": phase, "lr": lr, "train_loss": train_loss,
            "train_acc": train_acc, "val_loss": val_loss, "val_acc": val_acc,
            "seconds": secs, "images": n_train + n_val}


# ---- inputs and outputs ---------------------------------------------------------------------

def _check_rows(rows: dict[str, list], classes: list[str], split_dir) -> None:
    for split, items in rows.items():
        if not items:
            raise StageError(f"{Path(split_dir) / (split + '.csv')}: no images; training needs "
                             "a non-empty train and val split")
        bad = [p for p, label in items if not 0 <= label < len(classes)]
        if bad:
            raise StageError(f"{Path(split_dir) / (split + '.csv')}: {bad[0]} has a label "
                             f"outside 0..{len(classes) - 1} (classes.json)")


def _check_phases(phases: list[Phase]) -> None:
    for k, ph in enumerate(phases, 1):
        if ph.optimizer == "sgd" and ph.nesterov and ph.momentum == 0:
            raise StageError(f"phase {k}: nesterov: true needs momentum > 0")


def _tsv(history: list[dict]) -> str:
    def fmt(v):
        return str(v) if isinstance(v, int) else f"{v:.6g}"
    lines = ["\t".join(PLOT_COLUMNS)]
    lines += ["\t".join(fmt(row[c]) for c in PLOT_COLUMNS) for row in history]
    return "\n".join(lines) + "\n"


def _datasets(params: Params, strategy, rows, clean_dir) -> dict[str, data.ImageDataset]:
    """train/val datasets, images decoded once and shared by every seed's run."""
    tp = params.train
    mean, std = models.norm_stats(strategy.arch)
    ev = eval_transform(image_size=tp.image_size, mean=mean, std=std)
    # cached features are computed once, without augmentation
    tr = ev if strategy.cache_features else train_transform(
        image_size=tp.image_size, augment=tp.augment, mean=mean, std=std)
    return {"train": data.ImageDataset(clean_dir, rows["train"], tr),
            "val": data.ImageDataset(clean_dir, rows["val"], ev)}


def _loaders(params: Params, datasets, rt: Runtime, cache: bool):
    """Loaders over the datasets, their order and augmentation drawn from params.seed."""
    tp = params.train
    n = len(datasets["train"])
    # a last batch of one sample would break BatchNorm in train mode: drop just that one
    drop_last = not cache and n > 1 and n % tp.batch_size == 1
    common = dict(batch_size=tp.batch_size, workers=tp.workers, seed=params.seed,
                  device=rt.device)
    return (data.make_loader(datasets["train"], shuffle=not cache, drop_last=drop_last,
                             **common),
            data.make_loader(datasets["val"], shuffle=False, **common))


def _steps(model, strategy, params: Params, datasets, rt: Runtime):
    train_loader, val_loader = _loaders(params, datasets, rt, strategy.cache_features)
    if not strategy.cache_features:
        return _ImageSteps(model, train_loader, val_loader, rt)
    start = time.perf_counter()
    train_xy, val_xy = _features(model, train_loader, rt), _features(model, val_loader, rt)
    secs = time.perf_counter() - start
    n = len(train_xy[1]) + len(val_xy[1])
    _log(f"cached {tuple(train_xy[0].shape)} train + {tuple(val_xy[0].shape)} val features "
         f"in {secs:.1f} s ({n / secs:.1f} img/s)")
    head = model.get_submodule(models.head_name(model))
    steps = _FeatureSteps(head, train_xy, val_xy, params.train.batch_size, params.seed, rt)
    steps.feature_seconds = secs
    return steps


def _meta(strategy_name: str, strategy, params: Params, classes, fit: _Fit) -> dict:
    tp = params.train
    mean, std = models.norm_stats(strategy.arch)
    return {"arch": strategy.arch, "num_classes": len(classes), "classes": list(classes),
            "transform": {"image_size": tp.image_size, "resize_size": resize_size(tp.image_size),
                          "mean": mean, "std": std},
            # what predict needs to prepare a photo as clean did (workers: speed only)
            "clean": params.clean.model_dump(exclude={"workers"}),
            "head": models.head_spec(strategy.head),
            "strategy": {"name": strategy_name, "arch": strategy.arch,
                         "weights": strategy.weights, "cache_features": strategy.cache_features,
                         "phases": [p.model_dump() for p in strategy.resolved_phases()],
                         # workers left out: they change speed, not the weights
                         "seed": params.seed, "train": tp.model_dump(exclude={"workers"})},
            "best_epoch": fit.best["epoch"], "select": tp.select}


# ---- the worker -----------------------------------------------------------------------------

def train(strategy_name: str, params: Params, *, clean_dir, split_dir, model_path,
          metrics_path, plots_path) -> dict:
    """Train one strategy and write its checkpoint, metrics and per-epoch plot.

    With `train.seeds` N > 1 the strategy trains N times (seeds seed, seed+1, ...): the
    checkpoint holds every run (the first as `state_dict`, the others under `runs`), the metrics
    are means over runs with a `_std` beside each, and the plot shows the first run.
    Returns the metrics plus what a caller may want to check: per-phase trainable parameters,
    the epoch history, and wall-clock seconds (never written to the tracked outputs).
    """
    strategy = params.strategy(strategy_name)       # unknown name -> error listing the names
    models.check(strategy.arch, strategy.weights)   # unknown arch -> error listing the archs
    phases = strategy.resolved_phases()
    _check_phases(phases)
    classes = data.read_classes(split_dir)
    rows = {s: data.read_rows(split_dir, s) for s in ("train", "val")}
    _check_rows(rows, classes, split_dir)
    rt = from_params(params.train)
    start = time.perf_counter()
    datasets = _datasets(params, strategy, rows, clean_dir)
    runs = []
    for k in range(params.train.seeds):
        run_params = params.model_copy(update={"seed": params.seed + k})
        runs.append(_train_once(strategy_name, strategy, run_params, phases, classes,
                                datasets, rt))
    (model, fit, steps), extra = runs[0], runs[1:]
    meta = _meta(strategy_name, strategy, params, classes, fit)
    if extra:
        meta["runs"] = [{"seed": params.seed + k, "best_epoch": f.best["epoch"],
                         "state_dict": models.cpu_state(f.best_state)}
                        for k, (_, f, _) in enumerate(extra, 1)]
    models.save_checkpoint(model_path, model, meta)
    metrics = _run_metrics(model, fit)
    if extra:
        metrics = _mean_std([metrics] + [_run_metrics(m, f) for m, f, _ in extra])
    files.write_json(metrics_path, metrics)
    files.write_text(plots_path, _tsv(fit.history))
    secs = time.perf_counter() - start
    _log(f"{strategy_name}: best epoch {fit.best['epoch']} val_acc {fit.best['val_acc']:.4f} "
         f"val_loss {fit.best['val_loss']:.4f}; {secs:.1f} s in all")
    return {**metrics, "phases": fit.phases, "history": fit.history, "seconds": secs,
            "feature_seconds": steps.feature_seconds}


def _train_once(strategy_name, strategy, params: Params, phases, classes, datasets,
                rt: Runtime):
    """One training run under `params.seed`; returns (model at its best epoch, fit, steps)."""
    with torch_state(rt, seed=params.seed, threads=params.threads):
        model = models.build(strategy.arch, len(classes), strategy.weights, strategy.head)
        for phase in phases:  # a bad `trainable` in any phase fails now, not epochs later
            models.set_trainable(model, strategy.arch, phase.trainable)
        rt.place(model)
        _log(f"{strategy_name}: {strategy.arch} ({strategy.weights}), {len(classes)} classes, "
             f"{len(datasets['train'])} train / {len(datasets['val'])} val images, {rt.device}, "
             f"{rt.precision}, seed {params.seed}")
        steps = _steps(model, strategy, params, datasets, rt)
        fit = _fit(model, strategy.arch, phases, steps, params.train)
        model.load_state_dict(fit.best_state)
    return model, fit, steps


def _run_metrics(model: nn.Module, fit: _Fit) -> dict:
    return {"best_epoch": fit.best["epoch"], "best_val_acc": round(fit.best["val_acc"], 6),
            "best_val_loss": round(fit.best["val_loss"], 6), "epochs": len(fit.history),
            "trainable_params": sum(p.numel() for n, p in model.named_parameters()
                                    if n in fit.trained),
            "total_params": sum(p.numel() for p in model.parameters())}


def _mean_std(per_run: list[dict]) -> dict:
    """Mean of each metric over runs, plus `<name>_std` for the ones that vary by seed."""
    out = {"seeds": len(per_run)}
    for key in per_run[0]:
        values = torch.tensor([float(m[key]) for m in per_run], dtype=torch.float64)
        out[key] = round(values.mean().item(), 6)
        if key in ("best_val_acc", "best_val_loss", "best_epoch"):
            out[f"{key}_std"] = round(values.std(correction=0).item(), 6)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("strategy", help="an entry of `strategies:` in params.yaml")
    ap.add_argument("--clean", required=True, help="data/clean folder")
    ap.add_argument("--split", required=True, help="data/split folder")
    ap.add_argument("--model", required=True, help="checkpoint to write (models/S.pt)")
    ap.add_argument("--metrics", required=True, help="metrics JSON to write")
    ap.add_argument("--plots", required=True, help="per-epoch TSV to write")
    ap.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
    args = ap.parse_args(argv)
    params = load(args.params)
    train(args.strategy, params, clean_dir=args.clean, split_dir=args.split,
          model_path=args.model, metrics_path=args.metrics, plots_path=args.plots)


if __name__ == "__main__":
    run_main(main)
