"""The debug archive: what the trainer will see, in a form people can open."""

from __future__ import annotations

import zipfile
from fractions import Fraction
from pathlib import Path

import numpy as np

from iclora_trainer.dataset.prepared import MANIFEST_NAME, PreparedManifest, iter_clip, read_mask


def _write_mp4(path: Path, frames, fps: int) -> None:
    import av

    with av.open(str(path), "w") as container:
        stream = None
        for frame in frames:
            if stream is None:
                stream = container.add_stream("libx264", rate=Fraction(fps))
                stream.height, stream.width = frame.shape[:2]
                stream.pix_fmt = "yuv420p"
                stream.options = {"crf": "18", "preset": "veryfast"}
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        if stream is not None:
            for packet in stream.encode():
                container.mux(packet)


def overlay(target: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The target with the regenerated region tinted red (kept pixels unchanged)."""
    out = target.astype(np.float32)
    red = np.array([255.0, 0.0, 0.0])
    out[mask] = 0.5 * out[mask] + 0.5 * red
    return out.astype(np.uint8)


def write_debug_archive(prepared: Path, archive: Path, work: Path) -> Path:
    """Zip of fitted reference, target, mask overlay (mp4) and caption per triplet, plus the manifest."""
    manifest = PreparedManifest.read(prepared)
    work.mkdir(parents=True, exist_ok=True)
    archive.parent.mkdir(parents=True, exist_ok=True)
    fps = manifest.frame_rate
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.write(prepared / MANIFEST_NAME, MANIFEST_NAME)
        for t in manifest.triplets:
            for role in ("reference", "target"):
                out = work / f"{t.name}_{role}.mp4"
                _write_mp4(out, iter_clip(prepared / getattr(t, role)), fps)
                zf.write(out, f"{t.name}/{role}.mp4")
                out.unlink()
            mask = read_mask(prepared / t.mask)
            out = work / f"{t.name}_overlay.mp4"
            _write_mp4(out, (overlay(f, m) for f, m in zip(iter_clip(prepared / t.target), mask, strict=False)), fps)
            zf.write(out, f"{t.name}/mask_overlay.mp4")
            out.unlink()
            zf.write(prepared / t.caption, f"{t.name}/caption.txt")
    return archive
