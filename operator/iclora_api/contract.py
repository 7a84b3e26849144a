"""The contract between trainer pods and the operator (no torch, no Kubernetes).

Trainer pods have no API access. They report through the object store, under
one key layout per run, and through their exit code and termination message:

    <prefix>/<namespace>/<name>/<uid>/
        progress.json        Progress, rewritten every few steps (atomically)
        result.json          Result, written once at the end
        preflight.json       PreflightResult of the dataset preflight
        prepared/            the prepared dataset (see dataset.prepared)
        checkpoints/step-<n>/ LoRA, optimizer, scheduler, RNG states, step
        artifacts/           lora.safetensors, config.json, validation.mp4, debug-dataset.zip
"""

from __future__ import annotations

from enum import IntEnum, StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from iclora_api.conditions import Reason

TERMINATION_LOG = "/dev/termination-log"

# --- Environment of the trainer pods ---------------------------------------------------------
# Every variable the operator's rendered Jobs set and the trainer reads, named once here and
# imported by both sides (tests/unit/test_env_contract.py checks that they agree).

# The training request (manifest or request JSON), read through `--spec env:ICLORA_SPEC`.
SPEC_ENV = "ICLORA_SPEC"
# TrainerSettings as JSON, read through `--settings env:ICLORA_TRAINER_SETTINGS` (training Job).
TRAINER_SETTINGS_ENV = "ICLORA_TRAINER_SETTINGS"
# Prefix of the per-field TrainerSettings overrides: ICLORA_<FIELD>, e.g. ICLORA_ZERO_STAGE.
TRAINER_SETTINGS_ENV_PREFIX = "ICLORA_"
# Local scratch folder: TrainerSettings.work_dir in the training, the preflight's scratch too.
WORK_DIR_ENV = f"{TRAINER_SETTINGS_ENV_PREFIX}WORK_DIR"
# LTX-2.3 checkpoint and text encoder (TrainerSettings.model_path, .text_encoder_path): a local
# path or a URI (s3://, file://, https://) the trainer fetches before loading. Variables of their
# own, not inside the settings JSON, so runtimes that remap volumes see the file:// paths.
MODEL_PATH_ENV = f"{TRAINER_SETTINGS_ENV_PREFIX}MODEL_PATH"
TEXT_ENCODER_PATH_ENV = f"{TRAINER_SETTINGS_ENV_PREFIX}TEXT_ENCODER_PATH"
# Folder of the node's model cache (TrainerSettings.model_cache_dir); unset: fetched into scratch.
MODEL_CACHE_DIR_ENV = f"{TRAINER_SETTINGS_ENV_PREFIX}MODEL_CACHE_DIR"
# Prefix of the model store's variables (ICLORA_MODEL_AWS_ACCESS_KEY_ID, ...): s3:// model sources
# are read with these (TrainingProfile model.credentialsSecretRef, or the platform's store).
MODEL_CREDENTIALS_ENV_PREFIX = f"{TRAINER_SETTINGS_ENV_PREFIX}MODEL_"
# Where the termination message goes when --termination-log is not given (default TERMINATION_LOG).
TERMINATION_LOG_ENV = "ICLORA_TERMINATION_LOG"
# Geometry of the training: pods (nodes) of the Indexed Job and processes (GPUs) per pod.
NNODES_ENV = "ICLORA_NNODES"
GPUS_PER_NODE_ENV = "ICLORA_GPUS_PER_NODE"
# Rendezvous of the ranks (torch env://): pod 0's address and port; the node index of a pod is
# the Indexed Job's JOB_COMPLETION_INDEX, which Kubernetes sets.
MASTER_ADDR_ENV = "MASTER_ADDR"
MASTER_PORT_ENV = "MASTER_PORT"
JOB_COMPLETION_INDEX_ENV = "JOB_COMPLETION_INDEX"
# "1" lets the fetches of user-named URLs (dataset, validation media) reach private networks.
ALLOW_PRIVATE_NETWORKS_ENV = "ICLORA_ALLOW_PRIVATE_NETWORKS"
# Hosts and networks the administrator trusts for user-named URLs (comma separated host names,
# IP addresses and CIDRs): the platform's object store and any allow-listed in-cluster store.
# Set by the operator from its own configuration only, never from a tenant's input.
TRUSTED_NETWORKS_ENV = "ICLORA_TRUSTED_NETWORKS"
# Logging level of the trainer processes (default INFO).
LOG_LEVEL_ENV = "ICLORA_LOG_LEVEL"
# The run's object store (also the keys of the credentials Secrets the pods read them from).
AWS_ACCESS_KEY_ID_ENV = "AWS_ACCESS_KEY_ID"
AWS_SECRET_ACCESS_KEY_ENV = "AWS_SECRET_ACCESS_KEY"
# Endpoint URL: http://host:port (no TLS), https://host[:port]; a bare host[:port] means TLS.
AWS_ENDPOINT_URL_ENV = "AWS_ENDPOINT_URL"
AWS_REGION_ENV = "AWS_REGION"
# The session token of temporary (STS) credentials: the per-run credentials the operator issues.
AWS_SESSION_TOKEN_ENV = "AWS_SESSION_TOKEN"
STORE_ENV_NAMES = (AWS_ACCESS_KEY_ID_ENV, AWS_SECRET_ACCESS_KEY_ENV, AWS_ENDPOINT_URL_ENV, AWS_REGION_ENV,
                   AWS_SESSION_TOKEN_ENV)
# Prefix of the dataset store's variables (ICLORA_DATASET_AWS_ACCESS_KEY_ID, ...): an s3://
# trainingDataUrl (and s3:// validation media) is read with these when the tenant names a
# `datasetCredentialsSecretRef`; without one, with the run's own (prefix-scoped) credentials.
DATASET_CREDENTIALS_ENV_PREFIX = "ICLORA_DATASET_"


class ExitCode(IntEnum):
    """Process exit codes. 10-19: user/data errors (never retried); 20-29: retriable infrastructure."""

    OK = 0
    INVALID_SPEC = 10
    DATASET_DOWNLOAD_FAILED = 11
    DATASET_INVALID = 12
    NO_USABLE_CLIPS = 13
    MODEL_CONFIG_INVALID = 14
    OBJECT_STORE_UNAVAILABLE = 20
    CHECKPOINT_FAILED = 21
    INTERNAL_ERROR = 22
    # SIGTERM (suspend, Kueue preemption, spot reclaim, node drain, pod deletion): the trainer
    # finished its step, wrote a checkpoint there and stopped. Not a failure: the Job ignores it
    # (podFailurePolicy Ignore, no retry counted) and the next pod resumes from that checkpoint.
    PREEMPTED = 23

    @property
    def is_user_error(self) -> bool:
        return 10 <= self.value <= 19


USER_ERROR_EXIT_CODES = tuple(code.value for code in ExitCode if code.is_user_error)
# Exit codes of pods stopped from outside after saving their work: retried without counting.
PREEMPTED_EXIT_CODES = (ExitCode.PREEMPTED.value,)


class Stage(StrEnum):
    """The two processes of a training, each a Job: the CPU dataset preflight and the GPU training."""

    PREFLIGHT = "preflight"
    TRAINING = "training"


# The one exit code -> status.failure.reason table. The trainer writes these reasons into its
# reports and the operator reads them back from the exit code, so the two cannot disagree.
# User errors (10-19) name what to fix, the same in every stage:
EXIT_CODE_REASONS: dict[ExitCode, Reason] = {
    ExitCode.INVALID_SPEC: Reason.INVALID_SPEC,
    ExitCode.DATASET_DOWNLOAD_FAILED: Reason.DATASET_DOWNLOAD_FAILED,
    ExitCode.DATASET_INVALID: Reason.DATASET_INVALID,
    ExitCode.NO_USABLE_CLIPS: Reason.NO_USABLE_CLIPS,
    # The admin's profile (model paths, speed levers), not the user's spec.
    ExitCode.MODEL_CONFIG_INVALID: Reason.PROFILE_INVALID,
}
# Infrastructure and internal failures (20-29: object store, checkpoint, bug) are nothing the
# tenant can fix: they read as the failure of the stage they happened in. PREEMPTED too, in the
# rare case it ends a Job (the operator prefers the Job's own reason, e.g. DeadlineExceeded: the
# pod was stopped from outside, see iclora_operator.reconcile.failures).
STAGE_FAILURE_REASONS: dict[Stage, Reason] = {
    Stage.PREFLIGHT: Reason.PREFLIGHT_FAILED,
    Stage.TRAINING: Reason.TRAINING_FAILED,
}


def reason_for(code: int, stage: Stage | str) -> Reason:
    """status.failure.reason of a `stage` process that exited with the contract failure `code`.

    Raises ValueError for 0 and for codes outside the contract (signals, OOM kills, a crashed
    interpreter): those say nothing about why, and the caller falls back on what else it knows.
    """
    stage = Stage(stage)
    exit_code = ExitCode(code)
    if exit_code is ExitCode.OK:
        raise ValueError("exit code 0 is not a failure")
    return EXIT_CODE_REASONS.get(exit_code) or STAGE_FAILURE_REASONS[stage]


class _Model(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore")


class Progress(_Model):
    """progress.json. status.progress shows it in its own shape (`iclora_api.v1alpha1.Progress`)."""

    step: int
    total_steps: int = Field(alias="totalSteps")
    loss: float | None = None
    eta_seconds: int | None = Field(default=None, alias="etaSeconds")
    heartbeat: str = Field(description="UTC ISO-8601 time of this report.")
    # What the run does before its first step, e.g. "fetching model: 12.3 of 44.0 GiB"; None once
    # it trains. The operator shows it as the Reconciling condition's message.
    message: str | None = None


# Models that are also status fields (iclora_api.v1alpha1) carry no class docstring: it would
# become a description in the generated CRD.


class ArtifactUris(_Model):
    # URIs of a run's artifacts, any of them; status.artifacts (the verified `Artifacts` of a
    # successful run's result.json). The CRD requires none of them.
    lora_file: str | None = Field(default=None, alias="loraFile")
    config_file: str | None = Field(default=None, alias="configFile")
    video: str | None = None
    debug_dataset: str | None = Field(default=None, alias="debugDataset")
    metrics_file: str | None = Field(default=None, alias="metricsFile")  # per-step loss and LR (JSON lines)
    loss_plot: str | None = Field(default=None, alias="lossPlot")  # PNG of the loss curve


class Artifacts(ArtifactUris):
    # result.json's artifacts: `ArtifactUris` where a successful run always names its LoRA and config.
    lora_file: str = Field(alias="loraFile")
    config_file: str = Field(alias="configFile")


class SkippedTriplet(_Model):
    # A triplet the preflight left out, and why: in preflight.json, the prepared dataset's
    # manifest (iclora_trainer.dataset.prepared) and status.dataset.skipped.
    model_config = ConfigDict(frozen=True)

    name: str
    reason: str


class ModelFetch(_Model):
    """How a run's pod got its base model (result.json `model`): what it downloaded and reused."""

    downloaded_bytes: int = Field(default=0, alias="downloadedBytes")
    reused_bytes: int = Field(default=0, alias="reusedBytes", description="Found complete in the cache.")
    local_bytes: int = Field(default=0, alias="localBytes", description="Read in place (file:// or a path).")
    cache: str | None = Field(default=None, description="The cache folder; None: fetched into scratch.")


class Result(_Model):
    """Final report of a training run (result.json and, shortened, the termination message)."""

    status: Literal["Succeeded", "Failed"]
    reason: str | None = None
    message: str | None = None
    steps: int = 0
    artifacts: Artifacts | None = None
    model: ModelFetch | None = None


class PreflightResult(_Model):
    """Final report of the dataset preflight (preflight.json and the termination message)."""

    ok: bool
    reason: str | None = None
    message: str | None = None
    usable: int = 0
    skipped: list[SkippedTriplet] = Field(default_factory=list)
    prepared: str | None = Field(default=None, description="URI of the prepared dataset folder.")


def split_s3_uri(uri: str) -> tuple[str, str]:
    """(bucket, key) of an s3://bucket/key URI; the key may be empty (a bucket root or prefix)."""
    rest = uri.removeprefix("s3://")
    bucket, _, key = rest.partition("/")
    if rest == uri or not bucket:
        raise ValueError(f"not an s3:// URI: {uri!r}")
    return bucket, key.lstrip("/")


def run_prefix(prefix: str, namespace: str, name: str, uid: str) -> str:
    """Object-key prefix of one run (no leading or trailing slash)."""
    parts = [p.strip("/") for p in (prefix, namespace, name, uid) if p.strip("/")]
    return "/".join(parts)


PROGRESS_KEY = "progress.json"
RESULT_KEY = "result.json"
PREFLIGHT_KEY = "preflight.json"
PREPARED_DIR = "prepared"
CHECKPOINTS_DIR = "checkpoints"
ARTIFACTS_DIR = "artifacts"
LORA_NAME = "lora.safetensors"
CONFIG_NAME = "config.json"
VIDEO_NAME = "validation.mp4"
DEBUG_ARCHIVE_NAME = "debug-dataset.zip"
# Per-step loss and learning rate, one JSON object per line ({"step", "loss", "lr"}): kept at the
# run's top level while it trains (a resumed run continues it), copied to artifacts/ with its plot.
METRICS_NAME = "metrics.jsonl"
LOSS_PLOT_NAME = "loss.png"
