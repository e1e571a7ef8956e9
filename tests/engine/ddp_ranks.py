"""What torchrun's ranks run for tests/engine/test_distributed.py: join the process group once,
then the train stage's own `main` for each strategy named, so one launch (two processes that
import torch once) covers several two-process runs.

    python -m ddp_ranks PARAMS CLEAN SPLIT OUT STRATEGY...   (under torchrun, tests/engine on
                                                               the path)
"""

import sys

import torch.distributed as dist

from stages import train


def main(argv: list[str]) -> None:
    params, clean, split, out, *names = argv
    dist.init_process_group("gloo")
    try:
        for name in names:
            train.main(
                [
                    name,
                    *("--clean", clean, "--split", split, "--params", params),
                    *("--model", f"{out}/{name}/m.pt", "--metrics", f"{out}/{name}/m.json"),
                    *("--plots", f"{out}/{name}/p.tsv"),
                ]
            )
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
