"""Fitting validation media like training data: time resampling, fill + centre crop, masks."""

from __future__ import annotations

import numpy as np
import pytest

from iclora_trainer.validation_media import fill_crop, load_fitted, resample_time

pytestmark = pytest.mark.trainer


def test_resample_time_holds_last_frame_and_repeats_images() -> None:
    frames = np.arange(5)[:, None, None, None] * np.ones((5, 2, 2, 3), dtype=np.uint8)
    out = resample_time(frames, 12.0, 6, 24.0)  # half the rate: each frame twice, then hold
    assert out[:, 0, 0, 0].tolist() == [0, 0, 1, 1, 2, 2]
    assert resample_time(frames, 48.0, 4, 24.0)[:, 0, 0, 0].tolist() == [0, 2, 4, 4]
    assert resample_time(frames[:1], None, 3, 24.0).shape[0] == 3


def test_fill_crop_scales_up_to_fill_then_crops_centre() -> None:
    frame = np.zeros((1, 16, 32, 3), dtype=np.uint8)
    frame[:, :, 8:24] = 255  # centre half of the width
    out = fill_crop(frame, 32, 32)  # scale 2 -> 32x64, crop columns 16..47 = the white band
    assert out.shape == (1, 32, 32, 3)
    assert out[:, :, 2:-2].min() > 200


def test_mask_video_white_is_regenerate(tmp_path) -> None:
    from iclora_trainer.dataset.prepared import write_mask

    masks = np.zeros((9, 32, 32), dtype=bool)
    masks[4:, :, :16] = True
    write_mask(tmp_path / "m.mkv", masks, 24)
    out = load_fitted(tmp_path / "m.mkv", 9, 24.0, 64, 64, mask=True)
    assert out.dtype == bool and out.shape == (9, 64, 64)
    assert not out[:4].any() and out[4:, :, :32].all() and not out[4:, :, 32:].any()
