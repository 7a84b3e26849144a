"""Kueue, run out of cluster against the local API server (optional: ``ClusterConfig(kueue=True)``).

Kueue's webhooks are served on 127.0.0.1 but not registered with the API server (it could
not reach a Service anyway), so Jobs must be created suspended with the
``kueue.x-k8s.io/queue-name`` label, which the operator does anyway.

Kueue v0.17.0 reads its metrics serving certificate from the fixed path
``/etc/kueue/metrics/certs/tls.{crt,key}`` whenever its internal cert management is off
(on, it wants a webhook Service, Secret and webhook configurations to inject CA bundles
into). We write a certificate there when the folder is writable (root, as on CI here);
otherwise starting Kueue fails with a message saying so.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

from iclora_dev.localcluster import binaries, nodes

if TYPE_CHECKING:
    from iclora_dev.localcluster.cluster import LocalCluster

METRICS_CERT_DIR = Path("/etc/kueue/metrics/certs")
NAMESPACE = "kueue-system"
CLUSTER_QUEUE = "iclora"
GPU_FLAVOR = "gpu-h100"
DEFAULT_FLAVOR = "default"
LOCAL_QUEUE = "iclora"
TEAM_NAMESPACES = ("team-a", "team-b")
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"


class KueueUnavailable(RuntimeError):
    pass


def crd_dir() -> Path:
    return binaries.module_dir("sigs.k8s.io/kueue", binaries.KUEUE_VERSION) / "config/components/crd/bases"


def prepare(cluster: LocalCluster, health_port: int, metrics_port: int, webhook_port: int) -> list[str]:
    """Apply Kueue's CRDs, write its config and certificates; return its command line."""
    kueue_bin = binaries.find_binary("kueue")
    if kueue_bin is None:
        raise binaries.BinariesMissing(
            "kueue is not built: run `iclora local-cluster build --components kueue`"
        )
    _metrics_certs(cluster)
    kubectl = [str(cluster.kubectl), "--kubeconfig", str(cluster.kubeconfig)]
    # Server-side apply: the CRDs are too large for the last-applied annotation. Kueue
    # exits at once if its kinds are not served yet, hence the wait for Established.
    subprocess.run(
        [*kubectl, "apply", "--server-side", "-f", str(crd_dir())],
        check=True,
        capture_output=True,
        timeout=120,
    )
    subprocess.run(
        [*kubectl, "wait", "--for=condition=Established", "--timeout=60s", "-f", str(crd_dir())],
        check=True,
        capture_output=True,
        timeout=90,
    )
    work = cluster.state_dir / "kueue"
    certs = work / "certs"
    certs.mkdir(parents=True, exist_ok=True)
    pki = cluster.state_dir / "pki"
    shutil.copy(pki / "apiserver.crt", certs / "tls.crt")
    shutil.copy(pki / "apiserver.key", certs / "tls.key")
    config = {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2",
        "kind": "Configuration",
        "namespace": NAMESPACE,
        "health": {"healthProbeBindAddress": f"127.0.0.1:{health_port}"},
        "metrics": {"bindAddress": f"127.0.0.1:{metrics_port}"},
        "webhook": {"host": "127.0.0.1", "port": webhook_port, "certDir": str(certs)},
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {"enable": False},
        "integrations": {"frameworks": ["batch/job"]},
    }
    (work / "config.yaml").write_text(json.dumps(config, indent=2))
    return [
        str(kueue_bin),
        f"--config={work / 'config.yaml'}",
        f"--kubeconfig={cluster.kubeconfig}",
        "--feature-gates=VisibilityOnDemand=false",
    ]


def _metrics_certs(cluster: LocalCluster) -> None:
    if (METRICS_CERT_DIR / "tls.crt").exists() and (METRICS_CERT_DIR / "tls.key").exists():
        return
    try:
        METRICS_CERT_DIR.mkdir(parents=True, exist_ok=True)
        shutil.copy(cluster.state_dir / "pki" / "apiserver.crt", METRICS_CERT_DIR / "tls.crt")
        shutil.copy(cluster.state_dir / "pki" / "apiserver.key", METRICS_CERT_DIR / "tls.key")
    except OSError as exc:
        raise KueueUnavailable(
            f"Kueue {binaries.KUEUE_VERSION} needs a metrics certificate at {METRICS_CERT_DIR} "
            f"and that folder is not writable ({exc}); create it once as root"
        ) from exc


def create_queues(api_client: Any, gpu_quota: int) -> None:
    """Flavors, one ClusterQueue with GPU quota, and a LocalQueue in each team namespace."""
    from kubernetes import client

    objs = client.CustomObjectsApi(api_client)
    core = client.CoreV1Api(api_client)
    group, version = "kueue.x-k8s.io", "v1beta2"
    objs.create_cluster_custom_object(
        group,
        version,
        "resourceflavors",
        {
            "apiVersion": f"{group}/{version}",
            "kind": "ResourceFlavor",
            "metadata": {"name": DEFAULT_FLAVOR},
        },
    )
    objs.create_cluster_custom_object(
        group,
        version,
        "resourceflavors",
        {
            "apiVersion": f"{group}/{version}",
            "kind": "ResourceFlavor",
            "metadata": {"name": GPU_FLAVOR},
            "spec": {
                "nodeLabels": {nodes.GPU_PRODUCT_LABEL: nodes.GPU_PRODUCT},
                "tolerations": [{"key": nodes.GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}],
            },
        },
    )

    def quotas(gpus: int) -> list[dict[str, Any]]:
        return [
            {"name": "cpu", "nominalQuota": "1000"},
            {"name": "memory", "nominalQuota": "10Ti"},
            {"name": nodes.GPU_RESOURCE, "nominalQuota": str(gpus)},
            # The pods request their scratch disk: Kueue admits no Workload asking for a resource
            # its ClusterQueue does not cover.
            {"name": nodes.EPHEMERAL_STORAGE, "nominalQuota": "1Pi"},
        ]

    objs.create_cluster_custom_object(
        group,
        version,
        "clusterqueues",
        {
            "apiVersion": f"{group}/{version}",
            "kind": "ClusterQueue",
            "metadata": {"name": CLUSTER_QUEUE},
            "spec": {
                "namespaceSelector": {},
                "resourceGroups": [
                    {
                        "coveredResources": ["cpu", "memory", nodes.GPU_RESOURCE, nodes.EPHEMERAL_STORAGE],
                        # CPU-only Jobs take the first flavor; GPU Jobs (0 GPUs there) get the GPU one.
                        "flavors": [
                            {"name": DEFAULT_FLAVOR, "resources": quotas(0)},
                            {"name": GPU_FLAVOR, "resources": quotas(gpu_quota)},
                        ],
                    }
                ],
            },
        },
    )
    for ns in TEAM_NAMESPACES:
        core.create_namespace({"metadata": {"name": ns}})
        create_local_queue(api_client, ns)


def create_local_queue(api_client: Any, namespace: str, name: str = LOCAL_QUEUE) -> None:
    from kubernetes import client

    client.CustomObjectsApi(api_client).create_namespaced_custom_object(
        "kueue.x-k8s.io",
        "v1beta2",
        namespace,
        "localqueues",
        {
            "apiVersion": "kueue.x-k8s.io/v1beta2",
            "kind": "LocalQueue",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"clusterQueue": CLUSTER_QUEUE},
        },
    )
