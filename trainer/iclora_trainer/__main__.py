"""`python -m iclora_trainer train|dataset ...`: the trainer's own commands without the `iclora` dispatcher.

A multi-GPU pod respawns one process per local rank through this entry (iclora_trainer.cli), so
a rank never depends on which other command plugins are installed. Each such process gets its
share of the pod's CPU limit as OMP_NUM_THREADS before torch (and its OpenMP runtime) loads,
unless the admin set one (iclora_trainer.distributed.threads_per_rank).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from iclora_trainer import cli
from iclora_trainer.dataset import cli as dataset_cli


def main(argv: Sequence[str] | None = None) -> int:
    from iclora_trainer.distributed import export_thread_env

    export_thread_env()  # nothing here has imported torch yet (tests/trainer/test_threads.py)
    parser = argparse.ArgumentParser(prog="python -m iclora_trainer")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for module in (dataset_cli, cli):
        module.register(subparsers)
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
