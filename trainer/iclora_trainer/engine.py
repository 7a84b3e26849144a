"""Optimisation engines behind one protocol: plain torch (single process) and DeepSpeed.

Both own the optimizer (AdamW over the LoRA parameters), the LR schedule (linear
warmup, then cosine/linear decay to min_lr_ratio), gradient clipping, and the
saving/loading of optimizer and scheduler state.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Protocol

import torch

from iclora_api.trainer_settings import TrainerSettings
from iclora_trainer.errors import ModelConfigError


@dataclass(frozen=True)
class OptimConfig:
    lr: float
    steps: int
    warmup: int
    schedule: str = "cosine"
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0


def lr_factor(step: int, cfg: OptimConfig) -> float:
    """Multiplier of the base LR for optimizer step `step` (0-based)."""
    if cfg.warmup and step < cfg.warmup:
        return (step + 1) / cfg.warmup
    if cfg.schedule == "constant":
        return 1.0
    span = max(1, cfg.steps - cfg.warmup)
    progress = min(1.0, (step - cfg.warmup) / span)
    decay = 0.5 * (1 + math.cos(math.pi * progress)) if cfg.schedule == "cosine" else 1 - progress
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * decay


def _optimizer(params: list[torch.nn.Parameter], cfg: OptimConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.999), eps=1e-8)


def _scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg))


class Engine(Protocol):
    rank: int
    world_size: int
    device: torch.device
    cfg: OptimConfig  # base LR and schedule: the LR of step s is cfg.lr * lr_factor(s, cfg)
    module: torch.nn.Module

    def step(self, loss: torch.Tensor) -> None: ...
    def lr(self) -> float: ...
    def save(self, directory: Path) -> None: ...
    def load(self, directory: Path) -> None: ...
    def mean_losses(self, losses: torch.Tensor) -> list[float]: ...
    def stop_agreed(self, requested: bool) -> bool: ...
    def barrier(self) -> None: ...
    def close(self) -> None: ...


class TorchEngine:
    """Single-process engine (CPU tests, one-GPU boxes without DeepSpeed)."""

    rank = 0
    world_size = 1

    def __init__(self, module: torch.nn.Module, cfg: OptimConfig, device: torch.device) -> None:
        self.module = module
        self.device = device
        self.cfg = cfg
        self.params = [p for p in module.parameters() if p.requires_grad]
        self.optimizer = _optimizer(self.params, cfg)
        self.scheduler = _scheduler(self.optimizer, cfg)

    def step(self, loss: torch.Tensor) -> None:
        # No float() of the loss or the norm here: a host sync per step stalls the GPU queue.
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.cfg.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def lr(self) -> float:
        return float(self.scheduler.get_last_lr()[0])

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        torch.save(
            {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()},
            directory / "optimizer.pt",
        )

    def load(self, directory: Path) -> None:
        state = torch.load(directory / "optimizer.pt", map_location=self.device, weights_only=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])

    def mean_losses(self, losses: torch.Tensor) -> list[float]:
        return [float(v) for v in losses.float().cpu()]

    def stop_agreed(self, requested: bool) -> bool:
        """Whether the run stops after this step (iclora_trainer.preemption): one process, its own flag."""
        return requested

    def barrier(self) -> None:
        return None

    def close(self) -> None:
        return None


def _one_rank_group(device: torch.device) -> None:
    """A process group of one for DeepSpeed when no launcher made one (a one-GPU Job).

    Without it `deepspeed.initialize` looks for the launcher's RANK/WORLD_SIZE/LOCAL_RANK
    and, not finding them, for MPI, and fails; it also reads LOCAL_RANK itself. An
    in-memory store needs no port.
    """
    from iclora_trainer.distributed import dist_env, export_torch_env, skip_cpu_shared_memory_allreduce

    if device.type != "cuda":
        skip_cpu_shared_memory_allreduce()
    if torch.distributed.is_initialized():
        return
    dist = dist_env()
    if dist.distributed:
        raise ModelConfigError("several ranks, but no process group: `iclora train` initialises it before training")
    export_torch_env(dist)
    torch.distributed.init_process_group(
        "nccl" if device.type == "cuda" else "gloo", store=torch.distributed.HashStore(), rank=0, world_size=1
    )


def _bounded_deepspeed_world_group(timeout: timedelta) -> None:
    """DeepSpeed reduces gradients on its own copy of the world group, which it creates with
    `new_group(ranks)` and no timeout (deepspeed/utils/groups.py `_clone_world_group`), so torch's
    default (10 min NCCL, 30 min gloo) applied instead of the profile's collectiveTimeoutSeconds:
    a lost rank left its peers hanging there. Made here, first, with the timeout."""
    from deepspeed.utils import groups

    world = torch.distributed.get_world_size()
    if world > 1 and getattr(groups, "_WORLD_GROUP", None) is None:
        groups._WORLD_GROUP = torch.distributed.new_group(ranks=list(range(world)), timeout=timeout)


class DeepSpeedEngine:
    """DeepSpeed data parallel (ZeRO 0-2) across the ranks in the environment."""

    def __init__(
        self,
        module: torch.nn.Module,
        cfg: OptimConfig,
        device: torch.device,
        zero_stage: int,
        micro_batch: int,
        bf16: bool,
        collective_timeout: timedelta | None = None,
    ) -> None:
        import deepspeed

        _one_rank_group(device)
        if collective_timeout is not None:
            _bounded_deepspeed_world_group(collective_timeout)
        self.cfg = cfg
        self.device = device
        params = [p for p in module.parameters() if p.requires_grad]
        optimizer = _optimizer(params, cfg)
        scheduler = _scheduler(optimizer, cfg)
        world = int(os.environ.get("WORLD_SIZE", "1"))
        ds_config = {
            "train_micro_batch_size_per_gpu": micro_batch,
            "train_batch_size": micro_batch * world,
            "gradient_accumulation_steps": 1,
            "gradient_clipping": cfg.max_grad_norm,
            "zero_optimization": {"stage": zero_stage},
            "bf16": {"enabled": bf16},
            "steps_per_print": 10**9,
            "wall_clock_breakdown": False,
        }
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=module,
            optimizer=optimizer,
            lr_scheduler=scheduler,
            config=ds_config,
            model_parameters=params,
        )
        self.module = self.engine
        self.rank = int(torch.distributed.get_rank())
        self.world_size = int(torch.distributed.get_world_size())

    def step(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)
        self.engine.step()

    def lr(self) -> float:
        return float(self.engine.get_lr()[0])

    def save(self, directory: Path) -> None:
        # Frozen base weights are excluded: only the LoRA, optimizer and schedule are saved.
        self.engine.save_checkpoint(
            str(directory), tag="engine", save_latest=False, exclude_frozen_parameters=True
        )

    def load(self, directory: Path) -> None:
        self.engine.load_checkpoint(str(directory), tag="engine", load_module_strict=False)

    def mean_losses(self, losses: torch.Tensor) -> list[float]:
        """Per-step losses averaged over the ranks (one all-reduce for the whole interval)."""
        t = losses.to(device=self.device, dtype=torch.float64)
        torch.distributed.all_reduce(t)
        return [float(v) / self.world_size for v in t.cpu()]

    def stop_agreed(self, requested: bool) -> bool:
        """Whether the run stops after this step: true on every rank once any rank was asked to.

        Called by every rank at every step boundary (a collective): an all-reduce (MAX) of the
        ranks' stop flags, so all of them stop, and checkpoint, at the same step.
        """
        if self.world_size == 1:
            return requested
        flag = torch.tensor([1 if requested else 0], dtype=torch.int32, device=self.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())

    def barrier(self) -> None:
        torch.distributed.barrier()

    def close(self) -> None:
        """Release what DeepSpeed holds process-wide (its debug name maps keep the module, so
        without this a second engine in the same process carries the first one's weights)."""
        destroy = getattr(self.engine, "destroy", None)
        if destroy is not None:
            destroy()


def build_engine(
    model: torch.nn.Module,
    settings: TrainerSettings,
    lr: float,
    steps: int,
    device: torch.device,
    dtype: torch.dtype,
    distributed: bool,
) -> Engine:
    """The engine the settings ask for: DeepSpeed for several ranks or a GPU (engine auto), else torch."""
    cfg = OptimConfig(
        lr=lr,
        steps=steps,
        warmup=settings.resolved_warmup(steps),
        schedule=settings.lr_schedule,
        min_lr_ratio=settings.min_lr_ratio,
        weight_decay=settings.weight_decay,
        max_grad_norm=settings.max_grad_norm,
    )
    use_ds = settings.engine == "deepspeed" or (settings.engine == "auto" and (distributed or device.type == "cuda"))
    if use_ds:
        return DeepSpeedEngine(
            model, cfg, device, settings.zero_stage, settings.batch_size, bf16=dtype == torch.bfloat16,
            collective_timeout=timedelta(seconds=settings.collective_timeout_seconds),
        )
    if distributed:
        raise ModelConfigError("engine 'torch' is single-process; use 'deepspeed' with several ranks")
    return TorchEngine(model, cfg, device)
