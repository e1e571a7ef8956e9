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

from transferline.config import archs, locations
from transferline.config.errors import ParamsError, StageError
from transferline.config.params import Params, load
from transferline.data import folders
from transferline.outputs import atomic as files

STAMP = "params.yaml is valid\n"  # fixed bytes: must not change when a valid value changes


def validate(params_path: str | Path, out: str | Path) -> None:
    """Raise ParamsError naming every bad key; write the stamp when the whole file is valid.

    Relative local paths (archive urls, predict.images) are read from the current folder, the
    project root under DVC, as download and predict read them."""
    check(params_path)
    files.write_text(Path(out), STAMP)


def check(params_path: str | Path) -> Params:
    """The params, or ParamsError naming every bad key (what the stage checks, no stamp)."""
    params = load(params_path)
    problems = _model_problems(params) + _location_problems(params)
    if problems:
        raise ParamsError(f"{params_path} is invalid:\n" + "\n".join(problems))
    return params


def _model_problems(params: Params) -> list[str]:
    """What the schema cannot know: each strategy's arch exists (built in or timm's, see
    transferline/config/archs.py) and has the weights it asks for; a weights file exists."""
    problems = []
    for name, strategy in params.strategies.items():
        weights = strategy.weights
        try:
            archs.check(strategy.arch, weights)
        except StageError as exc:
            problems.append(f"  strategies.{name}.arch: {exc}")
        if archs.is_file(weights) and not Path(weights).expanduser().is_file():
            problems.append(
                f"  strategies.{name}.weights: {weights}: no such file; give pretrained, none, "
                "or the path of a weights file (safetensors or a PyTorch state dict)"
            )
    return problems


def _location_problems(params: Params) -> list[str]:
    """What download and predict would refuse only after DVC deleted their outputs: a URL
    scheme or file name download cannot use (any entry: no network needed to see it), a local
    path of the active dataset that is missing, and a `predict.images` that is not a folder."""
    problems = []
    for name, dataset in params.datasets.items():
        for k, archive in enumerate(dataset.archives or []):
            try:
                active = name == params.dataset
                path = locations.check_url(archive.url, exists=active)
                if active and path is not None and path.is_dir():
                    folders.entries(path)  # a FIFO, a loop, a link out of the folder
            except StageError as exc:
                problems.append(f"  datasets.{name}.archives.{k}.url: {exc}")
    if params.predict.images is not None:
        try:
            locations.check_folder(params.predict.images)
            folders.entries(Path(params.predict.images).expanduser())
        except StageError as exc:
            problems.append(f"  predict.images: {exc}; give a folder of images, or null for none")
    return problems
