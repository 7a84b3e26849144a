"""Kueue (out of cluster) admits suspended GPU Jobs within the ClusterQueue's GPU quota."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kubernetes import client

from iclora_dev.localcluster import kueue, nodes
from iclora_dev.localcluster.cluster import ClusterConfig, LocalCluster
from iclora_dev.pytest_plugin import wait_for, wait_for_default_service_account

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


@pytest.fixture(scope="module")
def kueue_cluster(tmp_path_factory) -> Iterator[LocalCluster]:
    config = ClusterConfig(
        gpu_nodes=1, cpu_nodes=0, local_runner=False, s3=False, kueue=True, kueue_gpu_quota=1
    )
    cluster = LocalCluster(tmp_path_factory.mktemp("kueue-cluster"), config)
    with cluster:
        yield cluster


def _job(name: str, annotations: dict[str, str]) -> dict:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": {kueue.QUEUE_LABEL: kueue.LOCAL_QUEUE}},
        "spec": {
            "suspend": True,
            "backoffLimit": 0,
            "template": {
                "metadata": {"annotations": annotations},
                "spec": {
                    "restartPolicy": "Never",
                    "tolerations": [nodes.GPU_TOLERATION],
                    "containers": [
                        {
                            "name": "train",
                            "image": "ignored",
                            "resources": {"limits": {nodes.GPU_RESOURCE: "1"}},
                        }
                    ],
                },
            },
        },
    }


def test_gpu_quota_admits_one_job_at_a_time(kueue_cluster):
    api = kueue_cluster.api_client()
    batch = client.BatchV1Api(api)
    ns = kueue.TEAM_NAMESPACES[0]
    wait_for_default_service_account(api, ns)
    batch.create_namespaced_job(ns, _job("first", {"iclora.dev/fake-hold": "true"}))
    wait_for(lambda: batch.read_namespaced_job("first", ns).spec.suspend is False, what="first admitted")
    batch.create_namespaced_job(ns, _job("second", {}))

    def complete(name: str) -> bool:
        conds = batch.read_namespaced_job(name, ns).status.conditions or []
        return any(c.type == "Complete" and c.status == "True" for c in conds)

    # The first Job holds the only GPU of the quota: the second stays suspended.
    with pytest.raises(pytest.fail.Exception):
        wait_for(lambda: batch.read_namespaced_job("second", ns).spec.suspend is False, timeout=3)
    batch.delete_namespaced_job("first", ns, propagation_policy="Background")
    wait_for(lambda: complete("second"), timeout=60, what="second Job admitted and Complete")
    pods = client.CoreV1Api(api).list_namespaced_pod(ns, label_selector="job-name=second").items
    assert pods[0].spec.node_selector == {nodes.GPU_PRODUCT_LABEL: nodes.GPU_PRODUCT}
    assert pods[0].spec.node_name in kueue_cluster.gpu_node_names
