"""The product's container images, built here without a registry, and the real node's image store.

Four images, each cached by the hash of its inputs (a warm call costs seconds):

- ``localhost/iclora-base:bookworm``: a Debian 12 root filesystem from Debian's packages
  (``debootstrap --variant=minbase``), committed with buildah; the ``BASE_IMAGE`` of the project's
  Dockerfiles here (production uses Ubuntu 24.04, see trainer/Dockerfile).
- ``localhost/pause:iclora``: the pod sandbox, Kubernetes' own ``build/pause/linux/pause.c``
  compiled static.
- the trainer image (``ghcr.io/masked-iclora/trainer:<version>``, the name TrainingProfiles use):
  ``trainer/Dockerfile`` built by ``buildah build`` with ``PYTHON=python3.11`` and this base, torch
  from PyPI as in production. Its dependency layer depends only on pyproject.toml and
  constraints.txt, so a code change rebuilds the last, small layer.
- the operator image (``ghcr.io/masked-iclora/operator:<version>``): ``operator/Dockerfile`` on the
  same base (Debian's python3 instead of python:3.11-slim's).

The node's containerd image store is built once per set of images (a *golden* root, loaded with
``ctr images import``) and each cluster's node gets a copy made of hard links
(``clone_image_root``): image layers are immutable files, so a cluster start costs seconds, not
an import of several GiB.

Everything lives under ``~/.cache/masked-iclora/images``. Needs root, buildah and debootstrap
(Debian packages).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

from iclora_dev.localcluster import binaries, node, procs

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[3]
DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = os.environ.get("ICLORA_DEBIAN_MIRROR", "http://deb.debian.org/debian")
BASE_IMAGE = f"localhost/iclora-base:{DEBIAN_SUITE}"
PAUSE_IMAGE = "localhost/pause:iclora"
TRAINER_IMAGE = "ghcr.io/masked-iclora/trainer:0.1.0"
OPERATOR_IMAGE = "ghcr.io/masked-iclora/operator:0.1.0"
PYTHON = "python3.11"  # Debian 12's Python
KEY_LABEL = "dev.iclora.inputs"
# The host's CA bundle, mounted into builds for hosts whose egress re-signs TLS (PIP_CERT).
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


class ImageBuildError(RuntimeError):
    """An image could not be built; the message names the step and its log."""


def images_root() -> Path:
    return binaries.cache_root() / "images"


def _buildah(*args: str, log_path: Path | None = None, check: bool = True) -> str:
    root = images_root()
    argv = ["buildah", "--root", str(root / "storage"), "--runroot", str(root / "run"),
            "--storage-driver", "overlay", *args]
    env = _env()
    if log_path is None:
        proc = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
        out, err = proc.stdout, proc.stderr
    else:
        with open(log_path, "w") as logf:
            proc = subprocess.run(argv, stdout=logf, stderr=subprocess.STDOUT, text=True, env=env, check=False)
        out, err = "", log_path.read_text()[-3000:]
    if check and proc.returncode != 0:
        raise ImageBuildError(f"buildah {' '.join(args[:2])} failed:\n{err.strip()[-3000:]}")
    return out.strip()


def _env() -> dict[str, str]:
    """Environment of every tool here: system folders on PATH (debootstrap, buildah's helpers live
    in sbin), buildah's temporary files under the image cache."""
    tmp = images_root() / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    return dict(os.environ, PATH=node._path(), TMPDIR=str(tmp))


def _inspect(image: str) -> dict | None:
    out = _buildah("inspect", "--type", "image", image, check=False)
    with contextlib.suppress(ValueError):
        return json.loads(out) if out else None
    return None


def _label(image: str) -> str | None:
    """The inputs key an image was built from (None: no such image)."""
    info = _inspect(image) or {}
    return ((info.get("OCIv1") or {}).get("config") or {}).get("Labels", {}).get(KEY_LABEL)


def image_id(image: str) -> str:
    info = _inspect(image)
    if info is None:
        raise ImageBuildError(f"no image {image}")
    return str(info["FromImageID"])


def _hash(parts: Iterable[bytes | str]) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\0")
    return h.hexdigest()[:16]


def _tree_bytes(paths: Iterable[Path]) -> Iterable[bytes]:
    for top in paths:
        files = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file())
        for path in files:
            if "__pycache__" in path.parts:
                continue
            yield str(path.relative_to(REPO_ROOT)).encode()
            yield path.read_bytes()


@contextlib.contextmanager
def _lock(name: str):
    images_root().mkdir(parents=True, exist_ok=True)
    with open(images_root() / f".{name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def build_base() -> str:
    """Debian minbase root filesystem as an image (debootstrap from Debian's packages)."""
    key = _hash([DEBIAN_SUITE, DEBIAN_MIRROR, "minbase-v1"])
    with _lock("base"):
        if _label(BASE_IMAGE) == key:
            return BASE_IMAGE
        if shutil.which("debootstrap", path=node._path()) is None:
            raise ImageBuildError("debootstrap not found (Debian: apt-get install debootstrap)")
        t0 = time.monotonic()
        with tempfile.TemporaryDirectory(dir=images_root()) as tmp:
            rootfs = Path(tmp) / "rootfs"
            logp = images_root() / "debootstrap.log"
            with open(logp, "w") as logf:
                proc = subprocess.run(["debootstrap", "--variant=minbase", DEBIAN_SUITE, str(rootfs), DEBIAN_MIRROR],
                                      stdout=logf, stderr=subprocess.STDOUT, env=_env(), check=False)
            if proc.returncode != 0:
                raise ImageBuildError(f"debootstrap failed; see {logp}")
            ctr = _buildah("from", "scratch")
            try:
                mnt = Path(_buildah("mount", ctr))
                subprocess.run(["cp", "-a", f"{rootfs}/.", f"{mnt}/"], check=True)
                _buildah("umount", ctr)
                _buildah("config", "--label", f"{KEY_LABEL}={key}", "--env",
                         "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "--cmd", "/bin/bash", ctr)
                _buildah("commit", "-q", "--rm", ctr, BASE_IMAGE)
            except BaseException:
                _buildah("rm", ctr, check=False)
                raise
        log.info("built %s in %.0f s", BASE_IMAGE, time.monotonic() - t0)
        return BASE_IMAGE


def build_pause() -> str:
    """The pod sandbox image from Kubernetes' pause.c (the same version as the kubelet)."""
    src = binaries.module_dir("k8s.io/kubernetes", binaries.K8S_VERSION) / "build" / "pause" / "linux" / "pause.c"
    key = _hash([src.read_bytes(), "static-v1"])
    with _lock("pause"):
        if _label(PAUSE_IMAGE) == key:
            return PAUSE_IMAGE
        with tempfile.TemporaryDirectory(dir=images_root()) as tmp:
            exe = Path(tmp) / "pause"
            proc = subprocess.run(
                ["gcc", "-static", "-Os", f"-DVERSION={binaries.K8S_VERSION}", "-o", str(exe), str(src)],
                capture_output=True, text=True, check=False,
            )
            if proc.returncode != 0:
                raise ImageBuildError(f"compiling pause.c failed: {proc.stderr[-2000:]}")
            ctr = _buildah("from", "scratch")
            _buildah("copy", ctr, str(exe), "/pause")
            _buildah("config", "--entrypoint", '["/pause"]', "--user", "65535:65535",
                     "--label", f"{KEY_LABEL}={key}", ctr)
            _buildah("commit", "-q", "--rm", ctr, PAUSE_IMAGE)
        return PAUSE_IMAGE


def trainer_inputs() -> list[Path]:
    return [REPO_ROOT / p for p in ("trainer/Dockerfile", "pyproject.toml", "constraints.txt",
                                    "operator/iclora_api", "operator/iclora_operator", "trainer/iclora_trainer")]


def operator_inputs() -> list[Path]:
    return [REPO_ROOT / "operator" / "Dockerfile", *trainer_inputs()[1:]]


def build_trainer(base: str) -> str:
    """``trainer/Dockerfile`` on the Debian base; the image keeps its production name."""
    return _build_dockerfile("trainer", TRAINER_IMAGE, trainer_inputs(), base, {"PYTHON": PYTHON})


def build_operator(base: str) -> str:
    """``operator/Dockerfile`` on the Debian base (its default base, python:3.11-slim, is Docker Hub's)."""
    return _build_dockerfile("operator", OPERATOR_IMAGE, operator_inputs(), base, {})


def _build_dockerfile(component: str, image: str, inputs: list[Path], base: str, args: dict[str, str]) -> str:
    key = _hash([image_id(base), *_tree_bytes(inputs)])
    with _lock(component):
        if _label(image) == key:
            return image
        t0 = time.monotonic()
        logp = images_root() / f"{component}-build.log"
        argv = ["build", "--layers", "--isolation", "chroot", "--network", "host",
                "-f", str(REPO_ROOT / component / "Dockerfile"), "--build-arg", f"BASE_IMAGE={base}",
                "--label", f"{KEY_LABEL}={key}", "-t", image]
        for name, value in args.items():
            argv += ["--build-arg", f"{name}={value}"]
        if HOST_CA_BUNDLE.is_file():
            argv += ["--volume", f"{HOST_CA_BUNDLE}:/run/build-ca.crt:ro", "--build-arg", "PIP_CERT=/run/build-ca.crt"]
        if os.environ.get("PIP_INDEX_URL"):
            argv += ["--build-arg", f"PIP_INDEX_URL={os.environ['PIP_INDEX_URL']}"]
        _buildah(*argv, str(REPO_ROOT), log_path=logp)
        log.info("built %s in %.0f s (log %s)", image, time.monotonic() - t0, logp)
        return image


@dataclasses.dataclass(frozen=True)
class ImageSet:
    pause: str
    trainer: str
    operator: str
    ids: tuple[str, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return (self.pause, self.trainer, self.operator)


def build_all() -> ImageSet:
    base = build_base()
    pause = build_pause()
    trainer = build_trainer(base)
    operator = build_operator(base)
    return ImageSet(pause=pause, trainer=trainer, operator=operator,
                    ids=(image_id(pause), image_id(trainer), image_id(operator)))


# -- the node's image store -------------------------------------------------------------------------


def golden_root(images: ImageSet) -> Path:
    """A containerd root holding ``images`` in the CRI's namespace (built once per image set)."""
    key = _hash(images.ids)
    golden = images_root() / "containerd" / key
    with _lock("golden"):
        if (golden / ".complete").exists():
            return golden
        shutil.rmtree(golden, ignore_errors=True)
        parent = golden.parent
        parent.mkdir(parents=True, exist_ok=True)
        older = [p for p in parent.iterdir() if (p / ".complete").exists()]
        if older:
            # Start from the previous image set: the snapshots of unchanged layers (the several-GiB
            # dependency layer after a code change) exist already, so only new layers are unpacked.
            _clone(max(older, key=lambda p: (p / ".complete").stat().st_mtime), golden)
            (golden / ".complete").unlink(missing_ok=True)
        for stale in parent.iterdir():  # older image sets (nodes keep their hard links)
            if stale != golden:
                shutil.rmtree(stale, ignore_errors=True)
        t0 = time.monotonic()
        bins = binaries.require_binaries(("containerd", "ctr"))
        run = Path(tempfile.mkdtemp(prefix="iclora-ctrd-", dir="/run"))
        sock = run / "c.sock"
        config = run / "config.toml"
        config.write_text(f'version = 3\nroot = "{golden}"\nstate = "{run / "state"}"\n'
                          f'[grpc]\n  address = "{sock}"\n[ttrpc]\n  address = "{sock}.ttrpc"\n'
                          "[plugins.'io.containerd.nri.v1.nri']\n  disable = true\n")
        _, record = procs.start("containerd-import", [str(bins["containerd"]), "--config", str(config)],
                                   images_root() / "containerd-import.log")
        try:
            node.wait_socket(sock, record)
            for name in images.names:
                _import(name, bins["ctr"], sock)
        finally:
            record.stop()
            shutil.rmtree(run, ignore_errors=True)
        (golden / ".complete").write_text(json.dumps({"images": list(images.names), "ids": list(images.ids)}))
        log.info("loaded %s into the node image store in %.0f s", ", ".join(images.names), time.monotonic() - t0)
        return golden


def _import(name: str, ctr: Path, sock: Path) -> None:
    """buildah push -> uncompressed OCI archive -> ctr images import (unpacked, the archive's
    layers then dropped from the content store: the snapshots are what containers run from)."""
    archive = images_root() / "tmp" / f"import-{os.getpid()}.tar"
    try:
        _buildah("push", "-q", "--disable-compression", name, f"oci-archive:{archive}:{name}")
        imp = subprocess.run([str(ctr), "--address", str(sock), "-n", "k8s.io", "images", "import",
                              "--local", "--snapshotter", "overlayfs", "--discard-unpacked-layers", str(archive)],
                             capture_output=True, text=True, check=False)
        if imp.returncode != 0:
            raise ImageBuildError(f"loading {name} into containerd failed: {imp.stderr[-1500:]}")
    finally:
        archive.unlink(missing_ok=True)


# The files of a containerd root that are written in place: its metadata databases (real copies
# in a clone) and its identity (a new one per node).
_MUTABLE_FILES = ("io.containerd.metadata.v1.bolt/meta.db", "io.containerd.snapshotter.v1.overlayfs/metadata.db")
_IDENTITY_FILE = "io.containerd.grpc.v1.introspection/uuid"


def clone_image_root(golden: Path, dest: Path) -> None:
    """Copy a containerd root as hard links (image snapshots are never written: each container
    gets its own upper layer) with real copies of its databases. Under the golden lock, so a start
    with another image set cannot delete the source mid-copy."""
    with _lock("golden"):
        _clone(golden, dest)


def _clone(src: Path, dest: Path) -> None:
    shutil.rmtree(dest, ignore_errors=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-al", str(src), str(dest)], check=True)
    for name in _MUTABLE_FILES:
        linked = dest / name
        if linked.exists():
            copy = linked.with_name(linked.name + ".copy")
            shutil.copy2(linked, copy)
            copy.replace(linked)
    (dest / _IDENTITY_FILE).unlink(missing_ok=True)
