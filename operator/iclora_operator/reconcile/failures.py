"""Why a Job failed: one table-driven function from what Kubernetes and the trainer said."""

from __future__ import annotations

import json

from iclora_api.conditions import Reason
from iclora_api.contract import EXIT_CODE_REASONS, ExitCode
from iclora_operator.reconcile.observed import JobState

MAX_MESSAGE = 1024


def _parse_termination(message: str | None) -> tuple[str | None, str | None]:
    """The trainer writes one JSON line {"reason", "message"}; logs fall back as plain text."""
    if not message:
        return None, None
    text = message.strip()
    try:
        data = json.loads(text.splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        return None, text[-MAX_MESSAGE:]
    if isinstance(data, dict):
        return data.get("reason"), data.get("message")
    return None, text[-MAX_MESSAGE:]


def classify_failure(job: JobState, stage: str, report_reason: str | None = None,
                     report_message: str | None = None) -> tuple[Reason, str]:
    """(reason, message) for a failed preflight or training Job.

    Order of trust: the trainer's own report, its exit code, then the Job's condition.
    """
    term_reason, term_message = _parse_termination(job.termination_message)
    message = report_message or term_message or job.failure_message or "the Job failed"
    for candidate in (report_reason, term_reason):
        if candidate and candidate in Reason.__members__.values():
            return Reason(candidate), message[:MAX_MESSAGE]
    if job.exit_code is not None:
        try:
            code = ExitCode(job.exit_code)
        except ValueError:
            code = None
        if code is not None and code in EXIT_CODE_REASONS:
            return Reason(EXIT_CODE_REASONS[code]), message[:MAX_MESSAGE]
    if job.failure_reason == "DeadlineExceeded":
        message = job.failure_message or "the Job ran past its deadline"
        return Reason.DEADLINE_EXCEEDED, message[:MAX_MESSAGE]
    if stage == "preflight":
        return Reason.PREFLIGHT_FAILED, message[:MAX_MESSAGE]
    return Reason.TRAINING_FAILED, message[:MAX_MESSAGE]
