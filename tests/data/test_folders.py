"""transferline.data.folders: a user's local folder (a dataset for download, `predict.images` for
predict) is copied as regular files and folders only. A FIFO, a socket, a symlink loop, a dangling
link or a link out of the folder is refused naming the entry, by the validate stage before DVC
deletes anything and by the download stage run by hand, which leaves the previous data/raw as it
was. Links that stay inside the folder are copied as their files."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from transferline.config.errors import StageError
from transferline.data.folders import copy_folder, entries

from helpers import ROOT, make_image_folder

PREVIOUS = b"previous download\n"


def _fifo(folder: Path) -> Path:
    os.mkfifo(folder / "a" / "pipe.jpg")
    return folder / "a" / "pipe.jpg"


def _loop(folder: Path) -> Path:
    (folder / "a" / "loop1.jpg").symlink_to(folder / "a" / "loop2.jpg")
    (folder / "a" / "loop2.jpg").symlink_to(folder / "a" / "loop1.jpg")
    return folder / "a" / "loop1.jpg"


def _outside(folder: Path) -> Path:
    secret = folder.parent / "secret.txt"
    secret.write_text("not part of the dataset\n")
    (folder / "b" / "x.jpg").symlink_to(secret)
    return folder / "b" / "x.jpg"


def _dangling(folder: Path) -> Path:
    (folder / "c" / "gone.jpg").symlink_to(folder / "c" / "never-there.jpg")
    return folder / "c" / "gone.jpg"


def _socket(folder: Path) -> Path:
    path = folder / "a" / "sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.close()
    return path


ODD = {  # entry maker -> what the message says about it
    "fifo": (_fifo, "a FIFO, not a regular file; remove it from the folder"),
    "symlink loop": (_loop, "a symlink that loops or points nowhere"),
    "dangling symlink": (_dangling, "a symlink that loops or points nowhere"),
    "symlink out of the folder": (_outside, "a symlink to"),
    "socket": (_socket, "a socket, not a regular file"),
}


def _folder(tmp_path: Path, case: str) -> tuple[Path, str]:
    folder = make_image_folder(tmp_path / "photos", per_class=2, size=16)
    make, says = ODD[case]
    bad = make(folder)
    return folder, f"{bad}: {says}"


def _command(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("case", sorted(ODD))
def test_an_odd_entry_in_a_dataset_folder_is_refused_by_validate_and_download(
    case, tmp_path, params_raw
):
    folder, message = _folder(tmp_path, case)
    work = tmp_path / "project"
    (work / "data" / "raw").mkdir(parents=True)
    (work / "data" / "raw" / "old.zip").write_bytes(PREVIOUS)
    params_raw.update(dataset="local", datasets={"local": {"archives": [{"url": str(folder)}]}})
    (work / "params.yaml").write_text(yaml.safe_dump(params_raw, sort_keys=False))

    checked = _command(work, "stages.validate", "--out", "data/params.ok")
    assert checked.returncode == 2, checked.stderr
    assert f"  datasets.local.archives.0.url: {message}" in checked.stderr, checked.stderr
    assert "Traceback" not in checked.stderr
    assert not (work / "data" / "params.ok").exists()

    fetched = _command(work, "stages.download", "--out", "data/raw", "--cache", ".cache/dl")
    assert fetched.returncode == 2, fetched.stderr
    assert fetched.stderr.startswith(f"error: {message}"), fetched.stderr
    assert len(fetched.stderr.splitlines()) == 1, fetched.stderr
    assert sorted(p.name for p in (work / "data" / "raw").iterdir()) == ["old.zip"]
    assert (work / "data" / "raw" / "old.zip").read_bytes() == PREVIOUS


@pytest.mark.parametrize("case", ["fifo", "symlink out of the folder"])
def test_an_odd_entry_in_predict_images_is_refused_by_validate(case, tmp_path, params_raw):
    folder, message = _folder(tmp_path, case)
    params_raw["predict"]["images"] = str(folder)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params_raw, sort_keys=False))
    proc = _command(tmp_path, "stages.validate", "--out", "ok")
    assert proc.returncode == 2, proc.stderr
    assert f"  predict.images: {message}" in proc.stderr, proc.stderr


def test_links_inside_the_folder_are_copied_as_their_files(tmp_path):
    folder = make_image_folder(tmp_path / "photos", per_class=2, size=16)
    first = sorted((folder / "a").iterdir())[0]
    (folder / "b" / "same-as-a.jpg").symlink_to(first)
    (tmp_path / "link").symlink_to(folder)  # the folder itself may be given through a link
    assert copy_folder(tmp_path / "link", tmp_path / "copy") == 7
    copied = tmp_path / "copy" / "b" / "same-as-a.jpg"
    assert not copied.is_symlink() and copied.read_bytes() == first.read_bytes()
    assert sorted(
        p.relative_to(tmp_path / "copy").as_posix() for p in (tmp_path / "copy").rglob("*")
    ) == sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def test_a_link_to_a_folder_inside_is_refused_not_copied_twice(tmp_path):
    folder = make_image_folder(tmp_path / "photos", per_class=1, size=16)
    (folder / "again").symlink_to(folder / "a")
    with pytest.raises(StageError, match="a symlink to a folder"):
        entries(folder)
