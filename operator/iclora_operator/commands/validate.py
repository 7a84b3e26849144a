"""`iclora validate FILE`: check a manifest or a product request against the API model.

Prints one JSON object: {"valid": bool, "errors": [{"field", "message"}], "spec": {...}}.
Exit 0 valid, 2 invalid, 1 when the file cannot be read or parsed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "validate",
        help="validate a MaskedICLoraTraining manifest or a product request JSON",
        description=(
            "Validate FILE: a MaskedICLoraTraining manifest (YAML or JSON) or the hosted "
            "product's request JSON (snake_case). Prints one JSON object; exit 0 valid, "
            "2 invalid, 1 unreadable."
        ),
    )
    parser.add_argument("file", metavar="FILE", help="manifest or request file; '-' reads stdin")
    parser.set_defaults(func=run)


class DocumentError(Exception):
    """The file could not be read or parsed (exit 1)."""


def load_document(text: str) -> Any:
    """Parse one JSON or YAML 1.2 document.

    YAML 1.2 (as Kubernetes reads it), not PyYAML's 1.1: `1:1` stays a string
    and `2e-4` is a number.
    """
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    yaml = YAML(typ="safe", pure=True)
    try:
        docs = [d for d in yaml.load_all(text) if d is not None]
    except YAMLError as exc:
        raise DocumentError(f"cannot parse: {exc}") from exc
    if len(docs) != 1:
        raise DocumentError(f"expected exactly one document, found {len(docs)}")
    return docs[0]


def validate_document(doc: Any) -> tuple[dict[str, Any], bool]:
    from iclora_operator.api.validation import SpecInvalid, spec_from_document, validate_spec

    try:
        spec = validate_spec(spec_from_document(doc))
    except SpecInvalid as exc:
        return {"valid": False, "errors": [e.as_dict() for e in exc.errors]}, False
    return {"valid": True, "errors": [], "spec": spec.effective()}, True


def run(args: argparse.Namespace) -> int:
    try:
        text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text(encoding="utf-8")
        doc = load_document(text)
    except (OSError, UnicodeDecodeError, DocumentError) as exc:
        sys.stderr.write(f"iclora validate: {args.file}: {exc}\n")
        return 1
    result, valid = validate_document(doc)
    sys.stdout.write(json.dumps(result, indent=2) + "\n")
    return 0 if valid else 2
