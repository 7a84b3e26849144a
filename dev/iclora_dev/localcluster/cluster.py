"""The local cluster: etcd, kube-apiserver, controller-manager, scheduler, kwok, S3 and the pod runner.

``LocalCluster(state_dir).start()`` brings the whole stack up on free loopback ports and
returns once it is usable (API ready, default ServiceAccount present, every node Ready
and untainted, S3 answering). Everything it started is recorded in ``state_dir/state.json``
so ``stop()`` — from this process, another one (``iclora local-cluster down``), or the next
``start()`` on the same folder — kills it, process groups and all.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import dataclasses
import datetime as dt
import json
import logging
import os
import shutil
import ssl
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from iclora_dev.localcluster import binaries, node, nodes, procs
from iclora_dev.localcluster.pki import new_token, write_pki
from iclora_dev.localcluster.ports import free_ports
from iclora_dev.localcluster.s3 import DEFAULT_BUCKETS, S3Store, s3_ready, start_weed

log = logging.getLogger(__name__)

STATE_FILE = "state.json"
LOCAL_RUNNER_NODE = "local-runner-0"
SERVICE_CIDR = "10.96.0.0/16"
STATE_DIR_ENV = "ICLORA_CLUSTER_DIR"


def default_state_dir() -> Path:
    return Path(os.environ.get(STATE_DIR_ENV, binaries.cache_root() / "clusters" / "default"))


class ClusterStartError(RuntimeError):
    pass


@dataclasses.dataclass
class ClusterConfig:
    gpu_nodes: int = 2
    gpus_per_node: int = 8
    cpu_nodes: int = 1
    local_runner: bool = True
    local_runner_gpus: int = 1
    # Tests taint the local node so only pods that tolerate it run as real processes there;
    # the demo leaves it untainted so the operator's Jobs land on it.
    local_runner_tainted: bool = False
    # How the local node runs pods: "processes" (the pod runner: fast, no root, ignores images
    # and security contexts) or "containers" (kubelet + containerd + runc from the product's
    # images, node.py / images.py; needs root).
    node_runtime: str = "processes"
    s3: bool = True
    buckets: tuple[str, ...] = DEFAULT_BUCKETS
    # Kueue out of cluster (needs `build --components kueue`; see kueue.py for its cert pitfall).
    kueue: bool = False
    kueue_gpu_quota: int = 1
    # Kill every component when the starting process dies (tests); off for a detached `up`.
    die_with_parent: bool = True
    start_timeout: float = 90.0


@dataclasses.dataclass
class LocalCluster:
    state_dir: Path
    config: ClusterConfig = dataclasses.field(default_factory=ClusterConfig)
    api_url: str = ""
    token: str = ""
    s3: S3Store | None = None
    processes: list[procs.ProcessRecord] = dataclasses.field(default_factory=list)
    binaries: dict[str, Path] = dataclasses.field(default_factory=dict)
    gpu_node_names: list[str] = dataclasses.field(default_factory=list)
    cpu_node_names: list[str] = dataclasses.field(default_factory=list)
    local_node_name: str | None = None
    node_slot: int | None = None
    owner_pid: int = 0
    started_at: str = ""
    startup_seconds: float = 0.0

    # -- paths ---------------------------------------------------------------------------
    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    @property
    def ca_file(self) -> Path:
        return self.state_dir / "pki" / "ca.crt"

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def pods_dir(self) -> Path:
        """Where the local pod runner keeps each pod's logs, volumes and termination messages."""
        return self.state_dir / "pods"

    @property
    def binaries_dir(self) -> Path | None:
        return self.binaries["kube-apiserver"].parent if self.binaries else None

    @property
    def kubectl(self) -> Path:
        return self.binaries["kubectl"]

    @property
    def helm(self) -> Path:
        return binaries.require_binaries(["helm"])["helm"]

    def tool_dirs(self) -> list[Path]:
        """Folders of kubectl, helm and the other binaries (for PATH)."""
        found = [p.parent for p in self.binaries.values()]
        found += [p.parent for p in map(binaries.find_binary, ("helm", "kueue", "crictl")) if p is not None]
        return sorted(set(found))

    def env(self) -> dict[str, str]:
        """Variables that point tools (kubectl, the operator, tests) at this cluster."""
        out = {"KUBECONFIG": str(self.kubeconfig)}
        if self.node_slot is not None:  # crictl (and ctr) talk to the real node's containerd
            out["CONTAINER_RUNTIME_ENDPOINT"] = f"unix://{node.Slot(self.node_slot).socket}"
        if self.s3:
            out.update(self.s3.env())
        return out

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> LocalCluster:
        t0 = time.monotonic()
        stop_recorded(self.state_dir)
        self.binaries = binaries.require_binaries()
        shutil.rmtree(self.state_dir / "data", ignore_errors=True)
        for sub in ("pods", "logs"):
            shutil.rmtree(self.state_dir / sub, ignore_errors=True)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self.owner_pid = os.getpid()
        if self.config.die_with_parent:
            # Owned by this process: stop it on a normal interpreter exit too (the kernel's
            # PDEATHSIG covers the abnormal ones).
            atexit.register(self.stop)
        self.started_at = dt.datetime.now(dt.UTC).isoformat()
        try:
            self._start_all()
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - t0
        log.info("local cluster up in %.1f s (%s)", self.startup_seconds, self.kubeconfig)
        return self

    def _start_all(self) -> None:
        cfg = self.config
        pki = write_pki(self.state_dir / "pki")
        self.token = new_token()
        (self.state_dir / "tokens.csv").write_text(f'{self.token},admin,admin,"system:masters"\n')
        (self.state_dir / "tokens.csv").chmod(0o600)
        etcd_client, etcd_peer, api_port, cm_port, sched_port, kwok_port = free_ports(6)
        self.api_url = f"https://127.0.0.1:{api_port}"
        self._write_kubeconfig(pki["ca_crt"])

        data = self.state_dir / "data"
        self._spawn(
            "etcd",
            [
                str(self.binaries["etcd"]),
                "--name=local",
                f"--data-dir={data / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{etcd_client}",
                f"--advertise-client-urls=http://127.0.0.1:{etcd_client}",
                f"--listen-peer-urls=http://127.0.0.1:{etcd_peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}",
                f"--initial-cluster=local=http://127.0.0.1:{etcd_peer}",
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )
        if self._containers:
            node.check_host()  # before anything touches the host's network
        if cfg.s3:
            self.s3, record = start_weed(
                data / "s3", self.logs_dir / "weed.log", cfg.buckets, cfg.die_with_parent,
                ip=node.ensure_host_address() if self._containers else "127.0.0.1",
            )
            self.processes.append(record)
        self._spawn(
            "kube-apiserver",
            [
                str(self.binaries["kube-apiserver"]),
                f"--etcd-servers=http://127.0.0.1:{etcd_client}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={api_port}",
                f"--cert-dir={data / 'apiserver'}",
                f"--tls-cert-file={pki['server_crt']}",
                f"--tls-private-key-file={pki['server_key']}",
                f"--client-ca-file={pki['ca_crt']}",
                f"--token-auth-file={self.state_dir / 'tokens.csv'}",
                "--authorization-mode=RBAC",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={pki['sa_pub']}",
                f"--service-account-signing-key-file={pki['sa_key']}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                # OwnerReferencesPermissionEnforcement as on OpenShift: setting blockOwnerDeletion
                # on a child needs `update` on the owner's finalizers subresource.
                "--enable-admission-plugins=ValidatingAdmissionPolicy,OwnerReferencesPermissionEnforcement",
                # No kubelets, no real endpoints: the `kubernetes` Service is not needed here.
                "--endpoint-reconciler-type=none",
                "--allow-privileged=true",
                # Logs and exec through the real node's kubelet (it trusts the cluster CA).
                f"--kubelet-client-certificate={pki['kubelet_client_crt']}",
                f"--kubelet-client-key={pki['kubelet_client_key']}",
                "--kubelet-preferred-address-types=InternalIP,Hostname",
                "--profiling=false",
                "--v=1",
            ],
        )
        self.save_state()
        self._wait("kube-apiserver /readyz", lambda: self._api_get("/readyz") == "ok")

        kubeconfig = str(self.kubeconfig)
        common = [
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            "--v=1",
        ]
        self._spawn(
            "kube-controller-manager",
            [
                str(self.binaries["kube-controller-manager"]),
                *common,
                f"--secure-port={cm_port}",
                f"--cert-dir={data / 'controller-manager'}",
                f"--service-account-private-key-file={pki['sa_key']}",
                f"--root-ca-file={pki['ca_crt']}",
                "--use-service-account-credentials",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                # Keep the node lifecycle controller: it lifts the not-ready taint from new nodes.
                "--controllers=*,-nodeipam,-service,-route,-cloud-node-lifecycle",
            ],
        )
        self._spawn(
            "kube-scheduler",
            [
                str(self.binaries["kube-scheduler"]),
                *common,
                f"--secure-port={sched_port}",
                f"--cert-dir={data / 'scheduler'}",
            ],
        )
        stages = Path(__file__).with_name("stages.yaml")
        self._spawn(
            "kwok",
            [
                str(self.binaries["kwok"]),
                f"--kubeconfig={kubeconfig}",
                f"--config={stages}",
                "--manage-all-nodes=false",
                f"--manage-nodes-with-annotation-selector={nodes.KWOK_ANNOTATION}={nodes.KWOK_ANNOTATION_VALUE}",
                "--cidr=10.0.0.1/16",
                "--node-ip=10.0.0.1",
                "--node-lease-duration-seconds=40",
                f"--server-address=127.0.0.1:{kwok_port}",
            ],
        )
        if cfg.local_runner and self._containers:
            self._start_node(pki["ca_crt"])
        elif cfg.local_runner:
            self.local_node_name = LOCAL_RUNNER_NODE
            argv = [
                sys.executable,
                "-m",
                "iclora_dev.localcluster.podrunner",
                f"--kubeconfig={kubeconfig}",
                f"--node={LOCAL_RUNNER_NODE}",
                f"--pods-dir={self.pods_dir}",
                f"--gpus={cfg.local_runner_gpus}",
            ]
            if cfg.local_runner_tainted:
                argv.append("--taint")
            self._spawn("podrunner", argv)
        self.save_state()

        self._create_kwok_nodes()
        self.save_state()
        self._wait("controller-manager /healthz", lambda: _https_ok(cm_port))
        self._wait("scheduler /healthz", lambda: _https_ok(sched_port))
        self._wait("default ServiceAccount", self._default_sa_exists)
        self._wait("nodes Ready and untainted", self._nodes_ready)
        if self.node_slot is not None:
            self._finish_node()
        if self.s3:
            s3 = self.s3
            self._wait("S3", lambda: s3_ready(s3))
        if cfg.kueue:
            self._start_kueue()

    @property
    def _containers(self) -> bool:
        return self.config.local_runner and self.config.node_runtime == "containers"

    def _start_node(self, ca_crt: Path) -> None:
        """kubelet + containerd + CoreDNS for the node whose pods are real containers."""
        from iclora_dev.localcluster import images

        imgs = images.build_all()
        golden = images.golden_root(imgs)
        slot = node.claim_slot(self.state_dir)
        self.node_slot = slot.index
        self.save_state()
        root = node.node_root(slot)
        images.clone_image_root(golden, root)
        cfg = self.config
        plan = node.prepare(
            slot, self.state_dir, self.kubeconfig, ca_crt, root, imgs.pause, free_ports(2),
            labels={nodes.GPU_PRODUCT_LABEL: nodes.GPU_PRODUCT} if cfg.local_runner_gpus else None,
            taints=[node.taint_flag()] if cfg.local_runner_tainted else None,
        )
        for name, argv in plan.processes:
            self._spawn(name, argv, env=plan.env)
            if name == "containerd":
                node.wait_socket(slot.socket, self.processes[-1])
        self.local_node_name = node.NODE_NAME
        self.save_state()

    def _finish_node(self) -> None:
        """Advertise the node's fake GPUs, as the pod runner's node does (the kubelet reports the rest)."""
        self._core().patch_node_status(node.NODE_NAME, node.capacity_patch(self.config.local_runner_gpus))

    def _start_kueue(self) -> None:
        from iclora_dev.localcluster import kueue

        health, metrics, webhook = free_ports(3)
        argv = kueue.prepare(self, health, metrics, webhook)
        self._core().create_namespace({"metadata": {"name": kueue.NAMESPACE}})
        self._spawn("kueue", argv)
        self.save_state()
        self._wait("kueue /readyz", lambda: _http_ok(f"http://127.0.0.1:{health}/readyz"))
        kueue.create_queues(self.api_client(), self.config.kueue_gpu_quota)

    def stop(self) -> None:
        """Stop every recorded process (runner first, so it can kill its pods), leave no port open."""
        stop_recorded(self.state_dir, extra=self.processes)
        self.processes = []

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @classmethod
    def load(cls, state_dir: Path) -> LocalCluster:
        """The cluster recorded in ``state_dir`` (for `env`/`down` from another process)."""
        state = json.loads((state_dir / STATE_FILE).read_text())
        s3 = state.get("s3")
        return cls(
            state_dir=state_dir,
            api_url=state["api_url"],
            token=state["token"],
            s3=S3Store(**{**s3, "buckets": tuple(s3["buckets"])}) if s3 else None,
            processes=[procs.ProcessRecord(**p) for p in state["processes"]],
            binaries={k: Path(v) for k, v in state["binaries"].items()},
            gpu_node_names=state["gpu_nodes"],
            cpu_node_names=state["cpu_nodes"],
            local_node_name=state["local_node"],
            node_slot=state.get("node_slot"),
            owner_pid=state["owner_pid"],
            started_at=state["started_at"],
        )

    def is_running(self) -> bool:
        return bool(self.processes) and all(p.alive() for p in self.processes)

    # -- clients -------------------------------------------------------------------------
    def api_client(self):  # -> kubernetes.client.ApiClient, imported lazily
        """An admin client for this cluster (the kubeconfig's token user)."""
        from kubernetes import config

        return config.new_client_from_config(str(self.kubeconfig))

    # -- internals -----------------------------------------------------------------------
    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        _, record = procs.start(
            name, argv, self.logs_dir / f"{name}.log", env=env, die_with_parent=self.config.die_with_parent
        )
        self.processes.append(record)

    def save_state(self) -> None:
        state = {
            "owner_pid": self.owner_pid,
            "started_at": self.started_at,
            "api_url": self.api_url,
            "token": self.token,
            "kubeconfig": str(self.kubeconfig),
            "s3": dataclasses.asdict(self.s3) if self.s3 else None,
            "processes": [dataclasses.asdict(p) for p in self.processes],
            "binaries": {k: str(v) for k, v in self.binaries.items()},
            "gpu_nodes": self.gpu_node_names,
            "cpu_nodes": self.cpu_node_names,
            "local_node": self.local_node_name,
            "node_slot": self.node_slot,
            "pods_dir": str(self.pods_dir),
        }
        tmp = self.state_dir / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.chmod(0o600)
        tmp.replace(self.state_dir / STATE_FILE)

    def _write_kubeconfig(self, ca_crt: Path) -> None:
        ca_data = base64.b64encode(ca_crt.read_bytes()).decode()
        kubeconfig = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "iclora-local",
                    "cluster": {"server": self.api_url, "certificate-authority-data": ca_data},
                }
            ],
            "users": [{"name": "admin", "user": {"token": self.token}}],
            "contexts": [{"name": "iclora-local", "context": {"cluster": "iclora-local", "user": "admin"}}],
            "current-context": "iclora-local",
        }
        # JSON is valid YAML; kubectl and the Python client read it as is.
        self.kubeconfig.write_text(json.dumps(kubeconfig, indent=2))
        self.kubeconfig.chmod(0o600)

    def _ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    def _api_get(self, path: str) -> str | None:
        req = urllib.request.Request(self.api_url + path, headers={"Authorization": f"Bearer {self.token}"})
        try:
            with urllib.request.urlopen(req, context=self._ssl_context(), timeout=2) as resp:
                return resp.read().decode()
        except (urllib.error.URLError, OSError):
            return None

    def _wait(self, what: str, check: Callable[[], bool]) -> None:
        t0 = time.monotonic()
        deadline = t0 + self.config.start_timeout
        while time.monotonic() < deadline:
            dead = [p.name for p in self.processes if not p.alive()]
            if dead:
                raise ClusterStartError(f"{dead} exited while waiting for {what}; logs in {self.logs_dir}")
            with contextlib.suppress(Exception):
                if check():
                    log.info("%s after %.1f s", what, time.monotonic() - t0)
                    return
            time.sleep(0.2)
        raise ClusterStartError(f"timed out waiting for {what}; logs in {self.logs_dir}")

    def _core(self):
        from kubernetes import client

        if not hasattr(self, "_core_api"):
            self._core_api = client.CoreV1Api(self.api_client())
        return self._core_api

    def _create_kwok_nodes(self) -> None:
        cfg = self.config
        core = self._core()
        specs: list[dict[str, Any]] = []
        for i in range(cfg.gpu_nodes):
            specs.append(nodes.kwok_node(f"kwok-gpu-{i}", "gpu", gpus=cfg.gpus_per_node))
            self.gpu_node_names.append(f"kwok-gpu-{i}")
        for i in range(cfg.cpu_nodes):
            specs.append(nodes.kwok_node(f"kwok-cpu-{i}", "cpu"))
            self.cpu_node_names.append(f"kwok-cpu-{i}")
        for spec in specs:
            core.create_node(spec)

    def _default_sa_exists(self) -> bool:
        self._core().read_namespaced_service_account("default", "default")
        return True

    def _nodes_ready(self) -> bool:
        expected = {*self.gpu_node_names, *self.cpu_node_names}
        if self.local_node_name:
            expected.add(self.local_node_name)
        ready = set()
        for item in self._core().list_node().items:
            conditions = {c.type: c.status for c in (item.status.conditions or [])}
            taints = {t.key for t in (item.spec.taints or [])}
            if conditions.get("Ready") == "True" and not any(
                k.startswith("node.kubernetes.io/") for k in taints
            ):
                ready.add(item.metadata.name)
        return expected <= ready


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _https_ok(port: int, path: str = "/healthz") -> bool:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # self-signed serving cert of a loopback component
    try:
        with urllib.request.urlopen(f"https://127.0.0.1:{port}{path}", context=ctx, timeout=2) as resp:
            return resp.read().decode() == "ok"
    except (urllib.error.URLError, OSError):
        return False


# Components in the order they are stopped: the runner first (it kills its pods), etcd last.
_STOP_ORDER = [
    "podrunner",
    "kubelet",
    "coredns",
    "containerd",
    "kueue",
    "kwok",
    "kube-scheduler",
    "kube-controller-manager",
    "kube-apiserver",
    "weed",
    "etcd",
]


def stop_recorded(state_dir: Path, extra: list[procs.ProcessRecord] | None = None) -> None:
    """Kill everything recorded in ``state_dir`` (and ``extra``), including leftover pod processes."""
    records = list(extra or [])
    state_path = state_dir / STATE_FILE
    if state_path.exists():
        with contextlib.suppress(ValueError, KeyError, TypeError):
            state = json.loads(state_path.read_text())
            known = {(r.pid, r.start_time) for r in records}
            records += [
                procs.ProcessRecord(**p)
                for p in state["processes"]
                if (p["pid"], p["start_time"]) not in known
            ]
    records.sort(key=lambda r: _STOP_ORDER.index(r.name) if r.name in _STOP_ORDER else -1)
    slot = node.slot_of(state_dir)
    if slot is not None:
        # The kubelet first (it would restart what is drained), then every pod through containerd
        # while it still runs: CNI DEL frees each pod's address, veth and rules.
        for record in records:
            if record.name == "kubelet":
                record.stop()
        node.drain(slot)
    for record in records:
        if record.alive():
            log.info("stopping %s (pid %d)", record.name, record.pid)
        record.stop()
    # Pod processes of a runner that died without cleaning up (SIGKILL of the whole tree).
    for pid_file in (state_dir / "pods").glob("*/*/*.proc.json"):
        with contextlib.suppress(ValueError, KeyError, TypeError, OSError):
            procs.ProcessRecord(**json.loads(pid_file.read_text())).stop(grace=1.0)
    # The real node's containers (their shims outlive containerd), mounts, bridge and slot.
    if slot is not None:
        node.cleanup(slot)
    node.unmount_under([state_dir / "node"])
    shutil.rmtree(state_dir / "node", ignore_errors=True)
    state_path.unlink(missing_ok=True)
    shutil.rmtree(state_dir / "data", ignore_errors=True)


def reap_orphans(base_dir: Path) -> None:
    """Clean up folders under ``base_dir`` whose owner process is gone.

    Folders are named ``<kind>-<owner pid>-<suffix>``: a folder with a live state file is a
    test run that crashed before its teardown (its processes are killed); one without is
    the logs of a finished run (removed, so they do not pile up).
    """
    if not base_dir.is_dir():
        return
    for folder in base_dir.iterdir():
        state_path = folder / STATE_FILE
        owner: int | None = None
        with contextlib.suppress(ValueError, KeyError, OSError):
            owner = int(json.loads(state_path.read_text())["owner_pid"])
        if owner is None:
            with contextlib.suppress(IndexError, ValueError):
                owner = int(folder.name.split("-")[1])
        if owner is None or procs.proc_start_time(owner) is not None:
            continue
        if state_path.exists():
            log.warning("reaping orphaned local cluster in %s", folder)
            stop_recorded(folder)
        shutil.rmtree(folder, ignore_errors=True)
