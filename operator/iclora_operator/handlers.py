"""kopf registration: the operator's indexes and handlers, and nothing else (thin).

Module map of the operator:

- `handlers` (here): what kopf calls. Three indexes (our Jobs, TrainingProfiles, trainings
  per namespace), one event handler per training, the ticker's start and stop.
- `runtime`: the process's long-lived state (`Memo`: caches, locks, echo suppression of our
  own status writes, back-off) and the operator-wide ticker.
- `observe`: an `Observed` (and the renderers' `RunContext`) from the indexes and adapters.
- `reconcile.decide`: the one pure decision (status and actions).
- `act`: one reconcile of one training: observe, decide, carry out, write the status once.

Two paths lead to one reconcile: every watch event of a training (`kopf.on.event`), and
one operator-wide ticker that revisits unfinished trainings. Neither uses kopf's
per-object bookkeeping: the reconcile is level-based (it reads the world, not a diff),
so kopf's finalizer (per-object timers require one), handler-progress and
last-handled-configuration annotations would only cost writes: three PATCHes per
training on a busy API server, and a resource that cannot be deleted while the
operator is down.
"""

from __future__ import annotations

import math
from typing import Any

import kopf

from iclora_api.profile import PROFILE_PLURAL
from iclora_api.v1alpha1 import API_GROUP, API_VERSION, PLURAL
from iclora_operator.act import reconcile_guarded, tick
from iclora_operator.adapters.kube import job_summary
from iclora_operator.render import LABEL_MANAGED_BY, MANAGED_BY
from iclora_operator.runtime import Indexes, Memo, start_ticker, stop_ticker
from iclora_operator.settings import OperatorSettings


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


async def _start_ticker(memo: Memo, settings: kopf.OperatorSettings, **_: Any) -> None:
    # Half of kopf's handler threads: the other half stays free for watch events.
    threads = max(1, (settings.execution.max_workers or 2) // 2)
    start_ticker(memo, settings.execution.executor, threads, tick)


async def _stop_ticker(memo: Memo, **_: Any) -> None:
    await stop_ticker(memo)


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
