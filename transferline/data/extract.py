"""extract: unpack every archive in data/raw/ safely into data/extracted/.

Reads `data/raw/sources.json` and the files it lists, plus params.yaml (`extract`); writes, per
docs/pipeline.md, one folder per source (`hymenoptera_data.zip` -> `hymenoptera_data/`; a folder
source is copied as it is) and `data/extracted/sources.json`. Zip and tar (plain, gz, bz2, xz) are
recognised by content, not by extension. `__MACOSX/` and `.DS_Store` entries are skipped.

Anything unsafe stops the stage with the archive and member named, and nothing is written: no
absolute paths, `..` components, links, device files; at most `extract.max_members` entries and
`extract.max_total_bytes` unpacked bytes; no member (zip) or archive (tar, whose members share
one compressed stream) that expands more than `extract.max_ratio` times. Everything is unpacked
into a temporary sibling folder that is renamed over --out only when all sources succeeded.

A dataset with `format:` (recorded in sources.json by download) ships in an official layout
that is not class folders: its archives are unpacked as above (other files, such as `.mat`
label files, are taken as they are) into a work folder, and the converter of stages.formats
turns them into one folder named after the format, `<format>/<split>/<class>/<image>`.

    python -m stages.extract --raw data/raw --out data/extracted
"""

from __future__ import annotations

import json
import lzma
import re
import shutil
import stat
import sys
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterator, Optional

from tqdm import tqdm

from transferline.config.errors import StageError, disk_error
from transferline.config.params import Extract
from transferline.data.formats import CONVERTERS
from transferline.outputs.atomic import CHUNK, SOURCES, remove, staged_dir

# Longest first, so `x.tar.gz` loses `.tar.gz`, not just `.gz`.
ARCHIVE_SUFFIXES = (
    ".tar.gz",
    ".tar.bz2",
    ".tar.xz",
    ".tgz",
    ".tbz2",
    ".tbz",
    ".txz",
    ".tar",
    ".zip",
)
PROGRESS = dict(leave=False, disable=None, file=sys.stderr)  # a bar on a terminal only
SKIP_DIRS = {"__MACOSX"}  # macOS resource forks: never images
SKIP_FILES = {".DS_Store"}  # macOS Finder metadata
CORRUPT = (zipfile.BadZipFile, tarfile.TarError, zlib.error, lzma.LZMAError, EOFError)
REFETCH = (
    "if it was downloaded, delete its copy in the download cache (.cache/downloads) "
    "and run the pipeline again"
)


@dataclass(frozen=True)
class Extracted:
    """One folder of data/extracted and what went into it."""

    dir: str
    split: Optional[str]
    files: int  # regular files written
    bytes: int  # their total size


# ---- shared by zip and tar ------------------------------------------------------------------


def unsafe_reason(name: str) -> Optional[str]:
    """Why a member name could write outside the extraction folder; None if it cannot."""
    if not name or "\x00" in name:
        return "empty name or NUL byte in the name"
    if name.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", name):
        return "absolute path"
    if ".." in re.split(r"[/\\]", name):
        return "'..' path component (would write outside the folder)"
    return None


def skipped(name: str) -> bool:
    parts = PurePosixPath(name.replace("\\", "/")).parts
    return bool(parts) and (parts[-1] in SKIP_FILES or any(p in SKIP_DIRS for p in parts))


def _refuse(archive: Path, member: str, reason: str) -> StageError:
    return StageError(
        f"{archive}: member {member!r}: {reason}. Refusing to extract this "
        "archive; nothing was written."
    )


def _limit(archive: Path, member: str, what: str, key: str) -> StageError:
    return _refuse(
        archive,
        member,
        f"{what}, over `extract.{key}` (a decompression bomb?); "
        f"if you trust this archive, raise `extract.{key}` in params.yaml",
    )


class _Budget:
    """Running totals against the limits of params `extract`, for one archive."""

    def __init__(self, archive: Path, limits: Extract):
        self.archive, self.limits = archive, limits
        self.members = self.files = self.bytes = 0

    def member(self, name: str) -> None:
        self.members += 1
        if self.members > self.limits.max_members:
            raise _limit(self.archive, name, f"entry number {self.members}", "max_members")

    def add(self, name: str, nbytes: int) -> None:
        self.bytes += nbytes
        if self.bytes > self.limits.max_total_bytes:
            raise _limit(
                self.archive, name, f"unpacked size reaches {self.bytes} bytes", "max_total_bytes"
            )


# ---- zip ------------------------------------------------------------------------------------


def _zip_check(archive: Path, info: zipfile.ZipInfo, limits: Extract) -> None:
    """Refuse a member by its header: name, type, declared expansion ratio."""
    reason = unsafe_reason(info.filename)
    mode = info.external_attr >> 16  # Unix st_mode, when a Unix tool made the zip
    if reason is None and info.flag_bits & 0x1:
        reason = "encrypted (password-protected) member; unpack it yourself and use the folder"
    elif reason is None and stat.S_ISLNK(mode):
        reason = "symbolic link (links are how archives write outside their folder)"
    elif reason is None and stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
        reason = "device or special file"
    if reason:
        raise _refuse(archive, info.filename, reason)
    if info.file_size > limits.max_ratio * max(info.compress_size, 1):
        raise _limit(
            archive,
            info.filename,
            f"declares {info.file_size} bytes from {info.compress_size} compressed",
            "max_ratio",
        )


def _zip_plan(archive: Path, zf: zipfile.ZipFile, limits: Extract) -> list[zipfile.ZipInfo]:
    """Every member checked from the headers alone, before a byte is written."""
    budget = _Budget(archive, limits)
    keep = []
    for info in zf.infolist():
        budget.member(info.filename)
        _zip_check(archive, info, limits)
        if not skipped(info.filename):
            budget.add(info.filename, info.file_size)
            keep.append(info)
    return keep


def _copy_member(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, budget: _Budget, limits: Extract
) -> None:
    """Copy one member, counting the bytes really written (headers can lie)."""
    written = 0
    cap = limits.max_ratio * max(info.compress_size, 1)
    with zf.open(info) as src, open(target, "wb") as dst:
        while chunk := src.read(CHUNK):
            written += len(chunk)
            budget.add(info.filename, len(chunk))
            if written > cap:
                raise _limit(
                    budget.archive,
                    info.filename,
                    f"expands past {written} bytes from {info.compress_size} compressed",
                    "max_ratio",
                )
            dst.write(chunk)


def extract_zip(archive: Path, dest: Path, limits: Extract) -> _Budget:
    """Unpack a zip into `dest` after checking every member; returns the written totals."""
    with zipfile.ZipFile(archive) as zf:
        plan = _zip_plan(archive, zf, limits)
        written = _Budget(archive, limits)
        for info in tqdm(plan, desc=archive.name, unit="file", **PROGRESS):
            rel = PurePosixPath(info.filename.replace("\\", "/"))
            target = dest.joinpath(*rel.parts)
            if not target.resolve().is_relative_to(dest.resolve()):  # belt and braces
                raise _refuse(archive, info.filename, "resolves outside the folder")
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                _copy_member(zf, info, target, written, limits)
            # NotImplementedError: a compression method zipfile lacks (deflate64, ...)
            except CORRUPT + (OSError, NotImplementedError) as exc:
                if disk_error(exc):
                    raise  # the output's file system, not the archive: staged_dir names it
                raise _refuse(archive, info.filename, f"cannot be extracted: {exc}") from None
            written.files += 1
    return written


# ---- tar ------------------------------------------------------------------------------------


def _tar_reason(member: tarfile.TarInfo, files: set[str]) -> Optional[str]:
    """Why a tar member is refused beyond its name; `files` = regular members seen so far."""
    if member.issym():
        # All symlinks, not only those pointing out: the data filter of Python < 3.11.13 /
        # 3.12.11 could be bypassed through symlink chains (CVE-2025-4517), and image
        # datasets have no need for links.
        return f"symbolic link to {member.linkname!r} (links are refused)"
    if member.islnk() and member.linkname not in files:
        return f"hard link to {member.linkname!r}, which is not an earlier file of the archive"
    if not (member.isreg() or member.isdir() or member.islnk()):
        return "device or special file"
    return None


def _tar_members(
    archive: Path, tf: tarfile.TarFile, limits: Extract, budget: _Budget
) -> Iterator[tarfile.TarInfo]:
    """Yield the members to extract, refusing the archive at the first unsafe one."""
    packed = max(archive.stat().st_size, 1)  # tar members share one compressed stream
    files: set[str] = set()
    for member in tf:
        budget.member(member.name)
        reason = unsafe_reason(member.name) or _tar_reason(member, files)
        if reason:
            raise _refuse(archive, member.name, reason)
        if skipped(member.name):
            continue
        if member.isreg():
            budget.add(member.name, member.size)
            budget.files += 1
            files.add(member.name)
            if budget.bytes > limits.max_ratio * packed:
                raise _limit(
                    archive,
                    member.name,
                    f"the archive expands past {budget.bytes} bytes from {packed}",
                    "max_ratio",
                )
        yield member


def extract_tar(archive: Path, dest: Path, limits: Extract) -> _Budget:
    """Unpack a (compressed) tar into `dest`; returns the written totals.

    Members are checked one by one as tarfile reads them (tarfile copies exactly the declared
    size, so declared = written); the stdlib `data` filter is a second line of defence."""
    budget = _Budget(archive, limits)
    with tarfile.open(archive, "r:*") as tf:
        tf.errorlevel = 1  # filter refusals and OS errors raise instead of being logged
        try:
            members = tqdm(
                _tar_members(archive, tf, limits, budget),
                desc=archive.name,
                unit="entry",
                **PROGRESS,
            )
            tf.extractall(dest, members=members, filter="data")
        except tarfile.FilterError as exc:
            raise _refuse(archive, exc.tarinfo.name, str(exc)) from None
        except CORRUPT + (OSError,) as exc:
            if disk_error(exc):
                raise  # the output's file system, not the archive: staged_dir names it
            raise StageError(
                f"{archive}: corrupt or truncated tar archive ({exc}); {REFETCH}"
            ) from None
    return budget


# ---- sources --------------------------------------------------------------------------------


def dir_name(name: str) -> str:
    """Folder an archive unpacks into: its name without the archive extension."""
    for suffix in ARCHIVE_SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def _ignore_junk(folder: str, names: list[str]) -> set[str]:
    return {n for n in names if n in SKIP_FILES or n in SKIP_DIRS}


def _tally(dest: Path) -> Extracted:
    sizes = [p.stat().st_size for p in dest.rglob("*") if p.is_file()]
    return Extracted(dest.name, None, len(sizes), sum(sizes))


def _copy_folder(src: Path, dest: Path) -> Extracted:
    shutil.copytree(src, dest, ignore=_ignore_junk)
    return _tally(dest)


def archive_kind(src: Path) -> Optional[str]:
    """ "zip", "tar" (plain or compressed) or None for another file, judged by content."""
    try:
        if zipfile.is_zipfile(src):
            return "zip"
        return "tar" if tarfile.is_tarfile(src) else None
    except CORRUPT + (OSError,) as exc:
        raise StageError(f"{src}: cannot read the archive: {exc}") from None


def extract_source(src: Path, dest: Path, limits: Extract) -> Extracted:
    """Unpack (or copy) one entry of data/raw into `dest`, detecting the format by content."""
    if not src.exists():
        raise StageError(f"{src}: listed in {SOURCES} but missing; re-run the download stage")
    done = _copy_folder(src, dest) if src.is_dir() else _unpack(src, dest, limits)
    if done.files == 0:
        # refused here: clean and split would otherwise fail later with advice that cannot help
        raise StageError(
            f"{src}: holds no files (nothing, or only folders, __MACOSX/ and "
            ".DS_Store entries); point the dataset's `url:` in params.yaml at the "
            f"archive or folder of images, or {REFETCH}"
        )
    return done


def _unpack(src: Path, dest: Path, limits: Extract) -> Extracted:
    """Unpack a zip or (compressed) tar file into the new folder `dest`."""
    kind = archive_kind(src)
    dest.mkdir()
    if kind is None:
        raise StageError(
            f"{src}: neither a zip nor a tar archive (checked by content: another "
            "format, or a truncated file); point the dataset's `url:` at a "
            f".zip/.tar(.gz/.bz2/.xz) or a folder, or {REFETCH}"
        )
    try:
        done = {"zip": extract_zip, "tar": extract_tar}[kind](src, dest, limits)
    except CORRUPT as exc:
        raise StageError(f"{src}: corrupt archive ({exc}); {REFETCH}") from None
    return Extracted(dest.name, None, done.files, done.bytes)


def read_sources(raw: Path) -> list[dict]:
    path = raw / SOURCES
    try:
        sources = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StageError(
            f"{path} not found; run the download stage first (dvc repro download)"
        ) from None
    except json.JSONDecodeError as exc:
        raise StageError(f"{path}: not valid JSON ({exc}); re-run the download stage") from None
    for entry in sources:
        name = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(name, str) or unsafe_reason(name) or "/" in name or "\\" in name:
            raise StageError(f"{path}: bad entry {entry!r}; re-run the download stage")
    return sources


def source_format(sources: list[dict], raw: Path) -> Optional[str]:
    """The `format` all sources share (None: class folders); StageError if unknown or mixed."""
    formats = {entry.get("format") for entry in sources}
    if len(formats) > 1:
        raise StageError(
            f"{raw / SOURCES}: sources disagree on `format` "
            f"({sorted(map(str, formats))}); re-run the download stage"
        )
    fmt = formats.pop() if formats else None
    if fmt is not None and fmt not in CONVERTERS:
        raise StageError(
            f"{raw / SOURCES}: unknown format {fmt!r}, not one of "
            f"{sorted(CONVERTERS)}; re-run the download stage"
        )
    return fmt


def convert_sources(
    raw: Path, sources: list[dict], fmt: str, dest: Path, limits: Extract
) -> Extracted:
    """Unpack a `format:` dataset's archives (other files as they are) into a work folder beside
    `dest`, convert them into `dest` with CONVERTERS[fmt], then drop the work folder."""
    work = dest.with_name(f".{dest.name}.unpacked")
    work.mkdir()
    try:
        for entry in sources:
            src = raw / entry["name"]
            if src.is_file() and archive_kind(src) is None:
                shutil.copyfile(src, work / src.name)  # e.g. a .mat file the converter reads
            else:
                extract_source(src, work / dir_name(src.name), limits)
        dest.mkdir()
        CONVERTERS[fmt](work, dest)
    except StageError as exc:  # name files by data/raw (members under their archive's name),
        # not by the work folder, which is gone once this returns
        raise StageError(str(exc).replace(str(work), str(raw))) from None
    finally:
        remove(work)
    return _tally(dest)


# ---- the stage ------------------------------------------------------------------------------


def _unique_dirs(sources: list[dict], raw: Path) -> list[str]:
    dirs = [e["name"] if (raw / e["name"]).is_dir() else dir_name(e["name"]) for e in sources]
    for d in dirs:
        if dirs.count(d) > 1 or d == SOURCES:
            raise StageError(
                f"{raw / SOURCES}: two sources would unpack into {d!r}; give the "
                "archives distinct names"
            )
    return dirs


def _extract_entry(raw: Path, entry: dict, dest: Path, limits: Extract) -> Extracted:
    got = extract_source(raw / entry["name"], dest, limits)
    return Extracted(dest.name, entry.get("split"), got.files, got.bytes)


def extract_all(raw: Path, out: Path, limits: Extract) -> list[Extracted]:
    """Unpack every source listed in `raw`/sources.json into `out`; returns what was written.

    Works in a sibling temporary folder renamed over `out` at the end: a refused archive or an
    interrupt leaves the previous `out` as it was (or absent)."""
    raw, out = Path(raw), Path(out)
    sources = read_sources(raw)
    fmt = source_format(sources, raw)
    dirs = _unique_dirs(sources, raw)
    with staged_dir(out) as tmp:
        if fmt:
            done = [convert_sources(raw, sources, fmt, tmp / fmt, limits)]
        else:
            done = [_extract_entry(raw, entry, tmp / d, limits) for entry, d in zip(sources, dirs)]
        listing = [{"dir": e.dir, "split": e.split} for e in done]
        (tmp / SOURCES).write_text(json.dumps(listing, indent=2) + "\n")
    return done
