"""Tiny datasets in exactly the official upstream layouts, for the cifar10 and flowers102 presets.

- CIFAR-10, python version: `cifar-10-python.tar.gz` holding `cifar-10-batches-py/` with
  `data_batch_1..5`, `test_batch` and `batches.meta`, each pickled the way the originals were:
  by Python 2's cPickle, protocol 2, where every string is a Python 2 `str` (BINSTRING opcodes,
  read back as bytes) and numpy's globals carry numpy 1's module names.
- Oxford Flowers 102: `102flowers.tgz` (`jpg/image_00001.jpg` ...), `imagelabels.mat` (`labels`,
  1 x N, 1..102) and `setid.mat` (`trnid`, `valid`, `tstid`, 1-based ids), written with scipy.
"""

from __future__ import annotations

import io
import pickle
import struct
import tarfile
from pathlib import Path

import cv2
import numpy as np
import scipy.io

CIFAR_NAMES = [
    b"airplane",
    b"automobile",
    b"bird",
    b"cat",
    b"deer",
    b"dog",
    b"frog",
    b"horse",
    b"ship",
    b"truck",
]
CIFAR_BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


class Py2Pickler(pickle._Pickler):
    """Protocol-2 pickles as Python 2 wrote them: bytes and str both as py2 `str` (BINSTRING),
    numpy's reconstruct function under `numpy.core.multiarray` (numpy 1's name)."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj):
        data = obj.encode("ascii") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str
    dispatch[str] = save_py2_str

    def save_global(self, obj, name=None):
        module = getattr(obj, "__module__", "").replace("numpy._core", "numpy.core")
        self.write(pickle.GLOBAL + f"{module}\n{name or obj.__qualname__}\n".encode())
        self.memoize(obj)

    dispatch[type] = save_global


def py2_pickle(obj) -> bytes:
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def cifar_batch(label_seed: int, n: int, batch: str) -> dict:
    """One batch dict as in the originals: b'batch_label', b'labels', b'data', b'filenames'."""
    rng = np.random.default_rng(label_seed)
    labels = [i % len(CIFAR_NAMES) for i in range(n)]  # every class in every batch
    return {
        b"batch_label": f"{batch} of 6".encode(),
        b"labels": labels,
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"filenames": [f"img_{label_seed}_{i:06d}.png".encode() for i in range(n)],
    }


def tar_gz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def cifar_members(per_batch: int = 10) -> dict[str, bytes]:
    """{member name: pickle bytes} of the official tarball, editable before packing."""
    members = {
        f"cifar-10-batches-py/{b}": py2_pickle(cifar_batch(i, per_batch, b))
        for i, b in enumerate(CIFAR_BATCHES)
    }
    members["cifar-10-batches-py/batches.meta"] = py2_pickle(
        {b"num_cases_per_batch": per_batch, b"label_names": CIFAR_NAMES, b"num_vis": 3072}
    )
    return members


def flowers_images(n: int, side: int = 24) -> dict[str, bytes]:
    """{`jpg/image_00001.jpg`: JPEG bytes, ...}: noise images, so no two are byte-identical."""
    rng = np.random.default_rng(7)
    out = {}
    for i in range(1, n + 1):
        ok, buf = cv2.imencode(".jpg", rng.integers(0, 256, (side, side, 3), dtype=np.uint8))
        assert ok
        out[f"jpg/image_{i:05d}.jpg"] = buf.tobytes()
    return out


def mat_bytes(variables: dict) -> bytes:
    buf = io.BytesIO()
    scipy.io.savemat(buf, variables)
    return buf.getvalue()


def flowers_files(classes: int = 12) -> dict[str, bytes]:
    """The three official files for 3 images per class (one each in train, val, test): image
    i + 1 has label i % classes + 1; ids as MATLAB doubles in 1 x N rows, like the originals."""
    n = 3 * classes
    labels = np.array([[i % classes + 1 for i in range(n)]], dtype=np.float64)
    ids = np.arange(1, n + 1, dtype=np.float64)
    return {
        "102flowers.tgz": tar_gz(flowers_images(n)),
        "imagelabels.mat": mat_bytes({"labels": labels}),
        "setid.mat": mat_bytes(
            {
                "trnid": ids[None, :classes],
                "valid": ids[None, classes : 2 * classes],
                "tstid": ids[None, 2 * classes :],
            }
        ),
    }


def write_files(folder: Path, files: dict[str, bytes]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder
