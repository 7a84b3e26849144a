"""Child names and label values within Kubernetes' limits for every valid training name (issue 18, item 6),
and the API server's refusal of a child mapped to a terminal rejection (not a retry)."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from types import SimpleNamespace

import pytest
from kubernetes.client.exceptions import ApiException

from iclora_operator.adapters.kube import ChildConflict, ChildRejected, Kube, _event_name, refuses_object
from iclora_operator.reconcile.observed import ChildRejection, Observed
from iclora_operator.render import (
    LABEL_TRAINING,
    ChildNames,
    render_headless_service,
    render_preflight_job,
    render_store_secret,
    render_training_job,
)
from tests.helpers import issued_session, render_ctx

# apimachinery's validation, as regular expressions.
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
MAX_NODES = 64  # TrainingProfileSpec.nodes


def _name(length: int, alphabet: str = "abcdefghij0123456789") -> str:
    """A valid training name (DNS subdomain) of exactly `length` characters."""
    return (alphabet * (length // len(alphabet) + 1))[:length]


NAMES = [
    *(_name(n) for n in (1, 53, 54, 63, 64, 200, 253)),
    # Dots (valid in a training's name, not in a hostname or a Service name), a leading digit
    # (not a DNS-1035 label), dots and dashes at every cut point of a long name.
    "a.b", "my.run-v2", "7-up", "9" * 63, ".".join(["x"] * 127), "-".join(["ab"] * 84) + "a",
    _name(200, "ab.cd-ef"),
]


def _is_subdomain(value: str) -> bool:
    return len(value) <= 253 and bool(DNS1123_SUBDOMAIN.match(value))


@pytest.mark.parametrize("name", NAMES, ids=lambda n: f"{len(n)}-chars-{n[:12]}")
def test_every_child_name_and_label_value_is_valid(name):
    assert _is_subdomain(name) and len(name) <= 253, "the test's own name must be a valid training name"
    names = ChildNames.of(name)
    # Jobs: the job-name label (<= 63), a DNS subdomain; the Indexed training Job's hostnames
    # <job>-<index> are DNS labels, its pods <job>-<index>-<5 random> fit 63 untruncated, and Kueue's
    # Workload name job-<job>-<5 hex> is a valid label value too.
    for job in (names.preflight, names.training):
        assert _is_subdomain(job) and len(job) <= 63 and LABEL_VALUE.match(job)
    assert DNS1123_LABEL.match(f"{names.training}-{MAX_NODES - 1}")
    assert len(f"{names.training}-{MAX_NODES - 1}-abcde") <= 63
    workload = f"job-{names.training}-abcde"
    assert len(workload) <= 63 and _is_subdomain(workload) and LABEL_VALUE.match(workload)
    # The headless Service: a DNS-1035 label; the Secret: a DNS subdomain.
    assert len(names.service) <= 63 and DNS1035_LABEL.match(names.service)
    assert _is_subdomain(names.store_secret)
    assert len(names.training_label) <= 63 and LABEL_VALUE.match(names.training_label)


@pytest.mark.parametrize("length", [1, 43, 53])
def test_names_that_fit_keep_their_children_names(length):
    name = _name(length)
    names = ChildNames.of(name)
    assert names.preflight == f"{name}-preflight"
    assert names.store_secret == f"{name}-store"
    assert names.service == f"{name}-train"
    assert names.training_label == name
    if length <= 47:
        assert names.training == f"{name}-train"


@pytest.mark.parametrize("length", [54, 63, 64, 200, 253])
def test_long_names_get_a_readable_prefix_and_a_hash(length):
    name = _name(length)
    names = ChildNames.of(name)
    for child, suffix in ((names.preflight, "-preflight"), (names.training, "-train"), (names.service, "-train")):
        assert child.endswith(suffix)
        assert child.startswith(name[:20])  # readable: the training's name comes first
    assert names == ChildNames.of(name)  # deterministic


def test_long_names_that_share_a_prefix_get_different_children():
    prefix = _name(60)
    first, second = ChildNames.of(prefix + "-first"), ChildNames.of(prefix + "-second")
    for field in ("preflight", "training", "service", "store_secret", "training_label"):
        assert getattr(first, field) != getattr(second, field), field
    # Replacing a dot cannot make two names meet either.
    assert ChildNames.of("a.b").training != ChildNames.of("a-b").training


def test_rendered_children_carry_the_derived_names_and_label():
    name = _name(253)
    ctx = replace(render_ctx(nodes=2), name=name)
    names = ChildNames.of(name)
    preflight, training = render_preflight_job(ctx), render_training_job(ctx, suspend=False)
    service, secret = render_headless_service(ctx), render_store_secret(ctx, issued_session())
    assert [preflight["metadata"]["name"], training["metadata"]["name"], service["metadata"]["name"],
            secret["metadata"]["name"]] == [names.preflight, names.training, names.service, names.store_secret]
    for obj in (preflight, training, service, secret):
        assert obj["metadata"]["labels"][LABEL_TRAINING] == names.training_label
        assert obj["metadata"]["ownerReferences"][0]["name"] == name  # the owner keeps its full name
        for value in obj["metadata"]["labels"].values():
            assert len(value) <= 63 and LABEL_VALUE.match(value)
    for job in (preflight, training):
        for value in job["spec"]["template"]["metadata"]["labels"].values():
            assert len(value) <= 63 and LABEL_VALUE.match(value)
    pod = training["spec"]["template"]["spec"]
    assert pod["subdomain"] == names.service
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["MASTER_ADDR"] == f"{names.training}-0.{names.service}"


def test_event_names_stay_dns_subdomains_for_the_longest_training_names():
    for name in (_name(253), ".".join(["x"] * 127), "t"):
        event = _event_name(name)
        assert _is_subdomain(event) and event.startswith(name[:200])


# --- the API server's refusal of a child -----------------------------------------------------------

def _api_error(status: int, message: str = "refused") -> ApiException:
    exc = ApiException(status=status, reason="Unprocessable Entity")
    exc.body = json.dumps({"kind": "Status", "message": message})
    return exc


@pytest.mark.parametrize(("status", "refused"), [
    (400, True), (403, True), (404, True), (422, True),
    (401, False), (408, False), (409, False), (429, False), (500, False), (503, False), (None, False),
])
def test_only_client_errors_that_a_retry_cannot_change_refuse_the_object(status, refused):
    exc = ApiException(status=status) if status is None else _api_error(status)
    assert refuses_object(exc) is refused


def _kube_answering(exc: ApiException, existing: dict | None = None) -> Kube:
    kube = Kube.__new__(Kube)

    def create(*_args, **_kw):
        raise exc

    kube.batch = SimpleNamespace(create_namespaced_job=create)
    kube.core = SimpleNamespace(create_namespaced_service=create, create_namespaced_secret=create)
    kube.networking = SimpleNamespace(create_namespaced_network_policy=create)
    kube.read = lambda kind, ns, name: existing  # type: ignore[method-assign]
    return kube


def test_create_turns_a_422_into_a_rejection_with_the_api_servers_message():
    job = render_preflight_job(render_ctx())
    message = 'Job.batch "t-preflight" is invalid: spec.template.labels: Invalid value: "-x-"'
    with pytest.raises(ChildRejected) as info:
        _kube_answering(_api_error(422, message)).create(job)
    rejection = info.value.rejection
    assert (rejection.kind, rejection.name, rejection.code, rejection.message) == ("Job", "t-preflight", 422,
                                                                                 message)


def test_create_keeps_409_for_adoption_and_lets_retryable_errors_through():
    job = render_preflight_job(render_ctx())
    with pytest.raises(ChildConflict):
        _kube_answering(_api_error(409), existing={"metadata": {"labels": {}}}).create(job)
    for status in (429, 500):
        with pytest.raises(ApiException):
            _kube_answering(_api_error(status)).create(job)


class _RefusingKube:
    """The Kubernetes adapter of one reconcile: creating the preflight Job is refused."""

    def __init__(self, rejection: ChildRejection):
        self.rejection = rejection
        self.created: list[str] = []
        self.events: list[tuple[str, str, str]] = []
        self.status_writes: list[dict] = []

    def create(self, manifest: dict) -> dict:
        if manifest["kind"] == "Job":
            raise ChildRejected(self.rejection)
        self.created.append(manifest["metadata"]["name"])
        return manifest

    def apply_secret(self, manifest: dict) -> None:
        self.create(manifest)

    def post_event(self, _body, type_: str, reason: str, message: str) -> None:
        self.events.append((type_, reason, message))

    def patch_training_status(self, _ns: str, _name: str, patch: dict) -> str:
        self.status_writes.append(patch)
        return str(len(self.status_writes))


def test_a_refused_child_ends_the_reconcile_in_one_failed_status_write_and_a_warning(monkeypatch):
    import kopf

    from iclora_operator import act
    from iclora_operator.metrics import Metrics
    from iclora_operator.runtime import Indexes, Memo
    from iclora_operator.settings import OperatorSettings

    name = _name(253)
    ctx = replace(render_ctx(), name=name, store_secret=ChildNames.of(name).store_secret)
    obs = Observed(name=name, namespace=ctx.namespace, uid=ctx.uid, generation=1, spec=ctx.spec, profile=ctx.profile)
    monkeypatch.setattr(act, "observe", lambda *_args: (obs, ctx))
    refused = ChildRejection("Job", ChildNames.of(name).preflight, 403,
                             'jobs.batch "x" is forbidden: exceeded quota: q, requested: count/jobs.batch=1')
    kube = _RefusingKube(refused)
    memo = Memo(settings=OperatorSettings(), kube=kube, metrics=Metrics())  # type: ignore[arg-type]
    # The run's scoped session as the store's STS would issue it (tests/cluster/test_store_credentials.py
    # issues real ones against SeaweedFS).
    memo.sts = SimpleNamespace(issue=lambda *_args: issued_session())  # type: ignore[assignment]
    body = kopf.Body({"apiVersion": "iclora.dev/v1alpha1", "kind": "MaskedICLoraTraining",
                      "metadata": {"name": name, "namespace": ctx.namespace, "uid": ctx.uid, "generation": 1}})
    act.reconcile_guarded(body, memo, Indexes(jobs={}, profiles={}, trainings={}), None, wait=True)
    assert kube.created == [ChildNames.of(name).store_secret]
    assert len(kube.status_writes) == 1
    status = kube.status_writes[0]
    assert status["phase"] == "Failed" and status["billingUnits"] == 0
    assert status["failure"]["reason"] == "ChildRejected" and "exceeded quota" in status["failure"]["message"]
    assert [(t, r) for t, r, _ in kube.events] == [("Warning", "ChildRejected")]
    assert "exceeded quota" in kube.events[0][2]
    assert memo.retry_at == {}  # terminal: nothing scheduled to try again


def test_an_unexpected_error_is_retried_with_one_warning_not_silently(monkeypatch):
    import kopf

    from iclora_operator import act
    from iclora_operator.metrics import Metrics
    from iclora_operator.runtime import Indexes, Memo
    from iclora_operator.settings import OperatorSettings

    def fail(*_args):
        raise _api_error(500, "etcdserver: request timed out")

    monkeypatch.setattr(act, "observe", fail)
    kube = _RefusingKube(ChildRejection("Job", "t-preflight", 422, "invalid"))
    memo = Memo(settings=OperatorSettings(), kube=kube, metrics=Metrics())  # type: ignore[arg-type]
    body = kopf.Body({"metadata": {"name": "t", "namespace": "ns", "uid": "u", "generation": 1}})
    for _ in range(3):
        act.reconcile_guarded(body, memo, Indexes(jobs={}, profiles={}, trainings={}), None, wait=True)
    assert kube.events == [("Warning", "ReconcileError",
                            "the API server answered 500: etcdserver: request timed out; retrying")]
    assert kube.status_writes == [] and "u" in memo.retry_at
