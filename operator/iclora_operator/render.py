"""Kubernetes objects of one training, rendered by pure functions.

Every function takes typed inputs and returns a plain dict ready for the API:
no clock, no randomness, no environment, so the output is deterministic and
testable without a cluster. Handlers only send what these functions return.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from iclora_api.contract import (
    ALLOW_PRIVATE_NETWORKS_ENV,
    AWS_ACCESS_KEY_ID_ENV,
    AWS_ENDPOINT_URL_ENV,
    AWS_REGION_ENV,
    AWS_SECRET_ACCESS_KEY_ENV,
    AWS_SESSION_TOKEN_ENV,
    DATASET_CREDENTIALS_ENV_PREFIX,
    GPUS_PER_NODE_ENV,
    MASTER_ADDR_ENV,
    MASTER_PORT_ENV,
    MODEL_CACHE_DIR_ENV,
    MODEL_CREDENTIALS_ENV_PREFIX,
    MODEL_PATH_ENV,
    NNODES_ENV,
    PREEMPTED_EXIT_CODES,
    PREPARED_DIR,
    SPEC_ENV,
    TERMINATION_LOG,
    TERMINATION_LOG_ENV,
    TEXT_ENCODER_PATH_ENV,
    TRAINER_SETTINGS_ENV,
    TRUSTED_NETWORKS_ENV,
    USER_ERROR_EXIT_CODES,
    WORK_DIR_ENV,
)
from iclora_api.profile import MODEL_CACHE_MOUNT_PATH, TrainingProfileSpec
from iclora_api.trainer_settings import SpeedLevers, TrainerSettings
from iclora_api.v1alpha1 import API_GROUP, API_VERSION, KIND, MaskedICLoraTrainingSpec
from iclora_operator.access import ReadOnly, RunAccess, Session

LABEL_TRAINING = f"{API_GROUP}/training"
LABEL_UID = f"{API_GROUP}/training-uid"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "masked-iclora-operator"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
# When the scoped session in a credentials Secret ends (RFC 3339, UTC): the operator renews it before.
ANNOTATION_CREDENTIALS_EXPIRE = f"{API_GROUP}/credentials-expire-at"
CONTAINER = "trainer"
RENDEZVOUS_PORT = 29500
SCRATCH = "/scratch"
GPU_RESOURCE = "nvidia.com/gpu"
# What a container that requests no GPU sees of the node's GPUs: none. CUDA base images set
# NVIDIA_VISIBLE_DEVICES=all, which the nvidia runtime (a node's default runtime) honours even
# for a pod that requests no GPU; `void` hides every device (the runtime's documented value).
NVIDIA_VISIBLE_DEVICES = "NVIDIA_VISIBLE_DEVICES"
NO_GPU_DEVICES = "void"
# Prefixes of labels and annotations that belong to tools, never copied to children.
_FOREIGN_PREFIXES = ("kopf.zalando.org", "kubectl.kubernetes.io", "iclora.dev/", "app.kubernetes.io/")


# Kubernetes' limits on what the operator names (apimachinery's validation).
DNS_LABEL_MAX = 63  # DNS-1123 and DNS-1035 labels (Service names, pod hostnames); also label values
DNS_SUBDOMAIN_MAX = 253  # object names such as Secrets, and the training's own name
# A Job's name is its pods' `batch.kubernetes.io/job-name` label value (<= 63), an Indexed Job's pod
# hostnames are <job>-<index> (a DNS label) and its pods' names <job>-<index>-<5 random>; Kueue names
# the Job's Workload job-<job>-<5 hex>, a label value under MultiKueue and ShortWorkloadNames (<= 63):
# 63 - len("job-") - len("-xxxxx") = 53 keeps all of them within bounds for up to 64 nodes.
TRAINING_JOB_NAME_MAX = 53
# The preflight Job is neither Indexed nor queued by Kueue: only the job-name label bounds it.
PREFLIGHT_JOB_NAME_MAX = DNS_LABEL_MAX
NAME_HASH_LENGTH = 8


def name_hash(name: str) -> str:
    """A short, stable digest of a training's full name: what tells apart names cut to one prefix."""
    return hashlib.sha256(name.encode()).hexdigest()[:NAME_HASH_LENGTH]


def _child_name(name: str, suffix: str, limit: int, *, dns_label: bool = False, letter_first: bool = False) -> str:
    """`<name>-<suffix>` when that is a valid name within `limit`; otherwise a readable prefix of the
    name, a hash of the whole name and the suffix: `<prefix>-<hash>-<suffix>`, within `limit`.

    `name` is a valid object name (a DNS subdomain: [a-z0-9.-], alphanumeric at both ends).
    `dns_label`: no dots (hostnames, Services); `letter_first`: DNS-1035 (Services).
    """
    verbatim = f"{name}-{suffix}"
    if (len(verbatim) <= limit and not (dns_label and "." in name)
            and not (letter_first and not name[:1].isalpha())):
        return verbatim
    lead = "t-" if letter_first and not name[:1].isalpha() else ""
    readable = name.replace(".", "-") if dns_label else name
    room = limit - len(lead) - NAME_HASH_LENGTH - len(suffix) - 2
    head = readable[:room].rstrip("-.")
    return "-".join(part for part in (f"{lead}{head}".rstrip("-"), name_hash(name), suffix) if part)


def label_value(value: str) -> str:
    """A name as a label value: itself when it fits 63 characters, else a prefix and its hash."""
    if len(value) <= DNS_LABEL_MAX:
        return value
    head = value[:DNS_LABEL_MAX - NAME_HASH_LENGTH - 1].rstrip("-._")
    return f"{head}-{name_hash(value)}"


@dataclass(frozen=True)
class ChildNames:
    """Names of a training's children and its label value: the one place that derives them.

    Deterministic from the training's name (a DNS subdomain of up to 253 characters), unchanged
    (`<name>-preflight`, `<name>-train`, `<name>-store`) whenever that is valid, and shortened to
    `<prefix>-<hash of the name>-<suffix>` otherwise, so any valid training name gets valid children.
    """

    preflight: str
    training: str
    service: str
    store_secret: str
    # Credentials of the profile's s3:// model sources, copied per run (render_model_store_secret);
    # `<name>-model-credentials`: no other training's `<name>-store` can end like it.
    model_store_secret: str
    # The value of the children's `iclora.dev/training` label.
    training_label: str

    @classmethod
    def of(cls, name: str) -> ChildNames:
        return cls(
            preflight=_child_name(name, "preflight", PREFLIGHT_JOB_NAME_MAX),
            training=_child_name(name, "train", TRAINING_JOB_NAME_MAX, dns_label=True),
            service=_child_name(name, "train", DNS_LABEL_MAX, dns_label=True, letter_first=True),
            store_secret=_child_name(name, "store", DNS_SUBDOMAIN_MAX),
            model_store_secret=_child_name(name, "model-credentials", DNS_SUBDOMAIN_MAX),
            training_label=label_value(name),
        )


@dataclass(frozen=True)
class StoreLocation:
    """Where one run writes: an S3 endpoint, a bucket and the run's own prefix."""

    endpoint: str
    bucket: str
    prefix: str
    region: str = "us-east-1"

    def uri(self, *parts: str) -> str:
        path = "/".join(p.strip("/") for p in (self.prefix, *parts) if p.strip("/"))
        return f"s3://{self.bucket}/{path}"


@dataclass(frozen=True)
class RunContext:
    """Everything the renderers need to know about one training."""

    name: str
    namespace: str
    uid: str
    spec: MaskedICLoraTrainingSpec
    profile: TrainingProfileSpec
    store: StoreLocation
    # Secret holding AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY for the run's store.
    store_secret: str
    labels: dict[str, str]
    trainer_command: tuple[str, ...] = ("iclora",)
    allow_private_dataset_hosts: bool = False
    kueue_enabled: bool = False
    # Hosts/networks user-named URLs may reach although private: the platform store's host and the
    # administrator's list (OperatorSettings.trusted_networks); never anything a tenant sets.
    trusted_dataset_networks: tuple[str, ...] = ()

    @property
    def names(self) -> ChildNames:
        return ChildNames.of(self.name)

    @property
    def queue_name(self) -> str | None:
        return self.labels.get(KUEUE_QUEUE_LABEL)


def owner_reference(ctx: RunContext) -> dict[str, Any]:
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": KIND,
        "name": ctx.name,
        "uid": ctx.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def child_labels(ctx: RunContext, component: str) -> dict[str, str]:
    inherited = {k: v for k, v in ctx.labels.items() if not k.startswith(_FOREIGN_PREFIXES)}
    inherited.pop(KUEUE_QUEUE_LABEL, None)
    return {
        **inherited,
        "app.kubernetes.io/name": "masked-iclora",
        LABEL_COMPONENT: component,
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_TRAINING: ctx.names.training_label,
        LABEL_UID: ctx.uid,
    }


def _metadata(ctx: RunContext, name: str, component: str, extra: dict[str, str] | None = None) -> dict:
    return {
        "name": name,
        "namespace": ctx.namespace,
        "labels": {**child_labels(ctx, component), **(extra or {})},
        "ownerReferences": [owner_reference(ctx)],
    }


def owns_store_secret(ctx: RunContext) -> bool:
    """Whether the run writes to the platform's store with credentials the operator issues
    (`<name>-store`), rather than to a `spec.output` store with the tenant's own Secret."""
    return ctx.store_secret == ctx.names.store_secret


def _platform_model_reads(ctx: RunContext) -> tuple[ReadOnly, ...]:
    """The profile's s3:// model sources read with the platform's store access (no credentials Secret of their own)."""
    model = ctx.profile.model
    if model is None or not model.fetches_from_s3 or model.credentials_secret_ref is not None:
        return ()
    return tuple(ReadOnly.of(uri) for uri in ctx.profile.model_uris() if uri.startswith("s3://"))


def run_access(ctx: RunContext) -> RunAccess | None:
    """What the run's `<name>-store` session may touch: its own prefix, and the base model read-only
    when that lives in the platform's store. None: the run uses the tenant's own store credentials."""
    if not owns_store_secret(ctx):
        return None
    return RunAccess(ctx.store.bucket, ctx.store.prefix, _platform_model_reads(ctx))


def model_access(ctx: RunContext) -> RunAccess | None:
    """What `<name>-model-credentials` may touch when the operator issues it: the base model in the
    platform's store, read-only, for a run that writes elsewhere (`spec.output`). None otherwise."""
    reads = _platform_model_reads(ctx)
    if not reads or owns_store_secret(ctx):
        return None
    return RunAccess(None, None, reads)


def render_store_secret(ctx: RunContext, session: Session) -> dict[str, Any]:
    """The run's own scoped session (`run_access`) in the tenant's namespace, owned by the training:
    never the platform's key. The annotation says when the operator must renew it."""
    metadata = _metadata(ctx, ctx.names.store_secret, "store-credentials")
    metadata["annotations"] = {ANNOTATION_CREDENTIALS_EXPIRE: session.expiry}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata,
        "type": "Opaque",
        "stringData": {
            AWS_ACCESS_KEY_ID_ENV: session.access_key,
            AWS_SECRET_ACCESS_KEY_ENV: session.secret_key,
            AWS_SESSION_TOKEN_ENV: session.session_token,
            AWS_ENDPOINT_URL_ENV: ctx.store.endpoint,
            AWS_REGION_ENV: ctx.store.region,
        },
    }


def model_store_secret(ctx: RunContext) -> str | None:
    """The Secret the training pods read the s3:// model sources' credentials from (None: no such source).

    The profile's `model.credentialsSecretRef` (in the operator's namespace) is copied into
    `ChildNames.model_store_secret`; without one, the model comes from the platform's store: the
    run's own session `<name>-store` reads it when the run writes there too (`run_access`), else
    `model_store_secret` holds a session that may only read the model (`model_access`).
    """
    model = ctx.profile.model
    if model is None or not model.fetches_from_s3:
        return None
    if model.credentials_secret_ref is None and owns_store_secret(ctx):
        return ctx.names.store_secret
    return ctx.names.model_store_secret


def render_model_store_secret(ctx: RunContext, data: dict[str, str], expires_at: str | None = None) -> dict[str, Any]:
    """The model store's credentials (AWS_* keys of `data`) in the training's namespace, owned by it;
    `expires_at` (RFC 3339) when they are a session the operator issued and renews."""
    keys = (AWS_ACCESS_KEY_ID_ENV, AWS_SECRET_ACCESS_KEY_ENV, AWS_SESSION_TOKEN_ENV, AWS_ENDPOINT_URL_ENV,
            AWS_REGION_ENV)
    metadata = _metadata(ctx, ctx.names.model_store_secret, "model-store-credentials")
    if expires_at:
        metadata["annotations"] = {ANNOTATION_CREDENTIALS_EXPIRE: expires_at}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata,
        "type": "Opaque",
        "stringData": {k: data[k] for k in keys if data.get(k)},
    }


def render_model_session_secret(ctx: RunContext, session: Session) -> dict[str, Any]:
    """`<name>-model-credentials` holding the read-only model session (`model_access`): the
    platform store's endpoint, which a run with its own `spec.output` does not write to."""
    data = {AWS_ACCESS_KEY_ID_ENV: session.access_key, AWS_SECRET_ACCESS_KEY_ENV: session.secret_key,
            AWS_SESSION_TOKEN_ENV: session.session_token, AWS_ENDPOINT_URL_ENV: session.endpoint,
            AWS_REGION_ENV: session.region or ""}
    return render_model_store_secret(ctx, data, session.expiry)


def _model_env(ctx: RunContext) -> list[dict[str, Any]]:
    """Where the base model comes from: each source a variable of its own (runtimes that remap
    volumes see file:// paths there), the node cache's mount and the model store's credentials."""
    checkpoint, text_encoder = ctx.profile.model_uris()
    env = [{"name": MODEL_PATH_ENV, "value": checkpoint}, {"name": TEXT_ENCODER_PATH_ENV, "value": text_encoder}]
    if ctx.profile.cache_volume is not None:
        env.append({"name": MODEL_CACHE_DIR_ENV, "value": MODEL_CACHE_MOUNT_PATH})
    secret = model_store_secret(ctx)
    return env + (_secret_env(secret, MODEL_CREDENTIALS_ENV_PREFIX) if secret else [])


def _secret_env(secret: str, env_prefix: str = "") -> list[dict[str, Any]]:
    """AWS_* variables from a Secret; endpoint and region may be absent (real AWS)."""
    return [
        {"name": f"{env_prefix}{key}", "valueFrom": {"secretKeyRef": {"name": secret, "key": key,
                                                                       "optional": optional}}}
        for key, optional in (
            (AWS_ACCESS_KEY_ID_ENV, False),
            (AWS_SECRET_ACCESS_KEY_ENV, False),
            (AWS_SESSION_TOKEN_ENV, True),  # present in the sessions the operator issues
            (AWS_ENDPOINT_URL_ENV, True),
            (AWS_REGION_ENV, True),
        )
    ]


def _dataset_env(ctx: RunContext) -> list[dict[str, Any]]:
    """The tenant's own credentials for s3:// dataset and validation URLs (`datasetCredentialsSecretRef`);
    without them such URLs are read with the run's session, which reaches only the run's prefix."""
    ref = ctx.spec.dataset_credentials_secret_ref
    return _secret_env(ref.name, DATASET_CREDENTIALS_ENV_PREFIX) if ref else []


def _common_env(ctx: RunContext, work_dir: str) -> list[dict[str, Any]]:
    return [
        {"name": SPEC_ENV, "value": json.dumps(ctx.spec.effective(), sort_keys=True)},
        {"name": TERMINATION_LOG_ENV, "value": TERMINATION_LOG},
        # The process's scratch folder, a path on its own (not inside the settings JSON):
        # runtimes that remap volumes see it.
        {"name": WORK_DIR_ENV, "value": work_dir},
        {"name": "TMPDIR", "value": SCRATCH},
        {"name": "HOME", "value": SCRATCH},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        *_secret_env(ctx.store_secret),
        # Both Jobs fetch URLs the user named (dataset, validation media): same SSRF policy.
        *([{"name": ALLOW_PRIVATE_NETWORKS_ENV, "value": "1"}] if ctx.allow_private_dataset_hosts else []),
        {"name": TRUSTED_NETWORKS_ENV, "value": ",".join(ctx.trusted_dataset_networks)},
    ]


def _volumes(ctx: RunContext, shm: bool, model_cache: bool = False) -> tuple[list[dict], list[dict]]:
    """The operator's volumes (scratch, /dev/shm), the profile's `volumes`/`volumeMounts` and, in
    training pods, the profile's model cache volume at MODEL_CACHE_MOUNT_PATH."""
    p = ctx.profile
    volumes = [{"name": "scratch", "emptyDir": {"sizeLimit": p.scratch_size}}]
    mounts = [{"name": "scratch", "mountPath": SCRATCH}]
    if shm:
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": p.shm_size}})
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    mounts += [m.manifest() for m in p.volume_mounts]
    cache = p.cache_volume if model_cache else None
    if cache is not None:
        mounts.append({"name": cache.name, "mountPath": MODEL_CACHE_MOUNT_PATH})
    # A pod carries the profile's volumes it mounts (the preflight leaves out an unmounted cache).
    used = {m["name"] for m in mounts}
    volumes += [v.manifest() for v in p.volumes if v.name in used]
    return volumes, mounts


def kubelet_escape(value: str) -> str:
    """A string the kubelet passes on unchanged: it expands `$(NAME)` and turns `$$` into `$` in env
    values, command and args, so every `$` is written `$$` (Kubernetes' documented escape)."""
    return value.replace("$", "$$")


def _escaped_env(env: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Env vars as the pod spec takes them: every literal `value` escaped (user input may hold
    `$(HOME)` or `$$`: a prompt, a URL), `valueFrom` references unchanged (the kubelet does not expand them)."""
    return [{**var, "value": kubelet_escape(var["value"])} if "value" in var else var for var in env]


def _container_security() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }


def _pod_spec(
    ctx: RunContext,
    *,
    args: list[str],
    command: list[str],
    env: list[dict[str, Any]],
    resources: dict[str, Any],
    shm: bool,
    gpu: bool,
) -> dict[str, Any]:
    volumes, mounts = _volumes(ctx, shm, model_cache=gpu)
    if not resources["limits"].get(GPU_RESOURCE):
        env = [*env, {"name": NVIDIA_VISIBLE_DEVICES, "value": NO_GPU_DEVICES}]
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            # The profile's uid (default 1000), or none: OpenShift's SCC assigns one.
            **({"runAsUser": uid, "runAsGroup": uid, "fsGroup": uid}
               if (uid := ctx.profile.run_as_user) is not None else {}),
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [
            {
                "name": CONTAINER,
                "image": ctx.profile.image,
                "imagePullPolicy": ctx.profile.image_pull_policy,
                # The one place the operator's strings reach the kubelet's `$(NAME)` expansion.
                "command": [kubelet_escape(a) for a in command],
                "args": [kubelet_escape(a) for a in args],
                "env": _escaped_env(env),
                "resources": resources,
                "volumeMounts": mounts,
                "workingDir": SCRATCH,
                "securityContext": _container_security(),
                "terminationMessagePath": TERMINATION_LOG,
                "terminationMessagePolicy": "FallbackToLogsOnError",
            }
        ],
        "volumes": volumes,
    }
    p = ctx.profile
    selector, tolerations = (p.node_selector, p.tolerations) if gpu else (
        p.preflight_node_selector, p.preflight_tolerations)
    if selector:
        pod["nodeSelector"] = dict(selector)
    if tolerations:
        pod["tolerations"] = [t.model_dump(by_alias=True, exclude_none=True) for t in tolerations]
    if gpu and p.priority_class_name:
        pod["priorityClassName"] = p.priority_class_name
    if p.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": s.name} for s in p.image_pull_secrets]
    if p.service_account_name:
        pod["serviceAccountName"] = p.service_account_name
    return pod


def _template_metadata(ctx: RunContext, component: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"labels": {**ctx.profile.pod_labels, **child_labels(ctx, component)}}
    if ctx.profile.pod_annotations:
        meta["annotations"] = dict(ctx.profile.pod_annotations)
    return meta


def _pod_failure_policy() -> dict[str, Any]:
    return {
        "rules": [
            # Dataset and user errors will fail the same way on every retry: stop at once.
            {
                "action": "FailJob",
                "onExitCodes": {"containerName": CONTAINER, "operator": "In",
                                "values": list(USER_ERROR_EXIT_CODES)},
            },
            # Preemption, eviction and node loss are not the run's fault: retry without counting.
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
            # A trainer stopped by SIGTERM checkpointed its last step: the next pod resumes there.
            {
                "action": "Ignore",
                "onExitCodes": {"containerName": CONTAINER, "operator": "In",
                                "values": list(PREEMPTED_EXIT_CODES)},
            },
        ]
    }


def _resources(cpu: str, memory: str, scratch: str, gpus: int = 0,
               extra: dict[str, str] | None = None) -> dict[str, Any]:
    """CPU and memory (requests = limits), GPUs, extended resources (EFA, RDMA), and the scratch
    emptyDir's size as an ephemeral-storage request: the scheduler places the pod on a node with
    that much disk free. No ephemeral-storage limit: the emptyDir's sizeLimit bounds the scratch."""
    limits: dict[str, Any] = {"cpu": cpu, "memory": memory, **(extra or {})}
    if gpus:
        limits[GPU_RESOURCE] = str(gpus)
    return {"requests": {**limits, "ephemeral-storage": scratch}, "limits": limits}


def render_preflight_job(ctx: RunContext) -> dict[str, Any]:
    """CPU Job: fetch, extract, check and fit the dataset; never holds a GPU."""
    res = ctx.profile.preflight_resources
    # The preflight works under <work dir>/preflight.
    env = _common_env(ctx, SCRATCH) + _dataset_env(ctx)
    args = [
        "dataset", "preflight",
        "--spec", f"env:{SPEC_ENV}",
        "--output", ctx.store.uri(),
    ]
    pod = _pod_spec(ctx, command=list(ctx.trainer_command), args=args, env=env,
                    resources=_resources(res.cpu, res.memory, ctx.profile.scratch_size), shm=False, gpu=False)
    metadata = _metadata(ctx, ctx.names.preflight, "preflight")
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata,
        "spec": {
            "backoffLimit": 2,
            "activeDeadlineSeconds": ctx.profile.preflight_deadline_seconds,
            # Its outcome is in the preflight report and the training's status once it ends.
            "ttlSecondsAfterFinished": ctx.profile.ttl_seconds_after_finished,
            "podFailurePolicy": _pod_failure_policy(),
            "template": {"metadata": _template_metadata(ctx, "preflight"), "spec": pod},
        },
    }


def trainer_settings(ctx: RunContext) -> dict[str, Any]:
    """The trainer's run settings (iclora_api.trainer_settings.TrainerSettings), derived from the profile."""
    p = ctx.profile
    # The model's sources and cache travel as variables of their own (_model_env), not in here.
    settings = TrainerSettings(
        checkpoint_interval=p.checkpoint_interval,
        zero_stage=p.zero_stage,
        collective_timeout_seconds=p.collective_timeout_seconds,
        device=p.device,
        # The profile's levers are TrainerSettings' own fields (SpeedLevers): copied by name.
        **{name: getattr(p.acceleration, name) for name in SpeedLevers.model_fields},
    )
    return settings.model_dump(mode="json", exclude_defaults=True)


def render_training_job(ctx: RunContext, suspend: bool) -> dict[str, Any]:
    """GPU Job running DeepSpeed; Indexed with a headless Service when it spans nodes."""
    p = ctx.profile
    names = ctx.names
    res = p.trainer_resources
    nodes = p.nodes
    procs = max(1, p.gpus_per_node)
    env = _common_env(ctx, f"{SCRATCH}/work") + [
        {"name": TRAINER_SETTINGS_ENV, "value": json.dumps(trainer_settings(ctx), sort_keys=True)},
        # Geometry of the run; each pod starts one process per GPU and derives its rank from
        # JOB_COMPLETION_INDEX, which the Indexed Job sets in every pod.
        {"name": NNODES_ENV, "value": str(nodes)},
        {"name": GPUS_PER_NODE_ENV, "value": str(procs)},
        {"name": MASTER_PORT_ENV, "value": str(RENDEZVOUS_PORT)},
        # Pod 0 of an Indexed Job is reachable as <job>-0.<service> through the headless Service.
        {"name": MASTER_ADDR_ENV, "value": f"{names.training}-0.{names.service}" if nodes > 1 else "127.0.0.1"},
        *_model_env(ctx),
        # s3:// validation media are read like the dataset: the tenant's Secret, else the run's session.
        *_dataset_env(ctx),
        # The profile's interconnect settings (NCCL_SOCKET_IFNAME, FI_PROVIDER, ...).
        *({"name": e.name, "value": e.value} for e in p.trainer_env),
    ]
    args = [
        "train",
        "--spec", f"env:{SPEC_ENV}",
        "--settings", f"env:{TRAINER_SETTINGS_ENV}",
        "--dataset", ctx.store.uri(PREPARED_DIR),
        "--output", ctx.store.uri(),
    ]
    command = list(ctx.trainer_command)
    pod = _pod_spec(ctx, command=command, args=args, env=env,
                    resources=_resources(res.cpu, res.memory, p.scratch_size, p.gpus_per_node,
                                         p.trainer_extra_resources), shm=True, gpu=True)
    # SIGTERM -> the trainer finishes its step and checkpoints it within this (ExitCode.PREEMPTED).
    pod["terminationGracePeriodSeconds"] = p.termination_grace_period_seconds
    if nodes > 1:
        pod["subdomain"] = names.service
    extra = {KUEUE_QUEUE_LABEL: ctx.queue_name} if ctx.queue_name else None
    metadata = _metadata(ctx, names.training, "training", extra)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata,
        "spec": {
            "suspend": suspend,
            "completions": nodes,
            "parallelism": nodes,
            "completionMode": "Indexed",
            "backoffLimit": p.backoff_limit,
            "activeDeadlineSeconds": p.training_deadline_seconds,
            # Its outcome is in result.json and the training's status once it ends.
            "ttlSecondsAfterFinished": p.ttl_seconds_after_finished,
            "podFailurePolicy": _pod_failure_policy(),
            "template": {"metadata": _template_metadata(ctx, "training"), "spec": pod},
        },
    }


def render_rank_network_policy(ctx: RunContext) -> dict[str, Any] | None:
    """A multi-node training's pods may reach each other (rendezvous, NCCL's ports: any port) and
    nothing else new; None when the profile says so. NetworkPolicies add up, so in a namespace that
    denies by default this opens exactly the peers, and elsewhere it closes nothing (ingress: only
    pods no other policy selects become isolated, and these already allow their peers)."""
    mode = ctx.profile.rank_network_policy
    if mode == "None":
        return None
    ranks = {"matchLabels": {LABEL_UID: ctx.uid, LABEL_COMPONENT: "training"}}
    spec: dict[str, Any] = {
        "podSelector": ranks,
        "policyTypes": ["Ingress"],
        "ingress": [{"from": [{"podSelector": ranks}]}],
    }
    if mode == "IngressAndEgress":
        spec["policyTypes"].append("Egress")
        spec["egress"] = [{"to": [{"podSelector": ranks}]}]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(ctx, ctx.names.service, "training"),
        "spec": spec,
    }


def render_headless_service(ctx: RunContext) -> dict[str, Any]:
    """Stable DNS names for the ranks of a multi-node training (rendezvous)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(ctx, ctx.names.service, "training"),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {LABEL_UID: ctx.uid, LABEL_COMPONENT: "training"},
            "ports": [{"name": "rendezvous", "port": RENDEZVOUS_PORT, "targetPort": RENDEZVOUS_PORT}],
        },
    }
