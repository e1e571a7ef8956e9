"""The one set of image transforms that train, evaluate and report share.

Everything works on uint8 CHW tensors (as `read_image` returns them) with torchvision's
transforms.v2, so a figure in the report shows exactly what the network was fed. Geometry runs
first on uint8 (cheap, and crops shrink the work for what follows); conversion to float and
normalisation come last.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torchvision.transforms import v2

from transferline.data import images

# Input normalisation of ImageNet-trained weights (torchvision's), also the small CNNs' default
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Eval resizes the shorter side to image_size / CROP_PCT, then centre-crops image_size
# (the usual 224 -> 256 ratio).
CROP_PCT = 0.875


def read_image(path: str | Path) -> torch.Tensor:
    """A file's bytes through `images.decode`, the one decoder of what the network sees, as a
    (3, H, W) uint8 RGB tensor; ValueError naming the file when it cannot be read."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read it ({exc.strerror})") from None
    return images.to_tensor(images.decode(data, path))


def resize_size(image_size: int, crop_pct: float = CROP_PCT) -> int:
    """Shorter side (px) the eval transforms resize to before the centre crop of image_size
    (crop_pct: the fraction the crop keeps; the backbone's own, see models.crop_pct)."""
    return round(image_size / crop_pct)


def _normalize(mean: Sequence[float], std: Sequence[float]) -> list:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]


def train_transform(
    *, image_size: int, augment, mean: Sequence[float], std: Sequence[float]
) -> v2.Compose:
    """Random crop/flip/rotation/colour jitter (and TrivialAugmentWide) per `augment`
    (params.Augment), then normalise (and random erasing, which works on the normalised tensor).

    crop_scale == [1, 1] means no crop augmentation: the shorter side is resized to image_size
    and the centre square kept (the whole image, as far as a square allows).
    """
    lo, hi = augment.crop_scale
    if lo == hi == 1.0:
        steps = [v2.Resize(image_size, antialias=True), v2.CenterCrop(image_size)]
    else:
        steps = [v2.RandomResizedCrop(image_size, scale=(lo, hi), antialias=True)]
    if augment.hflip > 0:
        steps.append(v2.RandomHorizontalFlip(p=augment.hflip))
    if augment.rotation > 0:
        steps.append(v2.RandomRotation(augment.rotation))
    if augment.color_jitter > 0:
        j = augment.color_jitter
        steps.append(v2.ColorJitter(brightness=j, contrast=j, saturation=j))
    if augment.trivial_augment:
        steps.append(v2.TrivialAugmentWide())
    after = [v2.RandomErasing(p=augment.random_erasing)] if augment.random_erasing > 0 else []
    return v2.Compose(steps + _normalize(mean, std) + after)


class BatchMix:
    """MixUp and/or CutMix (torchvision's v2.MixUp, v2.CutMix; one of them per batch, chosen at
    random, when both are on) on a training batch: (x, labels) -> (mixed x, soft targets).

    Its randomness comes from its own generator (seeded from params.seed, saved with the resume
    state), never from the global one, which the data loading reseeds per image in this process
    and not with workers: the mixing does not depend on train.workers.
    """

    def __init__(self, augment, num_classes: int, seed: int):
        ops = []
        if augment.mixup > 0:
            ops.append(v2.MixUp(alpha=augment.mixup, num_classes=num_classes))
        if augment.cutmix > 0:
            ops.append(v2.CutMix(alpha=augment.cutmix, num_classes=num_classes))
        self.op = ops[0] if len(ops) == 1 else v2.RandomChoice(ops)
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        seed = int(torch.randint(0, 2**62, (), generator=self.generator))
        with torch.random.fork_rng(devices=[]):  # torchvision draws from the CPU generator
            torch.manual_seed(seed)
            return self.op(x, y)


def batch_mix(augment, num_classes: int, seed: int) -> BatchMix | None:
    """The batch-level mixing `augment` asks for, or None when mixup and cutmix are 0."""
    if augment.mixup == 0 and augment.cutmix == 0:
        return None
    return BatchMix(augment, num_classes, seed)


def eval_transform(
    *,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    resize_size: int | None = None,
) -> v2.Compose:
    """Resize the shorter side to `resize_size` (default resize_size(image_size)), centre-crop
    image_size, normalise."""
    resize = resize_size or _default_resize(image_size)
    return v2.Compose(
        [v2.Resize(resize, antialias=True), v2.CenterCrop(image_size)] + _normalize(mean, std)
    )


_default_resize = resize_size


class _TTA:
    """Five crops (corners + centre) of the resized image, plus their mirror images when flip.

    A class rather than a closure so DataLoader workers can pickle it.
    """

    def __init__(self, image_size: int, mean, std, flip: bool, resize: int | None = None):
        crops = v2.TenCrop(image_size) if flip else v2.FiveCrop(image_size)
        self.resize = v2.Resize(resize or resize_size(image_size), antialias=True)
        self.crops = crops
        self.normalize = v2.Compose(_normalize(mean, std))

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        views = self.crops(self.resize(img))  # tuple of V (3, H, W) uint8
        return self.normalize(torch.stack(views))  # (V, 3, H, W) float32


def tta_transform(
    *,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    flip: bool,
    resize_size: int | None = None,
) -> _TTA:
    """Callable: uint8 (3, H, W) -> (V, 3, image_size, image_size), V = 10 with flip, else 5;
    crops of the image resized to `resize_size` (default as eval_transform)."""
    return _TTA(image_size, mean, std, flip, resize_size)


def denormalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Undo Normalize for display: (..., 3, H, W) float -> same shape in [0, 1]."""
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(3, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(3, 1, 1)
    return (x * s + m).clamp(0, 1)
