"""dvc.yaml stays the true picture of the data flow: every stage runs its own module, lists every
project module that module imports in its deps (or a change to shared code would not re-run it),
stage modules never import each other, and the overlay plots cover every strategy."""

import ast
import importlib
import inspect
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from transferline.config.params import SPEED_ONLY

from helpers import ROOT

DVC_YAML = yaml.safe_load((ROOT / "dvc.yaml").read_text())
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
STAGES = DVC_YAML["stages"]


def module_file(module: str) -> Path | None:
    """stages/x.py or transferline/a/b.py (or its __init__.py) for a dotted module name."""
    path = ROOT.joinpath(*module.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported(path: Path) -> set[str]:
    """Project modules (`stages.*`, `transferline.*`) one file imports, anywhere in it (lazy
    imports too), or names as a string (a forkserver preload)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and "." in node.value:
            names.add(node.value)
    return {n for n in names if n.split(".")[0] in ("stages", "transferline") and module_file(n)}


def docstring_only(path: Path) -> bool:
    """A file that runs nothing (a package's __init__.py that only says what it holds): no dep,
    or editing a package's description would re-run every stage."""
    body = ast.parse(path.read_text()).body
    return all(isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) for n in body)


def closure(module: str) -> set[Path]:
    """Every project file that importing `module` runs: its imports, theirs, and the packages'
    __init__.py files on the way (but files that run nothing)."""
    seen, todo = set(), [module]
    while todo:
        name = todo.pop()
        path = module_file(name)
        if path is None or path in seen:
            continue
        seen.add(path)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))] + sorted(imported(path))
    return {path for path in seen if not docstring_only(path)}


def stage_body(name):
    stage = STAGES[name]
    return stage.get("do", stage)


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_runs_its_module_and_lists_its_code(name):
    body = stage_body(name)
    assert body["cmd"].startswith(f"python -m stages.{name} "), body["cmd"]
    deps = {d for d in body["deps"] if isinstance(d, str) and d.endswith(".py")}
    needed = {p.relative_to(ROOT).as_posix() for p in closure(f"stages.{name}")}
    assert deps == needed, (
        f"{name}: add {sorted(needed - deps)}, drop {sorted(deps - needed)} in its deps"
    )


@pytest.mark.parametrize("name", sorted(set(STAGES) - {"validate"}))
def test_every_stage_waits_for_params_validation(name):
    # DVC removes a stage's outputs before running it: params.yaml must be checked before that
    assert "${paths.params_ok}" in stage_body(name)["deps"]


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_modules_do_not_import_each_other(name):
    others = {ROOT / "stages" / f"{other}.py" for other in set(STAGES) - {name}}
    assert not closure(f"stages.{name}") & others


def test_the_library_never_imports_a_stage():
    for path in sorted((ROOT / "transferline").rglob("*.py")):
        assert not {m for m in imported(path) if m.startswith("stages")}, path


def test_stage_modules_are_thin():
    """An entry point: arguments in, one call into the library; the work lives there."""
    for name in STAGES:
        tree = ast.parse((ROOT / "stages" / f"{name}.py").read_text())
        functions = [n.name for n in tree.body if isinstance(n, ast.FunctionDef)]
        assert set(functions) <= {"main", "parse_args"}, (name, functions)


def test_adding_a_strategy_needs_no_edit_in_dvc_yaml():
    """The overlays read the curves stage's one table, coloured by its `strategy` column; no
    strategy is named anywhere in dvc.yaml (a foreach over `strategies` runs each one)."""
    overlays = {name: entry for plot in DVC_YAML["plots"] for name, entry in plot.items()}
    assert set(overlays) == {"val_acc", "val_loss", "train_loss", "lr"}
    for name, entry in overlays.items():
        assert entry["y"] == {"plots/curves.tsv": name} and entry["template"] == "by_strategy"
    template = json.loads((ROOT / ".dvc/plots/by_strategy.json").read_text())
    assert template["encoding"]["color"]["field"] == "strategy"
    text = (ROOT / "dvc.yaml").read_text()
    assert not [name for name in PARAMS["strategies"] if re.search(rf"\b{name}\b", text)]


@pytest.mark.parametrize("name", sorted(STAGES))
def test_every_stage_main_takes_argv_and_a_params_file(name, capsys):
    module = importlib.import_module(f"stages.{name}")
    assert list(inspect.signature(module.main).parameters) == ["argv"]
    with pytest.raises(SystemExit) as exit_:
        module.main(["--help"])
    assert exit_.value.code == 0
    assert "--params PARAMS" in capsys.readouterr().out
    assert f"    {name} " in importlib.import_module("stages").__doc__  # listed as a stage


def test_training_resume_state_lives_outside_every_output_and_git():
    # DVC deletes a stage's outputs before running it: the resume state must not be one of them
    paths = DVC_YAML["vars"][0]["paths"]
    assert "--resume ${paths.resume}/${key}" in stage_body("train")["cmd"]

    def resolved(out) -> Path:
        name = out if isinstance(out, str) else next(iter(out))
        for key, value in paths.items():
            name = name.replace("${paths.%s}" % key, value)
        return Path(name.split("${")[0] or ".")  # "models/${key}.pt" -> models/

    resume = Path(paths["resume"])
    for out in (resolved(o) for body in map(stage_body, STAGES) for o in body.get("outs", [])):
        assert not (out == resume or out in resume.parents or resume in out.parents), out
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", str(resume / "finetune" / "seed0.pt")], cwd=ROOT
    )
    assert ignored.returncode == 0, f"{resume} must be git-ignored"


# the sections whose keys a stage reads: it tracks each of them, except the speed-only ones
READS = {"clean": ["clean"], "train": ["clean", "train"], "evaluate": ["evaluate"]}


@pytest.mark.parametrize("name", sorted(READS))
def test_stages_track_exactly_the_keys_that_change_their_outputs(name):
    tracked = {p for p in stage_body(name)["params"] if isinstance(p, str)}
    for section in READS[name]:
        assert section not in tracked, f"{name}: track {section}'s keys one by one"
        wanted = {f"{section}.{key}" for key in PARAMS[section]} - set(SPEED_ONLY)
        got = {key for key in tracked if key.startswith(f"{section}.")}
        assert got == wanted, (
            f"{name}: missing {sorted(wanted - got)}, extra {sorted(got - wanted)}"
        )


@pytest.mark.parametrize("name", sorted(STAGES))
def test_no_stage_tracks_a_speed_only_key(name):
    tracked = {p for p in stage_body(name).get("params", []) if isinstance(p, str)}
    for key in SPEED_ONLY:
        assert key not in tracked and key.split(".")[0] not in tracked, (name, key)


def test_the_committed_lock_matches_the_code():
    """dvc.lock's hash of every code file equals the file's: a commit that edits code without
    re-running (or `dvc commit`-ing) the stages that use it would ship stale results."""
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", "status", "--json"], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    stale = {
        (stage, path)
        for stage, entries in json.loads(proc.stdout or "{}").items()
        for entry in entries
        if isinstance(entry, dict)
        for path, what in entry.get("changed deps", {}).items()
        if path.endswith(".py") and what == "modified"
    }
    assert not stale, f"re-run these stages or `dvc commit` them: {sorted(stale)}"
