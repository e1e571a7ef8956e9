"""predict (DVC stage): the best strategy over unlabelled images.

Fills --unlabelled with the images to classify (a copy of the `predict.images` folder, plus
`predict.demo_images` fresh demo images when the dataset is generated), classifies them with the
strategy metrics/best.json chose, and writes reports/predictions.csv
(`file,class,probability,top_k,error`) and a gallery PNG; a broken file there is a row with its
error, not a failed stage. `transferline predict` is the same classifier for a user's own files.

    python -m stages.predict --params params.yaml --unlabelled data/unlabelled \
        --best metrics/best.json --models models --csv reports/predictions.csv \
        --gallery reports/predictions.png
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from transferline.config.errors import run_main
from transferline.config.params import add_option, load
from transferline.engine import runtime
from transferline.engine.predict import choose_model, collect, gather, predict, write_results


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m stages.predict",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "--unlabelled",
        type=Path,
        required=True,
        help="folder to fill (predict.images, demo images) and classify",
    )
    ap.add_argument("--best", type=Path, required=True, help="metrics/best.json (select)")
    ap.add_argument("--models", type=Path, required=True, help="folder of checkpoints")
    ap.add_argument("--csv", type=Path, required=True, help="reports/predictions.csv")
    ap.add_argument("--gallery", type=Path, required=True, help="reports/predictions.png")
    add_option(ap)
    args = ap.parse_args(argv)
    params = load(args.params)
    settings = params.predict
    gather(args.unlabelled, params)
    rt = runtime.from_params(params.runtime)
    with runtime.torch_state(rt, seed=params.seed, threads=params.threads):
        b = choose_model(model=None, best=args.best, models=args.models, threads=params.threads)
        results = predict(
            collect([args.unlabelled], args.unlabelled),
            b,
            top_k=settings.top_k,
            tta=settings.tta,
            rt=rt,
        )
    write_results(
        results, b, csv_path=args.csv, gallery_path=args.gallery, gallery_limit=settings.gallery
    )


if __name__ == "__main__":
    run_main(main)
