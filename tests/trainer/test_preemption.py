"""SIGTERM mid-run (a suspend, a Kueue preemption, a spot reclaim, a drain; issue 18 item 7): the
trainer finishes its step, checkpoints it, exits with ExitCode.PREEMPTED, and a rerun resumes there."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from iclora_api.contract import PROGRESS_KEY, RESULT_KEY, ExitCode
from iclora_trainer.checkpointing import completed_steps
from iclora_trainer.storage import LocalStore
from tests.helpers import iclora_executable, run_and_sigterm

pytestmark = pytest.mark.trainer

STEPS = 120  # far more than the test waits for: SIGTERM lands mid-run, between checkpoints


def _argv(tmp: Path, tiny_checkpoint, dataset: Path) -> list[str]:
    spec = tmp / "spec.json"
    spec.write_text(json.dumps({"training_data_url": "https://example.com/d.zip", "rank": 8}))
    settings = tmp / "settings.json"
    settings.write_text(json.dumps({"progress_interval": 1}))
    return [
        iclora_executable(), "train", "--spec", str(spec), "--settings", str(settings),
        "--dataset", str(dataset), "--output", str(tmp / "out"),
        "--model-path", str(tiny_checkpoint.model_path), "--text-encoder-path", str(tiny_checkpoint.text_encoder_path),
        "--device", "cpu", "--dtype", "fp32", "--engine", "torch", "--steps", str(STEPS),
        "--checkpoint-interval", "100000", "--work-dir", str(tmp / "work"),
        "--termination-log", str(tmp / "term.log"),
    ]


def test_sigterm_checkpoints_the_current_step_and_a_rerun_resumes_there(tmp_path, tiny_checkpoint, prepared_dataset):
    argv = _argv(tmp_path, tiny_checkpoint, prepared_dataset)
    out = tmp_path / "out"
    stopped, seen = run_and_sigterm(argv, out / PROGRESS_KEY, at_step=2)

    # The distinct exit code, and the step the signal caught is checkpointed (the interval is never due).
    assert stopped.returncode == ExitCode.PREEMPTED, stopped.stdout[-3000:]
    checkpoints = completed_steps(LocalStore(out))
    assert len(checkpoints) == 1, checkpoints
    stop = checkpoints[0]
    assert seen <= stop < STEPS
    assert json.loads((out / PROGRESS_KEY).read_text())["step"] == stop
    termination = json.loads((tmp_path / "term.log").read_text())
    assert termination["reason"] == "TrainingFailed"  # read only if it ever ends a Job (see failures.py)
    assert f"stopped by SIGTERM after step {stop} of {STEPS}" in termination["message"]
    assert not (out / RESULT_KEY).exists(), "a preempted run is not over: no result.json"

    # The rerun (the next pod) resumes at the stop step and finishes.
    rerun = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    resumed = re.search(r"resuming from the checkpoint of step (\d+) of", rerun.stderr)
    assert resumed, rerun.stderr[-3000:]
    assert stop - 1 <= int(resumed.group(1)) <= stop
    result = json.loads((out / RESULT_KEY).read_text())
    assert result["status"] == "Succeeded" and result["steps"] == STEPS


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_every_rank_stops_at_the_same_step_when_one_gets_sigterm(tmp_path, tiny_checkpoint, prepared_dataset):
    # Two DeepSpeed ranks (gloo on CPU); only rank 1 is signalled: rank 0 learns it through the
    # all-reduce of the stop flags, and both checkpoint the same step and exit PREEMPTED.
    argv = _argv(tmp_path, tiny_checkpoint, prepared_dataset)
    argv[argv.index("--engine") + 1] = "deepspeed"
    out, port = tmp_path / "out", str(_free_port())
    env = {"WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "OMP_NUM_THREADS": "1"}
    rank0 = subprocess.Popen([*argv, "--termination-log", str(tmp_path / "term0.log")],
                             env={**os.environ, **env, "RANK": "0"}, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        rank1, _seen = run_and_sigterm([*argv, "--termination-log", str(tmp_path / "term1.log")],
                                       out / PROGRESS_KEY, at_step=2, env={**env, "RANK": "1"})
        log0 = rank0.communicate(timeout=300)[0]
    finally:
        if rank0.poll() is None:
            rank0.kill()
    assert (rank0.returncode, rank1.returncode) == (ExitCode.PREEMPTED, ExitCode.PREEMPTED), log0[-3000:]
    checkpoints = completed_steps(LocalStore(out))
    assert len(checkpoints) == 1 and checkpoints[0] < STEPS, checkpoints
    stop = checkpoints[0]
    step_dir = out / "checkpoints" / f"step-{stop:06d}"
    assert {p.name for p in step_dir.glob("rng-rank*.pt")} == {"rng-rank0.pt", "rng-rank1.pt"}
    messages = [json.loads((tmp_path / f"term{r}.log").read_text())["message"] for r in range(2)]
    assert f"stopped by another rank's signal after step {stop} of {STEPS}" in messages[0]
    assert f"stopped by SIGTERM after step {stop} of {STEPS}" in messages[1]
    assert not (out / RESULT_KEY).exists()


@pytest.mark.slow
def test_a_multi_gpu_pods_first_process_forwards_sigterm_to_its_ranks(tmp_path, tiny_checkpoint, prepared_dataset):
    # ICLORA_GPUS_PER_NODE=2: `iclora train` starts one process per GPU; a runtime signals only the
    # container's first process, which must pass SIGTERM on and wait for both ranks to checkpoint.
    argv = _argv(tmp_path, tiny_checkpoint, prepared_dataset)
    argv[argv.index("--engine") + 1] = "deepspeed"
    out = tmp_path / "out"
    env = {"ICLORA_GPUS_PER_NODE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
           "OMP_NUM_THREADS": "1"}
    parent, _seen = run_and_sigterm(argv, out / PROGRESS_KEY, at_step=2, env=env)
    assert parent.returncode == ExitCode.PREEMPTED, parent.stdout[-3000:]
    checkpoints = completed_steps(LocalStore(out))
    assert len(checkpoints) == 1 and checkpoints[0] < STEPS, checkpoints
    step_dir = out / "checkpoints" / f"step-{checkpoints[0]:06d}"
    assert {p.name for p in step_dir.glob("rng-rank*.pt")} == {"rng-rank0.pt", "rng-rank1.pt"}
    assert parent.stdout.count(f"stopped by SIGTERM after step {checkpoints[0]} of {STEPS}") == 2


class _SlowRank:
    """A local rank process as `_maybe_spawn_local_ranks` sees it: slow to start (the runtime's
    SIGTERM lands while rank 0 is being started), recording what it is sent; rank 1 dies of the
    signal (as one that has not installed its handler yet), rank 0 exits PREEMPTED."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.rank = int(env["LOCAL_RANK"])
        self.signals: list[int] = []
        if self.rank == 0:
            os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)  # the handler runs here, before this child is known to the parent

    def poll(self) -> int | None:
        return None

    def send_signal(self, signum: int) -> None:
        self.signals.append(signum)

    def wait(self) -> int:
        if not self.signals:
            return 0
        return ExitCode.PREEMPTED if self.rank == 0 else -signal.SIGTERM


def test_a_sigterm_while_the_local_ranks_start_reaches_every_rank(monkeypatch):
    from iclora_api.contract import GPUS_PER_NODE_ENV
    from iclora_trainer import cli

    started: list[_SlowRank] = []

    def popen(argv: list[str], env: dict[str, str]) -> _SlowRank:
        started.append(_SlowRank(argv, env))
        return started[-1]

    monkeypatch.setenv(GPUS_PER_NODE_ENV, "2")
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setattr(cli.subprocess, "Popen", popen)
    previous = signal.getsignal(signal.SIGTERM)
    try:
        code = cli._maybe_spawn_local_ranks()
    finally:
        signal.signal(signal.SIGTERM, previous)
    # Neither rank existed when the signal came: each gets it once, as it starts.
    assert [r.signals for r in started] == [[signal.SIGTERM], [signal.SIGTERM]]
    # The rank it killed before its own handler was up counts as preempted, not as a failure.
    assert code == ExitCode.PREEMPTED
