"""What torchrun's ranks run for tests/engine/test_distributed.py: join the process group once,
then the train stage's own `main` for each argument list given, so one launch (two processes
that import torch once) covers several two-process runs.

    python -m ddp_ranks '[["<strategy>", "--clean", ...], ...]'   (a JSON list of the stage's
                                                                argument lists; under torchrun)
"""

import json
import sys

import torch.distributed as dist

from stages import train


def main(runs: list[list[str]]) -> None:
    dist.init_process_group("gloo")
    try:
        for argv in runs:
            train.main(argv)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
