"""download: real HTTP on 127.0.0.1 (Range resume, dropped connections, 404, 500, timeouts),
local folders/paths/file:// URLs, the demo, the cache, and the CLI's exit statuses."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from transferline.config.errors import StageError
from transferline.config.params import Dataset, Download, Extract
from transferline.data.download import download_dataset, fetch_to_cache
from transferline.data.extract import extract_all

from helpers import ROOT, make_image_folder, zip_folder

FAST = Download(timeout=5.0, retries=2, backoff=0.0)  # no sleeping between retries in tests


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def dataset(*archives: dict) -> Dataset:
    return Dataset.model_validate({"archives": list(archives)})


@pytest.fixture
def payload() -> bytes:
    """6 MiB of incompressible bytes: several 1 MiB chunks, so a drop lands mid-file."""
    return np.random.default_rng(0).bytes(6 << 20)


# ---- HTTP -----------------------------------------------------------------------------------


def test_hymenoptera_over_http_then_extract(shared_datasets, server, tmp_path):
    archive = zip_folder(
        shared_datasets / "hymenoptera_data", tmp_path / "hymenoptera_data.zip", "hymenoptera_data"
    )
    data = archive.read_bytes()
    server.files["/tutorial/hymenoptera_data.zip"] = data
    url = server.url("/tutorial/hymenoptera_data.zip")
    raw, cache = tmp_path / "data/raw", tmp_path / "cache"

    fetched = download_dataset(dataset({"url": url, "sha256": sha(data)}), raw, cache, FAST, 0)

    assert [f.how for f in fetched] == ["downloaded"]
    assert sha((raw / "hymenoptera_data.zip").read_bytes()) == sha(data)
    assert json.loads((raw / "sources.json").read_text()) == [
        {"name": "hymenoptera_data.zip", "url": url, "sha256": sha(data), "split": None}
    ]
    assert not list(cache.glob("*.part"))

    extract_all(raw, tmp_path / "data/extracted", Extract())
    root = tmp_path / "data/extracted/hymenoptera_data/hymenoptera_data"
    counts = {s: sum(1 for p in (root / s).rglob("*") if p.is_file()) for s in ("train", "val")}
    assert counts == {"train": 245, "val": 153}
    assert {p.name for p in (root / "train").iterdir()} == {"ants", "bees"}


def test_dropped_connection_is_resumed_with_range(server, payload, tmp_path):
    server.files["/big.zip"] = payload
    server.drop_once.add("/big.zip")
    fetch_to_cache(server.url("/big.zip"), tmp_path / "big.zip", sha256=sha(payload), settings=FAST)

    assert sha((tmp_path / "big.zip").read_bytes()) == sha(payload)
    assert not (tmp_path / "big.zip.part").exists()
    (_, first), (_, second) = server.log
    assert first is None
    resumed_at = int(second.removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_at < len(payload)


def test_part_file_from_an_earlier_run_is_resumed(server, payload, tmp_path):
    server.files["/big.zip"] = payload
    (tmp_path / "big.zip.part").write_bytes(payload[:1_000_000])
    fetch_to_cache(server.url("/big.zip"), tmp_path / "big.zip", sha256=sha(payload), settings=FAST)
    assert server.log == [("/big.zip", "bytes=1000000-")]
    assert sha((tmp_path / "big.zip").read_bytes()) == sha(payload)


def test_server_ignoring_range_restarts_from_zero(server, payload, tmp_path):
    server.files["/big.zip"] = payload
    server.ignore_range = True
    (tmp_path / "big.zip.part").write_bytes(b"stale bytes from another file")
    fetch_to_cache(server.url("/big.zip"), tmp_path / "big.zip", sha256=None, settings=FAST)
    assert server.log[0][1] is not None  # we asked to resume ...
    assert (tmp_path / "big.zip").read_bytes() == payload  # ... but did not append to the 200


def test_complete_part_file_answered_416_is_used(server, payload, tmp_path):
    server.files["/big.zip"] = payload
    (tmp_path / "big.zip.part").write_bytes(payload)
    fetch_to_cache(server.url("/big.zip"), tmp_path / "big.zip", sha256=sha(payload), settings=FAST)
    assert server.log == [("/big.zip", f"bytes={len(payload)}-")]
    assert (tmp_path / "big.zip").read_bytes() == payload


def test_500_is_retried(server, tmp_path):
    server.files["/a.zip"] = b"archive bytes"
    server.fail_once.add("/a.zip")
    assert fetch_to_cache(server.url("/a.zip"), tmp_path / "a.zip", sha256=None, settings=FAST)
    assert len(server.log) == 2
    assert (tmp_path / "a.zip").read_bytes() == b"archive bytes"


def test_404_names_url_and_cache_path(server, tmp_path):
    url = server.url("/gone/missing.zip")
    raw, cache = tmp_path / "raw", tmp_path / "cache"
    with pytest.raises(StageError) as err:
        download_dataset(dataset({"url": url}), raw, cache, FAST, 0)
    msg = str(err.value)
    assert url in msg and "404" in msg
    assert f"save it as {(cache / 'missing.zip').resolve()}" in msg
    assert len(server.log) == 1  # a 4xx is not retried
    assert not (cache / "missing.zip").exists() and not raw.exists()
    assert list(tmp_path.glob(".raw*")) == []  # no temporary left beside raw


def test_checksum_mismatch_keeps_nothing_at_the_final_path(server, tmp_path):
    server.files["/a.zip"] = b"not what we expected"
    wrong = "0" * 64
    raw, cache = tmp_path / "raw", tmp_path / "cache"
    with pytest.raises(StageError) as err:
        download_dataset(
            dataset({"url": server.url("/a.zip"), "sha256": wrong}), raw, cache, FAST, 0
        )
    msg = str(err.value)
    assert server.url("/a.zip") in msg and wrong in msg
    assert sha(b"not what we expected") in msg
    assert str((cache / "a.zip").resolve()) in msg
    assert not (cache / "a.zip").exists() and not (cache / "a.zip.part").exists()
    assert (cache / "a.zip.mismatch").read_bytes() == b"not what we expected"
    assert not raw.exists()


def test_second_run_does_not_touch_the_server(server, tmp_path):
    server.files["/a.zip"] = b"archive bytes"
    ds = dataset({"url": server.url("/a.zip"), "sha256": sha(b"archive bytes"), "split": "train"})
    raw, cache = tmp_path / "raw", tmp_path / "cache"
    first = download_dataset(ds, raw, cache, FAST, 0)
    listing = (raw / "sources.json").read_bytes()
    second = download_dataset(ds, raw, cache, FAST, 0)
    assert [f.how for f in first + second] == ["downloaded", "cached"]
    assert len(server.log) == 1
    assert (raw / "sources.json").read_bytes() == listing  # how it was fetched is not recorded
    assert json.loads(listing)[0]["split"] == "train"


def test_cached_file_failing_its_checksum_is_fetched_again(server, tmp_path):
    server.files["/a.zip"] = b"the right bytes"
    (tmp_path / "a.zip").write_bytes(b"a wrong file put there by hand")
    assert fetch_to_cache(
        server.url("/a.zip"), tmp_path / "a.zip", sha256=sha(b"the right bytes"), settings=FAST
    )
    assert (tmp_path / "a.zip").read_bytes() == b"the right bytes"
    assert (tmp_path / "a.zip.mismatch").read_bytes() == b"a wrong file put there by hand"


def test_unreachable_port_fails_fast(tmp_path):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now: connection refused
    url = f"http://127.0.0.1:{port}/a.zip"
    slow_retries = Download(timeout=2.0, retries=3, backoff=2.0)  # 14 s if it were retried
    start = time.monotonic()
    with pytest.raises(StageError) as err:
        fetch_to_cache(url, tmp_path / "a.zip", sha256=None, settings=slow_retries)
    assert time.monotonic() - start < 5
    msg = str(err.value)
    assert url in msg and "could not connect" in msg
    assert f"save it as {(tmp_path / 'a.zip').resolve()}" in msg


def test_timeouts_are_retried_then_reported(server, tmp_path):
    server.files["/slow.zip"] = b"x"
    server.slow.add("/slow.zip")
    with pytest.raises(StageError) as err:
        fetch_to_cache(
            server.url("/slow.zip"),
            tmp_path / "slow.zip",
            sha256=None,
            settings=Download(timeout=0.2, retries=1, backoff=0.0),
        )
    assert "gave up after 2 attempt(s)" in str(err.value)
    assert len(server.log) == 2
    assert not (tmp_path / "slow.zip").exists()


def test_failed_run_leaves_previous_output(server, tmp_path):
    server.files["/a.zip"] = b"archive bytes"
    raw, cache = tmp_path / "raw", tmp_path / "cache"
    download_dataset(dataset({"url": server.url("/a.zip")}), raw, cache, FAST, 0)
    with pytest.raises(StageError):
        download_dataset(dataset({"url": server.url("/b.zip")}), raw, cache, FAST, 0)
    assert sorted(p.name for p in raw.iterdir()) == ["a.zip", "sources.json"]


# ---- local sources, demo, bad URLs ----------------------------------------------------------


def test_local_folder_is_copied(tmp_path):
    folder = make_image_folder(tmp_path / "my_images", per_class=2, size=16)
    raw = tmp_path / "raw"
    fetched = download_dataset(
        dataset({"url": str(folder), "split": "test"}), raw, tmp_path / "cache", FAST, 0
    )
    assert fetched[0].how == "copied"
    assert sorted(p.relative_to(raw).as_posix() for p in (raw / "my_images").rglob("*.jpg")) == [
        f"my_images/{c}/{i}.jpg" for c in "abc" for i in range(2)
    ]
    assert json.loads((raw / "sources.json").read_text()) == [
        {"name": "my_images", "url": str(folder), "sha256": None, "split": "test"}
    ]


def test_file_url_and_plain_path(tmp_path):
    one = zip_folder(
        make_image_folder(tmp_path / "one", per_class=1, size=16), tmp_path / "one.zip", "one"
    )
    two = tmp_path / "dir with space" / "two.zip"
    two.parent.mkdir()
    two.write_bytes(one.read_bytes())  # same bytes, another name
    raw = tmp_path / "raw"
    download_dataset(
        dataset({"url": one.as_uri(), "sha256": sha(one.read_bytes())}, {"url": str(two)}),
        raw,
        tmp_path / "cache",
        FAST,
        0,
    )
    listing = json.loads((raw / "sources.json").read_text())
    assert [e["name"] for e in listing] == ["one.zip", "two.zip"]
    assert listing[1]["sha256"] == sha(one.read_bytes())
    assert (raw / "two.zip").read_bytes() == one.read_bytes()


def test_local_checksum_mismatch(tmp_path):
    (tmp_path / "a.zip").write_bytes(b"zip?")
    with pytest.raises(StageError, match="sha256 mismatch"):
        download_dataset(
            dataset({"url": str(tmp_path / "a.zip"), "sha256": "1" * 64}),
            tmp_path / "raw",
            tmp_path / "cache",
            FAST,
            0,
        )


@pytest.mark.parametrize(
    "url, expected",
    [
        ("{tmp}/nope/data.zip", "{tmp}/nope/data.zip does not exist"),
        ("ftp://example.com/a.zip", "unsupported URL scheme 'ftp'"),
        ("http://127.0.0.1:9/", "cannot name the file"),
    ],
)
def test_bad_urls_are_named(tmp_path, url, expected):
    url = url.format(tmp=tmp_path)
    with pytest.raises(StageError) as err:
        download_dataset(dataset({"url": url}), tmp_path / "raw", tmp_path / "cache", FAST, 0)
    assert expected.format(tmp=tmp_path) in str(err.value)


def test_duplicate_names_are_refused(tmp_path):
    with pytest.raises(StageError, match="both be saved as 'a.zip'"):
        download_dataset(
            dataset({"url": "http://127.0.0.1:9/x/a.zip"}, {"url": "http://127.0.0.1:9/y/a.zip"}),
            tmp_path / "raw",
            tmp_path / "cache",
            FAST,
            0,
        )


def test_generate_writes_the_demo_zip(tmp_path):
    ds = Dataset.model_validate({"generate": {"classes": 3, "per_class": 10, "size": 32}})
    raw = tmp_path / "raw"
    fetched = download_dataset(ds, raw, tmp_path / "cache", FAST, seed=1)
    assert fetched[0].how == "generated"
    assert zipfile.is_zipfile(raw / "demo.zip")
    assert json.loads((raw / "sources.json").read_text()) == [
        {
            "name": "demo.zip",
            "url": None,
            "sha256": sha((raw / "demo.zip").read_bytes()),
            "split": None,
        }
    ]


# ---- the CLI --------------------------------------------------------------------------------


def run_cli(cwd: Path, params: dict) -> subprocess.CompletedProcess:
    (cwd / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "stages.download",
            "--out",
            "data/raw",
            "--cache",
            ".cache/downloads",
        ],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_local_archive_exits_0(tmp_path, params_raw):
    archive = zip_folder(
        make_image_folder(tmp_path / "imgs", per_class=1, size=16), tmp_path / "imgs.zip", "imgs"
    )
    work = tmp_path / "project"
    work.mkdir()
    params_raw.update(dataset="local", datasets={"local": {"archives": [{"url": str(archive)}]}})
    proc = run_cli(work, params_raw)
    assert proc.returncode == 0, proc.stderr
    assert (work / "data/raw/imgs.zip").read_bytes() == archive.read_bytes()
    assert "imgs.zip" in proc.stdout


def test_cli_unknown_key_exits_2(tmp_path, params_raw):
    params_raw["download"]["retrys"] = 3
    proc = run_cli(tmp_path, params_raw)
    assert proc.returncode == 2
    assert "download.retrys" in proc.stderr and "unknown key" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "data").exists()


def test_cli_missing_local_path_exits_2(tmp_path, params_raw):
    params_raw.update(dataset="local", datasets={"local": {"archives": [{"url": "gone.zip"}]}})
    proc = run_cli(tmp_path, params_raw)
    assert proc.returncode == 2
    assert f"{tmp_path / 'gone.zip'} does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr
