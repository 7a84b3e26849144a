"""Download of trainingDataUrl: http(s) streamed, s3 via minio, bounded, with an SSRF guard.

Whose fault a failure is decides its exit code (docs/dataset.md, "Download failures"): what
the URL itself says (404, 403, a host that does not exist, a refused address, a bad
certificate, a missing object, refused credentials) is the user's, DatasetDownloadFailed
(exit 11, not retried); what says "not now" (timeouts, resets, refused connections, 408,
429, 5xx, a DNS resolver that failed temporarily, a body cut off) is retried here with
backoff and then ends as DatasetSourceUnavailable (exit 20, retried by the Job); a scratch
disk that cannot take the file is a ScratchError (exit 22, retried).

Users name the URL, so the preflight pod must not become a way into the cluster's
network: loopback, private, link-local (cloud metadata) and other non-public addresses
are refused, on the resolved address and after every redirect. The administrator's own stores
are trusted by name, and other networks by an explicit allowlist (`ICLORA_TRUSTED_NETWORKS`:
host names, addresses, CIDRs; the operator sets it from its configuration): an on-prem MinIO at
10.0.5.7 serves datasets while the rest of the private range stays refused.
`ICLORA_ALLOW_PRIVATE_NETWORKS=1` turns the guard off (tests and the demo).

An s3:// URL is read with the tenant's own credentials (`spec.datasetCredentialsSecretRef`,
the ICLORA_DATASET_AWS_* variables) or, without them, with the run's own session: on the
platform's store that session reaches only the run's prefix, so another run's dataset,
checkpoint or LoRA (or anything else in the bucket) is refused with the rule in the message.
The platform's own key is never in a training pod.
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

from iclora_api.contract import (
    ALLOW_PRIVATE_NETWORKS_ENV,
    DATASET_CREDENTIALS_ENV_PREFIX,
    STORE_ENV_NAMES,
    TRUSTED_NETWORKS_ENV,
    split_s3_uri,
)
from iclora_api.objectstore import TRANSFERS, StoreCredentials, make_client, parse_endpoint
from iclora_trainer.errors import DatasetDownloadError, DatasetSourceUnavailable, ScratchError, is_disk_error

ALLOW_PRIVATE_ENV = ALLOW_PRIVATE_NETWORKS_ENV
CHUNK = 1 << 20
# HTTP statuses that say "not now": retried with backoff, then DatasetSourceUnavailable.
TRANSIENT_HTTP = frozenset({408, 429})  # and every 5xx
# S3 error codes that mean the URL or the user's credentials are wrong; any other is the store's.
REFUSED_S3_CODES = {
    "NoSuchKey": "object not found", "NoSuchBucket": "bucket not found", "AccessDenied": "access denied",
    "SignatureDoesNotMatch": "credentials refused", "InvalidAccessKeyId": "credentials refused",
    "AllAccessDisabled": "access denied", "InvalidBucketName": "invalid bucket name",
    "InvalidObjectState": "object not readable (archived)", "NoSuchVersion": "object version not found",
}


@dataclass(frozen=True)
class FetchPolicy:
    max_bytes: int = 20 * 1024**3
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    attempts: int = 4
    backoff: float = 1.0
    max_redirects: int = 5
    allow_private: bool = False
    trusted: tuple[str, ...] = ()  # host names, addresses and CIDRs the administrator trusts

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **kw: object) -> FetchPolicy:
        env = os.environ if env is None else env
        allow = env.get(ALLOW_PRIVATE_ENV, "").lower() in ("1", "true", "yes")
        trusted = tuple(t.strip() for t in env.get(TRUSTED_NETWORKS_ENV, "").split(",") if t.strip())
        return cls(allow_private=allow, trusted=trusted, **kw)  # type: ignore[arg-type]

    def trusts_host(self, host: str) -> bool:
        return host.lower().rstrip(".") in {t.lower().rstrip(".") for t in self.trusted if not _is_network(t)}

    def trusts_address(self, addr: str) -> bool:
        ip = ipaddress.ip_address(addr)
        if ip.version == 6 and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        return any(ip in ipaddress.ip_network(t, strict=False) for t in self.trusted if _is_network(t))


def _is_network(text: str) -> bool:
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        return False
    return True


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
    """Resolve the URL's host; refuse non-public addresses unless allowed.

    The host is the one the HTTP client (urllib3) will connect to; a URL that Python's `urlsplit`
    reads with another host (a backslash before `@`, as in `http://169.254.169.254\\@trusted/`)
    is refused, so the checked host is always the fetched one."""
    from urllib3.util import parse_url

    parts = urlsplit(url)
    try:
        connects = parse_url(url)
    except ValueError as exc:
        raise DatasetDownloadError(f"{url}: not a valid URL ({exc})") from exc
    host = (connects.host or "").strip("[]").lower()
    if not host:
        raise DatasetDownloadError(f"{url}: URL has no host")
    if host != (parts.hostname or "").lower() or "\\" in (parts.netloc + (connects.path or "")[:1]):
        raise DatasetDownloadError(f"{url}: refused, the URL's host is ambiguous (a backslash or odd "
                                   "characters in its authority)")
    port = connects.port or (443 if parts.scheme == "https" else 80)
    last = ""
    for attempt in range(policy.attempts):
        if attempt:
            time.sleep(policy.backoff * 2 ** (attempt - 1))
        try:
            infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
            break
        except socket.gaierror as exc:
            # EAI_AGAIN: the resolver did not answer now (the cluster's DNS), not "no such host".
            if exc.errno != socket.EAI_AGAIN:
                raise DatasetDownloadError(f"{url}: cannot resolve host {host!r} (DNS: {exc.strerror})") from exc
            last = str(exc.strerror)
    else:
        raise DatasetSourceUnavailable(f"{url}: DNS lookup of {host!r} failed temporarily ({last}, "
                                       f"after {policy.attempts} attempts)")
    if policy.allow_private or policy.trusts_host(host):
        return
    for info in infos:
        addr = info[4][0]
        why = None if policy.trusts_address(addr) else _refused(addr)
        if why:
            raise DatasetDownloadError(f"{url}: refused, {host} resolves to a {why} address ({addr}); "
                                       "the administrator can trust it (operator.trustedNetworks)")


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
                raise DatasetSourceUnavailable(f"{url}: download interrupted ({exc})") from exc
            except OSError as exc:
                raise ScratchError(f"{url}: writing {dest} (scratch): {exc}") from exc
        return dest
    raise DatasetDownloadError(f"{url}: more than {policy.max_redirects} redirects")


def _get_with_retries(url: str, policy: FetchPolicy):
    """GET, retrying connection errors, timeouts, 408, 429 and 5xx with exponential backoff (nothing else)."""
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
        if response.status_code >= 500 or response.status_code in TRANSIENT_HTTP:
            last = f"HTTP {response.status_code} {response.reason}"
            response.close()
            continue
        return response
    raise DatasetSourceUnavailable(f"{url}: {last} (after {policy.attempts} attempts)")


# What a refusal of an s3:// URL read with the run's own session means (the run named no
# datasetCredentialsSecretRef): the rule, and the supported ways to hand a run its data.
RUN_SESSION_RULE = (
    "without spec.datasetCredentialsSecretRef an s3:// URL is read with the run's own store credentials, "
    "which reach only the run's own prefix (never another run's dataset, checkpoints or LoRA); give the "
    "run its data as an https:// URL (a presigned URL works) or from a store of your own named by "
    "spec.datasetCredentialsSecretRef (docs/dataset.md)"
)


def _s3(url: str, dest: Path, policy: FetchPolicy, env: Mapping[str, str], field: str) -> Path:
    from minio.error import S3Error

    # The tenant's dataset Secret (ICLORA_DATASET_AWS_*) when the run names one, else the run's own session.
    own = any(env.get(DATASET_CREDENTIALS_ENV_PREFIX + name) for name in STORE_ENV_NAMES)
    creds = StoreCredentials.from_env(env, prefix=DATASET_CREDENTIALS_ENV_PREFIX)
    endpoint = creds.endpoint
    try:
        ep = parse_endpoint(endpoint)
    except ValueError as exc:
        raise DatasetDownloadError(f"{url}: {exc}") from exc
    check_host(ep.url, policy)
    try:
        bucket, key = split_s3_uri(url)
    except ValueError as exc:
        raise DatasetDownloadError(f"{url}: {exc}") from exc
    http = replace(TRANSFERS, connect_timeout=policy.connect_timeout, read_timeout=policy.read_timeout)
    client = make_client(creds, http)
    try:
        size = client.stat_object(bucket, key).size or 0
        if size > policy.max_bytes:
            raise DatasetDownloadError(f"{url}: too large ({size} bytes; limit {policy.max_bytes})")
        client.fget_object(bucket, key, str(dest))
    except S3Error as exc:
        if exc.code in ("AccessDenied", "AllAccessDisabled") and not own:
            raise DatasetDownloadError(f"{field} {url}: access denied: {RUN_SESSION_RULE}") from exc
        if exc.code in REFUSED_S3_CODES:
            raise DatasetDownloadError(f"{field} {url}: {REFUSED_S3_CODES[exc.code]}") from exc
        raise DatasetSourceUnavailable(f"{url}: the object store at {endpoint} answered {exc.code}") from exc
    except (DatasetDownloadError, DatasetSourceUnavailable):
        raise
    except ValueError as exc:  # minio's checks of the bucket name and key: the URL's
        raise DatasetDownloadError(f"{url}: {exc}") from exc
    except OSError as exc:
        if is_disk_error(exc):  # writing the file: the scratch disk
            raise ScratchError(f"{url}: writing {dest} (scratch): {exc}") from exc
        raise DatasetSourceUnavailable(f"{url}: object store unreachable at {endpoint} ({exc})") from exc
    except Exception as exc:  # urllib3 connection errors, after minio's own retries
        raise DatasetSourceUnavailable(f"{url}: object store unreachable at {endpoint} "
                                       f"({exc.__class__.__name__})") from exc
    return dest


def fetch_dataset(url: str, dest: Path, policy: FetchPolicy | None = None,
                  env: Mapping[str, str] | None = None, field: str = "spec.trainingDataUrl") -> Path:
    """Download `url` (http, https, s3, or a local path for the CLI) to `dest`; `field` names the
    spec field the URL came from in the errors about what it may reach."""
    policy = policy or FetchPolicy.from_env(env)
    env = os.environ if env is None else env
    dest.parent.mkdir(parents=True, exist_ok=True)
    scheme = urlsplit(url).scheme
    if scheme in ("http", "https"):
        return _http(url, dest, policy)
    if scheme == "s3":
        return _s3(url, dest, policy, env, field)
    if scheme in ("", "file"):
        path = Path(urlsplit(url).path if scheme == "file" else url)
        if not path.is_file():
            raise DatasetDownloadError(f"{url}: no such file")
        return path
    raise DatasetDownloadError(f"{url}: unsupported scheme {scheme!r}")
