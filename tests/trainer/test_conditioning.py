"""Sequence assembly: kept and reference tokens are clean (timestep 0) and carry no loss."""

from __future__ import annotations

import pytest
import torch

from iclora_trainer.conditioning import build_sequence, patchify, video_positions
from iclora_trainer.strategy import MaskedICLoraStrategy

pytestmark = pytest.mark.trainer

B, C, F, H, W = 2, 4, 3, 2, 3  # batch, latent channels, latent frames, latent height, width
T = F * H * W


def _inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    target = torch.randn(B, C, F, H, W, generator=g)
    reference = torch.randn(B, C, F, H, W, generator=g)
    noise = torch.randn(B, C, F, H, W, generator=g)
    mask = torch.zeros(B, F, H, W, dtype=torch.bool)
    mask[0, 1, 0, 2] = True
    mask[1, :, 1, :] = True
    sigma = torch.tensor([0.3, 0.8])
    return target, reference, noise, mask, sigma


def test_timesteps_latents_and_loss_mask() -> None:
    target, reference, noise, mask, sigma = _inputs()
    seq = build_sequence(target, reference, mask, noise, sigma, fps=24.0)
    assert seq.latent.shape == (B, 2 * T, C) and seq.num_target_tokens == T
    tok = mask.flatten(1)
    x0, eps = patchify(target), patchify(noise)
    for b in range(B):
        t = seq.timesteps[b]
        assert torch.equal(t[:T][tok[b]], torch.full((int(tok[b].sum()),), float(sigma[b])))
        assert (t[:T][~tok[b]] == 0).all() and (t[T:] == 0).all()
        # Kept target tokens are the clean latent; reference tokens are the clean reference.
        assert torch.equal(seq.latent[b, :T][~tok[b]], x0[b][~tok[b]])
        assert torch.equal(seq.latent[b, T:], patchify(reference)[b])
        noised = (1 - sigma[b]) * x0[b] + sigma[b] * eps[b]
        assert torch.allclose(seq.latent[b, :T][tok[b]], noised[tok[b]])
        assert torch.allclose(seq.velocity[b, :T], eps[b] - x0[b])
        assert torch.equal(seq.loss_mask[b, :T], tok[b]) and not seq.loss_mask[b, T:].any()


def test_loss_gradient_only_reaches_masked_target_tokens() -> None:
    target, reference, noise, mask, sigma = _inputs()
    seq = build_sequence(target, reference, mask, noise, sigma, fps=24.0)
    prediction = torch.randn(B, 2 * T, C, requires_grad=True)
    MaskedICLoraStrategy.compute_loss(prediction, seq).sum().backward()
    touched = prediction.grad.abs().sum(-1) > 0
    assert torch.equal(touched, seq.loss_mask)


def test_reference_positions_match_ltx_core_inference() -> None:
    """The reference tokens get the positions VideoConditionByReferenceLatent gives them at inference."""
    from ltx_core.components.patchifiers import VideoLatentPatchifier
    from ltx_core.conditioning.types.reference_video_cond import VideoConditionByReferenceLatent
    from ltx_core.tools import VideoLatentTools
    from ltx_core.types import VideoLatentShape

    target, reference, noise, mask, sigma = _inputs()
    fps = 24.0
    tools = VideoLatentTools(
        patchifier=VideoLatentPatchifier(patch_size=1),
        target_shape=VideoLatentShape.from_torch_shape(target.shape),
        fps=fps,
    )
    state = tools.create_initial_state(device="cpu", dtype=torch.float32, initial_latent=target)
    state = tools.patchify(state) if state.latent.ndim == 5 else state
    cond = VideoConditionByReferenceLatent(latent=reference, downscale_factor=1).apply_to(state, tools)
    seq = build_sequence(target, reference, mask, noise, sigma, fps=fps)
    assert torch.allclose(seq.positions, cond.positions.to(torch.float32))
    assert torch.equal(seq.latent[:, T:], cond.latent[:, T:])


def test_downscaled_reference_positions_cover_the_target_grid() -> None:
    full = video_positions((1, C, F, 4, 4), fps=24.0)
    half = video_positions((1, C, F, 2, 2), fps=24.0, downscale_factor=2)
    assert half[:, 1:].max() == full[:, 1:].max()
    assert torch.equal(half[:, 0].unique(), full[:, 0].unique())
