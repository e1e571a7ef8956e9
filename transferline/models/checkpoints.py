"""Checkpoints (`models/<strategy>.pt`): self-contained, so `load_checkpoint(path)` rebuilds the
architecture with random weights (no network) and loads the saved state; written atomically,
the same tensors giving the same bytes."""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from transferline.config.errors import StageError, disk_error, first_line
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


def read_torch_file(path: Path, what: str, map_location: Any = "cpu") -> Any:
    """torch.load with weights_only=True (tensors and plain data; nothing that runs code). A file
    torch cannot read, or one the safe loader refuses, is a StageError naming the file; it never
    suggests loading it unsafely."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except OSError as exc:
        if disk_error(exc) is not None:
            raise  # permission denied and the like: run_main names the path
        raise StageError(f"{path}: not a readable {what} ({exc.strerror or exc})") from None
    except Exception as exc:
        if not zipfile.is_zipfile(path):  # torch.save writes a zip (torch's own legacy format
            # would have loaded): whatever the unpickler tripped on, the file is something else
            raise StageError(f"{path}: not a {what} (not a file torch.save writes)") from None
        if not isinstance(exc, pickle.UnpicklingError):  # a torn zip, a foreign one
            raise StageError(f"{path}: not a readable {what} ({first_line(exc)})") from None
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        held = f" ({found.group(1)})" if found else ""
        raise StageError(
            f"{path}: refused: it holds Python objects{held} that loading would run as code; "
            f"a {what} holds only tensors and plain data"
        ) from None


def load_state(model: nn.Module, state: Any, source: Path | str, what: str) -> None:
    """Load `state` into `model` strictly; a state that does not fit names `source` and the
    first tensor that is missing, unexpected or of another shape."""
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise StageError(f"{source}: its {what} is not a state dict (names -> tensors)")
    own = model.state_dict()
    for name, tensor in own.items():
        if name not in state:
            raise StageError(f"{source}: does not fit: tensor {name!r} is missing")
        if state[name].shape != tensor.shape:
            raise StageError(
                f"{source}: does not fit: tensor {name!r} has shape {tuple(state[name].shape)}, "
                f"the model's is {tuple(tensor.shape)}"
            )
    extra = [name for name in state if name not in own]
    if extra:
        raise StageError(f"{source}: does not fit: unexpected tensor {extra[0]!r}")
    model.load_state_dict(state)


def read_checkpoint(path: Path, map_location: Any = "cpu") -> dict:
    """The checkpoint dict, its keys and types checked: a file that is not one of ours is a
    one-line StageError naming it and what is wrong."""
    ckpt = read_torch_file(path, "model checkpoint", map_location)
    if not isinstance(ckpt, dict):
        raise StageError(
            f"{path}: not a model checkpoint (holds a {type(ckpt).__name__}, not the dict "
            "train writes)"
        )
    missing = [k for k in (*CHECKPOINT_KEYS, "state_dict") if k not in ckpt]
    if missing == ["clean"]:
        raise StageError(
            f"{path}: records no `clean` settings (a checkpoint from before they "
            "were saved); re-run training (dvc repro) to get one predict can use"
        )
    if missing:
        raise StageError(f"{path}: not a model checkpoint train wrote: no {', '.join(missing)}")
    classes, n = ckpt["classes"], ckpt["num_classes"]
    if not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
        raise StageError(f"{path}: its `classes` is not a list of names")
    if type(n) is not int or n != len(classes):
        raise StageError(f"{path}: num_classes {n!r} does not match its {len(classes)} classes")
    tf = ckpt["transform"]
    if not (isinstance(tf, dict) and {"image_size", "mean", "std"} <= tf.keys()):
        raise StageError(f"{path}: its `transform` lacks image_size, mean or std")
    return ckpt


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> tuple[nn.Module, dict]:
    """(model in eval mode, checkpoint dict); needs no network and no params.yaml."""
    path = Path(path)
    if not path.is_file():
        raise StageError(f"{path}: model checkpoint not found; run the train stage first")
    ckpt = read_checkpoint(path, map_location)
    try:
        model = build(
            ckpt["arch"],
            ckpt["num_classes"],
            "none",
            ckpt.get("head"),
            image_size=int(ckpt["transform"]["image_size"]),
        )
    except (StageError, ValueError, TypeError, KeyError) as exc:  # unknown arch, bad head spec
        raise StageError(f"{path}: cannot rebuild its model: {exc}") from None
    load_state(model, ckpt["state_dict"], path, "state_dict")
    if isinstance(map_location, (str, torch.device)):
        model.to(map_location)
    return model.eval(), ckpt
