"""Token sequence assembly for masked IC-LoRA training (pure tensor functions).

One sequence per sample: [target tokens ; reference tokens], the reference
appended after the target exactly as ltx-core's `VideoConditionByReferenceLatent`
does at inference, with positions from the reference's own latent grid (spatial
positions scaled by the reference downscale factor).

Flow matching (rectified flow, as LTX): x_sigma = (1 - sigma) x0 + sigma * noise,
the model predicts the velocity v = noise - x0. Per-token timesteps are how clean
and noised tokens share one sequence: masked target tokens get timestep sigma,
kept target tokens and all reference tokens timestep 0 (their latent stays x0)
and carry no loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SequenceInputs:
    latent: torch.Tensor  # (B, T, C) model input: noised masked tokens, clean elsewhere
    timesteps: torch.Tensor  # (B, T) sigma on masked target tokens, 0 elsewhere
    positions: torch.Tensor  # (B, 3, T, 2) pixel-space [start, end) bounds, time in seconds
    sigma: torch.Tensor  # (B,)
    velocity: torch.Tensor  # (B, T, C) flow-matching target (noise - x0)
    loss_mask: torch.Tensor  # (B, T) bool: masked target tokens only
    num_target_tokens: int


def patchify(latent: torch.Tensor) -> torch.Tensor:
    """(B, C, F, H, W) -> (B, F*H*W, C) with ltx-core's patchifier (patch size 1)."""
    from ltx_core.components.patchifiers import VideoLatentPatchifier

    return VideoLatentPatchifier(patch_size=1).patchify(latent)


def video_positions(
    latent_shape: tuple[int, int, int, int, int], fps: float, downscale_factor: int = 1
) -> torch.Tensor:
    """Positions (B, 3, T, 2) of a latent grid, computed as ltx-core does at inference."""
    from ltx_core.components.patchifiers import VideoLatentPatchifier, get_pixel_coords
    from ltx_core.types import VIDEO_SCALE_FACTORS, VideoLatentShape

    shape = VideoLatentShape.from_torch_shape(torch.Size(latent_shape))
    bounds = VideoLatentPatchifier(patch_size=1).get_patch_grid_bounds(output_shape=shape)
    positions = get_pixel_coords(bounds, VIDEO_SCALE_FACTORS, causal_fix=True).to(torch.float32)
    positions[:, 0, ...] /= fps
    if downscale_factor != 1:
        positions[:, 1:, ...] *= downscale_factor
    return positions


def build_sequence(
    target: torch.Tensor,
    reference: torch.Tensor,
    mask: torch.Tensor,
    noise: torch.Tensor,
    sigma: torch.Tensor,
    fps: float,
    reference_downscale_factor: int = 1,
    kept: torch.Tensor | None = None,
) -> SequenceInputs:
    """Assemble one training sequence.

    target, noise: (B, C, F, H, W) clean target latents and Gaussian noise;
    reference: (B, C, F, H/d, W/d); mask: (B, F, H, W) bool latent mask (True = regenerate);
    sigma: (B,) in (0, 1); kept: (B, C, F, H, W) the clean latents the kept (unmasked) tokens
    show, encoded from the clip with its masked pixels neutralised (default: `target`). The
    velocity target is always the full `target`'s.
    """
    if mask.shape != (target.shape[0], *target.shape[2:]):
        raise ValueError(f"mask {tuple(mask.shape)} does not match target latent {tuple(target.shape)}")
    x0 = patchify(target)
    clean = x0 if kept is None else patchify(kept).to(x0.dtype)
    eps = patchify(noise)
    ref = patchify(reference)
    token_mask = mask.flatten(1)  # (B, T_t), same (f, h, w) order as patchify
    m = token_mask.unsqueeze(-1).to(x0.dtype)
    s = sigma.view(-1, 1, 1).to(x0.dtype)
    noised = (1 - s) * x0 + s * eps
    target_in = m * noised + (1 - m) * clean
    target_t = token_mask.to(x0.dtype) * sigma.view(-1, 1).to(x0.dtype)

    batch, n_target, _ = x0.shape
    n_ref = ref.shape[1]
    latent = torch.cat([target_in, ref.to(x0.dtype)], dim=1)
    timesteps = torch.cat([target_t, torch.zeros(batch, n_ref, dtype=x0.dtype, device=x0.device)], dim=1)
    positions = torch.cat(
        [
            video_positions(tuple(target.shape), fps).expand(batch, -1, -1, -1),
            video_positions(tuple(reference.shape), fps, reference_downscale_factor).expand(
                batch, -1, -1, -1
            ),
        ],
        dim=2,
    ).to(device=x0.device)
    velocity = torch.cat([eps - x0, torch.zeros_like(ref, dtype=x0.dtype)], dim=1)
    loss_mask = torch.cat([token_mask, torch.zeros(batch, n_ref, dtype=torch.bool, device=x0.device)], dim=1)
    return SequenceInputs(
        latent=latent,
        timesteps=timesteps,
        positions=positions,
        sigma=sigma,
        velocity=velocity,
        loss_mask=loss_mask,
        num_target_tokens=n_target,
    )


def shifted_logit_normal_sigmas(
    generator: torch.Generator, batch: int, num_tokens: int, std: float = 1.0
) -> torch.Tensor:
    """sigma = sigmoid(N(mu, std)), mu shifted with the sequence length as LTX's scheduler.

    Longer sequences need more noise to destroy the same information, so the
    mean moves linearly from 0.95 at 1024 tokens to 2.05 at 4096 tokens
    (ltx-core `components/schedulers.py` anchors); clamped away from 0 and 1.
    """
    base_tokens, max_tokens, base_shift, max_shift = 1024, 4096, 0.95, 2.05
    slope = (max_shift - base_shift) / (max_tokens - base_tokens)
    mu = base_shift + slope * (num_tokens - base_tokens)
    u = torch.randn(batch, generator=generator) * std + mu
    return torch.sigmoid(u).clamp(1e-3, 1 - 1e-3)
