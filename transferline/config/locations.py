"""Where params.yaml points outside the project: an archive's `url:` and `predict.images`.

What can be checked without the network is checked by the validate stage, before DVC deletes
any output: the URL scheme, the file name an http(s) URL is saved under, and that a local path
the run will read exists and is what it must be (download and predict read these paths after DVC
has already removed their previous outputs). The download stage parses URLs with the same
functions, so the two never disagree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional
from urllib.parse import unquote, urlsplit
from urllib.request import url2pathname

from transferline.config.errors import StageError
from transferline.outputs.atomic import SOURCES  # data/raw's own listing: no archive's name

SCHEMES = "http://, https://, file:// or a local path"


def local_path(url: str) -> Optional[Path]:
    """The local path a file:// URL or plain path names; None for http(s)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in ("http", "https"):
        if not parts.netloc:
            raise StageError(f"{url}: an {scheme} URL needs a host ({scheme}://host/path)")
        return None
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise StageError(f"{url}: file:// URLs must name a local file (file:///path/to/x.zip)")
        return Path(url2pathname(parts.path))
    if scheme and len(scheme) > 1:  # a one-letter scheme is a Windows drive (C:\data)
        raise StageError(f"{url}: unsupported URL scheme {scheme!r}; use {SCHEMES}")
    return Path(url).expanduser()


def url_name(url: str) -> str:
    """The file name a URL is saved under: its last path segment (query ignored)."""
    segment = unquote(urlsplit(url).path.rsplit("/", 1)[-1])
    if segment in ("", ".", "..", SOURCES) or "/" in segment or "\\" in segment:
        raise StageError(
            f"{url}: cannot name the file after the URL's last path segment "
            f"{segment!r}; use a URL that ends in the archive's file name"
        )
    return segment


def check_url(url: str, *, exists: bool) -> Optional[Path]:
    """The local path `url` names (None for http(s)); StageError for a URL download would
    refuse, and with `exists` for a local path that is missing or is neither a file nor a folder
    (only the active dataset's are read)."""
    path = local_path(url)
    if path is None:
        url_name(url)
        return None
    if not exists:
        return path
    if not path.exists():
        raise StageError(f"{url}: local path {path.resolve()} does not exist")
    if not (path.is_file() or path.is_dir()):
        raise StageError(f"{url}: {path.resolve()} is neither a file nor a folder")
    return path


def check_folder(path: str) -> None:
    """Raise StageError unless `path` is an existing folder."""
    folder = Path(path).expanduser()
    if not folder.exists():
        raise StageError(f"{path} does not exist ({folder.resolve()})")
    if not folder.is_dir():
        raise StageError(f"{path} is not a folder ({folder.resolve()})")
