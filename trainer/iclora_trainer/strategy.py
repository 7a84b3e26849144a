"""The masked IC-LoRA training strategy: prepare_inputs / compute_loss (LTX-2 `base_strategy` shape)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from iclora_trainer.conditioning import SequenceInputs, build_sequence


@dataclass(frozen=True)
class LatentBatch:
    """Precomputed inputs of B samples (all clips share one geometry)."""

    target: torch.Tensor  # (B, C, F, H, W) normalised VAE latents
    reference: torch.Tensor  # (B, C, F, H/d, W/d)
    mask: torch.Tensor  # (B, F, H, W) bool latent mask, True = regenerate
    context: torch.Tensor  # (B, L, D) text context
    context_mask: torch.Tensor  # (B, L) 1 = real token
    # (B, C, F, H, W) kept-token conditioning: the target encoded with its masked pixels
    # neutralised (iclora_trainer.data.encode_video); None: the target itself.
    kept: torch.Tensor | None = None


@dataclass(frozen=True)
class MaskedICLoraStrategy:
    fps: float
    reference_downscale_factor: int = 1

    def prepare_inputs(self, batch: LatentBatch, noise: torch.Tensor, sigma: torch.Tensor) -> SequenceInputs:
        return build_sequence(
            batch.target,
            batch.reference,
            batch.mask,
            noise,
            sigma,
            self.fps,
            self.reference_downscale_factor,
            batch.kept,
        )

    def forward(
        self, model: torch.nn.Module, inputs: SequenceInputs, batch: LatentBatch, dtype: torch.dtype
    ) -> torch.Tensor:
        """The model's velocity prediction (B, T, C) for the whole sequence."""
        from ltx_core.guidance.perturbations import BatchedPerturbationConfig, PerturbationConfig
        from ltx_core.model.transformer.modality import Modality

        video = Modality(
            latent=inputs.latent.to(dtype),
            sigma=inputs.sigma.to(dtype),
            timesteps=inputs.timesteps.to(dtype),
            positions=inputs.positions,
            context=batch.context.to(dtype),
            context_mask=batch.context_mask,
        )
        perturbations = BatchedPerturbationConfig([PerturbationConfig.empty()] * inputs.latent.shape[0])
        prediction, _ = model(video=video, audio=None, perturbations=perturbations)
        return prediction

    @staticmethod
    def compute_loss(prediction: torch.Tensor, inputs: SequenceInputs) -> torch.Tensor:
        """Unreduced per-sample loss (B,): MSE over masked target tokens only."""
        err = (prediction.float() - inputs.velocity.float()).pow(2).mean(dim=-1)  # (B, T)
        weight = inputs.loss_mask.to(err.dtype)
        # A sample whose mask covers no cell contributes 0 rather than NaN.
        return (err * weight).sum(dim=1) / weight.sum(dim=1).clamp(min=1.0)
