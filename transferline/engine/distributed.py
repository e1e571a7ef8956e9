"""More than one training process: PyTorch DistributedDataParallel under torchrun.

`train.nproc: N` makes the train stage start itself N times through torchrun's launcher
(`torch.distributed.run`, the code behind the `torchrun` command), so `dvc.yaml` keeps one plain
command. Under an outer `torchrun` (several machines: `--nnodes`, `--rdzv-endpoint`) the stage
sees RANK/WORLD_SIZE already set and does not start anything itself.

Every rank draws the same seeded order and per-sample seeds and takes its own slice of them
(data.SeededSampler), so order and augmentation still depend only on the seed; with the global
batch `train.batch_size` split evenly, the ranks' batches together are the one-process batches.
Losses and counts are summed across ranks; rank 0 alone writes files.
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
import torch.distributed as dist
from tqdm import tqdm

from transferline.config.errors import StageError


@dataclass(frozen=True)
class World:
    rank: int = 0  # this process among all (0 writes the outputs)
    local_rank: int = 0  # this process on its machine (picks the GPU)
    size: int = 1  # processes in all

    @property
    def main(self) -> bool:
        return self.rank == 0


def world() -> World:
    """This process's place, from the variables torchrun sets (one process without them)."""
    env = os.environ
    return World(
        int(env.get("RANK", 0)), int(env.get("LOCAL_RANK", 0)), int(env.get("WORLD_SIZE", 1))
    )


def launched() -> bool:
    return "WORLD_SIZE" in os.environ


def launch(nproc: int, module: str, argv: Sequence[str]) -> None:
    """Run `python -m module argv` as `nproc` processes on this machine (torchrun --standalone);
    a failure of any of them ends all of them and becomes one clear error."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    args = get_args_parser().parse_args(
        ["--standalone", f"--nproc-per-node={nproc}", "--module", module, *argv]
    )
    try:
        run(args)
    except ChildFailedError as exc:
        ranks = ", ".join(
            f"rank {r} (exit code {f.exitcode})" for r, f in sorted(exc.failures.items())
        )
        raise StageError(
            f"{module}: {ranks} of {nproc} processes failed; their messages are "
            "above. No output was written (rank 0 writes only at the end)"
        ) from None


@contextlib.contextmanager
def process_group(device: torch.device) -> Iterator[World]:
    """Join the other processes (NCCL between GPUs, gloo on CPU) for the block's duration;
    a group the caller has joined already is used as it is."""
    w = world()
    if w.size == 1 or dist.is_initialized():
        # one process, or a caller that joined the group itself (and leaves it when done)
        yield w
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield w
    finally:
        dist.destroy_process_group()


def threads_per_process(threads: int) -> int:
    """CPU threads for each of the processes on this machine: `threads` divided among them,
    so N processes do not oversubscribe the cores (each OpenMP thread spins on its core)."""
    return max(1, threads // int(os.environ.get("LOCAL_WORLD_SIZE", 1)))


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def sum_all(*values: torch.Tensor) -> list[torch.Tensor]:
    """Each tensor summed over every rank (unchanged with one process)."""
    if not active():
        return list(values)
    out = []
    for v in values:
        v = v.clone()
        dist.all_reduce(v)
        out.append(v)
    return out


def gather_rows(x: torch.Tensor, total: int) -> torch.Tensor:
    """Undo the interleaved split: rank r holds rows r, r + W, r + 2W, ... of `total` rows;
    every rank gets all of them back in order."""
    if not active():
        return x
    size = dist.get_world_size()
    per = -(-total // size)  # ceil: all_gather wants equal shapes, so pad the short shards
    padded = torch.zeros((per, *x.shape[1:]), dtype=x.dtype, device=x.device)
    padded[: len(x)] = x
    parts = [torch.empty_like(padded) for _ in range(size)]
    dist.all_gather(parts, padded)
    return torch.stack(parts, dim=1).flatten(0, 1)[:total]  # row j*W + r = parts[r][j]


def broadcast_object(obj):
    """Rank 0's value on every rank."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def log(msg: str) -> None:
    """A progress line on stderr, once with several processes (rank 0 writes it), printed
    above any progress bar."""
    if world().main:
        tqdm.write(msg, file=sys.stderr)
