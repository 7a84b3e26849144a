"""A real node for the local cluster: kubelet + containerd + runc, CNI bridge networking, CoreDNS.

Pods bound to this node run as real containers from real images (``images.py`` builds them with
buildah and loads them into the node's image store), with the pod spec exactly as rendered: the
image's filesystem, read-only root, uid/gid, dropped capabilities, seccomp, resources as cgroup
limits, emptyDir/secret/hostPath volumes, memory-backed ``/dev/shm``, termination grace, and
cluster DNS, so ``<job>-0.<service>`` resolves as it does on any cluster. It is what a platform
engineer's node does, minus the GPU: the node advertises fake ``nvidia.com/gpu`` capacity (an
extended resource patched into its status, as the Kubernetes docs describe) so GPU Jobs schedule
on it and run on the CPU.

Needs root, Linux with overlayfs, and cgroup v1 or v2. Several local clusters can run real nodes
at once: each claims a *slot* (``/run/iclora-node/<n>``) that gives it its own bridge
(``iclora<n>``), pod subnet (``10.89.<n>.0/24``), cgroup root (``/iclora-node-<n>``), containerd
and kubelet; the slot is freed by ``cleanup`` (``iclora local-cluster down``, or the next start
after a crash).

Not here: kube-proxy (pods reach the API server only if they are given its address; the product's
pods never talk to it), NetworkPolicy enforcement (the bridge plugin does not enforce it), GPUs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from iclora_dev.localcluster import binaries, nodes, procs

log = logging.getLogger(__name__)

RUN_ROOT = Path("/run/iclora-node")
MAX_SLOTS = 32
CLUSTER_DOMAIN = "cluster.local"
# The host's address as every pod sees it (a /32 on the loopback device, reachable from every
# slot's subnet through its gateway): the local S3 store and anything else pods must reach on the
# host listen here.
HOST_LABEL = "lo:iclora"
HOST_ADDRESS = "10.89.255.254"
CNI_BIN_DIRS = ("/usr/lib/cni", "/opt/cni/bin")
SYSTEM_PATH = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")
NODE_NAME = "containers-0"
# Linux capabilities: lowering a process's oom_score_adj needs CAP_SYS_RESOURCE, which some VMs
# and nested containers do not grant even to root; containerd then keeps every container at its
# own score instead of the kubelet's per-QoS values.
_CAP_SYS_RESOURCE = 24


class NodeUnavailable(RuntimeError):
    """This machine cannot run the real node (not root, no overlayfs, a missing tool)."""


@dataclasses.dataclass(frozen=True)
class Slot:
    index: int

    @property
    def run_dir(self) -> Path:
        return RUN_ROOT / str(self.index)

    @property
    def bridge(self) -> str:
        return f"iclora{self.index}"

    @property
    def subnet(self) -> str:
        return f"10.89.{self.index}.0/24"

    @property
    def gateway(self) -> str:
        return f"10.89.{self.index}.1"

    @property
    def cgroup_root(self) -> str:
        return f"/iclora-node-{self.index}"

    @property
    def socket(self) -> Path:
        return self.run_dir / "containerd.sock"


def _path(path: str | None = None) -> str:
    """PATH with the system folders a root tool lives in (ip, iptables: the CNI plugins call them)."""
    parts = (path or os.environ.get("PATH", "")).split(os.pathsep)
    return os.pathsep.join([*(p for p in parts if p), *(d for d in SYSTEM_PATH if d not in parts)])


def _sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    tool = shutil.which(argv[0], path=_path()) or argv[0]
    proc = subprocess.run([tool, *argv[1:]], capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise NodeUnavailable(f"{' '.join(argv)} failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def check_host() -> None:
    """Raise NodeUnavailable with what is missing for a real node on this machine."""
    problems = []
    if os.geteuid() != 0:
        problems.append("the kubelet and containerd need root")
    if "overlay" not in Path("/proc/filesystems").read_text():
        problems.append("no overlayfs in the kernel")
    if not any((Path(d) / "bridge").exists() for d in CNI_BIN_DIRS):
        problems.append("no CNI plugins (Debian: apt-get install containernetworking-plugins)")
    for tool in ("ip", "iptables"):
        if shutil.which(tool, path=_path()) is None:
            problems.append(f"`{tool}` not found (Debian: iproute2, iptables)")
    if problems:
        raise NodeUnavailable("cannot run a real node here: " + "; ".join(problems))


def ensure_host_address() -> str:
    """Put HOST_ADDRESS on the loopback device (idempotent; a /32 there is a local address that
    packets from every bridge reach, and needs no dummy-link kernel module); return it."""
    if f" {HOST_ADDRESS}/32 " not in _sh("ip", "-o", "addr", "show", "dev", "lo").stdout:
        _sh("ip", "addr", "add", f"{HOST_ADDRESS}/32", "dev", "lo", "label", HOST_LABEL)
    return HOST_ADDRESS


def claim_slot(owner: Path) -> Slot:
    """Claim a free slot for the cluster in ``owner`` (a state dir); stale slots are reclaimed."""
    RUN_ROOT.mkdir(parents=True, exist_ok=True)
    for index in range(MAX_SLOTS):
        slot = Slot(index)
        try:
            slot.run_dir.mkdir()
        except FileExistsError:
            recorded = slot.run_dir / "owner"
            with contextlib.suppress(OSError):
                other = Path(recorded.read_text().strip())
                if (other / "state.json").exists():
                    continue  # a live (or not yet reaped) cluster
            cleanup(slot)
            try:
                slot.run_dir.mkdir()
            except FileExistsError:
                continue
        (slot.run_dir / "owner").write_text(str(owner))
        return slot
    raise NodeUnavailable(f"all {MAX_SLOTS} node slots under {RUN_ROOT} are taken")


def _cgroup_hierarchies() -> list[Path]:
    """Where the slot's cgroup root must exist: each v1 controller mount, or the v2 root."""
    mounts = Path("/proc/self/mounts").read_text().splitlines()
    v1 = [Path(m.split()[1]) for m in mounts if m.split()[2] == "cgroup"]
    if v1:
        return v1
    return [Path(m.split()[1]) for m in mounts if m.split()[2] == "cgroup2"][:1]


def _prepare_cgroups(slot: Slot) -> None:
    for base in _cgroup_hierarchies():
        path = base / slot.cgroup_root.lstrip("/")
        path.mkdir(exist_ok=True)
        for name in ("cpuset.cpus", "cpuset.mems"):  # v1 cpuset children start empty
            parent, child = base / name, path / name
            if parent.exists() and child.exists() and not child.read_text().strip():
                child.write_text(parent.read_text())
        if (base / "cgroup.subtree_control").exists() and base.name != "unified":
            # v2: hand the controllers down to the slot's subtree.
            wanted = (base / "cgroup.controllers").read_text().split()
            with contextlib.suppress(OSError):
                (path / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in wanted))


def _has_cap(cap: int) -> bool:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> cap & 1)
    return False


def containerd_config(slot: Slot, root: Path, runc: Path, sandbox_image: str) -> str:
    """containerd 2 config (version 3) for one slot: its own root, state, socket and CNI."""
    cni_bins = json.dumps([d for d in CNI_BIN_DIRS if Path(d).is_dir()])
    restrict = "true" if not _has_cap(_CAP_SYS_RESOURCE) else "false"
    return f"""version = 3
root = "{root}"
state = "{slot.run_dir / 'containerd'}"
[grpc]
  address = "{slot.socket}"
[ttrpc]
  address = "{slot.socket}.ttrpc"
[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "{sandbox_image}"
[plugins.'io.containerd.cri.v1.runtime']
  restrict_oom_score_adj = {restrict}
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = {cni_bins}
    conf_dir = "{slot.run_dir / 'cni'}"
  [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
      BinaryName = "{runc}"
      Root = "{slot.run_dir / 'runc'}"
      SystemdCgroup = false
"""


def cni_config(slot: Slot) -> dict[str, Any]:
    """bridge + host-local (+ portmap): one /24 per slot, masqueraded, IPAM state in the slot."""
    return {
        "cniVersion": "1.0.0",
        "name": f"iclora-{slot.index}",
        "plugins": [
            {
                "type": "bridge",
                "bridge": slot.bridge,
                "isGateway": True,
                "ipMasq": True,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": slot.subnet, "gateway": slot.gateway}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(slot.run_dir / "ipam"),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def kubelet_config(slot: Slot, ports: tuple[int, int], ca_crt: Path, resolv_conf: Path) -> dict[str, Any]:
    port, healthz = ports
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        # The API server calls the kubelet (logs, exec) with a client certificate of the cluster CA.
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": False},
            "x509": {"clientCAFile": str(ca_crt)},
        },
        "authorization": {"mode": "AlwaysAllow"},
        "address": slot.gateway,
        "port": port,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": healthz,
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": slot.cgroup_root,
        "failCgroupV1": False,
        "failSwapOn": False,
        "containerRuntimeEndpoint": f"unix://{slot.socket}",
        "clusterDNS": [slot.gateway],
        "clusterDomain": CLUSTER_DOMAIN,
        "resolvConf": str(resolv_conf),
        # Never evict for this shared machine's disk or memory: the tests decide what runs.
        "evictionHard": {"memory.available": "0%", "nodefs.available": "0%", "imagefs.available": "0%",
                         "nodefs.inodesFree": "0%", "imagefs.inodesFree": "0%"},
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "serializeImagePulls": False,
        "registerNode": True,
        "staticPodPath": "",
        "shutdownGracePeriod": "0s",
        "logging": {"verbosity": 1},
    }


def corefile(slot: Slot, kubeconfig: Path) -> str:
    """CoreDNS: the cluster's names from the API (Services, headless pod records), the rest upstream."""
    return f"""{CLUSTER_DOMAIN}:53 in-addr.arpa:53 {{
    bind {slot.gateway}
    errors
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa {{
        kubeconfig {kubeconfig}
        pods insecure
        fallthrough in-addr.arpa
        ttl 5
    }}
    cache 5
}}
.:53 {{
    bind {slot.gateway}
    errors
    forward . /etc/resolv.conf
    cache 30
}}
"""


@dataclasses.dataclass
class NodePlan:
    """What `LocalCluster` spawns for the node, in order: name -> argv."""

    slot: Slot
    processes: list[tuple[str, list[str]]]
    env: dict[str, str]
    kubelet_port: int


def prepare(
    slot: Slot,
    state_dir: Path,
    kubeconfig: Path,
    ca_crt: Path,
    image_root: Path,
    sandbox_image: str,
    ports: tuple[int, int],
    labels: dict[str, str] | None = None,
    taints: list[str] | None = None,
) -> NodePlan:
    """Write every config of the node into ``state_dir/node`` and set up the slot's host side."""
    check_host()
    bins = binaries.require_binaries(("kubelet", "containerd", "containerd-shim-runc-v2", "runc", "coredns"))
    work = state_dir / "node"
    work.mkdir(parents=True, exist_ok=True)
    for sub in ("cni", "ipam", "containerd", "runc"):
        (slot.run_dir / sub).mkdir(parents=True, exist_ok=True)
    _prepare_cgroups(slot)
    _prepare_bridge(slot)
    ensure_host_address()

    (work / "containerd.toml").write_text(containerd_config(slot, image_root, bins["runc"], sandbox_image))
    (slot.run_dir / "cni" / "10-iclora.conflist").write_text(json.dumps(cni_config(slot), indent=2))
    # Pods resolve through the cluster DNS; the kubelet copies search/options from this file.
    resolv = work / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.1\n")
    (work / "kubelet.yaml").write_text(json.dumps(kubelet_config(slot, ports, ca_crt, resolv), indent=2))
    (work / "Corefile").write_text(corefile(slot, kubeconfig))
    node_labels = {nodes.LOCAL_RUNNER_LABEL: "true", nodes.POOL_LABEL: "local", nodes.RUNTIME_LABEL: "containers",
                   **(labels or {})}
    env = dict(os.environ)
    # containerd finds its shim on PATH.
    env["PATH"] = _path(f"{bins['containerd-shim-runc-v2'].parent}:{env.get('PATH', '')}")
    processes = [
        ("containerd", [str(bins["containerd"]), "--config", str(work / "containerd.toml")]),
        ("coredns", [str(bins["coredns"]), "-conf", str(work / "Corefile")]),
        (
            "kubelet",
            [
                str(bins["kubelet"]),
                f"--config={work / 'kubelet.yaml'}",
                f"--kubeconfig={kubeconfig}",
                f"--root-dir={work / 'kubelet'}",
                f"--hostname-override={NODE_NAME}",
                f"--node-ip={slot.gateway}",
                "--node-labels=" + ",".join(f"{k}={v}" for k, v in node_labels.items()),
                *([f"--register-with-taints={','.join(taints)}"] if taints else []),
            ],
        ),
    ]
    return NodePlan(slot=slot, processes=processes, env=env, kubelet_port=ports[0])


def _prepare_bridge(slot: Slot) -> None:
    """Create the slot's bridge with its gateway address before the first pod (the node's IP)."""
    if _sh("ip", "link", "show", slot.bridge, check=False).returncode != 0:
        _sh("ip", "link", "add", slot.bridge, "type", "bridge")
    if slot.gateway not in _sh("ip", "-o", "addr", "show", "dev", slot.bridge).stdout:
        _sh("ip", "addr", "add", f"{slot.gateway}/24", "dev", slot.bridge)
    _sh("ip", "link", "set", slot.bridge, "up")
    with contextlib.suppress(OSError):
        Path("/proc/sys/net/ipv4/ip_forward").write_text("1")


def taint_flag() -> str:
    """The local-runner taint as the kubelet's --register-with-taints takes it."""
    t = nodes.LOCAL_RUNNER_TAINT
    return f"{t['key']}={t['value']}:{t['effect']}"


def capacity_patch(gpus: int) -> dict[str, Any]:
    """Node status patch: fake GPUs (an extended resource the kubelet keeps) and the GPU product
    label's twin in capacity, so GPU Jobs schedule here and run on the CPU."""
    capacity = {nodes.GPU_RESOURCE: str(gpus)} if gpus else {}
    return {"status": {"capacity": capacity}}


# -- teardown ---------------------------------------------------------------------------------


def cleanup(slot: Slot) -> None:
    """Kill the slot's containers and shims, unmount what they left, drop its bridge and run dir."""
    marker = str(slot.socket)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if marker in cmdline:  # the runc shims of this slot's containerd
                os.kill(int(entry.name), signal.SIGKILL)
    for base in _cgroup_hierarchies():
        root = base / slot.cgroup_root.lstrip("/")
        if not root.is_dir():
            continue
        for procs_file in sorted(root.rglob("cgroup.procs")):
            with contextlib.suppress(OSError, ValueError):
                for pid in procs_file.read_text().split():
                    os.kill(int(pid), signal.SIGKILL)
    time.sleep(0.2)
    for base in _cgroup_hierarchies():
        root = base / slot.cgroup_root.lstrip("/")
        if root.is_dir():
            for path in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                with contextlib.suppress(OSError):
                    path.rmdir()
            with contextlib.suppress(OSError):
                root.rmdir()
    owner = None
    with contextlib.suppress(OSError):
        owner = Path((slot.run_dir / "owner").read_text().strip())
    from iclora_dev.localcluster.images import node_root

    unmount_under([slot.run_dir, node_root(slot.index), *([owner / "node"] if owner else [])])
    _sh("ip", "link", "del", slot.bridge, check=False)
    shutil.rmtree(node_root(slot.index), ignore_errors=True)
    shutil.rmtree(slot.run_dir, ignore_errors=True)


def unmount_under(roots: list[Path]) -> None:
    """Lazily unmount every mount point below any of ``roots`` (deepest first)."""
    prefixes = [str(r.resolve()) + "/" for r in roots if r.exists()]
    if not prefixes:
        return
    points = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        point = line.split()[1].replace("\\040", " ")
        if any(point.startswith(p) for p in prefixes):
            points.append(point)
    for point in sorted(set(points), key=lambda p: -len(p)):
        _sh("umount", "-l", point, check=False)


def slot_of(state_dir: Path) -> Slot | None:
    """The slot a cluster's state dir holds (None: it has no real node)."""
    if not RUN_ROOT.is_dir():
        return None
    for run_dir in RUN_ROOT.iterdir():
        with contextlib.suppress(OSError, ValueError):
            if Path((run_dir / "owner").read_text().strip()) == state_dir:
                return Slot(int(run_dir.name))
    return None


def wait_socket(slot: Slot, record: procs.ProcessRecord, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not slot.socket.exists():
        if not record.alive():
            raise NodeUnavailable(f"containerd exited; see {record.log_path}")
        if time.monotonic() > deadline:
            raise NodeUnavailable(f"containerd did not open {slot.socket} in {timeout:.0f} s")
        time.sleep(0.1)
