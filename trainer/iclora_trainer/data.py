"""Read the prepared dataset and precompute everything the training step needs, once.

VAE latents of references and targets, latent masks and text embeddings are computed before
training; the VAE and the text encoder are then freed.

Host memory: precompute streams. One clip is decoded (into one array of the manifest's
geometry), encoded, and dropped before the next is decoded, so a rank holds at most one clip's
pixels (plus the latents of every triplet, a few MB each) whatever the dataset's size; a
768x768x89 clip is 150 MB of uint8, its triplet ~370 MB, and holding every triplet of a
dataset at once in each of 8 ranks OOM-killed medium and high runs (issue 23).

Several local ranks (one process per GPU) share the work through the pod's scratch folder, not
through collectives (`precompute_shared`): each triplet's latents are a file, written by the
one rank that holds the triplet's lock (iclora_trainer.podlock). Every rank takes any triplet
no one has claimed yet, then waits on the locks of those still being encoded and reads their
files: the ranks split the encoding, every rank reads the very same latents, and a rank that
dies mid-triplet releases its lock, so another encodes that triplet instead of hanging.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from iclora_api.geometry import SPATIAL_FACTOR, TEMPORAL_FACTOR
from iclora_trainer.dataset.prepared import PreparedManifest, PreparedTriplet, iter_clip, iter_mask
from iclora_trainer.errors import DatasetError, ScratchError
from iclora_trainer.masks import latent_mask
from iclora_trainer.podlock import locked, try_locked
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
    kept: torch.Tensor | None = None  # (N, C, F', H', W') target with masked pixels neutralised

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
            kept=self.kept[idx].to(device) if self.kept is not None else None,
        )


def read_manifest(root: Path) -> PreparedManifest:
    """The prepared dataset's manifest, with the geometry checks every triplet relies on."""
    try:
        manifest = PreparedManifest.read(root)
    except Exception as exc:
        raise DatasetError(f"prepared dataset manifest unreadable at {root}: {exc}") from exc
    if not manifest.triplets:
        raise DatasetError("prepared dataset has no usable triplets")
    f, h, w = manifest.number_of_frames, manifest.height, manifest.width
    if (f - 1) % TEMPORAL_FACTOR or h % SPATIAL_FACTOR or w % SPATIAL_FACTOR:
        raise DatasetError(f"geometry {w}x{h}x{f} is not (32k)x(32k)x(8k+1)")
    return manifest


def _decode(root: Path, manifest: PreparedManifest, entry: PreparedTriplet, what: str) -> np.ndarray:
    """One clip of a triplet into one array of the manifest's geometry, frame by frame.

    (F, H, W, 3) uint8 for `reference` and `target`, (F, H, W) bool for `mask`. The preflight
    fitted all three identically; anything else would silently misalign the mask with its video.
    """
    import av

    f, h, w = manifest.number_of_frames, manifest.height, manifest.width
    mask = what == "mask"
    out = np.empty((f, h, w) if mask else (f, h, w, 3), dtype=bool if mask else np.uint8)
    path = root / getattr(entry, what)
    count = 0
    try:
        for frame in (iter_mask if mask else iter_clip)(path):
            if count < f and frame.shape[:2] == (h, w):
                out[count] = frame
            elif frame.shape[:2] != (h, w):
                raise DatasetError(f"triplet {entry.name}: {what} is {frame.shape[1]}x{frame.shape[0]}, "
                                   f"expected {w}x{h}")
            count += 1
    except DatasetError:
        raise
    except OSError as exc:
        if not isinstance(exc, av.FFmpegError):  # the scratch disk, not the clip
            raise ScratchError(f"triplet {entry.name}: reading {path}: {exc}") from exc
        raise DatasetError(f"triplet {entry.name}: cannot read clips: {exc}") from exc
    except Exception as exc:
        raise DatasetError(f"triplet {entry.name}: cannot read clips: {exc}") from exc
    if count != f:
        raise DatasetError(f"triplet {entry.name}: {what} is {(count, h, w)}, expected {(f, h, w)}")
    return out


def _caption(root: Path, entry: PreparedTriplet) -> str:
    try:
        return (root / entry.caption).read_text(encoding="utf-8").strip() if entry.caption else ""
    except Exception as exc:
        raise DatasetError(f"triplet {entry.name}: cannot read its caption: {exc}") from exc


def load_triplet(root: Path, manifest: PreparedManifest, entry: PreparedTriplet) -> PixelTriplet:
    """One triplet's pixels (three clips at once: tests and small tools; training streams clip by clip)."""
    return PixelTriplet(entry.name, _decode(root, manifest, entry, "reference"),
                        _decode(root, manifest, entry, "target"), _decode(root, manifest, entry, "mask"),
                        _caption(root, entry))


def iter_triplets(root: Path, manifest: PreparedManifest) -> Iterator[PixelTriplet]:
    """The triplets one at a time: the consumer holds one triplet's pixels if it drops each before the next."""
    for entry in manifest.triplets:
        yield load_triplet(root, manifest, entry)


def read_prepared(root: Path) -> tuple[PreparedManifest, list[PixelTriplet]]:
    """Every triplet's pixels at once: only for small datasets (tests). Training streams (`precompute_dir`)."""
    manifest = read_manifest(root)
    return manifest, list(iter_triplets(root, manifest))


def _to_video_tensor(frames: np.ndarray, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(F, H, W, 3) uint8 -> (1, 3, F, H, W) in [-1, 1].

    The uint8 clip goes to the device as it is and is converted there: one `.to(device, dtype)`
    converts a CPU-to-GPU copy on the host first (a float32 temporary, 4x the clip, in host memory).
    """
    x = torch.from_numpy(frames).to(device).to(torch.float32).permute(3, 0, 1, 2).unsqueeze(0)
    return (x / 127.5 - 1.0).to(dtype)


# What masked pixels become before the kept-region conditioning is encoded: mid-grey (0 in the
# VAE's [-1, 1] input range).
NEUTRAL = 0.0


@torch.no_grad()
def encode_video(
    encoder: torch.nn.Module,
    frames: np.ndarray,
    device: torch.device,
    dtype: torch.dtype,
    downscale: int = 1,
    neutral: np.ndarray | None = None,
) -> torch.Tensor:
    """(F, H, W, 3) uint8 -> normalised latent (C, F', H'/d, W'/d) on the CPU.

    `neutral`: (F, H, W) bool pixels set to NEUTRAL before encoding (the mask's white pixels):
    the kept-region conditioning, whose latents then cannot carry what lies inside the mask
    through the VAE's receptive field (ARCHITECTURE.md, "Kept tokens carry only kept pixels").
    """
    x = _to_video_tensor(frames, device, dtype)
    if neutral is not None:
        x = x.masked_fill(torch.from_numpy(neutral).to(x.device)[None, None], NEUTRAL)
    if downscale != 1:
        b, c, f, h, w = x.shape
        x2 = x.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
        x2 = F.interpolate(x2.float(), size=(h // downscale, w // downscale), mode="area").to(dtype)
        x = x2.reshape(b, f, c, h // downscale, w // downscale).permute(0, 2, 1, 3, 4)
    return encoder(x).float().cpu()[0]


@dataclass(frozen=True)
class EncodedTriplet:
    """One triplet after the VAE: all a training step needs of it besides the caption's embedding."""

    name: str
    target: torch.Tensor  # (C, F', H', W')
    reference: torch.Tensor  # (C, F', H'/d, W'/d)
    mask: torch.Tensor  # (F', H', W') bool
    caption: str
    kept: torch.Tensor  # (C, F', H', W') the target with its masked pixels neutralised


def encode_triplet(
    t: PixelTriplet, encoder: torch.nn.Module, device: torch.device, dtype: torch.dtype, downscale: int = 1
) -> EncodedTriplet:
    return EncodedTriplet(
        t.name,
        encode_video(encoder, t.target, device, dtype),
        encode_video(encoder, t.reference, device, dtype, downscale),
        latent_mask(torch.from_numpy(t.mask)[None])[0],
        t.caption,
        encode_video(encoder, t.target, device, dtype, neutral=t.mask),
    )


def encode_from_files(
    root: Path,
    manifest: PreparedManifest,
    entry: PreparedTriplet,
    encoder: torch.nn.Module,
    device: torch.device,
    dtype: torch.dtype,
    downscale: int = 1,
) -> EncodedTriplet:
    """Decode, encode and drop one clip at a time: one clip's pixels alive at most (the pixel
    mask, 1/3 of a clip's bytes, stays while the target is encoded twice: whole, and neutralised)."""
    pixel_mask = _decode(root, manifest, entry, "mask")
    mask = latent_mask(torch.from_numpy(pixel_mask)[None])[0]
    reference = encode_video(encoder, _decode(root, manifest, entry, "reference"), device, dtype, downscale)
    frames = _decode(root, manifest, entry, "target")
    target = encode_video(encoder, frames, device, dtype)
    kept = encode_video(encoder, frames, device, dtype, neutral=pixel_mask)
    del frames, pixel_mask
    log.debug("encoded %s", entry.name)
    return EncodedTriplet(entry.name, target, reference, mask, _caption(root, entry), kept)


def assemble(encoded: list[EncodedTriplet], fps: float, text_encoder: object) -> PrecomputedDataset:
    """Stack the encoded triplets and embed their captions (each distinct caption once)."""
    from iclora_trainer.model.text import encode_captions

    context, context_mask = encode_captions(text_encoder, [e.caption for e in encoded])  # type: ignore[arg-type]
    target = torch.stack([e.target for e in encoded])
    mask = torch.stack([e.mask for e in encoded])
    if mask.shape != (target.shape[0], *target.shape[2:]):
        raise DatasetError(f"latent mask {tuple(mask.shape)} does not match latents {tuple(target.shape)}")
    return PrecomputedDataset(
        target=target,
        reference=torch.stack([e.reference for e in encoded]),
        mask=mask,
        context=context,
        context_mask=context_mask,
        fps=float(fps),
        names=tuple(e.name for e in encoded),
        kept=torch.stack([e.kept for e in encoded]),
    )


def precompute(
    triplets: Iterable[PixelTriplet],
    fps: float,
    encoder: torch.nn.Module,
    text_encoder: object,
    device: torch.device,
    dtype: torch.dtype,
    reference_downscale_factor: int = 1,
) -> PrecomputedDataset:
    """Encode triplets as they come (an iterator such as `iter_triplets` holds one at a time)."""
    encoded = []
    for t in triplets:
        encoded.append(encode_triplet(t, encoder, device, dtype, reference_downscale_factor))
        del t  # before the next one is decoded
    return assemble(encoded, fps, text_encoder)


# --- latents shared by the local ranks of a pod -------------------------------------------------


def _file_id(path: Path | str) -> list[object]:
    try:
        st = os.stat(path)
    except OSError:
        return [str(path)]
    return [str(path), st.st_size, st.st_mtime_ns]


# Bumped when what a latents file holds changes (2: the neutralised kept-region latent).
LATENT_FORMAT = 2


def latent_cache_key(root: Path, manifest: PreparedManifest, model_path: str, dtype: torch.dtype,
                     device: torch.device, downscale: int) -> str:
    """What the latents depend on: the dataset (manifest, each clip file's size and mtime), the VAE's
    file, dtype, device type and downscale factor. Another dataset or model is another folder."""
    clips = [_file_id(root / getattr(t, what)) for t in manifest.triplets for what in ("reference", "target", "mask")]
    text = json.dumps([LATENT_FORMAT, manifest.model_dump(mode="json"), clips, _file_id(model_path), str(dtype),
                       device.type, downscale], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _load_latents(path: Path) -> EncodedTriplet | None:
    try:
        item = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        return None
    except Exception as exc:  # a file this pod wrote and cannot read back: its scratch disk
        raise ScratchError(f"latents {path} unreadable: {exc}") from exc
    return EncodedTriplet(item["name"], item["target"], item["reference"], item["mask"], item["caption"],
                          item["kept"])


def _save_latents(path: Path, e: EncodedTriplet) -> None:
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    try:
        torch.save({"name": e.name, "target": e.target, "reference": e.reference, "mask": e.mask,
                    "caption": e.caption, "kept": e.kept}, tmp)
        tmp.replace(path)  # the file is the marker: it appears whole or not at all
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ScratchError(f"writing latents {path} (pod scratch): {exc}") from exc


def precompute_shared(
    root: Path,
    manifest: PreparedManifest,
    cache: Path,
    encoder: Callable[[], torch.nn.Module],
    device: torch.device,
    dtype: torch.dtype,
    downscale: int = 1,
    waiting: Callable[[str], None] | None = None,
) -> list[EncodedTriplet]:
    """Every triplet's latents, each encoded once per pod by whichever local rank claims it first.

    `cache` is a folder of the pod's scratch keyed by `latent_cache_key`; `encoder()` loads the
    VAE on first use (a rank that finds every triplet done never loads it). Pass 1 encodes every
    triplet no other rank holds; pass 2 waits on the locks of the others and reads their files
    (or encodes a triplet whose rank died: its lock is free and its file absent).
    """
    cache.mkdir(parents=True, exist_ok=True)
    n = len(manifest.triplets)
    out: list[EncodedTriplet | None] = [None] * n

    def encode(i: int) -> None:
        path = cache / f"{i:05d}.pt"
        done = _load_latents(path)
        if done is None:
            _save_latents(path, encode_from_files(root, manifest, manifest.triplets[i], encoder(), device, dtype,
                                                  downscale))
            done = _load_latents(path)  # what every other rank reads: the same bytes
        out[i] = done

    for i in range(n):
        with try_locked(cache / f"{i:05d}.lock") as mine:
            if mine:
                encode(i)
    for i in range(n):
        if out[i] is None:
            with locked(cache / f"{i:05d}.lock", waiting,
                        "precomputing latents: waiting for another process of this pod that encodes a triplet"):
                encode(i)
    return [e for e in out if e is not None]


def precompute_dir(
    root: Path,
    fps: float,
    encoder: Callable[[], torch.nn.Module],
    text_encoder: Callable[[], object],
    device: torch.device,
    dtype: torch.dtype,
    downscale: int = 1,
    cache: Path | None = None,
    manifest: PreparedManifest | None = None,
    waiting: Callable[[str], None] | None = None,
    free: Callable[[], None] | None = None,
) -> PrecomputedDataset:
    """The precompute of a prepared folder, streamed; through `cache` (shared by a pod's ranks) when given.

    `encoder` and `text_encoder` are loaders, called when first needed and never both alive:
    the VAE is dropped (and `free` called) before the text encoder is loaded.
    """
    manifest = manifest or read_manifest(root)
    loaded: list[torch.nn.Module] = []

    def vae() -> torch.nn.Module:
        if not loaded:
            loaded.append(encoder())
        return loaded[0]

    if cache is not None:
        encoded = precompute_shared(root, manifest, cache, vae, device, dtype, downscale, waiting)
    else:
        encoded = [encode_from_files(root, manifest, entry, vae(), device, dtype, downscale)
                   for entry in manifest.triplets]
    loaded.clear()
    if free:
        free()
    te = text_encoder()
    data = assemble(encoded, fps, te)
    del te
    return data
