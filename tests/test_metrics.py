"""The supervisor's /metrics: children's metrics gathered in multiprocess mode, and its own view."""

from __future__ import annotations

import os
import re
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


def value(text: str, sample: str) -> float:
    found = re.search(rf"^{re.escape(sample)} (\S+)$", text, re.M)
    assert found, f"{sample} not in the scrape"
    return float(found.group(1))


def test_metrics_endpoint_gathers_children_across_restarts_and_shows_processes(
        make_settings: Callable[..., Settings]) -> None:
    sup = Supervisor(make_settings(redis_url="redis://127.0.0.1:1"), [probe("worker")])
    sup.start()
    port, stop = serve_metrics(sup, "127.0.0.1", 0)
    try:
        child = sup.children["worker"]
        poll_until(sup, lambda: child.metrics.get("loops", 0) >= 10)  # counted twice at least
        assert sup.rings is not None
        sup.rings.allocate()
        text = scrape(port)
        assert value(text, 'rtcore_process_up{process="worker"}') == 1.0
        assert value(text, 'rtcore_process_restarts_total{process="worker"}') == 0.0
        assert value(text, 'rtcore_process_heartbeat_age_seconds{process="worker"}') < 60
        assert value(text, "rtcore_call_slots_in_use") == 1.0
        assert "rtcore_process_metric" not in text  # the old catch-all gauge is gone
        counted = value(text, "rtcore_calls_started_total")
        assert counted >= 2 and value(text, "rtcore_calls_active") == 2.0
        assert "# TYPE rtcore_calls_started_total counter" in text or "# TYPE rtcore_calls_started counter" in text
        old = child.pid
        os.kill(old, signal.SIGKILL)
        poll_until(sup, lambda: child.pid != old and child.ready)
        assert value(scrape(port), "rtcore_calls_started_total") >= counted  # the dead child's count is kept
        # The new child counts on: the total grows from what the dead one had counted.
        poll_until(sup, lambda: value(scrape(port), "rtcore_calls_started_total") > counted)
        text = scrape(port)
        assert value(text, 'rtcore_process_restarts_total{process="worker"}') == 1.0
        # The dead child's count stays in the total; its live gauge went with it (not 2 + 2).
        assert value(text, "rtcore_calls_started_total") > counted
        assert value(text, "rtcore_calls_active") == 2.0
    finally:
        stop()
        sup.stop()
