"""`iclora validate FILE`: check a manifest or a product request against the API model.

Prints one JSON object: {"valid": bool, "errors": [{"field", "message"}], "spec": {...}}.
Exit 0 valid, 2 invalid, 1 when the file cannot be read or parsed.
"""

from __future__ import annotations

import argparse
import json
import sys
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


def validate_document(doc: Any) -> tuple[dict[str, Any], bool]:
    from iclora_api.validation import SpecInvalid, spec_from_document, validate_spec

    try:
        spec = validate_spec(spec_from_document(doc))
    except SpecInvalid as exc:
        return {"valid": False, "errors": [e.as_dict() for e in exc.errors]}, False
    return {"valid": True, "errors": [], "spec": spec.effective()}, True


def run(args: argparse.Namespace) -> int:
    from iclora_api.documents import DocumentError, read_document

    try:
        doc = read_document(args.file)
    except DocumentError as exc:
        sys.stderr.write(f"iclora validate: {args.file}: {exc}\n")
        return 1
    result, valid = validate_document(doc)
    sys.stdout.write(json.dumps(result, indent=2) + "\n")
    return 0 if valid else 2
