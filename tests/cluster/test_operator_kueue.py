"""With Kueue: training Jobs are created suspended with the queue label and admitted by Kueue."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from iclora_api.crdgen import render_crd, render_profile_crd
from iclora_dev.localcluster import kueue, nodes
from iclora_dev.localcluster.cluster import ClusterConfig, LocalCluster
from iclora_dev.pytest_plugin import wait_for, wait_for_default_service_account
from iclora_operator.adapters.kube import install_crds
from tests.helpers import SPEC, Trainings, play_trainer

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


@pytest.fixture(scope="module")
def kueue_cluster(tmp_path_factory) -> Iterator[LocalCluster]:
    config = ClusterConfig(gpu_nodes=1, cpu_nodes=1, local_runner=False, s3=False, kueue=True, kueue_gpu_quota=1)
    with LocalCluster(tmp_path_factory.mktemp("kueue-operator"), config) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def kueue_operator(kueue_cluster, s3_store) -> Iterator[Trainings]:
    """The operator (Kueue mode) watching the first team namespace, and that namespace's trainings."""
    from kubernetes import client

    from iclora_operator.run import run_operator
    from iclora_operator.settings import OperatorSettings, StoreSettings

    api = kueue_cluster.api_client()
    install_crds(api, [render_crd(), render_profile_crd()])
    ns = kueue.TEAM_NAMESPACES[0]
    wait_for_default_service_account(api, ns)
    for name, delay in (("default", "8s"), ("slow", "30s")):
        client.CustomObjectsApi(api).create_cluster_custom_object("iclora.dev", "v1alpha1", "trainingprofiles", {
            "apiVersion": "iclora.dev/v1alpha1", "kind": "TrainingProfile", "metadata": {"name": name},
            "spec": {"gpusPerNode": 1, "tolerations": [nodes.GPU_TOLERATION],
                     "podAnnotations": {"iclora.dev/fake-delay": delay},
                     "preflightResources": {"cpu": "100m", "memory": "128Mi"},
                     "trainerResources": {"cpu": "100m", "memory": "128Mi"}},
        })
    store = StoreSettings(endpoint=s3_store.endpoint, bucket=s3_store.bucket, access_key=s3_store.access_key,
                          secret_key=s3_store.secret_key)
    settings = OperatorSettings(reconcile_interval_seconds=1.0, report_poll_seconds=1.0, kueue_enabled=True,
                                store=store, namespaces=[ns])
    stop, ready = threading.Event(), threading.Event()
    thread = threading.Thread(target=run_operator, args=(settings,), daemon=True,
                              kwargs={"namespaces": [ns], "stop_flag": stop, "ready_flag": ready,
                                      "metrics_port": 0, "kubeconfig": str(kueue_cluster.kubeconfig)})
    thread.start()
    try:
        assert ready.wait(60)
        yield Trainings(api, ns)
    finally:
        stop.set()
        thread.join(60)


LABELS = {kueue.QUEUE_LABEL: kueue.LOCAL_QUEUE}


def test_kueue_admits_one_training_at_a_time(kueue_operator, s3_store):
    trainings, ns = kueue_operator, kueue_operator.namespace
    first = trainings.create("first", SPEC, labels=LABELS)
    play_trainer(s3_store, ns, "first", first["metadata"]["uid"])
    wait_for(lambda: trainings.phase("first") == "Training", timeout=60, what="first admitted")
    second = trainings.create("second", SPEC, labels=LABELS)
    play_trainer(s3_store, ns, "second", second["metadata"]["uid"])
    wait_for(lambda: trainings.phase("second") == "Queued", timeout=60, what="second queued")
    job = trainings.batch.read_namespaced_job("second-train", ns)
    assert job.spec.suspend is True
    assert job.metadata.labels[kueue.QUEUE_LABEL] == kueue.LOCAL_QUEUE
    conds = {c["type"]: c["reason"] for c in trainings.get("second")["status"]["conditions"]}
    assert conds["Admitted"] == "WaitingForQuota"
    wait_for(lambda: trainings.phase("first") == "Succeeded", timeout=90, what="first done")
    wait_for(lambda: trainings.phase("second") == "Training", timeout=60, what="second admitted")
    wait_for(lambda: trainings.phase("second") == "Succeeded", timeout=90, what="second done")
    assert trainings.get("second")["status"]["billingUnits"] == 150


def test_user_suspend_holds_against_kueue_and_resume_requeues(kueue_operator, s3_store):
    """Kueue owns Job.suspend: spec.suspend deactivates the Workload, so Kueue does not undo it."""
    trainings, ns = kueue_operator, kueue_operator.namespace
    custom = trainings.api
    created = trainings.create("held", {**SPEC, "profileRef": {"name": "slow"}}, labels=LABELS)
    play_trainer(s3_store, ns, "held", created["metadata"]["uid"])
    wait_for(lambda: trainings.phase("held") == "Training", timeout=90, what="held admitted")
    trainings.patch_spec("held", {"suspend": True})
    wait_for(lambda: trainings.phase("held") == "Suspended", timeout=30, what="held suspended")
    wait_for(lambda: trainings.batch.read_namespaced_job("held-train", ns).spec.suspend, timeout=30,
             what="Kueue suspends the Job")

    def workload() -> dict:
        job_uid = trainings.batch.read_namespaced_job("held-train", ns).metadata.uid
        items = custom.list_namespaced_custom_object("kueue.x-k8s.io", "v1beta2", ns, "workloads")["items"]
        (wl,) = [w for w in items if any(o["uid"] == job_uid for o in w["metadata"]["ownerReferences"])]
        return wl

    assert workload()["spec"]["active"] is False
    time.sleep(5)  # Kueue had time to readmit it, if it were going to
    assert trainings.batch.read_namespaced_job("held-train", ns).spec.suspend is True
    assert trainings.phase("held") == "Suspended"
    trainings.patch_spec("held", {"suspend": False})
    wait_for(lambda: workload()["spec"].get("active", True) is True, timeout=30, what="workload reactivated")
    wait_for(lambda: trainings.phase("held") == "Training", timeout=60, what="held readmitted")
    assert trainings.batch.read_namespaced_job("held-train", ns).spec.suspend is False
    wait_for(lambda: trainings.phase("held") == "Succeeded", timeout=120, what="held done")
    assert trainings.get("held")["status"]["billingUnits"] == 150


def test_the_longest_name_is_admitted_with_a_workload_name_that_is_a_label_value(kueue_operator, s3_store):
    """Kueue names the Workload job-<Job name>-<hash>; MultiKueue and ShortWorkloadNames use it as a label."""
    from iclora_operator.render import ChildNames

    trainings, ns = kueue_operator, kueue_operator.namespace
    name = ("kueue.long-name-" * 16)[:253]
    created = trainings.create(name, SPEC, labels=LABELS)
    play_trainer(s3_store, ns, name, created["metadata"]["uid"])
    wait_for(lambda: trainings.phase(name) == "Succeeded", timeout=120, what="admitted and done")
    job_uid = trainings.batch.read_namespaced_job(ChildNames.of(name).training, ns).metadata.uid
    items = trainings.api.list_namespaced_custom_object("kueue.x-k8s.io", "v1beta2", ns, "workloads")["items"]
    (wl,) = [w for w in items if any(o["uid"] == job_uid for o in w["metadata"]["ownerReferences"])]
    assert wl["metadata"]["name"].startswith(f"job-{ChildNames.of(name).training}-")
    assert len(wl["metadata"]["name"]) <= 63
