"""Prometheus metrics of the operator."""

from __future__ import annotations

import threading
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector


class PhaseTracker(Collector):
    """Resources by phase, kept from reconciles and deletions."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._phases: dict[str, tuple[str, str]] = {}

    def set(self, uid: str, namespace: str, phase: str) -> None:
        with self._lock:
            self._phases[uid] = (namespace, phase)

    def forget(self, uid: str) -> None:
        with self._lock:
            self._phases.pop(uid, None)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "iclora_trainings", "MaskedICLoraTraining resources by namespace and phase",
            labels=["namespace", "phase"],
        )
        counts: dict[tuple[str, str], int] = {}
        with self._lock:
            for key in self._phases.values():
                counts[key] = counts.get(key, 0) + 1
        for (namespace, phase), count in sorted(counts.items()):
            family.add_metric([namespace, phase], count)
        yield family


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.reconciles = Counter("iclora_reconciles", "Reconciliations", ["result"], registry=self.registry)
        self.billing_units = Counter(
            "iclora_billing_units", "Billing units written on success", ["namespace"], registry=self.registry
        )
        self.phases = PhaseTracker()
        self.registry.register(self.phases)

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        start_http_server(port, addr=addr, registry=self.registry)
