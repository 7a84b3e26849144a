"""Reading what trainer pods report through the object store (S3 via minio)."""

from __future__ import annotations

import io
import json
import logging
from typing import Any

from minio import Minio
from minio.error import S3Error

from iclora_api.contract import split_s3_uri
from iclora_api.objectstore import (
    FAIL_FAST,
    AssumeRoleRefused,
    StoreCredentials,
    assume_role,
    make_client,
)
from iclora_operator.access import RunAccess, Session, session_name, session_policy_json

log = logging.getLogger(__name__)


class ObjectStoreUnavailable(RuntimeError):
    """The store could not be reached or refused us; retried, never terminal by itself."""


class CredentialsNotIssued(RuntimeError):
    """The store's STS did not issue a run's scoped session (refused, or unreachable); retried.

    Nothing is created meanwhile: a run never falls back to the platform's own key."""


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


class StsIssuer:
    """Issues each run a temporary session limited to what `RunAccess` allows (STS AssumeRole with
    an inline session policy), signed with the platform's key; the key itself never leaves the operator.

    Works with AWS S3 (`role_arn` required, `sts_endpoint` AWS's), MinIO and SeaweedFS (no role: the
    session narrows the operator's own identity) and Ceph RGW (a role). The sessions talk to
    `store_endpoint`: the store as the pods see it.
    """

    def __init__(self, caller: StoreCredentials, *, store_endpoint: str, duration_seconds: int,
                 sts_endpoint: str | None = None, role_arn: str | None = None):
        self.caller = caller
        self.store_endpoint = store_endpoint
        self.duration_seconds = duration_seconds
        self.sts_endpoint = sts_endpoint
        self.role_arn = role_arn

    def issue(self, access: RunAccess, namespace: str, uid: str) -> Session:
        try:
            policy = session_policy_json(access)
        except ValueError as exc:
            raise CredentialsNotIssued(str(exc)) from exc
        try:
            issued = assume_role(self.caller, policy=policy, duration_seconds=self.duration_seconds,
                                 session_name=session_name(namespace, uid), sts_endpoint=self.sts_endpoint,
                                 role_arn=self.role_arn, store_endpoint=self.store_endpoint, http=FAIL_FAST)
        except AssumeRoleRefused as exc:
            raise CredentialsNotIssued(
                f"the store's STS refused the run's scoped session ({exc}); check store.stsEndpoint, "
                "store.stsRoleArn and that the operator's key may call sts:AssumeRole") from exc
        except ValueError as exc:  # a bad endpoint in the settings
            raise CredentialsNotIssued(f"store.stsEndpoint: {exc}") from exc
        except Exception as exc:  # urllib3: refused, timed out
            raise CredentialsNotIssued(f"the store's STS at {self.sts_endpoint or self.caller.endpoint} "
                                       f"is unreachable ({exc.__class__.__name__}: {exc})") from exc
        creds = issued.credentials
        return Session(creds.access_key, creds.secret_key, creds.session_token, issued.expires_at,
                       creds.endpoint, creds.region)
