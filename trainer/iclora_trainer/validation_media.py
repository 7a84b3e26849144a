"""Validation media (source, mask, reference): fetched, then fitted by the dataset's media code.

No fitting of its own: `load_fitted` is `dataset.media.fit_video` / `fit_mask`, the functions
the preflight fits training triplets with (swscale area filter, timestamp sampling, display
rotation, EXIF orientation and 16-bit depth of image masks, WHITE (> 127) = regenerate),
decoding only up to the last frame needed. The clip is sampled at the validation rate from its
first frame; a clip shorter than the validation length holds its last frame (the preview does not
stretch), and an image mask holds for every frame.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def fetch(url: str, directory: Path, field: str = "validation media") -> Path:
    """A local file for `url`: the user names these URLs, so they go through the same guarded
    fetcher as the dataset (SSRF guard, timeouts, size limit, the same credentials rule); local
    paths are used as they are. `field` names the URL's field in errors."""
    from urllib.parse import urlsplit

    from iclora_trainer.dataset.fetch import fetch_dataset

    name = Path(urlsplit(url).path).name or "media"
    return fetch_dataset(url, directory / name, field=field)


def load_fitted(path: Path, frames: int, fps: float, width: int, height: int, *, mask: bool = False) -> np.ndarray:
    """Fitted clip: (F, H, W, 3) uint8, or for a mask (F, H, W) bool with WHITE (> 127) = regenerate."""
    from iclora_trainer.dataset.media import fit_mask, fit_video

    path = Path(path)
    if mask:
        return fit_mask(path, width, height, frames, fps, path.name)
    return fit_video(path, width, height, frames, fps, path.name)
