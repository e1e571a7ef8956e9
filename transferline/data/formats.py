"""Official dataset layouts converted into the class folders the rest of the pipeline reads.

Used by the extract stage for a dataset with `format:` in params.yaml (download records it in
data/raw/sources.json). A converter reads the dataset's sources as extract left them in a work
folder (each archive unpacked into `<work>/<archive name less its extension>/`, any other file
as it is: `<work>/<file name>`) and writes `<dest>/<split>/<class>/<image>`, the layout clean
detects (split folders holding class folders). Same input bytes, same output bytes. A malformed
dataset (missing file, wrong array shape or type, label out of range) is refused with a
StageError naming the file and what is wrong, before any image is written.

  cifar10     cifar-10-python.tar.gz: cifar-10-batches-py/{data_batch_1..5, test_batch,
              batches.meta}, Python 2 pickles -> train/ (the five data batches) and test/
              (test_batch); class folders named by batches.meta's label_names (alphabetical,
              so the natural sort keeps CIFAR's own label numbers); each image a lossless PNG
              named <batch>_<index>.png. There is no official val split: split carves it.
  flowers102  102flowers.tgz (jpg/image_00001.jpg ...) + imagelabels.mat (`labels`, 1 x N, values
              1..102) + setid.mat (`trnid`, `valid`, `tstid`: 1-based image ids) -> train/, val/,
              test/ as setid says; class folders 001..102, the official label zero-padded so
              that every sort order is the numeric one (label index = official label - 1). No
              names: the official files ship none. The JPEGs are moved unchanged.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np
import scipy.io

from transferline.config.errors import StageError

REFETCH = (
    "if it was downloaded, delete its copy in the download cache (.cache/downloads) and "
    "run the pipeline again"
)

# ---- cifar10 --------------------------------------------------------------------------------

CIFAR_DIR = "cifar-10-batches-py"  # the python version's folder (not -bin, not -matlab)
CIFAR_META = "batches.meta"
CIFAR_BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
CIFAR_SIDE = 32  # px; every image is 32 x 32 RGB
CIFAR_ROW = 3 * CIFAR_SIDE**2  # 3072 bytes per image: the R, G, B planes, each row-major

# The function numpy itself pickles arrays with (numpy._core.multiarray._reconstruct).
_RECONSTRUCT = np.zeros(0).__reduce__()[0]


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickling calls whatever callables the pickle names, so a plain pickle.load of a hostile
    archive can run any code. This unpickler resolves only the globals a pickled numpy array
    needs (under numpy 1's and numpy 2's module names) and refuses every other one."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
        ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refused to load {module}.{name}: a CIFAR-10 batch "
                "holds only numpy arrays, lists and strings"
            ) from None


def _unpickle(path: Path) -> dict:
    if not path.is_file():
        raise StageError(
            f"{path}: missing; the official cifar-10-python.tar.gz holds "
            f"{CIFAR_DIR}/ with data_batch_1..5, test_batch and batches.meta"
        )
    try:
        with open(path, "rb") as f:
            # encoding="bytes": pickled by Python 2, whose `str` keys and values arrive as bytes
            obj = _NumpyOnlyUnpickler(f, encoding="bytes").load()
    except Exception as exc:  # a damaged pickle can raise almost any exception type
        raise StageError(
            f"{path}: not a CIFAR-10 python batch ({type(exc).__name__}: {exc}); {REFETCH}"
        ) from None
    if not isinstance(obj, dict):
        raise StageError(
            f"{path}: holds a {type(obj).__name__}, not the dict of a CIFAR-10 batch; {REFETCH}"
        )
    return obj


def _folder_name_ok(name: str) -> bool:
    return name not in ("", ".", "..") and not set(name) & set("/\\\x00")


def cifar_label_names(path: Path) -> list[str]:
    """batches.meta's b'label_names' as str; refused unless they are distinct folder names."""
    names = _unpickle(path).get(b"label_names")
    if (
        not isinstance(names, list)
        or len(names) < 2
        or not all(isinstance(n, bytes) for n in names)
    ):
        raise StageError(
            f"{path}: b'label_names' must be a list of at least 2 byte strings; "
            f"got {type(names).__name__}"
        )
    decoded = [n.decode("utf-8", errors="replace") for n in names]
    bad = [n for n in decoded if not _folder_name_ok(n)]
    if bad or len(set(decoded)) != len(decoded):
        raise StageError(
            f"{path}: label names must be distinct and usable as folder names "
            f"(no '/', '\\\\', '.', '..'); got {decoded}"
        )
    return decoded


def cifar_batch(path: Path, n_classes: int) -> tuple[np.ndarray, list[int]]:
    """(images (N, 32, 32, 3) uint8 RGB, labels) of one batch file, checked."""
    batch = _unpickle(path)
    data, labels = batch.get(b"data"), batch.get(b"labels")
    if not (
        isinstance(data, np.ndarray)
        and data.dtype == np.uint8
        and data.ndim == 2
        and data.shape[1] == CIFAR_ROW
        and len(data) > 0
    ):
        got = (
            f"{data.dtype} array of shape {data.shape}"
            if isinstance(data, np.ndarray)
            else type(data).__name__
        )
        raise StageError(
            f"{path}: b'data' must be a uint8 array of shape (N, {CIFAR_ROW}) "
            f"(N images of 3 x {CIFAR_SIDE} x {CIFAR_SIDE}); got {got}"
        )
    if not isinstance(labels, list) or len(labels) != len(data):
        got = len(labels) if isinstance(labels, list) else type(labels).__name__
        raise StageError(
            f"{path}: b'labels' must be a list of {len(data)} ints, one per row of "
            f"b'data'; got {got}"
        )
    for i, label in enumerate(labels):
        if type(label) is not int or not 0 <= label < n_classes:
            raise StageError(
                f"{path}: label {label!r} of image {i} is out of range 0.."
                f"{n_classes - 1} ({CIFAR_META} names {n_classes} classes)"
            )
    # (N, 3072) -> (N, 3, 32, 32) colour planes -> (N, 32, 32, 3) pixels
    return data.reshape(-1, 3, CIFAR_SIDE, CIFAR_SIDE).transpose(0, 2, 3, 1), labels


def _write_png(path: Path, rgb: np.ndarray) -> None:
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))  # OpenCV wants BGR
    assert ok, "OpenCV failed to encode a 32x32 image as PNG"
    path.write_bytes(buf.tobytes())


def _one_folder(work: Path, name: str, what: str) -> Path:
    """The single `<work>/<source>/<name>` folder (or `<work>/<name>`: a local folder source
    that is that folder itself); StageError naming what was there instead."""
    found = sorted(p for p in (*work.glob(name), *work.glob(f"*/{name}")) if p.is_dir())
    if len(found) != 1:
        there = sorted(p.relative_to(work).as_posix() for p in work.glob("*/*"))[:10]
        raise StageError(
            f"{work}: expected exactly one {name}/ folder inside {what}, found "
            f"{len(found)} (the archives hold {there}); check the dataset's "
            "`archives:` in params.yaml"
        )
    return found[0]


def convert_cifar10(work: Path, dest: Path) -> None:
    root = _one_folder(work, CIFAR_DIR, "cifar-10-python.tar.gz (the python version)")
    names = cifar_label_names(root / CIFAR_META)
    batches = {
        split: [cifar_batch(root / b, len(names)) for b in files]  # all checked first
        for split, files in CIFAR_BATCHES.items()
    }
    for split, loaded in batches.items():
        for cls in names:
            (dest / split / cls).mkdir(parents=True)
        for file, (images, labels) in zip(CIFAR_BATCHES[split], loaded):
            for i, (rgb, label) in enumerate(zip(images, labels)):
                _write_png(dest / split / names[label] / f"{file}_{i:05d}.png", rgb)


# ---- flowers102 -----------------------------------------------------------------------------

FLOWERS_CLASSES = 102  # official labels are 1..102
FLOWERS_LABELS = "imagelabels.mat"
FLOWERS_SETID = "setid.mat"
FLOWERS_SPLITS = {"train": "trnid", "val": "valid", "test": "tstid"}  # split -> setid variable
FLOWERS_FILES = "102flowers.tgz, imagelabels.mat and setid.mat (all three under `archives:`)"


def _loadmat(path: Path) -> dict:
    if not path.is_file():
        raise StageError(f"{path}: missing; the flowers102 dataset needs {FLOWERS_FILES}")
    try:
        return scipy.io.loadmat(path)
    except Exception as exc:  # scipy raises ValueError, TypeError, NotImplementedError, ...
        raise StageError(
            f"{path}: not a readable MATLAB file ({type(exc).__name__}: {exc}); {REFETCH}"
        ) from None


def mat_row(path: Path, mat: dict, key: str) -> np.ndarray:
    """Variable `key` of a loaded .mat: a 1 x N row of whole numbers, as int64 (N,)."""
    if key not in mat:
        found = sorted(k for k in mat if not k.startswith("__"))
        raise StageError(f"{path}: no variable {key!r} (it has {found}); {REFETCH}")
    arr = mat[key]
    if not (
        isinstance(arr, np.ndarray)
        and arr.ndim == 2
        and arr.shape[0] == 1
        and arr.shape[1] > 0
        and arr.dtype.kind in "iuf"
    ):
        raise StageError(
            f"{path}: {key!r} must be a 1 x N row of numbers like the official "
            f"file's; got {arr.dtype} of shape {arr.shape}"
        )
    row = arr[0]
    if not np.array_equal(row, np.round(row)):
        raise StageError(f"{path}: {key!r} holds non-integer values; {REFETCH}")
    return row.astype(np.int64)


def flowers_splits(setid: Path, n_images: int) -> dict[str, np.ndarray]:
    """{split: 1-based image ids} from setid.mat; ids in 1..n_images, no image in two splits."""
    mat = _loadmat(setid)
    splits = {split: mat_row(setid, mat, key) for split, key in FLOWERS_SPLITS.items()}
    owner: dict[int, str] = {}
    for split, ids in splits.items():
        key = FLOWERS_SPLITS[split]
        bad = ids[(ids < 1) | (ids > n_images)]
        if bad.size:
            raise StageError(
                f"{setid}: {key!r} lists image id {bad[0]}, out of range 1.."
                f"{n_images} ({FLOWERS_LABELS} labels {n_images} images)"
            )
        for i in ids.tolist():
            if i in owner:
                raise StageError(
                    f"{setid}: image id {i} is in both {FLOWERS_SPLITS[owner[i]]!r}"
                    f" and {key!r}; an image belongs to one split"
                )
            owner[i] = split
    return splits


def convert_flowers102(work: Path, dest: Path) -> None:
    path = work / FLOWERS_LABELS
    labels = mat_row(path, _loadmat(path), "labels")  # (N,) official label of image i + 1
    bad = np.flatnonzero((labels < 1) | (labels > FLOWERS_CLASSES))
    if bad.size:
        raise StageError(
            f"{path}: label {labels[bad[0]]} of image {bad[0] + 1} is out of range "
            f"1..{FLOWERS_CLASSES}"
        )
    splits = flowers_splits(work / FLOWERS_SETID, len(labels))
    jpg = _one_folder(work, "jpg", "102flowers.tgz")
    missing = [
        f"jpg/image_{i:05d}.jpg"
        for ids in splits.values()
        for i in ids.tolist()
        if not (jpg / f"image_{i:05d}.jpg").is_file()
    ]
    if missing:
        raise StageError(
            f"{jpg.parent}: 102flowers.tgz lacks {len(missing)} image(s) that "
            f"setid.mat lists, first {missing[:3]}; {REFETCH}"
        )
    for split, ids in splits.items():
        for i in ids.tolist():
            target = dest / split / f"{labels[i - 1]:03d}" / f"image_{i:05d}.jpg"
            target.parent.mkdir(parents=True, exist_ok=True)
            (jpg / target.name).replace(target)  # same file system: a rename, bytes unchanged


# `format:` in params.yaml -> converter(work folder, destination folder)
CONVERTERS: dict[str, Callable[[Path, Path], None]] = {
    "cifar10": convert_cifar10,
    "flowers102": convert_flowers102,
}
