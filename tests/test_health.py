"""/health and /ready's verdicts (rtcore.observe.health) from a real supervisor's RunStatus and a
real Redis: a killed process is down, a Redis that stops answering is named, a drain or a full
house makes the run unready while it stays healthy."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis.asyncio

from rtcore.observe.health import STATUS_STALE_S, HealthChecks
from rtcore.runtime.config import Settings
from rtcore.runtime.messages import AsrStatus, RunStatus
from rtcore.runtime.redis_server import PrivateRedis
from rtcore.runtime.supervisor import Supervisor
from tests.test_supervisor import poll_until, probe


@dataclass
class Observed:
    run_status: RunStatus | None = None
    run_status_at: float = 0.0
    asr_status: AsrStatus | None = None
    asr_status_at: float = 0.0

    def saw(self, status: RunStatus) -> None:
        self.run_status, self.run_status_at = status, time.monotonic()


async def test_a_killed_process_is_reported_down_until_it_is_back(make_settings: Callable[..., Settings]) -> None:
    sup = Supervisor(make_settings(redis_url="redis://127.0.0.1:1"), [probe("worker"), probe("other")])
    sup.start()
    observed = Observed()
    checks = HealthChecks(sup.settings.model_copy(update={"redis_url": ""}), observed)  # no Redis to check here
    try:
        observed.saw(sup.status())
        verdict = await checks.assess()
        assert verdict.healthy and verdict.ready, verdict.reasons
        assert verdict.body["processes"]["worker"]["up"] is True
        child = sup.children["worker"]
        old = child.pid
        os.kill(old, signal.SIGKILL)
        assert child.proc is not None
        child.proc.wait()
        sup.poll(0)  # the supervisor sees the exit; the restart is due after its backoff
        observed.saw(sup.status())
        verdict = await checks.assess()
        assert not verdict.healthy and not verdict.ready
        assert verdict.reasons == ["process worker is down"]
        assert verdict.body["processes"]["worker"] == {"up": False, "pid": 0, "heartbeat_age_s": -1.0, "restarts": 1}
        assert verdict.body["processes"]["other"]["up"] is True
        poll_until(sup, lambda: child.ready and child.pid != old)
        observed.saw(sup.status())
        assert (await checks.assess()).healthy
    finally:
        sup.stop()


async def test_a_stale_status_redis_down_draining_and_a_full_house(make_settings: Callable[..., Settings],
                                                                     tmp_path: os.PathLike[str]) -> None:
    from pathlib import Path

    with PrivateRedis(Path(tmp_path) / "run", Path(tmp_path) / "data") as server:
        client = redis.asyncio.Redis.from_url(server.url, socket_timeout=0.5)
        observed = Observed()
        clock = [100.0]
        checks = HealthChecks(make_settings(redis_url=server.url), observed, client.ping, clock=lambda: clock[0])
        assert (await checks.assess()).reasons == ["no status from the supervisor yet"]
        status = RunStatus(sent_at=1.0, processes=(), call_slots=2, call_slots_in_use=1, has_dialog=True,
                           ari_connected=True, redis_connected=True, draining=False)
        observed.run_status, observed.run_status_at = status, clock[0]
        verdict = await checks.assess()
        assert verdict.healthy and verdict.ready and verdict.body["redis"] == {"reachable": True}
        assert verdict.body["call_slots"] == {"total": 2, "in_use": 1, "free": 1}
        clock[0] += STATUS_STALE_S + 1
        assert (await checks.assess()).reasons == [f"no status from the supervisor for {STATUS_STALE_S + 1:.1f} s"]
        observed.run_status_at = clock[0]
        observed.run_status = RunStatus(sent_at=1.0, processes=(), call_slots=2, call_slots_in_use=2, has_dialog=True,
                                        ari_connected=False, redis_connected=True, draining=True)
        verdict = await checks.assess()
        assert verdict.reasons == ["ARI is not connected (the dialog's events WebSocket)"]
        assert verdict.not_ready == ["draining: no new call is taken", "no free call slot"]
        observed.run_status = status
        observed.asr_status = AsrStatus(pid=1, started_at=1.0, pending=40, in_flight=4, workers=1, capacity=4,
                                        throughput=2.0, expected_wait_ms=2500.0, queue_limit=100, refused_full=0)
        observed.asr_status_at = clock[0]
        verdict = await checks.assess()
        assert verdict.healthy and not verdict.ready
        assert verdict.not_ready == ["ASR expected wait 2500 ms over 1500 ms"]
        observed.asr_status = None
        server.stop()  # Redis stops answering
        verdict = await checks.assess()
        assert verdict.reasons == ["Redis does not answer"] and verdict.body["redis"] == {"reachable": False}
        await client.aclose()
