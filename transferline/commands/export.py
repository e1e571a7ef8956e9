"""`transferline export` (also the DVC stage `export`, stages/export.py): the chosen model as
ONNX and TorchScript, each with a sidecar JSON, checked against the checkpoint before anything
is written (transferline/models/export.py says how).

    transferline export [--model models/<S>.pt | --best metrics/best.json --models models] \
        --out export [--params params.yaml]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Sequence

from transferline.config.params import add_option, load
from transferline.engine.select import best_checkpoint


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="transferline export",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "--best",
        type=Path,
        default=Path("metrics/best.json"),
        help="the select stage's choice (default: %(default)s)",
    )
    ap.add_argument("--models", type=Path, default=Path("models"), help="checkpoint folder")
    ap.add_argument("--model", type=Path, help="export this checkpoint instead of the best")
    ap.add_argument("--out", type=Path, required=True, help="folder to write (export/)")
    add_option(ap)
    args = ap.parse_args(argv)
    params = load(args.params)
    path = args.model or best_checkpoint(args.best, args.models)
    # torch and the exporters load once the inputs are known (a missing choice fails at once)
    import torch

    from transferline.models.export import ONNX_FILE, TORCHSCRIPT_FILE, export

    torch.set_num_threads(params.threads)
    diffs = export(model_path=path, strategy=path.stem, out=args.out, settings=params.export)
    worst = ", ".join(f"{name} {d:.1e}" for name, d in diffs.items())
    print(
        f"{path} -> {args.out}{os.sep}{{{ONNX_FILE}, {TORCHSCRIPT_FILE}}} "
        f"(max probability difference: {worst})"
    )
