"""`rtcore bench chaos` on a small load: every process killed in turn, Redis stopped, malformed
input thrown, then a drain; nothing cut by the VAD may be lost or transcribed twice, and every call
that ended has its lead."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from rtcore.launch.chaos import FAULTS, KILLED_IN_TURN, run_chaos
from rtcore.runtime.config import Settings
from tests.conftest import AUDIO_FR, free_port


# A launch that may calibrate the phrasebook first on a clean machine (about 5 min), then ~4 min of faults.
@pytest.mark.timeout(1200)
def test_every_fault_under_load_loses_and_duplicates_nothing(make_settings: Callable[..., Settings],
                                                             short_dir: Path) -> None:
    # A fixed HTTP port: the restarted API binds it again (port 0 would give it another one).
    settings = make_settings(max_calls=12, ring_seconds=60.0, heartbeat_interval_s=1.0, http_port=free_port(),
                             sim_ari_port=free_port(), rtp_port=free_port(socket.SOCK_DGRAM), asr_intra_threads=1,
                             drain_timeout_s=15.0, http_header_timeout_s=3.0, http_body_timeout_s=4.0)
    report = run_chaos(settings, short_dir / "out", calls=4, interval_s=12.0, redis_down_s=2.0, rtp_datagrams=5000,
                       warmup_s=5.0, audio_dir=AUDIO_FR if AUDIO_FR.is_dir() else None, progress=lambda line: None)
    rows = {row["fault"]: row for row in report["faults"]}
    assert list(rows) == [*(f"kill -9 {name}" for name in KILLED_IN_TURN), "Redis stopped and restarted",
                          "malformed input", "SIGTERM drain"]
    assert len(FAULTS) + 1 == len(rows)
    for name, row in rows.items():
        assert row["lost"] == 0 and row["duplicated"] == 0, (name, row)
        assert row["leads_written"] == row["leads_expected"], (name, row)
        assert row["recovery_s"] is not None, (name, row)
    assert sum(row["utterances_cut"] for row in rows.values()) > 0
    for name in KILLED_IN_TURN:
        assert report["restarts"][name] == 1  # killed once, restarted once: nothing else crashed
    assert rows["kill -9 http_api"]["http_first_ok_s"] is not None  # served again after its restart
    abuse = rows["malformed input"]["details"]
    assert abuse["restarts"] == {}  # no process died of the malformed input
    assert abuse["rtp"]["sent"] == 5000 and abuse["ari"]["frames"] > 0
    assert abuse["http"]["unexpected"] == [] and abuse["slow_loris"]["probe_ok"] > 0
    drain = rows["SIGTERM drain"]["details"]
    assert drain["calls_in_progress"] == drain["finished"] + drain["ended"]
    totals = report["totals"]
    assert totals["lost"] == 0 and totals["duplicated"] == 0 and totals["errors"] == 0
    assert "" not in totals["outcomes"]  # after the drain every lead is closed
    assert (short_dir / "out" / "chaos.md").read_text().count("\n| kill -9") == len(KILLED_IN_TURN)
