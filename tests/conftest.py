"""Shared test fixtures: the real params.yaml shrunk to seconds, tiny image folders, the shared
datasets (skipped with a reason when ../shared is absent), and a throw-away git + DVC repo."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

pytest_plugins = ["http_server"]  # the `server` fixture: a real HTTP server on 127.0.0.1

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TRANSFERLINE_SHARED", ROOT.parent / "shared"))

# DVC must not phone home or share a site cache between test repos.
os.environ["DVC_NO_ANALYTICS"] = "1"
# Stage commands run `python -m stages...`: make that this interpreter, activated or not.
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"


@pytest.fixture(autouse=True)
def _dvc_site_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("DVC_SITE_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "dvc-site"))


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    """../shared/datasets (real images); tests using it skip when it is not beside the repo."""
    path = SHARED / "datasets"
    if not path.is_dir():
        pytest.skip(f"real datasets not found at {path} (set TRANSFERLINE_SHARED to the folder "
                    "holding datasets/); these tests need the shared hymenoptera/PetImages copies")
    return path


@pytest.fixture
def params_raw() -> dict:
    """The project's real params.yaml as a plain dict, for tests to shrink or break."""
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def write_image(path: Path, rgb: np.ndarray, ext: str = ".jpg") -> Path:
    """Encode an (H, W, 3) uint8 RGB array with OpenCV and write it to `path`."""
    ok, buf = cv2.imencode(ext, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.tobytes())
    return path


def make_image_folder(root: Path, classes=("a", "b", "c"), per_class=8, size=48,
                      seed=0) -> Path:
    """root/<class>/<i>.jpg: each class a distinct colour with noise, so classes are learnable."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        base = np.zeros(3)
        base[c % 3] = 200
        for i in range(per_class):
            img = np.clip(base + rng.normal(0, 30, (size, size, 3)), 0, 255).astype(np.uint8)
            write_image(root / name / f"{i}.jpg", img)
    return root


@pytest.fixture
def image_folder(tmp_path) -> Path:
    return make_image_folder(tmp_path / "images")


def run(cmd: list[str], cwd: Path, check=True, **kw) -> subprocess.CompletedProcess:
    """Run a command, returning its output; on failure show stdout/stderr in the assertion."""
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} exited {proc.returncode}\n"
                             f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


DVC = [sys.executable, "-m", "dvc"]
PROJECT_FILES = ["dvc.yaml", "params.yaml", "stages", ".dvcignore", ".gitignore"]


def make_project_repo(dest: Path, params: dict | None = None) -> Path:
    """A fresh git + DVC repo holding this project's pipeline (optionally with other params),
    with one commit, so DVC's experiments and metrics diff have a baseline."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.exists():
            shutil.copy2(src, dest / name)
    if params is not None:
        (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q", "-b", "main"], dest)
    run(["git", "config", "user.email", "test@example.com"], dest)
    run(["git", "config", "user.name", "test"], dest)
    run(DVC + ["init", "-q"], dest)
    run(["git", "add", "-A"], dest)
    run(["git", "commit", "-q", "-m", "pipeline"], dest)
    return dest


def checkpoint_meta(arch: str = "cnn2", classes=("a", "b", "c"), image_size: int = 32,
                    head=None) -> dict:
    """Checkpoint metadata as train writes it, for a model built by hand in a test."""
    from stages import models
    from stages.params import Clean
    from stages.transforms import resize_size
    mean, std = models.norm_stats(arch)
    return {"arch": arch, "num_classes": len(classes), "classes": list(classes),
            "transform": {"image_size": image_size, "resize_size": resize_size(image_size),
                          "mean": mean, "std": std},
            "clean": Clean().model_dump(exclude={"workers"}), "head": models.head_spec(head),
            "strategy": {"name": "t"}, "best_epoch": 1, "select": "val_acc"}
