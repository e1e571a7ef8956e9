"""PNG figures that are byte-identical for the same content: fixed size and DPI, no software
version in the metadata, matplotlib's default style whatever the user's matplotlibrc says.
Shared by report and predict."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib import style
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


MAX_NAME = 26  # characters of a file name under a gallery image (longer: its end, after "...")


def gallery_title(record: dict[str, str], sources: dict[str, str]) -> str:
    """ "predicted / true" over the user's own file name (the clean manifest's source; the clean
    path when there is none), its end kept when it is long."""
    name = Path(sources.get(record["path"], record["path"])).name
    if len(name) > MAX_NAME:
        name = "..." + name[-(MAX_NAME - 3) :]
    return f"{record['predicted']} / {record['actual']}\n{name}"


HEAT_ALPHA = 0.45  # opacity of a heat map over its image


def heat_map_grid(
    images: list[np.ndarray],
    maps: list[np.ndarray] | None,
    titles: list[str],
    path: Path,
    suptitle: str,
    *,
    wrong: list[bool] | None = None,
    note: str | None = None,
    cols: int = 4,
) -> None:
    """Images (3, H, W) in [0, 1], each under its heat map (H, W) in [0, 1] (`jet`, half
    transparent), titled; titles of `wrong` ones in red. `maps` None: the images alone, with
    `note` (why there are no maps) under the title; no images: the note alone."""
    with style.context("default"):  # whatever the user's matplotlibrc says
        n = max(len(images), 1)
        fig, axes = grid(n, min(n, cols), 2.2)
        for k, (ax, image) in enumerate(zip(axes, images)):
            ax.imshow(np.clip(hwc(image), 0, 1))
            if maps is not None:
                ax.imshow(maps[k], cmap="jet", alpha=HEAT_ALPHA, vmin=0, vmax=1)
            red = bool(wrong and wrong[k])
            ax.set_title(titles[k], fontsize="small", color="red" if red else "black")
        if not images:
            axes[0].text(0.5, 0.5, note or "no images", ha="center", va="center", wrap=True)
        elif note:
            suptitle = f"{suptitle}\n{note}"
        fig.suptitle(suptitle)
        path.parent.mkdir(parents=True, exist_ok=True)
        save(fig, path)
