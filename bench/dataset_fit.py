"""Dataset preflight benchmark: 10 triplets of 89 frames at 1920x1080 fitted to 768x768.

    python bench/dataset_fit.py [--json bench/results/dataset_fit.json]

The dataset is generated once (cached in bench/out/); the fit runs in a child process so
its peak RSS is its own. Goal (issue 5): at most 60 s and 2 GiB on the 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"


def make_dataset(path: Path, triplets: int, frames: int, width: int, height: int) -> Path:
    from iclora_dev.synthetic import CONTAINERS, encode_video

    if path.exists():
        return path
    tmp = path.with_suffix(".tmp")
    rng = np.random.default_rng(0)
    ys, xs = np.mgrid[0:height, 0:width]
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
        for i in range(triplets):
            ext, codec, pix = CONTAINERS[i % len(CONTAINERS)]
            base = (xs // 8 + ys // 8 + i) % 255
            clips = {}
            for role, shift in (("start", 3), ("end", 5)):
                clips[role] = [np.repeat(((base + shift * t) % 255).astype(np.uint8)[..., None], 3, -1)
                               for t in range(frames)]
                zf.writestr(f"clip{i:02d}_{role}.{ext}", encode_video(clips[role], ext, codec, pix, 24))
            mask = np.zeros((height, width), np.uint8)
            y0, x0 = rng.integers(0, height // 2), rng.integers(0, width // 2)
            mask[y0:y0 + height // 3, x0:x0 + width // 3] = 255
            if i % 2:
                zf.writestr(f"clip{i:02d}_mask.mp4",
                            encode_video([np.repeat(mask[..., None], 3, -1)] * frames, "mp4", "libx264", "yuv420p", 24))
            else:
                import io

                from PIL import Image

                buf = io.BytesIO()
                Image.fromarray(mask).save(buf, format="PNG")
                zf.writestr(f"clip{i:02d}_mask.png", buf.getvalue())
            zf.writestr(f"clip{i:02d}.txt", f"benchmark clip {i}")
    tmp.rename(path)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--triplets", type=int, default=10)
    parser.add_argument("--child", nargs=2, metavar=("ZIP", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        from iclora_trainer.dataset.preflight import FitParams, prepare_dataset

        report = prepare_dataset(Path(args.child[0]), FitParams(89, 24, 768, 768), Path(args.child[1]) / "prepared",
                                 Path(args.child[1]) / "work")
        print(json.dumps({"usable": report.usable, "errors": report.errors}))
        return 0 if report.ok else 1
    OUT.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    dataset = make_dataset(OUT / f"bench-{args.triplets}x89-1080p.zip", args.triplets, 89, 1920, 1080)
    print(f"dataset ready in {time.monotonic() - t0:.1f} s ({dataset.stat().st_size / 1e6:.0f} MB)")
    work = OUT / "fit"
    subprocess.run(["rm", "-rf", str(work)], check=True)
    start = time.monotonic()
    child = subprocess.run([sys.executable, __file__, "--child", str(dataset), str(work)], capture_output=True,
                           text=True)
    seconds = time.monotonic() - start
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    if child.returncode != 0:
        print(child.stdout, child.stderr)
        return 1
    figures = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "machine": f"{platform.node()} ({os.cpu_count()} cores)",
        "command": "python bench/dataset_fit.py",
        "triplets": args.triplets,
        "frames": 89,
        "source": "1920x1080, 5 containers, image and video masks",
        "fitted_to": "768x768",
        "seconds": round(seconds, 1),
        "peak_rss_mib": round(peak_mib, 1),
        "result": json.loads(child.stdout.strip().splitlines()[-1]),
    }
    print(json.dumps(figures, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
