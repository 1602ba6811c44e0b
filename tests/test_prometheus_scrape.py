"""A real Prometheus scrapes `rtcore launch` (embedded PBX, two simulated callers at a time): the main
families the dashboard and the alerts rest on are there, with their types, and move during calls; the
exposition passes `promtool check metrics`; the shipped alert rules evaluate without error."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from rtcore.dialog.leads import read_leads
from rtcore.launch.pipeline import pipeline
from rtcore.runtime.config import Settings
from tests.conftest import REPO, free_port

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
RULES = REPO / "deploy" / "prometheus" / "alerts.yml"

# name -> type: what this test requires of the scrape (the types are Prometheus metadata's).
FAMILIES = {
    "rtcore_calls_active": "gauge",
    "rtcore_calls_started_total": "counter",
    "rtcore_calls_ended_total": "counter",
    "rtcore_channels_active": "gauge",
    "rtcore_call_duration_seconds": "histogram",
    "rtcore_eos_to_transcript_seconds": "histogram",
    "rtcore_eos_to_reply_seconds": "histogram",
    "rtcore_asr_queue_wait_seconds": "histogram",
    "rtcore_asr_inference_seconds": "histogram",
    "rtcore_asr_batch_size": "histogram",
    "rtcore_asr_queue_depth": "gauge",
    "rtcore_vad_tick_seconds": "histogram",
    "rtcore_vad_streams": "gauge",
    "rtcore_rtp_packets_received_total": "counter",
    "rtcore_rtp_jitter_seconds": "histogram",
    "rtcore_intents_total": "counter",
    "rtcore_http_requests_total": "counter",
    "rtcore_redis_spool_depth": "gauge",
    "rtcore_ari_connected": "gauge",
    "rtcore_process_up": "gauge",
    "rtcore_process_restarts_total": "counter",
}
CALLS = 2  # calls that must have ended before the checks can all pass


class PrometheusApi:
    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    def get(self, path: str, **params: str) -> Any:
        url = self.base + path + ("?" + urllib.parse.urlencode(params) if params else "")
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.loads(response.read())
        assert body["status"] == "success", body
        return body["data"]

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.base + "/-/ready", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def query(self, expr: str) -> list[tuple[dict[str, str], float]]:
        """An instant query's vector: (labels, value) per series."""
        data = self.get("/api/v1/query", query=expr)
        assert data["resultType"] == "vector", data
        return [(r["metric"], float(r["value"][1])) for r in data["result"]]


def start_prometheus(work: Path, metrics_port: int) -> tuple[subprocess.Popen[bytes], PrometheusApi]:
    assert PROMETHEUS is not None
    work.mkdir(parents=True)
    config = {"global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
              "rule_files": [str(RULES)],
              "scrape_configs": [{"job_name": "rtcore",
                                  "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}]}]}
    (work / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = open(work / "prometheus.log", "wb")
    proc = subprocess.Popen([PROMETHEUS, f"--config.file={work / 'prometheus.yml'}",
                             f"--storage.tsdb.path={work / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
                             "--log.level=warn"], stdout=log, stderr=subprocess.STDOUT)
    log.close()
    api = PrometheusApi(port)
    deadline = time.monotonic() + 60
    try:
        while not api.ready():
            assert proc.poll() is None, (work / "prometheus.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "prometheus did not become ready"
            time.sleep(0.2)  # another process starting: nothing to block on
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc, api


def ended_calls(client: redis.Redis) -> int:
    try:
        return sum(1 for lead in read_leads(client) if lead.ended_at)
    except redis.RedisError:
        return 0  # the private Redis is not up yet


class Checks:
    """Every requirement on what Prometheus holds; `run()` lists those not met (empty: all are)."""

    def __init__(self, api: PrometheusApi, since: float, processes: list[str]) -> None:
        self.api, self.since, self.processes = api, since, processes
        self.calls_ended = time.monotonic()  # created once the calls have ended

    def window(self) -> str:
        """A range covering the whole launch so far (the counters start from 0 with it)."""
        return f"{int(time.monotonic() - self.since) + 5}s"

    def peak(self, expr: str) -> float:
        """The highest value `expr` had during the launch (NaN: never any)."""
        series = self.api.query(f"max(max_over_time(({expr})[{self.window()}:1s]))")
        return max((v for _, v in series), default=math.nan)

    def run(self) -> list[str]:
        failures = [f for check in self.checks() if (f := check())]
        return failures

    def checks(self) -> list[Callable[[], str | None]]:
        return [self.target_up, self.metadata_types, *self.values()]

    def target_up(self) -> str | None:
        targets = self.api.get("/api/v1/targets")["activeTargets"]
        health = [t["health"] for t in targets if t["scrapePool"] == "rtcore"]
        return None if health == ["up"] else f"target health {health}: {[t.get('lastError') for t in targets]}"

    def metadata_types(self) -> str | None:
        metadata = self.api.get("/api/v1/metadata")
        wrong = []
        for name, kind in FAMILIES.items():
            # OpenMetrics (what Prometheus asks for) names a counter without _total, text format with it.
            found = metadata.get(name) or metadata.get(name.removesuffix("_total")) or []
            types = sorted({m["type"] for m in found})
            if types != [kind]:
                wrong.append(f"{name}: {types or 'absent'} (expected {kind})")
        return "metadata: " + "; ".join(wrong) if wrong else None

    def values(self) -> list[Callable[[], str | None]]:
        checks: list[Callable[[], str | None]] = [
            self.at_least("rtcore_calls_active", 1),
            self.at_least("rtcore_calls_started_total", CALLS),
            self.at_least("sum(rtcore_calls_ended_total)", CALLS),
            self.labelled("rtcore_calls_ended_total", "outcome"),
            self.at_least('rtcore_channels_active{type="caller"}', 1),
            self.labelled("rtcore_channels_active", "type"),
            self.labelled("rtcore_asr_queue_depth", "window"),
            self.at_least("rtcore_vad_streams", 1),
            self.at_least("rtcore_rtp_packets_received_total", 100),  # 50 packets a second per call
            self.at_least("sum(rtcore_intents_total)", CALLS),
            self.labelled("rtcore_intents_total", "intent", "source"),
            self.at_least('sum(rtcore_http_requests_total{endpoint="/health",status="200"})', 1),
            self.labelled("rtcore_http_requests_total", "endpoint", "status"),
            self.drains("rtcore_redis_spool_depth"),
            self.latest("rtcore_ari_connected", 1.0),
            self.every_process("rtcore_process_up", 1.0),
            self.every_process("rtcore_process_restarts_total", 0.0),
        ]
        # Histograms: observed during the calls, with their buckets (+Inf among them).
        for name, minimum in (("rtcore_call_duration_seconds", CALLS), ("rtcore_eos_to_transcript_seconds", CALLS),
                              ("rtcore_eos_to_reply_seconds", CALLS), ("rtcore_asr_queue_wait_seconds", CALLS),
                              ("rtcore_asr_inference_seconds", 1), ("rtcore_asr_batch_size", 1),
                              ("rtcore_vad_tick_seconds", 100), ("rtcore_rtp_jitter_seconds", 1)):
            checks.append(self.at_least(f"sum({name}_count)", minimum))
            checks.append(self.histogram_buckets(name))
        return checks

    def at_least(self, expr: str, minimum: float) -> Callable[[], str | None]:
        def check() -> str | None:
            value = self.peak(expr)
            return None if value >= minimum else f"{expr}: peak {value} during the launch, expected >= {minimum}"
        return check

    def labelled(self, name: str, *labels: str) -> Callable[[], str | None]:
        def check() -> str | None:
            series = self.api.query(f"last_over_time({name}[{self.window()}])")
            bad = [s for s, _ in series if not all(s.get(label) for label in labels)]
            if not series or bad:
                return f"{name}: series {[s for s, _ in series] or 'absent'}, each needs labels {list(labels)}"
            return None
        return check

    def drains(self, name: str) -> Callable[[], str | None]:
        """A queue gauge: there, and empty at some scrape since the calls ended (writes waiting for
        a working Redis pass; they do not pile up)."""
        def check() -> str | None:
            since = f"{int(time.monotonic() - self.calls_ended) + 1}s"
            values = [v for _, v in self.api.query(f"min_over_time({name}[{since}])")]
            return None if values and all(v == 0 for v in values) else \
                f"{name}: lowest {values or 'absent'} since the calls ended, expected 0"
        return check

    def latest(self, name: str, expected: float) -> Callable[[], str | None]:
        def check() -> str | None:
            values = [v for _, v in self.api.query(name)]
            return None if values and all(v == expected for v in values) else \
                f"{name}: {values or 'absent'} now, expected {expected}"
        return check

    def every_process(self, name: str, expected: float) -> Callable[[], str | None]:
        def check() -> str | None:
            values = {s.get("process", ""): v for s, v in self.api.query(name)}
            if sorted(values) != sorted(self.processes) or any(v != expected for v in values.values()):
                return f"{name}: {values}, expected {expected} for each of {sorted(self.processes)}"
            return None
        return check

    def histogram_buckets(self, name: str) -> Callable[[], str | None]:
        def check() -> str | None:
            bounds = {s.get("le") for s, _ in self.api.query(f"last_over_time({name}_bucket[{self.window()}])")}
            if "+Inf" in bounds and len(bounds) >= 3:
                return None
            return f"{name}_bucket: bounds {sorted(map(str, bounds))}"
        return check


def get_health(http_port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/health", timeout=10) as response:
            return int(response.status)
    except OSError:
        return 0  # the HTTP API is not up (yet)


@pytest.mark.timeout(900)  # the first launch on a clean machine calibrates the phrasebook (test_launch.py)
def test_a_real_prometheus_scrapes_the_launch_and_every_family_moves_during_calls(short_dir: Path) -> None:
    assert PROMETHEUS and PROMTOOL, "prometheus or promtool is absent: scripts/setup.sh installs Debian's prometheus"
    metrics_port, http_port = free_port(), free_port()
    prometheus, api = start_prometheus(short_dir / "prometheus", metrics_port)
    since = time.monotonic()
    env = {**os.environ, "RTCORE_INSTANCE": "scrapetest", "RTCORE_RUN_DIR": str(short_dir / "run"),
           "RTCORE_DATA_DIR": str(short_dir / "data"), "RTCORE_METRICS_PORT": str(metrics_port),
           "RTCORE_HTTP_PORT": str(http_port), "RTCORE_SIM_ARI_PORT": str(free_port()),
           "RTCORE_RTP_PORT": str(free_port(socket.SOCK_DGRAM)), "RTCORE_ASR_INTRA_THREADS": "1",
           "RTCORE_SIM_SCENARIOS": "refusal"}  # the shortest call: one answer, then goodbye
    processes = [spec.name for spec in pipeline(Settings())]
    out, err = open(short_dir / "stdout.log", "w+"), open(short_dir / "stderr.log", "w+")
    # Callers keep calling (--duration) until the checks are done: the endpoint stays up meanwhile.
    launch = subprocess.Popen([sys.executable, "-m", "rtcore.cli", "launch", "--calls", str(CALLS),
                               "--duration", "600"], env=env, cwd=REPO, stdout=out, stderr=err, text=True)
    client = redis.Redis.from_url(f"unix://{short_dir / 'run' / 'redis.sock'}", socket_timeout=2.0)
    try:
        def alive() -> None:
            assert launch.poll() is None, (short_dir / "stderr.log").read_text()[-3000:]

        deadline = time.monotonic() + 700
        while ended_calls(client) < CALLS:
            alive()
            assert time.monotonic() < deadline, f"{CALLS} calls did not end"
            time.sleep(0.2)  # another process's state: nothing to block on
        health = get_health(http_port)
        assert health == 200, health
        # Then until Prometheus has seen everything move (it scrapes every second), or for at most
        # a minute: what has not appeared by then is reported.
        checks = Checks(api, since, processes)
        deadline = time.monotonic() + 60
        while (failures := checks.run()) and time.monotonic() < deadline:
            alive()
            time.sleep(0.5)  # the next scrape: Prometheus's state, nothing to block on
        alive()
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
            exposition = response.read().decode()
        lint = subprocess.run([PROMTOOL, "check", "metrics"], input=exposition, capture_output=True, text=True,
                              timeout=60)
        if lint.returncode != 0 or (lint.stdout + lint.stderr).strip():
            failures.append(f"promtool check metrics (exit {lint.returncode}): {(lint.stdout + lint.stderr).strip()}")
        rules = [r for g in api.get("/api/v1/rules")["groups"] for r in g["rules"]]
        broken = {r["name"]: r.get("lastError") for r in rules if r["health"] != "ok"}
        if not rules or broken:
            failures.append(f"alert rules not evaluated or in error: {broken or 'none loaded'}")
        assert failures == [], "\n".join(failures)
        launch.send_signal(signal.SIGINT)
        assert launch.wait(timeout=120) == 0, (short_dir / "stderr.log").read_text()[-3000:]
    finally:
        client.close()
        for proc, stop in ((launch, signal.SIGINT), (prometheus, signal.SIGTERM)):
            if proc.poll() is None:
                proc.send_signal(stop)
                try:
                    proc.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        out.close()
        err.close()
