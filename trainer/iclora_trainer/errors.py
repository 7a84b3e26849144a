"""Trainer exceptions; each carries the ExitCode the process ends with (see `failure`).

The status reason is never stated here: it follows from the exit code and the stage through
the contract's one table (iclora_api.contract.reason_for), the same table the operator reads.
"""

from __future__ import annotations

import errno

from iclora_api.conditions import Reason
from iclora_api.contract import ExitCode, Stage, reason_for


class TrainerError(Exception):
    exit_code: ExitCode = ExitCode.INTERNAL_ERROR

    def reason(self, stage: Stage | str) -> Reason:
        return reason_for(self.exit_code, stage)


def failure(exc: BaseException, stage: Stage | str) -> tuple[ExitCode, Reason, str]:
    """(exit code, status reason, message) a `stage` process ends with after `exc`.

    Anything that is not a TrainerError is an internal error (a bug, a full scratch disk):
    INTERNAL_ERROR, which reads as the stage's own failure reason.
    """
    if isinstance(exc, TrainerError):
        return exc.exit_code, exc.reason(stage), str(exc)
    return ExitCode.INTERNAL_ERROR, reason_for(ExitCode.INTERNAL_ERROR, stage), f"{type(exc).__name__}: {exc}"


# errnos of a local disk (full, over quota, read-only, failing, a path that is not a folder, not
# ours to write): an OSError with one of these during a download is the scratch volume's.
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.ENOTDIR, errno.EISDIR,
                         errno.EACCES, errno.EPERM})


def is_disk_error(exc: OSError) -> bool:
    """An OSError of the local disk, not of a socket (a connection reset is an OSError too)."""
    return exc.errno in DISK_ERRNOS or exc.filename is not None


class SpecError(TrainerError):
    exit_code = ExitCode.INVALID_SPEC


class DatasetError(TrainerError):
    exit_code = ExitCode.DATASET_INVALID


class ModelConfigError(TrainerError):
    exit_code = ExitCode.MODEL_CONFIG_INVALID


class ObjectStoreError(TrainerError):
    exit_code = ExitCode.OBJECT_STORE_UNAVAILABLE


class DatasetSourceUnavailable(ObjectStoreError):
    """The dataset's host or store did not answer now (timeouts, resets, 5xx, DNS that failed
    temporarily, after the fetcher's own retries): retried by the Job, never the user's fault."""


class ScratchError(TrainerError):
    """The pod's scratch disk failed (full, read-only, unreadable): the admin's sizing or the node,
    never the user's dataset; an infrastructure code, retried by the Job."""

    exit_code = ExitCode.INTERNAL_ERROR


class CheckpointError(TrainerError):
    exit_code = ExitCode.CHECKPOINT_FAILED


class DatasetDownloadError(TrainerError):
    exit_code = ExitCode.DATASET_DOWNLOAD_FAILED


class NoUsableClipsError(TrainerError):
    exit_code = ExitCode.NO_USABLE_CLIPS
