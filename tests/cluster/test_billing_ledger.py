"""The billing ledger on the real control plane and the local S3 (pods played by kwok, as in
test_lifecycle_kwok.py): a billed run keeps its record after the training is deleted, a crash
between the ledger write and the status write leaves one record and one billed status, and
`iclora billing report` sums it.
"""

from __future__ import annotations

import json
import threading

import pytest

from iclora_dev.pytest_plugin import wait_for
from tests.helpers import SPEC, play_trainer

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def _records(s3, uid: str) -> list[str]:
    return [o.object_name for o in s3.client().list_objects(s3.bucket, prefix="ledger/", recursive=True)
            if o.object_name.endswith(f"/{uid}.json")]


def _read(s3, key: str) -> dict:
    response = s3.client().get_object(s3.bucket, key)
    try:
        return json.loads(response.read())
    finally:
        response.close()
        response.release_conn()


def _report(run_iclora, s3, namespace: str) -> dict:
    env = {"ICLORA_STORE_ENDPOINT": s3.endpoint, "ICLORA_STORE_BUCKET": s3.bucket,
           "ICLORA_STORE_ACCESS_KEY": s3.access_key, "ICLORA_STORE_SECRET_KEY": s3.secret_key}
    result = run_iclora("billing", "report", "--namespace", namespace, "--json", env=env, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def test_the_ledger_record_outlives_the_training(trainings, operator_factory, profile_factory, s3_store,
                                                 run_iclora):
    profile = profile_factory(podAnnotations={"iclora.dev/fake-delay": "2s"})
    operator_factory([trainings.namespace])
    obj = trainings.create("ok", {**SPEC, "profileRef": {"name": profile}})
    uid = obj["metadata"]["uid"]
    arts = play_trainer(s3_store, trainings.namespace, "ok", uid)
    wait_for(lambda: trainings.phase("ok") in ("Succeeded", "Failed"), timeout=90, what="ok finished")
    status = trainings.get("ok")["status"]
    assert status["phase"] == "Succeeded" and status["billingUnits"] == 150
    trainings.delete("ok")
    wait_for(lambda: _gone(trainings, "ok"), timeout=30, what="training deleted")
    [key] = _records(s3_store, uid)
    record = _read(s3_store, key)
    assert key == f"ledger/{status['completionTime'][:7]}/{uid}.json"
    assert record["uid"] == uid and record["namespace"] == trainings.namespace and record["name"] == "ok"
    assert record["units"] == 150 and record["steps"] == SPEC["numberOfSteps"]
    assert record["startTime"] == status["startTime"] and record["completionTime"] == status["completionTime"]
    assert record["artifacts"] == arts
    report = _report(run_iclora, s3_store, trainings.namespace)
    assert report["namespaces"] == [{"namespace": trainings.namespace, "trainings": 1, "units": 150}]
    assert report["totalUnits"] == 150


def _gone(trainings, name: str) -> bool:
    from kubernetes.client.exceptions import ApiException

    try:
        trainings.get(name)
    except ApiException as exc:
        return exc.status == 404
    return False


def test_a_crash_between_ledger_and_status_writes_one_record_and_one_billed_status(
        trainings, operator_factory, profile_factory, s3_store, run_iclora, monkeypatch):
    from iclora_operator.adapters.kube import Kube

    crashed = threading.Event()
    real_patch = Kube.patch_training_status

    def crash_on_billing(self, namespace, name, patch):
        if patch.get("billingUnits"):
            crashed.set()
            raise RuntimeError("simulated crash between the ledger write and the status write")
        return real_patch(self, namespace, name, patch)

    monkeypatch.setattr(Kube, "patch_training_status", crash_on_billing)
    profile = profile_factory(podAnnotations={"iclora.dev/fake-delay": "2s"})
    op = operator_factory([trainings.namespace])
    obj = trainings.create("crash", {**SPEC, "profileRef": {"name": profile}})
    uid = obj["metadata"]["uid"]
    play_trainer(s3_store, trainings.namespace, "crash", uid)
    wait_for(crashed.is_set, timeout=90, what="the billing status write")
    # The ledger was written first; the status does not bill yet. Let the operator retry once more.
    assert len(_records(s3_store, uid)) == 1
    assert not (trainings.get("crash").get("status") or {}).get("billingUnits")
    op.stop()
    monkeypatch.setattr(Kube, "patch_training_status", real_patch)
    op.start()  # a restarted operator: decides the success again
    wait_for(lambda: trainings.phase("crash") == "Succeeded", timeout=60, what="phase Succeeded")
    status = trainings.get("crash")["status"]
    assert status["billingUnits"] == 150
    assert len(_records(s3_store, uid)) == 1
    report = _report(run_iclora, s3_store, trainings.namespace)
    assert report["namespaces"] == [{"namespace": trainings.namespace, "trainings": 1, "units": 150}]
