"""Copying a user's local folder (a class-folder dataset for download, `predict.images` for
predict): regular files and folders only, like extract's rule for archive members.

A FIFO would block the copy forever, a socket or device has no bytes to copy, a symlink loop
never ends, and a symlink to something outside the folder would copy files the user never put
there. Each is refused, naming the entry, before anything is copied; symlinks that stay inside the
folder are followed and copied as the files they point to.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

from transferline.config.errors import StageError


def entries(src: Path) -> list[tuple[Path, bool]]:
    """(path relative to the folder, is a folder) for everything under `src`, sorted; raises
    StageError naming the first entry a copy must refuse. The validate stage calls it for the
    folders a run will copy, so a bad entry is refused before DVC deletes anything."""
    root = Path(src).resolve()
    out: list[tuple[Path, bool]] = []
    pending = [Path()]
    while pending:
        rel = pending.pop()
        for entry in sorted(os.scandir(root / rel), key=lambda e: e.name):
            path = rel / entry.name
            kind = _kind(root, root / path)
            if kind == "folder":
                out.append((path, True))
                pending.append(path)
            else:
                out.append((path, False))
    return sorted(out)


def _kind(root: Path, path: Path) -> str:
    """ "file" or "folder"; StageError for anything a copy must not follow or cannot read."""
    if path.is_symlink():
        try:
            target = path.resolve(strict=True)
        except (OSError, RuntimeError):  # a loop (ELOOP / RuntimeError) or a dangling link
            raise StageError(
                f"{path}: a symlink that loops or points nowhere; remove it or replace it "
                "with the file itself"
            ) from None
        if not target.is_relative_to(root):
            raise StageError(
                f"{path}: a symlink to {target}, outside {root}; copy the file into the "
                "folder instead (a copy never follows a link out of the folder)"
            )
        if target.is_dir():  # inside the folder: its files are listed where they really are
            raise StageError(
                f"{path}: a symlink to a folder ({target}); its files would be copied twice; "
                "remove the link"
            )
    mode = path.stat().st_mode
    if stat.S_ISDIR(mode):
        return "folder"
    if stat.S_ISREG(mode):
        return "file"
    what = "a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"
    raise StageError(f"{path}: {what}, not a regular file; remove it from the folder")


def copy_folder(src: Path, dest: Path) -> int:
    """Copy the tree at `src` to `dest` (created), every entry checked first; returns the number
    of files copied. `src` itself may be a symlink: the folder it names is what is copied."""
    root = Path(src).resolve()
    listing = entries(root)
    dest.mkdir(parents=True)
    for rel, is_dir in listing:
        if is_dir:
            (dest / rel).mkdir()
        else:
            shutil.copyfile(root / rel, dest / rel)
    return sum(1 for _, is_dir in listing if not is_dir)
