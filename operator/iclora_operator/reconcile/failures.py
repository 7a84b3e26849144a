"""Why a Job failed: one table-driven function from what Kubernetes and the trainer said."""

from __future__ import annotations

import json

from iclora_api.conditions import Reason
from iclora_api.contract import PREEMPTED_EXIT_CODES, ExitCode, Stage, reason_for
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


def classify_failure(job: JobState, stage: Stage | str, report_reason: str | None = None,
                     report_message: str | None = None) -> tuple[Reason, str]:
    """(reason, message) for a failed preflight or training Job.

    Order of trust: the exit code when it is one of the contract's (the kubelet's fact; a report,
    possibly left by an earlier attempt, cannot contradict it), the Job's DeadlineExceeded, the
    trainer's reported reason when it is one the contract gives for this stage (the exit code may
    be unknown, e.g. the pod is gone), then the stage's own failure reason. Likewise the message
    of a contract exit code is that container's termination message when it wrote one.
    """
    stage = Stage(stage)
    term_reason, term_message = _parse_termination(job.termination_message)
    message = report_message or term_message or job.failure_message or "the Job failed"
    # PREEMPTED says only that the pod was stopped from outside (after saving its work): why the
    # Job then failed (its deadline, say) is the Job's to tell, so the code is not trusted first.
    if job.exit_code is not None and job.exit_code not in PREEMPTED_EXIT_CODES:
        try:
            reason = reason_for(job.exit_code, stage)
        except ValueError:  # 0, a signal, an OOM kill: the code says nothing about why
            pass
        else:  # the termination message comes from the same container as the code
            return reason, (term_message or message)[:MAX_MESSAGE]
    if job.failure_reason == "DeadlineExceeded":
        message = job.failure_message or "the Job ran past its deadline"
        return Reason.DEADLINE_EXCEEDED, message[:MAX_MESSAGE]
    contract_reasons = {reason_for(code, stage) for code in ExitCode if code is not ExitCode.OK}
    for candidate in (report_reason, term_reason):
        if candidate in contract_reasons:
            return Reason(candidate), message[:MAX_MESSAGE]
    return reason_for(ExitCode.INTERNAL_ERROR, stage), message[:MAX_MESSAGE]
