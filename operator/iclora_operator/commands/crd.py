"""`iclora crd`: print (or write) the CRDs generated from the API model."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

CRD_FILE = "iclora.dev_maskedicloratrainings.yaml"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("crd", help="print the CustomResourceDefinition YAML")
    parser.add_argument("--write", metavar="DIR", help="write the CRD file into DIR instead of stdout")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from iclora_operator.api.crdgen import render_crd_yaml

    text = render_crd_yaml()
    if args.write:
        path = Path(args.write) / CRD_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0
