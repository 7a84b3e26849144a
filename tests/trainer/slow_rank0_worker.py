"""Subprocess body of test_slow_rank0: one rank of a 2-rank gloo run whose collective timeout is
shorter than rank 0's validation work (torch.distributed stays out of pytest).

argv: config JSON (see test_slow_rank0.py). The slowness is the test's own: the validation media
fetch and every sampler step sleep `delay` seconds, patched in here, not in the product code.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import timedelta
from pathlib import Path


def _wait_for_peers(root: Path, rank: int, world: int, name: str, limit: float = 600) -> None:
    """A file barrier of the test's own: the ranks of this loaded CI machine start the rendezvous
    and the lone work together (importing DeepSpeed, or the precompute both ranks do, can drift
    apart by more than the short timeout under test on two shared cores)."""
    (root / f"{name}-{rank}").touch()
    deadline = time.monotonic() + limit
    while not all((root / f"{name}-{r}").exists() for r in range(world)):
        if time.monotonic() > deadline:
            raise TimeoutError(f"peers never reached {name}")
        time.sleep(0.1)


def main(config: dict) -> None:
    import deepspeed

    import iclora_trainer.loop as loop
    import iclora_trainer.validation as validation
    import iclora_trainer.validation_media as validation_media
    from iclora_api.contract import Result
    from iclora_api.trainer_settings import TrainerSettings
    from iclora_trainer.distributed import dist_env
    from iclora_trainer.loop import TrainingPlan
    from iclora_trainer.storage import LocalStore
    from iclora_trainer.validation import ValidationEntry, ValidationPlan

    delay = float(config["delay"])
    real_fetch, real_predict = validation_media.fetch, validation._predict

    def slow_fetch(*a, **k):  # a slow media host
        time.sleep(delay)
        return real_fetch(*a, **k)

    def slow_predict(*a, **k):  # a large model at high resolution: one pass per sampler step
        time.sleep(delay)
        return real_predict(*a, **k)

    validation_media.fetch = slow_fetch
    validation._predict = slow_predict

    dist = dist_env()
    root = Path(config["root"])
    real_load = loop.load_and_precompute

    def load_together(*a, **k):
        out = real_load(*a, **k)
        _wait_for_peers(root, dist.rank, dist.world_size, "precomputed")
        return out

    loop.load_and_precompute = load_together
    _wait_for_peers(root, dist.rank, dist.world_size, "started")
    deepspeed.init_distributed(dist_backend="gloo", timeout=timedelta(seconds=config["timeout"]))

    media = config["media"]
    entry = ValidationEntry("a prompt", media["video"], media["mask"], media["reference"])
    settings = TrainerSettings(
        model_path=config["model_path"],
        text_encoder_path=config["text_encoder_path"],
        device="cpu",
        dtype="fp32",
        engine="deepspeed",
        zero_stage=2,
        work_dir=str(root / f"work/rank{dist.rank}"),
        steps=4,
        checkpoint_interval=100,
        progress_interval=1,
        collective_timeout_seconds=config["timeout"],
        validation_interval=2,
        validation_steps=config["sampler_steps"],
        validation_cfg_scale=1.0,  # no negative pass, and stg_scale 0 below: one pass per step
    )
    vplan = ValidationPlan((entry,), "blurry", config["frames"], config["fps"], config["width"], config["height"], 0.0)
    plan = TrainingPlan(steps=4, rank=8, learning_rate=2e-3, trigger_phrase="X", validation=vplan)
    outcome = loop.train(plan, settings, Path(config["dataset"]), LocalStore(root / "out"), dist)
    assert isinstance(outcome.result, Result)
    print(json.dumps({"rank": dist.rank, "status": outcome.result.status}))


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
