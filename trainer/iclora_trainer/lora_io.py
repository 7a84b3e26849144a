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


def read_lora(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and safetensors metadata of a LoRA file."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})  # noqa: SIM118


def lora_rank(tensors: dict[str, torch.Tensor]) -> int:
    """The rank of a loader-layout LoRA (rows of its lora_A weights); ValueError if they disagree."""
    ranks = {t.shape[0] for k, t in tensors.items() if k.endswith(".lora_A.weight")}
    if len(ranks) != 1:
        raise ValueError(f"not a single-rank LoRA (lora_A ranks {sorted(ranks) or 'none'})")
    return ranks.pop()


def load_into_adapters(model: torch.nn.Module, tensors: dict[str, torch.Tensor], strength: float = 1.0) -> int:
    """Copy a loader-layout LoRA (`export_lora`'s output, from a file) into the model's PEFT adapters.

    The inverse of `export_lora`: B is divided by the adapter's alpha / rank again. The model
    carries adapters from `apply_lora` of the same rank; each tensor keeps the adapter's dtype
    (fp32 in training), so a model loaded from the file computes exactly what the file holds.
    Returns the number of projections loaded.

    Raises:
        ValueError: a key names no adapter of this model, a shape differs, or adapters stay unset.
    """
    seen: set[str] = set()
    with torch.no_grad():
        for key, value in tensors.items():
            if not key.startswith(KEY_PREFIX) or not key.endswith(("lora_A.weight", "lora_B.weight")):
                raise ValueError(f"{key}: not a LoRA key of the ltx-core layout")
            module_path, which = key[len(KEY_PREFIX):].rsplit(".lora_", 1)
            which = which[0]
            try:
                layer = model.get_submodule(module_path)
                adapters = layer.lora_A if which == "A" else layer.lora_B
                target = adapters[ADAPTER_NAME].weight
            except (AttributeError, KeyError) as exc:
                raise ValueError(f"{key}: the model has no LoRA adapter at {module_path}") from exc
            if tuple(target.shape) != tuple(value.shape):
                raise ValueError(f"{key}: shape {tuple(value.shape)} does not fit the model's {tuple(target.shape)}")
            scaled = value.float()
            if which == "B":  # strength scales B @ A once, as ltx-core and ComfyUI apply it
                scaled = scaled * strength / layer.scaling[ADAPTER_NAME]
            target.copy_(scaled.to(target.dtype))
            seen.add(key)
    expected = {
        f"{KEY_PREFIX}{m}.lora_{ab}.weight"
        for m in (n for n, mod in model.named_modules() if hasattr(mod, "lora_A") and ADAPTER_NAME in mod.lora_A)
        for ab in "AB"
    }
    if expected - seen:
        missing = sorted(expected - seen)
        raise ValueError(f"the LoRA has no weights for {len(missing)} adapted projections, e.g. {missing[0]}")
    return len(seen) // 2
