"""extract: unpack every archive in data/raw/ safely into data/extracted/.

Reads `data/raw/sources.json` and the files it lists, plus params.yaml (`extract`); writes, per
docs/pipeline.md, one folder per source (`hymenoptera_data.zip` -> `hymenoptera_data/`; a folder
source is copied as it is) and `data/extracted/sources.json`. Zip and tar (plain, gz, bz2, xz) are
recognised by content, not by extension. `__MACOSX/` and `.DS_Store` entries are skipped.

Anything unsafe stops the stage with the archive and member named, and nothing is written: no
absolute paths, `..` components, links, device files; at most `extract.max_members` entries and
`extract.max_total_bytes` unpacked bytes; no member (zip) or archive (tar, whose members share
one compressed stream) that expands more than `extract.max_ratio` times. Everything is unpacked
into a temporary sibling folder that is renamed over --out only when all sources succeeded.

A dataset with `format:` (recorded in sources.json by download) ships in an official layout
that is not class folders: its archives are unpacked as above (other files, such as `.mat`
label files, are taken as they are) into a work folder, and the converter of stages.formats
turns them into one folder named after the format, `<format>/<split>/<class>/<image>`.

    python -m stages.extract --raw data/raw --out data/extracted
"""

from __future__ import annotations

import argparse
from pathlib import Path

from transferline.config.errors import run_main
from transferline.config.params import add_option, load
from transferline.data.extract import extract_all


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--raw", type=Path, required=True, help="download output (data/raw)")
    parser.add_argument(
        "--out", type=Path, required=True, help="folder to unpack into (data/extracted)"
    )
    add_option(parser)
    args = parser.parse_args(argv)
    params = load(args.params)
    for e in extract_all(args.raw, args.out, params.extract):
        print(f"{e.dir}: {e.files} files, {e.bytes} bytes (split: {e.split or 'detect'})")


if __name__ == "__main__":
    run_main(main)
