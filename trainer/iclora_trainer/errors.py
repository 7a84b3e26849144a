"""Trainer exceptions; each carries the ExitCode the process ends with (see cli.run_and_exit)."""

from __future__ import annotations

from iclora_api.contract import ExitCode


class TrainerError(Exception):
    exit_code: ExitCode = ExitCode.INTERNAL_ERROR
    reason: str = "TrainingFailed"


class SpecError(TrainerError):
    exit_code = ExitCode.INVALID_SPEC
    reason = "InvalidSpec"


class DatasetError(TrainerError):
    exit_code = ExitCode.DATASET_INVALID
    reason = "DatasetInvalid"


class ModelConfigError(TrainerError):
    exit_code = ExitCode.MODEL_CONFIG_INVALID
    reason = "InvalidSpec"


class ObjectStoreError(TrainerError):
    exit_code = ExitCode.OBJECT_STORE_UNAVAILABLE
    reason = "TrainingFailed"


class CheckpointError(TrainerError):
    exit_code = ExitCode.CHECKPOINT_FAILED
    reason = "TrainingFailed"


class DatasetDownloadError(TrainerError):
    exit_code = ExitCode.DATASET_DOWNLOAD_FAILED
    reason = "DatasetDownloadFailed"


class NoUsableClipsError(TrainerError):
    exit_code = ExitCode.NO_USABLE_CLIPS
    reason = "NoUsableClips"
