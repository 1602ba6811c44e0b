"""`GET /health` and `GET /ready`: is the run serving, and can it take a new call now?

Both read what the HTTP service hears on the bus (the supervisor's RunStatus every second, the ASR
dispatcher's AsrStatus every half second) and check Redis themselves (a PING from this process, so
a dead Redis shows even while the dialog's own connection has not noticed yet).

/health is 200 while the run serves: every process up with a recent heartbeat, ARI connected (when
there is a dialog), Redis reachable (when one is configured), the supervisor's status fresh. Else
503, and `reasons` says what is wrong. /ready adds what a new call needs: a free call slot, no
drain, the ASR's expected wait within the admission limit; a load balancer or a dialplan check
sends calls elsewhere while it is 503.

The seed's Whisper /health fields stay: `status` ("ok", or "unavailable"), `model`, `device`,
`free_slots` (the HTTP API's own). Nothing here is personal data; the HTTP service's access rules
apply to it anyway.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from rtcore.runtime.config import Settings
from rtcore.runtime.messages import AsrStatus, RunStatus
from rtcore.runtime.models import whisper_model_name

# RunStatus comes every second: three missed ones and the supervisor (or the bus) is in trouble.
STATUS_STALE_S = 3.5
ASR_STATUS_STALE_S = 3.0
REDIS_PING_TIMEOUT_S = 1.0


class RunObserver(Protocol):
    """What the health checks read (rtcore.observe.state.ObservedRun provides it)."""

    run_status: RunStatus | None
    run_status_at: float  # time.monotonic() when it arrived
    asr_status: AsrStatus | None
    asr_status_at: float


@dataclass
class Assessment:
    healthy: bool
    ready: bool
    body: dict[str, Any]
    reasons: list[str]
    not_ready: list[str]


class HealthChecks:
    """`redis_ping`: an async callable that raises when Redis does not answer (None: no Redis)."""

    def __init__(self, settings: Settings, run: RunObserver,
                 redis_ping: Callable[[], Awaitable[Any]] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.run = run
        self.redis_ping = redis_ping
        self._clock = clock

    async def assess(self) -> Assessment:
        s = self.settings
        reasons: list[str] = []
        not_ready: list[str] = []
        now = self._clock()
        body: dict[str, Any] = {"model": whisper_model_name(s), "device": s.asr_device,
                                "compute_type": s.asr_compute_type}
        status = self.run.run_status
        if status is None:
            reasons.append("no status from the supervisor yet")
        else:
            age = now - self.run.run_status_at
            if age > STATUS_STALE_S:
                reasons.append(f"no status from the supervisor for {age:.1f} s")
            processes = {}
            for process in status.processes:
                silent = process.heartbeat_age_s > s.heartbeat_timeout_s
                processes[process.name] = {"up": process.up and not silent, "pid": process.pid,
                                           "heartbeat_age_s": process.heartbeat_age_s, "restarts": process.restarts}
                if not process.up:
                    reasons.append(f"process {process.name} is down")
                elif silent:
                    reasons.append(f"process {process.name}: no heartbeat for {process.heartbeat_age_s:.1f} s")
            body["processes"] = processes
            free = status.call_slots - status.call_slots_in_use
            body["call_slots"] = {"total": status.call_slots, "in_use": status.call_slots_in_use, "free": free}
            body["draining"] = status.draining
            if status.has_dialog:
                body["ari"] = {"connected": status.ari_connected, "url": s.ari_base_url}
                if not status.ari_connected:
                    reasons.append("ARI is not connected (the dialog's events WebSocket)")
            if status.draining:
                not_ready.append("draining: no new call is taken")
            if status.has_dialog and free <= 0:
                not_ready.append("no free call slot")
        if s.redis_url or s.redis_sentinels or (status is not None and status.has_dialog):
            body["redis"] = {"reachable": await self._redis_reachable()}
            if not body["redis"]["reachable"]:
                reasons.append("Redis does not answer")
        asr = self.run.asr_status
        if asr is not None and now - self.run.asr_status_at <= ASR_STATUS_STALE_S:
            body["asr"] = {"workers": asr.workers, "pending": asr.pending, "in_flight": asr.in_flight,
                           "capacity": asr.capacity, "expected_wait_ms": round(asr.expected_wait_ms, 1)}
            limit = s.admission_max_asr_wait_ms
            if limit > 0 and asr.expected_wait_ms > limit:
                not_ready.append(f"ASR expected wait {asr.expected_wait_ms:.0f} ms over {limit:.0f} ms")
        elif status is not None and any(p.name == "asr_dispatch" for p in status.processes):
            reasons.append("no status from the ASR dispatcher")
        healthy = not reasons
        ready = healthy and not not_ready
        body["reasons"] = reasons + not_ready
        return Assessment(healthy, ready, body, reasons, not_ready)

    async def _redis_reachable(self) -> bool:
        if self.redis_ping is None:
            return False
        try:
            async with asyncio.timeout(REDIS_PING_TIMEOUT_S):
                await self.redis_ping()
            return True
        except Exception:  # noqa: BLE001 - any failure to answer is "not reachable"
            return False
