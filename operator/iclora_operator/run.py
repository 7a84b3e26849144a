"""`iclora operator`: run the kopf operator (also usable in-process by tests and the demo)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import threading
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("operator", help="run the MaskedICLoraTraining operator")
    parser.add_argument("-n", "--namespace", action="append", default=[],
                        help="namespace to watch (repeatable); default: ICLORA_NAMESPACES or all")
    parser.add_argument("--liveness", default="http://0.0.0.0:8081/healthz",
                        help="liveness endpoint URL (kopf's probe server)")
    parser.add_argument("--metrics-port", type=int, default=None, help="Prometheus port (default 8080)")
    parser.add_argument("--log-format", choices=["plain", "full", "json"], default="json")
    parser.add_argument("--verbose", action="store_true")
    parser.set_defaults(func=run)


def kopf_settings(settings: Any) -> Any:
    """kopf's own settings: bookkeeping under our prefix, bounded watches, events we post ourselves."""
    import kopf

    ks = kopf.OperatorSettings()
    ks.persistence.finalizer = "iclora.dev/finalizer"
    ks.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="iclora.dev")
    ks.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="iclora.dev", key="last-handled-configuration"
    )
    # kopf's own handler-progress events are noise to tenants; ours carry the reasons.
    ks.posting.level = logging.WARNING
    ks.watching.server_timeout = 300
    ks.watching.client_timeout = 330
    ks.networking.request_timeout = 60
    ks.batching.worker_limit = 64
    ks.execution.max_workers = 32
    return ks


def run_operator(settings: Any = None, *, namespaces: list[str] | None = None,
                 stop_flag: threading.Event | None = None, ready_flag: threading.Event | None = None,
                 liveness: str | None = None, metrics_port: int | None = None) -> None:
    """Run the operator until `stop_flag` is set (blocking; call it in a thread for tests)."""
    import kopf
    from kubernetes import config

    from iclora_operator.adapters.kube import Kube
    from iclora_operator.handlers import Memo, build_registry
    from iclora_operator.metrics import Metrics
    from iclora_operator.settings import OperatorSettings

    settings = settings or OperatorSettings()
    config.load_config()
    metrics = Metrics()
    port = settings.metrics_port if metrics_port is None else metrics_port
    if port:
        metrics.serve(port)
    memo = Memo(settings=settings, kube=Kube(), metrics=metrics)
    watched = namespaces if namespaces is not None else settings.namespaces
    loop = asyncio.new_event_loop()
    try:
        kopf.run(
            loop=loop,
            registry=build_registry(settings),
            settings=kopf_settings(settings),
            memo=memo,
            standalone=True,
            clusterwide=not watched,
            namespaces=watched or (),
            liveness_endpoint=liveness,
            stop_flag=stop_flag,
            ready_flag=ready_flag,
        )
    finally:
        loop.close()


def run(args: argparse.Namespace) -> int:
    import kopf

    from iclora_operator.settings import OperatorSettings

    kopf.configure(verbose=args.verbose, log_format=getattr(kopf.LogFormat, args.log_format.upper()))
    settings = OperatorSettings()
    run_operator(settings, namespaces=args.namespace or None, liveness=args.liveness,
                 metrics_port=args.metrics_port)
    return 0
