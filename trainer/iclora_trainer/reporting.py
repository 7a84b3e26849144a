"""progress.json / result.json to the output location and the container termination message."""

from __future__ import annotations

import json
import logging
import os
import time
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel

from iclora_api.contract import PROGRESS_KEY, RESULT_KEY, TERMINATION_LOG, TERMINATION_LOG_ENV, Progress, Result
from iclora_trainer.storage import Store

log = logging.getLogger(__name__)
TERMINATION_ENV = TERMINATION_LOG_ENV


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


class Reporter:
    """Writes progress every `interval` steps (rank 0 only), ETA from the measured step rate."""

    def __init__(self, store: Store, total_steps: int, interval: int, enabled: bool = True) -> None:
        self.store = store
        self.total = total_steps
        self.interval = interval
        self.enabled = enabled
        self._t0: float | None = None
        self._s0 = 0

    def start(self, step: int) -> None:
        self._t0 = time.monotonic()
        self._s0 = step
        self.progress(step, None, force=True)

    def progress(self, step: int, loss: float | None, force: bool = False) -> Progress | None:
        if not self.enabled or not (force or step % self.interval == 0 or step == self.total):
            return None
        eta = None
        if self._t0 is not None and step > self._s0:
            rate = (time.monotonic() - self._t0) / (step - self._s0)
            eta = int(rate * (self.total - step))
        progress = Progress(
            step=step, total_steps=self.total, loss=loss, eta_seconds=eta, heartbeat=now_iso()
        )
        self.store.put_bytes(progress.model_dump_json(by_alias=True).encode(), PROGRESS_KEY)
        return progress

    def note(self, message: str | None) -> None:
        """A progress report before the first step (e.g. while the model is fetched): step 0, `message`."""
        if self.enabled:
            progress = Progress(step=0, total_steps=self.total, heartbeat=now_iso(), message=message)
            self.store.put_bytes(progress.model_dump_json(by_alias=True).encode(), PROGRESS_KEY)

    def result(self, result: Result) -> None:
        if self.enabled:
            self.store.put_bytes(
                result.model_dump_json(by_alias=True, exclude_none=True).encode(), RESULT_KEY
            )


def write_termination_message(result: BaseModel, path: str | None = None) -> None:
    """One-line JSON; skipped (logged) when the file is not writable, e.g. outside Kubernetes."""
    target = Path(path or os.environ.get(TERMINATION_ENV, TERMINATION_LOG))
    payload = result.model_dump(by_alias=True, exclude_none=True)
    payload.pop("skipped", None)  # a preflight's skip list belongs in preflight.json, not here
    line = json.dumps(payload, separators=(",", ":"))
    if len(line) > 3800:  # Kubernetes keeps at most 4096 bytes
        payload.pop("artifacts", None)
        payload["message"] = (payload.get("message") or "")[:1000]
        line = json.dumps(payload, separators=(",", ":"))
    try:
        with open(target, "w", encoding="utf-8") as f:
            f.write(line + "\n")
    except OSError as exc:
        log.debug("termination message not written to %s: %s", target, exc)
