"""Which parameters train: `trainable` (all | head | N = last N blocks + head | module names)
resolved on a built network, and the batch-norm mode of what stays frozen."""

from __future__ import annotations

from typing import Any

from torch import nn

from transferline.config.errors import StageError
from transferline.models.heads import head_name
from transferline.models.registry import blocks


def _under(names: list[str], prefix: str) -> set[str]:
    return {n for n in names if n == prefix or n.startswith(prefix + ".")}


def _selected(model: nn.Module, arch: str, trainable: Any, names: list[str]) -> set[str]:
    if trainable == "all":
        return set(names)
    head = _under(names, head_name(model))
    if trainable == "head":
        return head
    if type(trainable) is int:
        bl = blocks(model, arch)
        if not 1 <= trainable <= len(bl):
            raise StageError(
                f"trainable: {trainable}, but {arch} has {len(bl)} blocks "
                f"({', '.join(bl)}); use 1..{len(bl)}, or `all`"
            )
        start = bl[-trainable].split(" + ")[0]  # a block of several modules: its first
        first = next(i for i, n in enumerate(names) if _under([n], start))
        return set(names[first:]) | head  # every parameter from that block on, in forward order
    if isinstance(trainable, list):
        modules = dict(model.named_modules())
        unknown = [t for t in trainable if not t or t not in modules]
        if unknown:
            top = [n for n, _ in model.named_children()]
            raise StageError(
                f"trainable: no module named {unknown} in {arch}; names are dotted "
                f"module paths, e.g. top level {top} or blocks {blocks(model, arch)}"
            )
        return head.union(*(_under(names, t) for t in trainable))
    raise StageError(f"trainable: {trainable!r}; use all | head | N | [module names]")


def _trainable_modules(module: nn.Module, prefix: str = "") -> list[str]:
    """Shortest dotted names covering exactly the trainable parameters."""
    out = []
    for name, p in module.named_parameters(recurse=False):
        if p.requires_grad:
            out.append(prefix + name)
    for name, child in module.named_children():
        flags = {p.requires_grad for p in child.parameters()}
        if flags == {True}:
            out.append(prefix + name)
        elif True in flags:
            out.extend(_trainable_modules(child, f"{prefix}{name}."))
    return out


def set_trainable(model: nn.Module, arch: str, trainable: Any) -> dict:
    """Set requires_grad: "all" | "head" | N (block[-N] onward + head) | [module names] (+ head).

    Returns {"trainable_params", "total_params", "trainable_modules"}.
    """
    names = [n for n, _ in model.named_parameters()]
    chosen = _selected(model, arch, trainable, names)
    for name, p in model.named_parameters():
        p.requires_grad_(name in chosen)
    return {
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "total_params": sum(p.numel() for p in model.parameters()),
        "trainable_modules": _trainable_modules(model),
    }


def train_mode(model: nn.Module, freeze_bn: bool = False) -> nn.Module:
    """model.train(), except that fully frozen modules stay in eval mode, and with `freeze_bn`
    every batch-norm layer too (normalising by its running statistics, which stay as they are;
    its scale and shift still train where they are trainable).

    A module whose parameters all have requires_grad=False (a frozen block, or a frozen
    BatchNorm inside a trainable one) is put in eval mode with everything inside it, so BN
    running statistics of frozen parts do not drift towards the new data and frozen dropout /
    stochastic depth stay off. Parameter-free modules (ReLU, the dropout before the head) follow
    their parent.
    """
    model.train()

    def visit(module: nn.Module) -> None:
        params = list(module.parameters())
        if params and not any(p.requires_grad for p in params):
            module.eval()
            return
        for child in module.children():
            visit(child)

    visit(model)
    if freeze_bn:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
    return model
