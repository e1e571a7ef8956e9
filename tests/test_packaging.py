"""pyproject.toml makes a real package: a build backend, the dependencies requirements.in names
(the pipeline's as an extra), one console command whose subcommands import and answer --help,
and a wheel that ships the library package alone."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
import zipfile

import pytest

from transferline import cli

from helpers import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~ ;\[]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_build_backend_is_declared():
    assert PYPROJECT["build-system"]["build-backend"] == "setuptools.build_meta"
    assert any(_name(r) == "setuptools" for r in PYPROJECT["build-system"]["requires"])


def test_dependencies_cover_requirements_in_and_torch_is_a_range_pinned_in_the_lock():
    listed = [
        line.split("#")[0].strip() for line in (ROOT / "requirements.in").read_text().splitlines()
    ]
    wanted = {_name(r) for r in listed if r} - {"setuptools"}
    extras = PROJECT["optional-dependencies"]
    declared = [*PROJECT["dependencies"], *extras["pipeline"], *extras["test"]]
    assert wanted == {_name(d) for d in declared}
    torch = next(d for d in PROJECT["dependencies"] if _name(d) == "torch")
    assert "<2.15" in torch and "==" not in torch  # never a newer torch than the machines have
    lock = (ROOT / "requirements.txt").read_text().splitlines()
    assert "torch==2.14.1" in lock and "torchvision==0.29.1" in lock


def test_metadata_a_published_package_carries():
    assert PROJECT["license"] == "MIT" and (ROOT / "LICENSE").read_text().startswith("MIT")
    assert PROJECT["readme"] == "README.md" and PROJECT["authors"] and PROJECT["classifiers"]


def test_one_console_command():
    assert PROJECT["scripts"] == {"transferline": "transferline.cli:entry_point"}


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_every_subcommand_answers_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main([command, "--help"])
    assert exit_.value.code == 0
    assert f"usage: transferline {command}" in capsys.readouterr().out


def test_an_unknown_subcommand_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train"])
    assert exit_.value.code == 2
    assert "invalid choice: 'train'" in capsys.readouterr().err


def test_python_m_transferline_is_the_console_command():
    proc = subprocess.run(
        [sys.executable, "-m", "transferline", "--help"], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0 and "predict" in proc.stdout and "check" in proc.stdout


@pytest.mark.slow
def test_the_wheel_ships_the_library_package_alone(tmp_path):
    # built from a copy of the checkout: setuptools leaves build/ beside the sources it builds
    src = tmp_path / "src"
    shutil.copytree(
        ROOT,
        src,
        ignore=shutil.ignore_patterns(
            ".venv", ".git", ".dvc", "data", "models", "*.egg-info", "__pycache__", ".cache"
        ),
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path / "dist"),
            str(src),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = (tmp_path / "dist").glob("transferline-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"transferline", next(t for t in tops if t.endswith(".dist-info"))}
    assert "transferline/engine/train.py" in names and "transferline/cli.py" in names
    assert not any(n.startswith(("stages/", "tests/", "bench/")) for n in names)
