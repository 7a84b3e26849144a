"""Held-out measurement of the masked-token loss, with a LoRA fused through ltx-core's loader.

Used by the learning test and the figures in docs/trainer.md: the same fixed
(noise, sigma) draws for every model, so losses are comparable across runs.
"""

from __future__ import annotations

from pathlib import Path

import torch

from iclora_trainer.data import PrecomputedDataset
from iclora_trainer.loop import sample_noise
from iclora_trainer.strategy import MaskedICLoraStrategy


def load_with_lora(model_path: str | Path, lora_path: str | Path | None) -> torch.nn.Module:
    from ltx_core.loader.sd_ops import LTXV_LORA_COMFY_RENAMING_MAP
    from ltx_core.loader.single_gpu_model_builder import SingleGPUModelBuilder
    from ltx_core.model.transformer.model_configurator import (
        LTXV_MODEL_COMFY_RENAMING_MAP,
        LTXVideoOnlyModelConfigurator,
    )

    builder = SingleGPUModelBuilder(
        model_class_configurator=LTXVideoOnlyModelConfigurator,
        model_path=str(model_path),
        model_sd_ops=LTXV_MODEL_COMFY_RENAMING_MAP,
    )
    if lora_path is not None:
        builder = builder.lora(str(lora_path), 1.0, LTXV_LORA_COMFY_RENAMING_MAP)
    return builder.build(device=torch.device("cpu"), dtype=torch.float32).float().eval()


@torch.no_grad()
def masked_loss(model: torch.nn.Module, data: PrecomputedDataset, draws: int = 4, seed: int = 1234) -> float:
    """Mean masked-token flow-matching loss over every clip x `draws` fixed noise draws."""
    strategy = MaskedICLoraStrategy(fps=data.fps)
    shape = tuple(data.target.shape[1:])
    tokens = int(data.mask[0].numel())
    total, count = 0.0, 0
    for d in range(draws):
        idx = list(range(len(data)))
        batch = data.batch(idx, torch.device("cpu"))
        noise, sigma = sample_noise(10_000 + d, range(len(idx)), shape, tokens, seed, 1.0)
        inputs = strategy.prepare_inputs(batch, noise, sigma)
        pred = strategy.forward(model, inputs, batch, torch.float32)
        total += float(strategy.compute_loss(pred, inputs).sum())
        count += len(idx)
    return total / count
