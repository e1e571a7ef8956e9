"""The errors a user can fix, and how a stage's command turns them into one line and an exit code.

Every stage module ends with `run_main(main)`. What reaches the user:

  ParamsError, StageError        "error: <message>"                              exit 2
  disk full / read-only / denied "error: cannot write in <folder>: <reason>; .." exit 2
  Ctrl-C (KeyboardInterrupt)     "interrupted: ..."                              exit 130

Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import errno
import sys
from pathlib import Path
from typing import Any, Callable

# 128 + SIGINT, what a shell reports for a command stopped by Ctrl-C
INTERRUPTED = 130

# OSErrors about the output's file system, not about the code: errno -> what would fix it
DISK_ERRORS = {
    errno.ENOSPC: "free some space there (or point the output elsewhere) and re-run",
    errno.EDQUOT: "free some space within your quota and re-run",
    errno.EROFS: "the file system is mounted read-only; remount it read-write and re-run",
    errno.EACCES: "fix the folder's permissions and re-run",
    errno.EPERM: "fix the folder's permissions and re-run",
}


class StageError(RuntimeError):
    """Bad input a user can fix (a URL, a file, a folder); the message names it and the fix."""


class ParamsError(ValueError):
    """params.yaml is missing, unreadable or invalid; the message says which key and why."""


def disk_error(exc: BaseException, folder: Path | str | None = None) -> StageError | None:
    """A StageError naming `folder` (default: where the failing file lives) when `exc` is a
    full, read-only or forbidden file system; None for any other error."""
    if not isinstance(exc, OSError) or exc.errno not in DISK_ERRORS:
        return None
    if folder is None:
        folder = Path(exc.filename).parent if exc.filename else "the output folder"
    return StageError(f"cannot write in {folder}: {exc.strerror}; {DISK_ERRORS[exc.errno]}")


def run_main(main: Callable[[], Any]) -> None:
    """Run a stage's main(); user errors become one line on stderr and exit status 2."""
    try:
        main()
    except KeyboardInterrupt:
        print("interrupted: the previous outputs are unchanged; run the stage again to finish",
              file=sys.stderr)
        sys.exit(INTERRUPTED)
    except (ParamsError, StageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except OSError as exc:
        err = disk_error(exc)
        if err is None:
            raise
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
