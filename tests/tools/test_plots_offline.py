"""`dvc plots show` / `dvc plots diff` pages render with no network: the project's .dvc/config
points DVC at the template transferline/tools/plots_template.py writes (Vega, Vega-Lite and
vega-embed inlined). Checked in a real headless Chromium cut off from the network (a fresh network
namespace when `unshare -n` works, and unresolvable hosts behind a dead proxy in any case), on a
screenshot: every chart of the project's dvc.yaml shows up as a coloured region, while DVC's default
CDN page, under the same conditions, stays blank."""

from __future__ import annotations

import configparser
import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from transferline.outputs.curves import write_combined

from helpers import DVC, ROOT, make_project_repo, run

BROWSERS = ("chromium", "chromium-browser", "google-chrome")  # Debian's name first
CHROMIUM = next((path for path in map(shutil.which, BROWSERS) if path), None)
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="chromium is not installed (apt-get install chromium; .ci/run installs it)",
    ),
]
CLASSES = ["circle", "square", "triangle"]
WINDOW = (1000, 6400)  # px; tall enough for every chart of the project's page
STRATEGIES = list(yaml.safe_load((ROOT / "params.yaml").read_text())["strategies"])
# the overlays at the end of dvc.yaml, plus per strategy its curves, its confusion matrix and
# its per-class scores
EXPECTED_CHARTS = len(yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"]) + 3 * len(
    STRATEGIES
)


def offline_prefix() -> list[str]:
    """`unshare -n` (a network namespace with no interfaces up) where this user may create one."""
    unshare = shutil.which("unshare")
    if unshare and subprocess.run([unshare, "-n", "true"], capture_output=True).returncode == 0:
        return [unshare, "-n"]
    return []


def screenshot(page: Path, png: Path) -> np.ndarray:
    """Headless Chromium's screenshot of `page` (BGR), taken with no way out to the network."""
    cmd = offline_prefix() + [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--no-first-run",
        f"--user-data-dir={png.parent / ('profile-' + png.stem)}",
        # without a namespace: no host resolves, and every request goes to a closed port
        "--host-resolver-rules=MAP * ~NOTFOUND",
        "--proxy-server=127.0.0.1:9",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        "--virtual-time-budget=20000",
        f"--screenshot={png}",
        page.as_uri(),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0 and png.is_file(), proc.stderr[-2000:]
    return cv2.imread(str(png))


def chart_regions(bgr: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Bounding boxes (x, y, w, h) of the coloured regions a rendered chart leaves: lines and
    heatmap cells are saturated colours, text, axes and grid are grey. Nearby marks (dashed
    lines, a heatmap's colour bar) are merged by a 25 px dilation; specks (legend symbols,
    slider knobs) are dropped."""
    hsv = cv2.cvtColor(bgr, cv2.COLOR_BGR2HSV)
    coloured = ((hsv[..., 1] > 30) & (hsv[..., 2] > 60)).astype(np.uint8)
    merged = cv2.dilate(coloured, np.ones((25, 25), np.uint8))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(merged)
    boxes = []
    for i in range(1, n):
        x, y, w, h, _ = stats[i]
        if coloured[labels == i].sum() >= 400:  # px of real colour, not of the dilation
            boxes.append((int(x), int(y), int(w), int(h)))
    return sorted(boxes, key=lambda b: (b[1], b[0]))


def write_plots(repo: Path, strategies: list[str], shift: float) -> None:
    """Per-strategy curves that rise over the whole y range (one unbroken region per chart) and
    confusion records, at the paths the project's dvc.yaml declares."""
    (repo / "plots/train").mkdir(parents=True, exist_ok=True)
    (repo / "plots/confusion").mkdir(parents=True, exist_ok=True)
    (repo / "plots/per_class").mkdir(parents=True, exist_ok=True)
    for k, name in enumerate(strategies):
        with (repo / f"plots/train/{name}.tsv").open("w", newline="") as f:
            w = csv.writer(f, delimiter="\t", lineterminator="\n")
            w.writerow(["epoch", "phase", "lr", "train_loss", "train_acc", "val_loss", "val_acc"])
            for e in range(1, 11):
                t = (e - 1) / 9 + shift + 0.05 * k
                w.writerow([e, 1, 0.01 * (1 - t / 2), 2 - t, t / 2, 2.1 - t, t / 2])
        records = [
            {"actual": a, "predicted": p, "path": f"images/{a}/{i}.jpg"}
            for i, (a, p) in enumerate(
                (a, p) for a in CLASSES for p in CLASSES for _ in range(1 + 3 * (a == p) + k)
            )
        ]
        (repo / f"plots/confusion/{name}.json").write_text(json.dumps(records))
        table = [
            {"class": c, "precision": 0.5, "recall": 0.5, "f1": 0.3 + 0.2 * i + shift, "support": 4}
            for i, c in enumerate(CLASSES)
        ]
        (repo / f"plots/per_class/{name}.json").write_text(json.dumps(table))
    # the overlays' table, as the curves stage writes it
    write_combined(strategies, repo / "plots/train", repo / "plots/curves.tsv")


@pytest.fixture(scope="module")
def plots_repo(tmp_path_factory):
    """The project's pipeline with its .dvc/config and the generated template, plots for every
    strategy committed, then changed in the workspace (so `plots diff HEAD` has two revisions)."""
    repo = make_project_repo(tmp_path_factory.mktemp("plots") / "repo")
    shutil.copy(ROOT / ".dvc/config", repo / ".dvc/config")
    run(
        [
            sys.executable,
            "-m",
            "transferline.tools.plots_template",
            "--out",
            str(repo / ".dvc/plots.html"),
        ],
        ROOT,
    )
    write_plots(repo, STRATEGIES, 0.0)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-q", "-m", "plots"], repo)
    write_plots(repo, STRATEGIES, 0.2)
    return repo


def render(repo: Path, command: list[str], out: str) -> tuple[Path, int]:
    """Run `dvc plots <command> -o <out>`; the page and the number of charts on it."""
    run(DVC + ["plots", *command, "-o", out], repo)
    page = repo / out / "index.html"
    return page, page.read_text().count("vegaEmbed('#")


def test_template_is_configured_and_self_contained():
    config = configparser.ConfigParser()
    config.read(ROOT / ".dvc/config")
    assert config["plots"]["html_template"] == "plots.html"
    from transferline.tools.plots_template import page

    text = page()
    assert "{plot_divs}" in text and "{scripts}" not in text and "<script src" not in text
    assert "window.vegaEmbed" in text


@pytest.mark.parametrize("command", [["show"], ["diff", "HEAD"]])
def test_every_chart_renders_offline(plots_repo, tmp_path, command):
    page, charts = render(plots_repo, command, f"page-{command[0]}")
    assert charts == EXPECTED_CHARTS
    assert "cdn.jsdelivr" not in page.read_text()

    shot = screenshot(page, tmp_path / f"{command[0]}.png")
    regions = chart_regions(shot)
    assert len(regions) == charts, regions


def test_the_default_cdn_page_is_blank_under_the_same_conditions(plots_repo, tmp_path):
    """The check above can fail: without the template, DVC's page needs the CDN and shows
    nothing at all in the same browser, while the template's page of the same plots does."""
    run(DVC + ["config", "--unset", "plots.html_template"], plots_repo)
    try:
        page, charts = render(plots_repo, ["show"], "page-cdn")
    finally:
        run(DVC + ["config", "plots.html_template", "plots.html"], plots_repo)
    assert charts == EXPECTED_CHARTS and "cdn.jsdelivr" in page.read_text()

    shot = screenshot(page, tmp_path / "cdn.png")
    assert chart_regions(shot) == []
    assert (shot.min(axis=2) < 250).sum() == 0  # not a single non-white pixel
