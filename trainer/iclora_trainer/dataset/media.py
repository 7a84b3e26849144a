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

from iclora_trainer.dataset import diagnose
from iclora_trainer.dataset.triplets import IMAGE_EXTENSIONS
from iclora_trainer.distributed import threads_per_rank
from iclora_trainer.errors import DatasetError


@dataclass(frozen=True)
class ClipInfo:
    width: int  # as displayed (after rotation)
    height: int
    rotation: int  # counter-clockwise degrees to apply for display
    duration: float  # seconds from the first frame to the end of the last one
    damage: str | None = None  # "is cut off (truncated): ..." when the frames present are decoded from a cut file

    def frames_at(self, fps: int) -> int:
        """Frames a resampling at `fps` yields without stretching time."""
        # A quarter-frame tolerance: containers quantise timestamps (Matroska to milliseconds).
        return max(0, math.floor(self.duration * fps + 0.25))


def _open(path: Path, label: str):
    import av

    try:
        return av.open(str(path))
    except (av.FFmpegError, OSError) as exc:
        raise DatasetError(f"{label}: {diagnose.unreadable_video(path, exc)}") from exc


def _video_stream(container, path: Path, label: str):
    """The first video stream, or a DatasetError saying why there is none or it cannot be decoded."""
    if not container.streams.video:
        damage = diagnose.cut_off(path, need_index=True)
        if damage:
            raise DatasetError(f"{label}: {damage}")
        others = sorted({s.type for s in container.streams})
        only = f" (it has only {' and '.join(others)})" if others else ""
        raise DatasetError(f"{label}: has no video stream{only}")
    stream = container.streams.video[0]
    if stream.codec_context is None:
        name = diagnose.codec_name(path)
        raise DatasetError(f"{label}: uses a video codec this FFmpeg cannot decode"
                           f"{f' ({name!r})' if name else ''}; re-encode it (for example as H.264 in an .mp4)")
    return stream


def probe(path: Path, label: str) -> ClipInfo:
    """Geometry and duration from the packets (cheap: only the first frame is decoded).

    Every FFmpeg failure becomes a DatasetError naming the file and the problem in the
    user's terms (`diagnose`): cut off, not a video, no video stream, unsupported codec.
    """
    import av

    with _open(path, label) as container:
        stream = _video_stream(container, path, label)
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
        except av.FFmpegError as exc:
            raise DatasetError(f"{label}: {diagnose.undecodable_video(path, exc, 0, None)}") from exc
        if not starts:
            raise DatasetError(f"{label}: {diagnose.cut_off(path) or 'contains no video frames'}; "
                               "no frame could be decoded")
        try:
            container.seek(0)
            first = next(container.decode(stream), None)
        except av.FFmpegError as exc:
            raise DatasetError(f"{label}: {diagnose.undecodable_video(path, exc, 0, None)}") from exc
        if first is None:
            raise DatasetError(f"{label}: {diagnose.cut_off(path) or 'is damaged'}; no frame could be decoded")
        rotation = round(getattr(first, "rotation", 0) or 0) % 360
        width, height = first.width, first.height
    if rotation in (90, 270):
        width, height = height, width
    return ClipInfo(width=width, height=height, rotation=rotation, duration=max(ends) - min(starts),
                    damage=diagnose.cut_off(path))


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


def _decoded(container, stream, alpha: bool) -> Iterator[object]:
    """The frames of `stream`. With `alpha`, VP9 that carries alpha (WebM `alpha_mode` 1, the
    alpha in Matroska BlockAdditions) is decoded by libvpx: FFmpeg's own VP9 decoder drops it."""
    import av

    if alpha and stream.codec_context.name == "vp9" and str(stream.metadata.get("alpha_mode", "")) == "1":
        try:
            decoder = av.CodecContext.create("libvpx-vp9", "r")
        except (av.FFmpegError, ValueError):
            decoder = None  # an FFmpeg without libvpx: the colour alone is used (docs/dataset.md)
        if decoder is not None:
            for packet in container.demux(stream):  # the last, empty packet flushes the decoder
                yield from decoder.decode(packet)
            return
    yield from container.decode(stream)


def iter_sampled(path: Path, times: Sequence[float], label: str, alpha: bool = False) -> Iterator[object]:
    """Yield, for each time, the frame shown at that time (variable frame rates included).

    Past the last frame, the last frame is held (how a shorter video mask is extended).
    `alpha`: keep an alpha channel FFmpeg's default decoder would drop (masks; `_decoded`).
    """
    import av

    with _open(path, label) as container:
        stream = _video_stream(container, path, label)
        stream.thread_type = "AUTO"
        # The rank's share of the pod's CPU limit; FFmpeg's own default counts the node's cores.
        stream.codec_context.thread_count = threads_per_rank()
        tb = float(stream.time_base)
        origin = None
        current = None
        i = decoded = 0
        rel = 0.0
        try:
            for frame in _decoded(container, stream, alpha):
                t = (frame.pts if frame.pts is not None else 0) * tb
                origin = t if origin is None else origin
                rel = t - origin
                decoded += 1
                # 2 ms of slack: containers store timestamps rounded (WebM/Matroska to milliseconds).
                while i < len(times) and current is not None and rel > times[i] + 0.002:
                    yield current
                    i += 1
                if i >= len(times):
                    return
                current = frame
        except av.FFmpegError as exc:
            raise DatasetError(f"{label}: {diagnose.undecodable_video(path, exc, decoded, rel)}") from exc
        if current is None:
            raise DatasetError(f"{label}: {diagnose.cut_off(path) or 'is damaged'}; no frame could be decoded")
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


# Masks: every source is brought to 8-bit levels (0..255) by SCALING, never by clipping, then
# one threshold: level > MASK_THRESHOLD = regenerate (WHITE), else keep. The rules (docs/dataset.md):
MASK_THRESHOLD = 127
# Alpha: a visible colour uniform within this many levels carries no luminance, so the alpha is the mask.
ALPHA_ONLY_SPREAD = 16
_I32_MAX = 2**31 - 1


def _scaled(values: np.ndarray, full_scale: float) -> np.ndarray:
    """Levels 0..255 of `values` on a 0..full_scale range (rounded; out of range clipped)."""
    return np.clip(np.rint(values * (255.0 / full_scale)), 0, 255).astype(np.uint8)


def _wide_levels(values: np.ndarray, floating: bool) -> np.ndarray:
    """Levels of 32-bit integer (mode I) or float (mode F) samples, by their range.

    I: 16-bit scale when every value is <= 65535 (Pillow opens 16-bit PNG and TIFF as I in some
    versions), else the int32 range. F: 0..1 when every value is <= 1 (the float convention),
    else 0..255, else 0..65535, else the int32 range. Negative values and NaN are 0.
    """
    values = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=float(_I32_MAX), neginf=0.0)
    top = float(values.max(initial=0.0))
    for full_scale in ((1.0, 255.0) if floating else ()) + (65535.0,):
        if top <= full_scale:
            return _scaled(values, full_scale)
    return _scaled(values, _I32_MAX)


def apply_alpha(luminance: np.ndarray, alpha: np.ndarray | None) -> np.ndarray:
    """Levels of a mask with an alpha channel (both uint8).

    Opaque everywhere (or no alpha): the luminance. Alpha-only (the visible pixels share one
    colour, within ALPHA_ONLY_SPREAD levels, and alpha varies): the alpha is the mask, opaque =
    regenerate. Otherwise alpha multiplies luminance: transparent = keep, semi-transparent white
    regenerates only when luminance x alpha / 255 > 127.
    """
    if alpha is None or int(alpha.min(initial=255)) == 255:
        return luminance
    visible = luminance[alpha > 0]
    if visible.size and int(visible.max()) - int(visible.min()) <= ALPHA_ONLY_SPREAD:
        return alpha
    return ((luminance.astype(np.uint32) * alpha + 127) // 255).astype(np.uint8)


def image_mask_levels(img) -> np.ndarray:
    """(H, W) uint8 levels 0..255 of a mask image in any Pillow mode (EXIF orientation not applied).

    1-bit, L, P (palette), RGB, CMYK, YCbCr: luminance (ITU-R 601: 0.299 R + 0.587 G + 0.114 B).
    I;16*: 16-bit scaled (/257). I and F: by their range (`_wide_levels`). LA, RGBA, PA and
    palette or grey images with a transparent colour: `apply_alpha`.
    """
    mode = img.mode
    if mode.startswith("I;16"):
        return _scaled(np.asarray(img).astype(np.float64), 65535.0)
    if mode in ("I", "F"):
        return _wide_levels(np.asarray(img), floating=mode == "F")
    if mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        alpha = np.asarray(rgba.getchannel("A"))
        return apply_alpha(np.asarray(rgba.convert("RGB").convert("L")), alpha)
    if mode == "LAB":
        return np.asarray(img.getchannel("L"))  # lightness, already 0..255
    if mode == "L":
        return np.asarray(img)
    try:
        return np.asarray(img.convert("RGB").convert("L"))
    except ValueError as exc:
        raise ValueError(f"image mode {mode} is not supported for masks") from exc


def load_image_mask(path: Path, target_w: int, target_h: int, label: str) -> np.ndarray:
    """A (H, W) bool mask from an image in any mode (`image_mask_levels`); True (> 127) = regenerate."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            gray = Image.fromarray(image_mask_levels(img), "L")
            sw, sh = fill_size(gray.width, gray.height, target_w, target_h)
            arr = np.asarray(gray.resize((sw, sh), Image.Resampling.BILINEAR))
    except ValueError as exc:  # an image mode with no meaning as a mask
        raise DatasetError(f"{label}: cannot be used as a mask ({exc})") from exc
    except (OSError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
        # Pillow reports a broken PNG chunk as SyntaxError and a cut-off file as OSError.
        raise DatasetError(f"{label}: {diagnose.unreadable_image(path, exc)}") from exc
    return center_crop(arr, target_w, target_h) > MASK_THRESHOLD


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


def _has_alpha(frame) -> bool:
    fmt = frame.format
    return fmt.has_palette or any(c.is_alpha for c in fmt.components)


def iter_fitted_mask(path: Path, times: Sequence[float], target_w: int, target_h: int,
                     label: str, info: ClipInfo | None = None) -> Iterator[np.ndarray]:
    """(H, W) bool per time, True (WHITE, level > 127) = regenerate.

    An image mask (EXIF orientation applied) holds for every time; a video mask is sampled at
    `times` (the clip it masks: shorter -> its last frame is held, longer -> trimmed). A video
    frame of any pixel format and bit depth is brought to 8-bit grey by libswscale (which
    scales bit depths and expands limited-range YUV); a frame with alpha (yuva*, rgba, argb,
    pal8 ...) goes through `apply_alpha`, the rule of image masks. `info`: the video's `probe`,
    when the caller has it already.
    """
    if is_image(path):
        mask = load_image_mask(path, target_w, target_h, label)
        for _ in times:
            yield mask
        return
    info = info or probe(path, label)
    for frame in iter_sampled(path, times, label, alpha=True):
        gray = fit_frame(frame, info, target_w, target_h, "gray")
        if _has_alpha(frame):
            gray = apply_alpha(gray, fit_frame(frame, info, target_w, target_h, "rgba")[..., 3])
        yield gray > MASK_THRESHOLD


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
