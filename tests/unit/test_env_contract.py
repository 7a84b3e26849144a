"""The variables the operator's Jobs set are the contract's, and the trainer reads them under those names."""

from __future__ import annotations

import ast
from dataclasses import replace
from pathlib import Path

import pytest

from iclora_api import contract
from iclora_api.contract import (
    DATASET_CREDENTIALS_ENV_PREFIX,
    GPUS_PER_NODE_ENV,
    JOB_COMPLETION_INDEX_ENV,
    MODEL_CACHE_DIR_ENV,
    MODEL_CREDENTIALS_ENV_PREFIX,
    MODEL_PATH_ENV,
    NNODES_ENV,
    STORE_ENV_NAMES,
    TEXT_ENCODER_PATH_ENV,
    TRAINER_SETTINGS_ENV_PREFIX,
    WORK_DIR_ENV,
)
from iclora_api.trainer_settings import ENV_PREFIX, TrainerSettings, load_settings
from iclora_operator.render import SCRATCH, render_preflight_job, render_training_job
from tests.helpers import env_of
from tests.helpers import render_ctx as ctx

REPO = Path(__file__).resolve().parents[2]
# Variables of the container runtime, not of the trainer contract.
GENERIC = {"TMPDIR", "HOME", "PYTHONUNBUFFERED", "NVIDIA_VISIBLE_DEVICES"}
CONTRACT_NAMES = {v for k, v in vars(contract).items() if k.endswith("_ENV") and isinstance(v, str)}
DATASET_NAMES = {DATASET_CREDENTIALS_ENV_PREFIX + name for name in STORE_ENV_NAMES}
MODEL_STORE_NAMES = {MODEL_CREDENTIALS_ENV_PREFIX + name for name in STORE_ENV_NAMES}
SETTINGS_NAMES = {ENV_PREFIX + field.upper() for field in TrainerSettings.model_fields}


def _private_ctx(**kw):
    return replace(ctx(**kw), allow_private_dataset_hosts=True)


MODEL = {"model": {"checkpoint": "s3://models/ltx.safetensors", "text_encoder": "s3://models/gemma/",
                   "credentials_secret_ref": {"name": "model-creds"}, "cache_volume": "cache"},
         "volumes": [{"name": "cache", "host_path": {"path": "/var/cache/models"}}]}

JOBS = [
    pytest.param(lambda: render_preflight_job(_private_ctx()), id="preflight"),
    pytest.param(lambda: render_training_job(_private_ctx(), suspend=False), id="train-1x1"),
    pytest.param(lambda: render_training_job(_private_ctx(nodes=4, gpus=8), suspend=False), id="train-4x8"),
    pytest.param(lambda: render_training_job(_private_ctx(**MODEL), suspend=False), id="train-s3-model-cache"),
]


@pytest.mark.parametrize("make", JOBS)
def test_every_variable_a_job_sets_is_a_contract_name(make):
    names = set(env_of(make()))
    unknown = names - CONTRACT_NAMES - DATASET_NAMES - MODEL_STORE_NAMES - GENERIC
    assert not unknown, f"not named in iclora_api.contract: {sorted(unknown)}"
    assert set(STORE_ENV_NAMES) <= names


def test_the_preflight_gets_its_scratch_and_the_dataset_credentials():
    env = env_of(render_preflight_job(ctx()))
    assert env[WORK_DIR_ENV]["value"] == SCRATCH
    assert set(env) >= DATASET_NAMES
    assert "ICLORA_WORKDIR" not in env


def test_the_trainer_reads_the_model_variables():
    from iclora_api.objectstore import StoreCredentials

    env = env_of(render_training_job(ctx(**MODEL), suspend=False))
    values = {k: e["value"] for k, e in env.items() if "value" in e}
    settings = load_settings(None, values, {})
    assert settings.model_path == "s3://models/ltx.safetensors"
    assert settings.text_encoder_path == "s3://models/gemma/"
    assert env[MODEL_CACHE_DIR_ENV]["value"] == settings.model_cache_dir
    # The model store's credentials: the names StoreCredentials reads with the model prefix.
    secret_vars = {k: e["valueFrom"]["secretKeyRef"]["key"] for k, e in env.items() if "valueFrom" in e
                   and e["valueFrom"]["secretKeyRef"]["name"] == "t-model-credentials"}
    assert secret_vars == {MODEL_CREDENTIALS_ENV_PREFIX + k: k for k in STORE_ENV_NAMES}
    creds = StoreCredentials.from_env({k: f"v-{k}" for k in secret_vars}, prefix=MODEL_CREDENTIALS_ENV_PREFIX)
    assert creds.access_key == f"v-{MODEL_CREDENTIALS_ENV_PREFIX}AWS_ACCESS_KEY_ID"


def test_the_settings_prefix_is_the_contract_one():
    assert ENV_PREFIX == TRAINER_SETTINGS_ENV_PREFIX
    for name in (contract.WORK_DIR_ENV, contract.MODEL_PATH_ENV, contract.TEXT_ENCODER_PATH_ENV):
        assert name in SETTINGS_NAMES


def test_the_trainer_reads_the_training_job_variables():
    from iclora_trainer.distributed import dist_env

    env = {k: e["value"] for k, e in env_of(render_training_job(ctx(nodes=4, gpus=8), suspend=False)).items()
           if "value" in e}
    settings = load_settings(None, env, {})
    assert settings.work_dir == f"{SCRATCH}/work"
    # Settings overrides other than paths (the work dir, the model sources) travel in the settings JSON.
    assert {k for k in env if k in SETTINGS_NAMES} == {WORK_DIR_ENV, MODEL_PATH_ENV, TEXT_ENCODER_PATH_ENV}
    assert (env[NNODES_ENV], env[GPUS_PER_NODE_ENV]) == ("4", "8")
    d = dist_env({**env, JOB_COMPLETION_INDEX_ENV: "3", "LOCAL_RANK": "2"})
    assert (d.world_size, d.rank, d.gpus_per_node) == (32, 26, 8)
    assert d.master_addr == env["MASTER_ADDR"] and d.master_port == int(env["MASTER_PORT"])


def _env_literals(path: Path) -> list[str]:
    """String constants that are (or start) an ICLORA_/AWS_ variable name, as code would spell one."""
    found = []
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            value = node.value
            if value.startswith(("ICLORA_", "AWS_")) and value.replace("_", "").isalnum() and value.isupper():
                found.append(f"{path.relative_to(REPO)}:{node.lineno}: {value}")
    return found


def test_no_contract_variable_is_spelled_outside_the_contract():
    """The trainer and the renderer name trainer-contract variables only through iclora_api.contract."""
    files = [*sorted((REPO / "trainer" / "iclora_trainer").rglob("*.py")),
             REPO / "operator" / "iclora_operator" / "render.py"]
    literals = [hit for path in files for hit in _env_literals(path)]
    assert not literals, "use the iclora_api.contract constants:\n" + "\n".join(literals)
