"""The supervisor's Prometheus endpoint: process health plus the metrics children report."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator

from prometheus_client import start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from rtcore.runtime.supervisor import Supervisor

_UNSAFE = re.compile(r"[^a-zA-Z0-9_]")


class SupervisorCollector(Collector):
    """Reads the supervisor's state at scrape time: nothing to keep in sync."""

    def __init__(self, supervisor: Supervisor) -> None:
        self._sup = supervisor

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("rtcore_process_up", "1 if the process is running and ready", labels=["process"])
        restarts = CounterMetricFamily("rtcore_process_restarts", "Restarts since launch", labels=["process"])
        age = GaugeMetricFamily("rtcore_heartbeat_age_seconds", "Seconds since the last heartbeat", labels=["process"])
        values = GaugeMetricFamily(
            "rtcore_process_metric", "Values reported by the process", labels=["process", "name"]
        )
        now = time.monotonic()
        for name, child in list(self._sup.children.items()):
            up.add_metric([name], 1.0 if child.proc is not None and child.ready else 0.0)
            restarts.add_metric([name], child.restarts)
            age.add_metric([name], now - child.last_beat if child.proc is not None else float("nan"))
            for key, value in list(child.metrics.items()):
                values.add_metric([name, _UNSAFE.sub("_", key)], value)
        slots = GaugeMetricFamily("rtcore_call_slots_in_use", "Shared-memory call slots in use")
        rings = self._sup.rings
        slots.add_metric([], len(rings.in_use()) if rings is not None else 0)
        yield from (up, restarts, age, values, slots)


def serve_metrics(supervisor: Supervisor, host: str, port: int) -> tuple[int, Callable[[], None]]:
    """Serve /metrics in a thread; returns the bound port (port 0: any free one) and a stop function."""
    registry = CollectorRegistry()
    registry.register(SupervisorCollector(supervisor))
    server, thread = start_http_server(port, addr=host, registry=registry)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return server.server_port, stop
