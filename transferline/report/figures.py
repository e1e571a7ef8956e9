"""PNG figures that are byte-identical for the same content: fixed size and DPI, no software
version in the metadata, matplotlib's default style whatever the user's matplotlibrc says.
Shared by report and predict."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DPI = 100  # fixed, with fixed figure sizes: same pixels every run
PNG_METADATA = {"Software": None}  # matplotlib writes its version here by default


def save(fig: Figure, path: Path) -> None:
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=DPI, format="png", metadata=PNG_METADATA)


def grid(n: int, cols: int, cell: float) -> tuple[Figure, list]:
    """A figure of ceil(n / cols) x cols axes, `cell` inches each, axes switched off."""
    rows = math.ceil(n / cols)
    # at least 5 inches wide so the title fits over a single image
    fig = Figure(figsize=(max(cell * cols, 5.0), (cell + 0.35) * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for ax in axes:
        ax.set_axis_off()
    return fig, list(axes)


def hwc(image) -> np.ndarray:
    return np.asarray(image).transpose(1, 2, 0)  # (3, H, W) -> (H, W, 3) for imshow
