"""The whole product: `rtcore launch` with the embedded PBX and simulated callers, end to end."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import redis

from rtcore.dialog.leads import Lead, read_leads
from rtcore.launch.launcher import simulated_load_settings
from rtcore.runtime.config import Settings
from rtcore.runtime.redis_server import PrivateRedis
from tests.conftest import REPO, free_port

OUTCOMES = {"qualified", "not_eligible", "refused", "abandoned", "error"}



# The first launch on a clean machine calibrates the simulated callers' phrasebook (every variant
# through the phone line, Whisper and the classifier, twice for those understood once: about 5 min
# on 2 cores), hence more than the suite's 300 s per test.
@pytest.mark.timeout(900)
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
    # Progress counts the calls the dialog handled (CallStarted/CallEnded), whatever the PBX.
    assert re.search(r"calls active [12], finished \d", proc.stdout), proc.stdout[-2000:]
    report = json.loads(report_path.read_text())
    assert set(report) == {"calls_completed", "calls_failed", "outcomes", "utterances", "latency_ms", "asr",
                           "cpu_percent", "left_behind"}
    assert report["left_behind"] == {"call_slots": 0, "calls": 0, "channels": 0, "bridges": 0}
    assert report["calls_completed"] + report["calls_failed"] == 4
    assert sum(report["outcomes"].values()) == 4 and set(report["outcomes"]) <= OUTCOMES
    assert report["outcomes"].get("error", 0) == report["calls_failed"]
    utts = report["utterances"]
    assert utts["total"] > 4 and 0 <= utts["dropped"] <= utts["total"]
    transcribed = utts["total"] - utts["dropped"]
    # Percentiles from the run's Prometheus histograms (interpolated in a bucket: p95 may pass the
    # exact max by less than that bucket's width); the counts are those of the bus.
    for name in ("eos_to_transcript", "eos_to_reply"):
        lat = report["latency_ms"][name]
        assert 0 < lat["p50"] <= lat["p95"] and lat["max"] > 0
    assert report["latency_ms"]["eos_to_transcript"]["count"] == transcribed
    assert report["asr"]["mean_batch_size"] >= 1.0 and report["cpu_percent"] > 0
    assert report["asr"]["batches"] >= transcribed / report["asr"]["mean_batch_size"] - 1
    assert sum(report["asr"]["windows_s"].values()) == transcribed
    assert all(6.0 <= float(w) <= 30.0 for w in report["asr"]["windows_s"])
    for name in ("worker_queue_ms", "batch_run_ms"):
        lat = report["asr"][name]
        assert 0 <= lat["p50"] <= lat["p95"]
    # Every call left its lead in Redis (the private Redis's append-only file outlives the run).
    with PrivateRedis(short_dir / "run2", short_dir / "data" / "redis") as server:
        client = redis.Redis.from_url(server.url)
        leads = list(read_leads(client))
        client.close()
    assert len(leads) == 4
    assert all(lead.outcome in OUTCOMES and lead.ended_at >= lead.started_at and lead.turns for lead in leads)
    assert sorted(lead.outcome for lead in leads) == sorted(
        o for o, n in report["outcomes"].items() for _ in range(n))
    assert_no_personal_data_in(proc.stderr, leads)


def assert_no_personal_data_in(log: str, leads: list[Lead]) -> None:
    """The run's INFO log (every process's) names calls by id, never by what their callers said,
    their number or their zip code. The simulator's own lines (the embedded PBX, the calibration
    of its callers' phrasebook) are left out: they are about its script, and a real Asterisk has
    no such lines."""
    log = "\n".join(line for line in log.splitlines()
                    if not re.search(r" pbx_sim\[\d+\] | rtcore\.sim\.", line))
    assert "INFO" in log and "call " in log
    said = [turn.transcript for lead in leads for turn in lead.turns if len(turn.transcript.strip()) >= 6]
    assert said, "the callers said nothing"
    for text in said:
        assert text not in log, f"a transcript is in the log: {text!r}"
    for lead in leads:
        if lead.caller:
            assert not re.search(rf"(?<![\d:\[.]){re.escape(lead.caller)}(?!\d)", log), "a caller's number is logged"
        if lead.zip_code:
            # Not a port (":75011"), pid ("[75011]") or part of a longer number.
            assert not re.search(rf"(?<![\d:\[.]){lead.zip_code}(?!\d)", log), "a zip code is logged"


def test_a_simulated_load_gets_call_slots_enough_for_it() -> None:
    # Replacement calls arrive while ended ones still hold their slots: headroom beyond N.
    big = simulated_load_settings(Settings(max_calls=64), calls=80, total_calls=None, duration_s=60.0)
    assert (big.sim_calls, big.sim_duration_s, big.max_calls) == (80, 60.0, 100)
    assert simulated_load_settings(Settings(max_calls=64), 2, 4, None).max_calls == 64  # enough already
    assert simulated_load_settings(Settings(max_calls=4), 2, 4, None).max_calls == 10


def launch_env(short_dir: Path, instance: str) -> dict[str, str]:
    return {**os.environ, "RTCORE_INSTANCE": instance, "RTCORE_RUN_DIR": str(short_dir / "run"),
            "RTCORE_DATA_DIR": str(short_dir / "data"), "RTCORE_METRICS_PORT": "0", "RTCORE_HTTP_PORT": "0",
            "RTCORE_SIM_ARI_PORT": str(free_port()), "RTCORE_RTP_PORT": str(free_port(socket.SOCK_DGRAM)),
            "RTCORE_ASR_INTRA_THREADS": "1"}


def wait_mid_call(proc: subprocess.Popen[str], short_dir: Path) -> redis.Redis:
    """Once a call of the launch in progress has had a turn (the dialog then holds real state about
    it); returns a client of the launch's private Redis."""
    client = redis.Redis.from_url(f"unix://{short_dir / 'run' / 'redis.sock'}", socket_timeout=2.0)

    def mid_call() -> bool:
        try:
            return any(lead.turns and not lead.ended_at for lead in read_leads(client))
        except redis.RedisError:
            return False  # the private Redis is not up yet

    deadline = time.monotonic() + 600
    while not mid_call():
        assert proc.poll() is None, (short_dir / "stderr.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "no call reached its first turn"
        time.sleep(0.2)  # another process's state: nothing to block on
    return client


@pytest.mark.timeout(900)  # as above: it may be the first launch
def test_kill_9_of_the_dialog_mid_call_loses_no_call_and_leaks_nothing(short_dir: Path) -> None:
    """The supervisor restarts the dialog; the restarted one takes back (or ends) the calls in
    progress: every lead is closed, no channel, bridge or call slot is left behind."""
    report_path = short_dir / "report.json"
    out, err = open(short_dir / "stdout.log", "w+"), open(short_dir / "stderr.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "rtcore.cli", "launch", "--calls", "2", "--total-calls", "4",
                             "--json", str(report_path)], env=launch_env(short_dir, "killtest"), cwd=REPO,
                            stdout=out, stderr=err, text=True)
    try:
        client = wait_mid_call(proc, short_dir)
        dialog = next(p for p in psutil.Process(proc.pid).children()
                      if "procs.dialog" in " ".join(p.cmdline()))
        in_progress = {lead.call_id for lead in read_leads(client) if not lead.ended_at}
        os.kill(dialog.pid, signal.SIGKILL)
        assert proc.wait(timeout=900) == 0, (short_dir / "stderr.log").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        out.close()
        err.close()
    stderr = (short_dir / "stderr.log").read_text()
    assert "restarting dialog" in stderr
    report = json.loads(report_path.read_text())
    assert report["calls_completed"] + report["calls_failed"] == 4
    assert report["left_behind"] == {"call_slots": 0, "calls": 0, "channels": 0, "bridges": 0}
    with PrivateRedis(short_dir / "run2", short_dir / "data" / "redis") as server:
        reader = redis.Redis.from_url(server.url)
        leads = {lead.call_id: lead for lead in read_leads(reader)}
        assert reader.smembers("rtcore:calls:active") == set()
        reader.close()
    assert len(leads) == 4 and all(lead.outcome in OUTCOMES and lead.ended_at for lead in leads.values())
    # Each call that was in progress at the kill was taken back (a "resume" turn) or ended cleanly.
    for call_id in in_progress:
        lead = leads[call_id]
        assert any(t.source == "resume" for t in lead.turns) or "dialog" in lead.end_reason, lead


@pytest.mark.timeout(900)  # as above: it may be the first launch
def test_sigterm_drains_the_launch_then_it_stops_with_the_drain_in_its_report(short_dir: Path) -> None:
    """SIGTERM: no new call (the embedded PBX's callers keep calling and are refused), the calls in
    progress go on until drain_timeout_s, then are ended politely; then the run stops as usual."""
    report_path = short_dir / "report.json"
    out, err = open(short_dir / "stdout.log", "w+"), open(short_dir / "stderr.log", "w+")
    env = {**launch_env(short_dir, "draintest"), "RTCORE_DRAIN_TIMEOUT_S": "4"}
    proc = subprocess.Popen([sys.executable, "-m", "rtcore.cli", "launch", "--calls", "2", "--json", str(report_path)],
                            env=env, cwd=REPO, stdout=out, stderr=err, text=True)
    try:
        wait_mid_call(proc, short_dir).close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0, (short_dir / "stderr.log").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        out.close()
        err.close()
    assert "report (drained, then stopped):" in (short_dir / "stdout.log").read_text()
    drain = json.loads(report_path.read_text())["drain"]
    assert drain["calls_in_progress"] >= 1 and drain["finished"] + drain["ended"] == drain["calls_in_progress"]
    with PrivateRedis(short_dir / "run2", short_dir / "data" / "redis") as server:
        reader = redis.Redis.from_url(server.url)
        leads = list(read_leads(reader))
        assert reader.smembers("rtcore:calls:active") == set()
        reader.close()
    assert all(lead.ended_at for lead in leads)
    cut = [lead for lead in leads if lead.end_reason == "drain timeout"]
    assert len(cut) == drain["ended"] and all(lead.outcome in OUTCOMES for lead in cut)
    # Refused while draining (a caller may still be refused between the drain's end and the stop).
    refused = [lead for lead in leads if lead.end_reason == "draining"]
    assert len(refused) >= drain["refused"] and all(lead.outcome == "rejected" for lead in refused)
