"""PEFT LoRA setup and the loader-compatible LoRA file.

Saved keys: `diffusion_model.transformer_blocks.{i}.<module>.lora_A.weight` /
`lora_B.weight` (what ltx-core's `LTXV_LORA_COMFY_RENAMING_MAP` and ComfyUI read).
ltx-core fuses `strength * B @ A` with no alpha/rank scaling, so alpha / rank is
folded into B on save. Weights are bf16.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

ADAPTER_NAME = "default"
# Attention (self and text-cross) and feed-forward projections of every block.
LORA_TARGET_MODULES = (
    r".*transformer_blocks\.\d+\.(attn1|attn2)\.(to_q|to_k|to_v|to_out\.0)"
    r"|.*transformer_blocks\.\d+\.ff\.net\.(0\.proj|2)"
)
TRAINING_TYPE = "masked video-to-video IC-LoRA"
KEY_PREFIX = "diffusion_model."
_PEFT_KEY = re.compile(
    r"^(?:.*?)(transformer_blocks\.\d+\..+)\.lora_([AB])\.(?:" + ADAPTER_NAME + r"\.)?weight$"
)


def apply_lora(model: torch.nn.Module, rank: int, alpha: float, seed: int = 0) -> torch.nn.Module:
    """Freeze the base model and inject PEFT LoRA adapters in place (B = 0, so output unchanged)."""
    from peft import LoraConfig, inject_adapter_in_model

    for p in model.parameters():
        p.requires_grad_(False)
    config = LoraConfig(
        r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=LORA_TARGET_MODULES, bias="none"
    )
    # A fixed seed makes lora_A's init identical on every rank and on resume.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        inject_adapter_in_model(config, model, adapter_name=ADAPTER_NAME)
    for name, p in model.named_parameters():
        p.requires_grad_(".lora_" in name)
    return model


def lora_parameters(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if ".lora_" in n}


def export_lora(model: torch.nn.Module, rank: int, alpha: float) -> dict[str, torch.Tensor]:
    """Loader-layout tensors (bf16, alpha/rank folded into B)."""
    scale = alpha / rank
    out: dict[str, torch.Tensor] = {}
    for name, param in lora_parameters(model).items():
        match = _PEFT_KEY.match(name)
        if match is None:
            raise ValueError(f"unexpected LoRA parameter name {name}")
        module, which = match.groups()
        value = param.detach().float().cpu()
        if which == "B":
            value = value * scale
        out[f"{KEY_PREFIX}{module}.lora_{which}.weight"] = value.to(torch.bfloat16).contiguous()
    return out


def save_lora(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(
        tensors,
        str(tmp),
        metadata={k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()},
    )
    tmp.replace(path)
    return path
