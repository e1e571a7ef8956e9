"""validate: check the whole params.yaml before any other stage runs.

DVC removes a stage's outputs before it runs the stage's command, so a check inside a stage
comes too late to protect them: a bad `strategies.finetune.lr` would cost the finetune model
before train@finetune noticed. This stage depends on the whole of params.yaml and every other
stage depends on its output, so `dvc repro` (and `dvc exp run`) runs it first and stops here,
with every previous output untouched, on any unknown key or bad value anywhere in the file.

Its output, `data/params.ok`, holds a fixed text: a valid change re-runs this stage, writes the
same bytes, and so re-runs only the stages whose own params changed.

    python -m stages.validate --params params.yaml --out data/params.ok
"""

from __future__ import annotations

from pathlib import Path

from transferline.config import archs
from transferline.config.errors import ParamsError, StageError
from transferline.config.params import Params, load
from transferline.outputs import atomic as files

STAMP = "params.yaml is valid\n"  # fixed bytes: must not change when a valid value changes


def validate(params_path: str | Path, out: str | Path) -> None:
    """Raise ParamsError naming every bad key; write the stamp when the whole file is valid."""
    params = load(params_path)
    problems = _model_problems(params)
    if problems:
        raise ParamsError(f"{params_path} is invalid:\n" + "\n".join(problems))
    files.write_text(Path(out), STAMP)


def _model_problems(params: Params) -> list[str]:
    """What the schema cannot know: each strategy's arch exists and has the weights it asks
    for (the names live in transferline/config/archs.py)."""
    problems = []
    for name, strategy in params.strategies.items():
        try:
            archs.check(strategy.arch, strategy.weights)
        except StageError as exc:
            problems.append(f"  strategies.{name}.arch: {exc}")
    return problems
