"""Kubernetes API calls of the operator (sync client; kopf runs sync handlers in threads)."""

from __future__ import annotations

import base64
import json
import logging
import secrets
from datetime import UTC, datetime
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from iclora_api.contract import PREEMPTED_EXIT_CODES
from iclora_api.v1alpha1 import API_GROUP, API_VERSION, PLURAL
from iclora_operator.reconcile.observed import (
    POD_CREATION_REFUSED,
    ChildRejection,
    JobState,
    PodDisruption,
    PodNotStarting,
)
from iclora_operator.render import (
    CONTAINER,
    DNS_SUBDOMAIN_MAX,
    LABEL_COMPONENT,
    LABEL_MANAGED_BY,
    LABEL_TRAINING,
    LABEL_UID,
    MANAGED_BY,
)

log = logging.getLogger(__name__)

SUSPENDED_BY_USER = "iclora.dev/suspended-by-user"
EVENT_SOURCE = "iclora-operator"
KUEUE_GROUP, KUEUE_VERSION, KUEUE_WORKLOADS = "kueue.x-k8s.io", "v1beta2", "workloads"
# 4xx answers that a retry can change: 401 (the operator's own credentials), 408 (a timeout),
# 409 (the name exists: adopted or a conflict) and 429 (throttling). Any other 4xx refuses the
# object itself (422 invalid, 400, 403 by a quota, policy or admission webhook): retrying
# the same object gets the same answer.
RETRYABLE_CLIENT_ERRORS = frozenset({401, 408, 409, 429})
# Waiting reasons of a container that is on its way (pulling, mounting): not a problem.
STARTING_REASONS = frozenset({"ContainerCreating", "PodInitializing"})


class NotReadyYet(RuntimeError):
    """Something the action needs does not exist yet (retry shortly)."""


def _json(response: Any) -> dict[str, Any]:
    """The raw response as plain JSON. The client's typed models cost far more CPU and memory
    than the operator needs (it reads a few fields), which shows under a burst of resources."""
    return json.loads(response.data)


def api_message(exc: ApiException) -> str:
    """What the API server said (its Status message), without the response headers."""
    try:
        message = json.loads(exc.body or "").get("message")
    except (ValueError, AttributeError):
        message = None
    return str(message or exc.reason or f"HTTP {exc.status}")


def refuses_object(exc: ApiException) -> bool:
    """Whether the API server refused the object itself (retrying it cannot succeed)."""
    return 400 <= (exc.status or 0) < 500 and exc.status not in RETRYABLE_CLIENT_ERRORS


class ChildRejected(RuntimeError):
    """The API server refused to create a child (invalid, or forbidden by a quota or policy)."""

    def __init__(self, rejection: ChildRejection):
        super().__init__(f"{rejection.kind} {rejection.name}: {rejection.code} {rejection.message}")
        self.rejection = rejection


class ChildConflict(RuntimeError):
    """A child's name is taken by an object that does not belong to this training."""

    def __init__(self, kind: str, namespace: str, name: str):
        super().__init__(f"{kind} {namespace}/{name} exists and does not belong to this training")
        self.name = name


class Kube:
    def __init__(self, api_client: client.ApiClient | None = None):
        self.api = api_client or client.ApiClient()
        self.batch = client.BatchV1Api(self.api)
        self.core = client.CoreV1Api(self.api)
        self.networking = client.NetworkingV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)

    # --- children ------------------------------------------------------------------------
    def create(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Create a child; an existing one carrying our uid label is adopted (idempotent retries).

        Raises ChildConflict when the name is taken by another object, ChildRejected when the
        API server refuses the object itself; other errors (5xx, throttling) propagate (retried).
        """
        kind = manifest["kind"]
        ns = manifest["metadata"]["namespace"]
        name = manifest["metadata"]["name"]
        creators = {
            "Job": self.batch.create_namespaced_job,
            "Service": self.core.create_namespaced_service,
            "Secret": self.core.create_namespaced_secret,
            "NetworkPolicy": self.networking.create_namespaced_network_policy,
        }
        try:
            return _json(creators[kind](ns, manifest, _preload_content=False))
        except ApiException as exc:
            if refuses_object(exc):
                raise ChildRejected(ChildRejection(kind, name, int(exc.status), api_message(exc))) from exc
            if exc.status != 409:
                raise
        existing = self.read(kind, ns, name)
        want = manifest["metadata"]["labels"][LABEL_UID]
        if existing is None or (existing["metadata"].get("labels") or {}).get(LABEL_UID) != want:
            raise ChildConflict(kind, ns, name)
        return existing

    def apply_secret(self, manifest: dict[str, Any]) -> None:
        """Create a Secret of ours, or replace the one we already own (renewed credentials).

        ChildConflict when the name belongs to another object; ChildRejected when refused."""
        ns, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
        existing = self.create(manifest)
        if (existing["metadata"].get("annotations") or {}) == (manifest["metadata"].get("annotations") or {}):
            return  # just created from this manifest (each issued session has its own expiry annotation)
        body = {**manifest, "metadata": {**manifest["metadata"],
                                         "resourceVersion": existing["metadata"]["resourceVersion"]}}
        self.core.replace_namespaced_secret(name, ns, body, _preload_content=False)

    def read(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        readers = {
            "Job": self.batch.read_namespaced_job,
            "Service": self.core.read_namespaced_service,
            "Secret": self.core.read_namespaced_secret,
            "NetworkPolicy": self.networking.read_namespaced_network_policy,
        }
        try:
            return _json(readers[kind](name, namespace, _preload_content=False))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def set_job_suspend(self, namespace: str, name: str, suspend: bool, kueue: bool = False) -> None:
        """Suspend (or resume) a training Job at the user's request; the annotation says it was the user."""
        mark = {"metadata": {"annotations": {SUSPENDED_BY_USER: "true" if suspend else None}}}
        if not kueue:
            self.batch.patch_namespaced_job(name, namespace, {**mark, "spec": {"suspend": suspend}})
            return
        # Under Kueue the Job's suspend field is Kueue's: it would admit (unsuspend) a Job we
        # suspended. Deactivating the Job's Workload makes Kueue evict and suspend it and keeps
        # it out of the queue; reactivating requeues it, and Kueue resumes it once admitted.
        job_uid = ((self.read("Job", namespace, name) or {}).get("metadata") or {}).get("uid")
        workloads = self.custom.list_namespaced_custom_object(KUEUE_GROUP, KUEUE_VERSION, namespace, KUEUE_WORKLOADS)
        owned = [w for w in workloads.get("items", [])
                 if any(o.get("uid") == job_uid for o in w["metadata"].get("ownerReferences") or [])]
        if not owned:
            raise NotReadyYet(f"Kueue has no Workload for Job {namespace}/{name} yet")
        for workload in owned:
            self.custom.patch_namespaced_custom_object(
                KUEUE_GROUP, KUEUE_VERSION, namespace, KUEUE_WORKLOADS, workload["metadata"]["name"],
                {"spec": {"active": not suspend}},
            )
        self.batch.patch_namespaced_job(name, namespace, mark)

    def failed_pod(self, namespace: str, job_name: str) -> tuple[int | None, str | None]:
        """Exit code and termination message of the most recently terminated container of a Job."""
        pods = self.core.list_namespaced_pod(namespace, label_selector=f"job-name={job_name}").items
        latest: tuple[Any, int | None, str | None] | None = None
        for pod in pods:
            for cs in pod.status.container_statuses or []:
                term = cs.state.terminated if cs.state else None
                if term is None or term.exit_code == 0:
                    continue
                if latest is None or (term.finished_at and latest[0] and term.finished_at > latest[0]):
                    latest = (term.finished_at, term.exit_code, term.message)
        return (latest[1], latest[2]) if latest else (None, None)

    def stranded_pods(self, namespace: str, job_name: str) -> tuple[str, ...]:
        """Live pods of a Job created before its latest pod failure (see `stranded_pods`)."""
        return stranded_pods(self.job_pods(namespace, job_name))

    def delete_pods(self, namespace: str, names: tuple[str, ...]) -> None:
        """Delete pods with their grace period (SIGTERM first); one already gone is fine."""
        for name in names:
            try:
                self.core.delete_namespaced_pod(name, namespace, _preload_content=False)
            except ApiException as exc:
                if exc.status != 404:
                    raise

    def job_pods(self, namespace: str, job_name: str) -> list[dict[str, Any]]:
        """The pods of a Job (as dicts): one list serves `not_starting`, `stranded_pods` and `disrupted_pods`."""
        pods = _json(self.core.list_namespaced_pod(namespace, label_selector=f"job-name={job_name}",
                                                   _preload_content=False))
        return list(pods.get("items") or [])

    def pod_not_starting(self, namespace: str, job_name: str) -> PodNotStarting | None:
        """The oldest pod of a Job that cannot start (see `not_starting`)."""
        return not_starting(self.job_pods(namespace, job_name))

    def pod_creation_refused(self, namespace: str, job: JobState) -> PodNotStarting | None:
        """Why the API server refuses to create the pods of a Job that has none: the Job controller's
        latest `FailedCreate` Event on it (a Pod Security or admission policy, a ResourceQuota)."""
        selector = (f"involvedObject.kind=Job,involvedObject.name={job.name},"
                    f"reason={POD_CREATION_REFUSED}")
        if job.uid:
            selector += f",involvedObject.uid={job.uid}"
        events = _json(self.core.list_namespaced_event(namespace, field_selector=selector,
                                                       _preload_content=False))

        def when(event: dict[str, Any]) -> str:
            return str(event.get("lastTimestamp") or event.get("eventTime") or event.get("firstTimestamp") or "")

        latest = max(events.get("items") or [], key=when, default=None)
        if latest is None:
            return None
        return PodNotStarting(pod=job.name, reason=POD_CREATION_REFUSED, message=str(latest.get("message") or ""),
                              since=job.created)

    def delete_job(self, namespace: str, name: str) -> None:
        """Delete a Job and (in the background) its pods; one already gone is fine."""
        try:
            self.batch.delete_namespaced_job(name, namespace, propagation_policy="Background",
                                             _preload_content=False)
        except ApiException as exc:
            if exc.status != 404:
                raise

    def running_trainings(self, namespace: str, except_training: str) -> int:
        """Training Jobs of other trainings in the namespace that are neither finished nor suspended.

        `except_training` is a training's `iclora.dev/training` label value (ChildNames.training_label).
        """
        selector = (f"{LABEL_COMPONENT}=training,{LABEL_MANAGED_BY}={MANAGED_BY},"
                    f"{LABEL_TRAINING}!={except_training}")
        jobs = _json(self.batch.list_namespaced_job(namespace, label_selector=selector, _preload_content=False))
        running = 0
        for job in jobs.get("items") or []:
            state = job_state(job, "")
            running += not (state.complete or state.failed or state.suspended)
        return running

    # --- the trainings --------------------------------------------------------------------
    def patch_training_status(self, namespace: str, name: str, status: dict[str, Any]) -> str | None:
        """Merge-patch a training's status subresource; its new resourceVersion, None if it is gone."""
        try:
            response = self.custom.patch_namespaced_custom_object_status(
                API_GROUP, API_VERSION, namespace, PLURAL, name, {"status": status}, _preload_content=False)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return _json(response)["metadata"]["resourceVersion"]

    def post_event(self, involved: dict[str, Any], type_: str, reason: str, message: str) -> None:
        """A core/v1 Event about a training (what `kubectl describe` and the tests list)."""
        meta = involved["metadata"]
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "metadata": {"name": _event_name(meta["name"]), "namespace": meta["namespace"]},
            "involvedObject": {"apiVersion": involved["apiVersion"], "kind": involved["kind"],
                               "namespace": meta["namespace"], "name": meta["name"], "uid": meta["uid"],
                               "resourceVersion": meta.get("resourceVersion")},
            "type": type_, "reason": reason, "message": message,
            "source": {"component": EVENT_SOURCE}, "reportingComponent": EVENT_SOURCE,
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        }
        try:
            self.core.create_namespaced_event(meta["namespace"], event, _preload_content=False)
        except ApiException as exc:
            # An Event is a courtesy: losing one (namespace terminating, quota) must not fail a reconcile.
            log.warning("could not post event %s on %s/%s: %s", reason, meta["namespace"], meta["name"], exc.reason)

    def secret_annotation(self, namespace: str, name: str, key: str) -> str | None:
        """One annotation of a Secret (None: no such Secret or annotation)."""
        secret = self.read("Secret", namespace, name)
        return None if secret is None else (secret["metadata"].get("annotations") or {}).get(key)

    def secret_data(self, namespace: str, name: str) -> dict[str, str] | None:
        secret = self.read("Secret", namespace, name)
        if secret is None:
            return None
        return {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}


def _event_name(involved: str) -> str:
    """<involved object>.<16 hex>, its name cut so that the whole stays a DNS subdomain (<= 253)."""
    suffix = f".{secrets.token_hex(8)}"
    return involved[:DNS_SUBDOMAIN_MAX - len(suffix)].rstrip("-.") + suffix


def pod_problem(pod: dict[str, Any]) -> PodNotStarting | None:
    """Why a pending pod does not start (a waiting container first, then the scheduler), else None."""
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    if meta.get("deletionTimestamp") or status.get("phase") not in (None, "Pending"):
        return None
    name, since = meta.get("name", ""), meta.get("creationTimestamp") or ""
    for cs in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
        waiting = (cs.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason")
        if reason and reason not in STARTING_REASONS:
            return PodNotStarting(name, reason, waiting.get("message") or reason, since)
    for cond in status.get("conditions") or []:
        if (cond.get("type"), cond.get("status"), cond.get("reason")) == ("PodScheduled", "False", "Unschedulable"):
            return PodNotStarting(name, "Unschedulable", cond.get("message") or "no node fits the pod", since)
    return None


def not_starting(pods: list[dict[str, Any]]) -> PodNotStarting | None:
    """The oldest pod that cannot start: unschedulable, or a container waiting for a reason other
    than being created (ImagePullBackOff, CreateContainerConfigError, ...)."""
    found: PodNotStarting | None = None
    for pod in pods:
        problem = pod_problem(pod)
        if problem is not None and (found is None or problem.since < found.since):
            found = problem
    return found


def disrupted_pods(pods: list[dict[str, Any]]) -> tuple[PodDisruption, ...]:
    """Failed pods with the DisruptionTarget condition whose trainer did not exit PREEMPTED, oldest first.

    The Job's podFailurePolicy retries such pods without counting them (a node's DiskPressure
    eviction, a scratch volume past its sizeLimit, a lost node): the operator counts them against
    the profile's maxDisruptions. A pod that exited PREEMPTED wrote its checkpoint before it stopped
    (scheduler preemption, drain): it lost nothing and is not counted.
    """
    found = []
    for pod in pods:
        meta, status = pod.get("metadata") or {}, pod.get("status") or {}
        if status.get("phase") != "Failed":
            continue
        cond = next((c for c in status.get("conditions") or []
                     if c.get("type") == "DisruptionTarget" and c.get("status") == "True"), None)
        if cond is None:
            continue
        ended = [(cs.get("state") or {}).get("terminated") or {} for cs in status.get("containerStatuses") or []
                 if cs.get("name") == CONTAINER]
        if any(t.get("exitCode") in PREEMPTED_EXIT_CODES for t in ended):
            continue
        message = status.get("message") or cond.get("message") or ""
        at = max([str(t.get("finishedAt")) for t in ended if t.get("finishedAt")]
                 or [str(meta.get("creationTimestamp") or "")])
        found.append(PodDisruption(str(meta.get("name") or ""), str(cond.get("reason") or "DisruptionTarget"),
                                   str(message), at))
    return tuple(sorted(found, key=lambda d: (d.at, d.pod)))


def job_summary(job: Any) -> dict[str, Any]:
    """The few fields of a Job that decisions read; what the in-memory index keeps (not the template)."""
    meta = job.get("metadata") or {}
    status = job.get("status") or {}
    annotations = meta.get("annotations") or {}
    return {
        "metadata": {
            "name": meta.get("name"),
            "uid": meta.get("uid"),
            "creationTimestamp": meta.get("creationTimestamp"),
            "labels": dict(meta.get("labels") or {}),
            "annotations": {k: v for k, v in annotations.items() if k == SUSPENDED_BY_USER},
        },
        "spec": {"suspend": bool((job.get("spec") or {}).get("suspend")),
                 # Pods at once: a multi-node training is a gang (stranded_pods).
                 "parallelism": (job.get("spec") or {}).get("parallelism") or 1},
        "status": {
            "active": status.get("active") or 0,
            "ready": status.get("ready") or 0,
            "succeeded": status.get("succeeded") or 0,
            "failed": status.get("failed") or 0,
            "conditions": [
                {k: c.get(k) for k in ("type", "status", "reason", "message")}
                for c in status.get("conditions") or []
            ],
        },
    }


def stranded_pods(pods: list[dict[str, Any]]) -> tuple[str, ...]:
    """Names of the live pods created before the latest failure of a pod beside them (pod dicts).

    A multi-node training is one gang: when a rank's pod fails, the Job controller replaces that
    index only, and the other ranks sit in a collective with a peer that is gone (NCCL until the
    process-group timeout). Those older live pods are the ones to restart; pods created after the
    failure are the replacements and stay. Pods being deleted (by a gang restart, a suspend) are
    neither restarted nor failures: a restart's own deletions never trigger another one.
    """
    def finished(pod: dict[str, Any]) -> str:
        times = [str(((cs.get("state") or {}).get("terminated") or {}).get("finishedAt") or "")
                 for cs in (pod.get("status") or {}).get("containerStatuses") or []]
        return max([t for t in times if t] or [str((pod.get("metadata") or {}).get("creationTimestamp") or "")])

    failed = [finished(p) for p in pods if (p.get("status") or {}).get("phase") == "Failed"
              and not (p.get("metadata") or {}).get("deletionTimestamp")]
    if not failed:
        return ()
    latest = max(failed)
    return tuple(sorted(
        str(meta.get("name")) for p in pods
        if (meta := p.get("metadata") or {}) and not meta.get("deletionTimestamp")
        and (p.get("status") or {}).get("phase") in ("Pending", "Running")
        and str(meta.get("creationTimestamp") or "") < latest
    ))


def job_state(job: dict[str, Any], uid: str) -> JobState:
    """The decision-relevant summary of a batch/v1 Job object (as a dict)."""
    meta = job.get("metadata") or {}
    spec = job.get("spec") or {}
    status = job.get("status") or {}
    conds = {c.get("type"): c for c in status.get("conditions") or [] if c.get("status") == "True"}
    failed = conds.get("Failed")
    return JobState(
        name=meta.get("name", ""),
        owned=(meta.get("labels") or {}).get(LABEL_UID) == uid,
        suspended=bool(spec.get("suspend")),
        active=int(status.get("active") or 0),
        ready=int(status.get("ready") or 0),
        succeeded=int(status.get("succeeded") or 0),
        failed_pods=int(status.get("failed") or 0),
        parallelism=int(spec.get("parallelism") or 1),
        uid=meta.get("uid") or "",
        created=meta.get("creationTimestamp") or "",
        complete="Complete" in conds,
        failed=failed is not None,
        failure_reason=failed.get("reason") if failed else None,
        failure_message=failed.get("message") if failed else None,
        suspended_by_user=(meta.get("annotations") or {}).get(SUSPENDED_BY_USER) == "true",
    )


def install_crds(api_client: Any, crds: list[dict[str, Any]], timeout: float = 30.0) -> None:
    """Create CRDs (existing ones are kept) and wait until the API server serves them."""
    import time

    ext = client.ApiextensionsV1Api(api_client)
    for crd in crds:
        try:
            ext.create_custom_resource_definition(crd)
        except ApiException as exc:
            if exc.status != 409:
                raise
    deadline = time.monotonic() + timeout
    for crd in crds:
        name = crd["metadata"]["name"]
        while True:
            conds = ext.read_custom_resource_definition(name).status.conditions or []
            if any(c.type == "Established" and c.status == "True" for c in conds):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"CRD {name} not established after {timeout:.0f} s")
            time.sleep(0.2)
    # Established is not yet served: until the API server's storage for a new resource is
    # initialised, lists and watches answer 429 ("storage is (re)initializing"). Wait for a list.
    custom = client.CustomObjectsApi(api_client)
    for crd in crds:
        spec = crd["spec"]
        version = next(v["name"] for v in spec["versions"] if v.get("served", True))
        while True:
            try:
                custom.list_cluster_custom_object(spec["group"], version, spec["names"]["plural"], limit=1)
                break
            except ApiException as exc:
                if exc.status not in (404, 429, 503) or time.monotonic() > deadline:
                    raise
            time.sleep(0.2)
