"""Metrics of one strategy trained under several seeds (`train.seeds`): the mean of every
number, and the spread of the ones that vary with the seed. Shared by train and evaluate, read
by report, so every metrics file has one shape:

    {<every key as in a one-seed file>: mean over runs,
     "std": {<spread key>: population std over runs},   # nested like the mean: std.tta.accuracy
     "seeds": N}

`std` mirrors the nesting of the values, so the spread of `tta.accuracy` is at
`std.tta.accuracy` (`dvc metrics show` prints it under that name).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

DECIMALS = 6  # tiny float noise must not show up in `dvc metrics diff`


def _mean(values: list) -> Any:
    if isinstance(values[0], dict):
        return {key: _mean([v[key] for v in values]) for key in values[0]}
    return round(float(np.mean(values)), DECIMALS)


def value_at(metrics: dict, key: str) -> Any:
    """metrics["tta"]["accuracy"] for key "tta.accuracy"; None where a level is missing."""
    for part in key.split("."):
        if not isinstance(metrics, dict) or part not in metrics:
            return None
        metrics = metrics[part]
    return metrics


def mean_std(per_run: Sequence[dict], spread: Sequence[str]) -> dict:
    """Mean of every number over the runs' metrics dicts (same keys in each), plus `std` for
    the dotted keys in `spread` and `seeds` = number of runs."""
    out = _mean(list(per_run))
    std: dict = {}
    for key in spread:
        *parents, leaf = key.split(".")
        node = std
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = round(float(np.std([value_at(m, key) for m in per_run])), DECIMALS)
    return {**out, "std": std, "seeds": len(per_run)}
