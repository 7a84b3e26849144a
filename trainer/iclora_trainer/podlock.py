"""The one inter-process lock of the trainer: an flock on a file of the pod's (or node's) scratch.

The local processes of a pod (one per GPU, `cli._maybe_spawn_local_ranks`) share work through
files, never through a collective: one process takes the lock and does the work (download the
base model, the prepared dataset, encode a triplet), the others wait on the lock and then find
its marker. The kernel releases a lock with the process that held it, so a rank that dies never
leaves the others waiting: the next one to take the lock finds no marker and does the work.
Users: `model/provision.py` (base model sources), `storage.materialise` (the prepared dataset,
once per pod) and `data.precompute_shared` (latents, each triplet encoded by one local rank).
"""

from __future__ import annotations

import contextlib
import fcntl
import time
from collections.abc import Callable, Iterator
from pathlib import Path

REPORT_SECONDS = 5.0
POLL_SECONDS = 0.2


@contextlib.contextmanager
def locked(path: Path, waiting: Callable[[str], None] | None = None, message: str = "") -> Iterator[None]:
    """An exclusive flock on `path`, polled so the wait can be reported every few seconds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        told = 0.0
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                now = time.monotonic()
                if waiting and now - told >= REPORT_SECONDS:
                    told = now
                    waiting(message or f"waiting for another process that holds {path.name}")
                time.sleep(POLL_SECONDS)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def try_locked(path: Path) -> Iterator[bool]:
    """The same lock without waiting: yields True when this process holds it, False when another does."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
