"""report: one human-readable comparison of every strategy, with PNG figures that need no browser.

Reads, for each strategy S under `strategies:` in params.yaml (in params order),
`metrics/train/S.json`, `plots/train/S.tsv`, `metrics/eval/S.json`, `plots/confusion/S.json`,
`plots/per_class/S.json` and `plots/mistakes/S.json`, plus `metrics/best.json` (the strategy
select chose on validation), `reports/predictions.csv` (predict), `data/split/` (classes, split
counts, training rows) and test/training images from `data/clean/`. Writes `reports/report.md`
(led by the comparison: one table across strategies and the chosen strategy with its test score
as the unbiased estimate; then why it is wrong: the most-confused class pairs and the test images
with the highest loss under the user's file names; the figures and the predictions on unlabelled
images; the long tables last: per-class scores and split counts) and `reports/figures/*.png`:
training curves per strategy, all confusion matrices side by side, a gallery of the chosen
strategy's test predictions (mistakes first, in red) and a grid of augmented training samples;
the predict stage's gallery (`reports/predictions.png`) is linked, not copied.
Everything is built in a temporary folder and moved into place at the end; the same inputs give
byte-identical files (no timestamps, no software versions in the PNGs).

    python -m stages.report --clean data/clean --split data/split \
        --train-metrics metrics/train --train-plots plots/train \
        --eval-metrics metrics/eval --confusion plots/confusion --per-class plots/per_class \
        --mistakes plots/mistakes --best metrics/best.json \
        --predictions reports/predictions.csv --predictions-gallery reports/predictions.png \
        --out reports/report.md --figures reports/figures
"""

from __future__ import annotations

import csv
import math
import os
import sys
from collections import Counter
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from matplotlib import style
from matplotlib.figure import Figure
from tqdm import tqdm

from transferline.config.errors import StageError
from transferline.config.params import Params
from transferline.data import datasets as data
from transferline.data import transforms
from transferline.data.split import read_near_duplicates, read_sources
from transferline.outputs import atomic as files
from transferline.outputs import curves as training_curves
from transferline.outputs import metrics as seeds
from transferline.outputs import mistakes as why_wrong
from transferline.report import figures as png

SPLITS = ("train", "val", "test")
# Augmented samples are normalised then shown denormalised, so any stats round-trip; these are
# the ImageNet ones the pretrained backbones use.
MEAN, STD = transforms.IMAGENET_MEAN, transforms.IMAGENET_STD
VIEWS_PER_IMAGE = 4  # augmentation grid: each training image shown this many times, one row
MAX_NAMED = 12  # class names listed in the report's first line (all are in the tables)


@dataclass(frozen=True)
class Run:
    """Everything the train and evaluate stages wrote for one strategy."""

    name: str
    arch: str
    weights: str
    train: dict[str, Any]  # metrics/train/S.json
    curves: list[dict[str, str]]  # plots/train/S.tsv rows
    eval: dict[str, Any]  # metrics/eval/S.json
    confusion: list[dict[str, str]]  # plots/confusion/S.json records
    per_class: list[dict[str, Any]]  # plots/per_class/S.json records, in class order
    mistakes: dict[str, Any]  # plots/mistakes/S.json (transferline/outputs/mistakes.py)


# ---- inputs ---------------------------------------------------------------------------------


def load_runs(
    names: Sequence[str],
    params: Params,
    *,
    train_metrics: Path,
    train_plots: Path,
    eval_metrics: Path,
    confusion: Path,
    per_class: Path,
    mistakes: Path,
) -> list[Run]:
    """One Run per strategy name, in the given order; a missing file names the stage to run."""
    runs = []
    for name in names:
        strategy = params.strategy(name)
        runs.append(
            Run(
                name=name,
                arch=strategy.arch,
                weights=strategy.weights,
                train=files.read_json(train_metrics / f"{name}.json", f"train@{name}"),
                curves=training_curves.read(train_plots, name),
                eval=files.read_json(eval_metrics / f"{name}.json", f"evaluate@{name}"),
                confusion=files.read_json(confusion / f"{name}.json", f"evaluate@{name}"),
                per_class=files.read_json(per_class / f"{name}.json", f"evaluate@{name}"),
                mistakes=why_wrong.read(mistakes, name),
            )
        )
    return runs


def chosen_run(runs: Sequence[Run], best_path: Path) -> tuple[Run, dict]:
    """The run metrics/best.json (the select stage) chose on validation, and that file."""
    best = files.read_json(best_path, "select")
    by_name = {r.name: r for r in runs}
    if best.get("strategy") not in by_name:
        raise StageError(
            f"{best_path}: names strategy {best.get('strategy')!r}, not one of "
            f"{list(by_name)}; re-run `dvc repro select`"
        )
    return by_name[best["strategy"]], best


def read_predictions(path: Path) -> list[dict[str, str]]:
    """reports/predictions.csv rows (the predict stage)."""
    if not path.is_file():
        raise StageError(f"{path}: not found; run `dvc repro predict` to produce it")
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


# ---- markdown -------------------------------------------------------------------------------


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], right_from: int) -> list[str]:
    align = ["---" if i < right_from else "---:" for i in range(len(header))]
    return ["| " + " | ".join(map(str, line)) + " |" for line in [header, align, *rows]]


def strategy_row(run: Run) -> list[str]:
    """One table row; with several training seeds (train.seeds) scores read mean ± std."""
    t, e = run.train, run.eval
    return [
        run.name,
        run.arch,
        run.weights,
        f"{t['trainable_params']:,}",
        f"{t['epochs']:g}",
        _score(t, "best_val_acc"),
        _score(e, "accuracy"),
        _score(e, "tta.accuracy"),
        _score(e, "macro_f1"),
        _score(e, "balanced_accuracy"),
    ]


def _maybe(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _score(metrics: dict, key: str) -> str:
    """The value at dotted `key`, with " ± std" when the file has one
    (transferline/outputs/metrics.py)."""
    value, spread = seeds.value_at(metrics, key), seeds.value_at(metrics.get("std", {}), key)
    return f"{value:.4f}" if spread is None else f"{value:.4f} ± {spread:.4f}"


def split_section(classes: Sequence[str], counts: dict[str, Counter]) -> list[str]:
    rows = [
        [c, *(counts[s][c] for s in SPLITS), sum(counts[s][c] for s in SPLITS)] for c in classes
    ]
    totals = [sum(counts[s].values()) for s in SPLITS]
    rows.append(["**total**", *totals, sum(totals)])
    return _table(["class", *SPLITS, "total"], rows, right_from=1)


def best_section(best: Run, choice: dict) -> list[str]:
    by = {"val_acc": "validation accuracy", "val_loss": "validation loss"}[choice["by"]]
    test = best.eval
    return [
        f"**Best strategy: {best.name}**, chosen on {by} ({choice['by']} "
        f"{choice[choice['by']]:.4f}; `select.by` in params.yaml; ties go to the other "
        "validation score, then to the strategy listed first). The test split played no part in "
        f"the choice, so its test accuracy, **{test['accuracy']:.4f}** (macro-F1 "
        f"{test['macro_f1']:.4f}), is an unbiased estimate of how it does on new images; the "
        "best test score in the table above is not (picking by it would use the test split "
        "to choose). `predict` and `export` use this strategy.",
        "",
    ]


def mistakes_section(best: Run, cam: str | None = None) -> list[str]:
    """Why the chosen model is wrong: its most-confused pairs and highest-loss test images, and
    (`cam`: the link to evaluate's figure) those images under their Grad-CAM heat maps."""
    why = best.mistakes
    lines = [f"## Why {best.name} is wrong", ""]
    pairs = why["most_confused"]
    if pairs:
        lines += ["Most-confused class pairs on the test split (single crop):", ""]
        rows = [[p["actual"], p["predicted"], p["count"]] for p in pairs]
        lines += [*_table(["true class", "predicted as", "images"], rows, right_from=2), ""]
    else:
        lines += ["No test image is misclassified.", ""]
    top = why["top_losses"]
    lines += [
        "Test images with the highest loss (cross-entropy of the true class), under their own "
        "file names:",
        "",
    ]
    rows = [
        [
            f"`{t['file']}`",
            t["actual"],
            t["predicted"],
            f"{t['confidence']:.3f}",
            f"{t['p_actual']:.3f}",
            f"{t['loss']:.3f}",
        ]
        for t in top
    ]
    header = ["file", "true", "predicted", "confidence", "p(true)", "loss"]
    lines += _table(header, rows, right_from=3) + [""]
    if cam is not None:
        lines += [
            "Where the network looked: each of those images as it saw them (the eval crop), under "
            "the Grad-CAM heat map of the class it predicted (red: most evidence).",
            "",
            f"![Grad-CAM of the highest-loss test images]({cam})",
            "",
        ]
    return lines


def near_duplicates_section(rows: Sequence[dict[str, str]]) -> list[str]:
    """The near-duplicate groups split found (data/split/near_duplicates.csv): how many, and
    those the dataset ships across splits, file by file."""
    if not rows:
        return []
    groups = {r["group"] for r in rows}
    crossing = [r for r in rows if r["across_splits"] == "yes"]
    lines = [
        "## Near-duplicates",
        "",
        f"{len(groups)} group(s) of near-duplicate images ({len(rows)} images; the same picture "
        "resized, re-cropped or re-encoded, by perceptual hash within "
        "`split.near_duplicate_bits`). Carved splits keep each group in one split.",
        "",
    ]
    if not crossing:
        return lines + ["None crosses a split the dataset shipped.", ""]
    n = len({r["group"] for r in crossing})
    lines += [
        f"**{n} group(s) cross splits the dataset shipped**, so some test or val images have a "
        "near copy in another split and their scores may be optimistic:",
        "",
    ]
    table = [[r["group"], f"`{r['source']}`", r["class"], r["split"]] for r in crossing]
    return lines + _table(["group", "file", "class", "split"], table, right_from=4) + [""]


def predictions_section(rows: Sequence[dict[str, str]], link: str) -> list[str]:
    ok = [r for r in rows if not r["error"]]
    failed = [r for r in rows if r["error"]]
    lines = ["## Predictions on unlabelled images", ""]
    if not rows:
        return lines + [
            "No unlabelled images (`predict.images` is null and the dataset is not "
            "generated); `reports/predictions.csv` has the header only.",
            "",
        ]
    lines += [
        f"{len(ok)} images classified by the best strategy "
        "(`reports/predictions.csv` has the top-k of each)"
        + (f"; {len(failed)} could not be used:" if failed else "."),
        "",
    ]
    lines += [f"- `{r['file']}`: {r['error']}" for r in failed]
    return lines + ([""] if failed else []) + [f"![predictions]({link})", ""]


def render_markdown(
    *,
    dataset: str,
    classes: Sequence[str],
    counts: dict[str, Counter],
    runs: Sequence[Run],
    best: Run,
    choice: dict,
    links: dict[str, str],
    predictions: Sequence[dict[str, str]],
    near: Sequence[dict[str, str]] = (),
) -> str:
    header = [
        "strategy",
        "arch",
        "weights",
        "trainable params",
        "epochs run",
        "best val acc",
        "test accuracy",
        "TTA accuracy",
        "macro-F1",
        "balanced acc",
    ]
    accuracy = best.mistakes["per_class_accuracy"]
    per_class = [
        [
            r["class"],
            _maybe(accuracy.get(r["class"])),
            f"{r['precision']:.4f}",
            f"{r['recall']:.4f}",
            f"{r['f1']:.4f}",
            r["support"],
        ]
        for r in best.per_class
    ]
    shown = ", ".join(classes[:MAX_NAMED]) + (", ..." if len(classes) > MAX_NAMED else "")
    lines = [
        f"# transferline report: {dataset}",
        "",
        f"{len(classes)} classes: {shown} (split counts at the end).",
        "",
        "## Strategies",
        "",
        "Scores on the test split. TTA: softmax averaged over five crops (and their mirror "
        "images when `evaluate.tta_flip`); best val acc: at the epoch the model was kept. "
        "With `train.seeds` above 1, each score is the mean ± std over the seeds.",
        "",
        *_table(header, [strategy_row(r) for r in runs], right_from=3),
        "",
        *best_section(best, choice),
        *mistakes_section(best, links.get("cam")),
        "## Figures",
        "",
        "### Training curves",
        "",
        "Dotted lines mark where a new training phase starts.",
        "",
        *[
            line
            for r in runs
            for line in (f"![{r.name} training curves]({links['curves-' + r.name]})", "")
        ],
        "### Confusion matrices (test split, single crop)",
        "",
        f"![confusion matrices]({links['confusion']})",
        "",
        f"### Test predictions ({best.name})",
        "",
        "Titled predicted / true over the file's own name; mistakes first, in red.",
        "",
        f"![test predictions]({links['gallery']})",
        "",
        "### Augmented training samples",
        "",
        f"![augmented training samples]({links['augment']})",
        "",
        *predictions_section(predictions, links["predictions"]),
        f"## Per class ({best.name}, test split, single crop)",
        "",
        *_table(
            ["class", "accuracy", "precision", "recall", "F1", "support"], per_class, right_from=1
        ),
        "",
        "## Split counts",
        "",
        *split_section(classes, counts),
        "",
        *near_duplicates_section(near),
    ]
    return "\n".join(lines)


# ---- figures --------------------------------------------------------------------------------


def _column(rows: Sequence[dict[str, str]], key: str) -> np.ndarray:
    return np.array([float(r[key]) for r in rows])


def curves_figure(run: Run, path: Path) -> None:
    """lr, loss and accuracy (train and val) against epoch; dotted lines at phase changes."""
    epochs = _column(run.curves, "epoch")
    phases = [r["phase"] for r in run.curves]
    starts = [epochs[i] - 0.5 for i in range(1, len(phases)) if phases[i] != phases[i - 1]]
    fig = Figure(figsize=(12, 3.4), layout="constrained")
    panels = {
        "learning rate": ["lr"],
        "loss": ["train_loss", "val_loss"],
        "accuracy": ["train_acc", "val_acc"],
    }
    for ax, (title, keys) in zip(fig.subplots(1, 3), panels.items()):
        for key in keys:
            ax.plot(epochs, _column(run.curves, key), marker=".", label=key)
        for x in starts:
            ax.axvline(x, color="grey", linestyle=":")
        ax.set(title=title, xlabel="epoch")
        if len(keys) > 1:
            ax.legend(fontsize="small")
    fig.suptitle(f"{run.name} ({run.arch}, weights: {run.weights})")
    png.save(fig, path)


def confusion_matrix(
    records: Sequence[dict[str, str]], classes: Sequence[str], source: str
) -> np.ndarray:
    """(C, C) counts, rows = actual, columns = predicted."""
    index = {c: i for i, c in enumerate(classes)}
    counts = np.zeros((len(classes), len(classes)), dtype=int)
    for r in records:
        if r["actual"] not in index or r["predicted"] not in index:
            raise StageError(
                f"{source}: class {r['actual']!r} or {r['predicted']!r} is not in "
                f"data/split/classes.json; re-run `dvc repro` to refresh it"
            )
        counts[index[r["actual"]], index[r["predicted"]]] += 1
    return counts


def confusion_figure(
    runs: Sequence[Run], classes: Sequence[str], path: Path, confusion_dir: Path
) -> None:
    n, k = len(runs), len(classes)
    side = min(9.0, 2.5 + 0.4 * k)  # inches per matrix
    fig = Figure(figsize=(side * n, side + 0.5), layout="constrained")
    for ax, run in zip(np.atleast_1d(fig.subplots(1, n)), runs):
        counts = confusion_matrix(run.confusion, classes, str(confusion_dir / f"{run.name}.json"))
        ax.imshow(counts, cmap="Blues")
        ticks = range(k) if k <= 40 else []
        ax.set_xticks(ticks, [classes[i] for i in ticks], rotation=90, fontsize="small")
        ax.set_yticks(ticks, [classes[i] for i in ticks], fontsize="small")
        ax.set(
            title=f"{run.name}: acc {run.eval['accuracy']:.3f}", xlabel="predicted", ylabel="actual"
        )
        if k <= 20:  # beyond that the numbers overlap
            top = counts.max() or 1
            for (i, j), c in np.ndenumerate(counts):
                ax.text(
                    j,
                    i,
                    str(c),
                    ha="center",
                    va="center",
                    fontsize="small",
                    color="white" if c > top / 2 else "black",
                )
    png.save(fig, path)


def gallery_records(records: Sequence[dict[str, str]], n: int) -> list[dict[str, str]]:
    """The first n records, mistakes first, each group by path: deterministic, and the
    interesting images are shown."""
    return sorted(records, key=lambda r: (r["actual"] == r["predicted"], r["path"]))[:n]


def _image(clean_dir: Path, rel: str):
    """(3, H, W) uint8 as the training loader sees it."""
    path = clean_dir / rel
    if not path.is_file():
        raise StageError(
            f"{path}: image listed in data/split or plots/confusion is missing; "
            "re-run `dvc repro` to rebuild data/clean"
        )
    return transforms.read_image(path)


def gallery_figure(records: Sequence[dict[str, str]], n: int, clean_dir: Path, path: Path) -> None:
    chosen = gallery_records(records, n)
    sources = read_sources(clean_dir)
    fig, axes = png.grid(max(len(chosen), 1), min(max(len(chosen), 1), 4), 2.2)
    for ax, r in zip(axes, chosen):
        wrong = r["actual"] != r["predicted"]
        ax.imshow(png.hwc(_image(clean_dir, r["path"])))
        ax.set_title(
            png.gallery_title(r, sources),
            fontsize="small",
            color="red" if wrong else "black",
            fontweight="bold" if wrong else "normal",
        )
        if wrong:  # a red frame as well as a red title
            ax.set_axis_on()
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set(color="red", linewidth=3)
    fig.suptitle("predicted / true (mistakes in red)")
    png.save(fig, path)


def augment_figure(
    rows: Sequence[dict[str, str]], n: int, params: Params, clean_dir: Path, path: Path
) -> None:
    """n augmented views of training images (VIEWS_PER_IMAGE per image, one image per row),
    images picked and augmented from `seed`."""
    if not rows:
        raise StageError("data/split/train.csv has no rows; nothing to show as augmentation")
    train = params.train
    tf = transforms.train_transform(
        image_size=params.image_size, augment=train.augment, mean=MEAN, std=STD
    )
    cols = min(n, VIEWS_PER_IMAGE)
    rng = np.random.default_rng(params.seed)
    picks = rng.choice(len(rows), size=min(len(rows), math.ceil(n / cols)), replace=False)
    torch.manual_seed(params.seed)
    fig, axes = png.grid(n, cols, 2.0)
    for i, ax in enumerate(axes[:n]):
        row = rows[int(picks[(i // cols) % len(picks)])]
        shown = transforms.denormalize(tf(_image(clean_dir, row["path"])), MEAN, STD)
        ax.imshow(np.clip(png.hwc(shown).astype(np.float32), 0, 1))  # (S, S, 3), [0, 1]
        ax.set_title(row["class"], fontsize="small")
    fig.suptitle(f"training augmentation at {params.image_size} px (seed {params.seed})")
    png.save(fig, path)


# ---- the stage ------------------------------------------------------------------------------


def report(
    *,
    clean_dir: Path,
    split_dir: Path,
    train_metrics: Path,
    train_plots: Path,
    eval_metrics: Path,
    confusion: Path,
    per_class: Path,
    mistakes: Path,
    best: Path,
    predictions: Path,
    predictions_gallery: Path,
    out: Path,
    figures: Path,
    params: Params,
    cam: Path | None = None,
) -> dict[str, Any]:
    """Write report.md and its figures; return the best strategy, the table rows and the
    figure links (relative to report.md). `best` is metrics/best.json (select);
    `predictions` and `predictions_gallery` are the predict stage's CSV and PNG, linked; `cam`
    the folder of evaluate's Grad-CAM figures (plots/cam), the chosen strategy's linked."""
    clean_dir, split_dir, out, figures = map(Path, (clean_dir, split_dir, out, figures))
    runs = load_runs(
        list(params.strategies),
        params,
        train_metrics=Path(train_metrics),
        train_plots=Path(train_plots),
        eval_metrics=Path(eval_metrics),
        confusion=Path(confusion),
        per_class=Path(per_class),
        mistakes=Path(mistakes),
    )
    classes = data.read_classes(split_dir)
    rows = {
        s: [{"path": path, "class": classes[label]} for path, label in data.read_rows(split_dir, s)]
        for s in SPLITS
    }
    counts = {s: Counter(r["class"] for r in rows[s]) for s in SPLITS}
    best_run, choice = chosen_run(runs, Path(best))
    predicted = read_predictions(Path(predictions))
    names = [*(f"curves-{r.name}" for r in runs), "confusion", "gallery", "augment"]
    links = {n: Path(os.path.relpath(figures / f"{n}.png", out.parent)).as_posix() for n in names}
    links["predictions"] = Path(os.path.relpath(predictions_gallery, out.parent)).as_posix()
    if cam is not None:
        figure = Path(cam) / f"{best_run.name}.png"
        if not figure.is_file():
            raise StageError(
                f"{figure}: not found; run `dvc repro evaluate@{best_run.name}` to produce it"
            )
        links["cam"] = Path(os.path.relpath(figure, out.parent)).as_posix()
    # the figures are swapped in first, then report.md replaced: an earlier report survives a
    # failed run, and a new report.md never links to figures that are not there yet
    with files.staged_dir(figures) as fig_dir, style.context("default"):  # no user matplotlibrc
        steps = [
            *(partial(curves_figure, run, fig_dir / f"curves-{run.name}.png") for run in runs),
            partial(confusion_figure, runs, classes, fig_dir / "confusion.png", Path(confusion)),
            partial(
                gallery_figure,
                best_run.confusion,
                params.report.gallery,
                clean_dir,
                fig_dir / "gallery.png",
            ),
            partial(
                augment_figure,
                rows["train"],
                params.report.augment_samples,
                params,
                clean_dir,
                fig_dir / "augment.png",
            ),
        ]
        for draw in tqdm(
            steps, desc="figures", unit="figure", leave=False, disable=None, file=sys.stderr
        ):
            draw()
        text = render_markdown(
            dataset=params.dataset,
            classes=classes,
            counts=counts,
            runs=runs,
            best=best_run,
            choice=choice,
            links=links,
            predictions=predicted,
            near=read_near_duplicates(split_dir),
        )
    files.write_text(out, text)
    return {"best": best_run.name, "rows": [strategy_row(r) for r in runs], "links": links}
