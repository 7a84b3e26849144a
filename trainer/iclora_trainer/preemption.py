"""SIGTERM: finish the step, checkpoint it, exit with ExitCode.PREEMPTED.

Kubernetes sends SIGTERM when a pod is deleted: a Job suspended (by the user or by Kueue
preempting it), a spot node reclaimed, a node drained. The pod then has its
terminationGracePeriodSeconds (TrainingProfile `terminationGracePeriodSeconds`) before SIGKILL.

`StopSignal.install()` replaces the default action (die at once, losing every step since the last
checkpoint). After `defer()` (the step loop and the final artifacts) a signal only sets a flag: the
loop finishes the step it is in, every rank agrees on stopping at that same step (Engine.stop_agreed), a checkpoint is
written there and `Preempted` ends the process with ExitCode.PREEMPTED; the Job's podFailurePolicy
ignores that code and the next pod resumes from the checkpoint. Before it (loading the model,
before the first step) there is nothing to save: the signal raises `Preempted` at once.
"""

from __future__ import annotations

import logging
import signal
from types import FrameType

from iclora_api.conditions import Reason
from iclora_api.contract import ExitCode, Stage, reason_for

log = logging.getLogger(__name__)


class Preempted(BaseException):
    """The process was stopped by a signal, its steps saved in a checkpoint (or none taken yet).

    A BaseException, like KeyboardInterrupt: raised from the signal handler anywhere before the
    first step, it must not be caught and re-labelled by an `except Exception` (a dataset or model
    error would be a user error, and fail the Job for good).
    """

    exit_code = ExitCode.PREEMPTED

    def reason(self, stage: Stage | str) -> Reason:
        return reason_for(self.exit_code, stage)


class StopSignal:
    """The stop request of one process: set by SIGTERM (or `request()`), read at step boundaries."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._deferred = False
        self._raised = False

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def request(self, name: str = "SIGTERM") -> None:
        self.signal_name = self.signal_name or name

    def install(self, signals: tuple[signal.Signals, ...] = (signal.SIGTERM,)) -> None:
        """Handle `signals` in this process (main thread only)."""
        for sig in signals:
            signal.signal(sig, self._handle)

    def defer(self) -> None:
        """From now on (the step loop, then the final artifacts) a signal only sets the flag."""
        self._deferred = True

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        first = not self.requested
        self.request(signal.Signals(signum).name)
        if self._deferred:
            if first:
                log.warning("%s: stopping after this step, with a checkpoint", self.signal_name)
            return
        if not self._raised:  # once: a second signal must not interrupt the unwinding
            self._raised = True
            raise Preempted(f"stopped by {self.signal_name} before the first training step; nothing to save")
