"""Shared test helpers: the installed console script and the repository root."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# Session-scoped local cluster, S3 store and per-test namespaces (used by the cluster layers).
pytest_plugins = ["iclora_dev.pytest_plugin"]

REPO_ROOT = Path(__file__).resolve().parents[1]


def iclora_executable() -> str:
    """The installed `iclora` console script of the running interpreter's environment."""
    candidate = Path(sys.executable).parent / "iclora"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("iclora")
    if not found:
        raise RuntimeError("the `iclora` console script is not installed (pip install -e .)")
    return found


class CliResult:
    def __init__(self, proc: subprocess.CompletedProcess[str]):
        self.returncode = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr

    def json(self):
        return json.loads(self.stdout)


@pytest.fixture
def run_iclora():
    """Run the installed `iclora` console script and capture its output."""

    def run(*args: str, input: str | None = None, env: dict[str, str] | None = None,
            timeout: float = 300) -> CliResult:
        proc = subprocess.run(
            [iclora_executable(), *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **(env or {})},
            cwd=REPO_ROOT,
        )
        return CliResult(proc)

    return run
