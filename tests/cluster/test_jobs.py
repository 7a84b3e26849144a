"""kwok GPU nodes run Jobs through the real scheduler, Job controller and garbage collector."""

from __future__ import annotations

import pytest
from kubernetes import client

from iclora_dev.localcluster import nodes
from iclora_dev.pytest_plugin import wait_for

pytestmark = pytest.mark.cluster


def _gpu_job(
    name: str, annotations: dict[str, str] | None = None, pod_failure_policy: dict | None = None
) -> dict:
    spec: dict = {
        "backoffLimit": 0,
        "template": {
            "metadata": {"annotations": annotations or {}},
            "spec": {
                "restartPolicy": "Never",
                "tolerations": [nodes.GPU_TOLERATION],
                "nodeSelector": {nodes.GPU_PRODUCT_LABEL: nodes.GPU_PRODUCT},
                "containers": [
                    {
                        "name": "train",
                        "image": "example.invalid/trainer:1",
                        "resources": {"limits": {nodes.GPU_RESOURCE: "1"}},
                    }
                ],
            },
        },
    }
    if pod_failure_policy:
        spec["podFailurePolicy"] = pod_failure_policy
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name}, "spec": spec}


def _job_condition(batch: client.BatchV1Api, name: str, ns: str, kind: str) -> client.V1JobCondition | None:
    job = batch.read_namespaced_job(name, ns)
    for cond in job.status.conditions or []:
        if cond.type == kind and cond.status == "True":
            return cond
    return None


def _pods(core: client.CoreV1Api, ns: str, job: str) -> list[client.V1Pod]:
    return core.list_namespaced_pod(ns, label_selector=f"job-name={job}").items


def test_gpu_job_succeeds_on_kwok_gpu_node(k8s_api, k8s_namespace, local_cluster):
    batch, core = client.BatchV1Api(k8s_api), client.CoreV1Api(k8s_api)
    batch.create_namespaced_job(k8s_namespace, _gpu_job("ok", {"iclora.dev/fake-delay": "500ms"}))
    wait_for(lambda: _job_condition(batch, "ok", k8s_namespace, "Complete"), what="Job Complete")
    [pod] = _pods(core, k8s_namespace, "ok")
    assert pod.spec.node_name in local_cluster.gpu_node_names
    assert pod.status.phase == "Succeeded"
    assert pod.status.container_statuses[0].state.terminated.exit_code == 0


def test_gpu_job_fails_with_exit_code_and_message(k8s_api, k8s_namespace):
    batch, core = client.BatchV1Api(k8s_api), client.CoreV1Api(k8s_api)
    policy = {"rules": [{"action": "FailJob", "onExitCodes": {"operator": "In", "values": [12]}}]}
    annotations = {
        "iclora.dev/fake-exit-code": "12",
        "iclora.dev/fake-message": '{"reason":"DatasetInvalid"}',
    }
    batch.create_namespaced_job(k8s_namespace, _gpu_job("bad", annotations, policy))
    cond = wait_for(lambda: _job_condition(batch, "bad", k8s_namespace, "Failed"), what="Job Failed")
    assert cond.reason == "PodFailurePolicy"
    [pod] = _pods(core, k8s_namespace, "bad")
    assert pod.status.phase == "Failed"
    terminated = pod.status.container_statuses[0].state.terminated
    assert terminated.exit_code == 12
    assert terminated.message == '{"reason":"DatasetInvalid"}'


def test_deleting_owner_collects_children(k8s_api, k8s_namespace):
    batch, core = client.BatchV1Api(k8s_api), client.CoreV1Api(k8s_api)
    job = batch.create_namespaced_job(k8s_namespace, _gpu_job("owner", {"iclora.dev/fake-hold": "true"}))
    owner = {"apiVersion": "batch/v1", "kind": "Job", "name": "owner", "uid": job.metadata.uid}
    core.create_namespaced_config_map(
        k8s_namespace, {"metadata": {"name": "child", "ownerReferences": [owner]}, "data": {"a": "b"}}
    )
    wait_for(
        lambda: [p for p in _pods(core, k8s_namespace, "owner") if p.status.phase == "Running"],
        what="held pod Running",
    )
    batch.delete_namespaced_job("owner", k8s_namespace, propagation_policy="Background")

    def gone() -> bool:
        cms = [c.metadata.name for c in core.list_namespaced_config_map(k8s_namespace).items]
        return "child" not in cms and not _pods(core, k8s_namespace, "owner")

    wait_for(gone, what="ConfigMap and pods garbage-collected")
