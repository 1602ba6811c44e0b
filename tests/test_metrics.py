from __future__ import annotations

import os
import signal
import urllib.request
from collections.abc import Callable

from rtcore.runtime.config import Settings
from rtcore.runtime.metrics import serve_metrics
from rtcore.runtime.supervisor import Supervisor
from tests.test_supervisor import poll_until, probe


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return response.read().decode()


def test_metrics_endpoint_shows_processes_restarts_and_reported_values(
        make_settings: Callable[..., Settings]) -> None:
    sup = Supervisor(make_settings(redis_url="redis://127.0.0.1:1"), [probe("worker")])
    sup.start()
    port, stop = serve_metrics(sup, "127.0.0.1", 0)
    try:
        child = sup.children["worker"]
        poll_until(sup, lambda: "loops" in child.metrics)
        assert sup.rings is not None
        sup.rings.allocate()
        text = scrape(port)
        assert 'rtcore_process_up{process="worker"} 1.0' in text
        assert 'rtcore_process_restarts_total{process="worker"} 0.0' in text
        assert 'rtcore_process_metric{name="loops",process="worker"}' in text
        assert "rtcore_call_slots_in_use 1.0" in text
        old = child.pid
        os.kill(old, signal.SIGKILL)
        poll_until(sup, lambda: child.pid != old and child.ready)
        assert 'rtcore_process_restarts_total{process="worker"} 1.0' in scrape(port)
    finally:
        stop()
        sup.stop()
