"""Render `dvc metrics diff BASE` as a markdown section for a pull request, one table per metric
with every strategy side by side.

    transferline compare main [--out reports/compare.md]

DVC's own `--md` output is one long list of file/key rows; this regroups it so a reviewer sees,
for each headline metric, every strategy's base value, new value and change in one table.
A metrics file present on one side only shows as "-" (DVC's `--json` reports it as null with
exit status 0, which is easy to miss).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HEADLINE = ["accuracy", "tta.accuracy", "macro_f1", "balanced_accuracy", "log_loss"]


def group_by_strategy(diff: dict, folder: str = "metrics/eval/") -> dict[str, dict]:
    """{strategy: {key: {"old", "new"}}} for the per-strategy evaluation files."""
    return {Path(path).stem: keys for path, keys in sorted(diff.items()) if path.startswith(folder)}


def fmt(value) -> str:
    return "-" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def change(old, new) -> str:
    if not isinstance(old, (int, float)) or not isinstance(new, (int, float)):
        return "-"
    delta = new - old
    return "0" if delta == 0 else f"{delta:+.4f}"


def render(diff: dict, base: str, head: str = "workspace") -> str:
    strategies = group_by_strategy(diff)
    lines = [f"## Metrics: {head} vs {base}", ""]
    if not strategies:
        return "\n".join(lines + ["No evaluation metrics changed.", ""])
    for key in HEADLINE:
        rows = [(name, keys[key]) for name, keys in strategies.items() if key in keys]
        if not rows:
            continue
        lines += [
            f"**{key}**",
            "",
            f"| strategy | {base} | {head} | change |",
            "|---|---:|---:|---:|",
        ]
        lines += [
            f"| {name} | {fmt(v.get('old'))} | {fmt(v.get('new'))} | "
            f"{change(v.get('old'), v.get('new'))} |"
            for name, v in rows
        ]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="transferline compare", description=__doc__.split("\n\n")[0])
    ap.add_argument("base", help="git revision to compare against (e.g. main, origin/main)")
    ap.add_argument("--out", help="write the markdown here instead of stdout")
    args = ap.parse_args(argv)
    proc = subprocess.run(
        ["dvc", "metrics", "diff", args.base, "--all", "--json"], capture_output=True, text=True
    )
    if proc.returncode != 0:
        print(f"error: dvc metrics diff {args.base} failed:\n{proc.stderr}", file=sys.stderr)
        return 2
    text = render(json.loads(proc.stdout or "{}"), args.base)
    if args.out:
        Path(args.out).write_text(text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
