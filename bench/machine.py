"""What every benchmark records beside its numbers (the machine, how busy it was) and how it
updates its own generated block in BENCHMARKS.md, leaving the hand-written notes around it."""

from __future__ import annotations

import os
import platform
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TRANSFERLINE_SHARED", ROOT.parent / "shared"))


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine() -> str:
    return f"nproc {len(os.sched_getaffinity(0))}, {cpu_model()}"


def load(avg: tuple | None = None) -> str:
    """The 1/5/15-minute load averages, now or as given."""
    return " / ".join(f"{x:.2f}" for x in (avg or os.getloadavg()))


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}: begin -->", f"<!-- {name}: end -->"


def write_block(name: str, section: str, block: str, path: Path = ROOT / "BENCHMARKS.md") -> None:
    """Replace the `name` block (between its markers) in BENCHMARKS.md; append it under
    `## section` when the file has none yet."""
    begin, end = markers(name)
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + f"\n\n## {section}\n\n{block}\n"
    path.write_text(text)
