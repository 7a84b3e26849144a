"""Runtime state of one operator process, and its pacing.

Holds what lives as long as the process: the `Memo` (settings, clients, the object-store
clients and report caches, per-training and per-namespace locks, the latest copy of each
unfinished training), the echo suppression of our own status writes (`Memo.expect` /
`Memo.fresh`, `observable_key`, `Memo.quiet`), back-off after errors (`RetryLater`,
`Memo.retry_later`), and the operator-wide ticker that revisits unfinished trainings
(`tick_forever`). What a visit does is passed in (`iclora_operator.act.tick`): nothing here
observes, decides or writes.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

import kopf
from pydantic import BaseModel

from iclora_operator.adapters.kube import Kube, job_state
from iclora_operator.adapters.objectstore import Credentials, ObjectStore, StsIssuer
from iclora_operator.metrics import Metrics
from iclora_operator.reconcile.decide import TERMINAL_PHASES
from iclora_operator.render import ChildNames
from iclora_operator.settings import OperatorSettings

log = logging.getLogger(__name__)
ModelT = TypeVar("ModelT", bound=BaseModel)
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


def first_indexed(index: kopf.Index, key: Any) -> Any | None:
    """The (only) value an index holds under `key`, or None."""
    for value in index.get(key, []):
        return value
    return None


def phase_of(body: kopf.Body) -> str | None:
    return (body.get("status") or {}).get("phase")


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


def observable_key(body: kopf.Body, jobs: kopf.Index, status: dict[str, Any] | None = None) -> tuple[Any, ...]:
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
        repr(first_indexed(jobs, (ns, names.preflight))),
        repr(first_indexed(jobs, (ns, names.training))),
    )


def waits_for_pods(body: kopf.Body, jobs: kopf.Index) -> bool:
    """Whether a Job of the training is active with a pod not ready (which may never start)."""
    meta = body.metadata
    names = ChildNames.of(meta.name)
    for child in (names.preflight, names.training):
        obj = first_indexed(jobs, (meta.namespace, child))
        if obj is not None and job_state(obj, meta.uid).waits_for_pods:
            return True
    return False


def tick_due(settings: OperatorSettings, body: kopf.Body, jobs: kopf.Index) -> float | None:
    """`quiet_tick_due` for this training, tighter while a Job of it waits for pods: a pod that does
    not start (or is refused) changes no Job, so its pods or Events are looked at every other tick.
    Reads the index only (no API call)."""
    due = settings.quiet_tick_due(phase_of(body))
    if due is not None and waits_for_pods(body, jobs):
        due = min(due, 2 * settings.reconcile_interval_seconds)
    return due


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
    # uid -> when the earliest of the run's scoped store sessions ends (as last issued or read).
    credentials_expiry: dict[str, datetime] = field(default_factory=dict)
    sts: StsIssuer | None = None
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
            if phase_of(body) in TERMINAL_PHASES:
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

    def issuer(self) -> StsIssuer:
        """Issues the runs' scoped store sessions, signed with the platform's key (settings.store)."""
        with self.lock:
            if self.sts is None:
                cfg = self.settings.store
                self.sts = StsIssuer(cfg.operator_credentials(), store_endpoint=cfg.endpoint,
                                     duration_seconds=cfg.credentials_duration_seconds,
                                     sts_endpoint=cfg.sts_endpoint, role_arn=cfg.sts_role_arn)
            return self.sts

    def credentials_issued(self, uid: str, expires_at: datetime) -> None:
        with self.lock:
            self.credentials_expiry[uid] = expires_at

    def credentials_expire_at(self, uid: str) -> datetime | None:
        with self.lock:
            return self.credentials_expiry.get(uid)

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
                            self.warned, self.credentials_expiry):
                per_uid.pop(uid, None)

    def namespace_lock(self, namespace: str) -> threading.Lock:
        with self.lock:
            return self.namespace_locks.setdefault(namespace, threading.Lock())


# What the ticker does for one due training, on a pool thread: (memo, uid, indexes).
Visit = Callable[[Memo, str, Indexes], None]


async def tick_forever(memo: Memo, executor: Any, threads: int, visit: Visit) -> None:
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
            await loop.run_in_executor(executor, visit, memo, uid, indexes)

    while True:
        await asyncio.sleep(interval)
        indexes = memo.indexes
        if indexes is None:
            continue
        due = [body.metadata.uid for body in memo.tick_candidates()
               if not memo.quiet(body.metadata.uid, observable_key(body, indexes.jobs),
                                 tick_due(memo.settings, body, indexes.jobs))]
        for outcome in await asyncio.gather(*(tick(uid, indexes) for uid in due), return_exceptions=True):
            if isinstance(outcome, Exception):
                log.error("tick failed: %r", outcome)


def start_ticker(memo: Memo, executor: Any, threads: int, visit: Visit) -> None:
    memo.ticker = asyncio.create_task(tick_forever(memo, executor, threads, visit), name="iclora ticker")


async def stop_ticker(memo: Memo) -> None:
    if memo.ticker is not None:
        memo.ticker.cancel()
        await asyncio.gather(memo.ticker, return_exceptions=True)
        memo.ticker = None
