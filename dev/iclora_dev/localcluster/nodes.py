"""Node objects of the local cluster: kwok GPU and CPU pools, and the local-runner node."""

from __future__ import annotations

from typing import Any

KWOK_ANNOTATION = "kwok.x-k8s.io/node"
KWOK_ANNOTATION_VALUE = "fake"
POOL_LABEL = "iclora.dev/pool"
LOCAL_RUNNER_LABEL = "iclora.dev/local-runner"
# How the local node runs its pods: "containers" (kubelet + containerd, node.py) or "processes"
# (the pod runner, podrunner.py).
RUNTIME_LABEL = "iclora.dev/runtime"
GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
GPU_PRODUCT = "NVIDIA-H100-80GB-HBM3"
GPU_TAINT = {"key": GPU_RESOURCE, "value": "present", "effect": "NoSchedule"}
# Tolerations a pod needs for each pool (the GPU one is what GPU Jobs carry anyway).
GPU_TOLERATION = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
LOCAL_RUNNER_TAINT = {"key": LOCAL_RUNNER_LABEL, "value": "true", "effect": "NoSchedule"}
LOCAL_RUNNER_TOLERATION = {"key": LOCAL_RUNNER_LABEL, "operator": "Exists", "effect": "NoSchedule"}
# Disk for the pods' ephemeral-storage requests (the scratch emptyDir's size, 200Gi by default):
# the scheduler places no pod that requests it on a node without it. The local runner does not
# enforce it (its pods write to the host's disk), kwok pods write nothing.
EPHEMERAL_STORAGE = "ephemeral-storage"
NODE_EPHEMERAL_STORAGE = "64Ti"


def kwok_node(name: str, pool: str, gpus: int = 0, cpu: str = "32", memory: str = "256Gi") -> dict[str, Any]:
    labels = {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "type": "kwok",
        POOL_LABEL: pool,
    }
    resources = {"cpu": cpu, "memory": memory, "pods": "110", EPHEMERAL_STORAGE: NODE_EPHEMERAL_STORAGE}
    taints: list[dict[str, str]] = []
    if gpus:
        labels[GPU_PRODUCT_LABEL] = GPU_PRODUCT
        labels["nvidia.com/gpu.count"] = str(gpus)
        resources[GPU_RESOURCE] = str(gpus)
        taints.append(dict(GPU_TAINT))
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": labels,
            "annotations": {KWOK_ANNOTATION: KWOK_ANNOTATION_VALUE, "node.alpha.kubernetes.io/ttl": "0"},
        },
        "spec": {"taints": taints},
        "status": {"capacity": resources, "allocatable": dict(resources)},
    }


def local_runner_node(
    name: str, cpu: str, memory: str, gpus: int = 0, tainted: bool = False
) -> dict[str, Any]:
    """The node whose pods the local pod runner executes as processes (kwok leaves it alone)."""
    labels = {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        LOCAL_RUNNER_LABEL: "true",
        POOL_LABEL: "local",
    }
    resources = {"cpu": cpu, "memory": memory, "pods": "110", EPHEMERAL_STORAGE: NODE_EPHEMERAL_STORAGE}
    if gpus:
        labels[GPU_PRODUCT_LABEL] = GPU_PRODUCT
        resources[GPU_RESOURCE] = str(gpus)
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels},
        "spec": {"taints": [dict(LOCAL_RUNNER_TAINT)] if tainted else []},
        "status": {"capacity": resources, "allocatable": dict(resources)},
    }
