"""Ranks of a multi-node training reach each other under a default-deny NetworkPolicy (issue 24.3).

The local cluster enforces no NetworkPolicy (no CNI), so the policy the operator ships is checked
against the pods it must select: the API server accepts it, it selects exactly the training's
pods (not its preflight, not another training's), and lets in exactly those pods.
"""

from __future__ import annotations

import pytest
from kubernetes import client

from iclora_dev.pytest_plugin import wait_for
from iclora_operator.render import ChildNames
from tests.helpers import SPEC, play_trainer

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def _selector(match_labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(match_labels.items()))


def test_a_two_node_training_in_a_default_deny_namespace_ships_a_policy_for_its_own_ranks(
        trainings, operator_factory, profile_factory, s3_store, k8s_api):
    ns = trainings.namespace
    net = client.NetworkingV1Api(k8s_api)
    net.create_namespaced_network_policy(ns, {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "default-deny"},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}})
    multi = profile_factory(nodes=2, podAnnotations={"iclora.dev/fake-delay": "1s"},
                            trainerEnv=[{"name": "NCCL_SOCKET_IFNAME", "value": "eth0"}],
                            trainerExtraResources={"vpc.amazonaws.com/efa": "1"}, rankNetworkPolicy="Ingress")
    operator_factory([ns])
    uids = {}
    for name in ("ranks-a", "ranks-b"):
        uids[name] = trainings.create(name, {**SPEC, "profileRef": {"name": multi}})["metadata"]["uid"]
        play_trainer(s3_store, ns, name, uids[name])
    policies = {}
    for name in uids:
        names = ChildNames.of(name)
        policies[name] = wait_for(lambda names=names: _read(net, ns, names.service), timeout=90,
                                  what=f"{name}'s rank NetworkPolicy")
        wait_for(lambda names=names: len(_pods(trainings, f"batch.kubernetes.io/job-name={names.training}")) == 2,
                 timeout=90, what=f"{name}'s two training pods")

    for name, uid in uids.items():
        policy = policies[name]
        assert policy.metadata.owner_references[0].uid == uid
        assert policy.spec.policy_types == ["Ingress"] and not policy.spec.egress
        selects = _pods(trainings, _selector(policy.spec.pod_selector.match_labels))
        own = _pods(trainings, f"batch.kubernetes.io/job-name={ChildNames.of(name).training}")
        assert selects == own and len(own) == 2  # the ranks, not the preflight, not the other training
        (rule,) = policy.spec.ingress
        assert not rule.ports  # NCCL picks its ports: any port, from the peers only
        (peer,) = rule._from
        assert _pods(trainings, _selector(peer.pod_selector.match_labels)) == own and peer.namespace_selector is None
        pod = trainings.core.read_namespaced_pod(own[0], ns)
        env = {e.name: e.value for e in pod.spec.containers[0].env}
        assert env["NCCL_SOCKET_IFNAME"] == "eth0"
        assert pod.spec.containers[0].resources.limits["vpc.amazonaws.com/efa"] == "1"


def _read(net, ns, name):
    try:
        return net.read_namespaced_network_policy(name, ns)
    except client.ApiException as exc:
        if exc.status == 404:
            return None
        raise


def _pods(trainings, selector: str) -> list[str]:
    return sorted(p.metadata.name for p in trainings.core.list_namespaced_pod(
        trainings.namespace, label_selector=selector).items)
