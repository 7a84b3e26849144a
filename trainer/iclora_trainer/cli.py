"""`iclora train`: the trainer image's entry point (also usable on one GPU box without a cluster)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "train",
        help="Train a masked IC-LoRA (the trainer image's entry point).",
        description="Train a masked video-to-video IC-LoRA on LTX-2.3 from a prepared dataset.",
    )
    p.add_argument("--spec", required=True, help="Manifest (YAML/JSON) or snake_case request JSON.")
    p.add_argument("--dataset", required=True, help="Prepared dataset dir or s3:// prefix (or a raw .zip).")
    p.add_argument(
        "--output", required=True, help="Output dir or s3:// prefix (checkpoints, artifacts, progress)."
    )
    p.add_argument("--model-path", help="LTX-2.3 checkpoint .safetensors (env ICLORA_MODEL_PATH).")
    p.add_argument("--text-encoder-path", help="Gemma root dir or tiny text encoder file.")
    p.add_argument("--settings", help="Trainer settings file (JSON or YAML), see TrainerSettings.")
    p.add_argument("--steps", type=int, help="Override the spec's numberOfSteps (may go below 100).")
    p.add_argument("--checkpoint-interval", type=int)
    p.add_argument("--zero-stage", type=int, choices=[0, 1, 2])
    p.add_argument("--engine", choices=["auto", "torch", "deepspeed"])
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--dtype", choices=["auto", "bf16", "fp32"])
    p.add_argument("--batch-size", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--work-dir")
    p.add_argument("--termination-log", help="Default: $ICLORA_TERMINATION_LOG or /dev/termination-log.")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Parse, train, report; every failure ends with a contract exit code and termination message."""
    from iclora_api.contract import LOG_LEVEL_ENV, Result, Stage
    from iclora_trainer.errors import TrainerError, failure
    from iclora_trainer.preemption import Preempted, StopSignal
    from iclora_trainer.reporting import write_termination_message

    logging.basicConfig(
        level=os.environ.get(LOG_LEVEL_ENV, "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        spawned = _maybe_spawn_local_ranks()
        if spawned is not None:
            return spawned
        stop = StopSignal()
        stop.install()  # SIGTERM: finish the step, checkpoint it, exit PREEMPTED
        outcome_result = _train(args, stop)
        write_termination_message(outcome_result, args.termination_log)
        return 0
    except Preempted as exc:
        # Not a failure: the Job ignores the code and the next pod resumes from the checkpoint.
        # No result.json: the run is not over.
        log.warning("%s", exc)
        result = Result(status="Failed", reason=exc.reason(Stage.TRAINING), message=str(exc))
        write_termination_message(result, args.termination_log)
        return int(exc.exit_code)
    except Exception as exc:
        if isinstance(exc, TrainerError):
            log.error("%s: %s", type(exc).__name__, exc)
        else:
            log.exception("internal error")
        code, reason, message = failure(exc, Stage.TRAINING)
        result = Result(status="Failed", reason=reason, message=message[:2000])
        _report_failure(args, result)
        return int(code)


def _report_failure(args: argparse.Namespace, result: Any) -> None:
    from iclora_trainer.distributed import dist_env
    from iclora_trainer.reporting import Reporter, write_termination_message
    from iclora_trainer.storage import open_store

    write_termination_message(result, args.termination_log)
    if dist_env().rank == 0:
        try:
            Reporter(open_store(args.output), 0, 1).result(result)
        except Exception as exc:  # the store itself may be what failed
            log.warning("result.json not written: %s", exc)


def _maybe_spawn_local_ranks() -> int | None:
    """On a multi-GPU pod started without LOCAL_RANK, run one child per GPU and return the worst code."""
    from iclora_api.contract import GPUS_PER_NODE_ENV, ExitCode

    gpus = int(os.environ.get(GPUS_PER_NODE_ENV, "1"))
    if gpus <= 1 or "LOCAL_RANK" in os.environ:
        return None
    children: list[Any] = []
    received: list[int] = []

    def forward(signum: int, frame: object) -> None:
        # The runtime signals the container's first process only: each rank checkpoints and exits.
        received.append(signum)
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    # Before the first child: a SIGTERM while they start (this is PID 1, whose default action is to
    # ignore it) is remembered and given to each child that starts after it.
    signal.signal(signal.SIGTERM, forward)
    for i in range(gpus):
        child = subprocess.Popen(
            [sys.executable, "-m", "iclora_trainer", *sys.argv[1:]],
            env={**os.environ, "LOCAL_RANK": str(i)},
        )
        children.append(child)
        if received and child.poll() is None:
            child.send_signal(received[-1])  # it came while this child started (a second one is harmless)
    codes = [c.wait() for c in children]
    if received:
        # A rank the signal reached before it installed its own handler died of it: nothing to save.
        codes = [ExitCode.PREEMPTED if c == -signal.SIGTERM else c for c in codes]
    # The worst code; a real failure of one rank wins over the others' PREEMPTED (which is retried free).
    return max(codes, key=lambda c: (c != 0, c != ExitCode.PREEMPTED, c))


def _train(args: argparse.Namespace, stop: Any = None) -> Any:
    from iclora_api.documents import read_document
    from iclora_api.trainer_settings import load_settings
    from iclora_api.validation import spec_from_document, validate_spec
    from iclora_trainer.distributed import dist_env, export_torch_env, skip_cpu_shared_memory_allreduce
    from iclora_trainer.errors import ScratchError, SpecError, TrainerError
    from iclora_trainer.loop import TrainingPlan, train
    from iclora_trainer.model.provision import provision_settings
    from iclora_trainer.reporting import Reporter
    from iclora_trainer.storage import materialise, open_store

    try:
        spec = validate_spec(spec_from_document(read_document(args.spec)))
    except (OSError, ValueError) as exc:
        raise SpecError(str(exc)) from exc
    except Exception as exc:  # SpecInvalid and YAML errors
        raise SpecError(str(exc)) from exc
    overrides = {
        "model_path": args.model_path,
        "text_encoder_path": args.text_encoder_path,
        "steps": args.steps,
        "checkpoint_interval": args.checkpoint_interval,
        "zero_stage": args.zero_stage,
        "engine": args.engine,
        "device": args.device,
        "dtype": args.dtype,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "work_dir": args.work_dir,
    }
    try:
        settings = load_settings(args.settings, dict(os.environ), overrides)
    except Exception as exc:
        raise SpecError(f"trainer settings: {exc}") from exc
    plan = TrainingPlan(
        steps=spec.number_of_steps,
        rank=spec.rank,
        learning_rate=spec.learning_rate,
        trigger_phrase=spec.trigger_phrase,
        validation=_validation_plan(spec),
        reference_downscale_factor=spec.reference_downscale_factor,
    )
    dist = dist_env()
    store = open_store(args.output)
    # The base model first (every local rank; one process per node downloads, the others wait on
    # its lock, not on a collective): a source the profile got wrong fails before anything else.
    notes = Reporter(store, settings.steps or plan.steps, settings.progress_interval, enabled=dist.rank == 0)
    settings, model_fetch = provision_settings(settings, notes.note)
    if model_fetch.downloaded_bytes or model_fetch.reused_bytes:
        notes.note(None)  # fetched: the status stops saying so while the model loads
    # The pod's scratch: shared by its local ranks (the dataset, once; the latents, each triplet
    # once), with one folder per rank for what is its own (checkpoints, artifacts).
    pod = Path(settings.work_dir)
    work = pod / f"rank{dist.rank}"
    settings = settings.model_copy(update={"work_dir": str(work)})
    dataset = args.dataset
    if dataset.endswith(".zip"):
        # Hook: a raw archive goes through the dataset preflight first (wired by the lead).
        from iclora_trainer.dataset import preflight  # type: ignore[attr-defined]

        dataset = str(preflight.prepare_for_training(dataset, spec, work / "prepared"))  # pragma: no cover
    # One download per pod (the others wait on its lock). The store or the scratch disk failing
    # is infrastructure (ObjectStoreError 20, ScratchError 22: retried), never DatasetInvalid.
    waited: list[str] = []

    def waiting(message: str) -> None:
        waited.append(message)
        notes.note(message)

    try:
        dataset_dir = materialise(dataset, pod / "dataset", waiting)
        if waited:
            notes.note(None)  # the status stops saying so
    except TrainerError:
        raise
    except OSError as exc:
        raise ScratchError(f"dataset {dataset} into {pod / 'dataset'}: {exc}") from exc
    if dist.distributed:
        import deepspeed
        import torch

        export_torch_env(dist)
        if not torch.cuda.is_available():
            skip_cpu_shared_memory_allreduce()
        # Bounded by the profile, whatever the backend: a collective that a lost rank never joins
        # fails after this, every rank exits and the Job restarts the gang from the last checkpoint.
        deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo",
                                   timeout=timedelta(seconds=settings.collective_timeout_seconds))
    outcome = train(plan, settings, dataset_dir, store, dist, model_fetch=model_fetch, stop=stop, shared_dir=pod)
    return outcome.result


def _validation_plan(spec: Any) -> Any:
    from iclora_trainer.validation import ValidationEntry, ValidationPlan

    width, height = spec.validation_size
    return ValidationPlan(
        entries=tuple(
            ValidationEntry(v.prompt, str(v.video_url), str(v.mask_url), str(v.reference_video_url))
            for v in spec.validation
        ),
        negative_prompt=spec.validation_negative_prompt,
        frames=spec.effective_validation_number_of_frames,
        frame_rate=float(spec.validation_frame_rate),
        width=width,
        height=height,
        stg_scale=float(spec.stg_scale),
    )
