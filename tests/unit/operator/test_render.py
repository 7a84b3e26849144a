"""Invariants of the rendered Jobs and Services (crate-operator style, no cluster)."""

from __future__ import annotations

import json

import pytest

from iclora_api.contract import USER_ERROR_EXIT_CODES, ExitCode
from iclora_operator.render import (
    KUEUE_QUEUE_LABEL,
    LABEL_UID,
    RunContext,
    StoreLocation,
    render_headless_service,
    render_preflight_job,
    render_store_secret,
    render_training_job,
)
from tests.helpers import container_of, env_of, issued_session, pod_of
from tests.helpers import render_ctx as ctx

ALL_JOBS = [
    pytest.param(lambda: render_preflight_job(ctx()), id="preflight"),
    pytest.param(lambda: render_training_job(ctx(), suspend=False), id="train-1x1"),
    pytest.param(lambda: render_training_job(ctx(nodes=4, gpus=8), suspend=False), id="train-4x8"),
]


@pytest.mark.parametrize("make", ALL_JOBS)
def test_pod_hardening(make):
    job = make()
    pod = pod_of(job)
    assert pod["automountServiceAccountToken"] is False
    assert pod["restartPolicy"] == "Never"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sec = container_of(job)["securityContext"]
    assert sec["readOnlyRootFilesystem"] is True
    assert sec["allowPrivilegeEscalation"] is False
    assert sec["capabilities"] == {"drop": ["ALL"]}
    assert any(v["name"] == "scratch" and "emptyDir" in v for v in pod["volumes"])
    assert container_of(job)["terminationMessagePolicy"] == "FallbackToLogsOnError"


@pytest.mark.parametrize("make", ALL_JOBS)
def test_ownership_and_labels(make):
    job = make()
    owner = job["metadata"]["ownerReferences"][0]
    assert owner["uid"] == "uid-1"
    assert owner["controller"] is True
    assert job["metadata"]["labels"][LABEL_UID] == "uid-1"
    assert job["metadata"]["labels"]["team"] == "vision"
    assert "kopf.zalando.org/x" not in job["metadata"]["labels"]
    assert job["spec"]["template"]["metadata"]["labels"][LABEL_UID] == "uid-1"


@pytest.mark.parametrize("make", ALL_JOBS)
def test_failure_policy_fails_fast_on_user_errors_and_ignores_disruption(make):
    rules = make()["spec"]["podFailurePolicy"]["rules"]
    assert rules[0]["action"] == "FailJob"
    assert rules[0]["onExitCodes"]["values"] == list(USER_ERROR_EXIT_CODES)
    assert rules[1] == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}


@pytest.mark.parametrize("make", ALL_JOBS)
def test_failure_policy_retries_a_preempted_trainer_without_counting(make):
    # SIGTERM (suspend, preemption, drain): the trainer checkpointed its step and exited PREEMPTED;
    # the next pod resumes there, and the retry is not counted against backoffLimit.
    rules = make()["spec"]["podFailurePolicy"]["rules"]
    assert ExitCode.PREEMPTED not in USER_ERROR_EXIT_CODES
    ignored = [r for r in rules if r["action"] == "Ignore" and "onExitCodes" in r]
    assert ignored == [{"action": "Ignore", "onExitCodes": {"containerName": "trainer", "operator": "In",
                                                            "values": [int(ExitCode.PREEMPTED)]}}]
    # Rules apply in order: no earlier rule takes the code.
    first = next(r for r in rules if "onExitCodes" in r and ExitCode.PREEMPTED in r["onExitCodes"]["values"])
    assert first["action"] == "Ignore"


def test_training_pods_get_the_profiles_grace_period_to_checkpoint():
    assert pod_of(render_training_job(ctx(), suspend=False))["terminationGracePeriodSeconds"] == 300  # default
    job = render_training_job(ctx(nodes=4, gpus=8, termination_grace_period_seconds=900), suspend=False)
    assert pod_of(job)["terminationGracePeriodSeconds"] == 900
    # The preflight has nothing to checkpoint: the Kubernetes default.
    assert "terminationGracePeriodSeconds" not in pod_of(render_preflight_job(ctx()))
    with pytest.raises(ValueError):
        ctx(termination_grace_period_seconds=0)


@pytest.mark.parametrize("make", ALL_JOBS)
def test_secrets_come_from_the_own_namespace_only(make):
    for e in container_of(make())["env"]:
        ref = e.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            assert set(ref) <= {"name", "key", "optional"}  # no namespace can be named
            assert ref["name"] in {"t-store", "data-creds"}


def test_preflight_uses_no_gpu_and_carries_the_effective_spec():
    job = render_preflight_job(ctx())
    res = container_of(job)["resources"]
    assert "nvidia.com/gpu" not in res["limits"]
    env = env_of(job)
    assert json.loads(env["ICLORA_SPEC"]["value"])["numberOfFrames"] == 97
    assert "ICLORA_DATASET_AWS_ACCESS_KEY_ID" in env
    assert container_of(job)["args"][:2] == ["dataset", "preflight"]
    assert "s3://iclora/runs/team-a/t/uid-1" in container_of(job)["args"]


def test_single_node_training():
    job = render_training_job(ctx(gpus=1), suspend=False)
    res = container_of(job)["resources"]
    assert res["limits"]["nvidia.com/gpu"] == "1"
    # Guaranteed QoS (requests = limits) plus the scratch volume's disk, which the scheduler counts.
    assert res["requests"] == {**res["limits"], "ephemeral-storage": "200Gi"}
    assert job["spec"]["completions"] == 1
    assert container_of(job)["command"] == ["iclora"]
    assert "subdomain" not in pod_of(job)
    assert any(v["name"] == "dshm" and v["emptyDir"]["medium"] == "Memory" for v in pod_of(job)["volumes"])


def test_multi_node_training_is_indexed_with_rendezvous():
    c = ctx(nodes=4, gpus=8, node_selector={"gpu": "h100"},
            tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            priority_class_name="training")
    job = render_training_job(c, suspend=False)
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == 4
    pod = pod_of(job)
    assert pod["subdomain"] == "t-train"
    assert pod["nodeSelector"] == {"gpu": "h100"}
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert pod["priorityClassName"] == "training"
    env = env_of(job)
    assert env["ICLORA_NNODES"]["value"] == "4"
    assert env["ICLORA_GPUS_PER_NODE"]["value"] == "8"
    assert env["MASTER_ADDR"]["value"] == "t-train-0.t-train"
    assert container_of(job)["args"][:1] == ["train"]
    svc = render_headless_service(c)
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["selector"][LABEL_UID] == "uid-1"


def test_kueue_label_only_on_training_job():
    c = ctx(labels={KUEUE_QUEUE_LABEL: "team-a-queue"})
    train = render_training_job(c, suspend=True)
    assert train["metadata"]["labels"][KUEUE_QUEUE_LABEL] == "team-a-queue"
    assert train["spec"]["suspend"] is True
    assert KUEUE_QUEUE_LABEL not in render_preflight_job(c)["metadata"]["labels"]
    assert KUEUE_QUEUE_LABEL not in render_training_job(ctx(), suspend=False)["metadata"]["labels"]


def test_store_secret_is_owned_and_holds_the_runs_session_not_the_platform_key():
    secret = render_store_secret(ctx(), issued_session())
    assert secret["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert secret["metadata"]["annotations"] == {"iclora.dev/credentials-expire-at": "2026-12-01T08:00:00Z"}
    assert secret["stringData"] == {"AWS_ACCESS_KEY_ID": "ASIA-run", "AWS_SECRET_ACCESS_KEY": "sk",
                                    "AWS_SESSION_TOKEN": "tok", "AWS_ENDPOINT_URL": "http://s3.local:8333",
                                    "AWS_REGION": "us-east-1"}


@pytest.mark.parametrize("make", ALL_JOBS)
def test_pods_read_the_session_token_and_the_tenants_dataset_secret(make):
    from dataclasses import replace

    from iclora_api.v1alpha1 import LocalObjectReference

    assert env_of(make())["AWS_SESSION_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "t-store", "key": "AWS_SESSION_TOKEN", "optional": True}
    # s3:// validation media (training pod) are read like the dataset (preflight): the tenant's Secret.
    c = ctx()
    c = replace(c, spec=c.spec.model_copy(update={"dataset_credentials_secret_ref": LocalObjectReference(name="mine")}))
    for job in (render_preflight_job(c), render_training_job(c, suspend=False)):
        assert env_of(job)["ICLORA_DATASET_AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]["name"] == "mine"


def test_rendering_is_deterministic():
    assert render_training_job(ctx(), False) == render_training_job(ctx(), False)


def test_profile_places_preflight_and_training_pods_separately():
    c = ctx(node_selector={"pool": "gpu"}, preflight_node_selector={"pool": "cpu"},
            pod_annotations={"example.com/trace": "on"}, pod_labels={"cost-center": "ml"})
    pre, train = render_preflight_job(c), render_training_job(c, suspend=False)
    assert pod_of(pre)["nodeSelector"] == {"pool": "cpu"}
    assert pod_of(train)["nodeSelector"] == {"pool": "gpu"}
    for job in (pre, train):
        meta = job["spec"]["template"]["metadata"]
        assert meta["annotations"] == {"example.com/trace": "on"}
        assert meta["labels"]["cost-center"] == "ml"
        assert meta["labels"][LABEL_UID] == "uid-1"


def test_trainer_settings_are_valid_for_the_trainer():
    from iclora_api.trainer_settings import TrainerSettings, load_settings

    job = render_training_job(ctx(zero_stage=1, model_path="/m/ltx.safetensors"), suspend=False)
    settings = TrainerSettings.model_validate_json(env_of(job)["ICLORA_TRAINER_SETTINGS"]["value"])
    assert settings.zero_stage == 1
    # The model's sources are variables of their own (a runtime that remaps volumes sees them there).
    assert settings.model_path is None
    env = {k: e["value"] for k, e in env_of(job).items() if "value" in e}
    effective = load_settings(None, env, json.loads(env["ICLORA_TRAINER_SETTINGS"]))
    assert (effective.zero_stage, effective.model_path) == (1, "/m/ltx.safetensors")
    assert effective.work_dir == "/scratch/work"


def test_profile_speed_levers_reach_the_trainer():
    from iclora_api.profile import profile_spec_from_object
    from iclora_api.trainer_settings import TrainerSettings

    profile = profile_spec_from_object({"spec": {"acceleration": {
        "activationCheckpointing": "blocks:24", "attentionBackends": ["cudnn", "flash"],
        "compileBlocks": True, "fp8Base": True, "fusedLora": True,
    }}})
    job = render_training_job(RunContext(**{**ctx().__dict__, "profile": profile}), suspend=False)
    settings = TrainerSettings.model_validate_json(env_of(job)["ICLORA_TRAINER_SETTINGS"]["value"])
    assert settings.activation_checkpointing == "blocks:24"
    assert settings.attention_backends == ["cudnn", "flash"]
    assert settings.compile_blocks and settings.fp8_base and settings.fused_lora
    # Without a choice the trainer keeps its safe default (checkpoint every block).
    default = TrainerSettings.model_validate_json(
        env_of(render_training_job(ctx(), suspend=False))["ICLORA_TRAINER_SETTINGS"]["value"]
    )
    assert default.activation_checkpointing == "all" and not default.fp8_base and not default.fused_lora


@pytest.mark.parametrize("bad", [{"activationCheckpointing": "half"}, {"attentionBackends": ["xformers"]}])
def test_profile_rejects_unknown_speed_levers(bad):
    from pydantic import ValidationError

    from iclora_api.profile import profile_spec_from_object

    with pytest.raises(ValidationError, match="acceleration"):
        profile_spec_from_object({"spec": {"acceleration": bad}})


def test_private_network_allowance_reaches_both_jobs_only_when_set():
    from dataclasses import replace

    allowed = replace(ctx(), allow_private_dataset_hosts=True)
    for job in (render_preflight_job(allowed), render_training_job(allowed, suspend=False)):
        assert env_of(job)["ICLORA_ALLOW_PRIVATE_NETWORKS"]["value"] == "1"
    for job in (render_preflight_job(ctx()), render_training_job(ctx(), suspend=False)):
        assert "ICLORA_ALLOW_PRIVATE_NETWORKS" not in env_of(job)


def test_trusted_networks_are_the_platform_stores_host_and_the_admins_list_never_a_tenants_endpoint():
    """An in-cluster store (issue 24.4): the preflight and training pods trust the platform store's
    host and the administrator's list; a tenant's own output endpoint is not trusted."""
    from dataclasses import replace

    from iclora_operator.settings import OperatorSettings, StoreSettings

    settings = OperatorSettings(store=StoreSettings(endpoint="http://minio.storage.svc:9000"),
                                trusted_dataset_networks=["10.0.5.0/24", "ceph-rgw.storage.svc"])
    assert settings.trusted_networks() == ("minio.storage.svc", "10.0.5.0/24", "ceph-rgw.storage.svc")
    tenant_output = StoreLocation("http://10.9.9.9:9000", "tenant-bucket", "runs/x")
    run = replace(ctx(), store=tenant_output, trusted_dataset_networks=settings.trusted_networks())
    for job in (render_preflight_job(run), render_training_job(run, suspend=False)):
        value = env_of(job)["ICLORA_TRUSTED_NETWORKS"]["value"]
        assert value == "minio.storage.svc,10.0.5.0/24,ceph-rgw.storage.svc" and "10.9.9.9" not in value
    assert OperatorSettings(store=StoreSettings(endpoint="https://s3.amazonaws.com")).trusted_networks() == (
        "s3.amazonaws.com",)


# --- Model provisioning: the profile's volumes, its model cache and model store (issue 21) -----------

WEIGHTS_PVC = {"name": "weights", "persistent_volume_claim": {"claim_name": "ltx-weights", "read_only": True}}
CACHE = {"name": "model-cache", "host_path": {"path": "/var/cache/iclora", "type": "DirectoryOrCreate"}}


def _mounts(job):
    return {m["mountPath"]: m for m in container_of(job)["volumeMounts"]}


def _volumes(job):
    return {v["name"]: v for v in pod_of(job)["volumes"]}


def test_profile_volumes_and_mounts_reach_both_pods_as_written():
    c = ctx(volumes=[WEIGHTS_PVC], volume_mounts=[{"name": "weights", "mount_path": "/models", "read_only": True}],
            model_path="/models/ltx.safetensors", text_encoder_path="/models/gemma")
    for job in (render_preflight_job(c), render_training_job(c, suspend=False)):
        assert _volumes(job)["weights"] == {"name": "weights",
                                            "persistentVolumeClaim": {"claimName": "ltx-weights", "readOnly": True}}
        assert _mounts(job)["/models"] == {"name": "weights", "mountPath": "/models", "readOnly": True}
        assert {"scratch"} <= set(_volumes(job))
    env = env_of(render_training_job(c, suspend=False))
    assert env["ICLORA_MODEL_PATH"]["value"] == "/models/ltx.safetensors"
    assert env["ICLORA_TEXT_ENCODER_PATH"]["value"] == "/models/gemma"
    assert "ICLORA_MODEL_CACHE_DIR" not in env


def test_the_model_cache_volume_is_mounted_in_training_pods_only():
    from iclora_api.profile import MODEL_CACHE_MOUNT_PATH

    c = ctx(model={"checkpoint": "s3://models/ltx.safetensors", "text_encoder": "s3://models/gemma/",
                   "cache_volume": "model-cache"}, volumes=[CACHE])
    train = render_training_job(c, suspend=False)
    assert _volumes(train)["model-cache"] == {
        "name": "model-cache", "hostPath": {"path": "/var/cache/iclora", "type": "DirectoryOrCreate"}}
    assert _mounts(train)[MODEL_CACHE_MOUNT_PATH] == {"name": "model-cache", "mountPath": MODEL_CACHE_MOUNT_PATH}
    assert env_of(train)["ICLORA_MODEL_CACHE_DIR"]["value"] == MODEL_CACHE_MOUNT_PATH
    assert env_of(train)["ICLORA_MODEL_PATH"]["value"] == "s3://models/ltx.safetensors"
    # The preflight never reads the model: an unmounted cache volume stays out of its pod.
    pre = render_preflight_job(c)
    assert "model-cache" not in _volumes(pre) and MODEL_CACHE_MOUNT_PATH not in _mounts(pre)
    assert "ICLORA_MODEL_PATH" not in env_of(pre)


def test_without_a_cache_volume_the_model_goes_to_scratch():
    c = ctx(model={"checkpoint": "https://models.example.com/ltx.safetensors", "text_encoder": "file:///m/gemma"})
    env = env_of(render_training_job(c, suspend=False))
    assert "ICLORA_MODEL_CACHE_DIR" not in env
    assert not any(k.startswith("ICLORA_MODEL_AWS_") for k in env)  # no s3:// source, no credentials
    assert set(_volumes(render_training_job(c, suspend=False))) == {"scratch", "dshm"}


def _model_secret_of(job):
    refs = {e["valueFrom"]["secretKeyRef"]["name"] for n, e in env_of(job).items()
            if n.startswith("ICLORA_MODEL_AWS_")}
    assert len(refs) == 1
    return refs.pop()


def test_s3_model_sources_read_the_platform_store_or_the_profiles_copied_secret():
    from dataclasses import replace

    from iclora_operator.render import model_store_secret, render_model_store_secret

    s3 = {"checkpoint": "s3://models/ltx.safetensors", "text_encoder": "s3://models/gemma/"}
    # The platform's store, and the run writes there too: its per-run copy <name>-store.
    c = ctx(model=s3)
    assert model_store_secret(c) == "t-store" == _model_secret_of(render_training_job(c, suspend=False))
    # The run writes to its own store (spec.output): a read-only session for the model goes to
    # <name>-model-credentials (never the platform's key).
    own = replace(c, store_secret="users-own-creds")
    assert model_store_secret(own) == "t-model-credentials" == _model_secret_of(render_training_job(own, suspend=False))
    from iclora_operator.render import model_access, render_model_session_secret, run_access

    assert run_access(own) is None and model_access(own) is not None and model_access(c) is None
    session = render_model_session_secret(own, issued_session())
    assert session["stringData"]["AWS_SESSION_TOKEN"] == "tok"
    assert session["metadata"]["annotations"] == {"iclora.dev/credentials-expire-at": "2026-12-01T08:00:00Z"}
    # Another store: the profile's Secret (operator's namespace) copied to <name>-model-store, owned by the run.
    other = ctx(model={**s3, "credentials_secret_ref": {"name": "models-ro"}})
    assert model_store_secret(other) == "t-model-credentials"
    secret = render_model_store_secret(other, {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s",
                                               "AWS_ENDPOINT_URL": "https://minio.models:9000", "other": "x"})
    assert secret["metadata"]["namespace"] == "team-a"
    assert secret["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert secret["stringData"] == {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s",
                                    "AWS_ENDPOINT_URL": "https://minio.models:9000"}
    # file:// and https:// sources need no credentials at all.
    assert model_store_secret(ctx(model={"checkpoint": "file:///m/ltx.safetensors",
                                         "text_encoder": "file:///m/gemma"})) is None


def test_the_model_store_credentials_come_from_the_operators_namespace_never_the_platform_key():
    from types import SimpleNamespace

    from pydantic import SecretStr

    from iclora_operator.act import _model_store_credentials
    from iclora_operator.runtime import RetryLater
    from iclora_operator.settings import OperatorSettings, StoreSettings

    secrets = {("iclora-system", "models-ro"): {"AWS_ACCESS_KEY_ID": "m", "AWS_SECRET_ACCESS_KEY": "n"}}
    store = StoreSettings(endpoint="https://s3.platform", access_key=SecretStr("p"), secret_key=SecretStr("q"))
    memo = SimpleNamespace(settings=OperatorSettings(store=store),
                           kube=SimpleNamespace(secret_data=lambda ns, name: secrets.get((ns, name))))
    s3 = {"checkpoint": "s3://models/ltx.safetensors", "text_encoder": "s3://models/gemma/"}
    assert _model_store_credentials(memo, ctx(model={**s3, "credentials_secret_ref": {"name": "models-ro"}})) == {
        "AWS_ACCESS_KEY_ID": "m", "AWS_SECRET_ACCESS_KEY": "n"}
    # A model in the platform's store is read with a scoped session (run_access / model_access), never a copy.
    with pytest.raises(ValueError, match=r"model\.credentialsSecretRef"):
        _model_store_credentials(memo, ctx(model=s3))
    # A Secret the admin has not created yet: nothing is created, the reconcile retries and says why.
    with pytest.raises(RetryLater, match="iclora-system/absent named by the TrainingProfile"):
        _model_store_credentials(memo, ctx(model={**s3, "credentials_secret_ref": {"name": "absent"}}))


def test_profile_image_pull_secrets_and_service_account_reach_both_pods():
    from iclora_api.profile import SecretName

    c = ctx(image_pull_secrets=[SecretName(name="regcred"), SecretName(name="mirror")],
            service_account_name="iclora-trainer")
    for job in (render_preflight_job(c), render_training_job(c, suspend=False),
                render_training_job(ctx(nodes=2, image_pull_secrets=[SecretName(name="regcred")],
                                        service_account_name="iclora-trainer"), suspend=False)):
        pod = pod_of(job)
        assert pod["imagePullSecrets"][0] == {"name": "regcred"}
        assert pod["serviceAccountName"] == "iclora-trainer"
        assert pod["automountServiceAccountToken"] is False  # the pods never call the API server
    assert pod_of(render_preflight_job(c))["imagePullSecrets"] == [{"name": "regcred"}, {"name": "mirror"}]
    plain = pod_of(render_training_job(ctx(), suspend=False))
    assert "imagePullSecrets" not in plain and "serviceAccountName" not in plain


def test_collective_timeout_comes_from_the_profile():
    """The process-group timeout is the profile's (issue 18.8), default 30 minutes, any backend."""
    from iclora_api.profile import profile_spec_from_object
    from iclora_api.trainer_settings import TrainerSettings

    assert TrainerSettings().collective_timeout_seconds == profile_spec_from_object(
        {"spec": {}}).collective_timeout_seconds == 1800
    profile = profile_spec_from_object({"spec": {"nodes": 2, "collectiveTimeoutSeconds": 240}})
    job = render_training_job(RunContext(**{**ctx().__dict__, "profile": profile}), suspend=False)
    settings = TrainerSettings.model_validate_json(env_of(job)["ICLORA_TRAINER_SETTINGS"]["value"])
    assert settings.collective_timeout_seconds == 240
    with pytest.raises(ValueError):
        profile_spec_from_object({"spec": {"collectiveTimeoutSeconds": 5}})


@pytest.mark.parametrize("make", ALL_JOBS)
def test_pods_request_their_scratch_disk(make):
    """Issue 23.2: the scheduler places a pod where its scratch emptyDir (sizeLimit) fits."""
    job = make()
    scratch = next(v for v in pod_of(job)["volumes"] if v["name"] == "scratch")
    res = container_of(job)["resources"]
    assert res["requests"]["ephemeral-storage"] == scratch["emptyDir"]["sizeLimit"] == "200Gi"
    assert "ephemeral-storage" not in res["limits"]  # the emptyDir's sizeLimit bounds it
    small = render_training_job(ctx(scratch_size="20Gi"), suspend=False)
    assert container_of(small)["resources"]["requests"]["ephemeral-storage"] == "20Gi"
    assert container_of(render_preflight_job(ctx(scratch_size="20Gi")))["resources"]["requests"][
        "ephemeral-storage"] == "20Gi"


@pytest.mark.parametrize(
    ("make", "gpus"),
    [
        pytest.param(lambda: render_preflight_job(ctx()), 0, id="preflight"),
        pytest.param(lambda: render_preflight_job(ctx(gpus=0)), 0, id="preflight-cpu-profile"),
        pytest.param(lambda: render_training_job(ctx(gpus=0, device="cpu"), suspend=False), 0, id="train-cpu"),
        pytest.param(lambda: render_training_job(ctx(), suspend=False), 1, id="train-1x1"),
        pytest.param(lambda: render_training_job(ctx(nodes=4, gpus=8), suspend=False), 8, id="train-4x8"),
    ],
)
def test_containers_without_a_gpu_see_none(make, gpus):
    """Issue 23.7: CUDA images set NVIDIA_VISIBLE_DEVICES=all, which the nvidia runtime honours for any
    container; every container that requests no nvidia.com/gpu says `void` instead."""
    job = make()
    for container in pod_of(job)["containers"]:
        requested = int(container["resources"]["limits"].get("nvidia.com/gpu", "0"))
        env = {e["name"]: e for e in container["env"]}
        assert requested == gpus
        if requested:
            assert "NVIDIA_VISIBLE_DEVICES" not in env  # the device plugin chooses the devices
        else:
            assert env["NVIDIA_VISIBLE_DEVICES"] == {"name": "NVIDIA_VISIBLE_DEVICES", "value": "void"}


@pytest.mark.parametrize("make", ALL_JOBS)
def test_finished_jobs_are_deleted_after_the_profiles_ttl(make):
    """Issue 23.8: Kubernetes deletes a finished Job (and its failed pods) after ttlSecondsAfterFinished."""
    assert make()["spec"]["ttlSecondsAfterFinished"] == 3600
    assert render_preflight_job(ctx(ttl_seconds_after_finished=600))["spec"]["ttlSecondsAfterFinished"] == 600
    job = render_training_job(ctx(ttl_seconds_after_finished=86400), suspend=False)
    assert job["spec"]["ttlSecondsAfterFinished"] == 86400


def test_kubelet_escape_round_trips_through_kubelet_expansion():
    """Issue 23.6: the kubelet expands `$(NAME)` and turns `$$` into `$`; every `$` written `$$` comes back."""
    from iclora_dev.localcluster.podrunner import expand
    from iclora_operator.render import kubelet_escape

    defined = {"HOME": "/scratch", "ICLORA_SPEC": "{}", "A": "x"}
    for text in ["plain", "$(HOME)", "$$", "$$$", "a $(ICLORA_SPEC) b", "$$(A)", "$(A", "$", "cost: $5",
                 "$(UNKNOWN) $(A)$(A)", "end$", "$(A$(A))", "$()", "$(a b)"]:
        escaped = kubelet_escape(text)
        assert expand(escaped, defined) == text, text
    assert kubelet_escape("$(HOME)") == "$$(HOME)"
    # The local runner expands as the kubelet does: a reference runs to the first `)`.
    assert expand("$(A$(A)) $($$) $(HOME)$$(HOME)", defined) == "$(A$(A)) $($$) /scratch$(HOME)"
    # What the kubelet does without the escape (the bug): references expand, `$$` loses a `$`.
    assert expand("$(HOME) $$ $(A $(UNKNOWN)", defined) == "/scratch $ $(A $(UNKNOWN)"


def _user_strings_ctx(text):
    from iclora_api.validation import validate_spec
    from iclora_operator.render import StoreLocation
    from tests.helpers import RENDER_SPEC

    spec = validate_spec({**RENDER_SPEC.model_dump(mode="json", by_alias=True, exclude_none=True),
                          "triggerPhrase": text, "validationNegativePrompt": text})
    return RunContext(name="t", namespace="team-a", uid="uid-1", spec=spec,
                      profile=ctx().profile, store=StoreLocation("http://s3.local:8333", "iclora", f"runs/{text}"),
                      store_secret="t-store", labels={})


@pytest.mark.parametrize("render", [render_preflight_job, lambda c: render_training_job(c, suspend=False)],
                         ids=["preflight", "training"])
def test_every_literal_env_value_and_arg_is_escaped(render):
    """The whole kind: every literal env value, arg and command word the operator renders reaches the
    process unchanged through the kubelet's expansion (spec, store URIs, settings, names)."""
    from iclora_dev.localcluster.podrunner import expand

    text = "a $(HOME) b $$ c $(ICLORA_SPEC) d $"
    c = _user_strings_ctx(text)
    job = render(c)
    container = container_of(job)
    seen: dict[str, str] = {}
    for var in container["env"]:
        if "value" in var:
            # The kubelet expands each value with the variables defined before it.
            seen[var["name"]] = expand(var["value"], dict(seen))
    spec = json.loads(seen["ICLORA_SPEC"])
    assert spec["triggerPhrase"] == spec["validationNegativePrompt"] == text
    assert json.loads(container["env"][0]["value"].replace("$$", "$"))["triggerPhrase"] == text
    args = [expand(a, seen) for a in container["args"]]
    assert any(a.endswith(f"runs/{text}") for a in args), args
    assert [expand(a, seen) for a in container["command"]] == ["iclora"]
    assert not any("valueFrom" in v and "value" in v for v in container["env"])


def test_pods_run_as_the_profiles_uid_or_the_platforms():
    """OpenShift (issue 24.5): its restricted SCC assigns a uid from the namespace's range and refuses a
    fixed one; `runAsUser: null` leaves the uid to the platform (the image runs under any uid)."""
    for job in (render_preflight_job(ctx()), render_training_job(ctx(), suspend=False)):
        security = pod_of(job)["securityContext"]
        assert (security["runAsUser"], security["runAsGroup"], security["fsGroup"]) == (1000, 1000, 1000)
    openshift = ctx(run_as_user=None)
    for job in (render_preflight_job(openshift), render_training_job(openshift, suspend=False)):
        security = pod_of(job)["securityContext"]
        assert security["runAsNonRoot"] is True
        assert not {"runAsUser", "runAsGroup", "fsGroup"} & set(security)
    from pydantic import ValidationError

    from iclora_api.profile import profile_spec_from_object

    assert profile_spec_from_object({"spec": {"runAsUser": 1000680000}}).run_as_user == 1000680000
    with pytest.raises(ValidationError, match=r"runAsUser|run_as_user"):
        profile_spec_from_object({"spec": {"runAsUser": 0}})


def test_rank_network_policy_opens_the_peers_and_nothing_else():
    from iclora_operator.render import render_rank_network_policy

    ingress = render_rank_network_policy(ctx(nodes=2))
    ranks = {"matchLabels": {"iclora.dev/training-uid": "uid-1", "app.kubernetes.io/component": "training"}}
    assert ingress["spec"] == {"podSelector": ranks, "policyTypes": ["Ingress"],
                               "ingress": [{"from": [{"podSelector": ranks}]}]}
    assert ingress["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    both = render_rank_network_policy(ctx(nodes=2, rank_network_policy="IngressAndEgress"))
    assert both["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert both["spec"]["egress"] == [{"to": [{"podSelector": ranks}]}]
    assert render_rank_network_policy(ctx(nodes=2, rank_network_policy="None")) is None
    # The selector matches the training pods' labels (and not the preflight's).
    train_labels = render_training_job(ctx(nodes=2), suspend=False)["spec"]["template"]["metadata"]["labels"]
    preflight_labels = render_preflight_job(ctx(nodes=2))["spec"]["template"]["metadata"]["labels"]
    assert ranks["matchLabels"].items() <= train_labels.items()
    assert not ranks["matchLabels"].items() <= preflight_labels.items()


def test_trainer_env_and_extended_resources_reach_the_training_container_only():
    from pydantic import ValidationError

    run = ctx(nodes=2, trainer_env=[{"name": "NCCL_SOCKET_IFNAME", "value": "^lo,docker"},
                                    {"name": "FI_PROVIDER", "value": "efa"}],
              trainer_extra_resources={"vpc.amazonaws.com/efa": "4"})
    train = render_training_job(run, suspend=False)
    env = env_of(train)
    assert env["NCCL_SOCKET_IFNAME"]["value"] == "^lo,docker" and env["FI_PROVIDER"]["value"] == "efa"
    resources = container_of(train)["resources"]
    assert resources["limits"]["vpc.amazonaws.com/efa"] == "4" and resources["requests"]["vpc.amazonaws.com/efa"] == "4"
    preflight = render_preflight_job(run)
    assert "FI_PROVIDER" not in env_of(preflight)
    assert "vpc.amazonaws.com/efa" not in container_of(preflight)["resources"]["limits"]
    for reserved in ("MASTER_ADDR", "ICLORA_SPEC", "AWS_SECRET_ACCESS_KEY", "NVIDIA_VISIBLE_DEVICES"):
        with pytest.raises(ValidationError, match=f"{reserved} is set by the operator"):
            ctx(trainer_env=[{"name": reserved, "value": "x"}])
    for bad in ("cpu", "nvidia.com", "kubernetes.io/foo", "/x"):
        with pytest.raises(ValidationError, match="not an extended resource name"):
            ctx(trainer_extra_resources={bad: "1"})
