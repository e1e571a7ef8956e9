"""split: seeded, stratified train/val/test lists built from the cleaned manifest.

Reads   <clean>/manifest.csv (columns path,class,split,source,width,height,sha256) and
        params.yaml (`seed`, `split`).
Writes  <out>/classes.json, <out>/train.csv, <out>/val.csv, <out>/test.csv and <metrics>,
        exactly as docs/pipeline.md describes.
Run     python -m stages.split --clean data/clean --out data/split --metrics metrics/split.json

Rules:
- Shipped splits are kept: a row whose `split` is train/val/test stays in that split; a row with
  an empty `split` counts as train.
- If nothing ships as val, `split.val` of the train pool is carved out as val; if nothing ships
  as test, `split.test` of it is carved out as test. Both fractions are of the train pool as it
  was before any carving (val 0.15 + test 0.15 leaves 70% for train). Carving is per class,
  counts distinct images (sha256 groups, below), rounds half up, and gives each carved split at
  least one image of every class while leaving at least one for train; which images go is drawn
  with a RandomState seeded from (`seed`, class name), so one class's draw does not depend on
  the others.
- Copies never cross splits: rows sharing a sha256 form one group that is placed as a whole. A
  group the dataset ships in several splits goes to the most held-out of them (test, then val,
  then train), so a shipped evaluation set stays whole and train loses the copy; a warning
  names its paths.
- Labels: the classes of all rows in natural sort order (`1`, `2`, ..., `10`; `img2` before
  `img10`); label = index in classes.json.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from transferline.config.errors import run_main
from transferline.config.params import add_option, load
from transferline.data.split import SPLITS, split_dataset


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m stages.split",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--clean", type=Path, required=True, help="clean stage output folder")
    parser.add_argument("--out", type=Path, required=True, help="folder for the split lists")
    parser.add_argument("--metrics", type=Path, required=True, help="split metrics JSON file")
    add_option(parser)
    args = parser.parse_args(argv)
    params = load(args.params)
    metrics = split_dataset(
        args.clean, args.out, args.metrics, seed=params.seed, split_params=params.split
    )
    n_classes = len(metrics["train"]["classes"])
    print(
        f"split: {n_classes} classes; "
        + ", ".join(f"{name} {metrics[name]['total']}" for name in SPLITS)
        + " images"
    )


if __name__ == "__main__":
    run_main(main)
