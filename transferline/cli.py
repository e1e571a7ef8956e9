"""`transferline`: the commands a user runs by hand, one console command with subcommands.

    transferline predict PATH... [--model M] [--top-k K] [--tta] [--json] [--gallery out.png]
                                 [--csv out.csv] [--imagenet [--arch A]] [--device D]
    transferline export [--model models/<S>.pt | --best metrics/best.json] --out export
    transferline validate [--params F]       check params.yaml as `dvc repro` does first
    transferline lr-find STRATEGY [--out D]  learning-rate range test on the training data
    transferline check [--rev REV]           re-run REV in a clean clone, compare with its commit
    transferline compare BASE [--out F]      metrics diff against BASE as a markdown section
    transferline plots-template --out .dvc/plots.html

`python -m transferline ...` is the same. The pipeline's stages are not here: `dvc repro` runs
them (`python -m stages.<name>` in a checkout).
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from transferline.config.errors import run_main


def _predict(argv: Sequence[str]) -> int:
    from transferline.commands.predict import main

    return main(argv)


def _export(argv: Sequence[str]) -> int:
    from transferline.commands.export import main

    return main(argv)


def _validate(argv: Sequence[str]) -> int:
    from transferline.commands.validate import main

    return main(argv)


def _lr_find(argv: Sequence[str]) -> int:
    from transferline.commands.lr_find import main

    return main(argv)


def _check(argv: Sequence[str]) -> int:
    from transferline.tools.check import main

    return main(argv)


def _compare(argv: Sequence[str]) -> int:
    from transferline.tools.compare import main

    return main(argv)


def _plots_template(argv: Sequence[str]) -> int:
    from transferline.tools.plots_template import main

    return main(argv)


# name -> (what it does, its main): each parses its own arguments, so `transferline X --help`
# is X's help; imported on use, so `transferline check` does not load torch
COMMANDS: dict[str, tuple[str, Callable[[Sequence[str]], int | None]]] = {
    "predict": ("classify images with a trained or exported model", _predict),
    "export": ("write a checkpoint as ONNX and TorchScript with sidecars", _export),
    "validate": ("check params.yaml as the pipeline's first stage does", _validate),
    "lr-find": ("learning-rate range test of a strategy, with a suggested rate", _lr_find),
    "check": ("re-run a revision in a clean clone and compare its results", _check),
    "compare": ("metrics diff against a base revision, as markdown", _compare),
    "plots-template": ("write the offline page template for `dvc plots`", _plots_template),
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(
        prog="transferline",
        description=__doc__.split("\n\n")[0],
        epilog="\n".join(f"  {name:15} {what}" for name, (what, _) in COMMANDS.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "command",
        choices=COMMANDS,
        metavar="COMMAND",
        help="one of: " + ", ".join(COMMANDS) + " (then --help for its options)",
    )
    ap.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    ns = ap.parse_args(argv[:1] or ["--help"])
    _, command = COMMANDS[ns.command]
    return command(argv[1:]) or 0


def entry_point() -> None:
    """The console script: user errors are one line (exit 2), Ctrl-C exit 130."""
    run_main(lambda: sys.exit(main()))
