"""Checkpoints (`models/<strategy>.pt`): self-contained, so `load_checkpoint(path)` rebuilds the
architecture with random weights (no network) and loads the saved state; written atomically,
the same tensors giving the same bytes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from transferline.config.errors import StageError
from transferline.models.registry import build
from transferline.outputs import atomic as files

CHECKPOINT_KEYS = (
    "arch",
    "num_classes",
    "classes",
    "transform",
    "clean",
    "head",
    "strategy",
    "best_epoch",
    "select",
)


def save_checkpoint(path: str | Path, model: nn.Module, meta: dict) -> None:
    """Atomically write {**meta, "state_dict"} (see docs/pipeline.md) to `path`.

    torch.save records the file name inside its zip; `files.written` writes it under its final
    name in a temporary folder beside `path` and then moves it: same tensors -> same bytes.
    """
    missing = [k for k in CHECKPOINT_KEYS if k not in meta]
    if missing:
        raise ValueError(f"checkpoint meta lacks {missing}")
    state = cpu_state(model.state_dict())
    with files.written(Path(path)) as tmp:
        torch.save({**meta, "state_dict": state}, tmp)


def cpu_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU, row-major copies of a state dict: the same bytes whether a run used CUDA or
    channels_last."""
    return {
        k: v.detach().to("cpu").clone(memory_format=torch.contiguous_format)
        for k, v in state.items()
    }


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> tuple[nn.Module, dict]:
    """(model in eval mode, checkpoint dict); needs no network and no params.yaml."""
    path = Path(path)
    if not path.is_file():
        raise StageError(f"{path}: model checkpoint not found; run the train stage first")
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    model = build(ckpt["arch"], ckpt["num_classes"], "none", ckpt.get("head"))
    model.load_state_dict(ckpt["state_dict"])
    if isinstance(map_location, (str, torch.device)):
        model.to(map_location)
    return model.eval(), ckpt
