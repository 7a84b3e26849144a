"""The reconcile's pacing: when a tick may skip, which copies are stale, what the ticker revisits."""

from __future__ import annotations

import time

import pytest

from iclora_operator.settings import OperatorSettings


@pytest.mark.parametrize(
    ("phase", "due"),
    [("Pending", None), ("Queued", None), ("Training", 15.0), ("Preflight", 30.0), ("Suspended", 60.0)],
)
def test_quiet_tick_due_by_phase(phase, due):
    # Waiting phases depend on things no index shows (a free slot, a Secret): every tick looks.
    # Training polls its progress from the store, Preflight its report; the rest resync now and then.
    assert OperatorSettings(reconcile_interval_seconds=5.0).quiet_tick_due(phase) == due


def test_explicit_poll_and_resync_settings_win():
    s = OperatorSettings(reconcile_interval_seconds=1.0, progress_poll_seconds=7.0, resync_seconds=30.0,
                         report_poll_seconds=2.0)
    assert s.quiet_tick_due("Training") == 7.0 and s.quiet_tick_due("Suspended") == 30.0
    assert s.quiet_tick_due("Preflight") == 2.0


def test_a_tick_skips_only_while_nothing_changed_and_no_poll_is_due():
    from iclora_operator.runtime import Memo

    memo = Memo(settings=OperatorSettings(), kube=None, metrics=None)  # type: ignore[arg-type]
    assert not memo.quiet("uid", ("k",), 60.0)  # never reconciled: reconcile
    memo.reconciled("uid", ("k",))
    assert memo.quiet("uid", ("k",), 60.0)
    assert not memo.quiet("uid", ("other job state",), 60.0)  # news from the Job index
    assert not memo.quiet("uid", ("k",), None)  # waiting phases always look
    memo.last_reconciled["uid"] = (("k",), time.monotonic() - 61.0)
    assert not memo.quiet("uid", ("k",), 60.0)  # the poll is due
    memo.forget("uid")
    assert "uid" not in memo.last_reconciled


def _memo():
    from iclora_operator.runtime import Memo

    return Memo(settings=OperatorSettings(), kube=None, metrics=None)  # type: ignore[arg-type]


def test_a_copy_older_than_our_own_status_write_is_stale_until_the_echo_arrives():
    # Without this, the ticker would act on the copy from before our write and create twice.
    memo = _memo()
    assert memo.fresh("uid", "100")  # nothing written yet
    memo.expect("uid", "105")
    assert not memo.fresh("uid", "100")
    assert not memo.fresh("uid", None)
    assert memo.fresh("uid", "107")  # newer than our write (kopf may batch events): includes it
    assert memo.fresh("uid", "100")  # the expectation is cleared once met


def test_a_lost_echo_does_not_block_a_training_forever(monkeypatch):
    from iclora_operator import runtime

    memo = _memo()
    memo.expect("uid", "105")
    later = time.monotonic() + runtime.ECHO_DEADLINE_SECONDS + 1
    monkeypatch.setattr(runtime.time, "monotonic", lambda: later)
    assert memo.fresh("uid", "100")


@pytest.mark.parametrize(("seen", "expected", "reached"), [
    ("7", "7", True), ("10", "9", True), ("9", "10", False), (None, "1", False),
    ("opaque-b", "opaque-a", False), ("opaque-a", "opaque-a", True),
])
def test_resource_versions_compare_as_numbers_only_when_they_are_numbers(seen, expected, reached):
    from iclora_operator.runtime import resource_version_reached

    assert resource_version_reached(seen, expected) is reached


def test_status_patch_sets_changed_fields_and_deletes_dropped_ones():
    from iclora_operator.act import status_patch

    current = {"phase": "Training", "progress": {"step": 3}, "failure": {"reason": "X"}}
    assert status_patch(current, dict(current)) == {}
    assert status_patch(current, {"phase": "Training", "progress": {"step": 4}}) == {
        "progress": {"step": 4}, "failure": None}


def test_the_ticker_revisits_unfinished_trainings_not_backing_off_nor_being_deleted():
    import kopf

    memo = _memo()

    def body(uid, phase=None, deleting=False):
        meta = {"uid": uid, "name": uid, "namespace": "ns"}
        if deleting:
            meta["deletionTimestamp"] = "2026-11-30T00:00:00Z"
        return kopf.Body({"metadata": meta, "status": {"phase": phase} if phase else {}})

    for b in (body("new"), body("running", "Training"), body("done", "Succeeded"), body("failed", "Failed"),
              body("gone", "Training", deleting=True), body("retry", "Pending")):
        memo.track(b)
    memo.retry_later("retry", 60.0)
    assert sorted(b.metadata.uid for b in memo.tick_candidates()) == ["new", "running"]
    assert "done" not in memo.bodies and "failed" not in memo.bodies  # finished: not kept in memory
    memo.track(body("running", "Succeeded"))
    assert memo.latest("running") is None
    memo.track(body("running", "Training"))
    memo.forget("running")
    assert sorted(b.metadata.uid for b in memo.tick_candidates()) == ["new"]


def test_a_job_with_active_pods_not_ready_is_looked_at_between_polls():
    # A pod that never starts changes no Job: while one may be stuck, the ticker reconciles (and
    # lists the Job's pods) every other tick instead of waiting for the phase's poll.
    import kopf

    from iclora_operator.adapters.kube import job_summary
    from iclora_operator.render import LABEL_UID
    from iclora_operator.runtime import waits_for_pods

    body = kopf.Body({"metadata": {"name": "t", "namespace": "ns", "uid": "u"}})

    def index(active, ready, succeeded=0, failed=0, suspend=False):
        job = {"metadata": {"name": "t-preflight", "labels": {LABEL_UID: "u"}}, "spec": {"suspend": suspend},
               "status": {"active": active, "ready": ready, "succeeded": succeeded, "failed": failed}}
        return {("ns", "t-preflight"): [job_summary(job)]}

    assert waits_for_pods(body, index(1, 0))
    assert not waits_for_pods(body, index(1, 1))
    # No pod at all: the API server may refuse to create them (its Events say why).
    assert waits_for_pods(body, index(0, 0))
    assert not waits_for_pods(body, index(0, 0, succeeded=1))
    assert not waits_for_pods(body, index(0, 0, failed=1))
    assert not waits_for_pods(body, index(0, 0, suspend=True))  # Kueue or spec.suspend: no pods expected
    assert not waits_for_pods(body, {})


def _waiting_and_running(memo):
    """Two Training trainings: `waits` has a Job without pods, `runs` one whose pod is ready."""
    import kopf

    from iclora_operator.adapters.kube import job_summary
    from iclora_operator.render import LABEL_UID
    from iclora_operator.runtime import Indexes

    jobs = {}
    for uid, active, ready in (("waits", 0, 0), ("runs", 1, 1)):
        memo.track(kopf.Body({"metadata": {"name": uid, "namespace": "ns", "uid": uid},
                              "status": {"phase": "Training"}}))
        job = {"metadata": {"name": f"{uid}-train", "labels": {LABEL_UID: uid}},
               "status": {"active": active, "ready": ready}}
        jobs[("ns", f"{uid}-train")] = [job_summary(job)]
    memo.indexes = Indexes(jobs=jobs, profiles={}, trainings={})
    return jobs


def test_tick_due_is_tighter_only_while_a_job_waits_for_pods():
    from iclora_operator.runtime import tick_due

    memo = _memo()
    memo.settings = OperatorSettings(reconcile_interval_seconds=5.0, progress_poll_seconds=60.0)
    jobs = _waiting_and_running(memo)
    assert tick_due(memo.settings, memo.latest("waits"), jobs) == 10.0
    assert tick_due(memo.settings, memo.latest("runs"), jobs) == 60.0


def test_the_ticker_visits_a_training_whose_job_waits_for_pods_before_its_poll_is_due():
    # The ticker itself must use the tighter rule: filtering with the phase's poll alone would never
    # pick a training whose Job waits for pods before that poll, whatever the visit then decides.
    import asyncio

    from iclora_operator.runtime import observable_key, tick_forever

    memo = _memo()
    memo.settings = OperatorSettings(reconcile_interval_seconds=0.05, progress_poll_seconds=60.0)
    jobs = _waiting_and_running(memo)
    for uid in ("waits", "runs"):  # both reconciled a second ago, nothing changed since
        memo.last_reconciled[uid] = (observable_key(memo.latest(uid), jobs), time.monotonic() - 1.0)
    visited = []

    async def run():
        ticker = asyncio.create_task(tick_forever(memo, None, 2, lambda _m, uid, _i: visited.append(uid)))
        await asyncio.sleep(0.3)
        ticker.cancel()
        await asyncio.gather(ticker, return_exceptions=True)

    asyncio.run(run())
    assert "waits" in visited
    assert "runs" not in visited  # its pods run: quiet until its progress poll (no extra API call)
