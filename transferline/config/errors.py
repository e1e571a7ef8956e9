"""The errors a user can fix, and how a stage's command turns them into one line and an exit code.

Every stage module ends with `run_main(main)`. What reaches the user:

  ParamsError, StageError        "error: <message>"                              exit 2
  disk full, read-only           "error: cannot write in <folder>: <reason>; .." exit 2
  permission denied              "error: <path>: Permission denied; ..."          exit 2
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

# OSErrors about the file system, not about the code: errno -> what would fix it
DISK_ERRORS = {
    errno.ENOSPC: "free some space there (or point the output elsewhere) and re-run",
    errno.EDQUOT: "free some space within your quota and re-run",
    errno.EROFS: "the file system is mounted read-only; remount it read-write and re-run",
    errno.EACCES: "fix the permissions and re-run",
    errno.EPERM: "fix the permissions and re-run",
}
# only ever raised by a write: the message names the folder written to
WRITE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}


class StageError(RuntimeError):
    """Bad input a user can fix (a URL, a file, a folder); the message names it and the fix."""


class ParamsError(ValueError):
    """params.yaml is missing, unreadable or invalid; the message says which key and why."""


def first_line(exc: BaseException) -> str:
    """An exception's message as one line (its type when it has none)."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def disk_error(exc: BaseException, folder: Path | str | None = None) -> StageError | None:
    """A StageError for a full, read-only or forbidden file system, naming `folder` (the output
    being written) or else the path that failed; None for any other error."""
    if not isinstance(exc, OSError) or exc.errno not in DISK_ERRORS:
        return None
    fix = DISK_ERRORS[exc.errno]
    if folder is None and exc.errno not in WRITE_ERRORS:  # a read or a write: name the path
        return StageError(f"{exc.filename or 'a file'}: {exc.strerror}; {fix}")
    if folder is None:
        folder = Path(exc.filename).parent if exc.filename else "the output folder"
    return StageError(f"cannot write in {folder}: {exc.strerror}; {fix}")


def run_main(main: Callable[[], Any]) -> None:
    """Run a stage's main(); user errors become one line on stderr and exit status 2."""
    try:
        main()
    except KeyboardInterrupt:
        print(
            "interrupted: nothing half-written was left; run the stage again to finish",
            file=sys.stderr,
        )
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
