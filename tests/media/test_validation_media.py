"""Validation media are fitted by the training data's fitting code: same files, same pixels.

Each test writes real files (PyAV, Pillow), fits them through the preflight (what the
trainer trains on: the lossless prepared clips) and through the validation preview
(`validation_media.load_fitted`, what the sampler and the reel use), and compares.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from iclora_trainer.dataset.preflight import FitParams, prepare_dataset
from iclora_trainer.dataset.prepared import PreparedManifest, read_clip, read_mask, write_mask
from iclora_trainer.validation_media import load_fitted
from tests.helpers import rotate_mp4, solid_frames, video, write_zip

pytestmark = pytest.mark.media

N, FPS = 9, 24


def marked_frames(n: int, width: int, height: int, box: tuple[int, int, int, int]) -> list[np.ndarray]:
    """Frames whose brightness encodes their index (10 levels apart) with a white marker box."""
    x0, y0, x1, y1 = box
    frames = solid_frames(n, width, height)
    for f in frames:
        f[y0:y1, x0:x1] = 255
    return frames


def exif_jpeg(displayed: np.ndarray, orientation: int) -> bytes:
    """A JPEG stored sideways with the EXIF Orientation that shows it as `displayed`."""
    from PIL import Image

    # exif_transpose turns 6 into a clockwise quarter turn and 8 into a counter-clockwise one.
    stored = Image.fromarray(displayed).transpose(
        Image.Transpose.ROTATE_90 if orientation == 6 else Image.Transpose.ROTATE_270)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    stored.save(buf, format="JPEG", quality=95, exif=exif.tobytes())
    return buf.getvalue()


def png16(mask: np.ndarray) -> bytes:
    from PIL import Image

    img = Image.fromarray(mask.astype(np.uint16))
    assert img.mode == "I;16"
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def both_paths(tmp_path: Path, start: bytes, end: bytes, mask_name: str, mask: bytes, width: int, height: int):
    """(training, validation): each a (reference, target, mask) fitted from the same files."""
    ext = mask_name.rsplit(".", 1)[1]
    z = write_zip(tmp_path / "d.zip", {"s_start.mp4": start, "s_end.mp4": end, f"s_mask.{ext}": mask})
    out = tmp_path / "prepared"
    params = FitParams(number_of_frames=N, frame_rate=FPS, width=width, height=height)
    report = prepare_dataset(z, params, out, tmp_path / "work")
    assert report.ok, report.as_dict()
    t = PreparedManifest.read(out).triplets[0]
    training = (read_clip(out / t.reference), read_clip(out / t.target), read_mask(out / t.mask))

    files = tmp_path / "validation"
    files.mkdir()
    (files / "reference.mp4").write_bytes(start)
    (files / "source.mp4").write_bytes(end)
    (files / mask_name).write_bytes(mask)
    size = (N, float(FPS), width, height)  # the validation plan's frames, rate (float) and size
    validation = (load_fitted(files / "reference.mp4", *size), load_fitted(files / "source.mp4", *size),
                  load_fitted(files / mask_name, *size, mask=True))
    return training, validation


def assert_same(training, validation) -> None:
    for a, b in zip(training, validation, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert np.array_equal(a, b)


def corners(arr: np.ndarray, k: int) -> dict[str, float]:
    """Mean of the k x k corners of (H, W[, C])."""
    return {"tl": arr[:k, :k].mean(), "tr": arr[:k, -k:].mean(), "bl": arr[-k:, :k].mean(),
            "br": arr[-k:, -k:].mean()}


@pytest.mark.parametrize("orientation", [6, 8])
def test_phone_clip_and_exif_mask_are_fitted_upright_in_both_paths(tmp_path, orientation) -> None:
    # Stored landscape 128x96 with a marker top-left; the display matrix turns it clockwise
    # into a 96x128 portrait, where the marker is top-right.
    clip = rotate_mp4(video(marked_frames(12, 128, 96, (0, 0, 48, 48))))
    # The mask as displayed: the top-right quarter white; stored sideways with an EXIF Orientation.
    displayed = np.zeros((128, 96), np.uint8)
    displayed[:64, 48:] = 255
    training, validation = both_paths(tmp_path, clip, clip, "mask.jpg", exif_jpeg(displayed, orientation), 64, 64)
    assert_same(training, validation)

    reference, source, mask = validation
    assert source.shape == (N, 64, 64, 3) and mask.shape == (N, 64, 64)
    # Fill 96x128 -> 64x86, centre crop rows 11..74: the 48x48 marker is 32x32, rows 0..20 on the right.
    c = corners(source[0], 12)
    assert c["tr"] > 200 and max(c["tl"], c["bl"], c["br"]) < 30
    # Timestamp sampling at the clip's own rate: frame k is source frame k (brightness 10 k).
    assert np.allclose(source[:, -12:, :12].mean(axis=(1, 2, 3)), [10 * k for k in range(N)], atol=6)
    m = corners(mask[0], 12)
    assert m["tr"] == 1 and m["tl"] == m["bl"] == m["br"] == 0
    assert all(np.array_equal(f, mask[0]) for f in mask)  # an image mask holds for every frame


def test_sixteen_bit_png_mask_is_scaled_not_clipped_in_both_paths(tmp_path) -> None:
    clip = video(solid_frames(12, 64, 64))
    levels = np.zeros((64, 64), np.uint16)
    levels[:, :16] = 65535  # white: regenerate
    levels[:, 16:32] = 50000  # light gray (195 of 255): regenerate
    levels[:, 32:48] = 20000  # dark gray (78 of 255): keep (clipping to 8 bits would read 255)
    training, validation = both_paths(tmp_path, clip, clip, "mask.png", png16(levels), 64, 64)
    assert_same(training, validation)
    mask = validation[2]
    assert mask[:, :, :30].all() and not mask[:, :, 34:].any()


def test_alpha_only_and_ten_bit_masks_follow_the_one_mask_rule_in_both_paths(tmp_path) -> None:
    """docs/dataset.md, Masks: an alpha-only PNG (RGB black, alpha varies: the alpha is the mask)
    and a 10-bit video mask (scaled, not clipped: a 3% grey keeps) give the same pixels in both."""
    import av
    from PIL import Image

    clip = video(solid_frames(12, 64, 64))
    (tmp_path / "png").mkdir()
    (tmp_path / "mkv").mkdir()
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[:, 32:, 3] = 255  # opaque black strokes on transparency: regenerate
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, format="PNG")
    training, validation = both_paths(tmp_path / "png", clip, clip, "mask.png", buf.getvalue(), 64, 64)
    assert_same(training, validation)
    assert validation[2][:, :, 32:].all() and not validation[2][:, :, :32].any()

    levels = np.zeros((64, 64), np.uint16)
    levels[:, 32:] = 65535
    levels[:20, :20] = 2000  # 3% grey: keep
    out = io.BytesIO()
    with av.open(out, "w", format="matroska") as c:
        s = c.add_stream("ffv1", rate=24)
        s.width = s.height = 64
        s.pix_fmt = "yuv420p10le"
        for i in range(12):
            f = av.VideoFrame.from_ndarray(levels, format="gray16le").reformat(format="yuv420p10le")
            f.pts = i
            for packet in s.encode(f):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)
    training, validation = both_paths(tmp_path / "mkv", clip, clip, "mask.mkv", out.getvalue(), 64, 64)
    assert_same(training, validation)
    assert validation[2][:, :, 32:].all() and not validation[2][:, :, :32].any()


def test_rotated_video_mask_is_fitted_upright_in_both_paths(tmp_path) -> None:
    clip = video(solid_frames(12, 48, 64))
    # A stored landscape mask video, white top-left, rotated clockwise for display: white top-right.
    mask_frames = [np.repeat(f[..., None], 3, -1) for f in [np.zeros((48, 64), np.uint8)] * 12]
    for f in mask_frames:
        f[:24, :24] = 255
    training, validation = both_paths(tmp_path, clip, clip, "mask.mp4", rotate_mp4(video(mask_frames)), 48, 64)
    assert_same(training, validation)
    m = corners(validation[2][0], 12)
    assert m["tr"] == 1 and m["tl"] == m["bl"] == m["br"] == 0


def test_mask_video_white_is_regenerate(tmp_path) -> None:
    masks = np.zeros((9, 32, 32), dtype=bool)
    masks[4:, :, :16] = True
    write_mask(tmp_path / "m.mkv", masks, 24)
    out = load_fitted(tmp_path / "m.mkv", 9, 24.0, 64, 64, mask=True)
    assert out.dtype == bool and out.shape == (9, 64, 64)
    assert not out[:4].any() and out[4:, :, :32].all() and not out[4:, :, 32:].any()


def test_short_source_holds_its_last_frame(tmp_path) -> None:
    (tmp_path / "short.mp4").write_bytes(video(solid_frames(5, 32, 32)))
    out = load_fitted(tmp_path / "short.mp4", N, float(FPS), 32, 32)
    assert out.shape == (N, 32, 32, 3)
    assert np.allclose(out.mean(axis=(1, 2, 3)), [0, 10, 20, 30, 40, 40, 40, 40, 40], atol=6)


def test_long_source_is_decoded_only_up_to_the_frames_needed(tmp_path, monkeypatch) -> None:
    import iclora_trainer.dataset.media as media

    decoded: list[int] = []  # frames decoded, per opening of the file
    real_open = media._open

    class Counting:
        def __init__(self, container) -> None:
            self._c = container

        def __getattr__(self, name):
            return getattr(self._c, name)

        def __enter__(self):
            decoded.append(0)
            return self

        def __exit__(self, *exc):
            return self._c.__exit__(*exc)

        def decode(self, *args, **kwargs):
            for frame in self._c.decode(*args, **kwargs):
                decoded[-1] += 1
                yield frame

    monkeypatch.setattr(media, "_open", lambda path, label: Counting(real_open(path, label)))
    (tmp_path / "long.mp4").write_bytes(video(solid_frames(240, 32, 32)))  # 10 s at 24 fps
    out = load_fitted(tmp_path / "long.mp4", N, float(FPS), 32, 32)
    assert out.shape == (N, 32, 32, 3)
    # The probe decodes the first frame; the fit decodes the 9 frames and one more to know
    # the 9th is over, then stops: nowhere near the 240 of the file.
    assert decoded == [1, N + 1]
