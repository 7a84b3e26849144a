"""Tiny LTX-2.3-shaped checkpoints with random weights, for tests and the CPU demo.

The file has the real layout: ComfyUI key prefixes and the model config JSON in the
safetensors metadata under `config`, so it loads through exactly the same ltx-core
builders as the real checkpoint. The VAE keeps the real scale factors
(time 8, space 32) so masks, latents and positions have the real geometry.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from iclora_trainer.model.text import TINY_TEXT_KIND, TinyTextEncoder

TINY_CHECKPOINT_NAME = "ltx-tiny.safetensors"
TINY_TEXT_ENCODER_NAME = "text-encoder-tiny.safetensors"


def tiny_model_config(
    *,
    num_layers: int = 2,
    num_attention_heads: int = 4,
    attention_head_dim: int = 16,
    latent_channels: int = 16,
) -> dict[str, Any]:
    """A config accepted by LTXVideoOnlyModelConfigurator and VideoEncoderConfigurator."""
    inner_dim = num_attention_heads * attention_head_dim
    transformer = {
        "dropout": 0.0,
        "attention_bias": True,
        "num_vector_embeds": None,
        "activation_fn": "gelu-approximate",
        "num_embeds_ada_norm": 1000,
        "use_linear_projection": False,
        "only_cross_attention": False,
        "cross_attention_norm": True,
        "double_self_attention": False,
        "upcast_attention": False,
        "standardization_norm": "rms_norm",
        "norm_elementwise_affine": False,
        "qk_norm": "rms_norm",
        "positional_embedding_type": "rope",
        "use_middle_indices_grid": True,
        "num_layers": num_layers,
        "num_attention_heads": num_attention_heads,
        "attention_head_dim": attention_head_dim,
        "in_channels": latent_channels,
        "out_channels": latent_channels,
        "cross_attention_dim": inner_dim,
        # RoPE positions are pixel coordinates / max_pos; the real [20, 2048, 2048]
        # would leave a 96-px tiny video's cells almost indistinguishable.
        "positional_embedding_max_pos": [20, 128, 128],
        # LTX-2.3 (22B) layout: the caption projection lives in the text encoder.
        "caption_proj_before_connector": True,
        "caption_projection_first_linear": False,
        "caption_proj_input_norm": False,
        "caption_projection_second_linear": False,
    }
    vae = {
        "dims": 3,
        "in_channels": 3,
        "latent_channels": latent_channels,
        "patch_size": 4,
        # Three 2x compressions in (t, h, w) after the 4x patchify: time 8, space 32.
        "encoder_blocks": [["compress_all", 1], ["compress_all", 1], ["compress_all", 1]],
        "norm_layer": "pixel_norm",
        "latent_log_var": "uniform",
        # Decoder (validation): the inverse stack, small and deterministic.
        "decoder_blocks": [["compress_all", {}], ["compress_all", {}], ["compress_all", {}]],
        "decoder_base_channels": 8,
        "timestep_conditioning": False,
        "causal_decoder": False,
    }
    return {"transformer": transformer, "vae": vae}


@dataclass(frozen=True)
class TinyCheckpoint:
    model_path: Path
    text_encoder_path: Path
    config: dict[str, Any]


def create_tiny_checkpoint(
    directory: str | Path, *, seed: int = 0, cell_local: bool = True, **config_kwargs: int
) -> TinyCheckpoint:
    """Write a tiny transformer + VAE checkpoint and a tiny text encoder into `directory`.

    `cell_local=False` keeps the encoder's random 3x3 taps that reach across a 32-px cell, so a
    latent cell sees its neighbours' pixels as the real VAE's does (tests of what leaks)."""
    from ltx_core.model.transformer.model_configurator import LTXVideoOnlyModelConfigurator
    from ltx_core.model.video_vae.model_configurator import VideoDecoderConfigurator, VideoEncoderConfigurator
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = tiny_model_config(**config_kwargs)
    generator = torch.Generator().manual_seed(seed)

    transformer = LTXVideoOnlyModelConfigurator.from_config(config)
    encoder = VideoEncoderConfigurator.from_config(config)
    tensors: dict[str, torch.Tensor] = {}
    for name, value in transformer.state_dict().items():
        tensors[f"model.diffusion_model.{name}"] = _random_like(name, value, generator)
    encoder_sd = {}
    for name, value in encoder.state_dict().items():
        if name.startswith("per_channel_statistics."):
            fill = torch.ones_like(value) if "std" in name else torch.zeros_like(value)
            encoder_sd[name] = fill
        else:
            weight = _random_like(name, value, generator)
            encoder_sd[name] = _cell_local(name, weight) if cell_local else weight
    # Like the real VAE, normalise latents to zero mean and unit std per channel
    # (statistics of random videos), so the latents dominate the flow-matching loss.
    encoder.load_state_dict({k: v.to(torch.bfloat16).float() for k, v in encoder_sd.items()})
    with torch.no_grad():
        raw = encoder(torch.rand(4, 3, 9, 64, 64, generator=generator) * 2 - 1)
    encoder_sd["per_channel_statistics.mean-of-means"] = raw.mean(dim=(0, 2, 3, 4))
    encoder_sd["per_channel_statistics.std-of-means"] = raw.std(dim=(0, 2, 3, 4)).clamp(min=1e-3)
    for name, value in encoder_sd.items():
        prefix = "vae." if name.startswith("per_channel_statistics.") else "vae.encoder."
        tensors[f"{prefix}{name}"] = value
    # Drawn after the encoder so the encoder and transformer weights are unchanged.
    decoder = VideoDecoderConfigurator.from_config(config)
    for name, value in decoder.state_dict().items():
        if not name.startswith("per_channel_statistics."):
            tensors[f"vae.decoder.{name}"] = _random_like(name, value, generator)
    model_path = directory / TINY_CHECKPOINT_NAME
    # bf16 like the released checkpoints (ltx-core fuses LoRAs only into bf16/fp8 weights).
    save_file(
        {k: v.to(torch.bfloat16).contiguous() for k, v in tensors.items()},
        str(model_path),
        metadata={"config": json.dumps(config)},
    )
    text_path = create_tiny_text_encoder(
        directory / TINY_TEXT_ENCODER_NAME, dim=config["transformer"]["cross_attention_dim"], seed=seed
    )
    return TinyCheckpoint(model_path=model_path, text_encoder_path=text_path, config=config)


def _cell_local(name: str, weight: torch.Tensor) -> torch.Tensor:
    """Zero the spatial taps that reach across a 32-px latent cell.

    The real VAE is nearly local; a random 3x3 conv stack is not, and would let
    kept pixels bleed into masked cells' latents. With these taps zeroed every
    latent cell depends only on its own pixels (all of them), so the synthetic
    learning task has an exact answer in the reference.
    """
    if weight.ndim != 5:
        return weight
    weight = weight.clone()
    if name.startswith("down_blocks."):
        # Stride 2, padding 1: taps 1, 2 read inputs 2i, 2i+1, both inside output cell i.
        weight[..., 0, :] = 0
        weight[..., :, 0] = 0
    else:
        keep = torch.zeros(3, 3, dtype=torch.bool)
        keep[1, 1] = True
        weight[..., ~keep] = 0
    return weight


def _random_like(name: str, value: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    # torch.empty in the constructors leaves garbage; give every tensor a sane
    # init so the tiny model's activations stay finite.
    if "scale_shift_table" in name:
        return torch.randn(value.shape, generator=generator) * 0.02
    if value.ndim >= 2:
        fan_in = value[0].numel()
        return torch.randn(value.shape, generator=generator) / fan_in**0.5
    if name.endswith("weight"):
        return torch.ones(value.shape)
    return torch.zeros(value.shape)


def create_tiny_text_encoder(path: str | Path, *, dim: int, seed: int = 0, max_length: int = 32) -> Path:
    """A TinyTextEncoder with random weights, saved the way the trainer's text loader reads it."""
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    module = TinyTextEncoder(dim, max_length)
    path = Path(path)
    save_file(
        {k: v.contiguous() for k, v in module.state_dict().items()},
        str(path),
        metadata={"kind": TINY_TEXT_KIND, "config": json.dumps({"dim": dim, "max_length": max_length})},
    )
    return path
