"""Issue 23.3: rank 0's lone work (validation inputs from a slow media host, reels of a large model)
longer than the collective timeout no longer aborts the other ranks: they wait for it on the
rendezvous store (RankZeroGate), not in a gloo/NCCL collective."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import FPS, FRAMES, HEIGHT, WIDTH

pytestmark = [pytest.mark.trainer, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 10  # collectiveTimeoutSeconds of the run
DELAY = 4  # per media fetch and per sampler step: 3 fetches, 3 steps = 12 s of each, beyond TIMEOUT


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_rank0_validation_longer_than_the_collective_timeout(tmp_path, tiny_checkpoint, prepared_dataset, media):
    config = {
        "root": str(tmp_path), "timeout": TIMEOUT, "delay": DELAY, "sampler_steps": 3,
        "model_path": str(tiny_checkpoint.model_path), "text_encoder_path": str(tiny_checkpoint.text_encoder_path),
        "dataset": str(prepared_dataset), "media": {k: str(v) for k, v in media.items()},
        "frames": FRAMES, "fps": FPS, "width": WIDTH, "height": HEIGHT,
    }
    path = os.pathsep.join([str(REPO / "operator"), str(REPO / "trainer"), str(REPO), os.environ.get("PYTHONPATH", "")])
    port = str(_free_port())
    logs = [tmp_path / f"rank{r}.log" for r in range(2)]
    procs = []
    for r, log in enumerate(logs):
        with log.open("w") as sink:  # files, not pipes: a rank blocked on a full pipe stalls the run
            procs.append(subprocess.Popen(
                [sys.executable, str(Path(__file__).with_name("slow_rank0_worker.py")), json.dumps(config)],
                env={**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "RANK": str(r), "WORLD_SIZE": "2",
                     "LOCAL_RANK": str(r), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port},
                stdout=sink, stderr=subprocess.STDOUT,
            ))
    try:
        for p in procs:
            p.wait(timeout=600)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    outputs = [log.read_text() for log in logs]
    assert [p.returncode for p in procs] == [0, 0], outputs[0][-4000:] + "\n-----\n" + outputs[1][-4000:]
    assert [json.loads(o.strip().splitlines()[-1]) for o in outputs] == [
        {"rank": 0, "status": "Succeeded"}, {"rank": 1, "status": "Succeeded"}]
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["status"] == "Succeeded" and result["artifacts"]["video"].endswith("validation.mp4")
