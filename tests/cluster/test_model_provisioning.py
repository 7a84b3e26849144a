"""The base model on a cluster (issue 21): s3:// sources through a node cache, a missing source.

Real processes end to end: the operator, the preflight and the tiny-model trainer run by the local
pod runner, the weights in the session's S3 store. The node cache is a hostPath folder of this
machine (the local runner's node is this machine), so two pods on the node share it. How much each
run downloaded is measured by the trainer itself: result.json's `model` (bytes downloaded, bytes
found complete in the cache), and the cache's own markers (one per source and version).
"""

from __future__ import annotations

import base64
import uuid

import pytest

from iclora_api.contract import Result
from iclora_dev.demo.run import demo_manifest
from iclora_dev.localcluster.nodes import LOCAL_RUNNER_LABEL, LOCAL_RUNNER_TOLERATION
from iclora_dev.pytest_plugin import wait_for
from iclora_dev.synthetic import write_dataset_zip

pytestmark = [pytest.mark.cluster, pytest.mark.trainer, pytest.mark.slow]

PLACEMENT = {"nodeSelector": {LOCAL_RUNNER_LABEL: "true"}, "tolerations": [LOCAL_RUNNER_TOLERATION],
             "preflightNodeSelector": {LOCAL_RUNNER_LABEL: "true"},
             "preflightTolerations": [LOCAL_RUNNER_TOLERATION]}


def _secret(core, namespace: str, name: str, data: dict[str, str]) -> None:
    core.create_namespaced_secret(namespace, {
        "metadata": {"name": name},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}})


@pytest.fixture
def uploaded(trainings, s3_store, tiny, tmp_path):
    """The tiny weights and a 2-triplet dataset in the store, and the dataset's credentials Secret."""
    client = s3_store.client()
    models = f"models/{trainings.namespace}"
    client.fput_object(s3_store.bucket, f"{models}/ltx-2.3/{tiny.model_path.name}", str(tiny.model_path))
    client.fput_object(s3_store.bucket, f"{models}/text-encoder/{tiny.text_encoder_path.name}",
                       str(tiny.text_encoder_path))
    dataset = f"datasets/{trainings.namespace}.zip"
    client.fput_object(s3_store.bucket, dataset, str(write_dataset_zip(tmp_path / "d.zip", triplets=2)))
    creds = {"AWS_ACCESS_KEY_ID": s3_store.access_key, "AWS_SECRET_ACCESS_KEY": s3_store.secret_key,
             "AWS_ENDPOINT_URL": s3_store.endpoint}
    _secret(trainings.core, trainings.namespace, "demo-dataset", creds)
    base = f"s3://{s3_store.bucket}/{models}"
    return {
        "checkpoint": f"{base}/ltx-2.3/{tiny.model_path.name}",
        # A folder: every object under the prefix (the tiny encoder is its only file).
        "textEncoder": f"{base}/text-encoder/",
        "dataset": f"s3://{s3_store.bucket}/{dataset}",
        "bytes": tiny.model_path.stat().st_size + tiny.text_encoder_path.stat().st_size,
        "creds": creds,
    }


def _result(s3_store, namespace: str, name: str, uid: str) -> Result:
    raw = s3_store.client().get_object(s3_store.bucket, f"runs/{namespace}/{name}/{uid}/result.json").read()
    return Result.model_validate_json(raw)


def _finished(trainings, *names: str) -> bool:
    return all(trainings.phase(n) in ("Succeeded", "Failed") for n in names)


def test_s3_model_cold_cache_two_at_once_download_once_then_warm_downloads_nothing(
        trainings, operator_factory, profile_factory, s3_store, uploaded, tmp_path):
    core = trainings.core
    # The model store's credentials: a Secret in the operator's namespace, copied per run.
    operator_ns = f"ops-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"metadata": {"name": operator_ns}})
    try:
        _secret(core, operator_ns, "model-store", uploaded["creds"])
        node_cache = tmp_path / "node-cache"  # the hostPath: created by the runner (DirectoryOrCreate)
        profile = profile_factory(
            device="cpu", zeroStage=0, gpusPerNode=0, checkpointInterval=100, **PLACEMENT,
            model={"checkpoint": uploaded["checkpoint"], "textEncoder": uploaded["textEncoder"],
                   "credentialsSecretRef": {"name": "model-store"}, "cacheVolume": "model-cache"},
            volumes=[{"name": "model-cache", "hostPath": {"path": str(node_cache), "type": "DirectoryOrCreate"}}],
        )
        operator_factory([trainings.namespace], operator_namespace=operator_ns)
        spec = {**demo_manifest(uploaded["dataset"], None, steps=100)["spec"], "debugDataset": False,
                "profileRef": {"name": profile}}
        # Cold cache, two trainings started together on the one local node.
        uids = {n: trainings.create(n, spec)["metadata"]["uid"] for n in ("cold-a", "cold-b")}
        wait_for(lambda: _finished(trainings, "cold-a", "cold-b"), timeout=600, interval=1, what="cold runs")
        for name in uids:
            status = trainings.get(name)["status"]
            assert status["phase"] == "Succeeded", status.get("failure")
        cold = [_result(s3_store, trainings.namespace, n, uid).model for n, uid in uids.items()]
        # Downloaded once between them: one fetched everything, the other found it in the cache.
        assert sum(m.downloaded_bytes for m in cold) == uploaded["bytes"]
        assert sorted(m.reused_bytes for m in cold) == [0, uploaded["bytes"]]
        # The cache is the node's folder (the runner maps the pod's mount path to the hostPath itself).
        assert all(m.cache == str(node_cache) for m in cold)
        secret = core.read_namespaced_secret("cold-a-model-credentials", trainings.namespace)
        assert secret.metadata.owner_references[0].uid == uids["cold-a"]
        # Warm cache: a third training downloads nothing.
        warm_uid = trainings.create("warm", spec)["metadata"]["uid"]
        wait_for(lambda: _finished(trainings, "warm"), timeout=400, interval=1, what="warm run")
        assert trainings.phase("warm") == "Succeeded", trainings.get("warm")["status"].get("failure")
        warm = _result(s3_store, trainings.namespace, "warm", warm_uid).model
        assert (warm.downloaded_bytes, warm.reused_bytes) == (0, uploaded["bytes"])
        # The node's cache holds each source once (one marker per source and version).
        assert len(list(node_cache.glob("*/*/.complete"))) == 2
        assert not list(node_cache.rglob("*.partial"))
    finally:
        core.delete_namespace(operator_ns)


def test_a_missing_model_source_fails_as_profile_invalid_naming_it(
        trainings, operator_factory, profile_factory, s3_store, uploaded):
    missing = uploaded["checkpoint"].replace("ltx-2.3/", "ltx-2.3-typo/")
    # No credentials Secret: s3:// sources come from the platform's store.
    profile = profile_factory(device="cpu", zeroStage=0, gpusPerNode=0, **PLACEMENT,
                              model={"checkpoint": missing, "textEncoder": uploaded["textEncoder"]})
    operator_factory([trainings.namespace])
    spec = {**demo_manifest(uploaded["dataset"], None, steps=100)["spec"], "debugDataset": False,
            "profileRef": {"name": profile}}
    trainings.create("missing", spec)
    wait_for(lambda: _finished(trainings, "missing"), timeout=300, interval=1, what="missing finished")
    status = trainings.get("missing")["status"]
    assert status["phase"] == "Failed"
    assert status["failure"]["reason"] == "ProfileInvalid"
    assert missing in status["failure"]["message"]
    assert status["billingUnits"] == 0
