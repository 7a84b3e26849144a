"""The GPU benchmark script parses and runs one step of both paths on the tiny config (CPU)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.trainer

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "train_step_gpu.py"


def _load():
    spec = importlib.util.spec_from_file_location("train_step_gpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["train_step_gpu"] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


def test_tiny_cpu_smoke(tmp_path) -> None:
    bench = _load()
    argv = ["--tiny", "--device", "cpu", "--shapes", "128x128x9", "--out", str(tmp_path), "--validation"]
    assert bench.main(argv) == 0
    (report,) = [json.loads(p.read_text()) for p in tmp_path.glob("*.json")]
    assert [r["name"] for r in report["rows"]] == ["ours", "anchor"]
    assert all(r["s_per_step"] > 0 and r["tflops_per_step"] > 0 for r in report["rows"])
    (cost,) = report["validation"]
    assert cost["s_per_entry"] == pytest.approx(30 * cost["s_per_euler_step"])
    assert report["validation_fraction"][0]["shape"] == "128x128x9"


def test_variants_are_trainer_settings_rows(tmp_path) -> None:
    bench = _load()
    argv = [
        "--tiny", "--device", "cpu", "--shapes", "128x128x9", "--out", str(tmp_path), "--skip-anchor",
        "--variant", "fp8_base=true",  # refused on a CPU: recorded, the run goes on
        "--variant", "activation_checkpointing=every:2,attention_backends=math,fused_lora=true",
        "--variant", "reference_downscale=1",  # the spec's factor, per row: overrides --reference-downscale
        "--reference-downscale", "2",
    ]
    assert bench.main(argv) == 0
    (report,) = [json.loads(p.read_text()) for p in tmp_path.glob("*.json")]
    assert [r["name"] for r in report["rows"]] == [
        "ours[ref/2]", "ours[activation_checkpointing=every:2,attention_backends=['math'],fused_lora=true][ref/2]",
        "ours",
    ]
    assert report["rows"][1]["settings"]["activation_checkpointing"] == "every:2"
    assert report["rows"][1]["settings"]["fused_lora"] is True
    assert report["rows"][1]["settings"]["reference_downscale"] == 2
    # Half-resolution reference: a quarter of the reference tokens.
    target_tokens = report["rows"][2]["tokens"] // 2
    assert report["rows"][0]["tokens"] == target_tokens + target_tokens // 4
    assert "reference_downscale" not in report["rows"][2]["settings"]
    (error,) = report["errors"]
    assert error["settings"] == {"fp8_base": "true"} and "fp8_base needs a CUDA GPU" in error["error"]
    with pytest.raises(SystemExit, match="unknown setting"):
        bench.parse_variant("checkpointing=every:2")


def test_full_size_flops_are_plausible() -> None:
    """Analytic FLOPs of the full-size config on the meta device: about 6 x 22B params x tokens."""
    import torch
    from ltx_core.model.transformer.model_configurator import LTXVideoOnlyModelConfigurator

    bench = _load()
    with torch.device("meta"):
        model = LTXVideoOnlyModelConfigurator.from_config(bench.full_config())
    tokens = 2 * 12 * 14 * 24
    flops = bench.step_flops(model, tokens, 256)
    params = sum(p.numel() for p in model.transformer_blocks.parameters())
    assert len(model.transformer_blocks) == 48 and model.transformer_blocks[0].attn1.to_q.out_features == 4096
    assert 6 * params * tokens * 0.5 < flops < 6 * params * tokens * 3
