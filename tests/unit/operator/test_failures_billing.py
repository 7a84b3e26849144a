"""Failure classification (one row per exit code and Job reason) and the billing rule."""

from __future__ import annotations

import json

import pytest

from iclora_api.contract import EXIT_CODE_REASONS, STAGE_FAILURE_REASONS, ExitCode, Stage, reason_for
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
        ({"exit_code": 21}, "training", "TrainingFailed"),
        ({"exit_code": 22}, "training", "TrainingFailed"),
        # Infrastructure and internal codes read as the failure of the stage they happened in.
        ({"exit_code": 20}, "preflight", "PreflightFailed"),
        ({"exit_code": 22}, "preflight", "PreflightFailed"),
        ({"exit_code": 14}, "preflight", "ProfileInvalid"),
        ({"exit_code": 137}, "training", "TrainingFailed"),
        ({"exit_code": 1}, "preflight", "PreflightFailed"),
        ({"failure_reason": "DeadlineExceeded", "failure_message": "too long"}, "training", "DeadlineExceeded"),
        ({"failure_reason": "BackoffLimitExceeded"}, "training", "TrainingFailed"),
        # PREEMPTED (23) says only that the pod was stopped from outside: the Job tells why it failed.
        ({"exit_code": 23}, "training", "TrainingFailed"),
        ({"exit_code": 23, "failure_reason": "DeadlineExceeded", "failure_message": "too long"}, "training",
         "DeadlineExceeded"),
        ({"failure_reason": "PodFailurePolicy", "exit_code": 13}, "preflight", "NoUsableClips"),
        ({"termination_message": json.dumps({"reason": "NoUsableClips", "message": "x"})}, "preflight",
         "NoUsableClips"),
        # A termination message never contradicts its own container's exit code.
        ({"exit_code": 14, "termination_message": json.dumps({"reason": "InvalidSpec", "message": "x"})},
         "training", "ProfileInvalid"),
        # A reason the contract never gives in this stage is not believed.
        ({"termination_message": json.dumps({"reason": "TrainingFailed", "message": "x"})}, "preflight",
         "PreflightFailed"),
        ({"termination_message": json.dumps({"reason": "Succeeded", "message": "x"})}, "training",
         "TrainingFailed"),
    ],
)
def test_classify(kw, stage, reason):
    got, message = classify_failure(JobState(name="j", owned=True, failed=True, **kw), stage)
    assert got == reason
    assert message


def test_exit_code_wins_over_a_contradicting_report():
    # A broken model file in the admin's profile is the admin's to fix, whatever a report says.
    job = JobState(name="j", owned=True, failed=True, exit_code=14)
    assert classify_failure(job, "training", "InvalidSpec", "model.safetensors: not a checkpoint") == (
        "ProfileInvalid", "model.safetensors: not a checkpoint")
    job = JobState(name="j", owned=True, failed=True, exit_code=22)
    assert classify_failure(job, "training", "DatasetInvalid", "sample03_mask.png: not an image") == (
        "TrainingFailed", "sample03_mask.png: not an image")


def test_exit_codes_message_is_its_own_containers():
    term = json.dumps({"reason": "TrainingFailed", "message": "upload s3://b/x: connection refused"})
    job = JobState(name="j", owned=True, failed=True, exit_code=20, termination_message=term)
    assert classify_failure(job, "training", "TrainingFailed", "checkpoint at step 3 failed") == (
        "TrainingFailed", "upload s3://b/x: connection refused")


def test_report_reason_decides_only_without_a_contract_exit_code():
    job = JobState(name="j", owned=True, failed=True)
    assert classify_failure(job, "preflight", "DatasetInvalid", "sample03_mask.png: not an image") == (
        "DatasetInvalid", "sample03_mask.png: not an image")
    job = JobState(name="j", owned=True, failed=True, exit_code=137)
    assert classify_failure(job, "training", "ProfileInvalid", "m")[0] == "ProfileInvalid"
    # The deadline is a fact too: a report left by an earlier attempt does not hide it.
    job = JobState(name="j", owned=True, failed=True, exit_code=137, failure_reason="DeadlineExceeded")
    assert classify_failure(job, "training", "TrainingFailed", "m")[0] == "DeadlineExceeded"


def test_one_reason_table_for_every_exit_code():
    user = {code for code in ExitCode if code.is_user_error}
    assert set(EXIT_CODE_REASONS) == user
    for stage in Stage:
        for code in ExitCode:
            if code is ExitCode.OK:
                continue
            expected = EXIT_CODE_REASONS[code] if code in user else STAGE_FAILURE_REASONS[stage]
            assert reason_for(code, stage) is expected
            assert reason_for(int(code), stage.value) is expected
    for code in (0, 1, 137):
        with pytest.raises(ValueError):
            reason_for(code, Stage.TRAINING)


@pytest.mark.parametrize(("steps", "ok", "units"), [(100, True, 100), (99, True, 100), (3000, True, 3000),
                                                    (20000, True, 20000), (3000, False, 0)])
def test_billing(steps, ok, units):
    assert billing_units(steps, ok) == units


def test_job_summary_keeps_what_decisions_need():
    from iclora_operator.adapters.kube import SUSPENDED_BY_USER, job_state, job_summary

    job = {
        "metadata": {"name": "t-train", "labels": {"iclora.dev/training-uid": "u"},
                     "annotations": {SUSPENDED_BY_USER: "true", "other": "x"}},
        "spec": {"suspend": True, "parallelism": 2, "template": {"spec": {"containers": [{"name": "big"}]}}},
        "status": {"active": 1, "failed": 1,
                   "conditions": [{"type": "Failed", "status": "True", "reason": "DeadlineExceeded",
                                                "message": "m", "lastProbeTime": "t"}]},
    }
    summary = job_summary(job)
    assert "template" not in summary["spec"]
    assert job_state(summary, "u") == job_state(job, "u")
    state = job_state(summary, "u")
    assert (state.owned, state.suspended, state.suspended_by_user, state.failed, state.failure_reason) == (
        True, True, True, True, "DeadlineExceeded")
    assert (state.parallelism, state.failed_pods) == (2, 1)  # a gang with a lost rank (stranded_pods)
