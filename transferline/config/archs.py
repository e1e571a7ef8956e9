"""The backbone names `strategies.<s>.arch` accepts and which of them have ImageNet weights,
without importing torch.

validate checks params.yaml before every `dvc repro` and `dvc exp run`; importing torch and
torchvision would be most of its run (several seconds), for nothing but a list of names.
transferline/models/registry.py builds each of them: its `ARCHS` registry has exactly these keys (a
test keeps the two equal).
"""

from __future__ import annotations

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


def check(arch: str, weights: str) -> None:
    """Fail before any work when `arch`/`weights` cannot be built (`weights` is already
    pretrained | none, see params.Strategy)."""
    if arch not in PRETRAINED:
        raise StageError(f"unknown arch {arch!r}; choose one of {', '.join(PRETRAINED)}")
    if weights == "pretrained" and not PRETRAINED[arch]:
        raise StageError(
            f"{arch} has no pretrained weights (it is a small CNN for training from "
            "scratch); use `weights: none`"
        )
