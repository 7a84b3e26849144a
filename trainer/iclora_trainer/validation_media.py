"""Load and fit validation media (source, mask, reference) like the training data.

Fitting rule (same for all three inputs): resample in time to the validation
frame rate (nearest earlier frame, last frame held when the clip is short),
resize to FILL the target size keeping the aspect ratio, then centre-crop.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif"}


def fetch(url: str, directory: Path) -> Path:
    """A local file for `url`: the user names these URLs, so they go through the same guarded
    fetcher as the dataset (SSRF guard, timeouts, size limit); local paths are used as they are."""
    from urllib.parse import urlsplit

    from iclora_trainer.dataset.fetch import fetch_dataset

    name = Path(urlsplit(url).path).name or "media"
    return fetch_dataset(url, directory / name)


def read_frames(path: Path) -> tuple[np.ndarray, float | None]:
    """(F, H, W, 3) uint8 RGB frames and the frame rate (None for a still image)."""
    if path.suffix.lower() in IMAGE_SUFFIXES:
        from PIL import Image

        return np.asarray(Image.open(path).convert("RGB"))[None], None
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        rate = float(stream.average_rate or stream.guessed_rate or 24)
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    if not frames:
        raise ValueError(f"{path}: no video frames")
    return np.stack(frames), rate


def resample_time(frames: np.ndarray, src_fps: float | None, count: int, fps: float) -> np.ndarray:
    """`count` frames at `fps`; a still image (src_fps None) is repeated."""
    if src_fps is None:
        return np.repeat(frames[:1], count, axis=0)
    idx = [min(math.floor(k * src_fps / fps + 1e-6), len(frames) - 1) for k in range(count)]
    return frames[idx]


def fill_crop(frames: np.ndarray, width: int, height: int, nearest: bool = False) -> np.ndarray:
    """Resize (F, H, W[, 3]) to fill width x height keeping the aspect ratio, then centre-crop."""
    from PIL import Image

    h, w = frames.shape[1:3]
    scale = max(width / w, height / h)
    rw, rh = max(width, round(w * scale)), max(height, round(h * scale))
    left, top = (rw - width) // 2, (rh - height) // 2
    resample = Image.Resampling.NEAREST if nearest else Image.Resampling.BICUBIC
    out = []
    for frame in frames:
        img = Image.fromarray(frame).resize((rw, rh), resample)
        out.append(np.asarray(img.crop((left, top, left + width, top + height))))
    return np.stack(out)


def load_fitted(path: Path, frames: int, fps: float, width: int, height: int, *, mask: bool = False) -> np.ndarray:
    """Fitted clip: (F, H, W, 3) uint8, or for a mask (F, H, W) bool with WHITE (> 127) = regenerate."""
    data, rate = read_frames(path)
    data = resample_time(data, rate, frames, fps)
    if mask:
        gray = data.astype(np.float32).mean(axis=-1).astype(np.uint8)
        return fill_crop(gray, width, height, nearest=True) > 127
    return fill_crop(data, width, height)
