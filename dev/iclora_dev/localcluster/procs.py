"""Child processes of the local cluster: started in their own process group, recorded, reaped.

Every component runs in a new session (its own process group), so stopping it kills
everything it spawned. With ``die_with_parent`` the kernel also kills it when the process
that started it dies (Linux ``PR_SET_PDEATHSIG``), which is what keeps a crashed test run
from leaving a control plane behind. ``ProcessRecord`` carries the start time from
``/proc`` so a recorded pid that the kernel has since reused is never signalled.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import logging
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def proc_start_time(pid: int) -> int | None:
    """Kernel start time of a process (clock ticks since boot), None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces: split after its closing parenthesis.
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":
        return None
    return int(fields[19])


@dataclasses.dataclass
class ProcessRecord:
    name: str
    pid: int
    start_time: int
    log_path: str

    def alive(self) -> bool:
        return proc_start_time(self.pid) == self.start_time

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM the whole process group, SIGKILL it after ``grace`` seconds."""
        if not self.alive():
            _kill_group(self.pid, signal.SIGKILL)  # stray children of a dead leader
            return
        _kill_group(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if not _group_alive(self.pid):
                return
            _reap(self.pid)
            time.sleep(0.05)
        log.warning("%s (pid %d) ignored SIGTERM, killing", self.name, self.pid)
        _kill_group(self.pid, signal.SIGKILL)
        deadline = time.monotonic() + grace
        while _group_alive(self.pid) and time.monotonic() < deadline:
            _reap(self.pid)
            time.sleep(0.05)


def _kill_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie leader still counts for killpg; treat a group of only zombies as gone.
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    _reap(pgid)
    return False


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def start(
    name: str,
    argv: Sequence[str],
    log_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    die_with_parent: bool = True,
) -> tuple[subprocess.Popen[bytes], ProcessRecord]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=_die_with_parent if die_with_parent else None,
        )
    start_time = proc_start_time(proc.pid)
    log.debug("started %s pid %d: %s", name, proc.pid, " ".join(argv))
    return proc, ProcessRecord(name, proc.pid, start_time or -1, str(log_path))
