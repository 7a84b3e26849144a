"""Timer ticks: when a tick may skip the full reconcile (many trainings must not crowd out new ones)."""

from __future__ import annotations

import time

import pytest

from iclora_operator.settings import OperatorSettings


@pytest.mark.parametrize(
    ("phase", "due"),
    [("Pending", None), ("Queued", None), ("Training", 15.0), ("Preflight", 60.0), ("Suspended", 60.0)],
)
def test_quiet_tick_due_by_phase(phase, due):
    # Waiting phases depend on things no index shows (a free slot, a Secret): every tick looks.
    # Training polls its progress from the store; the rest resync now and then.
    assert OperatorSettings(reconcile_interval_seconds=5.0).quiet_tick_due(phase) == due


def test_explicit_poll_and_resync_settings_win():
    s = OperatorSettings(reconcile_interval_seconds=1.0, progress_poll_seconds=7.0, resync_seconds=30.0)
    assert s.quiet_tick_due("Training") == 7.0 and s.quiet_tick_due("Preflight") == 30.0


def test_a_tick_skips_only_while_nothing_changed_and_no_poll_is_due():
    from iclora_operator.handlers import Memo

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
