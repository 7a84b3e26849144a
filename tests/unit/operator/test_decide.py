"""decide(): observed state -> status and actions, as tables (the kstatus test shape)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from iclora_api.contract import Artifacts, PreflightResult, Progress, Result
from iclora_api.profile import TrainingProfileSpec
from iclora_api.validation import FieldError, validate_spec
from iclora_operator.act import status_document
from iclora_operator.reconcile.decide import Action, Plan, decide
from iclora_operator.reconcile.observed import ChildRejection, JobState, Observed

NOW = datetime(2026, 11, 24, 12, 0, 0, tzinfo=UTC)
SPEC = validate_spec({"trainingDataUrl": "https://e/d.zip", "numberOfSteps": 500, "numberOfFrames": 90})
BASE = Observed(name="t", namespace="ns", uid="u", generation=1, spec=SPEC, profile=TrainingProfileSpec())
PASSED = PreflightResult(ok=True, usable=3, skipped=[{"name": "s4", "reason": "too short"}])
ARTS = Artifacts(loraFile="s3://b/r/artifacts/lora.safetensors", configFile="s3://b/r/artifacts/config.json")
OK_RESULT = Result(status="Succeeded", steps=500, artifacts=ARTS)


def written(plan: Plan) -> dict:
    """The plan's status as the operator writes it (the typed status, dumped at the edge)."""
    return status_document(plan.status)


def conds(status):
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


def job(name="t-train", **kw):
    return JobState(name=name, owned=True, **kw)


def test_first_sight_writes_ready_false_and_reconciling_true():
    plan = decide(BASE, NOW)
    assert plan.actions == (Action.CREATE_PREFLIGHT,)
    s = written(plan)
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
    s = written(plan)
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
    assert written(plan)["failure"] == {"reason": "ProfileNotFound",
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
        # The exit code is the kubelet's fact: a report of an earlier attempt cannot contradict it.
        (PreflightResult(ok=False, reason="NoUsableClips", message="old attempt"),
         {"failed": True, "exit_code": 12, "termination_message": "not a zip archive"}, "DatasetInvalid"),
        # The Job is gone (TTL): the final report is all there is; an unknown reason is not the dataset's.
        (PreflightResult(ok=False, reason="NoUsableClips", message="all clips too short"), None, "NoUsableClips"),
        (PreflightResult(ok=False, reason="SomethingNew", message="?"), None, "PreflightFailed"),
    ],
)
def test_preflight_failures_never_create_a_gpu_job(report, job_kw, reason):
    preflight_job = job("t-preflight", **job_kw) if job_kw is not None else None
    obs = replace(BASE, preflight_job=preflight_job, preflight_report=report)
    plan = decide(obs, NOW)
    assert Action.CREATE_TRAINING not in plan.actions
    assert written(plan)["phase"] == "Failed"
    assert written(plan)["failure"]["reason"] == reason
    assert written(plan)["billingUnits"] == 0


def test_preflight_running():
    plan = decide(replace(BASE, preflight_job=job("t-preflight", active=1)), NOW)
    assert plan.actions == ()
    assert written(plan)["phase"] == "Preflight"


def test_a_session_that_ends_soon_is_renewed_while_a_job_may_start_pods_and_never_after():
    running = replace(BASE, preflight_job=job("t-preflight", active=1), store_credentials_due=True)
    plan = decide(running, NOW)
    assert plan.actions == (Action.RENEW_STORE_CREDENTIALS,)
    # The status is the same as without renewal: renewing writes nothing the user sees.
    assert written(plan) == written(decide(replace(running, store_credentials_due=False), NOW))
    # Creating a Job issues a fresh session anyway: no second one in the same reconcile.
    passed = replace(BASE, preflight_job=job("t-preflight", complete=True), preflight_report=PASSED,
                     store_credentials_due=True)
    assert decide(passed, NOW).actions == (Action.CREATE_TRAINING,)
    # A finished run needs no session.
    failed = replace(BASE, preflight_job=job("t-preflight", failed=True, exit_code=12), store_credentials_due=True)
    assert Action.RENEW_STORE_CREDENTIALS not in decide(failed, NOW).actions


def test_preflight_passed_creates_training_job():
    obs = replace(BASE, preflight_job=job("t-preflight", complete=True), preflight_report=PASSED)
    plan = decide(obs, NOW)
    assert plan.actions == (Action.CREATE_TRAINING,)
    assert plan.create_suspended is False
    s = written(plan)
    assert s["phase"] == "Training"
    assert s["startTime"] == "2026-11-24T12:00:00Z"
    assert s["dataset"] == {"usable": 3, "skipped": [{"name": "s4", "reason": "too short"}]}
    assert conds(s)["PreflightSucceeded"] == ("True", "Passed")


@pytest.mark.parametrize("kueue", [False, True])
def test_creating_a_job_and_then_seeing_it_decide_the_same_status(kueue):
    # One status write per stage: the reconcile that sees the Job it created writes nothing.
    created = decide(BASE, NOW)
    seen = decide(replace(BASE, preflight_job=job("t-preflight"), status=written(created)), NOW)
    assert seen.actions == () and written(seen) == written(created)
    passed = replace(BASE, preflight_job=job("t-preflight", complete=True), preflight_report=PASSED,
                     kueue_managed=kueue)
    created = decide(passed, NOW)
    assert created.actions == (Action.CREATE_TRAINING,)
    seen = decide(replace(passed, training_job=job(suspended=kueue), status=written(created)), NOW)
    assert seen.actions == () and written(seen) == written(created)


def test_concurrency_limit_queues():
    obs = replace(BASE, preflight_report=PASSED, slot_available=False)
    plan = decide(obs, NOW)
    assert plan.actions == ()
    assert written(plan)["phase"] == "Queued"
    assert conds(written(plan))["Admitted"] == ("False", "WaitingForQuota")
    assert conds(written(plan))["Reconciling"] == ("True", "Queued")


def test_kueue_creates_suspended_and_waits():
    obs = replace(BASE, preflight_report=PASSED, kueue_managed=True)
    plan = decide(obs, NOW)
    assert plan.actions == (Action.CREATE_TRAINING,)
    assert plan.create_suspended is True
    assert written(plan)["phase"] == "Queued"
    waiting = replace(obs, training_job=job(suspended=True), status={"startTime": "x"})
    plan = decide(waiting, NOW)
    assert plan.actions == ()
    assert written(plan)["phase"] == "Queued"
    admitted = replace(waiting, training_job=job(active=1))
    assert written(decide(admitted, NOW))["phase"] == "Training"


def test_progress_is_reported_and_never_goes_backwards():
    beat = NOW.isoformat()
    obs = replace(BASE, preflight_report=PASSED, training_job=job(active=1), status={"startTime": "x"},
                  progress=Progress(step=120, totalSteps=500, loss=0.25, etaSeconds=40, heartbeat=beat))
    s = written(decide(obs, NOW))
    assert s["progress"] == {"step": 120, "totalSteps": 500, "loss": "0.2500", "etaSeconds": 40,
                             "updatedAt": beat}
    older = replace(obs, status=s, progress=Progress(step=100, totalSteps=500, loss=0.3, heartbeat=beat))
    assert written(decide(older, NOW))["progress"]["step"] == 120


def test_fetching_the_model_shows_in_the_reconciling_condition_while_the_phase_stays_training():
    beat = NOW.isoformat()
    fetching = Progress(step=0, totalSteps=500, heartbeat=beat, message="fetching model: 12.3 of 44.0 GiB")
    obs = replace(BASE, preflight_report=PASSED, training_job=job(active=1), status={"startTime": "x"},
                  progress=fetching)
    s = written(decide(obs, NOW))
    assert s["phase"] == "Training"
    reconciling = next(c for c in s["conditions"] if c["type"] == "Reconciling")
    assert (reconciling["reason"], reconciling["message"]) == ("FetchingModel", "fetching model: 12.3 of 44.0 GiB")
    # The first step's report carries no message: back to plain training.
    trained = replace(obs, status=s, progress=Progress(step=10, totalSteps=500, loss=0.2, heartbeat=beat))
    assert conds(written(decide(trained, NOW)))["Reconciling"] == ("True", "Training")


def test_stale_heartbeat_is_reported_not_terminal():
    beat = (NOW - timedelta(hours=1)).isoformat()
    obs = replace(BASE, preflight_report=PASSED, training_job=job(active=1), status={"startTime": "x"},
                  progress=Progress(step=1, totalSteps=500, heartbeat=beat))
    s = written(decide(obs, NOW, stale_after=600))
    assert s["phase"] == "Training"
    assert conds(s)["Reconciling"] == ("True", "NoRecentProgress")


def test_success_bills_once_after_artifacts_verified():
    obs = replace(BASE, preflight_report=PASSED, training_job=job(complete=True), result=OK_RESULT,
                  artifacts_verified=True, status={"startTime": "x"})
    plan = decide(obs, NOW)
    s = written(plan)
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
    assert written(again) == s
    assert again.events == ()


def test_minimum_billing_is_100_units():
    spec = validate_spec({"trainingDataUrl": "https://e/d.zip", "numberOfSteps": 100})
    obs = replace(BASE, spec=spec, preflight_report=PASSED, training_job=job(complete=True),
                  result=OK_RESULT, artifacts_verified=True)
    assert written(decide(obs, NOW))["billingUnits"] == 100


def test_unverified_artifacts_wait_and_missing_ones_fail():
    obs = replace(BASE, preflight_report=PASSED, training_job=job(complete=True), result=OK_RESULT,
                  status={"startTime": "x"})
    assert written(decide(obs, NOW))["phase"] == "Training"
    missing = written(decide(replace(obs, artifacts_verified=False), NOW))
    assert missing["failure"]["reason"] == "ArtifactsMissing"
    assert missing["billingUnits"] == 0


def test_training_failure_reason_from_result_then_exit_code():
    base = replace(BASE, preflight_report=PASSED, status={"startTime": "x"})
    failed = written(decide(replace(base, training_job=job(failed=True, exit_code=22)), NOW))
    assert failed["failure"]["reason"] == "TrainingFailed"
    assert failed["billingUnits"] == 0


def test_deleted_training_job_is_reported_not_recreated():
    obs = replace(BASE, preflight_report=PASSED, training_job=None, status={"startTime": "x"})
    plan = decide(obs, NOW)
    assert plan.actions == ()
    assert written(plan)["failure"]["reason"] == "JobDeleted"


def test_name_conflict():
    obs = replace(BASE, preflight_job=JobState(name="t-preflight", owned=False))
    assert written(decide(obs, NOW))["failure"]["reason"] == "NameConflict"


REFUSED = ChildRejection(kind="Job", name="t-preflight", code=422,
                         message='Job.batch "t-preflight" is invalid: spec.template.labels: Invalid value: "-x"')


@pytest.mark.parametrize("stage", ["preflight", "training"])
def test_a_child_the_api_server_refuses_fails_the_training_with_its_message(stage):
    # act.py creates the children the plan names; a refusal (422, 403 by a quota or policy, ...)
    # is decided like an observation: Failed at once, never a retry of the same object.
    refused = REFUSED if stage == "preflight" else replace(REFUSED, kind="Service", name="t-train", code=403,
                                                          message='services "t-train" is forbidden: exceeded quota')
    obs = replace(BASE, rejected=refused, **({"preflight_report": PASSED} if stage == "training" else {}))
    plan = decide(obs, NOW)
    assert plan.actions == ()
    s = written(plan)
    assert s["phase"] == "Failed"
    assert s["failure"]["reason"] == "ChildRejected"
    assert refused.message in s["failure"]["message"] and f"ns/{refused.name}" in s["failure"]["message"]
    assert s["billingUnits"] == 0 and "startTime" not in s and s["completionTime"]
    c = conds(s)
    assert c["Stalled"] == ("True", "ChildRejected") and c["Ready"][0] == c["Reconciling"][0] == "False"
    stalled = next(x for x in s["conditions"] if x["type"] == "Stalled")
    assert refused.message in stalled["message"]
    domain = "PreflightSucceeded" if stage == "preflight" else "Admitted"
    assert c[domain] == ("False", "ChildRejected")
    assert [(e.type, e.reason) for e in plan.events] == [("Warning", "ChildRejected")]
    assert refused.message in plan.events[0].message
    # Written once, it stays: the next reconcile (no rejection observed any more) changes nothing.
    again = decide(replace(BASE, status=s), NOW + timedelta(seconds=5))
    assert again.actions == () and again.events == () and written(again) == s


def test_suspend_and_resume():
    spec = validate_spec({"trainingDataUrl": "https://e/d.zip", "suspend": True})
    running = replace(BASE, spec=spec, preflight_report=PASSED, training_job=job(active=1),
                      status={"startTime": "x"})
    plan = decide(running, NOW)
    assert plan.actions == (Action.SUSPEND_TRAINING,)
    assert written(plan)["phase"] == "Suspended"
    assert conds(written(plan))["Suspended"] == ("True", "Suspended")
    suspended = replace(running, training_job=job(suspended=True, suspended_by_user=True), status=written(plan))
    assert decide(suspended, NOW).actions == ()
    resumed = replace(suspended, spec=SPEC)
    plan = decide(resumed, NOW)
    assert plan.actions == (Action.RESUME_TRAINING,)
    assert written(plan)["phase"] == "Training"
    assert conds(written(plan))["Suspended"][0] == "False"


def test_terminal_status_is_sticky():
    status = {"phase": "Failed", "billingUnits": 0, "failure": {"reason": "InvalidSpec", "message": "x"},
              "observedGeneration": 1, "conditions": []}
    plan = decide(replace(BASE, generation=2, status=status), NOW)
    assert plan.actions == ()
    assert written(plan) == {**status, "observedGeneration": 2}


def test_transition_time_moves_only_on_flip():
    first = written(decide(BASE, NOW))
    later = written(decide(replace(BASE, preflight_job=job("t-preflight", active=1), status=first),
                           NOW + timedelta(seconds=30)))
    t0 = {c["type"]: c["lastTransitionTime"] for c in first["conditions"]}
    t1 = {c["type"]: c["lastTransitionTime"] for c in later["conditions"]}
    assert t0["Ready"] == t1["Ready"]
    assert t0["Reconciling"] == t1["Reconciling"]


def test_missing_secret_blocks_without_failing():
    plan = decide(replace(BASE, blocked="Secret ns/creds named by spec.output.credentialsSecretRef does not exist"),
                  NOW)
    assert plan.actions == ()
    s = written(plan)
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
    assert plan.actions == (Action.SUSPEND_TRAINING,) and written(plan)["phase"] == "Suspended"
    suspended = replace(running, training_job=job(suspended=True, suspended_by_user=True), status=written(plan))
    assert written(decide(suspended, NOW))["phase"] == "Suspended"
    plan = decide(replace(suspended, spec=SPEC), NOW)
    assert plan.actions == (Action.RESUME_TRAINING,)
    assert written(plan)["phase"] == "Queued"
    assert conds(written(plan))["Admitted"] == ("False", "WaitingForQuota")
    # Reactivated but not yet admitted (the mark is gone): still Queued, nothing more to do.
    waiting = replace(suspended, spec=SPEC, training_job=job(suspended=True), status=written(plan))
    plan = decide(waiting, NOW)
    assert plan.actions == () and written(plan)["phase"] == "Queued"


def test_status_fields_that_show_reports_are_the_report_models_or_derived_from_them():
    from iclora_api import contract, v1alpha1

    status = v1alpha1.MaskedICLoraTrainingStatus.model_fields
    # The same shape: one model. result.json's Artifacts is ArtifactUris with loraFile and configFile required.
    assert status["artifacts"].annotation == contract.ArtifactUris | None
    assert issubclass(contract.Artifacts, contract.ArtifactUris)
    assert v1alpha1.DatasetSummary.model_fields["skipped"].annotation == list[contract.SkippedTriplet]
    assert contract.PreflightResult.model_fields["skipped"].annotation == list[contract.SkippedTriplet]
    # A different shape, derived (decide): the report without its heartbeat, which is shown as updatedAt,
    # and its message, which is shown as the Reconciling condition's message.
    shown = set(contract.Progress.model_fields) - {"heartbeat", "message"} | {"updated_at"}
    assert set(v1alpha1.Progress.model_fields) == shown
    assert status["progress"].annotation == v1alpha1.Progress | None


def test_the_written_status_is_exactly_the_document_of_before_the_typed_status():
    # The status written while the plan's status was a dict (a successful run, whole): the typed
    # status dumps to the same JSON, no field added (no defaults that were absent) or dropped.
    beat = NOW.isoformat()
    arts = Artifacts(loraFile="s3://b/r/lora", configFile="s3://b/r/cfg", video="s3://b/r/v.mp4")
    obs = replace(BASE, preflight_report=PASSED, training_job=job(complete=True), artifacts_verified=True,
                  result=Result(status="Succeeded", steps=500, artifacts=arts),
                  status={"startTime": "2026-11-24T11:00:00Z"},
                  progress=Progress(step=120, totalSteps=500, loss=0.25, etaSeconds=40, heartbeat=beat))

    def cond(ctype, status, reason, message):
        return {"type": ctype, "status": status, "reason": reason, "message": message,
                "lastTransitionTime": "2026-11-24T12:00:00Z", "observedGeneration": 1}

    assert written(decide(obs, NOW)) == {
        "phase": "Succeeded",
        "observedGeneration": 1,
        "conditions": [
            cond("Ready", "True", "Succeeded", "LoRA trained"),
            cond("Reconciling", "False", "Succeeded", "LoRA trained"),
            cond("Stalled", "False", "Succeeded", ""),
            cond("Validated", "True", "Valid", "the spec passed every rule"),
            cond("PreflightSucceeded", "True", "Passed", "3 usable triplets"),
            cond("Admitted", "True", "Admitted", "training Job ran"),
        ],
        "progress": {"step": 500, "totalSteps": 500, "loss": "0.2500", "etaSeconds": 40, "updatedAt": beat},
        "billingUnits": 500,
        "artifacts": {"loraFile": "s3://b/r/lora", "configFile": "s3://b/r/cfg", "video": "s3://b/r/v.mp4"},
        "effective": {"numberOfFrames": 89, "validationNumberOfFrames": 89, "width": 768, "height": 768,
                      "validationWidth": 960, "validationHeight": 960},
        "dataset": {"usable": 3, "skipped": [{"name": "s4", "reason": "too short"}]},
        "startTime": "2026-11-24T11:00:00Z",
        "completionTime": "2026-11-24T12:00:00Z",
    }


# --- pods that never start (issue 24, item 2) ------------------------------------------------------
def _stuck(why, message, age_s, pod="t-preflight-abc"):
    from iclora_operator.reconcile.observed import PodNotStarting

    since = (NOW - timedelta(seconds=age_s)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return PodNotStarting(pod=pod, reason=why, message=message, since=since)


@pytest.mark.parametrize(("why", "reason"), [
    ("Unschedulable", "Unschedulable"),
    ("ImagePullBackOff", "ImagePullFailed"),
    ("ErrImagePull", "ImagePullFailed"),
    ("InvalidImageName", "ImagePullFailed"),
    ("CreateContainerConfigError", "PodNotStarting"),
])
def test_a_pod_that_does_not_start_shows_in_reconciling_with_one_warning_event(why, reason):
    message = "0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector."
    stuck = job("t-preflight", active=1, not_starting=_stuck(why, message, 20))
    plan = decide(replace(BASE, preflight_job=stuck), NOW)
    s = written(plan)
    assert plan.actions == ()
    assert s["phase"] == "Preflight" and "failure" not in s
    assert conds(s)["Reconciling"] == ("True", reason)
    assert conds(s)["Stalled"] == ("False", "Preflight")
    rec = next(c for c in s["conditions"] if c["type"] == "Reconciling")
    assert f"t-preflight-abc does not start: {why}: {message}" in rec["message"]
    assert [(e.type, e.reason) for e in plan.events] == [("Warning", reason)]
    # The next reconcile sees the same: same status, no second Event.
    again = decide(replace(BASE, preflight_job=stuck, status=s), NOW + timedelta(seconds=5))
    assert again.events == () and written(again) == s


def test_a_training_pod_that_does_not_start_past_the_timeout_fails_and_deletes_its_job():
    profile = TrainingProfileSpec(pod_start_timeout_seconds=60)
    ran = replace(BASE, profile=profile, preflight_job=job("t-preflight", complete=True), preflight_report=PASSED)
    waiting = job(active=1, not_starting=_stuck("ImagePullBackOff", "Back-off pulling image \"x:1\"", 30,
                                                  pod="t-train-0-abc"))
    shown = decide(replace(ran, training_job=waiting, status={"startTime": "2026-11-24T11:59:00Z"}), NOW)
    assert written(shown)["phase"] == "Training"
    assert conds(written(shown))["Reconciling"] == ("True", "ImagePullFailed")
    late = replace(waiting, not_starting=_stuck("ImagePullBackOff", "Back-off pulling image \"x:1\"", 61,
                                                 pod="t-train-0-abc"))
    plan = decide(replace(ran, training_job=late, status=written(shown)), NOW)
    s = written(plan)
    assert plan.actions == (Action.DELETE_TRAINING,)
    assert s["phase"] == "Failed" and s["billingUnits"] == 0 and plan.billed is None
    assert s["failure"]["reason"] == "ImagePullFailed"
    assert "Back-off pulling image" in s["failure"]["message"] and "60 s" in s["failure"]["message"]
    assert conds(s)["Stalled"] == ("True", "ImagePullFailed")
    assert ("Warning", "ImagePullFailed") in [(e.type, e.reason) for e in plan.events]


def test_a_preempted_training_waiting_for_capacity_is_shown_but_never_failed_by_the_pod_timeout():
    """A replacement pod of a run that already trained waits visibly; its checkpoint is not thrown away."""
    profile = TrainingProfileSpec(pod_start_timeout_seconds=60)
    ran = replace(BASE, profile=profile, preflight_job=job("t-preflight", complete=True), preflight_report=PASSED,
                  progress=Progress(step=9000, totalSteps=10000, loss=0.1, heartbeat="2026-11-24T11:00:00Z"))
    waiting = job(active=1, not_starting=_stuck("Unschedulable", "0/8 nodes are available", 3600,
                                                  pod="t-train-0-xyz"))
    plan = decide(replace(ran, training_job=waiting, status={"startTime": "2026-11-24T10:00:00Z"}), NOW)
    s = written(plan)
    assert Action.DELETE_TRAINING not in plan.actions
    assert s["phase"] == "Training" and "failure" not in s
    assert conds(s)["Reconciling"] == ("True", "Unschedulable")


def test_an_unschedulable_preflight_past_the_timeout_fails_with_unschedulable():
    stuck = job("t-preflight", active=1, not_starting=_stuck("Unschedulable", "0/1 nodes are available", 601))
    plan = decide(replace(BASE, preflight_job=stuck), NOW)  # default podStartTimeoutSeconds: 600
    assert plan.actions == (Action.DELETE_PREFLIGHT,)
    assert written(plan)["failure"]["reason"] == "Unschedulable"


def test_a_pod_that_starts_clears_the_not_starting_reason():
    stuck = job("t-preflight", active=1, not_starting=_stuck("Unschedulable", "no nodes", 20))
    shown = written(decide(replace(BASE, preflight_job=stuck), NOW))
    plan = decide(replace(BASE, preflight_job=job("t-preflight", active=1, ready=1), status=shown),
                  NOW + timedelta(seconds=10))
    s = written(plan)
    assert conds(s)["Reconciling"] == ("True", "Preflight") and plan.events == ()
    assert s["phase"] == "Preflight"


def test_jobs_are_looked_at_for_stuck_pods_only_while_active_pods_are_not_ready():
    assert job(active=1).waits_for_pods
    assert not job(active=1, ready=1).waits_for_pods
    assert job(active=2, ready=1).waits_for_pods  # one rank of two does not start
    assert job(active=0).waits_for_pods and job(active=0).lacks_pods  # no pod at all: refused?
    assert not job(active=0, succeeded=1).waits_for_pods
    assert not job(active=1).lacks_pods
    assert not job(active=1, suspended=True).waits_for_pods
    assert not job(active=1, complete=True).waits_for_pods
    assert not JobState(name="x", owned=False, active=1).waits_for_pods


def test_pod_problem_reads_waiting_reasons_before_the_scheduler_and_ignores_normal_starts():
    from iclora_operator.adapters.kube import pod_problem

    def pod(phase="Pending", waiting=None, scheduled=None, **meta):
        status = {"phase": phase, "conditions": []}
        if waiting:
            status["containerStatuses"] = [{"name": "trainer", "state": {"waiting": waiting}}]
        if scheduled:
            status["conditions"].append({"type": "PodScheduled", "status": "False", **scheduled})
        return {"metadata": {"name": "p", "creationTimestamp": "2026-11-24T11:00:00Z", **meta}, "status": status}

    pull = pod(waiting={"reason": "ImagePullBackOff", "message": "Back-off pulling image"})
    assert pod_problem(pull).reason == "ImagePullBackOff"
    assert pod_problem(pull).message == "Back-off pulling image"
    assert pod_problem(pull).since == "2026-11-24T11:00:00Z"
    config = pod(waiting={"reason": "CreateContainerConfigError", "message": 'secret "s" not found'})
    assert pod_problem(config).reason == "CreateContainerConfigError"
    unsched = pod(scheduled={"reason": "Unschedulable", "message": "0/2 nodes are available"})
    assert (pod_problem(unsched).reason, pod_problem(unsched).message) == ("Unschedulable", "0/2 nodes are available")
    assert pod_problem(pod(waiting={"reason": "ContainerCreating"})) is None
    assert pod_problem(pod(scheduled={"reason": "SchedulingGated"})) is None
    assert pod_problem(pod(phase="Running")) is None
    assert pod_problem(pod(waiting={"reason": "ErrImagePull"}, deletionTimestamp="2026-11-24T11:01:00Z")) is None


# --- pods the API server refuses to create (the Job's FailedCreate Event) -------------------------
POLICY = ('Error creating: pods "t-preflight-x1" is forbidden: violates PodSecurity "baseline:latest": '
          'hostPath volumes (volume "model-cache")')
QUOTA = ('Error creating: pods "t-train-0-x1" is forbidden: exceeded quota: q, requested: pods=1, '
         'used: pods=0, limited: pods=0')


def _refused(message, age_s, job_name):
    return _stuck("FailedCreate", message, age_s, pod=job_name)


def test_pods_refused_by_a_policy_show_in_reconciling_then_fail_after_the_pod_start_timeout():
    profile = TrainingProfileSpec(pod_start_timeout_seconds=10)
    stuck = job("t-preflight", not_starting=_refused(POLICY, 5, "t-preflight"))
    plan = decide(replace(BASE, profile=profile, preflight_job=stuck), NOW)
    s = written(plan)
    assert plan.actions == () and s["phase"] == "Preflight" and "failure" not in s
    assert conds(s)["Reconciling"] == ("True", "PodCreationRefused")
    rec = next(c for c in s["conditions"] if c["type"] == "Reconciling")
    assert "refuses to create the pods of Job t-preflight" in rec["message"] and "PodSecurity" in rec["message"]
    assert [(e.type, e.reason) for e in plan.events] == [("Warning", "PodCreationRefused")]
    again = decide(replace(BASE, profile=profile, preflight_job=stuck, status=s), NOW + timedelta(seconds=2))
    assert again.events == () and written(again) == s  # one Event, the same status
    late = replace(stuck, not_starting=_refused(POLICY, 11, "t-preflight"))
    plan = decide(replace(BASE, profile=profile, preflight_job=late, status=s), NOW)
    s = written(plan)
    assert plan.actions == (Action.DELETE_PREFLIGHT,)
    assert s["phase"] == "Failed" and s["billingUnits"] == 0 and plan.billed is None
    assert s["failure"]["reason"] == "PodCreationRefused" and "hostPath volumes" in s["failure"]["message"]
    assert conds(s)["Stalled"] == ("True", "PodCreationRefused")


@pytest.mark.parametrize("stage", ["preflight", "training"])
def test_pods_refused_by_an_exhausted_quota_wait_visibly_and_never_fail_by_the_pod_timeout(stage):
    """A ResourceQuota frees up when other pods end: bounded by the Job's own deadline, not the pod timeout."""
    profile = TrainingProfileSpec(pod_start_timeout_seconds=10)
    if stage == "preflight":
        obs = replace(BASE, profile=profile, preflight_job=job("t-preflight", not_starting=_refused(QUOTA, 3600,
                                                                                                   "t-preflight")))
        phase = "Preflight"
    else:
        obs = replace(BASE, profile=profile, preflight_job=job("t-preflight", complete=True),
                      preflight_report=PASSED, training_job=job(not_starting=_refused(QUOTA, 3600, "t-train")),
                      status={"startTime": "2026-11-24T10:00:00Z"})
        phase = "Training"
    plan = decide(obs, NOW)
    s = written(plan)
    assert plan.actions == () and s["phase"] == phase and "failure" not in s
    assert conds(s)["Reconciling"] == ("True", "PodCreationRefused")
    assert "exceeded quota" in next(c for c in s["conditions"] if c["type"] == "Reconciling")["message"]


def test_a_resumable_training_whose_replacement_pods_are_refused_is_never_failed_by_the_pod_timeout():
    profile = TrainingProfileSpec(pod_start_timeout_seconds=10)
    ran = replace(BASE, profile=profile, preflight_job=job("t-preflight", complete=True), preflight_report=PASSED,
                  progress=Progress(step=900, totalSteps=1000, loss=0.1, heartbeat="2026-11-24T11:00:00Z"),
                  status={"startTime": "2026-11-24T10:00:00Z"})
    plan = decide(replace(ran, training_job=job(not_starting=_refused(POLICY, 3600, "t-train"))), NOW)
    s = written(plan)
    assert Action.DELETE_TRAINING not in plan.actions and s["phase"] == "Training"
    assert conds(s)["Reconciling"] == ("True", "PodCreationRefused")  # not NoRecentProgress: we know why


def test_pod_creation_refused_reads_the_jobs_latest_failed_create_event_with_one_field_selected_list():
    import json

    from iclora_operator.adapters.kube import Kube, job_state

    calls = []

    class Core:
        def list_namespaced_event(self, namespace, field_selector, _preload_content):
            calls.append((namespace, field_selector))
            items = [{"message": "old", "lastTimestamp": "2026-11-24T11:00:00Z"},
                     {"message": POLICY, "lastTimestamp": "2026-11-24T11:00:09Z"}]
            return type("R", (), {"data": json.dumps({"items": items})})()

    kube = Kube.__new__(Kube)
    kube.core = Core()
    state = job_state({"metadata": {"name": "t-preflight", "uid": "ju", "creationTimestamp": "2026-11-24T10:59:59Z",
                                    "labels": {"iclora.dev/training-uid": "u"}}}, "u")
    found = kube.pod_creation_refused("ns", state)
    assert calls == [("ns", "involvedObject.kind=Job,involvedObject.name=t-preflight,reason=FailedCreate,"
                            "involvedObject.uid=ju")]
    assert (found.pod, found.reason, found.message, found.since) == (
        "t-preflight", "FailedCreate", POLICY, "2026-11-24T10:59:59Z")


def _pod(name, phase, created, finished=None, deleting=False):
    meta = {"name": name, "creationTimestamp": created}
    if deleting:
        meta["deletionTimestamp"] = "2026-11-24T12:00:00Z"
    status = {"phase": phase}
    if finished:
        status["containerStatuses"] = [{"state": {"terminated": {"exitCode": 137, "finishedAt": finished}}}]
    return {"metadata": meta, "status": status}


def test_stranded_pods_are_the_live_peers_older_than_the_latest_failure():
    from iclora_operator.adapters.kube import stranded_pods

    old = "2026-11-24T11:00:00Z"
    assert stranded_pods([_pod("t-train-0-a", "Running", old), _pod("t-train-1-a", "Running", old)]) == ()
    pods = [
        _pod("t-train-0-a", "Running", old),                                  # waits for rank 1: stranded
        _pod("t-train-1-a", "Failed", old, finished="2026-11-24T11:10:00Z"),  # the lost rank
        _pod("t-train-1-b", "Pending", "2026-11-24T11:10:01Z"),               # its replacement stays
        _pod("t-train-2-a", "Running", old, deleting=True),                   # already going
    ]
    assert stranded_pods(pods) == ("t-train-0-a",)
    # A pod the restart deleted is no new failure, even once it has failed.
    gone = _pod("t-train-0-a", "Failed", old, finished="2026-11-24T11:10:30Z", deleting=True)
    assert stranded_pods([pods[1], pods[2], gone]) == ()
    # After the gang restart every live pod is newer than the failure: nothing more to delete.
    assert stranded_pods([pods[1], pods[2], _pod("t-train-0-b", "Running", "2026-11-24T11:10:05Z")]) == ()


def test_a_failed_rank_restarts_the_whole_gang_and_keeps_training():
    """Issue 18.8: one pod of a multi-node training failed; its peers' pods are deleted (Action.RESTART_RANKS)
    so that the Job recreates every index and all ranks resume from the last checkpoint."""
    ran = replace(BASE, preflight_job=job("t-preflight", complete=True), preflight_report=PASSED,
                  status={"startTime": "2026-11-24T11:00:00Z"})
    lost = job(active=2, ready=1, parallelism=2, failed_pods=1, stranded=("t-train-0-a",))
    assert lost.may_have_stranded_pods
    plan = decide(replace(ran, training_job=lost), NOW)
    s = written(plan)
    assert plan.actions == (Action.RESTART_RANKS,) and plan.restart_pods == ("t-train-0-a",)
    assert s["phase"] == "Training" and "failure" not in s
    assert [(e.type, e.reason) for e in plan.events] == [("Warning", "RestartingRanks")]
    # Once they are going (or replaced), nothing more is deleted; a one-pod Job never restarts a gang.
    calm = decide(replace(ran, training_job=replace(lost, stranded=())), NOW)
    assert calm.actions == () and calm.restart_pods == ()
    assert not job(active=1, parallelism=1, failed_pods=1).may_have_stranded_pods
    assert not replace(lost, failed=True).may_have_stranded_pods


def test_a_jobs_events_are_read_only_while_it_has_had_no_pod_for_some_seconds():
    from datetime import datetime as real_datetime
    from types import SimpleNamespace

    from iclora_operator.adapters.kube import job_summary
    from iclora_operator.observe import POD_CREATION_GRACE_SECONDS, _job

    calls = []
    kube = SimpleNamespace(pod_creation_refused=lambda ns, st: calls.append(("events", st.name)) or "refused",
                           job_pods=lambda ns, name: calls.append(("pods", name)) or [])
    memo = SimpleNamespace(kube=kube)

    def index(age_s, **status):
        created = (real_datetime.now(UTC) - timedelta(seconds=age_s)).strftime("%Y-%m-%dT%H:%M:%SZ")
        obj = {"metadata": {"name": "t-preflight", "uid": "ju", "creationTimestamp": created,
                            "labels": {"iclora.dev/training-uid": "u"}}, "status": status}
        return {("ns", "t-preflight"): [job_summary(obj)]}

    assert _job(memo, index(0), "ns", "t-preflight", "u").not_starting is None and calls == []  # just created
    assert _job(memo, index(POD_CREATION_GRACE_SECONDS + 5), "ns", "t-preflight", "u").not_starting == "refused"
    assert calls == [("events", "t-preflight")]
    calls.clear()
    complete = [{"type": "Complete", "status": "True"}]
    _job(memo, index(60, succeeded=1, conditions=complete), "ns", "t-preflight", "u")  # finished: no API call
    assert calls == []
    # Its pod runs: one pod list (the disruptions it retried without counting), no Events.
    _job(memo, index(60, active=1, ready=1), "ns", "t-preflight", "u")
    assert calls == [("pods", "t-preflight")]
    calls.clear()
    _job(memo, index(60, active=1), "ns", "t-preflight", "u")  # a pod not ready: the same one list
    assert calls == [("pods", "t-preflight")]


def test_finished_jobs_deleted_after_their_ttl_change_nothing():
    """Issue 23.8: Kubernetes deletes finished Jobs after ttlSecondsAfterFinished. A finished training
    keeps its status; a passed preflight whose Job is gone is never run again, even when its report
    cannot be read; a started run whose Job is gone takes its outcome from result.json."""
    ran = replace(BASE, preflight_job=job("t-preflight", complete=True), preflight_report=PASSED,
                  training_job=job(complete=True), result=OK_RESULT, artifacts_verified=True)
    done = written(decide(ran, NOW))
    assert done["phase"] == "Succeeded"
    # The Jobs go (the TTL controller): the finished training stays exactly as it was.
    gone = replace(ran, preflight_job=None, training_job=None, result=None, artifacts_verified=None,
                   preflight_report=None, status=done)
    plan = decide(gone, NOW + timedelta(hours=2))
    assert plan.actions == () and plan.events == ()
    assert written(plan) == done
    failed = written(decide(replace(ran, training_job=job(failed=True, exit_code=3)), NOW))
    assert failed["phase"] == "Failed"
    assert written(decide(replace(gone, status=failed), NOW)) == failed

    # A passed preflight's Job is gone while the training runs (or waits): not recreated.
    preflight_done = written(decide(replace(BASE, preflight_job=job("t-preflight", complete=True),
                                            preflight_report=PASSED, slot_available=False), NOW))
    assert preflight_done["phase"] == "Queued" and "startTime" not in preflight_done
    assert conds(preflight_done)["PreflightSucceeded"] == ("True", "Passed")
    for report in (PASSED, None):  # the report read, or not readable (deleted from the store)
        plan = decide(replace(BASE, preflight_report=report, status=preflight_done), NOW)
        assert Action.CREATE_PREFLIGHT not in plan.actions
        assert plan.actions == (Action.CREATE_TRAINING,)
    # Without that record nothing says it passed: the preflight runs (the first reconcile).
    assert decide(BASE, NOW).actions == (Action.CREATE_PREFLIGHT,)

    # The operator was away while the run ended and its Job expired: result.json tells the outcome.
    started = replace(BASE, preflight_report=PASSED, training_job=None, status={"startTime": "x"})
    s = written(decide(replace(started, result=OK_RESULT, artifacts_verified=True), NOW))
    assert s["phase"] == "Succeeded" and s["artifacts"]["loraFile"] == ARTS.lora_file
    assert s["billingUnits"] > 0
    s = written(decide(replace(started, result=OK_RESULT, artifacts_verified=False), NOW))
    assert s["failure"]["reason"] == "ArtifactsMissing"
    bad = Result(status="Failed", reason="NoUsableClips", message="all clips too short")
    s = written(decide(replace(started, result=bad), NOW))
    assert s["failure"] == {"reason": "NoUsableClips", "message": "all clips too short"}
    odd = Result(status="Failed", reason="SomethingNew")
    assert written(decide(replace(started, result=odd), NOW))["failure"]["reason"] == "TrainingFailed"
    # No result: deleted by someone mid-run (JobDeleted, as before).
    assert written(decide(started, NOW))["failure"]["reason"] == "JobDeleted"


def _failed_pod(name, finished, *, disruption=None, exit_code=137, message="", created="2026-11-24T11:00:00Z"):
    status = {"phase": "Failed", "conditions": [], "containerStatuses": []}
    if disruption:
        status["conditions"].append({"type": "DisruptionTarget", "status": "True", "reason": disruption,
                                     "message": "disrupted"})
    if message:
        status["reason"], status["message"] = "Evicted", message
    if exit_code is not None:
        status["containerStatuses"].append({"name": "trainer", "state": {"terminated": {
            "exitCode": exit_code, "finishedAt": finished}}})
    return {"metadata": {"name": name, "creationTimestamp": created}, "status": status}


def test_disrupted_pods_are_the_ignored_failures_that_saved_nothing():
    """Issue 23.2: failed pods with DisruptionTarget count, unless the trainer exited PREEMPTED (23):
    it wrote its checkpoint on SIGTERM (scheduler preemption, drain), so retrying it lost nothing."""
    from iclora_operator.adapters.kube import disrupted_pods

    scratch = 'Usage of EmptyDir volume "scratch" exceeds the limit "200Gi".'
    pods = [
        _failed_pod("t-train-0-c", "2026-11-24T11:30:00Z", disruption="TerminationByKubelet", message=scratch),
        _failed_pod("t-train-0-a", "2026-11-24T11:10:00Z", disruption="TerminationByKubelet",
                    message="The node was low on resource: ephemeral-storage."),
        _failed_pod("t-train-0-b", "2026-11-24T11:20:00Z", disruption="PreemptionByScheduler", exit_code=23),
        _failed_pod("t-train-0-d", "2026-11-24T11:40:00Z"),  # a plain failure: backoffLimit counts it
        _failed_pod("t-train-0-e", "", disruption="DeletionByPodGC", exit_code=None,
                    created="2026-11-24T11:45:00Z"),  # its node is gone: no exit code at all
        {"metadata": {"name": "t-train-0-f"}, "status": {"phase": "Running"}},
    ]
    found = disrupted_pods(pods)
    assert [(d.pod, d.reason) for d in found] == [
        ("t-train-0-a", "TerminationByKubelet"), ("t-train-0-c", "TerminationByKubelet"),
        ("t-train-0-e", "DeletionByPodGC")]
    assert found[1].message == scratch and found[2].message == "disrupted"


def test_too_many_disruptions_fail_the_training_and_delete_its_job():
    """Issue 23.2: a pod evicted again and again (a full node disk, its scratch past sizeLimit) is retried
    by the Job without counting; past the profile's maxDisruptions the training fails with the reason."""
    from iclora_operator.reconcile.observed import PodDisruption

    def evicted(n):
        return tuple(PodDisruption(f"t-train-0-{i}", "TerminationByKubelet",
                                   'Usage of EmptyDir volume "scratch" exceeds the limit "200Gi".',
                                   f"2026-11-24T11:{i:02d}:00Z") for i in range(n))

    ran = replace(BASE, preflight_job=job("t-preflight", complete=True), preflight_report=PASSED,
                  status={"startTime": "2026-11-24T11:00:00Z"}, profile=TrainingProfileSpec(maxDisruptions=2))
    for n in (0, 1, 2):  # within the limit: the Job retries, the training keeps going
        plan = decide(replace(ran, training_job=job(active=1, ready=1, disruptions=evicted(n))), NOW)
        assert plan.actions == () and written(plan)["phase"] == "Training"
    plan = decide(replace(ran, training_job=job(active=1, disruptions=evicted(3))), NOW)
    s = written(plan)
    assert plan.actions == (Action.DELETE_TRAINING,)
    assert s["phase"] == "Failed" and s["failure"]["reason"] == "TooManyDisruptions"
    assert "disrupted 3 times" in s["failure"]["message"] and "maxDisruptions (2)" in s["failure"]["message"]
    assert "t-train-0-2: TerminationByKubelet: Usage of EmptyDir volume" in s["failure"]["message"]
    assert s["billingUnits"] == 0
    assert [(e.type, e.reason) for e in plan.events] == [("Warning", "TooManyDisruptions")]
    # The default profile allows 10; the preflight is bounded the same way.
    assert TrainingProfileSpec().max_disruptions == 10
    pre = replace(BASE, profile=TrainingProfileSpec(maxDisruptions=0),
                  preflight_job=job("t-preflight", active=1, disruptions=evicted(1)))
    plan = decide(pre, NOW)
    assert plan.actions == (Action.DELETE_PREFLIGHT,)
    assert conds(written(plan))["PreflightSucceeded"] == ("False", "TooManyDisruptions")
