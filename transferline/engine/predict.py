"""Classifying a user's images: files and folders in, top-k classes out, with the reason for
every file that cannot be used.

`collect` lists the files (folders searched recursively, hidden files skipped), `predict` runs a
`models.bundle.Bundle` (checkpoint, exported ONNX/TorchScript file, or the pretrained backbone
with its ImageNet head) over them: each image is prepared exactly as training saw it
(`data.images.model_input`: EXIF orientation, RGB, clean's downscale and JPEG round trip with the
settings the model recorded), then the eval transform, or five crops with TTA, their softmax
averaged. `table`, `csv_text`, `as_json` and `gallery` present the results; `gather` fills the
predict stage's input folder. Used by `transferline predict` (transferline/commands/predict.py)
and the DVC stage (stages/predict.py).
"""

from __future__ import annotations

import csv
import io
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import torch
from matplotlib import style

from transferline.config.errors import StageError
from transferline.config.params import Params
from transferline.data import demo, images, transforms
from transferline.data.folders import copy_folder
from transferline.engine import runtime
from transferline.engine.inference import predict_probs
from transferline.engine.select import best_checkpoint
from transferline.models import bundle as bundles
from transferline.outputs import atomic as files
from transferline.report import figures as png

BATCH = 32  # images per forward pass
GALLERY_COLS = 4
CSV_COLUMNS = ("file", "class", "probability", "top_k", "error")


@dataclass
class Result:
    file: str  # as given / relative to the folder searched
    top: list[tuple[str, float]] = field(default_factory=list)  # (class, probability), best first
    reason: str | None = None  # why it could not be used (images.REASONS, ...)
    detail: str = ""
    image: torch.Tensor | None = None  # (3, H, W) uint8 as prepared, for the gallery

    @property
    def ok(self) -> bool:
        return self.reason is None


# ---- inputs ---------------------------------------------------------------------------------


def _files_in(folder: Path) -> Iterator[Path]:
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).parts
        if path.is_file() and not any(part.startswith(".") for part in rel):
            yield path


def collect(paths: Sequence[str | Path], relative_to: Path | None = None) -> list[tuple[str, Path]]:
    """(name shown, file) for every file given or found under a folder given, in order; names
    of files under `relative_to` are relative to it."""
    out = []
    for given in map(Path, paths):
        found = list(_files_in(given)) if given.is_dir() else [given]
        for path in found:
            inside = relative_to is not None and path.is_relative_to(relative_to)
            out.append(((path.relative_to(relative_to) if inside else path).as_posix(), path))
    return out


def prepare(name: str, path: Path, b: bundles.Bundle) -> Result:
    """Read one file and prepare it as clean would; a Result with the image or the reason."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return Result(name, reason="not_found", detail="no such file or folder")
    except OSError as exc:
        return Result(name, reason="unreadable", detail=exc.strerror or str(exc))
    image, outcome = images.model_input(data, b.clean)
    if image is None:
        return Result(name, reason=outcome.reason, detail=outcome.detail)
    return Result(name, image=image)


# ---- the worker -----------------------------------------------------------------------------


def _runtime_for(b: bundles.Bundle, rt: runtime.Runtime | None) -> runtime.Runtime:
    if b.kind in ("onnx", "torchscript") or rt is None:
        # exported files run on CPU in fp32, as they were exported
        return runtime.resolve(device="cpu", precision="fp32", channels_last=False)
    return rt


def predict(
    inputs: Sequence[tuple[str, Path]],
    b: bundles.Bundle,
    *,
    top_k: int,
    tta: bool = False,
    rt: runtime.Runtime | None = None,
) -> list[Result]:
    """Top-k (class, probability) for every usable input, in input order; the others carry
    their reason."""
    results = [prepare(name, path, b) for name, path in inputs]
    usable = [r for r in results if r.ok]
    if not usable:
        return results
    rt = _runtime_for(b, rt)
    model = rt.place(b.model) if isinstance(b.model, torch.nn.Module) else b.model
    transform = b.transform(tta)
    batches = (
        (torch.stack([transform(r.image) for r in usable[i : i + BATCH]]),)
        for i in range(0, len(usable), BATCH)
    )
    probs = predict_probs(model, batches, rt, chunk=BATCH)  # (N, C) float64
    k = min(top_k, len(b.classes))
    for r, row in zip(usable, probs):
        best = row.argsort()[::-1][:k]
        r.top = [(b.classes[i], float(row[i])) for i in best]
    return results


# ---- outputs --------------------------------------------------------------------------------


def table(results: Sequence[Result]) -> str:
    width = max([len("file")] + [len(r.file) for r in results])
    lines = [f"{'file':<{width}}  top-{max((len(r.top) for r in results), default=0)}"]
    for r in results:
        what = (
            "   ".join(f"{c} {p:.3f}" for c, p in r.top)
            if r.ok
            else f"FAILED {r.reason}: {r.detail}"
        )
        lines.append(f"{r.file:<{width}}  {what}")
    return "\n".join(lines) + "\n"


def as_json(results: Sequence[Result], b: bundles.Bundle) -> dict:
    return {
        "model": b.source,
        "kind": b.kind,
        "predictions": [
            {"file": r.file, "top_k": [{"class": c, "probability": round(p, 6)} for c, p in r.top]}
            for r in results
            if r.ok
        ],
        "failed": [
            {"file": r.file, "reason": r.reason, "detail": r.detail} for r in results if not r.ok
        ],
    }


def csv_text(results: Sequence[Result]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in results:
        if r.ok:
            top = "; ".join(f"{c} {p:.6f}" for c, p in r.top)
            writer.writerow([r.file, r.top[0][0], f"{r.top[0][1]:.6f}", top, ""])
        else:
            writer.writerow([r.file, "", "", "", f"{r.reason}: {r.detail}"])
    return buf.getvalue()


def gallery(results: Sequence[Result], path: Path, limit: int, title: str) -> None:
    """Up to `limit` classified images in a grid, each titled with its top class."""
    shown = [r for r in results if r.ok][:limit]
    with style.context("default"):
        fig, axes = png.grid(max(len(shown), 1), min(max(len(shown), 1), GALLERY_COLS), 2.2)
        for ax, r in zip(axes, shown):
            ax.imshow(png.hwc(r.image))
            ax.set_title(f"{r.top[0][0]} {r.top[0][1]:.2f}\n{r.file}", fontsize="small")
        if not shown:
            axes[0].text(0.5, 0.5, "no images to classify", ha="center", va="center")
        fig.suptitle(title)
        path.parent.mkdir(parents=True, exist_ok=True)
        png.save(fig, path)


def cam_gallery(results: Sequence[Result], b: bundles.Bundle, path: Path, limit: int = 16) -> None:
    """Up to `limit` classified images as the network saw them (the eval centre crop), each
    with a Grad-CAM heat map of its top class over it, titled class, probability and file."""
    if b.kind != "checkpoint":
        raise StageError(
            f"--cam needs a checkpoint (models/<strategy>.pt), not {b.kind} file {b.source}: "
            "the heat map needs the network's gradients"
        )
    from transferline.models.cam import grad_cam

    shown = [r for r in results if r.ok][:limit]
    transform = b.transform(False)
    x = torch.stack([transform(r.image) for r in shown]) if shown else None
    maps = []
    if shown:
        model = b.model.cpu().float()
        targets = [b.classes.index(r.top[0][0]) for r in shown]
        maps = [m.numpy() for m in grad_cam(model, b.meta["arch"], x, targets)]
    png.heat_map_grid(
        [transforms.denormalize(x[k], b.mean, b.std).numpy() for k in range(len(shown))],
        maps,
        [f"{r.top[0][0]} {r.top[0][1]:.2f}\n{r.file}" for r in shown],
        path,
        f"Grad-CAM of the top class ({Path(b.source).name})",
        note=None if shown else "no images to classify",
        cols=GALLERY_COLS,
    )


# ---- the stage's input folder ---------------------------------------------------------------


def gather(out: Path, params: Params) -> int:
    """Fill `out` with the images to classify: a copy of `predict.images` (under its folder
    name) and `predict.demo_images` fresh demo images under demo/. Returns how many files."""
    out = Path(out)
    source = params.predict.images
    if source is not None and not Path(source).is_dir():
        raise StageError(
            f"predict.images: {source} is not a folder; give a folder of images, or null for none"
        )
    with files.staged_dir(out) as tmp:
        if source is not None:
            copy_folder(Path(source), tmp / Path(source).resolve().name)
        generate = params.active_dataset.generate
        if generate is not None and params.predict.demo_images:
            made = demo.unlabelled_images(
                classes=generate.classes,
                n=params.predict.demo_images,
                size=generate.size,
                seed=params.seed,
            )
            (tmp / "demo").mkdir()
            for name, data in made.items():
                (tmp / "demo" / name).write_bytes(data)
    return sum(1 for p in out.rglob("*") if p.is_file())


# ---- what the command and the stage share --------------------------------------------------


def choose_model(
    *,
    model: Path | None,
    best: Path,
    models: Path,
    imagenet: bool = False,
    arch: str | None = None,
    threads: int | None = None,
) -> bundles.Bundle:
    """The model to run: `model`, else the strategy `best` (metrics/best.json) names under
    `models`; with `imagenet`, that model's (or `arch`'s) pretrained backbone with its own
    ImageNet head."""
    if not imagenet:
        return bundles.load(model or best_checkpoint(best, models), threads)
    trained = None  # whose arch and clean settings to use, when there is one
    if model:
        trained = bundles.load(model, threads)
    elif arch is None and best.is_file():
        path = best_checkpoint(best, models)
        trained = bundles.load(path, threads) if path.is_file() else None
    arch = arch or (trained.meta.get("arch") if trained else None) or "efficientnet_lite0"
    return bundles.imagenet(arch, trained.clean if trained else None)


def write_results(
    results: list[Result],
    b: bundles.Bundle,
    *,
    csv_path: Path | None = None,
    gallery_path: Path | None = None,
    gallery_limit: int = 16,
    as_json_output: bool = False,
) -> None:
    """The CSV and gallery when asked for, the table (or JSON) on stdout, and a count of the
    files that could not be used on stderr."""
    if csv_path:
        files.write_text(csv_path, csv_text(results))
    if gallery_path:
        what = (
            "ImageNet classes of the pretrained backbone"
            if b.kind == "imagenet"
            else f"predictions of {Path(b.source).name}"
        )
        gallery(results, gallery_path, gallery_limit, what)
    sys.stdout.write(files.json_text(as_json(results, b)) if as_json_output else table(results))
    failed = [r for r in results if not r.ok]
    if failed:
        print(
            f"{len(failed)} of {len(results)} files could not be used (listed above)",
            file=sys.stderr,
        )
