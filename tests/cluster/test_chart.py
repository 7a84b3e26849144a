"""The Helm chart: lint, server-side dry run, and the operator running with exactly its RBAC."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from iclora_dev.pytest_plugin import wait_for
from tests.helpers import REPO_ROOT, SPEC, play_trainer

CHART = REPO_ROOT / "charts" / "masked-iclora"


def test_chart_crds_are_the_generated_ones():
    chart = {p.name: p.read_text() for p in (CHART / "crds").glob("*.yaml")}
    repo = {p.name: p.read_text() for p in (REPO_ROOT / "crds").glob("*.yaml")}
    assert chart == repo, "charts/masked-iclora/crds is stale: run `make crd`"


def _helm(local_cluster: Any, *args: str) -> str:
    proc = subprocess.run([str(local_cluster.helm), *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _template(local_cluster: Any, release: str, namespace: str, *sets: str) -> list[dict[str, Any]]:
    args = ["template", release, str(CHART), "--namespace", namespace, "--kube-version", "1.36.3"]
    for s in sets:
        args += ["--set", s]
    return [d for d in yaml.safe_load_all(_helm(local_cluster, *args)) if d]


@pytest.mark.cluster
def test_helm_lint(local_cluster):
    out = _helm(local_cluster, "lint", str(CHART), "--strict")
    assert "0 chart(s) failed" in out


@pytest.mark.cluster
@pytest.mark.parametrize(("bad", "field"), [("concurrencyPerNamespace=-1", "concurrencyPerNamespace"),
                                            ("store.endpoint=s3.example.com", "endpoint"),
                                            ("operator.logFormat=xml", "logFormat")])
def test_values_schema_rejects_bad_values(local_cluster, bad, field):
    proc = subprocess.run([str(local_cluster.helm), "template", "r", str(CHART), "--kube-version", "1.36.3",
                           "--set", bad], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert field in proc.stderr


@pytest.mark.cluster
@pytest.mark.parametrize("sets", [(), ("watchNamespaces={team-a,team-b}", "metrics.serviceMonitor.enabled=false")])
def test_rendered_chart_passes_server_side_dry_run(local_cluster, installed_crds, k8s_namespace, sets):
    docs = _template(local_cluster, f"r{uuid.uuid4().hex[:6]}", k8s_namespace, *sets)
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "ServiceAccount", "ClusterRole", "TrainingProfile", "NetworkPolicy"} <= kinds
    manifest = yaml.safe_dump_all(docs)
    if sets:
        api = client.CoreV1Api(_admin(local_cluster))
        for ns in ("team-a", "team-b"):
            try:
                api.create_namespace({"metadata": {"name": ns}})
            except ApiException as exc:
                if exc.status != 409:
                    raise
    proc = subprocess.run(
        [str(local_cluster.kubectl), "--kubeconfig", str(local_cluster.kubeconfig), "apply", "--server-side",
         "--dry-run=server", "-f", "-"], input=manifest, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "deployment.apps" in proc.stdout


@pytest.mark.cluster
@pytest.mark.parametrize("sets", [("kueue.enabled=true",), ("kueue.enabled=true", "watchNamespaces={team-a}")])
def test_kueue_mode_may_deactivate_workloads_and_nothing_more(local_cluster, sets):
    """spec.suspend under Kueue patches the Job's Workload: the grant exists in Kueue mode only."""
    def workload_rules(docs):
        return [r for d in docs if d["kind"] in ("ClusterRole", "Role") for r in d.get("rules") or []
                if "kueue.x-k8s.io" in r["apiGroups"]]

    (rule,) = workload_rules(_template(local_cluster, "k", "ops", *sets))
    assert rule["resources"] == ["workloads"] and sorted(rule["verbs"]) == ["list", "patch"]
    assert workload_rules(_template(local_cluster, "k", "ops")) == []


def _admin(local_cluster: Any) -> Any:
    from kubernetes import config

    return config.new_client_from_config(str(local_cluster.kubeconfig))


def _apply_rbac(api_client: Any, docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Create the chart's ServiceAccount and RBAC objects; returns them for cleanup."""
    core, rbac = client.CoreV1Api(api_client), client.RbacAuthorizationV1Api(api_client)
    created = []
    for d in docs:
        kind, ns = d["kind"], d["metadata"].get("namespace")
        if kind == "ServiceAccount":
            core.create_namespaced_service_account(ns, d)
        elif kind == "ClusterRole":
            rbac.create_cluster_role(d)
        elif kind == "ClusterRoleBinding":
            rbac.create_cluster_role_binding(d)
        elif kind == "Role":
            rbac.create_namespaced_role(ns, d)
        elif kind == "RoleBinding":
            rbac.create_namespaced_role_binding(ns, d)
        else:
            continue
        created.append(d)
    return created


def _delete_cluster_rbac(api_client: Any, docs: list[dict[str, Any]]) -> None:
    rbac = client.RbacAuthorizationV1Api(api_client)
    for d in docs:
        if d["kind"] == "ClusterRole":
            rbac.delete_cluster_role(d["metadata"]["name"])
        elif d["kind"] == "ClusterRoleBinding":
            rbac.delete_cluster_role_binding(d["metadata"]["name"])


def _kubeconfig_for(local_cluster: Any, api_client: Any, namespace: str, sa: str, path: Path) -> Path:
    token = client.CoreV1Api(api_client).create_namespaced_service_account_token(
        sa, namespace, {"spec": {"expirationSeconds": 3600}}).status.token
    base = yaml.safe_load(Path(local_cluster.kubeconfig).read_text())
    cluster = base["clusters"][0]
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [cluster],
        "users": [{"name": sa, "user": {"token": token}}],
        "contexts": [{"name": sa, "context": {"cluster": cluster["name"], "user": sa}}],
        "current-context": sa,
    }))
    return path


@pytest.mark.cluster
@pytest.mark.slow
def test_operator_completes_a_lifecycle_with_only_the_charts_rbac(local_cluster, k8s_api, k8s_namespace, trainings,
                                                                    operator_factory, profile_factory, s3_store,
                                                                    tmp_path):
    release = f"lp{uuid.uuid4().hex[:6]}"
    docs = _template(local_cluster, release, k8s_namespace)
    created = _apply_rbac(k8s_api, docs)
    try:
        sa = next(d["metadata"]["name"] for d in docs if d["kind"] == "ServiceAccount")
        kubeconfig = _kubeconfig_for(local_cluster, k8s_api, k8s_namespace, sa, tmp_path / "operator.kubeconfig")
        profile = profile_factory(podAnnotations={"iclora.dev/fake-delay": "2s"})
        operator_factory([trainings.namespace], kubeconfig=str(kubeconfig))
        obj = trainings.create("lp", {**SPEC, "profileRef": {"name": profile}})
        play_trainer(s3_store, trainings.namespace, "lp", obj["metadata"]["uid"])
        wait_for(lambda: trainings.phase("lp") in ("Succeeded", "Failed"), timeout=120, what="lp finished")
        status = trainings.get("lp")["status"]
        assert status["phase"] == "Succeeded", status
        assert status["billingUnits"] == 150
        assert len(trainings.events("lp", "Billed")) == 1
        # A Job without pods: the operator lists its FailedCreate Events (why pods are refused).
        review = client.AuthorizationV1Api(k8s_api).create_subject_access_review({"spec": {
            "user": f"system:serviceaccount:{k8s_namespace}:{sa}",
            "resourceAttributes": {"namespace": trainings.namespace, "verb": "list", "resource": "events"}}})
        assert review.status.allowed, review.status
    finally:
        _delete_cluster_rbac(k8s_api, created)


@pytest.mark.cluster
@pytest.mark.slow
def test_a_tenant_cannot_read_another_namespaces_secrets_through_the_product(
        local_cluster, k8s_api, trainings, operator_factory, profile_factory, tmp_path):
    core = client.CoreV1Api(k8s_api)
    tenant_a = trainings.namespace
    tenant_b = f"t-{uuid.uuid4().hex[:10]}"
    core.create_namespace({"metadata": {"name": tenant_b}})
    release = f"tn{uuid.uuid4().hex[:6]}"
    docs = [d for d in _template(local_cluster, release, tenant_a) if d["kind"] == "ClusterRole"
            and "tenant" in d["metadata"]["name"]]
    created = _apply_rbac(k8s_api, docs)
    try:
        core.create_namespaced_service_account(tenant_a, {"metadata": {"name": "alice"}})
        client.RbacAuthorizationV1Api(k8s_api).create_namespaced_role_binding(tenant_a, {
            "metadata": {"name": "alice-edit"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
            "subjects": [{"kind": "ServiceAccount", "name": "alice", "namespace": tenant_a}],
        })
        core.create_namespaced_secret(tenant_b, {"metadata": {"name": "creds"}, "stringData": {
            "AWS_ACCESS_KEY_ID": "b-key", "AWS_SECRET_ACCESS_KEY": "b-secret"}})
        from kubernetes import config

        alice = config.new_client_from_config(str(_kubeconfig_for(local_cluster, k8s_api, tenant_a, "alice",
                                                                   tmp_path / "alice.kubeconfig")))
        custom = client.CustomObjectsApi(alice)
        # The aggregated edit role lets alice manage trainings in her namespace ...
        body = {"apiVersion": "iclora.dev/v1alpha1", "kind": "MaskedICLoraTraining",
                "metadata": {"name": "steal"},
                "spec": {**SPEC, "profileRef": {"name": profile_factory()},
                         "output": {"url": "s3://iclora/stolen", "credentialsSecretRef": {"name": "creds"}}}}

        def aggregated() -> bool:
            try:
                custom.create_namespaced_custom_object("iclora.dev", "v1alpha1", tenant_a,
                                                       "maskedicloratrainings", body)
            except ApiException as exc:
                assert exc.status == 403
                return False
            return True

        wait_for(aggregated, timeout=30, what="tenant role aggregated into edit")
        # ... but not in another tenant's namespace, and not that namespace's Secrets.
        with pytest.raises(ApiException) as info:
            custom.create_namespaced_custom_object("iclora.dev", "v1alpha1", tenant_b, "maskedicloratrainings", body)
        assert info.value.status == 403
        with pytest.raises(ApiException) as info:
            client.CoreV1Api(alice).read_namespaced_secret("creds", tenant_b)
        assert info.value.status == 403
        # Through the product, a Secret name resolves only in the training's own namespace.
        operator_factory([tenant_a])
        wait_for(lambda: trainings.phase("steal") == "Pending", timeout=60, what="steal Pending")
        status = trainings.get("steal")["status"]
        reconciling = next(c for c in status["conditions"] if c["type"] == "Reconciling")
        assert reconciling["reason"] == "SecretNotFound"
        assert f"{tenant_a}/creds" in reconciling["message"]
        assert "b-key" not in str(status)
        assert trainings.jobs() == []
    finally:
        _delete_cluster_rbac(k8s_api, created)
        core.delete_namespace(tenant_b)


@pytest.mark.cluster
def test_the_default_profiles_pods_mount_what_it_says_server_side_dry_run(local_cluster, installed_crds,
                                                                         k8s_api, k8s_namespace):
    """The chart's default profile, rendered into the operator's Jobs, passes the API server and mounts
    its model cache (issue 21): the hostPath cache in training pods, at the path the trainer is told."""
    from iclora_api.profile import MODEL_CACHE_MOUNT_PATH, profile_spec_from_object
    from iclora_api.validation import validate_spec
    from iclora_operator.render import (
        RunContext,
        StoreLocation,
        render_preflight_job,
        render_store_secret,
        render_training_job,
    )
    from tests.helpers import issued_session

    docs = _template(local_cluster, "dp", k8s_namespace)
    profile_doc = next(d for d in docs if d["kind"] == "TrainingProfile")
    profile = profile_spec_from_object(profile_doc)
    ctx = RunContext(name="t", namespace=k8s_namespace, uid=str(uuid.uuid4()), spec=validate_spec(SPEC),
                     profile=profile, store=StoreLocation("https://s3.example.com", "iclora", "runs/x"),
                     store_secret="t-store", labels={})
    core, batch = client.CoreV1Api(k8s_api), client.BatchV1Api(k8s_api)
    core.create_namespaced_secret(k8s_namespace, render_store_secret(ctx, issued_session()), dry_run="All")
    want = profile_doc["spec"]["volumes"][0]
    for job, cache_mounted in ((render_training_job(ctx, suspend=False), True), (render_preflight_job(ctx), False)):
        created = batch.create_namespaced_job(k8s_namespace, job, dry_run="All")  # the API server's validation
        pod = created.spec.template.spec
        volumes = {v.name: v for v in pod.volumes}
        mounts = {m.mount_path: m.name for m in pod.containers[0].volume_mounts}
        env = {e.name: e.value for e in pod.containers[0].env}
        if cache_mounted:
            assert volumes[want["name"]].host_path.path == want["hostPath"]["path"]
            assert mounts[MODEL_CACHE_MOUNT_PATH] == want["name"]
            assert env["ICLORA_MODEL_CACHE_DIR"] == MODEL_CACHE_MOUNT_PATH
            assert env["ICLORA_MODEL_PATH"] == profile_doc["spec"]["model"]["checkpoint"]
            assert env["ICLORA_TEXT_ENCODER_PATH"] == profile_doc["spec"]["model"]["textEncoder"]
        else:
            assert want["name"] not in volumes and MODEL_CACHE_MOUNT_PATH not in mounts
