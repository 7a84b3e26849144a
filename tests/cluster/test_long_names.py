"""Long training names and children the API server refuses (issue 18, item 6), on the local cluster.

Names of 54 characters or more used to never start: a child Job's name or its `job-name` label passed
63 characters, the API server answered 422 and the operator retried forever without a status or an
Event. Pods are played by kwok; the trainer's reports are written by the test (play_trainer).
"""

from __future__ import annotations

import time

import pytest
from kubernetes.client.exceptions import ApiException

from iclora_dev.pytest_plugin import wait_for
from iclora_operator.render import ChildNames
from tests.helpers import SPEC, play_trainer

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def _name(length: int, pattern: str) -> str:
    """A valid training name (DNS subdomain) of exactly `length` characters."""
    name = (pattern * (length // len(pattern) + 1))[:length]
    assert len(name) == length and name[-1].isalnum() and name[0].isalnum()
    return name


SINGLE_NODE = [
    _name(63, "long-name-"),
    _name(64, "long-name-"),
    _name(200, "lora-run-"),
    _name(253, "long.name."),  # dots: fine in a Secret's name, not in a hostname or a Service's
]
# Starts with a digit (not a DNS-1035 label: the headless Service's name) and has dots.
MULTI_NODE = _name(253, "7.multi-node.")


def test_names_of_63_64_200_and_253_characters_succeed(trainings, operator_factory, profile_factory, s3_store):
    single = profile_factory(podAnnotations={"iclora.dev/fake-delay": "1s"})
    multi = profile_factory(nodes=2, podAnnotations={"iclora.dev/fake-delay": "1s"})
    operator_factory([trainings.namespace])
    ns = trainings.namespace
    uids = {}
    for name in [*SINGLE_NODE, MULTI_NODE]:
        profile = multi if name == MULTI_NODE else single
        uids[name] = trainings.create(name, {**SPEC, "profileRef": {"name": profile}})["metadata"]["uid"]
        play_trainer(s3_store, ns, name, uids[name])
    for name, uid in uids.items():
        wait_for(lambda name=name: trainings.phase(name) in ("Succeeded", "Failed"), timeout=120,
                 what=f"the {len(name)}-character training finished")
        status = trainings.get(name)["status"]
        assert status["phase"] == "Succeeded", (len(name), status)
        assert status["billingUnits"] == 150
        names = ChildNames.of(name)
        assert sorted(j.metadata.name for j in trainings.jobs(uid)) == sorted([names.preflight, names.training])
        secret = trainings.core.read_namespaced_secret(names.store_secret, ns)
        assert secret.metadata.owner_references[0].uid == uid
        assert len(trainings.events(name, "Billed")) == 1  # Events post for the longest names too
    service = trainings.core.read_namespaced_service(ChildNames.of(MULTI_NODE).service, ns)
    assert service.metadata.labels["iclora.dev/training-uid"] == uids[MULTI_NODE]
    pods = trainings.core.list_namespaced_pod(
        ns, label_selector=f"batch.kubernetes.io/job-name={ChildNames.of(MULTI_NODE).training}").items
    assert sorted(p.spec.hostname for p in pods) == [f"{ChildNames.of(MULTI_NODE).training}-{i}" for i in (0, 1)]


def _refused_quickly(trainings, name: str, started: float) -> dict:
    wait_for(lambda: trainings.phase(name) == "Failed", timeout=60, what="phase Failed")
    elapsed = time.monotonic() - started
    status = trainings.get(name)["status"]
    assert status["failure"]["reason"] == "ChildRejected", status
    assert status["billingUnits"] == 0
    conds = {c["type"]: c for c in status["conditions"]}
    assert conds["Stalled"]["status"] == "True" and conds["Stalled"]["reason"] == "ChildRejected"
    assert conds["Stalled"]["message"] == status["failure"]["message"]
    events = wait_for(lambda: trainings.events(name, "ChildRejected"), timeout=10, what="ChildRejected event")
    assert events[0].type == "Warning" and events[0].message == status["failure"]["message"]
    assert elapsed < 30, f"took {elapsed:.0f} s"
    # Terminal: no retry loop behind it.
    time.sleep(3)
    assert len(trainings.events(name, "ChildRejected")) == 1
    assert not trainings.events(name, "ReconcileError") and not trainings.events(name, "Retrying")
    assert trainings.get(name)["status"] == status
    return status


def test_a_job_the_api_server_refuses_fails_the_training_at_once(trainings, operator_factory, profile_factory):
    # The CRD accepts any string as a podLabels value; the API server refuses it on the Job's pods.
    profile = profile_factory(podLabels={"team": "-not a label value-"})
    operator_factory([trainings.namespace])
    started = time.monotonic()
    trainings.create("refused", {**SPEC, "profileRef": {"name": profile}})
    status = _refused_quickly(trainings, "refused", started)
    message = status["failure"]["message"]
    assert "Job" in message and ChildNames.of("refused").preflight in message and "Invalid value" in message
    assert {c["type"]: c["reason"] for c in status["conditions"]}["PreflightSucceeded"] == "ChildRejected"
    assert trainings.jobs() == []


def test_a_service_a_quota_forbids_fails_the_training_at_once(trainings, operator_factory, profile_factory,
                                                              s3_store):
    ns = trainings.namespace
    trainings.core.create_namespaced_resource_quota(ns, {"metadata": {"name": "no-services"},
                                                         "spec": {"hard": {"services": "0"}}})
    profile = profile_factory(nodes=2, podAnnotations={"iclora.dev/fake-hold": "true"})
    operator_factory([ns])
    name = MULTI_NODE  # the longest name: its Events and status are written all the same
    started = time.monotonic()
    uid = trainings.create(name, {**SPEC, "profileRef": {"name": profile}})["metadata"]["uid"]
    play_trainer(s3_store, ns, name, uid)  # the preflight passes; the training needs the Service
    status = _refused_quickly(trainings, name, started)
    assert "forbidden" in status["failure"]["message"]
    assert ChildNames.of(name).service in status["failure"]["message"]
    assert {c["type"]: c["reason"] for c in status["conditions"]}["Admitted"] == "ChildRejected"
    assert "startTime" not in status
    assert [j.metadata.name for j in trainings.jobs(uid)] == [ChildNames.of(name).preflight]
    with pytest.raises(ApiException) as info:
        trainings.core.read_namespaced_service(ChildNames.of(name).service, ns)
    assert info.value.status == 404
