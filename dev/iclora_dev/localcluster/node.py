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
import fcntl
import json
import logging
import os
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from iclora_dev.localcluster import binaries, nodes, procs

log = logging.getLogger(__name__)

RUN_ROOT = Path("/run/iclora-node")
KUBELET_ROOT = Path("/var/lib/iclora-node")
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

    @property
    def kubelet_dir(self) -> Path:
        """The kubelet's root (pod volumes: on disk, and a short path: its sockets live there)."""
        return KUBELET_ROOT / str(self.index)


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
        added = _sh("ip", "addr", "add", f"{HOST_ADDRESS}/32", "dev", "lo", "label", HOST_LABEL, check=False)
        if added.returncode != 0 and f" {HOST_ADDRESS}/32 " not in _sh("ip", "-o", "addr", "show", "dev", "lo").stdout:
            raise NodeUnavailable(f"cannot add {HOST_ADDRESS} to lo: {added.stderr.strip()}")
    return HOST_ADDRESS


@contextlib.contextmanager
def _slots_locked():
    RUN_ROOT.mkdir(parents=True, exist_ok=True)
    with open(RUN_ROOT / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _slot_live(slot: Slot) -> bool:
    """A slot is in use while its owner's state file records a live process."""
    try:
        owner = Path((slot.run_dir / "owner").read_text().strip())
        state = json.loads((owner / "state.json").read_text())
    except (OSError, ValueError):
        return False
    return any(procs.ProcessRecord(**p).alive() for p in state.get("processes", []))


def claim_slot(owner: Path) -> Slot:
    """Claim a free slot for the cluster in ``owner`` (a state dir); stale slots are reclaimed.

    Under a machine-wide lock, and published by one rename, so two clusters starting together
    never share a slot and a half-claimed slot is never taken for a stale one."""
    with _slots_locked():
        _save_host_settings()
        for index in range(MAX_SLOTS):
            slot = Slot(index)
            if slot.run_dir.exists():
                if _slot_live(slot):
                    continue
                cleanup(slot, locked=True)
            tmp = RUN_ROOT / f".claim-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            (tmp / "owner").write_text(str(owner))
            (tmp / "cache").write_text(str(binaries.cache_root()))
            tmp.rename(slot.run_dir)
            return slot
    raise NodeUnavailable(f"all {MAX_SLOTS} node slots under {RUN_ROOT} are taken")


# Kernel settings the kubelet changes on start (KernelTunableModify: vm.overcommit_memory,
# vm.panic_on_oom, kernel.panic, kernel.panic_on_oops, kernel.keys.*) and ip_forward: saved before
# the first slot, restored when the last one goes.
_HOST_SETTINGS = ("vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops",
                  "kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes", "net/ipv4/ip_forward")


def _save_host_settings() -> None:
    saved = RUN_ROOT / "host-settings.json"
    if saved.exists() or any(p.name.isdigit() for p in RUN_ROOT.iterdir()):
        return
    values = {}
    for key in _HOST_SETTINGS:
        with contextlib.suppress(OSError):
            values[key] = (Path("/proc/sys") / key).read_text().strip()
    saved.write_text(json.dumps(values))


def _restore_host_settings() -> None:
    saved = RUN_ROOT / "host-settings.json"
    if not saved.exists() or any(p.name.isdigit() for p in RUN_ROOT.iterdir()):
        return
    with contextlib.suppress(OSError, ValueError):
        for key, value in json.loads(saved.read_text()).items():
            with contextlib.suppress(OSError):
                (Path("/proc/sys") / key).write_text(value)
    saved.unlink(missing_ok=True)


def _cgroup_hierarchies() -> list[Path]:
    """Where the slot's cgroup root must exist: each v1 controller mount, or the v2 root."""
    mounts = [m.split() for m in Path("/proc/self/mounts").read_text().splitlines()]
    # Every v1 controller, and the v2 tree (pure v2, or the `unified` one of a hybrid host: runc
    # creates each container's cgroup there too).
    return [Path(m[1]) for m in mounts if m[2] in ("cgroup", "cgroup2")]


def _prepare_cgroups(slot: Slot) -> None:
    for base in _cgroup_hierarchies():
        path = base / slot.cgroup_root.lstrip("/")
        path.mkdir(exist_ok=True)
        for name in ("cpuset.cpus", "cpuset.mems"):  # v1 cpuset children start empty
            parent, child = base / name, path / name
            if parent.exists() and child.exists() and not child.read_text().strip():
                child.write_text(parent.read_text())
        if (base / "cgroup.subtree_control").exists() and base.name != "unified":
            # v2: hand each controller down to the slot's subtree (one at a time: a controller the
            # parent does not delegate must not fail the others).
            for controller in (path / "cgroup.controllers").read_text().split():
                with contextlib.suppress(OSError):
                    (path / "cgroup.subtree_control").write_text(f"+{controller}")


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
[plugins.'io.containerd.nri.v1.nri']
  disable = true
[plugins.'io.containerd.cri.v1.runtime']
  restrict_oom_score_adj = {restrict}
  # Pod network namespaces under the slot's state (not /var/run/netns): `cleanup` unmounts them.
  netns_mounts_under_state_dir = true
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


def kubelet_config(slot: Slot, ports: tuple[int, int], ca_crt: Path, resolv_conf: Path,
                   pod_logs: Path) -> dict[str, Any]:
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
        # Its own log folder: kubelets sharing /var/log/pods delete each other's pods' logs.
        "podLogsDir": str(pod_logs),
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
    forward . /etc/resolv.conf
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

    processes: list[tuple[str, list[str]]]
    env: dict[str, str]


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
    # A kubelet root left by a machine restart (/run emptied, /var/lib kept) holds other pods.
    unmount_under([slot.kubelet_dir])
    shutil.rmtree(slot.kubelet_dir, ignore_errors=True)
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
    config = kubelet_config(slot, ports, ca_crt, resolv, work / "pod-logs")
    (work / "kubelet.yaml").write_text(json.dumps(config, indent=2))
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
                f"--root-dir={slot.kubelet_dir}",
                f"--hostname-override={NODE_NAME}",
                f"--node-ip={slot.gateway}",
                "--node-labels=" + ",".join(f"{k}={v}" for k, v in node_labels.items()),
                *([f"--register-with-taints={','.join(taints)}"] if taints else []),
            ],
        ),
    ]
    return NodePlan(processes=processes, env=env)


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


def drain(slot: Slot, timeout: float = 60.0) -> None:
    """Stop and remove every pod sandbox through containerd (CNI DEL frees its address, veth and
    iptables rules); call while containerd still runs and after the kubelet stopped."""
    crictl = binaries.find_binary("crictl")
    if crictl is None or not slot.socket.exists():
        return
    base = [str(crictl), "--runtime-endpoint", f"unix://{slot.socket}", "--timeout", "20s"]
    with contextlib.suppress(subprocess.SubprocessError, OSError):
        pods = subprocess.run([*base, "pods", "-q"], capture_output=True, text=True, timeout=timeout).stdout.split()
        if pods:
            subprocess.run([*base, "stopp", *pods], capture_output=True, timeout=timeout, check=False)
            subprocess.run([*base, "rmp", "-f", *pods], capture_output=True, timeout=timeout, check=False)


def cleanup(slot: Slot, locked: bool = False) -> None:
    """Kill the slot's containers and shims, unmount what they left, drop its bridge, iptables rules,
    CNI cache, cgroups and run dir; restore the host's kernel settings after the last slot."""
    if not locked:
        with _slots_locked():
            cleanup(slot, locked=True)
        return
    marker = str(slot.socket)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if marker in cmdline:  # the runc shims of this slot's containerd
                os.kill(int(entry.name), signal.SIGKILL)
    roots = [base / slot.cgroup_root.lstrip("/") for base in _cgroup_hierarchies()]
    deadline = time.monotonic() + 15
    while True:
        pids = {pid for root in roots if root.is_dir() for f in root.rglob("cgroup.procs")
                for pid in _read_pids(f)}
        if not pids or time.monotonic() > deadline:
            break
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
    for root in roots:
        if root.is_dir():
            for path in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                with contextlib.suppress(OSError):
                    path.rmdir()
            with contextlib.suppress(OSError):
                root.rmdir()
    owner = cache = None
    with contextlib.suppress(OSError):
        owner = Path((slot.run_dir / "owner").read_text().strip())
    with contextlib.suppress(OSError):
        cache = Path((slot.run_dir / "cache").read_text().strip())
    root = node_root(slot, cache)
    unmount_under([slot.run_dir, slot.kubelet_dir, root, *([owner / "node"] if owner else [])])
    _sweep_network(slot)
    shutil.rmtree(root, ignore_errors=True)
    shutil.rmtree(slot.kubelet_dir, ignore_errors=True)
    shutil.rmtree(slot.run_dir, ignore_errors=True)
    _restore_host_settings()


def node_root(slot: Slot, cache: Path | None = None) -> Path:
    """The containerd root of a slot's node: under the image cache, beside the golden image stores
    it is cloned from (hard links need one filesystem). ``cache``: the cache root recorded at claim."""
    return (cache or binaries.cache_root()) / "images" / "node-roots" / str(slot.index)


def _read_pids(path: Path) -> list[int]:
    try:
        return [int(p) for p in path.read_text().split()]
    except (OSError, ValueError):
        return []


def _sweep_network(slot: Slot) -> None:
    """What CNI DEL would have removed for pods that never got it (a crash): the bridge plugin's
    masquerade rules and chains (commented with the network's name) and libcni's result cache."""
    network = f"iclora-{slot.index}"
    listed = _sh("iptables", "-t", "nat", "-S", "POSTROUTING", check=False).stdout.splitlines()
    for rule in listed:
        if f'name: \\"{network}\\"' not in rule and f'name: "{network}"' not in rule:
            continue
        args = shlex.split(rule)
        _sh("iptables", "-t", "nat", "-D", *args[1:], check=False)
        chain = args[args.index("-j") + 1] if "-j" in args else ""
        if chain.startswith("CNI-"):
            _sh("iptables", "-t", "nat", "-F", chain, check=False)
            _sh("iptables", "-t", "nat", "-X", chain, check=False)
    results = Path("/var/lib/cni/results")
    if results.is_dir():
        for cached in results.glob(f"{network}-*"):
            sandbox = cached.name.removeprefix(f"{network}-").rsplit("-", 1)[0]
            (results / f"cni-loopback-{sandbox}-lo").unlink(missing_ok=True)
            cached.unlink(missing_ok=True)
    _sh("ip", "link", "del", slot.bridge, check=False)


def unmount_under(roots: list[Path]) -> None:
    """Lazily unmount every mount point at or below any of ``roots`` (deepest first; the kubelet
    bind-mounts its root onto itself)."""
    tops = [str(r.resolve()) for r in roots if r.exists()]
    if not tops:
        return
    points = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        point = line.split()[1].replace("\\040", " ")
        if any(point == t or point.startswith(t + "/") for t in tops):
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


def wait_socket(socket: Path, record: procs.ProcessRecord, timeout: float = 30.0) -> None:
    """Wait until the process of ``record`` (a containerd) opens ``socket``; NodeUnavailable if it
    exits first or takes longer than ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not socket.exists():
        if not record.alive():
            raise NodeUnavailable(f"{record.name} exited; see {record.log_path}")
        if time.monotonic() > deadline:
            raise NodeUnavailable(f"{record.name} did not open {socket} in {timeout:.0f} s")
        time.sleep(0.1)
