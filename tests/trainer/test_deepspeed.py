"""Two-process DeepSpeed data parallel on CPU (gloo) equals one process with the same global batch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytestmark = [pytest.mark.trainer, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cmd(spec: Path, dataset: Path, out: Path, ck, work: Path, batch: int, engine: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "iclora_api.cli",
        "train",
        "--spec",
        str(spec),
        "--dataset",
        str(dataset),
        "--output",
        str(out),
        "--model-path",
        str(ck.model_path),
        "--text-encoder-path",
        str(ck.text_encoder_path),
        "--steps",
        "4",
        "--checkpoint-interval",
        "2",
        "--device",
        "cpu",
        "--dtype",
        "fp32",
        "--engine",
        engine,
        "--zero-stage",
        "2",
        "--batch-size",
        str(batch),
        "--work-dir",
        str(work),
        "--termination-log",
        str(work / "termination.log"),
    ]


def _env(**extra: str) -> dict[str, str]:
    path = os.pathsep.join([str(REPO / "operator"), str(REPO / "trainer"), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", **extra}


def test_two_rank_deepspeed_matches_single_process(tmp_path, tiny_checkpoint, prepared_dataset):
    spec = tmp_path / "spec.json"
    spec.write_text(
        json.dumps(
            {
                "training_data_url": "https://example.com/d.zip",
                "trigger_phrase": "MASKEDIC",
                "rank": 8,
                "learning_rate": 0.002,
            }
        )
    )
    port = str(_free_port())
    procs = [
        subprocess.Popen(
            _cmd(
                spec, prepared_dataset, tmp_path / "dp", tiny_checkpoint, tmp_path / "dp-work", 1, "deepspeed"
            ),
            env=_env(RANK=str(r), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=port,
                     TORCH_EXTENSIONS_DIR=str(tmp_path / "extensions")),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in range(2)
    ]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    # No op was compiled: DeepSpeed's CPU shared-memory allreduce is a g++ build of torch's headers
    # in every fresh container (minutes, ~1 GiB: a training pod's memory limit killed it).
    assert not list((tmp_path / "extensions").glob("*/*")), list((tmp_path / "extensions").glob("*/*"))
    single = subprocess.run(
        _cmd(spec, prepared_dataset, tmp_path / "one", tiny_checkpoint, tmp_path / "one-work", 2, "torch"),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert single.returncode == 0, single.stdout[-3000:] + single.stderr[-3000:]

    dp = load_file(str(tmp_path / "dp" / "artifacts" / "lora.safetensors"))
    one = load_file(str(tmp_path / "one" / "artifacts" / "lora.safetensors"))
    assert dp.keys() == one.keys()
    for k in dp:
        a, b = dp[k].float(), one[k].float()
        # bf16 files: within bf16 rounding of the largest entry.
        assert torch.allclose(a, b, atol=2e-2 * float(b.abs().max()) + 1e-6), k
    assert any(float(one[k].float().abs().max()) > 0 for k in one if "lora_B" in k)
    # Every rank's checkpoint files reached the output, then the run finished on both.
    assert (tmp_path / "dp" / "checkpoints" / "step-000002" / "COMPLETE").exists()
    result = json.loads((tmp_path / "dp" / "result.json").read_text())
    assert result["status"] == "Succeeded" and result["steps"] == 4


def test_deepspeed_zero2_resume_is_bitwise(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).with_name("ds_resume_worker.py")),
            str(tmp_path),
            str(_free_port()),
        ],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report == {"start": 3, "same_losses": True, "diff": 0.0}


def test_one_rank_deepspeed_runs_without_a_launcher(tmp_path, tiny_checkpoint, prepared_dataset):
    """A one-GPU training pod: the Indexed Job's variables only, no RANK/WORLD_SIZE/LOCAL_RANK."""
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"training_data_url": "https://example.com/d.zip", "trigger_phrase": "MASKEDIC",
                                "rank": 8}))
    env = {k: v for k, v in _env().items() if k not in {"RANK", "WORLD_SIZE", "LOCAL_RANK"}}
    env.update(JOB_COMPLETION_INDEX="0", ICLORA_NNODES="1", ICLORA_GPUS_PER_NODE="1",
               MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()),
               TORCH_EXTENSIONS_DIR=str(tmp_path / "extensions"))
    proc = subprocess.run(
        _cmd(spec, prepared_dataset, tmp_path / "out", tiny_checkpoint, tmp_path / "work", 1, "deepspeed"),
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["status"] == "Succeeded" and result["steps"] == 4
    assert (tmp_path / "out" / "artifacts" / "lora.safetensors").exists()
    assert not list((tmp_path / "extensions").glob("*/*")), "an op was compiled at run time"


def test_closed_deepspeed_engine_lets_its_model_go():
    """DeepSpeed's process-wide name maps keep a module alive; `close()` releases them, so a second
    engine in the same process (a benchmark's next row, a test) does not carry the first one's
    weights. Seen on an H200: each unclosed row kept 26 GiB of base weights."""
    import gc
    import os
    import weakref

    from iclora_api.trainer_settings import TrainerSettings
    from iclora_trainer.engine import build_engine

    # The engine makes a process group of one and exports RANK, WORLD_SIZE, ... into os.environ:
    # all undone after the test (left behind, they made later multi-rank subprocess tests see
    # themselves as rank 0 of 1).
    saved = dict(os.environ)
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        os.environ.pop(name, None)
    assert not torch.distributed.is_initialized()
    settings = TrainerSettings(engine="deepspeed", device="cpu", dtype="fp32")
    module = torch.nn.Linear(8, 8)
    try:
        engine = build_engine(module, settings, 1e-3, 10, torch.device("cpu"), torch.float32, distributed=False)
        engine.step(engine.module(torch.randn(2, 8)).pow(2).mean())
        alive = weakref.ref(module)
        engine.close()
        del engine, module
        gc.collect()
        assert alive() is None
    finally:
        torch.distributed.destroy_process_group()
        os.environ.clear()
        os.environ.update(saved)
