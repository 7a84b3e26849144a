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

from enum import IntEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

TERMINATION_LOG = "/dev/termination-log"


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

    @property
    def is_user_error(self) -> bool:
        return 10 <= self.value <= 19


USER_ERROR_EXIT_CODES = tuple(code.value for code in ExitCode if code.is_user_error)

# The failure reason (status.failure.reason) each exit code maps to.
EXIT_CODE_REASONS: dict[ExitCode, str] = {
    ExitCode.INVALID_SPEC: "InvalidSpec",
    ExitCode.DATASET_DOWNLOAD_FAILED: "DatasetDownloadFailed",
    ExitCode.DATASET_INVALID: "DatasetInvalid",
    ExitCode.NO_USABLE_CLIPS: "NoUsableClips",
    # The admin's profile (model paths, speed levers), not the user's spec.
    ExitCode.MODEL_CONFIG_INVALID: "ProfileInvalid",
    ExitCode.OBJECT_STORE_UNAVAILABLE: "TrainingFailed",
    ExitCode.CHECKPOINT_FAILED: "TrainingFailed",
    ExitCode.INTERNAL_ERROR: "TrainingFailed",
}


class _Model(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore")


class Progress(_Model):
    step: int
    total_steps: int = Field(alias="totalSteps")
    loss: float | None = None
    eta_seconds: int | None = Field(default=None, alias="etaSeconds")
    heartbeat: str = Field(description="UTC ISO-8601 time of this report.")


class Artifacts(_Model):
    lora_file: str = Field(alias="loraFile")
    config_file: str = Field(alias="configFile")
    video: str | None = None
    debug_dataset: str | None = Field(default=None, alias="debugDataset")


class Result(_Model):
    """Final report of a training run (result.json and, shortened, the termination message)."""

    status: Literal["Succeeded", "Failed"]
    reason: str | None = None
    message: str | None = None
    steps: int = 0
    artifacts: Artifacts | None = None


class PreflightResult(_Model):
    """Final report of the dataset preflight (preflight.json and the termination message)."""

    ok: bool
    reason: str | None = None
    message: str | None = None
    usable: int = 0
    skipped: list[dict[str, str]] = Field(default_factory=list)
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
