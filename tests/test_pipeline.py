"""The whole pipeline under real DVC in a throw-away git repo, on the demo shrunk to seconds:
`dvc repro` end to end, metrics and plots as DVC shows them, byte-identical re-runs, branches
compared with `dvc metrics diff` / `dvc plots diff`, `dvc exp run -S`, and a local DVC remote.

The repo is built once per module (a full run takes about a minute on 2 cores); tests that change
it work on their own clone or branch.
"""

import json
import os
import sys

import pytest
import yaml

from helpers import DVC, ROOT, TINY_STRATEGIES, copy_of, run

pytestmark = pytest.mark.slow

STRATEGIES = list(TINY_STRATEGIES)


def git(repo, *args):
    return run(["git", *args], repo).stdout


def dvc(repo, *args, check=True):
    return run(DVC + list(args), repo, check=check)


def tracked_state(repo) -> dict[str, bytes]:
    """dvc.lock plus every small tracked output, by path."""
    paths = [
        "dvc.lock",
        *sorted(
            p.relative_to(repo).as_posix()
            for folder in ("metrics", "plots", "reports")
            for p in (repo / folder).rglob("*")
            if p.is_file()
        ),
    ]
    return {p: (repo / p).read_bytes() for p in paths}


@pytest.fixture(scope="module")
def project(built_pipeline, tmp_path_factory):
    """This module's copy of the built pipeline (tests that change it take their own)."""
    return copy_of(built_pipeline, tmp_path_factory.mktemp("pipeline") / "repo")


def test_repro_runs_every_stage_and_leaves_status_clean(project):
    lock = (project / "dvc.lock").read_text()
    for stage in ["download", "extract", "clean", "split", "select", "predict", "export", "report"]:
        assert f"\n  {stage}:" in lock
    for name in STRATEGIES:
        assert f"train@{name}:" in lock and f"evaluate@{name}:" in lock
        assert (project / "models" / f"{name}.pt").stat().st_size > 0
    assert json.loads(dvc(project, "status", "--json").stdout) == {}
    assert git(project, "status", "--porcelain") == ""
    # nothing to do a second time
    assert "Stage 'train@finetune' didn't change, skipping" in dvc(project, "repro").stdout


def test_best_strategy_predictions_and_exports(project):
    best = json.loads((project / "metrics/best.json").read_text())
    assert best["strategy"] in STRATEGIES and best["by"] == "val_acc"
    evaluated = json.loads((project / f"metrics/eval/{best['strategy']}.json").read_text())
    assert best["test"]["accuracy"] == evaluated["accuracy"]
    rows = (project / "reports/predictions.csv").read_text().splitlines()
    assert rows[0] == "file,class,probability,top_k,error" and len(rows) == 1 + 4
    assert sorted(p.name for p in (project / "export").iterdir()) == [
        "model.onnx",
        "model.onnx.json",
        "model.torchscript.pt",
        "model.torchscript.pt.json",
    ]
    side = json.loads((project / "export/model.onnx.json").read_text())
    assert side["strategy"] == best["strategy"]
    report = (project / "reports/report.md").read_text()
    assert f"**Best strategy: {best['strategy']}**, chosen on validation" in report
    assert "![predictions](predictions.png)" in report


def test_every_output_file_has_the_mode_the_umask_gives(project):
    """Written through one rule with plain open(): none is 0600 (as mkstemp would make it)."""
    umask = os.umask(0)
    os.umask(umask)
    modes = {
        p.relative_to(project).as_posix(): p.stat().st_mode & 0o777
        for folder in ("data", "models", "metrics", "plots", "reports", "export")
        for p in (project / folder).rglob("*")
        if p.is_file()
    }
    assert {"reports/report.md", "reports/predictions.csv", "reports/rejected.csv"} <= set(modes)
    assert "metrics/clean.json" in modes and len(modes) > 50
    assert {path: mode for path, mode in modes.items() if mode != 0o666 & ~umask} == {}


def test_metrics_show_has_a_row_per_strategy(project):
    shown = json.loads(dvc(project, "metrics", "show", "--json").stdout)
    files = shown[""]["data"]
    for name in STRATEGIES:
        metrics = files[f"metrics/eval/{name}.json"]["data"]
        assert 0 <= metrics["accuracy"] <= 1
        assert set(metrics["tta"]) >= {"accuracy", "macro_f1"}
    keys = {frozenset(files[f"metrics/eval/{n}.json"]["data"]) for n in STRATEGIES}
    assert len(keys) == 1, "every strategy's metrics file has the same keys"


def test_plots_show_confusion_with_class_names(project):
    shown = json.loads(dvc(project, "plots", "show", "--json").stdout)
    classes = json.loads((project / "data/split/classes.json").read_text())["classes"]
    test_paths = [
        line.split(",")[0]
        for line in (project / "data/split/test.csv").read_text().splitlines()[1:]
    ]
    assert len(test_paths) >= len(classes)
    for name in STRATEGIES:
        (plot,) = [
            v for k, v in shown["data"].items() if k.endswith(f"plots/confusion/{name}.json")
        ]
        values = plot[0]["content"]["data"]["values"]
        # one record per test image, each with class names
        assert sorted(v["path"] for v in values) == sorted(test_paths)
        assert {v["actual"] for v in values} <= set(classes)
        assert {v["predicted"] for v in values} <= set(classes)
    for overlay in ("val_acc", "val_loss", "train_loss", "lr"):
        (plot,) = shown["data"][overlay]
        values = plot["content"]["data"]["values"]
        assert {v["strategy"] for v in values} == set(STRATEGIES), overlay
        assert plot["content"]["encoding"]["color"]["field"] == "strategy"


def test_a_new_strategy_is_trained_and_overlaid_with_no_edit_in_dvc_yaml(project, tmp_path):
    repo = copy_of(project, tmp_path / "repo")

    def add(p):
        p["strategies"]["extra"] = {**p["strategies"]["feature_extractor"], "lr": 0.01}

    edit_params(repo, add)
    ran = dvc(repo, "repro", "curves").stdout
    assert "Running stage 'train@extra'" in ran and "Running stage 'curves'" in ran
    assert "Running stage 'train@finetune'" not in ran
    assert git(repo, "status", "--porcelain", "dvc.yaml") == ""
    shown = json.loads(dvc(repo, "plots", "show", "--json", "val_acc").stdout)
    (plot,) = shown["data"]["val_acc"]
    strategies = {v["strategy"] for v in plot["content"]["data"]["values"]}
    assert strategies == {*STRATEGIES, "extra"}


def test_exp_run_then_a_branch_compared_with_metrics_and_plots_diff(project, tmp_path):
    """A variant tried with `dvc exp run -S`, listed by `dvc exp show`, kept as a git branch
    (`dvc exp branch`) and compared with main the way users compare branches."""
    repo = copy_of(project, tmp_path / "repo")
    # up to the training it changes (the queue test runs a variant up to its scores)
    ran = dvc(
        repo,
        "exp",
        "run",
        "-n",
        "lr-0.05",
        "-S",
        "strategies.feature_extractor.lr=0.05",
        "train@feature_extractor",
    ).stdout
    assert "Running stage 'train@feature_extractor'" in ran
    assert "Running stage 'train@finetune'" not in ran  # only what the change touches
    shown = dvc(repo, "exp", "show", "--md", "--no-pager").stdout
    (row,) = [line for line in shown.splitlines() if "lr-0.05" in line]
    assert "0.05" in row
    # the experiment's results are in the workspace, its params applied there too: what is
    # left stale is what comes after the target
    assert "lr: 0.05" in (repo / "params.yaml").read_text()
    stale = set(json.loads(dvc(repo, "status", "--json").stdout))
    assert stale == {
        "evaluate@feature_extractor",
        "select",
        "curves",
        "predict",
        "export",
        "report",
    }

    dvc(repo, "exp", "branch", "lr-0.05", "lr-change")
    assert "lr: 0.05" in git(repo, "show", "lr-change:params.yaml")
    diff = json.loads(dvc(repo, "metrics", "diff", "main", "lr-change", "--all", "--json").stdout)
    for name in STRATEGIES:
        accuracy = diff[f"metrics/eval/{name}.json"]["accuracy"]
        assert accuracy["old"] is not None and accuracy["new"] is not None
    assert any(v["old"] != v["new"] for v in diff["metrics/train/feature_extractor.json"].values())
    assert all(v["old"] == v["new"] for v in diff["metrics/train/finetune.json"].values())
    markdown = dvc(repo, "metrics", "diff", "main", "lr-change", "--all", "--md").stdout
    assert all(f"metrics/eval/{name}.json" in markdown for name in STRATEGIES)

    plots = json.loads(dvc(repo, "plots", "diff", "main", "lr-change", "--json").stdout)
    assert set(plots["data"]["val_acc"][0]["revisions"]) == {"main", "lr-change"}

    from transferline.tools.compare import render

    section = render(diff, "main", "lr-change")
    for name in STRATEGIES:
        assert f"| {name} |" in section


def output_bytes(repo) -> dict[str, bytes]:
    """Every file DVC or git tracks as a pipeline output or lock, by path."""
    return {
        p.relative_to(repo).as_posix(): p.read_bytes()
        for folder in ("data", "models", "metrics", "plots", "reports")
        for p in sorted((repo / folder).rglob("*"))
        if p.is_file()
    } | {"dvc.lock": (repo / "dvc.lock").read_bytes()}


def edit_params(repo, edit) -> None:
    import yaml

    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    edit(params)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


BAD_PARAMS = {  # edit -> the key path the error must name
    "unknown top-level key": (lambda p: p.update(foo=1), "foo: unknown key"),
    "misspelt section": (lambda p: p.update(evalute=p["evaluate"]), "evalute: unknown key"),
    "negative lr": (
        lambda p: p["strategies"]["finetune"].update(lr=-0.01),
        "strategies.finetune.lr:",
    ),
    "negative seed": (lambda p: p.update(seed=-1), "seed:"),
    "unknown dataset": (
        lambda p: p.update(dataset="nosuch"),
        "dataset: 'nosuch' is not an entry of `datasets:`; choose one of",
    ),
    "unused dataset entry": (
        lambda p: p["datasets"]["hymenoptera"]["archives"][0].update(sha256="abc"),
        "datasets.hymenoptera.archives.0.sha256:",
    ),
    "check section": (lambda p: p["check"].update(tolerance=-1), "check.tolerance:"),
    "unknown arch": (
        lambda p: p["strategies"]["finetune"].update(arch="resnet999"),
        "strategies.finetune.arch: unknown arch 'resnet999' (closest: resnet",
    ),
    # what download or predict refused only after DVC had deleted their outputs
    "ftp url": (
        lambda p: p["datasets"]["rps"]["archives"][0].update(url="ftp://example.org/rps.zip"),
        "datasets.rps.archives.0.url: ftp://example.org/rps.zip: unsupported URL scheme 'ftp'",
    ),
    "https url without a host": (
        lambda p: p["datasets"]["flowers"]["archives"][0].update(url="https:///flowers.tgz"),
        "datasets.flowers.archives.0.url: https:///flowers.tgz: an https URL needs a host",
    ),
    "url without a file name": (
        lambda p: p["datasets"]["rps"]["archives"][0].update(url="https://example.org/"),
        "datasets.rps.archives.0.url: https://example.org/: cannot name the file",
    ),
    "missing local archive": (
        lambda p: (
            p["datasets"].update(mine={"archives": [{"url": "/nonexistent/photos.zip"}]}),
            p.update(dataset="mine"),
        ),
        "datasets.mine.archives.0.url: /nonexistent/photos.zip: local path "
        "/nonexistent/photos.zip does not exist",
    ),
    "garbage url": (
        lambda p: (
            p["datasets"].update(mine={"archives": [{"url": "not a url at all"}]}),
            p.update(dataset="mine"),
        ),
        "datasets.mine.archives.0.url: not a url at all: local path",
    ),
    "missing predict.images": (
        lambda p: p["predict"].update(images="/nonexistent/folder"),
        "predict.images: /nonexistent/folder does not exist",
    ),
    "predict.images is a file": (
        lambda p: p["predict"].update(images="params.yaml"),
        "predict.images: params.yaml is not a folder",
    ),
    # no float means anything at infinity or NaN
    "infinite lr": (
        lambda p: p["strategies"]["finetune"].update(lr=float("inf")),
        "strategies.finetune.lr: Input should be a finite number (got inf)",
    ),
    "infinite weight decay": (
        lambda p: p["strategies"]["scratch"].update(weight_decay=float("inf")),
        "strategies.scratch.weight_decay: Input should be a finite number (got inf)",
    ),
    "infinite backoff": (
        lambda p: p["download"].update(backoff=float("inf")),
        "download.backoff: Input should be a finite number (got inf)",
    ),
    "huge backoff": (
        lambda p: p["download"].update(backoff=1e308),
        "download.backoff: Input should be less than or equal to 600",
    ),
    "nan tolerance": (
        lambda p: p["export"].update(tolerance=float("nan")),
        "export.tolerance: Input should be a finite number (got nan)",
    ),
    "image size word": (
        lambda p: p["train"].update(image_size="big"),
        "train.image_size: must be auto (the dataset entry's image_size) or px in 16..1024 "
        "(got 'big')",
    ),
}


# Two cases go through `dvc repro` (what DVC does around a failed validate is the same for any
# bad value); every case goes through the validate stage's own command, which names the key.
UNDER_DVC = ("unknown top-level key", "missing predict.images")


def test_bad_params_stop_repro_before_any_output_is_touched(project, tmp_path):
    repo = copy_of(project, tmp_path / "repo")
    before = output_bytes(repo)
    for case in UNDER_DVC:
        edit, named = BAD_PARAMS[case]
        edit_params(repo, edit)
        proc = dvc(repo, "repro", check=False)
        assert proc.returncode != 0, case
        assert named in proc.stderr + proc.stdout, f"{case}: {proc.stderr}"
        assert "Running stage 'validate'" in proc.stdout
        assert proc.stdout.count("Running stage") == 1, f"{case}: only validate may run"
        assert git(repo, "status", "--porcelain") == " M params.yaml\n", case
        assert output_bytes(repo) == before, case  # the stamp too: it persists
        git(repo, "checkout", "-q", "params.yaml")
        # undone, the pipeline is exactly as it was: nothing to re-run
        assert json.loads(dvc(repo, "status", "--json").stdout) == {}, case
    assert "Running stage" not in dvc(repo, "repro").stdout


@pytest.mark.parametrize("case", sorted(BAD_PARAMS))
def test_the_validate_stage_names_each_bad_key(case, tmp_path):
    edit, named = BAD_PARAMS[case]
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    edit(params)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    proc = run(
        [sys.executable, "-m", "stages.validate", "--params", "params.yaml", "--out", "ok"],
        tmp_path,
        check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 2, proc.stderr
    assert named in proc.stderr and "Traceback" not in proc.stderr
    assert "literal[" not in proc.stderr  # no pydantic union tags in a key
    assert not (tmp_path / "ok").exists()


RAW_PARAMS = {  # params.yaml bytes -> the one message
    "not UTF-8": (
        b"seed: 0\ndataset: caf\xe9\n",
        "error: params.yaml: not UTF-8 text (byte 20: b'\\xe9'); save it as UTF-8",
    ),
    "empty": (b"", "error: params.yaml: is empty; start from the shipped params.yaml"),
    "a list": (
        b"- seed: 0\n",
        "error: params.yaml: must be a mapping of sections (seed:, datasets:, strategies:, ...), "
        "not a list",
    ),
}


@pytest.mark.parametrize("case", sorted(RAW_PARAMS))
def test_an_unreadable_params_file_is_one_line_from_any_stage(case, tmp_path):
    """A stage run by hand, the validate stage and `transferline validate` (what `make repro`
    runs before DVC, which cannot parse dvc.yaml without `strategies:`) all name the file."""
    content, message = RAW_PARAMS[case]
    (tmp_path / "params.yaml").write_bytes(content)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for cmd in (
        ["stages.split", "--clean", "c", "--out", "s", "--metrics", "m.json"],
        ["stages.validate", "--out", "ok"],
        ["transferline", "validate"],
    ):
        proc = run([sys.executable, "-m", *cmd], tmp_path, check=False, env=env)
        assert proc.returncode == 2, (cmd, proc.stderr)
        assert proc.stderr.startswith(message), (cmd, proc.stderr)
        assert len(proc.stderr.splitlines()) == 1, (cmd, proc.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_a_forced_rerun_of_training_gives_the_same_bytes(project, tmp_path):
    """Every train stage and select run again (not restored from the run cache) and write
    the committed bytes, so nothing after them is stale. The stages after them are held to the
    same in their own tests (tests/engine/test_evaluate.py, tests/models/test_export.py,
    tests/report/test_report.py, tests/engine/test_predict.py: two runs, the same bytes in
    every file); `make check` covers the data stages' bytes, in another folder."""
    repo = copy_of(project, tmp_path / "repo")
    before = tracked_state(repo)
    stages = [f"train@{name}" for name in STRATEGIES]
    ran = dvc(repo, "repro", "--no-run-cache", "--force", "--single-item", *stages, "select")
    assert ran.stdout.count("Running stage") == len(stages) + 1
    assert tracked_state(repo) == before
    assert json.loads(dvc(repo, "status", "--json").stdout) == {}
    assert git(repo, "status", "--porcelain") == ""


def test_speed_only_settings_re_run_nothing(project, tmp_path):
    from transferline.config.params import SPEED_ONLY

    repo = copy_of(project, tmp_path / "repo")
    before = output_bytes(repo)

    def change_every_speed_only_key(params):
        for key in SPEED_ONLY:
            section, name = key.split(".")
            value = params[section][name]
            params[section][name] = (not value) if isinstance(value, bool) else value + 1

    edit_params(repo, change_every_speed_only_key)
    # validate reads the whole file (its stamp's bytes never change); nothing else is stale
    assert set(json.loads(dvc(repo, "status", "--json").stdout)) == {"validate"}
    ran = dvc(repo, "repro").stdout
    assert ran.count("Running stage") == 1 and "Running stage 'validate'" in ran
    assert json.loads(dvc(repo, "status", "--json").stdout) == {}
    after = output_bytes(repo)
    # dvc.lock records validate's params (the whole file): only that entry may change
    locks = [yaml.safe_load(state.pop("dvc.lock"))["stages"] for state in (before, after)]
    assert after == before
    assert {k: v for k, v in locks[0].items() if k != "validate"} == {
        k: v for k, v in locks[1].items() if k != "validate"
    }


def test_remote_push_then_fresh_clone_pulls_without_retraining(project, tmp_path):
    repo = copy_of(project, tmp_path / "repo")
    dvc(repo, "remote", "add", "-d", "storage", str(tmp_path / "remote"))
    git(repo, "commit", "-q", "-am", "add a DVC remote")
    dvc(repo, "push")
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
    dvc(clone, "pull")
    assert (clone / "models" / "finetune.pt").read_bytes() == (
        repo / "models" / "finetune.pt"
    ).read_bytes()
    assert json.loads(dvc(clone, "status", "--json").stdout) == {}
    assert "Running stage" not in dvc(clone, "repro").stdout
