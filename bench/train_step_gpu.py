"""GPU benchmark: our masked IC-LoRA training step vs the official ltx-core + PEFT anchor.

Full-size LTX-2.3 video transformer (configurator defaults + the 22B caption layout,
or `--config-json` with a checkpoint's `config` metadata), random bf16 weights built
on the device (meta init, then materialised: no checkpoint needed), PEFT LoRA rank 32,
target plus same-size reference. Both rows come from the same run.

    python bench/train_step_gpu.py                          # H100, both shapes, both rows
    python bench/train_step_gpu.py --checkpointing every:2 --sdpa flash --compile
    python bench/train_step_gpu.py --tiny --device cpu      # CPU smoke test (one step each)

Never a CI test. Writes bench/results/train_step_<device>_<time>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "trainer"), str(ROOT / "operator")]

# LTX-2.3 (22B layout): the caption projection lives in the text encoder.
FULL_OVERRIDES = {
    "caption_proj_before_connector": True,
    "caption_projection_first_linear": False,
    "caption_proj_input_norm": False,
    "caption_projection_second_linear": False,
}
CONTEXT_TOKENS = 256  # padded Gemma context length at training


@dataclass
class Row:
    name: str
    shape: str
    tokens: int
    s_per_step: float
    tokens_per_s: float
    peak_gib: float
    tflops_per_step: float
    mfu: float
    steps: int


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="Tiny config (CPU smoke test: one step each).")
    p.add_argument("--config-json", help="Model config JSON (the checkpoint's `config` metadata).")
    p.add_argument("--shapes", default="768x448x89,768x768x89", help="WxHxF, comma separated.")
    p.add_argument("--steps", type=int, default=10, help="Measured steps (median).")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rank", type=int, default=32)
    p.add_argument("--sdpa", choices=["auto", "flash", "efficient", "cudnn", "math"], default="auto")
    p.add_argument("--compile", action="store_true", help="torch.compile each transformer block (ours).")
    p.add_argument("--checkpointing", default="all", help="ours: all | none | every:N (checkpoint every Nth block).")
    p.add_argument("--fp8", action="store_true", help="torchao float8 matmuls for the frozen base (ours).")
    p.add_argument("--reference-downscale", type=int, default=1, help="Reference at 1/d resolution (ours).")
    p.add_argument("--skip-anchor", action="store_true")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="Dense bf16 peak (H100 SXM: 989).")
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    return p.parse_args(argv)


def full_config() -> dict[str, Any]:
    """Configurator defaults (48 layers, 32 x 128 heads, 128 channels, context 4096).

    The fixed-value keys the configurator checks come from the tiny config; the
    22B caption layout from FULL_OVERRIDES. Gated attention / cross-attention AdaLN
    stay at the configurator's defaults: pass `--config-json` with the real
    checkpoint's config to match LTX-2.3 exactly.
    """
    from iclora_trainer.model.tiny import tiny_model_config

    transformer = tiny_model_config()["transformer"]
    for key in (
        "num_layers",
        "num_attention_heads",
        "attention_head_dim",
        "in_channels",
        "out_channels",
        "cross_attention_dim",
        "positional_embedding_max_pos",
    ):
        transformer.pop(key)
    transformer.update(FULL_OVERRIDES)
    return {"transformer": transformer}


def model_config(args: argparse.Namespace) -> dict[str, Any]:
    if args.tiny:
        from iclora_trainer.model.tiny import tiny_model_config

        return tiny_model_config()
    if args.config_json:
        return json.loads(Path(args.config_json).read_text())
    return full_config()


def build_model(config: dict[str, Any], device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """Meta-device init, then materialise on `device` with random weights (no checkpoint)."""
    from ltx_core.model.transformer.model_configurator import LTXVideoOnlyModelConfigurator

    with torch.device("meta"):
        model = LTXVideoOnlyModelConfigurator.from_config(config)
    model = model.to_empty(device=device).to(dtype)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "scale_shift_table" in name:
                p.normal_(0, 0.02)
            elif p.ndim >= 2:
                p.normal_(0, 1 / math.sqrt(p[0].numel()))
            else:
                p.fill_(1.0 if name.endswith("weight") else 0.0)
        for _, b in model.named_buffers():
            if b.is_floating_point():
                b.zero_()
    return model


class _Checkpointed(torch.nn.Module):
    """Activation checkpointing of one block (selective checkpointing: only some blocks)."""

    def __init__(self, block: torch.nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, video: Any = None, audio: Any = None, perturbations: Any = None) -> Any:
        return torch.utils.checkpoint.checkpoint(self.block, video, audio, perturbations, use_reentrant=False)


def apply_levers(model: torch.nn.Module, args: argparse.Namespace) -> None:
    blocks = model.transformer_blocks
    if args.fp8:
        from torchao.float8 import convert_to_float8_training  # type: ignore[import-not-found]

        # Only the frozen base linears (PEFT's lora_A/lora_B stay bf16).
        convert_to_float8_training(model, module_filter_fn=lambda m, n: "lora_" not in n and "base_layer" in n)
    if args.compile:
        for i in range(len(blocks)):
            blocks[i] = torch.compile(blocks[i])
    mode = args.checkpointing
    if mode == "all":
        model.set_gradient_checkpointing(True)
    elif mode.startswith("every:"):
        every = int(mode.split(":", 1)[1])
        for i in range(len(blocks)):
            if i % every == 0:
                blocks[i] = _Checkpointed(blocks[i])
    elif mode != "none":
        raise SystemExit(f"unknown --checkpointing {mode}")


def sdpa_context(name: str) -> contextlib.AbstractContextManager:
    if name == "auto":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = {
        "flash": SDPBackend.FLASH_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
        "math": SDPBackend.MATH,
    }[name]
    return sdpa_kernel([backend])


def step_flops(model: torch.nn.Module, n_tokens: int, n_context: int) -> float:
    """Model FLOPs of forward + backward (3x forward, recomputation not counted)."""
    fwd = 0.0
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Linear) and "lora_" not in name:
            tokens = n_context if ".attn2.to_k" in name or ".attn2.to_v" in name else n_tokens
            fwd += 2.0 * tokens * m.in_features * m.out_features
    first = model.transformer_blocks[0]
    inner = first.attn1.to_q.out_features if hasattr(first, "attn1") else 0
    # QK^T and AV: self-attention over all tokens, cross-attention over the context.
    fwd += len(model.transformer_blocks) * (4.0 * n_tokens * n_tokens * inner + 4.0 * n_tokens * n_context * inner)
    return 3.0 * fwd


def latent_shapes(shape: str, downscale: int, channels: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    w, h, f = (int(x) for x in shape.split("x"))
    lf, lh, lw = (f - 1) // 8 + 1, h // 32, w // 32
    return (1, channels, lf, lh, lw), (1, channels, lf, lh // downscale, lw // downscale)


def make_batch(shape: str, args: argparse.Namespace, config: dict, device: torch.device):
    from iclora_trainer.strategy import LatentBatch

    channels = config["transformer"].get("in_channels", 128)
    dim = config["transformer"].get("cross_attention_dim", 4096)
    tshape, rshape = latent_shapes(shape, args.reference_downscale, channels)
    g = torch.Generator(device="cpu").manual_seed(0)
    mask = torch.zeros(tshape[0], *tshape[2:], dtype=torch.bool)
    mask[..., tshape[-1] // 2 :] = True  # right half regenerated
    n_ctx = 32 if args.tiny else CONTEXT_TOKENS
    return LatentBatch(
        target=torch.randn(tshape, generator=g).to(device),
        reference=torch.randn(rshape, generator=g).to(device),
        mask=mask.to(device),
        context=torch.randn(1, n_ctx, dim, generator=g).to(device),
        context_mask=torch.ones(1, n_ctx, dtype=torch.long, device=device),
    )


def ours_step(model, batch, strategy, dtype):
    noise = torch.randn_like(batch.target)
    sigma = torch.full((batch.target.shape[0],), 0.7, device=batch.target.device)
    inputs = strategy.prepare_inputs(batch, noise, sigma)
    prediction = strategy.forward(model, inputs, batch, dtype)
    return strategy.compute_loss(prediction, inputs).mean()


def anchor_step(model, batch, fps, dtype):
    """The official plain step: target + reference sequence, one sigma, MSE on target tokens."""
    from ltx_core.guidance.perturbations import BatchedPerturbationConfig
    from ltx_core.model.transformer.modality import Modality

    from iclora_trainer.conditioning import patchify, video_positions

    x0, ref = patchify(batch.target), patchify(batch.reference)
    noise = torch.randn_like(x0)
    s = 0.7
    xt = (1 - s) * x0 + s * noise
    n_t = x0.shape[1]
    latent = torch.cat([xt, ref], dim=1)
    ts = torch.cat([torch.full((1, n_t), s), torch.zeros(1, ref.shape[1])], dim=1).to(latent.device)
    pos = torch.cat(
        [video_positions(tuple(batch.target.shape), fps), video_positions(tuple(batch.reference.shape), fps)], dim=2
    ).to(latent.device)
    video = Modality(
        latent=latent.to(dtype),
        sigma=torch.full((1,), s, device=latent.device, dtype=dtype),
        timesteps=ts.to(dtype),
        positions=pos,
        context=batch.context.to(dtype),
        context_mask=batch.context_mask,
    )
    pred, _ = model(video=video, audio=None, perturbations=BatchedPerturbationConfig.empty(1))
    return (pred[:, :n_t].float() - (noise - x0).float()).pow(2).mean()


def measure(name, shape, model, run_step, batch, args, device) -> Row:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    n_tokens = math.prod(batch.target.shape[2:]) + math.prod(batch.reference.shape[2:])
    flops = step_flops(model, n_tokens, batch.context.shape[1])
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    warmup, steps = (0, 1) if args.tiny else (args.warmup, args.steps)
    times = []
    with sdpa_context(args.sdpa):
        for i in range(warmup + steps):
            if cuda:
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            loss = run_step()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if cuda:
                torch.cuda.synchronize(device)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    sps = statistics.median(times)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else 0.0
    return Row(
        name=name,
        shape=shape,
        tokens=n_tokens,
        s_per_step=sps,
        tokens_per_s=n_tokens / sps,
        peak_gib=peak,
        tflops_per_step=flops / 1e12,
        mfu=flops / sps / (args.peak_tflops * 1e12),
        steps=len(times),
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    from iclora_trainer.lora_io import apply_lora
    from iclora_trainer.strategy import MaskedICLoraStrategy

    device = torch.device(args.device)
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    config = model_config(args)
    fps = 24.0
    rows: list[Row] = []
    for shape in args.shapes.split(","):
        batch = make_batch(shape, args, config, device)
        model = build_model(config, device, dtype)
        apply_lora(model, args.rank, float(args.rank))
        apply_levers(model, args)
        model.train()
        strategy = MaskedICLoraStrategy(fps=fps, reference_downscale_factor=args.reference_downscale)
        rows.append(
            measure(
                "ours", shape, model, functools.partial(ours_step, model, batch, strategy, dtype), batch, args, device
            )
        )
        del model
        if not args.skip_anchor:
            anchor_batch = make_batch(
                shape, argparse.Namespace(**{**vars(args), "reference_downscale": 1}), config, device
            )
            model = build_model(config, device, dtype)
            apply_lora(model, args.rank, float(args.rank))
            model.set_gradient_checkpointing(True)
            model.train()
            rows.append(
                measure(
                    "anchor",
                    shape,
                    model,
                    functools.partial(anchor_step, model, anchor_batch, fps, dtype),
                    anchor_batch,
                    args,
                    device,
                )
            )
            del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join(sys.argv),
        "torch": torch.__version__,
        "args": vars(args),
        "rows": [asdict(r) for r in rows],
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = run(args)
    for r in report["rows"]:
        print(
            f"{r['name']:7s} {r['shape']:12s} {r['s_per_step']:.3f} s/step  {r['tokens_per_s']:.0f} tok/s  "
            f"{r['peak_gib']:.1f} GiB  MFU {100 * r['mfu']:.1f}%"
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = "tiny" if args.tiny else report["device"].replace(" ", "-")
    path = out / f"train_step_{tag}_{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
