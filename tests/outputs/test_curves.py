"""transferline.outputs.curves: the per-strategy training curves train writes, read back as they
were written, and the one long table the curves stage writes for dvc.yaml's overlay plots."""

from __future__ import annotations

import pytest

from transferline.config.errors import StageError
from transferline.outputs import curves

HISTORY = [
    {"epoch": e, "phase": 1, "lr": 0.01, "train_loss": 1 / e, "train_acc": 0.5, "val_loss": 2 / e,
     "val_acc": 0.25 * e}
    for e in (1, 2)
]  # fmt: skip


def test_a_strategy_table_reads_back_as_written(tmp_path):
    (tmp_path / "s.tsv").write_text(curves.tsv_text(HISTORY))
    rows = curves.read(tmp_path, "s")
    assert [tuple(r) for r in rows] == [curves.COLUMNS] * 2
    assert [r["val_acc"] for r in rows] == ["0.25", "0.5"] and rows[1]["epoch"] == "2"


def test_the_long_table_keeps_params_order_under_a_strategy_column(tmp_path):
    for name in ("b", "a"):
        (tmp_path / f"{name}.tsv").write_text(curves.tsv_text(HISTORY))
    assert curves.write_combined(["b", "a"], tmp_path, tmp_path / "curves.tsv") == 4
    lines = (tmp_path / "curves.tsv").read_text().splitlines()
    assert lines[0].split("\t") == ["strategy", *curves.COLUMNS]
    assert [line.split("\t")[0] for line in lines[1:]] == ["b", "b", "a", "a"]


def test_a_missing_or_foreign_table_names_the_stage(tmp_path):
    with pytest.raises(StageError, match=r"s.tsv: not found; run `dvc repro train@s`"):
        curves.read(tmp_path, "s")
    (tmp_path / "s.tsv").write_text("step\tloss\n1\t0.5\n")
    with pytest.raises(StageError, match=r"columns \['step', 'loss'\], expected"):
        curves.read(tmp_path, "s")
    assert not (tmp_path / "curves.tsv").exists()
