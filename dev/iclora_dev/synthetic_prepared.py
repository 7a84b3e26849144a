"""A synthetic prepared dataset in which the masked region's content follows the reference.

Each clip: a reference of random coloured blocks drifting over time, a target with
its own random blocks, and a rectangular mask; inside the mask the target shows
the reference's pixels. A model can only predict the masked latents by reading the
reference tokens. `shuffle_reference` pairs every target with another clip's
reference: the control run in which the reference carries no information.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from iclora_trainer.dataset.prepared import (
    PreparedManifest,
    PreparedTriplet,
    triplet_paths,
    write_clip,
    write_mask,
)


def _blocks(rng: np.random.Generator, frames: int, height: int, width: int, block: int) -> np.ndarray:
    grid = rng.integers(0, 256, size=(height // block + 2, width // block + 2, 3)).astype(np.uint8)
    big = np.repeat(np.repeat(grid, block, axis=0), block, axis=1)
    out = np.empty((frames, height, width, 3), dtype=np.uint8)
    for f in range(frames):
        dy, dx = (f * 2) % block, (f * 3) % block  # slow drift: a video, not a still
        out[f] = big[dy : dy + height, dx : dx + width]
    return out


def write_synthetic_prepared(
    root: str | Path,
    *,
    clips: int = 8,
    width: int = 128,
    height: int = 128,
    frames: int = 9,
    fps: int = 24,
    seed: int = 0,
    shuffle_reference: bool = False,
    trigger_phrase: str = "MASKEDIC",
    cell: int = 32,
) -> Path:
    root = Path(root)
    rng = np.random.default_rng(seed)
    refs, tgts, masks = [], [], []
    for _ in range(clips):
        ref = _blocks(rng, frames, height, width, 16)
        tgt = _blocks(rng, frames, height, width, 16)
        # A cell-aligned rectangle covering between 1/4 and 1/2 of each side.
        ch, cw = height // cell, width // cell
        h = int(rng.integers(max(1, ch // 4), max(2, ch // 2 + 1)))
        w = int(rng.integers(max(1, cw // 4), max(2, cw // 2 + 1)))
        y, x = int(rng.integers(0, ch - h + 1)), int(rng.integers(0, cw - w + 1))
        mask = np.zeros((frames, height, width), dtype=bool)
        mask[:, y * cell : (y + h) * cell, x * cell : (x + w) * cell] = True
        tgt = np.where(mask[..., None], ref, tgt)
        refs.append(ref)
        tgts.append(tgt)
        masks.append(mask)
    if shuffle_reference:
        refs = refs[1:] + refs[:1]
    triplets = []
    for i in range(clips):
        name = f"clip{i:03d}"
        paths = triplet_paths(name)
        write_clip(root / paths["reference"], refs[i], fps)
        write_clip(root / paths["target"], tgts[i], fps)
        write_mask(root / paths["mask"], masks[i], fps)
        (root / paths["caption"]).write_text(f"{trigger_phrase} blocks", encoding="utf-8")
        triplets.append(PreparedTriplet(name=name, frames=frames, **paths))
    PreparedManifest(
        width=width,
        height=height,
        number_of_frames=frames,
        frame_rate=fps,
        trigger_phrase=trigger_phrase,
        triplets=triplets,
    ).write(root)
    return root
