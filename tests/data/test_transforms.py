"""transferline/data/transforms.py: decoding, the train/eval/TTA pipelines and their inverse."""

from __future__ import annotations

import warnings

import cv2
import numpy as np
import pytest
import torch

from transferline.config.params import Augment
from transferline.data.transforms import (
    denormalize,
    eval_transform,
    read_image,
    resize_size,
    train_transform,
    tta_transform,
)

from helpers import write_image

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
NO_AUG = Augment(crop_scale=[1.0, 1.0], hflip=0.0, rotation=0.0, color_jitter=0.0)


def _gradient(h=60, w=80) -> torch.Tensor:
    """(3, h, w) uint8 with position-dependent values, so crops and flips are distinguishable."""
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([x * 3 % 256, y * 4 % 256, (x + y) % 256]).astype(np.uint8)
    return torch.from_numpy(img)


def test_read_image_is_rgb_uint8_chw(tmp_path):
    red = np.zeros((20, 30, 3), np.uint8)
    red[..., 0] = 220
    img = read_image(write_image(tmp_path / "red.jpg", red))
    assert img.dtype == torch.uint8 and img.shape == (3, 20, 30)
    assert img[0].float().mean() > 200 and img[1:].float().mean() < 30  # R stays channel 0

    gray = write_image(tmp_path / "gray.png", np.full((10, 12, 3), 90, np.uint8), ext=".png")
    assert read_image(gray).shape == (3, 10, 12)


@pytest.mark.parametrize("dataset", ["hymenoptera", "pets"])
def test_read_image_gives_the_old_decoders_pixels_on_cleaned_real_images(dataset, request):
    """read_image replaced torchvision.io.decode_image (deprecated): same pixels on every JPEG
    clean writes from the shared real datasets."""
    tvio = pytest.importorskip("torchvision.io")
    images = sorted(request.getfixturevalue(dataset)["out"].rglob("*.jpg"))[::4]  # ~270 in all
    assert len(images) > 50
    different = []
    for path in images:
        with warnings.catch_warnings():  # the reference itself is the deprecated API
            warnings.simplefilter("ignore", DeprecationWarning)
            old = tvio.decode_image(str(path), mode=tvio.ImageReadMode.RGB)
        if not torch.equal(read_image(path), old):
            different.append(path.name)
    assert different == []


def test_resize_size_keeps_the_224_to_256_ratio():
    assert resize_size(224) == 256
    assert resize_size(96) == 110


def test_eval_transform_resizes_crops_and_normalises():
    img = torch.full((3, 50, 70), 128, dtype=torch.uint8)
    out = eval_transform(image_size=32, mean=[0.5] * 3, std=[0.5] * 3)(img)
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    assert torch.allclose(out, torch.full_like(out, (128 / 255 - 0.5) / 0.5), atol=1e-5)


def test_denormalize_inverts_normalisation():
    img = _gradient()
    out = eval_transform(image_size=40, mean=MEAN, std=STD)(img)
    back = denormalize(out, MEAN, STD)
    assert back.min() >= 0 and back.max() <= 1
    plain = eval_transform(image_size=40, mean=[0, 0, 0], std=[1, 1, 1])(img)
    assert torch.allclose(back, plain, atol=1e-5)
    assert torch.allclose(denormalize(out[None], MEAN, STD)[0], back)  # batched too


@pytest.mark.parametrize(
    "h, w, rows, cols",
    [(40, 60, slice(0, 40), slice(10, 50)), (60, 40, slice(10, 50), slice(0, 40))],
)
def test_train_transform_without_augmentation_is_a_plain_centre_square(h, w, rows, cols):
    # shorter side already 40: no resampling, so the output is exactly the middle square
    img = _gradient(h, w)
    tf = train_transform(image_size=40, augment=NO_AUG, mean=[0] * 3, std=[1] * 3)
    expected = img[:, rows, cols].float() / 255
    out = tf(img)
    # within float rounding of /255; a crop one pixel off differs by >= 1/255 somewhere
    assert out.shape == expected.shape and torch.allclose(out, expected, rtol=0, atol=1e-6)
    assert torch.equal(tf(img), out)  # no randomness left


def test_train_transform_without_augmentation_scales_the_shorter_side():
    img = _gradient(60, 90)  # 1.5x the 40 px output in both directions
    out = train_transform(image_size=40, augment=NO_AUG, mean=[0] * 3, std=[1] * 3)(img)
    square = img[:, :, 15:75].permute(1, 2, 0).numpy()  # the middle 60x60 of the original
    expected = cv2.resize(square, (40, 40), interpolation=cv2.INTER_AREA)
    got = (out * 255).round().permute(1, 2, 0).numpy()
    inner = (slice(2, -2), slice(2, -2))  # edges: the resize of the whole image sees past them
    assert np.abs(got[inner] - expected[inner]).max() <= 2


def test_train_transform_augments_reproducibly_from_the_seed():
    tf = train_transform(image_size=32, augment=Augment(), mean=MEAN, std=STD)
    img = _gradient()
    torch.manual_seed(1)
    a = [tf(img) for _ in range(3)]
    torch.manual_seed(1)
    b = [tf(img) for _ in range(3)]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], a[1])  # the augmentation is random from draw to draw
    assert a[0].shape == (3, 32, 32) and a[0].dtype == torch.float32


@pytest.mark.parametrize("flip,views", [(False, 5), (True, 10)])
def test_tta_gives_five_crops_and_their_mirror_images(flip, views):
    img = _gradient()
    out = tta_transform(image_size=32, mean=MEAN, std=STD, flip=flip)(img)
    assert out.shape == (views, 3, 32, 32)
    centre = eval_transform(image_size=32, mean=MEAN, std=STD)(img)
    assert torch.allclose(out[4], centre)  # FiveCrop order: 4 corners, then the centre
    assert all(
        not torch.equal(out[i], out[j])  # every view is a different crop
        for i in range(views)
        for j in range(i)
    )
    if flip:
        # 38 px wide, 32 px crops: an even margin, so the mirrored centre crop is exact
        narrow = _gradient(37, 38)
        out = tta_transform(image_size=32, mean=MEAN, std=STD, flip=True)(narrow)
        centre = eval_transform(image_size=32, mean=MEAN, std=STD)(narrow)
        assert torch.allclose(out[9], centre.flip(-1))
