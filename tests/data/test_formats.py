"""The cifar10 and flowers102 presets: tiny archives in the exact official layouts (Python-2
pickled CIFAR batches, scipy-written .mat files) converted by extract into class folders, refused
when malformed, and run download -> extract -> clean -> split under real DVC from a real HTTP
server on 127.0.0.1 at the official URLs' paths."""

from __future__ import annotations

import csv
import json
import pickle
import typing
from pathlib import Path
from urllib.parse import urlsplit

import cv2
import numpy as np
import pytest

from transferline.config.errors import ParamsError, StageError
from transferline.config.params import DatasetFormat, Extract, validate
from transferline.data.extract import extract_all
from transferline.data.formats import CONVERTERS

from helpers import DVC, make_project_repo, run
from official_archives import (
    CIFAR_NAMES,
    cifar_batch,
    cifar_members,
    flowers_files,
    flowers_images,
    mat_bytes,
    py2_pickle,
    tar_gz,
    write_files,
)

NAMES = [n.decode() for n in CIFAR_NAMES]
# batch file -> the seed official_archives built it from
CIFAR_BATCHES_INDEX = {f"data_batch_{i}": i - 1 for i in range(1, 6)} | {"test_batch": 5}


def make_raw(root: Path, files: dict[str, bytes], fmt: str) -> Path:
    """root/raw as download leaves it for a `format:` dataset."""
    raw = write_files(root / "raw", files)
    listing = [
        {"name": n, "url": None, "sha256": None, "split": None, "format": fmt} for n in files
    ]
    (raw / "sources.json").write_text(json.dumps(listing))
    return raw


def tree(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def cifar_raw(root: Path, members: dict[str, bytes] | None = None) -> Path:
    return make_raw(root, {"cifar-10-python.tar.gz": tar_gz(members or cifar_members())}, "cifar10")


# ---- cifar10 --------------------------------------------------------------------------------


def test_cifar10_becomes_class_folders_with_the_exact_pixels(tmp_path):
    done = extract_all(cifar_raw(tmp_path), tmp_path / "out", Extract())

    out = tmp_path / "out"
    assert json.loads((out / "sources.json").read_text()) == [{"dir": "cifar10", "split": None}]
    assert [(d.dir, d.files) for d in done] == [("cifar10", 60)]
    for split, n in (("train", 5), ("test", 1)):  # 10 images a batch, one per class
        assert sorted(p.name for p in (out / "cifar10" / split).iterdir()) == sorted(NAMES)
        assert all(len(list((out / "cifar10" / split / c).iterdir())) == n for c in NAMES)
    batch = cifar_batch(CIFAR_BATCHES_INDEX["data_batch_3"], 10, "data_batch_3")
    for i in (0, 7):
        png = out / "cifar10/train" / NAMES[batch[b"labels"][i]] / f"data_batch_3_{i:05d}.png"
        rgb = cv2.cvtColor(cv2.imread(str(png)), cv2.COLOR_BGR2RGB)
        # row = 1024 red, 1024 green, 1024 blue values, each plane 32 x 32 row-major
        planes = batch[b"data"][i].reshape(3, 32, 32)
        assert np.array_equal(rgb, planes.transpose(1, 2, 0))
    assert not list(tmp_path.glob(".*"))  # no work folder left behind


def test_cifar10_conversion_is_deterministic(tmp_path):
    extract_all(cifar_raw(tmp_path / "a"), tmp_path / "a/out", Extract())
    extract_all(cifar_raw(tmp_path / "b"), tmp_path / "b/out", Extract())
    assert tree(tmp_path / "a/out") == tree(tmp_path / "b/out")


def _edit_batch(name: str, **changes) -> dict[str, bytes]:
    """The official members with one batch's keys replaced (data=..., labels=...)."""
    members = cifar_members()
    batch = cifar_batch(CIFAR_BATCHES_INDEX[name], 10, name)
    batch.update({k.encode(): v for k, v in changes.items()})
    members[f"cifar-10-batches-py/{name}"] = py2_pickle(batch)
    return members


class RunsACommand:
    """A pickle that calls os.system when loaded by an ordinary unpickler."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def _without(member: str) -> dict[str, bytes]:
    members = cifar_members()
    del members[f"cifar-10-batches-py/{member}"]
    return members


CIFAR_BROKEN = {
    "missing batch": (lambda: _without("data_batch_4"), "data_batch_4: missing"),
    "missing meta": (lambda: _without("batches.meta"), "batches.meta: missing"),
    "wrong shape": (
        lambda: _edit_batch("data_batch_2", data=np.zeros((10, 3000), np.uint8)),
        r"shape \(N, 3072\).*\(10, 3000\)",
    ),
    "wrong dtype": (
        lambda: _edit_batch("test_batch", data=np.zeros((10, 3072), np.int64)),
        "must be a uint8 array",
    ),
    "label out of range": (
        lambda: _edit_batch("data_batch_5", labels=[10] + [0] * 9),
        r"label 10 of image 0 is out of range 0\.\.9",
    ),
    "labels not matching rows": (
        lambda: _edit_batch("data_batch_1", labels=[0] * 9),
        "list of 10 ints",
    ),
    "binary version": (
        lambda: {k.replace("-py/", "-bin/"): v for k, v in cifar_members().items()},
        "exactly one cifar-10-batches-py/ folder",
    ),
    "not a pickle": (
        lambda: {**cifar_members(), "cifar-10-batches-py/test_batch": b"junk"},
        "test_batch: not a CIFAR-10 python batch",
    ),
}


@pytest.mark.parametrize("case", sorted(CIFAR_BROKEN))
def test_malformed_cifar10_is_refused_naming_the_file(tmp_path, case):
    members, expected = CIFAR_BROKEN[case]
    raw = cifar_raw(tmp_path, members())
    with pytest.raises(StageError, match=expected):
        extract_all(raw, tmp_path / "out", Extract())
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".*"))


def test_hostile_pickle_runs_no_code(tmp_path):
    marker = tmp_path / "pwned"
    members = cifar_members()
    members["cifar-10-batches-py/batches.meta"] = py2_pickle(
        {b"label_names": CIFAR_NAMES, b"x": RunsACommand(marker)}
    )
    pickle.loads(py2_pickle(RunsACommand(tmp_path / "proof")))  # a plain load would run it
    assert (tmp_path / "proof").exists()

    raw = cifar_raw(tmp_path, members)
    refused = r"batches.meta.*refused to load (posix|os)\.system"
    with pytest.raises(StageError, match=refused) as err:
        extract_all(raw, tmp_path / "out", Extract())
    assert str(raw / "cifar-10-python/cifar-10-batches-py/batches.meta") in str(err.value)
    assert not marker.exists()


# ---- flowers102 -----------------------------------------------------------------------------


def flowers_raw(root: Path, **replace: bytes) -> Path:
    return make_raw(root, {**flowers_files(), **replace}, "flowers102")


def test_flowers102_official_split_and_zero_padded_classes(tmp_path):
    files = flowers_files()  # 12 classes, image i+1 has label i % 12 + 1; ids 1-12 train, ...
    extract_all(make_raw(tmp_path, files, "flowers102"), tmp_path / "out", Extract())

    root = tmp_path / "out/flowers102"
    classes = [f"{c:03d}" for c in range(1, 13)]
    for split, first in (("train", 1), ("val", 13), ("test", 25)):
        assert sorted(p.name for p in (root / split).iterdir()) == classes
        assert {p.relative_to(root / split).as_posix() for p in (root / split).rglob("*.jpg")} == {
            f"{(i - 1) % 12 + 1:03d}/image_{i:05d}.jpg" for i in range(first, first + 12)
        }
    originals = flowers_images(36)
    assert (root / "val/010/image_00022.jpg").read_bytes() == originals["jpg/image_00022.jpg"]


def _setid(**rows) -> bytes:
    ids = {
        "trnid": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12],
        "valid": list(range(13, 25)),
        "tstid": list(range(25, 37)),
    }
    ids.update(rows)
    return mat_bytes({k: np.array([v], dtype=np.float64) for k, v in ids.items()})


def _labels(values) -> bytes:
    return mat_bytes({"labels": np.array(values, dtype=np.float64)})


FLOWERS_BROKEN = {
    "label 0": (
        dict(**{"imagelabels.mat": _labels([[0] + [1] * 35])}),
        r"imagelabels.mat: label 0 of image 1 is out of range 1\.\.102",
    ),
    "label 103": (
        dict(**{"imagelabels.mat": _labels([[1] * 35 + [103]])}),
        r"label 103 of image 36 is out of range",
    ),
    "labels not a row": (
        dict(**{"imagelabels.mat": _labels([[1] * 18, [2] * 18])}),
        r"'labels' must be a 1 x N row.*\(2, 18\)",
    ),
    "fractional label": (dict(**{"imagelabels.mat": _labels([[1.5] * 36])}), "non-integer"),
    "id in two splits": (
        dict(**{"setid.mat": _setid(valid=list(range(12, 24)))}),
        "image id 12 is in both 'trnid' and 'valid'",
    ),
    "id out of range": (
        dict(**{"setid.mat": _setid(tstid=list(range(25, 38)))}),
        r"'tstid' lists image id 37, out of range 1\.\.36",
    ),
    "missing variable": (
        dict(**{"setid.mat": mat_bytes({"trnid": np.ones((1, 3))})}),
        "no variable 'valid'",
    ),
    "missing image": (
        dict(
            **{
                "102flowers.tgz": tar_gz(
                    {k: v for k, v in flowers_images(36).items() if k != "jpg/image_00030.jpg"}
                )
            }
        ),
        r"lacks 1 image.*jpg/image_00030.jpg",
    ),
    "not a mat file": (
        dict(**{"setid.mat": b"<html>moved</html>"}),
        "setid.mat: not a readable MATLAB file",
    ),
}


@pytest.mark.parametrize("case", sorted(FLOWERS_BROKEN))
def test_malformed_flowers102_is_refused_naming_the_file(tmp_path, case):
    replace, expected = FLOWERS_BROKEN[case]
    with pytest.raises(StageError, match=expected):
        extract_all(flowers_raw(tmp_path, **replace), tmp_path / "out", Extract())
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".*"))


def test_local_folders_in_the_official_layout_are_converted_too(tmp_path):
    """`url:` may name the unpacked folders (cifar-10-batches-py/, jpg/) instead of the archives."""
    raw = tmp_path / "raw"  # as download copies a local folder source: under its own name
    write_files(
        raw / "cifar-10-batches-py", {k.split("/")[1]: v for k, v in cifar_members().items()}
    )
    (raw / "sources.json").write_text(
        json.dumps([{"name": "cifar-10-batches-py", "split": None, "format": "cifar10"}])
    )
    assert extract_all(raw, tmp_path / "out", Extract())[0].files == 60


def test_flowers102_without_its_label_file_names_all_three(tmp_path):
    files = flowers_files()
    del files["imagelabels.mat"]
    with pytest.raises(StageError, match="102flowers.tgz, imagelabels.mat and setid.mat"):
        extract_all(make_raw(tmp_path, files, "flowers102"), tmp_path / "out", Extract())


# ---- params ---------------------------------------------------------------------------------


def test_every_format_has_a_converter():
    assert set(CONVERTERS) == set(typing.get_args(DatasetFormat)) - {"folders"}


@pytest.mark.parametrize(
    "entry, expected",
    [
        ({"format": "cifar10", "generate": {}}, "give `archives:`"),
        (
            {"format": "flowers102", "archives": [{"url": "x.tgz", "split": "train"}]},
            "remove `split:`",
        ),
        ({"format": "cifar100", "archives": [{"url": "x.tgz"}]}, "format"),
    ],
)
def test_bad_format_params_are_refused(params_raw, entry, expected):
    params_raw["datasets"]["mine"] = entry
    with pytest.raises(ParamsError, match=expected):
        validate(params_raw)


def test_presets_point_at_the_official_files(params_raw):
    params = validate(params_raw)
    urls = {
        name: [urlsplit(a.url).path.rsplit("/", 1)[1] for a in params.datasets[name].archives]
        for name in ("cifar10", "flowers102")
    }
    assert urls == {
        "cifar10": ["cifar-10-python.tar.gz"],
        "flowers102": ["102flowers.tgz", "imagelabels.mat", "setid.mat"],
    }
    assert params.datasets["cifar10"].format == "cifar10"
    assert params.datasets["flowers102"].format == "flowers102"


# ---- end to end under DVC -------------------------------------------------------------------


def serve_preset(server, params_raw: dict, name: str, files: dict[str, bytes]) -> dict:
    """Serve `files` at the paths of the preset's official URLs; point the preset at them."""
    params_raw["dataset"] = name
    for archive in params_raw["datasets"][name]["archives"]:
        path = urlsplit(archive["url"]).path
        server.files[path] = files[path.rsplit("/", 1)[1]]
        archive["url"] = server.url(path)
    return params_raw


def read_split(repo: Path) -> tuple[list[str], dict, dict[str, list[dict]]]:
    classes = json.loads((repo / "data/split/classes.json").read_text())["classes"]
    metrics = json.loads((repo / "metrics/split.json").read_text())
    rows = {
        s: list(csv.DictReader((repo / f"data/split/{s}.csv").open()))
        for s in ("train", "val", "test")
    }
    return classes, metrics, rows


def source_of(repo: Path) -> dict[str, str]:
    """clean's image path -> the extracted file it came from."""
    return {
        r["path"]: r["source"] for r in csv.DictReader((repo / "data/clean/manifest.csv").open())
    }


@pytest.mark.slow
def test_cifar10_preset_over_http_through_split(server, tmp_path, params_raw):
    files = {"cifar-10-python.tar.gz": tar_gz(cifar_members())}
    repo = make_project_repo(tmp_path / "repo", serve_preset(server, params_raw, "cifar10", files))

    run(DVC + ["repro", "split"], repo)

    assert [p for p, _ in server.log] == ["/~kriz/cifar-10-python.tar.gz"]
    clean = json.loads((repo / "metrics/clean.json").read_text())
    assert (clean["kept"], clean["rejected"]) == (60, 0)  # 32 px images pass clean.min_side
    classes, metrics, rows = read_split(repo)
    assert classes == NAMES  # alphabetical = CIFAR's own label numbers
    assert metrics["test"]["total"] == 10  # test_batch, kept whole
    assert (metrics["train"]["total"], metrics["val"]["total"]) == (40, 10)  # val carved
    sources = source_of(repo)
    for split in ("train", "val", "test"):
        for row in rows[split]:  # the label of every image is the one in its batch pickle
            batch, index = Path(sources[row["path"]]).stem.rsplit("_", 1)
            labels = cifar_batch(CIFAR_BATCHES_INDEX[batch], 10, batch)[b"labels"]
            assert int(row["label"]) == labels[int(index)]
            assert (batch == "test_batch") == (split == "test")
    assert json.loads(run(DVC + ["status", "--json", "split"], repo).stdout) == {}


@pytest.mark.slow
def test_flowers102_preset_over_http_through_split(server, tmp_path, params_raw):
    repo = make_project_repo(
        tmp_path / "repo", serve_preset(server, params_raw, "flowers102", flowers_files())
    )

    run(DVC + ["repro", "split"], repo)

    assert sorted(p for p, _ in server.log) == [
        "/~vgg/data/flowers/102/102flowers.tgz",
        "/~vgg/data/flowers/102/imagelabels.mat",
        "/~vgg/data/flowers/102/setid.mat",
    ]
    classes, metrics, rows = read_split(repo)
    assert classes == [f"{c:03d}" for c in range(1, 13)]
    assert {s: metrics[s]["total"] for s in rows} == {"train": 12, "val": 12, "test": 12}
    sources = source_of(repo)
    for split, ids in (("train", range(1, 13)), ("val", range(13, 25)), ("test", range(25, 37))):
        got = {Path(sources[r["path"]]).name: int(r["label"]) for r in rows[split]}
        # official label (i - 1) % 12 + 1, label index = official label - 1
        assert got == {f"image_{i:05d}.jpg": (i - 1) % 12 for i in ids}
