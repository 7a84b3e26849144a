"""Closed vocabularies of the status: phases, condition types and reasons.

Reasons are stable CamelCase identifiers within an API version; tools and
users match on them, so they are never free-form strings.
"""

from __future__ import annotations

from enum import StrEnum


class Phase(StrEnum):
    """Display summary of where a training is; derived from conditions, never branched on."""

    PENDING = "Pending"
    QUEUED = "Queued"
    PREFLIGHT = "Preflight"
    TRAINING = "Training"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SUSPENDED = "Suspended"


class ConditionType(StrEnum):
    READY = "Ready"
    """Normal-true: True only once the training succeeded and its artifacts are verified."""
    RECONCILING = "Reconciling"
    """Abnormal-true (kstatus): work is in progress."""
    STALLED = "Stalled"
    """Abnormal-true (kstatus): terminal failure or a human must act."""
    VALIDATED = "Validated"
    """The spec passed the API model's checks."""
    PREFLIGHT_SUCCEEDED = "PreflightSucceeded"
    """The CPU dataset preflight finished and found usable clips."""
    ADMITTED = "Admitted"
    """The GPU Job is admitted (unsuspended by Kueue or by the operator's own queue)."""
    SUSPENDED = "Suspended"
    """The user suspended the training with spec.suspend."""


class Reason(StrEnum):
    # Stalled / failure reasons.
    INVALID_SPEC = "InvalidSpec"
    """Stalled: the spec breaks a rule of the API model."""
    PROFILE_NOT_FOUND = "ProfileNotFound"
    """Stalled: the referenced TrainingProfile does not exist."""
    PROFILE_INVALID = "ProfileInvalid"
    """Stalled: the profile's model or trainer settings cannot run (missing checkpoint, FP8 on an old GPU)."""
    DATASET_DOWNLOAD_FAILED = "DatasetDownloadFailed"
    """Stalled: trainingDataUrl could not be fetched."""
    DATASET_INVALID = "DatasetInvalid"
    """Stalled: the archive or its triplets break a dataset rule."""
    NO_USABLE_CLIPS = "NoUsableClips"
    """Stalled: no triplet survived fitting (too short, all-black mask, ...)."""
    PREFLIGHT_FAILED = "PreflightFailed"
    """Stalled: the preflight Job failed for an internal reason (not the dataset's fault)."""
    TRAINING_FAILED = "TrainingFailed"
    """Stalled: the training Job failed for an internal reason."""
    DEADLINE_EXCEEDED = "DeadlineExceeded"
    """Stalled: a Job ran past its activeDeadlineSeconds."""
    ARTIFACTS_MISSING = "ArtifactsMissing"
    """Stalled: the trainer reported success but the artifacts are not in the store."""
    JOB_DELETED = "JobDeleted"
    """Stalled: a child Job was deleted by someone other than the operator."""
    TOO_MANY_DISRUPTIONS = "TooManyDisruptions"
    """Stalled: the Job's pods were disrupted (evicted by the kubelet for disk or memory pressure or for
    exceeding their scratch size, lost with their node) more often than the profile's maxDisruptions
    without saving their work; the message names the last disruption. The Job is deleted."""
    NAME_CONFLICT = "NameConflict"
    """Stalled: a child name is taken by an object this resource does not own."""
    CHILD_REJECTED = "ChildRejected"
    """Stalled: the API server refused a child (Job, Secret, Service): invalid, or forbidden by a
    quota, policy or admission webhook; the message is the API server's answer."""
    # Pods that do not start: Reconciling while they wait, Stalled after the profile's
    # podStartTimeoutSeconds (the pod's Job is then deleted). The message is the scheduler's or kubelet's.
    UNSCHEDULABLE = "Unschedulable"
    """Reconciling, then Stalled: no node fits the pod (node selector, taints, GPUs, quota of a node)."""
    IMAGE_PULL_FAILED = "ImagePullFailed"
    """Reconciling, then Stalled: the trainer image cannot be pulled (ErrImagePull, ImagePullBackOff,
    InvalidImageName): a wrong image, or imagePullSecrets missing."""
    POD_NOT_STARTING = "PodNotStarting"
    """Reconciling, then Stalled: a container waits for another reason (CreateContainerConfigError:
    a missing Secret or ConfigMap, CreateContainerError, ...)."""
    POD_CREATION_REFUSED = "PodCreationRefused"
    """Reconciling, then Stalled: the API server refuses to create the Job's pods (the Job's
    FailedCreate Event): a Pod Security or admission policy (Stalled after podStartTimeoutSeconds),
    or a ResourceQuota (Reconciling until the quota frees up or the Job's deadline)."""
    # Progress reasons.
    VALIDATING = "Validating"
    """Reconciling: the operator has seen the resource and is checking it."""
    PREFLIGHT = "Preflight"
    """Reconciling: the dataset preflight Job runs."""
    QUEUED = "Queued"
    """Reconciling: waiting for quota or for the namespace's concurrency limit."""
    TRAINING = "Training"
    """Reconciling: the GPU Job runs."""
    SECRET_NOT_FOUND = "SecretNotFound"
    """Reconciling: a Secret the spec names does not exist in the resource's namespace (yet)."""
    FETCHING_MODEL = "FetchingModel"
    """Reconciling: the training pods fetch the base model before their first step."""
    NO_RECENT_PROGRESS = "NoRecentProgress"
    """Reconciling: the trainer's heartbeat is stale while its Job is active."""
    SUSPENDED = "Suspended"
    """Suspended: spec.suspend is true."""
    # Terminal success.
    SUCCEEDED = "Succeeded"
    """Ready: artifacts verified, billed."""
    # Domain condition reasons.
    VALID = "Valid"
    """Validated: the spec passed every rule."""
    PASSED = "Passed"
    """PreflightSucceeded: usable clips were found."""
    WAITING_FOR_QUOTA = "WaitingForQuota"
    """Admitted=False: the Job is suspended waiting for admission."""
    ADMITTED = "Admitted"
    """Admitted: the Job runs."""
    EVICTED = "Evicted"
    """Admitted=False: Kueue evicted the Job; it resumes from its checkpoint."""
