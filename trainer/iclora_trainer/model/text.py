"""Text encoders: caption -> (context tokens, mask) for the transformer's cross-attention.

Real path (`GemmaTextEncoder`): ltx-core's Gemma 3 LLM built from the Gemma root
folder (`GemmaTextEncoderConfigurator`, `GEMMA_LLM_KEY_OPS`, tokenizer module ops)
and ltx-core's embeddings processor (feature extractor + connector) built from the
LTX checkpoint (`EmbeddingsProcessorConfigurator`, `EMBEDDINGS_PROCESSOR_KEY_OPS`),
exactly as `ltx_pipelines.utils.model_ledger.ModelLedger` does.

ltx-core's Gemma configurator hard-codes the 12B Gemma 3 config, so it cannot be
built tiny. Tests and the CPU demo use `TinyTextEncoder`: a byte-level embedding
table plus one linear layer, saved as safetensors (metadata `kind`), with the same
output contract. Captions are encoded once per run and the encoder is freed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from iclora_trainer.errors import ModelConfigError

TINY_TEXT_KIND = "iclora-tiny-text-encoder"


@dataclass(frozen=True)
class TextEmbeddings:
    context: torch.Tensor  # (L, D) one caption's context tokens
    mask: torch.Tensor  # (L,) 1 = real token


class TextEncoder(Protocol):
    def encode(self, caption: str) -> TextEmbeddings: ...


class TinyTextEncoder(torch.nn.Module):
    """Deterministic byte-level encoder: embedding(bytes) -> linear -> context."""

    def __init__(self, dim: int, max_length: int = 32) -> None:
        super().__init__()
        self.max_length = max_length
        self.embed = torch.nn.Embedding(257, dim)  # 256 bytes + padding
        self.proj = torch.nn.Linear(dim, dim)

    @torch.no_grad()
    def encode(self, caption: str) -> TextEmbeddings:
        data = list(caption.encode("utf-8"))[: self.max_length]
        ids = torch.full((self.max_length,), 256, dtype=torch.long)
        ids[: len(data)] = torch.tensor(data, dtype=torch.long)
        mask = (ids != 256).long()
        if not data:
            mask[0] = 1  # an empty caption still gets one (padding) token to attend to
        device = self.embed.weight.device
        context = self.proj(self.embed(ids.to(device)))
        return TextEmbeddings(context=context.float().cpu(), mask=mask)


def _tiny_metadata(path: Path) -> dict[str, str] | None:
    if not (path.is_file() and path.suffix == ".safetensors"):
        return None
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    return metadata if metadata.get("kind") == TINY_TEXT_KIND else None


class GemmaTextEncoder:
    """ltx-core Gemma 3 + embeddings processor (video connector output)."""

    def __init__(self, gemma_root: Path, checkpoint_path: Path, device: torch.device, dtype: torch.dtype):
        from ltx_core.loader.single_gpu_model_builder import SingleGPUModelBuilder
        from ltx_core.text_encoders.gemma.encoders.base_encoder import module_ops_from_gemma_root
        from ltx_core.text_encoders.gemma.encoders.encoder_configurator import (
            EMBEDDINGS_PROCESSOR_KEY_OPS,
            GEMMA_LLM_KEY_OPS,
            GEMMA_MODEL_OPS,
            EmbeddingsProcessorConfigurator,
            GemmaTextEncoderConfigurator,
        )
        from ltx_core.utils import find_matching_file

        model_folder = find_matching_file(str(gemma_root), "model*.safetensors").parent
        weights = tuple(str(p) for p in sorted(model_folder.rglob("*.safetensors")))
        self.encoder = (
            SingleGPUModelBuilder(
                model_path=weights,
                model_class_configurator=GemmaTextEncoderConfigurator,
                model_sd_ops=GEMMA_LLM_KEY_OPS,
                module_ops=(GEMMA_MODEL_OPS, *module_ops_from_gemma_root(str(gemma_root))),
            )
            .build(device=device, dtype=dtype)
            .eval()
        )
        self.processor = (
            SingleGPUModelBuilder(
                model_path=str(checkpoint_path),
                model_class_configurator=EmbeddingsProcessorConfigurator,
                model_sd_ops=EMBEDDINGS_PROCESSOR_KEY_OPS,
            )
            .build(device=device, dtype=dtype)
            .eval()
        )

    @torch.no_grad()
    def encode(self, caption: str) -> TextEmbeddings:
        hidden_states, attention_mask = self.encoder.encode(caption)
        out = self.processor.process_hidden_states(hidden_states, attention_mask)
        return TextEmbeddings(
            context=out.video_encoding[0].float().cpu(), mask=out.attention_mask[0].long().cpu()
        )


def load_text_encoder(
    path: str | Path, checkpoint_path: str | Path, device: torch.device, dtype: torch.dtype
) -> TextEncoder:
    """A tiny encoder file, or a Gemma root folder (with the LTX checkpoint's embeddings processor).

    A folder that holds just one tiny encoder file (a fetched s3:// prefix) is that file.
    """
    path = Path(path)
    if path.is_dir():
        tiny = [p for p in path.glob("*.safetensors") if _tiny_metadata(p) is not None]
        if len(tiny) == 1 and not any(path.rglob("model*.safetensors")):
            path = tiny[0]
    metadata = _tiny_metadata(path)
    if metadata is not None:
        from safetensors.torch import load_file

        config = json.loads(metadata["config"])
        module = TinyTextEncoder(config["dim"], config["max_length"])
        module.load_state_dict(load_file(str(path)))
        return module.to(device).eval()
    try:
        return GemmaTextEncoder(path, Path(checkpoint_path), device, dtype)
    except (FileNotFoundError, NotADirectoryError) as exc:  # not a Gemma folder: the profile names the wrong one
        raise ModelConfigError(f"text encoder {path}: {exc}") from exc


def encode_captions(encoder: TextEncoder, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode each distinct caption once; returns padded (N, L, D) context and (N, L) mask."""
    cache: dict[str, TextEmbeddings] = {}
    for caption in captions:
        if caption not in cache:
            cache[caption] = encoder.encode(caption)
    items = [cache[c] for c in captions]
    length = max(e.context.shape[0] for e in items)
    dim = items[0].context.shape[1]
    context = torch.zeros(len(items), length, dim)
    mask = torch.zeros(len(items), length, dtype=torch.long)
    for i, e in enumerate(items):
        n = e.context.shape[0]
        context[i, :n] = e.context
        mask[i, :n] = e.mask
    return context, mask
