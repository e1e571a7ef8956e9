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

import csv
import io
import json
import multiprocessing
import os
import signal
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Iterable, Iterator, Optional

import cv2
from PIL import Image
from tqdm import tqdm

from transferline.config.errors import StageError
from transferline.config.params import Clean
from transferline.data.images import REASONS, Outcome, jpeg_complete, judge_bytes  # noqa: F401 (re-exported)
from transferline.outputs.atomic import SOURCES, staged_dir, write_json, write_text

SPLIT_NAMES = {
    "train": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "test-set": "test",
    "testing": "test",
}
MANIFEST_COLUMNS = ("path", "class", "split", "source", "width", "height", "sha256", "dhash")
REJECTED_COLUMNS = ("source", "class", "reason", "detail")


@dataclass(frozen=True)
class Candidate:
    path: Path  # where to read it
    source: str  # posix path relative to data/extracted (sort key, reported)
    cls: str
    split: str  # "train" | "val" | "test" | "" (none shipped)


@dataclass
class Summary:
    """What a clean run measured; `metrics()` is metrics/clean.json."""

    kept: int = 0
    rejected: int = 0
    classes: dict[str, dict[str, int]] = field(default_factory=dict)
    reasons: dict[str, int] = field(default_factory=lambda: {r: 0 for r in REASONS})
    empty_classes: list[str] = field(default_factory=list)

    def metrics(self) -> dict:
        return {
            "kept": self.kept,
            "rejected": self.rejected,
            "classes": self.classes,
            "reasons": self.reasons,
        }


# ---- finding the files ----------------------------------------------------------------------


def _subdirs(folder: Path) -> list[Path]:
    # hidden folders (.ipynb_checkpoints, __MACOSX) are never classes or splits
    return sorted(
        p for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "__MACOSX"))
    )


def _class_folders(root: Path, split: Optional[str]) -> list[tuple[Path, str]]:
    """(class folder, split) pairs of one extracted source, per docs/pipeline.md."""
    while True:  # step into wrappers: a lone subfolder that itself holds folders
        dirs = _subdirs(root)
        if (
            len(dirs) != 1
            or not _subdirs(dirs[0])
            or (split is None and dirs[0].name.lower() in SPLIT_NAMES)
        ):  # a lone train/
            break
        root = dirs[0]
    if split is not None:
        return [(d, split) for d in dirs]
    named = [d for d in dirs if d.name.lower() in SPLIT_NAMES]
    if not named:
        return [(d, "") for d in dirs]
    others = [d.name for d in dirs if d not in named]
    if others:
        raise StageError(
            f"{root}: mixes split folders {[d.name for d in named]} with other "
            f"folders {others}; put every class folder under a split folder, or "
            f"give the archive a `split:` in params.yaml"
        )
    return [(c, SPLIT_NAMES[s.name.lower()]) for s in named for c in _subdirs(s)]


def _files_under(folder: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath, name)
            if path.is_file():  # regular file (or a link to one); skips sockets, dangling links
                yield path


def discover(extracted: Path) -> tuple[list[Candidate], list[str]]:
    """Every candidate file in data/extracted, sorted by source path, and all class names."""
    index = extracted / SOURCES
    try:
        sources = json.loads(index.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StageError(f"{index}: not found; run the extract stage first") from None
    except json.JSONDecodeError as exc:
        raise StageError(f"{index}: not valid JSON ({exc}); re-run the extract stage") from None
    candidates, classes = [], set()
    for entry in sources:
        root = extracted / entry["dir"]
        if not root.is_dir():
            raise StageError(f"{root}: listed in {index} but not a folder; re-run extract")
        for folder, split in _class_folders(root, entry.get("split")):
            classes.add(folder.name)
            candidates += [
                Candidate(p, p.relative_to(extracted).as_posix(), folder.name, split)
                for p in _files_under(folder)
            ]
    if not classes:
        raise StageError(
            f"{extracted}: no class folders found; expected <class>/<image> or "
            f"<split>/<class>/<image> inside each extracted source"
        )
    return sorted(candidates, key=lambda c: c.source), sorted(classes)


# ---- judging one file -----------------------------------------------------------------------


def judge(path: Path, params: Clean) -> Outcome:
    """Read one file and either normalise it or say why it is rejected. Writes nothing."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise StageError(f"{path}: cannot read it ({exc.strerror}); fix its permissions") from None
    return judge_bytes(data, params)


# ---- running over all files -----------------------------------------------------------------


def _init_worker() -> None:
    cv2.setNumThreads(1)  # parallelism comes from processes; OpenCV threads would oversubscribe
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)  # reasons go to the CSV


def _init_pool_worker() -> None:
    # Ctrl-C reaches the whole process group: the main process stops the pool and says so once;
    # a worker would otherwise print its own KeyboardInterrupt traceback. Forkserver workers
    # already ignore it from birth (transferline.data.workers_ignore_sigint); spawned ones from
    # here on.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _init_worker()


def _worker_context() -> multiprocessing.context.BaseContext:
    """forkserver where available: a plain fork of a caller that already runs threads (tqdm's
    monitor, another pool's manager, OpenCV's pool) can leave the child stuck on a lock; it did
    in the benchmark process. The server imports the heavy libraries once (about 0.4 s), so each
    worker forks with them loaded. (Not this module itself: under `python -m stages.clean` the
    workers re-run it as their main module.)"""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    # every Pillow format plugin: Image.open on a non-image would import them all per worker
    pil_plugins = [f"PIL.{name}" for name in getattr(Image, "_plugins", ())]
    ctx.set_forkserver_preload(
        [
            "transferline.data.workers_ignore_sigint",
            "cv2",
            "numpy",
            "PIL.Image",
            "PIL.ImageOps",
            "tqdm",
            "transferline.config.params",
            "transferline.data.images",
            *pil_plugins,
        ]
    )
    return ctx


def _judge_and_write(cand: Candidate, images: Path, params: Clean) -> Outcome:
    """judge() one file and write a kept image to images/<class>/<sha16>.jpg (in the worker, so
    writes run in parallel and no image bytes travel between processes)."""
    res = judge(cand.path, params)
    if res.jpeg is None:
        return res
    dest = images / cand.cls / f"{res.sha256[:16]}.jpg"
    part = dest.with_name(f".{dest.name}.{os.getpid()}")  # byte copies may race to one name
    part.write_bytes(res.jpeg)
    os.replace(part, dest)
    return replace(res, jpeg=None)


def _judge_all(candidates: list[Candidate], images: Path, params: Clean) -> Iterator[Outcome]:
    """Outcomes in the order of `candidates`, from clean.workers processes."""
    work = partial(_judge_and_write, images=images, params=params)
    bar = dict(total=len(candidates), desc="clean", unit="img", disable=None)
    if params.workers == 1 or len(candidates) < 2:
        threads, level = cv2.getNumThreads(), cv2.utils.logging.getLogLevel()
        _init_worker()
        try:
            yield from tqdm(map(work, candidates), **bar)
        finally:  # leave the calling process's OpenCV settings as they were
            cv2.setNumThreads(threads)
            cv2.utils.logging.setLogLevel(level)
        return
    # small chunks: the few big files (BMP, PSD, large JPEGs) spread over the workers
    chunk = max(1, min(16, len(candidates) // (params.workers * 8)))
    with ProcessPoolExecutor(
        params.workers, mp_context=_worker_context(), initializer=_init_pool_worker
    ) as pool:
        try:
            yield from tqdm(pool.map(work, candidates, chunksize=chunk), **bar)
        except BaseException:  # an error or Ctrl-C: drop the queued files, do not wait for them
            pool.shutdown(cancel_futures=True)
            raise


def _tally(
    candidates: list[Candidate], outcomes: Iterable[Outcome], images: Path, summary: Summary
) -> tuple[list[tuple], list[tuple]]:
    """Fill `summary`; manifest and rejected rows. Byte copies of a kept file become
    `duplicate` (the first in sorted source order is kept) and lose their written image."""
    kept_by_sha: dict[str, Candidate] = {}
    manifest, rejects = [], []
    for cand, res in zip(candidates, outcomes):
        reason, detail = res.reason, res.detail
        first = kept_by_sha.get(res.sha256)
        if reason is None and first is not None:
            reason, detail = "duplicate", first.source
            if first.cls != cand.cls:  # same class: the same file name as the kept copy
                (images / cand.cls / f"{res.sha256[:16]}.jpg").unlink(missing_ok=True)
        if reason is not None:
            rejects.append((cand.source, cand.cls, reason, detail))
            summary.reasons[reason] += 1
            summary.classes[cand.cls]["rejected"] += 1
            continue
        kept_by_sha[res.sha256] = cand
        manifest.append(
            (
                f"images/{cand.cls}/{res.sha256[:16]}.jpg",
                cand.cls,
                cand.split,
                cand.source,
                res.width,
                res.height,
                res.sha256,
                res.dhash,
            )
        )
        summary.classes[cand.cls]["kept"] += 1
    summary.kept, summary.rejected = len(manifest), len(rejects)
    summary.empty_classes = [c for c, n in summary.classes.items() if n["kept"] == 0]
    return sorted(manifest), sorted(rejects)


def _csv_text(columns: tuple, rows: list[tuple]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(rows)
    return buf.getvalue()


def clean(extracted: Path, out: Path, metrics: Path, rejected: Path, params: Clean) -> Summary:
    """Judge every candidate under `extracted`; write `out` (images + manifest.csv), `metrics`
    (metrics/clean.json) and `rejected` (reports/rejected.csv). Returns the counts."""
    extracted, out = Path(extracted), Path(out)
    candidates, classes = discover(extracted)
    summary = Summary(classes={c: {"kept": 0, "rejected": 0} for c in classes})
    with staged_dir(out) as tmp:
        images = tmp / "images"
        for cls in classes:
            (images / cls).mkdir(parents=True)
        manifest, rejects = _tally(
            candidates, _judge_all(candidates, images, params), images, summary
        )
        if not manifest:
            found = ", ".join(f"{r} {n}" for r, n in summary.reasons.items() if n) or "no files"
            raise StageError(
                f"{extracted}: none of its {len(candidates)} files is a usable "
                f"image ({found}); check the dataset or the clean.* limits in "
                f"params.yaml"
            )
        for cls in summary.empty_classes:
            (images / cls).rmdir()
        (tmp / "manifest.csv").write_text(
            _csv_text(MANIFEST_COLUMNS, manifest), encoding="utf-8", newline=""
        )
    write_text(rejected, _csv_text(REJECTED_COLUMNS, rejects))
    write_json(metrics, summary.metrics())
    for cls in summary.empty_classes:
        print(
            f"warning: class {cls!r} has no usable image left after cleaning (see {rejected})",
            file=sys.stderr,
        )
    return summary
