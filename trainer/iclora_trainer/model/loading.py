"""Load the LTX-2.3 parts through ltx-core's builders (the same path for real and tiny weights).

The checkpoint is one safetensors file whose metadata key `config` holds the model
config JSON (`transformer` and `vae` sections); weight keys carry the ComfyUI
prefixes (`model.diffusion_model.`, `vae.encoder.`, `vae.per_channel_statistics.`)
that ltx-core's SDOps strip.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from iclora_trainer.errors import ModelConfigError


def read_model_config(path: str | Path) -> dict[str, Any]:
    """The model config JSON stored in the checkpoint's safetensors metadata."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except Exception as exc:
        raise ModelConfigError(f"cannot read checkpoint {path}: {exc}") from exc
    if "config" not in metadata:
        raise ModelConfigError(f"checkpoint {path} has no 'config' metadata")
    config: dict[str, Any] = json.loads(metadata["config"])
    return config


def load_transformer(path: str | Path, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """The video-only LTX transformer (the audio branch is never built)."""
    from ltx_core.loader.single_gpu_model_builder import SingleGPUModelBuilder
    from ltx_core.model.transformer.model_configurator import (
        LTXV_MODEL_COMFY_RENAMING_MAP,
        LTXVideoOnlyModelConfigurator,
    )

    read_model_config(path)
    builder = SingleGPUModelBuilder(
        model_class_configurator=LTXVideoOnlyModelConfigurator,
        model_path=str(path),
        model_sd_ops=LTXV_MODEL_COMFY_RENAMING_MAP,
    )
    try:
        model = builder.build(device=device, dtype=dtype)
    except ValueError as exc:  # check_config_value raises on architecture drift
        raise ModelConfigError(f"transformer config rejected: {exc}") from exc
    _check_materialised(model, "transformer")
    return model


def load_video_encoder(path: str | Path, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """The causal video VAE encoder (returns normalised latent means)."""
    from ltx_core.model.video_vae.model_configurator import (
        VAE_ENCODER_COMFY_KEYS_FILTER,
        VideoEncoderConfigurator,
    )

    return _load_vae_part(path, VideoEncoderConfigurator, VAE_ENCODER_COMFY_KEYS_FILTER, "video VAE encoder",
                          device, dtype)


def _load_vae_part(path: str | Path, configurator: object, sd_ops: object, what: str, device: torch.device,
                   dtype: torch.dtype) -> torch.nn.Module:
    """One half of the video VAE through ltx-core's builder, as real checkpoints are loaded."""
    from ltx_core.loader.single_gpu_model_builder import SingleGPUModelBuilder

    read_model_config(path)
    builder = SingleGPUModelBuilder(model_class_configurator=configurator, model_path=str(path), model_sd_ops=sd_ops)
    model = builder.build(device=device, dtype=dtype)
    _check_materialised(model, what)
    return model.eval()


def _check_materialised(model: torch.nn.Module, what: str) -> None:
    # The builder returns the meta model with only a warning when weights are
    # missing; training on that would fail much later and obscurely.
    missing = [n for n, p in model.named_parameters() if p.device.type == "meta"]
    missing += [n for n, b in model.named_buffers() if b.device.type == "meta"]
    if missing:
        raise ModelConfigError(f"{what}: checkpoint lacks {len(missing)} tensors, e.g. {missing[:3]}")


def load_video_decoder(path: str | Path, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """The video VAE decoder (takes normalised latents, returns pixels in [-1, 1])."""
    from ltx_core.model.video_vae.model_configurator import (
        VAE_DECODER_COMFY_KEYS_FILTER,
        VideoDecoderConfigurator,
    )

    return _load_vae_part(path, VideoDecoderConfigurator, VAE_DECODER_COMFY_KEYS_FILTER, "video VAE decoder",
                          device, dtype)
