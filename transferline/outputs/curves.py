"""The training curves: `plots/train/<S>.tsv`, one row per epoch, written by train; and
`plots/curves.tsv`, every strategy's rows in one long table with a `strategy` column, written by
the curves stage for dvc.yaml's overlay plots (coloured by strategy with the
`.dvc/plots/by_strategy.json` template), so adding a strategy to params.yaml needs no edit in
dvc.yaml. This module is the one that knows their columns, writes them and reads them.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

from transferline.config.errors import StageError
from transferline.outputs import atomic as files

COLUMNS = ("epoch", "phase", "lr", "train_loss", "train_acc", "val_loss", "val_acc")
STRATEGY = "strategy"  # the first column of plots/curves.tsv


def _row(values: Sequence[str]) -> str:
    return "\t".join(values)


def tsv_text(history: list[dict]) -> str:
    """One strategy's curves: COLUMNS, one row per epoch (ints as they are, floats to 6 digits)."""

    def fmt(v):
        return str(v) if isinstance(v, int) else f"{v:.6g}"

    lines = [_row(COLUMNS)] + [_row([fmt(row[c]) for c in COLUMNS]) for row in history]
    return "\n".join(lines) + "\n"


def read(folder: Path, strategy: str) -> list[dict[str, str]]:
    """`<folder>/<strategy>.tsv` as rows; a missing file names the stage that writes it."""
    path = Path(folder) / f"{strategy}.tsv"
    if not path.is_file():
        raise StageError(f"{path}: not found; run `dvc repro train@{strategy}` to produce it")
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    if rows and tuple(rows[0]) != COLUMNS:
        raise StageError(f"{path}: columns {list(rows[0])}, expected {list(COLUMNS)}")
    return rows


def combined_text(strategies: Sequence[str], folder: Path) -> str:
    """Every strategy's rows, in the given (params) order, under a leading `strategy` column."""
    lines = [_row((STRATEGY, *COLUMNS))]
    for name in strategies:
        lines += [_row((name, *(row[c] for c in COLUMNS))) for row in read(folder, name)]
    return "\n".join(lines) + "\n"


def write_combined(strategies: Sequence[str], folder: Path, out: Path) -> int:
    """Write plots/curves.tsv; returns its number of rows."""
    text = combined_text(strategies, folder)
    files.write_text(Path(out), text)
    return text.count("\n") - 1
