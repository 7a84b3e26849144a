"""`iclora demo`: the whole product on an embedded local cluster, in one command."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run a full training on an embedded local cluster (tiny model, CPU)",
        description=(
            "Start a local control plane with a real node (kubelet, containerd, the product's images), "
            "an S3 store and the operator; upload a synthetic "
            "dataset; train a MaskedICLoraTraining on a tiny model; download its artifacts."
        ),
    )
    parser.add_argument("--output", default="demo-output", help="folder for the downloaded artifacts")
    parser.add_argument("--keep", action="store_true",
                        help="leave the cluster and its operator running (stop both with "
                        "`iclora local-cluster down`) and print how to train on it again")
    parser.add_argument("--steps", type=int, default=100, help="numberOfSteps of the training (100-20000)")
    parser.add_argument("--triplets", type=int, default=10, help="triplets in the synthetic dataset")
    parser.add_argument("--state-dir", help="cluster state folder (default ~/.cache/masked-iclora/clusters/demo)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds to wait for the training")
    parser.add_argument(
        "--node-runtime", choices=("containers", "processes"), default=None,
        help="run the pods as real containers from the product's images on a kubelet + containerd node "
        "(needs root; the first run builds the images, minutes) or as processes of this machine "
        "(default: containers as root, else processes)",
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import os

    from iclora_dev.demo.run import run_demo

    if args.node_runtime is None:
        args.node_runtime = "containers" if os.geteuid() == 0 else "processes"
    return run_demo(args)
