"""Pixel mask -> latent-grid mask (pure tensor functions).

A latent cell is regenerated if ANY pixel it covers is white, so no edited pixel
can leak into a kept (clean) token. Time follows the causal VAE: latent frame 0
covers pixel frame 0 alone, latent frame k >= 1 covers pixel frames
1 + 8(k-1) .. 8k. (LTX-2's own trainer pools masks with plain strided pooling
over all frames, which puts pixel frames 0..7 in the first cell.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# The VAE's compression factors are a fact of the model, stated once in the contract.
from iclora_api.geometry import SPATIAL_FACTOR, TEMPORAL_FACTOR, latent_frames


def latent_mask(
    pixel_mask: torch.Tensor, temporal: int = TEMPORAL_FACTOR, spatial: int = SPATIAL_FACTOR
) -> torch.Tensor:
    """(B, F, H, W) bool, True = regenerate -> (B, F', H/s, W/s) bool by causal any-pooling."""
    batch, frames, height, width = pixel_mask.shape
    if height % spatial or width % spatial:
        raise ValueError(f"mask size {height}x{width} is not divisible by {spatial}")
    latent_frames(frames, temporal)
    m = pixel_mask.to(torch.float32)
    # Causal grouping: frame 0 alone, then groups of `temporal`.
    first = m[:, :1]
    rest = m[:, 1:].reshape(batch, -1, temporal, height, width).amax(dim=2)
    grouped = torch.cat([first, rest], dim=1)
    pooled = F.max_pool2d(grouped, kernel_size=spatial, stride=spatial)
    return pooled > 0


def latent_mask_to_tokens(mask: torch.Tensor) -> torch.Tensor:
    """(B, F', H', W') -> (B, T) in the patchifier's (f, h, w) token order."""
    return mask.flatten(1)
