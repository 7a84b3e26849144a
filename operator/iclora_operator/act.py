"""One reconcile of one training: observe, decide, carry out the plan, write the status once.

`reconcile` creates the children the plan names, posts its Events and writes the status as
one JSON merge patch: the plan's typed status (`MaskedICLoraTrainingStatus`) becomes JSON
here, at the edge to the API server (`status_document`). `reconcile_guarded` is the entry
point of both paths (watch events, the ticker's `tick`): one reconcile per training at a
time, on a copy that includes our own last write, errors kept with the training.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from iclora_api.v1alpha1 import MaskedICLoraTrainingStatus
from iclora_operator.adapters.kube import ChildConflict, ChildRejected, NotReadyYet, api_message
from iclora_operator.adapters.objectstore import CredentialsNotIssued, ObjectStoreUnavailable
from iclora_operator.ledger import billing_record, write_once
from iclora_operator.observe import observe
from iclora_operator.reconcile.decide import Action, Plan, decide
from iclora_operator.reconcile.observed import JobState
from iclora_operator.render import (
    RunContext,
    model_access,
    model_store_secret,
    render_headless_service,
    render_model_session_secret,
    render_model_store_secret,
    render_preflight_job,
    render_rank_network_policy,
    render_store_secret,
    render_training_job,
    run_access,
)
from iclora_operator.runtime import Indexes, Memo, RetryLater, observable_key, tick_due

log = logging.getLogger(__name__)
EVENT_MESSAGE_MAX = 1024


def _act(memo: Memo, plan: Plan, ctx: RunContext, kueue: bool) -> None:
    kube = memo.kube
    for action in plan.actions:
        if action == Action.CREATE_PREFLIGHT:
            _issue_store_sessions(memo, ctx)
            kube.create(render_preflight_job(ctx))
        elif action == Action.CREATE_TRAINING:
            # A fresh session for the training (the preflight's may be hours old, e.g. after a queue).
            _issue_store_sessions(memo, ctx)
            if model_store_secret(ctx) == ctx.names.model_store_secret and model_access(ctx) is None:
                kube.create(render_model_store_secret(ctx, _model_store_credentials(memo, ctx)))
            if ctx.profile.nodes > 1:
                kube.create(render_headless_service(ctx))
                if (policy := render_rank_network_policy(ctx)) is not None:
                    kube.create(policy)
            kube.create(render_training_job(ctx, suspend=plan.create_suspended))
        elif action in (Action.SUSPEND_TRAINING, Action.RESUME_TRAINING):
            try:
                kube.set_job_suspend(ctx.namespace, ctx.names.training, action == Action.SUSPEND_TRAINING, kueue)
            except NotReadyYet as exc:
                raise RetryLater(str(exc), delay=2) from exc
        elif action == Action.RENEW_STORE_CREDENTIALS:
            _issue_store_sessions(memo, ctx)
        elif action == Action.RECORD_BILLING:
            _record_billing(memo, plan, ctx)
        elif action in (Action.DELETE_PREFLIGHT, Action.DELETE_TRAINING):
            job = ctx.names.preflight if action == Action.DELETE_PREFLIGHT else ctx.names.training
            kube.delete_job(ctx.namespace, job)
        elif action == Action.RESTART_RANKS:
            kube.delete_pods(ctx.namespace, plan.restart_pods)


def _issue_store_sessions(memo: Memo, ctx: RunContext) -> None:
    """Issue the run's scoped store sessions (STS, `iclora_operator.access`) into its Secrets:
    `<name>-store` (its own prefix; the base model read-only when that is in the platform's store)
    and, for a run that writes elsewhere, `<name>-model-credentials` (the model, read-only).
    The platform's key never leaves the operator; without a session nothing is created."""
    issuer = memo.issuer()
    ends: list[datetime] = []
    try:
        if (access := run_access(ctx)) is not None:
            issued = issuer.issue(access, ctx.namespace, ctx.uid)
            memo.kube.apply_secret(render_store_secret(ctx, issued))
            ends.append(issued.expires_at)
        if (access := model_access(ctx)) is not None:
            issued = issuer.issue(access, ctx.namespace, ctx.uid)
            memo.kube.apply_secret(render_model_session_secret(ctx, issued))
            ends.append(issued.expires_at)
    except CredentialsNotIssued as exc:
        raise RetryLater(f"no store credentials for the run: {exc}", delay=30) from exc
    if ends:
        memo.credentials_issued(ctx.uid, min(ends))
        log.info("%s/%s: scoped store session issued, valid until %s", ctx.namespace, ctx.name,
                 min(ends).isoformat())


def _record_billing(memo: Memo, plan: Plan, ctx: RunContext) -> None:
    """The ledger's record of this billed run, in the operator's bucket; kept if already there."""
    cfg = memo.settings.store
    creds = cfg.operator_credentials()
    record = billing_record(uid=ctx.uid, namespace=ctx.namespace, name=ctx.name,
                            steps=ctx.spec.number_of_steps, status=plan.status)
    try:
        if write_once(memo.store(creds), cfg.bucket, record, cfg.ledger_prefix):
            log.info("%s/%s: ledger record of %d billing units written", ctx.namespace, ctx.name, record.units)
    except ObjectStoreUnavailable as exc:
        # Not billed until recorded: the status that bills waits for the ledger.
        raise RetryLater(f"billing ledger not writable: {exc}", delay=10) from exc


def _model_store_credentials(memo: Memo, ctx: RunContext) -> dict[str, str]:
    """AWS_* of the profile's model store: its credentials Secret (operator's namespace). Never the
    platform's key: a model in the platform's store is read with a session (`model_access`)."""
    model = ctx.profile.model
    ref = model.credentials_secret_ref if model else None
    if ref is None:
        raise ValueError("the model store's credentials: the profile names no model.credentialsSecretRef "
                         "(a model in the platform's store is read with the run's scoped session)")
    ns = memo.settings.operator_namespace
    data = memo.kube.secret_data(ns, ref.name)
    if data is None:
        # The admin's to fix; nothing is created meanwhile, and the training waits in its phase.
        raise RetryLater(f"Secret {ns}/{ref.name} named by the TrainingProfile's model.credentialsSecretRef "
                         "does not exist", delay=30)
    return data


def status_document(status: MaskedICLoraTrainingStatus) -> dict[str, Any]:
    """The status as written to the resource: camelCase JSON, fields without a value left out."""
    return status.model_dump(mode="json", by_alias=True, exclude_none=True)


def status_patch(current: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
    """The JSON merge patch that turns `current` status into `status` (empty: nothing to write)."""
    patch: dict[str, Any] = {key: None for key in current if key not in status}  # null deletes
    patch.update({key: value for key, value in status.items() if current.get(key) != value})
    return patch


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
                if (limit and not obs.kueue_managed
                        and memo.kube.running_trainings(ns, ctx.names.training_label) >= limit):
                    plan = decide(replace(obs, slot_available=False), now, memo.settings.stale_progress_seconds)
            _act(memo, plan, ctx, obs.kueue_managed)
        except ChildConflict as exc:
            conflict = JobState(name=exc.name, owned=False)
            plan = decide(replace(obs, preflight_job=conflict, training_job=None), now)
        except ChildRejected as exc:
            # Terminal, decided like any other observation: Failed/ChildRejected with the API
            # server's message, its Warning Event, and the one status write below.
            plan = decide(replace(obs, rejected=exc.rejection), now, memo.settings.stale_progress_seconds)
        finally:
            if lock:
                lock.release()
    for event in plan.events:
        memo.kube.post_event(body, event.type, event.reason, event.message[:EVENT_MESSAGE_MAX])
    if plan.billed:
        memo.metrics.billing_units.labels(ns).inc(plan.billed)
    status = status_document(plan.status)
    memo.metrics.phases.set(meta.uid, ns, status["phase"])
    memo.metrics.reconciles.labels("ok").inc()
    patch = status_patch(dict(body.get("status") or {}), status)
    if patch:
        version = memo.kube.patch_training_status(ns, meta.name, patch)
        if version is not None:
            memo.expect(meta.uid, version)
    memo.reconciled(meta.uid, observable_key(body, indexes.jobs, status))


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
        if memo.quiet(uid, observable_key(body, indexes.jobs), due):
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
    except Exception as exc:
        # Bad input or a bug must not stop the operator or other trainings; the ticker retries.
        memo.metrics.reconciles.labels("error").inc()
        memo.retry_later(uid, memo.settings.reconcile_interval_seconds)
        log.exception("%s/%s: reconcile failed", body.metadata.namespace, body.metadata.name)
        # Never a silent retry loop: the training shows why it does not move (once per message).
        if isinstance(exc, ApiException):
            message = f"the API server answered {exc.status}: {api_message(exc)}; retrying"
        else:
            message = f"reconcile failed ({type(exc).__name__}: {exc}); retrying"
        if memo.warn_once(uid, message):
            memo.kube.post_event(body, "Warning", "ReconcileError", message[:EVENT_MESSAGE_MAX])
    finally:
        lock.release()


def tick(memo: Memo, uid: str, indexes: Indexes) -> None:
    """The ticker's visit of one due training (`runtime.tick_forever`), on a pool thread."""
    # The latest copy, not the one the tick was planned on: the watch may have delivered the
    # echo of a write (and cleared its expectation) since; the planned copy predates that write.
    body = memo.latest(uid)
    if body is None:
        return  # deleted meanwhile
    # The same rule the ticker chose this training by (tighter while a Job waits for pods).
    reconcile_guarded(body, memo, indexes, tick_due(memo.settings, body, indexes.jobs), wait=False)
