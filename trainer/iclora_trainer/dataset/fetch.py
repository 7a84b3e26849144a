"""Download of trainingDataUrl: http(s) streamed, s3 via minio, bounded, with an SSRF guard.

Users name the URL, so the preflight pod must not become a way into the cluster's
network: loopback, private, link-local (cloud metadata) and other non-public addresses
are refused, on the resolved address and after every redirect, unless the admin
allow-lists private networks (`ICLORA_ALLOW_PRIVATE_NETWORKS=1`; tests and the demo).
"""

from __future__ import annotations

import ipaddress
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urljoin, urlsplit

from iclora_api.contract import ALLOW_PRIVATE_NETWORKS_ENV, DATASET_CREDENTIALS_ENV_PREFIX, split_s3_uri
from iclora_api.objectstore import TRANSFERS, StoreCredentials, make_client, parse_endpoint
from iclora_trainer.errors import DatasetDownloadError

ALLOW_PRIVATE_ENV = ALLOW_PRIVATE_NETWORKS_ENV
CHUNK = 1 << 20


@dataclass(frozen=True)
class FetchPolicy:
    max_bytes: int = 20 * 1024**3
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    attempts: int = 4
    backoff: float = 1.0
    max_redirects: int = 5
    allow_private: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **kw: object) -> FetchPolicy:
        env = os.environ if env is None else env
        allow = env.get(ALLOW_PRIVATE_ENV, "").lower() in ("1", "true", "yes")
        return cls(allow_private=allow, **kw)  # type: ignore[arg-type]


def _refused(addr: str) -> str | None:
    ip = ipaddress.ip_address(addr)
    if ip.version == 6 and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    for test, what in ((ip.is_loopback, "loopback"), (ip.is_link_local, "link-local (cloud metadata)"),
                       (ip.is_private, "private"), (ip.is_multicast, "multicast"), (ip.is_reserved, "reserved"),
                       (ip.is_unspecified, "unspecified")):
        if test:
            return what
    return None


def check_host(url: str, policy: FetchPolicy) -> None:
    """Resolve the URL's host; refuse non-public addresses unless allowed."""
    parts = urlsplit(url)
    host = parts.hostname
    if not host:
        raise DatasetDownloadError(f"{url}: URL has no host")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except socket.gaierror as exc:
        raise DatasetDownloadError(f"{url}: cannot resolve host {host!r} (DNS: {exc.strerror})") from exc
    if policy.allow_private:
        return
    for info in infos:
        why = _refused(info[4][0])
        if why:
            raise DatasetDownloadError(f"{url}: refused, {host} resolves to a {why} address ({info[4][0]}); "
                                       "the administrator can allow private networks")


def _http(url: str, dest: Path, policy: FetchPolicy) -> Path:
    import requests

    for _ in range(policy.max_redirects + 1):
        if urlsplit(url).scheme not in ("http", "https"):
            raise DatasetDownloadError(f"{url}: redirected to an unsupported scheme")
        check_host(url, policy)
        response = _get_with_retries(url, policy)
        if response.is_redirect:
            url = urljoin(url, response.headers.get("Location", ""))
            response.close()
            continue
        with response:
            if response.status_code == 404:
                raise DatasetDownloadError(f"{url}: HTTP 404 Not Found")
            if response.status_code >= 400:
                raise DatasetDownloadError(f"{url}: HTTP {response.status_code} {response.reason}")
            declared = int(response.headers.get("Content-Length") or 0)
            if declared > policy.max_bytes:
                raise DatasetDownloadError(f"{url}: too large ({declared} bytes; limit {policy.max_bytes})")
            written = 0
            try:
                with open(dest, "wb") as out:
                    for chunk in response.iter_content(CHUNK):
                        written += len(chunk)
                        if written > policy.max_bytes:
                            raise DatasetDownloadError(f"{url}: too large (more than {policy.max_bytes} bytes)")
                        out.write(chunk)
            except requests.RequestException as exc:
                raise DatasetDownloadError(f"{url}: download interrupted ({exc})") from exc
        return dest
    raise DatasetDownloadError(f"{url}: more than {policy.max_redirects} redirects")


def _get_with_retries(url: str, policy: FetchPolicy):
    """GET, retrying connection errors, timeouts and 5xx with exponential backoff (nothing else)."""
    import requests

    last = ""
    for attempt in range(policy.attempts):
        if attempt:
            time.sleep(policy.backoff * 2 ** (attempt - 1))
        try:
            response = requests.get(url, stream=True, allow_redirects=False,
                                    timeout=(policy.connect_timeout, policy.read_timeout))
        except requests.exceptions.SSLError as exc:
            raise DatasetDownloadError(f"{url}: TLS error ({exc})") from exc
        except requests.exceptions.Timeout:
            last = f"timed out after {policy.connect_timeout:.0f} s connect / {policy.read_timeout:.0f} s read"
            continue
        except requests.exceptions.ConnectionError as exc:
            last = f"connection failed ({exc.__class__.__name__})"
            continue
        if response.status_code >= 500:
            last = f"HTTP {response.status_code} {response.reason}"
            response.close()
            continue
        return response
    raise DatasetDownloadError(f"{url}: {last} (after {policy.attempts} attempts)")


def _s3(url: str, dest: Path, policy: FetchPolicy, env: Mapping[str, str]) -> Path:
    from minio.error import S3Error

    # The dataset Secret's ICLORA_DATASET_AWS_* variables, each falling back to the run store's AWS_*.
    creds = StoreCredentials.from_env(env, prefix=DATASET_CREDENTIALS_ENV_PREFIX)
    endpoint = creds.endpoint
    try:
        ep = parse_endpoint(endpoint)
    except ValueError as exc:
        raise DatasetDownloadError(f"{url}: {exc}") from exc
    check_host(ep.url, policy)
    bucket, key = split_s3_uri(url)
    http = replace(TRANSFERS, connect_timeout=policy.connect_timeout, read_timeout=policy.read_timeout)
    client = make_client(creds, http)
    try:
        size = client.stat_object(bucket, key).size or 0
        if size > policy.max_bytes:
            raise DatasetDownloadError(f"{url}: too large ({size} bytes; limit {policy.max_bytes})")
        client.fget_object(bucket, key, str(dest))
    except S3Error as exc:
        what = {"NoSuchKey": "object not found", "NoSuchBucket": "bucket not found",
                "AccessDenied": "access denied", "SignatureDoesNotMatch": "credentials refused"}.get(exc.code, exc.code)
        raise DatasetDownloadError(f"{url}: {what}") from exc
    except DatasetDownloadError:
        raise
    except Exception as exc:  # urllib3 connection errors
        raise DatasetDownloadError(f"{url}: object store unreachable at {endpoint} ({exc.__class__.__name__})") \
            from exc
    return dest


def fetch_dataset(url: str, dest: Path, policy: FetchPolicy | None = None,
                  env: Mapping[str, str] | None = None) -> Path:
    """Download `url` (http, https, s3, or a local path for the CLI) to `dest`."""
    policy = policy or FetchPolicy.from_env(env)
    env = os.environ if env is None else env
    dest.parent.mkdir(parents=True, exist_ok=True)
    scheme = urlsplit(url).scheme
    if scheme in ("http", "https"):
        return _http(url, dest, policy)
    if scheme == "s3":
        return _s3(url, dest, policy, env)
    if scheme in ("", "file"):
        path = Path(urlsplit(url).path if scheme == "file" else url)
        if not path.is_file():
            raise DatasetDownloadError(f"{url}: no such file")
        return path
    raise DatasetDownloadError(f"{url}: unsupported scheme {scheme!r}")
