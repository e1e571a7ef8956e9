"""Grad-CAM (Selvaraju et al. 2017): where in the image a class's score comes from.

The activations of the backbone's last block (`models.blocks`, the block `trainable: 1` counts)
are weighted by the spatial mean of the class score's gradient with respect to them, summed over
channels, passed through ReLU, upsampled to the input and scaled to [0, 1]. Works for every
convolutional backbone, built in or timm's; a transformer's last block holds tokens, not a
feature map, and is refused with that reason.

A short implementation rather than the `grad-cam` package: that package adds two dependencies
(ttach and its own OpenCV use) for the 30 lines below, and it does not know our block names.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from transferline.config.errors import StageError
from transferline.models.registry import blocks


def target_layer(model: nn.Module, arch: str) -> nn.Module:
    """The module whose output Grad-CAM weighs: the last block of the backbone."""
    last = blocks(model, arch)[-1].split(" + ")[0]
    return model.get_submodule(last)


def grad_cam(model: nn.Module, arch: str, x: torch.Tensor, classes: list[int]) -> torch.Tensor:
    """Heat maps (N, H, W) in [0, 1] for a batch `x` (N, 3, H, W) and one class index each."""
    layer = target_layer(model, arch)
    seen: dict[str, torch.Tensor] = {}

    def keep(module, inputs, output):
        output.retain_grad()
        seen["act"] = output

    handle = layer.register_forward_hook(keep)
    model.eval()
    try:
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)  # gradients flow even through frozen weights
            scores = model(x)
            picked = scores.gather(1, torch.as_tensor(classes, device=scores.device)[:, None])
            model.zero_grad(set_to_none=True)
            picked.sum().backward()
    finally:
        handle.remove()
    act = seen["act"]
    if act.dim() != 4:
        raise StageError(
            f"{arch}: its last block gives {tuple(act.shape)} (tokens, not a feature map); "
            "Grad-CAM needs a convolutional backbone"
        )
    weights = act.grad.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * act).sum(dim=1, keepdim=True)).detach()
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    peak = cam.flatten(1).max(dim=1).values.clamp_min(1e-12)
    return cam / peak[:, None, None]
