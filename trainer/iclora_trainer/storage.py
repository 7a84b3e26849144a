"""Output/input locations: a local directory or an s3:// prefix (minio client).

S3 credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, the endpoint from
AWS_ENDPOINT_URL and the region from AWS_REGION (iclora_api.objectstore: http:// means no
TLS). Writes are atomic: local files are renamed into place; S3 objects appear whole on PUT.
"""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse

from iclora_api.objectstore import StoreCredentials, make_client
from iclora_trainer.errors import ObjectStoreError, ScratchError, is_disk_error
from iclora_trainer.podlock import locked


class Store(Protocol):
    uri: str

    def put_file(self, local: Path, key: str) -> str: ...
    def put_bytes(self, data: bytes, key: str) -> str: ...
    def get_file(self, key: str, local: Path) -> None: ...
    def list(self, prefix: str) -> list[str]: ...
    def delete_prefix(self, prefix: str) -> None: ...
    def url(self, key: str) -> str: ...


class LocalStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.uri = str(self.root)

    def url(self, key: str) -> str:
        return str(self.root / key)

    def put_file(self, local: Path, key: str) -> str:
        dest = self.root / key
        dest.parent.mkdir(parents=True, exist_ok=True)
        if Path(local).resolve() != dest.resolve():
            tmp = dest.with_name(dest.name + ".tmp")
            shutil.copyfile(local, tmp)
            tmp.replace(dest)
        return str(dest)

    def put_bytes(self, data: bytes, key: str) -> str:
        dest = self.root / key
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(dest)
        return str(dest)

    def get_file(self, key: str, local: Path) -> None:
        local.parent.mkdir(parents=True, exist_ok=True)
        if (self.root / key).resolve() != Path(local).resolve():
            shutil.copyfile(self.root / key, local)

    def list(self, prefix: str) -> list[str]:
        """Keys that start with `prefix`, as an S3 listing gives them (a folder or a file name)."""
        base = self.root / prefix
        search = base if base.is_dir() else base.parent
        if not search.exists() or not search.resolve().is_relative_to(self.root.resolve()):
            return []
        return sorted(
            key
            for p in search.rglob("*")
            if p.is_file() and not p.name.endswith(".tmp")
            and (key := str(p.relative_to(self.root))).startswith(prefix)
        )

    def delete_prefix(self, prefix: str) -> None:
        """Every key that starts with `prefix` (a folder or a file), as on S3."""
        for key in self.list(prefix):
            (self.root / key).unlink(missing_ok=True)
        if (self.root / prefix).is_dir() and prefix.strip("/"):
            shutil.rmtree(self.root / prefix, ignore_errors=True)


class S3Store:
    def __init__(self, uri: str) -> None:
        parsed = urlparse(uri)
        self.uri = uri.rstrip("/")
        self.bucket = parsed.netloc
        self.prefix = parsed.path.strip("/")
        creds = StoreCredentials.from_env()
        try:
            self.client = make_client(creds)
        except ValueError as exc:  # an endpoint parse_endpoint refuses
            raise ObjectStoreError(f"{uri}: {exc}") from exc

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def url(self, key: str) -> str:
        return f"{self.uri}/{key}"

    def put_file(self, local: Path, key: str) -> str:
        try:
            self.client.fput_object(self.bucket, self._key(key), str(local))
        except Exception as exc:
            raise ObjectStoreError(f"upload {self.url(key)}: {exc}") from exc
        return self.url(key)

    def put_bytes(self, data: bytes, key: str) -> str:
        try:
            self.client.put_object(self.bucket, self._key(key), io.BytesIO(data), len(data))
        except Exception as exc:
            raise ObjectStoreError(f"upload {self.url(key)}: {exc}") from exc
        return self.url(key)

    def get_file(self, key: str, local: Path) -> None:
        try:
            self.client.fget_object(self.bucket, self._key(key), str(local))
        except OSError as exc:
            if is_disk_error(exc):
                raise ScratchError(f"download {self.url(key)} to {local}: {exc}") from exc
            raise ObjectStoreError(f"download {self.url(key)}: {exc}") from exc
        except Exception as exc:
            raise ObjectStoreError(f"download {self.url(key)}: {exc}") from exc

    def list(self, prefix: str) -> list[str]:
        try:
            objects = self.client.list_objects(self.bucket, prefix=self._key(prefix), recursive=True)
            start = len(self.prefix) + 1 if self.prefix else 0
            return sorted(o.object_name[start:] for o in objects)
        except Exception as exc:
            raise ObjectStoreError(f"list {self.url(prefix)}: {exc}") from exc

    def delete_prefix(self, prefix: str) -> None:
        for key in self.list(prefix):
            try:
                self.client.remove_object(self.bucket, self._key(key))
            except Exception as exc:
                raise ObjectStoreError(f"delete {self.url(key)}: {exc}") from exc


def open_store(uri: str) -> Store:
    if uri.startswith("s3://"):
        return S3Store(uri)
    return LocalStore(uri)


DATASET_MARKER = ".complete"


def materialise(uri: str, local: Path, waiting: Callable[[str], None] | None = None) -> Path:
    """A local directory holding the tree at `uri` (downloaded if it is an s3:// prefix).

    `local` is a folder of the pod's scratch, shared by its local ranks: one downloads, the
    others wait on its lock (`download_tree`). A store that fails is an ObjectStoreError (20),
    a full or broken scratch disk a ScratchError (22): both retried, neither the user's fault.
    """
    if not uri.startswith("s3://"):
        return Path(uri)
    return download_tree(S3Store(uri), local, waiting)


def download_tree(store: Store, local: Path, waiting: Callable[[str], None] | None = None) -> Path:
    """Every object of `store` into `local`, once per pod: the same lock and marker as the base model.

    Each process lists the store, then takes `<local>.lock` (iclora_trainer.podlock); the first
    downloads every file and writes `<local>/.complete` (the URI and each file's size) last, the
    others find the marker and download nothing. A process that dies mid-download releases the
    lock and leaves no marker: the next one downloads again. The marker must name exactly the
    store's listing and the files must have its sizes, or the tree is fetched anew.
    """
    keys = store.list("")
    with locked(local.with_name(local.name + ".lock"), waiting,
                "fetching dataset: waiting for another process of this pod that downloads it"):
        if _tree_complete(local, store.uri, keys):
            return local
        try:
            (local / DATASET_MARKER).unlink(missing_ok=True)
            for key in keys:
                (local / key).parent.mkdir(parents=True, exist_ok=True)
                store.get_file(key, local / key)
            marker = {"uri": store.uri, "files": {key: (local / key).stat().st_size for key in keys}}
            tmp = local / (DATASET_MARKER + ".tmp")
            tmp.write_text(json.dumps(marker, indent=1))
            tmp.replace(local / DATASET_MARKER)
        except OSError as exc:
            raise ScratchError(f"dataset {store.uri} into {local} (pod scratch): {exc}") from exc
    return local


def _tree_complete(local: Path, uri: str, keys: list[str]) -> bool:
    try:
        marker = json.loads((local / DATASET_MARKER).read_text())
    except (OSError, ValueError):
        return False
    files = marker.get("files") or {}
    if marker.get("uri") != uri or sorted(files) != sorted(keys):
        return False
    try:
        return all((local / key).stat().st_size == size for key, size in files.items())
    except OSError:
        return False
