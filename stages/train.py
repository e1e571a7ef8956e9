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

import argparse
import sys

from transferline.config.errors import run_main
from transferline.config.params import add_option, load
from transferline.engine import distributed


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("strategy", help="an entry of `strategies:` in params.yaml")
    ap.add_argument("--clean", required=True, help="data/clean folder")
    ap.add_argument("--split", required=True, help="data/split folder")
    ap.add_argument("--model", required=True, help="checkpoint to write (models/S.pt)")
    ap.add_argument("--metrics", required=True, help="metrics JSON to write")
    ap.add_argument("--plots", required=True, help="per-epoch TSV to write")
    ap.add_argument(
        "--resume",
        help="folder for the per-epoch resume state (kept outside the "
        "tracked outputs; emptied when the stage completes)",
    )
    add_option(ap)
    args = ap.parse_args(argv)
    params = load(args.params)
    if params.train.nproc > 1 and not distributed.launched():
        # the same command, N times, under torchrun's launcher (see stages/distributed.py)
        distributed.launch(
            params.train.nproc, "stages.train", sys.argv[1:] if argv is None else list(argv)
        )
        return
    # the library's training (torchvision, timm, OpenCV) loads here: torchrun's launcher
    # process above needs torch alone
    from transferline.engine.train import train

    train(
        args.strategy,
        params,
        clean_dir=args.clean,
        split_dir=args.split,
        model_path=args.model,
        metrics_path=args.metrics,
        plots_path=args.plots,
        resume_dir=args.resume,
    )


if __name__ == "__main__":
    run_main(main)
