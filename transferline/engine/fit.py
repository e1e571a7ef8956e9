"""The training engine that transferline/engine/train.py drives: an optimiser and schedule per
phase, the two kinds of step (the whole network on image batches, or only the head on backbone
features computed once), epochs with early stopping, and the best epoch's weights. After every
epoch the whole state goes to a `resume.Resume`, so an interrupted run continues where it
stopped (transferline/engine/resume.py).
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from transferline import models
from transferline.config.errors import StageError
from transferline.config.params import Phase
from transferline.engine import distributed
from transferline.engine.distributed import log
from transferline.engine.resume import Resume, rng_state, set_rng_state
from transferline.engine.runtime import Runtime

# ---- optimiser and schedule per phase -------------------------------------------------------

OPTIMIZERS = {
    "sgd": lambda groups, ph: torch.optim.SGD(
        groups, lr=ph.lr, momentum=ph.momentum, nesterov=ph.nesterov, weight_decay=ph.weight_decay
    ),
    "adam": lambda groups, ph: torch.optim.Adam(groups, lr=ph.lr, weight_decay=ph.weight_decay),
    "adamw": lambda groups, ph: torch.optim.AdamW(groups, lr=ph.lr, weight_decay=ph.weight_decay),
}

# (optimizer, phase, epochs the schedule runs for: the phase's, less its warmup) -> scheduler
SCHEDULES = {
    "none": lambda opt, ph, n: None,
    "step": lambda opt, ph, n: torch.optim.lr_scheduler.StepLR(
        opt, ph.schedule.step_size, ph.schedule.gamma
    ),
    "cosine": lambda opt, ph, n: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=n),
    # lr x gamma once val loss has not fallen for `patience` epochs: with early stopping
    # (train.patience) a run decays and ends when it stops learning, not at a guessed epoch
    "plateau": lambda opt, ph, n: torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, mode="min", factor=ph.schedule.gamma, patience=ph.schedule.patience
    ),
}


def make_schedule(optimizer: torch.optim.Optimizer, phase: Phase):
    """The phase's schedule, after `warmup_epochs` of a linear rise from lr / (warmup + 1) to lr
    (torch's LinearLR, chained with SequentialLR); None for a constant lr."""
    w = phase.warmup_epochs
    main = SCHEDULES[phase.schedule.name](optimizer, phase, phase.epochs - w)
    if not w:
        return main
    lr_sched = torch.optim.lr_scheduler
    warm = lr_sched.LinearLR(optimizer, start_factor=1 / (w + 1), total_iters=w)
    if main is None:
        return warm  # LinearLR holds the lr once its warmup is done
    return lr_sched.SequentialLR(optimizer, [warm, main], milestones=[w])


def make_optimizer(
    model: nn.Module, phase: Phase, arch: str | None = None
) -> torch.optim.Optimizer:
    """Head at phase.lr (group 0), other trainable parameters at lr * backbone_lr_mult; with
    `layer_decay` d < 1 (and the arch, whose blocks it counts) the last backbone block keeps that
    rate and each block before it gets d times the next one's, the stem d times the first's."""
    head = models.head_name(model) + "."
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    base = phase.lr * phase.backbone_lr_mult
    groups = [{"params": [p for n, p in trainable if n.startswith(head)], "lr": phase.lr}]
    backbone = [(n, p) for n, p in trainable if not n.startswith(head)]
    if phase.layer_decay == 1.0 or arch is None:
        groups.append({"params": [p for _, p in backbone], "lr": base})
    else:
        depth = block_depths(model, arch)
        for d in sorted({depth[n] for n, _ in backbone}):
            params = [p for n, p in backbone if depth[n] == d]
            groups.append({"params": params, "lr": base * phase.layer_decay**d})
    return OPTIMIZERS[phase.optimizer]([g for g in groups if g["params"]], phase)


def block_depths(model: nn.Module, arch: str) -> dict[str, int]:
    """Parameter name -> how many backbone blocks it sits before the last one (what
    `layer_decay` raises to): 0 for the last block (and anything after it but the head), B for
    the stem in front of the first of B blocks. Blocks as `trainable: N` counts them (a timm
    model's own group matching)."""
    names = [n for n, _ in model.named_parameters()]
    starts = []
    for block in models.blocks(model, arch):
        first = block.split(" + ")[0]
        starts.append(
            next(i for i, n in enumerate(names) if n == first or n.startswith(first + "."))
        )
    depth, k = {}, -1
    for i, name in enumerate(names):
        while k + 1 < len(starts) and i >= starts[k + 1]:
            k += 1
        depth[name] = len(starts) - 1 - k if k >= 0 else len(starts)
    return depth


# ---- one pass over batches ------------------------------------------------------------------


@dataclass(frozen=True)
class Recipe:
    """How a training step differs from plain cross-entropy and a bare optimiser step (all off by
    default): label smoothing, class weights (train.balance: loss), gradient clipping to a max L2
    norm, a batch mix (MixUp/CutMix: (x, y) -> (x, soft targets)), and what runs after each
    optimiser step (the EMA's update). Evaluation passes ignore it: the val loss is always the
    plain one, comparable across recipes."""

    label_smoothing: float = 0.0
    class_weight: torch.Tensor | None = None
    clip_grad: float = 0.0
    mix: Callable | None = None
    after_step: Callable[[], None] | None = None


PLAIN = Recipe()


def class_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights n / (C * n_c): every class adds the same total to the loss."""
    counts = torch.bincount(labels, minlength=num_classes).double()
    empty = (counts == 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"class {empty[0]} has no training image; balance needs one per class")
    return (len(labels) / (num_classes * counts)).float()


def run_epoch(
    fn: nn.Module,
    batches: Iterable,
    rt: Runtime,
    optimizer=None,
    scaler=None,
    desc: str = "",
    sharded: bool = False,
    recipe: Recipe = PLAIN,
) -> tuple[float, float, int]:
    """(mean loss, accuracy, n) of fn over batches; one optimiser step per batch if given, with
    the `recipe`'s loss and step. `sharded`: each process saw its own share of the data, so the
    sums are taken over all."""
    loss_sum = torch.zeros((), dtype=torch.float64, device=rt.device)
    correct = torch.zeros((), dtype=torch.int64, device=rt.device)
    n = 0
    quiet = None if distributed.world().main else True  # tqdm: None = only on a terminal
    train = optimizer is not None
    weight = recipe.class_weight
    weight = weight.to(rt.device) if train and weight is not None else None
    smoothing = recipe.label_smoothing if train else 0.0
    for x, y in tqdm(batches, desc=desc, leave=False, disable=quiet, file=sys.stderr):
        x, y = rt.batch(x), y.to(rt.device, non_blocking=True)
        target = y
        if train and recipe.mix is not None:
            x, target = recipe.mix(x, y)
        with torch.set_grad_enabled(train), rt.autocast():
            out = fn(x)
            loss = F.cross_entropy(out.float(), target, weight=weight, label_smoothing=smoothing)
        if train:
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if recipe.clip_grad:
                scaler.unscale_(optimizer)
                params = [p for g in optimizer.param_groups for p in g["params"]]
                nn.utils.clip_grad_norm_(params, recipe.clip_grad)
            scaler.step(optimizer)
            scaler.update()
            if recipe.after_step is not None:
                recipe.after_step()
        loss_sum += loss.detach().double() * len(y)
        correct += (out.argmax(1) == y).sum()
        n += len(y)
    if sharded:
        loss_sum, correct, count = distributed.sum_all(
            loss_sum, correct, torch.tensor(n, dtype=torch.int64, device=rt.device)
        )
        n = int(count.item())
    return loss_sum.item() / n, correct.item() / n, n


def _loader_generators(loader) -> list[torch.Generator]:
    # the sampler's (order, per-sample augmentation seeds) and the DataLoader's own (it draws a
    # base seed from it for every new iterator, workers or not)
    return [loader.sampler.generator, loader.generator]


class ImageSteps:
    """Whole network on (augmented) image batches: every strategy without cache_features.
    With several processes each trains on its share through DistributedDataParallel."""

    feature_seconds = 0.0

    def __init__(self, model, train_loader, val_loader, rt: Runtime, class_weight=None, mix=None):
        self.model, self.train_loader, self.val_loader, self.rt = (
            model,
            train_loader,
            val_loader,
            rt,
        )
        self.scaler = rt.grad_scaler()
        self.train_fn = model
        self.class_weight, self.mix = class_weight, mix

    def begin_phase(self, k: int) -> None:
        """DDP keeps the set of parameters that train from its construction on, and a phase
        changes that set: wrap anew for every phase."""
        if distributed.active():
            ids = [self.rt.device.index] if self.rt.device.type == "cuda" else None
            self.train_fn = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)

    def train_epoch(self, optimizer, desc, phase: Phase, after_step=None):
        # frozen parts (and their BN statistics) stay in eval; all BN with freeze_bn
        models.train_mode(self.model, phase.freeze_bn)
        recipe = Recipe(
            phase.label_smoothing, self.class_weight, phase.clip_grad, self.mix, after_step
        )
        return run_epoch(
            self.train_fn,
            self.train_loader,
            self.rt,
            optimizer,
            self.scaler,
            desc,
            sharded=True,
            recipe=recipe,
        )

    @property
    def trained(self) -> tuple[nn.Module, str]:
        """The module the optimiser steps and its name prefix in the model's state dict."""
        return self.model, ""

    def val_epoch(self, desc, module: nn.Module | None = None):
        # the plain module: DDP's forward is a collective, and val shards may differ by one
        module = self.model if module is None else module
        module.eval()
        return run_epoch(module, self.val_loader, self.rt, desc=desc, sharded=True)

    def generators(self) -> list[torch.Generator]:
        mix = [self.mix.generator] if self.mix is not None else []
        return _loader_generators(self.train_loader) + _loader_generators(self.val_loader) + mix


class FeatureSteps:
    """Only the head, on backbone features computed once (cache_features). With several
    processes the features are computed in shares and gathered, and every process then trains
    the same head on all of them (a linear layer's step is cheaper than talking about it).
    `compute` returns ((train x, y), (val x, y)); `refresh()` runs it (before the first
    cached phase, and again wherever PhasedSteps needs features of a backbone that changed)."""

    def __init__(
        self,
        head,
        compute: Callable[[], tuple[tuple, tuple]],
        batch_size,
        seed,
        rt: Runtime,
        class_weight=None,
        sample_weight=None,
        *,
        head_name: str,
    ):
        self.head_name = head_name  # the head's name in the whole model (its state dict keys)
        self.head, self.compute, self.bs, self.rt = head, compute, batch_size, rt
        self.train_xy = self.val_xy = None
        self.generator = torch.Generator().manual_seed(seed)  # batch order per epoch
        self.scaler = rt.grad_scaler()
        self.feature_seconds = 0.0
        # train.balance: loss -> class_weight; sampler -> sample_weight (drawn with replacement)
        self.class_weight, self.sample_weight = class_weight, sample_weight

    def refresh(self) -> None:
        start = time.perf_counter()
        self.train_xy, self.val_xy = self.compute()
        secs = time.perf_counter() - start
        self.feature_seconds += secs
        n = len(self.train_xy[1]) + len(self.val_xy[1])
        log(
            f"cached {tuple(self.train_xy[0].shape)} train + {tuple(self.val_xy[0].shape)} val "
            f"features in {secs:.1f} s ({n / secs:.1f} img/s)"
        )

    def begin_phase(self, k: int) -> None:
        pass

    def _batches(self, xy, order):
        x, y = xy
        return [(x[i], y[i]) for i in order.to(x.device).split(self.bs)]

    def train_epoch(self, optimizer, desc, phase: Phase, after_step=None):
        self.head.train()
        n = len(self.train_xy[1])
        if self.sample_weight is None:
            order = torch.randperm(n, generator=self.generator)
        else:
            order = torch.multinomial(self.sample_weight, n, True, generator=self.generator)
        recipe = Recipe(
            phase.label_smoothing, self.class_weight, phase.clip_grad, after_step=after_step
        )
        batches = self._batches(self.train_xy, order)
        return run_epoch(self.head, batches, self.rt, optimizer, self.scaler, desc, recipe=recipe)

    @property
    def trained(self) -> tuple[nn.Module, str]:
        return self.head, self.head_name + "."

    def val_epoch(self, desc, module: nn.Module | None = None):
        module = self.head if module is None else module
        module.eval()
        order = torch.arange(len(self.val_xy[1]))
        return run_epoch(module, self._batches(self.val_xy, order), self.rt, desc=desc)

    def generators(self) -> list[torch.Generator]:
        return [self.generator]


class PhasedSteps:
    """A strategy whose head-only phases run on cached features (`cache_features`) while its
    other phases train the backbone on images (LP-FT with the linear probe on features): each
    phase gets the kind of step it needs. The features are computed when the first cached phase
    begins, and again when a cached phase follows one that trained the backbone (or after a
    resume, which starts with none). Everything else is the current kind's."""

    def __init__(self, images: ImageSteps, features: FeatureSteps, cached: list[bool]):
        self.images, self.features, self.cached = images, features, cached
        self.current = images
        self.fresh = False  # whether the features are those of the backbone as it is now

    @property
    def feature_seconds(self) -> float:
        return self.features.feature_seconds

    def begin_phase(self, k: int) -> None:
        if not self.cached[k - 1]:
            self.current, self.fresh = self.images, False  # this phase trains the backbone
        else:
            if not self.fresh:
                self.features.refresh()
                self.fresh = True
            self.current = self.features
        self.current.begin_phase(k)

    @property
    def scaler(self):
        return self.current.scaler

    @property
    def trained(self) -> tuple[nn.Module, str]:
        return self.current.trained

    def train_epoch(self, optimizer, desc, phase: Phase, after_step=None):
        return self.current.train_epoch(optimizer, desc, phase, after_step)

    def val_epoch(self, desc, module: nn.Module | None = None):
        return self.current.val_epoch(desc, module)

    def generators(self) -> list[torch.Generator]:
        return self.images.generators() + self.features.generators()


@torch.no_grad()
def cached_features(model: nn.Module, loader, rt: Runtime) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, F) float32 inputs of the head, (N,) labels: the network in eval mode, head bypassed.
    A loader over this process's share gives every process all N rows back, in order."""
    name = models.head_name(model)
    head = models.swap_head(model, nn.Identity(), name)
    model.eval()
    feats, labels = [], []
    try:
        for x, y in tqdm(loader, desc="features", leave=False, disable=None, file=sys.stderr):
            with torch.no_grad(), rt.autocast():
                feats.append(model(rt.batch(x)).float())
            labels.append(y.to(rt.device))
    finally:
        models.swap_head(model, head, name)
    total = len(loader.dataset)
    return (
        distributed.gather_rows(torch.cat(feats), total),
        distributed.gather_rows(torch.cat(labels), total),
    )


# ---- an average of the weights --------------------------------------------------------------


class WeightAverage:
    """An exponential moving average of the trained module's weights and buffers (timm's
    ModelEmaV3), updated after every optimiser step with its decay warm-up: after s steps the
    decay is min(ema_decay, 1 - (1 + s)^(-2/3)), so the average follows the weights closely at
    first and only later smooths over many steps. Validated every epoch beside the weights
    themselves; the better of the two is what the epoch offers as best."""

    def __init__(self, module: nn.Module, decay: float, prefix: str):
        from timm.utils import ModelEmaV3

        self.source, self.prefix, self.steps = module, prefix, 0
        self.ema = ModelEmaV3(module, decay=decay, use_warmup=True)

    @property
    def module(self) -> nn.Module:
        return self.ema.module

    def update(self) -> None:
        self.steps += 1
        self.ema.update(self.source, step=self.steps)

    def full_state(self, model: nn.Module) -> dict:
        """The whole model's state dict with the averaged module in place of the trained one."""
        averaged = {self.prefix + n: t for n, t in self.module.state_dict().items()}
        return {n: averaged.get(n, t).detach().clone() for n, t in model.state_dict().items()}

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.steps = state["steps"]


# ---- the phases -----------------------------------------------------------------------------


def _better(row: dict, best: dict | None, select: str) -> bool:
    """Strictly better than the best so far (ties keep the earlier epoch)."""
    if best is None:
        return True
    if select == "val_acc":
        return row["val_acc"] > best["val_acc"]
    return row["val_loss"] < best["val_loss"]


def _offered(row: dict, select: str) -> dict:
    """What an epoch offers as its best: its weights' scores, or its EMA's where those are
    strictly better (then marked `ema: True`, with the EMA's val_loss and val_acc)."""
    if "ema_val_acc" not in row:
        return row
    ema = {**row, "val_loss": row["ema_val_loss"], "val_acc": row["ema_val_acc"], "ema": True}
    return ema if _better(ema, row, select) else {**row, "ema": False}


@dataclass
class Fit:
    history: list[dict] = field(default_factory=list)
    best: dict | None = None  # history row of the best epoch so far
    best_state: dict | None = None  # state_dict copy at that epoch
    phases: list[dict] = field(default_factory=list)  # per finished phase: epochs, parameters
    trained: set[str] = field(default_factory=set)  # parameters trainable in any phase
    resumed_at: int = 0  # epochs taken from a resume state (0 = fresh)


@dataclass
class _Position:
    """Where a saved state stands: `epochs` run of `phase`, and whether that phase (or the whole
    run) had ended."""

    phase: int = 1
    epochs: int = 0
    stale: int = 0
    phase_over: bool = False
    stop: bool = False


def fit(
    model, arch: str, phases: list[Phase], steps, train_p, *, resume: Resume | None = None
) -> Fit:
    """Run the phases in order; with `resume`, start where a matching saved state stopped."""
    run, saved = Fit(), None
    main = distributed.world().main
    state = resume.load(next(model.parameters()).device) if resume and main else None
    state = distributed.broadcast_object(state)  # other machines have no file of their own
    if state is not None:
        run, saved = _restore(state, model, steps)
        log(f"resuming after epoch {run.resumed_at} from {resume.path}")
    for k, phase in enumerate(phases, 1):
        info = models.set_trainable(model, arch, phase.trainable)
        if saved and (k < saved.phase or (k == saved.phase and saved.phase_over)):
            continue  # finished before the interruption
        if saved and saved.stop:
            break
        run.trained |= {n for n, p in model.named_parameters() if p.requires_grad}
        log(
            f"phase {k}: trainable {phase.trainable!r} -> {info['trainable_params']:,} of "
            f"{info['total_params']:,} parameters ({', '.join(info['trainable_modules'])})"
        )
        start = saved if saved and k == saved.phase else _Position(phase=k)
        stop = _run_phase(
            model,
            arch,
            phase,
            steps,
            train_p,
            run,
            info,
            start,
            state if start is saved else None,
            resume,
        )
        saved = state = None
        if stop:
            break
    return run


def _restore(state: dict, model, steps) -> tuple[Fit, _Position]:
    model.load_state_dict(state["model"])
    set_rng_state(state["rng"], steps)
    run = Fit(
        history=state["history"],
        best=state["best"],
        best_state=state["best_state"],
        phases=state["phases"],
        trained=set(state["trained"]),
        resumed_at=len(state["history"]),
    )
    return run, _Position(**state["position"])


def _run_phase(
    model,
    arch: str,
    phase: Phase,
    steps,
    train_p,
    run: Fit,
    info: dict,
    pos: _Position,
    state: dict | None,
    resume: Resume | None,
) -> bool:
    """One phase's epochs with a fresh optimiser and schedule (or the saved ones when resuming
    inside this phase); returns whether the whole run stops.

    train.patience ends this phase (the next one changes the setting and may still improve);
    train.target_acc ends the run.
    """
    optimizer = make_optimizer(model, phase, arch)
    scheduler = make_schedule(optimizer, phase)
    steps.begin_phase(pos.phase)
    average = None
    if phase.ema_decay:
        module, prefix = steps.trained
        average = WeightAverage(module, phase.ema_decay, prefix)
    if state is not None:
        if average is not None:
            average.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
        if state["scaler"]:
            steps.scaler.load_state_dict(state["scaler"])
    for epoch in range(pos.epochs + 1, phase.epochs + 1):
        pos.epochs = epoch  # where the run stands, saved with the state after this epoch
        row = _one_epoch(len(run.history) + 1, pos.phase, phase, optimizer, steps, average)
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            scheduler.step(row["val_loss"])  # the same on every process: val sums are global
        elif scheduler is not None:
            scheduler.step()
        run.history.append(row)
        offer = _offered(row, train_p.select)
        if _better(offer, run.best, train_p.select):
            run.best, pos.stale = offer, 0
            run.best_state = (
                average.full_state(model)
                if offer.get("ema")
                else {n: t.detach().clone() for n, t in model.state_dict().items()}
            )
        else:
            pos.stale += 1
        pos.stop = train_p.target_acc < 1.0 and row["val_acc"] >= train_p.target_acc
        patience_out = bool(train_p.patience) and pos.stale >= train_p.patience
        pos.phase_over = pos.stop or patience_out or pos.epochs == phase.epochs
        if pos.stop:
            log(f"val_acc {row['val_acc']:.4f} reached train.target_acc; stopping")
        elif patience_out:
            log(f"no better {train_p.select} for {pos.stale} epochs; ending phase {pos.phase}")
        if pos.phase_over:
            run.phases.append({"phase": pos.phase, "epochs": pos.epochs, **info})
        if resume is not None and distributed.world().main:
            resume.save(_state(model, optimizer, scheduler, steps, run, pos, average))
        if pos.phase_over:
            break
    return pos.stop


def _state(model, optimizer, scheduler, steps, run: Fit, pos: _Position, average) -> dict:
    return {
        "model": model.state_dict(),
        "ema": average.state_dict() if average is not None else None,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": steps.scaler.state_dict(),
        "rng": rng_state(steps),
        "history": run.history,
        "best": run.best,
        "best_state": run.best_state,
        "phases": run.phases,
        "trained": sorted(run.trained),
        "position": vars(pos).copy(),
    }


class Diverged(StageError):
    """The loss stopped being a number: the run ends before anything is written."""


def _check_finite(split: str, loss: float, epoch: int, phase: int, lr: float) -> None:
    # the same on every process (the sums are global), so all of them stop together
    if not math.isfinite(loss):
        raise Diverged(
            f"training diverged: the {split} loss is {loss} in epoch {epoch} (phase {phase}, "
            f"lr {lr:.3g}); nothing was written; lower the lr"
        )


def _one_epoch(epoch: int, phase: int, settings: Phase, optimizer, steps, average=None) -> dict:
    lr = optimizer.param_groups[0]["lr"]  # group 0 is the head
    start = time.perf_counter()
    after_step = average.update if average is not None else None
    train_loss, train_acc, n_train = steps.train_epoch(
        optimizer, f"epoch {epoch} train", settings, after_step
    )
    _check_finite("train", train_loss, epoch, phase, lr)
    val_loss, val_acc, n_val = steps.val_epoch(f"epoch {epoch} val")
    _check_finite("val", val_loss, epoch, phase, lr)
    ema = {}
    if average is not None:
        ema_loss, ema_acc, _ = steps.val_epoch(f"epoch {epoch} val (EMA)", average.module)
        _check_finite("EMA val", ema_loss, epoch, phase, lr)
        ema = {"ema_val_loss": ema_loss, "ema_val_acc": ema_acc}
    secs = time.perf_counter() - start
    tail = f"  EMA val loss {ema_loss:.4f} acc {ema_acc:.4f}" if ema else ""
    log(
        f"epoch {epoch:3d} (phase {phase}) lr {lr:.3g}  train loss {train_loss:.4f} "
        f"acc {train_acc:.4f}  val loss {val_loss:.4f} acc {val_acc:.4f}{tail}  "
        f"[{secs:.1f} s, {(n_train + n_val) / secs:.1f} img/s]"
    )
    # seconds/images are for the caller and the log only; the TSV keeps train.PLOT_COLUMNS
    return {
        **ema,
        "epoch": epoch,
        "phase": phase,
        "lr": lr,
        "train_loss": train_loss,
        "train_acc": train_acc,
        "val_loss": val_loss,
        "val_acc": val_acc,
        "seconds": secs,
        "images": n_train + n_val,
    }
