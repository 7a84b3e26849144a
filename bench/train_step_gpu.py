"""GPU benchmark: our masked IC-LoRA training step vs the official ltx-core + PEFT anchor.

Full-size LTX-2.3 video transformer (configurator defaults + the 22B caption layout,
or `--config-json` with a checkpoint's `config` metadata), random bf16 weights built
on the device (meta init, then materialised: no checkpoint needed), LoRA rank 32,
target plus same-size reference. Every row comes from the same run.

`ours` is the product's step: `prepare_for_training` (LoRA, fp32 adapters, the speed
levers of TrainerSettings), the engine the trainer builds (DeepSpeed on a GPU) and
`MaskedICLoraStrategy`. Each `--variant` adds an `ours` row with other settings.
`anchor` is ltx-core's transformer + PEFT LoRA, gradient checkpointing on every
block, a plain AdamW step.

    python bench/train_step_gpu.py                                  # both shapes, ours + anchor
    python bench/train_step_gpu.py --variant activation_checkpointing=blocks:24 \
        --variant activation_checkpointing=none,fp8_base=true --validation
    python bench/train_step_gpu.py --tiny --device cpu --variant compile_blocks=true   # CPU smoke test

Never a CI test. Writes bench/results/train_step_<device>_<time>.json.
"""

from __future__ import annotations

import argparse
import gc
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
sys.path[:0] = [str(ROOT / "trainer"), str(ROOT / "operator"), str(ROOT / "dev")]

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
    settings: dict[str, Any]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="Tiny config (CPU smoke test: one step each).")
    p.add_argument("--config-json", help="Model config JSON (the checkpoint's `config` metadata).")
    p.add_argument("--shapes", default="768x448x89,768x768x89", help="WxHxF, comma separated.")
    p.add_argument("--steps", type=int, default=10, help="Measured steps (median).")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rank", type=int, default=32)
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        help="Extra `ours` row: TrainerSettings overrides, e.g. activation_checkpointing=every:2,fp8_base=true.",
    )
    p.add_argument("--reference-downscale", type=int, default=1, help="Reference at 1/d resolution (ours).")
    p.add_argument("--skip-anchor", action="store_true")
    p.add_argument(
        "--skip-defaults",
        action="store_true",
        help="No default `ours` row (one row per process: bench/gpu/rows.sh, clean peak memory).",
    )
    p.add_argument("--validation", action="store_true", help="Also time the validation sampler (per entry).")
    p.add_argument("--validation-shapes", default="", help="WxHxF of the sampler timing (default: --shapes).")
    p.add_argument("--validation-timed-steps", type=int, default=4, help="Euler steps timed (cost is linear).")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="Dense bf16 peak (H100 SXM: 989).")
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    return p.parse_args(argv)


def parse_variant(text: str) -> dict[str, Any]:
    """`k=v,k=v` -> validated TrainerSettings overrides (lists as a|b), plus `reference_downscale`
    (the spec's referenceDownscaleFactor: 1, 2 or 4)."""
    from iclora_api.trainer_settings import TrainerSettings, parse_overrides

    pairs = [tuple(item.partition("=")[::2]) for item in filter(None, text.split(","))]
    out: dict[str, Any] = {}
    for key, value in [p for p in pairs if p[0] == "reference_downscale"]:
        if value not in {"1", "2", "4"}:
            raise SystemExit(f"--variant: reference_downscale {value!r}: expected 1, 2 or 4")
        out[key] = int(value)
    try:
        out.update(parse_overrides([p for p in pairs if p[0] != "reference_downscale"]))
    except ValueError as exc:
        raise SystemExit(f"--variant: {exc}") from exc
    TrainerSettings.model_validate({k: v for k, v in out.items() if k != "reference_downscale"})
    return out


def full_config() -> dict[str, Any]:
    """Configurator defaults (48 layers, 32 x 128 heads, 128 channels, context 4096).

    The fixed-value keys the configurator checks come from the tiny config; the
    22B caption layout from FULL_OVERRIDES. Gated attention / cross-attention AdaLN
    stay at the configurator's defaults: pass `--config-json` with the real
    checkpoint's config to match LTX-2.3 exactly.
    """
    from iclora_dev.tiny_model import tiny_model_config

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
        from iclora_dev.tiny_model import tiny_model_config

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


def ours_loss(module, batch, strategy, dtype):
    noise = torch.randn_like(batch.target)
    sigma = torch.full((batch.target.shape[0],), 0.7, device=batch.target.device)
    inputs = strategy.prepare_inputs(batch, noise, sigma)
    prediction = strategy.forward(module, inputs, batch, dtype)
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


def measure(name, shape, model, step, batch, args, device, settings=None) -> Row:
    n_tokens = math.prod(batch.target.shape[2:]) + math.prod(batch.reference.shape[2:])
    flops = step_flops(model, n_tokens, batch.context.shape[1])
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    warmup, steps = (0, 1) if args.tiny else (args.warmup, args.steps)
    times = []
    for i in range(warmup + steps):
        if cuda:
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    sps = statistics.median(times)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else 0.0
    row = Row(
        name=name,
        shape=shape,
        tokens=n_tokens,
        s_per_step=sps,
        tokens_per_s=n_tokens / sps,
        peak_gib=peak,
        tflops_per_step=flops / 1e12,
        mfu=flops / sps / (args.peak_tflops * 1e12),
        steps=len(times),
        settings=settings or {},
    )
    print(f"{row.name:48s} {row.shape:12s} {row.s_per_step:.3f} s/step  {row.peak_gib:.1f} GiB  "
          f"MFU {100 * row.mfu:.1f}%", flush=True)
    return row


def one_rank_engine(device: torch.device) -> str:
    """Build and step the product's DeepSpeed engine on one device, as a one-GPU training pod
    does (no launcher, the engine makes its own process group). Reported, not assumed: if it
    fails, a launcher-style env:// group is set up so the rows are still measured."""
    from iclora_api.trainer_settings import TrainerSettings
    from iclora_trainer.engine import build_engine

    if device.type != "cuda":
        return "not checked (CPU rows use the torch engine)"
    dtype = torch.bfloat16
    settings = TrainerSettings(engine="deepspeed", device="cuda", dtype="bf16")
    try:
        module = torch.nn.Linear(64, 64).to(device, dtype)
        engine = build_engine(module, settings, 1e-3, 10, device, dtype, distributed=False)
        engine.step(engine.module(torch.randn(4, 64, device=device, dtype=dtype)).float().pow(2).mean())
        return "ok"
    except Exception as exc:
        import deepspeed

        from iclora_trainer.distributed import dist_env, export_torch_env

        if not torch.distributed.is_initialized():
            export_torch_env(dist_env({}))  # rank 0 of 1 on 127.0.0.1
            deepspeed.init_distributed(dist_backend="nccl")
        return f"{type(exc).__name__}: {exc}"[:500]


def ours_rows(shape, overrides, config, args, device, dtype) -> tuple[list[Row], torch.nn.Module | None]:
    """One `ours` row: the trainer's model preparation, engine and strategy with these settings."""
    from iclora_api.trainer_settings import TrainerSettings
    from iclora_trainer.engine import build_engine
    from iclora_trainer.model.acceleration import attention_backends, prepare_for_training
    from iclora_trainer.strategy import MaskedICLoraStrategy

    base = {"device": device.type, "dtype": "bf16" if dtype == torch.bfloat16 else "fp32", "warmup_steps": 0}
    downscale = overrides.get("reference_downscale", args.reference_downscale)
    shown = {k: v for k, v in overrides.items() if k != "reference_downscale"}  # the TrainerSettings part
    settings = TrainerSettings.model_validate({**base, **shown})
    batch = make_batch(shape, argparse.Namespace(**{**vars(args), "reference_downscale": downscale}), config, device)
    model = prepare_for_training(build_model(config, device, dtype), args.rank, settings, device)
    engine = build_engine(model, settings, 1e-4, 1000, device, dtype, distributed=False)
    strategy = MaskedICLoraStrategy(fps=24.0, reference_downscale_factor=downscale)

    def step() -> None:
        engine.step(ours_loss(engine.module, batch, strategy, dtype))

    label = "ours" + (f"[{','.join(f'{k}={v}' for k, v in shown.items())}]" if shown else "")
    recorded = settings.model_dump(exclude_defaults=True)
    if downscale != 1:
        label += f"[ref/{downscale}]"
        recorded["reference_downscale"] = downscale
    with attention_backends(settings.attention_backends):
        row = measure(label, shape, model, step, batch, args, device, recorded)
    engine.close()  # DeepSpeed's process-wide maps would keep this row's weights alive
    return [row], model


def anchor_row(shape, config, args, device, dtype) -> Row:
    from iclora_trainer.lora_io import apply_lora

    batch = make_batch(shape, argparse.Namespace(**{**vars(args), "reference_downscale": 1}), config, device)
    model = build_model(config, device, dtype)
    apply_lora(model, args.rank, float(args.rank))
    model.set_gradient_checkpointing(True)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)

    def step() -> None:
        anchor_step(model, batch, 24.0, dtype).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return measure("anchor", shape, model, step, batch, args, device)


def validation_cost(model, shape, config, args, device, dtype) -> dict[str, Any]:
    """Seconds of the validation sampler per entry (default guidance: CFG + STG, batched passes)."""
    import numpy as np

    from iclora_api.trainer_settings import TrainerSettings
    from iclora_trainer.validation import GuidanceConfig, PreparedEntry, sample_latent

    channels = config["transformer"].get("in_channels", 128)
    dim = config["transformer"].get("cross_attention_dim", 4096)
    tshape, rshape = latent_shapes(shape, args.reference_downscale, channels)
    n_ctx = 32 if args.tiny else CONTEXT_TOKENS
    mask = torch.zeros(tshape[2:], dtype=torch.bool)
    mask[..., tshape[-1] // 2 :] = True
    empty = np.zeros((1, 1, 1, 3), np.uint8)
    entry = PreparedEntry(
        prompt="bench",
        source=empty,
        mask=np.zeros((1, 1, 1), bool),
        reference=empty,
        source_latent=torch.randn(tshape[1:]),
        reference_latent=torch.randn(rshape[1:]),
        latent_mask=mask,
        context=torch.randn(n_ctx, dim),
        context_mask=torch.ones(n_ctx, dtype=torch.long),
        negative_context=torch.randn(n_ctx, dim),
        negative_context_mask=torch.ones(n_ctx, dtype=torch.long),
    )
    default_steps = TrainerSettings().validation_steps
    model.eval()
    timed = 1 if args.tiny else args.validation_timed_steps
    sample_latent(model, entry, GuidanceConfig(steps=1), 24.0, device, dtype, args.reference_downscale)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    sample_latent(model, entry, GuidanceConfig(steps=timed), 24.0, device, dtype, args.reference_downscale)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    per_step = (time.perf_counter() - t0) / timed
    model.train()
    result = {
        "shape": shape,
        "s_per_euler_step": per_step,
        "euler_steps": default_steps,
        "s_per_entry": per_step * default_steps,
        "passes_per_step": 3,
        "note": "transformer sampling only (VAE encode/decode and media I/O excluded)",
    }
    print(f"validation {shape:12s} {per_step:.2f} s/Euler step -> {per_step * default_steps:.0f} s per entry "
          f"({default_steps} steps, CFG+STG)", flush=True)
    return result


class Report:
    """The run's figures, rewritten to one JSON file after every row: a run killed at its time
    limit keeps what it measured."""

    def __init__(self, args: argparse.Namespace, device: torch.device) -> None:
        self.args = args
        self.rows: list[Row] = []
        self.validation: list[dict[str, Any]] = []
        self.errors: list[dict[str, Any]] = []
        self.one_rank_engine = ""
        self.device = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        tag = "tiny" if args.tiny else self.device.replace(" ", "-")
        self.path = out / f"train_step_{tag}_{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}.json"

    def fractions(self) -> list[dict[str, Any]]:
        out = []
        for v in self.validation:
            ours = next((r for r in self.rows if r.name == "ours" and r.shape == v["shape"]), None)
            if ours:
                # Two entries (the spec's maximum) rendered once at the end of a 3000-step run.
                out.append({"shape": v["shape"],
                            "two_entries_over_3000_steps": 2 * v["s_per_entry"] / (3000 * ours.s_per_step)})
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "command": " ".join(sys.argv),
            "torch": torch.__version__,
            "args": vars(self.args),
            "rows": [asdict(r) for r in self.rows],
            "validation": self.validation,
            "validation_fraction": self.fractions(),
            "errors": self.errors,
            "one_rank_engine": self.one_rank_engine,
        }

    def save(self) -> None:
        self.path.write_text(json.dumps(self.as_dict(), indent=2))


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def run(args: argparse.Namespace) -> Report:
    device = torch.device(args.device)
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    config = model_config(args)
    variants = [parse_variant(v) for v in args.variant]
    val_shapes = [s for s in args.validation_shapes.split(",") if s]
    report = Report(args, device)
    report.one_rank_engine = one_rank_engine(device)
    print(f"one-rank DeepSpeed engine without a launcher: {report.one_rank_engine}", flush=True)
    for shape in args.shapes.split(","):
        # Defaults first, then the anchor: the pair the issue asks for survives a time limit.
        if not args.skip_defaults:
            new_rows, model = ours_rows(shape, {}, config, args, device, dtype)
            report.rows += new_rows
            if args.validation and not val_shapes:
                report.validation.append(validation_cost(model, shape, config, args, device, dtype))
            del model
            _free(device)
            report.save()
        if not args.skip_anchor:
            report.rows.append(anchor_row(shape, config, args, device, dtype))
            _free(device)
            report.save()
        for overrides in variants:
            try:
                new_rows, _ = ours_rows(shape, overrides, config, args, device, dtype)
                report.rows += new_rows
            except Exception as exc:  # an OOM or an unsupported lever costs one row, not the run
                error = {"shape": shape, "settings": overrides, "error": f"{type(exc).__name__}: {exc}"[:500]}
                report.errors.append(error)
                print(f"variant {overrides} at {shape} failed: {error['error']}", flush=True)
            _free(device)
            report.save()
    if args.validation and val_shapes:
        from iclora_trainer.lora_io import apply_lora

        model = apply_lora(build_model(config, device, dtype), args.rank, float(args.rank))
        for shape in val_shapes:
            report.validation.append(validation_cost(model, shape, config, args, device, dtype))
            report.save()
        del model
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    result.save()
    report = result.as_dict()
    for shape in args.shapes.split(","):
        anchor = next((r for r in report["rows"] if r["name"] == "anchor" and r["shape"] == shape), None)
        for r in (r for r in report["rows"] if r["shape"] == shape):
            ratio = f"  {anchor['s_per_step'] / r['s_per_step']:.2f}x anchor" if anchor else ""
            print(
                f"{r['name']:48s} {shape:12s} {r['s_per_step']:.3f} s/step  {r['tokens_per_s']:.0f} tok/s  "
                f"{r['peak_gib']:.1f} GiB  MFU {100 * r['mfu']:.1f}%{ratio}"
            )
    for f in report["validation_fraction"]:
        print(f"validation at {f['shape']}: 2 entries = {100 * f['two_entries_over_3000_steps']:.1f}% of 3000 steps")
    print(f"wrote {result.path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
