"""Fixtures only (helpers.py has the functions tests share): the real params.yaml as a dict,
tiny image folders, the shared datasets through clean (skipped with a reason when ../shared is
absent), tmpfs mounts, and a DVC site cache per test session."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest
import yaml
from filelock import FileLock

from transferline.config.params import Clean

from helpers import (
    ROOT,
    SHARED,
    Mounts,
    build_pipeline,
    extracted_tree,
    make_image_folder,
    run_clean,
)

pytest_plugins = ["http_server"]  # the `server` fixture: a real HTTP server on 127.0.0.1


# DVC must not phone home or share a site cache between test repos.
os.environ["DVC_NO_ANALYTICS"] = "1"


# Under pytest-xdist two workers' stage processes share the cores: OpenMP threads that spin
# while waiting would take turns from the other process (passive waiting changes no result).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


# Tests that press Ctrl-C (SIGINT) on a stage need it to arrive as in a terminal's foreground
# job. A non-interactive shell starts `make test &` with SIGINT ignored, and an ignored signal
# stays ignored in every child: handle it again here, so the children start with the default.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


# Stage commands run `python -m stages...`: make that this interpreter, activated or not.
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"


@pytest.fixture(autouse=True)
def _dvc_site_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("DVC_SITE_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "dvc-site"))


def pytest_collection_modifyitems(items):
    """Under pytest-xdist (worksteal) the list is split in halves, one per worker, each worker
    taking its half from the front and an idle worker stealing from the back of the other's.
    The tests of the built pipeline are the longest, so every other one goes to the front of
    the list (the first worker builds the pipeline and runs them) and the rest to the very end
    (the second worker reaches them after its share of the quick tests, by when the build is
    done); the other slow tests follow the first group, the quick ones fill the middle."""
    built, slow, quick = [], [], []
    for item in items:
        if "built_pipeline" in getattr(item, "fixturenames", ()):
            built.append(item)
        else:
            (slow if item.get_closest_marker("slow") else quick).append(item)
    items[:] = built[0::2] + slow + quick + built[1::2]


@pytest.fixture(scope="session")
def built_pipeline(tmp_path_factory, worker_id) -> Path:
    """The tiny demo through the whole pipeline, committed (helpers.build_pipeline): built once
    per test run, under pytest-xdist by the first worker that asks while the others wait for its
    lock. Never used in place: tests take a copy (helpers.copy_of)."""
    if worker_id == "master":
        return build_pipeline(tmp_path_factory.mktemp("built") / "repo")
    shared = tmp_path_factory.getbasetemp().parent / "built-pipeline"
    with FileLock(f"{shared}.lock"):
        if not (shared / "done").exists():
            build_pipeline(shared / "repo")
            (shared / "done").touch()
    return shared / "repo"


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    """../shared/datasets (real images); tests using it skip when it is not beside the repo."""
    path = SHARED / "datasets"
    if not path.is_dir():
        pytest.skip(
            f"real datasets not found at {path} (set TRANSFERLINE_SHARED to the folder "
            "holding datasets/); these tests need the shared hymenoptera/PetImages copies"
        )
    return path


@pytest.fixture
def params_raw() -> dict:
    """The project's real params.yaml as a plain dict, for tests to shrink or break."""
    return yaml.safe_load((ROOT / "params.yaml").read_text())


@pytest.fixture
def image_folder(tmp_path) -> Path:
    return make_image_folder(tmp_path / "images")


@pytest.fixture(scope="session")
def pets(shared_datasets, tmp_path_factory):
    """The PetImages subset (real corrupt files) through clean: its outputs and reports."""
    tmp = tmp_path_factory.mktemp("pets")
    ex = extracted_tree(tmp / "extracted", {"PetImages": shared_datasets / "PetImages-subset"})
    summary, manifest, rejected, metrics = run_clean(ex, tmp / "out", Clean(workers=2))
    return dict(
        summary=summary,
        manifest=manifest,
        rejected=rejected,
        metrics=metrics,
        src=shared_datasets / "PetImages-subset",
        out=tmp / "out" / "clean",
    )


@pytest.fixture(scope="session")
def hymenoptera(shared_datasets, tmp_path_factory):
    """hymenoptera (ships train/ and val/) through clean: its outputs and reports."""
    tmp = tmp_path_factory.mktemp("hym")
    ex = extracted_tree(
        tmp / "extracted", {"hymenoptera_data": shared_datasets / "hymenoptera_data"}
    )
    summary, manifest, rejected, metrics = run_clean(ex, tmp / "out", Clean(workers=2))
    return dict(manifest=manifest, rejected=rejected, metrics=metrics, out=tmp / "out" / "clean")


@pytest.fixture
def mounts():
    m = Mounts()
    yield m
    m.unmount_all()
