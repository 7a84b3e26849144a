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
    # Pods the Job runs at once (an Indexed training Job: one per node).
    parallelism: int = 1
    # Live pods of a multi-pod Job that started before its latest pod failure: their peer is gone,
    # so they wait in a collective that will never finish (read only when failed_pods > 0).
    stranded: tuple[str, ...] = ()

    @property
    def may_have_stranded_pods(self) -> bool:
        """Unfinished, several pods at once, one of them failed and others still active."""
        return (self.owned and self.parallelism > 1 and self.failed_pods > 0 and self.active > 0
                and not (self.complete or self.failed or self.suspended))
    # Failed pods the Job's podFailurePolicy ignored as disruptions without a checkpoint (oldest first;
    # read only while the Job runs): what the profile's maxDisruptions bounds.
    disruptions: tuple[PodDisruption, ...] = ()

    @property
    def running(self) -> bool:
        """Owned, unfinished and unsuspended, with pods (or pods that ended): its pods are worth a look."""
        return self.owned and not (self.complete or self.failed or self.suspended or self.lacks_pods)
    # Pods that ended (Job status.succeeded / status.failed), the Job's uid and creationTimestamp.
    succeeded: int = 0
    failed_pods: int = 0
    uid: str = ""
    created: str = ""

    @property
    def lacks_pods(self) -> bool:
        """Unsuspended and unfinished without a single pod, active or ended: the API server may
        refuse to create them (a Pod Security or admission policy, a ResourceQuota)."""
        return (self.owned and not (self.complete or self.failed or self.suspended)
                and self.active == self.ready == self.succeeded == self.failed_pods == 0)

    @property
    def waits_for_pods(self) -> bool:
        """Active and unfinished with fewer ready pods than active ones (a pod may be stuck), or
        without any pod (their creation may be refused)."""
        return self.lacks_pods or (self.owned and not (self.complete or self.failed or self.suspended)
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
    # A pod the API server refuses to create (the Job's `FailedCreate` Event): `pod` is the Job's
    # name, `reason` is POD_CREATION_REFUSED and `since` the Job's creationTimestamp.


@dataclass(frozen=True)
class PodDisruption:
    """A failed pod of a Job with the DisruptionTarget condition that did not exit PREEMPTED (it was
    stopped without writing a checkpoint): the Job retries it without counting it."""

    pod: str
    # The condition's reason (TerminationByKubelet, PreemptionByScheduler, DeletionByTaintManager,
    # EvictionByEvictionAPI, DeletionByPodGC) and the kubelet's or controller's message.
    reason: str
    message: str
    # When it ended (RFC 3339; its creationTimestamp when no container ended).
    at: str


# The Job controller's Event reason when the API server refuses a pod of the Job.
POD_CREATION_REFUSED = "FailedCreate"


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
    # The run's scoped store session (issued by the operator) ends within the renewal margin, or its
    # Secret is gone, while a Job of the run is active (iclora_operator.observe).
    store_credentials_due: bool = False
    # A child the API server refused to create in this reconcile (terminal: ChildRejected).
    rejected: ChildRejection | None = None
    status: dict[str, Any] = field(default_factory=dict)
