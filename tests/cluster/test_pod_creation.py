"""Pods the API server refuses to create: the Job has no pod at all, only `FailedCreate` Events.

A namespace's Pod Security level (`baseline` forbids hostPath volumes) or a used-up ResourceQuota
leaves the preflight Job without pods; the operator reads the Job's Events and says so within
seconds. A policy refusal fails after podStartTimeoutSeconds; a quota keeps the training waiting.
"""

from __future__ import annotations

import time

import pytest

from iclora_dev.pytest_plugin import wait_for
from tests.helpers import SPEC

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def _reconciling(trainings, name):
    status = trainings.get(name).get("status") or {}
    return next((c for c in status.get("conditions") or [] if c["type"] == "Reconciling"), None)


def _refused(trainings, name):
    return wait_for(lambda: (c := _reconciling(trainings, name)) and c["reason"] == "PodCreationRefused" and c,
                    timeout=15, interval=0.2, what="Reconciling reason PodCreationRefused")


def test_pods_forbidden_by_pod_security_show_the_api_servers_message_then_fail_billed_0(
        trainings, operator_factory, profile_factory):
    trainings.core.patch_namespace(trainings.namespace, {"metadata": {"labels": {
        "pod-security.kubernetes.io/enforce": "baseline"}}})
    profile = profile_factory(volumes=[{"name": "cache", "hostPath": {"path": "/var/cache/iclora-test"}}],
                              volumeMounts=[{"name": "cache", "mountPath": "/cache"}],
                              podStartTimeoutSeconds=10)
    operator_factory([trainings.namespace])
    obj = trainings.create("psa", {**SPEC, "profileRef": {"name": profile}})
    uid = obj["metadata"]["uid"]
    cond = _refused(trainings, "psa")
    assert cond["status"] == "True"
    assert "refuses to create the pods of Job" in cond["message"], cond
    assert "PodSecurity" in cond["message"] and "hostPath" in cond["message"], cond
    assert trainings.phase("psa") == "Preflight"
    assert trainings.events("psa", "PodCreationRefused")[0].type == "Warning"
    wait_for(lambda: trainings.phase("psa") == "Failed", timeout=40, what="phase Failed")
    status = trainings.get("psa")["status"]
    assert (status["failure"]["reason"], status["billingUnits"]) == ("PodCreationRefused", 0)
    assert "hostPath" in status["failure"]["message"] and "podStartTimeoutSeconds" in status["failure"]["message"]
    wait_for(lambda: trainings.jobs(uid) == [], timeout=30, what="preflight Job deleted")
    assert len(trainings.events("psa", "PodCreationRefused")) == 2  # seen, then failed


def test_pods_over_a_used_up_quota_wait_visibly_past_the_pod_start_timeout(trainings, operator_factory,
                                                                        profile_factory):
    trainings.core.create_namespaced_resource_quota(trainings.namespace, {
        "metadata": {"name": "no-pods"}, "spec": {"hard": {"pods": "0"}}})
    # Until the quota controller has counted the namespace, admission answers "status unknown".
    wait_for(lambda: (trainings.core.read_namespaced_resource_quota("no-pods", trainings.namespace)
                      .status.hard or None), timeout=30, what="quota counted")
    profile = profile_factory(podStartTimeoutSeconds=10)
    operator_factory([trainings.namespace])
    trainings.create("quota", {**SPEC, "profileRef": {"name": profile}})
    cond = _refused(trainings, "quota")
    assert "exceeded quota" in cond["message"], cond
    # Quota frees up when other pods end: still waiting (not Failed) well past podStartTimeoutSeconds.
    time.sleep(14)
    assert trainings.phase("quota") == "Preflight"
    assert _reconciling(trainings, "quota")["reason"] == "PodCreationRefused"
    assert len(trainings.events("quota", "PodCreationRefused")) == 1
