"""Trainer settings (operator/profile concerns, not part of the user's spec). No torch import.

Precedence: defaults < settings file (JSON or YAML) < environment (ICLORA_*) < CLI flags.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from iclora_api.contract import TRAINER_SETTINGS_ENV_PREFIX

ENV_PREFIX = TRAINER_SETTINGS_ENV_PREFIX
# Activation checkpointing per transformer block (see iclora_trainer.model.acceleration).
CHECKPOINTING_PATTERN = r"^(all|none|every:[1-9][0-9]*|blocks:[0-9]+|selective:[0-9]+)$"
SdpaBackend = Literal["flash", "cudnn", "efficient", "math"]


class SpeedLevers(BaseModel):
    """How the training step uses the GPU: defined once, read by the trainer and set by the admin.

    `TrainerSettings` has these fields, and `TrainingProfile.spec.acceleration` (iclora_api.profile)
    is the same model with Kubernetes' camelCase names; the operator copies one into the other
    field by field (iclora_operator.render.trainer_settings). The defaults are the safe ones.
    """

    model_config = ConfigDict(extra="forbid")

    activation_checkpointing: str = Field(
        default="all",
        pattern=CHECKPOINTING_PATTERN,
        description=(
            "Blocks whose activations are recomputed in backward: all, none, every:N, blocks:K "
            "(the first K) or selective:K (all, but the first K keep their attention outputs). "
            "Less recomputation means faster steps and more GPU memory."
        ),
    )
    attention_backends: list[SdpaBackend] = Field(
        default_factory=list,
        max_length=4,
        description="Attention (SDPA) backends allowed, in priority order; empty lets PyTorch choose.",
    )
    compile_blocks: bool = Field(default=False, description="torch.compile every transformer block.")
    fp8_base: bool = Field(
        default=False,
        description="FP8 matmuls for the frozen base weights (torchao); GPUs of compute capability 8.9+.",
    )
    fused_lora: bool = Field(
        default=False,
        description="Add each LoRA branch to its projection in one fused matmul, in the activations' precision.",
    )


class TrainerSettings(SpeedLevers):
    """Everything of a training run that is not the user's spec (the profile's and the operator's part)."""

    model_config = ConfigDict(extra="forbid")

    model_path: str | None = Field(
        default=None,
        description="LTX-2.3 checkpoint (.safetensors, config in metadata): a path or s3://, file://, https:// URI.",
    )
    text_encoder_path: str | None = Field(
        default=None,
        description="Gemma root folder (path, file:// or s3:// prefix), or a tiny text-encoder .safetensors.",
    )
    model_cache_dir: str | None = Field(
        default=None, description="Cache of fetched model sources (a node volume); None: fetched into scratch."
    )
    base_model: str = Field(default="LTX-2.3", description="Base model name written to the LoRA metadata.")
    steps: int | None = Field(
        default=None, ge=1, description="Override the spec's numberOfSteps (tests, demo)."
    )
    batch_size: int = Field(default=1, ge=1, description="Samples per rank per step.")
    checkpoint_interval: int = Field(default=250, ge=1)
    keep_checkpoints: int = Field(default=2, ge=1, description="Completed checkpoints kept in the output.")
    progress_interval: int = Field(default=10, ge=1)
    engine: Literal["auto", "torch", "deepspeed"] = Field(
        default="auto", description="auto: DeepSpeed when more than one rank or on GPU, else plain torch."
    )
    zero_stage: int = Field(default=2, ge=0, le=2)
    collective_timeout_seconds: int = Field(
        default=1800, ge=1, description="Process-group timeout in seconds (any backend): bounds a lost rank's wait."
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "bf16", "fp32"] = Field(
        default="auto", description="auto: bf16 on GPU, fp32 on CPU."
    )
    seed: int = 42
    warmup_steps: int | None = Field(default=None, ge=0, description="Default: 5% of the steps, at most 100.")
    lr_schedule: Literal["cosine", "linear", "constant"] = "cosine"
    min_lr_ratio: float = Field(default=0.1, ge=0.0, le=1.0)
    weight_decay: float = Field(default=0.01, ge=0.0)
    max_grad_norm: float = Field(default=1.0, gt=0.0)
    sigma_std: float = Field(default=1.0, gt=0.0, description="Std of the logit-normal sigma distribution.")
    validation_interval: int = Field(
        default=0, ge=0, description="Render the validation reel every N steps (0: only at the end)."
    )
    validation_steps: int = Field(default=30, ge=1, description="Euler steps of the validation sampler.")
    validation_cfg_scale: float = Field(default=3.0, ge=1.0, description="CFG scale (1: no negative pass).")
    validation_stg_blocks: list[int] | None = Field(
        default=None, description="Blocks whose self-attention STG skips; default LTX-2.3's block 28."
    )
    validation_rescale_scale: float = Field(default=0.7, ge=0.0, le=1.0)
    work_dir: str = Field(default="/tmp/iclora-work", description="Local scratch (latents, checkpoints).")

    def resolved_warmup(self, steps: int) -> int:
        if self.warmup_steps is not None:
            return min(self.warmup_steps, steps)
        return min(100, max(0, steps // 20))


def parse_overrides(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """`SETTING=VALUE` pairs from a command line -> TrainerSettings fields (list fields as a|b).

    Raises:
        ValueError: an unknown setting name (the message lists the known ones).
    """
    out: dict[str, Any] = {}
    for key, value in pairs:
        field = TrainerSettings.model_fields.get(key)
        if field is None:
            raise ValueError(f"unknown setting {key!r}; known: {', '.join(sorted(TrainerSettings.model_fields))}")
        out[key] = [v for v in value.split("|") if v] if "list" in str(field.annotation) else value
    return out


def load_settings(path: str | Path | None, env: dict[str, str], overrides: dict[str, Any]) -> TrainerSettings:
    data: dict[str, Any] = {}
    if path:
        # A file, `-` or `env:NAME` (how the operator's Job hands the settings over).
        from iclora_api.documents import read_document

        data.update(read_document(str(path)) or {})
    for name in TrainerSettings.model_fields:
        key = ENV_PREFIX + name.upper()
        if key in env:
            data[name] = env[key]
    data.update({k: v for k, v in overrides.items() if v is not None})
    return TrainerSettings.model_validate(data)


def fingerprint(values: dict[str, Any]) -> str:
    """Stable hash of everything that must match for a checkpoint to be resumable."""
    blob = json.dumps(values, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
