"""`iclora train` exit codes, termination message and outputs."""

from __future__ import annotations

import json

import pytest

from iclora_api.cli import main
from iclora_api.contract import ExitCode, Result

pytestmark = pytest.mark.trainer


def _args(tmp_path, tiny_checkpoint, dataset, spec, *extra: str) -> list[str]:
    return [
        "train",
        "--spec",
        str(spec),
        "--dataset",
        str(dataset),
        "--output",
        str(tmp_path / "out"),
        "--model-path",
        str(tiny_checkpoint.model_path),
        "--text-encoder-path",
        str(tiny_checkpoint.text_encoder_path),
        "--device",
        "cpu",
        "--work-dir",
        str(tmp_path / "work"),
        "--termination-log",
        str(tmp_path / "term.log"),
        *extra,
    ]


def _spec(tmp_path, **fields) -> object:
    path = tmp_path / "spec.json"
    path.write_text(json.dumps({"training_data_url": "https://example.com/d.zip", "rank": 8, **fields}))
    return path


def test_train_succeeds_and_writes_termination_message(tmp_path, tiny_checkpoint, prepared_dataset):
    spec = _spec(tmp_path, trigger_phrase="MASKEDIC")
    assert main(_args(tmp_path, tiny_checkpoint, prepared_dataset, spec, "--steps", "2")) == 0
    result = Result.model_validate_json((tmp_path / "term.log").read_text())
    assert result.status == "Succeeded" and result.artifacts is not None
    assert (tmp_path / "out" / "artifacts" / "lora.safetensors").exists()


def test_reference_downscale_comes_from_the_spec(tmp_path, tiny_checkpoint, prepared_dataset):
    from safetensors import safe_open

    spec = _spec(tmp_path, referenceDownscaleFactor=2)
    assert main(_args(tmp_path, tiny_checkpoint, prepared_dataset, spec, "--steps", "2")) == 0
    artifacts = tmp_path / "out" / "artifacts"
    with safe_open(str(artifacts / "lora.safetensors"), framework="pt") as f:
        assert f.metadata()["reference_downscale_factor"] == "2"
    assert json.loads((artifacts / "config.json").read_text())["referenceDownscaleFactor"] == 2


def test_invalid_spec_is_a_user_error(tmp_path, tiny_checkpoint, prepared_dataset):
    spec = _spec(tmp_path, rank=7)
    code = main(_args(tmp_path, tiny_checkpoint, prepared_dataset, spec))
    assert code == ExitCode.INVALID_SPEC and ExitCode(code).is_user_error
    term = json.loads((tmp_path / "term.log").read_text())
    assert term["status"] == "Failed" and term["reason"] == "InvalidSpec"
    assert json.loads((tmp_path / "out" / "result.json").read_text())["reason"] == "InvalidSpec"


def test_unreadable_dataset_is_a_dataset_error(tmp_path, tiny_checkpoint):
    spec = _spec(tmp_path)
    (tmp_path / "empty").mkdir()
    code = main(_args(tmp_path, tiny_checkpoint, tmp_path / "empty", spec))
    assert code == ExitCode.DATASET_INVALID


def test_bad_checkpoint_is_a_model_config_error(tmp_path, tiny_checkpoint, prepared_dataset):
    spec = _spec(tmp_path)
    bogus = tmp_path / "bogus.safetensors"
    bogus.write_bytes(b"not a checkpoint")
    args = _args(tmp_path, tiny_checkpoint, prepared_dataset, spec)
    args[args.index("--model-path") + 1] = str(bogus)
    assert main(args) == ExitCode.MODEL_CONFIG_INVALID
