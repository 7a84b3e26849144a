"""Pytest fixtures for tests against the local cluster.

Load with ``pytest_plugins = ["iclora_dev.pytest_plugin"]``.

- ``s3_store`` (session): a SeaweedFS S3 store (``S3Store``: endpoint, host, access_key,
  secret_key, bucket, ``client()``).
- ``local_cluster`` (session): a running ``LocalCluster`` (kubeconfig, api_url, token,
  ca_file, binaries, pods_dir, node names, ``env()``); its ``s3`` is ``s3_store``. The local
  runner node is tainted ``iclora.dev/local-runner=true:NoSchedule``: pods that should run
  as real processes tolerate it (and select ``iclora.dev/local-runner=true``); every other
  pod lands on kwok nodes.
- ``local_cluster_config`` (session): the ``ClusterConfig`` used; override it in a conftest.
- ``k8s_api`` (session): a ``kubernetes.client.ApiClient`` for the cluster.
- ``k8s_namespace`` (function): a fresh namespace, deleted afterwards.
- ``wait_for(check, timeout)``: poll until ``check()`` is truthy (assert on state, not logs).

When the binaries are missing the fixtures fail (never skip): CI must notice.
"""

from __future__ import annotations

import atexit
import dataclasses
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from iclora_dev.localcluster import binaries
from iclora_dev.localcluster.cluster import ClusterConfig, LocalCluster, reap_orphans
from iclora_dev.localcluster.s3 import LocalS3, S3Store

T = TypeVar("T")


def wait_for(
    check: Callable[[], T | None], timeout: float = 30.0, interval: float = 0.2, what: str = ""
) -> T:
    """Poll ``check`` until it returns something truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout} s waiting for {what or check}; last value {last!r}")


def wait_for_default_service_account(api: Any, namespace: str, timeout: float = 30.0) -> None:
    """Wait until ``namespace``'s default ServiceAccount exists (the ServiceAccount controller
    creates it shortly after the namespace; pods cannot be created before it)."""
    from kubernetes import client

    core = client.CoreV1Api(api)

    def exists() -> bool:
        try:
            core.read_namespaced_service_account("default", namespace)
        except client.ApiException as exc:
            if exc.status != 404:
                raise
            return False
        return True

    wait_for(exists, timeout=timeout, interval=0.1, what=f"the default ServiceAccount of namespace {namespace}")


def _base_dir() -> Path:
    return binaries.cache_root() / "clusters" / "pytest"


def _session_dir(kind: str) -> Path:
    base = _base_dir()
    reap_orphans(base)  # clusters of earlier runs that crashed before their teardown
    return base / f"{kind}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


@pytest.fixture(scope="session")
def s3_store() -> Iterator[S3Store]:
    s3 = LocalS3(_session_dir("s3"))
    store = s3.start()
    atexit.register(s3.stop)
    try:
        yield store
    finally:
        s3.stop()
        shutil.rmtree(s3.state_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def local_cluster_config() -> ClusterConfig:
    """Override in a conftest to shape the session cluster (e.g. an untainted local runner)."""
    return ClusterConfig(local_runner_tainted=True)


@pytest.fixture(scope="session")
def local_cluster(local_cluster_config: ClusterConfig, s3_store: S3Store) -> Iterator[LocalCluster]:
    try:
        binaries.require_binaries()
    except binaries.BinariesMissing as exc:
        pytest.fail(str(exc), pytrace=False)
    # S3 comes from the s3_store fixture, so tests that need only S3 do not start a cluster.
    config = dataclasses.replace(local_cluster_config, s3=False, die_with_parent=True)
    cluster = LocalCluster(_session_dir("cluster"), config)
    cluster.start()
    cluster.s3 = s3_store
    cluster.save_state()  # so `iclora local-cluster env --state-dir ...` shows the S3 credentials too
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def k8s_api(local_cluster: LocalCluster) -> Any:
    from kubernetes import config

    return config.new_client_from_config(str(local_cluster.kubeconfig))


@pytest.fixture
def k8s_namespace(k8s_api: Any) -> Iterator[str]:
    from kubernetes import client

    core = client.CoreV1Api(k8s_api)
    name = f"t-{uuid.uuid4().hex[:10]}"
    core.create_namespace({"metadata": {"name": name, "labels": {"iclora.dev/test": "true"}}})
    wait_for_default_service_account(k8s_api, name)
    try:
        yield name
    finally:
        core.delete_namespace(name, propagation_policy="Background")
