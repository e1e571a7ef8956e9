"""transferline/data/datasets.py: the split files, the image dataset and loaders whose order and
augmentation depend on the seed only."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from transferline.config.errors import StageError
from transferline.config.params import Augment
from transferline.data import datasets as data
from transferline.data.transforms import train_transform

from helpers import make_clean_split


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, Path]:
    return make_clean_split(tmp_path_factory.mktemp("data"))


def _epochs(loader, n=2) -> list[torch.Tensor]:
    return [torch.cat([x for x, _ in loader]) for _ in range(n)]


def test_loader_order_and_augmentation_depend_on_the_seed_only(dataset):
    clean, split = dataset
    tf = train_transform(image_size=24, augment=Augment(), mean=[0.5] * 3, std=[0.5] * 3)
    rows = data.read_rows(split, "train")

    def batches(workers, seed=0, cache_bytes=data.CACHE_FILE_BYTES):
        ds = data.ImageDataset(clean, rows, tf, cache_bytes=cache_bytes)
        return _epochs(
            data.make_loader(
                ds, batch_size=4, shuffle=True, workers=workers, seed=seed, device="cpu"
            )
        )

    ref = batches(0)
    assert not torch.equal(ref[0], ref[1])  # a new order and new augmentation each epoch
    for other in (batches(2), batches(0, cache_bytes=0)):  # workers / no in-memory cache
        assert all(torch.equal(a, b) for a, b in zip(ref, other))
    assert not torch.equal(batches(0, seed=1)[0], ref[0])


def test_split_files_errors_name_the_file(tmp_path):
    with pytest.raises(StageError, match="classes.json: not found; run the split stage"):
        data.read_classes(tmp_path)
    (tmp_path / "train.csv").write_text("path,label,class\nimages/a/0.jpg,x,a\n")
    with pytest.raises(StageError, match="train.csv: a label is not an integer"):
        data.read_rows(tmp_path, "train")
    (tmp_path / "val.csv").write_text("path,label,class\nimages/a/0.jpg,0,a\n")
    with pytest.raises(StageError, match="images/a/0.jpg: listed in the split but missing"):
        data.ImageDataset(tmp_path / "clean", data.read_rows(tmp_path, "val"), None)
