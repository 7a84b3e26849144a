"""Fixtures for the trainer tests: a tiny LTX checkpoint and small prepared datasets."""

from __future__ import annotations

from pathlib import Path

import pytest

from iclora_api.trainer_settings import TrainerSettings
from iclora_trainer.distributed import DistEnv
from iclora_trainer.loop import TrainingPlan

SINGLE = DistEnv(
    rank=0, world_size=1, local_rank=0, master_addr="127.0.0.1", master_port=29500, gpus_per_node=1
)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory):
    from iclora_dev.tiny_model import create_tiny_checkpoint

    return create_tiny_checkpoint(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def prepared_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from iclora_dev.synthetic_prepared import write_synthetic_prepared

    return write_synthetic_prepared(
        tmp_path_factory.mktemp("prepared"), clips=4, width=64, height=64, frames=9
    )


def make_settings(tiny_checkpoint, work: Path, **kw) -> TrainerSettings:
    base = {
        "model_path": str(tiny_checkpoint.model_path),
        "text_encoder_path": str(tiny_checkpoint.text_encoder_path),
        "device": "cpu",
        "dtype": "fp32",
        "engine": "torch",
        "work_dir": str(work),
        "progress_interval": 1,
    }
    base.update(kw)
    return TrainerSettings.model_validate(base)


def make_plan(steps: int = 6, rank: int = 8, lr: float = 2e-3) -> TrainingPlan:
    return TrainingPlan(steps=steps, rank=rank, learning_rate=lr, trigger_phrase="MASKEDIC")
