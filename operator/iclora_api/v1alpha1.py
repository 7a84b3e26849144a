"""`MaskedICLoraTraining` v1alpha1: every request parameter of the product, in camelCase.

The models here are the single source of truth: the CRD schema is generated
from them (`iclora_api.crdgen`), the CLI validates with them, and the
operator re-validates every resource with them before it acts.

Specs are validated the way the Kubernetes API server sees them, as JSON, in
strict mode: a string "32" is not a rank, `true` is not an integer, unknown
fields are errors, and integers are accepted where a number is expected.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from iclora_api.conditions import Phase
from iclora_api.contract import ArtifactUris, SkippedTriplet
from iclora_api.geometry import (
    MAX_FRAMES,
    MIN_FRAMES,
    SPATIAL_FACTOR,
    AspectRatio,
    Resolution,
    bucket_size,
    snap_frames,
)

API_GROUP = "iclora.dev"
API_VERSION = "v1alpha1"
KIND = "MaskedICLoraTraining"
PLURAL = "maskedicloratrainings"
SINGULAR = "maskedicloratraining"
SHORT_NAME = "micl"

URL_SCHEMES = ("http", "https", "s3")
URL_MAX_LENGTH = 2048
PROMPT_MAX_LENGTH = 4096

DEFAULT_VALIDATION_NEGATIVE_PROMPT = (
    "low quality, worst quality, blurry, out of focus, jpeg artifacts, compression noise, "
    "flickering, jitter, temporal inconsistency, frozen frames, warped or melting shapes, "
    "distorted faces, deformed hands, extra limbs, visible seams at the mask border, "
    "watermark, text overlay, logo"
)

SCENE_SPLITTING_MESSAGE = (
    "splitInputIntoScenes must be false for masked video-to-video training: scene splitting "
    "would desync the reference, target and mask of a triplet; provide pre-split clips instead"
)

_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
_DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
_URL_PATTERN = r"^(https?|s3)://.+"


def _check_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in URL_SCHEMES:
        raise ValueError(
            f"must be an http, https or s3 URL, got scheme {parts.scheme or '(none)'!r}"
        )
    if not parts.netloc:
        what = "bucket" if parts.scheme == "s3" else "host"
        raise ValueError(f"{parts.scheme} URL has no {what}: {value!r}")
    if parts.scheme == "s3" and not parts.path.strip("/"):
        raise ValueError(f"s3 URL names a bucket but no object key: {value!r}")
    if re.search(r"\s", value):
        raise ValueError("URL must not contain whitespace")
    return value


Url = Annotated[
    str,
    Field(max_length=URL_MAX_LENGTH, json_schema_extra={"pattern": _URL_PATTERN}),
    AfterValidator(_check_url),
]
FrameCount = Annotated[
    int,
    Field(
        ge=MIN_FRAMES,
        le=MAX_FRAMES,
        description="Frames per clip; values that are not 8k+1 are snapped down (90 -> 89).",
    ),
]
FrameRate = Annotated[int, Field(ge=8, le=60)]
Prompt = Annotated[str, Field(max_length=PROMPT_MAX_LENGTH)]


class ApiModel(BaseModel):
    """Base of every spec model: camelCase on the wire, strict, no unknown fields."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        strict=True,
        frozen=True,
        use_enum_values=False,
    )


class LocalObjectReference(ApiModel):
    """A reference to an object in the resource's own namespace."""

    name: Annotated[str, Field(min_length=1, max_length=253, pattern=_DNS_SUBDOMAIN)]


class OutputLocation(ApiModel):
    """Where artifacts are written; the operator's default store when omitted."""

    url: Annotated[
        str,
        Field(
            max_length=URL_MAX_LENGTH,
            pattern=r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$",
            description="s3://bucket/prefix under which each run writes its own folder.",
        ),
    ]
    credentials_secret_ref: LocalObjectReference | None = Field(
        default=None,
        description=(
            "Secret in this namespace with AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and "
            "optionally AWS_ENDPOINT_URL and AWS_REGION."
        ),
    )


class ValidationSample(ApiModel):
    """One validation preview: a source video, its mask and a reference clip."""

    prompt: Prompt = Field(default="", description="Text prompt of this preview.")
    video_url: Url = Field(
        description="Source video; its unmasked region is kept pixel-faithful."
    )
    mask_url: Url = Field(
        description="Mask image or video; WHITE = regenerate, BLACK = keep."
    )
    reference_video_url: Url = Field(
        description="Reference (control) video that guides the regenerated region."
    )


class MaskedICLoraTrainingSpec(ApiModel):
    """What to train: the dataset, training and validation parameters, and where it runs."""

    # Dataset
    training_data_url: Url = Field(
        description="URL (http, https or s3) of the .zip archive of reference/target/mask triplets."
    )
    trigger_phrase: Prompt = Field(
        default="", description="Phrase prepended to every caption; include it at inference."
    )
    # Training
    rank: Literal[8, 16, 32, 64, 128] = Field(default=32, description="LoRA rank (capacity).")
    number_of_steps: Annotated[int, Field(ge=100, le=20000)] = Field(
        default=3000, description="Optimisation steps. Billed units are max(100, numberOfSteps)."
    )
    learning_rate: Annotated[float, Field(gt=0, allow_inf_nan=False)] = Field(
        default=2e-4, description="Optimiser step size; positive and finite."
    )
    # Video configuration
    number_of_frames: FrameCount = 89
    frame_rate: FrameRate = Field(default=24, description="Target frames per second.")
    resolution: Resolution = Field(default=Resolution.MEDIUM, description="Resolution bucket.")
    aspect_ratio: AspectRatio = Field(default=AspectRatio.SQUARE, description="Aspect ratio bucket.")
    auto_scale_input: bool = Field(
        default=False,
        description="Resample clips shorter than numberOfFrames instead of skipping them.",
    )
    split_input_into_scenes: bool = Field(
        default=False,
        description="Must be false: scene splitting would desync reference, target and mask.",
        json_schema_extra={
            "x-kubernetes-validations": [{"rule": "!self", "message": SCENE_SPLITTING_MESSAGE}]
        },
    )
    split_input_duration_threshold: Annotated[float, Field(ge=1.0, le=60.0)] = Field(
        default=30.0, description="Scene-splitting threshold in seconds (unused while splitting is off)."
    )
    # Validation
    validation: list[ValidationSample] = Field(
        default_factory=list, max_length=2, description="Up to two validation previews."
    )
    validation_negative_prompt: Prompt = Field(
        default=DEFAULT_VALIDATION_NEGATIVE_PROMPT,
        description="Negative prompt for validation; a built-in quality prompt by default.",
    )
    validation_number_of_frames: FrameCount = 89
    validation_frame_rate: FrameRate = 24
    validation_resolution: Resolution = Resolution.HIGH
    validation_aspect_ratio: AspectRatio = AspectRatio.SQUARE
    stg_scale: Annotated[float, Field(ge=0.0, le=3.0)] = Field(
        default=1.0, description="Spatio-temporal guidance scale for validation; 0 turns it off."
    )
    debug_dataset: bool = Field(
        default=False, description="Also upload an archive of the preprocessed dataset."
    )
    # Extension of the product spec: a cheaper reference.
    reference_downscale_factor: Literal[1, 2] = Field(
        default=1,
        description=(
            "Extension: the reference is encoded at 1/factor of the target's width and height, its "
            "positions scaled onto the target's grid; 2 gives a quarter of the reference tokens and "
            "faster steps. The LoRA records the factor; inference must use the same. With 2, the "
            "training (and validation) bucket sides must be multiples of 64 pixels."
        ),
    )
    # Cluster concerns
    profile_ref: LocalObjectReference | None = Field(
        default=None,
        description="TrainingProfile (cluster-scoped, set by the admin); the default profile if omitted.",
    )
    output: OutputLocation | None = None
    dataset_credentials_secret_ref: LocalObjectReference | None = Field(
        default=None,
        description=(
            "Secret in this namespace used to fetch an s3:// trainingDataUrl (AWS_ACCESS_KEY_ID, "
            "AWS_SECRET_ACCESS_KEY, optional AWS_ENDPOINT_URL)."
        ),
    )
    suspend: bool = Field(
        default=False, description="Suspend the training (checkpoints are kept); false resumes it."
    )

    @field_validator("split_input_into_scenes")
    @classmethod
    def _no_scene_splitting(cls, value: bool) -> bool:
        if value:
            raise ValueError(SCENE_SPLITTING_MESSAGE)
        return value

    @model_validator(mode="after")
    def _downscale_fits_the_buckets(self) -> MaskedICLoraTrainingSpec:
        for fields, size in downscale_conflicts(self):
            w, h = size
            raise ValueError(
                f"referenceDownscaleFactor {self.reference_downscale_factor} needs bucket sides that are "
                f"multiples of {SPATIAL_FACTOR * self.reference_downscale_factor} px, but {fields} give "
                f"{w}x{h}; use factor 1, or a square or medium bucket"
            )
        return self

    # Effective values: the spec is never rewritten, these are reported in status.
    @property
    def effective_number_of_frames(self) -> int:
        return snap_frames(self.number_of_frames)

    @property
    def effective_validation_number_of_frames(self) -> int:
        return snap_frames(self.validation_number_of_frames)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) training clips are fitted to."""
        return bucket_size(self.resolution, self.aspect_ratio)

    @property
    def validation_size(self) -> tuple[int, int]:
        return bucket_size(self.validation_resolution, self.validation_aspect_ratio)

    def effective(self) -> dict[str, object]:
        """The effective spec: defaults applied and frame counts snapped (camelCase, JSON-ready)."""
        data = self.model_dump(mode="json", by_alias=True, exclude_none=True)
        data["numberOfFrames"] = self.effective_number_of_frames
        data["validationNumberOfFrames"] = self.effective_validation_number_of_frames
        return data


def downscale_fits(size: tuple[int, int], factor: int) -> bool:
    """A reference at 1/factor must still cover whole latent cells."""
    return all(side % (SPATIAL_FACTOR * factor) == 0 for side in size)


def downscale_conflicts(spec: MaskedICLoraTrainingSpec) -> list[tuple[str, tuple[int, int]]]:
    """Buckets (named by their fields) that the spec's reference downscale factor does not divide."""
    f = spec.reference_downscale_factor
    out = []
    if not downscale_fits(spec.size, f):
        out.append(("resolution/aspectRatio", spec.size))
    if spec.validation and not downscale_fits(spec.validation_size, f):
        out.append(("validationResolution/validationAspectRatio", spec.validation_size))
    return out


# --- status -----------------------------------------------------------------


class StatusModel(BaseModel):
    """Base of status models: camelCase, built by the operator (not strict input).

    A status field that shows a trainer report is that report's model where the shapes agree
    (`iclora_api.contract.ArtifactUris`, `.SkippedTriplet`), and derived from it where they do
    not (`Progress`). Models of the status carry no class docstring unless it is meant as a
    description in the CRD.
    """

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class Condition(StatusModel):
    """A kstatus-compatible condition (metav1.Condition shape)."""

    type: str
    status: Literal["True", "False", "Unknown"]
    reason: Annotated[str, Field(pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$", max_length=1024)]
    message: Annotated[str, Field(max_length=32768)] = ""
    last_transition_time: str = Field(json_schema_extra={"format": "date-time"})
    observed_generation: int | None = None


class Progress(StatusModel):
    # status.progress: the last report (iclora_api.contract.Progress) as shown on the resource,
    # derived from it by the operator (reconcile.decide): the report's step and etaSeconds;
    # totalSteps from the spec; its loss as a decimal string (a kubectl column); its heartbeat
    # as updatedAt. Nothing is required: all zero before the first report. The step shown never
    # goes backwards, and a report without a loss keeps the last one shown.
    step: int = 0
    total_steps: int = 0
    loss: str | None = Field(default=None, description="Last reported training loss (decimal string).")
    eta_seconds: int | None = None
    updated_at: str | None = Field(default=None, json_schema_extra={"format": "date-time"})


class Failure(StatusModel):
    reason: str
    message: str = ""


class EffectiveValues(StatusModel):
    number_of_frames: int
    validation_number_of_frames: int
    width: int
    height: int
    validation_width: int
    validation_height: int


class DatasetSummary(StatusModel):
    usable: int = 0
    skipped: list[SkippedTriplet] = Field(default_factory=list, max_length=100)


class MaskedICLoraTrainingStatus(StatusModel):
    phase: Phase | None = None
    observed_generation: int | None = None
    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=8,
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["type"],
        },
    )
    progress: Progress | None = None
    billing_units: int | None = Field(default=None, description="0 until success, then max(100, steps).")
    # The verified artifacts of result.json (iclora_api.contract.Artifacts), once Succeeded.
    artifacts: ArtifactUris | None = None
    failure: Failure | None = None
    effective: EffectiveValues | None = None
    dataset: DatasetSummary | None = None
    start_time: str | None = Field(default=None, json_schema_extra={"format": "date-time"})
    completion_time: str | None = Field(default=None, json_schema_extra={"format": "date-time"})
