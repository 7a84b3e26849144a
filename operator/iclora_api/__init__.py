"""The `MaskedICLoraTraining` API: one pydantic model is the source of truth.

The CRD (`crds/`), the CLI validator and the operator's own re-validation all
read these models.
"""

from iclora_api.geometry import AspectRatio, Resolution, bucket_size, snap_frames
from iclora_api.v1alpha1 import (
    API_GROUP,
    API_VERSION,
    KIND,
    PLURAL,
    SHORT_NAME,
    MaskedICLoraTrainingSpec,
    MaskedICLoraTrainingStatus,
    ValidationSample,
)

__all__ = [
    "API_GROUP",
    "API_VERSION",
    "KIND",
    "PLURAL",
    "SHORT_NAME",
    "AspectRatio",
    "MaskedICLoraTrainingSpec",
    "MaskedICLoraTrainingStatus",
    "Resolution",
    "ValidationSample",
    "bucket_size",
    "snap_frames",
]
