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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--namespaces", type=int, default=4)
    parser.add_argument("--json", help="write the figures to this file")
    parser.add_argument("--baseline", action="store_true",
                        help="no operator: create the same Secrets and Jobs directly (control-plane ceiling)")
    parser.add_argument("--profile", help="record the operator with py-spy into this file (speedscope)")
    parser.add_argument("--memray", help="record the operator's allocations (native too) with memray into this file")
    args = parser.parse_args()

    from kubernetes import client, config

    from iclora_operator.api.v1alpha1 import API_GROUP, API_VERSION, PLURAL
    from iclora_operator.localcluster.cluster import ClusterConfig, LocalCluster

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
            # As in the operator image: one malloc arena per thread inflates RSS for nothing.
            "MALLOC_ARENA_MAX": "2",
        }
        log = open(state / "operator.log", "w")  # noqa: SIM115 - closed with the process
        from iclora_operator.localcluster.ports import free_ports

        liveness = f"http://127.0.0.1:{free_ports(1)[0]}/healthz"
        argv = [str(Path(sys.executable).parent / "iclora"), "operator", "--liveness", liveness]
        if args.profile:
            argv = ["py-spy", "record", "-o", args.profile, "-f", "speedscope", "-r", "50", "--", *argv]
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
                time.sleep(0.5)

        threading.Thread(target=sample, daemon=True).start()

        def create_children(i: int) -> None:
            from iclora_operator.api.profile import TrainingProfileSpec
            from iclora_operator.api.validation import validate_spec
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
        with open(f"/proc/{operator_proc.pid}/status") as fh:
            final_rss = next(int(line.split()[1]) / 1024 for line in fh if line.startswith("VmRSS:"))
        threads = len(os.listdir(f"/proc/{operator_proc.pid}/task"))
        figures = {
            "date": datetime.now(UTC).strftime("%Y-%m-%d"),
            "machine": f"{platform.node()} ({os.cpu_count()} cores)",
            "command": f"python bench/operator_scale.py --count {args.count}"
            + (" --baseline" if args.baseline else ""),
            "resources": args.count,
            "jobs_created": jobs,
            "seconds_to_apply": round(applied, 1),
            "seconds_until_every_job": round(all_jobs, 1),
            "operator_peak_rss_mib": round(peak["rss"], 1),
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
