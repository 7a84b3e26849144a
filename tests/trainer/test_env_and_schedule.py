"""Rank discovery from the environment, LR schedule, data-parallel sampling, settings precedence."""

from __future__ import annotations

import pytest

from iclora_api.trainer_settings import load_settings
from iclora_trainer.distributed import dist_env
from iclora_trainer.engine import OptimConfig, lr_factor
from iclora_trainer.loop import sample_indices, sample_noise

pytestmark = pytest.mark.trainer


def test_torch_style_env() -> None:
    d = dist_env(
        {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "123"}
    )
    assert (d.rank, d.world_size, d.local_rank, d.master_addr, d.master_port) == (3, 4, 1, "h", 123)


def test_indexed_job_env() -> None:
    env = {"JOB_COMPLETION_INDEX": "2", "ICLORA_NNODES": "3", "ICLORA_GPUS_PER_NODE": "8", "LOCAL_RANK": "5"}
    d = dist_env(env)
    assert (d.rank, d.world_size, d.local_rank) == (21, 24, 5) and d.distributed


def test_single_process_default() -> None:
    d = dist_env({})
    assert (d.rank, d.world_size) == (0, 1) and not d.distributed


def test_warmup_then_cosine_decay() -> None:
    cfg = OptimConfig(lr=1.0, steps=100, warmup=10, min_lr_ratio=0.1)
    assert lr_factor(0, cfg) == pytest.approx(0.1) and lr_factor(9, cfg) == pytest.approx(1.0)
    assert lr_factor(10, cfg) == pytest.approx(1.0) and lr_factor(100, cfg) == pytest.approx(0.1)
    assert all(lr_factor(s, cfg) >= lr_factor(s + 1, cfg) for s in range(10, 99))


def test_global_batch_is_independent_of_rank_split() -> None:
    n, steps = 5, 7
    order = [i for s in range(steps) for i in sample_indices(s, n, 2, seed=1)]
    # Epochs are permutations: every clip once per epoch.
    assert sorted(order[:5]) == list(range(5)) and sorted(order[5:10]) == list(range(5))
    noise_all, sigma_all = sample_noise(3, range(0, 2), (2, 1, 1, 1), 8, seed=1, sigma_std=1.0)
    noise_r1, sigma_r1 = sample_noise(3, range(1, 2), (2, 1, 1, 1), 8, seed=1, sigma_std=1.0)
    assert noise_all[1].equal(noise_r1[0]) and sigma_all[1] == sigma_r1[0]
    assert float(sigma_all.min()) > 0 and float(sigma_all.max()) < 1


def test_settings_precedence(tmp_path) -> None:
    f = tmp_path / "s.yaml"
    f.write_text("steps: 50\nzero_stage: 1\nseed: 3\n")
    s = load_settings(f, {"ICLORA_ZERO_STAGE": "0", "ICLORA_SEED": "4"}, {"seed": 5, "steps": None})
    assert (s.steps, s.zero_stage, s.seed) == (50, 0, 5)
