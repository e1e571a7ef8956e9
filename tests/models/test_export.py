"""transferline.models.export: ONNX and TorchScript files with sidecars, byte-identical for the same
checkpoint, whose probabilities on real and generated images match the checkpoint's within 1e-4
under ONNX Runtime and torch.jit, and that predict accepts."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from transferline import models
from transferline.commands import predict as predict_cmd
from transferline.config import archs
from transferline.config.params import Export
from transferline.engine import predict
from transferline.models import bundle, export

from helpers import ROOT, checkpoint_meta, make_image_folder, run

CLASSES = ("ants", "bees", "other")
TOLERANCE = 1e-4


def _checkpoint(path: Path, arch: str, head=None, image_size: int = 64) -> Path:
    """A model whose probabilities are far from uniform (a flat softmax would hide mistakes):
    pretrained backbone when there is one, head weights scaled up."""
    torch.manual_seed(0)
    weights = "pretrained" if archs.PRETRAINED[arch] else "none"
    model = models.build(arch, len(CLASSES), weights, head)
    with torch.no_grad():
        model.get_submodule(models.head_name(model)).apply(
            lambda m: m.weight.mul_(20) if isinstance(m, torch.nn.Linear) else None
        )
    models.save_checkpoint(path, model, checkpoint_meta(arch, CLASSES, image_size, head))
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    ckpt = _checkpoint(root / "models" / "best.pt", "efficientnet_lite0")
    diffs = export.export(model_path=ckpt, strategy="best", out=root / "export", settings=Export())
    return root, ckpt, diffs


def _images(tmp_path: Path, shared: Path | None) -> list[tuple[str, Path]]:
    folder = make_image_folder(tmp_path / "gen", classes=("x", "y"), per_class=3, size=80)
    files = sorted(folder.rglob("*.jpg"))
    if shared is not None:
        for cls in ("ants", "bees"):
            files += sorted((shared / "hymenoptera_data" / "val" / cls).glob("*.jpg"))[:4]
    return [(str(p), p) for p in files]


def _probabilities(model_file: Path, inputs) -> np.ndarray:
    b = bundle.load(model_file)
    results = predict.predict(inputs, b, top_k=len(CLASSES))
    assert all(r.ok for r in results)
    return np.array([[dict(r.top)[c] for c in CLASSES] for r in results])


def test_files_and_sidecars(exported):
    root, _, diffs = exported
    out = root / "export"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["model.onnx", "model.onnx.json", "model.torchscript.pt", "model.torchscript.pt.json"]
    )
    assert all(d <= TOLERANCE for d in diffs.values())
    for name, fmt in (("model.onnx", "onnx"), ("model.torchscript.pt", "torchscript")):
        side = json.loads((out / f"{name}.json").read_text())
        assert side["format"] == fmt and side["classes"] == list(CLASSES)
        assert side["image_size"] == 64 and side["input"]["shape"] == ["batch", 3, 64, 64]
        assert side["normalisation"] == {"mean": [0.5] * 3, "std": [0.5] * 3}
        assert side["clean"]["max_short_side"] == 256
        assert any("EXIF" in step for step in side["preprocessing"])


def test_onnx_runtime_and_torchscript_match_the_checkpoint_on_real_images(
    exported, tmp_path, request
):
    root, ckpt, _ = exported
    try:
        shared = request.getfixturevalue("shared_datasets")
    except pytest.skip.Exception:
        shared = None  # generated images only
    inputs = _images(tmp_path, shared)
    expected = _probabilities(ckpt, inputs)
    assert expected.max(axis=1).mean() > 0.6  # peaked enough for the comparison to mean much
    for name in ("model.onnx", "model.torchscript.pt"):
        got = _probabilities(root / "export" / name, inputs)
        assert np.abs(got - expected).max() <= TOLERANCE, name


def test_real_images_from_the_shared_hymenoptera_copy(exported, tmp_path, shared_datasets):
    # the same comparison, but failing loudly rather than falling back when the copy is there
    root, ckpt, _ = exported
    inputs = _images(tmp_path, shared_datasets)
    assert len(inputs) == 6 + 8
    expected = _probabilities(ckpt, inputs)
    got = _probabilities(root / "export" / "model.onnx", inputs)
    assert np.abs(got - expected).max() <= TOLERANCE


@pytest.mark.parametrize(
    "arch, head", [("cnn3", {"hidden": [32], "dropout": 0.5}), ("resnet18", None)]
)
def test_other_archs_and_a_richer_head_export_too(tmp_path, arch, head):
    ckpt = (
        _checkpoint(tmp_path / "m.pt", arch, head, image_size=48)
        if arch != "resnet18"
        else _untrained(tmp_path / "m.pt", arch)
    )
    diffs = export.export(model_path=ckpt, strategy="s", out=tmp_path / "out", settings=Export())
    assert max(diffs.values()) <= TOLERANCE
    inputs = _images(tmp_path, None)
    expected = _probabilities(ckpt, inputs)
    for name in ("model.onnx", "model.torchscript.pt"):
        assert np.abs(_probabilities(tmp_path / "out" / name, inputs) - expected).max() <= TOLERANCE


def _untrained(path: Path, arch: str) -> Path:
    torch.manual_seed(0)  # torchvision weights are not downloaded in tests
    models.save_checkpoint(
        path, models.build(arch, len(CLASSES), "none"), checkpoint_meta(arch, CLASSES, 48)
    )
    return path


def test_a_mismatch_beyond_the_tolerance_stops_before_anything_is_published(exported, tmp_path):
    _, ckpt, _ = exported
    with pytest.raises(Exception, match="differ from the checkpoint by .* > export.tolerance"):
        export.export(
            model_path=ckpt, strategy="best", out=tmp_path / "out", settings=Export(tolerance=1e-12)
        )
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == []  # no temporary folder left


def test_predict_command_accepts_an_exported_model(exported, tmp_path, capsys):
    root, _, _ = exported
    image = _images(tmp_path, None)[0][1]
    assert (
        predict_cmd.main([str(image), "--model", str(root / "export" / "model.onnx"), "--json"])
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["kind"] == "onnx" and len(out["predictions"][0]["top_k"]) == 3


@pytest.mark.slow
def test_export_writes_the_same_bytes_whatever_folder_the_project_is_in(tmp_path):
    """Two export processes, as the stage runs (one export per process: TorchScript numbers
    the classes it compiles within a process), from two folders: the same bytes. The packaged
    backbone's module sits in the virtualenv's site-packages and the head is this project's
    module: traced, both source files' absolute paths went into TorchScript's debug records."""
    ckpt = _checkpoint(
        tmp_path / "m.pt", "efficientnet_lite0", head={"hidden": [8], "dropout": 0.0}
    )
    written = []
    for where in ("a", "somewhere/else/b"):
        copy = tmp_path / where
        for package in ("stages", "transferline"):
            shutil.copytree(
                ROOT / package, copy / package, ignore=shutil.ignore_patterns("__pycache__")
            )
        out = copy / "export"
        # the stage as DVC runs it, from the copy (asserted: not the installed checkout)
        run(
            [
                sys.executable,
                "-c",
                "import runpy, sys, transferline; assert transferline."
                f"__file__.startswith({str(copy)!r}), transferline.__file__; "
                "sys.argv[0] = 'stages.export'; runpy.run_module('stages.export', "
                "run_name='__main__')",
                "--model",
                str(ckpt),
                "--out",
                str(out),
                "--params",
                str(ROOT / "params.yaml"),
            ],
            copy,
            env=dict(os.environ, PYTHONPATH=""),
        )
        blobs = {p.name: p.read_bytes() for p in sorted(out.iterdir())}
        assert all(
            str(copy).encode() not in b and b"site-packages" not in b for b in blobs.values()
        )
        written.append(blobs)
    assert written[0] == written[1]
    assert sorted(written[0]) == sorted(
        [
            export.ONNX_FILE,
            export.TORCHSCRIPT_FILE,
            export.ONNX_FILE + ".json",
            export.TORCHSCRIPT_FILE + ".json",
        ]
    )
