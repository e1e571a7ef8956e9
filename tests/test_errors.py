"""What a failed or interrupted stage leaves, through the real stages (`python -m stages.X` in a
subprocess): one line and exit 2 for a full or read-only output folder, one line and exit 130 for
Ctrl-C, and after `kill -9` the previous output intact, the temporary git-ignored and removed by
the next run."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from transferline.config.errors import StageError, disk_error
from transferline.outputs import atomic as files

from conftest import ROOT, extracted_tree, make_image_folder, run, run_clean, write_image

PREVIOUS = "previous manifest\n"


@pytest.fixture(scope="module")
def slow_extracted(tmp_path_factory) -> Path:
    """An extracted tree big enough that clean runs for a few seconds: 2 x 150 noisy 320 px
    JPEGs (noise makes decoding and encoding slow)."""
    root = tmp_path_factory.mktemp("slow")
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        for i in range(150):
            write_image(
                root / "src" / cls / f"{i}.jpg", rng.integers(0, 256, (320, 320, 3), dtype=np.uint8)
            )
    return extracted_tree(root / "extracted", {"src": root / "src"})


def project(tmp_path: Path, params_raw: dict, **clean) -> Path:
    """A git repo with the project's .gitignore, params.yaml, and a previous data/clean."""
    params_raw["clean"].update(clean)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params_raw))
    (tmp_path / ".gitignore").write_bytes((ROOT / ".gitignore").read_bytes())
    (tmp_path / "data" / "clean").mkdir(parents=True)
    (tmp_path / "data" / "clean" / "manifest.csv").write_text(PREVIOUS)
    run(["git", "init", "-q"], tmp_path)
    return tmp_path


def start(cwd: Path, *args: str) -> subprocess.Popen:
    # a session of its own, like a shell's foreground job: Ctrl-C goes to the whole group
    return subprocess.Popen(
        [sys.executable, "-m", *args],
        cwd=cwd,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        start_new_session=True,
    )


def clean_cmd(extracted: Path, out: str = "data/clean") -> list[str]:
    return [
        "stages.clean",
        "--extracted",
        str(extracted),
        "--out",
        out,
        "--metrics",
        "metrics/clean.json",
        "--rejected",
        "reports/rejected.csv",
    ]


def wait_for_images(folder: Path, proc: subprocess.Popen) -> Path:
    """The clean temporary once it holds a written image: the stage is mid-write."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = list(folder.glob(".clean.tmp-*/images/*/*.jpg"))
        if found:
            return found[0].parents[2]
        assert proc.poll() is None, f"clean ended before the test could stop it: {proc.stderr}"
        time.sleep(0.01)
    raise AssertionError("clean never started writing")


def test_kill_9_leaves_the_previous_output_and_the_next_run_removes_the_temporary(
    tmp_path, params_raw, slow_extracted
):
    repo = project(tmp_path, params_raw, workers=1)
    proc = start(repo, *clean_cmd(slow_extracted))
    tmp = wait_for_images(repo / "data", proc)
    proc.kill()  # SIGKILL: no handler, no cleanup
    proc.communicate()
    assert tmp.is_dir()  # what a killed run leaves ...
    assert (repo / "data/clean/manifest.csv").read_text() == PREVIOUS  # ... never the output
    # git add -A would not pick it up (data/clean itself is DVC's to ignore)
    status = run(["git", "status", "--porcelain", "-uall"], repo).stdout
    assert "data/clean/manifest.csv" in status and ".tmp-" not in status
    run(["git", "check-ignore", "-q", str(tmp / "images")], repo)

    done = start(repo, *clean_cmd(slow_extracted))
    out, err = done.communicate(timeout=300)
    assert done.returncode == 0, err
    assert sorted(p.name for p in (repo / "data").iterdir()) == ["clean"]
    assert len((repo / "data/clean/manifest.csv").read_text().splitlines()) == 1 + 300


def test_ctrl_c_prints_one_line_exits_130_and_keeps_the_previous_output(
    tmp_path, params_raw, slow_extracted
):
    repo = project(tmp_path, params_raw, workers=2)  # with a worker pool
    proc = start(repo, *clean_cmd(slow_extracted))
    wait_for_images(repo / "data", proc)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert err.splitlines() == [
        "interrupted: nothing half-written was left; run the stage again to finish"
    ]
    assert (repo / "data/clean/manifest.csv").read_text() == PREVIOUS
    assert sorted(p.name for p in (repo / "data").iterdir()) == ["clean"]


def test_a_full_disk_is_one_line_naming_the_output_folder(tmp_path, params_raw, mounts):
    repo = project(tmp_path, params_raw, workers=2)  # the error comes from a worker process
    small = mounts.tmpfs(repo / "small", "256k")
    extracted = extracted_tree(
        tmp_path / "ex", {"src": make_image_folder(tmp_path / "src", per_class=40, size=128)}
    )  # about 1 MB of JPEGs
    proc = start(repo, *clean_cmd(extracted, out=str(small / "clean")))
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 2
    assert err.splitlines() == [
        f"error: cannot write in {small / 'clean'}: No space left on "
        "device; free some space there (or point the output elsewhere) "
        "and re-run"
    ]
    assert list(small.iterdir()) == []  # the partial output is gone


@pytest.mark.parametrize("where", ["out", "metrics"])
def test_a_read_only_folder_is_one_line_naming_it(tmp_path, params_raw, mounts, where):
    repo = project(tmp_path, params_raw)
    run_clean(
        extracted_tree(
            tmp_path / "ex", {"src": make_image_folder(tmp_path / "src", per_class=6, size=32)}
        ),
        repo / "data",
    )
    ro = mounts.tmpfs(repo / "ro", "1m")
    (ro / "split").mkdir()
    (ro / "split" / "train.csv").write_text("previous split\n")
    mounts.read_only(ro)
    paths = {"out": "data/split", "metrics": "metrics/split.json"}
    paths[where] = str(ro / ("split" if where == "out" else "split.json"))
    proc = start(
        repo,
        "stages.split",
        "--clean",
        "data/clean",
        "--out",
        paths["out"],
        "--metrics",
        paths["metrics"],
    )
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    folder = ro / "split" if where == "out" else ro
    assert err.splitlines() == [
        f"error: cannot write in {folder}: Read-only file system; the "
        "file system is mounted read-only; remount it read-write and "
        "re-run"
    ]
    assert (ro / "split" / "train.csv").read_text() == "previous split\n"


# ---- config/errors.py and outputs.atomic.staged_dir on their own -----------------------------


def test_a_denied_path_is_named_as_it_is_not_as_a_write():
    exc = OSError(errno.EACCES, "Permission denied", "data/raw/a.zip")
    assert str(disk_error(exc)) == (
        "data/raw/a.zip: Permission denied; fix the permissions and re-run"
    )
    assert disk_error(OSError(errno.ENOENT, "No such file", "x")) is None  # not a disk error
    assert disk_error(ValueError("no")) is None


def test_staged_dir_leaves_an_inputs_error_to_run_main(tmp_path):
    out = tmp_path / "data" / "extracted"
    with pytest.raises(OSError) as err:  # not turned into "cannot write in data/extracted"
        with files.staged_dir(out):
            raise OSError(errno.EACCES, "Permission denied", str(tmp_path / "data/raw/a.zip"))
    assert not isinstance(err.value, StageError)
    assert sorted(p.name for p in out.parent.iterdir()) == []
