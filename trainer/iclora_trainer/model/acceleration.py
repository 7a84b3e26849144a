"""Speed levers of the training step, applied to the LoRA-injected transformer.

One place decides how the step runs on the accelerator, so the trainer and the GPU
benchmark (`bench/train_step_gpu.py`) measure the same thing:

- activation checkpointing per block: `all` (ltx-core's own flag, the anchor's
  setting), `none`, `every:N` (every Nth block) or `blocks:K` (the first K
  blocks). Fewer checkpointed blocks means less recomputation and more memory.
  `selective:K` checkpoints every block, but the first K do it op by op
  (torch's selective checkpointing): they keep their attention outputs, whose
  cost grows with the square of the tokens, and recompute the rest. Keeping the
  matmul outputs too would save as much memory as storing the block
  (`bench/activation_memory.py`: they are most of a block's saved bytes).
- the SDPA backends attention may use, in priority order
  (`torch.nn.attention.sdpa_kernel`).
- `torch.compile` of every transformer block, in place (state-dict keys, and so
  checkpoints and the LoRA file, are unchanged).
- FP8 matmuls (torchao float8 training) for the frozen base linears; the LoRA
  adapters stay in high precision. Needs a CUDA GPU of compute capability 8.9+.
- fused LoRA: each adapted projection computes `base(x) + s * (x A^T) B^T` as one
  `addmm` on the base output, in the activations' dtype. PEFT's forward instead writes
  the LoRA product, scales it and adds it (three passes over an output-sized tensor,
  forward and backward), and with fp32 adapters it upcasts the input and the output.
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

from iclora_api.trainer_settings import CHECKPOINTING_PATTERN, TrainerSettings
from iclora_trainer.errors import ModelConfigError

SDPA_BACKENDS = ("flash", "cudnn", "efficient", "math")
_CHECKPOINTING = re.compile(CHECKPOINTING_PATTERN)
FP8_MIN_CAPABILITY = (8, 9)


def _attention_ops() -> frozenset[Any]:
    aten = torch.ops.aten
    names = (
        "_scaled_dot_product_flash_attention", "_scaled_dot_product_cudnn_attention",
        "_scaled_dot_product_efficient_attention", "_scaled_dot_product_flash_attention_for_cpu",
        "_scaled_dot_product_attention_math",
    )  # fmt: skip
    return frozenset(getattr(aten, n).default for n in names if hasattr(aten, n))


# Ops whose outputs a selectively checkpointed block keeps: attention (SDPA, every backend).
SELECTIVE_SAVED_OPS = _attention_ops()


def _keep_attention(ctx: Any, op: Any, *args: Any, **kwargs: Any) -> CheckpointPolicy:
    # Called for every op a selective block runs: no imports or lookups beyond the set.
    return CheckpointPolicy.MUST_SAVE if op in SELECTIVE_SAVED_OPS else CheckpointPolicy.PREFER_RECOMPUTE


def checkpointing_is_valid(value: str) -> bool:
    return bool(_CHECKPOINTING.match(value))


def checkpointed_blocks(mode: str, num_blocks: int) -> set[int]:
    """Indices of the blocks whose activations are recomputed in the backward pass."""
    if not checkpointing_is_valid(mode):
        raise ModelConfigError(
            f"activation_checkpointing {mode!r}: expected all, none, every:N (N >= 1), blocks:K or selective:K"
        )
    if mode == "all" or mode.startswith("selective:"):
        return set(range(num_blocks))
    if mode == "none":
        return set()
    kind, count = mode.split(":")
    n = int(count)
    if kind == "every":
        return set(range(0, num_blocks, n))
    return set(range(min(n, num_blocks)))


def selective_blocks(mode: str, num_blocks: int) -> set[int]:
    """Indices of the checkpointed blocks that keep their attention outputs."""
    if not mode.startswith("selective:"):
        return set()
    return set(range(min(int(mode.split(":")[1]), num_blocks)))


@dataclass(frozen=True)
class Acceleration:
    checkpointing: str = "all"
    sdpa_backends: tuple[str, ...] = field(default_factory=tuple)  # empty: PyTorch chooses
    compile: bool = False
    fp8: bool = False
    fused_lora: bool = False

    @classmethod
    def from_settings(cls, settings: TrainerSettings) -> Acceleration:
        return cls(
            checkpointing=settings.activation_checkpointing,
            sdpa_backends=tuple(settings.attention_backends),
            compile=settings.compile_blocks,
            fp8=settings.fp8_base,
            fused_lora=settings.fused_lora,
        )


def _checkpointed_forward(
    block: torch.nn.Module, inner: Callable[..., Any], selective: bool = False
) -> Callable[..., Any]:
    extra: dict[str, Any] = {}
    if selective:
        extra["context_fn"] = functools.partial(create_selective_checkpoint_contexts, _keep_attention)

    def forward(video: Any = None, audio: Any = None, perturbations: Any = None) -> Any:
        if block.training and torch.is_grad_enabled():
            # Non-reentrant: the block's dataclass arguments pass through untouched.
            return torch.utils.checkpoint.checkpoint(
                inner, video, audio, perturbations, use_reentrant=False, **extra
            )
        return inner(video=video, audio=audio, perturbations=perturbations)

    return forward


def _check_fp8(device: torch.device) -> None:
    if device.type != "cuda" or torch.cuda.get_device_capability(device) < FP8_MIN_CAPABILITY:
        raise ModelConfigError(
            "fp8_base needs a CUDA GPU of compute capability 8.9 or newer (Ada, Hopper); "
            f"this run is on {device}"
        )
    try:
        import torchao.float8  # noqa: F401  # type: ignore[import-not-found]
    except ImportError as exc:
        raise ModelConfigError("fp8_base needs the torchao package in the trainer image") from exc


def _convert_fp8(model: torch.nn.Module) -> None:
    from torchao.float8 import convert_to_float8_training  # type: ignore[import-not-found]

    def frozen_base(module: torch.nn.Module, name: str) -> bool:
        # PEFT keeps the frozen projection as `base_layer`; lora_A/lora_B stay in bf16/fp32.
        # float8 matmuls need both dimensions divisible by 16.
        return (
            name.endswith("base_layer")
            and isinstance(module, torch.nn.Linear)
            and module.in_features % 16 == 0
            and module.out_features % 16 == 0
        )

    convert_to_float8_training(model, module_filter_fn=frozen_base)


def _fused_lora_forward(layer: torch.nn.Module, adapter: str) -> Callable[..., Any]:
    base, lora_a, lora_b = layer.base_layer, layer.lora_A[adapter], layer.lora_B[adapter]
    peft_forward = layer.forward

    def forward(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if layer.disable_adapters or layer.merged or args or kwargs or adapter not in layer.active_adapters:
            return peft_forward(x, *args, **kwargs)
        y = base(x)
        # The casts touch only the rank-r weights; their gradients flow back to the (fp32) parameters.
        h = torch.nn.functional.linear(x, lora_a.weight.to(x.dtype))
        out = torch.addmm(
            y.reshape(-1, y.shape[-1]), h.reshape(-1, h.shape[-1]), lora_b.weight.to(y.dtype).t(),
            alpha=layer.scaling[adapter],
        )
        return out.view(y.shape)

    return forward


def _fuse_lora(model: torch.nn.Module) -> int:
    from peft.tuners.lora.layer import Linear as LoraLinear

    from iclora_trainer.lora_io import ADAPTER_NAME

    fused = 0
    for name, layer in model.named_modules():
        if not isinstance(layer, LoraLinear):
            continue
        plain = (
            ADAPTER_NAME in layer.lora_A
            and not getattr(layer, "lora_variant", None)
            and not getattr(layer, "use_dora", {}).get(ADAPTER_NAME, False)
            and isinstance(layer.lora_dropout[ADAPTER_NAME], torch.nn.Identity)
            and layer.lora_A[ADAPTER_NAME].bias is None
            and layer.lora_B[ADAPTER_NAME].bias is None
        )
        if not plain:
            raise ModelConfigError(f"fused_lora: {name} is not a plain LoRA projection (dropout, DoRA or bias)")
        layer.forward = _fused_lora_forward(layer, ADAPTER_NAME)
        fused += 1
    return fused


def accelerate(model: torch.nn.Module, acc: Acceleration, device: torch.device) -> torch.nn.Module:
    """Apply the levers in place to a transformer that already carries its LoRA adapters."""
    blocks = model.transformer_blocks
    chosen = checkpointed_blocks(acc.checkpointing, len(blocks))
    selective = selective_blocks(acc.checkpointing, len(blocks))
    if acc.fp8:
        _check_fp8(device)
        _convert_fp8(model)
    if acc.fused_lora and not _fuse_lora(model):
        raise ModelConfigError("fused_lora: the transformer carries no LoRA projections")
    # ltx-core's own flag checkpoints every block; the per-block choice replaces it.
    model.set_gradient_checkpointing(False)
    if acc.compile:
        _allow_one_graph_per_block(len(blocks))
    for i, block in enumerate(blocks):
        # Compiled inside the checkpoint, not around it: a checkpoint traced by Dynamo becomes a
        # higher-order op whose body may not mutate outer state, and ltx-core's block does
        # (typing.Protocol instantiation), so a compiled checkpoint fell back to eager.
        inner = torch.compile(block.forward, dynamic=False) if acc.compile else block.forward
        if i in chosen:
            block.forward = _checkpointed_forward(block, inner, selective=i in selective)
        elif acc.compile:
            block.forward = inner
    return model


def _allow_one_graph_per_block(num_blocks: int) -> None:
    """Dynamo caches compiled graphs per code object (all blocks share `forward`) and falls back
    to eager past its recompile limit (8 by default): leave room for every block, twice (train
    and eval), in case a block's guards tell it apart from the others."""
    import torch._dynamo

    limit = 2 * num_blocks + 8
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, name) and getattr(torch._dynamo.config, name) < limit:
            setattr(torch._dynamo.config, name, limit)
    acc_name = "accumulated_recompile_limit"
    if hasattr(torch._dynamo.config, acc_name) and getattr(torch._dynamo.config, acc_name) < 4 * limit:
        setattr(torch._dynamo.config, acc_name, 4 * limit)


def attention_backends(names: tuple[str, ...] | list[str]) -> contextlib.AbstractContextManager[None]:
    """Context restricting scaled_dot_product_attention to `names`, tried in that order."""
    if not names:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    table = {
        "flash": SDPBackend.FLASH_ATTENTION,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "math": SDPBackend.MATH,
    }
    unknown = [n for n in names if n not in table]
    if unknown:
        raise ModelConfigError(f"attention_backends {unknown}: expected some of {', '.join(SDPA_BACKENDS)}")
    return sdpa_kernel([table[n] for n in names], set_priority=True)


def prepare_for_training(
    model: torch.nn.Module, rank: int, settings: TrainerSettings, device: torch.device
) -> torch.nn.Module:
    """The transformer as the training step runs it: LoRA (alpha = rank), fp32 adapters, levers, train mode.

    The trainer and the GPU benchmark both call this, so the benchmark's `ours` row
    is the product's step.
    """
    from iclora_trainer.lora_io import apply_lora

    apply_lora(model, rank, float(rank), seed=settings.seed)
    # Trainable LoRA weights stay fp32 (bf16 master weights lose small updates).
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    accelerate(model, Acceleration.from_settings(settings), device)
    return model.train()
