"""validate: check the whole params.yaml before any other stage runs.

DVC removes a stage's outputs before it runs the stage's command, so a check inside a stage
comes too late to protect them: a bad `strategies.finetune.lr` would cost the finetune model
before train@finetune noticed. This stage depends on the whole of params.yaml and every other
stage depends on its output, so `dvc repro` (and `dvc exp run`) runs it first and stops here,
with every previous output untouched, on any unknown key or bad value anywhere in the file.

Its output, `data/params.ok`, holds a fixed text: a valid change re-runs this stage, writes the
same bytes, and so re-runs only the stages whose own params changed.

    python -m stages.validate --params params.yaml --out data/params.ok
"""

from __future__ import annotations

import argparse
from typing import Sequence

from transferline.config.errors import run_main
from transferline.config.params import add_option
from transferline.config.validate import validate


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m stages.validate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_option(ap)
    ap.add_argument("--out", required=True, help="stamp file to write (data/params.ok)")
    args = ap.parse_args(argv)
    validate(args.params, args.out)
    print(f"{args.params}: valid")


if __name__ == "__main__":
    run_main(main)
