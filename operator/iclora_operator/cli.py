"""`iclora`: the one command line of the product.

Each subcommand lives in its own module exposing `register(subparsers)`; the
module must import nothing heavy at import time (torch, kopf, av are imported
inside the command function), so `iclora validate` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Modules that register subcommands, in help order.
COMMAND_MODULES = (
    "iclora_operator.commands.validate",
    "iclora_operator.commands.crd",
    "iclora_trainer.dataset.cli",
    "iclora_trainer.cli",
    "iclora_operator.localcluster.cli",
    "iclora_operator.run",
    "iclora_operator.demo",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="iclora",
        description="Train masked video-to-video IC-LoRAs for LTX-2.3 on Kubernetes.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for module_name in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            # Optional parts of the distribution (e.g. the trainer on the slim
            # operator image) may be absent; anything else is a real error.
            if exc.name and module_name.startswith(exc.name):
                continue
            raise
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    code = args.func(args)
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
