"""`iclora generate` runs what the training delivered: the final validation result, exactly."""

from __future__ import annotations

import av
import numpy as np
import pytest

from iclora_api.contract import ExitCode
from iclora_trainer.storage import LocalStore
from iclora_trainer.validation import ValidationEntry, ValidationPlan
from tests.helpers import FPS, FRAMES, HEIGHT, SINGLE, WIDTH, make_plan, make_settings

pytestmark = [pytest.mark.trainer, pytest.mark.slow]


def _decode(path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_checkpoint, media):
    """A tiny training with one validation entry; the final reel's panels, captured as arrays."""
    import iclora_trainer.reel as reel
    from iclora_dev.synthetic_prepared import write_synthetic_prepared
    from iclora_trainer.loop import train

    tmp = tmp_path_factory.mktemp("generate")
    prepared = write_synthetic_prepared(tmp / "prepared", clips=2, width=WIDTH, height=HEIGHT, frames=FRAMES)
    entry = ValidationEntry("a prompt", str(media["video"]), str(media["mask"]), str(media["reference"]))
    plan = make_plan(steps=3)
    plan = type(plan)(**{**plan.__dict__, "validation": ValidationPlan((entry,), "blurry", FRAMES, FPS, WIDTH,
                                                                        HEIGHT, 1.0)})
    settings = make_settings(tiny_checkpoint, tmp / "work", validation_steps=2, checkpoint_interval=100, seed=7)
    panels: list = []
    real = reel.write_reel
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(reel, "write_reel", lambda path, p, fps: panels.append(p) or real(path, p, fps))
        outcome = train(plan, settings, prepared, LocalStore(tmp / "out"), SINGLE)
    assert outcome.result.status == "Succeeded" and panels
    source, mask, _, result, _ = panels[-1][0]
    return {"lora": outcome.lora_path, "source": source, "mask": mask, "result": result, "settings": settings}


def _argv(trained, tiny_checkpoint, media, out, *extra):
    return ["generate", "--lora", str(trained["lora"]), "--source", str(media["video"]), "--mask", str(media["mask"]),
            "--reference", str(media["reference"]), "--prompt", "a prompt", "--negative-prompt", "blurry",
            "--steps", "2", "--seed", "7", "--stg-scale", "1.0",
            "--model-path", str(tiny_checkpoint.model_path), "--text-encoder-path",
            str(tiny_checkpoint.text_encoder_path), "--device", "cpu", "--output", str(out), *extra]


def test_generate_reproduces_the_final_validation_result_and_keeps_the_source(trained, tiny_checkpoint, media,
                                                                             tmp_path):
    from iclora_api.cli import main

    out, reel = tmp_path / "result.mp4", tmp_path / "reel.mp4"
    # Size, frames and fps default to what the LoRA records (64x64, 9 frames, the training fps).
    assert main(_argv(trained, tiny_checkpoint, media, out, "--lossless", "--reel", str(reel))) == 0
    frames = _decode(out)
    assert frames.shape == (FRAMES, HEIGHT, WIDTH, 3)
    np.testing.assert_array_equal(frames, trained["result"])  # the preview is what generate produces
    kept = ~trained["mask"]
    assert kept.any() and (~kept).any()
    np.testing.assert_array_equal(frames[kept], trained["source"][kept])  # kept region: source pixels exactly
    assert not np.array_equal(frames[~kept], trained["source"][~kept])  # masked region regenerated
    with av.open(str(reel)) as c:
        assert c.streams.video[0].frames in (0, FRAMES) and c.streams.video[0].codec_context.width == 4 * WIDTH


def test_generate_follows_the_flags(trained, tiny_checkpoint, media, tmp_path):
    from iclora_api.cli import main

    out = tmp_path / "small.mp4"
    assert main(_argv(trained, tiny_checkpoint, media, out, "--size", "96x64", "--number-of-frames", "18",
                      "--frame-rate", "12", "--lossless", "--set", "attention_backends=math|efficient",
                      "--set", "activation_checkpointing=none")) == 0
    with av.open(str(out)) as c:
        stream = c.streams.video[0]
        assert float(stream.average_rate) == 12.0
        frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(stream)])
    assert frames.shape == (17, 64, 96, 3)  # 18 snapped to 8k+1


def test_a_lora_of_another_base_checkpoint_is_refused_naming_both(trained, tiny_checkpoint, media, tmp_path,
                                                                  capsys):
    from iclora_api.cli import main
    from iclora_dev.tiny_model import create_tiny_checkpoint

    other = create_tiny_checkpoint(tmp_path / "other", seed=1)
    argv = _argv(trained, tiny_checkpoint, media, tmp_path / "x.mp4")
    argv[argv.index("--model-path") + 1] = str(other.model_path)
    assert main(argv) == ExitCode.MODEL_CONFIG_INVALID
    err = capsys.readouterr().err
    assert tiny_checkpoint.model_path.name in err and "--model-path" in err and "fingerprint" in err
    assert not (tmp_path / "x.mp4").exists()
