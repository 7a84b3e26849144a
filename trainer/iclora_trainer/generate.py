"""`iclora generate`: the masked edit a LoRA was trained for, on one GPU box (or a CPU).

Source, mask (WHITE = regenerate) and reference plus a prompt in; a video out in which only the
masked region is regenerated. It is the validation preview's code path, not a copy: the inputs
are fetched by the dataset's guarded fetcher and fitted by the dataset's media code
(`validation.prepare_validation`), the LoRA is loaded into the same PEFT adapters the trainer
trains (`lora_io.load_into_adapters`, the inverse of the export), and the result is sampled,
decoded and composited by `validation.run_entries`. The trainer renders its final reel from
the exported file's weights too, so with the same inputs, seed and speed levers `generate`
reproduces the reel's result frames exactly.

Defaults come from what the LoRA records (resolution bucket, frames, fps, reference downscale
factor), else from the spec's validation defaults; a LoRA whose recorded base checkpoint
fingerprint differs from `--model-path` is refused.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerateRequest:
    lora: str  # path, s3:// or http(s)://
    source: str
    mask: str
    reference: str
    prompt: str
    model_path: str
    text_encoder_path: str
    output: Path
    negative_prompt: str | None = None  # None: the spec's built-in negative prompt
    number_of_frames: int | None = None  # None: the LoRA's, else the spec's validation default
    frame_rate: float | None = None
    resolution: str | None = None
    aspect_ratio: str | None = None
    size: tuple[int, int] | None = None  # (width, height): overrides resolution / aspect ratio
    steps: int | None = None
    cfg_scale: float | None = None
    stg_scale: float | None = None
    seed: int | None = None  # None: the trainer's seed, which the validation preview samples with
    strength: float = 1.0
    device: str = "auto"
    reel: Path | None = None
    lossless: bool = False
    levers: dict[str, Any] = field(default_factory=dict)  # TrainerSettings speed levers


@dataclass(frozen=True)
class GenerateResult:
    output: Path
    reel: Path | None
    frames: Any  # (F, H, W, 3) uint8, the composited result
    width: int
    height: int
    number_of_frames: int
    frame_rate: float
    reference_downscale_factor: int


def _spec_default(name: str) -> Any:
    from iclora_api.v1alpha1 import MaskedICLoraTrainingSpec

    return MaskedICLoraTrainingSpec.model_fields[name].default


def check_base_model(metadata: dict[str, str], model_path: str) -> None:
    """Refuse a LoRA trained on another checkpoint than `model_path` (recorded fingerprint)."""
    from iclora_trainer.errors import ModelConfigError
    from iclora_trainer.model.identity import checkpoint_identity

    recorded = metadata.get("base_model_fingerprint", "")
    try:
        actual = checkpoint_identity(model_path)
    except (OSError, ValueError) as exc:
        raise ModelConfigError(f"--model-path {model_path}: {exc}") from exc
    if not recorded:
        log.warning("the LoRA records no base checkpoint fingerprint; cannot check it matches %s", model_path)
        return
    if actual.fingerprint != recorded:
        raise ModelConfigError(
            f"the LoRA was trained on {metadata.get('base_model_file') or 'another checkpoint'} "
            f"(fingerprint {recorded[:16]}...), but --model-path is {actual.file} "
            f"(fingerprint {actual.fingerprint[:16]}...): use the checkpoint it was trained on"
        )


def recorded_preview(metadata: dict[str, str]) -> dict[str, Any]:
    """How the training's validation preview sampled (the LoRA's `preview` metadata); {} if absent
    or unreadable (a LoRA from elsewhere): generate then uses the spec's validation defaults."""
    import json

    try:
        preview = json.loads(metadata.get("preview") or "{}")
    except ValueError:
        return {}
    return preview if isinstance(preview, dict) else {}


def _size_of(value: Any) -> tuple[int, int] | None:
    try:
        if isinstance(value, dict):
            return int(value["width"]), int(value["height"])
        width, height = (int(v) for v in str(value).split("x"))
        return width, height
    except (KeyError, TypeError, ValueError):
        return None


def _geometry(request: GenerateRequest, metadata: dict[str, str], preview: dict[str, Any]
              ) -> tuple[int, int, int, float]:
    """Size, frames, fps: the flags, else the preview's (so the reel is reproduced), else what the
    LoRA was trained at, else the spec's validation defaults."""
    from iclora_api.geometry import bucket_size, snap_frames

    if request.size is not None:
        width, height = request.size
    elif request.resolution or request.aspect_ratio:
        width, height = bucket_size(
            request.resolution or _spec_default("validation_resolution"),
            request.aspect_ratio or _spec_default("validation_aspect_ratio"),
        )
    else:
        width, height = (_size_of(preview.get("resolution")) or _size_of(metadata.get("resolution"))
                         or bucket_size(_spec_default("validation_resolution"),
                                        _spec_default("validation_aspect_ratio")))

    def number(*candidates: Any) -> float:
        for c in candidates:
            try:
                if c is not None and float(c) > 0:
                    return float(c)
            except (TypeError, ValueError):
                continue
        raise AssertionError("a default is always given")

    frames = int(number(request.number_of_frames, preview.get("numberOfFrames"), metadata.get("number_of_frames"),
                        _spec_default("validation_number_of_frames")))
    fps = number(request.frame_rate, preview.get("frameRate"), metadata.get("frame_rate"),
                 _spec_default("validation_frame_rate"))
    return width, height, snap_frames(frames), fps


def generate(request: GenerateRequest, work_dir: Path) -> GenerateResult:
    """Run the masked edit. Raises TrainerError subclasses (exit codes as in training)."""
    import torch

    from iclora_api.trainer_settings import TrainerSettings
    from iclora_trainer import validation_media
    from iclora_trainer.errors import ModelConfigError, SpecError
    from iclora_trainer.lora_io import load_into_adapters, lora_parameters, lora_rank, read_lora
    from iclora_trainer.model.acceleration import attention_backends, prepare_for_training
    from iclora_trainer.model.loading import load_transformer, load_video_decoder
    from iclora_trainer.reel import write_reel, write_video
    from iclora_trainer.validation import (
        GuidanceConfig,
        ValidationEntry,
        ValidationPlan,
        prepare_validation,
        run_entries,
    )

    lora_file = validation_media.fetch(request.lora, work_dir / "lora")
    try:
        tensors, metadata = read_lora(lora_file)
        rank = lora_rank(tensors)
    except Exception as exc:
        raise SpecError(f"--lora {request.lora}: not a LoRA file ({exc})") from exc
    check_base_model(metadata, request.model_path)
    preview = recorded_preview(metadata)
    downscale = int(metadata.get("reference_downscale_factor") or metadata.get("reference_spatial_scale_factor") or 1)
    width, height, frames, fps = _geometry(request, metadata, preview)
    defaults = TrainerSettings()
    seed = request.seed if request.seed is not None else int(preview.get("seed", defaults.seed))
    try:
        # The preview's speed levers (the profile's), then the flags' (--set).
        settings = TrainerSettings.model_validate(
            {**(preview.get("speedLevers") or {}), **request.levers, "device": request.device, "seed": seed})
    except ValueError as exc:
        raise SpecError(f"--set: {exc}") from exc
    cuda = settings.device == "cuda" or (settings.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32

    def pick(flag: Any, key: str, fallback: Any) -> Any:
        return flag if flag is not None else preview.get(key, fallback)

    plan = ValidationPlan(
        entries=(ValidationEntry(request.prompt, request.source, request.mask, request.reference),),
        negative_prompt=pick(request.negative_prompt, "negativePrompt", _spec_default("validation_negative_prompt")),
        frames=frames,
        frame_rate=fps,
        width=width,
        height=height,
        stg_scale=float(pick(request.stg_scale, "stgScale", _spec_default("stg_scale"))),
    )
    guidance = GuidanceConfig(
        steps=int(pick(request.steps, "steps", defaults.validation_steps)),
        cfg_scale=float(pick(request.cfg_scale, "cfgScale", defaults.validation_cfg_scale)),
        stg_scale=plan.stg_scale,
        stg_blocks=tuple(defaults.validation_stg_blocks) if defaults.validation_stg_blocks else None,
        rescale_scale=defaults.validation_rescale_scale,
        seed=seed,
    )
    entries = prepare_validation(plan, request.model_path, request.text_encoder_path, work_dir / "inputs",
                                 device, dtype, downscale)
    # The trainer's own model preparation (adapters of the LoRA's rank, fp32, the speed levers),
    # then the file's weights in those adapters: the model the final validation reel ran.
    model = prepare_for_training(load_transformer(request.model_path, device, dtype), rank, settings, device)
    try:
        load_into_adapters(model, tensors, request.strength)
    except ValueError as exc:
        raise ModelConfigError(f"--lora {request.lora} does not fit {request.model_path}: {exc}") from exc
    # On a GPU, the adapters in the precision the final reel ran them in (bf16 under DeepSpeed's
    # bf16 engine); on a CPU everything is fp32, as the trainer runs it there.
    adapter_dtype = getattr(torch, str(preview.get("adapterDtype", "")), None) if cuda else None
    if isinstance(adapter_dtype, torch.dtype):
        for p in lora_parameters(model).values():
            p.data = p.data.to(adapter_dtype)
    decoder = load_video_decoder(request.model_path, device, dtype)
    with attention_backends(settings.attention_backends):
        (result,) = run_entries(model, decoder, entries, guidance, fps, device, dtype, downscale)
    output = write_video(request.output, result, fps, lossless=request.lossless)
    reel = None
    if request.reel is not None:
        entry = entries[0]
        reel = write_reel(request.reel, [(entry.source, entry.mask, entry.reference, result, entry.prompt)], fps)
    return GenerateResult(output, reel, result, width, height, frames, fps, downscale)


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected WIDTHxHEIGHT, e.g. 768x448") from None
    if width % 32 or height % 32 or width <= 0 or height <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: width and height must be positive multiples of 32")
    return width, height


def _lever(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"{text!r}: expected SETTING=VALUE, e.g. fused_lora=true")
    return key, value


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "generate",
        help="Run a trained LoRA: regenerate the masked region of a video (the validation preview's sampler).",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--lora", required=True, help="lora.safetensors: a path, s3:// or http(s):// URL.")
    p.add_argument("--source", required=True, help="Source video (path or URL).")
    p.add_argument("--mask", required=True, help="Mask image or video, WHITE = regenerate (path or URL).")
    p.add_argument("--reference", required=True, help="Reference video (path or URL).")
    p.add_argument("--prompt", required=True)
    p.add_argument("--negative-prompt", default=None, help="Default: the spec's built-in negative prompt.")
    p.add_argument("--number-of-frames", type=int, default=None, help="Default: the LoRA's (snapped to 8k+1).")
    p.add_argument("--frame-rate", type=float, default=None, help="Default: the LoRA's.")
    p.add_argument("--resolution", choices=["low", "medium", "high"], default=None,
                   help="Bucket (with --aspect-ratio). Default: the LoRA's bucket.")
    p.add_argument("--aspect-ratio", choices=["16:9", "1:1", "9:16"], default=None)
    p.add_argument("--size", type=_size, default=None, help="WIDTHxHEIGHT (multiples of 32); overrides the bucket.")
    p.add_argument("--steps", type=int, default=None, help="Euler steps (default: the validation sampler's).")
    p.add_argument("--cfg-scale", type=float, default=None)
    p.add_argument("--stg-scale", type=float, default=None)
    p.add_argument("--seed", type=int, default=None,
                   help="Sampling seed (default: the trainer's, the one the validation reel used).")
    p.add_argument("--strength", type=float, default=1.0, help="LoRA strength (1 = as trained).")
    p.add_argument("--model-path", required=True, help="The LTX-2.3 checkpoint the LoRA was trained on.")
    p.add_argument("--text-encoder-path", required=True, help="Gemma folder (or the tiny test encoder).")
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    p.add_argument("--set", dest="levers", type=_lever, action="append", default=[],
                   help="Speed lever as in the TrainingProfile, e.g. --set fused_lora=true (repeatable).")
    p.add_argument("--output", dest="output_uri", required=True, help="Result video (.mp4): a path or s3:// URI.")
    p.add_argument("--lossless", action="store_true",
                   help="Write the result bit-exact (H.264 RGB, QP 0) instead of yuv420p.")
    p.add_argument("--reel", dest="reel_uri", default=None,
                   help="Also write source | mask | reference | result (a path or s3:// URI).")
    p.add_argument("--work-dir", type=Path, default=None, help="Downloads and scratch (default: a temp folder).")
    p.set_defaults(func=run)


def _upload(local: Path, uri: str) -> str:
    from iclora_trainer.storage import open_store

    folder, _, name = uri.rstrip("/").rpartition("/")
    return open_store(folder).put_file(local, name)


def run(args: argparse.Namespace) -> int:
    from iclora_api.trainer_settings import parse_overrides
    from iclora_trainer.errors import TrainerError

    try:
        levers = parse_overrides(args.levers)
    except ValueError as exc:
        sys.stderr.write(f"iclora generate: --set: {exc}\n")
        return 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    request = GenerateRequest(
        lora=args.lora, source=args.source, mask=args.mask, reference=args.reference, prompt=args.prompt,
        model_path=args.model_path, text_encoder_path=args.text_encoder_path, output=Path(args.output_uri),
        negative_prompt=args.negative_prompt, number_of_frames=args.number_of_frames, frame_rate=args.frame_rate,
        resolution=args.resolution, aspect_ratio=args.aspect_ratio, size=args.size, steps=args.steps,
        cfg_scale=args.cfg_scale, stg_scale=args.stg_scale, seed=args.seed, strength=args.strength,
        device=args.device, reel=None, lossless=args.lossless, levers=levers,
    )
    uris = {"output": args.output_uri, "reel": args.reel_uri}
    try:
        with tempfile.TemporaryDirectory(prefix="iclora-generate-") as tmp:
            work = args.work_dir or Path(tmp)
            # s3:// outputs (a Kubernetes Job): written to scratch, then uploaded (AWS_* credentials).
            local = {k: (work / "out" / k / u.rsplit("/", 1)[-1]) if u.startswith("s3://") else Path(u)
                     for k, u in uris.items() if u}
            result = generate(replace(request, output=local["output"], reel=local.get("reel")), work)
            for k, u in uris.items():
                if u and u.startswith("s3://"):
                    _upload(local[k], u)
    except TrainerError as exc:
        sys.stderr.write(f"iclora generate: {exc}\n")
        return int(exc.exit_code)
    sys.stdout.write(f"wrote {uris['output']} ({result.width}x{result.height}, {result.number_of_frames} frames at "
                     f"{result.frame_rate:g} fps, reference downscale {result.reference_downscale_factor})"
                     + (f" and {uris['reel']}" if uris["reel"] else "") + "\n")
    return 0
