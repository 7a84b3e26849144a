"""It learns: the masked-token loss falls, and falls further when the reference carries the answer.

Synthetic data: the masked region of each target shows its reference's pixels. The
control run pairs every target with another clip's reference, so the reference is
useless there. 128 clips make memorising targets from their kept context hopeless.
Figures for docs/trainer.md: `pytest tests/trainer/test_learning.py -s`.
"""

from __future__ import annotations

import pytest
import torch

from iclora_dev.evaluation import load_with_lora, masked_loss
from iclora_dev.synthetic_prepared import write_synthetic_prepared
from iclora_trainer.loop import load_and_precompute, train
from iclora_trainer.storage import LocalStore
from tests.helpers import SINGLE, make_plan, make_settings

pytestmark = [pytest.mark.trainer, pytest.mark.slow]

STEPS, LR, RANK, CLIPS = 1500, 4e-3, 16, 128


def _run(tmp_path, tiny_checkpoint, shuffle: bool):
    ds = write_synthetic_prepared(
        tmp_path / f"ds-{shuffle}", clips=CLIPS, width=64, height=64, frames=9, shuffle_reference=shuffle
    )
    settings = make_settings(
        tiny_checkpoint,
        tmp_path / f"work-{shuffle}",
        steps=STEPS,
        checkpoint_interval=10**6,
        progress_interval=100,
        activation_checkpointing="none",
    )
    outcome = train(
        make_plan(STEPS, rank=RANK, lr=LR), settings, ds, LocalStore(tmp_path / f"o-{shuffle}"), SINGLE
    )
    data, _ = load_and_precompute(ds, settings, torch.device("cpu"), torch.float32)
    base = masked_loss(load_with_lora(tiny_checkpoint.model_path, None), data)
    trained = masked_loss(load_with_lora(tiny_checkpoint.model_path, outcome.lora_path), data)
    k = STEPS // 10
    curve = [round(sum(outcome.losses[i : i + k]) / k, 3) for i in range(0, STEPS, k)]
    print(f"shuffle_reference={shuffle} masked loss base={base:.3f} trained={trained:.3f} curve={curve}")
    return base, trained, curve


def test_masked_loss_falls_and_the_reference_matters(tmp_path, tiny_checkpoint):
    base, matched, curve = _run(tmp_path, tiny_checkpoint, shuffle=False)
    _, control, control_curve = _run(tmp_path, tiny_checkpoint, shuffle=True)
    assert curve[-1] < 0.7 * curve[0]
    assert matched < 0.5 * base
    # The reference carries the masked content: the matched run ends clearly lower.
    assert matched < 0.9 * control
    assert curve[-1] < 0.9 * control_curve[-1]
