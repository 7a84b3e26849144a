"""The README's first command, end to end: `iclora demo` on an embedded cluster."""

from __future__ import annotations

import json
import re
import socket
import zipfile

import pytest
import yaml
from safetensors import safe_open

pytestmark = [pytest.mark.cluster, pytest.mark.trainer, pytest.mark.slow]


def test_demo_trains_bills_and_downloads_artifacts(run_iclora, tmp_path):
    out = tmp_path / "artifacts"
    # As `make demo` runs it: the venv's scripts need not be on PATH for the pods' `iclora`.
    result = run_iclora("demo", "--output", str(out), "--state-dir", str(tmp_path / "cluster"), "--triplets", "5",
                        env={"PATH": "/usr/local/bin:/usr/bin:/bin"}, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "phase: Succeeded" in result.stdout
    assert "billingUnits: 100" in result.stdout
    # The operator starts once the API server serves the CRDs (no "429 storage is (re)initializing").
    assert "storage is (re)initializing" not in result.stderr and "ERROR kopf" not in result.stderr
    # The weights took the real path (issue 21): named by s3:// URI, fetched into the node cache.
    assert "[demo] uploading the tiny model: s3://" in result.stdout
    fetched = re.search(r"\[demo\] model: (\d+) bytes downloaded, 0 from the node cache", result.stdout)
    assert fetched and int(fetched.group(1)) > 0, result.stdout[-2000:]
    config = json.loads((out / "config.json").read_text())
    assert config["triggerPhrase"] == "repl4ce"
    assert config["rank"] == 8
    with safe_open(str(out / "lora.safetensors"), "pt") as f:
        keys = list(f.keys())
        assert f.metadata()["rank"] == "8"
    assert keys and all(k.startswith("diffusion_model.transformer_blocks.") for k in keys)
    import av

    with av.open(str(out / "validation.mp4")) as reel:
        stream = reel.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert sum(1 for _ in reel.decode(stream)) == 9  # one entry, 9 frames
        assert stream.width == 4 * 512  # source | mask | reference | result
    with zipfile.ZipFile(out / "debug-dataset.zip") as zf:
        names = zf.namelist()
    assert "manifest.json" in names
    assert sum(n.endswith("mask_overlay.mp4") for n in names) == 5
    # Torn down: the demo's API server no longer answers.
    server = yaml.safe_load((tmp_path / "cluster" / "kubeconfig").read_text())["clusters"][0]["cluster"]["server"]
    host, port = server.removeprefix("https://").split(":")
    with pytest.raises(OSError), socket.create_connection((host, int(port)), timeout=2):
        pass


def test_kept_demo_cluster_keeps_its_operator_and_trains_again(run_iclora, tmp_path):
    """`make demo ARGS=--keep`: the operator outlives the demo; a second apply trains; `down` stops all."""
    import time

    from kubernetes import client, config

    from iclora_api.v1alpha1 import API_GROUP, API_VERSION, PLURAL

    state = tmp_path / "cluster"
    try:
        result = run_iclora("demo", "--keep", "--output", str(tmp_path / "artifacts"), "--state-dir", str(state),
                            "--triplets", "3", env={"PATH": "/usr/local/bin:/usr/bin:/bin"}, timeout=900)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert "cluster and operator left running" in result.stdout
        assert "iclora local-cluster down --state-dir" in result.stdout
        # The operator started after the API server served the CRDs: no 429 from its first list.
        operator_log = (state / "logs" / "operator.log").read_text()
        assert "storage is (re)initializing" not in operator_log + result.stderr
        [operator] = [p for p in json.loads((state / "state.json").read_text())["processes"]
                      if p["name"] == "operator"]
        api = client.CustomObjectsApi(config.new_client_from_config(str(state / "kubeconfig")))
        manifest = yaml.safe_load((state / "demo-training.yaml").read_text())
        manifest["metadata"]["name"] = "billboard-demo-2"
        api.create_namespaced_custom_object(API_GROUP, API_VERSION, "demo", PLURAL, manifest)
        deadline = time.monotonic() + 600
        phase = None
        while time.monotonic() < deadline and phase not in ("Succeeded", "Failed"):
            time.sleep(2)
            obj = api.get_namespaced_custom_object(API_GROUP, API_VERSION, "demo", PLURAL, "billboard-demo-2")
            phase = (obj.get("status") or {}).get("phase")
        assert phase == "Succeeded", (obj.get("status"), operator_log[-2000:])
    finally:
        down = run_iclora("local-cluster", "down", "--state-dir", str(state), timeout=120)
    assert down.returncode == 0, down.stdout + down.stderr
    from iclora_dev.localcluster.procs import proc_start_time

    assert proc_start_time(operator["pid"]) != operator["start_time"]  # the operator went with the cluster
