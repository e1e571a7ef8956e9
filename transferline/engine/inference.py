"""Class probabilities from a model over batches of images: the one inference loop that evaluate
and predict share (single views or TTA views, on whatever device and precision the runtime says).
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import torch

from transferline.engine.runtime import Runtime, resolve


@torch.inference_mode()
def predict_probs(
    model: torch.nn.Module,
    batches: Iterable[Sequence[torch.Tensor]],
    rt: Runtime | None = None,
    chunk: int = 64,
) -> np.ndarray:
    """Softmax probabilities (N, C) float64 for every image the batches yield, in order.

    A batch's first item is either (B, 3, H, W) single views or (B, V, 3, H, W) TTA views; for the
    latter the softmax of each view is averaged over V (averaging probabilities, not logits).
    At most `chunk` images go through the model at once, so 10 TTA views do not need 10x memory.
    The model must already be on rt.device (rt.place); rt defaults to CPU fp32.
    """
    rt = rt or resolve(device="cpu")
    out = []
    for batch in batches:
        x = batch[0]
        views = x.shape[1] if x.dim() == 5 else 1
        flat = x.flatten(0, 1) if x.dim() == 5 else x  # (B*V, 3, H, W)
        with rt.autocast():
            logits = torch.cat([model(rt.batch(part)).float() for part in flat.split(chunk)])
        probs = torch.softmax(logits, dim=1).view(x.shape[0], views, -1).mean(dim=1)
        out.append(probs.double().cpu())
    if not out:
        return np.zeros((0, 0))
    probs = torch.cat(out).numpy()
    # float32 softmax sums to 1 only within ~1e-7; sklearn's log_loss wants rows that sum to 1
    return probs / probs.sum(axis=1, keepdims=True)
