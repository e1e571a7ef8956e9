"""A trained model as predict and export use it: the network plus everything needed to feed it.

`load(path)` takes a training checkpoint (`models/<S>.pt`) or an exported model (`.onnx`, or a
TorchScript file) with its sidecar JSON beside it (`<file>.json`, written by export) and returns a
`Bundle`: a callable from (N, 3, H, W) float32 to (N, C) logits, the class names, the input size,
the normalisation and the clean settings (`clean.max_short_side`, ...) that say how a photo is
prepared (transferline/data/images.py). `imagenet(arch)` is the pretrained backbone with its
original 1000-class head and the ImageNet class names torchvision ships (nothing is downloaded).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, Optional

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from transferline import models
from transferline.config.errors import StageError, first_line
from transferline.config.params import Clean
from transferline.data import transforms

IMAGENET_SIZE = 224  # px: the resolution every packaged ImageNet backbone was trained at
SIDECAR_VERSION = 1


@dataclass
class Bundle:
    model: Callable[[torch.Tensor], torch.Tensor]  # (N, 3, S, S) float32 -> (N, C) logits
    classes: list[str]
    image_size: int  # S, px
    mean: list[float]
    std: list[float]
    clean: Clean  # how a photo is prepared (images.py)
    kind: str  # checkpoint | onnx | torchscript | imagenet
    source: str  # file it came from, or the arch
    meta: dict[str, Any] = field(default_factory=dict)  # checkpoint dict or sidecar
    resize_size: int | None = None  # px the shorter side is resized to (None: the default ratio)

    def transform(self, tta: bool = False):
        """uint8 (3, H, W) -> (3, S, S), or (5, 3, S, S) five crops with tta."""
        norm = dict(
            image_size=self.image_size, mean=self.mean, std=self.std, resize_size=self.resize_size
        )
        if tta:
            return transforms.tta_transform(**norm, flip=False)
        return transforms.eval_transform(**norm)


# ---- checkpoints ----------------------------------------------------------------------------


def _clean_of(meta: dict, source: Path) -> Clean:
    if "clean" not in meta:
        raise StageError(
            f"{source}: records no `clean` settings (a checkpoint from before they "
            "were saved); re-run training (dvc repro) to get one predict can use"
        )
    try:
        return Clean.model_validate(meta["clean"])
    except ValidationError as exc:
        raise StageError(f"{source}: bad `clean` settings: {_first_problem(exc)}") from None


def _first_problem(exc: ValidationError) -> str:
    """`key.path: message` of the first thing pydantic found wrong."""
    bad = exc.errors()[0]
    return f"{'.'.join(str(part) for part in bad['loc']) or '(top level)'}: {bad['msg']}"


def from_checkpoint(path: Path) -> Bundle:
    model, ckpt = models.load_checkpoint(path)
    tf = ckpt["transform"]
    return Bundle(
        model=model,
        classes=list(ckpt["classes"]),
        image_size=int(tf["image_size"]),
        resize_size=tf.get("resize_size"),
        mean=list(tf["mean"]),
        std=list(tf["std"]),
        clean=_clean_of(ckpt, path),
        kind="checkpoint",
        source=str(path),
        meta=ckpt,
    )


# ---- exported models ------------------------------------------------------------------------


def sidecar_path(model_file: str | Path) -> Path:
    model_file = Path(model_file)
    return model_file.with_name(model_file.name + ".json")


def sidecar(ckpt: dict, fmt: str, strategy: str) -> dict:
    """What a user of the exported file needs, model file aside (export writes it as JSON)."""
    tf, clean = ckpt["transform"], ckpt["clean"]
    size = int(tf["image_size"])
    resize = tf.get("resize_size") or transforms.resize_size(size)
    return {
        "format": fmt,
        "version": SIDECAR_VERSION,
        "strategy": strategy,
        "arch": ckpt["arch"],
        "classes": list(ckpt["classes"]),
        "input": {
            "name": "image",
            "shape": ["batch", 3, size, size],
            "dtype": "float32",
            "layout": "NCHW, RGB",
        },
        "output": {
            "name": "logits",
            "shape": ["batch", len(ckpt["classes"])],
            "note": "softmax gives the class probabilities",
        },
        "normalisation": {"mean": list(tf["mean"]), "std": list(tf["std"])},
        "image_size": size,
        "resize_size": resize,
        "clean": dict(clean),
        "preprocessing": [
            "decode the file; apply its EXIF orientation; RGB (transparency composited on white)",
            f"downscale so the shorter side is at most {clean['max_short_side']} px (OpenCV "
            f"INTER_AREA); encode as JPEG at quality {clean['jpeg_quality']} and decode again "
            "(as the clean stage stored every training image)",
            f"resize so the shorter side is {resize} px (bilinear, antialiased)",
            f"centre-crop {size}x{size} px",
            "scale to [0, 1], then (x - mean) / std per channel",
        ],
    }


class _OnnxModel:
    """ONNX Runtime session as a callable on torch tensors."""

    def __init__(self, path: Path, threads: int | None):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime's own types (InvalidProtobuf, Fail, ...)
            raise StageError(f"{path}: not a readable ONNX model ({first_line(exc)})") from None
        self.input = self.session.get_inputs()[0].name

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        arr = np.ascontiguousarray(x.detach().float().cpu().numpy())
        return torch.from_numpy(self.session.run(None, {self.input: arr})[0])


def _load_exported(path: Path, fmt: str, threads: int | None) -> Callable:
    if fmt == "onnx":
        return _OnnxModel(path, threads)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)  # torch.jit is deprecated
        try:
            return torch.jit.load(str(path), map_location="cpu").eval()
        except Exception as exc:  # torch.jit raises RuntimeError for a torn or foreign file
            raise StageError(
                f"{path}: not a readable TorchScript model ({first_line(exc)})"
            ) from None


class _Normalisation(BaseModel):
    model_config = ConfigDict(strict=True, allow_inf_nan=False)
    mean: list[float] = Field(min_length=3, max_length=3)
    std: list[Annotated[float, Field(gt=0)]] = Field(min_length=3, max_length=3)


class _Sidecar(BaseModel):
    """The keys of `<file>.json` that loading relies on (the others are for people)."""

    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)
    format: Literal["onnx", "torchscript"]
    classes: list[str] = Field(min_length=2)
    image_size: int = Field(ge=16, le=1024)
    resize_size: Optional[int] = Field(None, ge=16, le=2048)  # absent in older sidecars
    normalisation: _Normalisation
    clean: dict


def read_sidecar(model_file: Path) -> dict:
    """The sidecar beside `model_file`, checked: a missing key or a bad value names the file and
    the key."""
    side = sidecar_path(model_file)
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise StageError(f"{side}: not valid JSON ({exc}); re-run `dvc repro export`") from None
    try:
        _Sidecar.model_validate(meta)
    except ValidationError as exc:
        raise StageError(
            f"{side}: {_first_problem(exc)}; re-run `dvc repro export` for a sidecar that fits"
        ) from None
    return meta


def _check_outputs(model: Callable, meta: dict, path: Path) -> None:
    """One forward pass on a blank input: the file must take the sidecar's input size and give
    one logit per class it lists (a sidecar that lost a class would mislabel every image)."""
    size = meta["image_size"]
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, 3, size, size))
    except Exception as exc:
        raise StageError(
            f"{path}: does not run on a {size}x{size} input as its sidecar says ({first_line(exc)})"
        ) from None
    if tuple(out.shape) != (1, len(meta["classes"])):
        raise StageError(
            f"{path}: gives {tuple(out.shape)[1:]} outputs per image but its sidecar "
            f"{sidecar_path(path).name} lists {len(meta['classes'])} classes"
        )


def from_exported(path: Path, threads: int | None = None) -> Bundle:
    meta = read_sidecar(path)
    model = _load_exported(path, meta["format"], threads)
    _check_outputs(model, meta, path)
    return Bundle(
        model=model,
        classes=list(meta["classes"]),
        image_size=meta["image_size"],
        resize_size=meta.get("resize_size"),
        mean=list(meta["normalisation"]["mean"]),
        std=list(meta["normalisation"]["std"]),
        clean=_clean_of(meta, sidecar_path(path)),
        kind=meta["format"],
        source=str(path),
        meta=meta,
    )


def load(path: str | Path, threads: int | None = None) -> Bundle:
    """A checkpoint, or an exported model when its sidecar `<file>.json` is beside it."""
    path = Path(path)
    if not path.is_file():
        raise StageError(
            f"{path}: model not found; train one (dvc repro) or give --model "
            "models/<strategy>.pt or an exported file (export/model.onnx)"
        )
    if sidecar_path(path).is_file():
        return from_exported(path, threads)
    if path.suffix == ".onnx":
        raise StageError(
            f"{path}: no sidecar {sidecar_path(path).name} beside it; export "
            "writes one (class names, input size, preprocessing)"
        )
    return from_checkpoint(path)


# ---- the pretrained backbone as it came ------------------------------------------------------


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet-1k class names in index order, as torchvision ships them (no download;
    the packaged EfficientNet-Lite0 and timm's ImageNet models use the same order)."""
    from torchvision.models import get_model_weights

    return list(get_model_weights("resnet18").DEFAULT.meta["categories"])


def imagenet(arch: str, clean: Clean | None = None) -> Bundle:
    """`arch` with its pretrained weights and original 1000-class head, fed at 224 px."""
    model = models.backbone(arch, "pretrained").eval()
    mean, std = models.norm_stats(arch)
    return Bundle(
        model=model,
        classes=imagenet_classes(),
        image_size=IMAGENET_SIZE,
        resize_size=transforms.resize_size(IMAGENET_SIZE, models.crop_pct(arch)),
        mean=mean,
        std=std,
        clean=clean or Clean(),
        kind="imagenet",
        source=arch,
    )
