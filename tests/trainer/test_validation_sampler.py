"""Validation sampler on the tiny model: pixel-exact kept region, STG changes the result, reel shape."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from iclora_trainer.validation import (
    GuidanceConfig,
    ValidationEntry,
    ValidationPlan,
    prepare_validation,
    run_entries,
)
from tests.helpers import FPS, FRAMES, HEIGHT, WIDTH

pytestmark = pytest.mark.trainer

CPU = torch.device("cpu")


def _plan(media, stg_scale: float = 1.0, n: int = 1) -> ValidationPlan:
    entry = ValidationEntry("a red car", str(media["video"]), str(media["mask"]), str(media["reference"]))
    return ValidationPlan(
        entries=(entry,) * n,
        negative_prompt="blurry",
        frames=FRAMES,
        frame_rate=FPS,
        width=WIDTH,
        height=HEIGHT,
        stg_scale=stg_scale,
    )


@pytest.fixture(scope="module")
def loaded(tiny_checkpoint, media, tmp_path_factory):
    from iclora_trainer.model.loading import load_transformer, load_video_decoder

    entries = prepare_validation(
        _plan(media),
        str(tiny_checkpoint.model_path),
        str(tiny_checkpoint.text_encoder_path),
        tmp_path_factory.mktemp("val"),
        CPU,
        torch.float32,
    )
    model = load_transformer(tiny_checkpoint.model_path, CPU, torch.float32)
    decoder = load_video_decoder(tiny_checkpoint.model_path, CPU, torch.float32)
    return model, decoder, entries


def _run(loaded, stg: float) -> np.ndarray:
    model, decoder, entries = loaded
    guidance = GuidanceConfig(steps=3, stg_scale=stg)
    return run_entries(model, decoder, entries, guidance, FPS, CPU, torch.float32)[0]


def test_fitting_is_fill_then_centre_crop(loaded, media) -> None:
    from iclora_trainer.dataset.prepared import read_clip

    entry = loaded[2][0]
    assert entry.source.shape == (FRAMES, HEIGHT, WIDTH, 3)
    assert entry.mask.shape == (FRAMES, HEIGHT, WIDTH)
    # 96x64 -> 64x64: no resize, centre crop of columns 16..79; mask white from column 48 -> 32.
    assert np.array_equal(entry.source, read_clip(media["video"])[:, :, 16:80])
    assert not entry.mask[:, :, :32].any() and entry.mask[:, :, 32:].all()
    assert entry.latent_mask.tolist() == [[[False, True], [False, True]]] * 2


def test_kept_region_is_pixel_exact_and_masked_region_generated(loaded) -> None:
    entry = loaded[2][0]
    result = _run(loaded, 1.0)
    assert result.shape == entry.source.shape and result.dtype == np.uint8
    keep = ~entry.mask
    assert np.array_equal(result[keep], entry.source[keep])
    assert not np.array_equal(result[entry.mask], entry.source[entry.mask])


def test_stg_scale_changes_the_result(loaded) -> None:
    a = _run(loaded, 0.0)
    b = _run(loaded, 1.0)
    assert not np.array_equal(a, b)
    assert np.array_equal(a, _run(loaded, 0.0))  # deterministic for a fixed seed


def test_stg_off_runs_no_perturbed_pass(loaded, monkeypatch) -> None:
    import iclora_trainer.validation as v

    calls: list[int] = []
    real = v._predict

    def spy(*args, **kw):
        calls.append(len(args[9]))  # perturbation configs = passes in the batch
        return real(*args, **kw)

    monkeypatch.setattr(v, "_predict", spy)
    _run(loaded, 0.0)
    assert calls == [2] * 3  # cond + negative, no STG pass


def test_reel_frame_count_and_size(tmp_path, loaded) -> None:
    import av

    from iclora_trainer.reel import CAPTION_HEIGHT, write_reel

    entry = loaded[2][0]
    result = _run(loaded, 0.0)
    panel = (entry.source, entry.mask, entry.reference, result, entry.prompt)
    path = write_reel(tmp_path / "reel.mp4", [panel, panel], FPS)
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        assert stream.codec_context.name == "h264"
        frames = [f for f in c.decode(video=0)]
    assert len(frames) == 2 * FRAMES
    assert (frames[0].width, frames[0].height) == (4 * WIDTH, HEIGHT + CAPTION_HEIGHT)
    assert frames[0].format.name == "yuv420p"
