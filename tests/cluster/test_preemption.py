"""Suspend a real training between checkpoints and resume it (issue 18 item 7): the pod runner
deletes the pod like a kubelet (SIGTERM, the pod's grace period, then SIGKILL); the trainer
checkpoints the step it is in, and the resumed training continues from that step."""

from __future__ import annotations

import re

import pytest

from iclora_dev.demo.run import demo_manifest
from iclora_dev.localcluster.nodes import LOCAL_RUNNER_LABEL, LOCAL_RUNNER_TOLERATION
from iclora_dev.pytest_plugin import wait_for
from iclora_dev.synthetic import write_dataset_zip
from tests.helpers import completed_checkpoints, dataset_url, run_progress_step

pytestmark = [pytest.mark.cluster, pytest.mark.trainer, pytest.mark.slow]

STEPS = 300


def test_suspend_between_checkpoints_resumes_at_the_step_it_stopped(trainings, operator_factory, profile_factory,
                                                                     tiny, s3_store, local_cluster, tmp_path):
    placement = {"nodeSelector": {LOCAL_RUNNER_LABEL: "true"}, "tolerations": [LOCAL_RUNNER_TOLERATION]}
    profile = profile_factory(
        device="cpu", zeroStage=0, gpusPerNode=1, checkpointInterval=100000, terminationGracePeriodSeconds=30,
        model={"checkpoint": f"file:///models/{tiny.model_path.name}",
               "textEncoder": f"file:///models/{tiny.text_encoder_path.name}"},
        volumes=[{"name": "weights", "hostPath": {"path": str(tiny.model_path.parent), "type": "Directory"}}],
        volumeMounts=[{"name": "weights", "mountPath": "/models", "readOnly": True}],
        preflightNodeSelector=placement["nodeSelector"], preflightTolerations=placement["tolerations"],
        **placement,
    )
    url = dataset_url(s3_store, f"datasets/{trainings.namespace}-preempt.zip",
                      write_dataset_zip(tmp_path / "d.zip", triplets=2))
    manifest = demo_manifest(url, None, steps=STEPS)
    spec = {**manifest["spec"], "profileRef": {"name": profile}}
    spec.pop("datasetCredentialsSecretRef", None)
    operator_factory([trainings.namespace])
    uid = trainings.create("pre", spec)["metadata"]["uid"]
    prefix = f"runs/{trainings.namespace}/pre/{uid}"

    def progress_step() -> int:
        return run_progress_step(s3_store, prefix)

    def checkpoints() -> list[int]:
        return completed_checkpoints(s3_store, prefix)

    wait_for(lambda: progress_step() >= 2, timeout=600, interval=0.2, what="training past step 2")
    seen = progress_step()
    trainings.patch_spec("pre", {"suspend": True})
    wait_for(lambda: (trainings.get("pre").get("status") or {}).get("phase") == "Suspended"
             and not trainings.core.list_namespaced_pod(trainings.namespace,
                                                        label_selector=f"iclora.dev/training-uid={uid},"
                                                        "app.kubernetes.io/component=training").items,
             timeout=120, interval=0.5, what="suspended, training pod gone")
    # The step the SIGTERM caught is checkpointed, far from the (never due) checkpoint interval.
    stopped = checkpoints()
    assert len(stopped) == 1 and seen <= stopped[0] < STEPS, (seen, stopped)
    stop = stopped[0]
    assert progress_step() == stop

    trainings.patch_spec("pre", {"suspend": False})
    wait_for(lambda: (trainings.get("pre").get("status") or {}).get("phase") in ("Succeeded", "Failed"),
             timeout=600, interval=0.5, what="resumed training finished")
    status = trainings.get("pre")["status"]
    assert status["phase"] == "Succeeded", status.get("failure")
    assert status["progress"]["step"] == STEPS
    # The pods' logs (the runner keeps them): one stopped at `stop`, the next resumed there.
    logs = [p.read_text(errors="replace") for p in (local_cluster.pods_dir / trainings.namespace).glob("*/trainer.log")]
    assert any(f"stopped by SIGTERM after step {stop} of {STEPS}" in text for text in logs), logs
    resumed = [int(m) for text in logs for m in re.findall(r"resuming from the checkpoint of step (\d+) of", text)]
    assert resumed and stop - 1 <= max(resumed) <= stop, resumed
