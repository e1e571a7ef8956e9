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

from transferline.commands.export import main
from transferline.config.errors import run_main

__all__ = ["main"]  # the stage is the user command: one parser, one call into the library

if __name__ == "__main__":
    run_main(main)
