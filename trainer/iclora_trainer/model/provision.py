"""Base-model sources -> local paths, through a node cache: what `iclora train` does before loading.

A source is a URI the TrainingProfile names (`model.checkpoint`, `model.textEncoder`) or a plain
path (the CLI on one GPU box):

    /path, file:///path        used in place (a node folder or a mounted volume); must exist
    s3://bucket/key            one object; `s3://bucket/prefix/` (or a key with objects under
                               `key/`) is a folder: every object under it
    https://host/path          one file (http:// too, for local servers)

A `#sha256=<hex>` suffix on a downloaded source is checked after the download.

Downloads go into a cache folder (TrainerSettings.model_cache_dir: a hostPath or PVC the
profile names; without one, the pod's scratch), laid out per source and per version:

    <cache>/<source id>.lock                  flock: one process per node downloads a source
    <cache>/<source id>/<version id>/<name>   the file or folder, complete
    <cache>/<source id>/<version id>/.complete  marker: the source, its version, every file's size
    ...<name>.partial                         an interrupted download, resumed by byte range

The version id is a hash of what the source says about itself (ETag, size and version id of
each S3 object; ETag or Last-Modified and length of an https file), so a re-uploaded checkpoint
is a new entry and never mixed with the old one. Every process (each local rank, each pod on
the node) takes the source's lock, finds the marker or downloads what is missing, verifies it
(sizes always; the MD5 an S3 single-part ETag is, and a #sha256 suffix) and renames it into
place before writing the marker. A process that dies releases its lock with it; its partial
file is resumed by the next one. A source that is missing, unreadable or refused is the
profile's fault (ModelConfigError, naming the URI: the run fails as ProfileInvalid, billed 0);
a network or store outage is an ObjectStoreError (retried by the Job), and so is an https
status that says "not now" (408, 429, 5xx) once its retries (with backoff, honouring a bounded
Retry-After) are spent. An https file's size and version come from HEAD, or from a one-byte
ranged GET where HEAD is refused (presigned GET URLs answer 403) or states no length.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from iclora_api.contract import MODEL_CREDENTIALS_ENV_PREFIX, ModelFetch, split_s3_uri
from iclora_api.objectstore import TRANSFERS, StoreCredentials, make_client
from iclora_trainer.errors import ModelConfigError, ObjectStoreError
from iclora_trainer.podlock import locked

log = logging.getLogger(__name__)

CHUNK = 1 << 20
MARKER = ".complete"
PARTIAL = ".partial"
ATTEMPTS = 4
REPORT_SECONDS = 5.0
GIB = 1024**3
# S3 errors that mean the source itself is wrong (the profile's fault), not the network.
_REFUSED_S3_CODES = {
    "NoSuchKey", "NoSuchBucket", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch",
    "AllAccessDisabled", "InvalidBucketName", "InvalidObjectState", "NoSuchVersion",
}
# HTTP statuses that say "not now" (a timeout, a rate limit, an overloaded or restarting server):
# retried with backoff, then an ObjectStoreError; never the profile's fault.
_TRANSIENT_HTTP = frozenset({408, 429, 500, 502, 503, 504})
RETRY_AFTER_MAX = 30.0  # seconds: the most a Retry-After header makes one retry wait
_SHA256 = re.compile(r"#sha256=([0-9a-fA-F]{64})$")

Report = Callable[[str], None]


@dataclass(frozen=True)
class RemoteFile:
    """One file of a source: its path relative to the source, size and checksums."""

    rel: str
    size: int
    etag: str = ""
    md5: str | None = None  # hex MD5 of the content, where the source states one
    sha256: str | None = None
    ref: Any = None  # how the backend finds it again (the object key, the URL)


@dataclass
class Source:
    """A resolved remote source: where it is, what it holds, and how to read a file of it."""

    uri: str
    name: str
    folder: bool
    files: list[RemoteFile]
    version: str
    open_range: Callable[[RemoteFile, int], Iterator[bytes]] = field(repr=False)

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)


@dataclass
class Tally:
    """Bytes of one run's model sources: downloaded now, found complete in the cache, used in place."""

    downloaded: int = 0
    reused: int = 0
    local: int = 0

    def report(self, cache: Path | None) -> ModelFetch:
        return ModelFetch(downloaded_bytes=self.downloaded, reused_bytes=self.reused, local_bytes=self.local,
                          cache=str(cache) if cache else None)


class _Meter:
    """Turns byte counts into "fetching model: 12.3 of 44.0 GiB" messages, at most every few seconds."""

    def __init__(self, total: int, done: int, report: Report | None, where: str) -> None:
        self.total, self.done, self.report, self.where = total, done, report, where
        self._last = 0.0

    def add(self, n: int, force: bool = False) -> None:
        self.done += n
        now = time.monotonic()
        if self.report and (force or now - self._last >= REPORT_SECONDS):
            self._last = now
            self.report(f"fetching model: {self.done / GIB:.1f} of {self.total / GIB:.1f} GiB{self.where}")


def _strip_checksum(uri: str) -> tuple[str, str | None]:
    m = _SHA256.search(uri)
    return (uri[: m.start()], m.group(1).lower()) if m else (uri, None)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:20]


# --- backends ---------------------------------------------------------------------------------


def _s3_error(uri: str, exc: Exception) -> Exception:
    from minio.error import S3Error

    if isinstance(exc, S3Error) and exc.code in _REFUSED_S3_CODES:
        return ModelConfigError(f"model source {uri}: {exc.code} ({exc.message})")
    return ObjectStoreError(f"model source {uri}: {type(exc).__name__}: {exc}")


def _safe_rel(uri: str, rel: str) -> str:
    """A folder source's object name below its prefix as a relative path that stays in the cache entry.

    Object keys are arbitrary strings: `a/../../x`, `/etc/x` or `a//b` would otherwise address a
    file outside the entry (another source's cached weights). Such a key is refused, naming it.
    """
    parts = rel.split("/")
    if not rel or rel.startswith("/") or any(part in ("", ".", "..") for part in parts) or "\\" in rel:
        raise ModelConfigError(f"model source {uri}: object {rel!r} is not a plain relative path; refusing it")
    return rel


def _resolve_s3(uri: str, env: Mapping[str, str]) -> Source:
    from minio.error import S3Error

    creds = StoreCredentials.from_env(env, prefix=MODEL_CREDENTIALS_ENV_PREFIX)
    try:
        client = make_client(creds, TRANSFERS)
    except ValueError as exc:
        raise ModelConfigError(f"model source {uri}: {exc}") from exc
    bucket, key = split_s3_uri(uri)
    files: list[RemoteFile] = []
    folder = key == "" or key.endswith("/")
    try:
        if not folder:
            try:
                stat = client.stat_object(bucket, key)
            except S3Error as exc:
                if exc.code != "NoSuchKey":
                    raise
            else:
                etag = (stat.etag or "").strip('"')
                files.append(RemoteFile(Path(key).name, int(stat.size or 0), etag,
                                        etag if re.fullmatch(r"[0-9a-f]{32}", etag) else None,
                                        ref=(key, stat.version_id)))
        if not files:
            prefix = key if folder else key + "/"
            for obj in client.list_objects(bucket, prefix=prefix, recursive=True):
                if obj.is_dir or obj.object_name.endswith("/"):
                    continue
                etag = (obj.etag or "").strip('"')
                files.append(RemoteFile(_safe_rel(uri, obj.object_name[len(prefix):]), int(obj.size or 0), etag,
                                        etag if re.fullmatch(r"[0-9a-f]{32}", etag) else None,
                                        ref=(obj.object_name, obj.version_id)))
            folder = True
    except Exception as exc:
        raise _s3_error(uri, exc) from exc
    if not files:
        raise ModelConfigError(f"model source {uri}: no such object, and no objects under {key or '/'}")

    def open_range(f: RemoteFile, offset: int) -> Iterator[bytes]:
        obj_key, version = f.ref
        try:
            response = client.get_object(bucket, obj_key, offset=offset, version_id=version)
        except Exception as exc:
            raise _s3_error(uri, exc) from exc
        try:
            yield from response.stream(CHUNK)
        finally:
            response.close()
            response.release_conn()

    name = Path(key.rstrip("/")).name or bucket
    version = _digest(json.dumps(sorted((f.rel, f.size, f.etag, str(f.ref[1])) for f in files)))
    return Source(uri, name, folder, files, version, open_range)


def _retry_after(value: str | None) -> float | None:
    """Seconds a Retry-After header asks for (delta-seconds or an HTTP date), capped; None without one."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - time.time()
    return min(max(seconds, 0.0), RETRY_AFTER_MAX)


def _http_get(url: str, headers: dict[str, str], *, head: bool = False,
              allow: frozenset[int] = frozenset()) -> Any:
    """A request, retried with backoff on connection errors and transient statuses (408, 429, 5xx).

    A Retry-After the server sends (a rate limit, many pods starting at once) replaces the
    backoff, capped at RETRY_AFTER_MAX. Still failing after ATTEMPTS: ObjectStoreError (the Job
    retries). Other 4xx (401, 403, 404, 410...) are the source's fault: ModelConfigError naming
    the URI, unless the status is in `allow` (returned to the caller).
    """
    import requests

    last = ""
    wait = 0.0
    for attempt in range(ATTEMPTS):
        if attempt:
            time.sleep(wait)
        wait = 0.5 * 2**attempt  # before the next attempt, unless the server says otherwise
        try:
            if head:
                response = requests.head(url, headers=headers, allow_redirects=True, timeout=(10, 60))
            else:
                response = requests.get(url, headers=headers, stream=True, allow_redirects=True, timeout=(10, 120))
        except requests.exceptions.SSLError as exc:
            raise ModelConfigError(f"model source {url}: TLS error ({exc})") from exc
        except requests.RequestException as exc:
            last = f"{type(exc).__name__}: {exc}"
            continue
        status = response.status_code
        if status in allow:
            return response
        if status in _TRANSIENT_HTTP or status >= 500:
            last = f"HTTP {status} {response.reason}"
            hinted = _retry_after(response.headers.get("Retry-After"))
            if hinted is not None:
                wait = hinted
            response.close()
            if attempt < ATTEMPTS - 1:
                log.warning("model source %s: %s; retrying in %.1fs", url, last, wait)
            continue
        if status >= 400:
            response.close()
            raise ModelConfigError(f"model source {url}: HTTP {status} {response.reason}")
        return response
    raise ObjectStoreError(f"model source {url}: {last} (after {ATTEMPTS} attempts)")


def _content_range_total(value: str | None) -> int | None:
    """The complete length in a Content-Range header (`bytes 0-0/1234`); None if absent or `*`."""
    m = re.fullmatch(r"\s*bytes\s+(?:\d+-\d+|\*)/(\d+)\s*", value or "")
    return int(m.group(1)) if m else None


def _resolve_http(uri: str) -> Source:
    """The file's size and version from a HEAD, else from a one-byte ranged GET.

    Presigned GET URLs answer 403 (or 405) to HEAD, and some servers send no Content-Length on
    HEAD: then `Range: bytes=0-0` gives the total in Content-Range (or a 200 with the whole
    file's Content-Length), with the same ETag / Last-Modified.
    """
    plain = {"Accept-Encoding": "identity"}
    response = _http_get(uri, plain, head=True, allow=frozenset({403, 405}))
    response.close()
    meta, url = response.headers, response.url
    length = _int_or_none(meta.get("Content-Length")) if response.status_code < 400 else None
    ranges = meta.get("Accept-Ranges", "").lower() == "bytes"
    if length is None:
        log.info("model source %s: HEAD gave %s; probing with a ranged GET", uri,
                 f"HTTP {response.status_code}" if response.status_code >= 400 else "no Content-Length")
        probe = _http_get(uri, {**plain, "Range": "bytes=0-0"})
        probe.close()  # headers only: never read the body
        meta, url = probe.headers, probe.url
        if probe.status_code == 206:
            length, ranges = _content_range_total(meta.get("Content-Range")), True
        else:
            length = _int_or_none(meta.get("Content-Length"))
            ranges = meta.get("Accept-Ranges", "").lower() == "bytes"
    if length is None:
        raise ModelConfigError(f"model source {uri}: the server states no size (no Content-Length on HEAD, "
                               "no Content-Range on a ranged GET)")
    etag = meta.get("ETag") or meta.get("Last-Modified") or ""
    name = Path(unquote(urlsplit(uri).path)).name or "model"
    remote = RemoteFile(name, length, etag, ref=url)

    def open_range(f: RemoteFile, offset: int) -> Iterator[bytes]:
        headers = {"Accept-Encoding": "identity"}
        if offset and ranges:
            headers["Range"] = f"bytes={offset}-"
            if f.etag:
                headers["If-Range"] = f.etag
        got = _http_get(f.ref, headers)
        with got:
            if offset and got.status_code != 206:
                raise _Restart()  # the server sends the whole file: start over
            yield from got.iter_content(CHUNK)

    return Source(uri, name, False, [remote], _digest(f"{etag}|{length}"), open_range)


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


class _Restart(Exception):
    """The source cannot resume this partial download: restart it from byte 0."""


# --- the cache --------------------------------------------------------------------------------


def _locked(path: Path, waiting: Report | None) -> contextlib.AbstractContextManager[None]:
    """The pod's file lock (iclora_trainer.podlock) on a source: one process per node downloads it."""
    return locked(path, waiting, "fetching model: waiting for another process on this node that downloads it")


def _complete(entry: Path, source: Source) -> bool:
    """The marker is there and every file has the size it names."""
    try:
        marker = json.loads((entry / MARKER).read_text())
    except (OSError, ValueError):
        return False
    root = entry / source.name
    if marker.get("version") != source.version:
        return False
    for rel, size in (marker.get("files") or {}).items():
        path = root / rel if source.folder else root
        try:
            if path.stat().st_size != size:
                return False
        except OSError:
            return False
    return True


def _download(source: Source, f: RemoteFile, target: Path, sha256: str | None, meter: _Meter) -> int:
    """Fetch one file into `target` (resuming its .partial), verify it, rename it into place.

    A checksum mismatch discards the file and fetches it once more: twice wrong is a corrupt
    source (an admin's #sha256 that does not match is the profile's fault).
    """
    partial = target.with_name(target.name + PARTIAL)
    partial.parent.mkdir(parents=True, exist_ok=True)
    fetched = 0
    for check in range(2):
        fetched += _transfer(source, f, partial, meter)
        size = partial.stat().st_size
        if size != f.size:
            partial.unlink()
            raise ObjectStoreError(f"model source {source.uri}: {f.rel}: got {size} bytes, expected {f.size}")
        wrong = [name for name, want in (("md5", f.md5), ("sha256", sha256 or f.sha256))
                 if want and _file_digest(partial, name) != want]
        if not wrong:
            partial.replace(target)
            return fetched
        partial.unlink()
        log.warning("model source %s: %s: %s mismatch%s", source.uri, f.rel, wrong[0],
                    "; fetching it again" if check == 0 else "")
    if "sha256" in wrong and sha256:
        raise ModelConfigError(f"model source {source.uri}: {f.rel} does not match its #sha256")
    raise ObjectStoreError(f"model source {source.uri}: {f.rel}: {wrong[0]} mismatch (corrupt download)")


def _transfer(source: Source, f: RemoteFile, partial: Path, meter: _Meter) -> int:
    """Append the rest of `f` to `partial` (from its current size); retry broken connections."""
    fetched = 0
    for attempt in range(ATTEMPTS):
        offset = partial.stat().st_size if partial.exists() else 0
        if offset > f.size:
            partial.unlink()
            offset = 0
        if offset >= f.size:
            return fetched
        if offset:
            log.info("model source %s: resuming %s at byte %d of %d", source.uri, f.rel, offset, f.size)
        try:
            with open(partial, "ab") as out:
                for chunk in source.open_range(f, offset):
                    out.write(chunk)
                    fetched += len(chunk)
                    meter.add(len(chunk))
            return fetched
        except _Restart:
            partial.unlink(missing_ok=True)
        except ModelConfigError:
            raise
        except Exception as exc:  # the connection broke mid-file: resume from what arrived
            if attempt == ATTEMPTS - 1:
                if isinstance(exc, ObjectStoreError):
                    raise
                raise ObjectStoreError(f"model source {source.uri}: {f.rel}: {type(exc).__name__}: {exc}") from exc
            log.warning("model source %s: %s broke off (%s); resuming", source.uri, f.rel, exc)
            time.sleep(0.5 * 2**attempt)
    raise ObjectStoreError(f"model source {source.uri}: {f.rel}: could not resume")


def _file_digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _local(uri: str) -> Path:
    path = Path(unquote(urlsplit(uri).path)) if uri.startswith("file://") else Path(uri)
    if not path.exists():
        raise ModelConfigError(f"model source {uri}: no such file or folder {path}")
    return path


def resolve(uri: str, env: Mapping[str, str] | None = None) -> Source | Path:
    """A local Path for file:// and plain paths; a Source (files, version) for s3:// and https://."""
    env = os.environ if env is None else env
    plain, _ = _strip_checksum(uri)
    scheme = urlsplit(plain).scheme
    if scheme == "s3":
        return _resolve_s3(plain, env)
    if scheme in ("http", "https"):
        return _resolve_http(plain)
    if scheme in ("", "file"):
        return _local(plain)
    raise ModelConfigError(f"model source {uri}: unsupported scheme {scheme!r} (s3://, file://, https://)")


def provision(
    uris: list[str],
    cache_dir: Path,
    *,
    env: Mapping[str, str] | None = None,
    report: Report | None = None,
    shared_cache: bool = True,
) -> tuple[list[Path], Tally]:
    """Local paths of `uris` (in order), fetched into `cache_dir` where remote, and the byte tally."""
    tally = Tally()
    resolved = [resolve(uri, env) for uri in uris]
    sources = [r for r in resolved if isinstance(r, Source)]
    where = "" if shared_cache else " (no cache volume: into scratch, every run)"
    missing = sum(s.size for s in sources if not _complete(_entry(cache_dir, s), s))
    meter = _Meter(missing, 0, report, where)
    if sources and missing:
        meter.add(0, force=True)
    out: list[Path] = []
    for uri, item in zip(uris, resolved, strict=True):
        if isinstance(item, Path):
            tally.local += item.stat().st_size if item.is_file() else 0
            out.append(item)
            continue
        _, sha256 = _strip_checksum(uri)
        out.append(_fetch(item, cache_dir, sha256, meter, tally, report))
    if sources and missing:
        meter.add(0, force=True)
    return out, tally


def _entry(cache_dir: Path, source: Source) -> Path:
    return cache_dir / _digest(source.uri) / source.version


def _fetch(source: Source, cache_dir: Path, sha256: str | None, meter: _Meter, tally: Tally,
           report: Report | None) -> Path:
    try:
        return _fetch_into(source, cache_dir, sha256, meter, tally, report)
    except PermissionError as exc:  # e.g. a hostPath the node created for root
        raise ModelConfigError(f"model cache {cache_dir} is not writable by uid {os.getuid()} "
                               f"(fetching {source.uri}): {exc}") from exc


def _fetch_into(source: Source, cache_dir: Path, sha256: str | None, meter: _Meter, tally: Tally,
                report: Report | None) -> Path:
    entry = _entry(cache_dir, source)
    root = entry / source.name
    if _complete(entry, source):
        tally.reused += source.size
        log.info("model source %s: in the cache (%s)", source.uri, root)
        return root
    with _locked(cache_dir / f"{_digest(source.uri)}.lock", report):
        if _complete(entry, source):  # another process finished it while we waited
            tally.reused += source.size
            return root
        log.info("model source %s: fetching %d files, %.2f GiB into %s", source.uri, len(source.files),
                 source.size / GIB, root)
        for f in source.files:
            target = root / f.rel if source.folder else root
            if target.exists() and target.stat().st_size == f.size:
                tally.reused += f.size
                continue
            tally.downloaded += _download(source, f, target, sha256 if not source.folder else None, meter)
        marker = {"uri": source.uri, "version": source.version, "files": {f.rel: f.size for f in source.files},
                  "completed": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        tmp = entry / (MARKER + ".tmp")
        tmp.write_text(json.dumps(marker, indent=1))
        tmp.replace(entry / MARKER)
    return root


def provision_settings(settings: Any, report: Report | None = None,
                       env: Mapping[str, str] | None = None) -> tuple[Any, ModelFetch]:
    """TrainerSettings with local model paths: its sources fetched into its model cache (or scratch).

    Without a `model_cache_dir`, downloads go to `<work_dir>/models`, shared by the pod's ranks
    and gone with the pod.
    """
    names = [n for n in ("model_path", "text_encoder_path") if getattr(settings, n)]
    cache = Path(settings.model_cache_dir) if settings.model_cache_dir else None
    paths, tally = provision([getattr(settings, n) for n in names], cache or Path(settings.work_dir) / "models",
                             env=env, report=report, shared_cache=cache is not None)
    local = settings.model_copy(update={n: str(p) for n, p in zip(names, paths, strict=True)})
    return local, tally.report(cache)
