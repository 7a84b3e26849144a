"""The validation reel: source | mask | reference | result per entry, prompt underneath, H.264."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np

CAPTION_HEIGHT = 32  # keeps H.264's even dimensions for even panel sizes

Panel = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]


def caption_strip(text: str, width: int, height: int = CAPTION_HEIGHT) -> np.ndarray:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (width, height), (0, 0, 0))
    draw = ImageDraw.Draw(img)
    draw.text((4, 4), text, fill=(255, 255, 255))
    return np.asarray(img)


def entry_frames(source: np.ndarray, mask: np.ndarray, reference: np.ndarray, result: np.ndarray, prompt: str):
    """(F, H + caption, 4W, 3) uint8 frames of one entry."""
    mask_rgb = np.repeat((mask.astype(np.uint8) * 255)[..., None], 3, axis=-1)
    row = np.concatenate([source, mask_rgb, reference, result], axis=2)
    strip = caption_strip(prompt, row.shape[2])
    return np.concatenate([row, np.broadcast_to(strip, (row.shape[0], *strip.shape))], axis=1)


def reel_frames(panels: list[Panel]) -> np.ndarray:
    """All entries one after another (entries share the validation size)."""
    return np.concatenate([entry_frames(*p) for p in panels], axis=0)


def write_reel(path: Path, panels: list[Panel], fps: float) -> Path:
    return write_video(path, reel_frames(panels), fps)


def write_video(path: Path, frames: np.ndarray, fps: float, *, lossless: bool = False) -> Path:
    """(F, H, W, 3) uint8 RGB -> H.264. Default: yuv420p (plays everywhere; sides must be even).
    `lossless`: libx264rgb at QP 0, RGB kept bit-exact (ffmpeg/VLC play it, browsers do not)."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        rate = Fraction(fps).limit_denominator(1001)
        if lossless:
            stream = container.add_stream("libx264rgb", rate=rate, options={"qp": "0", "preset": "veryfast"})
            stream.pix_fmt = "rgb24"
        else:
            stream = container.add_stream("libx264", rate=rate)
            stream.pix_fmt = "yuv420p"
        stream.height, stream.width = frames.shape[1:3]
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
