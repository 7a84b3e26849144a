"""kopf handlers: thin. Parse, observe, decide, act, write status once.

Every decision is made by `reconcile.decide.decide`; this module only gathers
observations (Kubernetes objects from kopf's in-memory indexes, reports from
the object store) and carries out the plan.

Two paths lead to one reconcile: every watch event of a training (`kopf.on.event`), and
one operator-wide ticker that revisits unfinished trainings. Neither uses kopf's
per-object bookkeeping: the reconcile is level-based (it reads the world, not a diff),
so kopf's finalizer (per-object timers require one), handler-progress and
last-handled-configuration annotations would only cost writes: three PATCHes per
training on a busy API server, and a resource that cannot be deleted while the
operator is down.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, TypeVar

import kopf
from pydantic import BaseModel

from iclora_api.conditions import Phase
from iclora_api.contract import (
    PREFLIGHT_KEY,
    PROGRESS_KEY,
    RESULT_KEY,
    PreflightResult,
    Progress,
    Result,
    run_prefix,
    split_s3_uri,
)
from iclora_api.profile import PROFILE_PLURAL, TrainingProfileSpec, profile_spec_from_object
from iclora_api.v1alpha1 import API_GROUP, API_VERSION, PLURAL
from iclora_api.validation import SpecInvalid, validate_spec
from iclora_operator.adapters.kube import ChildConflict, Kube, NotReadyYet, job_state, job_summary
from iclora_operator.adapters.objectstore import Credentials, ObjectStore, ObjectStoreUnavailable
from iclora_operator.metrics import Metrics
from iclora_operator.reconcile.decide import TERMINAL_PHASES, Action, Plan, decide
from iclora_operator.reconcile.observed import JobState, Observed
from iclora_operator.render import (
    KUEUE_QUEUE_LABEL,
    LABEL_COMPONENT,
    LABEL_MANAGED_BY,
    LABEL_TRAINING,
    MANAGED_BY,
    ChildNames,
    RunContext,
    StoreLocation,
    render_headless_service,
    render_preflight_job,
    render_store_secret,
    render_training_job,
)
from iclora_operator.settings import OperatorSettings

log = logging.getLogger(__name__)
ModelT = TypeVar("ModelT", bound=BaseModel)
EVENT_MESSAGE_MAX = 1024
# How long a reconcile waits for the watch to show its own status write before it trusts
# an older copy again (the watch may lag under a burst; a lost write must not block forever).
ECHO_DEADLINE_SECONDS = 60.0


class RetryLater(RuntimeError):
    """Something outside the training is not ready (store down, profile broken): try again later."""

    def __init__(self, message: str, delay: float):
        super().__init__(message)
        self.delay = delay


@dataclass(frozen=True)
class Indexes:
    """kopf's in-memory indexes (live mappings, the same objects for the operator's lifetime)."""

    jobs: kopf.Index
    profiles: kopf.Index
    trainings: kopf.Index


def resource_version_reached(seen: str | None, expected: str) -> bool:
    """Whether an object at `seen` already includes the write that returned `expected`.

    Kubernetes resourceVersions are opaque strings; the API server backed by etcd hands out
    increasing integers (comparable since Kubernetes 1.35). Anything else compares for equality.
    """
    if seen is None:
        return False
    if seen == expected:
        return True
    if seen.isdigit() and expected.isdigit():
        return int(seen) >= int(expected)
    return False


def _phase(body: kopf.Body) -> str | None:
    return (body.get("status") or {}).get("phase")


@dataclass
class Memo:
    """Long-lived state of one operator process, passed through kopf's memo (no globals)."""

    settings: OperatorSettings
    kube: Kube
    metrics: Metrics
    stores: dict[Credentials, ObjectStore] = field(default_factory=dict)
    namespace_locks: dict[str, threading.Lock] = field(default_factory=dict)
    reports: dict[tuple[str, str], BaseModel] = field(default_factory=dict)
    misses: dict[tuple[str, str], float] = field(default_factory=dict)
    last_reconciled: dict[str, tuple[Any, float]] = field(default_factory=dict)
    # The latest copy of each training the watch delivered (what the ticker revisits).
    bodies: dict[str, kopf.Body] = field(default_factory=dict)
    object_locks: dict[str, threading.Lock] = field(default_factory=dict)
    # uid -> (resourceVersion our last status write returned, deadline to see it by).
    expected: dict[str, tuple[str, float]] = field(default_factory=dict)
    retry_at: dict[str, float] = field(default_factory=dict)
    warned: dict[str, str] = field(default_factory=dict)
    indexes: Indexes | None = None
    ticker: asyncio.Task[None] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __copy__(self) -> Memo:
        # kopf hands each resource a shallow copy of the operator's memo; the ticker and the
        # event handlers must share one (an attribute set on a copy would stay there).
        return self

    def quiet(self, uid: str, key: Any, due: float | None) -> bool:
        """Whether a reconcile may skip: what it observes is unchanged and no poll is due."""
        if due is None:
            return False
        with self.lock:
            last = self.last_reconciled.get(uid)
        return last is not None and last[0] == key and time.monotonic() - last[1] < due

    def reconciled(self, uid: str, key: Any) -> None:
        with self.lock:
            self.last_reconciled[uid] = (key, time.monotonic())

    def expect(self, uid: str, resource_version: str) -> None:
        """Our status write returned this version: copies older than it are stale."""
        with self.lock:
            self.expected[uid] = (resource_version, time.monotonic() + ECHO_DEADLINE_SECONDS)

    def fresh(self, uid: str, resource_version: str | None) -> bool:
        """Whether a copy of the training includes our last status write (or waited long enough)."""
        with self.lock:
            pending = self.expected.get(uid)
            if pending is None:
                return True
            want, deadline = pending
            if resource_version_reached(resource_version, want) or time.monotonic() > deadline:
                del self.expected[uid]
                return True
            return False

    def object_lock(self, uid: str) -> threading.Lock:
        with self.lock:
            return self.object_locks.setdefault(uid, threading.Lock())

    def track(self, body: kopf.Body) -> None:
        """Keep the latest copy of an unfinished training; a finished one is never ticked again."""
        uid = body.metadata.uid
        with self.lock:
            if _phase(body) in TERMINAL_PHASES:
                self.bodies.pop(uid, None)
            else:
                self.bodies[uid] = body

    def latest(self, uid: str) -> kopf.Body | None:
        with self.lock:
            return self.bodies.get(uid)

    def tick_candidates(self) -> list[kopf.Body]:
        """Trainings the ticker may revisit (`track` keeps only unfinished ones): not being deleted,
        not backing off."""
        now = time.monotonic()
        with self.lock:
            return [
                body for uid, body in self.bodies.items()
                if not body.metadata.get("deletionTimestamp") and self.retry_at.get(uid, 0.0) <= now
            ]

    def retry_later(self, uid: str, delay: float) -> None:
        with self.lock:
            self.retry_at[uid] = time.monotonic() + delay

    def warn_once(self, uid: str, message: str) -> bool:
        """True the first time this message is seen for this training (an Event, not a flood)."""
        with self.lock:
            if self.warned.get(uid) == message:
                return False
            self.warned[uid] = message
            return True

    def clear_warning(self, uid: str) -> None:
        """After a good reconcile: a problem that comes back gets its Event again."""
        with self.lock:
            self.warned.pop(uid, None)

    def store(self, creds: Credentials) -> ObjectStore:
        with self.lock:
            if creds not in self.stores:
                self.stores[creds] = ObjectStore(creds)
            return self.stores[creds]

    def cached(self, uid: str, key: str, read: Callable[[], dict[str, Any] | None],
               model: type[ModelT], poll_every: float = 0.0) -> ModelT | None:
        """A stage report of one run, read from the store until it exists, then kept.

        While it is missing, it is looked for at most every `poll_every` seconds.
        """
        now = time.monotonic()
        with self.lock:
            hit = self.reports.get((uid, key))
            missed_at = self.misses.get((uid, key))
        if hit is not None:
            return hit  # type: ignore[return-value]
        if missed_at is not None and now - missed_at < poll_every:
            return None
        raw = read()
        if raw is None:
            with self.lock:
                self.misses[(uid, key)] = now
            return None
        value = model.model_validate(raw)
        with self.lock:
            self.reports[(uid, key)] = value
        return value

    def forget(self, uid: str) -> None:
        with self.lock:
            for table in (self.reports, self.misses):
                for key in [k for k in table if k[0] == uid]:
                    del table[key]
            for per_uid in (self.last_reconciled, self.bodies, self.object_locks, self.expected, self.retry_at,
                            self.warned):
                per_uid.pop(uid, None)

    def namespace_lock(self, namespace: str) -> threading.Lock:
        with self.lock:
            return self.namespace_locks.setdefault(namespace, threading.Lock())


def _first(index: kopf.Index, key: Any) -> Any | None:
    for value in index.get(key, []):
        return value
    return None


# --- observation --------------------------------------------------------------------------


def _store_for(memo: Memo, body: kopf.Body, spec: Any) -> tuple[StoreLocation, Credentials, str]:
    """Where this run writes, the operator's credentials for it, and the pods' Secret name."""
    ns, name, uid = body.metadata.namespace, body.metadata.name, body.metadata.uid
    cfg = memo.settings.store
    default_creds = Credentials(cfg.endpoint_for_operator, cfg.access_key.get_secret_value(),
                                cfg.secret_key.get_secret_value(), cfg.region)
    output = spec.output if spec is not None else None
    if output is None:
        loc = StoreLocation(cfg.endpoint, cfg.bucket, run_prefix(cfg.prefix, ns, name, uid), cfg.region)
        return loc, default_creds, f"{name}-store"
    bucket, prefix = split_s3_uri(output.url)
    secret_name = output.credentials_secret_ref.name if output.credentials_secret_ref else f"{name}-store"
    data = memo.kube.secret_data(ns, secret_name) if output.credentials_secret_ref else None
    if output.credentials_secret_ref and data is None:
        raise SecretMissing(f"Secret {ns}/{secret_name} named by spec.output.credentialsSecretRef does not exist")
    if data:
        endpoint = data.get("AWS_ENDPOINT_URL") or "https://s3.amazonaws.com"
        region = data.get("AWS_REGION") or cfg.region
        creds = Credentials(endpoint, data.get("AWS_ACCESS_KEY_ID", ""), data.get("AWS_SECRET_ACCESS_KEY", ""),
                            region)
    else:
        endpoint, region, creds = cfg.endpoint, cfg.region, default_creds
    loc = StoreLocation(endpoint, bucket, run_prefix(prefix, ns, name, uid), region)
    return loc, creds, secret_name


class SecretMissing(LookupError):
    """A Secret named by the spec does not exist in the resource's own namespace."""


def _job(memo: Memo, jobs: kopf.Index, namespace: str, name: str, uid: str) -> JobState | None:
    obj = _first(jobs, (namespace, name))
    if obj is None:
        return None
    state = job_state(obj, uid)
    if state.failed and state.owned:
        code, message = memo.kube.failed_pod(namespace, name)
        state = replace(state, exit_code=code, termination_message=message)
    return state


def _slot_available(memo: Memo, namespace: str, name: str, created: str, jobs: kopf.Index,
                    trainings: kopf.Index) -> bool:
    limit = memo.settings.concurrency_per_namespace
    if limit <= 0:
        return True
    running = 0
    for (ns, _job_name), objs in jobs.items():
        for obj in objs:
            labels = obj["metadata"].get("labels") or {}
            if ns != namespace or labels.get(LABEL_COMPONENT) != "training":
                continue
            if labels.get(LABEL_TRAINING) == name:
                continue
            state = job_state(obj, "")
            if not (state.complete or state.failed or state.suspended):
                running += 1
    if running >= limit:
        return False
    # FIFO by creation time: an older training already waiting goes first.
    for other_created, other_name, phase in trainings.get(namespace, []):
        if other_name != name and phase == Phase.QUEUED.value and (other_created, other_name) < (created, name):
            return False
    return True


def observe(memo: Memo, body: kopf.Body, jobs: kopf.Index, profiles: kopf.Index,
            trainings: kopf.Index) -> tuple[Observed, RunContext | None]:
    meta = body.metadata
    ns, name, uid = meta.namespace, meta.name, meta.uid
    status = dict(body.get("status") or {})
    base = Observed(name=name, namespace=ns, uid=uid, generation=int(meta.get("generation") or 1),
                    spec=None, status=status)
    try:
        spec = validate_spec(dict(body.get("spec") or {}))
    except SpecInvalid as exc:
        return replace(base, spec_errors=tuple(exc.errors)), None
    profile_name = spec.profile_ref.name if spec.profile_ref else memo.settings.default_profile
    raw_profile = _first(profiles, profile_name)
    profile: TrainingProfileSpec | None = None
    if raw_profile is not None:
        try:
            profile = profile_spec_from_object(raw_profile)
        except ValueError as exc:
            raise RetryLater(f"TrainingProfile {profile_name} is invalid: {exc}", delay=60) from exc
    obs = replace(base, spec=spec, profile_name=profile_name, profile=profile)
    if profile is None:
        return obs, None
    try:
        loc, creds, secret = _store_for(memo, body, spec)
    except SecretMissing as exc:
        return replace(obs, blocked=str(exc)), None
    labels = dict(meta.labels or {})
    kueue = bool(memo.settings.kueue_enabled and labels.get(KUEUE_QUEUE_LABEL))
    ctx = RunContext(
        name=name, namespace=ns, uid=uid, spec=spec, profile=profile, store=loc, store_secret=secret,
        labels=labels, trainer_command=tuple(memo.settings.trainer_command),
        allow_private_dataset_hosts=memo.settings.allow_private_dataset_hosts, kueue_enabled=kueue,
    )
    if status.get("phase") in TERMINAL_PHASES:
        return obs, ctx
    store = memo.store(creds)
    preflight_job = _job(memo, jobs, ns, ctx.names.preflight, uid)
    training_job = _job(memo, jobs, ns, ctx.names.training, uid)
    result = progress = None
    verified = None
    # Reports are written once at the end of a stage: cache them, they never change. A
    # resource seen for the first time (no status yet) cannot have one: skip the read.
    report = None
    if status or preflight_job is not None:
        # A running preflight writes its report just before it ends: look less often meanwhile.
        running = preflight_job is not None and not (preflight_job.complete or preflight_job.failed)
        report = memo.cached(uid, PREFLIGHT_KEY, lambda: store.read_json(loc.uri(PREFLIGHT_KEY)),
                             PreflightResult, memo.settings.report_poll_seconds if running else 0.0)
    if training_job is not None:
        raw = store.read_json(loc.uri(PROGRESS_KEY))
        progress = Progress.model_validate(raw) if raw else None
        if training_job.complete or training_job.failed:
            result = memo.cached(uid, RESULT_KEY, lambda: store.read_json(loc.uri(RESULT_KEY)), Result)
            if result is not None and result.status == "Succeeded" and result.artifacts is not None:
                uris = result.artifacts.model_dump(exclude_none=True).values()
                verified = all(store.exists(u) for u in uris)
    slot = True
    if training_job is None and not kueue:
        slot = _slot_available(memo, ns, name, meta.get("creationTimestamp") or "", jobs, trainings)
    obs = replace(obs, preflight_job=preflight_job, training_job=training_job, preflight_report=report,
                  progress=progress, result=result, artifacts_verified=verified, slot_available=slot,
                  kueue_managed=kueue)
    return obs, ctx


# --- actions ------------------------------------------------------------------------------


def _act(memo: Memo, plan: Plan, ctx: RunContext, kueue: bool) -> None:
    kube = memo.kube
    for action in plan.actions:
        if action == Action.CREATE_PREFLIGHT:
            if ctx.store_secret == ctx.names.store_secret:
                cfg = memo.settings.store
                kube.create(render_store_secret(ctx, cfg.access_key.get_secret_value(),
                                                cfg.secret_key.get_secret_value()))
            kube.create(render_preflight_job(ctx))
        elif action == Action.CREATE_TRAINING:
            if ctx.profile.nodes > 1:
                kube.create(render_headless_service(ctx))
            kube.create(render_training_job(ctx, suspend=plan.create_suspended))
        elif action in (Action.SUSPEND_TRAINING, Action.RESUME_TRAINING):
            try:
                kube.set_job_suspend(ctx.namespace, ctx.names.training, action == Action.SUSPEND_TRAINING, kueue)
            except NotReadyYet as exc:
                raise RetryLater(str(exc), delay=2) from exc


def status_patch(current: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
    """The JSON merge patch that turns `current` status into `status` (empty: nothing to write)."""
    patch: dict[str, Any] = {key: None for key in current if key not in status}  # null deletes
    patch.update({key: value for key, value in status.items() if current.get(key) != value})
    return patch


def _observable_key(body: kopf.Body, jobs: kopf.Index, status: dict[str, Any] | None = None) -> tuple[Any, ...]:
    """What a reconcile reads from the cluster for this training: spec generation, labels, status, Jobs.

    Job changes reach the index from the watch, so a changed key means there is news. After a
    status write, the key is taken with the written status: the watch's echo of it is no news.
    """
    meta = body.metadata
    ns, names = meta.namespace, ChildNames.of(meta.name)
    return (
        meta.get("generation"),
        dict(meta.get("labels") or {}),
        dict(body.get("status") or {}) if status is None else status,
        repr(_first(jobs, (ns, names.preflight))),
        repr(_first(jobs, (ns, names.training))),
    )


def reconcile(body: kopf.Body, memo: Memo, indexes: Indexes) -> None:
    """Observe, decide, act, post the plan's Events and write the status (one merge patch)."""
    now = datetime.now(UTC)
    meta = body.metadata
    ns = meta.namespace
    try:
        obs, ctx = observe(memo, body, indexes.jobs, indexes.profiles, indexes.trainings)
    except ObjectStoreUnavailable as exc:
        memo.metrics.reconciles.labels("store-unavailable").inc()
        raise RetryLater(f"object store unavailable: {exc}", delay=10) from exc
    plan = decide(obs, now, memo.settings.stale_progress_seconds)
    if ctx is not None and plan.actions:
        lock = memo.namespace_lock(ns) if Action.CREATE_TRAINING in plan.actions else None
        try:
            if lock:
                lock.acquire()
                # The index may not show a Job another thread created a moment ago: under the
                # namespace's lock, count running training Jobs from the API before adding one.
                limit = memo.settings.concurrency_per_namespace
                if limit and not obs.kueue_managed and memo.kube.running_trainings(ns, ctx.name) >= limit:
                    plan = decide(replace(obs, slot_available=False), now, memo.settings.stale_progress_seconds)
            _act(memo, plan, ctx, obs.kueue_managed)
        except ChildConflict as exc:
            conflict = JobState(name=exc.name, owned=False)
            plan = decide(replace(obs, preflight_job=conflict, training_job=None), now)
        finally:
            if lock:
                lock.release()
    for event in plan.events:
        memo.kube.post_event(body, event.type, event.reason, event.message[:EVENT_MESSAGE_MAX])
    if plan.billed:
        memo.metrics.billing_units.labels(ns).inc(plan.billed)
    memo.metrics.phases.set(meta.uid, ns, plan.status["phase"])
    memo.metrics.reconciles.labels("ok").inc()
    patch = status_patch(dict(body.get("status") or {}), plan.status)
    if patch:
        version = memo.kube.patch_training_status(ns, meta.name, patch)
        if version is not None:
            memo.expect(meta.uid, version)
    memo.reconciled(meta.uid, _observable_key(body, indexes.jobs, plan.status))


def reconcile_guarded(body: kopf.Body, memo: Memo, indexes: Indexes, due: float | None, *, wait: bool) -> None:
    """One reconcile of one training at a time, on a copy that includes our own last write.

    Errors stay with the training: logged, an Event once per distinct message, retried later.
    """
    uid = body.metadata.uid
    lock = memo.object_lock(uid)
    if not lock.acquire(blocking=wait):
        return  # the other path is reconciling it right now
    try:
        if body.metadata.get("deletionTimestamp"):
            return  # being deleted: children go with their owner references
        if not memo.fresh(uid, body.metadata.get("resourceVersion")):
            memo.metrics.reconciles.labels("stale").inc()
            return
        if memo.quiet(uid, _observable_key(body, indexes.jobs), due):
            memo.metrics.reconciles.labels("skipped").inc()
            return
        reconcile(body, memo, indexes)
        memo.clear_warning(uid)
    except RetryLater as exc:
        memo.metrics.reconciles.labels("retry").inc()
        memo.retry_later(uid, exc.delay)
        log.warning("%s/%s: %s (retrying in %.0f s)", body.metadata.namespace, body.metadata.name, exc, exc.delay)
        if memo.warn_once(uid, str(exc)):
            memo.kube.post_event(body, "Warning", "Retrying", str(exc)[:EVENT_MESSAGE_MAX])
    except Exception:
        # Bad input or a bug must not stop the operator or other trainings; the ticker retries.
        memo.metrics.reconciles.labels("error").inc()
        memo.retry_later(uid, memo.settings.reconcile_interval_seconds)
        log.exception("%s/%s: reconcile failed", body.metadata.namespace, body.metadata.name)
    finally:
        lock.release()


# --- registration -------------------------------------------------------------------------


def _index_jobs(namespace: str, name: str, body: kopf.Body, **_: Any) -> dict[tuple[str, str], dict]:
    return {(namespace, name): job_summary(body)}


def _index_profiles(name: str, body: kopf.Body, **_: Any) -> dict[str, dict]:
    return {name: {"spec": dict(body.spec)}}


def _index_trainings(namespace: str, name: str, meta: kopf.Meta, status: kopf.Status,
                     **_: Any) -> dict[str, tuple[str, str, str]]:
    return {namespace: (meta.get("creationTimestamp") or "", name, status.get("phase") or "")}


def _on_event(event: dict[str, Any], body: kopf.Body, memo: Memo, iclora_jobs: kopf.Index,
              iclora_profiles: kopf.Index, iclora_trainings: kopf.Index, **_: Any) -> None:
    """Every watch event of a training: creation, spec or label change, our own status echo, deletion."""
    uid = body.metadata.uid
    if event.get("type") == "DELETED":
        # Children go with their owner references; artifacts stay (they are the user's).
        memo.metrics.phases.forget(uid)
        memo.forget(uid)
        return
    if memo.indexes is None:
        memo.indexes = Indexes(iclora_jobs, iclora_profiles, iclora_trainings)
    memo.track(body)
    # An event reconciles unless it shows nothing new (the echo of our own status write).
    reconcile_guarded(body, memo, memo.indexes, math.inf, wait=True)


def _tick(uid: str, memo: Memo, indexes: Indexes) -> None:
    # The latest copy, not the one the tick was planned on: the watch may have delivered the
    # echo of a write (and cleared its expectation) since; the planned copy predates that write.
    body = memo.latest(uid)
    if body is None:
        return  # deleted meanwhile
    reconcile_guarded(body, memo, indexes, memo.settings.quiet_tick_due(_phase(body)), wait=False)


async def _tick_forever(memo: Memo, executor: Any, threads: int) -> None:
    """Revisit unfinished trainings every interval: Job changes, progress polls, free slots, retries.

    One task for the whole operator (not a kopf timer per training): a tick that can observe
    nothing new is decided here without a thread, so many quiet trainings cost next to nothing.
    The due ones use at most `threads` of the shared pool at once, so that watch events (a new
    training) never queue behind a whole tick of old ones.
    """
    loop = asyncio.get_running_loop()
    interval = memo.settings.reconcile_interval_seconds
    slots = asyncio.Semaphore(threads)

    async def tick(uid: str, indexes: Indexes) -> None:
        async with slots:
            await loop.run_in_executor(executor, _tick, uid, memo, indexes)

    while True:
        await asyncio.sleep(interval)
        indexes = memo.indexes
        if indexes is None:
            continue
        due = [body.metadata.uid for body in memo.tick_candidates()
               if not memo.quiet(body.metadata.uid, _observable_key(body, indexes.jobs),
                                 memo.settings.quiet_tick_due(_phase(body)))]
        for outcome in await asyncio.gather(*(tick(uid, indexes) for uid in due), return_exceptions=True):
            if isinstance(outcome, Exception):
                log.error("tick failed: %r", outcome)


async def _start_ticker(memo: Memo, settings: kopf.OperatorSettings, **_: Any) -> None:
    # Half of kopf's handler threads: the other half stays free for watch events.
    threads = max(1, (settings.execution.max_workers or 2) // 2)
    memo.ticker = asyncio.create_task(_tick_forever(memo, settings.execution.executor, threads),
                                      name="iclora ticker")


async def _stop_ticker(memo: Memo, **_: Any) -> None:
    if memo.ticker is not None:
        memo.ticker.cancel()
        await asyncio.gather(memo.ticker, return_exceptions=True)
        memo.ticker = None


def build_registry(settings: OperatorSettings) -> kopf.OperatorRegistry:
    """All handlers and indexes of the operator, registered into a fresh kopf registry."""
    registry = kopf.OperatorRegistry()
    crd = (API_GROUP, API_VERSION, PLURAL)
    kopf.index("batch", "v1", "jobs", labels={LABEL_MANAGED_BY: MANAGED_BY}, id="iclora_jobs",
               registry=registry)(_index_jobs)
    kopf.index(API_GROUP, API_VERSION, PROFILE_PLURAL, id="iclora_profiles", registry=registry)(_index_profiles)
    kopf.index(*crd, id="iclora_trainings", registry=registry)(_index_trainings)
    kopf.on.event(*crd, id="reconcile", registry=registry)(_on_event)
    kopf.on.startup(id="ticker-start", registry=registry)(_start_ticker)
    kopf.on.cleanup(id="ticker-stop", registry=registry)(_stop_ticker)
    return registry
