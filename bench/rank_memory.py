"""Host memory per rank and scratch bytes per pod of the dataset path, against dataset size (issue 23).

    python bench/rank_memory.py [--triplets 4,16] [--size 256x256x33] [--ranks 2]
                                [--json bench/results/rank_memory.json]
    python bench/rank_memory.py --code DIR --label before ...   # the trainer found in DIR instead

For each dataset size N, a synthetic prepared dataset (iclora_dev.synthetic_prepared, cached
in bench/out/rank_memory/) stands in for the run's s3:// prefix (a LocalStore: the same
download code, no network). R processes start at once, as `iclora train` starts one per GPU
(LOCAL_RANK), on the CPU with the tiny model: each fetches the dataset into the pod's scratch
and precomputes it as the trainer does (`loop.load_and_precompute`). Each reports its peak RSS
(VmHWM) and its RSS before the dataset path (imports done), the pod folder's bytes are
counted after. Not a timed test: figures for docs and for sizing the memory per GPU.

`--code DIR` measures another version of the trainer (e.g. `git archive <commit> operator
trainer dev | tar -x -C DIR`): where it has no pod-shared download (`storage.download_tree`),
each rank copies the dataset into its own `rank<N>/dataset`, as `cli._train` did then.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out" / "rank_memory"
MIB = 1024**2


def _rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _rss_peak() -> int:
    """VmHWM: this process image's peak RSS (ru_maxrss would carry the forking parent's over exec)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def child(args: argparse.Namespace) -> int:
    """One local rank: fetch the dataset into the pod folder, precompute it; print one JSON line."""
    import torch

    from iclora_api.trainer_settings import TrainerSettings
    from iclora_trainer import loop, storage

    pod, rank = Path(args.pod), int(os.environ["LOCAL_RANK"])
    source = storage.LocalStore(args.source)
    before = _rss_now()
    start = time.perf_counter()
    if hasattr(storage, "download_tree"):  # one copy per pod, the others wait on its lock
        dataset = storage.download_tree(source, pod / "dataset")
        shared = {"shared_dir": pod}
    else:  # that trainer: every rank its own copy
        dataset = pod / f"rank{rank}" / "dataset"
        for key in source.list(""):
            source.get_file(key, dataset / key)
        shared = {}
    settings = TrainerSettings.model_validate({
        "model_path": args.model, "text_encoder_path": args.text_encoder, "device": "cpu", "dtype": "fp32",
        "work_dir": str(pod / f"rank{rank}")})
    data, _ = loop.load_and_precompute(dataset, settings, torch.device("cpu"), torch.float32, **shared)
    seconds = time.perf_counter() - start
    peak = _rss_peak()
    print(json.dumps({"rank": rank, "rss_before": before, "peak_rss": peak, "seconds": seconds,
                      "triplets": len(data)}))
    return 0


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.name.endswith(".lock"))


def measure(n: int, size: tuple[int, int, int], ranks: int, code: Path | None, tiny) -> dict:
    import shutil

    width, height, frames = size
    source = OUT / f"ds-{n}-{width}x{height}x{frames}"
    if not (source / "manifest.json").exists():  # in a child: it holds every clip while it writes them
        subprocess.run([sys.executable, "-c", "import sys; from iclora_dev.synthetic_prepared import "
                        "write_synthetic_prepared as w; w(sys.argv[1], clips=int(sys.argv[2]), width=int(sys.argv[3]), "
                        "height=int(sys.argv[4]), frames=int(sys.argv[5]))", str(source), str(n), str(width),
                        str(height), str(frames)], check=True)
    pod = OUT / "pod"
    shutil.rmtree(pod, ignore_errors=True)
    pod.mkdir(parents=True)
    path = [str(code / d) for d in ("operator", "trainer", "dev")] if code else []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*path, os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, __file__, "--child", "--pod", str(pod), "--source", str(source),
                               "--model", str(tiny.model_path), "--text-encoder", str(tiny.text_encoder_path)],
                              env={**env, "LOCAL_RANK": str(r)}, stdout=subprocess.PIPE, text=True)
             for r in range(ranks)]
    rows = []
    for p in procs:
        out, _ = p.communicate()
        if p.returncode:
            raise SystemExit(f"a rank failed ({p.returncode})")
        rows.append(json.loads(out.strip().splitlines()[-1]))
    dataset_bytes = _du(source)
    row = {
        "triplets": n,
        "dataset_bytes": dataset_bytes,
        "decoded_triplet_bytes": frames * height * width * 7,  # reference + target (3 B/px) + mask (1 B/px)
        "ranks": sorted(rows, key=lambda r: r["rank"]),
        "peak_rss_mib_max": round(max(r["peak_rss"] for r in rows) / MIB, 1),
        "precompute_rss_growth_mib_max": round(max(r["peak_rss"] - r["rss_before"] for r in rows) / MIB, 1),
        "scratch_bytes_per_pod": _du(pod),
        "dataset_copies_per_pod": round(_du(pod) and sum(_du(d) for d in pod.rglob("dataset") if d.is_dir())
                                        / dataset_bytes, 2),
    }
    shutil.rmtree(pod, ignore_errors=True)
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--triplets", default="4,16", help="dataset sizes N, comma separated")
    p.add_argument("--size", default="256x256x33", help="WxHxF of every clip")
    p.add_argument("--ranks", type=int, default=2, help="local ranks (processes) of the pod")
    p.add_argument("--code", type=Path, help="measure the trainer in this folder (operator/, trainer/, dev/)")
    p.add_argument("--label", default="after")
    p.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "rank_memory.json")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    for name in ("--pod", "--source", "--model", "--text-encoder"):
        p.add_argument(name, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child(args)
    from iclora_dev.tiny_model import create_tiny_checkpoint

    width, height, frames = (int(v) for v in args.size.split("x"))
    tiny = create_tiny_checkpoint(OUT / "tiny-model")
    rows = []
    for n in (int(v) for v in args.triplets.split(",")):
        row = measure(n, (width, height, frames), args.ranks, args.code, tiny)
        print(f"{args.label}: N={n:3d} peak RSS/rank {row['peak_rss_mib_max']:7.1f} MiB "
              f"(growth in the dataset path {row['precompute_rss_growth_mib_max']:7.1f} MiB), "
              f"scratch/pod {row['scratch_bytes_per_pod'] / MIB:7.1f} MiB "
              f"({row['dataset_copies_per_pod']} dataset copies)", flush=True)
        rows.append(row)
    report = json.loads(args.json.read_text()) if args.json.exists() else {}
    report[args.label] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "size": args.size, "ranks": args.ranks, "code": str(args.code) if args.code else "this checkout",
        "rows": rows,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
