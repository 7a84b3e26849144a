"""The training loop renders and uploads the validation reel when the spec has entries."""

from __future__ import annotations

import json

import av
import pytest

from iclora_trainer.reel import CAPTION_HEIGHT
from iclora_trainer.storage import LocalStore
from iclora_trainer.validation import ValidationEntry, ValidationPlan
from tests.helpers import FPS, FRAMES, HEIGHT, SINGLE, WIDTH, make_plan, make_settings

pytestmark = pytest.mark.trainer


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from iclora_dev.synthetic_prepared import write_synthetic_prepared

    return write_synthetic_prepared(tmp_path_factory.mktemp("prepared"), clips=2, width=64, height=64, frames=9)


def test_loop_uploads_validation_reel(tmp_path, tiny_checkpoint, prepared, media, monkeypatch) -> None:
    import iclora_trainer.validation as v
    from iclora_trainer.loop import train

    renders: list[int] = []
    real = v.render_validation
    monkeypatch.setattr(v, "render_validation", lambda *a, **k: renders.append(1) or real(*a, **k))
    entry = ValidationEntry("a prompt", str(media["video"]), str(media["mask"]), str(media["reference"]))
    vplan = ValidationPlan((entry, entry), "blurry", FRAMES, FPS, WIDTH, HEIGHT, 1.0)
    plan = make_plan(steps=4)
    plan = type(plan)(**{**plan.__dict__, "validation": vplan})
    settings = make_settings(
        tiny_checkpoint, tmp_path / "work", validation_steps=2, validation_interval=2, checkpoint_interval=100
    )
    out = tmp_path / "out"
    outcome = train(plan, settings, prepared, LocalStore(out), SINGLE)

    assert outcome.result.status == "Succeeded"
    assert len(renders) == 2  # step 2 (interval) and the end
    reel = out / "artifacts" / "validation.mp4"
    result = json.loads((out / "result.json").read_text())
    assert result["artifacts"]["video"] == outcome.result.artifacts.video
    assert result["artifacts"]["video"].endswith("artifacts/validation.mp4")
    with av.open(str(reel)) as c:
        frames = list(c.decode(video=0))
    assert len(frames) == 2 * FRAMES
    assert (frames[0].width, frames[0].height) == (4 * WIDTH, HEIGHT + CAPTION_HEIGHT)


def test_loop_without_entries_has_no_video(tmp_path, tiny_checkpoint, prepared) -> None:
    from iclora_trainer.loop import train

    settings = make_settings(tiny_checkpoint, tmp_path / "work", checkpoint_interval=100)
    out = tmp_path / "out"
    outcome = train(make_plan(steps=2), settings, prepared, LocalStore(out), SINGLE)
    assert outcome.result.status == "Succeeded"
    assert outcome.result.artifacts.video is None
    assert not (out / "artifacts" / "validation.mp4").exists()


def test_unreadable_validation_media_does_not_fail_the_run(tmp_path, tiny_checkpoint, prepared) -> None:
    from iclora_trainer.loop import train

    missing = str(tmp_path / "missing.mp4")
    entry = ValidationEntry("p", missing, missing, missing)
    plan = make_plan(steps=2)
    plan = type(plan)(**{**plan.__dict__, "validation": ValidationPlan((entry,), "n", FRAMES, FPS, WIDTH, HEIGHT, 1.0)})
    settings = make_settings(tiny_checkpoint, tmp_path / "work", checkpoint_interval=100)
    outcome = train(plan, settings, prepared, LocalStore(tmp_path / "out"), SINGLE)
    assert outcome.result.status == "Succeeded"
    assert outcome.result.artifacts.video is None
