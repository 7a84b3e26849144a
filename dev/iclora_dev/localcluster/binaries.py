"""Control-plane binaries: find prebuilt ones or build them from source via the Go module proxy.

Binaries land in a versioned cache under the home directory
(``~/.cache/masked-iclora/bin/<component>-<version>/``) and are reused when present, so only
the very first build on a machine pays the several-minute Go compile. A shared GOPATH and
GOCACHE under the same root keep rebuilds (new version, relink) incremental.

Lookup order for each binary: ``ICLORA_K8S_BIN_DIR`` (a folder of prebuilt binaries),
``KUBEBUILDER_ASSETS`` (envtest's folder: apiserver, etcd, kubectl), then the cache.
"""

from __future__ import annotations

import dataclasses
import fcntl
import logging
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path

log = logging.getLogger(__name__)

K8S_VERSION = "v1.36.3"
ETCD_VERSION = "v3.6.16"
KWOK_VERSION = "v0.8.0"
HELM_VERSION = "v3.22.0"
KUEUE_VERSION = "v0.17.0"
# The real-container node (docs/local-cluster.md, "Real containers"): the kubelet from the same
# Kubernetes source, containerd 2 (kubelet 1.36 needs the CRI RuntimeConfig call that containerd
# 1.x lacks), crictl, and CoreDNS for the cluster's DNS names.
CONTAINERD_VERSION = "v2.4.2"
CRICTL_VERSION = "v1.37.0"
COREDNS_VERSION = "v1.15.0"
# runc from source (cgo + libseccomp): Debian 12's runc 1.1 and crun 1.8 cannot run containerd
# 2.4's OCI specs.
RUNC_VERSION = "v1.3.3"

BIN_DIR_ENV = "ICLORA_K8S_BIN_DIR"
CACHE_ENV = "ICLORA_CACHE_DIR"

K8S_BINARIES = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
CORE_BINARIES = (*K8S_BINARIES, "etcd", "kwok")


class BinariesMissing(RuntimeError):
    """A binary is neither prebuilt nor in the cache; run ``iclora local-cluster build``."""


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "masked-iclora"))


@dataclasses.dataclass(frozen=True)
class Component:
    """One versioned group of binaries that is built in one go."""

    name: str
    version: str
    binaries: tuple[str, ...]

    @property
    def bin_dir(self) -> Path:
        return cache_root() / "bin" / f"{self.name}-{self.version}"

    @property
    def work_dir(self) -> Path:
        return cache_root() / "gobuild" / f"{self.name}-{self.version}"


COMPONENTS: dict[str, Component] = {
    "k8s": Component("k8s", K8S_VERSION, K8S_BINARIES),
    "etcd": Component("etcd", ETCD_VERSION, ("etcd",)),
    "kwok": Component("kwok", KWOK_VERSION, ("kwok",)),
    "helm": Component("helm", HELM_VERSION, ("helm",)),
    "kueue": Component("kueue", KUEUE_VERSION, ("kueue",)),
    "kubelet": Component("kubelet", K8S_VERSION, ("kubelet",)),
    "containerd": Component(
        "containerd", CONTAINERD_VERSION, ("containerd", "containerd-shim-runc-v2", "ctr")
    ),
    "crictl": Component("crictl", CRICTL_VERSION, ("crictl",)),
    "coredns": Component("coredns", COREDNS_VERSION, ("coredns",)),
    "runc": Component("runc", RUNC_VERSION, ("runc",)),
}
NODE_COMPONENTS = ("kubelet", "containerd", "crictl", "coredns", "runc")
DEFAULT_COMPONENTS = ("k8s", "etcd", "kwok", "helm", "kueue", *NODE_COMPONENTS)


def go_env() -> dict[str, str]:
    """Environment for every ``go`` call: one shared module and build cache under the cache root."""
    root = cache_root()
    env = dict(os.environ)
    env.update(
        GOPATH=str(root / "go"),
        GOMODCACHE=str(root / "go" / "pkg" / "mod"),
        GOCACHE=str(root / "go-build"),
        GOFLAGS="-mod=mod",
        CGO_ENABLED="0",
        GOTOOLCHAIN="local",
    )
    env.setdefault("GOPROXY", "https://proxy.golang.org,direct")
    return env


def find_binary(name: str) -> Path | None:
    """Return the path of a usable binary, or None when it has to be built."""
    candidates: list[Path] = []
    for var in (BIN_DIR_ENV, "KUBEBUILDER_ASSETS"):
        if os.environ.get(var):
            candidates.append(Path(os.environ[var]) / name)
    for comp in COMPONENTS.values():
        if name in comp.binaries:
            candidates.append(comp.bin_dir / name)
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    return None


def require_binaries(names: Iterable[str] = CORE_BINARIES) -> dict[str, Path]:
    found: dict[str, Path] = {}
    missing: list[str] = []
    for name in names:
        path = find_binary(name)
        if path is None:
            missing.append(name)
        else:
            found[name] = path
    if missing:
        raise BinariesMissing(
            f"missing binaries {missing}: run `iclora local-cluster build` "
            f"or set {BIN_DIR_ENV} / KUBEBUILDER_ASSETS to a folder that holds them"
        )
    return found


def module_dir(module: str, version: str) -> Path:
    """Folder of a downloaded module in the shared module cache (downloads it if needed)."""
    out = _go(["mod", "download", "-json", f"{module}@{version}"], cwd=cache_root())
    match = re.search(r'"Dir":\s*"([^"]+)"', out)
    if not match:
        raise RuntimeError(f"go mod download gave no Dir for {module}@{version}")
    return Path(match.group(1))


def build(names: Iterable[str] = DEFAULT_COMPONENTS, force: bool = False) -> dict[str, float]:
    """Build the named components that are not cached yet; returns seconds spent per component."""
    timings: dict[str, float] = {}
    for name in names:
        comp = COMPONENTS[name]
        comp.bin_dir.parent.mkdir(parents=True, exist_ok=True)
        # One builder per component at a time (parallel test sessions, two shells running `up`).
        with open(comp.bin_dir.parent / f".{comp.name}-{comp.version}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not force and all((comp.bin_dir / b).is_file() for b in comp.binaries):
                timings[name] = 0.0
                continue
            start = time.monotonic()
            log.info("building %s %s into %s", comp.name, comp.version, comp.bin_dir)
            _BUILDERS[name](comp)
            timings[name] = time.monotonic() - start
            log.info("built %s in %.1f s", comp.name, timings[name])
    return timings


def _go_binary(env: dict[str, str]) -> str:
    """The Go toolchain: on PATH, or where its installers put it (a caller's PATH may be minimal)."""
    found = shutil.which("go", path=os.pathsep.join([env.get("PATH", ""), "/usr/local/go/bin", "/usr/lib/go/bin"]))
    if found is None:
        raise RuntimeError("the Go toolchain (`go`) is not installed: https://go.dev/doc/install")
    return found


def _go(args: list[str], cwd: Path, extra_env: dict[str, str] | None = None) -> str:
    cwd.mkdir(parents=True, exist_ok=True)
    env = go_env()
    env.update(extra_env or {})
    proc = subprocess.run([_go_binary(env), *args], cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"go {' '.join(args)} failed in {cwd}:\n{proc.stderr[-4000:]}")
    return proc.stdout


def _write_module(work: Path, require: dict[str, str], replace: dict[str, str], imports: list[str]) -> None:
    """A throwaway module that requires the real one, so `go mod tidy` can resolve it."""
    work.mkdir(parents=True, exist_ok=True)
    lines = ["module iclora.local/build", "", "go 1.26", ""]
    lines += [f"require {mod} {ver}" for mod, ver in require.items()]
    lines += [f"replace {mod} => {target}" for mod, target in replace.items()]
    (work / "go.mod").write_text("\n".join(lines) + "\n")
    blank = "\n".join(f'\t_ "{imp}"' for imp in imports)
    # The build tag keeps main packages out of any real build; tidy still follows the imports.
    (work / "tools.go").write_text(f"//go:build tools\n\npackage tools\n\nimport (\n{blank}\n)\n")


def _staging_replaces(kubernetes_gomod: str, version: str) -> dict[str, str]:
    """Map every staging module (local `./staging/...` replace) to its published 0.x release."""
    staging_version = "v0." + version.split(".", 1)[1]
    replaces: dict[str, str] = {}
    for mod, target in re.findall(r"^\s*(k8s\.io/\S+)\s*=>\s*(\./staging/\S+)", kubernetes_gomod, re.M):
        del target
        replaces[mod] = f"{mod} {staging_version}"
    if not replaces:
        raise RuntimeError("found no staging replace lines in k8s.io/kubernetes go.mod")
    return replaces


def _version_ldflags(version: str) -> str:
    major, minor = version.lstrip("v").split(".")[:2]
    flags = ["-s", "-w"]
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X {pkg}.gitVersion={version}",
            f"-X {pkg}.gitMajor={major}",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitTreeState=clean",
        ]
    return " ".join(flags)


def _build_k8s(comp: Component) -> None:
    src = module_dir("k8s.io/kubernetes", comp.version)
    replaces = _staging_replaces((src / "go.mod").read_text(), comp.version)
    pkgs = [f"k8s.io/kubernetes/cmd/{b}" for b in comp.binaries]
    _write_module(comp.work_dir, {"k8s.io/kubernetes": comp.version}, replaces, pkgs)
    _go(["mod", "tidy"], cwd=comp.work_dir)
    tmp = _tmp_dir(comp)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    _go(
        ["build", "-trimpath", "-ldflags", _version_ldflags(comp.version), "-o", str(tmp) + "/", *pkgs],
        cwd=comp.work_dir,
    )
    _publish(tmp, comp.bin_dir)


def _build_etcd(comp: Component) -> None:
    pkg = "go.etcd.io/etcd/server/v3"
    _write_module(comp.work_dir, {pkg: comp.version}, {}, [pkg])
    _go(["mod", "tidy"], cwd=comp.work_dir)
    tmp = _tmp_dir(comp)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    _go(["build", "-trimpath", "-ldflags", "-s -w", "-o", str(tmp / "etcd"), pkg], cwd=comp.work_dir)
    _publish(tmp, comp.bin_dir)


def _go_install(pkg: str) -> Callable[[Component], None]:
    def install(comp: Component) -> None:
        tmp = _tmp_dir(comp)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        _go(
            ["install", "-trimpath", "-ldflags", "-s -w", f"{pkg}@{comp.version}"],
            cwd=cache_root(),
            extra_env={"GOBIN": str(tmp), "GOFLAGS": ""},
        )
        _publish(tmp, comp.bin_dir)

    return install


def _build_kueue(comp: Component) -> None:
    pkg = "sigs.k8s.io/kueue/cmd/kueue"
    _write_module(comp.work_dir, {"sigs.k8s.io/kueue": comp.version}, {}, [pkg])
    _go(["mod", "tidy"], cwd=comp.work_dir)
    tmp = _tmp_dir(comp)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    _go(["build", "-trimpath", "-ldflags", "-s -w", "-o", str(tmp / "kueue"), pkg], cwd=comp.work_dir)
    _publish(tmp, comp.bin_dir)


def _build_containerd(comp: Component) -> None:
    """containerd, its runc shim and ctr, static (no cgo: no btrfs/devmapper snapshotters)."""
    base = "github.com/containerd/containerd/v2"
    pkgs = [f"{base}/cmd/{b}" for b in comp.binaries]
    _write_module(comp.work_dir, {base: comp.version}, {}, pkgs)
    _go(["mod", "tidy"], cwd=comp.work_dir)
    tmp = _tmp_dir(comp)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    ldflags = f"-s -w -X {base}/version.Version={comp.version}"
    tags = "no_btrfs,no_devmapper,no_zfs,no_aufs"
    _go(["build", "-trimpath", "-tags", tags, "-ldflags", ldflags, "-o", str(tmp) + "/", *pkgs], cwd=comp.work_dir)
    _publish(tmp, comp.bin_dir)


def _build_runc(comp: Component) -> None:
    """runc with seccomp (cgo, Debian's libseccomp-dev). Its module replaces opencontainers/selinux
    with a nested folder that module zips leave out; the published release stands in for it."""
    src = module_dir("github.com/opencontainers/runc", comp.version)
    work = comp.work_dir
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(src, work)
    for path in [work, *work.rglob("*")]:
        path.chmod(path.stat().st_mode | 0o200)
    _go(["mod", "edit", "-dropreplace", "github.com/opencontainers/selinux"], cwd=work)
    tmp = _tmp_dir(comp)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    _go(["build", "-trimpath", "-tags", "seccomp", "-ldflags", f"-s -w -X main.version={comp.version.lstrip('v')}",
         "-o", str(tmp / "runc"), "."], cwd=work, extra_env={"CGO_ENABLED": "1"})
    _publish(tmp, comp.bin_dir)


def _tmp_dir(comp: Component) -> Path:
    return comp.bin_dir.parent / (comp.bin_dir.name + ".tmp")


def _publish(tmp: Path, final: Path) -> None:
    """Move a finished build into place in one rename, so a crash never leaves half a cache."""
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)


_BUILDERS = {
    "k8s": _build_k8s,
    "etcd": _build_etcd,
    "kwok": _go_install("sigs.k8s.io/kwok/cmd/kwok"),
    "helm": _go_install("helm.sh/helm/v3/cmd/helm"),
    "kueue": _build_kueue,
    "kubelet": _build_k8s,
    "containerd": _build_containerd,
    "crictl": _go_install("sigs.k8s.io/cri-tools/cmd/crictl"),
    "coredns": _go_install("github.com/coredns/coredns"),
    "runc": _build_runc,
}
