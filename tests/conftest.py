"""Test layout and fixtures every layer shares. Helpers (plain functions) are in tests/helpers.py.

The top folder of a test is the layer it needs, and its marker (`-m unit|media|trainer|cluster`):
unit (no video, no model, no cluster), media (real files decoded and encoded with PyAV), trainer
(the tiny-model trainer: torch, ltx-core, DeepSpeed on CPU) and cluster (the local control plane,
kwok nodes, the pod runner and S3). A test may carry further markers (`slow`, `trainer` on a
cluster test that runs the real trainer in its pods).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT, CliResult, iclora_executable

# Session-scoped local cluster, S3 store and per-test namespaces (used by the cluster layers).
pytest_plugins = ["iclora_dev.pytest_plugin"]

LAYERS = ("unit", "media", "trainer", "cluster")
TESTS = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test with the layer its folder names (tests/<layer>/...)."""
    for item in items:
        layer = Path(item.path).resolve().relative_to(TESTS).parts[0]
        if layer not in LAYERS:
            raise pytest.UsageError(f"{item.nodeid}: tests live in tests/<layer>/, one of {', '.join(LAYERS)}")
        item.add_marker(getattr(pytest.mark, layer))


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
