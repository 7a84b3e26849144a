"""`iclora crd`: print (or write) the CRDs generated from the API model."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("crd", help="print the CustomResourceDefinition YAML")
    parser.add_argument("--write", metavar="DIR", help="write one file per CRD into DIR instead of stdout")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from iclora_api.crdgen import crd_files, render_crd_yaml

    if args.write:
        folder = Path(args.write)
        folder.mkdir(parents=True, exist_ok=True)
        for name, text in crd_files().items():
            (folder / name).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(render_crd_yaml())
    return 0
