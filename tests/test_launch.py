"""The whole product: `rtcore launch` with the embedded PBX and simulated callers, end to end."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import redis

from rtcore.config import Settings
from rtcore.launcher import simulated_load_settings
from rtcore.leads import read_leads
from rtcore.redis_server import PrivateRedis
from tests.conftest import REPO

OUTCOMES = {"qualified", "not_eligible", "refused", "abandoned", "error"}


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_launch_two_calls_four_total_completes_with_leads_and_a_consistent_report(short_dir: Path) -> None:
    report_path = short_dir / "report.json"
    env = {**os.environ, "RTCORE_INSTANCE": "launchtest", "RTCORE_RUN_DIR": str(short_dir / "run"),
           "RTCORE_DATA_DIR": str(short_dir / "data"), "RTCORE_METRICS_PORT": "0", "RTCORE_HTTP_PORT": "0",
           "RTCORE_SIM_ARI_PORT": str(free_port()), "RTCORE_RTP_PORT": str(free_port(socket.SOCK_DGRAM)),
           "RTCORE_ASR_INTRA_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "rtcore.cli", "launch", "--calls", "2", "--total-calls", "4",
                           "--json", str(report_path)], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "report:" in proc.stdout and "calls active" in proc.stdout  # live progress, then the report
    report = json.loads(report_path.read_text())
    assert set(report) == {"calls_completed", "calls_failed", "outcomes", "utterances", "latency_ms", "asr",
                           "cpu_percent"}
    assert report["calls_completed"] + report["calls_failed"] == 4
    assert sum(report["outcomes"].values()) == 4 and set(report["outcomes"]) <= OUTCOMES
    assert report["outcomes"].get("error", 0) == report["calls_failed"]
    utts = report["utterances"]
    assert utts["total"] > 4 and 0 <= utts["dropped"] <= utts["total"]
    for name in ("eos_to_transcript", "eos_to_reply"):
        lat = report["latency_ms"][name]
        assert 0 < lat["p50"] <= lat["p95"] <= lat["max"]
    assert report["asr"]["mean_batch_size"] >= 1.0 and report["cpu_percent"] > 0
    transcribed = utts["total"] - utts["dropped"]
    assert sum(report["asr"]["windows_s"].values()) == transcribed
    assert all(6.0 <= float(w) <= 30.0 for w in report["asr"]["windows_s"])
    for name in ("worker_queue_ms", "batch_run_ms"):
        lat = report["asr"][name]
        assert 0 <= lat["p50"] <= lat["p95"] <= lat["max"]
    # Every call left its lead in Redis (the private Redis's append-only file outlives the run).
    with PrivateRedis(short_dir / "run2", short_dir / "data" / "redis") as server:
        client = redis.Redis.from_url(server.url)
        leads = list(read_leads(client))
        client.close()
    assert len(leads) == 4
    assert all(lead.outcome in OUTCOMES and lead.ended_at >= lead.started_at and lead.turns for lead in leads)
    assert sorted(lead.outcome for lead in leads) == sorted(
        o for o, n in report["outcomes"].items() for _ in range(n))


def test_a_simulated_load_gets_call_slots_enough_for_it() -> None:
    # Replacement calls arrive while ended ones still hold their slots: headroom beyond N.
    big = simulated_load_settings(Settings(max_calls=64), calls=80, total_calls=None, duration_s=60.0)
    assert (big.sim_calls, big.sim_duration_s, big.max_calls) == (80, 60.0, 100)
    assert simulated_load_settings(Settings(max_calls=64), 2, 4, None).max_calls == 64  # enough already
    assert simulated_load_settings(Settings(max_calls=4), 2, 4, None).max_calls == 10
