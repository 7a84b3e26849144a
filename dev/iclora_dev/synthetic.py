"""A synthetic masked-IC-LoRA dataset, written as the zip a user would upload.

Each triplet shows the edit the LoRA should learn: the target (`_end`) is a
background scene in which the masked region carries the reference's content
(`_start`), so the regenerated region follows the reference. Containers cycle
through every accepted format; masks alternate between images and videos.
"""

from __future__ import annotations

import io
import zipfile
from fractions import Fraction
from pathlib import Path

import numpy as np

# (extension, codec, pixel format) per container the product accepts.
CONTAINERS = [
    ("mp4", "libx264", "yuv420p"),
    ("mov", "libx264", "yuv420p"),
    ("webm", "libvpx-vp9", "yuv420p"),
    ("mkv", "libx264", "yuv420p"),
    ("avi", "mpeg4", "yuv420p"),
]


def encode_video(frames: list[np.ndarray], ext: str, codec: str, pix_fmt: str, fps: int) -> bytes:
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format={"mkv": "matroska", "mov": "mov"}.get(ext, ext)) as container:
        stream = container.add_stream(codec, rate=Fraction(fps))
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = pix_fmt
        if codec == "libx264":
            stream.options = {"crf": "12", "preset": "ultrafast"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def _png(mask: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(mask).save(buf, format="PNG")
    return buf.getvalue()


def triplet_frames(index: int, frames: int, width: int, height: int,
                   rng: np.random.Generator) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
    """Reference frames, target frames and a (H, W) mask region for one triplet."""
    ys, xs = np.mgrid[0:height, 0:width]
    hue = rng.uniform(0, 1, size=3)
    mh, mw = height // 2, width // 2
    top, left = rng.integers(0, height - mh), rng.integers(0, width - mw)
    mask = np.zeros((height, width), np.uint8)
    mask[top:top + mh, left:left + mw] = 255
    refs, targets = [], []
    for t in range(frames):
        # Reference: a moving stripe pattern whose colour identifies the triplet.
        phase = (xs + ys + 3 * t + index * 7) / 9.0
        ref = (127 + 120 * np.sin(phase[..., None] + hue * 6.28)).astype(np.uint8)
        # Target: a soft gradient scene; inside the mask, the reference's content.
        scene = np.stack([xs * 255 // max(1, width - 1), ys * 255 // max(1, height - 1),
                          np.full_like(xs, (40 * index + 4 * t) % 256)], -1).astype(np.uint8)
        target = np.where(mask[..., None] > 0, ref, scene)
        refs.append(np.ascontiguousarray(ref))
        targets.append(np.ascontiguousarray(target))
    return refs, targets, mask


def write_dataset_zip(path: Path, *, triplets: int = 10, frames: int = 12, width: int = 160, height: int = 96,
                      fps: int = 24, seed: int = 0) -> Path:
    """Write a zip of `triplets` reference/target/mask triplets with captions; returns its path."""
    rng = np.random.default_rng(seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for i in range(triplets):
            name = f"sample{i + 1:02d}"
            ext, codec, pix_fmt = CONTAINERS[i % len(CONTAINERS)]
            refs, targets, mask = triplet_frames(i, frames, width, height, rng)
            folder = "clips/" if i % 3 == 2 else ""  # nested folders are allowed
            zf.writestr(f"{folder}{name}_start.{ext}", encode_video(refs, ext, codec, pix_fmt, fps))
            zf.writestr(f"{folder}{name}_end.{ext}", encode_video(targets, ext, codec, pix_fmt, fps))
            if i % 2 == 0:
                zf.writestr(f"{folder}{name}_mask.png", _png(mask))
            else:
                mask_rgb = [np.repeat(mask[..., None], 3, -1)] * frames
                zf.writestr(f"{folder}{name}_mask.mp4", encode_video(mask_rgb, "mp4", "libx264", "yuv420p", fps))
            zf.writestr(f"{folder}{name}.txt", f"replace the masked region with stripe pattern {i + 1}\n")
    return path


def write_validation_set(folder: Path, *, frames: int = 12, width: int = 160, height: int = 96, fps: int = 24,
                         seed: int = 99) -> dict[str, Path]:
    """A fresh source video, mask image and reference video for a validation entry."""
    rng = np.random.default_rng(seed)
    refs, targets, mask = triplet_frames(seed, frames, width, height, rng)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"videoUrl": folder / "source.mp4", "maskUrl": folder / "mask.png",
             "referenceVideoUrl": folder / "reference.mp4"}
    paths["videoUrl"].write_bytes(encode_video(targets, "mp4", "libx264", "yuv420p", fps))
    paths["maskUrl"].write_bytes(_png(mask))
    paths["referenceVideoUrl"].write_bytes(encode_video(refs, "mp4", "libx264", "yuv420p", fps))
    return paths
