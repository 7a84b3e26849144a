"""The prepared dataset: what the preflight writes and the trainer reads.

Layout of a prepared dataset directory:

    manifest.json                  PreparedManifest (geometry, triplets, skipped)
    clips/<name>/reference.mkv     fitted reference, FFV1 lossless (bgr0), W x H, F frames
    clips/<name>/target.mkv        fitted target, same geometry
    clips/<name>/mask.mkv          fitted mask, FFV1 gray, 255 = regenerate, 0 = keep
    clips/<name>/caption.txt       final caption (trigger phrase already prepended)

Clips are lossless so the trainer sees exactly the pixels the preflight
fitted, and they are written frame by frame so nothing holds a whole clip.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from iclora_api.contract import SkippedTriplet  # also in preflight.json and status.dataset

MANIFEST_NAME = "manifest.json"
CLIPS_DIR = "clips"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PreparedTriplet(_Model):
    name: str
    reference: str = Field(description="Path of the fitted reference, relative to the dataset root.")
    target: str
    mask: str
    caption: str = Field(description="Path of caption.txt (final caption, trigger phrase first), relative.")
    frames: int
    sources: dict[str, str] = Field(
        default_factory=dict, description="Archive paths of the original reference, target, mask, caption."
    )


class PreparedManifest(_Model):
    version: Literal[1] = 1
    width: int
    height: int
    number_of_frames: int
    frame_rate: int
    trigger_phrase: str = ""
    triplets: list[PreparedTriplet]
    skipped: list[SkippedTriplet] = Field(default_factory=list)
    ignored: list[str] = Field(default_factory=list)

    def write(self, root: Path) -> Path:
        path = Path(root) / MANIFEST_NAME
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(self.model_dump_json(indent=2), encoding="utf-8")
        tmp.replace(path)
        return path

    @classmethod
    def read(cls, root: Path) -> PreparedManifest:
        return cls.model_validate_json((Path(root) / MANIFEST_NAME).read_text(encoding="utf-8"))


def triplet_paths(name: str) -> dict[str, str]:
    """Relative paths of one triplet's files in the prepared layout."""
    base = f"{CLIPS_DIR}/{name}"
    return {
        "reference": f"{base}/reference.mkv",
        "target": f"{base}/target.mkv",
        "mask": f"{base}/mask.mkv",
        "caption": f"{base}/caption.txt",
    }


def _write_frames(path: Path, frames: Iterable[np.ndarray], fps: int, pix_fmt: str, src_fmt: str) -> int:
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with av.open(str(path), "w") as container:
        stream = container.add_stream("ffv1", rate=Fraction(fps))
        stream.pix_fmt = pix_fmt
        for frame in frames:
            if count == 0:
                stream.height, stream.width = frame.shape[:2]
            video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format=src_fmt)
            for packet in stream.encode(video_frame.reformat(format=pix_fmt)):
                container.mux(packet)
            count += 1
        for packet in stream.encode():
            container.mux(packet)
    return count


def write_clip(path: Path, frames: Iterable[np.ndarray], fps: int) -> int:
    """Write RGB uint8 frames (H, W, 3) losslessly; returns the frame count."""
    return _write_frames(Path(path), frames, fps, "bgr0", "rgb24")


def write_mask(path: Path, frames: Iterable[np.ndarray], fps: int) -> int:
    """Write binary masks (H, W), bool or uint8 (nonzero = regenerate), as 0/255 gray."""
    binary = (np.where(np.asarray(f) > 0, 255, 0).astype(np.uint8) for f in frames)
    return _write_frames(Path(path), binary, fps, "gray", "gray")


def iter_clip(path: Path) -> Iterator[np.ndarray]:
    """Yield RGB uint8 frames (H, W, 3) of a prepared clip."""
    import av

    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            yield frame.to_ndarray(format="rgb24")


def read_clip(path: Path) -> np.ndarray:
    """A whole prepared clip as (F, H, W, 3) uint8."""
    return np.stack(list(iter_clip(path)))


def iter_mask(path: Path) -> Iterator[np.ndarray]:
    """Yield the frames (H, W) bool of a prepared mask, True = regenerate."""
    import av

    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            yield frame.to_ndarray(format="gray") > 127


def read_mask(path: Path) -> np.ndarray:
    """A prepared mask as (F, H, W) bool, True = regenerate."""
    return np.stack(list(iter_mask(path)))
