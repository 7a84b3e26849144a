"""`iclora local-cluster build|up|down|env`: the local control plane from the command line."""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import signal
import sys
import threading
import time
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    from iclora_dev.localcluster.binaries import DEFAULT_COMPONENTS  # stdlib only: cheap

    parser = subparsers.add_parser(
        "local-cluster",
        help="run a local Kubernetes control plane with fake GPU nodes and S3",
        description="A real local Kubernetes (etcd, apiserver, controller-manager, scheduler, kwok nodes), "
        "a SeaweedFS S3 store and a local pod runner.",
    )
    sub = parser.add_subparsers(dest="local_cluster_command", metavar="ACTION")
    sub.required = True

    build = sub.add_parser("build", help="build the control-plane binaries from source (cached)")
    build.add_argument(
        "--components",
        default=",".join(DEFAULT_COMPONENTS),
        help="comma-separated: k8s,etcd,kwok,helm,kueue,kubelet,containerd,crictl,coredns,runc "
        "(default: %(default)s)",
    )
    build.add_argument("--force", action="store_true", help="rebuild even when cached")
    build.set_defaults(func=_build)

    up = sub.add_parser("up", help="start the cluster (returns once it is ready, unless --foreground)")
    _state_dir_arg(up)
    up.add_argument("--gpu-nodes", type=int, default=2, help="kwok GPU nodes (default: %(default)s)")
    up.add_argument("--gpus-per-node", type=int, default=8)
    up.add_argument("--cpu-nodes", type=int, default=1, help="kwok CPU nodes (default: %(default)s)")
    up.add_argument("--no-local-runner", action="store_true", help="no node that runs pods as processes")
    up.add_argument("--local-gpus", type=int, default=1, help="fake nvidia.com/gpu of the local node")
    up.add_argument(
        "--local-taint",
        action="store_true",
        help="taint the local node so only pods that tolerate it run there",
    )
    up.add_argument(
        "--node-runtime",
        choices=("containers", "processes"),
        default=None,
        help="how the local node runs pods: real containers from the product's images (kubelet + "
        "containerd; needs root) or processes of this machine (the pod runner) (default: containers "
        "as root, else processes)",
    )
    up.add_argument("--no-s3", action="store_true")
    up.add_argument("--bucket", action="append", help="bucket to create (repeatable; default: iclora)")
    up.add_argument(
        "--kueue", action="store_true", help="also run Kueue (build it first: --components kueue)"
    )
    up.add_argument("--no-build", action="store_true", help="fail instead of building missing binaries")
    up.add_argument("--foreground", action="store_true", help="stay in the foreground; Ctrl-C stops it")
    up.set_defaults(func=_up)

    down = sub.add_parser("down", help="stop the cluster and every process it started")
    _state_dir_arg(down)
    down.set_defaults(func=_down)

    env = sub.add_parser("env", help="print shell exports (KUBECONFIG, S3 credentials, PATH)")
    _state_dir_arg(env)
    env.set_defaults(func=_env)


def _state_dir_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="cluster folder (default: $ICLORA_CLUSTER_DIR or ~/.cache/masked-iclora/clusters/default)",
    )


def _logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)


def _build(args: argparse.Namespace) -> int:
    from iclora_dev.localcluster import binaries

    _logging()
    t0 = time.monotonic()
    timings = binaries.build([c.strip() for c in args.components.split(",") if c.strip()], force=args.force)
    for name, seconds in timings.items():
        comp = binaries.COMPONENTS[name]
        state = "cached" if seconds == 0 else f"built in {seconds:.1f} s"
        sys.stdout.write(f"{name} {comp.version}: {state} -> {comp.bin_dir}\n")
    sys.stdout.write(f"total {time.monotonic() - t0:.1f} s\n")
    return 0


def _resolve_state_dir(args: argparse.Namespace) -> Path:
    from iclora_dev.localcluster.cluster import default_state_dir

    return (args.state_dir or default_state_dir()).resolve()


def _up(args: argparse.Namespace) -> int:
    from iclora_dev.localcluster import binaries
    from iclora_dev.localcluster.cluster import ClusterConfig, LocalCluster

    _logging()
    if args.node_runtime is None:
        args.node_runtime = "containers" if os.geteuid() == 0 else "processes"
    if not args.no_build:
        # One command for a newcomer: the first `up` on a machine builds what is missing (minutes).
        binaries.build(["k8s", "etcd", "kwok", *(["kueue"] if args.kueue else []),
                        *(binaries.NODE_COMPONENTS if args.node_runtime == "containers" else [])])
    config = ClusterConfig(
        gpu_nodes=args.gpu_nodes,
        gpus_per_node=args.gpus_per_node,
        cpu_nodes=args.cpu_nodes,
        local_runner=not args.no_local_runner,
        local_runner_gpus=args.local_gpus,
        local_runner_tainted=args.local_taint,
        node_runtime=args.node_runtime,
        s3=not args.no_s3,
        buckets=tuple(args.bucket or ("iclora",)),
        die_with_parent=args.foreground,
        kueue=args.kueue,
    )
    t0 = time.monotonic()
    cluster = LocalCluster(_resolve_state_dir(args), config).start()
    sys.stdout.write(
        f"# local cluster ready in {time.monotonic() - t0:.1f} s; state in {cluster.state_dir}\n"
    )
    sys.stdout.write(_exports(cluster))
    sys.stdout.flush()
    if not args.foreground:
        return 0
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    try:
        while not done.wait(1.0):
            if not cluster.is_running():
                sys.stderr.write(f"a component exited; logs in {cluster.logs_dir}\n")
                break
    except KeyboardInterrupt:
        pass
    cluster.stop()
    return 0


def _down(args: argparse.Namespace) -> int:
    from iclora_dev.localcluster.cluster import stop_recorded

    _logging()
    stop_recorded(_resolve_state_dir(args))
    return 0


def _env(args: argparse.Namespace) -> int:
    from iclora_dev.localcluster.cluster import LocalCluster

    state_dir = _resolve_state_dir(args)
    try:
        cluster = LocalCluster.load(state_dir)
    except FileNotFoundError:
        sys.stderr.write(f"no local cluster recorded in {state_dir}; run `iclora local-cluster up`\n")
        return 1
    sys.stdout.write(_exports(cluster))
    return 0


def _exports(cluster: object) -> str:
    from iclora_dev.localcluster.cluster import LocalCluster

    assert isinstance(cluster, LocalCluster)
    env = cluster.env()
    dirs = [str(d) for d in cluster.tool_dirs()]
    lines = [f"export {k}={shlex.quote(v)}" for k, v in env.items()]
    if dirs:
        lines.append(f'export PATH={shlex.quote(":".join(dirs))}:"$PATH"')
    return "\n".join(lines) + "\n"
