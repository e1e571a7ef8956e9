"""A model file given by hand (`transferline predict --model F`, `transferline export --model F`)
that is not what it claims: a torn or foreign `.pt`, a pickle that would run code, a checkpoint
whose tensors do not fit, a broken `.onnx` or TorchScript file, a tampered sidecar. Each is one
line naming the file and what is wrong, exit status 2, never a traceback and never the advice
to turn off the safe loader; the payload of a malicious pickle never runs."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from transferline import cli, models
from transferline.config.errors import run_main
from transferline.config.params import Export
from transferline.models import export

from helpers import ROOT, checkpoint_meta, write_image

CLASSES = ("a", "b", "c")
RANDOM = np.random.default_rng(0).bytes(4096)  # the same bytes every run


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> Path:
    """A real checkpoint (cnn2, random weights), its export and an image to classify."""
    root = tmp_path_factory.mktemp("files")
    torch.manual_seed(0)
    model = models.build("cnn2", len(CLASSES), "none")
    models.save_checkpoint(root / "good.pt", model, checkpoint_meta("cnn2", CLASSES, 32))
    export.export(model_path=root / "good.pt", strategy="t", out=root / "export", settings=Export())
    write_image(
        root / "image.jpg", np.random.default_rng(0).integers(0, 256, (40, 40, 3), np.uint8)
    )
    return root


class Evil:
    """Unpickled, it would run a shell command that leaves a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _checkpoint_with(made: Path, path: Path, **changes) -> Path:
    ckpt = torch.load(made / "good.pt", weights_only=True)
    ckpt.update(changes)
    torch.save(ckpt, path)
    return path


def _copy_export(made: Path, work: Path, fmt_file: str) -> Path:
    shutil.copytree(made / "export", work / "export")
    return work / "export" / fmt_file


def _edit_sidecar(model_file: Path, edit) -> Path:
    side = model_file.with_name(model_file.name + ".json")
    meta = json.loads(side.read_text())
    edit(meta)
    side.write_text(json.dumps(meta))
    return model_file


def _torn(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _saved(path: Path, obj) -> Path:
    torch.save(obj, path)
    return path


CASES = {  # name -> (make the bad file in `work`, what the one line says after "<file>: ")
    "truncated .pt": (
        lambda m, w: _torn(Path(shutil.copy(m / "good.pt", w / "m.pt"))),
        "not a readable model checkpoint (",
    ),
    "random bytes .pt": (
        lambda m, w: _write(w / "m.pt", RANDOM),
        "not a model checkpoint (not a file torch.save writes)",
    ),
    "empty .pt": (
        lambda m, w: _write(w / "m.pt", b""),
        "not a model checkpoint (not a file torch.save writes)",
    ),
    "a tensor, not a checkpoint": (
        lambda m, w: _saved(w / "m.pt", torch.zeros(3)),
        "not a model checkpoint (holds a Tensor, not the dict train writes)",
    ),
    "a bare state dict": (
        lambda m, w: _saved(w / "m.pt", models.build("cnn2", 3, "none").state_dict()),
        "not a model checkpoint train wrote: no arch, num_classes, classes",
    ),
    "tensors of another arch": (
        lambda m, w: _checkpoint_with(m, w / "m.pt", arch="cnn3"),
        "does not fit: tensor",
    ),
    "another class count": (
        lambda m, w: _checkpoint_with(m, w / "m.pt", classes=["a", "b"]),
        "num_classes 3 does not match its 2 classes",
    ),
    "unknown arch": (
        lambda m, w: _checkpoint_with(m, w / "m.pt", arch="resnet999"),
        "cannot rebuild its model: unknown arch 'resnet999'",
    ),
    "torn .onnx": (
        lambda m, w: _torn(_copy_export(m, w, "model.onnx")),
        "not a readable ONNX model (",
    ),
    "random bytes .onnx": (
        lambda m, w: _write(_copy_export(m, w, "model.onnx"), RANDOM),
        "not a readable ONNX model (",
    ),
    "torn TorchScript": (
        lambda m, w: _torn(_copy_export(m, w, "model.torchscript.pt")),
        "not a readable TorchScript model (",
    ),
}
SIDECAR_CASES = {  # tampered sidecars: (model file, edit) -> what is said about the sidecar
    "a class dropped": (
        "model.onnx",
        lambda meta: meta["classes"].pop(),
        None,  # said about the model file: "gives (3,) outputs per image but its sidecar ..."
    ),
    "no normalisation": (
        "model.onnx",
        lambda meta: meta.pop("normalisation"),
        "normalisation: Field required",
    ),
    "unknown format": (
        "model.torchscript.pt",
        lambda meta: meta.update(format="tflite"),
        "format: Input should be 'onnx' or 'torchscript'",
    ),
    "bad clean settings": (
        "model.onnx",
        lambda meta: meta["clean"].update(jpeg_quality=7),
        "bad `clean` settings: jpeg_quality:",
    ),
    "infinite mean": (
        "model.torchscript.pt",
        lambda meta: meta["normalisation"].update(mean=[1e999, 0, 0]),
        "normalisation.mean.0: Input should be a finite number",
    ),
}


def _predict(model_file: Path, made: Path, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_:
        run_main(
            lambda: sys.exit(
                cli.main(["predict", str(made / "image.jpg"), "--model", str(model_file)])
            )
        )
    return exit_.value.code, capsys.readouterr().err


def _one_line(code: int, err: str, expected: str) -> None:
    assert code == 2, err
    assert err.startswith(expected), err
    assert len(err.splitlines()) == 1, err
    assert "weights_only" not in err and "Traceback" not in err


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_bad_model_file_is_one_line_naming_it(case, made, tmp_path, capsys):
    make, says = CASES[case]
    bad = make(made, tmp_path)
    code, err = _predict(bad, made, capsys)
    _one_line(code, err, f"error: {bad}: {says}")


@pytest.mark.parametrize("case", sorted(SIDECAR_CASES))
def test_a_tampered_sidecar_is_one_line_naming_it(case, made, tmp_path, capsys):
    name, edit, says = SIDECAR_CASES[case]
    model_file = _edit_sidecar(_copy_export(made, tmp_path, name), edit)
    code, err = _predict(model_file, made, capsys)
    if says is None:
        expected = f"error: {model_file}: gives (3,) outputs per image but its sidecar"
    else:
        expected = f"error: {model_file.with_name(name + '.json')}: {says}"
    _one_line(code, err, expected)


def test_a_sidecar_that_is_not_json_is_one_line(made, tmp_path, capsys):
    model_file = _copy_export(made, tmp_path, "model.onnx")
    model_file.with_name("model.onnx.json").write_bytes(b"\xff{not json")
    code, err = _predict(model_file, made, capsys)
    _one_line(code, err, f"error: {model_file}.json: not valid JSON")


@pytest.mark.parametrize("command", ["predict", "export"])
def test_a_malicious_pickle_is_refused_and_never_runs(command, made, tmp_path, capsys):
    """Through the `transferline` command's own entry point (predict and export read the file
    the same way in a process of their own: tests/engine/test_predict.py runs the command)."""
    marker = tmp_path / "pwned"
    bad = tmp_path / "model.pt"
    torch.save({"arch": "cnn2", "payload": Evil(marker)}, bad)
    args = [str(made / "image.jpg"), "--model", str(bad)]
    if command == "export":
        args = ["--model", str(bad), "--out", str(tmp_path / "out")]
        args += ["--params", str(ROOT / "params.yaml")]
    with pytest.raises(SystemExit) as exit_:
        run_main(lambda: sys.exit(cli.main([command, *args])))
    _one_line(
        exit_.value.code,
        capsys.readouterr().err,
        f"error: {bad}: refused: it holds Python objects (posix.system) that loading would run "
        "as code",
    )
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


def test_a_plain_pickle_is_not_a_checkpoint(made, tmp_path, capsys):
    bad = tmp_path / "m.pt"
    bad.write_bytes(pickle.dumps({"arch": "cnn2"}))
    code, err = _predict(bad, made, capsys)
    _one_line(code, err, f"error: {bad}: not a model checkpoint (not a file torch.save writes)")
