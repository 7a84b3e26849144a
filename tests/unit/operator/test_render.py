"""Invariants of the rendered Jobs and Services (crate-operator style, no cluster)."""

from __future__ import annotations

import json

import pytest

from iclora_api.contract import USER_ERROR_EXIT_CODES
from iclora_operator.render import (
    KUEUE_QUEUE_LABEL,
    LABEL_UID,
    RunContext,
    render_headless_service,
    render_preflight_job,
    render_store_secret,
    render_training_job,
)
from tests.helpers import container_of, env_of, pod_of
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
    assert res["requests"] == res["limits"]
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


def test_store_secret_is_owned():
    secret = render_store_secret(ctx(), "AK", "SK")
    assert secret["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert secret["stringData"]["AWS_ENDPOINT_URL"] == "http://s3.local:8333"


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
    from iclora_api.trainer_settings import TrainerSettings

    job = render_training_job(ctx(zero_stage=1, model_path="/m/ltx.safetensors"), suspend=False)
    settings = TrainerSettings.model_validate_json(env_of(job)["ICLORA_TRAINER_SETTINGS"]["value"])
    assert settings.zero_stage == 1
    assert settings.model_path == "/m/ltx.safetensors"
    assert env_of(job)["ICLORA_WORK_DIR"]["value"] == "/scratch/work"


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
