"""Reading the split manifests, a Dataset over data/clean, and seeded DataLoaders.

Shared by train and evaluate. Rows come from data/split/<split>.csv (`path,label,class`, path
relative to data/clean); classes from data/split/classes.json (index = label).

Random augmentation does not depend on the number of DataLoader workers: the loader's sampler
draws, with a generator seeded from `seed`, the order of the rows and one seed per sample per
epoch, and the dataset seeds the transform with it. So `train.workers` changes speed only.
"""

from __future__ import annotations

import copy
import csv
import json
import random
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from transferline.config.errors import StageError
from transferline.data.transforms import read_image

# Decoded images are kept in memory when the dataset's JPEG files add up to at most this many
# bytes. Decoded uint8 is roughly 6-10x a quality-95 JPEG, so the default holds <= ~350 MB;
# the demo (~3 MB) and hymenoptera (~16 MB) fit, PetImages does not. Decoding is ~1 ms of the
# ~5 ms a 224 px training sample costs on one CPU core, so this is a small win, not a necessity.
CACHE_FILE_BYTES = 32 * 2**20


def read_classes(split_dir: str | Path) -> list[str]:
    path = Path(split_dir) / "classes.json"
    try:
        classes = json.loads(path.read_text(encoding="utf-8"))["classes"]
    except FileNotFoundError:
        raise StageError(f"{path}: not found; run the split stage first") from None
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise StageError(f'{path}: not a {{"classes": [...]}} file ({exc})') from None
    if not classes or not all(isinstance(c, str) for c in classes):
        raise StageError(f"{path}: `classes` must be a non-empty list of names")
    return classes


def read_rows(split_dir: str | Path, split: str) -> list[tuple[str, int]]:
    """[(path relative to data/clean, label)] from <split_dir>/<split>.csv, in file order."""
    path = Path(split_dir) / f"{split}.csv"
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if not {"path", "label"} <= set(reader.fieldnames or ()):
                raise StageError(f"{path}: needs columns path,label (has {reader.fieldnames})")
            return [(r["path"], int(r["label"])) for r in reader]
    except FileNotFoundError:
        raise StageError(f"{path}: not found; run the split stage first") from None
    except ValueError as exc:
        raise StageError(f"{path}: a label is not an integer ({exc})") from None


class ImageDataset(Dataset):
    """(transform(uint8 (3, H, W) image), label) for rows [(path under clean_dir, label)]."""

    def __init__(
        self,
        clean_dir: str | Path,
        rows: Sequence[tuple[str, int]],
        transform: Callable | None,
        *,
        cache_bytes: int = CACHE_FILE_BYTES,
    ):
        self.root = Path(clean_dir)
        self.rows = list(rows)
        self.transform = transform
        self.cache: list[torch.Tensor] | None = None
        missing = [p for p, _ in self.rows if not (self.root / p).is_file()]
        if missing:
            raise StageError(
                f"{self.root / missing[0]}: listed in the split but missing "
                f"({len(missing)} files missing); re-run clean and split"
            )
        size = sum((self.root / p).stat().st_size for p, _ in self.rows)
        if size <= cache_bytes:
            # decoded once in the main process; forked workers share it copy-on-write
            self.cache = [self._decode(i) for i in range(len(self.rows))]

    def __len__(self) -> int:
        return len(self.rows)

    def with_transform(self, transform: Callable | None) -> "ImageDataset":
        """The same rows and decoded images under another transform (nothing decoded again)."""
        other = copy.copy(self)
        other.transform = transform
        return other

    def image(self, i: int) -> torch.Tensor:
        """The decoded uint8 (3, H, W) image of row i, before any transform."""
        return self.cache[i] if self.cache is not None else self._decode(i)

    def _decode(self, i: int) -> torch.Tensor:
        path = self.root / self.rows[i][0]
        try:
            return read_image(path)
        except ValueError:
            raise StageError(f"{path}: cannot be decoded; re-run the clean stage") from None

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        """key: a row index, or (row index, seed) from SeededSampler for the random transform."""
        i, seed = key if isinstance(key, tuple) else (key, None)
        img = self.image(i)
        if self.transform is None:
            return img, self.rows[i][1]
        if seed is None:
            return self.transform(img), self.rows[i][1]
        with torch.random.fork_rng(devices=[]):  # the caller's RNG stream is left untouched
            torch.manual_seed(seed)
            return self.transform(img), self.rows[i][1]


class SeededSampler(Sampler):
    """Yields (index, per-sample seed), in a seeded random or the natural order.

    With several processes (`world` > 1) every rank draws the same order and seeds and keeps
    positions rank, rank + world, ...: consecutive batches of b = batch / world per rank add up
    to the one-process batches. `pad` (training) repeats the first positions so every rank gets
    the same number of samples, as DDP's equal step counts need; without it (validation) the
    last ranks may get one sample fewer. With `weights` (one per sample; train.balance: sampler)
    a shuffled epoch draws n indices with replacement in proportion to them instead of a
    permutation.
    """

    def __init__(
        self,
        n: int,
        *,
        shuffle: bool,
        generator: torch.Generator,
        rank: int = 0,
        world: int = 1,
        pad: bool = False,
        weights: torch.Tensor | None = None,
    ):
        self.n, self.shuffle, self.generator = n, shuffle, generator
        self.rank, self.world, self.pad = rank, world, pad
        self.weights = weights

    def __len__(self) -> int:
        return len(range(self.rank, self._total(), self.world))

    def _total(self) -> int:
        return -(-self.n // self.world) * self.world if self.pad else self.n

    def __iter__(self):
        if not self.shuffle:
            order = torch.arange(self.n)
        elif self.weights is not None:
            order = torch.multinomial(self.weights, self.n, True, generator=self.generator)
        else:
            order = torch.randperm(self.n, generator=self.generator)
        seeds = torch.randint(0, 2**62, (self.n,), generator=self.generator)
        if self.world > 1:
            keep = torch.arange(self.rank, self._total(), self.world) % self.n
            order, seeds = order[keep], seeds[keep]
        return iter(zip(order.tolist(), seeds.tolist()))


def _seed_worker(worker_id: int) -> None:
    # torch's RNG in a worker is already seeded from the loader's generator; give Python's and
    # NumPy's RNGs the same seed, and keep each worker to one thread (the trainer has the rest)
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)
    torch.set_num_threads(1)


def make_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    shuffle: bool,
    workers: int,
    seed: int,
    device: torch.device | str,
    drop_last: bool = False,
    rank: int = 0,
    world: int = 1,
    pad: bool = False,
    weights: torch.Tensor | None = None,
) -> DataLoader:
    """A DataLoader whose order and augmentation depend only on `seed` (for an ImageDataset;
    other datasets: on `seed` and `workers`). With `world` > 1 processes, this rank's share
    (see SeededSampler); `batch_size` is then per process. `weights`: per-sample weights of a
    weighted draw (ImageDataset only)."""
    # Two generators: the DataLoader draws worker base seeds from its own once per iterator,
    # which happens once with persistent workers but every epoch without workers; the sampler's
    # stream must not depend on that.
    generator = torch.Generator().manual_seed(seed)
    if isinstance(dataset, ImageDataset):
        sampler_gen = torch.Generator().manual_seed(seed)
        order = dict(
            sampler=SeededSampler(
                len(dataset),
                shuffle=shuffle,
                generator=sampler_gen,
                rank=rank,
                world=world,
                pad=pad,
                weights=weights,
            )
        )
    else:
        order = dict(shuffle=shuffle)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=workers,
        **order,
        generator=generator,
        worker_init_fn=_seed_worker,
        pin_memory=torch.device(device).type == "cuda",
        persistent_workers=workers > 0,
        drop_last=drop_last,
    )
