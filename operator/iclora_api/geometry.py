"""Video geometry rules of the product: frame snapping and resolution buckets."""

from __future__ import annotations

from enum import StrEnum

MIN_FRAMES = 9
MAX_FRAMES = 121
# The LTX video VAE is causal in time: the first frame is encoded alone, then
# every 8 frames become one latent frame, so valid clip lengths are 8k + 1.
TEMPORAL_FACTOR = 8
# Spatial compression of the VAE (and the patch grid of the transformer).
SPATIAL_FACTOR = 32


class Resolution(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"


class AspectRatio(StrEnum):
    LANDSCAPE = "16:9"
    SQUARE = "1:1"
    PORTRAIT = "9:16"


# (width, height) per resolution and aspect ratio: the product's bucket table.
_BUCKETS: dict[Resolution, dict[AspectRatio, tuple[int, int]]] = {
    Resolution.LOW: {
        AspectRatio.LANDSCAPE: (512, 288),
        AspectRatio.SQUARE: (512, 512),
        AspectRatio.PORTRAIT: (288, 512),
    },
    Resolution.MEDIUM: {
        AspectRatio.LANDSCAPE: (768, 448),
        AspectRatio.SQUARE: (768, 768),
        AspectRatio.PORTRAIT: (448, 768),
    },
    Resolution.HIGH: {
        AspectRatio.LANDSCAPE: (960, 544),
        AspectRatio.SQUARE: (960, 960),
        AspectRatio.PORTRAIT: (544, 960),
    },
}


def bucket_size(resolution: Resolution | str, aspect_ratio: AspectRatio | str) -> tuple[int, int]:
    """Return the (width, height) in pixels that clips are fitted to."""
    return _BUCKETS[Resolution(resolution)][AspectRatio(aspect_ratio)]


def snap_frames(frames: int) -> int:
    """Snap a frame count down to the nearest valid 8k + 1 (90 -> 89, 121 -> 121).

    Values below the minimum are not snapped up: range checks belong to the
    API model, this function only applies the VAE's temporal rule.
    """
    if frames < 1:
        raise ValueError(f"frame count must be positive, got {frames}")
    return ((frames - 1) // TEMPORAL_FACTOR) * TEMPORAL_FACTOR + 1


def latent_frames(frames: int, temporal: int = TEMPORAL_FACTOR) -> int:
    """Latent frames of a pixel frame count 1 + 8k: frame 0 alone, then groups of 8.

    Raises ValueError for a count the causal VAE cannot encode (not 1 + temporal*k).
    """
    if frames < 1 or (frames - 1) % temporal:
        raise ValueError(f"frame count {frames} is not 1 + {temporal}k")
    return (frames - 1) // temporal + 1
