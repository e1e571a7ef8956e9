"""`transferline lr-find STRATEGY`: the learning-rate range test on the strategy's training data.

    transferline lr-find finetune [--params params.yaml] [--clean data/clean] [--split data/split]
                                  [--out reports/lr_find] [--start 1e-7] [--end 10] [--steps 100]

Needs the pipeline's data (`dvc repro split` first). Writes `<out>/<strategy>.png` (smoothed loss
against lr, the suggestion marked) and `<out>/<strategy>.json`, and prints the suggested lr: set it
as `strategies.<strategy>.lr` (or try it: `dvc exp run -S strategies.<strategy>.lr=...`).
transferline/engine/lr_find.py says how the test runs and how the rate is chosen.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from transferline.config.params import add_option, load


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="transferline lr-find",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("strategy", help="name of an entry under `strategies:` in params.yaml")
    ap.add_argument("--clean", type=Path, default=Path("data/clean"), help="the clean images")
    ap.add_argument("--split", type=Path, default=Path("data/split"), help="the split lists")
    ap.add_argument("--out", type=Path, default=Path("reports/lr_find"), help="output folder")
    ap.add_argument("--start", type=float, default=1e-7, help="first learning rate")
    ap.add_argument("--end", type=float, default=10.0, help="last learning rate")
    ap.add_argument("--steps", type=int, default=100, help="training steps (one batch each)")
    add_option(ap)
    args = ap.parse_args(argv)
    params = load(args.params)
    from transferline.engine.lr_find import lr_find  # torch: only for the command itself

    result = lr_find(
        args.strategy,
        params,
        clean_dir=args.clean,
        split_dir=args.split,
        out=args.out,
        start=args.start,
        end=args.end,
        steps=args.steps,
    )
    print(
        f"{args.strategy}: suggested lr {result['suggested_lr']:g} "
        f"({len(result['lr'])} steps; {args.out / (args.strategy + '.png')})"
    )
    return 0
