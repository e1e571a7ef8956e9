"""curves: every strategy's training curves in one table, for the overlay plots.

Reads `plots/train/<S>.tsv` for every strategy under `strategies:` in params.yaml (in that order)
and writes `plots/curves.tsv`: the same columns with a leading `strategy` column. dvc.yaml's
top-level plots (val_acc, val_loss, train_loss, lr) read this one file and colour by strategy
(`.dvc/plots/by_strategy.json`), so adding a strategy needs no edit in dvc.yaml.

    python -m stages.curves --train-plots plots/train --out plots/curves.tsv
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from transferline.config.errors import run_main
from transferline.config.params import add_option, load
from transferline.outputs.curves import write_combined


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m stages.curves",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--train-plots", type=Path, required=True, help="plots/train folder")
    ap.add_argument("--out", type=Path, required=True, help="plots/curves.tsv to write")
    add_option(ap)
    args = ap.parse_args(argv)
    strategies = list(load(args.params).strategies)
    rows = write_combined(strategies, args.train_plots, args.out)
    print(f"{args.out}: {rows} epochs of {len(strategies)} strategies")


if __name__ == "__main__":
    run_main(main)
