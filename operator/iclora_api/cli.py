"""`iclora`: the one command line of the product.

Subcommands are plugins: every installed part of the product (the contract
package itself, the operator, the trainer, the development tools) declares its
commands in the `iclora.commands` entry-point group of its distribution
(`pyproject.toml`, `dev/pyproject.toml`). Each entry point names a module with
`register(subparsers)`; the module imports nothing heavy at import time (torch,
kopf and av are imported inside the command function), so `iclora validate`
stays fast. The dispatcher therefore imports neither the operator nor the
trainer. An install without the development tools (every image) lists no
`local-cluster` or `demo`; the operator image, which installs the distribution
without the `trainer` extra, lists `train` and `dataset` but cannot run them
(they need torch and PyAV, which only the trainer image has).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points

ENTRY_POINT_GROUP = "iclora.commands"
# Help order of the commands we know; other plugins follow alphabetically.
HELP_ORDER = ("validate", "crd", "dataset", "train", "generate", "operator", "local-cluster", "demo")


def command_modules() -> list[tuple[str, str]]:
    """(command name, module) of every installed command plugin, in help order."""
    found = {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}

    def order(name: str) -> tuple[int, str]:
        return (HELP_ORDER.index(name) if name in HELP_ORDER else len(HELP_ORDER), name)

    return [(name, found[name]) for name in sorted(found, key=order)]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="iclora",
        description="Train masked video-to-video IC-LoRAs for LTX-2.3 on Kubernetes.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for _name, module_name in command_modules():
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    code = args.func(args)
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
