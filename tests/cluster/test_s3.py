"""The local S3 store speaks real S3 with real signatures."""

from __future__ import annotations

import io
import urllib.request
import uuid
from datetime import timedelta

import pytest
from minio import Minio
from minio.error import S3Error

pytestmark = pytest.mark.cluster


def test_s3_round_trip(s3_store):
    mc = s3_store.client()
    key = f"roundtrip/{uuid.uuid4().hex}.bin"
    payload = b"masked iclora \x00\x01" * 1000
    mc.put_object(
        s3_store.bucket, key, io.BytesIO(payload), len(payload), content_type="application/octet-stream"
    )
    stat = mc.stat_object(s3_store.bucket, key)
    assert stat.size == len(payload)
    resp = mc.get_object(s3_store.bucket, key)
    try:
        assert resp.read() == payload
    finally:
        resp.close()
        resp.release_conn()
    url = mc.presigned_get_object(s3_store.bucket, key, expires=timedelta(minutes=5))
    with urllib.request.urlopen(url, timeout=10) as r:
        assert r.read() == payload


def test_s3_rejects_wrong_secret(s3_store):
    bad = Minio(s3_store.host, s3_store.access_key, "not-the-secret", secure=False, region=s3_store.region)
    with pytest.raises(S3Error) as err:
        list(bad.list_objects(s3_store.bucket))  # a GET: HEAD responses carry no error code
    assert err.value.code == "SignatureDoesNotMatch"
