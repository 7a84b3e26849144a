"""The session policy of one run (pure): its own prefix, the model read-only, nothing else."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from iclora_operator.access import (
    SESSION_POLICY_MAX,
    ReadOnly,
    RunAccess,
    session_name,
    session_policy,
    session_policy_json,
)
from iclora_operator.render import model_access, run_access
from tests.helpers import render_ctx

PREFIX = "runs/team-a/t/uid-1"


def test_a_run_may_touch_its_prefix_and_list_only_there():
    policy = session_policy(RunAccess("iclora", PREFIX))
    assert policy == {"Version": "2012-10-17", "Statement": [
        {"Sid": "RunObjects", "Effect": "Allow",
         "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload",
                    "s3:ListMultipartUploadParts"],
         "Resource": ["arn:aws:s3:::iclora/runs/team-a/t/uid-1/*"]},
        {"Sid": "RunListing", "Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": ["arn:aws:s3:::iclora"],
         "Condition": {"StringLike": {"s3:prefix": ["runs/team-a/t/uid-1/*"]}}},
    ]}


def test_nothing_outside_the_prefix_is_named():
    text = session_policy_json(RunAccess("iclora", PREFIX + "/"))
    # Every object resource is under the run's prefix, with a separator: `uid-1-other` is not it.
    resources = [r for st in json.loads(text)["Statement"] for r in st["Resource"]]
    assert all(r == "arn:aws:s3:::iclora" or r.startswith(f"arn:aws:s3:::iclora/{PREFIX}/") for r in resources)
    assert "ledger" not in text and "Deny" not in text and '"*"' not in text


def test_model_sources_are_read_only():
    access = RunAccess("iclora", PREFIX, (ReadOnly.of("s3://iclora/models/ltx.safetensors"),
                                          ReadOnly.of("s3://weights/gemma/")))
    statements = {st["Sid"]: st for st in session_policy(access)["Statement"]}
    assert statements["ModelObjects"]["Action"] == ["s3:GetObject"]
    assert statements["ModelObjects"]["Resource"] == ["arn:aws:s3:::iclora/models/ltx.safetensors",
                                                      "arn:aws:s3:::iclora/models/ltx.safetensors/*",
                                                      "arn:aws:s3:::weights/gemma/*"]
    listings = [st for sid, st in statements.items() if sid.startswith("ModelListing")]
    assert [(st["Resource"], st["Condition"]["StringLike"]["s3:prefix"]) for st in listings] == [
        (["arn:aws:s3:::iclora"], ["models/ltx.safetensors/*"]), (["arn:aws:s3:::weights"], ["gemma/*"])]


@pytest.mark.parametrize(("access", "rule"), [
    (lambda: RunAccess("iclora", ""), "must not be empty"),
    (lambda: RunAccess("iclora", "/"), "must not be empty"),
    (lambda: RunAccess(None, PREFIX), "go together"),
    (lambda: RunAccess(None, None), "grants nothing"),
])
def test_an_access_that_would_grant_the_bucket_or_nothing_is_refused(access, rule):
    with pytest.raises(ValueError, match=rule):
        access()


def test_a_policy_over_stss_limit_is_refused_naming_the_rule():
    long = RunAccess("iclora", "runs/" + "n" * 2000)
    with pytest.raises(ValueError, match=f"over STS's limit of {SESSION_POLICY_MAX}"):
        session_policy_json(long)


def test_the_longest_names_still_fit():
    # A 63-character namespace, a 253-character name, a uid, and a model in the platform's bucket.
    prefix = f"runs/{'n' * 63}/{'a' * 253}/0d6c2b1e-8a8f-4a55-9a57-8f3b3c7e2a11"
    access = RunAccess("iclora", prefix, (ReadOnly.of("s3://iclora/models/ltx-2.3/ltx-2.3-22b.safetensors"),
                                          ReadOnly.of("s3://iclora/models/ltx-2.3/gemma-3-12b/")))
    assert len(session_policy_json(access)) <= SESSION_POLICY_MAX


def test_session_names_are_valid_for_sts():
    name = session_name("n" * 63, "0d6c2b1e-8a8f-4a55-9a57-8f3b3c7e2a11")
    assert 2 <= len(name) <= 64 and name.endswith(".iclora.0d6c2b1e")


def test_what_a_run_context_gets():
    s3 = {"checkpoint": "s3://models/ltx.safetensors", "text_encoder": "s3://models/gemma/"}
    c = render_ctx(model=s3)
    assert run_access(c) == RunAccess(c.store.bucket, c.store.prefix,
                                      (ReadOnly("models", "ltx.safetensors"), ReadOnly("models", "gemma/")))
    assert model_access(c) is None
    # The tenant's own output store (its own Secret): no session for the run's store, a read-only one for the model.
    own = replace(c, store_secret="tenants-own")
    assert run_access(own) is None
    assert model_access(own) == RunAccess(None, None, run_access(c).reads)
    # A model with credentials of its own, or none in S3: the run's session names no model.
    ref = render_ctx(model={**s3, "credentials_secret_ref": {"name": "models-ro"}})
    assert run_access(ref).reads == () and model_access(replace(ref, store_secret="x")) is None


@pytest.mark.parametrize(("fields", "rule"), [
    ({"prefix": "runs", "ledger_prefix": "runs/ledger"}, "neither inside nor around store.prefix"),
    ({"prefix": "billing/runs", "ledger_prefix": "billing"}, "neither inside nor around store.prefix"),
    ({"prefix": "runs", "ledger_prefix": "runs/"}, "neither inside nor around store.prefix"),
    ({"ledger_prefix": ""}, "must be non-empty"),
    ({"credentials_duration_seconds": 3600, "credentials_renew_before_seconds": 3600},
     "must be less than store.credentialsDurationSeconds"),
])
def test_store_settings_keep_the_ledger_out_of_reach_and_renew_in_time(fields, rule):
    from pydantic import ValidationError

    from iclora_operator.settings import StoreSettings

    with pytest.raises(ValidationError, match=rule):
        StoreSettings(**fields)
    StoreSettings(prefix="runs", ledger_prefix="ledger", credentials_duration_seconds=3600)
