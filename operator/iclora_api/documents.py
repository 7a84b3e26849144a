"""Reading user documents (manifests, requests, settings) the way Kubernetes reads them.

YAML 1.2 (as the API server and kubectl parse it), not PyYAML's 1.1: `1:1`
stays a string and `2e-4` is a number. One function serves every CLI.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any


class DocumentError(Exception):
    """A document could not be read or parsed."""


def parse_document(text: str) -> Any:
    """Parse exactly one JSON or YAML 1.2 document."""
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


def read_document(source: str) -> Any:
    """Read one document from a file path, `-` (stdin) or `env:NAME` (an environment variable).

    `env:` is how Jobs hand the effective spec and settings to their pods without
    mounting files into a read-only root filesystem.
    """
    try:
        if source == "-":
            text = sys.stdin.read()
        elif source.startswith("env:"):
            name = source.removeprefix("env:")
            if name not in os.environ:
                raise DocumentError(f"environment variable {name} is not set")
            text = os.environ[name]
        else:
            text = Path(source).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DocumentError(str(exc)) from exc
    return parse_document(text)
