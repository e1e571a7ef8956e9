"""The new classification head, found and replaced generically: the classifier a timm model
names, else the last `nn.Linear` in the module tree (or a richer `Head`), never a try/except on
`.fc` vs `.classifier`."""

from __future__ import annotations

from typing import Any

from torch import nn

from transferline.config.errors import StageError


class Head(nn.Sequential):
    """A head richer than one Linear: [Dropout] -> (Linear -> ReLU -> [Dropout]) per hidden
    width -> Linear. Its own class so head_name finds the whole of it, not its last Linear."""

    def __init__(self, in_features: int, num_classes: int, hidden: list[int], dropout: float):
        layers: list[nn.Module] = []
        for width in hidden:
            layers += [nn.Dropout(dropout)] if dropout else []
            layers += [nn.Linear(in_features, width), nn.ReLU(inplace=True)]
            in_features = width
        layers += [nn.Dropout(dropout)] if dropout else []
        super().__init__(*layers, nn.Linear(in_features, num_classes))


def new_head(in_features: int, num_classes: int, head: Any = None, bias: bool = True) -> nn.Module:
    """`head` (params.Head or its dict; None = default): one nn.Linear when it has no hidden
    layer and no dropout (the default, state_dict keys as before), else a Head."""
    cfg = head_spec(head)
    hidden, dropout = cfg["hidden"], cfg["dropout"]
    if not hidden and not dropout:
        return nn.Linear(in_features, num_classes, bias=bias)
    return Head(in_features, num_classes, hidden, dropout)


def head_spec(head: Any = None) -> dict:
    """{"hidden": [widths], "dropout": p} from params.Head, its dict, or None (the default)."""
    if hasattr(head, "model_dump"):
        head = head.model_dump()
    head = head or {}
    return {
        "hidden": [int(w) for w in head.get("hidden", [])],
        "dropout": float(head.get("dropout", 0.0)),
    }


def swap_head(model: nn.Module, new: nn.Module, name: str | None = None) -> nn.Module:
    """Put `new` at dotted `name` (default: the head, see head_name); returns the module it
    replaced."""
    parent, _, leaf = (name or head_name(model)).rpartition(".")
    owner = model.get_submodule(parent) if parent else model
    old = getattr(owner, leaf)
    setattr(owner, leaf, new)
    return old


def head_name(model: nn.Module) -> str:
    """Dotted name of the classification head: the Head module when there is one (a richer head,
    see new_head), else the classifier a timm model's configuration names (when it is one
    nn.Linear), else the last nn.Linear in the module tree."""
    heads = [n for n, m in model.named_modules() if isinstance(m, Head)]
    if heads:
        return heads[-1]
    named = (getattr(model, "pretrained_cfg", None) or {}).get("classifier")
    if isinstance(named, str) and isinstance(_submodule(model, named), nn.Linear):
        return named
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise StageError(f"{type(model).__name__} has no nn.Linear to use as the head")
    return linears[-1]


def _submodule(model: nn.Module, name: str) -> nn.Module | None:
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None
