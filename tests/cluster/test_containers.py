"""Pods as real containers: a kubelet + containerd node running the product's trainer image.

The cluster here has one node, ``containers-0`` (node.py): the operator's preflight and training
pods run from the trainer image built by images.py, with the pod spec exactly as rendered (uid
1000, read-only root, no service-account token, emptyDir scratch, memory-backed /dev/shm, limits
enforced by cgroups), networked by the CNI bridge and named by CoreDNS.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from iclora_api.v1alpha1 import API_GROUP, API_VERSION
from iclora_dev.demo.run import demo_manifest
from iclora_dev.localcluster import binaries, images, node
from iclora_dev.localcluster.cluster import ClusterConfig, LocalCluster
from iclora_dev.pytest_plugin import _session_dir, wait_for
from iclora_dev.synthetic import write_dataset_zip
from tests.helpers import Trainings

# The first test also pays for the images (a cold trainer build is several minutes on 2 cores).
pytestmark = [pytest.mark.cluster, pytest.mark.trainer, pytest.mark.slow, pytest.mark.containers,
              pytest.mark.timeout(2400)]

# Enforced on a real node (the process runner ignores them): enough for torch + the tiny model.
PREFLIGHT_RESOURCES = {"cpu": "500m", "memory": "1536Mi"}
TRAINER_RESOURCES = {"cpu": "500m", "memory": "3Gi"}


@pytest.fixture(scope="module")
def container_cluster() -> Iterator[LocalCluster]:
    try:
        binaries.require_binaries((*binaries.CORE_BINARIES, "kubelet", "containerd", "runc", "coredns", "crictl"))
        node.check_host()
    except (binaries.BinariesMissing, node.NodeUnavailable) as exc:
        pytest.fail(str(exc), pytrace=False)
    config = ClusterConfig(gpu_nodes=0, cpu_nodes=0, local_runner=True, local_runner_gpus=2,
                           node_runtime="containers", die_with_parent=True)
    cluster = LocalCluster(_session_dir("containers"), config)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def api(container_cluster: LocalCluster) -> Any:
    return container_cluster.api_client()


@pytest.fixture
def namespace(api: Any) -> Iterator[str]:
    from iclora_dev.pytest_plugin import wait_for_default_service_account

    name = f"c-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": name}})
    wait_for_default_service_account(api, name)
    yield name
    core.delete_namespace(name)


def _crictl(cluster: LocalCluster, *args: str) -> str:
    slot = node.Slot(cluster.node_slot)
    crictl = binaries.require_binaries(("crictl",))["crictl"]
    return subprocess.run([str(crictl), "--runtime-endpoint", f"unix://{slot.socket}", *args],
                          capture_output=True, text=True, check=True, timeout=30).stdout


def _terminated(core: client.CoreV1Api, name: str, namespace: str) -> Any:
    pod = core.read_namespaced_pod(name, namespace)
    return pod if pod.status.phase in ("Succeeded", "Failed") else None


PROBE = r"""
import json, os, socket, subprocess, sys
out = {"uid": os.getuid(), "gid": os.getgid(), "groups": sorted(os.getgroups())}
def can_write(path):
    try:
        with open(path, "w") as fh:
            fh.write("x")
        return True
    except OSError as exc:
        return exc.strerror
out["root"] = can_write("/probe")
out["venv"] = can_write("/opt/venv/probe")
out["scratch"] = can_write(os.path.join(os.environ["TMPDIR"], "probe"))
out["shm"] = [l.split()[2] for l in open("/proc/mounts") if l.split()[1] == "/dev/shm"]
out["token"] = os.path.exists("/var/run/secrets/kubernetes.io/serviceaccount/token")
import time
for attempt in range(60):  # the pod's own record appears once the kubelet reported its IP
    try:
        out["peer"] = socket.gethostbyname(os.environ["PEER"])
        break
    except OSError:
        time.sleep(0.5)
v1, v2 = "/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory.max"
out["memory_limit"] = open(v1 if os.path.exists(v1) else v2).read().strip()
import torch, deepspeed, iclora_trainer  # the image's stack imports on a read-only root
out["torch"] = torch.__version__
open("/dev/termination-log", "w").write(json.dumps(out))
"""


def test_pods_run_as_containers_of_the_trainer_image_with_the_rendered_security(
        api, namespace, container_cluster):
    """The operator's pod shape on a real runtime: uid/gid 1000, read-only root and image, writable
    scratch, tmpfs /dev/shm, no API token, memory limit enforced, and cluster DNS for a peer behind
    a headless Service (what an Indexed Job's rank 0 address is)."""
    from iclora_operator.render import _container_security

    core = client.CoreV1Api(api)
    core.create_namespaced_service(namespace, {
        "metadata": {"name": "ranks"},
        "spec": {"clusterIP": "None", "selector": {"app": "probe"}, "publishNotReadyAddresses": True},
    })
    spec = {
        "restartPolicy": "Never", "automountServiceAccountToken": False, "enableServiceLinks": False,
        "hostname": "probe-0", "subdomain": "ranks",
        "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{
            "name": "main", "image": images.TRAINER_IMAGE, "imagePullPolicy": "IfNotPresent",
            "command": ["python", "-c", PROBE],
            "env": [{"name": "PEER", "value": f"probe-0.ranks.{namespace}.svc.cluster.local"},
                    {"name": "TMPDIR", "value": "/scratch"}],
            "resources": {"limits": {"cpu": "500m", "memory": "1Gi"}, "requests": {"cpu": "500m", "memory": "1Gi"}},
            "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}, {"name": "dshm", "mountPath": "/dev/shm"}],
            "securityContext": _container_security(),
            "terminationMessagePolicy": "FallbackToLogsOnError",
        }],
        "volumes": [{"name": "scratch", "emptyDir": {}}, {"name": "dshm", "emptyDir": {"medium": "Memory"}}],
    }
    core.create_namespaced_pod(namespace, {"metadata": {"name": "probe", "labels": {"app": "probe"}}, "spec": spec})
    pod = wait_for(lambda: _terminated(core, "probe", namespace), timeout=180, what="probe pod finished")
    state = pod.status.container_statuses[0]
    assert pod.status.phase == "Succeeded", state.state.terminated.message
    assert pod.spec.node_name == node.NODE_NAME
    assert state.container_id.startswith("containerd://")
    probe = json.loads(state.state.terminated.message)
    assert (probe["uid"], probe["gid"]) == (1000, 1000)
    assert probe["root"] == probe["venv"] == "Read-only file system"
    assert probe["scratch"] is True
    assert probe["shm"] == ["tmpfs"]
    assert probe["token"] is False
    assert probe["peer"] == pod.status.pod_ip
    assert int(probe["memory_limit"]) == 1024**3
    # The container is the runtime's: crictl lists it; kubectl logs reach the kubelet.
    listed = json.loads(_crictl(container_cluster, "ps", "-a", "-o", "json"))["containers"]
    assert any(c["id"] == state.container_id.removeprefix("containerd://") for c in listed)


def test_a_write_outside_the_volumes_fails_the_container(api, namespace):
    core = client.CoreV1Api(api)
    core.create_namespaced_pod(namespace, {"metadata": {"name": "writer"}, "spec": {
        "restartPolicy": "Never", "automountServiceAccountToken": False,
        "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000},
        "containers": [{"name": "main", "image": images.TRAINER_IMAGE, "command": ["python", "-c",
                        "open('/opt/venv/cache.bin', 'w').write('x')"],
                        "securityContext": {"readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False},
                        "terminationMessagePolicy": "FallbackToLogsOnError"}]}})
    pod = wait_for(lambda: _terminated(core, "writer", namespace), timeout=120, what="writer finished")
    terminated = pod.status.container_statuses[0].state.terminated
    assert pod.status.phase == "Failed" and terminated.exit_code == 1
    assert "Read-only file system" in terminated.message


def test_the_operator_image_runs_as_its_own_user_on_a_read_only_root(api, namespace):
    """operator/Dockerfile's image (built on the Debian base): its entrypoint prints the CRD it
    installs, as uid 10001, with jemalloc preloaded, from a read-only root."""
    core = client.CoreV1Api(api)
    core.create_namespaced_pod(namespace, {"metadata": {"name": "op"}, "spec": {
        "restartPolicy": "Never", "automountServiceAccountToken": False,
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{"name": "main", "image": images.OPERATOR_IMAGE, "args": ["crd"],
                        "securityContext": {"readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False,
                                            "capabilities": {"drop": ["ALL"]}},
                        "resources": {"limits": {"cpu": "500m", "memory": "256Mi"}}}]}})
    pod = wait_for(lambda: _terminated(core, "op", namespace), timeout=120, what="operator image finished")
    log = core.read_namespaced_pod_log("op", namespace)
    assert pod.status.phase == "Succeeded", log[-2000:]
    assert "kind: CustomResourceDefinition" in log and "MaskedICLoraTraining" in log


@pytest.fixture
def operator(container_cluster: LocalCluster, api: Any, namespace: str) -> Iterator[None]:
    from iclora_api.crdgen import render_crd, render_profile_crd
    from iclora_operator.adapters.kube import install_crds
    from iclora_operator.run import run_operator
    from iclora_operator.settings import OperatorSettings, StoreSettings

    install_crds(api, [render_crd(), render_profile_crd()])
    s3 = container_cluster.s3
    settings = OperatorSettings(
        reconcile_interval_seconds=1.0, report_poll_seconds=1.0, allow_private_dataset_hosts=True,
        namespaces=[namespace],
        store=StoreSettings(endpoint=s3.endpoint, bucket=s3.bucket, prefix="runs", access_key=s3.access_key,
                            secret_key=s3.secret_key))
    stop, ready = threading.Event(), threading.Event()
    thread = threading.Thread(target=run_operator, args=(settings,), daemon=True, kwargs={
        "namespaces": [namespace], "stop_flag": stop, "ready_flag": ready, "metrics_port": 0,
        "kubeconfig": str(container_cluster.kubeconfig)})
    thread.start()
    assert ready.wait(60), "operator did not start"
    yield
    stop.set()
    thread.join(60)


@pytest.fixture
def start_training(container_cluster, api, namespace, operator, tmp_path_factory) -> Callable[..., tuple[str, str]]:
    """Apply a training of the tiny model on the real node; returns (name, uid). The weights are
    fetched from S3 into a hostPath node cache owned by the pods' uid, the dataset from S3."""
    from iclora_dev.tiny_model import create_tiny_checkpoint

    tmp = tmp_path_factory.mktemp("training")
    s3 = container_cluster.s3
    store = s3.client()
    tiny = create_tiny_checkpoint(tmp / "tiny")
    store.fput_object(s3.bucket, f"models/tiny/{tiny.model_path.name}", str(tiny.model_path))
    store.fput_object(s3.bucket, f"models/tiny-te/{tiny.text_encoder_path.name}", str(tiny.text_encoder_path))
    cache = container_cluster.state_dir / f"node-model-cache-{namespace}"
    cache.mkdir()
    os.chown(cache, 1000, 1000)
    core = client.CoreV1Api(api)
    core.create_namespaced_secret(namespace, {"metadata": {"name": "demo-dataset"}, "data": {
        k: base64.b64encode(v.encode()).decode() for k, v in {
            "AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key,
            "AWS_ENDPOINT_URL": s3.endpoint}.items()}})
    key = f"datasets/{namespace}.zip"
    store.fput_object(s3.bucket, key, str(write_dataset_zip(tmp / "d.zip", triplets=3)))

    def start(name: str, steps: int, **profile: Any) -> tuple[str, str]:
        profile_name = f"p-{uuid.uuid4().hex[:6]}"
        client.CustomObjectsApi(api).create_cluster_custom_object(API_GROUP, API_VERSION, "trainingprofiles", {
            "apiVersion": f"{API_GROUP}/{API_VERSION}", "kind": "TrainingProfile",
            "metadata": {"name": profile_name},
            "spec": {
                "image": images.TRAINER_IMAGE, "gpusPerNode": 1, "nodes": 1, "device": "cpu", "zeroStage": 0,
                "model": {"checkpoint": f"s3://{s3.bucket}/models/tiny/{tiny.model_path.name}",
                          "textEncoder": f"s3://{s3.bucket}/models/tiny-te/", "cacheVolume": "model-cache"},
                "volumes": [{"name": "model-cache", "hostPath": {"path": str(cache), "type": "Directory"}}],
                "checkpointInterval": 50, "preflightResources": PREFLIGHT_RESOURCES,
                "trainerResources": TRAINER_RESOURCES, "shmSize": "512Mi", "scratchSize": "4Gi",
                **profile,
            }})
        manifest = demo_manifest(f"s3://{s3.bucket}/{key}", None, steps=steps)
        created = Trainings(api, namespace).create(name, {**manifest["spec"], "profileRef": {"name": profile_name}})
        return name, created["metadata"]["uid"]

    return start


def _finished(trainings: Trainings, name: str) -> dict[str, Any] | None:
    status = trainings.get(name).get("status") or {}
    return status if status.get("phase") in ("Succeeded", "Failed") else None


def _pod_logs(core: client.CoreV1Api, namespace: str) -> dict[str, str]:
    """The pods' logs through the kubelet (what `kubectl logs` shows)."""
    out = {}
    for pod in core.list_namespaced_pod(namespace).items:
        try:
            out[pod.metadata.name] = core.read_namespaced_pod_log(pod.metadata.name, namespace, tail_lines=40)
        except client.ApiException as exc:
            out[pod.metadata.name] = f"<no log: {exc.status}>"
    return out


def test_two_node_training_runs_in_containers_and_stores_its_artifacts(
        container_cluster, api, namespace, start_training):
    """The operator's real Jobs on the real node: the CPU preflight, then a 2-pod training whose
    ranks meet at `<job>-0.<service>` through cluster DNS; artifacts in the store."""
    name, _ = start_training("c2", steps=100, nodes=2)
    trainings, core = Trainings(api, namespace), client.CoreV1Api(api)
    status = wait_for(lambda: _finished(trainings, name), timeout=900, interval=1.0, what="training finished")
    assert status["phase"] == "Succeeded", (status.get("failure"), _pod_logs(core, namespace))
    assert status["billingUnits"] == 100
    pods = core.list_namespaced_pod(namespace).items
    assert {p.spec.node_name for p in pods} == {node.NODE_NAME}
    assert all(p.status.container_statuses[0].container_id.startswith("containerd://") for p in pods)
    assert len([p for p in pods if "train" in p.metadata.name]) == 2
    store = container_cluster.s3.client()
    for uri in status["artifacts"].values():
        bucket, _, obj_key = uri.removeprefix("s3://").partition("/")
        assert store.stat_object(bucket, obj_key).size > 0
    cache = container_cluster.state_dir / f"node-model-cache-{namespace}"
    assert any(cache.rglob("*.safetensors")), "the weights were not cached on the node"


def test_suspend_resume_and_delete_with_real_signals(container_cluster, api, namespace, start_training):
    """The kubelet's SIGTERM reaches the trainer as PID 1 of its container: a suspend between
    checkpoints stops the pod well inside its grace period with the step checkpointed, the resumed
    pod continues from it; deleting the training removes its pods and their containers."""
    import time

    from tests.helpers import completed_checkpoints, run_progress_step

    steps, grace = 300, 60
    name, uid = start_training("sr", steps=steps, checkpointInterval=100000, terminationGracePeriodSeconds=grace)
    trainings, core = Trainings(api, namespace), client.CoreV1Api(api)
    s3 = container_cluster.s3
    prefix = f"runs/{namespace}/{name}/{uid}"
    selector = f"iclora.dev/training-uid={uid},app.kubernetes.io/component=training"
    wait_for(lambda: run_progress_step(s3, prefix) >= 2, timeout=600, interval=0.5, what="training past step 2")
    seen = run_progress_step(s3, prefix)
    t0 = time.monotonic()
    trainings.patch_spec(name, {"suspend": True})
    wait_for(lambda: (trainings.get(name).get("status") or {}).get("phase") == "Suspended"
             and not core.list_namespaced_pod(namespace, label_selector=selector).items,
             timeout=grace + 60, interval=0.5, what="suspended, training pod gone")
    stopped_in = time.monotonic() - t0
    assert stopped_in < grace, f"the pod took {stopped_in:.0f} s: SIGTERM was not handled (killed at the grace)"
    stopped = completed_checkpoints(s3, prefix)
    assert len(stopped) == 1 and seen <= stopped[0] < steps, (seen, stopped)
    trainings.patch_spec(name, {"suspend": False})
    status = wait_for(lambda: _finished(trainings, name), timeout=900, interval=1.0, what="resumed and finished")
    assert status["phase"] == "Succeeded", (status.get("failure"), _pod_logs(core, namespace))
    assert status["progress"]["step"] == steps
    ids = {c.container_id.removeprefix("containerd://") for p in core.list_namespaced_pod(namespace).items
           for c in p.status.container_statuses or []}
    trainings.delete(name)
    wait_for(lambda: not core.list_namespaced_pod(namespace).items, timeout=120, what="pods deleted")
    # The kubelet removes dead containers in the background (its GC, every minute).
    wait_for(lambda: not ids & {c["id"] for c in json.loads(_crictl(container_cluster, "ps", "-a", "-o", "json"))[
        "containers"]}, timeout=180, interval=2, what="the deleted training's containers removed from the node")


def test_down_leaves_no_container_bridge_cgroup_or_slot(tmp_path):
    """`iclora local-cluster up` (real node by default) then `down` from another process: the
    container, its shim, the bridge, the cgroups and the slot are gone."""
    import sys

    from kubernetes import config

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "iclora_api.cli", "local-cluster", *args],
                              capture_output=True, text=True, timeout=600, check=False)

    state_dir = tmp_path / "real"
    up = cli("up", "--state-dir", str(state_dir), "--gpu-nodes", "0", "--cpu-nodes", "0", "--no-s3")
    try:
        assert up.returncode == 0, up.stderr[-3000:]
        slot = node.slot_of(state_dir)
        assert slot is not None
        core = client.CoreV1Api(config.new_client_from_config(str(state_dir / "kubeconfig")))
        [item] = core.list_node().items
        assert item.status.node_info.container_runtime_version == f"containerd://{binaries.CONTAINERD_VERSION[1:]}"
        assert item.status.capacity["nvidia.com/gpu"] == "1"
        core.create_namespaced_pod("default", {"metadata": {"name": "sleeper"}, "spec": {
            "restartPolicy": "Never", "automountServiceAccountToken": False,
            "containers": [{"name": "main", "image": images.TRAINER_IMAGE, "command": ["sleep", SLEEP]}]}})
        running = wait_for(lambda: core.read_namespaced_pod("sleeper", "default").status.phase == "Running",
                           timeout=120, what="sleeper running")
        assert running
        bridge = subprocess.run(["ip", "link", "show", slot.bridge], capture_output=True, check=False)
        assert bridge.returncode == 0
        sleepers = [p for p in os.listdir("/proc") if p.isdigit() and _cmdline(p) == f"sleep {SLEEP}"]
        assert sleepers
        sandbox = json.loads(subprocess.run(
            [str(binaries.require_binaries(("crictl",))["crictl"]), "--runtime-endpoint", f"unix://{slot.socket}",
             "pods", "-o", "json"], capture_output=True, text=True, check=True).stdout)["items"][0]["id"]
    finally:
        down = cli("down", "--state-dir", str(state_dir))
    assert down.returncode == 0, down.stderr[-3000:]
    assert not [p for p in sleepers if _cmdline(p) == f"sleep {SLEEP}"]
    assert subprocess.run(["ip", "link", "show", slot.bridge], capture_output=True, check=False).returncode != 0
    assert not slot.run_dir.exists()
    assert node.slot_of(state_dir) is None
    # Every cgroup tree (v1 controllers and the unified v2 one) without the slot's root.
    mounts = [m.split() for m in Path("/proc/self/mounts").read_text().splitlines()]
    cgroup_trees = [m[1] for m in mounts if m[2] in ("cgroup", "cgroup2")]
    assert not [t for t in cgroup_trees if Path(t, slot.cgroup_root.lstrip("/")).exists()]
    # What CNI DEL removes: the pod's network namespace mount, masquerade rules, cached results.
    assert not [m for m in mounts if sandbox in m[1] or (m[2] == "nsfs" and str(slot.run_dir) in m[1])]
    nat = subprocess.run(["iptables", "-t", "nat", "-S"], capture_output=True, text=True, check=False).stdout
    assert f'iclora-{slot.index}' not in nat and sandbox not in nat
    assert not list(Path("/var/lib/cni/results").glob(f"*{sandbox}*"))
    assert not node.node_root(slot).exists()
    assert not slot.kubelet_dir.exists()


SLEEP = "600.4242"  # a command line no other process on the machine has


def _cmdline(pid: str) -> str:
    try:
        return open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""
