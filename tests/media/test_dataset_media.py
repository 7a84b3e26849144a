"""Fitting real media: containers, masks, sizes, frame rates, rotation, short clips."""

from __future__ import annotations

import numpy as np
import pytest

from iclora_trainer.dataset.preflight import FitParams, prepare_dataset
from iclora_trainer.dataset.prepared import PreparedManifest, read_clip, read_mask
from tests.helpers import image, rotate_mp4, solid_frames, vfr_mkv, video, write_zip

pytestmark = pytest.mark.media

W, H = 64, 64  # the bucket the tests fit to (the functions take any size; the API supplies real ones)


def params(n=9, fps=24, auto=False, w=W, h=H, trigger="repl4ce") -> FitParams:
    return FitParams(number_of_frames=n, frame_rate=fps, width=w, height=h, auto_scale_input=auto,
                     trigger_phrase=trigger)


def white_box(w, h, box):
    m = np.zeros((h, w), np.uint8)
    x0, y0, x1, y1 = box
    m[y0:y1, x0:x1] = 255
    return m


def prepare(tmp_path, entries, p=None):
    z = write_zip(tmp_path / "d.zip", entries)
    out = tmp_path / "out"
    report = prepare_dataset(z, p or params(), out, tmp_path / "work")
    return report, out


@pytest.mark.parametrize("ext", ["mp4", "mov", "webm", "mkv", "avi"])
def test_every_container_is_fitted(tmp_path, ext):
    frames = solid_frames(12, 96, 64)
    report, out = prepare(tmp_path, {
        f"s_start.{ext}": video(frames, ext), f"s_end.{ext}": video(frames, ext),
        "s_mask.png": image(white_box(96, 64, (0, 0, 48, 64))),
    })
    assert report.as_dict()["errors"] == []
    assert report.usable == 1
    manifest = PreparedManifest.read(out)
    t = manifest.triplets[0]
    clip = read_clip(out / t.target)
    assert clip.shape == (9, H, W, 3)
    # Frame k at 24 fps is source frame k: brightness 10 * k (lossy codecs: a few levels off).
    assert np.allclose(clip.mean(axis=(1, 2, 3)), [10 * k for k in range(9)], atol=6)


def test_mismatched_sizes_stay_aligned(tmp_path):
    """Reference, target and mask of different sizes (same scene) land on the same pixels."""
    def scene(w, h):
        return [np.pad(np.full((h // 2, w // 4, 3), 255, np.uint8), ((h // 4, h - h // 4 - h // 2),
                                                                      (w // 2, w - w // 2 - w // 4), (0, 0)))] * 12

    mask = white_box(640, 360, (320, 90, 480, 270))
    report, out = prepare(tmp_path, {
        "s_start.mp4": video(scene(320, 180)), "s_end.mkv": video(scene(160, 90), "mkv"),
        "s_mask.png": image(mask),
    }, params(w=128, h=72))
    assert report.ok, report.as_dict()
    t = PreparedManifest.read(out).triplets[0]
    ref, tgt = read_clip(out / t.reference)[0].mean(-1) > 127, read_clip(out / t.target)[0].mean(-1) > 127
    m = read_mask(out / t.mask)[0]
    assert m.shape == ref.shape == tgt.shape == (72, 128)
    assert (ref ^ m).mean() < 0.03
    assert (tgt ^ m).mean() < 0.03


def test_fill_and_center_crop_for_another_aspect(tmp_path):
    # A 16:9 source with white left and right thirds, fitted to 1:1: the crop keeps the middle.
    frame = np.zeros((90, 160, 3), np.uint8)
    frame[:, :40] = 255
    frame[:, 120:] = 255
    report, out = prepare(tmp_path, {"s_start.mp4": video([frame] * 12), "s_end.mp4": video([frame] * 12),
                                     "s_mask.png": image(white_box(160, 90, (0, 0, 160, 90)))})
    t = PreparedManifest.read(out).triplets[0]
    clip = read_clip(out / t.target)[0]
    assert clip.shape == (H, W, 3)
    assert clip[:, W // 2 - 4:W // 2 + 4].mean() < 20  # centre of the scene kept, nothing letterboxed
    assert clip[:, :2].mean() > 200 or clip[:, -2:].mean() > 200 or clip.mean() < 20


def test_frame_rate_is_resampled_by_time(tmp_path):
    frames48 = solid_frames(24, 32, 32)  # 0.5 s at 48 fps
    report, out = prepare(tmp_path, {"s_start.mp4": video(frames48, fps=48), "s_end.mp4": video(frames48, fps=48),
                                     "s_mask.png": image(white_box(32, 32, (0, 0, 16, 32)))})
    clip = read_clip(out / PreparedManifest.read(out).triplets[0].target)
    # At 24 fps every other source frame: brightness 0, 20, 40, ...
    assert np.allclose(clip.mean(axis=(1, 2, 3)), [20 * k for k in range(9)], atol=6)


def test_variable_frame_rate_shows_the_frame_on_screen_at_each_time(tmp_path):
    # Frames at 0, 10, 100, 110, 300, 310, 400 ms; sampled at 24 fps (every 41.7 ms).
    clip_bytes = vfr_mkv([(0, 0), (40, 10), (80, 100), (120, 110), (160, 300), (200, 310), (240, 400)])
    report, out = prepare(tmp_path, {"s_start.mkv": clip_bytes, "s_end.mkv": clip_bytes,
                                     "s_mask.png": image(white_box(32, 32, (0, 0, 32, 16)))}, params(n=9, w=32, h=32))
    assert report.ok, report.as_dict()
    levels = read_clip(out / PreparedManifest.read(out).triplets[0].target).mean(axis=(1, 2, 3))
    expected = [0, 40, 40, 120, 120, 120, 120, 120, 200]  # at 0, 42, 83, 125, ... 333 ms
    assert np.allclose(levels, expected, atol=8)


def test_rotated_video_is_fitted_as_displayed(tmp_path):
    frame = np.zeros((48, 64, 3), np.uint8)
    frame[:, :8] = 255  # a stripe on the left of the stored picture
    rotated = rotate_mp4(video([frame] * 12))
    report, out = prepare(tmp_path, {"s_start.mp4": rotated, "s_end.mp4": rotated,
                                     "s_mask.png": image(white_box(48, 64, (0, 0, 48, 64)))}, params(w=48, h=64))
    clip = read_clip(out / PreparedManifest.read(out).triplets[0].target)[0]
    assert clip.shape == (64, 48, 3)  # portrait, as a phone shows it
    assert clip[:4].mean() > 200 and clip[-8:].mean() < 30  # rotated clockwise: the stripe is on top


def test_short_clips_skipped_with_both_lengths_unless_auto_scaled(tmp_path):
    entries = {"s_start.mp4": video(solid_frames(12, 32, 32)), "s_end.mp4": video(solid_frames(10, 32, 32)),
               "s_mask.png": image(white_box(32, 32, (0, 0, 16, 32)))}
    report, _ = prepare(tmp_path, entries, params(n=17))
    assert report.usable == 0
    reason = report.triplets[0]["reason"]
    assert "12" in reason and "10" in reason and "17" in reason
    with pytest.raises(Exception, match="no usable triplet"):
        report.raise_for_status()
    (tmp_path / "auto").mkdir()
    report, out = prepare(tmp_path / "auto", entries, params(n=17, auto=True))
    assert report.usable == 1
    clip = read_clip(out / PreparedManifest.read(out).triplets[0].target)
    assert clip.shape[0] == 17
    levels = clip.mean(axis=(1, 2, 3))
    assert levels[0] < 6 and levels[-1] > 70 and np.all(np.diff(levels) >= -6)  # the whole clip, stretched


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA"])
def test_image_masks_in_any_mode_apply_to_every_frame(tmp_path, mode):
    m = white_box(32, 32, (8, 8, 24, 24))
    report, out = prepare(tmp_path, {"s_start.mp4": video(solid_frames(12, 32, 32)),
                                     "s_end.mp4": video(solid_frames(12, 32, 32)),
                                     "s_mask.webp" if mode != "RGBA" else "s_mask.png": image(m, "PNG", mode)},
                          params(w=32, h=32))
    mask = read_mask(out / PreparedManifest.read(out).triplets[0].mask)
    assert mask.shape == (9, 32, 32)
    assert all((f == (m > 127)).all() for f in mask)


def test_rgba_transparency_counts_as_keep(tmp_path):
    from PIL import Image

    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[..., :3] = 255
    rgba[:, :16, 3] = 255  # left half opaque white, right half transparent white
    import io

    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, format="PNG")
    report, out = prepare(tmp_path, {"s_start.mp4": video(solid_frames(12, 32, 32)),
                                     "s_end.mp4": video(solid_frames(12, 32, 32)), "s_mask.png": buf.getvalue()},
                          params(w=32, h=32))
    mask = read_mask(out / PreparedManifest.read(out).triplets[0].mask)[0]
    assert mask[:, :14].all() and not mask[:, 18:].any()


@pytest.mark.parametrize("mask_frames", [4, 30])
def test_video_masks_follow_the_target_length(tmp_path, mask_frames):
    frames = [np.repeat(white_box(32, 32, (0, 0, 3 * (i + 1), 32))[..., None], 3, -1) for i in range(mask_frames)]
    report, out = prepare(tmp_path, {"s_start.mp4": video(solid_frames(12, 32, 32)),
                                     "s_end.mp4": video(solid_frames(12, 32, 32)), "s_mask.mp4": video(frames)},
                          params(w=32, h=32))
    mask = read_mask(out / PreparedManifest.read(out).triplets[0].mask)
    assert mask.shape[0] == 9
    widths = [int(m[16].sum()) for m in mask]
    if mask_frames < 9:  # shorter: the last frame is held
        assert widths[:4] == [3, 6, 9, 12] and widths[4:] == [12] * 5
    else:  # longer: trimmed to the target's frames
        assert widths == [3 * (i + 1) for i in range(9)]


def test_all_black_mask_is_skipped_and_all_white_is_valid(tmp_path):
    clip = video(solid_frames(12, 32, 32))
    report, _ = prepare(tmp_path, {"a_start.mp4": clip, "a_end.mp4": clip, "a_mask.png": image(np.zeros((32, 32),
                                                                                                         np.uint8)),
                                   "b_start.mp4": clip, "b_end.mp4": clip,
                                   "b_mask.jpg": image(np.full((32, 32), 255, np.uint8), "JPEG")}, params(w=32, h=32))
    status = {t["name"]: t for t in report.triplets}
    assert status["a"]["status"] == "skipped" and "all black" in status["a"]["reason"]
    assert status["b"]["status"] == "usable"


def test_captions_bom_whitespace_and_trigger(tmp_path):
    clip = video(solid_frames(12, 32, 32))
    mask = image(white_box(32, 32, (0, 0, 16, 32)))
    report, out = prepare(tmp_path, {"a_start.mp4": clip, "a_end.mp4": clip, "a_mask.png": mask,
                                     "a.txt": "\ufeff  a  red\n\tbillboard  ".encode(),
                                     "b_start.mp4": clip, "b_end.mp4": clip, "b_mask.png": mask},
                          params(w=32, h=32, trigger="repl4ce"))
    captions = {t.name: (out / t.caption).read_text() for t in PreparedManifest.read(out).triplets}
    assert captions == {"a": "repl4ce a red billboard", "b": "repl4ce"}


def test_undecodable_video_is_an_error_naming_the_file(tmp_path):
    report, _ = prepare(tmp_path, {"s_start.mp4": b"garbage", "s_end.mp4": video(solid_frames(12, 32, 32)),
                                   "s_mask.png": image(white_box(32, 32, (0, 0, 16, 32)))})
    assert not report.ok
    assert "s_start.mp4" in report.errors[0]["message"]
