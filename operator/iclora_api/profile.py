"""`TrainingProfile` v1alpha1: where and how trainings run, chosen by the cluster admin.

Cluster-scoped. A `MaskedICLoraTraining` names one with `spec.profileRef`; the
operator's default profile applies when it names none.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from iclora_api.trainer_settings import SpeedLevers

PROFILE_KIND = "TrainingProfile"
PROFILE_PLURAL = "trainingprofiles"
PROFILE_SINGULAR = "trainingprofile"
PROFILE_SHORT_NAME = "tprof"

_QUANTITY = r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$"
Quantity = Annotated[str, Field(pattern=_QUANTITY, max_length=64)]


class _ProfileModel(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", strict=True, frozen=True
    )


class ComputeResources(_ProfileModel):
    """CPU and memory of one pod (requests = limits)."""

    cpu: Quantity = "4"
    memory: Quantity = "16Gi"


class Toleration(_ProfileModel):
    key: str | None = None
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = None


class Acceleration(SpeedLevers, _ProfileModel):
    """The trainer's speed levers (iclora_api.trainer_settings.SpeedLevers: same fields, camelCase names)."""


class TrainingProfileSpec(_ProfileModel):
    """Trainer image, GPU shape, placement, deadlines and model location of trainings."""

    image: Annotated[str, Field(min_length=1, max_length=512)] = Field(
        default="ghcr.io/masked-iclora/trainer:0.1.0", description="Trainer image (preflight and training)."
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    gpus_per_node: Annotated[int, Field(ge=0, le=16)] = Field(
        default=1, description="nvidia.com/gpu per training pod; 0 trains on CPU (demo, tests)."
    )
    nodes: Annotated[int, Field(ge=1, le=64)] = Field(
        default=1, description="Training pods (one per node); more than 1 uses an Indexed Job."
    )
    node_selector: dict[str, str] = Field(default_factory=dict, description="Node selector of training pods.")
    tolerations: list[Toleration] = Field(
        default_factory=list, max_length=32, description="Tolerations of training pods."
    )
    preflight_node_selector: dict[str, str] = Field(
        default_factory=dict, description="Node selector of the CPU preflight pod."
    )
    preflight_tolerations: list[Toleration] = Field(default_factory=list, max_length=32)
    pod_labels: dict[str, str] = Field(default_factory=dict, description="Extra labels on every pod.")
    pod_annotations: dict[str, str] = Field(default_factory=dict, description="Extra annotations on every pod.")
    priority_class_name: str | None = None
    preflight_resources: ComputeResources = Field(
        default_factory=lambda: ComputeResources(cpu="2", memory="4Gi")
    )
    trainer_resources: ComputeResources = Field(
        default_factory=lambda: ComputeResources(cpu="16", memory="128Gi")
    )
    shm_size: Quantity = Field(default="16Gi", description="Size of /dev/shm for the data loader and NCCL.")
    scratch_size: Quantity = Field(default="200Gi", description="Size limit of the scratch emptyDir.")
    preflight_deadline_seconds: Annotated[int, Field(ge=60)] = 3600
    training_deadline_seconds: Annotated[int, Field(ge=60)] = 7 * 24 * 3600
    backoff_limit: Annotated[int, Field(ge=0, le=20)] = Field(
        default=3, description="Retries of the training Job for infrastructure failures."
    )
    checkpoint_interval: Annotated[int, Field(ge=1)] = Field(
        default=250, description="Steps between checkpoints written to the object store."
    )
    zero_stage: Annotated[int, Field(ge=0, le=2)] = 2
    acceleration: Acceleration = Field(default_factory=Acceleration, description="Speed levers of the step.")
    model_path: str = Field(
        default="/models/ltx-2.3/ltx-2.3-22b.safetensors",
        description="LTX-2.3 checkpoint (path in the image or on a mounted volume).",
    )
    text_encoder_path: str = Field(default="/models/gemma", description="Gemma text encoder folder.")
    device: Literal["cuda", "cpu"] = "cuda"


def profile_spec_from_object(obj: dict[str, Any]) -> TrainingProfileSpec:
    """Parse a TrainingProfile object's spec (strict, as JSON)."""
    import json

    return TrainingProfileSpec.model_validate_json(json.dumps(obj.get("spec") or {}))
