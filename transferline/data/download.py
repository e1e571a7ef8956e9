"""download: fetch the active dataset's archives (or build the demo) into data/raw/.

Reads params.yaml (`dataset`, `datasets.<name>`, `download`, `seed`); writes, per docs/pipeline.md,
`data/raw/<name>` for each archive (a copy of a local folder under its own name, or `demo.zip` for
a `generate:` entry) and `data/raw/sources.json` (with the dataset's `format:` when it has one,
so that extract knows how to convert the files). HTTP(S) downloads go through the cache folder
(`--cache`, outside DVC's outputs): a partial download is resumed from `<name>.part` on the next
try or run, a complete one is kept as `<name>` and never fetched again. Without network, put the
file there by hand under the name the error message gives.

    python -m stages.download --out data/raw --cache .cache/downloads
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import requests
import urllib3
from tqdm import tqdm

from transferline.config.errors import StageError
from transferline.config.locations import local_path, url_name
from transferline.config.params import MAX_BACKOFF, Archive, Dataset, Download
from transferline.data.demo import build_demo_zip
from transferline.data.folders import copy_folder
from transferline.outputs.atomic import CHUNK, SOURCES, staged_dir

DEMO_NAME = "demo.zip"  # what a `generate:` entry is written as
# Worth another try: the server may recover (408 timeout, 429 rate limit, any 5xx).
RETRY_STATUS = {408, 429}


class _Transient(Exception):
    """A failure worth retrying: timeout, connection dropped mid-body, 5xx."""


class _Fatal(Exception):
    """A failure retrying will not fix: DNS, refused connection, 4xx, TLS."""


@dataclass(frozen=True)
class Fetched:
    """One entry of data/raw: what it is and how this run got it."""

    name: str
    url: Optional[str]  # None for the generated demo
    sha256: Optional[str]  # of the file; None for a folder
    split: Optional[str]
    how: str  # downloaded | cached | copied | generated (not written to disk)

    def source(self) -> dict:
        return {"name": self.name, "url": self.url, "sha256": self.sha256, "split": self.split}


# ---- small file helpers ---------------------------------------------------------------------


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


# ---- naming and classifying URLs ------------------------------------------------------------


def _target_name(url: str) -> str:
    path = local_path(url)
    name = url_name(url) if path is None else path.resolve().name
    if name in ("", SOURCES):
        raise StageError(f"{url}: cannot be saved as {name!r}; rename the file or folder")
    return name


# ---- HTTP -----------------------------------------------------------------------------------


def _content_range(value: Optional[str]) -> tuple[Optional[int], Optional[int]]:
    """(start, total) from 'bytes 100-199/200' or 'bytes */200'; None where absent."""
    try:
        span, total = value.split(" ", 1)[1].split("/")
        start = None if span == "*" else int(span.split("-")[0])
        return start, (None if total == "*" else int(total))
    except (AttributeError, IndexError, ValueError):
        return None, None


def _resume_offset(resp: requests.Response, have: int, part: Path) -> Optional[int]:
    """Where this response's body goes in `part`: 0 (start over), `have` (resume), or None when
    `part` is already the complete file. Raises _Transient/_Fatal for error statuses."""
    status = resp.status_code
    if status == 200:
        return 0  # fresh download, or the server ignored our Range header
    if status == 206:
        if _content_range(resp.headers.get("Content-Range"))[0] == have:
            return have
        part.unlink(missing_ok=True)
        raise _Transient("server resumed at another offset than asked; starting over")
    if status == 416 and have:
        if _content_range(resp.headers.get("Content-Range"))[1] == have:
            return None
        part.unlink(missing_ok=True)
        raise _Transient("partial file is longer than the server's; starting over")
    if status >= 500 or status in RETRY_STATUS:
        raise _Transient(f"HTTP {status} {resp.reason}")
    raise _Fatal(f"HTTP {status} {resp.reason}")


def _write_body(resp: requests.Response, part: Path, offset: int) -> None:
    """Stream the body into `part` at `offset`, with a progress bar on a terminal."""
    length = resp.headers.get("Content-Length")
    expected = int(length) if length and length.isdigit() else None
    written = 0
    with (
        open(part, "ab" if offset else "wb") as f,
        tqdm(
            total=None if expected is None else offset + expected,
            initial=offset,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=part.name[:-5],
            file=sys.stderr,
            disable=None,
            leave=False,
        ) as bar,
    ):
        # decode_content=False: keep the bytes as served, so the sha256 is of the real file
        for chunk in resp.raw.stream(CHUNK, decode_content=False):
            f.write(chunk)
            written += len(chunk)
            bar.update(len(chunk))
    if expected is not None and written < expected:
        raise _Transient(f"connection closed after {offset + written} of {offset + expected} bytes")


def _connect_failure(exc: requests.ConnectionError) -> Optional[str]:
    """The reason when no connection could be made at all (DNS, refused); None otherwise."""
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    if isinstance(reason, urllib3.exceptions.NameResolutionError):
        return "could not resolve the host name (no network, or a typo in the URL?)"
    if isinstance(reason, urllib3.exceptions.NewConnectionError):
        return f"could not connect ({reason.__cause__ or reason})"
    return None


def _attempt(session: requests.Session, url: str, part: Path, timeout: float) -> None:
    """One GET, resuming `part` when it holds bytes; classifies every failure."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"Accept-Encoding": "identity", **({"Range": f"bytes={have}-"} if have else {})}
    try:
        with session.get(url, headers=headers, stream=True, timeout=timeout) as resp:
            offset = _resume_offset(resp, have, part)
            if offset is not None:
                _write_body(resp, part, offset)
    except requests.exceptions.SSLError as exc:
        raise _Fatal(f"TLS error: {exc}") from None
    except requests.exceptions.ConnectionError as exc:
        reason = _connect_failure(exc)
        if reason:
            raise _Fatal(reason) from None
        raise _Transient(f"connection error: {exc}") from None
    except (
        requests.exceptions.Timeout,
        requests.exceptions.ChunkedEncodingError,
        urllib3.exceptions.HTTPError,
    ) as exc:
        raise _Transient(f"{type(exc).__name__}: {exc}") from None
    except requests.exceptions.RequestException as exc:
        raise _Fatal(f"{type(exc).__name__}: {exc}") from None


def _download(url: str, part: Path, settings: Download) -> None:
    """Attempts with exponential backoff; raises _Fatal once retries are used up."""
    delay = settings.backoff
    with requests.Session() as session:
        for attempt in range(settings.retries + 1):
            try:
                return _attempt(session, url, part, settings.timeout)
            except _Transient as exc:
                if attempt == settings.retries:
                    raise _Fatal(
                        f"gave up after {attempt + 1} attempt(s); last error: {exc}"
                    ) from None
                print(
                    f"{url}: {exc}; retry {attempt + 1}/{settings.retries} in {delay:g} s",
                    file=sys.stderr,
                )
                time.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF)


def _help(target: Path) -> str:
    return f"download it yourself and save it as {target.resolve()}"


def _cached(target: Path, url: str, sha256: Optional[str]) -> bool:
    """Whether `target` is a verified complete download (a wrong one is set aside)."""
    if not target.is_file():
        return False
    if sha256 is None:
        return True  # only complete files are ever renamed to the final name
    actual = sha256_file(target)
    if actual == sha256:
        return True
    aside = target.with_name(target.name + ".mismatch")
    os.replace(target, aside)
    print(
        f"{target}: sha256 {actual} is not the expected {sha256}; moved to {aside.name}, "
        f"downloading {url} again",
        file=sys.stderr,
    )
    return False


def fetch_to_cache(url: str, target: Path, *, sha256: Optional[str], settings: Download) -> bool:
    """Make `target` the complete, verified file at `url`. True if it touched the network.

    Bytes arrive in `<target>.part` (resumed with a Range request when it exists) and are
    renamed to `target` only once complete and verified. A file failing its checksum is kept
    as `<target>.mismatch` for inspection and never used."""
    if _cached(target, url, sha256):
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    try:
        _download(url, part, settings)
    except _Fatal as exc:
        raise StageError(f"{url}: {exc}; {_help(target)}") from None
    if sha256 is not None and (actual := sha256_file(part)) != sha256:
        aside = target.with_name(target.name + ".mismatch")
        os.replace(part, aside)
        raise StageError(
            f"{url}: sha256 mismatch: expected {sha256}, got {actual}. The file "
            f"was kept as {aside.resolve()} (never used). If the params value is "
            f"stale, fix `sha256:`; otherwise {_help(target)}"
        )
    os.replace(part, target)  # atomic: the final name only ever holds a complete file
    return True


# ---- one archive, one dataset ---------------------------------------------------------------


def _copy_local(archive: Archive, src: Path, dest: Path) -> Fetched:
    """Copy a local archive file or class-folder tree into `dest`."""
    if not src.exists():
        raise StageError(
            f"{archive.url}: local path {src.resolve()} does not exist; fix the "
            "`url:` of this archive in params.yaml"
        )
    name = src.resolve().name
    if src.is_dir():
        if archive.sha256 is not None:
            raise StageError(
                f"{archive.url}: is a folder, which has no sha256; remove "
                "`sha256:` from this archive in params.yaml"
            )
        copy_folder(src, dest / name)  # regular files and folders only
        return Fetched(name, archive.url, None, archive.split, "copied")
    actual = sha256_file(src)
    if archive.sha256 is not None and actual != archive.sha256:
        raise StageError(
            f"{archive.url}: sha256 mismatch: expected {archive.sha256}, got "
            f"{actual}; fix `sha256:` or the file"
        )
    shutil.copyfile(src, dest / name)
    return Fetched(name, archive.url, actual, archive.split, "copied")


def fetch_archive(archive: Archive, dest: Path, cache: Path, settings: Download) -> Fetched:
    """Put one archive into `dest` (a local copy, or via the download cache)."""
    src = local_path(archive.url)
    if src is not None:
        return _copy_local(archive, src, dest)
    name = url_name(archive.url)
    fetched = fetch_to_cache(archive.url, cache / name, sha256=archive.sha256, settings=settings)
    shutil.copyfile(cache / name, dest / name)
    sha = archive.sha256 or sha256_file(dest / name)
    return Fetched(name, archive.url, sha, archive.split, "downloaded" if fetched else "cached")


def _check_names(archives: list[Archive]) -> None:
    names = [_target_name(a.url) for a in archives]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise StageError(
            f"two archives would both be saved as {dupes[0]!r}; every archive "
            "of a dataset needs a distinct file name"
        )


def download_dataset(
    dataset: Dataset, out: Path, cache: Path, settings: Download, seed: int
) -> list[Fetched]:
    """Fill `out` with the dataset's archives + sources.json; returns what was done.

    Built in a sibling temporary folder and renamed over `out` at the end, so an error or an
    interrupt leaves the previous `out` as it was."""
    out, cache = Path(out), Path(cache)
    with staged_dir(out) as tmp:
        if dataset.generate is not None:
            gen = dataset.generate
            build_demo_zip(
                tmp / DEMO_NAME,
                classes=gen.classes,
                per_class=gen.per_class,
                size=gen.size,
                seed=seed,
            )
            fetched = [Fetched(DEMO_NAME, None, sha256_file(tmp / DEMO_NAME), None, "generated")]
        else:
            _check_names(dataset.archives)
            fetched = [fetch_archive(a, tmp, cache, settings) for a in dataset.archives]
        listing = [f.source() for f in fetched]
        if dataset.format != "folders":  # extract converts these files together
            listing = [{**entry, "format": dataset.format} for entry in listing]
        (tmp / SOURCES).write_text(json.dumps(listing, indent=2) + "\n")
    return fetched
