"""Subprocess body of test_deepspeed_zero2_resume_is_bitwise (torch.distributed stays out of pytest)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def main(root: Path, port: str) -> None:
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    import deepspeed
    from safetensors.torch import load_file

    from iclora_api.trainer_settings import TrainerSettings
    from iclora_dev.synthetic_prepared import write_synthetic_prepared
    from iclora_dev.tiny_model import create_tiny_checkpoint
    from iclora_trainer.distributed import dist_env
    from iclora_trainer.loop import TrainingPlan, train
    from iclora_trainer.storage import LocalStore

    deepspeed.init_distributed(dist_backend="gloo")
    ck = create_tiny_checkpoint(root / "ck")
    ds = write_synthetic_prepared(root / "ds", clips=4, width=64, height=64)

    def run(name: str, stop: int | None = None):
        settings = TrainerSettings(
            model_path=str(ck.model_path),
            text_encoder_path=str(ck.text_encoder_path),
            device="cpu",
            dtype="fp32",
            engine="deepspeed",
            zero_stage=2,
            work_dir=str(root / f"work-{name}"),
            steps=6,
            checkpoint_interval=3,
        )
        plan = TrainingPlan(steps=6, rank=8, learning_rate=2e-3, trigger_phrase="X")
        return train(plan, settings, ds, LocalStore(root / name), dist_env(), stop_after=stop)

    full = run("full")
    run("resumed", stop=4)
    resumed = run("resumed")
    a, b = load_file(str(full.lora_path)), load_file(str(resumed.lora_path))
    diff = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    print(
        json.dumps(
            {"start": resumed.start_step, "same_losses": full.losses[3:] == resumed.losses, "diff": diff}
        )
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
