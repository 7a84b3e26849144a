"""The dataset preflight: archive -> triplets -> fitted, lossless prepared dataset.

Runs on a CPU before any GPU is requested; every rejection names the file and the rule.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from iclora_trainer.dataset.archive import Limits, extract_zip, is_os_metadata
from iclora_trainer.dataset.captions import final_caption
from iclora_trainer.dataset.media import ClipInfo, is_image, iter_fitted, iter_fitted_mask, probe, sample_times
from iclora_trainer.dataset.prepared import (
    PreparedManifest,
    PreparedTriplet,
    SkippedTriplet,
    triplet_paths,
    write_clip,
    write_mask,
)
from iclora_trainer.dataset.triplets import Triplet, match_triplets
from iclora_trainer.errors import DatasetError, NoUsableClipsError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FitParams:
    number_of_frames: int  # effective (8k+1)
    frame_rate: int
    width: int
    height: int
    auto_scale_input: bool = False
    trigger_phrase: str = ""

    @classmethod
    def from_spec(cls, spec) -> FitParams:  # MaskedICLoraTrainingSpec
        width, height = spec.size
        return cls(spec.effective_number_of_frames, spec.frame_rate, width, height, spec.auto_scale_input,
                   spec.trigger_phrase)


@dataclass
class DatasetReport:
    """Everything `iclora dataset check` prints and the preflight records."""

    triplets: list[dict[str, str]] = field(default_factory=list)  # name, status, reason
    errors: list[dict[str, str]] = field(default_factory=list)  # name, message
    ignored: list[str] = field(default_factory=list)
    # Named, with the reason, and never silently: files that pair with nothing, unknown names,
    # hidden files, cut-off clips whose frames present are used.
    warnings: list[dict[str, str]] = field(default_factory=list)  # name, message
    manifest: PreparedManifest | None = None

    @property
    def usable(self) -> int:
        return sum(1 for t in self.triplets if t["status"] == "usable")

    @property
    def ok(self) -> bool:
        return not self.errors and self.usable > 0

    def as_dict(self) -> dict:
        return {"ok": self.ok, "usable": self.usable, "triplets": self.triplets, "errors": self.errors,
                "ignored": self.ignored, "warnings": self.warnings}

    def raise_for_status(self) -> None:
        if self.errors:
            raise DatasetError("; ".join(e["message"] for e in self.errors)[:4000])
        if not self.usable:
            reasons = "; ".join(f"{t['name']}: {t['reason']}" for t in self.triplets) or "the archive has no triplets"
            raise NoUsableClipsError(f"no usable triplet: {reasons}"[:4000])


class Skip(Exception):
    """A triplet that is valid but cannot be used (too short, nothing to regenerate)."""


def _check_cut_off(info: ClipInfo, label: str, have: str, need: str, enough: bool,
                   warnings: list[dict[str, str]]) -> None:
    """A cut-off clip is used only when the frames present are enough (never stretched or held
    to make up for the missing part); either way the report names it."""
    if not info.damage:
        return
    if not enough:
        raise DatasetError(f"{label}: {info.damage}; {have} remain, {need} needed")
    warnings.append({"name": label, "message": f"{label}: {info.damage}; {have} remain, enough for the "
                                               f"{need} used"})


def fit_triplet(triplet: Triplet, params: FitParams, root: Path,
                warnings: list[dict[str, str]] | None = None) -> PreparedTriplet:
    """Write one fitted triplet under `root`; raise Skip or DatasetError (`warnings` collects
    what the report should name without rejecting the triplet)."""
    warnings = [] if warnings is None else warnings
    src = triplet.sources
    ref_info = probe(triplet.reference, src["reference"])
    tgt_info = probe(triplet.target, src["target"])
    n, fps = params.number_of_frames, params.frame_rate
    for role, info in (("reference", ref_info), ("target", tgt_info)):
        have = info.frames_at(fps)
        _check_cut_off(info, src[role], f"{have} frames at {fps} fps", f"{n}", have >= n, warnings)
    ref_n, tgt_n = ref_info.frames_at(fps), tgt_info.frames_at(fps)
    if min(ref_n, tgt_n) < n and not params.auto_scale_input:
        raise Skip(f"too short: reference has {ref_n} and target {tgt_n} frames at {fps} fps, {n} needed "
                   "(turn on autoScaleInput to resample shorter clips)")
    paths = triplet_paths(triplet.name)
    target_times = sample_times(tgt_info, fps, n, params.auto_scale_input)
    mask_info = None
    if not is_image(triplet.mask):  # a cut-off mask video would hold its last frame over the missing part
        mask_info = probe(triplet.mask, src["mask"])
        _check_cut_off(mask_info, src["mask"], f"{mask_info.duration:.2f} s", f"{target_times[-1]:.2f} s",
                       mask_info.duration > target_times[-1], warnings)
    mask_path = root / paths["mask"]
    white = [False]

    def tracked(frames: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
        for m in frames:
            white[0] = white[0] or bool(m.any())
            yield m

    # A video mask follows the target's timeline: shorter -> its last frame is held, longer -> trimmed.
    masks = iter_fitted_mask(triplet.mask, target_times, params.width, params.height, src["mask"], mask_info)
    write_mask(mask_path, tracked(masks), fps)
    if not white[0]:
        shutil.rmtree(mask_path.parent, ignore_errors=True)
        raise Skip("mask is all black: nothing to regenerate")
    for role, path, info in (("reference", triplet.reference, ref_info), ("target", triplet.target, tgt_info)):
        times = sample_times(info, fps, n, params.auto_scale_input)
        frames = iter_fitted(path, info, times, params.width, params.height, src[role])
        written = write_clip(root / paths[role], frames, fps)
        if written != n:
            raise DatasetError(f"{src[role]}: produced {written} frames instead of {n}")
    caption = final_caption(params.trigger_phrase, triplet.caption, src.get("caption"))
    (root / paths["caption"]).write_text(caption, encoding="utf-8")
    return PreparedTriplet(name=triplet.name, reference=paths["reference"], target=paths["target"],
                           mask=paths["mask"], caption=paths["caption"], frames=n, sources=dict(src))


def prepare_dataset(zip_path: Path, params: FitParams, out_dir: Path, work_dir: Path,
                    limits: Limits | None = None) -> DatasetReport:
    """Extract, match and fit; the prepared dataset lands in `out_dir` when the report is ok."""
    limits = limits or Limits()
    report = DatasetReport()
    extract_dir = Path(work_dir) / "extracted"
    try:
        try:
            extracted = extract_zip(zip_path, extract_dir, limits)
        except DatasetError as exc:
            report.errors.append({"name": Path(zip_path).name, "message": str(exc)})
            return report
        matching = match_triplets(extracted.files)
        report.ignored = sorted(extracted.ignored + matching.unknown)
        report.warnings.extend(matching.notes)
        report.warnings.extend({"name": n, "message": f"{n}: in a hidden file or folder (its name starts with "
                                                      "'.'); ignored"}
                               for n in sorted(extracted.ignored) if not is_os_metadata(n))
        report.errors.extend(matching.errors)
        if report.errors:
            return report
        out_dir.mkdir(parents=True, exist_ok=True)
        prepared: list[PreparedTriplet] = []
        skipped: list[SkippedTriplet] = []
        for triplet in matching.triplets:
            try:
                prepared.append(fit_triplet(triplet, params, out_dir, report.warnings))
                report.triplets.append({"name": triplet.name, "status": "usable", "reason": ""})
            except Skip as exc:
                skipped.append(SkippedTriplet(name=triplet.name, reason=str(exc)))
                report.triplets.append({"name": triplet.name, "status": "skipped", "reason": str(exc)})
            except DatasetError as exc:
                report.errors.append({"name": triplet.name, "message": str(exc)})
            log.info("triplet %s: %s", triplet.name, report.triplets[-1]["status"] if report.triplets else "error")
        for warning in report.warnings:
            log.warning("%s", warning["message"])
        if report.ok:
            report.manifest = PreparedManifest(
                width=params.width, height=params.height, number_of_frames=params.number_of_frames,
                frame_rate=params.frame_rate, trigger_phrase=params.trigger_phrase, triplets=prepared,
                skipped=skipped, ignored=report.ignored,
            )
            report.manifest.write(out_dir)
        return report
    finally:
        shutil.rmtree(extract_dir, ignore_errors=True)


def prepare_for_training(zip_path: str | Path, spec, out_dir: Path) -> Path:
    """The trainer's hook for a raw archive: run the preflight locally, return the prepared folder."""
    out_dir = Path(out_dir)
    report = prepare_dataset(Path(zip_path), FitParams.from_spec(spec), out_dir, out_dir.parent / "preflight-work")
    report.raise_for_status()
    return out_dir


def publish_result(output: str, result) -> None:  # PreflightResult
    """Write preflight.json under the run's output (best effort for failures: the store may be down)."""
    from iclora_api.contract import PREFLIGHT_KEY
    from iclora_trainer.storage import open_store

    try:
        open_store(output).put_bytes(result.model_dump_json(by_alias=True, exclude_none=True).encode(), PREFLIGHT_KEY)
    except Exception as exc:
        log.warning("preflight.json not written to %s: %s", output, exc)


def run_preflight_job(spec_source: str, output: str, work: Path, dataset: str | None = None):
    """The CPU Job: spec -> fetch -> prepare -> upload prepared/ and preflight.json; returns the result."""
    from iclora_api.contract import ARTIFACTS_DIR, DEBUG_ARCHIVE_NAME, PREFLIGHT_KEY, PREPARED_DIR, PreflightResult
    from iclora_api.documents import read_document
    from iclora_api.validation import spec_from_document, validate_spec
    from iclora_trainer.dataset.debug_archive import write_debug_archive
    from iclora_trainer.dataset.fetch import fetch_dataset
    from iclora_trainer.errors import ObjectStoreError, SpecError
    from iclora_trainer.storage import open_store

    try:
        spec = validate_spec(spec_from_document(read_document(spec_source)))
    except Exception as exc:
        raise SpecError(str(exc)) from exc
    work.mkdir(parents=True, exist_ok=True)
    zip_path = fetch_dataset(dataset or spec.training_data_url, work / "dataset.zip")
    prepared = work / PREPARED_DIR
    report = prepare_dataset(zip_path, FitParams.from_spec(spec), prepared, work / "fit")
    report.raise_for_status()
    store = open_store(output)
    try:
        for path in sorted(p for p in prepared.rglob("*") if p.is_file()):
            store.put_file(path, f"{PREPARED_DIR}/{path.relative_to(prepared).as_posix()}")
        if spec.debug_dataset:
            archive = write_debug_archive(prepared, work / DEBUG_ARCHIVE_NAME, work / "debug")
            store.put_file(archive, f"{ARTIFACTS_DIR}/{DEBUG_ARCHIVE_NAME}")
    except Exception as exc:
        raise ObjectStoreError(f"uploading the prepared dataset to {output}: {exc}") from exc
    result = PreflightResult(
        ok=True, usable=report.usable,
        skipped=[{"name": t["name"], "reason": t["reason"]} for t in report.triplets if t["status"] == "skipped"],
        prepared=store.url(PREPARED_DIR),
    )
    # Written last: the operator takes its presence as "the prepared dataset is complete".
    store.put_bytes(result.model_dump_json(by_alias=True, exclude_none=True).encode(), PREFLIGHT_KEY)
    log.info("preflight done: %d usable, %d skipped", report.usable, len(result.skipped))
    return result
