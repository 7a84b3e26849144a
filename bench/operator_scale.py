"""Scale benchmark of the operator: N trainings applied at once on the local control plane.

Measures how long until every MaskedICLoraTraining has its preflight Job, and the
operator process's peak RSS. The operator runs as its own process (`iclora operator`),
exactly as in a Deployment. Pods are played by kwok (held Running).

    python bench/operator_scale.py --count 1000 [--json bench/results/operator_scale.json]

Goal (issue 6): 1000 resources -> every one has its Job in at most 60 s, operator RSS <= 300 MiB.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def peak_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (and its reaped children)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return sum(int(f) for f in fields[11:15]) / ticks


def control_plane_cpu() -> dict[str, float]:
    """CPU seconds of the local control plane's processes, by program name."""
    out: dict[str, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm") as fh:
                comm = fh.read().strip()
            if comm in ("kube-apiserver", "etcd", "kwok", "kube-controller", "kube-scheduler", "weed"):
                out[comm] = out.get(comm, 0.0) + cpu_seconds(int(entry))
        except OSError:
            continue
    return {k: round(v, 1) for k, v in out.items()}


def request_counts(cluster) -> dict[str, int]:
    """Requests the API server served, by verb and resource (its own metrics), largest first."""
    import re

    text = subprocess.run([str(cluster.kubectl), "--kubeconfig", str(cluster.kubeconfig), "get", "--raw", "/metrics"],
                          capture_output=True, text=True, timeout=60, check=True).stdout
    counts: dict[str, int] = {}
    for line in text.splitlines():
        if line.startswith("apiserver_request_total{"):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
            key = f"{labels.get('verb')} {labels.get('resource')}/{labels.get('subresource', '')}".rstrip("/")
            counts[key] = counts.get(key, 0) + int(float(line.rsplit(" ", 1)[1]))
    return dict(sorted(counts.items(), key=lambda kv: -kv[1])[:12])


def operator_code(env: dict[str, str]) -> dict[str, object]:
    """Which iclora_operator the operator process imports with this environment (PYTHONPATH may
    point at another checkout), and that checkout's commit and whether it has local changes."""
    probe = "import os, iclora_operator; print(os.path.dirname(os.path.abspath(iclora_operator.__file__)))"
    path = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True,
                          cwd=tempfile.gettempdir()).stdout.strip()

    def git(*argv: str) -> str:
        done = subprocess.run(["git", "-C", path, *argv], capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    return {"path": path, "commit": git("rev-parse", "--short", "HEAD"),
            "modified": bool(git("status", "--porcelain", "--", "."))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--namespaces", type=int, default=4)
    parser.add_argument("--json", help="write the figures to this file")
    parser.add_argument("--baseline", action="store_true",
                        help="no operator: create the same Secrets and Jobs directly (control-plane ceiling)")
    parser.add_argument("--profile", help="record the operator with py-spy into this file (speedscope)")
    parser.add_argument("--glibc", action="store_true", help="run the operator with glibc malloc, not jemalloc")
    parser.add_argument("--memray", help="record the operator's allocations (native too) with memray into this file")
    args = parser.parse_args()

    from kubernetes import client, config

    from iclora_api.v1alpha1 import API_GROUP, API_VERSION, PLURAL
    from iclora_dev.localcluster.cluster import ClusterConfig, LocalCluster

    state = Path(tempfile.mkdtemp(prefix="iclora-scale-"))
    cluster = LocalCluster(state, ClusterConfig(gpu_nodes=2, cpu_nodes=2, local_runner=False))
    t0 = time.monotonic()
    cluster.start()
    print(f"cluster up in {time.monotonic() - t0:.1f} s")
    operator_proc = None
    try:
        api_client = config.new_client_from_config(str(cluster.kubeconfig))
        ext = client.ApiextensionsV1Api(api_client)
        for path in sorted((ROOT / "crds").glob("*.yaml")):
            ext.create_custom_resource_definition(yaml.safe_load(path.read_text()))
        time.sleep(2)
        custom = client.CustomObjectsApi(api_client)
        core = client.CoreV1Api(api_client)
        batch = client.BatchV1Api(api_client)
        custom.create_cluster_custom_object(API_GROUP, API_VERSION, "trainingprofiles", {
            "apiVersion": f"{API_GROUP}/{API_VERSION}", "kind": "TrainingProfile",
            "metadata": {"name": "default"},
            "spec": {"podAnnotations": {"iclora.dev/fake-hold": "true"},
                     "preflightResources": {"cpu": "10m", "memory": "16Mi"}},
        })
        namespaces = [f"scale-{i}" for i in range(args.namespaces)]
        for ns in namespaces:
            core.create_namespace({"metadata": {"name": ns}})
        s3 = cluster.s3
        env = {
            **os.environ,
            "KUBECONFIG": str(cluster.kubeconfig),
            "ICLORA_STORE_ENDPOINT": s3.endpoint,
            "ICLORA_STORE_BUCKET": s3.bucket,
            "ICLORA_STORE_ACCESS_KEY": s3.access_key,
            "ICLORA_STORE_SECRET_KEY": s3.secret_key,
            "ICLORA_METRICS_PORT": "0",
        }
        # As in the operator image: jemalloc (glibc malloc fragments under the burst).
        jemalloc = os.environ.get("ICLORA_JEMALLOC") or next(
            (p for p in ("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2", "/usr/lib/aarch64-linux-gnu/libjemalloc.so.2",
                         "/usr/local/lib/libjemalloc.so.2") if Path(p).exists()), None)
        if jemalloc and not args.glibc:
            env["LD_PRELOAD"] = jemalloc
            env["MALLOC_CONF"] = "background_thread:true,dirty_decay_ms:500,muzzy_decay_ms:0,narenas:2"
        else:
            print("operator runs with glibc malloc (the image uses jemalloc: apt-get install libjemalloc2)")
            env["MALLOC_ARENA_MAX"] = "2"
        code = operator_code(env)
        print(f"operator code: {code['path']} at {code['commit']}" + (" (modified)" if code["modified"] else ""))
        log = open(state / "operator.log", "w")  # noqa: SIM115 - closed with the process
        from iclora_dev.localcluster.ports import free_ports

        liveness = f"http://127.0.0.1:{free_ports(1)[0]}/healthz"
        argv = [str(Path(sys.executable).parent / "iclora"), "operator", "--liveness", liveness]
        if args.profile:
            spy = str(Path(sys.executable).parent / "py-spy")
            argv = [spy, "record", "-o", args.profile, "-f", "speedscope", "-r", "50", "--", *argv]
        elif args.memray:
            # `memray stats|summary|flamegraph FILE` then shows what was allocated at the peak.
            argv = [sys.executable, "-m", "memray", "run", "--native", "-f", "-o", args.memray, *argv]
        operator_proc = subprocess.Popen(
            argv,
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )
        if args.baseline:
            operator_proc.terminate()
        time.sleep(5)
        peak = {"rss": 0.0}
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set() and operator_proc.poll() is None:
                peak["rss"] = max(peak["rss"], peak_rss_mib(operator_proc.pid))
                with open(f"/proc/{operator_proc.pid}/status") as fh:
                    fields = dict(line.split(":", 1) for line in fh)
                # Where the memory is at its largest: anonymous (heap) or file-backed (libraries).
                anon = int(fields["RssAnon"].split()[0]) / 1024
                if anon > peak.get("anon", 0.0):
                    peak["anon"], peak["file"] = anon, int(fields["RssFile"].split()[0]) / 1024
                    peak["threads"] = int(fields["Threads"])
                time.sleep(0.5)

        threading.Thread(target=sample, daemon=True).start()

        def create_children(i: int) -> None:
            from iclora_api.profile import TrainingProfileSpec
            from iclora_api.validation import validate_spec
            from iclora_operator.render import RunContext, StoreLocation, render_preflight_job, render_store_secret

            ns = namespaces[i % len(namespaces)]
            ctx = RunContext(name=f"t-{i:05d}", namespace=ns, uid=f"uid-{i}", labels={},
                             store_secret=f"t-{i:05d}-store",
                             spec=validate_spec({"trainingDataUrl": "https://datasets.example.com/x.zip"}),
                             profile=TrainingProfileSpec(pod_annotations={"iclora.dev/fake-hold": "true"}),
                             store=StoreLocation(s3.endpoint, s3.bucket, f"runs/{ns}/{i}"))
            for manifest in (render_store_secret(ctx, "a", "b"), render_preflight_job(ctx)):
                manifest["metadata"].pop("ownerReferences")
                if manifest["kind"] == "Secret":
                    core.create_namespaced_secret(ns, manifest)
                else:
                    batch.create_namespaced_job(ns, manifest)

        def create(i: int) -> None:
            if args.baseline:
                create_children(i)
                return
            ns = namespaces[i % len(namespaces)]
            custom.create_namespaced_custom_object(API_GROUP, API_VERSION, ns, PLURAL, {
                "apiVersion": f"{API_GROUP}/{API_VERSION}", "kind": "MaskedICLoraTraining",
                "metadata": {"name": f"t-{i:05d}"},
                "spec": {"trainingDataUrl": f"https://datasets.example.com/{i}.zip", "numberOfSteps": 100},
            })

        start = time.monotonic()
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(create, range(args.count)))
        applied = time.monotonic() - start
        print(f"applied {args.count} resources in {applied:.1f} s")
        jobs = 0
        while time.monotonic() - start < 300:
            jobs = len(batch.list_job_for_all_namespaces(
                label_selector="app.kubernetes.io/component=preflight").items)
            if jobs >= args.count:
                break
            time.sleep(1)
        all_jobs = time.monotonic() - start
        time.sleep(10)  # steady state: timers keep reconciling every resource
        stop.set()
        final_rss, threads, operator_cpu = 0.0, 0, 0.0
        if operator_proc.poll() is None:  # --baseline stops the operator at once
            operator_cpu = cpu_seconds(operator_proc.pid)
            with open(f"/proc/{operator_proc.pid}/status") as fh:
                final_rss = next(int(line.split()[1]) / 1024 for line in fh if line.startswith("VmRSS:"))
            threads = len(os.listdir(f"/proc/{operator_proc.pid}/task"))
        figures = {
            "date": datetime.now(UTC).strftime("%Y-%m-%d"),
            "machine": f"{platform.node()} ({os.cpu_count()} cores)",
            "command": f"python bench/operator_scale.py --count {args.count}"
            + (" --baseline" if args.baseline else ""),
            "resources": args.count,
            "operator_code": "none (no operator)" if args.baseline else code,
            "jobs_created": jobs,
            "seconds_to_apply": round(applied, 1),
            "seconds_until_every_job": round(all_jobs, 1),
            "allocator": "none (no operator)" if args.baseline else "jemalloc" if "LD_PRELOAD" in env else "glibc",
            "operator_peak_rss_mib": round(peak["rss"], 1),
            "operator_cpu_seconds": round(operator_cpu, 1),
            "control_plane_cpu_seconds": control_plane_cpu(),
            "api_requests": request_counts(cluster),
            "operator_peak_anon_mib": round(peak.get("anon", 0.0), 1),
            "operator_file_backed_mib_at_peak": round(peak.get("file", 0.0), 1),
            "operator_threads_at_peak": peak.get("threads", 0),
            "operator_rss_after_mib": round(final_rss, 1),
            "operator_threads": threads,
        }
        print(json.dumps(figures, indent=2))
        if args.json:
            Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
        return 0 if jobs >= args.count else 1
    finally:
        if operator_proc is not None:
            operator_proc.terminate()
            try:
                operator_proc.wait(30)
            except subprocess.TimeoutExpired:
                operator_proc.kill()
        cluster.stop()


if __name__ == "__main__":
    sys.exit(main())
