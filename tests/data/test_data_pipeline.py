"""The data half under real DVC in a throw-away git repo: hymenoptera zipped from
../shared/datasets, served by a real HTTP server on 127.0.0.1, through
download -> extract -> clean -> split with `dvc repro split`; then a forced re-run of every data
stage, clean with one worker instead of two, must leave every data output's hash in dvc.lock
unchanged."""

import json

import pytest
import yaml

from helpers import DVC, make_project_repo, run, zip_folder

pytestmark = pytest.mark.slow

DATA_STAGES = ["download", "extract", "clean", "split"]


def data_hashes(repo) -> dict:
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    return {stage: [(o["path"], o["md5"]) for o in lock[stage]["outs"]] for stage in DATA_STAGES}


def test_hymenoptera_over_http_through_split(shared_datasets, server, tmp_path, params_raw):
    archive = zip_folder(
        shared_datasets / "hymenoptera_data", tmp_path / "hymenoptera_data.zip", "hymenoptera_data"
    )
    server.files["/tutorial/hymenoptera_data.zip"] = archive.read_bytes()
    params_raw["dataset"] = "hymenoptera"
    params_raw["datasets"]["hymenoptera"]["archives"] = [
        {"url": server.url("/tutorial/hymenoptera_data.zip")}
    ]
    repo = make_project_repo(tmp_path / "repo", params_raw)

    run(DVC + ["repro", "split"], repo)
    assert server.log == [("/tutorial/hymenoptera_data.zip", None)]
    clean = json.loads((repo / "metrics/clean.json").read_text())
    split = json.loads((repo / "metrics/split.json").read_text())
    assert clean["kept"] + clean["rejected"] == 245 + 153
    assert clean["rejected"] == 0  # the ants' GIF placeholder is a valid image: kept
    assert split["val"]["total"] == 153  # the tutorial's val split, untouched
    assert split["train"]["total"] + split["test"]["total"] == 245
    assert set(split["test"]["classes"]) == {"ants", "bees"}
    assert json.loads(run(DVC + ["status", "--json", "split"], repo).stdout) == {}

    before = data_hashes(repo)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["clean"]["workers"] = 1
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    # a speed-only key: DVC re-runs nothing; every data stage forced, clean with one worker
    # instead of two, writes the same bytes
    assert "Running stage 'clean'" not in run(DVC + ["repro", "split"], repo).stdout
    out = run(DVC + ["repro", "--force", "split"], repo).stdout
    assert all(f"Running stage '{stage}'" in out for stage in DATA_STAGES), out
    assert data_hashes(repo) == before
    assert len(server.log) == 1  # the verified download is reused, not fetched again
