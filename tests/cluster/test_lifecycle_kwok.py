"""Operator lifecycle on the real control plane, pods played by kwok Stages.

The trainer's side of the contract (preflight.json, result.json, artifacts in
S3) is written by the test where a kwok pod stands in for the real process;
the end-to-end test with the real preflight and trainer is test_end_to_end.py.
"""

from __future__ import annotations

import json
import time

import pytest
from kubernetes.client.exceptions import ApiException

from iclora_api.contract import PreflightResult
from iclora_dev.pytest_plugin import wait_for
from tests.helpers import SPEC, play_trainer, put_json

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

def test_schema_and_cel_reject_at_apply(trainings, installed_crds):
    with pytest.raises(ApiException) as info:
        trainings.create("bad", {**SPEC, "rank": 12})
    assert info.value.status == 422
    assert "spec.rank" in info.value.body
    # CEL rules run once the schema is satisfied.
    with pytest.raises(ApiException) as info:
        trainings.create("bad", {**SPEC, "splitInputIntoScenes": True})
    assert info.value.status == 422
    assert "desync" in info.value.body
    trainings.create("ok", SPEC)
    with pytest.raises(ApiException) as info:
        trainings.patch_spec("ok", {"numberOfSteps": 200})
    assert info.value.status == 422
    assert "spec.numberOfSteps is immutable" in info.value.body
    trainings.patch_spec("ok", {"suspend": True})  # the one mutable field


def test_cel_downscale_rule_agrees_with_the_api_model(trainings, installed_crds):
    """The generated CEL rule and the pydantic validator accept exactly the same buckets."""
    from iclora_api.geometry import AspectRatio, Resolution
    from iclora_api.validation import SpecInvalid, validate_spec

    sample = {"videoUrl": "https://e.com/v.mp4", "maskUrl": "https://e.com/m.png",
              "referenceVideoUrl": "https://e.com/r.mp4"}
    cases = []
    for r in Resolution:
        for a in AspectRatio:
            cases.append({"resolution": r.value, "aspectRatio": a.value})
            cases.append({"validationResolution": r.value, "validationAspectRatio": a.value, "validation": [sample]})
    cases.append({"validationAspectRatio": "16:9", "validation": [sample]})  # default validation bucket: high
    cases.append({"aspectRatio": "9:16"})  # default training bucket: medium
    outcomes = []
    for i, fields in enumerate(cases):
        spec = {**SPEC, "referenceDownscaleFactor": 2, **fields}
        try:
            validate_spec(spec)
            model_accepts = True
        except SpecInvalid:
            model_accepts = False
        try:
            trainings.create(f"ds-{i}", spec)
            server_accepts = True
        except ApiException as exc:
            assert exc.status == 422 and "referenceDownscaleFactor" in exc.body
            server_accepts = False
        assert server_accepts == model_accepts, fields
        outcomes.append(server_accepts)
    assert outcomes.count(False) == 9 and outcomes.count(True) == len(cases) - 9


def test_invalid_spec_fails_with_reason_and_no_jobs(trainings, operator_factory, profile_factory):
    operator_factory([trainings.namespace], default_profile=profile_factory())
    # Passes the CRD pattern but not the API model (an s3 URL needs an object key).
    trainings.create("bad", {**SPEC, "trainingDataUrl": "s3://bucket"})
    wait_for(lambda: trainings.phase("bad") == "Failed", timeout=30, what="phase Failed")
    status = trainings.get("bad")["status"]
    assert status["failure"]["reason"] == "InvalidSpec"
    assert "spec.trainingDataUrl" in status["failure"]["message"]
    assert status["billingUnits"] == 0
    assert {c["type"]: c["status"] for c in status["conditions"]}["Stalled"] == "True"
    assert trainings.jobs() == []
    wait_for(lambda: trainings.events("bad", "InvalidSpec"), timeout=10, what="InvalidSpec event")


def test_bad_dataset_fails_in_preflight_and_never_asks_for_a_gpu(trainings, operator_factory, profile_factory):
    profile = profile_factory(podAnnotations={"iclora.dev/fake-exit-code": "13",
                                              "iclora.dev/fake-message": '{"reason": "NoUsableClips", '
                                                                         '"message": "sample01: too short"}'})
    operator_factory([trainings.namespace])
    obj = trainings.create("t", {**SPEC, "profileRef": {"name": profile}})
    wait_for(lambda: trainings.phase("t") == "Failed", timeout=60, what="phase Failed")
    status = trainings.get("t")["status"]
    assert status["failure"]["reason"] == "NoUsableClips"
    assert "too short" in status["failure"]["message"]
    assert status["billingUnits"] == 0
    jobs = trainings.jobs(obj["metadata"]["uid"])
    assert [j.metadata.name for j in jobs] == ["t-preflight"]


def test_missing_profile_is_a_clear_failure(trainings, operator_factory):
    operator_factory([trainings.namespace])
    trainings.create("t", {**SPEC, "profileRef": {"name": "no-such-profile"}})
    wait_for(lambda: trainings.phase("t") == "Failed", timeout=30, what="phase Failed")
    assert trainings.get("t")["status"]["failure"]["reason"] == "ProfileNotFound"


def _phases_until_done(trainings, name: str, timeout: float = 90) -> list[str]:
    seen: list[str] = []

    def done() -> bool:
        phase = trainings.phase(name)
        if phase and (not seen or seen[-1] != phase):
            seen.append(phase)
        return phase in ("Succeeded", "Failed")

    wait_for(done, timeout=timeout, interval=0.1, what=f"{name} finished")
    return seen


def test_success_path_bills_once_and_reports_artifacts(trainings, operator_factory, profile_factory, s3_store):
    from urllib.request import urlopen

    from iclora_dev.localcluster.ports import free_ports

    metrics_port, health_port = free_ports(2)
    profile = profile_factory(podAnnotations={"iclora.dev/fake-delay": "3s"})
    operator_factory([trainings.namespace], metrics_port=metrics_port,
                     liveness=f"http://127.0.0.1:{health_port}/healthz")
    obj = trainings.create("ok", {**SPEC, "profileRef": {"name": profile}, "numberOfFrames": 100})
    arts = play_trainer(s3_store, trainings.namespace, "ok", obj["metadata"]["uid"])
    phases = _phases_until_done(trainings, "ok")
    assert phases[-1] == "Succeeded", phases
    assert "Training" in phases
    status = trainings.get("ok")["status"]
    assert status["billingUnits"] == 150
    assert status["artifacts"] == arts
    assert status["effective"]["numberOfFrames"] == 97
    assert status["observedGeneration"] == obj["metadata"]["generation"]
    conds = {c["type"]: c["status"] for c in status["conditions"]}
    assert conds["Ready"] == "True"
    assert conds["Reconciling"] == "False"
    assert conds["Stalled"] == "False"
    jobs = {j.metadata.name: j for j in trainings.jobs(obj["metadata"]["uid"])}
    assert set(jobs) == {"ok-preflight", "ok-train"}
    train_pod = jobs["ok-train"].spec.template.spec
    assert train_pod.containers[0].resources.limits["nvidia.com/gpu"] == "1"
    assert train_pod.automount_service_account_token is False
    assert len(trainings.events("ok", "Billed")) == 1
    # The platform sees it too: liveness answers, metrics count the billed units and phases.
    assert urlopen(f"http://127.0.0.1:{health_port}/healthz", timeout=5).status == 200
    metrics = urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    assert f'iclora_billing_units_total{{namespace="{trainings.namespace}"}} 150.0' in metrics
    assert f'iclora_trainings{{namespace="{trainings.namespace}",phase="Succeeded"}} 1.0' in metrics
    assert 'iclora_reconciles_total{result="ok"}' in metrics


def test_operator_restart_mid_run_adopts_jobs_and_bills_once(trainings, operator_factory, profile_factory,
                                                              s3_store):
    profile = profile_factory(podAnnotations={"iclora.dev/fake-delay": "6s"})
    op = operator_factory([trainings.namespace])
    obj = trainings.create("r", {**SPEC, "profileRef": {"name": profile}})
    uid = obj["metadata"]["uid"]
    wait_for(lambda: trainings.phase("r") == "Training", timeout=60, what="phase Training")
    op.stop()
    play_trainer(s3_store, trainings.namespace, "r", uid)
    op.start()
    wait_for(lambda: trainings.phase("r") == "Succeeded", timeout=60, what="phase Succeeded")
    # Two more reconcile intervals must change nothing.
    before = trainings.get("r")["status"]
    time.sleep(2.5)
    assert trainings.get("r")["status"] == before
    assert sorted(j.metadata.name for j in trainings.jobs(uid)) == ["r-preflight", "r-train"]
    assert len(trainings.events("r", "Billed")) == 1
    assert before["billingUnits"] == 150


def test_concurrency_limit_queues_fifo(trainings, operator_factory, profile_factory, s3_store):
    profile = profile_factory(podAnnotations={"iclora.dev/fake-delay": "12s"})
    operator_factory([trainings.namespace], concurrency_per_namespace=1)
    spec = {**SPEC, "profileRef": {"name": profile}}
    first = trainings.create("first", spec)
    # Reports are in the store from the start: each preflight passes as soon as it is read.
    play_trainer(s3_store, trainings.namespace, "first", first["metadata"]["uid"])
    wait_for(lambda: trainings.phase("first") == "Training", timeout=60, what="first Training")
    second = trainings.create("second", spec)
    play_trainer(s3_store, trainings.namespace, "second", second["metadata"]["uid"])
    wait_for(lambda: trainings.phase("second") == "Queued", timeout=30, what="second Queued")
    assert "second-train" not in [j.metadata.name for j in trainings.jobs(second["metadata"]["uid"])]
    conds = {c["type"]: c["reason"] for c in trainings.get("second")["status"]["conditions"]}
    assert conds["Admitted"] == "WaitingForQuota"
    wait_for(lambda: trainings.phase("first") == "Succeeded", timeout=60, what="first Succeeded")
    wait_for(lambda: trainings.phase("second") == "Training", timeout=30, what="second runs")
    wait_for(lambda: trainings.phase("second") == "Succeeded", timeout=60, what="second Succeeded")


def test_suspend_and_resume(trainings, operator_factory, profile_factory, s3_store):
    profile = profile_factory(podAnnotations={"iclora.dev/fake-hold": "true"})
    operator_factory([trainings.namespace])
    obj = trainings.create("s", {**SPEC, "profileRef": {"name": profile}})
    uid = obj["metadata"]["uid"]
    # fake-hold keeps pods Running; the preflight's completion is played through its report.
    play_trainer(s3_store, trainings.namespace, "s", uid)
    wait_for(lambda: trainings.phase("s") in ("Preflight", "Training"), timeout=60, what="started")
    trainings.patch_spec("s", {"suspend": True})
    wait_for(lambda: trainings.phase("s") == "Suspended", timeout=60, what="Suspended")
    status = trainings.get("s")["status"]
    assert {c["type"]: c["status"] for c in status["conditions"]}["Suspended"] == "True"
    trainings.patch_spec("s", {"suspend": False})
    wait_for(lambda: trainings.phase("s") in ("Training", "Preflight"), timeout=60, what="resumed")


def test_job_deleted_by_someone_is_reported_not_recreated(trainings, operator_factory, profile_factory,
                                                         s3_store):
    profile = profile_factory(podAnnotations={"iclora.dev/fake-hold": "true"})
    operator_factory([trainings.namespace])
    obj = trainings.create("d", {**SPEC, "profileRef": {"name": profile}})
    # The preflight passes as soon as its report says so, even while its pod is still held. No
    # result.json: the trainer has not finished (with one, the run's outcome would be that).
    put_json(s3_store, f"runs/{trainings.namespace}/d/{obj['metadata']['uid']}/preflight.json",
             PreflightResult(ok=True, usable=2).model_dump(by_alias=True))
    wait_for(lambda: trainings.phase("d") == "Training", timeout=60, what="Training")
    trainings.batch.delete_namespaced_job("d-train", trainings.namespace, propagation_policy="Background")
    wait_for(lambda: trainings.phase("d") == "Failed", timeout=60, what="Failed")
    assert trainings.get("d")["status"]["failure"]["reason"] == "JobDeleted"
    time.sleep(2.5)  # a few reconcile intervals: the Job must not come back
    assert "d-train" not in [j.metadata.name for j in trainings.jobs(obj["metadata"]["uid"])]


def _delete_jobs(trainings, uid: str) -> None:
    """What the TTL controller does once a finished Job's ttlSecondsAfterFinished has passed."""
    for j in trainings.jobs(uid):
        trainings.batch.delete_namespaced_job(j.metadata.name, trainings.namespace, propagation_policy="Background")
    wait_for(lambda: trainings.jobs(uid) == [], timeout=30, what="Jobs gone")


def test_finished_jobs_deleted_after_their_ttl_keep_the_status(trainings, operator_factory, profile_factory,
                                                               s3_store):
    """Issue 23.8: finished Jobs carry the profile's ttlSecondsAfterFinished; once Kubernetes deletes
    them, a finished training keeps its status and nothing is recreated, and a run whose Jobs expired
    while the operator was away is decided from its reports (result.json), not re-run."""
    profile = profile_factory(podAnnotations={"iclora.dev/fake-delay": "3s"}, ttlSecondsAfterFinished=120)
    op = operator_factory([trainings.namespace])
    obj = trainings.create("ttl", {**SPEC, "profileRef": {"name": profile}})
    uid = obj["metadata"]["uid"]
    play_trainer(s3_store, trainings.namespace, "ttl", uid)
    wait_for(lambda: trainings.phase("ttl") == "Succeeded", timeout=90, what="Succeeded")
    assert {j.metadata.name: j.spec.ttl_seconds_after_finished for j in trainings.jobs(uid)} == {
        "ttl-preflight": 120, "ttl-train": 120}
    before = trainings.get("ttl")["status"]
    _delete_jobs(trainings, uid)
    time.sleep(2.5)  # a few reconcile intervals: nothing changes, nothing comes back
    assert trainings.get("ttl")["status"] == before
    assert trainings.jobs(uid) == []

    # The operator is down while the run ends and both its Jobs expire.
    obj = trainings.create("away", {**SPEC, "profileRef": {"name": profile}})
    uid = obj["metadata"]["uid"]
    play_trainer(s3_store, trainings.namespace, "away", uid)
    wait_for(lambda: trainings.phase("away") == "Training", timeout=60, what="Training")
    op.stop()

    def train_complete() -> bool:
        job = trainings.batch.read_namespaced_job("away-train", trainings.namespace)
        return any(c.type == "Complete" and c.status == "True" for c in job.status.conditions or [])

    wait_for(train_complete, timeout=60, what="away-train Complete")
    _delete_jobs(trainings, uid)
    op.start()
    wait_for(lambda: trainings.phase("away") == "Succeeded", timeout=60, what="Succeeded from result.json")
    status = trainings.get("away")["status"]
    assert status["billingUnits"] == 150 and status["artifacts"]["loraFile"].endswith("lora.safetensors")
    time.sleep(2.5)
    assert trainings.jobs(uid) == []  # neither the preflight nor the training ran again
    assert len(trainings.events("away", "Billed")) == 1


def _disrupt(trainings, job: str, reason: str, exit_code: int, message: str) -> str:
    """Fail the Job's running pod as the kubelet does when it evicts it (phase Failed, condition
    DisruptionTarget, the container terminated); the pod object stays, as after a kubelet eviction."""
    def running():
        pods = trainings.core.list_namespaced_pod(trainings.namespace, label_selector=f"job-name={job}").items
        return next((p for p in pods if p.status.phase == "Running" and not p.metadata.deletion_timestamp), None)

    pod = wait_for(running, timeout=60, what=f"a running pod of {job}")
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    trainings.core.patch_namespaced_pod_status(pod.metadata.name, trainings.namespace, {"status": {
        "phase": "Failed", "reason": "Evicted", "message": message,
        "conditions": [{"type": "DisruptionTarget", "status": "True", "reason": reason, "message": message,
                        "lastTransitionTime": now},
                       {"type": "Ready", "status": "False", "lastTransitionTime": now}],
        "containerStatuses": [{"name": "trainer", "state": {"running": None, "terminated": {
            "exitCode": exit_code, "reason": "Error", "startedAt": now, "finishedAt": now}}}],
    }})
    return pod.metadata.name


def test_too_many_disruptions_fail_the_training_instead_of_retrying_for_days(trainings, operator_factory,
                                                                            profile_factory, s3_store):
    """Issue 23.2: the Job retries evicted pods without counting them (DisruptionTarget); the operator
    counts those that lost their work and fails the training past the profile's maxDisruptions. A
    pod that exited 23 (it checkpointed on SIGTERM) does not count."""
    profile = profile_factory(podAnnotations={"iclora.dev/fake-hold": "true"}, maxDisruptions=1)
    operator_factory([trainings.namespace])
    obj = trainings.create("ev", {**SPEC, "profileRef": {"name": profile}})
    put_json(s3_store, f"runs/{trainings.namespace}/ev/{obj['metadata']['uid']}/preflight.json",
             PreflightResult(ok=True, usable=2).model_dump(by_alias=True))
    wait_for(lambda: trainings.phase("ev") == "Training", timeout=60, what="Training")
    full = 'Usage of EmptyDir volume "scratch" exceeds the limit "200Gi".'
    _disrupt(trainings, "ev-train", "TerminationByKubelet", 137, full)
    _disrupt(trainings, "ev-train", "PreemptionByScheduler", 23, "preempted by a higher-priority pod")
    # The Job replaced both without counting them; one disruption lost work: within maxDisruptions.
    time.sleep(3)  # a few reconcile intervals
    assert trainings.phase("ev") == "Training"
    last = _disrupt(trainings, "ev-train", "TerminationByKubelet", 137, full)
    wait_for(lambda: trainings.phase("ev") == "Failed", timeout=60, what="Failed")
    failure = trainings.get("ev")["status"]["failure"]
    assert failure["reason"] == "TooManyDisruptions"
    assert "disrupted 2 times" in failure["message"] and last in failure["message"]
    assert 'Usage of EmptyDir volume "scratch" exceeds the limit' in failure["message"]
    wait_for(lambda: "ev-train" not in [j.metadata.name for j in trainings.jobs(obj["metadata"]["uid"])],
             timeout=30, what="the training Job deleted")
    assert trainings.events("ev", "TooManyDisruptions")


def test_deleting_the_training_collects_its_children(trainings, operator_factory, profile_factory, k8s_api):
    from kubernetes import client

    profile = profile_factory(podAnnotations={"iclora.dev/fake-hold": "true"})
    operator = operator_factory([trainings.namespace])
    obj = trainings.create("g", {**SPEC, "profileRef": {"name": profile}})
    uid = obj["metadata"]["uid"]
    wait_for(lambda: trainings.jobs(uid), timeout=60, what="preflight Job")
    wait_for(lambda: trainings.phase("g") == "Preflight", timeout=30, what="phase Preflight")
    core = client.CoreV1Api(k8s_api)
    assert core.read_namespaced_secret("g-store", trainings.namespace).metadata.owner_references[0].uid == uid
    # No finalizer and no bookkeeping annotations: a GitOps prune or `kubectl delete` never
    # waits for the operator, and its metadata never drifts from what was applied.
    meta = trainings.get("g")["metadata"]
    assert not meta.get("finalizers")
    assert not [k for k in meta.get("annotations") or {} if k.startswith(("iclora.dev/", "kopf.zalando.org/"))]
    operator.stop()

    def training_gone() -> bool:
        try:
            trainings.get("g")
        except ApiException as exc:
            return exc.status == 404
        return False

    trainings.delete("g")
    wait_for(training_gone, timeout=30, what="training deleted while the operator is down")
    wait_for(lambda: not trainings.jobs(uid), timeout=60, what="Jobs collected")

    def secret_gone() -> bool:
        try:
            core.read_namespaced_secret("g-store", trainings.namespace)
        except ApiException as exc:
            return exc.status == 404
        return False

    wait_for(secret_gone, timeout=60, what="Secret collected")


def test_a_store_that_refuses_the_tenants_credentials_is_retried_with_one_warning(trainings, operator_factory,
                                                                                profile_factory, s3_store, k8s_api):
    from kubernetes import client

    profile = profile_factory(podAnnotations={"iclora.dev/fake-hold": "true"})
    client.CoreV1Api(k8s_api).create_namespaced_secret(trainings.namespace, {
        "metadata": {"name": "creds"},
        "stringData": {"AWS_ENDPOINT_URL": s3_store.endpoint, "AWS_ACCESS_KEY_ID": "wrong",
                       "AWS_SECRET_ACCESS_KEY": "wrong"}})
    operator_factory([trainings.namespace])
    output = {"url": f"s3://{s3_store.bucket}/tenant", "credentialsSecretRef": {"name": "creds"}}
    trainings.create("r", {**SPEC, "profileRef": {"name": profile}, "output": output})
    warnings = wait_for(lambda: trainings.events("r", "Retrying"), timeout=60, what="Retrying event")
    assert "object store unavailable" in warnings[0].message and warnings[0].type == "Warning"
    time.sleep(15)  # retries go on (every 10 s) ...
    assert len(trainings.events("r", "Retrying")) == 1  # ... with one Event, not one per retry
    assert trainings.phase("r") == "Preflight"  # not the user's fault: never failed for it


def test_the_finalizer_of_older_versions_is_removed_so_old_trainings_can_be_deleted(trainings, operator_factory,
                                                                                   profile_factory):
    from iclora_api.v1alpha1 import API_GROUP, API_VERSION, PLURAL

    profile = profile_factory(podAnnotations={"iclora.dev/fake-hold": "true"})
    # A training as an operator before 2026-11-30 left it: its finalizer on, status Preflight.
    trainings.api.create_namespaced_custom_object(API_GROUP, API_VERSION, trainings.namespace, PLURAL, {
        "apiVersion": f"{API_GROUP}/{API_VERSION}", "kind": "MaskedICLoraTraining",
        "metadata": {"name": "old", "finalizers": ["iclora.dev/finalizer"]},
        "spec": {**SPEC, "profileRef": {"name": profile}}})
    operator_factory([trainings.namespace])
    wait_for(lambda: not trainings.get("old")["metadata"].get("finalizers"), timeout=30, what="finalizer removed")
    wait_for(lambda: trainings.phase("old") == "Preflight", timeout=30, what="still reconciled")


def test_gitops_apply_twice_changes_nothing_and_spec_is_never_written(local_cluster, trainings, operator_factory,
                                                                      profile_factory, s3_store):
    import subprocess

    import yaml

    profile = profile_factory(podAnnotations={"iclora.dev/fake-delay": "1s"})
    operator_factory([trainings.namespace])
    spec = {**SPEC, "numberOfFrames": 90, "profileRef": {"name": profile}}
    manifest = yaml.safe_dump({"apiVersion": "iclora.dev/v1alpha1", "kind": "MaskedICLoraTraining",
                               "metadata": {"name": "git", "namespace": trainings.namespace}, "spec": spec})

    def apply() -> str:
        proc = subprocess.run([str(local_cluster.kubectl), "--kubeconfig", str(local_cluster.kubeconfig), "apply",
                               "--server-side", "--field-manager", "argocd", "-f", "-"],
                              input=manifest, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    apply()
    obj = trainings.get("git")
    play_trainer(s3_store, trainings.namespace, "git", obj["metadata"]["uid"])
    wait_for(lambda: trainings.phase("git") == "Succeeded", timeout=90, what="Succeeded")
    # The operator's last writes (billing, conditions) may trail the phase
    # on a loaded machine: compare against the object at rest.
    seen: list[str] = []

    def at_rest() -> bool:
        seen.append(trainings.get("git")["metadata"]["resourceVersion"])
        return len(seen) >= 4 and len(set(seen[-4:])) == 1

    wait_for(at_rest, timeout=60, interval=1.0, what="no more writes")
    before = seen[-1]
    apply()
    after = trainings.get("git")
    assert after["metadata"]["resourceVersion"] == before  # a no-op apply writes nothing
    assert after["metadata"]["generation"] == 1
    assert after["spec"] == spec  # the user's 90 frames, not the effective 89
    assert after["status"]["effective"]["numberOfFrames"] == 89
    assert after["status"]["observedGeneration"] == 1
    # Only our field manager writes status; nobody but the applier owns spec fields.
    owners = {m["manager"]: m for m in after["metadata"]["managedFields"]}
    spec_writers = [name for name, m in owners.items() if "f:spec" in json.dumps(m.get("fieldsV1", {}))]
    assert spec_writers == ["argocd"]
