"""report: one human-readable comparison of every strategy, with PNG figures that need no browser.

Reads, for each strategy S under `strategies:` in params.yaml (in params order),
`metrics/train/S.json`, `plots/train/S.tsv`, `metrics/eval/S.json` and `plots/confusion/S.json`,
plus `metrics/best.json` (the strategy select chose on validation), `reports/predictions.csv`
(predict), `data/split/` (classes, split counts, training rows) and test/training images from
`data/clean/`. Writes `reports/report.md` (split counts, one table across strategies, the chosen
strategy with its test score as the unbiased estimate, its per-class scores, the predictions on
unlabelled images, relative links to the figures) and `reports/figures/*.png`: training curves
per strategy, all confusion matrices side by side, a gallery of the chosen strategy's test
predictions (mistakes first, in red) and a grid of augmented training samples; the predict
stage's gallery (`reports/predictions.png`) is linked, not copied.
Everything is built in a temporary folder and moved into place at the end; the same inputs give
byte-identical files (no timestamps, no software versions in the PNGs).

    python -m stages.report --clean data/clean --split data/split \
        --train-metrics metrics/train --train-plots plots/train \
        --eval-metrics metrics/eval --confusion plots/confusion --best metrics/best.json \
        --predictions reports/predictions.csv --predictions-gallery reports/predictions.png \
        --out reports/report.md --figures reports/figures --cam plots/cam
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from transferline.config.errors import run_main
from transferline.config.params import add_option, load
from transferline.report.document import report


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m stages.report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for flag, what in [
        ("--clean", "data/clean (images)"),
        ("--split", "data/split (classes.json, train/val/test.csv)"),
        ("--train-metrics", "folder of metrics/train/<strategy>.json"),
        ("--train-plots", "folder of plots/train/<strategy>.tsv"),
        ("--eval-metrics", "folder of metrics/eval/<strategy>.json"),
        ("--confusion", "folder of plots/confusion/<strategy>.json"),
        ("--per-class", "folder of plots/per_class/<strategy>.json"),
        ("--mistakes", "folder of plots/mistakes/<strategy>.json"),
        ("--best", "metrics/best.json (the select stage's choice)"),
        ("--predictions", "reports/predictions.csv (the predict stage)"),
        ("--predictions-gallery", "its PNG, linked from the report"),
        ("--out", "report markdown to write"),
        ("--figures", "folder of PNG figures to write"),
    ]:
        ap.add_argument(flag, type=Path, required=True, help=what)
    ap.add_argument(
        "--cam", type=Path, help="folder of plots/cam/<strategy>.png (evaluate), the chosen linked"
    )
    add_option(ap)
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    params = load(args.params)
    result = report(
        clean_dir=args.clean,
        split_dir=args.split,
        train_metrics=args.train_metrics,
        train_plots=args.train_plots,
        eval_metrics=args.eval_metrics,
        confusion=args.confusion,
        per_class=args.per_class,
        mistakes=args.mistakes,
        best=args.best,
        predictions=args.predictions,
        predictions_gallery=args.predictions_gallery,
        out=args.out,
        figures=args.figures,
        params=params,
        cam=args.cam,
    )
    print(f"{args.out}: {len(result['rows'])} strategies, best {result['best']}")


if __name__ == "__main__":
    run_main(main)
