"""Decoding, resampling and fitting of clips and masks (PyAV), one frame at a time.

Rule shared by reference, target and mask: scale to FILL the bucket (the short side
matches, nothing letterboxed), then crop the centre. Applying the same rule to the
three keeps them aligned even when their sources differ in size.

The one fitting path of the trainer: the preflight (training triplets) and the
validation preview (`validation_media`) both fit through `iter_fitted` /
`iter_fitted_mask` (or `fit_video` / `fit_mask`, their in-memory forms), so the same
file at the same size, frame count and rate gives the same pixels in both.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from iclora_trainer.dataset.triplets import IMAGE_EXTENSIONS
from iclora_trainer.errors import DatasetError

# 16-bit grayscale (PNG opens as I;16 in recent Pillow, as I in older ones): scaled to 8 bits.
_WIDE_GRAY_MODES = {"I", "I;16", "I;16L", "I;16B", "I;16N"}


@dataclass(frozen=True)
class ClipInfo:
    width: int  # as displayed (after rotation)
    height: int
    rotation: int  # counter-clockwise degrees to apply for display
    duration: float  # seconds from the first frame to the end of the last one

    def frames_at(self, fps: int) -> int:
        """Frames a resampling at `fps` yields without stretching time."""
        # A quarter-frame tolerance: containers quantise timestamps (Matroska to milliseconds).
        return max(0, math.floor(self.duration * fps + 0.25))


def _open(path: Path, label: str):
    import av

    try:
        return av.open(str(path))
    except (av.FFmpegError, OSError) as exc:
        raise DatasetError(f"{label}: cannot be decoded as video ({exc})") from exc


def probe(path: Path, label: str) -> ClipInfo:
    """Geometry and duration from the packets (cheap: only the first frame is decoded)."""
    import av

    with _open(path, label) as container:
        if not container.streams.video:
            raise DatasetError(f"{label}: has no video stream")
        stream = container.streams.video[0]
        tb = float(stream.time_base)
        rate = float(stream.average_rate or stream.guessed_rate or 24)
        starts, ends = [], []
        try:
            for packet in container.demux(stream):
                if packet.pts is None:
                    continue
                start = packet.pts * tb
                starts.append(start)
                ends.append(start + (packet.duration * tb if packet.duration else 1.0 / rate))
            container.seek(0)
            first = next(container.decode(stream), None)
        except av.FFmpegError as exc:
            raise DatasetError(f"{label}: corrupt video ({exc})") from exc
        if first is None or not starts:
            raise DatasetError(f"{label}: contains no frames")
        rotation = round(getattr(first, "rotation", 0) or 0) % 360
        width, height = first.width, first.height
    if rotation in (90, 270):
        width, height = height, width
    return ClipInfo(width=width, height=height, rotation=rotation, duration=max(ends) - min(starts))


def rate_times(fps: float, count: int) -> list[float]:
    """Times (s, from the first frame) of `count` frames at `fps`."""
    return [k / fps for k in range(count)]


def sample_times(info: ClipInfo, fps: float, count: int, stretch: bool) -> list[float]:
    """Times (s, from the first frame) of the `count` frames to keep.

    At the target rate when the clip is long enough; otherwise, with `stretch`, spread over
    the whole clip (the clip is resampled to fit).
    """
    if info.frames_at(fps) >= count or not stretch:
        return rate_times(fps, count)
    return [k * info.duration / count for k in range(count)]


def iter_sampled(path: Path, times: Sequence[float], label: str) -> Iterator[object]:
    """Yield, for each time, the frame shown at that time (variable frame rates included).

    Past the last frame, the last frame is held (how a shorter video mask is extended).
    """
    import av

    with _open(path, label) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        tb = float(stream.time_base)
        origin = None
        current = None
        i = 0
        try:
            for frame in container.decode(stream):
                t = (frame.pts if frame.pts is not None else 0) * tb
                origin = t if origin is None else origin
                rel = t - origin
                # 2 ms of slack: containers store timestamps rounded (WebM/Matroska to milliseconds).
                while i < len(times) and current is not None and rel > times[i] + 0.002:
                    yield current
                    i += 1
                if i >= len(times):
                    return
                current = frame
        except av.FFmpegError as exc:
            raise DatasetError(f"{label}: corrupt video ({exc})") from exc
        if current is None:
            raise DatasetError(f"{label}: contains no frames")
        while i < len(times):
            yield current
            i += 1


def fill_size(width: int, height: int, target_w: int, target_h: int) -> tuple[int, int]:
    """Size after scaling (width, height) to fill (target_w, target_h)."""
    scale = max(target_w / width, target_h / height)
    return max(target_w, math.ceil(width * scale - 1e-9)), max(target_h, math.ceil(height * scale - 1e-9))


def center_crop(arr: np.ndarray, target_w: int, target_h: int) -> np.ndarray:
    h, w = arr.shape[:2]
    top, left = (h - target_h) // 2, (w - target_w) // 2
    return arr[top:top + target_h, left:left + target_w]


def fit_frame(frame: object, info: ClipInfo, target_w: int, target_h: int, fmt: str = "rgb24") -> np.ndarray:
    """Scale (libswscale, area filter) to fill, rotate for display, crop the centre."""
    sw, sh = fill_size(info.width, info.height, target_w, target_h)
    stored_w, stored_h = (sh, sw) if info.rotation in (90, 270) else (sw, sh)
    arr = frame.reformat(width=stored_w, height=stored_h, format=fmt, interpolation="AREA").to_ndarray()
    if info.rotation:
        arr = np.rot90(arr, k=info.rotation // 90)
    return np.ascontiguousarray(center_crop(arr, target_w, target_h))


def load_image_mask(path: Path, target_w: int, target_h: int, label: str) -> np.ndarray:
    """A (H, W) bool mask from a grayscale, RGB or RGBA image; True (white) = regenerate."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            if img.mode in _WIDE_GRAY_MODES:
                # Pillow's I;16 -> L conversion clips (300 of 65535 would read as white): scale instead.
                wide = np.asarray(img, dtype=np.int64)
                img = Image.fromarray(((np.clip(wide, 0, 65535) + 128) // 257).astype(np.uint8), "L")
            if img.mode in ("RGBA", "LA", "P", "PA"):
                rgba = img.convert("RGBA")
                # Transparent pixels count as black (kept): composite onto black first.
                img = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
            gray = img.convert("L")
            sw, sh = fill_size(gray.width, gray.height, target_w, target_h)
            arr = np.asarray(gray.resize((sw, sh), Image.Resampling.BILINEAR))
    except (UnidentifiedImageError, OSError) as exc:
        raise DatasetError(f"{label}: cannot be read as an image ({exc})") from exc
    return center_crop(arr, target_w, target_h) > 127


def is_image(path: Path) -> bool:
    """A still image (a mask applied to every frame) rather than a video, by its extension."""
    return path.suffix.lower() in IMAGE_EXTENSIONS


def iter_fitted(path: Path, info: ClipInfo, times: Sequence[float], target_w: int, target_h: int, label: str,
                fmt: str = "rgb24") -> Iterator[np.ndarray]:
    """The video's frames at `times`, fitted (`fit_frame`): (H, W, 3) uint8, or (H, W) for "gray".

    Streams: decoding stops one frame after the last time, so a long clip is never decoded whole.
    """
    for frame in iter_sampled(path, times, label):
        yield fit_frame(frame, info, target_w, target_h, fmt)


def iter_fitted_mask(path: Path, times: Sequence[float], target_w: int, target_h: int,
                     label: str) -> Iterator[np.ndarray]:
    """(H, W) bool per time, True (white, gray > 127) = regenerate.

    An image mask (EXIF orientation applied) holds for every time; a video mask is sampled at
    `times` (the clip it masks: shorter -> its last frame is held, longer -> trimmed).
    """
    if is_image(path):
        mask = load_image_mask(path, target_w, target_h, label)
        for _ in times:
            yield mask
        return
    info = probe(path, label)
    for gray in iter_fitted(path, info, times, target_w, target_h, label, fmt="gray"):
        yield gray > 127


def fit_video(path: Path, target_w: int, target_h: int, frames: int, fps: float, label: str,
              stretch: bool = False) -> np.ndarray:
    """(frames, H, W, 3) uint8: `iter_fitted` at `sample_times` (without `stretch` a short clip's
    last frame is held)."""
    info = probe(path, label)
    times = sample_times(info, fps, frames, stretch)
    return np.stack(list(iter_fitted(path, info, times, target_w, target_h, label)))


def fit_mask(path: Path, target_w: int, target_h: int, frames: int, fps: float, label: str) -> np.ndarray:
    """(frames, H, W) bool: `iter_fitted_mask` at the target rate (the times of an unstretched clip)."""
    return np.stack(list(iter_fitted_mask(path, rate_times(fps, frames), target_w, target_h, label)))
