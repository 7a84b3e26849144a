"""`TrainingProfile` v1alpha1: where and how trainings run, chosen by the cluster admin.

Cluster-scoped. A `MaskedICLoraTraining` names one with `spec.profileRef`; the
operator's default profile applies when it names none.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
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


EXTENDED_RESOURCE = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
# Variables the operator sets in training containers itself (the trainer contract, rendezvous,
# store credentials, the container's own): a profile's trainerEnv may not shadow them.
OPERATOR_ENV_PREFIXES = ("ICLORA_", "AWS_")
OPERATOR_ENV_NAMES = frozenset({
    "MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE",
    "JOB_COMPLETION_INDEX", "TMPDIR", "HOME", "PYTHONUNBUFFERED", "NVIDIA_VISIBLE_DEVICES",
})


class EnvVar(_ProfileModel):
    """A literal environment variable (no valueFrom: the profile is cluster-scoped, Secrets are not)."""

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=256)
    value: str = Field(default="", max_length=4096)

    @field_validator("name")
    @classmethod
    def _not_the_operators(cls, name: str) -> str:
        if name.startswith(OPERATOR_ENV_PREFIXES) or name in OPERATOR_ENV_NAMES:
            reserved = ", ".join(sorted(OPERATOR_ENV_NAMES))
            raise ValueError(f"{name} is set by the operator (ICLORA_*, AWS_*, {reserved})")
        return name


class Toleration(_ProfileModel):
    key: str | None = None
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = None


class Acceleration(SpeedLevers, _ProfileModel):
    """The trainer's speed levers (iclora_api.trainer_settings.SpeedLevers: same fields, camelCase names)."""


# --- Admin-defined volumes: Kubernetes' own Volume and VolumeMount shapes -----------------------
# VolumeMount is typed whole. Of Volume, the name and the sources that hold model weights or a
# node cache (hostPath, persistentVolumeClaim, nfs, csi, image, emptyDir) are typed field by
# field; every other source Kubernetes knows is accepted as an object and checked by the API
# server when the operator creates the pod's Job. Exactly one source per volume.

_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
VolumeName = Annotated[str, Field(min_length=1, max_length=63, pattern=_DNS_LABEL)]
# Where the operator mounts its own volumes: the scratch emptyDir, /dev/shm and the model cache.
SCRATCH_MOUNT_PATH = "/scratch"
SHM_MOUNT_PATH = "/dev/shm"
MODEL_CACHE_MOUNT_PATH = "/var/cache/iclora/models"
RESERVED_MOUNT_PATHS = (SCRATCH_MOUNT_PATH, SHM_MOUNT_PATH, MODEL_CACHE_MOUNT_PATH)
RESERVED_VOLUME_NAMES = ("scratch", "dshm")


class _K8sModel(_ProfileModel):
    """Kubernetes core/v1 shapes: camelCase, strict, unknown fields refused."""


class HostPathVolumeSource(_K8sModel):
    path: Annotated[str, Field(min_length=1, max_length=4096)]
    type: Literal[
        "", "DirectoryOrCreate", "Directory", "FileOrCreate", "File", "Socket", "CharDevice", "BlockDevice"
    ] | None = None


class PersistentVolumeClaimVolumeSource(_K8sModel):
    claim_name: Annotated[str, Field(min_length=1, max_length=253)]
    read_only: bool | None = None


class NFSVolumeSource(_K8sModel):
    server: Annotated[str, Field(min_length=1)]
    path: Annotated[str, Field(min_length=1)]
    read_only: bool | None = None


class SecretName(_K8sModel):
    name: Annotated[str, Field(min_length=1, max_length=253)]


class CSIVolumeSource(_K8sModel):
    driver: Annotated[str, Field(min_length=1, max_length=63)]
    read_only: bool | None = None
    fs_type: str | None = None
    volume_attributes: dict[str, str] | None = None
    node_publish_secret_ref: SecretName | None = None


class ImageVolumeSource(_K8sModel):
    reference: Annotated[str, Field(min_length=1)]
    pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = None


class EmptyDirVolumeSource(_K8sModel):
    medium: Literal["", "Memory"] | None = None
    size_limit: Quantity | None = None


_TYPED_SOURCES = ("hostPath", "persistentVolumeClaim", "nfs", "csi", "image", "emptyDir")
# Kubernetes' other volume sources (core/v1 Volume), each an object the API server validates.
_OTHER_SOURCES = (
    "awsElasticBlockStore", "azureDisk", "azureFile", "cephfs", "cinder", "configMap", "downwardAPI",
    "ephemeral", "fc", "flexVolume", "flocker", "gcePersistentDisk", "gitRepo", "glusterfs", "iscsi",
    "photonPersistentDisk", "portworxVolume", "projected", "quobyte", "rbd", "scaleIO", "secret",
    "storageos", "vsphereVolume",
)
VOLUME_SOURCES = _TYPED_SOURCES + _OTHER_SOURCES
_ONE_SOURCE_RULE = " + ".join(f"(has(self.{name}) ? 1 : 0)" for name in VOLUME_SOURCES) + " == 1"
_Object = dict[str, Any] | None


class Volume(_K8sModel):
    """A Kubernetes volume (core/v1 Volume) added to the preflight and training pods."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        {"rule": _ONE_SOURCE_RULE, "message": "a volume has exactly one source (hostPath, persistentVolumeClaim, ...)"}
    ]})

    name: VolumeName
    host_path: HostPathVolumeSource | None = None
    persistent_volume_claim: PersistentVolumeClaimVolumeSource | None = None
    nfs: NFSVolumeSource | None = None
    csi: CSIVolumeSource | None = None
    image: ImageVolumeSource | None = None
    empty_dir: EmptyDirVolumeSource | None = None
    aws_elastic_block_store: _Object = None
    azure_disk: _Object = None
    azure_file: _Object = None
    cephfs: _Object = None
    cinder: _Object = None
    config_map: _Object = None
    downward_api: _Object = Field(default=None, alias="downwardAPI")
    ephemeral: _Object = None
    fc: _Object = None
    flex_volume: _Object = None
    flocker: _Object = None
    gce_persistent_disk: _Object = None
    git_repo: _Object = None
    glusterfs: _Object = None
    iscsi: _Object = None
    photon_persistent_disk: _Object = None
    portworx_volume: _Object = None
    projected: _Object = None
    quobyte: _Object = None
    rbd: _Object = None
    scale_io: _Object = Field(default=None, alias="scaleIO")
    secret: _Object = None
    storageos: _Object = None
    vsphere_volume: _Object = None

    @model_validator(mode="after")
    def _one_source(self) -> Volume:
        sources = self.sources()
        if len(sources) != 1:
            raise ValueError(f"volume {self.name!r} needs exactly one source, has {sorted(sources) or 'none'}")
        return self

    def sources(self) -> dict[str, Any]:
        """The volume's sources as {camelCase name: value} (exactly one once validated)."""
        data = self.model_dump(by_alias=True, exclude_none=True, exclude={"name"})
        return {k: v for k, v in data.items() if k in VOLUME_SOURCES}

    def manifest(self) -> dict[str, Any]:
        """The volume as the pod spec takes it."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class VolumeMount(_K8sModel):
    """Where a volume appears in the trainer container (core/v1 VolumeMount)."""

    name: VolumeName
    mount_path: Annotated[str, Field(min_length=2, max_length=4096, pattern=r"^/.+")]
    read_only: bool | None = None
    sub_path: str | None = None
    sub_path_expr: str | None = None
    mount_propagation: Literal["None", "HostToContainer", "Bidirectional"] | None = None
    recursive_read_only: Literal["Disabled", "IfPossible", "Enabled"] | None = None

    def manifest(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


# --- The base model: where the weights come from -------------------------------------------------

MODEL_URI_SCHEMES = ("s3", "file", "https", "http")
_MODEL_URI_PATTERN = r"^(s3://[^/\s]+/\S+|file:///\S+|https?://[^/\s]+/\S*)$"
ModelUri = Annotated[str, Field(min_length=8, max_length=2048, pattern=_MODEL_URI_PATTERN)]


class ModelSource(_ProfileModel):
    """Where the LTX-2.3 checkpoint and the Gemma text encoder come from, and where they are cached."""

    checkpoint: ModelUri = Field(description=(
        "LTX-2.3 checkpoint (.safetensors): s3://bucket/key, file:///path (on the node or a mounted "
        "volume) or https://host/path. Append #sha256=<hex> to verify it."))
    text_encoder: ModelUri = Field(description=(
        "Gemma text-encoder folder: s3://bucket/prefix/ (every object under it) or file:///path."))
    credentials_secret_ref: SecretName | None = Field(default=None, description=(
        "Secret in the operator's namespace with AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and optionally "
        "AWS_ENDPOINT_URL and AWS_REGION for the s3:// sources; copied into each run's namespace. "
        "Omitted: s3:// sources are read from the platform's store with its credentials."))
    cache_volume: VolumeName | None = Field(default=None, description=(
        "Name of the `volumes` entry that holds the model cache (a hostPath or a PVC), mounted in training "
        "pods at " + MODEL_CACHE_MOUNT_PATH + ". Omitted: every run downloads into its scratch volume."))

    def uris(self) -> tuple[str, str]:
        return self.checkpoint, self.text_encoder

    @property
    def fetches_from_s3(self) -> bool:
        return any(uri.startswith("s3://") for uri in self.uris())


class TrainingProfileSpec(_ProfileModel):
    """Trainer image, GPU shape, placement, deadlines and model location of trainings."""

    # The cross-field rules of `_volumes_fit` that the API server can check at `kubectl apply`.
    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        {"rule": "!has(self.volumeMounts) || self.volumeMounts.all(m, has(self.volumes) && "
                 "self.volumes.exists(v, v.name == m.name))",
         "message": "every volumeMounts[].name names an entry of volumes", "fieldPath": ".volumeMounts"},
        {"rule": "!has(self.model) || !has(self.model.cacheVolume) || (has(self.volumes) && "
                 "self.volumes.exists(v, v.name == self.model.cacheVolume))",
         "message": "model.cacheVolume names no entry of volumes", "fieldPath": ".model.cacheVolume"},
        {"rule": "!has(self.model) || (!has(self.modelPath) && !has(self.textEncoderPath))",
         "message": "set either model (URIs) or modelPath/textEncoderPath, not both", "fieldPath": ".model"},
    ]})

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
    image_pull_secrets: list[SecretName] = Field(
        default_factory=list, max_length=16,
        description="Secrets (in each training's namespace) for pulling the trainer image from a private "
        "registry; set on the preflight and training pods.",
    )
    service_account_name: Annotated[str, Field(min_length=1, max_length=253)] | None = Field(
        default=None, description="ServiceAccount (in each training's namespace) of the preflight and "
        "training pods; its imagePullSecrets apply too. Omitted: the namespace's `default`.",
    )
    pod_start_timeout_seconds: Annotated[int, Field(ge=10)] = Field(
        default=600, description="How long a preflight or training pod may stay unscheduled or waiting "
        "(image pull, missing Secret or ConfigMap) before the training fails with the reason.",
    )
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
    max_disruptions: Annotated[int, Field(ge=0, le=1000)] = Field(
        default=10, description=(
            "How often the pods of a preflight or training Job may be disrupted without saving their work "
            "before the training fails (TooManyDisruptions) and its Job is deleted: failed pods with the "
            "DisruptionTarget condition (evicted by the kubelet for disk or memory pressure or for exceeding "
            "scratchSize, lost with their node, preempted before they could checkpoint). Kubernetes retries "
            "these without counting them against backoffLimit; a pod stopped by SIGTERM after writing its "
            "checkpoint (exit code 23: preemption, drain, suspend) does not count."),
    )
    ttl_seconds_after_finished: Annotated[int, Field(ge=60, le=30 * 24 * 3600)] = Field(
        default=3600, description=(
            "ttlSecondsAfterFinished of the preflight and training Jobs: Kubernetes deletes a finished Job "
            "and its pods this long after it ended. The training's status keeps the outcome (the operator "
            "records it within seconds and never needs the Job again); long enough to read the pods' logs."),
    )
    checkpoint_interval: Annotated[int, Field(ge=1)] = Field(
        default=250, description="Steps between checkpoints written to the object store."
    )
    run_as_user: Annotated[int, Field(ge=1)] | None = Field(
        default=1000, description=(
            "uid, gid and fsGroup of the preflight and training pods (the hostPath model cache must be "
            "writable by it). null leaves them to the platform: OpenShift's restricted SCC assigns a uid "
            "from the namespace's range, and the trainer image runs under any uid in group 0."),
    )
    termination_grace_period_seconds: Annotated[int, Field(ge=1, le=3600)] = Field(
        default=300, description=(
            "terminationGracePeriodSeconds of training pods: on SIGTERM (suspend, preemption, drain) the "
            "trainer finishes its step and writes a checkpoint within it; longer than a step plus a "
            "checkpoint upload."),
    )
    collective_timeout_seconds: Annotated[int, Field(ge=60, le=86400)] = Field(
        default=1800, description=(
            "Process-group timeout of a multi-rank training (DeepSpeed/torch.distributed, any backend): a "
            "collective a lost rank never joins fails after this, the ranks exit and the training restarts "
            "from its last checkpoint. Longer than the slowest rank-0-only step (validation reels)."),
    )
    zero_stage: Annotated[int, Field(ge=0, le=2)] = 2
    rank_network_policy: Literal["Ingress", "IngressAndEgress", "None"] = Field(
        default="Ingress", description=(
            "A NetworkPolicy per multi-node training that lets its own pods reach each other (rendezvous "
            "and NCCL ports) and nothing else new. Ingress: enough where namespaces deny ingress by "
            "default. IngressAndEgress: also an egress rule to the peers, for namespaces that deny egress "
            "by default (there, a policy with Egress limits the pods' egress to what some policy allows, "
            "so DNS and the object store must be allowed by the namespace's own policies). None: no policy."),
    )
    trainer_env: list[EnvVar] = Field(
        default_factory=list, max_length=64, description=(
            "Extra environment of the training containers, e.g. NCCL_SOCKET_IFNAME, NCCL_IB_HCA, "
            "FI_PROVIDER for a fast interconnect. Names the operator sets itself are refused."),
    )
    trainer_extra_resources: dict[str, Quantity] = Field(
        default_factory=dict, max_length=16, description=(
            "Extended resources of each training pod, as limits (and requests), e.g. "
            "{vpc.amazonaws.com/efa: 4} or {rdma/ib: 1} for EFA or RDMA devices (domain/name)."),
    )

    @field_validator("trainer_extra_resources")
    @classmethod
    def _extended_resource_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not EXTENDED_RESOURCE.match(name) or name.startswith(("kubernetes.io/", "requests.")):
                raise ValueError(f"{name!r} is not an extended resource name (domain/name, e.g. rdma/ib); "
                                 "cpu, memory and GPUs have fields of their own")
        return value
    acceleration: Acceleration = Field(default_factory=Acceleration, description="Speed levers of the step.")
    model: ModelSource | None = Field(default=None, description=(
        "Where the base model comes from (URIs) and the volume that caches it; replaces modelPath and "
        "textEncoderPath."))
    volumes: list[Volume] = Field(
        default_factory=list, max_length=32,
        description="Volumes added to the preflight and training pods (e.g. a read-only PVC holding the weights).",
    )
    volume_mounts: list[VolumeMount] = Field(
        default_factory=list, max_length=32,
        description="Mounts of `volumes` in the preflight and training containers.",
    )
    model_path: str = Field(
        default="/models/ltx-2.3/ltx-2.3-22b.safetensors",
        description="Deprecated, use model.checkpoint: LTX-2.3 checkpoint as a local path in the pod.",
    )
    text_encoder_path: str = Field(
        default="/models/gemma", description="Deprecated, use model.textEncoder: Gemma folder as a local path."
    )
    device: Literal["cuda", "cpu"] = "cuda"

    @model_validator(mode="after")
    def _volumes_fit(self) -> TrainingProfileSpec:
        names = [v.name for v in self.volumes]
        if len(set(names)) != len(names):
            raise ValueError(f"volumes: names must be unique, got {names}")
        if reserved := set(names) & set(RESERVED_VOLUME_NAMES):
            raise ValueError(f"volumes: {sorted(reserved)} are the operator's own volume names")
        paths = [m.mount_path.rstrip("/") for m in self.volume_mounts]
        if len(set(paths)) != len(paths):
            raise ValueError(f"volumeMounts: mount paths must be unique, got {paths}")
        for mount in self.volume_mounts:
            if mount.name not in names:
                raise ValueError(f"volumeMounts: {mount.name!r} names no entry of volumes")
            path = mount.mount_path.rstrip("/") + "/"
            for reserved_path in RESERVED_MOUNT_PATHS:
                if path.startswith(reserved_path + "/") or (reserved_path + "/").startswith(path):
                    raise ValueError(f"volumeMounts: {mount.mount_path} overlaps {reserved_path}, where the "
                                     "operator mounts its own volume")
        if self.model is not None:
            if {"model_path", "text_encoder_path"} & self.model_fields_set:
                raise ValueError("set either model (URIs) or modelPath/textEncoderPath, not both")
            cache = self.model.cache_volume
            if cache is not None and cache not in names:
                raise ValueError(f"model.cacheVolume: {cache!r} names no entry of volumes")
        return self

    def model_uris(self) -> tuple[str, str]:
        """(checkpoint, text encoder) as the trainer takes them: URIs, or the deprecated local paths."""
        if self.model is not None:
            return self.model.uris()
        return self.model_path, self.text_encoder_path

    @property
    def cache_volume(self) -> Volume | None:
        name = self.model.cache_volume if self.model else None
        return next((v for v in self.volumes if v.name == name), None)


def profile_spec_from_object(obj: dict[str, Any]) -> TrainingProfileSpec:
    """Parse a TrainingProfile object's spec (strict, as JSON)."""
    import json

    return TrainingProfileSpec.model_validate_json(json.dumps(obj.get("spec") or {}))
