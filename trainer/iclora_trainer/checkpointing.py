"""Checkpoints: `checkpoints/step-<n>/` under the output location.

Contents: adapter.safetensors (fp32 LoRA, PEFT names, exact for resume),
engine/ (optimizer and LR schedule; DeepSpeed's files hold ZeRO shards),
rng-rank<r>.pt (every rank), trainer_state.json and, written last, COMPLETE.
A checkpoint without COMPLETE (a pod killed mid-upload) is ignored on resume.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from iclora_api.contract import CHECKPOINTS_DIR
from iclora_trainer.engine import Engine
from iclora_trainer.errors import CheckpointError, ObjectStoreError
from iclora_trainer.lora_io import lora_parameters
from iclora_trainer.storage import Store

COMPLETE = "COMPLETE"
_STEP_DIR = re.compile(rf"^{CHECKPOINTS_DIR}/step-(\d+)/{COMPLETE}$")


@dataclass(frozen=True)
class TrainerState:
    step: int
    fingerprint: str
    world_size: int


def checkpoint_key(step: int) -> str:
    return f"{CHECKPOINTS_DIR}/step-{step:06d}"


def completed_steps(store: Store) -> list[int]:
    steps = []
    for key in store.list(CHECKPOINTS_DIR):
        m = _STEP_DIR.match(key)
        if m:
            steps.append(int(m.group(1)))
    return sorted(steps)


def rng_state() -> dict[str, object]:
    state: dict[str, object] = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, object]) -> None:
    torch.set_rng_state(state["torch"])  # type: ignore[arg-type]
    np.random.set_state(state["numpy"])  # type: ignore[arg-type]
    random.setstate(state["python"])  # type: ignore[arg-type]
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])  # type: ignore[arg-type]


def save_checkpoint(
    store: Store,
    work_dir: Path,
    state: TrainerState,
    engine: Engine,
    model: torch.nn.Module,
    keep: int,
    uploader: bool,
) -> None:
    """Every rank calls this; each rank has its own work dir and uploads the files it wrote."""
    from safetensors.torch import save_file

    key = checkpoint_key(state.step)
    local = work_dir / key
    try:
        if engine.rank == 0:
            shutil.rmtree(local, ignore_errors=True)
        engine.barrier()
        local.mkdir(parents=True, exist_ok=True)
        engine.save(local / "engine")
        torch.save(rng_state(), local / f"rng-rank{engine.rank}.pt")
        if engine.rank == 0:
            adapter = {n: p.detach().float().cpu().contiguous() for n, p in lora_parameters(model).items()}
            save_file(adapter, str(local / "adapter.safetensors"))
            (local / "trainer_state.json").write_text(json.dumps(state.__dict__))
        engine.barrier()
        if uploader:
            for path in sorted(p for p in local.rglob("*") if p.is_file()):
                store.put_file(path, f"{key}/{path.relative_to(local).as_posix()}")
        engine.barrier()
        if engine.rank == 0:
            store.put_bytes(json.dumps(state.__dict__).encode(), f"{key}/{COMPLETE}")
            for old in completed_steps(store)[:-keep]:
                store.delete_prefix(checkpoint_key(old))
                shutil.rmtree(work_dir / checkpoint_key(old), ignore_errors=True)
        engine.barrier()
    except ObjectStoreError:
        raise
    except Exception as exc:
        raise CheckpointError(f"checkpoint at step {state.step} failed: {exc}") from exc


def load_latest(
    store: Store, work_dir: Path, fingerprint: str, engine: Engine, model: torch.nn.Module
) -> int:
    """Restore the latest completed checkpoint; returns its step (0 when there is none)."""
    from safetensors.torch import load_file

    steps = completed_steps(store)
    if not steps:
        return 0
    step = steps[-1]
    key = checkpoint_key(step)
    local = work_dir / "restore" / key
    for name in store.list(key):
        store.get_file(name, work_dir / "restore" / name)
    try:
        state = json.loads((local / "trainer_state.json").read_text())
        saved_fingerprint, saved_step = str(state["fingerprint"]), int(state["step"])
        adapter = load_file(str(local / "adapter.safetensors"))
    except Exception as exc:  # unreadable JSON, missing keys or files, a corrupt safetensors header
        raise CheckpointError(f"checkpoint {store.url(key)} is unreadable: {type(exc).__name__}: {exc}") from exc
    if saved_fingerprint != fingerprint:
        raise CheckpointError(
            f"checkpoint {store.url(key)} was written by a different configuration "
            f"(fingerprint {saved_fingerprint} != {fingerprint}); refusing to resume"
        )
    params = lora_parameters(model)
    if set(adapter) != set(params):
        raise CheckpointError("checkpoint adapter does not match the model's LoRA layout")
    with torch.no_grad():
        for name, value in adapter.items():
            params[name].copy_(value.to(params[name].device, params[name].dtype))
    engine.load(local / "engine")
    rng_file = local / f"rng-rank{engine.rank}.pt"
    if rng_file.exists():
        set_rng_state(torch.load(rng_file, weights_only=False))
    return saved_step
