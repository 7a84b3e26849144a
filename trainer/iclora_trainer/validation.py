"""Validation sampler for masked IC-LoRA: guided Euler sampling of the masked region.

Per entry: the source, mask and reference are fitted by the training data's own
fitting code (`validation_media` -> `dataset.media`) and VAE-encoded; the masked
latent cells start as noise and are denoised with an Euler sampler over ltx-core's
LTX2 sigma schedule, while the KEPT cells are re-imposed clean (timestep 0) every
step and the reference tokens are appended clean, exactly the training sequence.
Guidance uses ltx-core's MultiModalGuider: CFG against `validationNegativePrompt`
and STG (a pass with video self-attention skipped in chosen blocks). The decoded
result is composited in pixel space, so the kept region equals the source pixels
exactly.
"""

from __future__ import annotations

import gc
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from iclora_trainer.conditioning import build_sequence
from iclora_trainer.masks import latent_mask

log = logging.getLogger(__name__)

# LTX-2.3's default STG block (ltx_pipelines/utils/constants.py); clamped on smaller models.
DEFAULT_STG_BLOCK = 28


@dataclass(frozen=True)
class ValidationEntry:
    prompt: str
    video_url: str
    mask_url: str
    reference_video_url: str


@dataclass(frozen=True)
class ValidationPlan:
    """The spec's validation fields the trainer uses."""

    entries: tuple[ValidationEntry, ...]
    negative_prompt: str
    frames: int
    frame_rate: float
    width: int
    height: int
    stg_scale: float


@dataclass(frozen=True)
class GuidanceConfig:
    steps: int = 30
    cfg_scale: float = 3.0
    stg_scale: float = 1.0
    stg_blocks: tuple[int, ...] | None = None  # None: DEFAULT_STG_BLOCK clamped to the model
    rescale_scale: float = 0.7
    seed: int = 0


@dataclass(frozen=True)
class PreparedEntry:
    """One entry ready to sample: fitted pixels, latents and text embeddings (CPU)."""

    prompt: str
    source: np.ndarray  # (F, H, W, 3) uint8
    mask: np.ndarray  # (F, H, W) bool, True = regenerate
    reference: np.ndarray  # (F, H, W, 3) uint8
    source_latent: torch.Tensor  # (C, F', H', W')
    reference_latent: torch.Tensor  # (C, F', H'/d, W'/d)
    latent_mask: torch.Tensor  # (F', H', W') bool
    context: torch.Tensor  # (L, D)
    context_mask: torch.Tensor  # (L,)
    negative_context: torch.Tensor
    negative_context_mask: torch.Tensor
    # (C, F', H', W') the source with its masked pixels neutralised: what the kept tokens show,
    # as in training. None: `source_latent` (which always fills the kept cells for decoding).
    kept_latent: torch.Tensor | None = None


def unpatchify(tokens: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """(B, F*H*W, C) -> (B, C, F, H, W), inverse of the patch-size-1 patchifier."""
    b, c, f, h, w = shape
    return tokens.reshape(b, f, h, w, c).permute(0, 4, 1, 2, 3)


def composite(source: np.ndarray, generated: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Pixel composite: generated where the mask is white, the source pixels exactly elsewhere."""
    return np.where(mask[..., None], generated, source)


def _predict(
    model: torch.nn.Module,
    x: torch.Tensor,
    reference: torch.Tensor,
    mask: torch.Tensor,
    sigma: float,
    fps: float,
    downscale: int,
    context: torch.Tensor,
    context_mask: torch.Tensor,
    perturbations: list,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Denoised target latent (B, C, F, H, W) for B passes sharing x (differing in context/perturbation)."""
    from ltx_core.guidance.perturbations import BatchedPerturbationConfig
    from ltx_core.model.transformer.modality import Modality

    batch = context.shape[0]
    xb = x.expand(batch, *x.shape[1:])
    sig = torch.full((batch,), sigma, device=x.device)
    # With noise = x the "noised" latent is x itself: build_sequence then gives the
    # training layout (timestep sigma on masked cells, 0 on kept and reference cells).
    inputs = build_sequence(
        xb, reference.expand(batch, *reference.shape[1:]), mask.expand(batch, *mask.shape[1:]), xb, sig, fps, downscale
    )
    video = Modality(
        latent=inputs.latent.to(dtype),
        sigma=inputs.sigma.to(dtype),
        timesteps=inputs.timesteps.to(dtype),
        positions=inputs.positions,
        context=context.to(dtype),
        context_mask=context_mask,
    )
    velocity, _ = model(video=video, audio=None, perturbations=BatchedPerturbationConfig(perturbations))
    v = unpatchify(velocity[:, : inputs.num_target_tokens].float(), tuple(xb.shape))
    return xb - sigma * v  # flow matching: x0 = x_sigma - sigma * v


@torch.no_grad()
def sample_latent(
    model: torch.nn.Module,
    entry: PreparedEntry,
    guidance: GuidanceConfig,
    fps: float,
    device: torch.device,
    dtype: torch.dtype,
    reference_downscale_factor: int = 1,
    progress: Callable[[], None] | None = None,
) -> torch.Tensor:
    """Euler sampling of the masked cells; returns the clean latent (1, C, F, H, W).

    `progress` is called after every sampler step (rank 0 tells the waiting ranks it is alive,
    iclora_trainer.distributed.RankZeroGate)."""
    from ltx_core.components.guiders import MultiModalGuider, MultiModalGuiderParams
    from ltx_core.components.schedulers import LTX2Scheduler
    from ltx_core.guidance.perturbations import Perturbation, PerturbationConfig, PerturbationType

    # Kept cells are conditioned on the neutralised source (what training showed them); the
    # source's own latents fill them for decoding, so no neutral grey bleeds into the edit's edge.
    source = entry.source_latent[None].to(device, torch.float32)
    x0 = source if entry.kept_latent is None else entry.kept_latent[None].to(device, torch.float32)
    ref = entry.reference_latent[None].to(device, torch.float32)
    mask = entry.latent_mask[None].to(device)
    m = mask[:, None].to(torch.float32)
    n_blocks = len(getattr(model, "transformer_blocks", [])) or DEFAULT_STG_BLOCK + 1
    blocks = list(guidance.stg_blocks or (min(DEFAULT_STG_BLOCK, n_blocks - 1),))
    params = MultiModalGuiderParams(
        cfg_scale=guidance.cfg_scale,
        stg_scale=guidance.stg_scale,
        stg_blocks=blocks,
        rescale_scale=guidance.rescale_scale,
    )
    guider = MultiModalGuider(params=params)
    stg = PerturbationConfig([Perturbation(PerturbationType.SKIP_VIDEO_SELF_ATTN, blocks)])

    # The passes of one step, batched when the contexts line up (one forward).
    contexts, masks, perts = [entry.context], [entry.context_mask], [PerturbationConfig.empty()]
    if guider.do_unconditional_generation():
        contexts.append(entry.negative_context)
        masks.append(entry.negative_context_mask)
        perts.append(PerturbationConfig.empty())
    if guider.do_perturbed_generation():
        contexts.append(entry.context)
        masks.append(entry.context_mask)
        perts.append(stg)
    same = all(c.shape == contexts[0].shape for c in contexts)

    sigmas = LTX2Scheduler().execute(guidance.steps, latent=x0).tolist()
    g = torch.Generator().manual_seed(guidance.seed)
    noise = torch.randn(x0.shape, generator=g).to(device)
    x = m * noise + (1 - m) * x0
    for sigma, sigma_next in itertools.pairwise(sigmas):
        args = (model, x, ref, mask, sigma, fps, reference_downscale_factor)
        if same:
            out = _predict(*args, torch.stack(contexts).to(device), torch.stack(masks).to(device), perts, dtype)
            preds = list(out.split(1))
        else:
            preds = [
                _predict(*args, c[None].to(device), cm[None].to(device), [p], dtype)
                for c, cm, p in zip(contexts, masks, perts, strict=True)
            ]
        cond = preds[0]
        uncond = preds[1] if guider.do_unconditional_generation() else 0.0
        perturbed = preds[-1] if guider.do_perturbed_generation() else 0.0
        denoised = guider.calculate(cond, uncond, perturbed, 0.0)
        # Euler step of the flow ODE, then re-impose the kept cells (clean, timestep 0).
        velocity = (x - denoised) / sigma
        x = x + (sigma_next - sigma) * velocity
        x = m * x + (1 - m) * x0
        if progress is not None:
            progress()
    return m * x + (1 - m) * source


def prepare_entry(
    paths: tuple[Path, Path, Path],
    prompt: str,
    negative_prompt: str,
    plan: ValidationPlan,
    encoder: torch.nn.Module,
    text_encoder: object,
    device: torch.device,
    dtype: torch.dtype,
    reference_downscale_factor: int = 1,
) -> PreparedEntry:
    from iclora_trainer.data import encode_video
    from iclora_trainer.validation_media import load_fitted

    video_path, mask_path, reference_path = paths
    size = (plan.frames, plan.frame_rate, plan.width, plan.height)
    source = load_fitted(video_path, *size)
    mask = load_fitted(mask_path, *size, mask=True)
    reference = load_fitted(reference_path, *size)
    pos = text_encoder.encode(prompt)  # type: ignore[attr-defined]
    neg = text_encoder.encode(negative_prompt)  # type: ignore[attr-defined]
    return PreparedEntry(
        prompt=prompt,
        source=source,
        mask=mask,
        reference=reference,
        source_latent=encode_video(encoder, source, device, dtype),
        kept_latent=encode_video(encoder, source, device, dtype, neutral=mask),
        reference_latent=encode_video(encoder, reference, device, dtype, reference_downscale_factor),
        latent_mask=latent_mask(torch.from_numpy(mask)[None])[0],
        context=pos.context,
        context_mask=pos.mask,
        negative_context=neg.context,
        negative_context_mask=neg.mask,
    )


def prepare_validation(
    plan: ValidationPlan,
    model_path: str,
    text_encoder_path: str,
    work_dir: Path,
    device: torch.device,
    dtype: torch.dtype,
    reference_downscale_factor: int = 1,
    progress: Callable[[], None] | None = None,
) -> list[PreparedEntry]:
    """Fetch, fit and encode every entry once (VAE encoder and text encoder freed after).

    `progress` is called after each model load, media file and entry (see `sample_latent`)."""
    from iclora_trainer import validation_media
    from iclora_trainer.model.loading import load_video_encoder
    from iclora_trainer.model.text import load_text_encoder

    beat = progress or (lambda: None)
    encoder = load_video_encoder(model_path, device, dtype)
    beat()
    text_encoder = load_text_encoder(text_encoder_path, model_path, device, dtype)
    beat()
    out = []
    for i, e in enumerate(plan.entries):
        d = work_dir / f"entry{i}"
        d.mkdir(parents=True, exist_ok=True)
        fetched = []
        for url, sub, name in ((e.video_url, "video", "videoUrl"), (e.mask_url, "mask", "maskUrl"),
                               (e.reference_video_url, "ref", "referenceVideoUrl")):
            fetched.append(validation_media.fetch(url, d / sub, f"spec.validation[{i}].{name}"))
            beat()
        paths = (fetched[0], fetched[1], fetched[2])
        out.append(
            prepare_entry(
                paths,
                e.prompt,
                plan.negative_prompt,
                plan,
                encoder,
                text_encoder,
                device,
                dtype,
                reference_downscale_factor,
            )
        )
        beat()
    # Free the VAE encoder and the text encoder before the transformer is loaded.
    del encoder, text_encoder
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


@torch.no_grad()
def decode(decoder: torch.nn.Module, latent: torch.Tensor, seed: int = 0, tiled: bool = False) -> np.ndarray:
    """(1, C, F, H, W) latent -> (F, H, W, 3) uint8 through ltx-core's `decode_video`.

    Tiled (ltx-core's default tiling) on GPU: 89 high-resolution frames decoded in
    one piece would need far more memory than the training step.
    """
    from ltx_core.model.video_vae.tiling import TilingConfig
    from ltx_core.model.video_vae.video_vae import decode_video

    generator = torch.Generator(device=latent.device).manual_seed(seed)
    dtype = next(decoder.parameters()).dtype
    tiling = TilingConfig.default() if tiled else None
    chunks = decode_video(latent.to(dtype), decoder, tiling, generator)  # type: ignore[arg-type]
    return torch.cat([c.cpu() for c in chunks]).numpy()


def run_entries(
    model: torch.nn.Module,
    decoder: torch.nn.Module,
    entries: list[PreparedEntry],
    guidance: GuidanceConfig,
    fps: float,
    device: torch.device,
    dtype: torch.dtype,
    reference_downscale_factor: int = 1,
    progress: Callable[[], None] | None = None,
) -> list[np.ndarray]:
    """The composited result (F, H, W, 3) uint8 of every entry (`progress`: see `sample_latent`)."""
    was_training = model.training
    model.eval()
    try:
        results = []
        for entry in entries:
            latent = sample_latent(model, entry, guidance, fps, device, dtype, reference_downscale_factor, progress)
            generated = decode(decoder, latent, guidance.seed, tiled=device.type == "cuda")
            if progress is not None:
                progress()
            f, h, w = entry.mask.shape
            results.append(composite(entry.source, generated[:f, :h, :w], entry.mask))
        return results
    finally:
        model.train(was_training)


def render_validation(
    model: torch.nn.Module,
    entries: list[PreparedEntry],
    guidance: GuidanceConfig,
    plan: ValidationPlan,
    model_path: str,
    out_path: Path,
    device: torch.device,
    dtype: torch.dtype,
    reference_downscale_factor: int = 1,
    progress: Callable[[], None] | None = None,
) -> Path:
    """Sample every entry and write the reel to `out_path` (the decoder is loaded for this call only).

    `progress`: called as the work advances (see `sample_latent`)."""
    from iclora_trainer.model.loading import load_video_decoder
    from iclora_trainer.reel import write_reel

    decoder = load_video_decoder(model_path, device, dtype)
    if progress is not None:
        progress()
    results = run_entries(
        model, decoder, entries, guidance, plan.frame_rate, device, dtype, reference_downscale_factor, progress
    )
    del decoder
    panels = [(e.source, e.mask, e.reference, r, e.prompt) for e, r in zip(entries, results, strict=True)]
    return write_reel(out_path, panels, plan.frame_rate)
