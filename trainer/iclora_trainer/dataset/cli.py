"""`iclora dataset check|preflight`."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("dataset", help="check or prepare a dataset of triplets")
    sub = parser.add_subparsers(dest="dataset_command", metavar="SUBCOMMAND")
    sub.required = True

    check = sub.add_parser("check", help="check a zip of triplets; prints one JSON object",
                           description="Exit 0 when the dataset would train, 2 when it is rejected, 1 on usage "
                                       "errors or a missing file.")
    check.add_argument("zip", metavar="ZIP")
    check.add_argument("--number-of-frames", type=int, default=89)
    check.add_argument("--frame-rate", type=int, default=24)
    check.add_argument("--resolution", default="medium", choices=["low", "medium", "high"])
    check.add_argument("--aspect-ratio", default="1:1", choices=["16:9", "1:1", "9:16"])
    check.add_argument("--auto-scale-input", action="store_true")
    check.set_defaults(func=run_check)

    pre = sub.add_parser("preflight", help="fetch, check and fit the dataset of a training (the CPU Job)")
    pre.add_argument("--spec", required=True, help="manifest or request: a file, '-' or env:NAME")
    pre.add_argument("--output", required=True, help="run folder or s3:// prefix (prepared/ and preflight.json)")
    pre.add_argument("--dataset", help="zip path or URL (default: the spec's trainingDataUrl)")
    pre.add_argument("--work-dir", default=None, help="scratch (default $ICLORA_WORK_DIR or a temp dir)")
    pre.add_argument("--termination-log", default=None)
    pre.set_defaults(func=run_preflight)


def run_check(args: argparse.Namespace) -> int:
    from iclora_api.validation import SpecInvalid, validate_spec
    from iclora_trainer.dataset.preflight import FitParams, prepare_dataset

    if not Path(args.zip).is_file():
        sys.stderr.write(f"iclora dataset check: {args.zip}: no such file\n")
        return 1
    try:
        # The same rules as a training: ranges, snapping and buckets come from the API model.
        spec = validate_spec({"trainingDataUrl": "https://localhost/dataset.zip",
                              "numberOfFrames": args.number_of_frames, "frameRate": args.frame_rate,
                              "resolution": args.resolution, "aspectRatio": args.aspect_ratio,
                              "autoScaleInput": args.auto_scale_input})
    except SpecInvalid as exc:
        sys.stderr.write(f"iclora dataset check: {exc}\n")
        return 1
    with tempfile.TemporaryDirectory(prefix="iclora-check-") as tmp:
        report = prepare_dataset(Path(args.zip), FitParams.from_spec(spec), Path(tmp) / "prepared",
                                 Path(tmp) / "work")
    sys.stdout.write(json.dumps(report.as_dict(), indent=2) + "\n")
    return 0 if report.ok else 2


def run_preflight(args: argparse.Namespace) -> int:
    from iclora_api.contract import LOG_LEVEL_ENV, WORK_DIR_ENV, ExitCode, PreflightResult, Stage
    from iclora_trainer.dataset.preflight import run_preflight_job
    from iclora_trainer.errors import TrainerError, failure
    from iclora_trainer.reporting import write_termination_message

    logging.basicConfig(level=os.environ.get(LOG_LEVEL_ENV, "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    work = Path(args.work_dir or os.environ.get(WORK_DIR_ENV) or tempfile.mkdtemp(prefix="iclora-preflight-"))
    try:
        result = run_preflight_job(args.spec, args.output, work / "preflight", dataset=args.dataset)
        code = ExitCode.OK
    except Exception as exc:  # a TrainerError, or an internal error (not the dataset's fault)
        code, reason, message = failure(exc, Stage.PREFLIGHT)
        if isinstance(exc, TrainerError):
            log.error("%s: %s", reason, exc)
        else:
            log.exception("preflight failed")
        result = PreflightResult(ok=False, reason=reason, message=message[:4000])
    if code != ExitCode.OK:
        from iclora_trainer.dataset.preflight import publish_result

        publish_result(args.output, result)
    write_termination_message(result, args.termination_log)
    return int(code)
