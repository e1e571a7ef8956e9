"""clean: decode every extracted image with OpenCV and reject or normalise it.

Reads  data/extracted/ (sources.json + one folder per source; layout per docs/pipeline.md).
Writes data/clean/images/<class>/<sha16>.jpg, data/clean/manifest.csv, metrics/clean.json and
       reports/rejected.csv, in the formats docs/pipeline.md gives.
Run    python -m stages.clean --extracted data/extracted --out data/clean \
           --metrics metrics/clean.json --rejected reports/rejected.csv

Every regular file under a class folder is a candidate, whatever its name or extension (hidden
files and Thumbs.db included): the bytes decide. Checks, in order, the first failure wins:

  empty            0 bytes
  not_image        no header of an accepted format: text, HTML, Thumbs.db (OLE), and formats that
                   Pillow can identify but that are not image files for training. A Photoshop
                   document (PSD, e.g. PetImages Cat/10404.jpg) is `not_image`: it is a layered
                   editing file that OpenCV cannot read, not a broken image, so `undecodable`
                   (reserved for damaged data in an accepted format) would mislead.
  too_many_pixels  header width * height > clean.max_pixels; refused before any pixel is decoded
  undecodable      an accepted format whose data neither OpenCV nor Pillow can decode
  truncated        the data ends before the image does: a JPEG whose markers run out before EOI
                   (OpenCV 5 refuses such files, older versions pad them with grey), or Pillow's
                   "image file is truncated" for other formats
  too_small        a side < clean.min_side
  duplicate        byte-identical to a kept file earlier in sorted source order (detail: that file)

Accepted formats are in ACCEPTED_FORMATS. Decoding is OpenCV's `imdecode` (EXIF orientation
applied, CMYK and greyscale JPEGs converted to colour); Pillow decodes only what OpenCV cannot
(and images with transparency, see below), then `exif_transpose` + RGB. Choices made here:

- Transparency (RGBA / LA PNG, palette PNG or GIF with a transparent colour) is composited on
  white: dropping alpha would expose whatever colour the transparent pixels happen to store,
  usually black.
- JPEG data after the end marker (PetImages' trailing HTML pages) and libjpeg's "extraneous bytes
  before marker 0xd9" warnings are harmless: such files are kept.
- hymenoptera's train/ants/imageNotFound.gif (a real GIF of a "could not be found" placeholder)
  is kept: clean judges whether a file is a decodable image, not what it shows, and it ships in
  the tutorial's training set. It is label noise, like any mislabelled photo.

Kept images are downscaled (INTER_AREA) so the shorter side is at most clean.max_short_side; big
JPEGs are first decoded at 1/2, 1/4 or 1/8 scale by libjpeg when that still leaves the shorter
side >= max_short_side. Files are judged by clean.workers processes, each writing its kept images
under their content hash; duplicates, the manifest and the reports are decided and written from
the results in sorted source order, so the output is byte-identical for any worker count.
Everything goes to a temporary folder beside --out that replaces it at the end: an interrupted
run leaves the previous output (or none), never a mix.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from transferline.config.errors import run_main
from transferline.config.params import add_option, load
from transferline.data.clean import clean


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--extracted", type=Path, required=True, help="data/extracted")
    parser.add_argument("--out", type=Path, required=True, help="data/clean")
    parser.add_argument("--metrics", type=Path, required=True, help="metrics/clean.json")
    parser.add_argument("--rejected", type=Path, required=True, help="reports/rejected.csv")
    add_option(parser)
    args = parser.parse_args(argv)
    params = load(args.params)
    summary = clean(args.extracted, args.out, args.metrics, args.rejected, params.clean)
    print(
        f"clean: kept {summary.kept}, rejected {summary.rejected} "
        f"({', '.join(f'{r} {n}' for r, n in summary.reasons.items() if n)})"
    )


if __name__ == "__main__":
    run_main(main)
