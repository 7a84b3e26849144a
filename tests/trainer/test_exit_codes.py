"""Every contract exit code, end to end: a real `iclora train` / `iclora dataset preflight` process
is driven into the failure that ends with that code, and the operator's classify_failure turns
the exit code and the termination message it wrote into the reason the user guide promises.
"""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from iclora_api.contract import PREFLIGHT_KEY, PROGRESS_KEY, RESULT_KEY, ExitCode, Stage
from iclora_operator.reconcile.failures import classify_failure
from iclora_operator.reconcile.observed import JobState
from tests.helpers import REPO_ROOT, CliResult, iclora_executable, run_and_sigterm

pytestmark = pytest.mark.trainer

# The reason docs/user-guide.md promises for each failure, stated here and not read from the
# contract's table: the point is that the table, the trainer and the operator all agree with it.
PROMISED = {
    ExitCode.INVALID_SPEC: "InvalidSpec",
    ExitCode.DATASET_DOWNLOAD_FAILED: "DatasetDownloadFailed",
    ExitCode.DATASET_INVALID: "DatasetInvalid",
    ExitCode.NO_USABLE_CLIPS: "NoUsableClips",
    ExitCode.MODEL_CONFIG_INVALID: "ProfileInvalid",  # the admin's profile, not the tenant's manifest
}
INTERNAL = {Stage.PREFLIGHT: "PreflightFailed", Stage.TRAINING: "TrainingFailed"}


def promised(code: ExitCode, stage: Stage) -> str:
    return PROMISED.get(code) or INTERNAL[stage]


def guide_reasons() -> set[str]:
    text = (REPO_ROOT / "docs" / "user-guide.md").read_text(encoding="utf-8")
    table = text.split("### Failure reasons", 1)[1].split("\n\n", 2)[1]
    return {name for row in table.splitlines() for name in re.findall(r"`(\w+)`", row.split("|")[1])}


@dataclass
class Run:
    tmp: Path
    run_iclora: Callable
    request: pytest.FixtureRequest  # fixtures are made on demand: a preflight needs no model

    def fixture(self, name: str):
        return self.request.getfixturevalue(name)

    @property
    def out(self) -> Path:
        return self.tmp / "out"

    @property
    def term(self) -> Path:
        return self.tmp / "term.log"

    def train(self, *extra: str, spec: dict | None = None, model: str | None = None, output: str | None = None,
              env: dict[str, str] | None = None, sigterm_at: int | None = None, dataset: str | None = None):
        path = self.tmp / "spec.json"
        path.write_text(json.dumps({"training_data_url": "https://example.com/d.zip", "rank": 8, **(spec or {})}))
        tiny = self.fixture("tiny_checkpoint")
        args = (
            "train", "--spec", str(path), "--dataset", dataset or str(self.fixture("prepared_dataset")),
            "--output", output or str(self.out), "--model-path", model or str(tiny.model_path),
            "--text-encoder-path", str(tiny.text_encoder_path),
            "--device", "cpu", "--dtype", "fp32", "--engine", "torch", "--steps", "1",
            "--work-dir", str(self.tmp / "work"), "--termination-log", str(self.term), *extra)
        if sigterm_at is None:
            return self.run_iclora(*args, env=env)
        # SIGTERM once progress.json reports that step (what the kubelet sends on a pod's deletion).
        proc, _ = run_and_sigterm([iclora_executable(), *args], self.out / PROGRESS_KEY, sigterm_at, env=env)
        return CliResult(proc)

    def preflight(self, dataset: Path, *, spec: dict | None = None, work: Path | None = None,
                  output: str | None = None, env: dict[str, str] | None = None):
        request = {"training_data_url": "https://example.invalid/d.zip", "number_of_frames": 9,
                   "resolution": "low", "aspect_ratio": "16:9", **(spec or {})}
        return self.run_iclora(
            "dataset", "preflight", "--spec", "-", "--dataset", str(dataset), "--output", output or str(self.out),
            "--work-dir", str(work or self.tmp / "work"), "--termination-log", str(self.term),
            input=json.dumps(request), env=env)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def unreachable_store() -> tuple[str, dict[str, str]]:
    """An s3:// output whose endpoint refuses connections."""
    return "s3://iclora-test/run", {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{closed_port()}",
                                    "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test-secret",
                                    "AWS_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def short_zip(tmp_path_factory) -> Path:
    """One real 12-frame triplet: fits a 9-frame request, too short for the default 89."""
    from iclora_dev.synthetic import write_dataset_zip

    return write_dataset_zip(tmp_path_factory.mktemp("zip") / "d.zip", triplets=1, frames=12, width=96, height=64)


# Each scenario drives one real process into one failure; returns the CLI result.
def invalid_spec(r: Run):
    return r.train(spec={"rank": 7})  # ranks are powers of two


def dataset_download_failed(r: Run):
    return r.preflight(r.tmp / "missing.zip")


def dataset_invalid(r: Run):
    (r.tmp / "bad.zip").write_bytes(b"not a zip archive")
    return r.preflight(r.tmp / "bad.zip")


def no_usable_clips(r: Run):
    return r.preflight(r.fixture("short_zip"), spec={"number_of_frames": 89})  # 12 frames given


def model_config_invalid(r: Run):
    broken = r.tmp / "ltx-2.3.safetensors"  # e.g. a truncated download in the profile's model volume
    broken.write_bytes(b"not a safetensors checkpoint")
    return r.train(model=str(broken))


def model_source_missing(r: Run):
    # The profile names a model source that is not there (issue 21): the URI is in the message.
    return r.train(model=f"file://{r.tmp}/models/ltx-2.3-missing.safetensors")


def object_store_unavailable_training(r: Run):
    output, env = unreachable_store()
    return r.train(output=output, env=env)


def object_store_unavailable_dataset(r: Run):
    # The run's store fails while the prepared dataset downloads (issue 23): an outage, retried,
    # never the user's DatasetInvalid.
    _, env = unreachable_store()
    return r.train(dataset="s3://iclora-test/run/prepared", env=env)


def object_store_unavailable_preflight(r: Run):
    output, env = unreachable_store()  # the dataset is fine: the upload of the prepared one fails
    return r.preflight(r.fixture("short_zip"), output=output, env=env)


def checkpoint_failed(r: Run):
    # The local checkpoint folder cannot be created: a file sits where it goes.
    (r.tmp / "work" / "rank0").mkdir(parents=True)
    (r.tmp / "work" / "rank0" / "checkpoints").write_text("in the way")
    return r.train("--steps", "2", "--checkpoint-interval", "1")


def corrupt_checkpoint(r: Run):
    # A completed checkpoint whose state file was truncated (a full disk, a store that lost a write):
    # resuming from it is a checkpoint failure, not an internal error.
    first = r.train("--steps", "2", "--checkpoint-interval", "1")
    assert first.returncode == 0, first.stderr[-3000:]
    states = sorted(r.out.glob("checkpoints/*/trainer_state.json"))
    assert states, "the first run wrote no checkpoint"
    states[-1].write_text('{"step": 2, "fingerp')
    return r.train("--steps", "2", "--checkpoint-interval", "1")


def internal_error_training(r: Run):
    # The trained LoRA cannot be written to scratch (a file sits where its folder goes): an OSError
    # no TrainerError covers, so the process ends with INTERNAL_ERROR.
    (r.tmp / "work" / "rank0").mkdir(parents=True)
    (r.tmp / "work" / "rank0" / "artifacts").write_text("in the way")
    return r.train()


def preempted(r: Run):
    # A suspend, Kueue preemption, spot reclaim or drain: SIGTERM mid-run. The step is checkpointed
    # and the Job ignores the code (podFailurePolicy); if a Job ever ends on it, it is the stage's failure.
    return r.train("--steps", "60", "--checkpoint-interval", "1000", sigterm_at=1)


def internal_error_preflight(r: Run):
    (r.tmp / "scratch").write_text("a file, not a folder")  # the scratch volume is unusable
    return r.preflight(r.tmp / "d.zip", work=r.tmp / "scratch")  # fails before the dataset is read


# (exit code, stage, scenario, what the message must say: proof it failed for the intended cause)
SCENARIOS = [
    pytest.param(ExitCode.INVALID_SPEC, Stage.TRAINING, invalid_spec, "spec.rank", id="INVALID_SPEC"),
    pytest.param(ExitCode.DATASET_DOWNLOAD_FAILED, Stage.PREFLIGHT, dataset_download_failed, "no such file",
                 id="DATASET_DOWNLOAD_FAILED"),
    pytest.param(ExitCode.DATASET_INVALID, Stage.PREFLIGHT, dataset_invalid, "not a zip archive",
                 id="DATASET_INVALID"),
    pytest.param(ExitCode.NO_USABLE_CLIPS, Stage.PREFLIGHT, no_usable_clips, "89 needed", id="NO_USABLE_CLIPS",
                 marks=pytest.mark.media),
    pytest.param(ExitCode.MODEL_CONFIG_INVALID, Stage.TRAINING, model_config_invalid, "cannot read checkpoint",
                 id="MODEL_CONFIG_INVALID"),
    pytest.param(ExitCode.MODEL_CONFIG_INVALID, Stage.TRAINING, model_source_missing,
                 "ltx-2.3-missing.safetensors: no such file", id="MODEL_CONFIG_INVALID-missing-source"),
    pytest.param(ExitCode.OBJECT_STORE_UNAVAILABLE, Stage.TRAINING, object_store_unavailable_training,
                 "Connection refused", id="OBJECT_STORE_UNAVAILABLE-training"),
    pytest.param(ExitCode.OBJECT_STORE_UNAVAILABLE, Stage.TRAINING, object_store_unavailable_dataset,
                 "Connection refused", id="OBJECT_STORE_UNAVAILABLE-dataset"),
    pytest.param(ExitCode.OBJECT_STORE_UNAVAILABLE, Stage.PREFLIGHT, object_store_unavailable_preflight,
                 "Connection refused", id="OBJECT_STORE_UNAVAILABLE-preflight", marks=pytest.mark.media),
    pytest.param(ExitCode.CHECKPOINT_FAILED, Stage.TRAINING, checkpoint_failed, "checkpoint at step 1 failed",
                 id="CHECKPOINT_FAILED"),
    pytest.param(ExitCode.CHECKPOINT_FAILED, Stage.TRAINING, corrupt_checkpoint, "is unreadable",
                 id="CHECKPOINT_FAILED-corrupt"),
    pytest.param(ExitCode.INTERNAL_ERROR, Stage.TRAINING, internal_error_training, "rank0/artifacts",
                 id="INTERNAL_ERROR-training"),
    pytest.param(ExitCode.INTERNAL_ERROR, Stage.PREFLIGHT, internal_error_preflight, "scratch/preflight",
                 id="INTERNAL_ERROR-preflight"),
    pytest.param(ExitCode.PREEMPTED, Stage.TRAINING, preempted, "stopped by SIGTERM after step", id="PREEMPTED"),
]


def test_every_exit_code_has_a_scenario_and_a_documented_reason():
    assert {p.values[0] for p in SCENARIOS} == set(ExitCode) - {ExitCode.OK}
    documented = guide_reasons()
    for code, stage, *_ in (p.values for p in SCENARIOS):
        assert promised(code, stage) in documented, f"docs/user-guide.md does not list {promised(code, stage)}"


@pytest.mark.parametrize(("code", "stage", "scenario", "cause"), SCENARIOS)
def test_exit_code_round_trip(code, stage, scenario, cause, tmp_path, run_iclora, request):
    result = scenario(r := Run(tmp_path, run_iclora, request))
    assert result.returncode == code, result.stderr[-3000:]
    expected = promised(code, stage)

    # The trainer's own reports say the same as its exit code.
    termination = r.term.read_text()
    assert json.loads(termination)["reason"] == expected
    report_file = r.out / (PREFLIGHT_KEY if stage is Stage.PREFLIGHT else RESULT_KEY)
    report = json.loads(report_file.read_text()) if report_file.exists() else {}
    if code is ExitCode.PREEMPTED:  # the run is not over: the next pod resumes it
        assert not report
    elif code is not ExitCode.OBJECT_STORE_UNAVAILABLE:  # otherwise the store is what failed
        assert report["reason"] == expected

    # The operator reads the kubelet's facts (exit code, termination message) and the report.
    job = JobState(name=f"t-{stage}", owned=True, failed=True, failure_reason="PodFailurePolicy"
                   if code.is_user_error else "BackoffLimitExceeded", exit_code=result.returncode,
                   termination_message=termination)
    reason, message = classify_failure(job, stage, report.get("reason"), report.get("message"))
    assert reason == expected
    assert cause in message
