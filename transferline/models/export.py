"""export: the chosen model as ONNX and TorchScript, each with a sidecar JSON.

Reads `metrics/best.json` (the select stage's choice) and `models/<S>.pt`. Writes, in --out
(`export/`):

    model.onnx        + model.onnx.json         ONNX (opset `export.opset`), for ONNX Runtime etc.
    model.torchscript.pt + model.torchscript.pt.json   TorchScript, for torch.jit.load (no
                                                 project code needed)

Both take a float32 (N, 3, S, S) batch (N free, S the training `image_size`) prepared as the
sidecar's `preprocessing` lists, and return (N, C) logits; the sidecar also holds the class
names, normalisation and clean settings, so `transferline predict --model export/model.onnx`
works with it. Before anything is written, both files are run on seeded random inputs and
must give the checkpoint's probabilities within `export.tolerance`.

    python -m stages.export --best metrics/best.json --models models --out export

ONNX comes from torch's TorchScript-based exporter (`dynamo=False`): it needs no onnxscript,
runs offline and writes the same bytes for the same checkpoint (the dynamo exporter's graph
names are not guaranteed stable). TorchScript is `torch.jit.trace`: the input size is fixed
anyway, and tracing records timm's TF "same" padding of EfficientNet-Lite0 for that size
(scripting would compile the padding arithmetic; trace is simpler and exact at one size).
Both are byte-identical run after run, one export per process as the stage does it: within one
process TorchScript numbers the classes it has already compiled, so a second export there
differs in those names (and its serialization id), not in the numbers. They are also the same
bytes whatever folder the project (and its virtualenv) sits in: the TorchScript archive is
written without its debug records, which hold absolute source paths.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import torch

from transferline import models
from transferline.config.errors import StageError
from transferline.config.params import Export
from transferline.models import bundle as bundles
from transferline.outputs import atomic as files

ONNX_FILE = "model.onnx"
TORCHSCRIPT_FILE = "model.torchscript.pt"
CHECK_BATCH = 4  # random images in the parity check before writing


def _example(size: int, n: int = 1, seed: int = 0) -> torch.Tensor:
    """(n, 3, size, size) float32 in the range of normalised images."""
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def onnx_bytes(model: torch.nn.Module, size: int, opset: int) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        # the TorchScript-based exporter is chosen on purpose (see the module docstring)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.onnx.export(
            model,
            (_example(size),),
            buf,
            dynamo=False,
            opset_version=opset,
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
            do_constant_folding=True,
        )
    return buf.getvalue()


def torchscript_bytes(model: torch.nn.Module, size: int) -> bytes:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)  # jit.trace is deprecated
        traced = torch.jit.trace(model, _example(size), check_inputs=[(_example(size, 2, 1),)])
        buf = io.BytesIO()
        torch.jit.save(traced, buf)
    return _without_debug_records(buf.getvalue())


def _without_debug_records(archive: bytes) -> bytes:
    """The TorchScript archive less its `*.debug_pkl` records: those hold source ranges with the
    absolute path of every traced module's file (the virtualenv's site-packages), so the bytes
    would depend on where the project sits. torch.jit.load needs none of them (an error inside
    the model then names no Python source line). Copied with torch's own archive writer, so the
    layout (record alignment, version, serialization id) stays torch's."""
    reader = torch._C.PyTorchFileReader(io.BytesIO(archive))
    out = io.BytesIO()
    writer = torch._C.PyTorchFileWriter(out)
    for name in reader.get_all_records():
        if not name.endswith(".debug_pkl"):
            data = reader.get_record(name)
            writer.write_record(name, data, len(data))
    writer.write_end_of_file()
    return out.getvalue()


def _probs(fn, x: torch.Tensor) -> np.ndarray:
    with torch.inference_mode():
        return torch.softmax(torch.as_tensor(fn(x)).float(), dim=1).double().numpy()


def _check(folder: Path, reference: torch.nn.Module, size: int, tolerance: float) -> dict:
    """Max |probability difference| of each written file against the checkpoint."""
    x = _example(size, CHECK_BATCH, seed=1)
    expected = _probs(reference, x)
    diffs = {}
    for name in (ONNX_FILE, TORCHSCRIPT_FILE):
        loaded = bundles.from_exported(folder / name)
        diffs[name] = float(np.abs(_probs(loaded.model, x) - expected).max())
        if diffs[name] > tolerance:
            raise StageError(
                f"{name}: probabilities differ from the checkpoint by "
                f"{diffs[name]:.2e} > export.tolerance {tolerance}"
            )
    return diffs


def export(*, model_path: Path, strategy: str, out: Path, settings: Export) -> dict:
    """Write the two exported models and their sidecars to `out` (swapped in when all are
    written and checked); return the parity check's max differences."""
    model, ckpt = models.load_checkpoint(model_path)
    size = int(ckpt["transform"]["image_size"])
    with files.staged_dir(Path(out)) as tmp:  # swapped in once both files pass the check
        blobs = {
            ONNX_FILE: ("onnx", onnx_bytes(model, size, settings.opset)),
            TORCHSCRIPT_FILE: ("torchscript", torchscript_bytes(model, size)),
        }
        for name, (fmt, blob) in blobs.items():
            (tmp / name).write_bytes(blob)
            files.write_json(bundles.sidecar_path(tmp / name), bundles.sidecar(ckpt, fmt, strategy))
        diffs = _check(tmp, model, size, settings.tolerance)
    return diffs
