"""Read the prepared dataset and precompute everything the training step needs, once.

VAE latents of references and targets, latent masks and text embeddings are
computed before training; the VAE and the text encoder are then freed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from iclora_api.geometry import SPATIAL_FACTOR, TEMPORAL_FACTOR
from iclora_trainer.dataset.prepared import PreparedManifest, read_clip, read_mask
from iclora_trainer.errors import DatasetError
from iclora_trainer.masks import latent_mask
from iclora_trainer.strategy import LatentBatch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PixelTriplet:
    name: str
    reference: np.ndarray  # (F, H, W, 3) uint8
    target: np.ndarray  # (F, H, W, 3) uint8
    mask: np.ndarray  # (F, H, W) bool, True = regenerate
    caption: str


@dataclass(frozen=True)
class PrecomputedDataset:
    target: torch.Tensor  # (N, C, F', H', W')
    reference: torch.Tensor  # (N, C, F', H'/d, W'/d)
    mask: torch.Tensor  # (N, F', H', W') bool
    context: torch.Tensor  # (N, L, D)
    context_mask: torch.Tensor  # (N, L)
    fps: float
    names: tuple[str, ...]

    def __len__(self) -> int:
        return self.target.shape[0]

    def batch(self, indices: list[int], device: torch.device) -> LatentBatch:
        idx = torch.tensor(indices, dtype=torch.long)
        return LatentBatch(
            target=self.target[idx].to(device),
            reference=self.reference[idx].to(device),
            mask=self.mask[idx].to(device),
            context=self.context[idx].to(device),
            context_mask=self.context_mask[idx].to(device),
        )


def read_prepared(root: Path) -> tuple[PreparedManifest, list[PixelTriplet]]:
    try:
        manifest = PreparedManifest.read(root)
    except Exception as exc:
        raise DatasetError(f"prepared dataset manifest unreadable at {root}: {exc}") from exc
    if not manifest.triplets:
        raise DatasetError("prepared dataset has no usable triplets")
    f, h, w = manifest.number_of_frames, manifest.height, manifest.width
    if (f - 1) % TEMPORAL_FACTOR or h % SPATIAL_FACTOR or w % SPATIAL_FACTOR:
        raise DatasetError(f"geometry {w}x{h}x{f} is not (32k)x(32k)x(8k+1)")
    triplets = []
    for t in manifest.triplets:
        try:
            ref = read_clip(root / t.reference)
            tgt = read_clip(root / t.target)
            mask = read_mask(root / t.mask)
            caption = (root / t.caption).read_text(encoding="utf-8").strip() if t.caption else ""
        except Exception as exc:
            raise DatasetError(f"triplet {t.name}: cannot read clips: {exc}") from exc
        # The preflight fitted all three identically; refuse anything that would
        # silently misalign the mask with its video.
        for what, arr in (("reference", ref), ("target", tgt), ("mask", mask)):
            if arr.shape[:3] != (f, h, w):
                raise DatasetError(f"triplet {t.name}: {what} is {arr.shape[:3]}, expected {(f, h, w)}")
        triplets.append(PixelTriplet(t.name, ref, tgt, mask, caption))
    return manifest, triplets


def _to_video_tensor(frames: np.ndarray, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(F, H, W, 3) uint8 -> (1, 3, F, H, W) in [-1, 1]."""
    x = torch.from_numpy(frames).to(device=device, dtype=torch.float32).permute(3, 0, 1, 2).unsqueeze(0)
    return (x / 127.5 - 1.0).to(dtype)


@torch.no_grad()
def encode_video(
    encoder: torch.nn.Module, frames: np.ndarray, device: torch.device, dtype: torch.dtype, downscale: int = 1
) -> torch.Tensor:
    x = _to_video_tensor(frames, device, dtype)
    if downscale != 1:
        b, c, f, h, w = x.shape
        x2 = x.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
        x2 = F.interpolate(x2.float(), size=(h // downscale, w // downscale), mode="area").to(dtype)
        x = x2.reshape(b, f, c, h // downscale, w // downscale).permute(0, 2, 1, 3, 4)
    return encoder(x).float().cpu()[0]


def precompute(
    triplets: list[PixelTriplet],
    fps: float,
    encoder: torch.nn.Module,
    text_encoder: object,
    device: torch.device,
    dtype: torch.dtype,
    reference_downscale_factor: int = 1,
) -> PrecomputedDataset:
    from iclora_trainer.model.text import encode_captions

    targets, references, masks = [], [], []
    for t in triplets:
        targets.append(encode_video(encoder, t.target, device, dtype))
        references.append(encode_video(encoder, t.reference, device, dtype, reference_downscale_factor))
        masks.append(latent_mask(torch.from_numpy(t.mask)[None])[0])
        log.debug("encoded %s", t.name)
    context, context_mask = encode_captions(text_encoder, [t.caption for t in triplets])  # type: ignore[arg-type]
    target = torch.stack(targets)
    mask = torch.stack(masks)
    if mask.shape != (target.shape[0], *target.shape[2:]):
        raise DatasetError(f"latent mask {tuple(mask.shape)} does not match latents {tuple(target.shape)}")
    return PrecomputedDataset(
        target=target,
        reference=torch.stack(references),
        mask=mask,
        context=context,
        context_mask=context_mask,
        fps=float(fps),
        names=tuple(t.name for t in triplets),
    )
