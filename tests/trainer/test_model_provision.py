"""Model sources -> local paths through the node cache (iclora_trainer.model.provision, issue 21).

https:// against a local server that counts what it sends (ranges, a connection that breaks off),
s3:// against the session's SeaweedFS; concurrent fetches of one source are threads with their own
lock file handles (flock treats them like processes).
"""

from __future__ import annotations

import hashlib
import http.server
import os
import socket
import threading

import pytest

from iclora_trainer.errors import ModelConfigError, ObjectStoreError
from iclora_trainer.model.provision import CHUNK, PARTIAL, provision

pytestmark = [pytest.mark.trainer]

BLOB = os.urandom(3 * 1024 * 1024 + 17)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    blob = BLOB
    ranges = True
    break_after: int | None = None  # drop the connection after this many body bytes (once)
    sent = 0
    range_requests = 0
    failures: list[int]  # statuses answered (one per request, HEAD or GET) before serving normally
    retry_after: str | None = None  # sent with each of those
    head_status: int | None = None  # HEAD refused with this (a presigned GET URL answers 403)
    head_length = True  # False: HEAD sends no Content-Length
    heads = 0


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *args: object) -> None:
        pass

    def _refuse(self, status: int) -> None:
        self.send_response(status)
        if self.server.retry_after is not None:
            self.send_header("Retry-After", self.server.retry_after)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _head(self, head: bool = False) -> tuple[int, int]:
        srv = self.server
        if self.path != "/models/ltx.safetensors":
            self.send_error(404)
            return -1, -1
        if srv.failures:
            self._refuse(srv.failures.pop(0))
            return -1, -1
        if head and srv.head_status:
            self._refuse(srv.head_status)
            return -1, -1
        start, end = 0, len(srv.blob)
        if srv.ranges and self.headers.get("Range", "").startswith("bytes="):
            first, _, last = self.headers["Range"][6:].partition("-")
            start, end = int(first), min(end, int(last) + 1) if last else end
            srv.range_requests += 1
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(srv.blob)}")
        else:
            self.send_response(200)
        if srv.ranges:
            self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", '"v1"')
        if not head or srv.head_length:
            self.send_header("Content-Length", str(end - start))
        self.end_headers()
        return start, end

    def do_HEAD(self) -> None:
        self.server.heads += 1
        self._head(head=True)

    def do_GET(self) -> None:
        start, end = self._head()
        if start < 0:
            return
        srv = self.server
        stop = end
        if srv.break_after is not None:
            stop, srv.break_after = min(end, start + srv.break_after), None
        self.wfile.write(srv.blob[start:stop])
        srv.sent += stop - start
        if stop < end:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def server():
    srv = _Server(("127.0.0.1", 0), _Handler)
    srv.failures = []
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}/models/ltx.safetensors"
    yield srv
    srv.shutdown()


def test_local_paths_and_file_uris_are_used_in_place(tmp_path):
    ckpt = tmp_path / "ltx.safetensors"
    ckpt.write_bytes(b"x" * 10)
    (tmp_path / "gemma").mkdir()
    paths, tally = provision([str(ckpt), f"file://{tmp_path}/gemma"], tmp_path / "cache")
    assert paths == [ckpt, tmp_path / "gemma"]
    assert (tally.downloaded, tally.reused, tally.local) == (0, 0, 10)
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("uri", ["file:///nonexistent/ltx.safetensors", "/nonexistent/gemma",
                                 "ftp://host/ltx.safetensors"])
def test_a_missing_or_unsupported_source_is_the_profiles_fault_and_named(tmp_path, uri):
    with pytest.raises(ModelConfigError, match=uri.replace("/", ".")):
        provision([uri], tmp_path / "cache")


def test_https_cold_then_warm_cache_and_progress_messages(tmp_path, server):
    messages: list[str] = []
    (path,), cold = provision([server.url], tmp_path / "cache", report=messages.append)
    assert path.read_bytes() == BLOB and path.name == "ltx.safetensors"
    assert (cold.downloaded, cold.reused) == (len(BLOB), 0)
    assert messages[0] == "fetching model: 0.0 of 0.0 GiB"
    assert messages[-1].startswith("fetching model: 0.0 of 0.0 GiB")  # 3 MiB: both ends round to 0.0
    sent = server.sent
    (again,), warm = provision([server.url], tmp_path / "cache", report=messages.append)
    assert again == path
    assert (warm.downloaded, warm.reused) == (0, len(BLOB))
    assert server.sent == sent  # nothing crossed the wire the second time
    marker = next((tmp_path / "cache").glob("*/*/.complete"))
    assert '"ltx.safetensors"' in marker.read_text()


def test_no_cache_volume_is_said_in_the_message(tmp_path, server):
    messages: list[str] = []
    provision([server.url], tmp_path / "scratch", report=messages.append, shared_cache=False)
    assert all(m.endswith("(no cache volume: into scratch, every run)") for m in messages)


def test_an_interrupted_download_resumes_by_range(tmp_path, server):
    half = len(BLOB) // 2
    server.break_after = half  # the first GET breaks off half way
    (path,), tally = provision([server.url], tmp_path / "cache")
    assert path.read_bytes() == BLOB
    assert server.range_requests == 1
    assert tally.downloaded == len(BLOB)
    # From the last whole chunk on, not the whole file again (at most one chunk is read twice).
    assert server.sent - len(BLOB) < CHUNK
    assert not list((tmp_path / "cache").rglob(f"*{PARTIAL}"))


def test_a_partial_file_left_by_a_dead_process_is_resumed(tmp_path, server):
    provision([server.url], tmp_path / "first")  # learn the entry's path
    entry = next((tmp_path / "first").glob("*/*"))
    rel = entry.relative_to(tmp_path / "first")
    target = tmp_path / "cache" / rel / "ltx.safetensors"
    target.parent.mkdir(parents=True)
    target.with_name(target.name + PARTIAL).write_bytes(BLOB[:1000])
    sent = server.sent
    (path,), tally = provision([server.url], tmp_path / "cache")
    assert path == target and path.read_bytes() == BLOB
    assert tally.downloaded == len(BLOB) - 1000 == server.sent - sent


def test_a_server_without_ranges_restarts_the_file(tmp_path, server):
    server.ranges = False
    server.break_after = 1000
    (path,), _ = provision([server.url], tmp_path / "cache")
    assert path.read_bytes() == BLOB


def test_sha256_suffix_is_verified(tmp_path, server):
    good = hashlib.sha256(BLOB).hexdigest()
    (path,), _ = provision([f"{server.url}#sha256={good}"], tmp_path / "ok")
    assert path.read_bytes() == BLOB
    with pytest.raises(ModelConfigError, match="does not match its #sha256"):
        provision([f"{server.url}#sha256={'0' * 64}"], tmp_path / "bad")
    assert not list((tmp_path / "bad").rglob("ltx.safetensors*"))


def test_missing_https_source_is_the_profiles_fault(tmp_path, server):
    url = server.url.replace("ltx", "nope")
    with pytest.raises(ModelConfigError, match=f"{url}: HTTP 404"):
        provision([url], tmp_path / "cache")


@pytest.fixture
def sleeps(monkeypatch) -> list[float]:
    """The waits between retries, recorded instead of slept."""
    import iclora_trainer.model.provision as provision_module

    waited: list[float] = []
    monkeypatch.setattr(provision_module.time, "sleep", waited.append)
    return waited


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_a_transient_status_is_retried_with_backoff(tmp_path, server, sleeps, status):
    server.failures = [status, status]  # the HEAD twice (e.g. many pods starting at once), then served
    (path,), tally = provision([server.url], tmp_path / "cache")
    assert path.read_bytes() == BLOB and tally.downloaded == len(BLOB)
    assert sleeps == [0.5, 1.0]


def test_retry_after_is_honoured_and_bounded(tmp_path, server, sleeps):
    from iclora_trainer.model.provision import RETRY_AFTER_MAX

    server.failures, server.retry_after = [429], "7"
    provision([server.url], tmp_path / "a")
    server.failures, server.retry_after = [429], "86400"
    provision([server.url], tmp_path / "b")
    server.failures, server.retry_after = [503], "Wed, 21 Oct 2015 07:28:00 GMT"  # a date passed: at once
    provision([server.url], tmp_path / "c")
    assert sleeps == [7.0, RETRY_AFTER_MAX, 0.0]


@pytest.mark.parametrize("status", [408, 429, 503])
def test_a_status_that_stays_transient_is_a_store_outage_never_the_profiles_fault(tmp_path, server, sleeps,
                                                                                 status):
    server.failures = [status] * 10
    with pytest.raises(ObjectStoreError, match=f"{server.url}: HTTP {status} .*after 4 attempts"):
        provision([server.url], tmp_path / "cache")
    assert len(sleeps) == 3


@pytest.mark.parametrize("status", [401, 403, 404, 410])
def test_a_refused_source_is_the_profiles_fault_at_once(tmp_path, server, sleeps, status):
    server.failures = [status] * 10  # a 403 to HEAD is retried once as a ranged GET (a presigned URL)
    with pytest.raises(ModelConfigError, match=f"{server.url}: HTTP {status}"):
        provision([server.url], tmp_path / "cache")
    assert sleeps == []


@pytest.mark.parametrize("refusal", [403, 405, "no length"])
def test_metadata_from_a_ranged_get_when_head_is_refused_or_says_no_length(tmp_path, server, refusal):
    if refusal == "no length":
        server.head_length = False
    else:
        server.head_status = refusal  # a presigned GET URL answers 403 to HEAD
    (path,), tally = provision([server.url], tmp_path / "cache")
    assert path.read_bytes() == BLOB and tally.downloaded == len(BLOB)
    assert server.range_requests == 1  # the one-byte probe: its Content-Range gave the size
    assert server.sent == len(BLOB) + 1  # the probe read nothing more
    # The same version as through HEAD: the cache entry is found again (ETag and size agree).
    server.head_status, server.head_length = None, True
    (again,), warm = provision([server.url], tmp_path / "cache")
    assert again == path and warm.reused == len(BLOB)


def test_without_head_or_ranges_the_whole_files_length_is_used(tmp_path, server):
    server.head_status, server.ranges = 403, False  # the probe gets a 200 with the whole file's length
    (path,), _ = provision([server.url], tmp_path / "cache")
    assert path.read_bytes() == BLOB


def test_an_unreachable_server_is_a_store_outage_retried(tmp_path, monkeypatch):
    import iclora_trainer.model.provision as provision_module

    monkeypatch.setattr(provision_module.time, "sleep", lambda s: None)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ObjectStoreError, match=f"127.0.0.1:{port}/ltx.safetensors: .*after 4 attempts"):
        provision([f"http://127.0.0.1:{port}/ltx.safetensors"], tmp_path / "cache")


def test_concurrent_fetches_of_one_source_download_it_once(tmp_path, server):
    results: list = []
    messages: list[str] = []

    def fetch() -> None:
        results.append(provision([server.url], tmp_path / "cache", report=messages.append))

    threads = [threading.Thread(target=fetch) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 3
    assert {str(paths[0]) for paths, _ in results} == {str(results[0][0][0])}
    assert sorted(t.downloaded for _, t in results) == [0, 0, len(BLOB)]
    assert server.sent == len(BLOB)


# --- s3:// (the session's SeaweedFS) ------------------------------------------------------------


@pytest.fixture
def s3(s3_store, monkeypatch):
    """The local store, its credentials as the model store's variables (ICLORA_MODEL_AWS_*)."""
    from iclora_api.contract import MODEL_CREDENTIALS_ENV_PREFIX

    for k, v in s3_store.env().items():
        monkeypatch.setenv(MODEL_CREDENTIALS_ENV_PREFIX + k, v)
    return s3_store


@pytest.mark.slow
def test_s3_object_and_prefix(tmp_path, s3):
    client = s3.client()
    prefix = f"models/{tmp_path.name}"
    small = b"ckpt" * 1000
    import io

    client.put_object(s3.bucket, f"{prefix}/ltx.safetensors", io.BytesIO(small), len(small))
    files = {"config.json": b"{}", "tokenizer/tokenizer.model": b"t" * 100, "model-00001.safetensors": b"w" * 5000}
    for rel, data in files.items():
        client.put_object(s3.bucket, f"{prefix}/gemma/{rel}", io.BytesIO(data), len(data))
    base = f"s3://{s3.bucket}/{prefix}"
    (ckpt, gemma, gemma2), tally = provision([f"{base}/ltx.safetensors", f"{base}/gemma/", f"{base}/gemma"],
                                             tmp_path / "cache")
    assert ckpt.read_bytes() == small and ckpt.name == "ltx.safetensors"
    assert gemma.name == "gemma"
    # A folder with or without its trailing slash (no object named like the folder).
    for folder in (gemma, gemma2):
        assert {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()} == files
    assert tally.downloaded == len(small) + 2 * sum(map(len, files.values()))
    _, warm = provision([f"{base}/ltx.safetensors", f"{base}/gemma/"], tmp_path / "cache")
    assert (warm.downloaded, warm.reused) == (0, len(small) + sum(map(len, files.values())))
    # A re-uploaded checkpoint is another version: fetched anew, never mixed with the old one.
    client.put_object(s3.bucket, f"{prefix}/ltx.safetensors", io.BytesIO(b"new"), 3)
    (fresh,), again = provision([f"{base}/ltx.safetensors"], tmp_path / "cache")
    assert fresh.read_bytes() == b"new" and again.downloaded == 3 and fresh != ckpt


@pytest.mark.slow
def test_s3_missing_key_or_refused_credentials_are_the_profiles_fault(tmp_path, s3, monkeypatch):
    from iclora_api.contract import MODEL_CREDENTIALS_ENV_PREFIX

    missing = f"s3://{s3.bucket}/models/{tmp_path.name}/missing.safetensors"
    with pytest.raises(ModelConfigError, match=f"{missing}: no such object"):
        provision([missing], tmp_path / "cache")
    monkeypatch.setenv(MODEL_CREDENTIALS_ENV_PREFIX + "AWS_SECRET_ACCESS_KEY", "wrong")
    with pytest.raises(ModelConfigError, match=f"{missing}: (SignatureDoesNotMatch|InvalidAccessKeyId|AccessDenied)"):
        provision([missing], tmp_path / "cache")


def test_a_cache_the_trainer_cannot_write_is_the_profiles_fault(tmp_path, server, monkeypatch):
    import iclora_trainer.model.provision as provision_module

    def refused(path, waiting):  # as a hostPath the node created for root (these tests may run as root)
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(provision_module, "_locked", refused)
    with pytest.raises(ModelConfigError, match="is not writable by uid"):
        provision([server.url], tmp_path / "cache")


@pytest.mark.parametrize("rel", ["../x", "a/../../x", "/etc/passwd", "a//b", "./a", "a/./b", "", "a\\..\\b"])
def test_a_folder_object_that_would_leave_its_cache_entry_is_refused(rel):
    from iclora_trainer.model.provision import _safe_rel

    with pytest.raises(ModelConfigError, match="not a plain relative path"):
        _safe_rel("s3://b/models/gemma/", rel)


def test_plain_folder_objects_keep_their_relative_paths():
    from iclora_trainer.model.provision import _safe_rel

    assert _safe_rel("s3://b/models/gemma/", "tokenizer/tokenizer.model") == "tokenizer/tokenizer.model"
