"""extract: good zip/tar(.gz/.bz2/.xz)/folder sources unpack; hostile archives (zip-slip,
absolute paths, links, devices, bombs, too many members, lying headers) stop the stage with the
archive and member named, write nothing anywhere, and leave a previous output intact."""

from __future__ import annotations

import io
import json
import os
import random
import stat
import struct
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
import yaml

from transferline.config.errors import StageError
from transferline.config.params import Extract
from transferline.data.extract import dir_name, extract_all

from helpers import ROOT

FILES = {
    "imgs/a/1.jpg": b"\xff\xd8one",
    "imgs/a/2.jpg": b"\xff\xd8two",
    "imgs/b/3.jpg": b"\xff\xd8three",
}


# ---- building archives ----------------------------------------------------------------------


def zip_bytes(
    members: list[tuple[zipfile.ZipInfo | str, bytes]], method=zipfile.ZIP_STORED
) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as zf:
        for info, data in members:
            zf.writestr(info, data)
    return buf.getvalue()


def tar_bytes(members: list[tuple[tarfile.TarInfo, bytes]], mode="w") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:
        for info, data in members:
            info.size = len(data) if info.isreg() else 0
            tf.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buf.getvalue()


def tar_entry(name: str, kind=tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, link, 0o644
    if kind == tarfile.CHRTYPE:
        info.devmajor, info.devminor = 1, 3  # /dev/null
    return info


def zip_link(name: str, target: str) -> tuple[zipfile.ZipInfo, bytes]:
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16  # how Info-ZIP stores a symlink
    return info, target.encode()


def make_raw(root: Path, sources: dict[str, bytes | None], splits=None) -> Path:
    """root/raw with the given files (None = a copy of FILES as a folder) and sources.json."""
    raw = root / "raw"
    raw.mkdir(parents=True)
    for name, data in sources.items():
        if data is None:
            for rel, content in FILES.items():
                (raw / name / rel).parent.mkdir(parents=True, exist_ok=True)
                (raw / name / rel).write_bytes(content)
        else:
            (raw / name).write_bytes(data)
    splits = splits or {}
    listing = [{"name": n, "url": None, "sha256": None, "split": splits.get(n)} for n in sources]
    (raw / "sources.json").write_text(json.dumps(listing))
    return raw


def tree(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def everything(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


# ---- good archives --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mode, name",
    [
        ("w", "a.tar"),
        ("w:gz", "a.tar.gz"),
        ("w:bz2", "a.tar.bz2"),
        ("w:xz", "a.tar.xz"),
        ("w:gz", "a.tgz"),
    ],
)
def test_tar_formats(tmp_path, mode, name):
    data = tar_bytes([(tar_entry(n), d) for n, d in FILES.items()], mode)
    raw = make_raw(tmp_path, {name: data})
    done = extract_all(raw, tmp_path / "out", Extract())
    assert tree(tmp_path / "out" / "a") == FILES
    assert (done[0].dir, done[0].files, done[0].bytes) == ("a", 3, sum(map(len, FILES.values())))


def test_zip_folder_and_order_of_sources(tmp_path):
    raw = make_raw(
        tmp_path,
        {"train.zip": zip_bytes(list(FILES.items()), zipfile.ZIP_DEFLATED), "photos": None},
        splits={"train.zip": "train", "photos": "test"},
    )
    extract_all(raw, tmp_path / "out", Extract())
    assert tree(tmp_path / "out" / "train") == FILES
    assert tree(tmp_path / "out" / "photos") == FILES
    assert json.loads((tmp_path / "out" / "sources.json").read_text()) == [
        {"dir": "train", "split": "train"},
        {"dir": "photos", "split": "test"},
    ]


def test_detected_by_content_not_extension(tmp_path):
    raw = make_raw(
        tmp_path,
        {
            "looks_like.tar.gz": zip_bytes(list(FILES.items())),
            "download": tar_bytes([(tar_entry("x.jpg"), b"x")], "w:xz"),
        },
    )
    extract_all(raw, tmp_path / "out", Extract())
    assert tree(tmp_path / "out" / "looks_like") == FILES
    assert tree(tmp_path / "out" / "download") == {"x.jpg": b"x"}


def test_macos_litter_is_skipped(tmp_path):
    litter = {
        "__MACOSX/imgs/a/._1.jpg": b"\x00\x05\x16\x07",
        "imgs/.DS_Store": b"Bud1",
        "imgs/a/.DS_Store": b"Bud1",
    }
    raw = make_raw(
        tmp_path,
        {
            "z.zip": zip_bytes(list({**FILES, **litter}.items())),
            "t.tar.gz": tar_bytes(
                [(tar_entry(n), d) for n, d in {**FILES, **litter}.items()], "w:gz"
            ),
        },
    )
    (raw / "folder" / "a").mkdir(parents=True)
    (raw / "folder" / "a" / ".DS_Store").write_bytes(b"Bud1")
    (raw / "folder" / "a" / "1.jpg").write_bytes(b"\xff\xd8")
    sources = json.loads((raw / "sources.json").read_text())
    (raw / "sources.json").write_text(json.dumps(sources + [{"name": "folder", "split": None}]))
    extract_all(raw, tmp_path / "out", Extract())
    assert tree(tmp_path / "out" / "z") == FILES
    assert tree(tmp_path / "out" / "t") == FILES
    assert tree(tmp_path / "out" / "folder") == {"a/1.jpg": b"\xff\xd8"}


def test_dir_names():
    assert [
        dir_name(n)
        for n in (
            "hymenoptera_data.zip",
            "flower_photos.tgz",
            "x.tar.xz",
            "rps-test-set.zip",
            "weird",
            ".zip",
        )
    ] == ["hymenoptera_data", "flower_photos", "x", "rps-test-set", "weird", ".zip"]


# ---- hostile archives -----------------------------------------------------------------------


def _zeros_zip(nbytes: int) -> bytes:
    return zip_bytes([("zeros.bin", bytes(nbytes))], zipfile.ZIP_DEFLATED)


def _lying_zip() -> bytes:
    """A stored member whose headers declare 10 bytes but hold 1000 (the CRC is of the 1000)."""
    data = bytearray(zip_bytes([("imgs/liar.jpg", b"x" * 1000)]))
    local, central = data.find(b"PK\x03\x04"), data.find(b"PK\x01\x02")
    struct.pack_into("<I", data, local + 22, 10)  # uncompressed size, local header
    struct.pack_into("<I", data, central + 24, 10)  # uncompressed size, central directory
    return bytes(data)


SMALL = Extract(max_total_bytes=25_000_000, max_ratio=100, max_members=50)

HOSTILE = {  # id -> (archive name, bytes, offending member)
    "zip_slip": (
        "a.zip",
        lambda: zip_bytes([*FILES.items(), ("../evil.txt", b"x")]),
        "../evil.txt",
    ),
    "zip_slip_nested": (
        "a.zip",
        lambda: zip_bytes([("imgs/../../evil.txt", b"x")]),
        "imgs/../../evil.txt",
    ),
    "zip_absolute": (
        "a.zip",
        lambda: zip_bytes([(zipfile.ZipInfo("/tmp/evil.txt"), b"x")]),
        "/tmp/evil.txt",
    ),
    "zip_drive_letter": ("a.zip", lambda: zip_bytes([("C:/evil.txt", b"x")]), "C:/evil.txt"),
    "zip_backslash_slip": ("a.zip", lambda: zip_bytes([("..\\evil.txt", b"x")]), "..\\evil.txt"),
    "zip_symlink_out": (
        "a.zip",
        lambda: zip_bytes([zip_link("imgs/link", "../../outside")]),
        "imgs/link",
    ),
    "zip_bomb": ("bomb.zip", lambda: _zeros_zip(50_000_000), "zeros.bin"),
    "zip_too_many": (
        "many.zip",
        lambda: zip_bytes([(f"f{i:03}.jpg", b"x") for i in range(60)]),
        "f050.jpg",
    ),
    "zip_too_big": (
        "big.zip",
        lambda: zip_bytes([("a.bin", bytes(15_000_000)), ("b.bin", bytes(15_000_000))]),
        "b.bin",
    ),
    "zip_lying_header": ("liar.zip", _lying_zip, "imgs/liar.jpg"),
    "tar_slip": (
        "a.tar.gz",
        lambda: tar_bytes([(tar_entry("../evil.txt"), b"x")], "w:gz"),
        "../evil.txt",
    ),
    "tar_absolute": (
        "a.tar",
        lambda: tar_bytes([(tar_entry("/tmp/evil.txt"), b"x")]),
        "/tmp/evil.txt",
    ),
    "tar_symlink_out": (
        "a.tar",
        lambda: tar_bytes([(tar_entry("imgs/link", tarfile.SYMTYPE, "../../outside"), b"")]),
        "imgs/link",
    ),
    "tar_symlink_abs": (
        "a.tar",
        lambda: tar_bytes([(tar_entry("passwd", tarfile.SYMTYPE, "/etc/passwd"), b"")]),
        "passwd",
    ),
    "tar_hardlink_out": (
        "a.tar",
        lambda: tar_bytes([(tar_entry("imgs/hard", tarfile.LNKTYPE, "../outside.txt"), b"")]),
        "imgs/hard",
    ),
    "tar_device": (
        "a.tar",
        lambda: tar_bytes([(tar_entry("dev/null", tarfile.CHRTYPE), b"")]),
        "dev/null",
    ),
    "tar_fifo": ("a.tar", lambda: tar_bytes([(tar_entry("pipe", tarfile.FIFOTYPE), b"")]), "pipe"),
    "tar_bomb": (
        "bomb.tar.gz",
        lambda: tar_bytes([(tar_entry("zeros.bin"), bytes(20_000_000))], "w:gz"),
        "zeros.bin",
    ),
    "tar_too_many": (
        "many.tar",
        lambda: tar_bytes([(tar_entry(f"f{i:03}.jpg"), b"x") for i in range(60)]),
        "f050.jpg",
    ),
    "tar_too_big": (
        "big.tar",
        lambda: tar_bytes(
            [(tar_entry("a.bin"), bytes(15_000_000)), (tar_entry("b.bin"), bytes(15_000_000))]
        ),
        "b.bin",
    ),
}
LIMIT_KEY = {
    "zip_bomb": "max_ratio",
    "tar_bomb": "max_ratio",
    "zip_too_many": "max_members",
    "tar_too_many": "max_members",
    "zip_too_big": "max_total_bytes",
    "tar_too_big": "max_total_bytes",
}


@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_archive_is_refused(tmp_path, case):
    name, build, member = HOSTILE[case]
    root = tmp_path / "project"
    raw = make_raw(root, {name: build()})
    before = everything(tmp_path)
    with pytest.raises(StageError) as err:
        extract_all(raw, root / "extracted", SMALL)
    msg = str(err.value)
    assert name in msg and repr(member) in msg, msg
    assert case not in LIMIT_KEY or f"`extract.{LIMIT_KEY[case]}`" in msg, msg
    assert everything(tmp_path) == before  # nothing written anywhere: no out, no temp, no evil
    assert not Path("/tmp/evil.txt").exists()


def test_refused_archive_keeps_previous_output(tmp_path):
    raw = make_raw(tmp_path / "good", {"a.zip": zip_bytes(list(FILES.items()))})
    out = tmp_path / "out"
    extract_all(raw, out, Extract())
    before = tree(out)
    bad = make_raw(tmp_path / "bad", {"a.zip": zip_bytes([("../evil.txt", b"x")])})
    with pytest.raises(StageError):
        extract_all(bad, out, Extract())
    assert tree(out) == before


GOOD_TGZ = tar_bytes([(tar_entry("noise.bin"), random.Random(0).randbytes(200_000))], "w:gz")


@pytest.mark.parametrize(
    "name, data, expected",
    [
        ("notes.zip", b"just text", "neither a zip nor a tar"),
        ("gone.zip", None, "missing"),
        ("cut.tar.gz", GOOD_TGZ[: len(GOOD_TGZ) // 2], "corrupt or truncated tar"),
    ],
)
def test_not_an_archive(tmp_path, name, data, expected):
    raw = make_raw(tmp_path, {name: data or b""})
    if data is None:
        (raw / name).unlink()
    with pytest.raises(StageError, match=expected) as err:
        extract_all(raw, tmp_path / "out", Extract())
    assert name in str(err.value)
    assert not (tmp_path / "out").exists()


def test_missing_sources_json(tmp_path):
    (tmp_path / "raw").mkdir()
    with pytest.raises(StageError, match="run the download stage first"):
        extract_all(tmp_path / "raw", tmp_path / "out", Extract())


# ---- the CLI --------------------------------------------------------------------------------


def test_cli_exit_statuses(tmp_path, params_raw):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params_raw, sort_keys=False))
    make_raw(
        tmp_path / "data",
        {
            "a.zip": zip_bytes(list(FILES.items())),
            "b.tar": tar_bytes([(tar_entry("../evil"), b"x")]),
        },
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "stages.extract", "--raw", "data/raw", "--out", "data/ex"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "'../evil'" in proc.stderr and "b.tar" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "data/ex").exists()

    (tmp_path / "data/raw/sources.json").write_text(json.dumps([{"name": "a.zip"}]))
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert tree(tmp_path / "data/ex/a") == FILES


EMPTY = {
    "empty.zip": zip_bytes([]),
    "folders.zip": zip_bytes(
        [
            (zipfile.ZipInfo("imgs/a/"), b""),
            ("__MACOSX/imgs/._1.jpg", b"fork"),
            ("imgs/.DS_Store", b""),
        ]
    ),
    "empty.tar.gz": tar_bytes([(tar_entry("imgs", tarfile.DIRTYPE), b"")], "w:gz"),
}


@pytest.mark.parametrize("name", EMPTY)
def test_cli_refuses_an_archive_without_files(tmp_path, params_raw, name):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params_raw, sort_keys=False))
    make_raw(tmp_path / "data", {"good.zip": zip_bytes(list(FILES.items())), name: EMPTY[name]})
    proc = subprocess.run(
        [sys.executable, "-m", "stages.extract", "--raw", "data/raw", "--out", "data/ex"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.splitlines()
    assert line.startswith(f"error: {Path('data/raw') / name}: holds no files")
    assert "`url:`" in line
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["raw"]  # nothing written


def test_an_empty_folder_source_is_refused(tmp_path):
    raw = make_raw(tmp_path, {})
    (raw / "mine" / "cats").mkdir(parents=True)
    (raw / "sources.json").write_text(json.dumps([{"name": "mine"}]))
    with pytest.raises(StageError, match="mine: holds no files"):
        extract_all(raw, tmp_path / "out", Extract())
