"""`weights: <path>`: a backbone's weights from a local file, for machines without network.

The file is a safetensors file (`.safetensors`, what timm and the Hugging Face Hub publish) or a
PyTorch state dict (`torch.save`), bare or under a `state_dict` / `model` key (timm's and most
training scripts' checkpoints), `module.` prefixes of DistributedDataParallel removed (timm's
clean_state_dict). A PyTorch file is read with the safe loader (tensors and plain data only): a
pickle that would run code is refused, never loaded. timm models get the file through the model
family's own checkpoint filter where it has one (timm's conversion of original-format files, a
ViT's position embeddings resampled to this input size), as timm's own pretrained loading does.

The classifier is the only part allowed not to fit (a file fine-tuned on other classes, or
saved without its head): the new head replaces it anyway. Anything else that does not fit names
the file and the first mismatched tensor.
"""

from __future__ import annotations

import hashlib
import importlib
from pathlib import Path

import torch
from torch import nn

from transferline.config.errors import StageError, first_line
from transferline.models.checkpoints import load_state, read_torch_file
from transferline.models.heads import head_name

WHAT = "weights file"


def sha256(path: Path) -> str:
    """Hex digest of the file's bytes (the checkpoint records which file it started from)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_weights_file(path: Path) -> dict[str, torch.Tensor]:
    """The state dict a weights file holds (names -> tensors); StageError naming the file when
    it is missing, unreadable, unsafe or holds something else."""
    if not path.is_file():
        raise StageError(
            f"{path}: weights file not found (strategies.<s>.weights names a file, relative to "
            "the project root)"
        )
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            problem = first_line(exc)
            raise StageError(f"{path}: not a readable safetensors file ({problem})") from None
    else:
        state = read_torch_file(path, WHAT)
    if isinstance(state, dict):
        for key in ("state_dict", "model"):  # a training checkpoint around the weights
            inner = state.get(key)
            if isinstance(inner, dict) and inner:
                state = inner
                break
    if (
        not isinstance(state, dict)
        or not state
        or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items())
    ):
        raise StageError(
            f"{path}: not a state dict (names -> tensors); a {WHAT} holds a model's "
            "state_dict(), bare or under `state_dict`"
        )
    from timm.models import clean_state_dict

    return clean_state_dict(state)


def load_weights_file(model: nn.Module, path: Path, arch: str) -> None:
    """Load `path` into `model` (which still has its original head); see the module docstring."""
    state = read_weights_file(path)
    state = _timm_filter(model, state, path)
    own = model.state_dict()
    head = head_name(model)
    for name in [n for n in own if n == head or n.startswith(head + ".")]:
        theirs = state.get(name)
        if theirs is None or theirs.shape != own[name].shape:
            state[name] = own[name]  # another class count, or none: the new head replaces it
    load_state(model, state, path, f"{WHAT} for {arch}")


def _timm_filter(model: nn.Module, state: dict, path: Path) -> dict:
    if not hasattr(model, "pretrained_cfg"):
        return state  # not a timm model
    module = importlib.import_module(type(model).__module__)
    filter_fn = getattr(module, "checkpoint_filter_fn", None)
    if filter_fn is None:
        return state
    try:
        return dict(filter_fn(state, model))
    except Exception as exc:  # a file of another architecture trips the conversion
        raise StageError(
            f"{path}: does not fit {type(model).__name__} ({first_line(exc)})"
        ) from None
