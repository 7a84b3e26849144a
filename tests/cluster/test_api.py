"""The API server validates like a real one: CRD schema with CEL rules."""

from __future__ import annotations

import os
import subprocess

import pytest
from kubernetes import client

from iclora_dev.pytest_plugin import wait_for

pytestmark = pytest.mark.cluster

GROUP = "clustertest.iclora.dev"


def _crd() -> dict:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"widgets.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "properties": {
                                        "rank": {"type": "integer", "minimum": 1},
                                        "alpha": {"type": "integer"},
                                    },
                                    "x-kubernetes-validations": [
                                        {
                                            "rule": "self.alpha <= self.rank",
                                            "message": "alpha must not exceed rank",
                                        }
                                    ],
                                }
                            },
                        }
                    },
                }
            ],
        },
    }


def test_crd_cel_rule_rejects_bad_object(k8s_api, k8s_namespace):
    ext = client.ApiextensionsV1Api(k8s_api)
    try:
        ext.create_custom_resource_definition(_crd())
    except client.ApiException as exc:
        assert exc.status == 409  # left from an earlier test in this session
    wait_for(
        lambda: any(
            c.type == "Established" and c.status == "True"
            for c in (ext.read_custom_resource_definition(f"widgets.{GROUP}").status.conditions or [])
        ),
        what="CRD established",
    )
    objs = client.CustomObjectsApi(k8s_api)

    def create(rank: int, alpha: int) -> dict:
        body = {
            "apiVersion": f"{GROUP}/v1",
            "kind": "Widget",
            "metadata": {"name": f"w-{rank}-{alpha}"},
            "spec": {"rank": rank, "alpha": alpha},
        }
        return objs.create_namespaced_custom_object(GROUP, "v1", k8s_namespace, "widgets", body)

    # The discovery cache of a fresh CRD can lag a moment: retry the good object until served.
    good = wait_for(lambda: _try(lambda: create(8, 4)), what="CRD served")
    assert good["spec"] == {"rank": 8, "alpha": 4}
    with pytest.raises(client.ApiException) as bad:
        create(4, 8)
    assert bad.value.status == 422
    assert "alpha must not exceed rank" in bad.value.body


def _try(fn):
    try:
        return fn()
    except client.ApiException as exc:
        if exc.status == 404:
            return None
        raise


def test_validating_admission_policy_is_enforced(k8s_api, k8s_namespace):
    """The ValidatingAdmissionPolicy admission plugin is on: CEL policies deny requests."""
    adm = client.AdmissionregistrationV1Api(k8s_api)
    name = f"deny-forbidden-{k8s_namespace}"
    adm.create_validating_admission_policy(
        {
            "metadata": {"name": name},
            "spec": {
                "failurePolicy": "Fail",
                "matchConstraints": {
                    "resourceRules": [
                        {
                            "apiGroups": [""],
                            "apiVersions": ["v1"],
                            "operations": ["CREATE"],
                            "resources": ["configmaps"],
                        }
                    ]
                },
                "validations": [
                    {
                        "expression": "!has(object.data) || !('forbidden' in object.data)",
                        "message": "no forbidden key",
                    }
                ],
            },
        }
    )
    adm.create_validating_admission_policy_binding(
        {
            "metadata": {"name": name},
            "spec": {
                "policyName": name,
                "validationActions": ["Deny"],
                "matchResources": {
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": k8s_namespace}}
                },
            },
        }
    )
    core = client.CoreV1Api(k8s_api)
    try:

        def denied() -> str | None:
            try:
                core.create_namespaced_config_map(
                    k8s_namespace, {"metadata": {"generateName": "cm-"}, "data": {"forbidden": "x"}}
                )
            except client.ApiException as exc:
                return exc.body if exc.status in (400, 403, 422) else None
            return None

        # The policy takes a moment to be compiled and picked up by the admission plugin.
        body = wait_for(denied, timeout=30, interval=0.5, what="policy enforced")
        assert "no forbidden key" in body
        core.create_namespaced_config_map(k8s_namespace, {"metadata": {"name": "fine"}, "data": {"ok": "x"}})
    finally:
        adm.delete_validating_admission_policy_binding(name)
        adm.delete_validating_admission_policy(name)


def test_helm_installs_a_chart(local_cluster, k8s_api, k8s_namespace, tmp_path):
    chart = tmp_path / "tiny"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: tiny\nversion: 0.1.0\n")
    (chart / "templates" / "cm.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-cm\n"
        "data:\n  v: {{ .Values.v | quote }}\n"
    )
    subprocess.run(
        [
            str(local_cluster.helm),
            "install",
            "rel",
            str(chart),
            "--namespace",
            k8s_namespace,
            "--set",
            "v=42",
            "--kubeconfig",
            str(local_cluster.kubeconfig),
            "--wait",
            "--timeout",
            "60s",
        ],
        check=True,
        capture_output=True,
        timeout=120,
        env={
            **os.environ,
            "HELM_CACHE_HOME": str(tmp_path / "c"),
            "HELM_CONFIG_HOME": str(tmp_path / "cfg"),
            "HELM_DATA_HOME": str(tmp_path / "d"),
        },
    )
    cm = client.CoreV1Api(k8s_api).read_namespaced_config_map("rel-cm", k8s_namespace)
    assert cm.data == {"v": "42"}
