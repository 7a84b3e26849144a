"""Observation: what the operator sees of one training, gathered into an `Observed`.

Reads kopf's in-memory indexes (Jobs, TrainingProfiles, trainings per namespace), the
Secrets and failed pods a decision needs (Kubernetes adapter), and the trainer's reports
from the object store (cached in the `Memo` once final). Builds the `RunContext` the
renderers need too. Decides nothing and writes nothing.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import kopf

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
from iclora_api.objectstore import parse_endpoint
from iclora_api.profile import TrainingProfileSpec, profile_spec_from_object
from iclora_api.validation import SpecInvalid, validate_spec
from iclora_operator.adapters.kube import disrupted_pods, job_state, not_starting, stranded_pods
from iclora_operator.adapters.objectstore import Credentials
from iclora_operator.reconcile.decide import TERMINAL_PHASES
from iclora_operator.reconcile.observed import JobState, Observed
from iclora_operator.render import (
    ANNOTATION_CREDENTIALS_EXPIRE,
    KUEUE_QUEUE_LABEL,
    LABEL_COMPONENT,
    LABEL_TRAINING,
    ChildNames,
    RunContext,
    StoreLocation,
    model_access,
    run_access,
)
from iclora_operator.runtime import Memo, RetryLater, first_indexed


def _store_for(memo: Memo, body: kopf.Body, spec: Any) -> tuple[StoreLocation, Credentials, str]:
    """Where this run writes, the operator's credentials for it, and the pods' Secret name."""
    ns, name, uid = body.metadata.namespace, body.metadata.name, body.metadata.uid
    cfg = memo.settings.store
    default_creds = cfg.operator_credentials()
    output = spec.output if spec is not None else None
    if output is None:
        loc = StoreLocation(cfg.endpoint, cfg.bucket, run_prefix(cfg.prefix, ns, name, uid), cfg.region)
        return loc, default_creds, ChildNames.of(name).store_secret
    bucket, prefix = split_s3_uri(output.url)
    ref = output.credentials_secret_ref
    secret_name = ref.name if ref else ChildNames.of(name).store_secret
    data = memo.kube.secret_data(ns, secret_name) if output.credentials_secret_ref else None
    if output.credentials_secret_ref and data is None:
        raise SecretMissing(f"Secret {ns}/{secret_name} named by spec.output.credentialsSecretRef does not exist")
    if data:
        # The Secret holds the same AWS_* keys the pods get as variables (AWS's endpoint if none).
        creds = Credentials.from_env(data, region=cfg.region)
        try:
            parse_endpoint(creds.endpoint)
        except ValueError as exc:  # the tenant fixes the Secret; the training waits, saying what is wrong
            raise SecretMissing(f"Secret {ns}/{secret_name} (spec.output.credentialsSecretRef): {exc}") from None
        endpoint, region = creds.endpoint, creds.region or cfg.region
    else:
        endpoint, region, creds = cfg.endpoint, cfg.region, default_creds
    loc = StoreLocation(endpoint, bucket, run_prefix(prefix, ns, name, uid), region)
    return loc, creds, secret_name


class SecretMissing(LookupError):
    """A Secret named by the spec does not exist in the resource's own namespace, or cannot be used."""


# How long a new Job may go without pods before its Events are read (the Job controller's first sync).
POD_CREATION_GRACE_SECONDS = 3.0


def _age_seconds(created: str) -> float:
    """Seconds since an RFC 3339 timestamp (0 when absent or unreadable)."""
    try:
        return (datetime.now(UTC) - datetime.fromisoformat(created.replace("Z", "+00:00"))).total_seconds()
    except ValueError:
        return 0.0


def _job(memo: Memo, jobs: kopf.Index, namespace: str, name: str, uid: str) -> JobState | None:
    obj = first_indexed(jobs, (namespace, name))
    if obj is None:
        return None
    state = job_state(obj, uid)
    if state.failed and state.owned:
        code, message = memo.kube.failed_pod(namespace, name)
        state = replace(state, exit_code=code, termination_message=message)
    elif state.lacks_pods:
        # No pod at all some seconds after the Job was created: one Event list (only in this
        # state) says whether the API server refuses them (Pod Security, admission, quota).
        if _age_seconds(state.created) > POD_CREATION_GRACE_SECONDS:
            state = replace(state, not_starting=memo.kube.pod_creation_refused(namespace, state))
    elif state.running:
        # One pod list per reconcile of a running Job: the failed pods its podFailurePolicy ignored
        # stay (until the Job goes), so disruptions are counted whenever it is looked at.
        pods = memo.kube.job_pods(namespace, name)
        state = replace(state, disruptions=disrupted_pods(pods),
                        # A pod of the active Job is not ready: why does it not start?
                        not_starting=not_starting(pods) if state.waits_for_pods else None)
        if state.may_have_stranded_pods:
            # A rank's pod failed in a multi-node Job: which of its peers still wait for it (gang restart)?
            state = replace(state, stranded=stranded_pods(pods))
    return state


def _parse_time(text: str | None) -> datetime | None:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None
    except ValueError:
        return None


def _credentials_due(memo: Memo, ctx: RunContext, *jobs: JobState | None) -> bool:
    """Whether the run's scoped store sessions need renewing: one of its Jobs may still start pods
    (active or suspended) and the earliest session ends within `credentials_renew_before_seconds`,
    or a Secret holding one is gone. The expiry is remembered; the Secrets are read once after a restart."""
    secrets = [name for name, access in ((ctx.names.store_secret, run_access(ctx)),
                                         (ctx.names.model_store_secret, model_access(ctx))) if access is not None]
    if not secrets or not any(j is not None and j.owned and not (j.complete or j.failed) for j in jobs):
        return False
    expires = memo.credentials_expire_at(ctx.uid)
    if expires is None:
        stamps = [_parse_time(memo.kube.secret_annotation(ctx.namespace, name, ANNOTATION_CREDENTIALS_EXPIRE))
                  for name in secrets]
        if any(stamp is None for stamp in stamps):
            return True  # a Secret is gone (or not ours to read): issue it again
        expires = min(stamp for stamp in stamps if stamp is not None)
        memo.credentials_issued(ctx.uid, expires)
    left = (expires - datetime.now(UTC)).total_seconds()
    return left < memo.settings.store.credentials_renew_before_seconds


def _slot_available(memo: Memo, namespace: str, name: str, created: str, jobs: kopf.Index,
                    trainings: kopf.Index) -> bool:
    limit = memo.settings.concurrency_per_namespace
    if limit <= 0:
        return True
    running = 0
    own_label = ChildNames.of(name).training_label
    for (ns, _job_name), objs in jobs.items():
        for obj in objs:
            labels = obj["metadata"].get("labels") or {}
            if ns != namespace or labels.get(LABEL_COMPONENT) != "training":
                continue
            if labels.get(LABEL_TRAINING) == own_label:
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
    raw_profile = first_indexed(profiles, profile_name)
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
        trusted_dataset_networks=memo.settings.trusted_networks(),
    )
    if status.get("phase") in TERMINAL_PHASES:
        return obs, ctx
    store = memo.store(creds)
    preflight_job = _job(memo, jobs, ns, ctx.names.preflight, uid)
    training_job = _job(memo, jobs, ns, ctx.names.training, uid)
    legacy = f"{name}-train"  # operators up to 0.1.0 named every training Job so (valid up to 63)
    if training_job is None and legacy != ctx.names.training and len(legacy) <= 63:
        found = _job(memo, jobs, ns, legacy, uid)
        if found is not None and found.owned:  # a run started before an upgrade: keep driving its Job
            training_job = found
            ctx = replace(ctx, names=replace(ctx.names, training=legacy))
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
    # A started run whose Job is gone (its ttlSecondsAfterFinished passed while the operator was away):
    # how it ended is in result.json.
    job_gone = training_job is None and bool(status.get("startTime"))
    if training_job is not None:
        raw = store.read_json(loc.uri(PROGRESS_KEY))
        progress = Progress.model_validate(raw) if raw else None
    if job_gone or (training_job is not None and (training_job.complete or training_job.failed)):
        result = memo.cached(uid, RESULT_KEY, lambda: store.read_json(loc.uri(RESULT_KEY)), Result)
        if result is not None and result.status == "Succeeded" and result.artifacts is not None:
            uris = result.artifacts.model_dump(exclude_none=True).values()
            verified = all(store.exists(u) for u in uris)
    slot = True
    if training_job is None and not kueue:
        slot = _slot_available(memo, ns, name, meta.get("creationTimestamp") or "", jobs, trainings)
    obs = replace(obs, preflight_job=preflight_job, training_job=training_job, preflight_report=report,
                  progress=progress, result=result, artifacts_verified=verified, slot_available=slot,
                  kueue_managed=kueue,
                  store_credentials_due=_credentials_due(memo, ctx, preflight_job, training_job))
    return obs, ctx
