"""select: choose the best strategy on validation, and report its test score.

Reads `metrics/train/<S>.json` (validation scores at the epoch each model was kept) and
`metrics/eval/<S>.json` (test scores) for every strategy under `strategies:` in params.yaml.
Writes `metrics/best.json`:

    {"strategy": "<S>", "by": "val_acc", "val_acc": ..., "val_loss": ...,
     "test": {"accuracy", "balanced_accuracy", "macro_f1", "tta_accuracy"},
     "candidates": {"<S>": {"val_acc", "val_loss"}, ...}}

    python -m stages.select --train-metrics metrics/train --eval-metrics metrics/eval \
        --out metrics/best.json

The choice looks only at validation (`select.by`; ties go to the other validation score, then to
the strategy listed first), so the chosen strategy's test score is an unbiased estimate of how it
does on new images. Picking the strategy with the best *test* score would make that score
optimistic: the test split would have been used to choose. predict and export use this choice.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from transferline.config.errors import run_main
from transferline.config.params import Params, add_option, load
from transferline.engine.select import select


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m stages.select",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--train-metrics", type=Path, required=True, help="metrics/train folder")
    ap.add_argument("--eval-metrics", type=Path, required=True, help="metrics/eval folder")
    ap.add_argument("--out", type=Path, required=True, help="metrics/best.json to write")
    add_option(ap)
    args = ap.parse_args(argv)
    params: Params = load(args.params)
    result = select(
        list(params.strategies),
        train_metrics=args.train_metrics,
        eval_metrics=args.eval_metrics,
        out=args.out,
        by=params.select.by,
    )
    print(
        f"best strategy by {result['by']}: {result['strategy']} "
        f"(val acc {result['val_acc']:.4f}; test accuracy {result['test']['accuracy']:.4f})"
    )


if __name__ == "__main__":
    run_main(main)
