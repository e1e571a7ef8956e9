"""pyproject.toml makes a real package: a build backend, the dependencies requirements.in names,
and console scripts whose entry points import and answer --help."""
from __future__ import annotations

import importlib
import re
import tomllib

import pytest

from conftest import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SCRIPTS = PYPROJECT["project"]["scripts"]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~ ;\[]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_build_backend_is_declared():
    assert PYPROJECT["build-system"]["build-backend"] == "setuptools.build_meta"
    assert any(_name(r) == "setuptools" for r in PYPROJECT["build-system"]["requires"])


def test_dependencies_cover_requirements_in_and_keep_torch_pinned():
    listed = [line.split("#")[0].strip() for line in (ROOT / "requirements.in").read_text()
              .splitlines()]
    wanted = {_name(r) for r in listed if r} - {"pytest", "setuptools"}
    deps = PYPROJECT["project"]["dependencies"]
    assert wanted == {_name(d) for d in deps}
    assert "torch==2.14.1" in deps and "torchvision==0.29.1" in deps
    assert PYPROJECT["project"]["optional-dependencies"]["test"] == ["pytest"]


def test_the_promised_commands_exist():
    assert {"transferline-predict", "transferline-check", "transferline-compare",
            "transferline-export"} <= set(SCRIPTS)


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_entry_point_imports_and_answers_help(script, monkeypatch, capsys):
    module, func = SCRIPTS[script].split(":")
    entry = getattr(importlib.import_module(module), func)
    monkeypatch.setattr("sys.argv", [script, "--help"])
    with pytest.raises(SystemExit) as exit_:
        entry()
    assert exit_.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_packages_found_are_the_project_code():
    assert PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"] == ["stages", "tools"]
