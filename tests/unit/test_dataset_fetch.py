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
    ("/slow", "timed out"),
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
