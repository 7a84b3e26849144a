"""A lost rank must not hold the others (issue 18 item 8): a real 2-node CPU training (two pods of
the Indexed Job, one trainer process each, gloo) whose rank-1 process is killed mid-run. The rank's
pod fails; the operator deletes its peer's pod (gang restart), the Job recreates both indexes, both
ranks resume from the last checkpoint, and the training succeeds."""

from __future__ import annotations

import json
import os
import re
import signal

import pytest

from iclora_dev.demo.run import demo_manifest
from iclora_dev.localcluster.nodes import LOCAL_RUNNER_LABEL, LOCAL_RUNNER_TOLERATION
from iclora_dev.pytest_plugin import wait_for
from iclora_dev.synthetic import write_dataset_zip
from tests.helpers import completed_checkpoints, dataset_url, run_progress_step

pytestmark = [pytest.mark.cluster, pytest.mark.trainer, pytest.mark.slow]

STEPS = 100  # the API's minimum
INTERVAL = 25


def test_killing_rank_1_restarts_both_ranks_from_the_checkpoint(trainings, operator_factory, profile_factory,
                                                                tiny, s3_store, local_cluster, tmp_path):
    """gloo's rank 0 sees the closed socket and fails; with the operator's gang restart both indexes
    come back together from the last checkpoint. (A frozen peer, as an NCCL rank sitting in its
    collective, is released by the same deletion; that variant is not tested here.)"""
    # gpusPerNode 0: two CPU pods of one trainer process each fit the runner node together.
    placement = {"nodeSelector": {LOCAL_RUNNER_LABEL: "true"}, "tolerations": [LOCAL_RUNNER_TOLERATION]}
    profile = profile_factory(
        device="cpu", zeroStage=0, nodes=2, gpusPerNode=0, checkpointInterval=INTERVAL,
        terminationGracePeriodSeconds=30, collectiveTimeoutSeconds=600, backoffLimit=6,
        model={"checkpoint": f"file:///models/{tiny.model_path.name}",
               "textEncoder": f"file:///models/{tiny.text_encoder_path.name}"},
        volumes=[{"name": "weights", "hostPath": {"path": str(tiny.model_path.parent), "type": "Directory"}}],
        volumeMounts=[{"name": "weights", "mountPath": "/models", "readOnly": True}],
        preflightNodeSelector=placement["nodeSelector"], preflightTolerations=placement["tolerations"],
        **placement,
    )
    ns = trainings.namespace
    url = dataset_url(s3_store, f"datasets/{ns}-gang.zip", write_dataset_zip(tmp_path / "d.zip", triplets=2))
    manifest = demo_manifest(url, None, steps=STEPS)
    spec = {**manifest["spec"], "profileRef": {"name": profile}}
    spec.pop("datasetCredentialsSecretRef", None)
    operator_factory([ns])
    uid = trainings.create("gang", spec)["metadata"]["uid"]
    prefix = f"runs/{ns}/gang/{uid}"
    selector = f"iclora.dev/training-uid={uid},app.kubernetes.io/component=training"

    def progress_step() -> int:
        return run_progress_step(s3_store, prefix)

    def checkpoints() -> list[int]:
        return completed_checkpoints(s3_store, prefix)

    def pods() -> list:
        return trainings.core.list_namespaced_pod(ns, label_selector=selector).items

    wait_for(lambda: checkpoints() and progress_step() > INTERVAL, timeout=900, interval=0.5,
             what="both ranks past the first checkpoint")
    first = {p.metadata.name for p in pods()}
    assert len(first) == 2, first
    rank1 = next(p.metadata.name for p in pods()
                 if p.metadata.labels.get("batch.kubernetes.io/job-completion-index") == "1")
    record = json.loads((local_cluster.pods_dir / ns / rank1 / "trainer.proc.json").read_text())
    killed_at = progress_step()
    os.kill(int(record["pid"]), signal.SIGKILL)  # the rank is lost: no checkpoint, no goodbye

    wait_for(lambda: (trainings.get("gang").get("status") or {}).get("phase") in ("Succeeded", "Failed"),
             timeout=900, interval=0.5, what="training finished after the lost rank")
    status = trainings.get("gang")["status"]
    assert status["phase"] == "Succeeded", status.get("failure")
    assert status["progress"]["step"] == STEPS and status["billingUnits"] == STEPS
    # Both indexes ran again (the gang), in pods other than the first two.
    logs = {d.name: (d / "trainer.log").read_text(errors="replace")
            for d in (local_cluster.pods_dir / ns).glob("*") if (d / "trainer.log").exists() and d.name not in first}
    restarted = {name for name, text in logs.items() if "resuming from the checkpoint of step" in text}
    indexes = {m.group(1) for name in restarted if (m := re.search(r"-(\d+)-[a-z0-9]+$", name))}
    assert indexes == {"0", "1"}, (sorted(logs), restarted)
    resumed = {int(m) for name in restarted for m in re.findall(r"resuming from the checkpoint of step (\d+) of",
                                                                   logs[name])}
    assert resumed and min(resumed) >= INTERVAL and max(resumed) <= killed_at, (resumed, killed_at)
