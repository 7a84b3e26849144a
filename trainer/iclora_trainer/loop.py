"""The training run: precompute, build the LoRA model and engine, resume, train, save, report."""

from __future__ import annotations

import gc
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from iclora_api.contract import (
    ARTIFACTS_DIR,
    CONFIG_NAME,
    DEBUG_ARCHIVE_NAME,
    LORA_NAME,
    LOSS_PLOT_NAME,
    METRICS_NAME,
    MODEL_PATH_ENV,
    RESULT_KEY,
    TEXT_ENCODER_PATH_ENV,
    VIDEO_NAME,
    Artifacts,
    ModelFetch,
    Result,
)
from iclora_api.trainer_settings import TrainerSettings, fingerprint
from iclora_trainer.checkpointing import TrainerState, load_latest, save_checkpoint
from iclora_trainer.data import PrecomputedDataset, latent_cache_key, precompute_dir, read_manifest
from iclora_trainer.distributed import DistEnv, RankZeroGate, apply_thread_limits
from iclora_trainer.engine import build_engine, lr_factor
from iclora_trainer.errors import ModelConfigError
from iclora_trainer.lora_io import (
    TRAINING_TYPE,
    export_lora,
    load_into_adapters,
    lora_parameters,
    read_lora,
    save_lora,
)
from iclora_trainer.metrics import MetricsLog
from iclora_trainer.model.acceleration import attention_backends, prepare_for_training
from iclora_trainer.preemption import Preempted, StopSignal
from iclora_trainer.reporting import Reporter
from iclora_trainer.storage import Store
from iclora_trainer.strategy import MaskedICLoraStrategy
from iclora_trainer.validation import GuidanceConfig, ValidationPlan

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingPlan:
    """Everything from the spec the trainer uses (the spec's other fields are the operator's)."""

    steps: int
    rank: int
    learning_rate: float
    trigger_phrase: str
    validation: ValidationPlan | None = None  # None or no entries: no reel
    reference_downscale_factor: int = 1  # spec extension: reference at 1/d resolution

    @property
    def alpha(self) -> float:
        return float(self.rank)  # alpha = rank: folded scale 1


@dataclass
class TrainOutcome:
    result: Result
    losses: list[float] = field(default_factory=list)  # mean masked-token loss per step (all ranks)
    start_step: int = 0
    lora_path: Path | None = None


def resolve_device(settings: TrainerSettings, dist: DistEnv) -> tuple[torch.device, torch.dtype]:
    cuda = settings.device == "cuda" or (settings.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda", dist.local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    bf16 = settings.dtype == "bf16" or (settings.dtype == "auto" and cuda)
    return device, torch.bfloat16 if bf16 else torch.float32


def sample_indices(step: int, n: int, global_batch: int, seed: int) -> list[int]:
    """Global batch of dataset indices for `step`: epochs of seeded permutations, no repeats within one."""
    out = []
    for j in range(global_batch):
        position = step * global_batch + j
        epoch, offset = divmod(position, n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        out.append(int(perm[offset]))
    return out


def sample_noise(
    step: int, slots: range, shape: tuple[int, ...], num_tokens: int, seed: int, sigma_std: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise and sigma per global batch slot, independent of how slots are spread over ranks."""
    from iclora_trainer.conditioning import shifted_logit_normal_sigmas

    noises, sigmas = [], []
    for slot in slots:
        g = torch.Generator().manual_seed((seed * 7_919 + step) * 65_537 + slot)
        sigmas.append(shifted_logit_normal_sigmas(g, 1, num_tokens, sigma_std))
        noises.append(torch.randn(shape, generator=g))
    return torch.stack(noises), torch.cat(sigmas)


def load_and_precompute(
    dataset_dir: Path,
    settings: TrainerSettings,
    device: torch.device,
    dtype: torch.dtype,
    reference_downscale_factor: int = 1,
    shared_dir: Path | None = None,
) -> tuple[PrecomputedDataset, dict[str, Any]]:
    """Latents, masks and embeddings of the prepared dataset, streamed one clip at a time (data.py).

    `shared_dir`: the pod's scratch folder its local ranks share; latents go to its `latents/`
    folder, each triplet encoded by one rank and read by all (data.precompute_shared). Without
    it, this process's work folder (one rank: the same thing).
    """
    from iclora_trainer.model.loading import load_video_encoder
    from iclora_trainer.model.text import load_text_encoder

    if not settings.model_path:
        raise ModelConfigError(f"no model checkpoint: set --model-path or {MODEL_PATH_ENV}")
    if not settings.text_encoder_path:
        raise ModelConfigError(f"no text encoder: set --text-encoder-path or {TEXT_ENCODER_PATH_ENV}")
    model_path, text_path = settings.model_path, settings.text_encoder_path
    manifest = read_manifest(dataset_dir)
    key = latent_cache_key(dataset_dir, manifest, model_path, dtype, device, reference_downscale_factor)

    def free() -> None:  # the VAE before the text encoder, both before the transformer is loaded
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()

    data = precompute_dir(
        dataset_dir,
        manifest.frame_rate,
        lambda: load_video_encoder(model_path, device, dtype),
        lambda: load_text_encoder(text_path, model_path, device, dtype),
        device,
        dtype,
        reference_downscale_factor,
        cache=Path(shared_dir or settings.work_dir) / "latents" / key,
        manifest=manifest,
        free=free,
    )
    free()
    geometry = {
        "width": manifest.width,
        "height": manifest.height,
        "numberOfFrames": manifest.number_of_frames,
        "frameRate": manifest.frame_rate,
        "triplets": len(manifest.triplets),
        "datasetFingerprint": fingerprint(
            {"names": [t.name for t in manifest.triplets], "m": manifest.model_dump()}
        ),
    }
    return data, geometry


def train(
    plan: TrainingPlan,
    settings: TrainerSettings,
    dataset_dir: Path,
    store: Store,
    dist: DistEnv,
    stop_after: int | None = None,
    model_fetch: ModelFetch | None = None,
    stop: StopSignal | None = None,
    shared_dir: Path | None = None,
) -> TrainOutcome:
    """Run (or resume) the training; `stop_after` ends early after that many steps (tests of resume).

    `model_fetch` (how the base model got here, iclora_trainer.model.provision) goes into result.json.
    `stop` (iclora_trainer.preemption): once it is requested on any rank, every rank finishes its
    step, they checkpoint that step together and `Preempted` is raised.
    """
    from iclora_trainer.model.loading import load_transformer

    device, dtype = resolve_device(settings, dist)
    work_dir = Path(settings.work_dir)
    steps = settings.steps or plan.steps
    torch.manual_seed(settings.seed)
    # This rank's share of the pod's CPU limit (not the node's cores) for torch's CPU work.
    apply_thread_limits()

    data, geometry = load_and_precompute(dataset_dir, settings, device, dtype, plan.reference_downscale_factor,
                                         shared_dir)
    # Work rank 0 does alone (validation inputs, reels, final artifacts) never runs while the
    # others sit in a collective, whose timeout it could outlast (issue 23.3): they wait on the
    # rendezvous store instead, for as long as rank 0 makes progress (distributed.RankZeroGate).
    gate = RankZeroGate.for_process_group(dist, settings.collective_timeout_seconds)
    has_validation = plan.validation is not None and bool(plan.validation.entries)
    validator: _Validator | None = None
    strategy = MaskedICLoraStrategy(
        fps=data.fps, reference_downscale_factor=plan.reference_downscale_factor
    )
    # Rank 0 prepares the validation inputs (Gemma, VAE, media fetches) while the others load
    # the transformer; all meet before DeepSpeed's first collective.
    with gate.section("startup"):
        if dist.rank == 0:
            validator = _Validator.create(plan, settings, work_dir, device, dtype, gate.beat)
            gate.beat()
        model = prepare_for_training(
            load_transformer(settings.model_path or "", device, dtype), plan.rank, settings, device
        )
    engine = build_engine(model, settings, plan.learning_rate, steps, device, dtype, dist.distributed)

    global_batch = settings.batch_size * dist.world_size
    fp = fingerprint(
        {
            "steps": steps,
            "rank": plan.rank,
            "lr": plan.learning_rate,
            "trigger": plan.trigger_phrase,
            "seed": settings.seed,
            "global_batch": global_batch,
            "model": Path(settings.model_path or "").name,
            "geometry": geometry,
            "schedule": settings.lr_schedule,
            "warmup": settings.resolved_warmup(steps),
            "downscale": plan.reference_downscale_factor,
        }
    )
    start = load_latest(store, work_dir, fp, engine, model)
    if start:
        log.info("resuming from the checkpoint of step %d of %d", start, steps)
    reporter = Reporter(store, steps, settings.progress_interval, enabled=dist.rank == 0)
    if dist.rank == 0:
        # An earlier attempt's result.json (a failure the Job retried) must not stand for this one:
        # the operator reads it when the Job itself is gone.
        store.delete_prefix(RESULT_KEY)
    reporter.start(start)
    metrics = MetricsLog(store, work_dir, enabled=dist.rank == 0)
    metrics.restore(start)
    outcome = TrainOutcome(result=Result(status="Failed"), start_step=start)
    latent_shape = tuple(data.target.shape[1:])
    num_tokens = int(data.mask[0].numel())
    loss_value: float | None = None

    # Step losses stay on the device until a report needs them: one host sync (and one
    # all-reduce) per progress interval instead of one per step.
    pending: list[torch.Tensor] = []
    if stop is not None:
        stop.defer()  # from here a SIGTERM ends the step, not the process
    with attention_backends(settings.attention_backends):
        for step in range(start, steps):
            indices = sample_indices(step, len(data), global_batch, settings.seed)
            slots = range(dist.rank * settings.batch_size, (dist.rank + 1) * settings.batch_size)
            batch = data.batch([indices[s] for s in slots], device)
            noise, sigma = sample_noise(step, slots, latent_shape, num_tokens, settings.seed, settings.sigma_std)
            inputs = strategy.prepare_inputs(batch, noise.to(device), sigma.to(device))
            prediction = strategy.forward(engine.module, inputs, batch, dtype)
            loss = strategy.compute_loss(prediction, inputs).mean()
            engine.step(loss)
            pending.append(loss.detach())
            done = step + 1
            checkpoint_due = done % settings.checkpoint_interval == 0 and done < steps
            validation_due = bool(
                has_validation and settings.validation_interval and done % settings.validation_interval == 0
            ) and done < steps
            stopping = stop_after is not None and done >= stop_after and done < steps
            # Every rank votes at every step (a collective): all stop at the same step.
            preempted = stop is not None and done < steps and engine.stop_agreed(stop.requested)
            if preempted:
                checkpoint_due, validation_due = True, False
            if (done % settings.progress_interval == 0 or done == steps or checkpoint_due or stopping
                    or preempted):
                interval_losses = engine.mean_losses(torch.stack(pending))
                outcome.losses.extend(interval_losses)
                metrics.append(done - len(pending) + 1, interval_losses,
                               lambda s: engine.cfg.lr * lr_factor(s, engine.cfg))
                pending.clear()
                loss_value = outcome.losses[-1]
                reporter.progress(done, loss_value, force=preempted)
            if checkpoint_due:
                save_checkpoint(
                    store,
                    work_dir,
                    TrainerState(done, fp, dist.world_size),
                    engine,
                    model,
                    settings.keep_checkpoints,
                    uploader=True,
                )
            if validation_due:
                # Rank 0 renders (if its inputs were usable); the others wait for it off-collective.
                gate.run(f"validation-{done}", lambda: validator.render(model, store) if validator else None)
            if preempted:
                _close(engine)
                name = stop.signal_name if stop is not None and stop.signal_name else "another rank's signal"
                raise Preempted(
                    f"stopped by {name} after step {done} of {steps}; checkpoint {done} written, "
                    "the next run resumes from it"
                )
            if stopping:
                return outcome

    artifacts = None
    # Rank 0 writes the LoRA and renders the last reel; the others wait off-collective, and rank
    # 0 reports only once each has seen the gate open (its store lives as long as it does).
    with gate.section("final", confirm=True):
        if dist.rank == 0:
            artifacts, outcome.lora_path = _write_artifacts(
                store, work_dir, model, plan, settings, steps, geometry
            )
            artifacts.metrics_file, artifacts.loss_plot = _write_loss_curve(store, work_dir, metrics, plan)
            gate.beat()
            if validator:
                # The final reel shows what the delivered file does (its bf16 weights in the
                # adapters), so `iclora generate` with the file reproduces it exactly.
                try:
                    load_into_adapters(model, read_lora(outcome.lora_path)[0])
                except Exception:  # the reel is a preview: the LoRA is delivered without it
                    log.exception("could not load the exported LoRA back for the final reel; no reel")
                else:
                    artifacts.video = validator.render(model, store)
    outcome.result = Result(
        status="Succeeded", steps=steps, artifacts=artifacts, message=f"final loss {loss_value}", model=model_fetch
    )
    _close(engine)
    reporter.result(outcome.result)
    return outcome


def _close(engine: Any) -> None:
    """Release the engine; the run's outcome does not depend on it (logged, never raised)."""
    try:
        engine.close()
    except Exception:
        log.exception("engine cleanup failed")


def trained_on(plan: TrainingPlan, settings: TrainerSettings, geometry: dict[str, Any]) -> dict[str, Any]:
    """What the LoRA was trained on (config.json's names): base checkpoint identity, ltx-core
    version, resolution bucket, frames, fps, reference downscale, trigger phrase."""
    from iclora_trainer.model.identity import FINGERPRINT_RECIPE, checkpoint_identity, ltx_core_version

    identity = checkpoint_identity(settings.model_path) if settings.model_path else None
    return {
        "baseModel": settings.base_model,
        "baseModelFile": identity.file if identity else "",
        "baseModelFingerprint": identity.fingerprint if identity else "",
        "baseModelFingerprintRecipe": FINGERPRINT_RECIPE,
        "ltxCoreVersion": ltx_core_version(),
        "resolution": {"width": geometry["width"], "height": geometry["height"]},
        "numberOfFrames": geometry["numberOfFrames"],
        "frameRate": geometry["frameRate"],
        "referenceDownscaleFactor": plan.reference_downscale_factor,
        "triggerPhrase": plan.trigger_phrase,
        "preview": preview_settings(plan, settings),
    }


def preview_settings(plan: TrainingPlan, settings: TrainerSettings) -> dict[str, Any]:
    """How the validation preview sampled (size, frames, fps, guidance, seed, speed levers): what
    `iclora generate` defaults to, so that it reproduces the final reel with nothing but the inputs.
    Without validation entries the size and frames are absent (generate uses the training's)."""
    from iclora_api.trainer_settings import SpeedLevers

    v = plan.validation
    out: dict[str, Any] = {
        "steps": settings.validation_steps,
        "cfgScale": settings.validation_cfg_scale,
        "seed": settings.seed,
        "speedLevers": settings.model_dump(include=set(SpeedLevers.model_fields)),
    }
    if v is not None:
        out.update({"resolution": {"width": v.width, "height": v.height}, "numberOfFrames": v.frames,
                    "frameRate": v.frame_rate, "negativePrompt": v.negative_prompt, "stgScale": v.stg_scale})
    return out


def lora_metadata(plan: TrainingPlan, trained: dict[str, Any]) -> dict[str, str]:
    """The LoRA file's safetensors metadata (strings), snake_case as ltx-core/ComfyUI loaders read it."""
    return {
        "rank": str(plan.rank),
        "alpha": str(plan.alpha),
        "trigger_phrase": plan.trigger_phrase,
        "training_type": TRAINING_TYPE,
        "base_model": trained["baseModel"],
        "base_model_file": trained["baseModelFile"],
        "base_model_fingerprint": trained["baseModelFingerprint"],
        "ltx_core_version": trained["ltxCoreVersion"],
        "resolution": f"{trained['resolution']['width']}x{trained['resolution']['height']}",
        "number_of_frames": str(trained["numberOfFrames"]),
        "frame_rate": str(trained["frameRate"]),
        "reference_downscale_factor": str(plan.reference_downscale_factor),
        # The same factor under the name newer LTX trainers write.
        "reference_spatial_scale_factor": str(plan.reference_downscale_factor),
        # The validation preview's sampling, as JSON (iclora generate's defaults).
        "preview": json.dumps(trained["preview"], sort_keys=True),
        "format": "ltx-core/comfyui diffusion_model.* lora_A/lora_B, alpha folded into lora_B",
    }


def _write_artifacts(
    store: Store,
    work_dir: Path,
    model: torch.nn.Module,
    plan: TrainingPlan,
    settings: TrainerSettings,
    steps: int,
    geometry: dict[str, Any],
) -> tuple[Artifacts, Path]:
    out = work_dir / ARTIFACTS_DIR
    trained = trained_on(plan, settings, geometry)
    # The adapters' dtype at the final render (bf16 under DeepSpeed's bf16 engine on a GPU).
    adapters = lora_parameters(model)
    if adapters:
        trained["preview"]["adapterDtype"] = str(next(iter(adapters.values())).dtype).removeprefix("torch.")
    lora_path = save_lora(
        out / LORA_NAME, export_lora(model, plan.rank, plan.alpha), lora_metadata(plan, trained)
    )
    config = {
        **trained,
        "trainingType": TRAINING_TYPE,
        "rank": plan.rank,
        "alpha": plan.alpha,
        "steps": steps,
        "learningRate": plan.learning_rate,
        "loraKeyFormat": "diffusion_model.transformer_blocks.{i}.<module>.lora_A.weight / lora_B.weight",
    }
    config_path = out / CONFIG_NAME
    config_path.write_text(json.dumps(config, indent=2))
    lora_uri = store.put_file(lora_path, f"{ARTIFACTS_DIR}/{LORA_NAME}")
    config_uri = store.put_file(config_path, f"{ARTIFACTS_DIR}/{CONFIG_NAME}")
    # The preflight leaves the debug archive (spec.debugDataset) in the same run folder.
    debug_key = f"{ARTIFACTS_DIR}/{DEBUG_ARCHIVE_NAME}"
    debug_uri = store.url(debug_key) if debug_key in store.list(ARTIFACTS_DIR) else None
    return Artifacts(lora_file=lora_uri, config_file=config_uri, debug_dataset=debug_uri), lora_path


def _no_progress() -> None:
    return None


def _write_loss_curve(store: Store, work_dir: Path, metrics: MetricsLog, plan: TrainingPlan
                      ) -> tuple[str | None, str | None]:
    """artifacts/metrics.jsonl and artifacts/loss.png (URIs); a plot that fails costs only the plot."""
    from iclora_trainer.metrics import plot_loss

    out = work_dir / ARTIFACTS_DIR
    metrics_uri = store.put_file(metrics.path, f"{ARTIFACTS_DIR}/{METRICS_NAME}")
    try:
        title = f"{TRAINING_TYPE}, rank {plan.rank}, {plan.steps} steps"
        plot = plot_loss(metrics.rows, out / LOSS_PLOT_NAME, title)
    except Exception:
        log.exception("loss plot failed; the run continues without it")
        return metrics_uri, None
    return metrics_uri, store.put_file(plot, f"{ARTIFACTS_DIR}/{LOSS_PLOT_NAME}")


@dataclass
class _Validator:
    """Validation inputs prepared once (rank 0); renders and uploads the reel on demand."""

    plan: ValidationPlan
    entries: list[Any]
    guidance: GuidanceConfig
    settings: TrainerSettings
    work_dir: Path
    device: torch.device
    dtype: torch.dtype
    reference_downscale_factor: int = 1
    # Called as the work advances: the other ranks' proof that rank 0 is still at it (RankZeroGate).
    progress: Callable[[], None] = _no_progress

    @classmethod
    def create(
        cls,
        plan: TrainingPlan,
        settings: TrainerSettings,
        work_dir: Path,
        device: torch.device,
        dtype: torch.dtype,
        progress: Callable[[], None] = _no_progress,
    ) -> _Validator | None:
        from iclora_trainer.validation import prepare_validation

        vplan = plan.validation
        if vplan is None or not vplan.entries:
            return None
        try:
            entries = prepare_validation(
                vplan,
                settings.model_path or "",
                settings.text_encoder_path or "",
                work_dir / "validation",
                device,
                dtype,
                plan.reference_downscale_factor,
                progress,
            )
        except Exception:
            # The reel is a preview: unreadable validation media must not cost the user the LoRA.
            log.exception("validation inputs unusable; the run continues without a reel")
            return None
        guidance = GuidanceConfig(
            steps=settings.validation_steps,
            cfg_scale=settings.validation_cfg_scale,
            stg_scale=vplan.stg_scale,
            stg_blocks=tuple(settings.validation_stg_blocks) if settings.validation_stg_blocks else None,
            rescale_scale=settings.validation_rescale_scale,
            seed=settings.seed,
        )
        return cls(
            vplan, entries, guidance, settings, work_dir, device, dtype, plan.reference_downscale_factor, progress
        )

    def render(self, model: torch.nn.Module, store: Store) -> str | None:
        """Render the reel, upload it as artifacts/validation.mp4 and return its URI (None on failure)."""
        from iclora_trainer.validation import render_validation

        try:
            path = render_validation(
                model,
                self.entries,
                self.guidance,
                self.plan,
                self.settings.model_path or "",
                self.work_dir / ARTIFACTS_DIR / VIDEO_NAME,
                self.device,
                self.dtype,
                self.reference_downscale_factor,
                self.progress,
            )
        except Exception:
            log.exception("validation reel failed; the run continues without it")
            return None
        log.info("validation reel written: %s", path)
        self.progress()
        uri = store.put_file(path, f"{ARTIFACTS_DIR}/{VIDEO_NAME}")
        self.progress()
        return uri
