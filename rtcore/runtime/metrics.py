"""The supervisor's Prometheus endpoint: every process's metrics plus the supervisor's own view.

`/metrics` answers with what the children wrote in the run's metrics directory (prometheus-client's
multiprocess mode, rtcore.runtime.telemetry) and, read from the supervisor at scrape time, each
process's up, restarts, heartbeat age, CPU and memory, the call slots and the build.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client import start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

import rtcore
from rtcore.runtime import telemetry
from rtcore.runtime.models import whisper_model_name
from rtcore.runtime.supervisor import Supervisor


class SupervisorCollector(Collector):
    """Reads the supervisor's state at scrape time: nothing to keep in sync."""

    def __init__(self, supervisor: Supervisor) -> None:
        self._sup = supervisor

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("rtcore_process_up", "1 if the process is running and ready", labels=["process"])
        restarts = CounterMetricFamily("rtcore_process_restarts", "Restarts since launch", labels=["process"])
        age = GaugeMetricFamily("rtcore_process_heartbeat_age_seconds", "Seconds since the process's last "
                                "heartbeat", labels=["process"])
        cpu = CounterMetricFamily("rtcore_process_cpu_seconds", "CPU time (user + system) of the process's "
                                  "current instance", labels=["process"])
        rss = GaugeMetricFamily("rtcore_process_resident_memory_bytes", "Resident memory of the process",
                                labels=["process"])
        now = time.monotonic()
        for name, child in list(self._sup.children.items()):
            up.add_metric([name], 1.0 if child.up else 0.0)
            restarts.add_metric([name], child.restarts)
            if child.proc is not None:
                age.add_metric([name], now - child.last_beat)
                cpu.add_metric([name], child.cpu_seconds)
                if child.usage is not None:
                    try:
                        rss.add_metric([name], child.usage.memory_info().rss)
                    except Exception:  # noqa: BLE001 - gone between the check and the read
                        pass
        rings = self._sup.rings
        slots = GaugeMetricFamily("rtcore_call_slots", "Shared-memory call slots (max_calls)")
        slots.add_metric([], rings.spec.n_slots if rings is not None else 0)
        in_use = GaugeMetricFamily("rtcore_call_slots_in_use", "Shared-memory call slots in use")
        in_use.add_metric([], len(rings.in_use()) if rings is not None else 0)
        s = self._sup.settings
        info = GaugeMetricFamily("rtcore_build_info", "rtcore's version and ASR model (always 1)",
                                 labels=["version", "asr_model", "asr_device", "asr_compute_type"])
        info.add_metric([rtcore.__version__, whisper_model_name(s), s.asr_device, s.asr_compute_type], 1.0)
        yield from (up, restarts, age, cpu, rss, slots, in_use, info)


def registry_for(supervisor: Supervisor) -> CollectorRegistry:
    """The supervisor's view plus every process's metrics files."""
    registry = telemetry.multiprocess_registry(supervisor.metrics_dir)
    registry.register(SupervisorCollector(supervisor))
    return registry


def serve_metrics(supervisor: Supervisor, host: str, port: int) -> tuple[int, Callable[[], None]]:
    """Serve /metrics in a thread; returns the bound port (port 0: any free one) and a stop function."""
    server, thread = start_http_server(port, addr=host, registry=registry_for(supervisor))

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return server.server_port, stop
