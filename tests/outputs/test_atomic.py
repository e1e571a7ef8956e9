"""transferline/outputs/atomic.py: folders swapped in whole or not at all, atomic file writes, and
what killed runs leave behind removed by the next one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from transferline.config.errors import StageError
from transferline.outputs import atomic as files

from helpers import ROOT, run


def _listing(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _previous(tmp_path: Path) -> Path:
    out = tmp_path / "data" / "clean"
    out.mkdir(parents=True)
    (out / "old.txt").write_text("previous run")
    return out


def _dead_pid() -> int:
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(proc.stdout)


def test_staged_dir_replaces_the_output_whole(tmp_path):
    out = _previous(tmp_path)
    with files.staged_dir(out) as tmp:
        assert tmp.parent == out.parent and tmp.name.startswith(".clean.tmp-")
        (tmp / "new.txt").write_text("this run")
        assert _listing(out) == {"old.txt": b"previous run"}  # untouched until the end
    assert _listing(out) == {"new.txt": b"this run"}
    assert sorted(p.name for p in out.parent.iterdir()) == ["clean"]


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_a_failure_inside_leaves_the_previous_output_and_no_temporary(tmp_path, error):
    out = _previous(tmp_path)
    with pytest.raises(error):
        with files.staged_dir(out) as tmp:
            (tmp / "half.txt").write_text("half written")
            raise error("stopped")
    assert _listing(out) == {"old.txt": b"previous run"}
    assert sorted(p.name for p in out.parent.iterdir()) == ["clean"]


def test_staged_dir_creates_a_first_output_and_its_parents(tmp_path):
    out = tmp_path / "a" / "b" / "split"
    with files.staged_dir(out) as tmp:
        (tmp / "x.csv").write_text("x")
    assert _listing(out) == {"x.csv": b"x"}


def test_temporaries_of_dead_runs_are_removed_and_live_ones_kept(tmp_path):
    out = _previous(tmp_path)
    dead, live = _dead_pid(), os.getppid()  # the process that started pytest is alive
    stale_dir = out.with_name(f".clean.tmp-{dead}")
    stale_dir.mkdir()
    (stale_dir / "x.jpg").write_bytes(b"killed half way")
    stale_file = out.with_name(f".clean.tmp-{dead}-abc123")
    stale_file.write_text("{")
    busy = out.with_name(f".clean.tmp-{live}")
    busy.mkdir()
    other = out.with_name(".split.tmp-1")  # another output's temporary: not ours to judge
    other.mkdir()
    with files.staged_dir(out) as tmp:
        (tmp / "new.txt").write_text("this run")
    assert sorted(p.name for p in out.parent.iterdir()) == sorted(["clean", busy.name, other.name])


def test_a_swap_killed_between_its_renames_gets_the_previous_output_back(tmp_path):
    out = _previous(tmp_path)
    os.replace(out, out.with_name(".clean.old"))  # the first rename happened, the second not
    files.remove_stale(out)
    assert _listing(out) == {"old.txt": b"previous run"}
    assert sorted(p.name for p in out.parent.iterdir()) == ["clean"]


def test_write_json_is_sorted_indented_and_newline_terminated(tmp_path):
    path = tmp_path / "sub" / "m.json"
    stale = path.with_name(f".m.json.tmp-{_dead_pid()}-xyz")
    path.parent.mkdir()
    stale.write_text("{")
    files.write_json(path, {"b": 1, "a": {"d": 0.5, "c": 2}})
    assert path.read_text() == '{\n  "a": {\n    "c": 2,\n    "d": 0.5\n  },\n  "b": 1\n}\n'
    assert list(path.parent.iterdir()) == [path]  # no temp file left, the stale one removed


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_nan_or_inf_never_reaches_a_json_output(tmp_path, value):
    """Bare NaN is not JSON: a non-finite number in an output is a bug, loud, and the previous
    file stays."""
    (tmp_path / "m.json").write_text('{"accuracy": 0.5}\n')
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        files.write_json(tmp_path / "m.json", {"accuracy": value})
    assert (tmp_path / "m.json").read_text() == '{"accuracy": 0.5}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_temporary_names_are_ignored_by_git(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / ".gitignore").write_bytes((ROOT / ".gitignore").read_bytes())
    run(["git", "init", "-q"], repo)
    names = [
        "data/.clean.tmp-123/images/a/x.jpg",
        "data/.raw.tmp-9",
        "reports/.figures.tmp-7",
        "metrics/.clean.json.tmp-5-k2j3",
        "data/.clean.old/manifest.csv",
    ]
    for name in names:
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text("x")
    (repo / "metrics" / "clean.json").write_text("{}")
    assert run(["git", "status", "--porcelain", "-uall"], repo).stdout.split() == [
        "??",
        ".gitignore",
        "??",
        "metrics/clean.json",
    ]


def test_a_read_only_output_folder_is_named_and_keeps_its_output(tmp_path, mounts):
    out = _previous(mounts.tmpfs(tmp_path / "ro", "1m"))
    mounts.read_only(out.parent.parent)
    with pytest.raises(StageError, match=f"cannot write in {out}: Read-only file system"):
        with files.staged_dir(out) as tmp:
            (tmp / "x").write_text("never")
    assert _listing(out) == {"old.txt": b"previous run"}


def test_a_full_disk_is_named_and_leaves_no_temporary(tmp_path, mounts):
    out = _previous(mounts.tmpfs(tmp_path / "small", "64k"))
    with pytest.raises(StageError, match=f"cannot write in {out}: No space left on device"):
        with files.staged_dir(out) as tmp:
            (tmp / "big.bin").write_bytes(b"x" * 1_000_000)
    assert _listing(out) == {"old.txt": b"previous run"}
    assert sorted(p.name for p in out.parent.iterdir()) == ["clean"]
