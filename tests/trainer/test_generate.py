"""`iclora generate` runs what the training delivered: the final validation result, exactly."""

from __future__ import annotations

import av
import numpy as np
import pytest

from iclora_api.contract import ExitCode
from iclora_trainer.storage import LocalStore
from iclora_trainer.validation import ValidationEntry, ValidationPlan
from tests.helpers import FRAMES, HEIGHT, SINGLE, WIDTH, make_plan, make_settings

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
    # The preview differs from the training clips (96x64 and 17 frames at 12 fps vs 64x64x9 at 24),
    # samples with its own negative prompt, STG scale, steps and seed: generate must take them all
    # from the LoRA's record.
    plan = type(plan)(**{**plan.__dict__, "validation": ValidationPlan((entry,), "blurry, static", 17, 12.0,
                                                                        96, HEIGHT, 0.5)})
    settings = make_settings(tiny_checkpoint, tmp / "work", validation_steps=2, validation_cfg_scale=2.0,
                             checkpoint_interval=100, seed=7)
    panels: list = []
    real = reel.write_reel
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(reel, "write_reel", lambda path, p, fps: panels.append(p) or real(path, p, fps))
        outcome = train(plan, settings, prepared, LocalStore(tmp / "out"), SINGLE)
    assert outcome.result.status == "Succeeded" and panels
    source, mask, _, result, _ = panels[-1][0]
    return {"lora": outcome.lora_path, "source": source, "mask": mask, "result": result, "settings": settings}


def _argv(trained, tiny_checkpoint, media, out, *extra):
    """Only the inputs: size, frames, fps, guidance, seed and levers default to the LoRA's record."""
    return ["generate", "--lora", str(trained["lora"]), "--source", str(media["video"]), "--mask", str(media["mask"]),
            "--reference", str(media["reference"]), "--prompt", "a prompt",
            "--model-path", str(tiny_checkpoint.model_path), "--text-encoder-path",
            str(tiny_checkpoint.text_encoder_path), "--device", "cpu", "--output", str(out), *extra]


def test_generate_reproduces_the_final_validation_result_and_keeps_the_source(trained, tiny_checkpoint, media,
                                                                             tmp_path):
    from iclora_api.cli import main

    out, reel = tmp_path / "result.mp4", tmp_path / "reel.mp4"
    # Size, frames and fps default to the preview's the LoRA records (96x64, 17 frames at 12 fps).
    assert main(_argv(trained, tiny_checkpoint, media, out, "--lossless", "--reel", str(reel))) == 0
    frames = _decode(out)
    assert frames.shape == (17, HEIGHT, 96, 3)
    np.testing.assert_array_equal(frames, trained["result"])  # the preview is what generate produces
    kept = ~trained["mask"]
    assert kept.any() and (~kept).any()
    np.testing.assert_array_equal(frames[kept], trained["source"][kept])  # kept region: source pixels exactly
    assert not np.array_equal(frames[~kept], trained["source"][~kept])  # masked region regenerated
    with av.open(str(reel)) as c:
        assert c.streams.video[0].codec_context.width == 4 * 96


def test_generate_follows_the_flags(trained, tiny_checkpoint, media, tmp_path):
    from iclora_api.cli import main

    out = tmp_path / "small.mp4"
    assert main(_argv(trained, tiny_checkpoint, media, out, "--size", "64x64", "--number-of-frames", "10",
                      "--frame-rate", "24", "--lossless", "--set", "attention_backends=math|efficient",
                      "--set", "activation_checkpointing=none")) == 0
    with av.open(str(out)) as c:
        stream = c.streams.video[0]
        assert float(stream.average_rate) == 24.0
        frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(stream)])
    assert frames.shape == (9, 64, 64, 3)  # 10 snapped to 8k+1


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


def test_strength_scales_the_change_once(trained, tiny_checkpoint):
    """--strength s adds s * B @ A to each projection, as ltx-core and ComfyUI apply a LoRA."""
    import torch

    from iclora_api.trainer_settings import TrainerSettings
    from iclora_trainer.lora_io import load_into_adapters, lora_rank, read_lora
    from iclora_trainer.model.acceleration import prepare_for_training
    from iclora_trainer.model.loading import load_transformer

    tensors, _ = read_lora(trained["lora"])
    cpu = torch.device("cpu")
    model = prepare_for_training(load_transformer(tiny_checkpoint.model_path, cpu, torch.float32),
                                 lora_rank(tensors), TrainerSettings(device="cpu"), cpu)
    layer = model.transformer_blocks[0].attn1.to_q
    deltas = {}
    for strength in (1.0, 0.5):
        load_into_adapters(model, tensors, strength)
        deltas[strength] = (layer.lora_B["default"].weight @ layer.lora_A["default"].weight) * layer.scaling["default"]
    torch.testing.assert_close(deltas[0.5], 0.5 * deltas[1.0])
    file_delta = tensors["diffusion_model.transformer_blocks.0.attn1.to_q.lora_B.weight"].float() @ \
        tensors["diffusion_model.transformer_blocks.0.attn1.to_q.lora_A.weight"].float()
    torch.testing.assert_close(deltas[1.0], file_delta)
