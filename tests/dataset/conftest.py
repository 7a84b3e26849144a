"""Real media for the dataset tests, generated with PyAV and Pillow."""

from __future__ import annotations

import io
import struct
import zipfile
from fractions import Fraction
from pathlib import Path

import numpy as np

from iclora_dev.synthetic import CONTAINERS, encode_video

CODECS = {ext: (codec, pix) for ext, codec, pix in CONTAINERS}


def video(frames: list[np.ndarray], ext: str = "mp4", fps: int = 24) -> bytes:
    codec, pix = CODECS[ext]
    return encode_video(frames, ext, codec, pix, fps)


def solid_frames(n: int, width: int, height: int, start: int = 0) -> list[np.ndarray]:
    """Frames whose brightness encodes their index (10 levels apart), to check resampling."""
    return [np.full((height, width, 3), min(255, (start + i) * 10), np.uint8) for i in range(n)]


def image(mask: np.ndarray, fmt: str = "PNG", mode: str | None = None) -> bytes:
    from PIL import Image

    img = Image.fromarray(mask)
    if mode:
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def vfr_mkv(levels_and_ms: list[tuple[int, int]], width: int = 32, height: int = 32) -> bytes:
    """A variable-frame-rate clip: each frame's brightness and its timestamp in ms."""
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="matroska") as c:
        s = c.add_stream("libx264", rate=24)
        s.width, s.height, s.pix_fmt = width, height, "yuv420p"
        s.codec_context.time_base = Fraction(1, 1000)
        for level, ms in levels_and_ms:
            f = av.VideoFrame.from_ndarray(np.full((height, width, 3), level, np.uint8), format="rgb24")
            f.pts, f.time_base = ms, Fraction(1, 1000)
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return buf.getvalue()


def rotate_mp4(data: bytes) -> bytes:
    """Give an mp4 a 90-degree clockwise display matrix (as phones record portrait video)."""
    out = bytearray(data)
    i = out.find(b"tkhd") + 4
    version = out[i]
    offset = i + (4 + 8 + 8 + 4 + 4 + 8 if version == 1 else 4 + 4 + 4 + 4 + 4 + 4) + 8 + 2 + 2 + 2 + 2
    out[offset:offset + 36] = struct.pack(">9i", 0, 0x10000, 0, -0x10000, 0, 0, 0, 0, 0x40000000)
    return bytes(out)


def write_zip(path: Path, entries: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return path
