"""Saved LoRA loads through ltx-core; a killed-and-resumed run ends bitwise equal to an uninterrupted one."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from iclora_api.contract import Progress, Result
from iclora_trainer.loop import train
from iclora_trainer.storage import LocalStore
from tests.helpers import SINGLE, make_plan, make_settings

pytestmark = pytest.mark.trainer


def _run(tiny_checkpoint, dataset: Path, out: Path, steps: int, stop_after=None, downscale=1, **kw):
    settings = make_settings(tiny_checkpoint, out.parent / f"{out.name}-work", steps=steps, **kw)
    plan = replace(make_plan(steps), reference_downscale_factor=downscale)
    return train(plan, settings, dataset, LocalStore(out), SINGLE, stop_after=stop_after)


def _forward(model: torch.nn.Module) -> torch.Tensor:
    from iclora_trainer.conditioning import build_sequence
    from iclora_trainer.strategy import LatentBatch, MaskedICLoraStrategy

    g = torch.Generator().manual_seed(0)
    c = 16
    target, ref, noise = (torch.randn(1, c, 2, 2, 2, generator=g) for _ in range(3))
    mask = torch.ones(1, 2, 2, 2, dtype=torch.bool)
    batch = LatentBatch(
        target, ref, mask, torch.randn(1, 5, 64, generator=g), torch.ones(1, 5, dtype=torch.long)
    )
    strategy = MaskedICLoraStrategy(fps=24.0)
    seq = build_sequence(target, ref, mask, noise, torch.tensor([0.5]), 24.0)
    with torch.no_grad():
        return strategy.forward(model.eval(), seq, batch, torch.float32)


def test_saved_lora_loads_through_ltx_core_and_changes_output(tmp_path, tiny_checkpoint, prepared_dataset):
    from ltx_core.loader.sd_ops import LTXV_LORA_COMFY_RENAMING_MAP
    from ltx_core.loader.single_gpu_model_builder import SingleGPUModelBuilder
    from ltx_core.model.transformer.model_configurator import (
        LTXV_MODEL_COMFY_RENAMING_MAP,
        LTXVideoOnlyModelConfigurator,
    )

    outcome = _run(tiny_checkpoint, prepared_dataset, tmp_path / "out", steps=4)
    assert outcome.result.status == "Succeeded"
    lora = Path(outcome.result.artifacts.lora_file)
    tensors = load_file(str(lora))
    modules = [
        "attn1.to_q",
        "attn1.to_k",
        "attn1.to_v",
        "attn1.to_out.0",
        "attn2.to_q",
        "attn2.to_k",
        "attn2.to_v",
        "attn2.to_out.0",
        "ff.net.0.proj",
        "ff.net.2",
    ]
    expected = {
        f"diffusion_model.transformer_blocks.{i}.{m}.lora_{ab}.weight"
        for i in range(2)
        for m in modules
        for ab in "AB"
    }
    assert set(tensors) == expected
    assert all(t.dtype == torch.bfloat16 for t in tensors.values())
    a = tensors["diffusion_model.transformer_blocks.0.attn1.to_q.lora_A.weight"]
    b = tensors["diffusion_model.transformer_blocks.0.attn1.to_q.lora_B.weight"]
    assert a.shape == (8, 64) and b.shape == (64, 8)
    with safe_open(str(lora), framework="pt") as f:
        meta = f.metadata()
    assert meta["rank"] == "8" and meta["trigger_phrase"] == "MASKEDIC"
    assert (
        meta["training_type"] == "masked video-to-video IC-LoRA" and meta["reference_downscale_factor"] == "1"
    )
    # What it was trained on: the base checkpoint's name and fingerprint, the bucket, frames, fps.
    from iclora_trainer.model.identity import checkpoint_identity

    base = checkpoint_identity(tiny_checkpoint.model_path)
    assert meta["base_model_file"] == base.file and meta["base_model_fingerprint"] == base.fingerprint
    assert meta["resolution"] == "64x64" and meta["number_of_frames"] == "9"
    assert meta["reference_spatial_scale_factor"] == "1" and meta["ltx_core_version"] == "1.0.0"
    config = json.loads(Path(outcome.result.artifacts.config_file).read_text())
    assert config["baseModelFingerprint"] == base.fingerprint and config["baseModelFile"] == base.file
    assert config["triggerPhrase"] == "MASKEDIC" and config["frameRate"] == float(meta["frame_rate"])
    assert (
        config["rank"] == 8
        and config["numberOfFrames"] == 9
        and config["resolution"] == {"width": 64, "height": 64}
    )

    builder = SingleGPUModelBuilder(
        model_class_configurator=LTXVideoOnlyModelConfigurator,
        model_path=str(tiny_checkpoint.model_path),
        model_sd_ops=LTXV_MODEL_COMFY_RENAMING_MAP,
    )
    cpu = torch.device("cpu")
    base = builder.build(device=cpu, dtype=torch.float32).float()
    fused = (
        builder.lora(str(lora), 1.0, LTXV_LORA_COMFY_RENAMING_MAP)
        .build(device=cpu, dtype=torch.float32)
        .float()
    )
    delta = fused.transformer_blocks[0].attn1.to_q.weight - base.transformer_blocks[0].attn1.to_q.weight
    assert torch.allclose(delta, (b.float() @ a.float()), atol=1e-2)
    assert not torch.allclose(_forward(base), _forward(fused))


def test_progress_and_result_files_validate(tmp_path, tiny_checkpoint, prepared_dataset):
    out = tmp_path / "out"
    _run(tiny_checkpoint, prepared_dataset, out, steps=3)
    progress = Progress.model_validate_json((out / "progress.json").read_text())
    assert progress.step == progress.total_steps == 3 and progress.loss is not None
    result = Result.model_validate_json((out / "result.json").read_text())
    assert result.status == "Succeeded" and result.steps == 3


def test_resume_after_kill_is_bitwise_identical(tmp_path, tiny_checkpoint, prepared_dataset):
    full = _run(tiny_checkpoint, prepared_dataset, tmp_path / "full", steps=6, checkpoint_interval=3)
    killed = _run(
        tiny_checkpoint, prepared_dataset, tmp_path / "resumed", steps=6, checkpoint_interval=3, stop_after=4
    )  # dies after step 4; the last checkpoint is step 3
    assert killed.result.status == "Failed"
    resumed = _run(tiny_checkpoint, prepared_dataset, tmp_path / "resumed", steps=6, checkpoint_interval=3)
    assert resumed.start_step == 3
    assert resumed.losses == full.losses[3:]
    a = load_file(str(full.lora_path))
    b = load_file(str(resumed.lora_path))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_a_different_configuration(tmp_path, tiny_checkpoint, prepared_dataset):
    from iclora_trainer.errors import CheckpointError

    _run(tiny_checkpoint, prepared_dataset, tmp_path / "o", steps=4, checkpoint_interval=2, stop_after=2)
    with pytest.raises(CheckpointError, match="fingerprint"):
        _run(tiny_checkpoint, prepared_dataset, tmp_path / "o", steps=4, checkpoint_interval=2, seed=7)


def test_bf16_with_half_resolution_reference(tmp_path, tiny_checkpoint, prepared_dataset):
    """The GPU dtype path (bf16 base, fp32 LoRA) and a reference encoded at 1/2 resolution."""
    outcome = _run(
        tiny_checkpoint, prepared_dataset, tmp_path / "o", steps=2, dtype="bf16", downscale=2
    )
    assert outcome.result.status == "Succeeded"
    assert all(v == v for v in outcome.losses)  # finite, not NaN
    with safe_open(str(outcome.lora_path), framework="pt") as f:
        assert f.metadata()["reference_downscale_factor"] == "2"
