"""evaluate: score one trained strategy on the test split, single-crop and with five-crop TTA.

Reads `models/<S>.pt` (checkpoint from train), `data/split/classes.json` + `test.csv` and the
images under `data/clean/`. Writes `metrics/eval/<S>.json` (accuracy, balanced accuracy, macro F1,
log loss, top-k accuracy when there are more than `evaluate.top_k` classes, the same under `tta`),
`plots/per_class/<S>.json` (precision/recall/F1/support per class, one record per class: a DVC
plot, so the metrics stay a handful of columns at 100 classes) and `plots/confusion/<S>.json` (one
`{"actual", "predicted", "path"}` record per test image, class names, sorted by path, for DVC's
`confusion` template) and `plots/mistakes/<S>.json` (the highest-loss test images under the
user's file names, the most-confused class pairs, per-class accuracy) and, with `--cam`,
`plots/cam/<S>.png` (those images with the Grad-CAM heat map of the predicted class: a DVC image
plot, so `dvc plots diff` shows two revisions' side by side). All are deterministic for the same
model, data and params.

    python -m stages.evaluate <strategy> --clean data/clean --split data/split \
        --model models/<strategy>.pt --metrics metrics/eval/<strategy>.json \
        --confusion plots/confusion/<strategy>.json --per-class plots/per_class/<strategy>.json \
        --mistakes plots/mistakes/<strategy>.json --cam plots/cam/<strategy>.png
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from transferline.config.errors import run_main
from transferline.config.params import add_option, load
from transferline.outputs.atomic import require_file


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m stages.evaluate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("strategy", help="name of an entry under `strategies:` in params.yaml")
    ap.add_argument("--clean", type=Path, required=True, help="data/clean (images)")
    ap.add_argument("--split", type=Path, required=True, help="data/split (classes.json, test.csv)")
    ap.add_argument("--model", type=Path, required=True, help="checkpoint models/<strategy>.pt")
    ap.add_argument("--metrics", type=Path, required=True, help="metrics JSON to write")
    ap.add_argument("--confusion", type=Path, required=True, help="confusion records to write")
    ap.add_argument(
        "--per-class",
        type=Path,
        required=True,
        help="per-class precision/recall/F1/support records to write (a DVC plot)",
    )
    ap.add_argument(
        "--mistakes",
        type=Path,
        required=True,
        help="highest-loss test images, most-confused pairs, per-class accuracy (JSON to write)",
    )
    ap.add_argument(
        "--cam",
        type=Path,
        help="PNG to write: the highest-loss test images with Grad-CAM heat maps",
    )
    add_option(ap)
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    params = load(args.params)
    params.strategy(args.strategy)  # an unknown strategy name stops here, naming the choices
    require_file(args.model, f"train@{args.strategy}")  # at once, before torch loads (seconds)
    from transferline.engine import runtime
    from transferline.engine.evaluate import evaluate

    metrics = evaluate(
        model_path=args.model,
        clean_dir=args.clean,
        split_dir=args.split,
        metrics_path=args.metrics,
        confusion_path=args.confusion,
        settings=params.evaluate,
        seed=params.seed,
        threads=params.threads,
        workers=params.evaluate.workers,
        rt=runtime.from_params(params.runtime),
        per_class_path=args.per_class,
        mistakes_path=args.mistakes,
        cam_path=args.cam,
    )
    print(
        f"{args.strategy}: test accuracy {metrics['accuracy']:.4f} "
        f"(TTA {metrics['tta']['accuracy']:.4f}), macro F1 {metrics['macro_f1']:.4f}"
    )


if __name__ == "__main__":
    run_main(main)
