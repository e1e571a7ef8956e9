"""The resume state of one training run (`.cache/resume/<strategy>/seedN.pt`): its one owner.

With a `Resume` the state after each epoch (weights, optimiser, schedule, grad scaler, every
random generator, the history and best-so-far, where in which phase) is written atomically to
one file. A later run with the same fingerprint (same config, code and data) starts from it and
ends with the same bytes as a run that was never interrupted; a state with another fingerprint
is discarded. The train stage removes the file once its outputs are written. The file lives
outside every DVC output (DVC deletes outputs before a stage runs) and is git-ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from transferline.engine.distributed import log
from transferline.outputs import atomic as files


@dataclass
class Resume:
    """Where one training run keeps its state between epochs, and what it must match."""

    path: Path
    fingerprint: str

    def load(self, device: torch.device) -> dict | None:
        """The saved state if it belongs to this run; a stale or unreadable one is removed."""
        if not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location=device, weights_only=True)
        except Exception as exc:  # a torn or foreign file: start over rather than fail
            log(f"{self.path}: unreadable resume state ({exc}); starting from scratch")
            state = None
        if state is None or state.get("fingerprint") != self.fingerprint:
            if state is not None:
                log(f"{self.path}: resume state of other params, code or data; discarded")
            self.clear()
            return None
        return state

    def save(self, state: dict) -> None:
        """Atomically (files.written): a kill at any moment leaves the previous epoch's state
        or this one, and at worst a temporary that the next save removes."""
        with files.written(self.path) as tmp:
            torch.save({**state, "fingerprint": self.fingerprint}, tmp)

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


def rng_state(steps) -> dict:
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "steps": [g.get_state() for g in steps.generators()],
    }


def set_rng_state(state: dict, steps) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"]:
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    for gen, saved in zip(steps.generators(), state["steps"], strict=True):
        gen.set_state(saved.cpu())
