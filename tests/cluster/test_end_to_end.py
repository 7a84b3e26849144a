"""The whole lifecycle with real processes: the operator, the CPU preflight and the tiny-model
trainer run by the local pod runner, artifacts in a real S3 store."""

from __future__ import annotations

import base64

import pytest

from iclora_api.contract import Result
from iclora_dev.demo.run import demo_manifest
from iclora_dev.localcluster.nodes import LOCAL_RUNNER_LABEL, LOCAL_RUNNER_TOLERATION
from iclora_dev.pytest_plugin import wait_for
from iclora_dev.synthetic import write_dataset_zip

pytestmark = [pytest.mark.cluster, pytest.mark.trainer, pytest.mark.slow]


def _local_profile(profile_factory, tiny) -> str:
    """The weights on a node folder (hostPath) mounted at /models and named by file:// URIs (issue 21)."""
    placement = {"nodeSelector": {LOCAL_RUNNER_LABEL: "true"}, "tolerations": [LOCAL_RUNNER_TOLERATION]}
    return profile_factory(
        device="cpu", zeroStage=0, gpusPerNode=1, checkpointInterval=50,
        model={"checkpoint": f"file:///models/{tiny.model_path.name}",
               "textEncoder": f"file:///models/{tiny.text_encoder_path.name}"},
        volumes=[{"name": "weights", "hostPath": {"path": str(tiny.model_path.parent), "type": "Directory"}}],
        volumeMounts=[{"name": "weights", "mountPath": "/models", "readOnly": True}],
        preflightNodeSelector=placement["nodeSelector"], preflightTolerations=placement["tolerations"],
        **placement,
    )


@pytest.fixture
def dataset_secret(trainings, s3_store):
    trainings.core.create_namespaced_secret(trainings.namespace, {
        "metadata": {"name": "demo-dataset"},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in {
            "AWS_ACCESS_KEY_ID": s3_store.access_key, "AWS_SECRET_ACCESS_KEY": s3_store.secret_key,
            "AWS_ENDPOINT_URL": s3_store.endpoint}.items()},
    })


def test_real_preflight_and_trainer_bill_and_store_artifacts(trainings, operator_factory, profile_factory, tiny,
                                                             s3_store, dataset_secret, tmp_path):
    zip_path = write_dataset_zip(tmp_path / "d.zip", triplets=3)
    key = f"datasets/{trainings.namespace}.zip"
    s3_store.client().fput_object(s3_store.bucket, key, str(zip_path))
    manifest = demo_manifest(f"s3://{s3_store.bucket}/{key}", None, steps=100)
    spec = {**manifest["spec"], "profileRef": {"name": _local_profile(profile_factory, tiny)}}
    operator_factory([trainings.namespace])
    obj = trainings.create("e2e", spec)
    seen: list[str] = []

    def finished() -> bool:
        status = trainings.get("e2e").get("status") or {}
        phase = status.get("phase")
        if phase and (not seen or seen[-1] != phase):
            seen.append(phase)
        return phase in ("Succeeded", "Failed")

    wait_for(finished, timeout=600, interval=0.5, what="e2e finished")
    status = trainings.get("e2e")["status"]
    assert status["phase"] == "Succeeded", status.get("failure")
    assert seen[0] in ("Pending", "Preflight") and "Training" in seen, seen
    assert status["billingUnits"] == 100
    assert status["progress"]["step"] == 100
    assert status["dataset"]["usable"] == 3
    arts = status["artifacts"]
    assert set(arts) >= {"loraFile", "configFile", "debugDataset"}
    client = s3_store.client()
    for uri in arts.values():
        bucket, _, obj_key = uri.removeprefix("s3://").partition("/")
        assert client.stat_object(bucket, obj_key).size > 0
    assert arts["loraFile"].endswith(".safetensors")
    assert len(trainings.events("e2e", "Billed")) == 1
    assert obj["metadata"]["uid"] in arts["loraFile"]
    # The weights were read in place from the hostPath volume: nothing fetched.
    result = Result.model_validate_json(client.get_object(
        s3_store.bucket, f"runs/{trainings.namespace}/e2e/{obj['metadata']['uid']}/result.json").read())
    assert (result.model.downloaded_bytes, result.model.reused_bytes) == (0, 0)
    assert result.model.local_bytes == tiny.model_path.stat().st_size + tiny.text_encoder_path.stat().st_size


def test_real_preflight_rejects_a_bad_dataset_before_any_gpu_job(trainings, operator_factory, profile_factory,
                                                                 tiny, s3_store, dataset_secret, tmp_path):
    import zipfile

    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("sample01_end.mp4", b"not really a video")
        zf.writestr("sample01_mask.png", b"nor an image")
    key = f"datasets/{trainings.namespace}-bad.zip"
    s3_store.client().fput_object(s3_store.bucket, key, str(bad))
    manifest = demo_manifest(f"s3://{s3_store.bucket}/{key}", None, steps=100)
    spec = {**manifest["spec"], "profileRef": {"name": _local_profile(profile_factory, tiny)}}
    operator_factory([trainings.namespace])
    obj = trainings.create("bad", spec)
    wait_for(lambda: trainings.phase("bad") == "Failed", timeout=180, what="Failed")
    status = trainings.get("bad")["status"]
    assert status["failure"]["reason"] == "DatasetInvalid"
    assert "sample01" in status["failure"]["message"]
    assert status["billingUnits"] == 0
    assert [j.metadata.name for j in trainings.jobs(obj["metadata"]["uid"])] == ["bad-preflight"]
