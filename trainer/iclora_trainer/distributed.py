"""Rank discovery from the environment.

Either the torch/DeepSpeed variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT), or a Kubernetes Indexed Job: JOB_COMPLETION_INDEX is the node
index, ICLORA_NNODES and ICLORA_GPUS_PER_NODE the geometry, MASTER_ADDR the
headless-Service name of pod 0. With several GPUs per node, `iclora train`
starts one process per GPU (LOCAL_RANK) and this module derives RANK from them.

Also: how many CPU threads each rank uses (`threads_per_rank`), and `RankZeroGate`, how the
other ranks wait for work rank 0 does alone without sitting in a collective.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from iclora_api.contract import (
    GPUS_PER_NODE_ENV,
    JOB_COMPLETION_INDEX_ENV,
    MASTER_ADDR_ENV,
    MASTER_PORT_ENV,
    NNODES_ENV,
)
from iclora_trainer.errors import TrainerError
from iclora_trainer.preemption import Preempted

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int
    gpus_per_node: int

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def dist_env(env: Mapping[str, str] | None = None) -> DistEnv:
    env = os.environ if env is None else env
    local_rank = int(env.get("LOCAL_RANK", "0"))
    gpus = int(env.get(GPUS_PER_NODE_ENV, "1"))
    if "RANK" in env and "WORLD_SIZE" in env:
        rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
    elif JOB_COMPLETION_INDEX_ENV in env:
        nodes = int(env.get(NNODES_ENV, "1"))
        rank = int(env[JOB_COMPLETION_INDEX_ENV]) * gpus + local_rank
        world = nodes * gpus
    else:
        rank, world = 0, gpus if "LOCAL_RANK" in env else 1
        rank = local_rank
    return DistEnv(
        rank=rank,
        world_size=world,
        local_rank=local_rank,
        master_addr=env.get(MASTER_ADDR_ENV, "127.0.0.1"),
        master_port=int(env.get(MASTER_PORT_ENV, "29500")),
        gpus_per_node=gpus,
    )


def export_torch_env(d: DistEnv) -> None:
    """Set the variables torch.distributed's env:// rendezvous reads."""
    os.environ.update(
        {
            "RANK": str(d.rank),
            "WORLD_SIZE": str(d.world_size),
            "LOCAL_RANK": str(d.local_rank),
            MASTER_ADDR_ENV: d.master_addr,
            MASTER_PORT_ENV: str(d.master_port),
        }
    )


# --- CPU threads per rank ---------------------------------------------------------------------
# A rank starts without OMP_NUM_THREADS: torch/OpenMP and FFmpeg size their pools from the node's
# cores (often 200+) while the pod's CPU limit is a few dozen, and the CFS quota throttles them.

OMP_NUM_THREADS_ENV = "OMP_NUM_THREADS"
CGROUP_ROOT = Path("/sys/fs/cgroup")


def skip_cpu_shared_memory_allreduce() -> None:
    """Keep DeepSpeed from building its CPU shared-memory allreduce (call before its comm starts).

    On the CPU accelerator DeepSpeed's comm backend JIT-compiles a C++ op, `deepspeed_shm_comm`,
    the first time it starts (deepspeed/comm/torch.py, `build_shm_op`), unless the op is marked
    incompatible in `deepspeed.ops.__compatible_ops__`. In a fresh container that is a g++ build of
    torch's headers in every pod: minutes of CPU and about 1 GiB, which a 3 GiB training pod's
    memory limit did not survive (tests/cluster/test_containers.py found it). Only DeepSpeed's
    inference all-reduce uses the op; training on CPU all-reduces through gloo. GPU runs never
    build it (it belongs to the CPU accelerator).
    """
    import deepspeed.ops
    from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder

    deepspeed.ops.__compatible_ops__[ShareMemCommBuilder.NAME] = False


def _cgroup_path(proc_self_cgroup: Path) -> str | None:
    """This process's cgroup v2 path ("0::/kubepods/..."), None where it is not listed."""
    try:
        lines = proc_self_cgroup.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith("0::"):
            return line[3:].strip() or None
    return None


def cgroup_cpu_limit(root: Path = CGROUP_ROOT, proc_self_cgroup: Path = Path("/proc/self/cgroup")) -> float | None:
    """The CPU limit (CPUs, may be fractional) of this container's cgroup; None where there is none.

    cgroup v2: `cpu.max` is "<quota> <period>" or "max <period>"; in a container (cgroup
    namespace) it is at the root, else under this process's own path. cgroup v1:
    cpu.cfs_quota_us / cpu.cfs_period_us (quota -1: none).
    """
    v2 = [root / "cpu.max"]
    own = _cgroup_path(proc_self_cgroup)
    if own and own != "/":
        v2.insert(0, root / own.lstrip("/") / "cpu.max")
    for path in v2:
        try:
            quota, period = path.read_text().split()[:2]
        except (OSError, ValueError):
            continue
        if quota == "max":
            return None
        try:
            return _ratio(int(quota), int(period))
        except ValueError:
            return None
    for folder in (root / "cpu", root / "cpu,cpuacct", root / "cpuacct,cpu", root):
        try:
            quota_us = int((folder / "cpu.cfs_quota_us").read_text().strip())
            period_us = int((folder / "cpu.cfs_period_us").read_text().strip())
        except (OSError, ValueError):
            continue
        return _ratio(quota_us, period_us)
    return None


def _ratio(quota: int, period: int) -> float | None:
    return quota / period if quota > 0 and period > 0 else None


def _affinity_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def local_ranks(env: Mapping[str, str] | None = None) -> int:
    """Rank processes on this pod: torchrun's LOCAL_WORLD_SIZE, else ICLORA_GPUS_PER_NODE, else 1."""
    env = os.environ if env is None else env
    for name in ("LOCAL_WORLD_SIZE", GPUS_PER_NODE_ENV):
        try:
            n = int(env.get(name, ""))
        except ValueError:
            continue
        if n > 0:
            return n
    return 1


def threads_per_rank(
    env: Mapping[str, str] | None = None,
    cgroup_root: Path = CGROUP_ROOT,
    proc_self_cgroup: Path = Path("/proc/self/cgroup"),
    affinity: int | None = None,
) -> int:
    """CPU threads one rank process should use (torch intra-op, OpenMP, FFmpeg decoding).

    An OMP_NUM_THREADS the admin set wins. Else floor(CPUs / local ranks), at least 1, where
    CPUs is the cgroup's CPU limit (what the pod's `resources.limits.cpu` becomes), capped by
    the CPUs this process may run on (sched_getaffinity), which is also the fallback.
    """
    env = os.environ if env is None else env
    try:
        preset = int(env.get(OMP_NUM_THREADS_ENV, ""))
    except ValueError:
        preset = 0
    if preset > 0:
        return preset
    cpus: float = _affinity_cpus() if affinity is None else affinity
    limit = cgroup_cpu_limit(cgroup_root, proc_self_cgroup)
    if limit is not None:
        cpus = min(cpus, limit)
    return max(1, math.floor(cpus / local_ranks(env)))


def export_thread_env(env: dict[str, str] | None = None) -> int:
    """Set OMP_NUM_THREADS (when unset) in `env` (default os.environ): read by OpenMP when torch
    loads, and inherited by child processes. Call it before importing torch."""
    env = os.environ if env is None else env  # type: ignore[assignment]
    n = threads_per_rank(env)
    env.setdefault(OMP_NUM_THREADS_ENV, str(n))
    return n


def apply_thread_limits() -> int:
    """Size torch's intra-op pool to `threads_per_rank()` (works after torch was imported)."""
    import torch

    n = threads_per_rank()
    if torch.get_num_threads() != n:
        log.info("CPU threads per rank: %d", n)
        torch.set_num_threads(n)
    return n


# --- Waiting for rank 0 without a collective -----------------------------------------------------


class RankZeroStalled(TrainerError):
    """Rank 0 made no progress for longer than the collective timeout, or failed, while the
    other ranks waited for it (INTERNAL_ERROR: retried by the Job)."""


class RankZeroGate:
    """Work rank 0 does alone (validation inputs, reels, final artifacts) while the others wait.

    The others do not wait in a collective, whose timeout (collectiveTimeoutSeconds) would fire
    once the work is longer than it: they poll a key on the process group's rendezvous store
    (the TCPStore on rank 0's pod that env:// rendezvous made; plain TCP, no NCCL/gloo work is
    pending meanwhile, so no watchdog runs). The wait is bounded by progress, not by the length
    of the work: rank 0 calls `beat()` as it goes (each media file, each sampler step, each
    upload); a waiter fails (RankZeroStalled) when no beat came for `idle_timeout_s`, when
    rank 0's work raised (rank 0 marks the key failed and raises itself), or at once when rank 0
    is gone (its store closes). Every rank calls the same sequence of `open`/`wait` names.
    """

    _made = 0  # gates made for a process group by this process

    def __init__(
        self, store: Any, rank: int, world_size: int, idle_timeout_s: float, poll_s: float = 0.5
    ) -> None:
        self.store = store
        self.rank = rank
        self.world_size = world_size
        self.idle_timeout_s = idle_timeout_s
        self.poll_s = poll_s

    @classmethod
    def for_process_group(cls, dist: DistEnv, idle_timeout_s: float) -> RankZeroGate:
        """The gate of this run: a no-op without several ranks (or without a process group)."""
        if not dist.distributed:
            return cls(None, 0, 1, idle_timeout_s)
        import torch.distributed as tdist
        from torch.distributed import distributed_c10d

        # The default group's store (private accessor, present since torch 1.x): no second port.
        store = distributed_c10d._get_default_store()
        # Every rank makes its gates in the same order: the k-th gate of a process (a second
        # training in the same process group) has keys of its own.
        cls._made += 1
        prefix = f"iclora/rank0/{cls._made}/"
        return cls(tdist.PrefixStore(prefix, store), dist.rank, dist.world_size, idle_timeout_s)

    @property
    def alone(self) -> bool:
        return self.store is None or self.world_size <= 1

    def beat(self) -> None:
        """Rank 0: progress was made (resets the waiters' idle clock)."""
        if not self.alone and self.rank == 0:
            self.store.add("beat", 1)

    def run(self, name: str, work: Callable[[], T], confirm: bool = False) -> T | None:
        """Rank 0 runs `work` and opens `name` (failed if it raised); the others wait for it."""
        with self.section(name, confirm=confirm):
            return work() if self.rank == 0 else None
        return None  # pragma: no cover (the with block returns or raises)

    @contextmanager
    def section(self, name: str, confirm: bool = False) -> Iterator[None]:
        """Every rank runs the body (rank 0 its own work, the others whatever they can do
        meanwhile); at its end rank 0 opens `name` and the others wait for it. An exception in
        rank 0's body opens it failed (preempted for a signal), so the others do not wait on."""
        try:
            yield
        except BaseException as exc:
            if self.rank == 0:
                tag = "preempted: " if isinstance(exc, Preempted) else "failed: "
                try:
                    self.open(name, failure=f"{tag}{type(exc).__name__}: {exc}")
                except Exception as store_exc:  # the store may be what failed: keep the first error
                    log.warning("could not tell the other ranks that %r failed: %s", name, store_exc)
            raise
        if self.rank == 0:
            self.open(name, confirm=confirm)
        else:
            self.wait(name)

    def open(self, name: str, failure: str | None = None, confirm: bool = False) -> None:
        """Rank 0: let the ranks waiting on `name` go (`failure`: "failed: ..." or "preempted:
        ...", they raise instead). `confirm`: return once each has seen it
        (before rank 0 exits and its store with it), or after `idle_timeout_s` with a warning."""
        if self.alone or self.rank != 0:
            return
        self.store.set(name, "ok" if failure is None else failure[:2000])
        if not confirm or failure is not None:
            return
        deadline = time.monotonic() + self.idle_timeout_s
        while self.store.add(name + "/seen", 0) < self.world_size - 1:
            if time.monotonic() > deadline:
                log.warning("not every rank confirmed %r within %.0f s", name, self.idle_timeout_s)
                return
            time.sleep(self.poll_s / 5)

    def wait(self, name: str) -> None:
        """Other ranks: return when rank 0 opened `name`; RankZeroStalled when it failed or stalled."""
        if self.alone or self.rank == 0:
            return
        started = last_change = time.monotonic()
        beats = self.store.add("beat", 0)
        next_log = started + 60
        while not self.store.check([name]):
            time.sleep(self.poll_s)
            now = time.monotonic()
            current = self.store.add("beat", 0)
            if current != beats:
                beats, last_change = current, now
            elif now - last_change > self.idle_timeout_s:
                raise RankZeroStalled(
                    f"rank 0 made no progress on {name!r} for {now - last_change:.0f} s "
                    f"(collective timeout {self.idle_timeout_s:.0f} s); waited {now - started:.0f} s"
                )
            if now >= next_log:
                log.info("waiting for rank 0 (%s): %.0f s", name, now - started)
                next_log = now + 60
        value = self.store.get(name).decode()
        self.store.add(name + "/seen", 1)
        if value.startswith("preempted: "):
            raise Preempted(f"rank 0 was stopped during {name!r} ({value.removeprefix('preempted: ')})")
        if value != "ok":
            raise RankZeroStalled(f"rank 0 failed during {name!r}: {value.removeprefix('failed: ')}")
