"""`python -m iclora_trainer train|dataset ...`: the trainer's own commands without the `iclora` dispatcher.

A multi-GPU pod respawns one process per local rank through this entry (iclora_trainer.cli), so
a rank never depends on which other command plugins are installed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from iclora_trainer import cli
from iclora_trainer.dataset import cli as dataset_cli


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m iclora_trainer")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for module in (dataset_cli, cli):
        module.register(subparsers)
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
