"""Output/input locations: a local directory or an s3:// prefix (minio client).

S3 credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, the endpoint from
AWS_ENDPOINT_URL and the region from AWS_REGION (iclora_api.objectstore: http:// means no
TLS). Writes are atomic: local files are renamed into place; S3 objects appear whole on PUT.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse

from iclora_api.objectstore import StoreCredentials, make_client
from iclora_trainer.errors import ObjectStoreError


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
        base = self.root / prefix
        if not base.exists():
            return []
        return sorted(
            str(p.relative_to(self.root))
            for p in base.rglob("*")
            if p.is_file() and not p.name.endswith(".tmp")
        )

    def delete_prefix(self, prefix: str) -> None:
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


def materialise(uri: str, local: Path) -> Path:
    """A local directory holding the tree at `uri` (downloaded if it is an s3:// prefix)."""
    if not uri.startswith("s3://"):
        return Path(uri)
    store = S3Store(uri)
    for key in store.list(""):
        store.get_file(key, local / key)
    return local
