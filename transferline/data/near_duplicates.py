"""Near-duplicates: the same picture resized, re-cropped or re-encoded, found by a perceptual hash.

The hash is the 64-bit difference hash (dHash): the greyscale image shrunk to 9x8 pixels
(OpenCV INTER_AREA), one bit per horizontally adjacent pair, set where the left pixel is
brighter. Resizing and re-encoding leave it nearly unchanged; two images whose hashes differ in
at most `threshold` bits (`split.near_duplicate_bits`) are the same picture. The clean stage stores
each image's hash in the manifest (`dhash`, 16 hex digits); the split stage groups the images
(`groups`) so that a group is carved into one split, and reports groups that the dataset itself
ships across splits.

Measured (4 bits, the default): resized and JPEG-re-encoded copies of the hymenoptera photos are
0-2 bits from their originals, a crop of 1% per side at most 4, of 2% 1-8 (caught about half the
time). On ../shared/datasets/caltech101-subset the 4-bit threshold finds all seven cross-split
pairs its SOURCE.md lists, plus five look-alike pairs of plain objects on white (Motorbikes,
metronome, wrench); at 6 bits 30 cross-split pairs, mostly such look-alikes. Larger re-crops
need a hash of another kind.

A hash is 20 lines of NumPy on OpenCV, which we already decode with; the maintained `imagehash`
package computes the same dHash but through PIL and SciPy, for no gain here.
"""

from __future__ import annotations

import cv2
import numpy as np

HASH_SIDE = 8  # 8 x 8 = 64 bits
CHUNK = 2048  # rows of the pairwise comparison held at once (CHUNK x N bytes of distances)


def dhash(image: np.ndarray) -> str:
    """The 64-bit difference hash of a greyscale (or BGR, as OpenCV decodes) uint8 image, as 16
    hex digits."""
    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image
    small = cv2.resize(grey, (HASH_SIDE + 1, HASH_SIDE), interpolation=cv2.INTER_AREA)
    bits = (small[:, 1:] < small[:, :-1]).flatten()
    return f"{int(np.packbits(bits).view('>u8')[0]):016x}"


def _popcount(x: np.ndarray) -> np.ndarray:
    """Set bits of each uint64 (NumPy 2's bitwise_count when present)."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x)
    return np.unpackbits(x.view(np.uint8).reshape(*x.shape, 8), axis=-1).sum(axis=-1)


def pairs(hashes: list[str], threshold: int) -> list[tuple[int, int]]:
    """Index pairs (i < j) whose hashes differ in at most `threshold` bits."""
    if not hashes:
        return []
    values = np.array([int(h, 16) for h in hashes], dtype=np.uint64)
    out = []
    for start in range(0, len(values), CHUNK):
        block = values[start : start + CHUNK]
        dist = _popcount(block[:, None] ^ values[None, :])
        for i, j in zip(*np.nonzero(dist <= threshold)):
            i = int(i) + start
            if i < int(j):
                out.append((i, int(j)))
    return out


def groups(hashes: list[str], threshold: int, same: list[tuple[int, int]] = ()) -> list[int]:
    """A group id per image (the smallest index in its group): near-duplicates by hash, and
    the extra pairs in `same` (exact copies), joined transitively (union-find)."""
    parent = list(range(len(hashes)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in [*pairs(hashes, threshold), *same]:
        a, b = root(i), root(j)
        if a != b:
            parent[max(a, b)] = min(a, b)
    return [root(i) for i in range(len(hashes))]
