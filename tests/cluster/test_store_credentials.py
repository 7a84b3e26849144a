"""Each run's store credentials reach its own prefix only: real STS sessions on the local SeaweedFS.

The operator's `StsIssuer` asks the store for a session limited by the run's inline policy
(`iclora_operator.access`); these tests use exactly those sessions, with the same minio clients
the trainer and the operator use, against the real store (no stand-in).
"""

from __future__ import annotations

import base64
import io
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest
from minio.error import S3Error

from iclora_api.contract import ExitCode, run_prefix
from iclora_api.objectstore import StoreCredentials, make_client
from iclora_operator.access import Session
from iclora_operator.adapters.objectstore import ObjectStore, ObjectStoreUnavailable, StsIssuer
from iclora_operator.ledger import billing_record, write_once
from iclora_operator.render import StoreLocation, render_store_secret, run_access
from iclora_trainer.dataset.fetch import FetchPolicy, fetch_dataset
from iclora_trainer.errors import DatasetDownloadError, failure
from tests.helpers import render_ctx

pytestmark = pytest.mark.cluster

LEDGER = "ledger"
MODEL = "models/ltx-2.3/ltx.safetensors"


def _run(s3_store, namespace: str, model: dict | None = None):
    """A run of tenant `namespace` writing to the platform store (what the operator renders)."""
    uid = str(uuid.uuid4())
    name = f"run-{uid[:6]}"
    ctx = render_ctx(**({"model": model} if model else {}))
    store = StoreLocation(s3_store.endpoint, s3_store.bucket, run_prefix("runs", namespace, name, uid))
    return replace(ctx, name=name, namespace=namespace, uid=uid, store=store, store_secret=f"{name}-store")


def _issuer(s3_store) -> StsIssuer:
    return StsIssuer(s3_store.credentials(), store_endpoint=s3_store.endpoint, duration_seconds=3600)


def _session(s3_store, ctx) -> Session:
    access = run_access(ctx)
    assert access is not None
    return _issuer(s3_store).issue(access, ctx.namespace, ctx.uid)


def _creds(session: Session) -> StoreCredentials:
    return StoreCredentials(session.endpoint, session.access_key, session.secret_key, session.region,
                            session_token=session.session_token)


def _code(call) -> str:
    with pytest.raises(S3Error) as err:
        call()
    return err.value.code


def _put(client, bucket: str, key: str, data: bytes = b"x") -> None:
    client.put_object(bucket, key, io.BytesIO(data), len(data))


def _get(client, bucket: str, key: str) -> bytes:
    response = client.get_object(bucket, key)
    try:
        return response.read()
    finally:
        response.close()
        response.release_conn()


def test_a_runs_session_reads_and_writes_its_prefix_and_nothing_else(s3_store):
    admin = s3_store.client()
    bucket = s3_store.bucket
    a, b = _run(s3_store, "tenant-a"), _run(s3_store, "tenant-b")
    _put(admin, bucket, f"{b.store.prefix}/artifacts/lora.safetensors", b"tenant b's lora")
    ledger_key = f"{LEDGER}/2026-11/{b.uid}.json"
    _put(admin, bucket, ledger_key, b"{}")

    issued = _session(s3_store, a)
    assert issued.session_token and issued.access_key != s3_store.access_key
    assert issued.expires_at > datetime.now(UTC)
    # What the pods get is this session (the Secret), never the platform's key.
    secret = render_store_secret(a, issued)["stringData"]
    assert secret["AWS_ACCESS_KEY_ID"] == issued.access_key != s3_store.access_key
    assert s3_store.secret_key not in secret.values()
    run = make_client(StoreCredentials.from_env(secret))

    # Its own prefix: write, read, list, overwrite, delete.
    own = f"{a.store.prefix}/checkpoints/step-1/state.bin"
    _put(run, bucket, own, b"ckpt")
    assert _get(run, bucket, own) == b"ckpt"
    assert [o.object_name for o in run.list_objects(bucket, prefix=f"{a.store.prefix}/", recursive=True)] == [own]
    _put(run, bucket, own, b"ckpt2")
    run.remove_object(bucket, own)

    # Tenant B's run: nothing (read, overwrite, delete, list).
    theirs = f"{b.store.prefix}/artifacts/lora.safetensors"
    assert _code(lambda: _get(run, bucket, theirs)) == "AccessDenied"
    assert _code(lambda: _put(run, bucket, theirs, b"overwritten")) == "AccessDenied"
    assert _code(lambda: run.remove_object(bucket, theirs)) == "AccessDenied"
    assert _code(lambda: list(run.list_objects(bucket, prefix=f"{b.store.prefix}/"))) == "AccessDenied"
    # Nor the whole bucket, nor a run of the same tenant that only shares the name's start.
    assert _code(lambda: list(run.list_objects(bucket, prefix="runs/"))) == "AccessDenied"
    assert _code(lambda: _put(run, bucket, f"{a.store.prefix}-other/x")) == "AccessDenied"
    # The billing ledger: neither read nor written (nor faked for another run).
    assert _code(lambda: _get(run, bucket, ledger_key)) == "AccessDenied"
    assert _code(lambda: _put(run, bucket, f"{LEDGER}/2026-11/{a.uid}.json", b"{}")) == "AccessDenied"
    assert _get(admin, bucket, theirs) == b"tenant b's lora"


def test_the_ledger_is_written_by_the_operator_and_refused_to_a_run(s3_store):
    a = _run(s3_store, "tenant-a")
    status = SimpleNamespace(artifacts=None, billing_units=100, start_time=None, completion_time=None)
    record = billing_record(uid=a.uid, namespace=a.namespace, name=a.name, steps=100, status=status)
    run_store = ObjectStore(_creds(_session(s3_store, a)))
    with pytest.raises(ObjectStoreUnavailable):  # refused (403) at its first request, the existence check
        write_once(run_store, s3_store.bucket, record, LEDGER)
    with pytest.raises(ObjectStoreUnavailable, match="AccessDenied"):
        run_store.put_bytes(f"s3://{s3_store.bucket}/{LEDGER}/2026-11/{a.uid}.json", record.to_json())
    assert write_once(ObjectStore(s3_store.credentials()), s3_store.bucket, record, LEDGER)


def test_the_base_model_in_the_platform_store_is_readable_never_writable(s3_store):
    admin = s3_store.client()
    bucket = s3_store.bucket
    _put(admin, bucket, MODEL, b"weights")
    _put(admin, bucket, "models/gemma/config.json", b"{}")
    _put(admin, bucket, "models/other-tenant-upload.bin", b"secret")
    a = _run(s3_store, "tenant-a", model={"checkpoint": f"s3://{bucket}/{MODEL}",
                                          "text_encoder": f"s3://{bucket}/models/gemma/"})
    run = make_client(_creds(_session(s3_store, a)))
    assert _get(run, bucket, MODEL) == b"weights"
    assert [o.object_name for o in run.list_objects(bucket, prefix="models/gemma/", recursive=True)] == [
        "models/gemma/config.json"]
    assert _code(lambda: _put(run, bucket, MODEL, b"poisoned")) == "AccessDenied"
    assert _code(lambda: run.remove_object(bucket, MODEL)) == "AccessDenied"
    assert _code(lambda: _get(run, bucket, "models/other-tenant-upload.bin")) == "AccessDenied"


def test_a_dataset_url_naming_another_runs_artifact_is_refused(s3_store, tmp_path, monkeypatch):
    admin = s3_store.client()
    bucket = s3_store.bucket
    a, b = _run(s3_store, "tenant-a"), _run(s3_store, "tenant-b")
    _put(admin, bucket, f"{b.store.prefix}/artifacts/lora.safetensors", b"tenant b's lora")
    _put(admin, bucket, f"{a.store.prefix}/inbox/dataset.zip", b"zip")
    # The preflight pod's environment: the run's session from <name>-store, no dataset Secret.
    env = StoreCredentials.from_env(render_store_secret(a, _session(s3_store, a))["stringData"]).env()
    policy = FetchPolicy(allow_private=True, attempts=1)
    with pytest.raises(DatasetDownloadError) as err:
        fetch_dataset(f"s3://{bucket}/{b.store.prefix}/artifacts/lora.safetensors", tmp_path / "d.zip",
                      policy, env)
    message = str(err.value)
    assert message.startswith("spec.trainingDataUrl s3://") and "access denied" in message
    assert "reach only the run's own prefix" in message and "datasetCredentialsSecretRef" in message
    assert failure(err.value, "preflight")[0] == ExitCode.DATASET_DOWNLOAD_FAILED  # 11: the user's, never retried
    # A validation URL is held to the same rule, named by its field.
    with pytest.raises(DatasetDownloadError, match=r"^spec\.validation\[0\]\.maskUrl s3://"):
        fetch_dataset(f"s3://{bucket}/{LEDGER}/x.json", tmp_path / "m.png", policy, env,
                      field="spec.validation[0].maskUrl")
    # Within its own prefix the same session reads.
    got = fetch_dataset(f"s3://{bucket}/{a.store.prefix}/inbox/dataset.zip", tmp_path / "own.zip", policy, env)
    assert got.read_bytes() == b"zip"


def _local_preflight_profile(profile_factory) -> str:
    """A profile whose preflight the local pod runner really runs (a process on this machine)."""
    from iclora_dev.localcluster.nodes import LOCAL_RUNNER_LABEL, LOCAL_RUNNER_TOLERATION

    return profile_factory(preflightNodeSelector={LOCAL_RUNNER_LABEL: "true"},
                           preflightTolerations=[LOCAL_RUNNER_TOLERATION])


def test_the_operator_gives_a_run_its_session_and_its_preflight_cannot_read_another_runs_lora(
        trainings, operator_factory, profile_factory, s3_store):
    """End to end: the operator issues the run's session into <name>-store (not the platform key), and
    the real preflight, asked for another tenant's LoRA as its dataset, fails naming the rule."""
    from iclora_api.contract import AWS_ACCESS_KEY_ID_ENV, AWS_SESSION_TOKEN_ENV
    from iclora_dev.pytest_plugin import wait_for
    from iclora_operator.render import ChildNames

    other = _run(s3_store, "tenant-b")
    lora = f"{other.store.prefix}/artifacts/lora.safetensors"
    _put(s3_store.client(), s3_store.bucket, lora, b"tenant b's lora")
    spec = {"trainingDataUrl": f"s3://{s3_store.bucket}/{lora}", "triggerPhrase": "repl4ce",
            "numberOfSteps": 100, "numberOfFrames": 9, "resolution": "low",
            "profileRef": {"name": _local_preflight_profile(profile_factory)}}
    operator_factory([trainings.namespace])
    obj = trainings.create("steal", spec)
    wait_for(lambda: trainings.phase("steal") == "Failed", timeout=180, what="Failed")
    status = trainings.get("steal")["status"]
    assert status["failure"]["reason"] == "DatasetDownloadFailed", status["failure"]
    message = status["failure"]["message"]
    assert "spec.trainingDataUrl" in message and "reach only the run's own prefix" in message
    assert status["billingUnits"] == 0
    secret = trainings.core.read_namespaced_secret(ChildNames.of("steal").store_secret, trainings.namespace)
    data = {k: base64.b64decode(v).decode() for k, v in secret.data.items()}
    assert data[AWS_SESSION_TOKEN_ENV] and data[AWS_ACCESS_KEY_ID_ENV] != s3_store.access_key
    assert s3_store.secret_key not in data.values()
    assert secret.metadata.annotations["iclora.dev/credentials-expire-at"].endswith("Z")
    # The session the tenant can read from its namespace reaches its own run's prefix only.
    run = make_client(StoreCredentials.from_env(data))
    own = f"runs/{trainings.namespace}/steal/{obj['metadata']['uid']}/mine.txt"
    _put(run, s3_store.bucket, own)
    assert _code(lambda: _get(run, s3_store.bucket, lora)) == "AccessDenied"
    assert _get(s3_store.client(), s3_store.bucket, lora) == b"tenant b's lora"


def test_the_operator_renews_a_running_runs_session_before_it_ends(
        trainings, operator_factory, profile_factory, s3_store, monkeypatch):
    """Sessions of one hour renewed when less than 3599 s are left: while the (kwok) preflight runs,
    every reconcile renews `<name>-store` in place, and the old session keeps working till it ends."""
    from iclora_dev.pytest_plugin import wait_for
    from iclora_operator.render import ChildNames

    monkeypatch.setenv("ICLORA_STORE_CREDENTIALS_DURATION_SECONDS", "3600")
    monkeypatch.setenv("ICLORA_STORE_CREDENTIALS_RENEW_BEFORE_SECONDS", "3598")
    profile = profile_factory(podAnnotations={"iclora.dev/fake-delay": "20s"})
    operator_factory([trainings.namespace])
    trainings.create("renewed", {"trainingDataUrl": "https://example.com/d.zip", "numberOfSteps": 100,
                                 "profileRef": {"name": profile}})
    name = ChildNames.of("renewed").store_secret

    def secret():
        found = trainings.core.list_namespaced_secret(trainings.namespace, field_selector=f"metadata.name={name}")
        return found.items[0] if found.items else None

    wait_for(lambda: secret() is not None, timeout=30, what="the run's store Secret")
    first = secret()
    first_key = base64.b64decode(first.data["AWS_ACCESS_KEY_ID"]).decode()
    wait_for(lambda: base64.b64decode(secret().data["AWS_ACCESS_KEY_ID"]).decode() != first_key, timeout=30,
             what="a renewed session in the same Secret")
    renewed = secret()
    assert renewed.metadata.uid == first.metadata.uid  # replaced in place, not recreated
    assert (renewed.metadata.annotations["iclora.dev/credentials-expire-at"]
            > first.metadata.annotations["iclora.dev/credentials-expire-at"])
    data = {k: base64.b64decode(v).decode() for k, v in renewed.data.items()}
    assert data["AWS_SESSION_TOKEN"] and data["AWS_ACCESS_KEY_ID"] != s3_store.access_key
