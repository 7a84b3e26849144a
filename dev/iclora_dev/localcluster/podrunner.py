"""Local pod runner: executes the pods bound to one node as local processes.

A stand-in for kubelet + container runtime on a machine without either. It registers its
Node (kwok does not manage it), keeps it Ready through its Lease and status heartbeats,
watches the pods the scheduler binds to it and runs each container's ``command + args``
as a process of the current Python environment (the image is ignored: ``iclora ...`` or
``python -m ...`` resolve from this venv's PATH). Nothing in the operator knows about it:
it only sees ordinary pod status (phase, container states, exit codes, termination
messages).

Per pod, under ``<pods-dir>/<namespace>/<pod>/``:
    <container>.log               stdout+stderr (``kubectl logs`` needs a kubelet; read this)
    <container>.termination-log   the file terminationMessagePath maps to
    <container>.proc.json         pid record while running (lets ``down`` reap it after a crash)
    volumes/<volume>/             emptyDir (empty), secret / configMap (their keys as files)
    work/                         default working directory

A hostPath volume is that folder of this machine (the node is this machine; DirectoryOrCreate
creates it, Directory must exist). A persistentVolumeClaim is the hostPath or local path of the
PersistentVolume it is bound to, else one folder per claim shared by the node's pods,
``<pods-dir>/../claims/<namespace>/<claim>/``. Other sources (image, csi, nfs, ...) are empty
folders: the runner fetches nothing.

Paths inside the pod (volume mountPaths, terminationMessagePath) are mapped like this:
a mountPath under the system temp folder that does not exist yet becomes a real symlink to
the volume folder; any other one is rewritten in ``command``, ``args``, ``env`` values and
``workingDir`` wherever it appears as a path prefix (``/scratch/x``, ``--out=/scratch/x`` or
``file:///scratch/x``).
There is no cluster DNS: an env value naming a peer behind the pod's headless Service
(``<host>.<subdomain>``, as in ``MASTER_ADDR`` of an Indexed Job) becomes ``127.0.0.1``.
Every container also gets ``ICLORA_POD_DIR``, ``ICLORA_MOUNT_<VOLUME>`` (host folder of each
mount) and ``ICLORA_TERMINATION_LOG`` (host file of its termination message).
``restartPolicy`` is treated as ``Never``: a failed container fails the pod.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import datetime as dt
import json
import logging
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from iclora_api.contract import TERMINATION_LOG, TERMINATION_LOG_ENV
from iclora_dev.localcluster import nodes, procs

log = logging.getLogger(__name__)

LEASE_SECONDS = 40
HEARTBEAT_SECONDS = 10
# kubelet's limits for termination messages and the log-tail fallback.
MAX_MESSAGE_BYTES = 4096
FALLBACK_LOG_LINES = 80
FALLBACK_LOG_BYTES = 2048
_ENV_STRIP = ("KUBECONFIG",)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _ts(t: dt.datetime | None = None) -> str:
    return (t or _now()).strftime("%Y-%m-%dT%H:%M:%SZ")


def _micro(t: dt.datetime | None = None) -> str:
    return (t or _now()).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _env_name(volume: str) -> str:
    return "ICLORA_MOUNT_" + re.sub(r"[^A-Za-z0-9]", "_", volume).upper()


# The kubelet's reference: `$(` up to the first `)`, whatever is between (k8s.io/kubernetes
# third_party/forked/golang/expansion): `$(A$(B))` names "A$(B", not B.
_VAR_REF = re.compile(r"\$\(([^)]*)\)|\$\$")


def expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion, as the kubelet does it for env values, command and args: a
    variable defined before is replaced, an unknown ``$(X)`` stays as written, ``$$`` gives ``$``
    (so ``$$(X)`` gives ``$(X)``), any other ``$`` (an unclosed ``$(``, a trailing ``$``) stays."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return _VAR_REF.sub(sub, value)


class PathMap:
    """Rewrites in-pod absolute paths (mount points) to host paths."""

    def __init__(self) -> None:
        self._pairs: list[tuple[str, str]] = []

    def add(self, pod_path: str, host_path: str) -> None:
        self._pairs.append((pod_path.rstrip("/") or "/", host_path))
        self._pairs.sort(key=lambda p: len(p[0]), reverse=True)

    def rewrite(self, value: str) -> str:
        uri = ("file://",) if value.startswith("file:///") else ()
        for prefix in ("", *re.findall(r"^[^=/]*=", value)[:1], *uri):
            rest = value[len(prefix) :]
            for pod_path, host in self._pairs:
                if rest == pod_path or rest.startswith(pod_path + "/"):
                    return prefix + host + rest[len(pod_path) :]
        return value


@dataclasses.dataclass
class ContainerResult:
    name: str
    exit_code: int
    reason: str
    message: str
    started: dt.datetime
    finished: dt.datetime


class PodExecution:
    """One pod: prepares its folders, runs its containers, reports status."""

    def __init__(self, runner: PodRunner, pod: Any) -> None:
        self.runner = runner
        self.pod = pod
        self.uid: str = pod.metadata.uid
        self.namespace: str = pod.metadata.namespace
        self.name: str = pod.metadata.name
        self.dir = runner.pods_dir / self.namespace / self.name
        self.deleted = threading.Event()
        self.records: dict[str, procs.ProcessRecord] = {}
        self._symlinks: list[Path] = []
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, name=f"pod-{self.name}", daemon=True)

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        self.thread.start()

    def kill(self, grace: float) -> None:
        self.deleted.set()
        with self._lock:
            records = list(self.records.values())
        for record in records:
            record.stop(grace=grace)

    def _run(self) -> None:
        try:
            self._execute()
        except Exception as exc:  # report any runner-side failure on the pod, never swallow it
            log.exception("pod %s/%s failed in the runner", self.namespace, self.name)
            if not self.deleted.is_set():
                now = _now()
                names = [c.name for c in self.pod.spec.containers]
                self._report_final(
                    [ContainerResult(n, 128, "RunnerError", str(exc)[:1000], now, now) for n in names]
                )
        finally:
            for link in self._symlinks:
                with contextlib.suppress(OSError):
                    link.unlink()

    def _execute(self) -> None:
        if self.dir.exists():
            shutil.rmtree(self.dir)
        (self.dir / "work").mkdir(parents=True)
        spec = self.pod.spec
        volumes = self._prepare_volumes(spec.volumes or [])
        started = _now()
        self._report_running(started)
        for init in spec.init_containers or []:
            result = self._run_container(init, volumes)
            if result.exit_code != 0 or self.deleted.is_set():
                names = [c.name for c in spec.containers]
                self._report_final([dataclasses.replace(result, name=n) for n in names])
                return
        results: list[ContainerResult] = []
        threads = [
            threading.Thread(target=lambda c=c: results.append(self._run_container(c, volumes)), daemon=True)
            for c in spec.containers
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        # Also for a pod being deleted: as the kubelet does, its terminal status is reported once its
        # containers are gone, so the Job controller can count it and replace its index.
        order = {c.name: i for i, c in enumerate(spec.containers)}
        self._report_final(sorted(results, key=lambda r: order[r.name]))

    # -- volumes and environment ---------------------------------------------------------
    def _prepare_volumes(self, volumes: list[Any]) -> dict[str, Path]:
        out: dict[str, Path] = {}
        core = self.runner.core
        for vol in volumes:
            path = self._node_path(vol) or self.dir / "volumes" / vol.name
            if vol.host_path is None or vol.host_path.type in (None, "", "DirectoryOrCreate"):
                path.mkdir(parents=True, exist_ok=True)
            elif vol.host_path.type == "Directory" and not path.is_dir():
                raise FileNotFoundError(f"volume {vol.name}: hostPath {path} is not a directory")
            if vol.secret is not None:
                secret = core.read_namespaced_secret(vol.secret.secret_name, self.namespace)
                data = {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}
                self._write_items(path, data, vol.secret.items)
            elif vol.config_map is not None:
                cm = core.read_namespaced_config_map(vol.config_map.name, self.namespace)
                data = {k: v.encode() for k, v in (cm.data or {}).items()}
                data.update({k: base64.b64decode(v) for k, v in (cm.binary_data or {}).items()})
                self._write_items(path, data, vol.config_map.items)
            # emptyDir: the empty folder. projected (service-account token) and others stay
            # empty on purpose: pods here get no API access.
            out[vol.name] = path
        return out

    def _node_path(self, vol: Any) -> Path | None:
        """The folder of this machine behind a hostPath or persistentVolumeClaim volume (None: the pod's own)."""
        if vol.host_path is not None:
            return Path(vol.host_path.path)
        if vol.persistent_volume_claim is None:
            return None
        claim = vol.persistent_volume_claim.claim_name
        with contextlib.suppress(Exception):  # unbound, or no PV to read: a folder per claim
            pvc = self.runner.core.read_namespaced_persistent_volume_claim(claim, self.namespace)
            if pvc.spec.volume_name:
                pv = self.runner.core.read_persistent_volume(pvc.spec.volume_name)
                source = pv.spec.host_path or pv.spec.local
                if source is not None:
                    return Path(source.path)
        return self.runner.pods_dir.parent / "claims" / self.namespace / claim

    @staticmethod
    def _write_items(path: Path, data: dict[str, bytes], items: list[Any] | None) -> None:
        mapping = {i.key: i.path for i in items} if items else {k: k for k in data}
        for key, rel in mapping.items():
            if key in data:
                target = path / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data[key])

    def _field(self, path: str) -> str:
        meta = self.pod.metadata
        m = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
        if m:
            return ((meta.labels if m.group(1) == "labels" else meta.annotations) or {}).get(m.group(2), "")
        simple = {
            "metadata.name": meta.name,
            "metadata.namespace": meta.namespace,
            "metadata.uid": meta.uid,
            "spec.nodeName": self.pod.spec.node_name,
            "spec.serviceAccountName": self.pod.spec.service_account_name,
            "status.podIP": "127.0.0.1",
            "status.hostIP": "127.0.0.1",
        }
        if path not in simple:
            raise ValueError(f"unsupported fieldRef {path!r}")
        return simple[path] or ""

    def _resolve_peer(self, value: str) -> str:
        """``<host>.<subdomain>[.<ns>.svc...]`` (a peer behind the pod's headless Service) -> 127.0.0.1.

        There is no cluster DNS here; every pod of this node shares the host's loopback.
        """
        sub = self.pod.spec.subdomain
        if sub and re.fullmatch(
            rf"[a-z0-9-]+\.{re.escape(sub)}(\.{re.escape(self.namespace)}(\.svc(\..*)?)?)?", value
        ):
            return "127.0.0.1"
        return value

    def _key_ref(self, kind: str, ref: Any) -> str | None:
        core = self.runner.core
        try:
            if kind == "secret":
                obj = core.read_namespaced_secret(ref.name, self.namespace)
                raw = (obj.data or {}).get(ref.key)
                value = base64.b64decode(raw).decode() if raw is not None else None
            else:
                obj = core.read_namespaced_config_map(ref.name, self.namespace)
                value = (obj.data or {}).get(ref.key)
        except Exception:
            if ref.optional:
                return None
            raise
        if value is None and not ref.optional:
            raise KeyError(f"{kind} {ref.name} has no key {ref.key!r}")
        return value

    def _container_env(
        self, c: Any, paths: PathMap, extra: dict[str, str]
    ) -> tuple[dict[str, str], dict[str, str]]:
        """The process environment, and the variables the container itself defines."""
        env = {k: v for k, v in os.environ.items() if k not in _ENV_STRIP}
        # The "image" is this Python environment: its scripts (iclora, python) come first on
        # PATH even when the runner was started without activating the venv.
        bin_dir = str(Path(sys.executable).parent)
        env["PATH"] = os.pathsep.join([bin_dir, *(p for p in env.get("PATH", "").split(os.pathsep) if p != bin_dir)])
        env.update(PYTHONUNBUFFERED="1", HOSTNAME=self.name, **extra)
        own: dict[str, str] = {}
        core = self.runner.core
        for src in c.env_from or []:
            prefix = src.prefix or ""
            if src.secret_ref is not None:
                try:
                    obj = core.read_namespaced_secret(src.secret_ref.name, self.namespace)
                except Exception:
                    if src.secret_ref.optional:
                        continue
                    raise
                own.update({prefix + k: base64.b64decode(v).decode() for k, v in (obj.data or {}).items()})
            elif src.config_map_ref is not None:
                try:
                    obj = core.read_namespaced_config_map(src.config_map_ref.name, self.namespace)
                except Exception:
                    if src.config_map_ref.optional:
                        continue
                    raise
                own.update({prefix + k: v for k, v in (obj.data or {}).items()})
        for var in c.env or []:
            value: str | None
            if var.value_from is None:
                value = expand(var.value or "", own)
            elif var.value_from.secret_key_ref is not None:
                value = self._key_ref("secret", var.value_from.secret_key_ref)
            elif var.value_from.config_map_key_ref is not None:
                value = self._key_ref("configmap", var.value_from.config_map_key_ref)
            elif var.value_from.field_ref is not None:
                value = self._field(var.value_from.field_ref.field_path)
            else:
                raise ValueError(f"unsupported valueFrom for env {var.name}")
            if value is not None:
                own[var.name] = value
        own = {k: self._resolve_peer(paths.rewrite(v)) for k, v in own.items()}
        env.update(own)
        return env, own

    # -- running -------------------------------------------------------------------------
    def _run_container(self, c: Any, volumes: dict[str, Path]) -> ContainerResult:
        started = _now()
        log_path = self.dir / f"{c.name}.log"
        term_path = self.dir / f"{c.name}.termination-log"
        term_path.touch()
        paths = PathMap()
        extra = {"ICLORA_POD_DIR": str(self.dir), TERMINATION_LOG_ENV: str(term_path)}
        paths.add(c.termination_message_path or TERMINATION_LOG, str(term_path))
        for mount in c.volume_mounts or []:
            if mount.name not in volumes:
                continue
            host = volumes[mount.name] / (mount.sub_path or "")
            if not host.exists():
                host.mkdir(parents=True, exist_ok=True)
            extra[_env_name(mount.name)] = str(host)
            if not self._link_mount(Path(mount.mount_path), host):
                paths.add(mount.mount_path, str(host))
        env, own = self._container_env(c, paths, extra)
        # Like kubelet, $(VAR) in command/args sees only the variables the container defines.
        argv = [paths.rewrite(expand(a, own)) for a in [*(c.command or []), *(c.args or [])]]
        if not argv:
            raise ValueError(f"container {c.name}: the local runner needs a command (images are ignored)")
        cwd = self.dir / "work"
        if c.working_dir:
            wanted = Path(paths.rewrite(c.working_dir))
            with contextlib.suppress(OSError):
                wanted.mkdir(parents=True, exist_ok=True)
                cwd = wanted
        if self.deleted.is_set():
            return ContainerResult(c.name, 137, "Error", "", started, _now())
        try:
            proc, record = procs.start(f"{self.name}/{c.name}", argv, log_path, env=env, cwd=cwd)
        except OSError as exc:  # command not found: what a runtime reports as StartError
            return ContainerResult(c.name, 128, "StartError", str(exc)[:1000], started, _now())
        record_path = self.dir / f"{c.name}.proc.json"
        record_path.write_text(json.dumps(dataclasses.asdict(record)))
        with self._lock:
            self.records[c.name] = record
        code = proc.wait()
        record_path.unlink(missing_ok=True)
        # A signal death reads like a container runtime reports it: 128 + signal number.
        exit_code = code if code >= 0 else 128 - code
        message = term_path.read_bytes()[:MAX_MESSAGE_BYTES].decode(errors="replace")
        if not message and exit_code != 0 and c.termination_message_policy == "FallbackToLogsOnError":
            message = _log_tail(log_path)
        reason = "Completed" if exit_code == 0 else "Error"
        return ContainerResult(c.name, exit_code, reason, message, started, _now())

    def _link_mount(self, mount_path: Path, host: Path) -> bool:
        """Make the real mountPath usable when it is a free name under the temp folder."""
        tmp = Path(tempfile.gettempdir()).resolve()
        if not mount_path.is_absolute() or tmp not in mount_path.parents:
            return False
        if mount_path.exists() or mount_path.is_symlink():
            return False
        try:
            mount_path.parent.mkdir(parents=True, exist_ok=True)
            mount_path.symlink_to(host, target_is_directory=True)
        except OSError:
            return False
        self._symlinks.append(mount_path)
        return True

    # -- status --------------------------------------------------------------------------
    def _patch_status(self, status: dict[str, Any], *, final: bool = False) -> None:
        if self.deleted.is_set() and not final:
            return
        with contextlib.suppress(Exception):  # the pod may be gone already
            self.runner.core.patch_namespaced_pod_status(self.name, self.namespace, {"status": status})

    def _report_running(self, started: dt.datetime) -> None:
        now = _ts()
        containers = [
            {
                "name": c.name,
                "image": c.image or "",
                "imageID": "",
                "ready": True,
                "started": True,
                "restartCount": 0,
                "state": {"running": {"startedAt": _ts(started)}},
            }
            for c in self.pod.spec.containers
        ]
        self._patch_status(
            {
                "phase": "Running",
                "startTime": _ts(started),
                "hostIP": "127.0.0.1",
                "podIP": "127.0.0.1",
                "podIPs": [{"ip": "127.0.0.1"}],
                "conditions": [
                    {"type": "Initialized", "status": "True", "lastTransitionTime": now},
                    {"type": "Ready", "status": "True", "lastTransitionTime": now},
                    {"type": "ContainersReady", "status": "True", "lastTransitionTime": now},
                ],
                "containerStatuses": containers,
            }
        )

    def _report_final(self, results: list[ContainerResult]) -> None:
        ok = all(r.exit_code == 0 for r in results)
        now = _ts()
        reason = "PodCompleted" if ok else "PodFailed"
        images = {c.name: c.image or "" for c in self.pod.spec.containers}
        self._patch_status(
            {
                "phase": "Succeeded" if ok else "Failed",
                "conditions": [
                    {"type": "Ready", "status": "False", "reason": reason, "lastTransitionTime": now},
                    {
                        "type": "ContainersReady",
                        "status": "False",
                        "reason": reason,
                        "lastTransitionTime": now,
                    },
                ],
                "containerStatuses": [
                    {
                        "name": r.name,
                        "image": images.get(r.name, ""),
                        "imageID": "",
                        "ready": False,
                        "started": False,
                        "restartCount": 0,
                        "state": {
                            "terminated": {
                                "exitCode": r.exit_code,
                                "reason": r.reason,
                                "message": r.message or None,
                                "startedAt": _ts(r.started),
                                "finishedAt": _ts(r.finished),
                            }
                        },
                    }
                    for r in results
                ],
            },
            final=True,
        )
        log.info(
            "pod %s/%s finished: %s", self.namespace, self.name, [(r.name, r.exit_code) for r in results]
        )


def _log_tail(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    lines = data.splitlines(keepends=True)[-FALLBACK_LOG_LINES:]
    return b"".join(lines)[-FALLBACK_LOG_BYTES:].decode(errors="replace")


class PodRunner:
    """Registers ``node_name``, keeps it alive, and runs the pods bound to it."""

    def __init__(
        self,
        api_client: Any,
        node_name: str,
        pods_dir: Path,
        gpus: int = 0,
        cpu: str | None = None,
        memory: str | None = None,
        tainted: bool = False,
    ) -> None:
        from kubernetes import client

        self.api_client = api_client
        self.core = client.CoreV1Api(api_client)
        self.coord = client.CoordinationV1Api(api_client)
        self.node_name = node_name
        self.pods_dir = pods_dir
        self.node_body = nodes.local_runner_node(
            node_name, cpu or str(os.cpu_count() or 1), memory or _host_memory(), gpus=gpus, tainted=tainted
        )
        self.pods: dict[str, PodExecution] = {}
        self.stopping = threading.Event()

    # -- node ----------------------------------------------------------------------------
    def register(self) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            self.core.create_node(self.node_body)
        except ApiException as exc:
            if exc.status != 409:
                raise
            meta = self.node_body["metadata"]
            self.core.patch_node(
                self.node_name, {"metadata": {"labels": meta["labels"]}, "spec": self.node_body["spec"]}
            )
        self._heartbeat(full=True)

    def _heartbeat(self, full: bool = False) -> None:
        now = _ts()
        status: dict[str, Any] = {
            "conditions": [
                {
                    "type": t,
                    "status": "False",
                    "reason": f"KubeletHas{r}",
                    "lastHeartbeatTime": now,
                    "lastTransitionTime": now,
                }
                for t, r in (
                    ("MemoryPressure", "SufficientMemory"),
                    ("DiskPressure", "NoDiskPressure"),
                    ("PIDPressure", "SufficientPID"),
                )
            ]
            + [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "KubeletReady",
                    "message": "local pod runner is ready",
                    "lastHeartbeatTime": now,
                    "lastTransitionTime": now,
                }
            ],
        }
        if full:
            status.update(
                capacity=self.node_body["status"]["capacity"],
                allocatable=self.node_body["status"]["allocatable"],
                addresses=[
                    {"type": "InternalIP", "address": "127.0.0.1"},
                    {"type": "Hostname", "address": self.node_name},
                ],
                nodeInfo={
                    "architecture": "amd64",
                    "operatingSystem": "linux",
                    "kubeletVersion": "local-runner",
                    "containerRuntimeVersion": "local-runner://process",
                    "kernelVersion": os.uname().release,
                    "osImage": "local",
                    "kubeProxyVersion": "",
                    "machineID": "",
                    "systemUUID": "",
                    "bootID": "",
                },
                phase="Running",
            )
        self.core.patch_node_status(self.node_name, {"status": status})
        self._renew_lease()

    def _renew_lease(self) -> None:
        from kubernetes.client.exceptions import ApiException

        body = {
            "metadata": {"name": self.node_name, "namespace": "kube-node-lease"},
            "spec": {
                "holderIdentity": self.node_name,
                "leaseDurationSeconds": LEASE_SECONDS,
                "renewTime": _micro(),
            },
        }
        try:
            self.coord.patch_namespaced_lease(self.node_name, "kube-node-lease", body)
        except ApiException as exc:
            if exc.status != 404:
                raise
            self.coord.create_namespaced_lease("kube-node-lease", body)

    def _heartbeat_loop(self) -> None:
        while not self.stopping.wait(HEARTBEAT_SECONDS):
            try:
                self._heartbeat()
            except Exception:  # the API server may be restarting; try again next beat
                log.warning("node heartbeat failed", exc_info=True)

    # -- pods ----------------------------------------------------------------------------
    def handle(self, pod: Any) -> None:
        uid = pod.metadata.uid
        execution = self.pods.get(uid)
        if pod.metadata.deletion_timestamp is not None:
            threading.Thread(target=self._delete, args=(pod, execution), daemon=True).start()
            return
        if execution is not None or pod.status.phase in ("Succeeded", "Failed"):
            return
        execution = PodExecution(self, pod)
        self.pods[uid] = execution
        if pod.status.phase == "Running":
            # Running before this runner started: its process is gone, say so.
            now = _now()
            execution._report_final(
                [
                    ContainerResult(c.name, 137, "Error", "local runner restarted", now, now)
                    for c in pod.spec.containers
                ]
            )
            return
        log.info("starting pod %s/%s", pod.metadata.namespace, pod.metadata.name)
        execution.start()

    def _forget(self, pod: Any) -> None:
        """The pod object is gone: make sure its processes are too, then drop it."""
        execution = self.pods.pop(pod.metadata.uid, None)
        if execution is not None and execution.thread.is_alive() and not execution.deleted.is_set():
            threading.Thread(target=execution.kill, args=(2.0,), daemon=True).start()

    def _delete(self, pod: Any, execution: PodExecution | None) -> None:
        if execution is not None and not execution.deleted.is_set():
            grace = pod.spec.termination_grace_period_seconds
            execution.kill(grace=min(float(grace if grace is not None else 30), 10.0))
        from kubernetes import client

        with contextlib.suppress(Exception):
            # What kubelet does once the containers are gone: the final, immediate delete.
            self.core.delete_namespaced_pod(
                pod.metadata.name,
                pod.metadata.namespace,
                body=client.V1DeleteOptions(
                    grace_period_seconds=0, preconditions=client.V1Preconditions(uid=pod.metadata.uid)
                ),
            )

    def run(self) -> None:
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException

        self.register()
        threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True).start()
        selector = f"spec.nodeName={self.node_name}"
        while not self.stopping.is_set():
            try:
                listing = self.core.list_pod_for_all_namespaces(field_selector=selector)
                for pod in listing.items:
                    self.handle(pod)
                rv = listing.metadata.resource_version
                while not self.stopping.is_set():
                    stream = watch.Watch().stream(
                        self.core.list_pod_for_all_namespaces,
                        field_selector=selector,
                        resource_version=rv,
                        timeout_seconds=30,
                    )
                    for event in stream:
                        if self.stopping.is_set():
                            break
                        pod = event["object"]
                        rv = pod.metadata.resource_version
                        if event["type"] in ("ADDED", "MODIFIED"):
                            self.handle(pod)
                        elif event["type"] == "DELETED":
                            self._forget(pod)
            except ApiException as exc:
                if exc.status != 410:
                    log.warning("pod watch failed: %s", exc)
                    self.stopping.wait(1)
            except Exception:
                if not self.stopping.is_set():
                    log.warning("pod watch broke, relisting", exc_info=True)
                    self.stopping.wait(1)

    def stop(self) -> None:
        self.stopping.set()
        for execution in list(self.pods.values()):
            execution.kill(grace=2.0)


def _host_memory() -> str:
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1])}Ki"
    return "8Gi"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--node", default="local-runner-0")
    parser.add_argument("--pods-dir", required=True, type=Path)
    parser.add_argument("--gpus", type=int, default=0, help="fake nvidia.com/gpu capacity to advertise")
    parser.add_argument("--cpu", default=None)
    parser.add_argument("--memory", default=None)
    parser.add_argument("--taint", action="store_true", help=f"taint the node {nodes.LOCAL_RUNNER_LABEL}")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from kubernetes import config

    api = config.new_client_from_config(args.kubeconfig)
    runner = PodRunner(
        api, args.node, args.pods_dir, gpus=args.gpus, cpu=args.cpu, memory=args.memory, tainted=args.taint
    )

    def on_signal(signum: int, frame: object) -> None:
        del frame
        log.info("signal %d: stopping pods", signum)
        runner.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    worker = threading.Thread(target=runner.run, name="watch", daemon=True)
    worker.start()
    while not runner.stopping.wait(0.5):
        if not worker.is_alive():
            log.error("pod runner watch loop ended")
            return 1
    time.sleep(0.1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
