"""`iclora local-cluster up|env|down` from separate processes, and no leftovers after a crash."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kubernetes import client, config

from iclora_dev.localcluster import procs
from iclora_dev.localcluster.ports import port_open
from iclora_dev.pytest_plugin import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

# Warm start of the whole stack (binaries built). The goal is < 20 s on a quiet 2-core
# machine; the bound here leaves room for CI neighbours.
WARM_START_LIMIT_S = 60


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "iclora_api.cli", "local-cluster", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _records(state_dir: Path) -> list[procs.ProcessRecord]:
    state = json.loads((state_dir / "state.json").read_text())
    return [procs.ProcessRecord(**p) for p in state["processes"]]


def test_up_env_down_from_separate_processes(tmp_path):
    state_dir = tmp_path / "cluster"
    t0 = time.monotonic()
    # The process runner's node here; the real node's up/down is tests/cluster/test_containers.py.
    up = _cli("up", "--state-dir", str(state_dir), "--gpu-nodes", "1", "--cpu-nodes", "0",
              "--node-runtime", "processes")
    elapsed = time.monotonic() - t0
    assert up.returncode == 0, up.stderr
    sys.stderr.write(f"warm start of the whole stack: {elapsed:.1f} s\n")
    assert elapsed < WARM_START_LIMIT_S

    env = _cli("env", "--state-dir", str(state_dir))
    assert env.returncode == 0, env.stderr
    exports = dict(line.removeprefix("export ").split("=", 1) for line in env.stdout.splitlines())
    kubeconfig = exports["KUBECONFIG"]
    assert kubeconfig == str(state_dir / "kubeconfig")
    core = client.CoreV1Api(config.new_client_from_config(kubeconfig))
    names = {n.metadata.name for n in core.list_node().items}
    assert names == {"kwok-gpu-0", "local-runner-0"}

    # A pod running on the local runner: `down` must take its process with it.
    pod = {
        "metadata": {"name": "sleeper"},
        "spec": {
            "restartPolicy": "Never",
            "nodeSelector": {"iclora.dev/local-runner": "true"},
            "containers": [
                {
                    "name": "main",
                    "image": "ignored",
                    "command": [sys.executable, "-c", "import time; time.sleep(600)"],
                }
            ],
        },
    }
    core.create_namespaced_pod("default", pod)
    record_file = state_dir / "pods" / "default" / "sleeper" / "main.proc.json"
    pod_proc = procs.ProcessRecord(
        **json.loads(
            wait_for(lambda: record_file.exists() and record_file.read_text(), what="pod process started")
        )
    )
    assert pod_proc.alive()

    records = _records(state_dir)
    server = json.loads(Path(kubeconfig).read_text())["clusters"][0]["cluster"]["server"]
    api_port = int(server.rsplit(":", 1)[1])
    s3_port = int(exports["AWS_ENDPOINT_URL"].rsplit(":", 1)[1])
    assert all(r.alive() for r in records)

    down = _cli("down", "--state-dir", str(state_dir))
    assert down.returncode == 0, down.stderr
    assert not [r.name for r in [*records, pod_proc] if r.alive()]
    assert not port_open(api_port)
    assert not port_open(s3_port)
    assert not (state_dir / "state.json").exists()


def test_owner_crash_takes_the_cluster_down(tmp_path):
    state_dir = tmp_path / "crash"
    code = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from iclora_dev.localcluster.cluster import ClusterConfig, LocalCluster\n"
        "config = ClusterConfig(gpu_nodes=1, cpu_nodes=0, local_runner=True)\n"
        "LocalCluster(Path(sys.argv[1]), config).start()\n"
        "print('ready', flush=True)\n"
        "time.sleep(600)\n"
    )
    owner = subprocess.Popen([sys.executable, "-c", code, str(state_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout is not None
        assert owner.stdout.readline().strip() == "ready"
        records = _records(state_dir)
        assert len(records) == 7 and all(r.alive() for r in records)
        os.kill(owner.pid, signal.SIGKILL)  # no atexit, no finally: only the kernel can clean up
        owner.wait()
        wait_for(lambda: not [r for r in records if r.alive()], timeout=15, what="components gone")
    finally:
        if owner.poll() is None:
            owner.kill()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "iclora_api.cli",
                "local-cluster",
                "down",
                "--state-dir",
                str(state_dir),
            ],
            check=False,
            timeout=60,
        )
