"""Downloads against a real local HTTP server and S3 store; the SSRF guard."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from iclora_trainer.dataset.fetch import FetchPolicy, check_host, fetch_dataset
from iclora_trainer.errors import DatasetDownloadError

PAYLOAD = b"PK" + b"z" * 5000


class Handler(BaseHTTPRequestHandler):
    flaky_calls = 0

    def log_message(self, *args):
        pass

    def _send(self, code, body=b"", headers=None):
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/ok.zip":
            self._send(200, PAYLOAD)
        elif self.path == "/flaky.zip":
            Handler.flaky_calls += 1
            self._send(503 if Handler.flaky_calls <= 2 else 200, b"" if Handler.flaky_calls <= 2 else PAYLOAD)
        elif self.path == "/redirect":
            self._send(302, headers={"Location": "/ok.zip"})
        elif self.path == "/loop":
            self._send(302, headers={"Location": "/loop"})
        elif self.path == "/to-metadata":
            self._send(302, headers={"Location": "http://169.254.169.254/latest/meta-data"})
        elif self.path == "/slow":
            time.sleep(1.5)
            self._send(200, PAYLOAD)
        elif self.path == "/forbidden":
            self._send(403)
        elif self.path == "/gone":
            self._send(410)
        elif self.path == "/down":
            self._send(503)
        elif self.path == "/rate-limited":
            self._send(429)
        elif self.path == "/request-timeout":
            self._send(408)
        elif self.path == "/cut-off":  # promises more than it sends, then closes: a reset mid-body
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD) * 4))
            self.end_headers()
            self.wfile.write(PAYLOAD)
            self.wfile.flush()
            self.close_connection = True
        else:
            self._send(404)


@pytest.fixture
def server():
    Handler.flaky_calls = 0
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


ALLOW = FetchPolicy(allow_private=True, backoff=0.05, read_timeout=0.5, connect_timeout=1)


def test_download_and_redirect(server, tmp_path):
    assert fetch_dataset(f"{server}/ok.zip", tmp_path / "a.zip", ALLOW).read_bytes() == PAYLOAD
    assert fetch_dataset(f"{server}/redirect", tmp_path / "b.zip", ALLOW).read_bytes() == PAYLOAD


def test_5xx_is_retried_with_backoff(server, tmp_path):
    assert fetch_dataset(f"{server}/flaky.zip", tmp_path / "a.zip", ALLOW).read_bytes() == PAYLOAD
    assert Handler.flaky_calls == 3


@pytest.mark.parametrize(("path", "message"), [
    ("/missing.zip", "HTTP 404 Not Found"),
    ("/forbidden", "HTTP 403"),
    ("/loop", "more than 5 redirects"),
])
def test_failures_say_what_happened(server, tmp_path, path, message):
    with pytest.raises(DatasetDownloadError, match=message):
        fetch_dataset(f"{server}{path}", tmp_path / "a.zip", ALLOW)


def test_4xx_is_not_retried(server, tmp_path):
    start = time.monotonic()
    with pytest.raises(DatasetDownloadError):
        fetch_dataset(f"{server}/missing.zip", tmp_path / "a.zip", FetchPolicy(allow_private=True, backoff=1.0))
    assert time.monotonic() - start < 1.0


def test_too_large(server, tmp_path):
    with pytest.raises(DatasetDownloadError, match="too large"):
        fetch_dataset(f"{server}/ok.zip", tmp_path / "a.zip", FetchPolicy(allow_private=True, max_bytes=100))


def test_ssrf_guard_refuses_private_addresses_unless_allowed(server, tmp_path):
    guarded = FetchPolicy()
    with pytest.raises(DatasetDownloadError, match="loopback"):
        fetch_dataset(f"{server}/ok.zip", tmp_path / "a.zip", guarded)
    for url, kind in [("http://169.254.169.254/latest", "link-local"), ("http://10.0.0.1/x.zip", "private"),
                      ("http://192.168.1.10/x.zip", "private"), ("http://[::1]/x.zip", "loopback")]:
        with pytest.raises(DatasetDownloadError, match=kind):
            check_host(url, guarded)
    assert not (tmp_path / "a.zip").exists()


def test_trusted_networks_let_an_in_cluster_store_through_and_nothing_else(server, tmp_path):
    """An on-prem store at a private address serves datasets when the admin trusts its host or
    network (ICLORA_TRUSTED_NETWORKS); the rest of the private ranges stay refused."""
    policy = FetchPolicy.from_env({"ICLORA_TRUSTED_NETWORKS": "127.0.0.0/30, minio.storage.svc, 10.0.5.0/24"})
    assert fetch_dataset(f"{server}/ok.zip", tmp_path / "a.zip", policy).read_bytes() == PAYLOAD  # 127.0.0.1
    check_host("http://10.0.5.7/x.zip", policy)
    check_host("http://[::ffff:10.0.5.8]/x.zip", policy)  # the IPv4-mapped form of a trusted address
    for url, kind in [("http://10.0.6.1/x.zip", "private"), ("http://169.254.169.254/latest", "link-local"),
                      ("http://127.0.0.9/x.zip", "loopback")]:
        with pytest.raises(DatasetDownloadError, match=f"{kind}.*operator.trustedNetworks"):
            check_host(url, policy)
    assert policy.trusts_host("MINIO.storage.svc.") and not policy.trusts_host("minio.storage.svc.evil.com")
    # Nothing is trusted by default, and a host name never trusts an address range.
    assert not FetchPolicy.from_env({}).trusted
    assert not FetchPolicy(trusted=("minio.storage.svc",)).trusts_address("10.0.5.7")


@pytest.mark.parametrize("url", [
    "http://169.254.169.254\\@localhost/latest",  # urlsplit reads localhost, urllib3 connects to .254
    "http://169.254.169.254\\@example.com/latest",
    "http://10.0.0.1\\@minio.storage.svc/x.zip",
])
def test_the_guard_checks_the_host_the_client_connects_to(url):
    trusting = FetchPolicy(trusted=("localhost", "minio.storage.svc", "example.com"))
    with pytest.raises(DatasetDownloadError, match="ambiguous"):
        check_host(url, trusting)


def test_ssrf_guard_applies_after_redirects(server, tmp_path, monkeypatch):
    # The first hop is allowed (as an admin allow-list would), the redirect target is checked again.
    import iclora_trainer.dataset.fetch as fetch

    calls = []

    def guard(url, policy):
        calls.append(url)
        check_host(url, FetchPolicy(allow_private="127.0.0.1" in url))

    monkeypatch.setattr(fetch, "check_host", guard)
    with pytest.raises(DatasetDownloadError, match="link-local"):
        fetch_dataset(f"{server}/to-metadata", tmp_path / "a.zip", FetchPolicy())
    assert calls[-1].startswith("http://169.254.169.254")


def test_dns_failure(tmp_path):
    with pytest.raises(DatasetDownloadError, match="cannot resolve"):
        fetch_dataset("http://no-such-host.invalid/x.zip", tmp_path / "a.zip", ALLOW)


def test_env_allow_list():
    assert FetchPolicy.from_env({"ICLORA_ALLOW_PRIVATE_NETWORKS": "1"}).allow_private
    assert not FetchPolicy.from_env({}).allow_private


# --- whose fault: the decision table of docs/dataset.md ("Download failures") -----------------
# Each row: what happened to the user's dataset URL -> the exit code the preflight ends with.
# 11 (DatasetDownloadFailed) is the user's and never retried; 20 and 22 are infrastructure,
# retried by the Job, and never name the user's dataset as the problem.

def _code(exc: BaseException) -> int:
    from iclora_api.contract import Stage
    from iclora_trainer.errors import failure

    return int(failure(exc, Stage.PREFLIGHT)[0])


def _fetch_code(url: str, dest, policy: FetchPolicy = ALLOW, env=None) -> tuple[int, str]:
    with pytest.raises(Exception) as info:
        fetch_dataset(url, dest, policy, env=env)
    return _code(info.value), str(info.value)


@pytest.mark.parametrize(("path", "code", "message"), [
    ("/missing.zip", 11, "HTTP 404"),  # the user's URL names nothing
    ("/forbidden", 11, "HTTP 403"),  # the user's URL is not readable (an expired presigned URL)
    ("/gone", 11, "HTTP 410"),
    ("/loop", 11, "more than 5 redirects"),
    ("/down", 20, "HTTP 503"),  # the host says "not now", after our retries
    ("/rate-limited", 20, "HTTP 429"),
    ("/request-timeout", 20, "HTTP 408"),
    ("/slow", 20, "timed out"),  # no answer in time
    ("/cut-off", 20, "download interrupted"),  # the connection broke mid-body
])
def test_http_decision_table(server, tmp_path, path, code, message):
    got, text = _fetch_code(f"{server}{path}", tmp_path / "a.zip")
    assert (got, message in text) == (code, True), text


def test_transient_statuses_are_retried(server, tmp_path):
    start = time.monotonic()
    _fetch_code(f"{server}/down", tmp_path / "a.zip", FetchPolicy(allow_private=True, backoff=0.05, attempts=3))
    assert time.monotonic() - start >= 0.05 + 0.1  # two backoffs: three attempts


def test_too_large_and_refused_addresses_are_the_users(server, tmp_path):
    assert _fetch_code(f"{server}/ok.zip", tmp_path / "a.zip", FetchPolicy(allow_private=True, max_bytes=100))[0] == 11
    assert _fetch_code(f"{server}/ok.zip", tmp_path / "a.zip", FetchPolicy())[0] == 11  # loopback refused
    assert _fetch_code("ftp://example.com/d.zip", tmp_path / "a.zip")[0] == 11
    assert _fetch_code(str(tmp_path / "missing.zip"), tmp_path / "a.zip")[0] == 11


def test_a_refused_connection_is_transient(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, text = _fetch_code(f"http://127.0.0.1:{port}/d.zip", tmp_path / "a.zip")
    assert code == 20 and "connection failed" in text


def test_a_tls_error_is_the_users(tmp_path, monkeypatch):
    import requests

    def bad_certificate(*args, **kwargs):
        raise requests.exceptions.SSLError("certificate verify failed: self-signed certificate")

    monkeypatch.setattr(requests, "get", bad_certificate)
    code, text = _fetch_code("https://127.0.0.1/d.zip", tmp_path / "a.zip")
    assert code == 11 and "TLS error" in text


@pytest.mark.parametrize(("errno_name", "code", "message"), [
    ("EAI_NONAME", 11, "cannot resolve host"),  # no such host: the user's URL
    ("EAI_AGAIN", 20, "failed temporarily"),  # the resolver did not answer: the cluster's DNS
])
def test_dns_decision_table(tmp_path, monkeypatch, errno_name, code, message):
    import socket

    calls = []

    def lookup(*args, **kwargs):
        calls.append(args)
        raise socket.gaierror(getattr(socket, errno_name), "lookup failed")

    monkeypatch.setattr(socket, "getaddrinfo", lookup)
    got, text = _fetch_code("https://data.example.com/d.zip", tmp_path / "a.zip",
                            FetchPolicy(allow_private=True, backoff=0.01, attempts=3))
    assert (got, message in text) == (code, True), text
    assert len(calls) == (3 if code == 20 else 1)  # only a temporary failure is retried


def test_a_full_scratch_disk_is_infrastructure(server, tmp_path):
    # /dev/full: every write fails with ENOSPC, as a full emptyDir does.
    code, text = _fetch_code(f"{server}/ok.zip", __import__("pathlib").Path("/dev/full"))
    assert code == 22 and "scratch" in text


class _FakeS3:
    def __init__(self, fail: BaseException):
        self.fail = fail

    def stat_object(self, bucket, key):
        raise self.fail


def _s3_error(code: str):
    from minio.error import S3Error

    return S3Error(None, code, f"{code} message", "/b/d.zip", "req", "host")


@pytest.mark.parametrize(("fail", "code"), [
    (_s3_error("NoSuchKey"), 11),  # the user's URL
    (_s3_error("NoSuchBucket"), 11),
    (_s3_error("AccessDenied"), 11),  # the user's credentials Secret
    (_s3_error("SignatureDoesNotMatch"), 11),
    (_s3_error("InvalidAccessKeyId"), 11),
    (_s3_error("InternalError"), 20),  # the store's own failure
    (_s3_error("SlowDown"), 20),
    (_s3_error("ServiceUnavailable"), 20),
    (ConnectionRefusedError(111, "Connection refused"), 20),  # a socket error, not the disk
    (RuntimeError("MaxRetryError: connection refused"), 20),  # urllib3 after minio's retries
    (OSError(28, "No space left on device", "/scratch/d.zip"), 22),  # writing the file
])
def test_s3_decision_table(tmp_path, monkeypatch, fail, code):
    import iclora_trainer.dataset.fetch as fetch

    monkeypatch.setattr(fetch, "make_client", lambda creds, http: _FakeS3(fail))
    env = {"ICLORA_DATASET_AWS_ENDPOINT_URL": "http://127.0.0.1:9"}
    got, text = _fetch_code("s3://bucket/d.zip", tmp_path / "a.zip", env=env)
    assert got == code, text
