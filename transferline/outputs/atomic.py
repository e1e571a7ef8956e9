"""Writing stage outputs so that an interrupted run leaves the previous output (or none), never a
half-written one: a folder is built beside its final place and swapped in by renames
(`staged_dir`), a file is written in a temporary folder beside it and renamed over the old one
(`written`, and `write_bytes`, `write_text`, `write_json` on top of it). Every output of every
stage is written through one of these two.

Temporaries are named `.<name>.tmp-<pid>...` (git-ignored). A run killed with SIGKILL cannot
delete its own, so every write first removes those whose process is gone (`remove_stale`).
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from transferline.config.errors import DISK_ERRORS, WRITE_ERRORS, StageError, disk_error

SOURCES = "sources.json"  # data/raw's and data/extracted's list of their entries, in params order
CHUNK = 1 << 20  # bytes per read/write when streaming or copying a file (1 MiB)


def remove(path: Path) -> None:
    """Delete a file, link or folder if it is there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _tmp_prefix(out: Path) -> str:
    return f".{out.name}.tmp-"


def _old(out: Path) -> Path:
    return out.with_name(f".{out.name}.old")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # a leftover of an earlier process that had our id: not in use by us
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def remove_stale(out: Path) -> None:
    """Remove what killed runs left beside `out`: temporaries of dead processes, and the
    previous output parked by `replace_dir` (put back when the swap did not finish)."""
    out = Path(out)
    if not out.parent.is_dir():
        return
    pattern = re.compile(re.escape(_tmp_prefix(out)) + r"(\d+)")
    for path in out.parent.iterdir():
        match = pattern.match(path.name)
        if match and not _alive(int(match.group(1))):
            remove(path)
    old = _old(out)
    if old.exists() and not (out.exists() or out.is_symlink()):
        os.replace(old, out)  # killed between the two renames: the previous output comes back
    remove(old)


def replace_dir(tmp: Path, out: Path) -> None:
    """Put the finished folder `tmp` where `out` is, by renames only."""
    old = _old(out)
    remove(old)
    if out.exists() or out.is_symlink():
        os.replace(out, old)
    os.replace(tmp, out)
    remove(old)


@contextmanager
def _disk_errors(out: Path, folder: Path) -> Iterator[None]:
    """A full, read-only or forbidden file system while writing `out` becomes a StageError
    naming `folder` (the output folder, or a file's parent)."""
    try:
        yield
    except OSError as exc:
        err = disk_error(exc, folder) if _writing(exc, out) else None
        if err is None:
            raise  # not this output's file system (an input, a bug): run_main judges it
        raise err from None


@contextmanager
def _temporary_dir(out: Path) -> Iterator[Path]:
    """An empty `.<name>.tmp-<pid>` folder beside `out` (what killed runs left removed first),
    deleted when the block ends unless it was moved away."""
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(out)
    # a plain mkdir, not tempfile.mkdtemp: mkdtemp makes the folder 0700, and this folder (or
    # what is written in it) becomes the output; the pid makes the name unique among live
    # processes
    tmp = out.with_name(f"{_tmp_prefix(out)}{os.getpid()}")
    tmp.mkdir()
    try:
        yield tmp
    finally:
        remove(tmp)  # already gone after a successful swap


@contextmanager
def staged_dir(out: Path) -> Iterator[Path]:
    """An empty folder beside `out` to build the new output in; it replaces `out` when the
    block ends normally and is deleted when it raises (or is interrupted), leaving `out` as it
    was. A full, read-only or forbidden file system raises StageError naming `out`."""
    out = Path(out)
    with _disk_errors(out, out), _temporary_dir(out) as tmp:
        yield tmp
        replace_dir(tmp, out)


@contextmanager
def written(path: Path) -> Iterator[Path]:
    """The one temporary-then-rename rule for a file: yields where to write `path`'s new content
    (the same file name, in a `.<name>.tmp-<pid>` folder beside it: torch.save records the name
    inside its zip), moved over `path` when the block ends normally, deleted when it raises or
    is interrupted. A full or read-only disk raises StageError naming the folder, also when it
    reaches us as torch's RuntimeError from its zip writer."""
    path = Path(path)
    with _disk_errors(path, path.parent), _temporary_dir(path) as tmp:
        try:
            yield tmp / path.name
        except RuntimeError as exc:  # torch.save's zip writer: no errno, only its own words
            free = shutil.disk_usage(path.parent).free  # the torn temporary is still there
            if free < CHUNK:
                raise StageError(
                    f"cannot write in {path.parent}: No space left on device; "
                    f"{DISK_ERRORS[errno.ENOSPC]}"
                ) from None
            if "write" not in str(exc).lower():
                raise
            raise StageError(
                f"cannot write in {path.parent}: writing {path.name} failed "
                f"({free // 1024} KiB free); free some space there (or point the output "
                "elsewhere) and re-run"
            ) from None
        os.replace(tmp / path.name, path)


def _writing(exc: OSError, out: Path) -> bool:
    """Whether `exc` is about `out`, its temporary or its parent folder (not an input)."""
    if exc.filename is None and exc.filename2 is None:
        return exc.errno in WRITE_ERRORS  # a failed write() or close() names no file
    for name in (exc.filename, exc.filename2):
        if name is None:
            continue
        path = Path(name)
        if path == out.parent or any(
            p.parent == out.parent and (p == out or p.name.startswith(f".{out.name}."))
            for p in (path, *path.parents)
        ):
            return True
    return False


def write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically, readable as open() would make it."""
    with written(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: Path, text: str) -> None:
    """Write `text` (UTF-8, \\n line ends) to `path` atomically."""
    with written(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)


def json_text(obj: Any) -> str:
    """Deterministic JSON: sorted keys, 2-space indent, UTF-8 kept, trailing newline."""
    # allow_nan=False: a NaN or inf reaching an output is a bug to see, not a file that is no JSON
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n"


def require_file(path: Path, stage: str) -> Path:
    """`path`, a file another stage writes; missing, a StageError saying which stage makes it."""
    path = Path(path)
    if not path.is_file():
        raise StageError(f"{path}: not found; run `dvc repro {stage}` to produce it")
    return path


def read_json(path: Path, stage: str) -> Any:
    """Another stage's JSON output; missing or broken, a StageError saying which stage makes it."""
    path = require_file(path, stage)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise StageError(f"{path}: not valid JSON ({exc}); re-run `dvc repro {stage}`") from None


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json_text(obj))
