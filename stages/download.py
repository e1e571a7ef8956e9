"""download: fetch the active dataset's archives (or build the demo) into data/raw/.

Reads params.yaml (`dataset`, `datasets.<name>`, `download`, `seed`); writes, per docs/pipeline.md,
`data/raw/<name>` for each archive (a copy of a local folder under its own name, or `demo.zip` for
a `generate:` entry) and `data/raw/sources.json` (with the dataset's `format:` when it has one,
so that extract knows how to convert the files). HTTP(S) downloads go through the cache folder
(`--cache`, outside DVC's outputs): a partial download is resumed from `<name>.part` on the next
try or run, a complete one is kept as `<name>` and never fetched again. Without network, put the
file there by hand under the name the error message gives.

    python -m stages.download --out data/raw --cache .cache/downloads
"""

from __future__ import annotations

import argparse
from pathlib import Path

from transferline.config.errors import run_main
from transferline.config.params import add_option, load
from transferline.data.download import download_dataset


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        help="folder for the archives and sources.json (data/raw)",
    )
    parser.add_argument(
        "--cache",
        type=Path,
        required=True,
        help="download cache kept between runs (.cache/downloads)",
    )
    add_option(parser)
    args = parser.parse_args(argv)
    params = load(args.params)
    for f in download_dataset(
        params.active_dataset, args.out, args.cache, params.download, params.seed
    ):
        print(f"{f.how:<10} {f.name}  sha256={f.sha256}")


if __name__ == "__main__":
    run_main(main)
