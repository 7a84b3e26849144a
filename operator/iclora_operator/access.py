"""What one run may touch in the platform's object store, and the session policy that says so.

Pure functions, like the renderers: typed inputs, a plain document out, no clock, no I/O.
The operator asks the store's STS for a session limited by `session_policy` (AssumeRole with an
inline policy; `adapters.objectstore.StsIssuer`) and hands only that session to the run's pods.

A run may read, write and delete objects under its own prefix
(`<store.prefix>/<namespace>/<name>/<uid>/`) and list only there; it may read (never write) the
profile's base model when that comes from the platform's store without credentials of its own.
Everything else in the bucket (other runs, the billing ledger under `store.ledgerPrefix`, datasets
and models of others) is outside the policy, so the store refuses it (AccessDenied).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from iclora_api.contract import split_s3_uri

POLICY_VERSION = "2012-10-17"
# AWS refuses inline session policies over 2048 characters (packed); SeaweedFS and MinIO accept
# more, but the operator holds every store to AWS's limit, so a run that works on one works on all.
SESSION_POLICY_MAX = 2048
# What a run does with its own objects: read, write (single and multipart), delete (checkpoint
# rotation, a stale result.json), and give up an interrupted multipart upload.
RUN_OBJECT_ACTIONS = ("s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload",
                      "s3:ListMultipartUploadParts")


@dataclass(frozen=True)
class ReadOnly:
    """An object, or a folder when `key` ends in `/`, a run may read (a base-model source)."""

    bucket: str
    key: str

    @classmethod
    def of(cls, uri: str) -> ReadOnly:
        bucket, key = split_s3_uri(uri)
        return cls(bucket, key)


@dataclass(frozen=True)
class RunAccess:
    """Where a run may write (`bucket`/`prefix`, None: nowhere in this store) and what it may only read."""

    bucket: str | None
    prefix: str | None
    reads: tuple[ReadOnly, ...] = ()

    def __post_init__(self) -> None:
        if (self.bucket is None) != (self.prefix is None):
            raise ValueError("RunAccess: bucket and prefix go together")
        if self.prefix is not None and not self.prefix.strip("/"):
            # An empty prefix would be the whole bucket: exactly what scoping must never give a run.
            raise ValueError("RunAccess.prefix: a run's prefix must not be empty (it would be the whole bucket)")
        if self.bucket is None and not self.reads:
            raise ValueError("RunAccess: grants nothing (no prefix to write, nothing to read)")


@dataclass(frozen=True)
class Session:
    """A temporary session the store's STS issued for one run, and the store it talks to."""

    access_key: str
    secret_key: str = field(repr=False)
    session_token: str = field(repr=False)
    expires_at: datetime  # timezone-aware UTC
    endpoint: str
    region: str | None = None

    @property
    def expiry(self) -> str:
        """RFC 3339, UTC, as the Secrets' annotation carries it."""
        return self.expires_at.strftime("%Y-%m-%dT%H:%M:%SZ")


def _object_arn(bucket: str, key: str) -> str:
    return f"arn:aws:s3:::{bucket}/{key}"


def _bucket_arn(bucket: str) -> str:
    return f"arn:aws:s3:::{bucket}"


def session_policy(access: RunAccess) -> dict[str, Any]:
    """The inline session policy of one run: its own prefix read/write, listing only there, and
    read-only access to `access.reads` (each an object and the folder of that name, or a folder)."""
    statements: list[dict[str, Any]] = []
    if access.bucket is not None and access.prefix is not None:
        prefix = access.prefix.strip("/")
        statements += [
            {"Sid": "RunObjects", "Effect": "Allow", "Action": list(RUN_OBJECT_ACTIONS),
             "Resource": [_object_arn(access.bucket, f"{prefix}/*")]},
            {"Sid": "RunListing", "Effect": "Allow", "Action": ["s3:ListBucket"],
             "Resource": [_bucket_arn(access.bucket)],
             "Condition": {"StringLike": {"s3:prefix": [f"{prefix}/*"]}}},
        ]
    objects: list[str] = []
    listings: dict[str, list[str]] = {}
    for read in access.reads:
        key = read.key
        if key.endswith("/") or not key:
            objects.append(_object_arn(read.bucket, f"{key}*"))
            listings.setdefault(read.bucket, []).append(f"{key}*")
        else:  # a file, or (the trainer falls back to listing `<key>/`) a folder named like one
            objects += [_object_arn(read.bucket, key), _object_arn(read.bucket, f"{key}/*")]
            listings.setdefault(read.bucket, []).append(f"{key}/*")
    if objects:
        statements.append({"Sid": "ModelObjects", "Effect": "Allow", "Action": ["s3:GetObject"],
                           "Resource": list(dict.fromkeys(objects))})
        for i, (bucket, prefixes) in enumerate(sorted(listings.items())):
            statements.append({"Sid": f"ModelListing{i}", "Effect": "Allow", "Action": ["s3:ListBucket"],
                               "Resource": [_bucket_arn(bucket)],
                               "Condition": {"StringLike": {"s3:prefix": list(dict.fromkeys(prefixes))}}})
    return {"Version": POLICY_VERSION, "Statement": statements}


def session_policy_json(access: RunAccess) -> str:
    """`session_policy` as the compact JSON STS takes; ValueError naming the rule when it is too long."""
    text = json.dumps(session_policy(access), separators=(",", ":"))
    if len(text) > SESSION_POLICY_MAX:
        raise ValueError(
            f"the run's session policy is {len(text)} characters, over STS's limit of {SESSION_POLICY_MAX} "
            f"(the run prefix {access.prefix!r} and the model sources are too long: shorten the training's "
            "name or the profile's model paths)")
    return text


def session_name(namespace: str, uid: str) -> str:
    """RoleSessionName of a run's session: what audit logs (CloudTrail, the store's) show.

    STS allows 2-64 characters of [A-Za-z0-9_+=,.@-]: the namespace (a DNS label, <= 63) cut to
    leave room for the uid's first 8 characters, which tell runs apart."""
    return f"{namespace[:64 - 9 - 7]}.iclora.{uid[:8]}"[:64]
