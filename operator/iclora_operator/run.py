"""`iclora operator`: run the kopf operator (also usable in-process by tests and the demo)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
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
    """kopf's own settings: no bookkeeping on the trainings, bounded watches, events we post ourselves."""
    import kopf

    ks = kopf.OperatorSettings()
    # No handler needs a finalizer (the reconcile is level-based, children go with owner
    # references). Naming the one older versions added lets kopf remove it from old trainings.
    ks.persistence.finalizer = "iclora.dev/finalizer"
    # kopf's own messages are noise to tenants; our Events carry the reasons.
    ks.posting.level = logging.WARNING
    ks.watching.server_timeout = 300
    ks.watching.client_timeout = 330
    ks.networking.request_timeout = 60
    # Per-object workers linger `idle_timeout` after their last event: with a cap, that
    # linger is a throughput ceiling (cap / idle_timeout); without one, a burst of creations
    # holds a worker (and its memory) per object. A short linger and a moderate cap give both.
    ks.queueing.worker_limit = 200
    ks.queueing.idle_timeout = 0.5
    ks.execution.max_workers = 16
    return ks


def load_kube_config(kubeconfig: str | None = None) -> None:
    """Configure the Kubernetes client: an explicit kubeconfig, $KUBECONFIG, in-cluster, then ~/.kube."""
    from kubernetes import config

    path = kubeconfig or os.environ.get("KUBECONFIG")
    if path:
        config.load_kube_config(config_file=path)
        return
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()


def _login(**_: Any) -> Any:
    """kopf login from the already configured Kubernetes client (one source of credentials)."""
    import kopf
    from kubernetes import client

    cfg = client.Configuration.get_default_copy()
    header = cfg.get_api_key_with_prefix("BearerToken") or cfg.get_api_key_with_prefix("authorization")
    parts = header.split(" ", 1) if header else []
    scheme, token = (parts[0], parts[1]) if len(parts) == 2 else (None, parts[0] if parts else None)
    return kopf.ConnectionInfo(
        server=cfg.host,
        ca_path=cfg.ssl_ca_cert,
        insecure=not cfg.verify_ssl,
        scheme=scheme,
        token=token,
        certificate_path=cfg.cert_file,
        private_key_path=cfg.key_file,
        default_namespace=None,
    )


def run_operator(settings: Any = None, *, namespaces: list[str] | None = None,
                 stop_flag: threading.Event | None = None, ready_flag: threading.Event | None = None,
                 liveness: str | None = None, metrics_port: int | None = None,
                 kubeconfig: str | None = None) -> None:
    """Run the operator until `stop_flag` is set (blocking; call it in a thread for tests)."""
    import kopf

    from iclora_operator.adapters.kube import Kube
    from iclora_operator.handlers import build_registry
    from iclora_operator.metrics import Metrics
    from iclora_operator.runtime import Memo
    from iclora_operator.settings import OperatorSettings

    settings = settings or OperatorSettings()
    load_kube_config(kubeconfig)
    metrics = Metrics()
    port = settings.metrics_port if metrics_port is None else metrics_port
    if port:
        metrics.serve(port)
    from kubernetes import client

    api_config = client.Configuration.get_default_copy()
    # One connection per handler thread: a smaller pool discards and re-handshakes TLS under load.
    api_config.connection_pool_maxsize = 64
    memo = Memo(settings=settings, kube=Kube(client.ApiClient(api_config)), metrics=metrics)
    watched = namespaces if namespaces is not None else settings.namespaces
    registry = build_registry(settings)
    kopf.on.login(registry=registry)(_login)
    loop = asyncio.new_event_loop()
    try:
        kopf.run(
            loop=loop,
            registry=registry,
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
