"""The one S3 client factory of the operator, the trainer and the development tooling.

    creds = StoreCredentials.from_env()            # AWS_* (the trainer), or built from settings
    client = make_client(creds, TRANSFERS)          # a minio.Minio
    session = assume_role(platform, policy=doc, duration_seconds=3600)   # STS: scoped, temporary

Endpoints are parsed in one place (`parse_endpoint`): ``http://host:port`` talks plain HTTP,
``https://host[:port]`` and a bare ``host[:port]`` talk TLS; a trailing slash is dropped; a path,
query, fragment or user info is refused (minio addresses buckets by path, so a store cannot live
under a prefix). The contract package depends on pydantic only at import time: minio, urllib3
and certifi are imported inside `make_client`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from iclora_api.contract import (
    AWS_ACCESS_KEY_ID_ENV,
    AWS_ENDPOINT_URL_ENV,
    AWS_REGION_ENV,
    AWS_SECRET_ACCESS_KEY_ENV,
    AWS_SESSION_TOKEN_ENV,
)

if TYPE_CHECKING:
    from minio import Minio

# AWS's own endpoint, used when no endpoint is configured.
DEFAULT_ENDPOINT = "https://s3.amazonaws.com"


@dataclass(frozen=True)
class Endpoint:
    """An S3 endpoint in the form minio takes it: ``host[:port]`` and whether to use TLS."""

    host: str
    secure: bool

    @property
    def url(self) -> str:
        return f"{'https' if self.secure else 'http'}://{self.host}"


def parse_endpoint(endpoint: str) -> Endpoint:
    """`http://h:9000` -> (h:9000, plain HTTP); `https://h` and `h:9000` -> TLS. ValueError otherwise."""
    text = endpoint.strip()
    if not text:
        raise ValueError("empty S3 endpoint")
    if "://" not in text:
        text = "https://" + text  # a bare host[:port], as the AWS tools take it: TLS
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"S3 endpoint {endpoint!r}: scheme must be http or https")
    if not parts.hostname:
        raise ValueError(f"S3 endpoint {endpoint!r}: no host")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"S3 endpoint {endpoint!r}: credentials do not belong in the URL")
    if parts.path.strip("/") or parts.query or parts.fragment:
        raise ValueError(f"S3 endpoint {endpoint!r}: a path prefix is not supported (use host[:port] only)")
    try:
        parts.port  # noqa: B018 - validates the port (a number in 0-65535)
    except ValueError as exc:
        raise ValueError(f"S3 endpoint {endpoint!r}: {exc}") from None
    if parts.netloc.endswith(":"):
        raise ValueError(f"S3 endpoint {endpoint!r}: empty port")
    return Endpoint(host=parts.netloc, secure=parts.scheme == "https")


@dataclass(frozen=True)
class StoreCredentials:
    """Where a store is and who we are there. Hashable (the operator caches one client per value)."""

    endpoint: str = DEFAULT_ENDPOINT
    access_key: str = ""  # empty: anonymous requests
    secret_key: str = field(default="", repr=False)
    region: str | None = None  # None: minio asks the store
    # Temporary (STS) credentials carry a session token; empty for a static key.
    session_token: str = field(default="", repr=False)

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, *, prefix: str = "", region: str | None = None
    ) -> StoreCredentials:
        """From the AWS_* variables of `env` (default os.environ), or a credentials Secret's data.

        With a `prefix` (DATASET_CREDENTIALS_ENV_PREFIX, MODEL_CREDENTIALS_ENV_PREFIX): when any
        prefixed variable is set, the prefixed set is the whole credential (a Secret holding only keys
        talks to AWS, never sends them to the run store's endpoint or region); when none is, the
        plain AWS_* set applies (the CLI on one box). Unset or empty: the endpoint is AWS's, the
        region `region`, the keys empty.
        """
        env = os.environ if env is None else env
        names = (AWS_ENDPOINT_URL_ENV, AWS_ACCESS_KEY_ID_ENV, AWS_SECRET_ACCESS_KEY_ENV, AWS_REGION_ENV,
                 AWS_SESSION_TOKEN_ENV)
        use = prefix if prefix and any(env.get(prefix + n) for n in names) else ""

        def var(name: str) -> str:
            return env.get(use + name) or ""

        return cls(
            endpoint=var(AWS_ENDPOINT_URL_ENV) or DEFAULT_ENDPOINT,
            access_key=var(AWS_ACCESS_KEY_ID_ENV),
            secret_key=var(AWS_SECRET_ACCESS_KEY_ENV),
            region=var(AWS_REGION_ENV) or region,
            session_token=var(AWS_SESSION_TOKEN_ENV),
        )

    def env(self) -> dict[str, str]:
        """The AWS_* variables (a credentials Secret's keys) of these credentials; empty ones left out."""
        values = {AWS_ACCESS_KEY_ID_ENV: self.access_key, AWS_SECRET_ACCESS_KEY_ENV: self.secret_key,
                  AWS_SESSION_TOKEN_ENV: self.session_token, AWS_ENDPOINT_URL_ENV: self.endpoint,
                  AWS_REGION_ENV: self.region or ""}
        return {k: v for k, v in values.items() if v}


@dataclass(frozen=True)
class HttpPolicy:
    """urllib3 pool, timeouts (seconds) and retries of one client."""

    connect_timeout: float = 10.0
    read_timeout: float = 120.0
    retries: int = 5
    backoff: float = 0.2
    retry_statuses: tuple[int, ...] = (500, 502, 503, 504)
    pool_size: int = 10


# Uploads and downloads of datasets, checkpoints and artifacts (trainer, dev tooling): patient.
TRANSFERS = HttpPolicy()
# The operator's handler threads: fail fast, the next reconcile retries.
FAIL_FAST = HttpPolicy(connect_timeout=3.0, read_timeout=15.0, retries=2, backoff=0.1, pool_size=32)


def make_client(creds: StoreCredentials, policy: HttpPolicy = TRANSFERS) -> Minio:
    """A minio client for `creds`; ValueError for an endpoint `parse_endpoint` refuses.

    TLS is verified against $SSL_CERT_FILE, else certifi's bundle (as minio's own default client).
    """
    import certifi
    import urllib3
    from minio import Minio

    endpoint = parse_endpoint(creds.endpoint)
    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=policy.connect_timeout, read=policy.read_timeout),
        maxsize=policy.pool_size,
        cert_reqs="CERT_REQUIRED",
        ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
        retries=urllib3.Retry(
            total=policy.retries, backoff_factor=policy.backoff, status_forcelist=list(policy.retry_statuses)
        ),
    )
    return Minio(
        endpoint.host,
        access_key=creds.access_key or None,
        secret_key=creds.secret_key,
        secure=endpoint.secure,
        session_token=creds.session_token or None,
        region=creds.region or None,
        http_client=http,
    )


@dataclass(frozen=True)
class TemporaryCredentials:
    """Credentials an STS session issued, and when they stop working (timezone-aware UTC)."""

    credentials: StoreCredentials
    expires_at: datetime


class AssumeRoleRefused(RuntimeError):
    """The STS endpoint refused to issue a session (its error code and message say why)."""


def assume_role(
    caller: StoreCredentials,
    *,
    policy: str,
    duration_seconds: int,
    session_name: str,
    sts_endpoint: str | None = None,
    role_arn: str | None = None,
    store_endpoint: str | None = None,
    http: HttpPolicy = TRANSFERS,
) -> TemporaryCredentials:
    """STS AssumeRole with an inline session policy (`policy`, a JSON document), signed by `caller`.

    The session can do what both the role (or, without `role_arn`, the caller itself: MinIO,
    SeaweedFS) and `policy` allow, for `duration_seconds` (stores cap it: AWS at the role's
    MaxSessionDuration, 12 h at most). `sts_endpoint` defaults to the caller's own endpoint (MinIO,
    Ceph RGW and SeaweedFS answer STS on their S3 port); AWS's is https://sts.<region>.amazonaws.com
    (signed for the caller's region). The issued credentials talk to `store_endpoint` (default:
    the caller's).
    Raises AssumeRoleRefused when the service answers with an error, ValueError for a bad endpoint.
    """
    import certifi
    import urllib3
    from minio.credentials import AssumeRoleProvider

    endpoint = parse_endpoint(sts_endpoint or caller.endpoint)
    pool = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=http.connect_timeout, read=http.read_timeout),
        cert_reqs="CERT_REQUIRED",
        ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
        retries=urllib3.Retry(total=http.retries, backoff_factor=http.backoff,
                              status_forcelist=list(http.retry_statuses)),
    )
    provider = AssumeRoleProvider(
        sts_endpoint=endpoint.url + "/",
        access_key=caller.access_key,
        secret_key=caller.secret_key,
        duration_seconds=duration_seconds,
        policy=policy,
        region=caller.region or "us-east-1",  # STS signs with a region; AWS's global endpoint is us-east-1's
        role_arn=role_arn or None,
        role_session_name=session_name,
        http_client=pool,
    )
    try:
        issued = provider.retrieve()
    except ValueError as exc:  # minio: "<endpoint> failed with HTTP status code 403" (or a bad answer)
        raise AssumeRoleRefused(str(exc)) from None
    expires = issued.expiration or datetime.now(UTC)
    if expires.tzinfo is None:
        expires = expires.replace(tzinfo=UTC)  # minio parses STS's UTC timestamp without a zone
    creds = StoreCredentials(
        endpoint=store_endpoint or caller.endpoint,
        access_key=issued.access_key,
        secret_key=issued.secret_key,
        region=caller.region,
        session_token=issued.session_token or "",
    )
    return TemporaryCredentials(creds, expires.astimezone(UTC))
