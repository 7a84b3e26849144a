"""Reading what trainer pods report through the object store (S3 via minio)."""

from __future__ import annotations

import io
import json
import logging
from typing import Any

from minio import Minio
from minio.error import S3Error

from iclora_api.contract import split_s3_uri
from iclora_api.objectstore import FAIL_FAST, StoreCredentials, make_client

log = logging.getLogger(__name__)


class ObjectStoreUnavailable(RuntimeError):
    """The store could not be reached or refused us; retried, never terminal by itself."""


# The contract's credentials (endpoint, keys, region), under the operator's old name.
Credentials = StoreCredentials


def client_for(creds: Credentials) -> Minio:
    # Fail fast: a handler thread must not sit in long retry loops; the ticker retries the reconcile.
    return make_client(creds, FAIL_FAST)


class ObjectStore:
    """Small, typed facade over one minio client."""

    def __init__(self, creds: Credentials):
        self._client = client_for(creds)

    def read_json(self, uri: str) -> dict[str, Any] | None:
        """The JSON object at `uri`, or None when it does not exist (yet)."""
        bucket, key = split_s3_uri(uri)
        try:
            response = self._client.get_object(bucket, key)
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchBucket", "NoSuchObject"):
                return None
            raise ObjectStoreUnavailable(f"{uri}: {exc.code}: {exc.message}") from exc
        except Exception as exc:  # urllib3 errors: connection refused, timeouts
            raise ObjectStoreUnavailable(f"{uri}: {exc}") from exc
        try:
            data = json.loads(response.read())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            log.warning("ignoring unreadable %s: %s", uri, exc)
            return None
        finally:
            response.close()
            response.release_conn()
        return data if isinstance(data, dict) else None

    def exists(self, uri: str) -> bool:
        bucket, key = split_s3_uri(uri)
        try:
            self._client.stat_object(bucket, key)
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchBucket", "NoSuchObject", "NotFound"):
                return False
            raise ObjectStoreUnavailable(f"{uri}: {exc.code}: {exc.message}") from exc
        except Exception as exc:
            raise ObjectStoreUnavailable(f"{uri}: {exc}") from exc
        return True

    def ensure_bucket(self, bucket: str) -> None:
        try:
            if not self._client.bucket_exists(bucket):
                self._client.make_bucket(bucket)
        except S3Error as exc:
            if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise ObjectStoreUnavailable(f"bucket {bucket}: {exc.code}") from exc

    def put_bytes(self, uri: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        bucket, key = split_s3_uri(uri)
        try:
            self._client.put_object(bucket, key, io.BytesIO(data), len(data), content_type=content_type)
        except S3Error as exc:
            raise ObjectStoreUnavailable(f"{uri}: {exc.code}: {exc.message}") from exc
        except Exception as exc:
            raise ObjectStoreUnavailable(f"{uri}: {exc}") from exc
