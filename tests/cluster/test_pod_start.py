"""Pods that never start (issue 24, item 2): seen within seconds, failed after the profile's timeout.

The real scheduler leaves a pod Unschedulable; kwok cannot pull images, so the kubelet's waiting
reasons are played by its `pod-waiting` Stage (annotation iclora.dev/fake-waiting, stages.yaml).
"""

from __future__ import annotations

import pytest

from iclora_dev.pytest_plugin import wait_for
from tests.helpers import SPEC

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def _reconciling(trainings, name):
    status = trainings.get(name).get("status") or {}
    return next((c for c in status.get("conditions") or [] if c["type"] == "Reconciling"), None)


def test_an_unschedulable_preflight_shows_within_seconds_then_fails_billed_0(trainings, operator_factory,
                                                                             profile_factory):
    profile = profile_factory(preflightNodeSelector={"iclora.dev/no-such-pool": "true"},
                              podStartTimeoutSeconds=12)
    operator_factory([trainings.namespace])
    obj = trainings.create("stuck", {**SPEC, "profileRef": {"name": profile}})
    uid = obj["metadata"]["uid"]
    cond = wait_for(lambda: (c := _reconciling(trainings, "stuck")) and c["reason"] == "Unschedulable" and c,
                    timeout=10, interval=0.2, what="Reconciling reason Unschedulable")
    assert cond["status"] == "True"
    assert "does not start: Unschedulable" in cond["message"] and "node" in cond["message"], cond
    assert trainings.phase("stuck") == "Preflight"
    events = wait_for(lambda: trainings.events("stuck", "Unschedulable"), timeout=10, what="Warning Event")
    assert events[0].type == "Warning"
    wait_for(lambda: trainings.phase("stuck") == "Failed", timeout=40, what="phase Failed")
    status = trainings.get("stuck")["status"]
    assert status["failure"]["reason"] == "Unschedulable"
    assert "podStartTimeoutSeconds" in status["failure"]["message"]
    assert status["billingUnits"] == 0
    assert {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}["Stalled"] == ("True",
                                                                                              "Unschedulable")
    # The stuck Job and its pod are deleted (no slot held); no training Job was ever created.
    wait_for(lambda: trainings.jobs(uid) == [], timeout=30, what="preflight Job deleted")
    assert len(trainings.events("stuck", "Unschedulable")) == 2  # seen, then failed


def test_an_image_that_cannot_be_pulled_shows_the_kubelets_message_then_fails(trainings, operator_factory,
                                                                              profile_factory):
    message = 'Back-off pulling image "registry.example.com/trainer:nope"'
    profile = profile_factory(podAnnotations={"iclora.dev/fake-waiting": "ImagePullBackOff",
                                              "iclora.dev/fake-message": message},
                              imagePullSecrets=[{"name": "regcred"}], podStartTimeoutSeconds=10)
    operator_factory([trainings.namespace])
    obj = trainings.create("pull", {**SPEC, "profileRef": {"name": profile}})
    cond = wait_for(lambda: (c := _reconciling(trainings, "pull")) and c["reason"] == "ImagePullFailed" and c,
                    timeout=10, interval=0.2, what="Reconciling reason ImagePullFailed")
    assert f"does not start: ImagePullBackOff: {message}" in cond["message"], cond
    wait_for(lambda: trainings.phase("pull") == "Failed", timeout=40, what="phase Failed")
    status = trainings.get("pull")["status"]
    assert (status["failure"]["reason"], status["billingUnits"]) == ("ImagePullFailed", 0)
    assert message in status["failure"]["message"]
    wait_for(lambda: trainings.jobs(obj["metadata"]["uid"]) == [], timeout=30, what="preflight Job deleted")
