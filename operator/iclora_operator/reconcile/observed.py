"""What the operator observed about one training: a frozen snapshot, built by adapters."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from iclora_api.contract import PreflightResult, Progress, Result
from iclora_api.profile import TrainingProfileSpec
from iclora_api.v1alpha1 import MaskedICLoraTrainingSpec
from iclora_api.validation import FieldError


@dataclass(frozen=True)
class JobState:
    """The parts of a batch/v1 Job (and its last failed pod) that decisions depend on."""

    name: str
    owned: bool
    suspended: bool = False
    active: int = 0
    complete: bool = False
    failed: bool = False
    failure_reason: str | None = None
    failure_message: str | None = None
    exit_code: int | None = None
    termination_message: str | None = None
    suspended_by_user: bool = False
    # Pods with the Ready condition (Job status.ready); pods are looked at only while none is.
    ready: int = 0
    # Why a pod of the active Job has not started (read only when no pod is ready), else None.
    not_starting: PodNotStarting | None = None

    @property
    def waits_for_pods(self) -> bool:
        """Active and unfinished with fewer ready pods than active ones: a pod may be stuck."""
        return (self.owned and not (self.complete or self.failed or self.suspended)
                and self.active > self.ready)


@dataclass(frozen=True)
class PodNotStarting:
    """A pod of an active Job that is not running: unschedulable, or its container waits."""

    pod: str
    # The scheduler's (`Unschedulable`) or the kubelet's waiting reason (`ImagePullBackOff`, ...).
    reason: str
    message: str
    # When the pod was created (RFC 3339): the start timeout counts from here.
    since: str


@dataclass(frozen=True)
class ChildRejection:
    """The API server refused to create a child for a reason a retry cannot change (a 4xx)."""

    kind: str
    name: str
    code: int
    # The API server's own message (e.g. `Job.batch "x" is invalid: ...`, `exceeded quota: ...`).
    message: str


@dataclass(frozen=True)
class Observed:
    name: str
    namespace: str
    uid: str
    generation: int
    spec: MaskedICLoraTrainingSpec | None
    spec_errors: tuple[FieldError, ...] = ()
    profile_name: str = "default"
    profile: TrainingProfileSpec | None = None
    preflight_job: JobState | None = None
    training_job: JobState | None = None
    preflight_report: PreflightResult | None = None
    progress: Progress | None = None
    result: Result | None = None
    # None: not checked (no result yet); True/False: every artifact of the result is in the store.
    artifacts_verified: bool | None = None
    # Whether the namespace's concurrency limit lets this training start now.
    slot_available: bool = True
    kueue_managed: bool = False
    # Something outside the operator must happen first (e.g. a missing Secret); not terminal.
    blocked: str | None = None
    # A child the API server refused to create in this reconcile (terminal: ChildRejected).
    rejected: ChildRejection | None = None
    status: dict[str, Any] = field(default_factory=dict)
