"""The HTTP API process: the seed's Whisper HTTP service (rtcore.asr.http_api) on http_host:http_port,
transcribing through the run's ASR dispatcher and workers.

It reports ready once listening; its Metrics carry `listening_port` (the bound port, useful with
http_port 0) and the request and connection counters. Connections are held to the
http_header_timeout_s, http_body_timeout_s and http_max_connections limits (HttpServer). Heartbeats
come from an asyncio task, so they stop if the event loop is blocked.

It also serves the live view of the calls (rtcore.observe: /view): an ObservedRun fed from the bus
(CallView, RunStatus, AsrStatus, Transcript, TurnTaken) in this event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time

import uvloop

from rtcore.asr.http_api import API_KEY, ConnectionLimits, HttpServer, create_app, listening_url
from rtcore.asr.transcriber import PipelineTranscriber, check_audio_fits
from rtcore.observe import BusFeed, ObservedRun, add_live_view
from rtcore.observe.health import HealthChecks
from rtcore.runtime.process import ProcessContext, run_process
from rtcore.runtime.redis_client import async_client
from rtcore.runtime.ring import AudioRings

log = logging.getLogger(__name__)

BEAT_EVERY_S = 0.5
REPORT_EVERY_S = 1.0


async def serve(ctx: ProcessContext) -> None:
    s = ctx.settings
    # Before anything else: a configuration that cannot work must fail the start, with its reason.
    check_audio_fits(s, ctx.info.rings.capacity)
    rings = AudioRings.attach(ctx.info.rings)
    transcriber = PipelineTranscriber(s, rings)
    transcriber.release_leftover_slots()  # after a crash of this process: its requests are gone
    server: HttpServer | None = None
    observed = ObservedRun()  # what the live view shows (and /health may read: run_status, asr_status)
    feed = BusFeed(s.endpoint("bus_sub"), observed)
    # /health pings Redis itself: a dead Redis shows even before the dialog's connection notices.
    redis_client = async_client(s, timeout_s=1.0) if s.redis_url or s.redis_sentinels else None
    checks = HealthChecks(s, observed, redis_client.ping if redis_client is not None else None)
    try:
        feed.start()
        await transcriber.start(timeout_s=s.start_timeout_s)
        # Ready only once /health can judge the run: the feed's own subscription has heard the
        # supervisor (RunStatus every second, also while it starts us) and the ASR dispatcher
        # (it joined the bus apart from the transcriber's, maybe after its last AsrStatus).
        deadline = time.monotonic() + s.start_timeout_s
        while observed.asr_status is None or observed.run_status is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"no RunStatus and AsrStatus on the bus within {s.start_timeout_s:g} s")
            feed.drain()
            await asyncio.sleep(0.02)
        app = create_app(transcriber, s, run_health=checks)
        add_live_view(app, observed)
        # In-flight requests get part of the stop time to finish; the ASR stops after us.
        server = HttpServer(app, ConnectionLimits.from_settings(s), shutdown_timeout_s=s.stop_timeout_s / 2)
        port = await server.start(s.http_host, s.http_port)
        api = app[API_KEY]
        # Reported before ready: the supervisor knows the port by the time the start returns.
        ctx.report({"listening_port": float(port), **api.metrics()})
        log.info("HTTP API listening on %s", listening_url(s.http_host, port))
        ctx.ready()
        beat_every = min(BEAT_EVERY_S, s.heartbeat_interval_s)
        next_report = time.monotonic() + REPORT_EVERY_S
        while not ctx.stopping.is_set():
            await asyncio.sleep(beat_every)
            ctx.beat()
            feed.drain()  # the edge-triggered reader's safety net
            if time.monotonic() >= next_report:
                next_report = time.monotonic() + REPORT_EVERY_S
                ctx.report({"listening_port": float(port), **api.metrics()})
    finally:
        if server is not None:
            await server.close()
        feed.close()
        if redis_client is not None:
            await redis_client.aclose()
        await transcriber.close()
        rings.close()


def main(ctx: ProcessContext) -> None:
    uvloop.run(serve(ctx))


if __name__ == "__main__":
    run_process(main)
