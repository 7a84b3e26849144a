"""Activation memory of the full-size transformer per block, measured on a CPU (issue 8 planning).

A GPU hour is scarce; which `activation_checkpointing` modes fit a memory budget is not. This
script runs our training forward (the product's `prepare_for_training` + strategy, LoRA rank
32, target plus same-size reference) through one and two full-size LTX-2.3 blocks at two
token counts and sums what is kept for backward, each storage once:
- a stored block: the tensors autograd saves (`saved_tensors_hooks`);
- a `selective:K` block: its inputs plus the outputs of the matmuls and attention its policy
  keeps (a dispatch mode sees them; the checkpoint's cache holds them outside autograd).
The 2-block minus 1-block difference is fitted as bytes = per-token * tokens + per-block
constant. From that it predicts, per shape, the peak of each checkpointing mode: weights
(bf16) + LoRA and optimizer state + checkpointed blocks' inputs + kept activations + one
block's recomputation, and the least recomputation that fits the budget.

    python bench/activation_memory.py                          # both GPU shapes, budget 40 GiB

A prediction, not a measurement of peak GPU memory (allocator caching, the attention
kernel's workspace and the loss head are not in it; against the issue's anchor, every block
checkpointed, it comes out 2 to 4 GiB low): `bench/train_step_gpu.py` measures the peak.
Writes bench/results/activation_memory.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "bench"), str(ROOT / "trainer"), str(ROOT / "operator")]
GIB = 2**30
BLOCKS, DIM, FF = 48, 4096, 4 * 4096


def saved_bytes(layers: int, shape: str, rank: int, selective: bool) -> tuple[int, int]:
    """(bytes kept for backward by one training forward, tokens) with `layers` full-size blocks, fp32."""
    import train_step_gpu as bench
    from torch.utils._python_dispatch import TorchDispatchMode

    from iclora_api.trainer_settings import TrainerSettings
    from iclora_trainer.model.acceleration import SELECTIVE_SAVED_OPS, prepare_for_training
    from iclora_trainer.strategy import MaskedICLoraStrategy

    config = bench.full_config()
    config["transformer"]["num_layers"] = layers
    device, dtype = torch.device("cpu"), torch.float32
    args = argparse.Namespace(tiny=False, reference_downscale=1)
    mode = "selective:999" if selective else "none"
    settings = TrainerSettings(device="cpu", dtype="fp32", activation_checkpointing=mode)
    model = prepare_for_training(bench.build_model(config, device, dtype), rank, settings, device)
    batch = bench.make_batch(shape, args, config, device)
    strategy = MaskedICLoraStrategy(fps=24.0)
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return t

    class KeptOutputs(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func in SELECTIVE_SAVED_OPS and torch.is_grad_enabled():
                for t in out if isinstance(out, tuple) else (out,):
                    if isinstance(t, torch.Tensor):
                        pack(t)
            return out

    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t))
        if selective:
            stack.enter_context(KeptOutputs())
        bench.ours_loss(model, batch, strategy, dtype)
    # Weights (frozen base and LoRA) are saved by reference: not activations.
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    tokens = math.prod(batch.target.shape[2:]) + math.prod(batch.reference.shape[2:])
    return sum(n for ptr, n in seen.items() if ptr not in params), tokens


def block_fit(shapes: list[str], rank: int, selective: bool) -> dict[str, Any]:
    """Per-token and per-block-constant bf16 bytes of one block, from 1- vs 2-block differences."""
    points = []
    for shape in shapes:
        one, tokens = saved_bytes(1, shape, rank, selective)
        two, _ = saved_bytes(2, shape, rank, selective)
        points.append({"shape": shape, "tokens": tokens, "block_bytes_fp32": two - one})
    (t1, b1), (t2, b2) = ((p["tokens"], p["block_bytes_fp32"]) for p in points)
    per_token = (b2 - b1) / (t2 - t1)
    # bf16 activations are half the fp32 bytes the CPU run kept.
    return {"probe": points, "per_token": per_token / 2, "constant": (b1 - per_token * t1) / 2}


def fixed_bytes(rank: int) -> tuple[float, float]:
    """(bf16 weights, LoRA state) of the full-size model."""
    import train_step_gpu as bench
    from ltx_core.model.transformer.model_configurator import LTXVideoOnlyModelConfigurator

    with torch.device("meta"):
        model = LTXVideoOnlyModelConfigurator.from_config(bench.full_config())
    weights = sum(p.numel() for p in model.parameters()) * 2
    # LoRA on q, k, v, out of both attentions and the two FF projections: fp32 master weights,
    # Adam moments, bf16 copy and gradient (DeepSpeed bf16) = 4+4+4+2+2 bytes a parameter.
    lora = BLOCKS * rank * (8 * (DIM + DIM) + (DIM + FF) + (FF + DIM)) * 16
    return weights, lora


def predict(shape: str, full: dict, sel: dict, weights: float, lora: float, budget: float) -> dict[str, Any]:
    w, h, f = (int(x) for x in shape.split("x"))
    tokens = 2 * ((f - 1) // 8 + 1) * (h // 32) * (w // 32)
    stored = full["per_token"] * tokens + full["constant"]
    block_input = tokens * DIM * 2
    # The checkpoint holds a selective block's input itself (outside the saved-tensor hooks).
    kept = sel["per_token"] * tokens + sel["constant"] + block_input
    base = weights + lora + stored  # one block's recomputation at a time

    def total(n_stored: int, n_selective: int) -> float:
        rest = BLOCKS - n_stored - n_selective
        return base + n_stored * stored + n_selective * kept + rest * block_input

    fits_stored = max((k for k in range(BLOCKS + 1) if total(k, 0) <= budget * GIB), default=None)
    fits_sel = max((k for k in range(BLOCKS + 1) if total(0, k) <= budget * GIB), default=None)
    return {
        "shape": shape,
        "tokens": tokens,
        "stored_block_gib": stored / GIB,
        "selective_block_gib": kept / GIB,
        "predicted_gib": {
            "all": total(0, 0) / GIB,
            "every:2": total(BLOCKS // 2, 0) / GIB,
            "none": (weights + lora + BLOCKS * stored) / GIB,
            f"selective:{BLOCKS}": total(0, BLOCKS) / GIB,
        },
        "blocks_mode_within_budget": None if fits_stored is None else f"blocks:{BLOCKS - fits_stored}",
        "selective_mode_within_budget": None if fits_sel is None else f"selective:{fits_sel}",
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="768x448x89,768x768x89")
    p.add_argument("--probe-shapes", default="256x256x25,384x256x25", help="Two small WxHxF the CPU runs.")
    p.add_argument("--budget-gib", type=float, default=40.0)
    p.add_argument("--rank", type=int, default=32)
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = p.parse_args(argv)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    probes = args.probe_shapes.split(",")
    full, sel = block_fit(probes, args.rank, False), block_fit(probes, args.rank, True)
    weights, lora = fixed_bytes(args.rank)
    rows = [predict(s, full, sel, weights, lora, args.budget_gib) for s in args.shapes.split(",")]
    for r in rows:
        pred = ", ".join(f"{k} {v:.1f}" for k, v in r["predicted_gib"].items())
        print(
            f"{r['shape']:12s} {r['tokens']:6d} tokens  per block: stored {r['stored_block_gib']:.2f} GiB, "
            f"selective {r['selective_block_gib']:.2f} GiB  predicted GiB: {pred}  within {args.budget_gib:g} GiB: "
            f"{r['blocks_mode_within_budget']} or {r['selective_mode_within_budget']}"
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "activation_memory.json"
    report = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join(sys.argv),
        "stored_block_fit_bf16": full,
        "selective_block_fit_bf16": sel,
        "weights_gib": weights / GIB,
        "predictions": rows,
        "seconds": time.perf_counter() - t0,
        "note": "bytes kept for backward on a CPU (fp32 halved to bf16); a prediction, not a GPU peak",
    }
    path.write_text(json.dumps(report, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
