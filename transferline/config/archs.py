"""The backbone names `strategies.<s>.arch` accepts, checked without building anything.

Two kinds of name:

- the ten built in (`PRETRAINED`): torchvision's ResNet/VGG/DenseNet/MobileNet/EfficientNet names,
  the packaged EfficientNet-Lite0 and the small cnn1..3; checked without importing torch, so
  validate stays quick on the shipped params.yaml;
- any model name timm knows (`convnext_tiny`, `vit_small_patch16_224`, a tagged
  `resnet50.a1_in1k`, ...), looked up in timm's own registry (which imports torch, only when a
  strategy names one). `timm:<name>` picks timm's model where a built-in name is the same
  (`timm:resnet18`).

`weights` is `pretrained`, `none`, or the path of a weights file (a safetensors file or a PyTorch
state dict); transferline/models/registry.py builds and loads them.
"""

from __future__ import annotations

import difflib

from transferline.config.errors import StageError

# name -> whether ImageNet weights exist for it (the cnn* are small CNNs for training from scratch)
PRETRAINED: dict[str, bool] = {
    "resnet18": True,
    "resnet50": True,
    "vgg16": True,
    "densenet169": True,
    "mobilenet_v3_small": True,
    "efficientnet_b0": True,
    "efficientnet_lite0": True,
    "cnn1": False,
    "cnn2": False,
    "cnn3": False,
}

TIMM_PREFIX = "timm:"


def timm_name(arch: str) -> str | None:
    """The timm model name `arch` stands for; None for a built-in name."""
    if arch in PRETRAINED:
        return None
    return arch.removeprefix(TIMM_PREFIX)


def is_file(weights: str) -> bool:
    """Whether `weights` names a weights file rather than `pretrained` / `none`."""
    return weights not in ("pretrained", "none")


def check(arch: str, weights: str) -> None:
    """Fail before any work when `arch`/`weights` cannot be built; an unknown name lists the
    closest names known (built in and timm's). A weights file is checked where it is read."""
    if is_file(weights):
        weights = "none"
    name = timm_name(arch)
    if name is None:
        if weights == "pretrained" and not PRETRAINED[arch]:
            raise StageError(
                f"{arch} has no pretrained weights (it is a small CNN for training from "
                "scratch); use `weights: none`"
            )
        return
    import timm

    if not timm.is_model(name):
        known = list(dict.fromkeys([*PRETRAINED, *timm.list_models()]))
        close = difflib.get_close_matches(name, known, n=5, cutoff=0.6)
        hint = f"closest: {', '.join(close)}" if close else "no close name"
        raise StageError(
            f"unknown arch {arch!r} ({hint}); use a built-in name ({', '.join(PRETRAINED)}) "
            "or any timm model name (python -c 'import timm; print(timm.list_models())')"
        )
    if weights == "pretrained" and not timm.is_model_pretrained(name):
        raise StageError(
            f"{arch}: timm publishes no pretrained weights for it; use `weights: none` or "
            "`weights: <path to a weights file>`"
        )
