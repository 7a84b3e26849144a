"""Failure classification (one row per exit code and Job reason) and the billing rule."""

from __future__ import annotations

import json

import pytest

from iclora_operator.billing import billing_units
from iclora_operator.reconcile.failures import classify_failure
from iclora_operator.reconcile.observed import JobState


@pytest.mark.parametrize(
    ("kw", "stage", "reason"),
    [
        ({"exit_code": 10}, "training", "InvalidSpec"),
        ({"exit_code": 11}, "preflight", "DatasetDownloadFailed"),
        ({"exit_code": 12}, "preflight", "DatasetInvalid"),
        ({"exit_code": 13}, "preflight", "NoUsableClips"),
        ({"exit_code": 14}, "training", "ProfileInvalid"),
        ({"exit_code": 20}, "training", "TrainingFailed"),
        ({"exit_code": 22}, "training", "TrainingFailed"),
        ({"exit_code": 137}, "training", "TrainingFailed"),
        ({"exit_code": 1}, "preflight", "PreflightFailed"),
        ({"failure_reason": "DeadlineExceeded", "failure_message": "too long"}, "training", "DeadlineExceeded"),
        ({"failure_reason": "BackoffLimitExceeded"}, "training", "TrainingFailed"),
        ({"failure_reason": "PodFailurePolicy", "exit_code": 13}, "preflight", "NoUsableClips"),
        ({"termination_message": json.dumps({"reason": "NoUsableClips", "message": "x"})}, "preflight",
         "NoUsableClips"),
    ],
)
def test_classify(kw, stage, reason):
    got, message = classify_failure(JobState(name="j", owned=True, failed=True, **kw), stage)
    assert got == reason
    assert message


def test_report_reason_wins_and_message_is_kept():
    job = JobState(name="j", owned=True, failed=True, exit_code=22)
    assert classify_failure(job, "training", "DatasetInvalid", "sample03_mask.png: not an image") == (
        "DatasetInvalid", "sample03_mask.png: not an image")


@pytest.mark.parametrize(("steps", "ok", "units"), [(100, True, 100), (99, True, 100), (3000, True, 3000),
                                                    (20000, True, 20000), (3000, False, 0)])
def test_billing(steps, ok, units):
    assert billing_units(steps, ok) == units


def test_job_summary_keeps_what_decisions_need():
    from iclora_operator.adapters.kube import SUSPENDED_BY_USER, job_state, job_summary

    job = {
        "metadata": {"name": "t-train", "labels": {"iclora.dev/training-uid": "u"},
                     "annotations": {SUSPENDED_BY_USER: "true", "other": "x"}},
        "spec": {"suspend": True, "template": {"spec": {"containers": [{"name": "big"}]}}},
        "status": {"active": 1, "conditions": [{"type": "Failed", "status": "True", "reason": "DeadlineExceeded",
                                                "message": "m", "lastProbeTime": "t"}]},
    }
    summary = job_summary(job)
    assert "template" not in summary["spec"]
    assert job_state(summary, "u") == job_state(job, "u")
    state = job_state(summary, "u")
    assert (state.owned, state.suspended, state.suspended_by_user, state.failed, state.failure_reason) == (
        True, True, True, True, "DeadlineExceeded")
