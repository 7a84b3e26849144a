"""Cluster tests: a real control plane, kwok nodes, the local pod runner and S3 (one per session).

The cluster fixtures come from `iclora_dev.pytest_plugin`, loaded in tests/conftest.py; these add
the CRDs, the operator run in-process, TrainingProfiles and a trainings client per namespace.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml

from iclora_api.v1alpha1 import API_GROUP, API_VERSION
from tests.helpers import KWOK_GPU_TOLERATION, REPO_ROOT, Trainings


@pytest.fixture(scope="session")
def installed_crds(k8s_api: Any, local_cluster: Any) -> None:
    """Apply crds/ (what `iclora crd` generated) and wait until they are served."""
    from iclora_operator.adapters.kube import install_crds

    install_crds(k8s_api, [yaml.safe_load(p.read_text()) for p in sorted((REPO_ROOT / "crds").glob("*.yaml"))])


@dataclass
class RunningOperator:
    namespaces: list[str]
    stop: Callable[[], None]
    start: Callable[[], None]


@pytest.fixture
def operator_factory(local_cluster: Any, s3_store: Any,
                     installed_crds: None) -> Iterator[Callable[..., RunningOperator]]:
    """Start the real operator (kopf, in a thread) watching the given namespaces."""
    from iclora_operator.run import run_operator
    from iclora_operator.settings import OperatorSettings, StoreSettings

    running: list[RunningOperator] = []

    def make(namespaces: list[str], kubeconfig: str | None = None, metrics_port: int = 0,
             liveness: str | None = None, **overrides: Any) -> RunningOperator:
        store = StoreSettings(endpoint=s3_store.endpoint, bucket=s3_store.bucket, prefix="runs",
                              access_key=s3_store.access_key, secret_key=s3_store.secret_key)
        settings = OperatorSettings(reconcile_interval_seconds=1.0, store=store, namespaces=namespaces,
                                    allow_private_dataset_hosts=True, report_poll_seconds=1.0,
                                    **overrides)
        state: dict[str, Any] = {}

        def start() -> None:
            stop_flag, ready_flag = threading.Event(), threading.Event()
            thread = threading.Thread(
                target=run_operator, args=(settings,),
                kwargs={"namespaces": namespaces, "stop_flag": stop_flag, "ready_flag": ready_flag,
                        "metrics_port": metrics_port, "liveness": liveness,
                        "kubeconfig": kubeconfig or str(local_cluster.kubeconfig)},
                daemon=True,
            )
            thread.start()
            if not ready_flag.wait(60):
                raise RuntimeError("operator did not become ready in 60 s")
            state.update(thread=thread, stop_flag=stop_flag)

        def stop() -> None:
            if "stop_flag" in state:
                state.pop("stop_flag").set()
                state.pop("thread").join(60)

        op = RunningOperator(namespaces=namespaces, stop=stop, start=start)
        start()
        running.append(op)
        return op

    yield make
    for op in running:
        op.stop()


@pytest.fixture
def profile_factory(k8s_api: Any, installed_crds: None) -> Iterator[Callable[..., str]]:
    """Create uniquely named TrainingProfiles for one test; deleted afterwards."""
    from kubernetes import client

    api = client.CustomObjectsApi(k8s_api)
    created: list[str] = []

    def make(**spec: Any) -> str:
        name = f"p-{uuid.uuid4().hex[:8]}"
        body = {
            "apiVersion": f"{API_GROUP}/{API_VERSION}",
            "kind": "TrainingProfile",
            "metadata": {"name": name},
            "spec": {
                "gpusPerNode": 1,
                "tolerations": [KWOK_GPU_TOLERATION],
                "preflightResources": {"cpu": "100m", "memory": "128Mi"},
                "trainerResources": {"cpu": "100m", "memory": "128Mi"},
                **spec,
            },
        }
        api.create_cluster_custom_object(API_GROUP, API_VERSION, "trainingprofiles", body)
        created.append(name)
        return name

    yield make
    for name in created:
        api.delete_cluster_custom_object(API_GROUP, API_VERSION, "trainingprofiles", name)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The tiny LTX checkpoint and text encoder (iclora_dev.tiny_model), in a folder of their own."""
    from iclora_dev.tiny_model import create_tiny_checkpoint

    return create_tiny_checkpoint(tmp_path_factory.mktemp("tiny-ltx"))


@pytest.fixture
def trainings(k8s_api: Any, k8s_namespace: str) -> Trainings:
    return Trainings(k8s_api, k8s_namespace)
