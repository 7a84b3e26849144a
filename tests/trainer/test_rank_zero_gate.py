"""RankZeroGate (issue 23.3): the other ranks wait for rank 0's lone work on the rendezvous store,
for as long as it makes progress, instead of in a collective whose timeout the work outlasts.

Two threads share one in-memory store here; tests/trainer/test_slow_rank0.py runs real ranks."""

from __future__ import annotations

import threading
import time

import pytest
import torch.distributed as tdist

from iclora_trainer.distributed import DistEnv, RankZeroGate, RankZeroStalled
from iclora_trainer.preemption import Preempted

pytestmark = pytest.mark.trainer

IDLE = 0.6  # the waiters' bound on rank 0's silence (collectiveTimeoutSeconds in a run)


def _gates(world: int = 2) -> list[RankZeroGate]:
    store = tdist.HashStore()
    return [RankZeroGate(store, r, world, IDLE, poll_s=0.05) for r in range(world)]


def _in_thread(fn) -> tuple[threading.Thread, dict]:
    box: dict = {}

    def body() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc

    t = threading.Thread(target=body, daemon=True)
    t.start()
    return t, box


def test_waiters_outlast_the_idle_bound_while_rank0_makes_progress():
    zero, one, two = _gates(3)

    def work() -> str:
        for _ in range(8):  # 8 x 0.2 s = 1.6 s: well past IDLE, with a beat every 0.2 s
            time.sleep(0.2)
            zero.beat()
        return "reel"

    waiters = [_in_thread(lambda g=g: g.run("validation-2", work)) for g in (one, two)]
    assert zero.run("validation-2", work) == "reel"
    for t, box in waiters:
        t.join(10)
        assert box == {"value": None}


def test_a_silent_rank0_fails_the_waiters_after_the_idle_bound():
    zero, one = _gates()
    started = time.monotonic()
    t, box = _in_thread(lambda: one.wait("startup"))
    t.join(10)
    assert isinstance(box.get("error"), RankZeroStalled)
    assert "no progress on 'startup'" in str(box["error"])
    assert IDLE <= time.monotonic() - started < IDLE + 2


def test_rank0s_failure_reaches_the_waiters_at_once():
    zero, one = _gates()
    t, box = _in_thread(lambda: one.run("final", lambda: None))

    def broken() -> None:
        raise OSError("disk full")

    with pytest.raises(OSError):
        zero.run("final", broken)
    t.join(10)
    assert isinstance(box.get("error"), RankZeroStalled)
    assert "OSError: disk full" in str(box["error"])


def test_rank0_preempted_preempts_the_waiters():
    zero, one = _gates()
    t, box = _in_thread(lambda: one.wait("startup"))
    with pytest.raises(Preempted), zero.section("startup"):
        raise Preempted("stopped by SIGTERM before the first training step")
    t.join(10)
    assert isinstance(box.get("error"), Preempted)


def test_sections_run_every_ranks_body_and_keep_their_order():
    zero, one = _gates()
    order: list[str] = []

    def rank1() -> None:
        with one.section("startup"):
            order.append("1 loads")
        order.append("1 past startup")
        one.run("validation-2", lambda: order.append("never"))
        order.append("1 past validation")

    t, box = _in_thread(rank1)
    with zero.section("startup"):
        time.sleep(0.2)
        order.append("0 prepares")
    time.sleep(0.2)
    zero.run("validation-2", lambda: order.append("0 renders"))
    t.join(10)
    assert box == {"value": None}
    assert order.index("0 prepares") < order.index("1 past startup") < order.index("0 renders")
    assert order.index("0 renders") < order.index("1 past validation") and "never" not in order


def test_confirm_returns_once_every_rank_saw_the_gate():
    zero, one, two = _gates(3)
    waiters = [_in_thread(lambda g=g: g.wait("final")) for g in (one, two)]
    time.sleep(0.1)
    zero.open("final", confirm=True)
    assert zero.store.add("final/seen", 0) == 2
    for t, box in waiters:
        t.join(10)
        assert box == {"value": None}
    # Nobody confirming: rank 0 goes on after the bound, with a warning, not an error.
    lonely, _ = _gates()
    started = time.monotonic()
    lonely.open("final", confirm=True)
    assert IDLE <= time.monotonic() - started < IDLE + 2


def test_one_rank_has_no_gate():
    gate = RankZeroGate.for_process_group(DistEnv(0, 1, 0, "127.0.0.1", 29500, 1), 5)
    assert gate.alone
    gate.beat()
    gate.wait("x")
    assert gate.run("x", lambda: 7) == 7
    with gate.section("y"):
        pass
