"""The one place that decides a training's status and the operator's next actions.

`decide(observed, now)` is pure: it returns the complete desired status (the typed
`MaskedICLoraTrainingStatus`; `iclora_operator.act` writes it as JSON) and the actions
to carry out. Decisions come from observed children and the object store; the only
things read back from our own earlier status are the facts that must never change once
written (billing, a terminal outcome, the time the training Job was first created,
condition transition times, progress that never goes backwards).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from iclora_api.conditions import ConditionType, Phase, Reason
from iclora_api.contract import ArtifactUris
from iclora_api.v1alpha1 import (
    Condition,
    DatasetSummary,
    EffectiveValues,
    Failure,
    MaskedICLoraTrainingStatus,
    Progress,
)
from iclora_operator.billing import billing_units
from iclora_operator.reconcile.failures import classify_failure
from iclora_operator.reconcile.observed import POD_CREATION_REFUSED, JobState, Observed

TERMINAL_PHASES = {Phase.SUCCEEDED.value, Phase.FAILED.value}
# The Warning Event of a gang restart (Action.RESTART_RANKS).
GANG_RESTART_EVENT = "RestartingRanks"


class Action(StrEnum):
    CREATE_PREFLIGHT = "CreatePreflight"
    CREATE_TRAINING = "CreateTraining"
    SUSPEND_TRAINING = "SuspendTraining"
    RESUME_TRAINING = "ResumeTraining"
    # The ledger's record of a billed run (`iclora_operator.ledger`), written before the status that bills.
    RECORD_BILLING = "RecordBilling"
    # A Job whose pod did not start in time: deleted with its pods (frees the slot and the GPUs).
    DELETE_PREFLIGHT = "DeletePreflight"
    DELETE_TRAINING = "DeleteTraining"
    # A rank of a multi-node training failed: its peers' pods (Plan.restart_pods) are deleted so
    # that the Job recreates every index and the whole gang resumes from the last checkpoint.
    RESTART_RANKS = "RestartRanks"
    # The run's scoped store session ends soon (or its Secret is gone) while a Job of it may still
    # start pods: issue a new one into its Secrets (pods started from then on get it).
    RENEW_STORE_CREDENTIALS = "RenewStoreCredentials"


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass(frozen=True)
class Plan:
    status: MaskedICLoraTrainingStatus
    actions: tuple[Action, ...] = ()
    events: tuple[Event, ...] = ()
    # Whether the training Job should be created suspended (Kueue admits it).
    create_suspended: bool = False
    billed: int | None = None
    # Pods of the training Job to delete for Action.RESTART_RANKS.
    restart_pods: tuple[str, ...] = ()


@dataclass
class _Draft:
    """Mutable scratch space while deciding; frozen into a Plan at the end."""

    phase: Phase
    reason: Reason
    message: str
    validated: tuple[bool, Reason, str] | None = None
    preflight: tuple[bool, Reason, str] | None = None
    admitted: tuple[bool, Reason, str] | None = None
    suspended: bool = False
    reconciling_reason: Reason | None = None
    actions: list[Action] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    start_time: str | None = None
    completion_time: str | None = None
    artifacts: ArtifactUris | None = None

    def set(self, phase: Phase, reason: Reason, message: str) -> None:
        self.phase, self.reason, self.message = phase, reason, message


def _iso(now: datetime) -> str:
    return now.strftime("%Y-%m-%dT%H:%M:%SZ")


def _condition(prev: dict[str, dict[str, Any]], ctype: ConditionType, status: bool, reason: Reason,
               message: str, now: datetime, generation: int) -> Condition:
    value = "True" if status else "False"
    old = prev.get(ctype.value)
    # lastTransitionTime moves only when the status flips (metav1.Condition semantics).
    changed_at = old["lastTransitionTime"] if old and old.get("status") == value else _iso(now)
    return Condition(type=ctype.value, status=value, reason=reason.value, message=message[:1024],
                     last_transition_time=changed_at, observed_generation=generation)


def _conditions(draft: _Draft, prev_status: dict[str, Any], now: datetime, gen: int) -> list[Condition]:
    prev = {c.get("type"): c for c in prev_status.get("conditions") or []}
    phase = draft.phase
    succeeded = phase == Phase.SUCCEEDED
    failed = phase == Phase.FAILED
    in_progress = phase in (Phase.PENDING, Phase.PREFLIGHT, Phase.QUEUED, Phase.TRAINING)
    reconciling_reason = draft.reconciling_reason or draft.reason
    out = [
        _condition(prev, ConditionType.READY, succeeded, draft.reason, draft.message, now, gen),
        _condition(prev, ConditionType.RECONCILING, in_progress, reconciling_reason, draft.message, now, gen),
        _condition(prev, ConditionType.STALLED, failed, draft.reason, draft.message if failed else "",
                   now, gen),
    ]
    for ctype, value in (
        (ConditionType.VALIDATED, draft.validated),
        (ConditionType.PREFLIGHT_SUCCEEDED, draft.preflight),
        (ConditionType.ADMITTED, draft.admitted),
    ):
        if value is not None:
            out.append(_condition(prev, ctype, value[0], value[1], value[2], now, gen))
    if draft.suspended or ConditionType.SUSPENDED.value in prev:
        reason = Reason.SUSPENDED if draft.suspended else Reason.ADMITTED
        message = "suspended by spec.suspend" if draft.suspended else "resumed"
        out.append(_condition(prev, ConditionType.SUSPENDED, draft.suspended, reason, message, now, gen))
    return out


def _effective(obs: Observed) -> EffectiveValues | None:
    spec = obs.spec
    if spec is None:
        return None
    width, height = spec.size
    vwidth, vheight = spec.validation_size
    return EffectiveValues(
        number_of_frames=spec.effective_number_of_frames,
        validation_number_of_frames=spec.effective_validation_number_of_frames,
        width=width,
        height=height,
        validation_width=vwidth,
        validation_height=vheight,
    )


def _progress(obs: Observed, prev_status: dict[str, Any]) -> Progress:
    """status.progress from the last report (contract.Progress) and what the status showed before."""
    total = obs.spec.number_of_steps if obs.spec else 0
    prev = prev_status.get("progress") or {}
    step = int(prev.get("step") or 0)
    loss, eta, updated = prev.get("loss"), prev.get("etaSeconds"), prev.get("updatedAt")
    p = obs.progress
    if p is not None and p.step >= step:
        # Progress shown never goes backwards (a resumed run re-reports older steps).
        step = p.step
        loss = f"{p.loss:.4f}" if p.loss is not None else loss
        eta = p.eta_seconds
        updated = p.heartbeat
    return Progress(step=step, total_steps=total, loss=loss, eta_seconds=None if eta is None else int(eta),
                    updated_at=updated or None)


def _fail(draft: _Draft, reason: Reason, message: str) -> None:
    draft.set(Phase.FAILED, reason, message)
    draft.events.append(Event("Warning", reason.value, message))


def _rejected(obs: Observed, draft: _Draft) -> str | None:
    """A child the API server refused to create (terminal: the same object is refused again)."""
    r = obs.rejected
    if r is None:
        return None
    message = f"the API server refused {r.kind} {obs.namespace}/{r.name} ({r.code}): {r.message}"
    _fail(draft, Reason.CHILD_REJECTED, message)
    return message


IMAGE_PULL_REASONS = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"})


# API server messages of a ResourceQuota that refuses pods for now: used up, or not yet counted.
QUOTA_WAITS = ("exceeded quota", "status unknown for quota")


# Every reason _pod_reason gives: a Reconciling reason that already says why a Job makes no progress.
POD_START_REASONS = frozenset({Reason.POD_CREATION_REFUSED, Reason.UNSCHEDULABLE, Reason.IMAGE_PULL_FAILED,
                               Reason.POD_NOT_STARTING})


def _pod_reason(why: str) -> Reason:
    """Our reason for a pod's scheduler (`Unschedulable`) or kubelet waiting reason, or for the
    Job controller's `FailedCreate` (the API server refuses the pods)."""
    if why == POD_CREATION_REFUSED:
        return Reason.POD_CREATION_REFUSED
    if why == "Unschedulable":
        return Reason.UNSCHEDULABLE
    return Reason.IMAGE_PULL_FAILED if why in IMAGE_PULL_REASONS else Reason.POD_NOT_STARTING


def _not_starting(obs: Observed, draft: _Draft, job: JobState, now: datetime, delete: Action) -> None:
    """A pod of the running Job that does not start: said in Reconciling (and one Warning Event)
    within a reconcile; past the profile's podStartTimeoutSeconds the training fails and the Job goes."""
    stuck = job.not_starting
    if stuck is None or obs.profile is None:
        return
    reason = _pod_reason(stuck.reason)
    detail = stuck.reason if stuck.message in ("", stuck.reason) else f"{stuck.reason}: {stuck.message}"
    what = f"pod {stuck.pod} does not start: {detail}"
    # A ResourceQuota frees up when other pods end: the Job waits, visibly, until it gets its pods or
    # its activeDeadlineSeconds (trainingDeadlineSeconds). A policy refuses the same pod again.
    waiting_for_quota = False
    if reason is Reason.POD_CREATION_REFUSED:
        what = f"the API server refuses to create the pods of Job {stuck.pod}: {stuck.message or stuck.reason}"
        waiting_for_quota = any(m in stuck.message for m in QUOTA_WAITS)
    timeout = obs.profile.pod_start_timeout_seconds
    try:
        waited = (now - datetime.fromisoformat(stuck.since.replace("Z", "+00:00"))).total_seconds()
    except ValueError:
        waited = 0.0
    # A run that has trained before (a preempted or evicted pod being replaced) keeps its checkpoint
    # and waits for capacity visibly, bounded by trainingDeadlineSeconds: the pod-start timeout is
    # for runs that never started, not a reason to throw away a resumable training.
    resumable = delete is Action.DELETE_TRAINING and obs.progress is not None and obs.progress.step > 0
    if waited > timeout and not resumable and not waiting_for_quota:
        draft.actions.append(delete)
        _fail(draft, reason, f"{what} (for more than {timeout} s, the profile's podStartTimeoutSeconds)")
        return
    draft.message = what
    draft.reconciling_reason = reason
    shown = next((c.get("reason") for c in obs.status.get("conditions") or []
                  if c.get("type") == ConditionType.RECONCILING.value), None)
    if shown != reason.value:
        draft.events.append(Event("Warning", reason.value, what))


def _too_disrupted(obs: Observed, draft: _Draft, job: JobState, delete: Action) -> str | None:
    """More disruptions without a checkpoint than the profile's maxDisruptions: the training fails
    (TooManyDisruptions, naming the last one) and the Job goes, instead of being evicted and retried
    until its deadline (the Job's podFailurePolicy ignores disruptions). The failure's message, else None."""
    if obs.profile is None or len(job.disruptions) <= obs.profile.max_disruptions:
        return None
    last = job.disruptions[-1]
    detail = f"{last.reason}: {last.message}" if last.message else last.reason
    message = (f"the pods of Job {job.name} were disrupted {len(job.disruptions)} times without saving their "
               f"work, more than the profile's maxDisruptions ({obs.profile.max_disruptions}); the last, pod "
               f"{last.pod}: {detail}")
    draft.actions.append(delete)
    _fail(draft, Reason.TOO_MANY_DISRUPTIONS, message)
    return message


def _preflight_passed(obs: Observed) -> bool:
    if obs.preflight_report is not None:
        return obs.preflight_report.ok
    if obs.preflight_job is None:
        # A passed preflight is a fact that never changes: once its Job is gone (deleted after its
        # ttlSecondsAfterFinished) the status that recorded it says so; it is never run again.
        return any(c.get("type") == ConditionType.PREFLIGHT_SUCCEEDED.value and c.get("status") == "True"
                   for c in obs.status.get("conditions") or [])
    return obs.preflight_job.complete


def _decide_preflight(obs: Observed, draft: _Draft, now: datetime) -> bool:
    """Drive the CPU preflight; True once it passed."""
    job = obs.preflight_job
    report = obs.preflight_report
    # A failed Job is classified by its exit code first (classify_failure, below): a report left by an
    # earlier attempt cannot contradict it. Without a Job to read (deleted, or gone after its TTL),
    # the final report is all there is.
    if report is not None and not report.ok and (job is None or job.complete):
        known = report.reason in Reason.__members__.values()
        reason = Reason(report.reason) if known else Reason.PREFLIGHT_FAILED
        draft.preflight = (False, reason, report.message or reason.value)
        _fail(draft, reason, report.message or "the dataset was rejected")
        return False
    if _preflight_passed(obs):
        usable = report.usable if report else 0
        draft.preflight = (True, Reason.PASSED, f"{usable} usable triplets")
        return True
    # Creating a Job and then seeing it must decide the same status (one status write, not two).
    checking = "checking the dataset"
    if job is None:
        if (refused := _rejected(obs, draft)) is not None:
            draft.preflight = (False, Reason.CHILD_REJECTED, refused)
            return False
        draft.actions.append(Action.CREATE_PREFLIGHT)
        draft.set(Phase.PREFLIGHT, Reason.PREFLIGHT, checking)
        return False
    if not job.owned:
        _fail(draft, Reason.NAME_CONFLICT, f"{job.name} exists and does not belong to this training")
        return False
    if job.failed:
        reason, message = classify_failure(job, "preflight", report.reason if report else None,
                                           report.message if report else None)
        draft.preflight = (False, Reason.PREFLIGHT_FAILED if reason == Reason.PREFLIGHT_FAILED else reason,
                           message)
        _fail(draft, reason, message)
        return False
    if (message := _too_disrupted(obs, draft, job, Action.DELETE_PREFLIGHT)) is not None:
        draft.preflight = (False, Reason.TOO_MANY_DISRUPTIONS, message)
        return False
    draft.set(Phase.PREFLIGHT, Reason.PREFLIGHT, checking)
    _not_starting(obs, draft, job, now, Action.DELETE_PREFLIGHT)
    return False


WAITING_FOR_KUEUE = "waiting for Kueue admission"


def _running(draft: _Draft) -> None:
    """A training Job that runs (or was just created to run): the same status either way."""
    draft.set(Phase.TRAINING, Reason.TRAINING, "training")
    draft.admitted = (True, Reason.ADMITTED, "training Job admitted")


def _job_gone(obs: Observed, draft: _Draft, now: datetime) -> None:
    """The training Job of a run that started is gone: deleted by someone, or by Kubernetes after its
    ttlSecondsAfterFinished (an operator that was down longer than that never saw it end). The
    trainer's result.json says how it ended when it got that far; the Job is never recreated."""
    result = obs.result
    if result is not None and result.status == "Succeeded" and result.artifacts is not None:
        if obs.artifacts_verified:
            draft.set(Phase.SUCCEEDED, Reason.SUCCEEDED, "LoRA trained")
            draft.artifacts = result.artifacts
            draft.completion_time = _iso(now)
            draft.admitted = (True, Reason.ADMITTED, "training Job ran")
            return
        if obs.artifacts_verified is False:
            _fail(draft, Reason.ARTIFACTS_MISSING, "result.json names artifacts that are not in the store")
            return
    if result is not None and result.status != "Succeeded":
        known = result.reason in Reason.__members__.values()
        _fail(draft, Reason(result.reason) if known else Reason.TRAINING_FAILED,
              result.message or "the training failed")
        return
    _fail(draft, Reason.JOB_DELETED, "the training Job was deleted by someone else; not recreating it")


def _decide_training(obs: Observed, draft: _Draft, now: datetime) -> None:
    job = obs.training_job
    spec = obs.spec
    assert spec is not None  # checked by the caller; kept for type narrowing only
    prev = obs.status
    if job is None:
        if (refused := _rejected(obs, draft)) is not None:
            draft.admitted = (False, Reason.CHILD_REJECTED, refused)
            return
        if prev.get("startTime"):
            _job_gone(obs, draft, now)
            return
        if spec.suspend:
            draft.set(Phase.SUSPENDED, Reason.SUSPENDED, "suspended before training")
            draft.suspended = True
            return
        if not obs.slot_available:
            draft.phase, draft.reason = Phase.QUEUED, Reason.QUEUED
            draft.message = "waiting for the namespace's concurrency limit"
            draft.admitted = (False, Reason.WAITING_FOR_QUOTA, draft.message)
            return
        draft.actions.append(Action.CREATE_TRAINING)
        draft.start_time = _iso(now)
        if obs.kueue_managed:
            draft.set(Phase.QUEUED, Reason.QUEUED, WAITING_FOR_KUEUE)
            draft.admitted = (False, Reason.WAITING_FOR_QUOTA, draft.message)
        else:
            _running(draft)
        return
    if not job.owned:
        _fail(draft, Reason.NAME_CONFLICT, f"{job.name} exists and does not belong to this training")
        return
    result = obs.result
    if job.complete:
        if result is None or result.status != "Succeeded" or result.artifacts is None:
            _fail(draft, Reason.ARTIFACTS_MISSING,
                  "the training Job completed without a successful result.json")
        elif obs.artifacts_verified is False:
            _fail(draft, Reason.ARTIFACTS_MISSING, "result.json names artifacts that are not in the store")
        elif obs.artifacts_verified:
            draft.set(Phase.SUCCEEDED, Reason.SUCCEEDED, "LoRA trained")
            draft.artifacts = result.artifacts
            draft.completion_time = _iso(now)
        else:
            draft.set(Phase.TRAINING, Reason.TRAINING, "verifying artifacts")
        draft.admitted = (True, Reason.ADMITTED, "training Job ran")
        return
    if job.failed:
        reason, message = classify_failure(job, "training", result.reason if result else None,
                                           result.message if result else None)
        _fail(draft, reason, message)
        return
    if _too_disrupted(obs, draft, job, Action.DELETE_TRAINING) is not None:
        return
    if spec.suspend:
        if not job.suspended:
            draft.actions.append(Action.SUSPEND_TRAINING)
        draft.set(Phase.SUSPENDED, Reason.SUSPENDED, "suspended by spec.suspend")
        draft.suspended = True
        return
    if job.suspended:
        if job.suspended_by_user and obs.kueue_managed:
            # Reactivated, the Workload queues again; Kueue resumes the Job once it admits it.
            draft.actions.append(Action.RESUME_TRAINING)
            draft.phase, draft.reason = Phase.QUEUED, Reason.QUEUED
            draft.message = "resumed: waiting for Kueue to admit it again"
            draft.admitted = (False, Reason.WAITING_FOR_QUOTA, draft.message)
            return
        if job.suspended_by_user or not obs.kueue_managed:
            draft.actions.append(Action.RESUME_TRAINING)
            draft.set(Phase.TRAINING, Reason.TRAINING, "resuming from checkpoint")
            draft.admitted = (True, Reason.ADMITTED, "resumed")
            return
        was_admitted = any(c.get("type") == ConditionType.ADMITTED.value and c.get("status") == "True"
                           for c in prev.get("conditions") or [])
        why = Reason.EVICTED if was_admitted else Reason.WAITING_FOR_QUOTA
        draft.phase, draft.reason = Phase.QUEUED, Reason.QUEUED
        draft.message = "evicted by Kueue; resumes from checkpoint" if was_admitted else WAITING_FOR_KUEUE
        draft.admitted = (False, why, draft.message)
        return
    _running(draft)
    if job.stranded:
        # Gang restart: a rank failed (it counts against backoffLimit), its peers wait for it in a
        # collective; restart them too so that every rank resumes from the same checkpoint.
        draft.actions.append(Action.RESTART_RANKS)
        draft.message = "a rank failed: restarting every rank from the last checkpoint"
        draft.events.append(Event("Warning", GANG_RESTART_EVENT,
                                  f"a pod of {job.name} failed; restarting its peers {', '.join(job.stranded)} "
                                  "so that every rank resumes from the last checkpoint"))
    if job.not_starting is not None:
        _not_starting(obs, draft, job, now, Action.DELETE_TRAINING)
        return
    if obs.progress is not None and obs.progress.message:
        # Before its first step the trainer says what it does (e.g. "fetching model: 12.3 of 44.0 GiB").
        draft.message = obs.progress.message
        draft.reconciling_reason = Reason.FETCHING_MODEL


def _stale(obs: Observed, now: datetime, stale_after: int) -> bool:
    p = obs.progress
    if p is None:
        return False
    try:
        beat = datetime.fromisoformat(p.heartbeat.replace("Z", "+00:00"))
    except ValueError:
        return False
    return (now - beat).total_seconds() > stale_after


def decide(obs: Observed, now: datetime, stale_after: int = 600) -> Plan:
    prev = obs.status
    gen = obs.generation
    if prev.get("phase") in TERMINAL_PHASES:
        # A finished training stays finished: only the generation we have seen moves. (The
        # stored status passed the CRD's schema, which is generated from this model.)
        return Plan(status=MaskedICLoraTrainingStatus.model_validate({**prev, "observedGeneration": gen}))

    draft = _Draft(phase=Phase.PENDING, reason=Reason.VALIDATING, message="validating the spec")
    if obs.spec is None:
        message = "; ".join(f"{e.field}: {e.message}" for e in obs.spec_errors) or "invalid spec"
        draft.validated = (False, Reason.INVALID_SPEC, message)
        _fail(draft, Reason.INVALID_SPEC, message)
    else:
        draft.validated = (True, Reason.VALID, "the spec passed every rule")
        if obs.profile is None:
            _fail(draft, Reason.PROFILE_NOT_FOUND, f"TrainingProfile {obs.profile_name!r} does not exist")
        elif obs.blocked:
            draft.set(Phase.PENDING, Reason.SECRET_NOT_FOUND, obs.blocked)
        elif _decide_preflight(obs, draft, now):
            _decide_training(obs, draft, now)
            # A stale heartbeat says nothing new when we already know why (a pod that does not start).
            known = draft.reconciling_reason in POD_START_REASONS
            if draft.phase == Phase.TRAINING and not known and _stale(obs, now, stale_after):
                draft.reconciling_reason = Reason.NO_RECENT_PROGRESS

    # Creating a Job issues a fresh session anyway; a finished run needs none.
    creating = {Action.CREATE_PREFLIGHT, Action.CREATE_TRAINING} & set(draft.actions)
    if obs.store_credentials_due and not creating and draft.phase not in (Phase.SUCCEEDED, Phase.FAILED):
        draft.actions.append(Action.RENEW_STORE_CREDENTIALS)

    report = obs.preflight_report
    progress = _progress(obs, prev) if obs.spec is not None else None
    completion_time = draft.completion_time
    failure = None
    billed = None
    if draft.phase == Phase.FAILED:
        failure = Failure(reason=draft.reason.value, message=draft.message[:1024])
        units = 0
        completion_time = completion_time or _iso(now)
    elif draft.phase == Phase.SUCCEEDED:
        assert obs.spec is not None and progress is not None
        if prev.get("billingUnits"):
            units = prev["billingUnits"]
        else:
            billed = units = billing_units(obs.spec.number_of_steps, succeeded=True)
            draft.events.append(Event("Normal", "Billed", f"{billed} billing units"))
            draft.actions.append(Action.RECORD_BILLING)
        progress = progress.model_copy(update={"step": max(progress.step, obs.spec.number_of_steps)})
        draft.events.append(Event("Normal", "Succeeded", "LoRA trained; artifacts verified in the store"))
    else:
        units = 0
    status = MaskedICLoraTrainingStatus(
        phase=draft.phase,
        observed_generation=gen,
        conditions=_conditions(draft, prev, now, gen),
        progress=progress,
        billing_units=units,
        artifacts=draft.artifacts,
        failure=failure,
        effective=_effective(obs),
        dataset=None if report is None else DatasetSummary(usable=report.usable, skipped=report.skipped[:100]),
        start_time=prev.get("startTime") or draft.start_time,
        completion_time=completion_time,
    )
    return Plan(
        status=status,
        actions=tuple(draft.actions),
        events=tuple(draft.events),
        create_suspended=obs.kueue_managed,
        billed=billed,
        restart_pods=(obs.training_job.stranded if Action.RESTART_RANKS in draft.actions
                      and obs.training_job is not None else ()),
    )
