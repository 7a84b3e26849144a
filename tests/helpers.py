"""Helpers shared by the test layers (plain functions and constants; fixtures live in conftest.py).

One module, so no test file imports another: the cluster, CLI, trainer, render and media
helpers of every layer are here, each section saying which tests use it.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import zipfile
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from iclora_api.contract import Artifacts, PreflightResult, Result
from iclora_api.profile import TrainingProfileSpec
from iclora_api.trainer_settings import TrainerSettings
from iclora_api.v1alpha1 import API_GROUP, API_VERSION, PLURAL
from iclora_api.validation import validate_spec
from iclora_dev.synthetic import CONTAINERS, encode_video
from iclora_operator.render import RunContext, StoreLocation
from iclora_trainer.distributed import DistEnv

# ---------------------------------------------------------------------------------------------
# The repository and the installed CLI (every layer)

REPO_ROOT = Path(__file__).resolve().parents[1]


def iclora_executable() -> str:
    """The installed `iclora` console script of the running interpreter's environment."""
    candidate = Path(sys.executable).parent / "iclora"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("iclora")
    if not found:
        raise RuntimeError("the `iclora` console script is not installed (pip install -e .)")
    return found


class CliResult:
    def __init__(self, proc: subprocess.CompletedProcess[str]):
        self.returncode = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr

    def json(self):
        return json.loads(self.stdout)


# ---------------------------------------------------------------------------------------------
# Rendered Jobs (unit tests of render.py and of the env contract)

RENDER_SPEC = validate_spec({
    "trainingDataUrl": "s3://data/d.zip",
    "numberOfFrames": 100,
    "datasetCredentialsSecretRef": {"name": "data-creds"},
})


def render_ctx(nodes=1, gpus=1, labels=None, **profile):
    return RunContext(
        name="t", namespace="team-a", uid="uid-1", spec=RENDER_SPEC,
        profile=TrainingProfileSpec(nodes=nodes, gpus_per_node=gpus, **profile),
        store=StoreLocation("http://s3.local:8333", "iclora", "runs/team-a/t/uid-1"),
        store_secret="t-store", labels=labels or {"team": "vision", "kopf.zalando.org/x": "y"},
    )


def issued_session(access_key="ASIA-run", secret_key="sk", token="tok", expires="2026-12-01T08:00:00+00:00"):
    """What the operator's STS issuer returns for one run (for the pure renderers' tests)."""
    from datetime import datetime

    from iclora_operator.access import Session

    return Session(access_key, secret_key, token, datetime.fromisoformat(expires), "http://s3.local:8333",
                   "us-east-1")


def pod_of(job):
    return job["spec"]["template"]["spec"]


def container_of(job):
    return pod_of(job)["containers"][0]


def env_of(job):
    return {e["name"]: e for e in container_of(job)["env"]}


# ---------------------------------------------------------------------------------------------
# The tiny-model trainer (trainer tests)

SINGLE = DistEnv(
    rank=0, world_size=1, local_rank=0, master_addr="127.0.0.1", master_port=29500, gpus_per_node=1
)


def make_settings(tiny_checkpoint, work: Path, **kw) -> TrainerSettings:
    base = {
        "model_path": str(tiny_checkpoint.model_path),
        "text_encoder_path": str(tiny_checkpoint.text_encoder_path),
        "device": "cpu",
        "dtype": "fp32",
        "engine": "torch",
        "work_dir": str(work),
        "progress_interval": 1,
    }
    base.update(kw)
    return TrainerSettings.model_validate(base)


def make_plan(steps: int = 6, rank: int = 8, lr: float = 2e-3):
    """A TrainingPlan (iclora_trainer.loop imports torch: imported here, not by every test module)."""
    from iclora_trainer.loop import TrainingPlan

    return TrainingPlan(steps=steps, rank=rank, learning_rate=lr, trigger_phrase="MASKEDIC")


def run_and_sigterm(argv: list[str], progress: Path, at_step: int, timeout: float = 300,
                    env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess[str], int]:
    """Run `argv`, send it SIGTERM once `progress` (a progress.json) reports `at_step` or later, and
    wait for it to exit; returns the finished process (stdout and stderr together) and the step seen."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **(env or {})}, cwd=REPO_ROOT)
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(proc.stdout or []), daemon=True)
    reader.start()
    deadline, seen = time.monotonic() + timeout, -1
    try:
        while seen < at_step:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"no progress to step {at_step} (exit {proc.poll()}):\n{''.join(output)[-3000:]}")
            with contextlib.suppress(OSError, ValueError, KeyError):
                seen = int(json.loads(progress.read_text())["step"])
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(timeout=10)
    return subprocess.CompletedProcess(argv, proc.returncode, "".join(output), "".join(output)), seen


# Small validation media (validation sampler and loop tests; the `media` fixture writes them).
WIDTH, HEIGHT, FRAMES, FPS = 64, 64, 9, 24


# ---------------------------------------------------------------------------------------------
# Trainings on the local control plane (cluster tests)

KWOK_GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


class Trainings:
    """Small client for MaskedICLoraTraining objects in one namespace."""

    def __init__(self, api_client: Any, namespace: str):
        from kubernetes import client

        self.api = client.CustomObjectsApi(api_client)
        self.batch = client.BatchV1Api(api_client)
        self.core = client.CoreV1Api(api_client)
        self.namespace = namespace

    def create(self, name: str, spec: dict[str, Any], labels: dict[str, str] | None = None) -> dict[str, Any]:
        body = {"apiVersion": f"{API_GROUP}/{API_VERSION}", "kind": "MaskedICLoraTraining",
                "metadata": {"name": name, "labels": labels or {}}, "spec": spec}
        return self.api.create_namespaced_custom_object(API_GROUP, API_VERSION, self.namespace, PLURAL, body)

    def get(self, name: str) -> dict[str, Any]:
        return self.api.get_namespaced_custom_object(API_GROUP, API_VERSION, self.namespace, PLURAL, name)

    def patch_spec(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        return self.api.patch_namespaced_custom_object(API_GROUP, API_VERSION, self.namespace, PLURAL, name,
                                                       {"spec": spec})

    def delete(self, name: str) -> None:
        self.api.delete_namespaced_custom_object(API_GROUP, API_VERSION, self.namespace, PLURAL, name)

    def phase(self, name: str) -> str | None:
        return (self.get(name).get("status") or {}).get("phase")

    def jobs(self, uid: str | None = None) -> list[Any]:
        selector = f"iclora.dev/training-uid={uid}" if uid else "app.kubernetes.io/managed-by=masked-iclora-operator"
        return self.batch.list_namespaced_job(self.namespace, label_selector=selector).items

    def events(self, name: str, reason: str) -> list[Any]:
        items = self.core.list_namespaced_event(self.namespace, field_selector=f"involvedObject.name={name}").items
        return [e for e in items if e.reason == reason]


SPEC = {"trainingDataUrl": "https://datasets.example.com/triplets.zip", "numberOfSteps": 150}


def put_json(s3: Any, key: str, data: dict[str, Any]) -> None:
    raw = json.dumps(data).encode()
    s3.client().put_object(s3.bucket, key, io.BytesIO(raw), len(raw))


def dataset_url(s3: Any, key: str, path: Path) -> str:
    """Upload a dataset zip with the platform's key and hand it to a run the supported way: a
    presigned URL (a run's own credentials reach only its prefix, docs/user-guide.md)."""
    from datetime import timedelta

    s3.client().fput_object(s3.bucket, key, str(path))
    return s3.client().presigned_get_object(s3.bucket, key, expires=timedelta(hours=2))


def play_trainer(s3: Any, namespace: str, name: str, uid: str, steps: int = 150) -> dict[str, str]:
    """Write what a successful preflight and trainer leave in the store for one run."""
    prefix = f"runs/{namespace}/{name}/{uid}"
    put_json(s3, f"{prefix}/preflight.json", PreflightResult(ok=True, usable=2).model_dump(by_alias=True))
    arts = {"loraFile": f"s3://{s3.bucket}/{prefix}/artifacts/lora.safetensors",
            "configFile": f"s3://{s3.bucket}/{prefix}/artifacts/config.json"}
    for uri in arts.values():
        key = uri.removeprefix(f"s3://{s3.bucket}/")
        s3.client().put_object(s3.bucket, key, io.BytesIO(b"x"), 1)
    result = Result(status="Succeeded", steps=steps, artifacts=Artifacts(**arts))
    put_json(s3, f"{prefix}/result.json", result.model_dump(by_alias=True, exclude_none=True))
    return arts


# ---------------------------------------------------------------------------------------------
# Real media files and dataset zips (media tests)

CODECS = {ext: (codec, pix) for ext, codec, pix in CONTAINERS}


def video(frames: list[np.ndarray], ext: str = "mp4", fps: int = 24) -> bytes:
    codec, pix = CODECS[ext]
    return encode_video(frames, ext, codec, pix, fps)


def solid_frames(n: int, width: int, height: int, start: int = 0) -> list[np.ndarray]:
    """Frames whose brightness encodes their index (10 levels apart), to check resampling."""
    return [np.full((height, width, 3), min(255, (start + i) * 10), np.uint8) for i in range(n)]


def image(mask: np.ndarray, fmt: str = "PNG", mode: str | None = None) -> bytes:
    from PIL import Image

    img = Image.fromarray(mask)
    if mode:
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def vfr_mkv(levels_and_ms: list[tuple[int, int]], width: int = 32, height: int = 32) -> bytes:
    """A variable-frame-rate clip: each frame's brightness and its timestamp in ms."""
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="matroska") as c:
        s = c.add_stream("libx264", rate=24)
        s.width, s.height, s.pix_fmt = width, height, "yuv420p"
        s.codec_context.time_base = Fraction(1, 1000)
        for level, ms in levels_and_ms:
            f = av.VideoFrame.from_ndarray(np.full((height, width, 3), level, np.uint8), format="rgb24")
            f.pts, f.time_base = ms, Fraction(1, 1000)
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return buf.getvalue()


def rotate_mp4(data: bytes) -> bytes:
    """Give an mp4 a 90-degree clockwise display matrix (as phones record portrait video)."""
    out = bytearray(data)
    i = out.find(b"tkhd") + 4
    version = out[i]
    offset = i + (4 + 8 + 8 + 4 + 4 + 8 if version == 1 else 4 + 4 + 4 + 4 + 4 + 4) + 8 + 2 + 2 + 2 + 2
    out[offset:offset + 36] = struct.pack(">9i", 0, 0x10000, 0, -0x10000, 0, 0, 0, 0, 0x40000000)
    return bytes(out)


def write_zip(path: Path, entries: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return path


# ---------------------------------------------------------------------------------------------
# A real run's reports in the store (cluster tests that interrupt a training)

_COMPLETE_CHECKPOINT = re.compile(r"checkpoints/step-(\d+)/COMPLETE$")


def run_progress_step(s3: Any, prefix: str) -> int:
    """The step of the run's progress.json under `prefix`; -1 before the trainer wrote one."""
    try:
        return int(json.loads(s3.client().get_object(s3.bucket, f"{prefix}/progress.json").read())["step"])
    except Exception:
        return -1


def completed_checkpoints(s3: Any, prefix: str) -> list[int]:
    """Steps of the run's completed checkpoints (those with their COMPLETE marker), ascending."""
    names = (o.object_name for o in s3.client().list_objects(s3.bucket, f"{prefix}/checkpoints/", recursive=True))
    return sorted(int(m.group(1)) for n in names if (m := _COMPLETE_CHECKPOINT.search(n)))
