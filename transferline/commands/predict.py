"""`transferline predict`: classify images with a trained or exported model, or ask the
pretrained backbone what it sees.

    transferline predict PATH... [--model models/<S>.pt | export/model.onnx]
        [--top-k K] [--json] [--tta] [--gallery out.png] [--cam out.png] [--csv out.csv]
        [--imagenet [--arch A]] [--device D]

PATHs are image files and folders (searched recursively; hidden files skipped). Each image is
prepared exactly as training saw it (transferline/data/images.py: EXIF orientation, RGB, clean's
downscale and JPEG round trip, with the settings the model recorded), then the eval transform
(or five crops with --tta, their softmax averaged). Without --model it uses the strategy
metrics/best.json chose (models/<S>.pt). Prints a table (or JSON) of each file's top-k classes;
a file that cannot be used is listed with its reason and skipped, and the exit status is 1 when
any was (0 when all were classified, 2 on a usage error). --imagenet shows the backbone's own
top-5 ImageNet classes before any transfer (its original head, 224 px). --cam writes a grid of
the images as the network saw them (the centre crop) with a Grad-CAM heat map of the top class
over each (transferline/models/cam.py; a checkpoint only). Needs no params.yaml.
The DVC stage of the same name is stages/predict.py.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from transferline.engine.select import best_checkpoint

DEFAULT_TOP_K = 3  # classes per image (there is no params.yaml to ask)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="transferline predict",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("paths", nargs="+", type=Path, help="image files and folders")
    ap.add_argument(
        "--model",
        type=Path,
        help="checkpoint or exported model (default: the strategy --best names, under --models)",
    )
    ap.add_argument(
        "--best",
        type=Path,
        default=Path("metrics/best.json"),
        help="the select stage's choice (default: %(default)s)",
    )
    ap.add_argument(
        "--models",
        type=Path,
        default=Path("models"),
        help="folder of checkpoints (default: %(default)s)",
    )
    ap.add_argument(
        "--top-k", type=int, help=f"classes per image (default: {DEFAULT_TOP_K}; 5 with --imagenet)"
    )
    ap.add_argument("--tta", action="store_true", help="average the softmax over five crops")
    ap.add_argument("--json", action="store_true", help="JSON on stdout instead of a table")
    ap.add_argument("--gallery", type=Path, help="also write a PNG grid of the images")
    ap.add_argument(
        "--cam", type=Path, help="also write a PNG grid with a Grad-CAM heat map per image"
    )
    ap.add_argument("--csv", type=Path, help="also write the results as CSV")
    ap.add_argument(
        "--imagenet",
        action="store_true",
        help="the pretrained backbone's own ImageNet classes, before any transfer",
    )
    ap.add_argument(
        "--arch",
        help="backbone for --imagenet (default: the model's arch, or "
        "efficientnet_lite0 when there is no model)",
    )
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    ap.add_argument(
        "--allow-failures",
        action="store_true",
        help="exit 0 even when some files could not be used",
    )
    args = ap.parse_args(argv)
    if args.top_k is not None and args.top_k < 1:
        ap.error("--top-k must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    top_k = args.top_k or (5 if args.imagenet else DEFAULT_TOP_K)
    if args.model is None and not args.imagenet:
        # read before torch loads (seconds): a missing choice is named at once
        args.model = best_checkpoint(args.best, args.models)
    import torch

    from transferline.engine import runtime
    from transferline.engine.predict import (
        cam_gallery,
        choose_model,
        collect,
        predict,
        write_results,
    )

    rt = runtime.resolve(device=args.device)
    threads = torch.get_num_threads()
    with runtime.torch_state(rt, seed=0, threads=threads):
        b = choose_model(
            model=args.model,
            best=args.best,
            models=args.models,
            imagenet=args.imagenet,
            arch=args.arch,
            threads=threads,
        )
        results = predict(collect(args.paths), b, top_k=top_k, tta=args.tta, rt=rt)
        if args.cam is not None:
            cam_gallery(results, b, args.cam)
    write_results(
        results, b, csv_path=args.csv, gallery_path=args.gallery, as_json_output=args.json
    )
    return 1 if any(not r.ok for r in results) and not args.allow_failures else 0
