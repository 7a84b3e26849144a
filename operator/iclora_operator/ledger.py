"""The billing ledger: one immutable record per billed training, in the operator's bucket.

    ledger/<YYYY-MM of completion>/<uid>.json

Written by the operator (`act`, Action.RECORD_BILLING) before the status write that bills, so
that deleting the training, a retry or an operator restart never loses or doubles a record:
the key is the training's uid and an existing record is never overwritten (check, then put;
the race of two writers is harmless, both write the record of the same uid). Read back by
`iclora billing report`, which sums units per namespace.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

LEDGER_PREFIX = "ledger"
RECORD_VERSION = 1


class LedgerRecord(BaseModel):
    """What was billed for one training (immutable once written)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True, extra="ignore")

    version: int = RECORD_VERSION
    uid: str
    namespace: str
    name: str
    steps: int = Field(ge=0)
    units: int = Field(ge=0)
    start_time: str | None = None
    completion_time: str
    artifacts: dict[str, str] = Field(default_factory=dict)
    recorded_at: str | None = None

    @property
    def month(self) -> str:
        return self.completion_time[:7]

    def to_json(self) -> bytes:
        return json.dumps(self.model_dump(mode="json", by_alias=True, exclude_none=True), sort_keys=True,
                          indent=1).encode()


def ledger_key(month: str, uid: str, prefix: str = LEDGER_PREFIX) -> str:
    return f"{prefix.strip('/')}/{month}/{uid}.json"


def previous_month(month: str) -> str:
    year, mon = (int(x) for x in month.split("-"))
    return f"{year - 1}-12" if mon == 1 else f"{year}-{mon - 1:02d}"


def record_keys(record: LedgerRecord, prefix: str = LEDGER_PREFIX) -> tuple[str, str]:
    """Where the record goes, then where a first attempt in the month before would have put it.

    A retry after a restart decides a new completion time; across a month's end that would be
    another folder, so both are checked before writing.
    """
    return ledger_key(record.month, record.uid, prefix), ledger_key(previous_month(record.month), record.uid,
                                                                   prefix)


def billing_record(*, uid: str, namespace: str, name: str, steps: int, status: Any,
                   now: datetime | None = None) -> LedgerRecord:
    """The record of a billed status (`MaskedICLoraTrainingStatus` of a Succeeded training)."""
    artifacts = status.artifacts.model_dump(mode="json", by_alias=True, exclude_none=True) if status.artifacts else {}
    recorded = (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return LedgerRecord(uid=uid, namespace=namespace, name=name, steps=steps, units=status.billing_units,
                        start_time=status.start_time, completion_time=status.completion_time or recorded,
                        artifacts=artifacts, recorded_at=recorded)


class LedgerStore(Protocol):
    """What the ledger needs of a store (the operator's ObjectStore adapter, or a test double)."""

    def exists(self, uri: str) -> bool: ...

    def put_bytes(self, uri: str, data: bytes, content_type: str) -> None: ...


def write_once(store: LedgerStore, bucket: str, record: LedgerRecord, prefix: str = LEDGER_PREFIX) -> bool:
    """Write `record` unless its uid is already in the ledger; True when this call wrote it."""
    keys = record_keys(record, prefix)
    if any(store.exists(f"s3://{bucket}/{key}") for key in keys):
        return False
    store.put_bytes(f"s3://{bucket}/{keys[0]}", record.to_json(), "application/json")
    return True


# -- reading (the `iclora billing report` side) -----------------------------------------------------


def read_records(client: Any, bucket: str, month: str | None = None,
                 prefix: str = LEDGER_PREFIX) -> list[LedgerRecord]:
    """Every record of `month` (all months when None) from a minio client; unreadable ones skipped."""
    folder = f"{prefix.strip('/')}/{month}/" if month else f"{prefix.strip('/')}/"
    records = []
    for obj in client.list_objects(bucket, prefix=folder, recursive=True):
        if not obj.object_name.endswith(".json"):
            continue
        response = client.get_object(bucket, obj.object_name)
        try:
            records.append(LedgerRecord.model_validate_json(response.read()))
        except ValueError:
            continue
        finally:
            response.close()
            response.release_conn()
    return records


@dataclass(frozen=True)
class NamespaceTotal:
    namespace: str
    trainings: int
    units: int


def summarize(records: Iterable[LedgerRecord], namespace: str | None = None) -> list[NamespaceTotal]:
    """Units and trainings per namespace, one record per uid, sorted by namespace."""
    seen: dict[str, LedgerRecord] = {}
    for r in records:
        if namespace is None or r.namespace == namespace:
            seen.setdefault(r.uid, r)
    totals: dict[str, list[int]] = {}
    for r in seen.values():
        t = totals.setdefault(r.namespace, [0, 0])
        t[0] += 1
        t[1] += r.units
    return [NamespaceTotal(ns, n, u) for ns, (n, u) in sorted(totals.items())]
