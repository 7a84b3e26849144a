"""CPU threads per rank from the pod's CPU limit (issue 23.4): cgroup v2/v1 quota, affinity
fallback, the admin's OMP_NUM_THREADS, split over the pod's local ranks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from iclora_trainer.distributed import cgroup_cpu_limit, export_thread_env, local_ranks, threads_per_rank

pytestmark = pytest.mark.trainer

REPO = Path(__file__).resolve().parents[2]
NO_CGROUP_FILE = Path("/nonexistent/proc-self-cgroup")


def _v2(root: Path, content: str, sub: str = "") -> Path:
    folder = root / sub.lstrip("/") if sub else root
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cpu.max").write_text(content + "\n")
    return root


def _v1(root: Path, quota: int, period: int = 100000, folder: str = "cpu") -> Path:
    d = root / folder
    d.mkdir(parents=True, exist_ok=True)
    (d / "cpu.cfs_quota_us").write_text(f"{quota}\n")
    (d / "cpu.cfs_period_us").write_text(f"{period}\n")
    return root


def test_cgroup_v2_quota(tmp_path):
    assert cgroup_cpu_limit(_v2(tmp_path, "1600000 100000"), NO_CGROUP_FILE) == 16
    assert cgroup_cpu_limit(_v2(tmp_path / "frac", "250000 100000"), NO_CGROUP_FILE) == 2.5
    assert cgroup_cpu_limit(_v2(tmp_path / "max", "max 100000"), NO_CGROUP_FILE) is None


def test_cgroup_v2_own_path_without_a_cgroup_namespace(tmp_path):
    # No cgroup namespace: /sys/fs/cgroup is the host's root, this process's folder holds the limit.
    root = _v2(tmp_path / "root", "max 100000")
    _v2(root, "800000 100000", sub="/kubepods/pod1/c1")
    proc = tmp_path / "cgroup"
    proc.write_text("0::/kubepods/pod1/c1\n")
    assert cgroup_cpu_limit(root, proc) == 8


def test_cgroup_v1_quota(tmp_path):
    assert cgroup_cpu_limit(_v1(tmp_path / "a", 400000), NO_CGROUP_FILE) == 4
    assert cgroup_cpu_limit(_v1(tmp_path / "b", 300000, folder="cpu,cpuacct"), NO_CGROUP_FILE) == 3
    assert cgroup_cpu_limit(_v1(tmp_path / "c", -1), NO_CGROUP_FILE) is None


def test_no_cgroup_files(tmp_path):
    assert cgroup_cpu_limit(tmp_path, NO_CGROUP_FILE) is None
    (tmp_path / "cpu.max").write_text("garbage")
    assert cgroup_cpu_limit(tmp_path, NO_CGROUP_FILE) is None


def test_threads_are_the_cpu_limit_split_over_the_local_ranks(tmp_path):
    root = _v2(tmp_path, "1600000 100000")
    kw = {"cgroup_root": root, "proc_self_cgroup": NO_CGROUP_FILE, "affinity": 224}
    assert threads_per_rank({"ICLORA_GPUS_PER_NODE": "8"}, **kw) == 2
    assert threads_per_rank({"ICLORA_GPUS_PER_NODE": "1"}, **kw) == 16
    assert threads_per_rank({}, **kw) == 16
    assert threads_per_rank({"LOCAL_WORLD_SIZE": "3", "ICLORA_GPUS_PER_NODE": "8"}, **kw) == 5  # floor(16/3)
    # Never below one, whatever the quota.
    assert threads_per_rank({"ICLORA_GPUS_PER_NODE": "8"}, _v2(tmp_path / "small", "50000 100000"),
                            NO_CGROUP_FILE, affinity=224) == 1


def test_affinity_is_the_fallback_and_the_cap(tmp_path):
    none = tmp_path / "none"
    assert threads_per_rank({"ICLORA_GPUS_PER_NODE": "4"}, none, NO_CGROUP_FILE, affinity=32) == 8
    # A quota above the CPUs the process may use: the affinity wins.
    root = _v2(tmp_path / "big", "6400000 100000")
    assert threads_per_rank({}, root, NO_CGROUP_FILE, affinity=12) == 12
    # The real machine: at least one, at most its CPUs.
    assert 1 <= threads_per_rank({}) <= (os.cpu_count() or 1)


def test_the_admins_omp_num_threads_wins(tmp_path):
    root = _v2(tmp_path, "1600000 100000")
    env = {"OMP_NUM_THREADS": "3", "ICLORA_GPUS_PER_NODE": "8"}
    assert threads_per_rank(env, root, NO_CGROUP_FILE, affinity=224) == 3
    # Unusable values are ignored.
    for bad in ("0", "", "many"):
        assert threads_per_rank({"OMP_NUM_THREADS": bad}, root, NO_CGROUP_FILE, affinity=224) == 16


def test_local_ranks():
    assert local_ranks({}) == 1
    assert local_ranks({"ICLORA_GPUS_PER_NODE": "8"}) == 8
    assert local_ranks({"LOCAL_WORLD_SIZE": "2", "ICLORA_GPUS_PER_NODE": "8"}) == 2
    assert local_ranks({"ICLORA_GPUS_PER_NODE": "x"}) == 1


def test_export_keeps_a_preset_value():
    env = {"OMP_NUM_THREADS": "7"}
    assert export_thread_env(env) == 7 and env["OMP_NUM_THREADS"] == "7"
    env = {}
    n = export_thread_env(env)
    assert env["OMP_NUM_THREADS"] == str(n) and n >= 1


def test_a_respawned_rank_runs_torch_with_its_share(tmp_path):
    """`python -m iclora_trainer` (how a multi-GPU pod starts its ranks) exports OMP_NUM_THREADS
    before anything imports torch, so OpenMP and torch's intra-op pool start at that size."""
    probe = (
        "import sys, runpy\n"
        "import iclora_trainer.__main__ as m\n"
        "m.cli.register = lambda sub: sub.add_parser('probe').set_defaults(func=lambda a: probe())\n"
        "def probe():\n"
        "    assert 'torch' not in sys.modules\n"
        "    import os, torch\n"
        "    print(os.environ['OMP_NUM_THREADS'], torch.get_num_threads())\n"
        "    return 0\n"
        "sys.exit(m.main(['probe']))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in {"OMP_NUM_THREADS", "LOCAL_WORLD_SIZE"}}
    path = os.pathsep.join([str(REPO / "operator"), str(REPO / "trainer"), env.get("PYTHONPATH", "")])
    env.update(PYTHONPATH=path, ICLORA_GPUS_PER_NODE="64", LOCAL_RANK="0")  # more ranks than CPUs: 1 each
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split()[-2:] == ["1", "1"]


def test_pyav_decoding_uses_the_ranks_threads(media, monkeypatch):
    """dataset.media sizes FFmpeg's decoder pool with threads_per_rank, not the node's cores."""
    from iclora_trainer.dataset import media as media_mod

    streams: list[object] = []
    real = media_mod._video_stream
    monkeypatch.setattr(media_mod, "_video_stream", lambda *a: streams.append(real(*a)) or streams[-1])
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    counts = [streams[0].codec_context.thread_count for _ in media_mod.iter_sampled(media["video"], [0.0], "v")]
    assert counts == [3]
