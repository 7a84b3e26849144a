"""The billing ledger's pure logic: when decide asks for a record, what it holds, write-once, sums.

The real write to S3 is tested against the local store in tests/cluster/test_billing_ledger.py.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from iclora_api.contract import Artifacts, PreflightResult, Result
from iclora_api.profile import TrainingProfileSpec
from iclora_api.validation import validate_spec
from iclora_operator.ledger import LedgerRecord, billing_record, ledger_key, record_keys, summarize, write_once
from iclora_operator.reconcile.decide import Action, decide
from iclora_operator.reconcile.observed import JobState, Observed

NOW = datetime(2026, 11, 24, 12, 0, 0, tzinfo=UTC)
SPEC = validate_spec({"trainingDataUrl": "https://e/d.zip", "numberOfSteps": 500})
ARTS = Artifacts(loraFile="s3://b/r/artifacts/lora.safetensors", configFile="s3://b/r/artifacts/config.json")
SUCCESS = Observed(name="t", namespace="ns", uid="u-1", generation=1, spec=SPEC, profile=TrainingProfileSpec(),
                   preflight_report=PreflightResult(ok=True, usable=3),
                   training_job=JobState(name="t-train", owned=True, complete=True),
                   result=Result(status="Succeeded", steps=500, artifacts=ARTS), artifacts_verified=True,
                   status={"startTime": "2026-11-24T11:00:00Z"})


class MemoryStore:
    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.puts = 0

    def exists(self, uri: str) -> bool:
        return uri in self.objects

    def put_bytes(self, uri: str, data: bytes, content_type: str) -> None:
        self.puts += 1
        self.objects[uri] = data


def test_decide_records_billing_exactly_when_it_bills():
    plan = decide(SUCCESS, NOW)
    assert plan.billed == 500 and Action.RECORD_BILLING in plan.actions
    # Once the billed status is written, re-deciding neither bills nor records again.
    from iclora_operator.act import status_document

    again = decide(replace(SUCCESS, status=status_document(plan.status)), NOW + timedelta(minutes=1))
    assert again.billed is None and Action.RECORD_BILLING not in again.actions
    failed = decide(replace(SUCCESS, result=None), NOW)
    assert Action.RECORD_BILLING not in failed.actions


def test_the_record_holds_what_was_billed():
    plan = decide(SUCCESS, NOW)
    record = billing_record(uid="u-1", namespace="ns", name="t", steps=500, status=plan.status, now=NOW)
    doc = json.loads(record.to_json())
    assert doc == {
        "version": 1, "uid": "u-1", "namespace": "ns", "name": "t", "steps": 500, "units": 500,
        "startTime": "2026-11-24T11:00:00Z", "completionTime": "2026-11-24T12:00:00Z",
        "artifacts": {"loraFile": ARTS.lora_file, "configFile": ARTS.config_file},
        "recordedAt": "2026-11-24T12:00:00Z",
    }
    assert LedgerRecord.model_validate(doc) == record
    assert record_keys(record)[0] == ledger_key("2026-11", "u-1") == "ledger/2026-11/u-1.json"


def test_a_record_is_written_once_per_uid_even_across_a_month_end():
    store = MemoryStore()
    first = LedgerRecord(uid="u", namespace="a", name="t", steps=10, units=100, completion_time="2026-11-30T23:59:59Z")
    assert write_once(store, "bkt", first)
    assert not write_once(store, "bkt", first)  # a retry
    # A restart that decides the completion again, in the next month: still the one record.
    retry = first.model_copy(update={"completion_time": "2026-12-01T00:00:05Z"})
    assert not write_once(store, "bkt", retry)
    assert list(store.objects) == ["s3://bkt/ledger/2026-11/u.json"] and store.puts == 1
    january = LedgerRecord(uid="v", namespace="a", name="t", steps=10, units=100,
                           completion_time="2027-01-02T00:00:00Z")
    assert record_keys(january) == ("ledger/2027-01/v.json", "ledger/2026-12/v.json")


def test_summaries_are_per_namespace_and_count_a_uid_once():
    def rec(uid: str, ns: str, units: int) -> LedgerRecord:
        return LedgerRecord(uid=uid, namespace=ns, name=uid, steps=units, units=units,
                            completion_time="2026-11-01T00:00:00Z")

    records = [rec("1", "b", 100), rec("2", "a", 150), rec("3", "b", 300), rec("3", "b", 300)]
    assert [(t.namespace, t.trainings, t.units) for t in summarize(records)] == [("a", 1, 150), ("b", 2, 400)]
    assert [(t.namespace, t.units) for t in summarize(records, "a")] == [("a", 150)]


def test_billing_report_takes_a_month_as_yyyy_mm():
    from iclora_operator.commands_billing import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    assert parser.parse_args(["billing", "report", "--month", "2026-11", "--json"]).month == "2026-11"
    with pytest.raises(SystemExit):
        parser.parse_args(["billing", "report", "--month", "2026-13"])
