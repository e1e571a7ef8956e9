"""predict: classify images with a trained or exported model, or ask the pretrained backbone
what it sees.

    python -m stages.predict PATH... [--model models/<S>.pt | export/model.onnx]
        [--top-k K] [--json] [--tta] [--gallery out.png] [--imagenet [--arch A]]

PATHs are image files and folders (searched recursively; hidden files skipped). Each image is
prepared exactly as training saw it (stages/images.py: EXIF orientation, RGB, clean's downscale
and JPEG round trip, with the settings the model recorded), then the eval transform (or five
crops with --tta, their softmax averaged). Without --model it uses the strategy metrics/best.json
chose (models/<S>.pt). Prints a table (or JSON) of each file's top-k classes; a file that cannot
be used is listed with its reason and skipped, and the exit status is 1 when any was (0 when all
were classified, 2 on a usage error). --imagenet shows the backbone's own top-5 ImageNet classes
before any transfer (its original head, 224 px). Needs no params.yaml.

As the DVC stage it first fills --unlabelled with the images to classify (a copy of the
`predict.images` folder, plus `predict.demo_images` fresh demo images when the dataset is
generated), then writes reports/predictions.csv (`file,class,probability,top_k,error`) and a
gallery PNG; a broken file there is a row with its error, not a failed stage:

    python -m stages.predict --params params.yaml --unlabelled data/unlabelled \
        --best metrics/best.json --models models --csv reports/predictions.csv \
        --gallery reports/predictions.png
"""
from __future__ import annotations

import argparse
import csv
import io
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import torch
from matplotlib import style

from stages import bundle as bundles
from stages import demo, files, images, runtime
from stages import figures as png
from stages.inference import predict_probs
from stages.errors import StageError, run_main
from stages.params import Params, load

BATCH = 32          # images per forward pass
DEFAULT_TOP_K = 3   # without params.yaml
GALLERY_COLS = 4
CSV_COLUMNS = ("file", "class", "probability", "top_k", "error")


@dataclass
class Result:
    file: str                                   # as given / relative to the folder searched
    top: list[tuple[str, float]] = field(default_factory=list)  # (class, probability), best first
    reason: str | None = None                   # why it could not be used (images.REASONS, ...)
    detail: str = ""
    image: torch.Tensor | None = None           # (3, H, W) uint8 as prepared, for the gallery

    @property
    def ok(self) -> bool:
        return self.reason is None


# ---- inputs ---------------------------------------------------------------------------------

def _files_in(folder: Path) -> Iterator[Path]:
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).parts
        if path.is_file() and not any(part.startswith(".") for part in rel):
            yield path


def collect(paths: Sequence[str | Path],
            relative_to: Path | None = None) -> list[tuple[str, Path]]:
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


def predict(inputs: Sequence[tuple[str, Path]], b: bundles.Bundle, *, top_k: int,
            tta: bool = False, rt: runtime.Runtime | None = None) -> list[Result]:
    """Top-k (class, probability) for every usable input, in input order; the others carry
    their reason."""
    results = [prepare(name, path, b) for name, path in inputs]
    usable = [r for r in results if r.ok]
    if not usable:
        return results
    rt = _runtime_for(b, rt)
    model = rt.place(b.model) if isinstance(b.model, torch.nn.Module) else b.model
    transform = b.transform(tta)
    batches = ((torch.stack([transform(r.image) for r in usable[i:i + BATCH]]),)
               for i in range(0, len(usable), BATCH))
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
        what = ("   ".join(f"{c} {p:.3f}" for c, p in r.top) if r.ok
                else f"FAILED {r.reason}: {r.detail}")
        lines.append(f"{r.file:<{width}}  {what}")
    return "\n".join(lines) + "\n"


def as_json(results: Sequence[Result], b: bundles.Bundle) -> dict:
    return {"model": b.source, "kind": b.kind,
            "predictions": [{"file": r.file, "top_k": [{"class": c, "probability": round(p, 6)}
                                                      for c, p in r.top]}
                            for r in results if r.ok],
            "failed": [{"file": r.file, "reason": r.reason, "detail": r.detail}
                       for r in results if not r.ok]}


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


# ---- the stage's input folder ---------------------------------------------------------------

def gather(out: Path, params: Params) -> int:
    """Fill `out` with the images to classify: a copy of `predict.images` (under its folder
    name) and `predict.demo_images` fresh demo images under demo/. Returns how many files."""
    out = Path(out)
    source = params.predict.images
    if source is not None and not Path(source).is_dir():
        raise StageError(f"predict.images: {source} is not a folder; give a folder of "
                         "images, or null for none")
    with files.staged_dir(out) as tmp:
        if source is not None:
            shutil.copytree(source, tmp / Path(source).name)
        generate = params.active_dataset.generate
        if generate is not None and params.predict.demo_images:
            made = demo.unlabelled_images(classes=generate.classes, n=params.predict.demo_images,
                                          size=generate.size, seed=params.seed)
            (tmp / "demo").mkdir()
            for name, data in made.items():
                (tmp / "demo" / name).write_bytes(data)
    return sum(1 for p in out.rglob("*") if p.is_file())


# ---- command line ---------------------------------------------------------------------------

def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    prog = Path(sys.argv[0]).name  # transferline-predict when run as the console command
    ap = argparse.ArgumentParser(prog=prog if not prog.endswith(".py") else
                                 "python -m stages.predict", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="*", type=Path, help="image files and folders")
    ap.add_argument("--model", type=Path, help="checkpoint or exported model (default: the "
                    "strategy --best names, under --models)")
    ap.add_argument("--best", type=Path, default=Path("metrics/best.json"),
                    help="the select stage's choice (default: %(default)s)")
    ap.add_argument("--models", type=Path, default=Path("models"),
                    help="folder of checkpoints (default: %(default)s)")
    ap.add_argument("--top-k", type=int, help=f"classes per image (default: {DEFAULT_TOP_K}, "
                    "or predict.top_k with --params; 5 with --imagenet)")
    ap.add_argument("--tta", action="store_true", default=None,
                    help="average the softmax over five crops")
    ap.add_argument("--json", action="store_true", help="JSON on stdout instead of a table")
    ap.add_argument("--gallery", type=Path, help="also write a PNG grid of the images")
    ap.add_argument("--imagenet", action="store_true",
                    help="the pretrained backbone's own ImageNet classes, before any transfer")
    ap.add_argument("--arch", help="backbone for --imagenet (default: the model's arch, or "
                    "efficientnet_lite0 when there is no model)")
    ap.add_argument("--device", help="auto | cpu | cuda | cuda:N (default: runtime.device with "
                    "--params, else auto)")
    ap.add_argument("--params", type=Path, help="params.yaml: settings from `predict:` (stage)")
    ap.add_argument("--unlabelled", type=Path, help="stage: fill this folder (predict.images, "
                    "demo images) and classify what is in it")
    ap.add_argument("--csv", type=Path, help="also write the results as CSV")
    ap.add_argument("--allow-failures", action="store_true",
                    help="exit 0 even when some files could not be used (the stage)")
    args = ap.parse_args(argv)
    if not args.paths and args.unlabelled is None:
        ap.error("give image files or folders to classify")
    if args.top_k is not None and args.top_k < 1:
        ap.error("--top-k must be at least 1")
    return args


def _model(args: argparse.Namespace, threads: int | None) -> bundles.Bundle:
    if not args.imagenet:
        path = args.model or bundles.best_checkpoint(args.best, args.models)
        return bundles.load(path, threads)
    trained = None  # whose arch and clean settings to use, when there is one
    if args.model:
        trained = bundles.load(args.model, threads)
    elif args.arch is None and args.best.is_file():
        path = bundles.best_checkpoint(args.best, args.models)
        trained = bundles.load(path, threads) if path.is_file() else None
    arch = args.arch or (trained.meta.get("arch") if trained else None) or "efficientnet_lite0"
    return bundles.imagenet(arch, trained.clean if trained else None)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    params = load(args.params) if args.params else None
    settings = params.predict if params else None
    top_k = args.top_k or (5 if args.imagenet else settings.top_k if settings else DEFAULT_TOP_K)
    tta = args.tta if args.tta is not None else bool(settings and settings.tta)
    rt = runtime.from_params(params.runtime, device=args.device) if params else \
        runtime.resolve(device=args.device or "auto")
    threads = params.threads if params else torch.get_num_threads()
    paths, root = list(args.paths), None
    if args.unlabelled is not None:
        if params is None:
            raise StageError("--unlabelled needs --params params.yaml (predict.images, "
                             "predict.demo_images)")
        gather(args.unlabelled, params)
        paths, root = [args.unlabelled, *paths], args.unlabelled
    with runtime.torch_state(rt, seed=params.seed if params else 0, threads=threads):
        b = _model(args, threads)
        results = predict(collect(paths, root), b, top_k=top_k, tta=tta, rt=rt)
    _write(args, results, b, settings.gallery if settings else 16)
    failed = sum(not r.ok for r in results)
    return 1 if failed and not args.allow_failures else 0


def _write(args, results: list[Result], b: bundles.Bundle, gallery_limit: int) -> None:
    if args.csv:
        files.write_text(args.csv, csv_text(results))
    if args.gallery:
        what = "ImageNet classes of the pretrained backbone" if b.kind == "imagenet" else \
            f"predictions of {Path(b.source).name}"
        gallery(results, args.gallery, gallery_limit, what)
    if args.json:
        sys.stdout.write(files.json_text(as_json(results, b)))
    else:
        sys.stdout.write(table(results))
    failed = [r for r in results if not r.ok]
    if failed:
        print(f"{len(failed)} of {len(results)} files could not be used (listed above)",
              file=sys.stderr)


def cli() -> None:
    """Console entry point (transferline-predict)."""
    run_main(lambda: sys.exit(main()))


if __name__ == "__main__":
    cli()
