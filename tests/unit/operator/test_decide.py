"""decide(): observed state -> status and actions, as tables (the kstatus test shape)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from iclora_api.contract import Artifacts, PreflightResult, Progress, Result
from iclora_api.profile import TrainingProfileSpec
from iclora_api.validation import FieldError, validate_spec
from iclora_operator.reconcile.decide import Action, decide
from iclora_operator.reconcile.observed import JobState, Observed

NOW = datetime(2026, 11, 24, 12, 0, 0, tzinfo=UTC)
SPEC = validate_spec({"trainingDataUrl": "https://e/d.zip", "numberOfSteps": 500, "numberOfFrames": 90})
BASE = Observed(name="t", namespace="ns", uid="u", generation=1, spec=SPEC, profile=TrainingProfileSpec())
PASSED = PreflightResult(ok=True, usable=3, skipped=[{"name": "s4", "reason": "too short"}])
ARTS = Artifacts(loraFile="s3://b/r/artifacts/lora.safetensors", configFile="s3://b/r/artifacts/config.json")
OK_RESULT = Result(status="Succeeded", steps=500, artifacts=ARTS)


def conds(status):
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


def job(name="t-train", **kw):
    return JobState(name=name, owned=True, **kw)


def test_first_sight_writes_ready_false_and_reconciling_true():
    plan = decide(BASE, NOW)
    assert plan.actions == (Action.CREATE_PREFLIGHT,)
    s = plan.status
    assert s["phase"] == "Preflight"
    assert s["observedGeneration"] == 1
    c = conds(s)
    assert c["Ready"] == ("False", "Preflight")
    assert c["Reconciling"] == ("True", "Preflight")
    assert c["Stalled"] == ("False", "Preflight")
    assert c["Validated"] == ("True", "Valid")
    assert s["billingUnits"] == 0
    assert s["effective"] == {"numberOfFrames": 89, "validationNumberOfFrames": 89, "width": 768,
                              "height": 768, "validationWidth": 960, "validationHeight": 960}
    assert s["progress"] == {"step": 0, "totalSteps": 500}


def test_invalid_spec_fails_without_actions_or_billing():
    obs = replace(BASE, spec=None, spec_errors=(FieldError("spec.rank", "Input should be 8, 16"),))
    plan = decide(obs, NOW)
    assert plan.actions == ()
    s = plan.status
    assert s["phase"] == "Failed"
    assert s["failure"]["reason"] == "InvalidSpec"
    assert "spec.rank" in s["failure"]["message"]
    assert s["billingUnits"] == 0
    c = conds(s)
    assert c["Stalled"] == ("True", "InvalidSpec")
    assert c["Reconciling"][0] == "False"
    assert c["Ready"][0] == "False"
    assert [e.reason for e in plan.events] == ["InvalidSpec"]


def test_missing_profile_is_a_clear_failure():
    plan = decide(replace(BASE, profile=None, profile_name="h100"), NOW)
    assert plan.status["failure"] == {"reason": "ProfileNotFound",
                                      "message": "TrainingProfile 'h100' does not exist"}


@pytest.mark.parametrize(
    ("report", "job_kw", "reason"),
    [
        (PreflightResult(ok=False, reason="NoUsableClips", message="all clips too short"), {"failed": True},
         "NoUsableClips"),
        (PreflightResult(ok=False, reason="DatasetDownloadFailed", message="404"), {"failed": True},
         "DatasetDownloadFailed"),
        (None, {"failed": True, "exit_code": 12, "termination_message": "bad zip"}, "DatasetInvalid"),
        (None, {"failed": True, "failure_reason": "DeadlineExceeded"}, "DeadlineExceeded"),
        (None, {"failed": True, "exit_code": 1}, "PreflightFailed"),
    ],
)
def test_preflight_failures_never_create_a_gpu_job(report, job_kw, reason):
    obs = replace(BASE, preflight_job=job("t-preflight", **job_kw), preflight_report=report)
    plan = decide(obs, NOW)
    assert Action.CREATE_TRAINING not in plan.actions
    assert plan.status["phase"] == "Failed"
    assert plan.status["failure"]["reason"] == reason
    assert plan.status["billingUnits"] == 0


def test_preflight_running():
    plan = decide(replace(BASE, preflight_job=job("t-preflight", active=1)), NOW)
    assert plan.actions == ()
    assert plan.status["phase"] == "Preflight"


def test_preflight_passed_creates_training_job():
    obs = replace(BASE, preflight_job=job("t-preflight", complete=True), preflight_report=PASSED)
    plan = decide(obs, NOW)
    assert plan.actions == (Action.CREATE_TRAINING,)
    assert plan.create_suspended is False
    s = plan.status
    assert s["phase"] == "Training"
    assert s["startTime"] == "2026-11-24T12:00:00Z"
    assert s["dataset"] == {"usable": 3, "skipped": [{"name": "s4", "reason": "too short"}]}
    assert conds(s)["PreflightSucceeded"] == ("True", "Passed")


@pytest.mark.parametrize("kueue", [False, True])
def test_creating_a_job_and_then_seeing_it_decide_the_same_status(kueue):
    # One status write per stage: the reconcile that sees the Job it created writes nothing.
    created = decide(BASE, NOW)
    seen = decide(replace(BASE, preflight_job=job("t-preflight"), status=created.status), NOW)
    assert seen.actions == () and seen.status == created.status
    passed = replace(BASE, preflight_job=job("t-preflight", complete=True), preflight_report=PASSED,
                     kueue_managed=kueue)
    created = decide(passed, NOW)
    assert created.actions == (Action.CREATE_TRAINING,)
    seen = decide(replace(passed, training_job=job(suspended=kueue), status=created.status), NOW)
    assert seen.actions == () and seen.status == created.status


def test_concurrency_limit_queues():
    obs = replace(BASE, preflight_report=PASSED, slot_available=False)
    plan = decide(obs, NOW)
    assert plan.actions == ()
    assert plan.status["phase"] == "Queued"
    assert conds(plan.status)["Admitted"] == ("False", "WaitingForQuota")
    assert conds(plan.status)["Reconciling"] == ("True", "Queued")


def test_kueue_creates_suspended_and_waits():
    obs = replace(BASE, preflight_report=PASSED, kueue_managed=True)
    plan = decide(obs, NOW)
    assert plan.actions == (Action.CREATE_TRAINING,)
    assert plan.create_suspended is True
    assert plan.status["phase"] == "Queued"
    waiting = replace(obs, training_job=job(suspended=True), status={"startTime": "x"})
    plan = decide(waiting, NOW)
    assert plan.actions == ()
    assert plan.status["phase"] == "Queued"
    admitted = replace(waiting, training_job=job(active=1))
    assert decide(admitted, NOW).status["phase"] == "Training"


def test_progress_is_reported_and_never_goes_backwards():
    beat = NOW.isoformat()
    obs = replace(BASE, preflight_report=PASSED, training_job=job(active=1), status={"startTime": "x"},
                  progress=Progress(step=120, totalSteps=500, loss=0.25, etaSeconds=40, heartbeat=beat))
    s = decide(obs, NOW).status
    assert s["progress"] == {"step": 120, "totalSteps": 500, "loss": "0.2500", "etaSeconds": 40,
                             "updatedAt": beat}
    older = replace(obs, status=s, progress=Progress(step=100, totalSteps=500, loss=0.3, heartbeat=beat))
    assert decide(older, NOW).status["progress"]["step"] == 120


def test_stale_heartbeat_is_reported_not_terminal():
    beat = (NOW - timedelta(hours=1)).isoformat()
    obs = replace(BASE, preflight_report=PASSED, training_job=job(active=1), status={"startTime": "x"},
                  progress=Progress(step=1, totalSteps=500, heartbeat=beat))
    s = decide(obs, NOW, stale_after=600).status
    assert s["phase"] == "Training"
    assert conds(s)["Reconciling"] == ("True", "NoRecentProgress")


def test_success_bills_once_after_artifacts_verified():
    obs = replace(BASE, preflight_report=PASSED, training_job=job(complete=True), result=OK_RESULT,
                  artifacts_verified=True, status={"startTime": "x"})
    plan = decide(obs, NOW)
    s = plan.status
    assert s["phase"] == "Succeeded"
    assert s["billingUnits"] == 500
    assert plan.billed == 500
    assert s["artifacts"] == {"loraFile": ARTS.lora_file, "configFile": ARTS.config_file}
    c = conds(s)
    assert c["Ready"] == ("True", "Succeeded")
    assert c["Reconciling"][0] == "False"
    assert c["Stalled"][0] == "False"
    # Re-deciding (restart, duplicate event) keeps the status and bills nothing new.
    again = decide(replace(obs, status=s), NOW + timedelta(minutes=5))
    assert again.billed is None
    assert again.status == s
    assert again.events == ()


def test_minimum_billing_is_100_units():
    spec = validate_spec({"trainingDataUrl": "https://e/d.zip", "numberOfSteps": 100})
    obs = replace(BASE, spec=spec, preflight_report=PASSED, training_job=job(complete=True),
                  result=OK_RESULT, artifacts_verified=True)
    assert decide(obs, NOW).status["billingUnits"] == 100


def test_unverified_artifacts_wait_and_missing_ones_fail():
    obs = replace(BASE, preflight_report=PASSED, training_job=job(complete=True), result=OK_RESULT,
                  status={"startTime": "x"})
    assert decide(obs, NOW).status["phase"] == "Training"
    missing = decide(replace(obs, artifacts_verified=False), NOW).status
    assert missing["failure"]["reason"] == "ArtifactsMissing"
    assert missing["billingUnits"] == 0


def test_training_failure_reason_from_result_then_exit_code():
    base = replace(BASE, preflight_report=PASSED, status={"startTime": "x"})
    failed = decide(replace(base, training_job=job(failed=True, exit_code=22)), NOW).status
    assert failed["failure"]["reason"] == "TrainingFailed"
    assert failed["billingUnits"] == 0


def test_deleted_training_job_is_reported_not_recreated():
    obs = replace(BASE, preflight_report=PASSED, training_job=None, status={"startTime": "x"})
    plan = decide(obs, NOW)
    assert plan.actions == ()
    assert plan.status["failure"]["reason"] == "JobDeleted"


def test_name_conflict():
    obs = replace(BASE, preflight_job=JobState(name="t-preflight", owned=False))
    assert decide(obs, NOW).status["failure"]["reason"] == "NameConflict"


def test_suspend_and_resume():
    spec = validate_spec({"trainingDataUrl": "https://e/d.zip", "suspend": True})
    running = replace(BASE, spec=spec, preflight_report=PASSED, training_job=job(active=1),
                      status={"startTime": "x"})
    plan = decide(running, NOW)
    assert plan.actions == (Action.SUSPEND_TRAINING,)
    assert plan.status["phase"] == "Suspended"
    assert conds(plan.status)["Suspended"] == ("True", "Suspended")
    suspended = replace(running, training_job=job(suspended=True, suspended_by_user=True), status=plan.status)
    assert decide(suspended, NOW).actions == ()
    resumed = replace(suspended, spec=SPEC)
    plan = decide(resumed, NOW)
    assert plan.actions == (Action.RESUME_TRAINING,)
    assert plan.status["phase"] == "Training"
    assert conds(plan.status)["Suspended"][0] == "False"


def test_terminal_status_is_sticky():
    status = {"phase": "Failed", "billingUnits": 0, "failure": {"reason": "InvalidSpec", "message": "x"},
              "observedGeneration": 1, "conditions": []}
    plan = decide(replace(BASE, generation=2, status=status), NOW)
    assert plan.actions == ()
    assert plan.status == {**status, "observedGeneration": 2}


def test_transition_time_moves_only_on_flip():
    first = decide(BASE, NOW).status
    later = decide(replace(BASE, preflight_job=job("t-preflight", active=1), status=first),
                   NOW + timedelta(seconds=30)).status
    t0 = {c["type"]: c["lastTransitionTime"] for c in first["conditions"]}
    t1 = {c["type"]: c["lastTransitionTime"] for c in later["conditions"]}
    assert t0["Ready"] == t1["Ready"]
    assert t0["Reconciling"] == t1["Reconciling"]


def test_missing_secret_blocks_without_failing():
    plan = decide(replace(BASE, blocked="Secret ns/creds named by spec.output.credentialsSecretRef does not exist"),
                  NOW)
    assert plan.actions == ()
    s = plan.status
    assert s["phase"] == "Pending"
    assert conds(s)["Reconciling"] == ("True", "SecretNotFound")
    assert "ns/creds" in next(c["message"] for c in s["conditions"] if c["type"] == "Reconciling")
    assert "failure" not in s


def test_resume_under_kueue_waits_for_readmission():
    """Kueue owns the Job's suspend field: a resumed training is Queued until Kueue admits it."""
    spec = validate_spec({"trainingDataUrl": "https://e/d.zip", "suspend": True})
    running = replace(BASE, spec=spec, preflight_report=PASSED, training_job=job(active=1),
                      status={"startTime": "x"}, kueue_managed=True)
    plan = decide(running, NOW)
    assert plan.actions == (Action.SUSPEND_TRAINING,) and plan.status["phase"] == "Suspended"
    suspended = replace(running, training_job=job(suspended=True, suspended_by_user=True), status=plan.status)
    assert decide(suspended, NOW).status["phase"] == "Suspended"
    plan = decide(replace(suspended, spec=SPEC), NOW)
    assert plan.actions == (Action.RESUME_TRAINING,)
    assert plan.status["phase"] == "Queued"
    assert conds(plan.status)["Admitted"] == ("False", "WaitingForQuota")
    # Reactivated but not yet admitted (the mark is gone): still Queued, nothing more to do.
    waiting = replace(suspended, spec=SPEC, training_job=job(suspended=True), status=plan.status)
    plan = decide(waiting, NOW)
    assert plan.actions == () and plan.status["phase"] == "Queued"
