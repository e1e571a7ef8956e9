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

from helpers import ROOT, extracted_tree, make_image_folder, run, run_clean, write_image

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


# ---- kill -9 in the middle of export and predict ----------------------------------------------

# The real stage in a child process, made to stop mid-write at a known point: `pause` wraps one
# library function so that, once it has run, the child writes a marker file and waits forever.
# The test waits for the marker (an event, not a number of seconds) and then kills the child.
PAUSED_STAGE = """
import functools, importlib, runpy, signal, sys
from pathlib import Path
module, name, marker = sys.argv[1:4]
mod = importlib.import_module(module)
real = getattr(mod, name)
@functools.wraps(real)
def pause(*a, **k):
    out = real(*a, **k)
    Path(marker).write_text("mid-write")
    signal.pause()
setattr(mod, name, pause)
sys.argv = [sys.argv[4]] + sys.argv[5:]
runpy.run_module(sys.argv[0], run_name="__main__")
"""

KILLED = {  # stage -> (function it pauses after, its arguments, the output, the temporary's glob)
    "export": (
        "transferline.models.export",
        "torchscript_bytes",
        ["--model", "models/m.pt", "--out", "export"],
        "export",
        ".export.tmp-*",
    ),
    "predict": (
        "transferline.data.demo",
        "unlabelled_images",
        [
            "--unlabelled",
            "data/unlabelled",
            "--best",
            "best.json",
            "--models",
            "models",
            "--csv",
            "p.csv",
            "--gallery",
            "p.png",
        ],
        "data/unlabelled",
        "data/.unlabelled.tmp-*",
    ),
}


@pytest.mark.parametrize("stage", sorted(KILLED))
def test_kill_9_in_export_or_predict_leaves_no_untracked_temporary(stage, tmp_path, params_raw):
    from transferline import models

    from helpers import checkpoint_meta

    module, function, args, output, pattern = KILLED[stage]
    repo = tmp_path / "repo"
    (repo / "models").mkdir(parents=True)
    (repo / ".gitignore").write_bytes((ROOT / ".gitignore").read_bytes())
    params_raw["predict"].update(demo_images=2)
    (repo / "params.yaml").write_text(yaml.safe_dump(params_raw))
    torch_model = models.build("cnn1", 3, "none")
    models.save_checkpoint(
        repo / "models" / "m.pt", torch_model, checkpoint_meta("cnn1", ("a", "b", "c"), 32)
    )
    (repo / "best.json").write_text('{"strategy": "m"}')
    (repo / output).mkdir(parents=True)
    (repo / output / "previous.txt").write_text("previous\n")
    run(["git", "init", "-q"], repo)
    marker = tmp_path / "paused"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            PAUSED_STAGE,
            module,
            function,
            str(marker),
            f"stages.{stage}",
            *args,
        ],
        cwd=repo,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        text=True,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 300
    while not marker.exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, f"{stage} never reached {function}"
        time.sleep(0.01)
    (tmp,) = repo.glob(pattern)  # mid-write: the new output is being built beside the old
    proc.kill()
    proc.communicate()
    assert (repo / output / "previous.txt").read_text() == "previous\n"
    status = run(["git", "status", "--porcelain", "-uall"], repo).stdout
    assert ".tmp-" not in status, status  # git-ignored, so `git add -A` never picks it up
    assert tmp.is_dir()
    done = subprocess.run(
        [sys.executable, "-m", f"stages.{stage}", *args],
        cwd=repo,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert not list(repo.glob(pattern)) and not tmp.exists()  # the next run removed it
    assert not (repo / output / "previous.txt").exists()  # and replaced the output whole
