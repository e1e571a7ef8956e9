"""Writing stage outputs so that an interrupted run leaves the previous output (or none), never a
half-written one: folders are built beside their final place and swapped in by renames, files are
written to a temporary name in the same folder and renamed over the old one."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any


def remove(path: Path) -> None:
    """Delete a file, link or folder if it is there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def replace_dir(tmp: Path, out: Path) -> None:
    """Put the finished folder `tmp` where `out` is, by renames only."""
    old = out.with_name(f".{out.name}.old")
    remove(old)
    if out.exists() or out.is_symlink():
        os.replace(out, old)
    os.replace(tmp, out)
    remove(old)


def write_text(path: Path, text: str) -> None:
    """Write `text` (UTF-8, \\n line ends) to `path` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def json_text(obj: Any) -> str:
    """Deterministic JSON: sorted keys, 2-space indent, UTF-8 kept, trailing newline."""
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json_text(obj))
