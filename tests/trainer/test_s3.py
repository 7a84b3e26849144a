"""Dataset from and outputs to an s3:// prefix (the session's local SeaweedFS)."""

from __future__ import annotations

import json
import os

import pytest

from iclora_api.cli import main
from iclora_api.contract import Progress, Result

pytestmark = [pytest.mark.trainer, pytest.mark.slow]

BUCKET = "iclora"


@pytest.fixture
def s3(s3_store, monkeypatch):
    """The session's SeaweedFS (iclora_dev.localcluster), credentials in the AWS_* environment."""
    for k, v in s3_store.env().items():
        monkeypatch.setenv(k, v)
    return s3_store.client()


def test_train_from_and_to_s3(tmp_path, s3, tiny_checkpoint, prepared_dataset):
    for path in prepared_dataset.rglob("*"):
        if path.is_file():
            s3.fput_object(
                BUCKET, f"ns/run/prepared/{path.relative_to(prepared_dataset).as_posix()}", str(path)
            )
    # The base model from the store too (issue 21): fetched into the cache before loading.
    s3.fput_object(BUCKET, "ns/models/ltx-tiny.safetensors", str(tiny_checkpoint.model_path))
    s3.fput_object(BUCKET, "ns/models/text-encoder.safetensors", str(tiny_checkpoint.text_encoder_path))
    model_bytes = tiny_checkpoint.model_path.stat().st_size + tiny_checkpoint.text_encoder_path.stat().st_size
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
        f"s3://{BUCKET}/ns/models/ltx-tiny.safetensors",
        "--text-encoder-path",
        f"s3://{BUCKET}/ns/models/text-encoder.safetensors",
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
    # No cache folder given: fetched into the work dir's models/ (scratch), all of it downloaded.
    assert result.model.cache is None and result.model.downloaded_bytes == model_bytes
    assert list((tmp_path / "work" / "models").glob("*/*/ltx-tiny.safetensors"))
    # The prepared dataset is downloaded once per pod (issue 23), not into each rank's folder.
    assert (tmp_path / "work" / "dataset" / ".complete").exists()
    assert not (tmp_path / "work" / "rank0" / "dataset").exists()
    assert os.path.exists(tmp_path / "term.log")
