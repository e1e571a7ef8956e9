"""`transferline validate [--params params.yaml]`: the validate stage's whole check, by hand.

What `dvc repro` runs first, without writing its stamp: for a params.yaml DVC cannot even read
(empty, not YAML, no `strategies:`), where `dvc repro` stops in DVC's own parsing of dvc.yaml,
this names the file and the key. `make repro` runs it before `dvc repro`.
"""

from __future__ import annotations

import argparse
from typing import Sequence

from transferline.config.params import add_option
from transferline.config.validate import check


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="transferline validate", description=__doc__.split("\n\n")[0])
    add_option(ap)
    args = ap.parse_args(argv)
    check(args.params)
    print(f"{args.params}: valid")
    return 0
